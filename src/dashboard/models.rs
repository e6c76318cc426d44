//! The models: every pinned model (hash, architecture, total and active
//! parameters read from its GGUF header, file size), with the runs that used
//! it and their peak memory; then models runs used that are not pinned in the
//! models file (URL targets, `path:` and `ollama:` references).

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use showdown_engine::Gguf;

use super::history::HISTORY_LIMIT;
use super::{links, DashboardState, Failure, JsonFailure, PageFailure};
use crate::models::{ModelSpec, ModelStatus};
use crate::store::RunRow;

pub(super) fn router() -> Router<DashboardState> {
    Router::new()
        .route("/dashboard/models", get(page))
        .route("/api/models", get(api))
}

/// The models page's data (also `/api/models`).
#[derive(Debug, Serialize)]
pub struct ModelsPage {
    /// Where the pins come from (the embedded models file, or a path).
    pub catalogue: Option<String>,
    /// Pinned models, then models only runs know.
    pub models: Vec<ModelRow>,
}

/// One model.
#[derive(Debug, Default, Serialize)]
pub struct ModelRow {
    /// Name.
    pub name: String,
    /// Pinned in the models file.
    pub pinned: bool,
    /// The default model.
    pub default: bool,
    /// GGUF architecture.
    pub architecture: Option<String>,
    /// Pinned sha256 (or the one runs recorded).
    pub sha256: Option<String>,
    /// Context length served.
    pub context_length: Option<u32>,
    /// Tool-call format.
    pub tool_call_format: Option<String>,
    /// Where the file comes from.
    pub source: Option<String>,
    /// In the local cache.
    pub cached: bool,
    /// File size.
    pub file_bytes: Option<u64>,
    /// Parameters in the file.
    pub total_parameters: Option<u64>,
    /// Parameters a token uses (total less the experts it is not routed to).
    pub active_parameters: Option<u64>,
    /// Experts per layer and experts used per token, for an MoE.
    pub experts: Option<(u32, u32)>,
    /// Runs of this model.
    pub runs: usize,
    /// Its newest run.
    pub latest_run: Option<i64>,
    /// Link to it.
    pub latest_run_href: Option<String>,
    /// Peak engine memory of the newest run that measured it.
    pub peak_memory_bytes: Option<i64>,
}

/// Parameter counts and experts from the GGUF header (no weights are read).
fn header_facts(row: &mut ModelRow, path: &std::path::Path) {
    let Ok(gguf) = Gguf::open(path) else {
        return;
    };
    let total = gguf.parameter_count();
    row.total_parameters = Some(total);
    row.architecture
        .get_or_insert_with(|| gguf.architecture().to_string());
    let experts = gguf.arch_u32("expert_count").ok().filter(|&e| e > 0);
    let used = gguf.arch_u32("expert_used_count").ok();
    row.active_parameters = Some(match (experts, used) {
        (Some(e), Some(k)) if k < e => {
            let hidden = gguf.arch_u32("embedding_length").unwrap_or(0) as u64;
            let layers = gguf.arch_u32("block_count").unwrap_or(0) as u64;
            let ff = gguf
                .arch_u32("expert_feed_forward_length")
                .or_else(|_| gguf.arch_u32("feed_forward_length"))
                .unwrap_or(0) as u64;
            row.experts = Some((e, k));
            // Gate, up and down of every expert a token is not routed to.
            total.saturating_sub((e - k) as u64 * 3 * hidden * ff * layers)
        }
        _ => total,
    });
}

fn add_runs(row: &mut ModelRow, runs: &[&RunRow]) {
    row.runs = runs.len();
    row.latest_run = runs.first().map(|r| r.id);
    row.latest_run_href = row.latest_run.map(links::run);
    row.peak_memory_bytes = runs.iter().find_map(|r| r.peak_memory_bytes);
}

fn pinned_row(spec: &ModelSpec, state: &DashboardState, runs: &[&RunRow]) -> ModelRow {
    let mut row = ModelRow {
        name: spec.name.clone(),
        pinned: true,
        default: spec.default,
        architecture: Some(spec.architecture.clone()),
        sha256: Some(spec.sha256.clone()),
        context_length: Some(spec.context_length),
        tool_call_format: Some(spec.tool_call_format.clone()),
        source: Some(spec.source.to_string()),
        ..Default::default()
    };
    if let Some(store) = &state.inner.models {
        if let Ok(ModelStatus::Present { size }) = store.status(spec) {
            row.cached = true;
            row.file_bytes = Some(size);
            header_facts(&mut row, &store.cached_path(&spec.name));
        }
    }
    add_runs(&mut row, runs);
    row
}

async fn models_page(state: &DashboardState) -> Result<ModelsPage, Failure> {
    let runs = state.store().list_runs(HISTORY_LIMIT).await?;
    let state = state.clone();
    // Reading GGUF headers is file I/O: off the async threads.
    tokio::task::spawn_blocking(move || {
        let of = |name: &str| runs.iter().filter(|r| r.model == name).collect::<Vec<_>>();
        let mut models: Vec<ModelRow> = match &state.inner.models {
            Some(store) => store
                .catalogue()
                .models()
                .iter()
                .map(|spec| pinned_row(spec, &state, &of(&spec.name)))
                .collect(),
            None => Vec::new(),
        };
        let mut others: Vec<&str> = runs
            .iter()
            .map(|r| r.model.as_str())
            .filter(|name| !models.iter().any(|m| m.name == *name))
            .collect();
        others.sort();
        others.dedup();
        for name in others {
            let of_model = of(name);
            let mut row = ModelRow {
                name: name.to_string(),
                sha256: of_model.iter().find_map(|r| r.model_sha256.clone()),
                source: of_model.first().map(|r| format!("target: {}", r.target)),
                ..Default::default()
            };
            add_runs(&mut row, &of_model);
            models.push(row);
        }
        ModelsPage {
            catalogue: state
                .inner
                .models
                .as_ref()
                .map(|s| s.catalogue().origin().to_string()),
            models,
        }
    })
    .await
    .map_err(Failure::internal)
}

async fn page(State(state): State<DashboardState>) -> Result<Html<String>, PageFailure> {
    let view = models_page(&state).await?;
    Ok(state.render("models.html.j2", &view)?)
}

async fn api(State(state): State<DashboardState>) -> Result<Json<ModelsPage>, JsonFailure> {
    Ok(Json(models_page(&state).await?))
}
