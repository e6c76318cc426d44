//! Errors in Anthropic's envelope:
//! `{"type":"error","error":{"type","message"},"request_id"}`.
//!
//! Handlers return [`ApiError`]; its response carries the error in its
//! extensions so the request-id middleware can add the id to the body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An API error with its HTTP status and Anthropic error type.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Anthropic's error type, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// What went wrong, for the client.
    pub message: String,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    /// 401 `authentication_error`.
    pub fn authentication(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }
    /// 403 `permission_error`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }
    /// 404 `not_found_error`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }
    /// 413 `request_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", message)
    }
    /// 529 `overloaded_error`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(529).expect("529 is a valid status");
        Self::new(status, "overloaded_error", message)
    }
    /// 500 `api_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", message)
    }

    /// The envelope for a bare `status` some layer answered with (a 405 from
    /// the router, say): the same Anthropic type as its handler would use.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            500.. => "api_error",
            _ => "invalid_request_error",
        };
        Self::new(status, kind, message)
    }

    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// The `error` object of the envelope (also used for SSE `error` events).
    pub fn body(&self, request_id: Option<&str>) -> serde_json::Value {
        json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
            "request_id": request_id,
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body(None))).into_response();
        if self.kind == "overloaded_error" {
            // The queue drains a generation at a time: a second is a fair wait.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(self);
        response
    }
}

impl From<showdown_engine::EngineError> for ApiError {
    fn from(err: showdown_engine::EngineError) -> Self {
        use showdown_engine::EngineError;
        match err {
            EngineError::PromptTooLong { tokens, max } => Self::invalid(format!(
                "prompt is too long: {tokens} tokens > {max} maximum"
            )),
            EngineError::InvalidRequest(msg) => Self::invalid(msg),
            other => Self::internal(other.to_string()),
        }
    }
}
