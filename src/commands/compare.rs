//! `showdown compare BASE HEAD`: compare two stored runs and exit 1 on a
//! regression (see [`crate::commands::Regressed`]).

use anyhow::{Context, Result};
use showdown::{
    compare, compare_stored, render_markdown, suites_dir, CompareConfig, Comparison, RunRow, Store,
};

use crate::cli::{CompareArgs, CompareOptions};
use crate::commands::Regressed;

/// Runs `showdown compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    let comparison = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(compare_runs(&args.options, &args.base, &args.head))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", render_markdown(&comparison)?);
    }
    verdict(&comparison)
}

/// Compares two stored runs with the thresholds of `options`, confirming a
/// latency regression by reruns when asked.
pub async fn compare_runs(options: &CompareOptions, base: &str, head: &str) -> Result<Comparison> {
    let config = thresholds(options)?;
    let store = Store::connect(&options.db).await?;
    let mut comparison = compare_stored(&store, base, head, &config, options.force).await?;
    if options.confirm && comparison.compared() {
        confirm(options, &store, &config, &mut comparison).await?;
    }
    Ok(comparison)
}

/// `--confirm`: reruns the suites whose latency regressed, base and head
/// alternating in ABBA order (so a machine that drifts slower or faster
/// weighs on both sides alike), then compares the pooled reruns.
async fn confirm(
    options: &CompareOptions,
    store: &Store,
    config: &CompareConfig,
    comparison: &mut Comparison,
) -> Result<()> {
    let suites = comparison.latency_regressed_suites();
    if suites.is_empty() {
        return Ok(());
    }
    anyhow::ensure!(
        options.confirm_rounds > 0,
        "--confirm-rounds must be at least 1"
    );
    let base = store.run(comparison.base.id).await?.context("base run")?;
    let head = store.run(comparison.head.id).await?.context("head run")?;
    let this_binary = std::env::current_exe().context("locating this showdown binary")?;
    if options.base_bin.is_none() && base.target == head.target && base.model == head.model {
        anyhow::bail!(
            "--confirm: both runs used {} with model {}, so rerunning them with this one build \
             would compare it with itself; pass --base-bin PATH (the base build's showdown)",
            base.target,
            base.model
        );
    }
    let base_bin = options
        .base_bin
        .clone()
        .unwrap_or_else(|| this_binary.clone());
    let mut base_runs = Vec::new();
    let mut head_runs = Vec::new();
    for round in 0..options.confirm_rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_base in order {
            let (bin, run) = if is_base {
                (&base_bin, &base)
            } else {
                (&this_binary, &head)
            };
            let id = rerun(bin, run, &suites, &options.db).await?;
            if is_base {
                base_runs.push(id);
            } else {
                head_runs.push(id);
            }
        }
    }
    let pooled = |ids: &[i64]| {
        let ids = ids.to_vec();
        async move {
            let mut cases = Vec::new();
            for id in &ids {
                cases.extend(store.cases(*id).await?);
            }
            let row = store.run(ids[0]).await?.context("rerun vanished")?;
            anyhow::Ok((row, cases))
        }
    };
    let (base_row, base_cases) = pooled(&base_runs).await?;
    let (head_row, head_cases) = pooled(&head_runs).await?;
    let rerun_comparison = compare(&base_row, &base_cases, &head_row, &head_cases, config, true);
    comparison.confirm_latency(&rerun_comparison, base_runs, head_runs);
    Ok(())
}

/// Runs `run`'s suites again through `bin` against the same target; returns
/// the new run's id.
async fn rerun(
    bin: &std::path::Path,
    run: &RunRow,
    suites: &[String],
    db: &showdown::DbLocation,
) -> Result<i64> {
    let mut command = tokio::process::Command::new(bin);
    command
        .args([
            "run",
            "--json",
            "--target",
            &run.target,
            "--model",
            &run.model,
        ])
        .args([
            "--repeat",
            &run.repeat.to_string(),
            "--seed",
            &run.seed.to_string(),
        ])
        .args(["--label", &format!("confirm:{}", run.id)])
        // Named only when it matters: the base build may predate the flag.
        .args(
            (run.concurrency > 1)
                .then(|| ["--concurrency".to_string(), run.concurrency.to_string()])
                .into_iter()
                .flatten(),
        )
        .arg("--db")
        .arg(db.as_arg());
    for suite in suites {
        command.args(["--suite", suite]);
    }
    eprintln!(
        "confirm: rerunning run {} ({}) with {}",
        run.id,
        suites.join(", "),
        bin.display()
    );
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("starting {}", bin.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "--confirm: the rerun of run {} failed ({})",
            run.id, output.status
        )
    })?;
    anyhow::ensure!(
        report["status"] == "complete",
        "--confirm: the rerun of run {} ended {}",
        run.id,
        report["status"]
    );
    report["run_id"]
        .as_i64()
        .with_context(|| format!("--confirm: the rerun of run {} reported no run id", run.id))
}

/// The comparison's outcome as the command's: an error when the runs are not
/// comparable, [`Regressed`] on a regression.
pub fn verdict(comparison: &Comparison) -> Result<()> {
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

/// Thresholds: `--config`, else `evals/compare.toml` when present, else the
/// defaults; then the flags.
fn thresholds(options: &CompareOptions) -> Result<CompareConfig> {
    let mut config = match &options.config {
        Some(path) => CompareConfig::load(path)?,
        None => {
            let default = suites_dir()?.join("compare.toml");
            if default.is_file() {
                CompareConfig::load(&default)?
            } else {
                CompareConfig::default()
            }
        }
    };
    if let Some(alpha) = options.alpha {
        config.alpha = alpha;
    }
    if let Some(min_effect) = options.min_effect {
        config.min_effect = min_effect;
    }
    config.validate().context("thresholds from the flags")?;
    Ok(config)
}
