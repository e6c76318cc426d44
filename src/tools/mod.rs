//! Tool use: how tool definitions, calls and results are written into the
//! conversation for models whose chat templates know nothing about tools (one
//! [`ToolCallFormat`] per model family, named by `tool_call_format` in
//! `models.toml`), a streaming [`ToolCallParser`] that turns model output back
//! into text and calls, and [`ToolCallConstraint`], which makes the engine emit
//! only well-formed calls to the tools offered, per `tool_choice`. Parsing and
//! the constraint follow the format also where the template renders tools.
//!
//! The conventions (also in the README, section "Tool calls"); the tools
//! section goes at the start of the system prompt, before its own text:
//!
//! - `hermes` (Qwen / NousResearch): tools are listed one JSON object a line
//!   inside `<tools></tools>` in the system prompt; a call is
//!   `<tool_call>\n{"name": NAME, "arguments": {...}}\n</tool_call>`, several
//!   calls are separated by a newline; a result is
//!   `<tool_response>\n...\n</tool_response>` in the following user turn.
//! - `gemma`: the same JSON in Markdown fences: tools in a ```` ```tools ````
//!   block, a call is ```` ```tool_call\n{"name": ..., "arguments": ...}\n``` ````,
//!   a result ```` ```tool_output\n...\n``` ````.
//! - `qwen35` (Qwen 3.5 / 3.6, Qwen3-Coder): what Qwen 3.5's template writes,
//!   byte for byte: its tools section (`# Tools`, each tool's JSON a line in
//!   `<tools></tools>`, the XML format instructions and an `<IMPORTANT>`
//!   reminder); a call is
//!   `<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n...</function>\n</tool_call>`
//!   (a string value as it is, others as JSON), several separated by a
//!   newline; results are `<tool_response>\n...\n</tool_response>`, one a
//!   line, in a user turn of their own. Its parser (`xml.rs`) types values
//!   by the tools' schemas.
//! - `gemma4` (Gemma 4): what Gemma 4's template writes: its tools section
//!   (`<|tool>declaration:NAME{...}<tool|>` per tool, rendered by the
//!   vendored template itself); a call is
//!   `<|tool_call>call:NAME{KEY:VALUE,...}<tool_call|>`, values in Gemma 4's
//!   syntax (strings in `<|"|>` quotes, keys bare and sorted), several calls
//!   back to back; a result is
//!   `<|tool_response>response:NAME{value:<|"|>...<|"|>}<tool_response|>`.
//!   Its template folds results into the model turn that made the calls
//!   (`tool_responses`); its parser (`gemma4.rs`) types values by the
//!   tools' schemas.
//!
//! An error result is written as the result text prefixed by `Error: `.

mod gemma4;
mod grammar;
mod grammar_gemma4;
mod parser;
mod xml;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use grammar::{ToolCallConstraint, ToolGrammarEnv};
pub use parser::{ParsedEvent, ToolCallParser};

/// Errors from tool formats and grammar construction.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// `tool_call_format` names no format showdown knows.
    #[error("unknown tool call format `{0}` (known: hermes, gemma, qwen35, gemma4)")]
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
    /// `<tool_call>\n<function=NAME>\n<parameter=ARG>\nVALUE\n</parameter>\n...`
    /// (Qwen 3.5 / 3.6, Qwen3-Coder): the XML style their templates teach.
    Qwen35,
    /// `<|tool_call>call:NAME{KEY:VALUE,...}<tool_call|>` (Gemma 4), values
    /// in Gemma 4's syntax (strings between `<|"|>` quotes).
    Gemma4,
}

impl ToolCallFormat {
    /// The format named `name` in `models.toml` (`hermes`, `gemma`, `qwen35`,
    /// `gemma4`).
    pub fn from_name(name: &str) -> Result<Self, ToolError> {
        match name {
            "hermes" => Ok(Self::Hermes),
            "gemma" => Ok(Self::Gemma),
            "qwen35" => Ok(Self::Qwen35),
            "gemma4" => Ok(Self::Gemma4),
            other => Err(ToolError::UnknownFormat(other.to_string())),
        }
    }

    /// The format a model of GGUF architecture `architecture` is taught by
    /// its family's chat template, for a model `models.toml` does not list
    /// (a local file, an Ollama blob).
    pub fn for_architecture(architecture: &str) -> Option<Self> {
        match architecture {
            "llama" | "qwen2" | "qwen3" | "qwen3moe" => Some(Self::Hermes),
            "qwen35" | "qwen35moe" => Some(Self::Qwen35),
            "gemma3" => Some(Self::Gemma),
            "gemma4" => Some(Self::Gemma4),
            _ => None,
        }
    }

