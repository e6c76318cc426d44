//! Runs over time: complete runs with their case results and request figures
//! but without transcripts (the pages over many runs never show them), one
//! suite's series of points, and each point's regression verdict from
//! [`crate::report::compare`] against the previous comparable run.

use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;
use sqlx::Row;

use crate::report::{comparability, compare, CompareConfig};
use crate::runner::{summarize, SuiteSummary};
use crate::store::{CaseRecord, RequestMetrics, RunRow, Store, StoredCase};

/// Most runs the pages over time read.
pub const HISTORY_LIMIT: u32 = 500;

/// A run with its case results (transcripts and checks left out).
pub struct RunCases {
    /// The run.
    pub run: RunRow,
    /// Its case results.
    pub cases: Vec<StoredCase>,
}

/// The newest [`HISTORY_LIMIT`] complete runs, oldest first.
pub async fn complete_runs(store: &Store) -> Result<Vec<RunCases>> {
    let mut runs: Vec<RunRow> = store
        .list_runs(HISTORY_LIMIT)
        .await?
        .into_iter()
        .filter(|r| r.status == "complete")
        .collect();
    runs.reverse();
    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let mut cases = light_cases(store, &ids).await?;
    Ok(runs
        .into_iter()
        .map(|run| {
            let cases = cases.remove(&run.id).unwrap_or_default();
            RunCases { run, cases }
        })
        .collect())
}

/// Case results of `run_ids` with their request figures, by run, in two queries.
async fn light_cases(store: &Store, run_ids: &[i64]) -> Result<HashMap<i64, Vec<StoredCase>>> {
    let mut by_run: HashMap<i64, Vec<StoredCase>> = HashMap::new();
    let Some(&first) = run_ids.iter().min() else {
        return Ok(by_run);
    };
    let wanted: std::collections::HashSet<i64> = run_ids.iter().copied().collect();
    let rows = sqlx::query(
        "SELECT id, run_id, suite, case_id, sample, category, must_pass, passed, score, turns,
                tool_calls, wall_ms, error, scorer_version
         FROM case_results WHERE run_id >= $1 ORDER BY id",
    )
    .bind(first)
    .fetch_all(store.pool())
    .await?;
    let mut requests: HashMap<i64, Vec<RequestMetrics>> = HashMap::new();
    for r in sqlx::query(
        "SELECT r.* FROM requests r JOIN case_results c ON c.id = r.case_result_id
         WHERE c.run_id >= $1 ORDER BY r.case_result_id, r.position",
    )
    .bind(first)
    .fetch_all(store.pool())
    .await?
    {
        requests
            .entry(r.get("case_result_id"))
            .or_default()
            .push(crate::store::request_from_row(&r));
    }
    for row in rows {
        let run_id: i64 = row.get("run_id");
        if !wanted.contains(&run_id) {
            continue;
        }
        let id: i64 = row.get("id");
        by_run.entry(run_id).or_default().push(StoredCase {
            id,
            record: CaseRecord {
                suite: row.get("suite"),
                case_id: row.get("case_id"),
                sample: row.get::<i64, _>("sample") as u32,
                category: row.get("category"),
                must_pass: crate::store::flag(&row, "must_pass"),
                passed: crate::store::flag(&row, "passed"),
                score: row.get("score"),
                turns: row.get::<i64, _>("turns") as u32,
                tool_calls: row.get::<i64, _>("tool_calls") as u32,
                wall_ms: row.get("wall_ms"),
                error: row.get("error"),
                scorer_version: row.get("scorer_version"),
                transcript: serde_json::Value::Null,
                checks: Vec::new(),
                requests: requests.remove(&id).unwrap_or_default(),
            },
        });
    }
    Ok(by_run)
}

/// What the comparison with the previous comparable run found for one suite.
#[derive(Debug, Clone, Serialize)]
pub struct Regression {
    /// The run compared against.
    pub base_run: i64,
    /// `clean` or `regression`.
    pub verdict: String,
    /// The pass count dropped or a must-pass case failed.
    pub quality: bool,
    /// Latency metrics that regressed (`ttft_ms`, `e2e_ms`, …).
    pub metrics: Vec<String>,
    /// One line per regression, as `showdown compare` words them.
    pub lines: Vec<String>,
}

/// One run of a suite's series.
#[derive(Debug, Clone, Serialize)]
pub struct SuitePoint {
    /// Run id.
    pub run_id: i64,
    /// Start time.
    pub started_at: String,
    /// Label.
    pub label: Option<String>,
    /// Target.
    pub target: String,
    /// Commit under test.
    pub git_commit: Option<String>,
    /// Peak engine memory of the run.
    pub peak_memory_bytes: Option<i64>,
    /// Cases in flight at once when its latency was taken.
    pub concurrency: i64,
    /// The suite's figures in this run.
    pub summary: SuiteSummary,
    /// Against the previous comparable run with the same label, if any.
    pub comparison: Option<Regression>,
}

