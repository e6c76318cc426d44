//! `showdown run`: the main job. Runs suites against a target and prints a
//! table per suite; the run is in the database whatever happens.

use anyhow::{Context, Result};
use showdown::{render_table, run_eval, suites_dir, ModelStore, RunOptions, DEFAULT_SUITES};

use crate::cli::RunArgs;

/// Runs `showdown run`.
pub fn run(args: RunArgs) -> Result<()> {
    let target = match args.target {
        Some(t) => t,
        None => {
            let store = ModelStore::from_env()?;
            let model = crate::commands::model_or_default(&store, args.model.as_deref())?;
            format!("builtin:{model}")
        }
    };
    let api_key = match &args.api_key_env {
        Some(var) => {
            Some(std::env::var(var).with_context(|| format!("--api-key-env {var}: not set"))?)
        }
        None => None,
    };
    let suites = if args.suites.is_empty() {
        DEFAULT_SUITES.iter().map(|s| s.to_string()).collect()
    } else {
        args.suites
    };
    let options = RunOptions {
        target,
        model: args.model,
        suites,
        suites_dir: suites_dir()?,
        case_filter: args.case_filter,
        repeat: args.repeat,
        concurrency: args.concurrency,
        seed: args.seed,
        temperature: args.temperature,
        label: args.label,
        db: args.db.clone(),
        api_key,
        git: args.git.meta(),
        progress: true,
        timeouts: args.timeouts.timeouts(),
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_eval(&options))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "run {} {} in {:.0} s ({})",
            report.run_id, report.status, report.wall_s, args.db
        );
        print!(
            "{}",
            render_table(
                &report.summaries,
                report.peak_memory_bytes,
                report.concurrency
            )
        );
    }
    if report.status != "complete" {
        anyhow::bail!("run {} is {}", report.run_id, report.status);
    }
    Ok(())
}
