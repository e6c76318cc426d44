//! Where a run sends its requests: `builtin:MODEL` starts showdown's own
//! server on an ephemeral loopback port for the run; anything else is the base
//! URL of a Messages endpoint (showdown elsewhere, Ollama, llama.cpp's server,
//! vLLM, Anthropic's cloud).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use showdown_engine::ResidentMemory;

use crate::api::{serve_on, AppState, ServeConfig};
use crate::models::{resolve_model, ModelStore};

/// A target ready to take requests.
pub struct Target {
    /// As given: `builtin:NAME` or a URL.
    pub spec: String,
    /// Base URL the client talks to.
    pub base_url: String,
    /// Model name sent in requests.
    pub model: String,
    /// sha256 of the model file, for builtin targets.
    pub model_sha256: Option<String>,
    server: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Target {
    /// Starts or names the target. `model` is required for URL targets;
    /// `in_flight` requests at once must fit the builtin server's queue.
    pub async fn start(
        spec: &str,
        model: Option<&str>,
        store: &ModelStore,
        in_flight: usize,
    ) -> Result<Self> {
        if let Some(name) = spec.strip_prefix("builtin:") {
            let resolved = resolve_model(name, store)?;
            let engine = crate::load_engine(&resolved, None)?;
            let model = resolved.name.clone();
            let sha = resolved.sha256.clone();
            let defaults = ServeConfig::default();
            let config = ServeConfig {
                queue_depth: defaults.queue_depth.max(in_flight),
                ..defaults
            };
            let state = Arc::new(AppState::new(config, vec![(resolved, engine)])?);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a loopback port for the builtin server")?;
            let base_url = format!("http://{}", listener.local_addr()?);
            let server = tokio::spawn(serve_on(listener, state));
            return Ok(Self {
                spec: spec.to_string(),
                base_url,
                model,
                model_sha256: Some(sha),
                server: Some(server),
            });
        }
        if !(spec.starts_with("http://") || spec.starts_with("https://")) {
            bail!("target `{spec}`: expected builtin:MODEL or an http(s) URL");
        }
        let model = model.with_context(|| {
            format!("target {spec} needs --model: the model name the endpoint serves")
        })?;
        Ok(Self {
            spec: spec.to_string(),
            base_url: spec.trim_end_matches('/').to_string(),
            model: model.to_string(),
            model_sha256: None,
            server: None,
        })
    }

    /// Peak resident memory of the engine, when it runs in this process.
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        self.server
            .as_ref()
            .and_then(|_| ResidentMemory::read())
            .map(|m| m.peak_bytes)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
