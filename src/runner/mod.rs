//! `showdown run`: runs stored suites against a target through the agent
//! loop, scores every case, and writes the run to SQLite as it goes.
//!
//! One code path for every target: the runner is a Messages API client
//! ([`client`]); `builtin:MODEL` only means it starts showdown's own server on
//! a loopback port first ([`target`]).

mod agent;
mod client;
mod summary;
mod target;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

pub use agent::{run_agent, AgentOutcome, AgentTask, ToolExecutor};
pub use client::{ApiFailure, MessagesClient, Response as MessagesResponse, Timeouts};
pub use summary::{render_table, summarize, SuiteSummary};
pub use target::Target;

use crate::eval::{
    agent_system_prompt, load_suite, score_case, Case, CaseScore, Sandbox, Suite, ToolCall,
    Transcript, SCORER_VERSION,
};
use crate::models::ModelStore;
use crate::store::{CaseRecord, CheckRecord, HostInfo, NewRun, Store};

/// The suites `showdown run` runs when none is named.
pub const DEFAULT_SUITES: &[&str] = &["summarize", "word-limit", "tool-calls"];

/// Git metadata a run records (from flags or GitHub Actions' environment).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GitMeta {
    /// Branch under test.
    pub branch: Option<String>,
    /// Commit under test.
    pub commit: Option<String>,
    /// Pull request number.
    pub pr_number: Option<u64>,
}

impl GitMeta {
    /// Fills what flags left empty from GitHub Actions' variables.
    pub fn with_github_env(mut self) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if self.branch.is_none() {
            self.branch = env("GITHUB_HEAD_REF").or_else(|| env("GITHUB_REF_NAME"));
        }
        if self.commit.is_none() {
            self.commit = env("GITHUB_SHA");
        }
        if self.pr_number.is_none() {
            self.pr_number = env("GITHUB_REF")
                .and_then(|r| r.strip_prefix("refs/pull/").map(str::to_string))
                .and_then(|r| r.split('/').next().and_then(|n| n.parse().ok()));
        }
        self
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `builtin:MODEL` or a base URL.
    pub target: String,
    /// Model name for URL targets.
    pub model: Option<String>,
    /// Suite names (files `evals/NAME.toml`) or paths to suite files.
    pub suites: Vec<String>,
    /// Where suite names are looked up.
    pub suites_dir: PathBuf,
    /// Only cases whose `suite/case` id contains this.
    pub case_filter: Option<String>,
    /// Samples per case.
    pub repeat: u32,
    /// Cases in flight at once (1: one after another). For targets that
    /// serve many requests at once; latency is then taken under load and the
    /// run says so.
    pub concurrency: u32,
    /// Seed recorded with the run (and sent where the target samples).
    pub seed: u64,
    /// Overrides every case's temperature.
    pub temperature: Option<f64>,
    /// Label (branch, PR, experiment).
    pub label: Option<String>,
    /// The results database.
    pub db: crate::store::DbLocation,
    /// Key for the target.
    pub api_key: Option<String>,
    /// Git metadata.
    pub git: GitMeta,
    /// Report progress on stderr: a bar on a terminal, otherwise (a CI log)
    /// a line per finished case.
    pub progress: bool,
    /// How long each request may wait to connect, for its first event, and
    /// between events.
    pub timeouts: Timeouts,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Run id in the database.
    pub run_id: i64,
    /// complete, incomplete or failed.
    pub status: String,
    /// Per-suite figures.
    pub summaries: Vec<SuiteSummary>,
    /// Peak engine memory (builtin targets).
    pub peak_memory_bytes: Option<u64>,
    /// Cases that were in flight at once (latency was taken under it).
    pub concurrency: u32,
    /// Wall time of the run.
    pub wall_s: f64,
}

/// Loads suites by name (from `dir`) or path.
pub fn load_named_suites(names: &[String], dir: &Path) -> Result<Vec<Suite>> {
    names
        .iter()
        .map(|name| {
            let path = if name.ends_with(".toml") {
                PathBuf::from(name)
            } else {
                dir.join(format!("{name}.toml"))
            };
            load_suite(&path).with_context(|| format!("loading suite `{name}`"))
        })
        .collect()
}

/// The sandbox as the agent loop's executor.
struct SandboxExecutor(Sandbox);

impl ToolExecutor for SandboxExecutor {
    fn handles(&self, name: &str) -> bool {
        Sandbox::tool_definitions()
            .iter()
            .any(|t| t["name"].as_str() == Some(name))
    }
    fn execute(&self, name: &str, input: &Value) -> (String, bool) {
        let output = self.0.run(name, input);
        (output.content, output.is_error)
    }
}

