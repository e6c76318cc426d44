//! Two runs side by side: the verdict `showdown compare` gives (same library
//! call, same thresholds), flipped cases first, then pass counts and latency
//! changes with their significance.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::history::HISTORY_LIMIT;
use super::{links, query, resolve_run, DashboardState, Failure, JsonFailure, PageFailure};
use crate::report::{comparability, compare_stored, Comparison};

pub(super) fn router() -> Router<DashboardState> {
    Router::new()
        .route("/dashboard/compare", get(page))
        .route("/api/compare", get(api))
}

/// `?base=&head=&force=`: run ids, `latest` or `latest:LABEL`.
#[derive(Debug, Default, Deserialize)]
pub struct CompareQuery {
    base: Option<String>,
    head: Option<String>,
    #[serde(default)]
    force: bool,
}

/// The compare page's data (also `/api/compare`).
#[derive(Debug, Serialize)]
pub struct ComparePage {
    /// Base selector as asked (or chosen).
    pub base: Option<String>,
    /// Head selector.
    pub head: Option<String>,
    /// The comparison, when both runs are known.
    pub comparison: Option<Comparison>,
    /// Every flipped case of every suite, pass → fail first.
    pub flips: Vec<Flip>,
    /// Runs the form offers, newest first.
    pub runs: Vec<RunChoice>,
    /// Links to both runs.
    pub base_href: Option<String>,
    /// Link to the head run.
    pub head_href: Option<String>,
}

/// A flipped case.
#[derive(Debug, Serialize)]
pub struct Flip {
    /// Suite.
    pub suite: String,
    /// Case id.
    pub case_id: String,
    /// `pass_to_fail` or `fail_to_pass`.
    pub direction: String,
    /// Base pass rate.
    pub base_pass_rate: f64,
    /// Head pass rate.
    pub head_pass_rate: f64,
    /// Must-pass case.
    pub must_pass: bool,
}

/// A run in the form's lists.
#[derive(Debug, Serialize)]
pub struct RunChoice {
    /// Id.
    pub id: i64,
    /// `#id label model date`.
    pub title: String,
}

async fn compare_page(
    state: &DashboardState,
    q: CompareQuery,
    pick_defaults: bool,
) -> Result<ComparePage, Failure> {
    let store = state.store();
    let runs = store.list_runs(HISTORY_LIMIT).await?;
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let (mut base, mut head) = (given(&q.base), given(&q.head));
    if pick_defaults && base.is_none() && head.is_none() {
        // The newest complete run against its previous comparable run.
        let complete: Vec<_> = runs.iter().filter(|r| r.status == "complete").collect();
        if let Some(newest) = complete.first() {
            if let Some(previous) = complete[1..].iter().find(|r| {
                r.model == newest.model
                    && r.label == newest.label
                    && comparability(r, newest).is_empty()
            }) {
                base = Some(previous.id.to_string());
                head = Some(newest.id.to_string());
            }
        }
    }
    let choices = runs
        .iter()
        .map(|r| RunChoice {
            id: r.id,
            title: format!(
                "#{} {} {} {} ({})",
                r.id,
                r.label.as_deref().unwrap_or("-"),
                r.model,
                r.started_at.chars().take(10).collect::<String>(),
                r.status
            ),
        })
        .collect();
    let mut page = ComparePage {
        base: base.clone(),
        head: head.clone(),
        comparison: None,
        flips: Vec::new(),
        runs: choices,
        base_href: None,
        head_href: None,
    };
    let (base, head) = match (base, head) {
        (Some(b), Some(h)) => (b, h),
        (None, None) if pick_defaults => return Ok(page),
        _ => {
            return Err(Failure::bad_request(
                "base and head are both required: a run id, latest or latest:LABEL",
            ))
        }
    };
    let base_id = resolve_run(store, &base).await?;
    let head_id = resolve_run(store, &head).await?;
    let comparison = compare_stored(
        store,
        &base_id.to_string(),
        &head_id.to_string(),
        &state.inner.compare,
        q.force,
    )
    .await?;
    let mut flips: Vec<Flip> = comparison
        .suites
        .iter()
        .flat_map(|s| {
            s.flips.iter().map(|f| Flip {
                suite: s.suite.clone(),
                case_id: f.case_id.clone(),
                direction: f.direction.clone(),
                base_pass_rate: f.base_pass_rate,
                head_pass_rate: f.head_pass_rate,
                must_pass: f.must_pass,
            })
        })
        .collect();
    // Losses first, must-pass losses before the rest.
    flips.sort_by_key(|f| (f.direction != "pass_to_fail", !f.must_pass));
    page.flips = flips;
    page.comparison = Some(comparison);
    page.base_href = Some(links::run(base_id));
    page.head_href = Some(links::run(head_id));
    Ok(page)
}

async fn page(
    State(state): State<DashboardState>,
    q: Result<Query<CompareQuery>, QueryRejection>,
) -> Result<Html<String>, PageFailure> {
    let view = compare_page(&state, query(q)?, true).await?;
    Ok(state.render("compare.html.j2", &view)?)
}

async fn api(
    State(state): State<DashboardState>,
    q: Result<Query<CompareQuery>, QueryRejection>,
) -> Result<Json<ComparePage>, JsonFailure> {
    Ok(Json(compare_page(&state, query(q)?, false).await?))
}