/// A run cut down to one suite: comparability and comparison then concern
/// that suite alone.
fn suite_only(run: &RunCases, suite: &str) -> (RunRow, Vec<StoredCase>) {
    let mut row = run.run.clone();
    row.suites.retain(|s| s.suite == suite);
    let cases = run
        .cases
        .iter()
        .filter(|c| c.record.suite == suite)
        .cloned()
        .collect();
    (row, cases)
}

/// The runs of `model` that ran `suite` (and match `keep`), oldest first, each
/// with its figures and its comparison with the previous comparable run of the
/// same label.
pub fn suite_series(
    runs: &[RunCases],
    model: &str,
    suite: &str,
    config: &CompareConfig,
    keep: impl Fn(&RunRow) -> bool,
) -> Vec<SuitePoint> {
    // The markers need only the verdicts, which do not depend on the
    // bootstrap interval: skip its resampling.
    let config = CompareConfig {
        bootstrap_resamples: 0,
        ..config.clone()
    };
    let selected: Vec<(RunRow, Vec<StoredCase>)> = runs
        .iter()
        .filter(|r| r.run.model == model && keep(&r.run))
        .filter(|r| r.run.suites.iter().any(|s| s.suite == suite))
        .map(|r| suite_only(r, suite))
        .filter(|(_, cases)| !cases.is_empty())
        .collect();
    let mut points = Vec::with_capacity(selected.len());
    for (i, (run, cases)) in selected.iter().enumerate() {
        let summary = summarize(cases)
            .into_iter()
            .next()
            .expect("a suite with cases has a summary");
        let base = selected[..i]
            .iter()
            .rev()
            .find(|(b, _)| b.label == run.label && comparability(b, run).is_empty());
        let comparison = base.map(|(base, base_cases)| {
            let c = compare(base, base_cases, run, cases, &config, false);
            let s = c.suites.first();
            Regression {
                base_run: base.id,
                verdict: c.verdict.clone(),
                quality: s
                    .is_some_and(|s| s.pass_count_dropped || !s.must_pass_regressions.is_empty()),
                metrics: s
                    .map(|s| {
                        s.latency
                            .iter()
                            .filter(|m| m.regressed)
                            .map(|m| m.metric.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
                lines: c.regressions.clone(),
            }
        });
        points.push(SuitePoint {
            run_id: run.id,
            started_at: run.started_at.clone(),
            label: run.label.clone(),
            target: run.target.clone(),
            git_commit: run.git_commit.clone(),
            peak_memory_bytes: run.peak_memory_bytes,
            concurrency: run.concurrency,
            summary,
            comparison,
        });
    }
    points
}

/// Every (model, suite) pair the runs hold, sorted.
pub fn model_suites(runs: &[RunCases]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = runs
        .iter()
        .flat_map(|r| {
            r.run
                .suites
                .iter()
                .map(|s| (r.run.model.clone(), s.suite.clone()))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

/// The newest qualification verdict of each model (`showdown qualify`).
#[derive(Debug, Clone, Serialize)]
pub struct Qualification {
    /// Run the gates were checked against.
    pub run_id: i64,
    /// Profile name.
    pub profile: String,
    /// Model.
    pub model: String,
    /// Whether every gate passed.
    pub qualified: bool,
    /// Each gate with its value and limit.
    pub gates: serde_json::Value,
    /// When.
    pub created_at: String,
}

fn qualification(row: &sqlx::any::AnyRow) -> Qualification {
    let gates: String = row.get("gates_json");
    Qualification {
        run_id: row.get("run_id"),
        profile: row.get("profile"),
        model: row.get("model"),
        qualified: crate::store::flag(row, "qualified"),
        gates: serde_json::from_str(&gates).unwrap_or(serde_json::Value::String(gates)),
        created_at: row.get("created_at"),
    }
}

/// The newest verdict per model and profile.
pub async fn latest_qualifications(store: &Store) -> Result<Vec<Qualification>> {
    let rows = sqlx::query(
        "SELECT * FROM qualifications WHERE id IN
             (SELECT MAX(id) FROM qualifications GROUP BY model, profile)
         ORDER BY model, profile",
    )
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(qualification).collect())
}

/// The verdicts recorded against one run.
pub async fn run_qualifications(store: &Store, run_id: i64) -> Result<Vec<Qualification>> {
    let rows = sqlx::query("SELECT * FROM qualifications WHERE run_id = $1 ORDER BY id")
        .bind(run_id)
        .fetch_all(store.pool())
        .await?;
    Ok(rows.iter().map(qualification).collect())
}
