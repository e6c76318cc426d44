//! A Messages API client for the eval runner: streamed requests over reqwest,
//! the SSE stream parsed and assembled into a message the way the SDKs do,
//! and the request's figures measured from the stream (DESIGN.md's metric
//! names), so every target — showdown, Ollama, llama.cpp, the cloud — is
//! measured alike.
//!
//! The target is a server the runner does not control: every event is
//! checked before it is applied (a malformed or hostile stream is an error on
//! the case, never a panic), and every wait is bounded ([`Timeouts`]).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::store::RequestMetrics;

/// How long the client waits at each stage of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening the TCP (and TLS) connection.
    pub connect: Duration,
    /// Request sent → the response's headers and its first event: covers a
    /// slow local model's prefill of a long prompt.
    pub first_byte: Duration,
    /// Between two events once the stream has started.
    pub idle: Duration,
    /// Request sent → `message_stop`: a stream that keeps sending pings or
    /// trickling text resets the idle timeout forever, this one it does not.
    pub answer: Duration,
}

/// The most event data one answer may carry; a stream past it is a hostile
/// or runaway target, not an answer (a 32k-token answer is about 4 MiB).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

impl Default for Timeouts {
    /// Generous enough for a slow local model on a small CPU: 10 s to
    /// connect, 600 s to the first event, 120 s between events, an hour for
    /// the whole answer.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(600),
            idle: Duration::from_secs(120),
            answer: Duration::from_secs(3600),
        }
    }
}

/// A Messages endpoint.
#[derive(Clone)]
pub struct MessagesClient {
    base_url: String,
    api_key: Option<String>,
    http: reqwest::Client,
    timeouts: Timeouts,
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
    /// How long the target asked to be left alone (`retry-after`, seconds).
    pub retry_after: Option<Duration>,
}

/// Statuses that mean "not now" rather than "no": rate limited (429), a proxy
/// in front of vLLM or SGLang out of capacity (503), Anthropic's API
/// overloaded (529). Sent before any event, so a retry repeats nothing.
const RETRYABLE: [u16; 3] = [429, 503, 529];

/// How many times a request turned away for load is sent again; with
/// `--concurrency` a rate-limited cloud API does this routinely, and a case
/// must not fail (and score differently from a sequential run) for it.
pub const MAX_RETRIES: u32 = 4;

/// The longest wait between two tries, whatever `retry-after` asks.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// The wait before retry `attempt` (0-based) when the target names none.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500) * 2u32.saturating_pow(attempt)
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

/// `future`, or an error naming what did not arrive within `limit`.
async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, future).await.map_err(|_| {
        anyhow::anyhow!(
            "timed out after {} s waiting for {what}",
            limit.as_secs_f64()
        )
    })
}

