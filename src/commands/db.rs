//! `showdown db copy FROM TO`.

use anyhow::{Context, Result};
use showdown::{copy_history, Store};

use crate::cli::DbCommand;

/// Runs `showdown db …`.
pub fn run(command: DbCommand) -> Result<()> {
    let DbCommand::Copy { from, to, json } = command;
    anyhow::ensure!(from != to, "{from} is both the source and the target");
    // Connecting to a SQLite path creates the file: a mistyped source must
    // not become an empty database copied from.
    anyhow::ensure!(
        from.may_hold_results(),
        "no results database at {from} to copy from"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let source = Store::connect(&from)
                .await
                .with_context(|| format!("opening {from}"))?;
            let target = Store::connect(&to)
                .await
                .with_context(|| format!("opening {to}"))?;
            let report = copy_history(&source, &target).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            println!(
                "copied {} run(s), {} case(s), {} check(s), {} request(s), {} verdict(s) from {from} to {to}",
                report.runs.len(),
                report.cases,
                report.checks,
                report.requests,
                report.qualifications
            );
            for (old, new) in &report.runs {
                println!("  run {old} -> {new}");
            }
            if !report.already_there.is_empty() {
                println!(
                    "skipped {} run(s) {to} already has: {:?}",
                    report.already_there.len(),
                    report.already_there
                );
            }
            if !report.running.is_empty() {
                println!(
                    "skipped {} run(s) still running: {:?} (copy again when they finish)",
                    report.running.len(),
                    report.running
                );
            }
            Ok(())
        })
}
