//! Tool use for models whose chat templates know nothing about tools: how tool
//! definitions, calls and results are written into the conversation (one
//! [`ToolCallFormat`] per model family, named by `tool_call_format` in
//! `models.toml`), a streaming [`ToolCallParser`] that turns model output back
//! into text and calls, and [`ToolCallConstraint`], which makes the engine emit
//! only well-formed calls to the tools offered, per `tool_choice`.
//!
//! The conventions (also in the README, section "Tool calls"):
//!
//! - `hermes` (Qwen / NousResearch): tools are listed one JSON object a line
//!   inside `<tools></tools>` in the system prompt; a call is
//!   `<tool_call>\n{"name": NAME, "arguments": {...}}\n</tool_call>`, several
//!   calls are separated by a newline; a result is
//!   `<tool_response>\n...\n</tool_response>` in the following user turn.
//! - `gemma`: the same JSON in Markdown fences: tools in a ```` ```tools ````
//!   block, a call is ```` ```tool_call\n{"name": ..., "arguments": ...}\n``` ````,
//!   a result ```` ```tool_output\n...\n``` ````.
//!
//! An error result is written as the result text prefixed by `Error: `.

mod grammar;
mod parser;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use grammar::{ToolCallConstraint, ToolGrammarEnv};
pub use parser::{ParsedEvent, ToolCallParser};

/// Errors from tool formats and grammar construction.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// `tool_call_format` names no format showdown knows.
    #[error("unknown tool call format `{0}` (known: hermes, gemma)")]
    UnknownFormat(String),
    /// `tool_choice` names a tool that is not among the tools offered.
    #[error("tool_choice names `{0}`, which is not among the tools offered")]
    UnknownTool(String),
    /// `tool_choice` asks for a call but no tools were offered.
    #[error("tool_choice requires a tool call but no tools were offered")]
    NoTools,
    /// The grammar or the tokenizer environment could not be built.
    #[error("tool call grammar: {0}")]
    Grammar(String),
}

/// A tool the model may call (an Anthropic `tools[]` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the tool's input.
    pub input_schema: Value,
}

/// Whether and how the model must call tools (Anthropic `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Text, then optionally calls.
    #[default]
    Auto,
    /// Only calls, to any of the tools.
    Any,
    /// Only calls, to this tool.
    Tool(String),
    /// Text only, never a call.
    None,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The tool called.
    pub name: String,
    /// Its input (a JSON object when the model followed the schema).
    pub input: Value,
}

/// How a model family writes tool definitions, calls and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// `<tool_call>\n{json}\n</tool_call>` (Qwen, NousResearch Hermes, SmolLM2).
    Hermes,
    /// ```` ```tool_call\n{json}\n``` ```` (Gemma 3).
    Gemma,
}

impl ToolCallFormat {
    /// The format named `name` in `models.toml` (`hermes`, `gemma`).
    pub fn from_name(name: &str) -> Result<Self, ToolError> {
        match name {
            "hermes" => Ok(Self::Hermes),
            "gemma" => Ok(Self::Gemma),
            other => Err(ToolError::UnknownFormat(other.to_string())),
        }
    }

    /// The format a model of GGUF architecture `architecture` is taught by
    /// its family's chat template, for a model `models.toml` does not list
    /// (a local file, an Ollama blob).
    pub fn for_architecture(architecture: &str) -> Option<Self> {
        match architecture {
            "llama" | "qwen2" | "qwen3" | "qwen3moe" | "qwen35" | "qwen35moe" => Some(Self::Hermes),
            "gemma3" => Some(Self::Gemma),
            _ => None,
        }
    }

    /// The format's name, as in `models.toml`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::Gemma => "gemma",
        }
    }

    /// The text that opens a call (the grammar writes a newline after it).
    pub fn call_start(&self) -> &'static str {
        match self {
            Self::Hermes => "<tool_call>",
            Self::Gemma => "```tool_call",
        }
    }

    /// The text that closes a call (the grammar writes a newline before it).
    pub fn call_end(&self) -> &'static str {
        match self {
            Self::Hermes => "</tool_call>",
            Self::Gemma => "```",
        }
    }

    /// System-prompt text that describes the tools and how to call them, for
    /// chat templates without tool support (SmolLM2's, Gemma 3's): append it
    /// to the system prompt.
    pub fn tools_system_prompt(&self, tools: &[ToolDefinition]) -> String {
        let listing: Vec<String> = tools
            .iter()
            .map(|tool| {
                let mut function = serde_json::Map::new();
                function.insert("name".into(), json!(tool.name));
                if let Some(description) = &tool.description {
                    function.insert("description".into(), json!(description));
                }
                function.insert("parameters".into(), tool.input_schema.clone());
                json!({"type": "function", "function": function}).to_string()
            })
            .collect();
        let listing = listing.join("\n");
        match self {
            Self::Hermes => format!(
                "# Tools\n\n\
                 You may call one or more functions to assist with the user query.\n\n\
                 You are provided with function signatures within <tools></tools> XML tags:\n\
                 <tools>\n{listing}\n</tools>\n\n\
                 For each function call, return a json object with function name and arguments \
                 within <tool_call></tool_call> XML tags:\n\
                 <tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
            ),
            Self::Gemma => format!(
                "# Tools\n\n\
                 You may call one or more functions to assist with the user query.\n\n\
                 The functions you can call are listed in this block, one JSON signature a line:\n\
                 ```tools\n{listing}\n```\n\n\
                 To call a function, write a block like this, one block per call:\n\
                 ```tool_call\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n```\n\
                 The results come back in ```tool_output blocks."
            ),
        }
    }

    /// How an assistant turn that made calls is written back into history,
    /// after any text of that turn: each call as the model writes it, one per
    /// line.
    pub fn render_tool_calls(&self, calls: &[ToolCall]) -> String {
        calls
            .iter()
            .map(|call| {
                format!(
                    "{}\n{}\n{}",
                    self.call_start(),
                    call_json(call),
                    self.call_end()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How one tool result is written into the following user turn (several
    /// results: one after another, separated by a newline). An error result
    /// is prefixed by `Error: `. The tool name is not written: both
    /// conventions identify results by their order.
    pub fn render_tool_result(
        &self,
        _tool_name: Option<&str>,
        content: &str,
        is_error: bool,
    ) -> String {
        let prefix = if is_error { "Error: " } else { "" };
        match self {
            Self::Hermes => format!("<tool_response>\n{prefix}{content}\n</tool_response>"),
            Self::Gemma => format!("```tool_output\n{prefix}{content}\n```"),
        }
    }

    /// A streaming parser of this format's model output.
    pub fn parser(&self) -> ToolCallParser {
        ToolCallParser::new(*self)
    }
}

/// A call as the model writes it and the grammar constrains it:
/// `{"name": ..., "arguments": ...}` on one line, `", "` and `": "` separators.
fn call_json(call: &ToolCall) -> String {
    let mut out = String::new();
    write_json(
        &json!({"name": call.name, "arguments": call.input}),
        &mut out,
    );
    out
}

/// JSON on one line with Python's `json.dumps` separators (`", "`, `": "`).
fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_json(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
