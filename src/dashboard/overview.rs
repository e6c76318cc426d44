//! The overview: every model × suite with its latest figures, the model's
//! qualification verdict and a sparkline of its last runs; then the newest
//! runs of any status.

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::charts::{sparkline, RunValue, Sparkline, Unit};
use super::history::{
    complete_runs, latest_qualifications, model_suites, suite_series, Qualification, Regression,
    SuitePoint,
};
use super::{links, DashboardState, Failure, JsonFailure, PageFailure};

/// Runs in a sparkline.
const SPARK_RUNS: usize = 20;
/// Runs in the "recent runs" table.
const RECENT_RUNS: u32 = 20;

pub(super) fn router() -> Router<DashboardState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/api/overview", get(api))
}

/// The overview's data (also `/api/overview`).
#[derive(Debug, Serialize)]
pub struct Overview {
    /// One row per model and suite.
    pub rows: Vec<OverviewRow>,
    /// The newest runs, whatever their status.
    pub recent_runs: Vec<RecentRun>,
    /// The newest qualification verdict per model and profile.
    pub qualifications: Vec<Qualification>,
}

/// A model on a suite.
#[derive(Debug, Serialize)]
pub struct OverviewRow {
    /// Model.
    pub model: String,
    /// Suite.
    pub suite: String,
    /// Complete runs of the pair.
    pub runs: usize,
    /// The newest of them.
    pub latest_run: i64,
    /// Its label.
    pub latest_label: Option<String>,
    /// Its target.
    pub latest_target: String,
    /// Its start time.
    pub latest_started_at: String,
    /// Passing samples / samples in that run.
    pub pass_rate: f64,
    /// Passing samples.
    pub passed: usize,
    /// Samples.
    pub samples: usize,
    /// Median request time.
    pub e2e_p50_ms: Option<f64>,
    /// Median time to first token.
    pub ttft_p50_ms: Option<f64>,
    /// Median decode speed.
    pub decode_tok_s_p50: Option<f64>,
    /// The newest run against the previous comparable one.
    pub latest_comparison: Option<Regression>,
    /// The model's newest qualification verdict (first profile by name).
    pub qualification: Option<Qualification>,
    /// Pass rate over the last runs (quality regressions marked).
    pub sparkline: Sparkline,
    /// Median request time over the last runs (latency regressions marked).
    pub e2e_sparkline: Sparkline,
    /// The pair's trends page.
    pub trends_href: String,
    /// The newest run's page.
    pub run_href: String,
}

/// A run in the recent-runs table.
#[derive(Debug, Serialize)]
pub struct RecentRun {
    /// Id.
    pub id: i64,
    /// Status.
    pub status: String,
    /// Label.
    pub label: Option<String>,
    /// Model.
    pub model: String,
    /// Target.
    pub target: String,
    /// Suite names.
    pub suites: Vec<String>,
    /// Start time.
    pub started_at: String,
    /// Its page.
    pub href: String,
}

async fn overview(state: &DashboardState) -> Result<Overview, Failure> {
    let store = state.store();
    let runs = complete_runs(store).await?;
    let qualifications = latest_qualifications(store).await?;
    let mut rows = Vec::new();
    for (model, suite) in model_suites(&runs) {
        let points = suite_series(&runs, &model, &suite, &state.inner.compare, |_| true);
        let Some(latest) = points.last() else {
            continue;
        };
        let last = &points[points.len().saturating_sub(SPARK_RUNS)..];
        let spark = |value: &dyn Fn(&SuitePoint) -> Option<f64>,
                     flagged: &dyn Fn(&Regression) -> bool| {
            last.iter()
                .map(|p| RunValue {
                    run_id: p.run_id,
                    href: links::run(p.run_id),
                    context: p.started_at.chars().take(10).collect(),
                    value: value(p),
                    regression: p.comparison.as_ref().is_some_and(flagged),
                })
                .collect()
        };
        let pass_spark = spark(&|p| Some(p.summary.pass_rate), &|c| c.quality);
        let e2e_spark = spark(&|p| p.summary.e2e_p50_ms, &|c| !c.metrics.is_empty());
        rows.push(OverviewRow {
            model: model.clone(),
            suite: suite.clone(),
            runs: points.len(),
            latest_run: latest.run_id,
            latest_label: latest.label.clone(),
            latest_target: latest.target.clone(),
            latest_started_at: latest.started_at.clone(),
            pass_rate: latest.summary.pass_rate,
            passed: latest.summary.passed,
            samples: latest.summary.samples,
            e2e_p50_ms: latest.summary.e2e_p50_ms,
            ttft_p50_ms: latest.summary.ttft_p50_ms,
            decode_tok_s_p50: latest.summary.decode_tok_s_p50,
            latest_comparison: latest.comparison.clone(),
            qualification: qualifications.iter().find(|q| q.model == model).cloned(),
            sparkline: sparkline(pass_spark, Unit::Ratio),
            e2e_sparkline: sparkline(e2e_spark, Unit::Millis),
            trends_href: links::trends(&model, &suite, None, None),
            run_href: links::run(latest.run_id),
        });
    }
    let recent_runs = store
        .list_runs(RECENT_RUNS)
        .await?
        .into_iter()
        .map(|r| RecentRun {
            id: r.id,
            status: r.status,
            label: r.label,
            model: r.model,
            target: r.target,
            suites: r.suites.into_iter().map(|s| s.suite).collect(),
            started_at: r.started_at,
            href: links::run(r.id),
        })
        .collect();
    Ok(Overview {
        rows,
        recent_runs,
        qualifications,
    })
}

async fn page(State(state): State<DashboardState>) -> Result<Html<String>, PageFailure> {
    let view = overview(&state).await?;
    Ok(state.render("overview.html.j2", &view)?)
}

async fn api(State(state): State<DashboardState>) -> Result<Json<Overview>, JsonFailure> {
    Ok(Json(overview(&state).await?))
}
