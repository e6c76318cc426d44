//! `showdown compare BASE HEAD`: compare two stored runs and exit 1 on a
//! regression (see [`crate::commands::Regressed`]).

use anyhow::{Context, Result};
use showdown::{compare_stored, default_suites_dir, render_markdown, CompareConfig, Store};

use crate::cli::CompareArgs;
use crate::commands::Regressed;

/// Runs `showdown compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => CompareConfig::load(path)?,
        None => {
            let default = default_suites_dir().join("compare.toml");
            if default.is_file() {
                CompareConfig::load(&default)?
            } else {
                CompareConfig::default()
            }
        }
    };
    if let Some(alpha) = args.alpha {
        config.alpha = alpha;
    }
    if let Some(min_effect) = args.min_effect {
        config.min_effect = min_effect;
    }
    config.validate().context("thresholds from the flags")?;
    let comparison = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let store = Store::open(&args.db).await?;
            compare_stored(&store, &args.base, &args.head, &config, args.force).await
        })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", render_markdown(&comparison)?);
    }
    if !comparison.compared() {
        anyhow::bail!(
            "runs {} and {} are not comparable ({}); --force compares anyway",
            comparison.base.id,
            comparison.head.id,
            comparison.not_comparable_reasons.join("; ")
        );
    }
    if comparison.regressed() {
        return Err(Regressed(comparison.regressions.len()).into());
    }
    Ok(())
}