    /// The format's name, as in `models.toml`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::Gemma => "gemma",
            Self::Qwen35 => "qwen35",
            Self::Gemma4 => "gemma4",
        }
    }

    /// The text that opens a call (the grammar writes a newline after it;
    /// `gemma4`: `call:`).
    pub fn call_start(&self) -> &'static str {
        match self {
            Self::Hermes | Self::Qwen35 => "<tool_call>",
            Self::Gemma => "```tool_call",
            Self::Gemma4 => gemma4::CALL_START,
        }
    }

    /// The text that closes a call (the grammar writes a newline before it;
    /// `gemma4`: right after the arguments' `}`).
    pub fn call_end(&self) -> &'static str {
        match self {
            Self::Hermes | Self::Qwen35 => "</tool_call>",
            Self::Gemma => "```",
            Self::Gemma4 => gemma4::CALL_END,
        }
    }

    /// System-prompt text that describes the tools and how to call them, for
    /// chat templates without tool support (SmolLM2's, Gemma 3's): the prompt
    /// builder writes it at the start of the system prompt, before the
    /// system prompt's own text (separated by a blank line), which is where
    /// Qwen 3.5's template writes its tools section too.
    ///
    /// `qwen35`'s is the text that template writes, byte for byte: each tool
    /// as transformers passes it (`{"type": "function", "function": {"name",
    /// "description", "parameters"}}`) through its `tojson` (one line,
    /// `", "` and `": "` separators, keys in order). `gemma4`'s is what
    /// Gemma 4's template writes in its system turn (one
    /// `<|tool>declaration:...<tool|>` per tool), rendered by the vendored
    /// template; that template writes it after the system prompt's text,
    /// with nothing between (showdown's own placement differs, which only
    /// matters for a model whose template does not render tools).
    pub fn tools_system_prompt(&self, tools: &[ToolDefinition]) -> String {
        let shaped: Vec<Value> = tools
            .iter()
            .map(|tool| {
                let mut function = serde_json::Map::new();
                function.insert("name".into(), json!(tool.name));
                if let Some(description) = &tool.description {
                    function.insert("description".into(), json!(description));
                }
                function.insert("parameters".into(), tool.input_schema.clone());
                json!({"type": "function", "function": function})
            })
            .collect();
        let listing = || {
            shaped
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        match self {
            Self::Gemma4 => gemma4::tools_section(&shaped),
            Self::Qwen35 => {
                let mut out = String::from(
                    "# Tools\n\nYou have access to the following functions:\n\n<tools>",
                );
                for tool in &shaped {
                    out.push('\n');
                    write_json(tool, &mut out);
                }
                out.push_str("\n</tools>");
                out.push_str(QWEN35_INSTRUCTIONS);
                out
            }
            Self::Hermes => format!(
                "# Tools\n\n\
                 You may call one or more functions to assist with the user query.\n\n\
                 You are provided with function signatures within <tools></tools> XML tags:\n\
                 <tools>\n{}\n</tools>\n\n\
                 For each function call, return a json object with function name and arguments \
                 within <tool_call></tool_call> XML tags:\n\
                 <tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>",
                listing()
            ),
            Self::Gemma => format!(
                "# Tools\n\n\
                 You may call one or more functions to assist with the user query.\n\n\
                 The functions you can call are listed in this block, one JSON signature a line:\n\
                 ```tools\n{}\n```\n\n\
                 To call a function, write a block like this, one block per call:\n\
                 ```tool_call\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n```\n\
                 The results come back in ```tool_output blocks.",
                listing()
            ),
        }
    }

    /// How an assistant turn that made calls is written back into history,
    /// after any text of that turn: each call as the model writes it, one per
    /// line.
    ///
    /// In `qwen35`, as Qwen 3.5's template writes `tool_calls`: one
    /// `<parameter=KEY>\nVALUE\n</parameter>\n` per input field, in order; a
    /// string value as it is, a boolean as `True`/`False`, any other value as
    /// JSON (one line, `", "` and `": "` separators). The template writes
    /// objects and arrays with `tojson` and other values with `string`, which
    /// gives Python's `True`/`False` (under jinja2 and the engine's
    /// minijinja alike) and the same text for numbers; `null` is written
    /// `null`, not the template's `None`/`none`, so that it parses back.
    ///
    /// In `gemma4`, as Gemma 4's template writes `tool_calls`: each call as
    /// `<|tool_call>call:NAME{...}<tool_call|>`, keys sorted as its
    /// `dictsort` sorts them, values in Gemma 4's syntax (`null` as `null`,
    /// where the template writes `None`), the calls back to back.
    pub fn render_tool_calls(&self, calls: &[ToolCall]) -> String {
        if *self == Self::Gemma4 {
            return calls.iter().map(gemma4::render_call).collect();
        }
        calls
            .iter()
            .map(|call| {
                let body = match self {
                    Self::Qwen35 => xml_call_body(call),
                    _ => call_json(call),
                };
                format!("{}\n{}\n{}", self.call_start(), body, self.call_end())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How one tool result is written into the following user turn (several
    /// results: one after another, a blank line between them, or as
    /// [`ToolCallFormat::results_turn`] says). An error result is prefixed by `Error: `. The tool
    /// name is not written: all three conventions identify results by their
    /// order (`gemma4` writes it, as its template does, `unknown` when it is
    /// not known). `qwen35` trims the result, as Qwen 3.5's template trims
    /// a tool message's content. `gemma4` writes the content as the string
    /// response its template writes for a tool message.
    pub fn render_tool_result(
        &self,
        tool_name: Option<&str>,
        content: &str,
        is_error: bool,
    ) -> String {
        let prefix = if is_error { "Error: " } else { "" };
        match self {
            Self::Hermes => format!("<tool_response>\n{prefix}{content}\n</tool_response>"),
            Self::Gemma => format!("```tool_output\n{prefix}{content}\n```"),
            Self::Qwen35 => {
                let body = format!("{prefix}{content}");
                format!("<tool_response>\n{}\n</tool_response>", body.trim())
            }
            Self::Gemma4 => gemma4::render_result(
                tool_name.unwrap_or("unknown"),
                &format!("{prefix}{content}"),
            ),
        }
    }

    /// Whether tool results form a user turn of their own, apart from the
    /// text of the user message that carries them, and if so what separates
    /// consecutive results in it. `qwen35`: a newline, as its template
    /// writes a run of tool messages (one user turn, which it tells from a
    /// user query by its starting with `<tool_response>`). The others:
    /// `None`, results are paragraphs of the user turn (`gemma4`'s template
    /// folds them into the model turn, see
    /// [`ToolCallFormat::results_in_model_turn`]; written by showdown they
    /// are paragraphs too).
    pub fn results_turn(&self) -> Option<&'static str> {
        match self {
            Self::Qwen35 => Some("\n"),
            _ => None,
        }
    }

    /// Whether the model's own template reads tool results from the
    /// assistant message that made the calls (`tool_responses: [{"name",
    /// "response"}]`), as Gemma 4's does (llama.cpp passes them so, see its
    /// `common/parsers/gemma4.cpp`), rather than from `tool` messages.
    pub fn results_in_model_turn(&self) -> bool {
        *self == Self::Gemma4
    }

    /// A streaming parser of this format's model output, without the tools'
    /// schemas (a `qwen35` parameter then stays a string unless it is
    /// plainly JSON; see [`ToolCallFormat::parser_for`]).
    pub fn parser(&self) -> ToolCallParser {
        ToolCallParser::new(*self, &[])
    }

    /// A streaming parser of this format's model output for a request
    /// offering `tools` (`qwen35` types parameter values by their schemas).
    pub fn parser_for(&self, tools: &[ToolDefinition]) -> ToolCallParser {
        ToolCallParser::new(*self, tools)
    }
}

/// The format instructions and reminder Qwen 3.5's template writes after
/// its `<tools>` listing.
const QWEN35_INSTRUCTIONS: &str = "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after\n- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls\n</IMPORTANT>";

/// A `qwen35` call between its `<tool_call>` lines: `<function=NAME>`, the
/// parameters, `</function>`.
fn xml_call_body(call: &ToolCall) -> String {
    let mut out = format!("<function={}>\n", call.name);
    if let Value::Object(fields) = &call.input {
        for (key, value) in fields {
            out.push_str(&format!("<parameter={key}>\n"));
            match value {
                Value::String(text) => out.push_str(text),
                // The template's `string` filter writes Python's booleans.
                Value::Bool(true) => out.push_str("True"),
                Value::Bool(false) => out.push_str("False"),
                other => write_json(other, &mut out),
            }
            out.push_str("\n</parameter>\n");
        }
    }
    out.push_str("</function>");
    out
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
