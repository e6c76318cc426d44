//! Trends: one model on one suite over time — pass rate, latency, speeds,
//! cache-hit ratio and peak memory, one point a run (linked to it), runs that
//! `compare` flags against their previous comparable run marked; filtered by
//! label (branch) and target.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::charts::{line_chart, Chart, Line, RunValue, Unit};
use super::history::{complete_runs, suite_series, RunCases, SuitePoint};
use super::{links, query, DashboardState, Failure, JsonFailure, PageFailure};

pub(super) fn router() -> Router<DashboardState> {
    Router::new()
        .route("/dashboard/trends", get(page))
        .route("/api/trends", get(api))
}

/// `?model=&suite=&label=&target=`; an empty value means "any".
#[derive(Debug, Default, Deserialize)]
pub struct TrendsQuery {
    model: Option<String>,
    suite: Option<String>,
    label: Option<String>,
    target: Option<String>,
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// The trends page's data (also `/api/trends`).
#[derive(Debug, Serialize)]
pub struct Trends {
    /// Model shown.
    pub model: String,
    /// Suite shown.
    pub suite: String,
    /// Label filter.
    pub label: Option<String>,
    /// Target filter.
    pub target: Option<String>,
    /// What the filters can be set to.
    pub choices: Choices,
    /// One point per run, oldest first.
    pub points: Vec<SuitePoint>,
    /// The charts over those points.
    pub charts: Vec<Chart>,
}

/// Values the filter form offers.
#[derive(Debug, Serialize)]
pub struct Choices {
    /// Models with complete runs.
    pub models: Vec<String>,
    /// Suites the model ran.
    pub suites: Vec<String>,
    /// Labels of the model's runs of the suite.
    pub labels: Vec<String>,
    /// Targets of those runs.
    pub targets: Vec<String>,
}

fn sorted_unique(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = values.collect();
    v.sort();
    v.dedup();
    v
}

async fn trends(state: &DashboardState, q: TrendsQuery) -> Result<Trends, Failure> {
    let runs = complete_runs(state.store()).await?;
    let newest = runs
        .last()
        .ok_or_else(|| Failure::not_found("no complete runs in this database yet"))?;
    let model = given(&q.model).unwrap_or(&newest.run.model).to_string();
    let of_model: Vec<&RunCases> = runs.iter().filter(|r| r.run.model == model).collect();
    if of_model.is_empty() {
        return Err(Failure::not_found(format!(
            "no complete runs of model `{model}`"
        )));
    }
    let suite = match given(&q.suite) {
        Some(s) => s.to_string(),
        None => of_model
            .last()
            .and_then(|r| r.run.suites.first())
            .map(|s| s.suite.clone())
            .ok_or_else(|| Failure::not_found(format!("model `{model}` has no suites")))?,
    };
    let with_suite: Vec<&&RunCases> = of_model
        .iter()
        .filter(|r| r.run.suites.iter().any(|s| s.suite == suite))
        .collect();
    if with_suite.is_empty() {
        return Err(Failure::not_found(format!(
            "no complete runs of model `{model}` on suite `{suite}`"
        )));
    }
    let label = given(&q.label).map(str::to_string);
    let target = given(&q.target).map(str::to_string);
    let choices = Choices {
        models: sorted_unique(runs.iter().map(|r| r.run.model.clone())),
        suites: sorted_unique(
            of_model
                .iter()
                .flat_map(|r| r.run.suites.iter().map(|s| s.suite.clone())),
        ),
        labels: sorted_unique(with_suite.iter().filter_map(|r| r.run.label.clone())),
        targets: sorted_unique(with_suite.iter().map(|r| r.run.target.clone())),
    };
    let points = suite_series(&runs, &model, &suite, &state.inner.compare, |run| {
        label.as_ref().is_none_or(|l| run.label.as_ref() == Some(l))
            && target.as_ref().is_none_or(|t| &run.target == t)
    });
    let charts = charts(&points);
    Ok(Trends {
        model,
        suite,
        label,
        target,
        choices,
        points,
        charts,
    })
}

/// The charts of a series: each line takes one figure of every point.
fn charts(points: &[SuitePoint]) -> Vec<Chart> {
    let line = |name: &str,
                class: &str,
                value: &dyn Fn(&SuitePoint) -> Option<f64>,
                flag: &dyn Fn(&SuitePoint) -> bool| Line {
        name: name.to_string(),
        class: class.to_string(),
        values: points
            .iter()
            .map(|p| RunValue {
                run_id: p.run_id,
                href: links::run(p.run_id),
                context: context(p),
                value: value(p),
                regression: flag(p),
            })
            .collect(),
    };
    let latency = |metric: &'static str| {
        move |p: &SuitePoint| {
            p.comparison
                .as_ref()
                .is_some_and(|c| c.metrics.iter().any(|m| m == metric))
        }
    };
    let never = |_: &SuitePoint| false;
    vec![
        line_chart(
            "pass_rate",
            "Pass rate",
            Unit::Ratio,
            vec![line(
                "pass rate",
                "s0",
                &|p| Some(p.summary.pass_rate),
                &|p| p.comparison.as_ref().is_some_and(|c| c.quality),
            )],
        ),
        line_chart(
            "ttft",
            "Time to first token (ms)",
            Unit::Millis,
            vec![
                line("p50", "s0", &|p| p.summary.ttft_p50_ms, &latency("ttft_ms")),
                line("p95", "s1", &|p| p.summary.ttft_p95_ms, &never),
            ],
        ),
        line_chart(
            "e2e",
            "Request time, e2e (ms)",
            Unit::Millis,
            vec![
                line("p50", "s0", &|p| p.summary.e2e_p50_ms, &latency("e2e_ms")),
                line("p95", "s1", &|p| p.summary.e2e_p95_ms, &never),
            ],
        ),
        line_chart(
            "decode",
            "Decode speed, p50 (tok/s)",
            Unit::TokPerSec,
            vec![line(
                "decode",
                "s0",
                &|p| p.summary.decode_tok_s_p50,
                &latency("decode_tok_s"),
            )],
        ),
        line_chart(
            "prefill",
            "Prefill speed, p50 (tok/s)",
            Unit::TokPerSec,
            vec![line(
                "prefill",
                "s0",
                &|p| p.summary.prefill_tok_s_p50,
                &latency("prefill_tok_s"),
            )],
        ),
        line_chart(
            "cache_hit",
            "Cache-hit ratio",
            Unit::Ratio,
            vec![line(
                "cache hit",
                "s0",
                &|p| p.summary.cache_hit_ratio,
                &never,
            )],
        ),
        line_chart(
            "peak_memory",
            "Peak engine memory (MiB)",
            Unit::Bytes,
            vec![line(
                "peak memory",
                "s0",
                &|p| p.peak_memory_bytes.map(|b| b as f64),
                &never,
            )],
        ),
    ]
}

/// Date, label and commit of a point, for its tooltip.
fn context(p: &SuitePoint) -> String {
    let mut parts = vec![p
        .started_at
        .chars()
        .take(16)
        .collect::<String>()
        .replace('T', " ")];
    if let Some(label) = &p.label {
        parts.push(label.clone());
    }
    if let Some(commit) = &p.git_commit {
        parts.push(commit.chars().take(8).collect());
    }
    if p.concurrency > 1 {
        parts.push(format!("concurrency {}", p.concurrency));
    }
    parts.join(" · ")
}

async fn page(
    State(state): State<DashboardState>,
    q: Result<Query<TrendsQuery>, QueryRejection>,
) -> Result<Html<String>, PageFailure> {
    let view = trends(&state, query(q)?).await?;
    Ok(state.render("trends.html.j2", &view)?)
}

async fn api(
    State(state): State<DashboardState>,
    q: Result<Query<TrendsQuery>, QueryRejection>,
) -> Result<Json<Trends>, JsonFailure> {
    Ok(Json(trends(&state, query(q)?).await?))
}