/// Runs one case once and scores it.
pub async fn run_case(
    client: &MessagesClient,
    model: &str,
    suite: &Suite,
    case: &Case,
    sample: u32,
    temperature: Option<f64>,
) -> Result<CaseRecord> {
    let sandbox = match &case.fixture_path {
        Some(root) => Some(SandboxExecutor(Sandbox::new(root).with_context(|| {
            format!("opening the fixture of {}/{}", suite.name, case.id)
        })?)),
        None => None,
    };
    let system = case
        .system
        .clone()
        .or_else(|| case.fixture.as_ref().map(|_| agent_system_prompt()));
    let task = AgentTask {
        model: model.to_string(),
        system,
        prompt: case.prompt.clone(),
        tools: case.offered_tools(),
        tool_choice: case.tool_choice.clone(),
        max_turns: case.max_turns,
        max_tokens: case.max_tokens,
        temperature: temperature.unwrap_or(case.temperature),
    };
    let outcome = run_agent(
        client,
        &task,
        sandbox.as_ref().map(|s| s as &dyn ToolExecutor),
    )
    .await;
    Ok(score_outcome(suite, case, sample, outcome))
}

fn transcript_of(outcome: &AgentOutcome) -> Transcript {
    Transcript {
        final_text: outcome.final_text.clone(),
        tool_calls: outcome
            .calls
            .iter()
            .map(|c| ToolCall {
                name: c.name.clone(),
                input: c.input.clone(),
                turn: c.turn,
            })
            .collect(),
        turns: outcome.turns,
    }
}

fn score_outcome(suite: &Suite, case: &Case, sample: u32, outcome: AgentOutcome) -> CaseRecord {
    let score = CaseScore::from_checks(score_case(case, &transcript_of(&outcome)));
    CaseRecord {
        suite: suite.name.clone(),
        case_id: case.id.clone(),
        sample,
        category: Some(case.category.clone()),
        must_pass: case.must_pass,
        passed: score.passed,
        score: score.score,
        turns: outcome.turns,
        tool_calls: outcome.calls.len() as u32,
        wall_ms: outcome.wall_ms,
        error: outcome.error.clone(),
        scorer_version: SCORER_VERSION.to_string(),
        transcript: json!({
            "final_text": outcome.final_text,
            "calls": outcome.calls,
            "turns": outcome.turns,
            "conversation": outcome.transcript,
        }),
        checks: score.checks.into_iter().map(check_record).collect(),
        requests: outcome.requests,
    }
}

fn check_record(check: crate::eval::CheckResult) -> CheckRecord {
    CheckRecord {
        kind: check.kind,
        passed: check.passed,
        score: check.score,
        detail: check.detail,
    }
}

/// Re-scores a stored case's transcript with the current scorers: (passed,
/// score, checks).
pub fn rescore_case(
    suite: &Suite,
    case: &Case,
    transcript: &Value,
) -> (bool, f64, Vec<CheckRecord>) {
    let stored = Transcript {
        final_text: transcript["final_text"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        tool_calls: transcript["calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| ToolCall {
                        name: c["name"].as_str().unwrap_or_default().to_string(),
                        input: c["input"].clone(),
                        turn: c["turn"].as_u64().unwrap_or(0) as u32,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        turns: transcript["turns"].as_u64().unwrap_or(0) as u32,
    };
    debug_assert!(suite.cases.iter().any(|c| c.id == case.id));
    let score = CaseScore::from_checks(score_case(case, &stored));
    (
        score.passed,
        score.score,
        score.checks.into_iter().map(check_record).collect(),
    )
}

/// The git commit this binary was built from (`build.rs`), with `-dirty`
/// when it runs in the checkout it was built from, still at that commit, and
/// that checkout has uncommitted changes (a developer's build). An installed
/// binary reports its build's commit wherever it runs.
pub fn showdown_git_sha() -> Option<String> {
    let built = option_env!("SHOWDOWN_BUILD_GIT_SHA")?;
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let dirty = head.as_deref() == Some(built)
        && git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{built}-dirty")
    } else {
        built.to_string()
    })
}

