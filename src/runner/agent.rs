//! The agent loop: Claude Code's shape in miniature. The model gets a system
//! prompt, tools and the task; each `tool_use` for a tool the sandbox runs is
//! executed and answered with a `tool_result` (errors as `is_error`), until the
//! model ends its turn, calls a tool nobody runs (a tool-call case, scored as
//! made), or reaches `max_turns`. Every request and response is kept.

use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use super::client::{ApiFailure, MessagesClient};
use crate::store::RequestMetrics;

/// Runs tools the model calls.
pub trait ToolExecutor: Sync {
    /// Whether this executor runs `name`.
    fn handles(&self, name: &str) -> bool;
    /// Runs a tool: its output and whether it is an error.
    fn execute(&self, name: &str, input: &Value) -> (String, bool);
}

/// One agent task.
#[derive(Debug, Clone)]
pub struct AgentTask {
    /// Model name sent in requests.
    pub model: String,
    /// System prompt.
    pub system: Option<String>,
    /// The user's request.
    pub prompt: String,
    /// Tool definitions offered.
    pub tools: Vec<Value>,
    /// `tool_choice`, when set.
    pub tool_choice: Option<Value>,
    /// Most model turns.
    pub max_turns: u32,
    /// `max_tokens` per request.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f64,
}

/// A tool call the model made.
#[derive(Debug, Clone, Serialize)]
pub struct MadeCall {
    /// Model turn, from 1.
    pub turn: u32,
    /// Tool name.
    pub name: String,
    /// Arguments.
    pub input: Value,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct AgentOutcome {
    /// The final assistant text.
    pub final_text: String,
    /// Every tool call, in order.
    pub calls: Vec<MadeCall>,
    /// Model turns taken.
    pub turns: u32,
    /// Figures per request.
    pub requests: Vec<RequestMetrics>,
    /// Requests and responses, in order.
    pub transcript: Value,
    /// Why the loop stopped early, if it did.
    pub error: Option<String>,
    /// Wall time.
    pub wall_ms: f64,
}

/// Runs `task` against `client`.
pub async fn run_agent(
    client: &MessagesClient,
    task: &AgentTask,
    executor: Option<&dyn ToolExecutor>,
) -> AgentOutcome {
    let started = Instant::now();
    let mut messages = vec![json!({"role": "user", "content": task.prompt})];
    let mut exchanges = Vec::new();
    let mut outcome = AgentOutcome {
        final_text: String::new(),
        calls: Vec::new(),
        turns: 0,
        requests: Vec::new(),
        transcript: Value::Null,
        error: None,
        wall_ms: 0.0,
    };
    loop {
        if outcome.turns >= task.max_turns {
            outcome.error = Some(format!("no final answer within {} turns", task.max_turns));
            break;
        }
        outcome.turns += 1;
        let mut body = json!({
            "model": task.model,
            "max_tokens": task.max_tokens,
            "temperature": task.temperature,
            "messages": messages,
        });
        if let Some(system) = &task.system {
            body["system"] = json!(system);
        }
        if !task.tools.is_empty() {
            body["tools"] = json!(task.tools);
        }
        if let Some(choice) = &task.tool_choice {
            body["tool_choice"] = choice.clone();
        }
        let response = match client.create(&body).await {
            Ok(response) => response,
            Err(err) => {
                let detail = match err.downcast_ref::<ApiFailure>() {
                    Some(failure) => {
                        json!({"status": failure.status, "type": failure.kind, "message": failure.message})
                    }
                    None => json!({"message": format!("{err:#}")}),
                };
                exchanges.push(json!({"turn": outcome.turns, "error": detail}));
                outcome.error = Some(format!("turn {}: {err:#}", outcome.turns));
                break;
            }
        };
        outcome.requests.push(response.metrics.clone());
        let text = response.text();
        let uses = response.tool_uses();
        exchanges.push(json!({
            "turn": outcome.turns,
            "messages_sent": messages.len(),
            "response": response.message,
            "metrics": response.metrics,
        }));
        if !text.trim().is_empty() || uses.is_empty() {
            outcome.final_text = text;
        }
        for tool_use in &uses {
            outcome.calls.push(MadeCall {
                turn: outcome.turns,
                name: tool_use["name"].as_str().unwrap_or_default().to_string(),
                input: tool_use["input"].clone(),
            });
        }
        let runnable = executor.filter(|ex| {
            !uses.is_empty()
                && uses
                    .iter()
                    .all(|u| ex.handles(u["name"].as_str().unwrap_or_default()))
        });
        let Some(executor) = runnable else {
            // Ended its turn, or called a tool nobody runs: scored as it stands.
            break;
        };
        messages.push(json!({"role": "assistant", "content": response.message["content"]}));
        let results: Vec<Value> = uses
            .iter()
            .map(|u| {
                let (content, is_error) =
                    executor.execute(u["name"].as_str().unwrap_or_default(), &u["input"]);
                json!({"type": "tool_result", "tool_use_id": u["id"], "content": content, "is_error": is_error})
            })
            .collect();
        exchanges.push(json!({"turn": outcome.turns, "tool_results": results}));
        messages.push(json!({"role": "user", "content": results}));
    }
    outcome.transcript = json!({
        "system": task.system,
        "tools": task.tools,
        "prompt": task.prompt,
        "exchanges": exchanges,
    });
    outcome.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    outcome
}