impl MessagesClient {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8080`) with the
    /// default [`Timeouts`].
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self> {
        Self::with_timeouts(base_url, api_key, Timeouts::default())
    }

    /// A client for `base_url` that gives up after `timeouts`.
    pub fn with_timeouts(
        base_url: &str,
        api_key: Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            http,
            timeouts,
        })
    }

    /// Sends `body` with `stream: true` and assembles the answer; a request
    /// turned away for load ([`RETRYABLE`]) is sent again, up to
    /// [`MAX_RETRIES`] times, after the wait the target asks for (else
    /// 0.5 s, 1 s, 2 s, 4 s). The figures are the answering attempt's.
    pub async fn create(&self, body: &Value) -> Result<Response> {
        let mut attempt = 0;
        loop {
            let err = match self.create_once(body).await {
                Ok(response) => return Ok(response),
                Err(err) => err,
            };
            let retry = err
                .downcast_ref::<ApiFailure>()
                .filter(|f| RETRYABLE.contains(&f.status))
                .map(|f| {
                    f.retry_after
                        .unwrap_or(backoff(attempt))
                        .min(MAX_RETRY_WAIT)
                });
            match retry {
                Some(wait) if attempt < MAX_RETRIES => {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ if attempt > 0 => {
                    return Err(err.context(format!("still refused after {attempt} retries")))
                }
                _ => return Err(err),
            }
        }
    }

    async fn create_once(&self, body: &Value) -> Result<Response> {
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
        let first_byte = self.timeouts.first_byte;
        let response = within(first_byte, "the response's headers", request.send())
            .await?
            .with_context(|| format!("sending a request to {}", self.base_url))?;
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_WAIT.as_secs_f64())));
            let text = within(self.timeouts.idle, "the error's body", response.text())
                .await?
                .unwrap_or_default();
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
                retry_after,
            }
            .into());
        }
        let mut events = response.bytes_stream().eventsource();
        let mut assembler = StreamAssembler::default();
        let mut ttft_ms = None;
        let mut received = 0usize;
        let mut received_bytes = 0usize;
        loop {
            // The first event may wait for prefill; later ones only for a
            // token; none past the whole answer's limit. `named` is the
            // limit an error names, `left` the time this wait may take.
            let (mut named, mut what, mut left) = if received == 0 {
                let left = first_byte.saturating_sub(started.elapsed());
                (first_byte, "the first event", left)
            } else {
                (self.timeouts.idle, "the next event", self.timeouts.idle)
            };
            let answer_left = self.timeouts.answer.saturating_sub(started.elapsed());
            if answer_left < left {
                (named, what, left) = (self.timeouts.answer, "the end of the answer", answer_left);
            }
            let Ok(next) = tokio::time::timeout(left, events.next()).await else {
                anyhow::bail!(
                    "timed out after {} s waiting for {what}",
                    named.as_secs_f64()
                );
            };
            let Some(event) = next else {
                break;
            };
            received += 1;
            let event = event.context("reading the event stream")?;
            received_bytes += event.data.len() + event.event.len();
            if received_bytes > MAX_ANSWER_BYTES {
                anyhow::bail!(
                    "the answer passed {} MiB of events without ending",
                    MAX_ANSWER_BYTES >> 20
                );
            }
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
                    retry_after: None,
                }
                .into());
            }
            let done = assembler
                .apply(&data)
                .with_context(|| format!("event {received} (`{}`)", event.event))?;
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
/// Every field it writes into is checked to exist with the right shape.
#[derive(Default)]
struct StreamAssembler {
    message: Option<Map<String, Value>>,
    /// Raw JSON of the tool_use block being streamed.
    partial_json: String,
    stopped: bool,
}

/// A JSON value's kind, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl StreamAssembler {
    /// Applies one event; returns true at `message_stop`.
    fn apply(&mut self, data: &Value) -> Result<bool> {
        anyhow::ensure!(
            data.is_object(),
            "the event is {}, not an object",
            kind(data)
        );
        match data["type"].as_str().unwrap_or_default() {
            "message_start" => {
                anyhow::ensure!(self.message.is_none(), "a second message_start");
                let Value::Object(mut message) = data["message"].clone() else {
                    anyhow::bail!("message_start's message is {}", kind(&data["message"]));
                };
                let content = message.entry("content").or_insert_with(|| json!([]));
                anyhow::ensure!(
                    content.is_array(),
                    "message_start's content is {}, not a list",
                    kind(content)
                );
                let usage = message.entry("usage").or_insert_with(|| json!({}));
                anyhow::ensure!(
                    usage.is_object(),
                    "message_start's usage is {}, not an object",
                    kind(usage)
                );
                self.message = Some(message);
            }
            "content_block_start" => {
                let block = &data["content_block"];
                anyhow::ensure!(
                    block.is_object(),
                    "content_block_start's block is {}, not an object",
                    kind(block)
                );
                let content = self.content_mut()?;
                if let Some(index) = data.get("index") {
                    anyhow::ensure!(
                        index.as_u64() == Some(content.len() as u64),
                        "content_block_start for block {index}, but the message has {} blocks",
                        content.len()
                    );
                }
                content.push(block.clone());
                self.partial_json.clear();
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str().unwrap_or_default() {
                    "text_delta" => {
                        let piece = delta["text"]
                            .as_str()
                            .context("text_delta without a text string")?;
                        let block = self.block_mut(&data["index"])?;
                        match block.entry("text").or_insert_with(|| json!("")) {
                            Value::String(text) => text.push_str(piece),
                            other => anyhow::bail!("the block's text is {}", kind(other)),
                        }
                    }
                    "input_json_delta" => {
                        self.block_mut(&data["index"])?;
                        self.partial_json.push_str(
                            delta["partial_json"]
                                .as_str()
                                .context("input_json_delta without a partial_json string")?,
                        )
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                let partial = std::mem::take(&mut self.partial_json);
                let block = self.block_mut(&data["index"])?;
                if block.get("type").and_then(Value::as_str) == Some("tool_use")
                    && !partial.is_empty()
                {
                    let input: Value = serde_json::from_str(&partial)
                        .with_context(|| format!("tool input is not JSON: {partial}"))?;
                    block.insert("input".into(), input);
                }
            }
            "message_delta" => {
                let delta = &data["delta"];
                let message = self.message_mut()?;
                message.insert("stop_reason".into(), delta["stop_reason"].clone());
                message.insert("stop_sequence".into(), delta["stop_sequence"].clone());
                if let Some(usage) = data["usage"].as_object() {
                    let Some(Value::Object(totals)) = message.get_mut("usage") else {
                        anyhow::bail!("the message's usage is not an object");
                    };
                    for (k, v) in usage.iter().filter(|(_, v)| !v.is_null()) {
                        totals.insert(k.clone(), v.clone());
                    }
                }
            }
            "message_stop" => {
                self.message_mut()?;
                self.stopped = true;
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    fn message_mut(&mut self) -> Result<&mut Map<String, Value>> {
        self.message
            .as_mut()
            .context("the stream did not start with message_start")
    }

    fn content_mut(&mut self) -> Result<&mut Vec<Value>> {
        // message_start checked content is a list; nothing replaces it since.
        self.message_mut()?
            .get_mut("content")
            .and_then(Value::as_array_mut)
            .context("the message's content is not a list")
    }

    /// The block an event's `index` names.
    fn block_mut(&mut self, index: &Value) -> Result<&mut Map<String, Value>> {
        let content = self.content_mut()?;
        let blocks = content.len();
        let position = index
            .as_u64()
            .with_context(|| format!("the event's index is {}, not a block number", kind(index)))?;
        usize::try_from(position)
            .ok()
            .and_then(|i| content.get_mut(i))
            .with_context(|| {
                format!("the event names block {position}, but the message has {blocks}")
            })?
            .as_object_mut()
            .context("the block is not an object")
    }

    fn finish(self) -> Result<Value> {
        anyhow::ensure!(self.stopped, "the stream ended before message_stop");
        self.message
            .map(Value::Object)
            .context("the stream carried no message")
    }
}
