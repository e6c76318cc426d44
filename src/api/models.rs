//! `GET /v1/models` and `GET /v1/models/{id}`, in Anthropic's shapes.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::wire::ModelObject;
use super::AppState;

/// The models routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
}

/// Pagination as Anthropic documents it.
#[derive(Debug, Deserialize)]
struct ListParams {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after_id: Option<String>,
    #[serde(default)]
    before_id: Option<String>,
}

fn object(state: &AppState, name: &str) -> ModelObject {
    ModelObject {
        kind: "model",
        id: name.to_string(),
        display_name: name.to_string(),
        created_at: state.started_at.clone(),
    }
}

async fn list_models(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be between 1 and 1000"));
    }
    let names: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
    let position = |id: &str| {
        names
            .iter()
            .position(|n| *n == id)
            .ok_or_else(|| ApiError::invalid(format!("no model with id `{id}`")))
    };
    let (start, end) = match (&params.after_id, &params.before_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "after_id and before_id cannot be used together",
            ))
        }
        (Some(after), None) => {
            let start = position(after)? + 1;
            (start, (start + limit).min(names.len()))
        }
        (None, Some(before)) => {
            let end = position(before)?;
            (end.saturating_sub(limit), end)
        }
        (None, None) => (0, limit.min(names.len())),
    };
    let page: Vec<ModelObject> = names[start..end]
        .iter()
        .map(|n| object(&state, n))
        .collect();
    let has_more = match params.before_id {
        Some(_) => start > 0,
        None => end < names.len(),
    };
    Ok(Json(json!({
        "data": page,
        "has_more": has_more,
        "first_id": page.first().map(|m| m.id.clone()),
        "last_id": page.last().map(|m| m.id.clone()),
    })))
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let model = state.resolve(&id)?;
    let mut object = object(&state, &model.name);
    object.id = id;
    Ok(Json(object))
}
