//! `showdown serve`: an Anthropic Messages-compatible API over the local
//! engine, with prompt caching, so Claude Code or any Anthropic SDK can point
//! `ANTHROPIC_BASE_URL` at it.
//!
//! The router is composed per area (`messages`, `models`) under middleware that
//! gives every response a `request-id`, refuses foreign `Host`s and origins
//! ([`crate::host_check`]), checks the API key, bounds the body size and
//! renders every error, the router's own 405s included, in Anthropic's
//! envelope. Each served model has one
//! engine worker thread ([`worker`]) with its own prompt cache.

mod error;
mod extract;
mod ids;
mod messages;
mod models;
mod output;
mod prompt;
mod prompt_cache;
mod tool_use;
mod wire;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use showdown_engine::Engine;

pub use error::ApiError;
pub use output::{OutputEvent, OutputParser};
pub use prompt::{render_request_prompt, render_request_prompt_injected, ToolPromptFormat};
pub use prompt_cache::PromptCacheConfig;

use crate::host_check::{check_host, AllowedHosts};
use crate::models::ResolvedModel;
use extract::BodyLimit;
use worker::WorkerHandle;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Required key (`x-api-key` or `Authorization: Bearer`), if any.
    pub api_key: Option<String>,
    /// `PATTERN=NAME` aliases: requested names matching PATTERN (`*` wildcards)
    /// are served by model NAME.
    pub aliases: Vec<(String, String)>,
    /// Prompt-cache settings per model.
    pub cache: PromptCacheConfig,
    /// Requests waiting per model before 529.
    pub queue_depth: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Log prompt text (never logged otherwise).
    pub log_prompts: bool,
    /// Host names served beyond loopback names and IP addresses.
    pub allowed_hosts: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            aliases: Vec::new(),
            cache: PromptCacheConfig {
                enabled: true,
                slots: 4,
                budget_bytes: 2 << 30,
            },
            queue_depth: 16,
            max_body_bytes: 32 << 20,
            log_prompts: false,
            allowed_hosts: Vec::new(),
        }
    }
}

/// A model the server answers for.
pub struct ServedModel {
    /// Its name in requests and `/v1/models`.
    pub name: String,
    /// The pinned file's sha256.
    pub sha256: String,
    /// The loaded engine (shared with its worker thread).
    pub engine: Arc<Engine>,
    /// How the model writes tool calls, if it can call tools.
    pub tool_format: Option<crate::tools::ToolCallFormat>,
    /// The tokenizer environment tool-call grammars are built over (built on
    /// the first request with tools: it indexes the whole vocabulary).
    grammar_env: std::sync::OnceLock<Result<Arc<crate::tools::ToolGrammarEnv>, String>>,
    worker: WorkerHandle,
}

impl ServedModel {
    /// The grammar environment, built once.
    fn grammar_env(&self) -> Result<Arc<crate::tools::ToolGrammarEnv>, ApiError> {
        self.grammar_env
            .get_or_init(|| {
                crate::tools::ToolGrammarEnv::new(self.engine.tokenizer())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| ApiError::internal(format!("tool-call grammar: {e}")))
    }
}

/// State shared by the handlers.
pub struct AppState {
    config: ServeConfig,
    allowed_hosts: Arc<AllowedHosts>,
    models: Vec<Arc<ServedModel>>,
    started_at: String,
}

impl AppState {
    /// Starts one engine worker per model.
    pub fn new(config: ServeConfig, engines: Vec<(ResolvedModel, Engine)>) -> Result<Self> {
        let mut models = Vec::new();
        for (resolved, engine) in engines {
            let engine = Arc::new(engine);
            let worker = WorkerHandle::spawn(
                &resolved.name,
                engine.clone(),
                config.cache,
                config.queue_depth,
            )
            .context("starting an engine thread")?;
            let tool_format = resolved
                .tool_call_format
                .as_deref()
                .map(crate::tools::ToolCallFormat::from_name)
                .transpose()
                .with_context(|| format!("model {}", resolved.name))?
                .or_else(|| {
                    crate::tools::ToolCallFormat::for_architecture(
                        &engine.model().info().architecture,
                    )
                });
            models.push(Arc::new(ServedModel {
                name: resolved.name.clone(),
                sha256: resolved.sha256.clone(),
                engine,
                tool_format,
                grammar_env: std::sync::OnceLock::new(),
                worker,
            }));
        }
        let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Ok(Self {
            allowed_hosts: Arc::new(AllowedHosts::new(&config.allowed_hosts)),
            config,
            models,
            started_at,
        })
    }

