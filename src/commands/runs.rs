//! `showdown runs list|show`, `showdown rescore`, `showdown rerun`.

use anyhow::{Context, Result};
use showdown::{
    load_named_suites, render_table, rescore_case, run_eval, suites_dir, summarize, GitMeta,
    RunOptions, Store,
};

use crate::cli::{RerunArgs, RescoreArgs, RunsCommand};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs `showdown runs …`.
pub fn run(command: RunsCommand) -> Result<()> {
    runtime()?.block_on(async {
        match command {
            RunsCommand::List { db, limit, json } => {
                let store = Store::connect(&db).await?;
                let runs = store.list_runs(limit).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&runs)?);
                    return Ok(());
                }
                println!("| id | status | label | target | model | suites | started |");
                println!("|---:|---|---|---|---|---|---|");
                for r in runs {
                    let suites: Vec<&str> = r.suites.iter().map(|s| s.suite.as_str()).collect();
                    println!(
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        r.id,
                        r.status,
                        r.label.as_deref().unwrap_or("-"),
                        r.target,
                        r.model,
                        suites.join(", "),
                        r.started_at
                    );
                }
                Ok(())
            }
            RunsCommand::Show { run, db, json } => {
                let store = Store::connect(&db).await?;
                let id = store.resolve_run(&run).await?;
                let row = store.run(id).await?.context("run vanished")?;
                let cases = store.cases(id).await?;
                if json {
                    let summaries = summarize(&cases);
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "run": row, "summaries": summaries, "cases": cases,
                        }))?
                    );
                    return Ok(());
                }
                println!("run {} ({})", row.id, row.status);
                println!("  target   {} (model {})", row.target, row.model);
                if let Some(sha) = &row.model_sha256 {
                    println!("  sha256   {sha}");
                }
                println!(
                    "  engine   {} (showdown {})",
                    row.engine_version.as_deref().unwrap_or("?"),
                    row.git_sha.as_deref().unwrap_or("?")
                );
                println!("  host     {} [{}]", row.host, row.host_fingerprint);
                println!(
                    "  started  {}  finished {}",
                    row.started_at,
                    row.finished_at.as_deref().unwrap_or("-")
                );
                if let Some(err) = &row.error {
                    println!("  error    {err}");
                }
                for s in &row.suites {
                    println!(
                        "  suite    {} v{} ({} cases, hash {})",
                        s.suite,
                        s.version,
                        s.cases,
                        &s.hash[..12.min(s.hash.len())]
                    );
                }
                println!();
                print!(
                    "{}",
                    render_table(
                        &summarize(&cases),
                        row.peak_memory_bytes.map(|b| b as u64),
                        row.concurrency as u32,
                    )
                );
                println!();
                for case in &cases {
                    let c = &case.record;
                    println!(
                        "{} {}/{}#{} score {:.2}, {} turns, {} tool calls{}",
                        if c.passed { "PASS" } else { "FAIL" },
                        c.suite,
                        c.case_id,
                        c.sample,
                        c.score,
                        c.turns,
                        c.tool_calls,
                        c.error
                            .as_ref()
                            .map(|e| format!(" — {e}"))
                            .unwrap_or_default()
                    );
                    for check in &c.checks {
                        println!(
                            "    {} {}: {}",
                            if check.passed { "ok  " } else { "fail" },
                            check.kind,
                            check.detail
                        );
                    }
                }
                Ok(())
            }
        }
    })
}

/// Runs `showdown rescore`.
pub fn rescore(args: RescoreArgs) -> Result<()> {
    runtime()?.block_on(async {
        let store = Store::connect(&args.db).await?;
        let id = store.resolve_run(&args.run).await?;
        let row = store.run(id).await?.context("run vanished")?;
        let names: Vec<String> = row.suites.iter().map(|s| s.suite.clone()).collect();
        let suites = load_named_suites(&names, &suites_dir()?)?;
        let mut changed = 0;
        let cases = store.cases(id).await?;
        for case in &cases {
            let c = &case.record;
            let Some(suite) = suites.iter().find(|s| s.name == c.suite) else {
                continue;
            };
            let Some(def) = suite.cases.iter().find(|d| d.id == c.case_id) else {
                println!("{}/{}: no longer in the suite; left as scored", c.suite, c.case_id);
                continue;
            };
            let (passed, score, checks) = rescore_case(suite, def, &c.transcript);
            if passed != c.passed {
                changed += 1;
                println!(
                    "{}/{}#{}: {} -> {}",
                    c.suite,
                    c.case_id,
                    c.sample,
                    if c.passed { "pass" } else { "fail" },
                    if passed { "pass" } else { "fail" }
                );
            }
            store
                .rescore_case(case.id, passed, score, &showdown::SCORER_VERSION.to_string(), &checks)
                .await?;
        }
        println!(
            "run {id}: {} case results re-scored with scorer version {}, {changed} verdicts changed",
            cases.len(),
            showdown::SCORER_VERSION
        );
        Ok(())
    })
}

/// Runs `showdown rerun`.
pub fn rerun(args: RerunArgs) -> Result<()> {
    runtime()?.block_on(async {
        let store = Store::connect(&args.db).await?;
        let id = store.resolve_run(&args.run).await?;
        let row = store.run(id).await?.context("run vanished")?;
        let suites_dir = suites_dir()?;
        let names: Vec<String> = row.suites.iter().map(|s| s.suite.clone()).collect();
        for (suite, stored) in load_named_suites(&names, &suites_dir)?
            .iter()
            .zip(&row.suites)
        {
            if suite.hash != stored.hash {
                println!(
                    "note: suite {} changed since run {id} (hash {} then, {} now)",
                    suite.name,
                    &stored.hash[..12.min(stored.hash.len())],
                    &suite.hash[..12]
                );
            }
        }
        let original = store.cases(id).await?;
        let api_key = match &args.api_key_env {
            Some(var) => Some(std::env::var(var).with_context(|| format!("{var} is not set"))?),
            None => None,
        };
        let options = RunOptions {
            target: row.target.clone(),
            model: Some(row.model.clone()),
            suites: names,
            suites_dir,
            case_filter: None,
            repeat: row.repeat as u32,
            concurrency: row.concurrency as u32,
            seed: row.seed as u64,
            temperature: row.sampling["temperature"].as_f64(),
            label: Some(format!("rerun-of-{id}")),
            db: args.db.clone(),
            api_key,
            git: GitMeta::default(),
            progress: true,
            timeouts: showdown::Timeouts::default(),
        };
        drop(store);
        let report = run_eval(&options).await?;
        let store = Store::connect(&args.db).await?;
        let again = store.cases(report.run_id).await?;
        let mut differing = Vec::new();
        for new in &again {
            let n = &new.record;
            let Some(old) = original.iter().find(|o| {
                o.record.suite == n.suite
                    && o.record.case_id == n.case_id
                    && o.record.sample == n.sample
            }) else {
                continue;
            };
            let o = &old.record;
            if o.transcript["final_text"] != n.transcript["final_text"]
                || o.transcript["calls"] != n.transcript["calls"]
            {
                differing.push(format!("{}/{}#{}", n.suite, n.case_id, n.sample));
            }
        }
        println!("rerun of run {id} is run {}", report.run_id);
        if differing.is_empty() {
            println!("all {} transcripts identical", again.len());
            Ok(())
        } else {
            for d in &differing {
                println!("differs: {d}");
            }
            anyhow::bail!("{} of {} transcripts differ", differing.len(), again.len())
        }
    })
}
