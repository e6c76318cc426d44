//! The prompt-cache benchmark: a five-turn agent conversation (a ~2k-token
//! coding-agent system prompt with tool definitions, then a growing history
//! of questions, answers and file contents) sent to `showdown serve` over
//! loopback, streamed, timing each turn's time to first token as a client
//! sees it — once with the prefix cache and once without.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use showdown_engine::Engine;

use crate::api::{serve_on, AppState, PromptCacheConfig, ServeConfig};
use crate::models::ResolvedModel;

/// One turn's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CacheBenchTurn {
    /// Turn number, from 1.
    pub turn: usize,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Of which read from the cache.
    pub cache_read_tokens: u64,
    /// Client-side time to the first streamed text.
    pub ttft_ms: f64,
}

/// Runs the conversation against a fresh server for `model`, with the prefix
/// cache on or off. Answers are greedy, so both runs send the same prompts.
pub async fn run_cache_bench(
    model: ResolvedModel,
    engine: Engine,
    prefix_cache: bool,
    turns: usize,
) -> Result<Vec<CacheBenchTurn>> {
    let config = ServeConfig {
        cache: PromptCacheConfig {
            enabled: prefix_cache,
            ..ServeConfig::default().cache
        },
        ..ServeConfig::default()
    };
    let name = model.name.clone();
    let state = Arc::new(AppState::new(config, vec![(model, engine)])?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(serve_on(listener, state));
    let client = reqwest::Client::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut rows = Vec::new();
    for turn in 1..=turns {
        messages.push(json!({"role": "user", "content": user_turn(turn)}));
        let body = json!({
            "model": name,
            "max_tokens": 24,
            "temperature": 0,
            "stream": true,
            "system": [{"type": "text", "text": agent_system_prompt(), "cache_control": {"type": "ephemeral"}}],
            "tools": agent_tools(),
            "tool_choice": {"type": "none"},
            "messages": messages,
        });
        let started = Instant::now();
        let response = client
            .post(format!("{base}/v1/messages"))
            .json(&body)
            .send()
            .await
            .context("sending a turn")?;
        if !response.status().is_success() {
            bail!("turn {turn}: {}", response.text().await.unwrap_or_default());
        }
        let mut events = response.bytes_stream().eventsource();
        let mut ttft_ms = None;
        let mut text = String::new();
        let mut usage = Value::Null;
        while let Some(event) = events.next().await {
            let event = event.context("reading the stream")?;
            let data: Value = serde_json::from_str(&event.data)?;
            match event.event.as_str() {
                "content_block_delta" => {
                    ttft_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
                    text.push_str(data["delta"]["text"].as_str().unwrap_or_default());
                }
                "message_delta" => usage = data["usage"].clone(),
                "error" => bail!("turn {turn}: {data}"),
                _ => {}
            }
        }
        let read = usage["cache_read_input_tokens"].as_u64().unwrap_or(0);
        let total = read
            + usage["input_tokens"].as_u64().unwrap_or(0)
            + usage["cache_creation_input_tokens"].as_u64().unwrap_or(0);
        rows.push(CacheBenchTurn {
            turn,
            prompt_tokens: total,
            cache_read_tokens: read,
            ttft_ms: ttft_ms.unwrap_or_else(|| started.elapsed().as_secs_f64() * 1000.0),
        });
        messages.push(json!({"role": "assistant", "content": text}));
    }
    server.abort();
    Ok(rows)
}

/// A coding agent's system prompt of about 2k tokens, fixed so runs compare.
fn agent_system_prompt() -> String {
    let mut prompt = String::from(
        "You are a coding agent working in a software repository. You answer \
         questions about the code, find files, read them and summarise what \
         they do. Be concise and precise; cite file paths.\n\n# Rules\n",
    );
    let topics = [
        "Read a file before describing it",
        "Prefer Grep to guessing where a symbol is defined",
        "Quote at most three lines of code at a time",
        "Never invent files, functions or flags",
        "Say when something is not in the repository",
        "Keep answers under the word limit the user gives",
        "Use the project's own names for things",
        "List files with LS before reading a directory",
    ];
    for i in 0..48 {
        let topic = topics[i % topics.len()];
        prompt.push_str(&format!(
            "{}. {topic}; this applies to source files, tests, documentation and \
             configuration alike, in every language the repository uses.\n",
            i + 1
        ));
    }
    prompt
}

fn agent_tools() -> Value {
    json!([
        {"name": "Read", "description": "Reads a file from the repository.",
         "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}, "offset": {"type": "integer"}, "limit": {"type": "integer"}}, "required": ["file_path"]}},
        {"name": "Glob", "description": "Finds files by glob pattern.",
         "input_schema": {"type": "object", "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}}, "required": ["pattern"]}},
        {"name": "Grep", "description": "Searches file contents with a regular expression.",
         "input_schema": {"type": "object", "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}, "glob": {"type": "string"}}, "required": ["pattern"]}},
        {"name": "LS", "description": "Lists a directory.",
         "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}
    ])
}

/// The user's turn `n`: a question with a file's contents pasted in.
fn user_turn(n: usize) -> String {
    let mut text = format!("Turn {n}: here is src/module_{n}.rs. What does it do?\n\n```rust\n");
    for line in 0..20 {
        text.push_str(&format!(
            "pub fn step_{n}_{line}(input: &[u8]) -> usize {{ input.iter().filter(|b| **b == b'{}').count() }}\n",
            (b'a' + (line % 26) as u8) as char
        ));
    }
    text.push_str("```");
    text
}
