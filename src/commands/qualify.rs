//! `showdown qualify`: checks a profile's gates (`evals/qualification.toml`)
//! for each model, running only the suites that have no current run, then
//! prints and stores a verdict per model. Exit 1 when a model is not qualified.

use anyhow::{Context, Result};
use showdown::{
    evaluate_qualification, load_named_suites, render_table, render_verdicts, run_eval, suites_dir,
    HostInfo, ModelStore, QualificationFile, RunOptions, RunRow, Store, StoredCase, Suite,
    SuiteEvidence, SuiteGates, Verdict, SCORER_VERSION,
};

use crate::cli::QualifyArgs;

/// A negative qualification verdict: `main` exits 1 for it.
#[derive(Debug)]
pub struct NotQualified(pub Vec<String>);

impl std::fmt::Display for NotQualified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not qualified: {}", self.0.join(", "))
    }
}

impl std::error::Error for NotQualified {}

/// Runs `showdown qualify`.
pub fn run(args: QualifyArgs) -> Result<()> {
    let config_path = match &args.config {
        Some(path) => path.clone(),
        None => suites_dir()?.join("qualification.toml"),
    };
    let file = QualificationFile::load(&config_path)?;
    let (profile_name, profile) = file.profile(args.profile.as_deref())?;
    // Gates keyed by the suite's own name; the suites themselves for their
    // hashes (a run of an older version of a suite does not count).
    let mut gates: Vec<(String, SuiteGates)> = Vec::new();
    let mut suites: Vec<(String, Suite)> = Vec::new();
    for (reference, suite_gates) in &profile.suites {
        let suite = load_named_suites(std::slice::from_ref(reference), &suites_dir()?)
            .with_context(|| format!("profile `{profile_name}`"))?
            .remove(0);
        gates.push((suite.name.clone(), suite_gates.clone()));
        suites.push((reference.clone(), suite));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let verdicts = runtime.block_on(async {
        let store = Store::connect(&args.db).await?;
        let mut verdicts = Vec::new();
        if let Some(selector) = &args.run {
            let run_id = store.resolve_run(selector).await?;
            let run = store.run(run_id).await?.context("the run vanished")?;
            let cases = store.cases(run_id).await?;
            if run.concurrency > 1 {
                eprintln!(
                    "qualify: run {run_id} took its latency with {} cases in flight at once; \
                     the latency gates' limits are for one request at a time",
                    run.concurrency
                );
            }
            let all: Vec<&Suite> = suites.iter().map(|(_, suite)| suite).collect();
            let evidence = evidence_from(&run, &cases, &all);
            verdicts.push(evaluate_qualification(
                profile_name,
                &run.model,
                &gates,
                &evidence,
            ));
        } else {
            let models = if args.models.is_empty() {
                let model_store = ModelStore::from_env()?;
                vec![crate::commands::model_or_default(&model_store, None)?]
            } else {
                args.models.clone()
            };
            for model in &models {
                verdicts.push(
                    qualify_model(&args, &store, model, profile_name, &gates, &suites).await?,
                );
            }
        }
        for verdict in &verdicts {
            if !verdict.run_ids.is_empty() {
                store.record_qualification(verdict).await?;
            }
        }
        anyhow::Ok(verdicts)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&verdicts)?);
    } else {
        print!("{}", render_verdicts(&verdicts, &profile.description)?);
    }
    let failed: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.qualified)
        .map(|v| v.model.clone())
        .collect();
    if !failed.is_empty() {
        return Err(NotQualified(failed).into());
    }
    Ok(())
}

