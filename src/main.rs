//! The `showdown` binary: parses the command line and dispatches each subcommand
//! to one function in `commands/`. The work is done by the `showdown` library.
//!
//! Exit codes: 0 on success (and when stdout is closed early, as by `| head`),
//! 1 when a command's verdict is negative (`compare` found a regression,
//! `qualify` a model not qualified),
//! 2 on any error, printed with its full chain.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err)
            if err.is::<commands::Regressed>() || err.is::<commands::qualify::NotQualified>() =>
        {
            eprintln!("{err}");
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs one subcommand.
fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(threads) = cli.threads {
        // Candle sizes its thread pools from these on first use.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        // And the engine's own kernel pool.
        showdown_engine::kernels::pool::set_threads(threads);
    }
    if let Some(kv_cache) = cli.kv_cache {
        // Read by `LoadOptions::default()` wherever a model is loaded.
        let name = match kv_cache {
            showdown_engine::KvCacheType::F16 => "f16",
            showdown_engine::KvCacheType::F32 => "f32",
        };
        std::env::set_var("SHOWDOWN_KV_CACHE", name);
    }
    // Read by the library wherever suites or templates are looked up.
    if let Some(dir) = &cli.suites_dir {
        std::env::set_var(showdown::assets::SUITES_DIR_ENV, dir);
    }
    if let Some(dir) = &cli.templates_dir {
        std::env::set_var(showdown::assets::TEMPLATES_DIR_ENV, dir);
    }
    match cli.command {
        Command::Models { command } => commands::models::run(command),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::BenchCache(args) => commands::cache_bench::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Runs { command } => commands::runs::run(command),
        Command::Rescore(args) => commands::runs::rescore(args),
        Command::Rerun(args) => commands::runs::rerun(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Qualify(args) => commands::qualify::run(args),
        Command::PrComment(args) => commands::pr_comment::run(args),
        Command::Dashboard(args) => commands::dashboard::run(args),
        Command::Db { command } => commands::db::run(command),
    }
}

/// Whether `err` comes from writing to a closed pipe, which is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
