//! A Messages API client for the eval runner: streamed requests over reqwest,
//! the SSE stream parsed and assembled into a message the way the SDKs do,
//! and the request's figures measured from the stream (DESIGN.md's metric
//! names), so every target — showdown, Ollama, llama.cpp, the cloud — is
//! measured alike.

use std::time::Instant;

use anyhow::{Context, Result};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::store::RequestMetrics;

/// A Messages endpoint.
#[derive(Clone)]
pub struct MessagesClient {
    base_url: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

/// A request the endpoint refused (HTTP error) or failed mid-stream.
#[derive(Debug, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiFailure {
    /// HTTP status (200 for an `error` event after the stream started).
    pub status: u16,
    /// Anthropic error type.
    pub kind: String,
    /// Message.
    pub message: String,
}

/// A complete response with its figures.
#[derive(Debug, Clone)]
pub struct Response {
    /// The assembled message, in the non-streamed response's shape.
    pub message: Value,
    /// What the request cost.
    pub metrics: RequestMetrics,
}

impl Response {
    /// The text blocks, concatenated.
    pub fn text(&self) -> String {
        self.message["content"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("")
            })
            .unwrap_or_default()
    }

    /// The `tool_use` blocks.
    pub fn tool_uses(&self) -> Vec<Value> {
        self.message["content"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|b| b["type"] == "tool_use")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl MessagesClient {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str, api_key: Option<String>) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            http: reqwest::Client::new(),
        }
    }

    /// Sends `body` with `stream: true` and assembles the answer.
    pub async fn create(&self, body: &Value) -> Result<Response> {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let started = Instant::now();
        let mut request = self
            .http
            .post(format!("{}/v1/messages", self.base_url))
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("sending a request to {}", self.base_url))?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(ApiFailure {
                status,
                kind: parsed["error"]["type"]
                    .as_str()
                    .unwrap_or("http_error")
                    .to_string(),
                message: parsed["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or(text),
            }
            .into());
        }
        let mut events = response.bytes_stream().eventsource();
        let mut assembler = StreamAssembler::default();
        let mut ttft_ms = None;
        while let Some(event) = events.next().await {
            let event = event.context("reading the event stream")?;
            let data: Value = serde_json::from_str(&event.data)
                .with_context(|| format!("event `{}` carries no JSON", event.event))?;
            if event.event == "content_block_delta" && ttft_ms.is_none() {
                ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
            if event.event == "error" {
                return Err(ApiFailure {
                    status: 200,
                    kind: data["error"]["type"]
                        .as_str()
                        .unwrap_or("error")
                        .to_string(),
                    message: data["error"]["message"].as_str().unwrap_or("").to_string(),
                }
                .into());
            }
            let done = assembler.apply(&data)?;
            if done {
                break;
            }
        }
        let e2e_ms = started.elapsed().as_secs_f64() * 1000.0;
        let message = assembler.finish()?;
        let usage = &message["usage"];
        let count = |field: &str| usage[field].as_u64().unwrap_or(0);
        let output_tokens = count("output_tokens");
        let input_tokens = count("input_tokens");
        let metrics = RequestMetrics {
            ttft_ms,
            e2e_ms,
            input_tokens,
            cache_read_input_tokens: count("cache_read_input_tokens"),
            cache_creation_input_tokens: count("cache_creation_input_tokens"),
            output_tokens,
            prefill_tok_s: ttft_ms
                .filter(|t| *t > 0.0)
                .map(|t| input_tokens as f64 * 1000.0 / t),
            decode_tok_s: ttft_ms
                .filter(|t| e2e_ms > *t && output_tokens > 1)
                .map(|t| (output_tokens - 1) as f64 * 1000.0 / (e2e_ms - t)),
            stop_reason: message["stop_reason"].as_str().map(str::to_string),
        };
        Ok(Response { message, metrics })
    }
}

/// Builds the message from stream events, as the SDKs' accumulators do.
#[derive(Default)]
struct StreamAssembler {
    message: Option<Value>,
    /// Raw JSON of the tool_use block being streamed.
    partial_json: String,
    stopped: bool,
}

impl StreamAssembler {
    /// Applies one event; returns true at `message_stop`.
    fn apply(&mut self, data: &Value) -> Result<bool> {
        match data["type"].as_str().unwrap_or_default() {
            "message_start" => self.message = Some(data["message"].clone()),
            "content_block_start" => {
                let message = self.message_mut()?;
                let content = message["content"]
                    .as_array_mut()
                    .context("message content is not a list")?;
                content.push(data["content_block"].clone());
                self.partial_json.clear();
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().context("delta without index")? as usize;
                let delta = &data["delta"];
                match delta["type"].as_str().unwrap_or_default() {
                    "text_delta" => {
                        let message = self.message_mut()?;
                        let block = &mut message["content"][index];
                        let text = format!(
                            "{}{}",
                            block["text"].as_str().unwrap_or_default(),
                            delta["text"].as_str().unwrap_or_default()
                        );
                        block["text"] = Value::String(text);
                    }
                    "input_json_delta" => self
                        .partial_json
                        .push_str(delta["partial_json"].as_str().unwrap_or_default()),
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().context("stop without index")? as usize;
                let partial = std::mem::take(&mut self.partial_json);
                let message = self.message_mut()?;
                let block = &mut message["content"][index];
                if block["type"] == "tool_use" && !partial.is_empty() {
                    block["input"] = serde_json::from_str(&partial)
                        .with_context(|| format!("tool input is not JSON: {partial}"))?;
                }
            }
            "message_delta" => {
                let message = self.message_mut()?;
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                message["stop_sequence"] = data["delta"]["stop_sequence"].clone();
                if let Some(usage) = data["usage"].as_object() {
                    for (k, v) in usage {
                        if !v.is_null() {
                            message["usage"][k] = v.clone();
                        }
                    }
                }
            }
            "message_stop" => {
                self.stopped = true;
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    fn message_mut(&mut self) -> Result<&mut Value> {
        self.message
            .as_mut()
            .context("the stream did not start with message_start")
    }

    fn finish(self) -> Result<Value> {
        anyhow::ensure!(self.stopped, "the stream ended before message_stop");
        self.message.context("the stream carried no message")
    }
}