/// Runs the suites of `options` and records everything.
pub async fn run(options: &RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    if options.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if options.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let suites = load_named_suites(&options.suites, &options.suites_dir)?;
    let selected: Vec<(&Suite, Vec<&Case>)> = suites
        .iter()
        .map(|suite| {
            let cases = suite
                .cases
                .iter()
                .filter(|c| {
                    options
                        .case_filter
                        .as_deref()
                        .is_none_or(|f| format!("{}/{}", suite.name, c.id).contains(f))
                })
                .collect::<Vec<_>>();
            (suite, cases)
        })
        .filter(|(_, cases)| !cases.is_empty())
        .collect();
    if selected.is_empty() {
        bail!("no case matches the filter");
    }
    let store = Store::connect(&options.db).await?;
    let model_store = ModelStore::from_env()?;
    let target = Target::start(
        &options.target,
        options.model.as_deref(),
        &model_store,
        options.concurrency as usize,
    )
    .await?;
    let client =
        MessagesClient::with_timeouts(&target.base_url, options.api_key.clone(), options.timeouts)?;
    let run_id = store
        .create_run(&NewRun {
            label: options.label.clone(),
            target: target.spec.clone(),
            model: target.model.clone(),
            model_sha256: target.model_sha256.clone(),
            engine_version: showdown_engine::ENGINE_VERSION.to_string(),
            git_sha: showdown_git_sha(),
            scorer_version: SCORER_VERSION.to_string(),
            sampling: json!({"temperature": options.temperature, "per_case_defaults": true}),
            seed: options.seed,
            repeat: options.repeat,
            concurrency: options.concurrency,
            host: HostInfo::detect(),
            git_branch: options.git.branch.clone(),
            git_commit: options.git.commit.clone(),
            pr_number: options.git.pr_number,
        })
        .await?;
    for (suite, cases) in &selected {
        store
            .add_suite(run_id, &suite.name, suite.version, &suite.hash, cases.len())
            .await?;
    }
    let total: u64 = selected
        .iter()
        .map(|(_, c)| c.len() as u64 * options.repeat as u64)
        .sum();
    // A bar for a person at a terminal; in a log (no TTY) a bar draws
    // nothing, so a line per finished case says where a long run is.
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let case_lines = options.progress && !on_terminal;
    let bar = if options.progress && on_terminal {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Every sample of every case, in suite order; at most `concurrency` of
    // them in flight. Each is recorded as soon as it is scored, so a run
    // stopped halfway keeps what finished, in whatever order it finished.
    let jobs = selected.iter().flat_map(|(suite, cases)| {
        cases
            .iter()
            .flat_map(move |case| (0..options.repeat).map(move |sample| (*suite, *case, sample)))
    });
    let (client, target, store) = (&client, &target, &store);
    let mut finished = futures_util::stream::iter(jobs)
        .map(|(suite, case, sample)| async move {
            let record = run_case(
                client,
                &target.model,
                suite,
                case,
                sample,
                options.temperature,
            )
            .await?;
            store.record_case(run_id, &record).await?;
            anyhow::Ok((record, sample))
        })
        .buffer_unordered(options.concurrency as usize);
    let work = async {
        let mut done = 0u64;
        while let Some(result) = finished.next().await {
            let (record, sample) = result?;
            bar.set_message(format!("{}/{}", record.suite, record.case_id));
            bar.inc(1);
            done += 1;
            if case_lines {
                let sample = (options.repeat > 1).then_some(sample);
                eprintln!("{}", case_line(done, total, &record, sample));
            }
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        result = work => result.map(|_| true),
        _ = tokio::signal::ctrl_c() => Ok(false),
    };
    bar.finish_and_clear();
    let peak = target.peak_memory_bytes();
    let status = match &outcome {
        Ok(true) => "complete",
        Ok(false) => "incomplete",
        Err(_) => "failed",
    };
    let error = match &outcome {
        Ok(true) => None,
        Ok(false) => Some("interrupted".to_string()),
        Err(err) => Some(format!("{err:#}")),
    };
    store
        .finish_run(run_id, status, peak, error.as_deref())
        .await?;
    if let Err(err) = outcome {
        return Err(err.context(format!("run {run_id} failed")));
    }
    let cases = store.cases(run_id).await?;
    Ok(RunReport {
        run_id,
        status: status.to_string(),
        summaries: summarize(&cases),
        peak_memory_bytes: peak,
        concurrency: options.concurrency,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// One finished case as a log line: `[3/75] summarize/readme pass in 4.2 s, 72 left`
/// (`#N` after the case when samples repeat).
pub fn case_line(done: u64, total: u64, record: &CaseRecord, sample: Option<u32>) -> String {
    let verdict = match (&record.error, record.passed) {
        (Some(_), _) => "error",
        (None, true) => "pass",
        (None, false) => "fail",
    };
    let sample = sample.map(|n| format!("#{n}")).unwrap_or_default();
    format!(
        "[{done}/{total}] {}/{}{sample} {verdict} in {:.1} s, {} left",
        record.suite,
        record.case_id,
        record.wall_ms / 1000.0,
        total.saturating_sub(done)
    )
}