/// One model's verdict: the newest current run of each suite, running the
/// suites that have none (or all of them with `--fresh`).
async fn qualify_model(
    args: &QualifyArgs,
    store: &Store,
    model: &str,
    profile_name: &str,
    gates: &[(String, SuiteGates)],
    suites: &[(String, Suite)],
) -> Result<Verdict> {
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| format!("builtin:{model}"));
    let pinned_sha = match target.strip_prefix("builtin:") {
        Some(name) => Some(
            ModelStore::from_env()?
                .catalogue()
                .get(name)?
                .sha256
                .clone(),
        ),
        None => None,
    };
    let host = HostInfo::detect().fingerprint();
    let runs: Vec<RunRow> = if args.fresh {
        Vec::new()
    } else {
        store
            .complete_runs_of(model, &target)
            .await?
            .into_iter()
            .filter(|r| {
                // Latency taken with cases in flight at once says nothing
                // about the gates' one-request limits.
                r.host_fingerprint == host
                    && r.concurrency == 1
                    && r.scorer_version == SCORER_VERSION.to_string()
                    && r.model_sha256 == pinned_sha
            })
            .collect()
    };
    // For each suite, the newest run that ran all of its current cases.
    let mut chosen: Vec<(String, Option<i64>)> = Vec::new();
    for (reference, suite) in suites {
        let found = runs.iter().find(|r| {
            r.suites.iter().any(|s| {
                s.suite == suite.name && s.hash == suite.hash && s.cases == suite.cases.len() as i64
            })
        });
        chosen.push((reference.clone(), found.map(|r| r.id)));
    }
    let missing: Vec<String> = chosen
        .iter()
        .filter(|(_, id)| id.is_none())
        .map(|(reference, _)| reference.clone())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "qualify {model}: running {} (no current run on this host)",
            missing.join(", ")
        );
        let report = run_eval(&RunOptions {
            target: target.clone(),
            model: Some(model.to_string()),
            suites: missing.clone(),
            suites_dir: suites_dir()?,
            case_filter: None,
            repeat: 1,
            // The gates' latency limits are one request at a time.
            concurrency: 1,
            seed: args.seed,
            temperature: None,
            label: args.label.clone(),
            db: args.db.clone(),
            api_key: match &args.api_key_env {
                Some(var) => Some(
                    std::env::var(var).with_context(|| format!("--api-key-env {var}: not set"))?,
                ),
                None => None,
            },
            git: args.git.meta(),
            progress: true,
            timeouts: args.timeouts.timeouts(),
        })
        .await?;
        if !args.json {
            println!(
                "run {} {} in {:.0} s",
                report.run_id, report.status, report.wall_s
            );
            print!(
                "{}",
                render_table(&report.summaries, report.peak_memory_bytes, 1)
            );
            println!();
        }
        for (reference, id) in &mut chosen {
            if missing.contains(reference) {
                *id = Some(report.run_id);
            }
        }
    } else {
        eprintln!(
            "qualify {model}: every suite has a current run ({})",
            chosen
                .iter()
                .filter_map(|(_, id)| id.map(|id| id.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut loaded: Vec<(RunRow, Vec<StoredCase>)> = Vec::new();
    for id in chosen.iter().filter_map(|(_, id)| *id) {
        if loaded.iter().any(|(r, _)| r.id == id) {
            continue;
        }
        let run = store.run(id).await?.context("the run vanished")?;
        let cases = store.cases(id).await?;
        loaded.push((run, cases));
    }
    let mut evidence = Vec::new();
    for ((_, id), (_, suite)) in chosen.iter().zip(suites) {
        let (run, cases) = loaded
            .iter()
            .find(|(r, _)| Some(r.id) == *id)
            .context("a chosen run was not loaded")?;
        evidence.extend(evidence_from(run, cases, &[suite]));
    }
    Ok(evaluate_qualification(
        profile_name,
        model,
        gates,
        &evidence,
    ))
}

/// The cases of each suite found in `run` (none for a suite it did not run).
fn evidence_from<'a>(
    run: &RunRow,
    cases: &'a [StoredCase],
    suites: &[&Suite],
) -> Vec<SuiteEvidence<'a>> {
    suites
        .iter()
        .map(|suite| {
            let ran = run.suites.iter().any(|s| s.suite == suite.name);
            SuiteEvidence {
                suite: suite.name.clone(),
                run_id: ran.then_some(run.id),
                cases: cases
                    .iter()
                    .filter(|c| c.record.suite == suite.name)
                    .collect(),
            }
        })
        .collect()
}