    /// The served model a requested name means, through aliases.
    fn resolve(&self, requested: &str) -> Result<Arc<ServedModel>, ApiError> {
        if let Some(m) = self.models.iter().find(|m| m.name == requested) {
            return Ok(m.clone());
        }
        for (pattern, target) in &self.config.aliases {
            if glob_match(pattern, requested) {
                if let Some(m) = self.models.iter().find(|m| &m.name == target) {
                    return Ok(m.clone());
                }
            }
        }
        Err(ApiError::not_found(format!("model: {requested}")))
    }
}

/// The whole application: API routes under the shared middleware.
pub fn app(state: Arc<AppState>) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .merge(messages::router())
        .merge(models::router())
        .route("/", get(root).head(root))
        .route("/showdown/stats", get(stats))
        .fallback(unknown_route)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::Extension(BodyLimit(max_body)))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(
            state.allowed_hosts.clone(),
            check_host,
        ))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Serves on the configured address until Ctrl-C.
pub async fn serve(state: Arc<AppState>) -> Result<()> {
    let addr = state.config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    serve_on(listener, state).await
}

/// Serves the API and `extra` routes (the dashboard) on the configured
/// address until Ctrl-C. `extra` keeps its own middleware: the API's
/// error envelope and key check stay on the API routes.
pub async fn serve_with(state: Arc<AppState>, extra: Router) -> Result<()> {
    let addr = state.config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "dashboard at /dashboard");
    let app = app(state)
        .merge(extra)
        .layer(middleware::from_fn(browsers_to_dashboard));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}

/// Sends a browser asking for `/` to the dashboard; API clients (and `HEAD /`
/// health checks) still get the API's answer.
async fn browsers_to_dashboard(request: Request, next: Next) -> Response {
    let wants_html = request
        .headers()
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if request.method() == Method::GET && request.uri().path() == "/" && wants_html {
        return axum::response::Redirect::temporary("/dashboard").into_response();
    }
    next.run(request).await
}

/// Serves on `listener` (tests bind port 0) until Ctrl-C.
pub async fn serve_on(listener: tokio::net::TcpListener, state: Arc<AppState>) -> Result<()> {
    tracing::info!(
        addr = %listener.local_addr()?,
        models = ?state.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        "serving the Messages API"
    );
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}

async fn root() -> &'static str {
    "showdown: Anthropic Messages API at /v1/messages\n"
}

/// Per-model counters: generations, cancellations, cache use.
async fn stats(State(state): State<Arc<AppState>>) -> axum::Json<serde_json::Value> {
    let models: Vec<serde_json::Value> = state
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "sha256": m.sha256,
                "context_length": m.engine.context_length(),
                "stats": m.worker.stats(),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "models": models }))
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// Gives every response a `request-id` header and puts the id into error
/// bodies; an error some layer answered bare (the router's 405) gets the
/// envelope too.
async fn request_id(request: Request, next: Next) -> Response {
    let id = ids::request_id();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let error = response
        .extensions()
        .get::<ApiError>()
        .cloned()
        .or_else(|| {
            let status = response.status();
            (status.is_client_error() || status.is_server_error()).then(|| {
                let message = match status {
                    StatusCode::METHOD_NOT_ALLOWED => {
                        format!("method {method} is not allowed on {path}")
                    }
                    other => format!(
                        "{method} {path}: {}",
                        other.canonical_reason().unwrap_or("error")
                    ),
                };
                ApiError::from_status(status, message)
            })
        });
    let mut response = match error {
        Some(err) => {
            let (mut parts, _) = response.into_parts();
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            parts.headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let body = axum::body::Body::from(err.body(Some(&id)).to_string());
            Response::from_parts(parts, body)
        }
        None => response,
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

/// Checks the API key when the server has one.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.config.api_key else {
        return next.run(request).await;
    };
    if request.method() == Method::HEAD && request.uri().path() == "/" {
        return next.run(request).await;
    }
    let headers = request.headers();
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match given {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::authentication("invalid x-api-key").into_response(),
        None => ApiError::authentication("x-api-key header is required").into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_glob() {
        assert!(glob_match("claude-*", "claude-3-5-haiku-20241022"));
        assert!(glob_match("*haiku*", "claude-3-5-haiku-20241022"));
        assert!(!glob_match("claude-*", "gpt-4"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
