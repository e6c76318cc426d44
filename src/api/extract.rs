//! A JSON body extractor whose rejections are Anthropic errors: malformed JSON
//! and wrong types are 400 `invalid_request_error` naming the offending field,
//! a body over the limit is 413 `request_too_large`. The content type is not
//! checked: clients that send JSON without saying so are served.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body of type `T`.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large("request body is too large")
                } else {
                    ApiError::invalid(format!("could not read the request body: {rejection}"))
                }
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as `T`, naming the field path of a type error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid("request body is empty; expected JSON"));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(inner.to_string())
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}
