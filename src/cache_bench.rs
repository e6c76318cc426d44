//! The prompt-cache benchmark: a five-turn agent conversation (a ~2k-token
//! coding-agent system prompt with the sandbox's tool definitions, then a
//! growing history of tool calls and their real results on a fixture
//! repository, as Claude Code's turns grow) sent to `showdown serve` over
//! loopback, streamed, timing each turn's time to first token as a client
//! sees it — once with the prefix cache and once without. After the turns,
//! a side request as Claude Code sends one (a conversation title): the same
//! system prompt and tools, other messages. It shares only the prefix up to
//! the system prompt's `cache_control` breakpoint, which a hybrid model
//! (Qwen 3.5) serves from the recurrent-state snapshot kept there.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use showdown_engine::Engine;

use crate::api::{serve_on, AppState, PromptCacheConfig, ServeConfig};
use crate::eval::Sandbox;
use crate::models::ResolvedModel;

/// One turn's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CacheBenchTurn {
    /// Turn number, from 1 (the side request is numbered after the turns).
    pub turn: usize,
    /// Whether this is the side request, not a turn of the conversation.
    pub side: bool,
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
    let sandbox = Sandbox::new(bench_fixture()?).context("the benchmark's fixture repository")?;
    let mut messages: Vec<Value> = vec![json!({"role": "user", "content": FIRST_QUESTION})];
    let mut rows = Vec::new();
    for turn in 1..=turns {
        if turn > 1 {
            // The agent's next step: a tool call, and the sandbox's real answer.
            let (tool, input) = agent_step(turn - 2);
            let id = format!("toolu_bench{turn:02}");
            let output = sandbox.run(tool, &input);
            messages.push(json!({"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": id, "name": tool, "input": input},
            ]}));
            messages.push(json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": id, "content": output.content, "is_error": output.is_error},
            ]}));
        }
        let body = json!({
            "model": name,
            "max_tokens": 24,
            "temperature": 0,
            "stream": true,
            "system": [{"type": "text", "text": agent_system_prompt(), "cache_control": {"type": "ephemeral"}}],
            "tools": Sandbox::tool_definitions(),
            "tool_choice": {"type": "none"},
            "messages": messages,
        });
        rows.push(timed_turn(&client, &base, &body, turn, false).await?);
        // The answer itself is not kept: the next turn replays the agent's
        // scripted step, so cache on and off send the same prompts.
    }
    let side = json!({
        "model": name,
        "max_tokens": 12,
        "temperature": 0,
        "stream": true,
        "system": [{"type": "text", "text": agent_system_prompt(), "cache_control": {"type": "ephemeral"}}],
        "tools": Sandbox::tool_definitions(),
        "tool_choice": {"type": "none"},
        "messages": [{"role": "user", "content": SIDE_QUESTION}],
    });
    rows.push(timed_turn(&client, &base, &side, turns + 1, true).await?);
    server.abort();
    Ok(rows)
}

/// The side request's question: a title for the conversation.
const SIDE_QUESTION: &str =
    "Write a title of at most five words for a conversation that starts: \"What's this project about?\"";

/// Sends one streamed request and times its first text.
async fn timed_turn(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    turn: usize,
    side: bool,
) -> Result<CacheBenchTurn> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/messages"))
        .json(body)
        .send()
        .await
        .context("sending a turn")?;
    if !response.status().is_success() {
        bail!("turn {turn}: {}", response.text().await.unwrap_or_default());
    }
    let mut events = response.bytes_stream().eventsource();
    let mut ttft_ms = None;
    let mut usage = Value::Null;
    while let Some(event) = events.next().await {
        let event = event.context("reading the stream")?;
        let data: Value = serde_json::from_str(&event.data)?;
        match event.event.as_str() {
            "content_block_delta" => {
                ttft_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
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
    Ok(CacheBenchTurn {
        turn,
        side,
        prompt_tokens: total,
        cache_read_tokens: read,
        ttft_ms: ttft_ms.unwrap_or_else(|| started.elapsed().as_secs_f64() * 1000.0),
    })
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

/// The user's request, the seed's own.
const FIRST_QUESTION: &str = "What's this project about? Answer in 100 words or less.";

/// The fixture the agent explores: a small Go web service.
fn bench_fixture() -> anyhow::Result<std::path::PathBuf> {
    Ok(crate::assets::suites_dir()?.join("../fixtures/repos/linkshrink"))
}

/// The agent's tool calls, in order, each reading a little as a coding agent
/// narrows in: list the repository, read the top of the README, grep for the
/// functions, read the handler in main.go. (What a turn adds bounds its cached
/// time: the new tokens must be prefilled, and each costs about 1.2 times an
/// average token of a cold prefill, since it attends over the whole context.
/// The table prints that share next to the ratio.)
fn agent_step(step: usize) -> (&'static str, Value) {
    let steps = [
        ("LS", json!({"path": "/repo"})),
        ("Read", json!({"file_path": "/repo/README.md", "limit": 5})),
        (
            "Grep",
            json!({"pattern": "func ", "output_mode": "content", "head_limit": 8}),
        ),
        (
            "Read",
            json!({"file_path": "/repo/main.go", "offset": 1, "limit": 12}),
        ),
    ];
    steps[step % steps.len()].clone()
}
