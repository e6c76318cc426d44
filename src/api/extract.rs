//! A JSON body extractor whose rejections are Anthropic errors: a content
//! type other than `application/json`, malformed JSON and wrong types are 400
//! `invalid_request_error` naming the offending field, a body over the limit
//! is 413 `request_too_large`.
//!
//! Refused bodies are read to their end (up to a bound) before the answer
//! goes out: a server that answers and closes while the client is still
//! sending leaves the client with a broken pipe instead of the error.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body of type `T`.
pub struct ApiJson<T>(pub T);

/// The largest body [`ApiJson`] reads, as a request extension (the router
/// sets it from `--max-body-mib`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Without a [`BodyLimit`]: axum's own default.
const DEFAULT_LIMIT: usize = 2 << 20;

/// How much of a refused body is read and dropped so the client can read the
/// answer; past this (or [`DRAIN_TIME`]) the connection is closed instead.
const DRAIN_BYTES: usize = 256 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_LIMIT, |l| l.0);
        let (parts, body) = request.into_parts();
        if let Err(err) = require_json(&parts.headers) {
            drain(body).await;
            return Err(err);
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            // A client waiting for `100 Continue` has sent nothing yet.
            if !parts.headers.contains_key(header::EXPECT) {
                drain(body).await;
            }
            return Err(too_large(limit));
        }
        let bytes = read_limited(body, limit).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!(
        "request body is too large: the limit is {limit} bytes (--max-body-mib)"
    ))
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
/// Browsers send cross-site requests without a preflight only as
/// `text/plain` or forms: requiring JSON keeps web pages out.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::invalid(
            "content-type: `application/json` is required",
        ));
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if essence.as_deref() == Some("application/json") {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "content-type: expected `application/json`, got `{}`",
        String::from_utf8_lossy(value.as_bytes())
    )))
}

/// The body, or 413 once it passes `limit` (the rest is drained).
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            drain_stream(stream).await;
            return Err(too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.into())
}

/// Reads and drops what is left of a refused body, within bounds.
async fn drain(body: Body) {
    drain_stream(body.into_data_stream()).await;
}

async fn drain_stream(mut stream: axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Parses `bytes` as `T`, naming the field path of a type error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid("request body is empty; expected JSON"));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("The request body is not valid JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // Anthropic's wording for a field its schema does not have.
        if let Some(field) = inner
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field)
        {
            // The path names the field already, except at the top.
            let at = if path == "." { field } else { path.as_str() };
            return ApiError::invalid(format!("{at}: Extra inputs are not permitted"));
        }
        if path == "." {
            ApiError::invalid(inner)
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}
