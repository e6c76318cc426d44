//! From a Messages request to the token ids the engine runs: the system
//! prompt (tools first, as Anthropic orders its cache prefix), the
//! conversation with tool calls and results written in the model's tool-call
//! format, the chat template, and the token offsets of the `cache_control`
//! breakpoints.
//!
//! Breakpoints are located by writing a private-use marker after each marked
//! block, rendering, then removing the markers and counting the tokens before
//! each one. Markers go before trailing whitespace, so a template's `trim`
//! renders the same text with or without them: moving a breakpoint (Claude
//! Code moves its last one every turn) never changes the prompt's tokens.

use serde_json::{json, Value};
use showdown_engine::Engine;

use super::error::ApiError;
use super::wire::{
    CacheControl, CacheTtl, ContentBlockParam, InputMessage, MessageContent, MessagesRequest, Role,
    SystemPrompt, ToolResultBlock, ToolResultContent,
};

/// Anthropic's limit on `cache_control` blocks per request.
pub const MAX_BREAKPOINTS: usize = 4;

/// Marks a breakpoint in the rendered text (a private-use character no
/// tokenizer input is expected to contain).
const MARK: char = '\u{F8FF}';

/// How tool definitions, calls and results are written for a model whose chat
/// template has no tool support (see `crate::tools`).
pub trait ToolPromptFormat {
    /// The system-prompt section describing `tools` (name, description, schema).
    fn tools_section(&self, tools: &[(String, Option<String>, Value)]) -> String;
    /// An assistant turn's tool calls, written after its text.
    fn tool_calls(&self, calls: &[(String, Value)]) -> String;
    /// One tool result, written in the following user turn.
    fn tool_result(&self, name: Option<&str>, content: &str, is_error: bool) -> String;
    /// `Some(separator)` when a message's tool results form a user turn of
    /// their own (before the message's text, consecutive results joined by
    /// `separator`); `None` when they are paragraphs of the user turn.
    fn results_turn(&self) -> Option<&'static str> {
        None
    }
    /// Whether a template that renders tools reads a turn's results from
    /// the assistant message that made the calls (`tool_responses`, Gemma
    /// 4's) rather than from `tool` messages.
    fn results_in_model_turn(&self) -> bool {
        false
    }
}

/// A cache breakpoint: the prompt's first `tokens` tokens are cacheable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakpoint {
    /// Tokens before the breakpoint.
    pub tokens: usize,
    /// Requested lifetime.
    pub ttl: CacheTtl,
}

/// The prompt a request runs.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// The rendered prompt text.
    pub text: String,
    /// Token ids of the rendered prompt.
    pub tokens: Vec<u32>,
    /// Breakpoints in order.
    pub breakpoints: Vec<Breakpoint>,
}

/// Builds the prompt of `request` for `engine`.
pub fn build_prompt(
    engine: &Engine,
    request: &MessagesRequest,
    tool_format: Option<&dyn ToolPromptFormat>,
) -> Result<Prompt, ApiError> {
    build_prompt_with(engine, request, tool_format, false)
}

/// [`build_prompt`]; with `inject`, tools, calls and results are written in
/// `tool_format` even where the chat template renders them itself.
fn build_prompt_with(
    engine: &Engine,
    request: &MessagesRequest,
    tool_format: Option<&dyn ToolPromptFormat>,
    inject: bool,
) -> Result<Prompt, ApiError> {
    let mut marks = Marks::default();
    let mut system = String::new();

    let native = !inject
        && engine
            .chat_template()
            .is_some_and(|template| template.renders_tools());
    let mut tools_json = Vec::new();
    if !request.tools.is_empty() {
        let format = tool_format.ok_or_else(|| {
            ApiError::invalid(format!(
                "model `{}` has no tool-call format; tools cannot be used with it",
                request.model
            ))
        })?;
        if native {
            tools_json = template_tools(request, &mut marks);
        } else {
            injected_tools(request, format, &mut system, &mut marks);
        }
    }

    match &request.system {
        None => {}
        Some(SystemPrompt::Text(text)) => {
            push_paragraph(&mut system, &normalize_billing_header(text));
        }
        Some(SystemPrompt::Blocks(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                let text = if i == 0 {
                    normalize_billing_header(&block.text)
                } else {
                    block.text.clone()
                };
                push_paragraph(&mut system, &text);
                if let Some(cc) = &block.cache_control {
                    marks.mark(&mut system, cc);
                }
            }
        }
    }

    let (mut messages, mut prefill) = if native {
        let (messages, prefill) = template_conversation(&request.messages, &mut marks)?;
        let fold = tool_format.is_some_and(|format| format.results_in_model_turn());
        let messages = if fold {
            fold_tool_responses(messages)
        } else {
            messages
        };
        (messages, prefill)
    } else {
        injected_conversation(&request.messages, tool_format, &mut marks)?
    };
    // Automatic caching (a top-level `cache_control`): a breakpoint after the
    // last block (a slot of the four), unless that block carries one already.
    if let Some(cc) = &request.cache_control {
        let last = match prefill.as_mut() {
            Some(text) => Some(text),
            None => messages
                .last_mut()
                .and_then(|m| match m.get_mut("content") {
                    Some(Value::String(text)) => Some(text),
                    _ => None,
                }),
        };
        if let Some(text) = last {
            if !text.trim_end().ends_with(MARK) {
                marks.mark(text, cc);
            }
        }
    }
    finish(engine, &marks, system, messages, tools_json, prefill)
}

/// Renders the conversation and locates the breakpoints.
fn finish(
    engine: &Engine,
    marks: &Marks,
    system: String,
    history: Vec<Value>,
    tools: Vec<Value>,
    prefill: Option<String>,
) -> Result<Prompt, ApiError> {
    if marks.count() > MAX_BREAKPOINTS {
        return Err(ApiError::invalid(format!(
            "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {}.",
            marks.count()
        )));
    }
    let mut messages = Vec::with_capacity(history.len() + 1);
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.extend(history);
    let tools = (!tools.is_empty()).then_some(tools.as_slice());
    let mut rendered = engine
        .render_chat(&messages, tools, true)
        .map_err(|e| ApiError::invalid(format!("rendering the chat template: {e}")))?;
    if let Some(prefill) = prefill {
        rendered.push_str(prefill.trim_end());
    }

    let (text, offsets) = marks.strip(&rendered);
    let tokenizer = engine.tokenizer();
    let tokens = tokenizer.encode(&text)?;
    let mut breakpoints = Vec::new();
    for (offset, ttl) in offsets {
        let before = if offset >= text.len() {
            tokens.len()
        } else {
            tokenizer.encode(&text[..offset])?.len().min(tokens.len())
        };
        breakpoints.push(Breakpoint {
            tokens: before,
            ttl,
        });
    }
    breakpoints.sort_by_key(|b| b.tokens);
    Ok(Prompt {
        text,
        tokens,
        breakpoints,
    })
}

/// Tool definitions in transformers' shape (`{"type": "function",
/// "function": {...}}`), for a template that renders them. A breakpoint on
/// a tool is written at the end of the last marked tool's description,
/// inside what the template renders for the tools.
fn template_tools(request: &MessagesRequest, marks: &mut Marks) -> Vec<Value> {
    let marked = request
        .tools
        .iter()
        .rposition(|t| t.cache_control.is_some());
    let count = request
        .tools
        .iter()
        .filter(|t| t.cache_control.is_some())
        .count();
    marks.extra += count.saturating_sub(1);
    request
        .tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut function = serde_json::Map::new();
            function.insert("name".into(), json!(t.name));
            if let Some(description) = &t.description {
                let mut description = description.clone();
                if Some(i) == marked {
                    marks.mark(&mut description, t.cache_control.as_ref().expect("marked"));
                }
                function.insert("description".into(), json!(description));
            } else if Some(i) == marked {
                // Nowhere to write it: counted, not placed.
                marks.extra += 1;
            }
            function.insert(
                "parameters".into(),
                t.input_schema
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"})),
            );
            json!({"type": "function", "function": function})
        })
        .collect()
}

/// Tool definitions written into the system prompt in the model's tool-call
/// format, for a template that knows nothing of tools.
fn injected_tools(
    request: &MessagesRequest,
    format: &dyn ToolPromptFormat,
    system: &mut String,
    marks: &mut Marks,
) {
    let tools: Vec<(String, Option<String>, Value)> = request
        .tools
        .iter()
        .map(|t| {
            let schema = t
                .input_schema
                .clone()
                .unwrap_or_else(|| json!({"type": "object"}));
            (t.name.clone(), t.description.clone(), schema)
        })
        .collect();
    system.push_str(&format.tools_section(&tools));
    // A breakpoint on any tool covers the definitions up to it; they are
    // written as one section, so it lands after the section.
    if let Some(cc) = request
        .tools
        .iter()
        .rev()
        .find_map(|t| t.cache_control.as_ref())
    {
        marks.mark(system, cc);
    }
    let count = request
        .tools
        .iter()
        .filter(|t| t.cache_control.is_some())
        .count();
    marks.extra += count.saturating_sub(1);
}

/// The prompt text a Messages request body renders to for `engine`, with
/// tools in `tool_format` where the chat template does not render them
/// itself: what the server runs, for tests and debugging.
pub fn render_request_prompt(
    engine: &Engine,
    body: &Value,
    tool_format: Option<crate::tools::ToolCallFormat>,
) -> Result<String, ApiError> {
    render_prompt(engine, body, tool_format, false)
}

/// [`render_request_prompt`] with tools, calls and results written in
/// `tool_format`'s conventions even where the chat template renders them
/// itself: for tests that hold a format to the template that teaches it.
pub fn render_request_prompt_injected(
    engine: &Engine,
    body: &Value,
    tool_format: crate::tools::ToolCallFormat,
) -> Result<String, ApiError> {
    render_prompt(engine, body, Some(tool_format), true)
}

fn render_prompt(
    engine: &Engine,
    body: &Value,
    tool_format: Option<crate::tools::ToolCallFormat>,
    inject: bool,
) -> Result<String, ApiError> {
    let request: MessagesRequest = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::invalid(format!("request: {e}")))?;
    let format = tool_format.map(super::tool_use::FormatAdapter);
    let prompt = build_prompt_with(
        engine,
        &request,
        format.as_ref().map(|f| f as &dyn ToolPromptFormat),
        inject,
    )?;
    Ok(prompt.text)
}

/// Claude Code starts its system prompt with a billing line whose `cch=`
/// nonce changes every request; left in, it would defeat the prefix cache
/// from the first line. The nonce is replaced by a constant.
pub fn normalize_billing_header(text: &str) -> String {
    const HEADER: &str = "x-anthropic-billing-header:";
    let Some(line_start) = text.find(HEADER) else {
        return text.to_string();
    };
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];
    let normalized: Vec<String> = line
        .split(';')
        .map(|field| match field.trim_start().strip_prefix("cch=") {
            Some(_) => {
                let indent = &field[..field.len() - field.trim_start().len()];
                format!("{indent}cch=0")
            }
            None => field.to_string(),
        })
        .collect();
    format!(
        "{}{}{}",
        &text[..line_start],
        normalized.join(";"),
        &text[line_end..]
    )
}

fn push_paragraph(out: &mut String, text: &str) {
    if !out.is_empty() && !text.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(text);
}

/// Breakpoint markers written so far.
#[derive(Default)]
struct Marks {
    ttls: Vec<CacheTtl>,
    /// Breakpoints counted but sharing a position with another.
    extra: usize,
}

impl Marks {
    fn count(&self) -> usize {
        self.ttls.len() + self.extra
    }

    /// Writes a marker after `text`'s last non-whitespace character.
    fn mark(&mut self, text: &mut String, cc: &CacheControl) {
        let index = self.ttls.len();
        self.ttls.push(cc.ttl.unwrap_or(CacheTtl::FiveMinutes));
        let at = text.trim_end().len();
        text.insert_str(at, &format!("{MARK}{index}{MARK}"));
    }

    /// Removes the markers, returning the clean text and each marker's byte
    /// offset in it with its lifetime. Markers the template dropped are lost.
    fn strip(&self, rendered: &str) -> (String, Vec<(usize, CacheTtl)>) {
        if self.ttls.is_empty() {
            return (rendered.to_string(), Vec::new());
        }
        let mut text = String::with_capacity(rendered.len());
        let mut offsets = Vec::new();
        let mut rest = rendered;
        while let Some(start) = rest.find(MARK) {
            text.push_str(&rest[..start]);
            let after = &rest[start + MARK.len_utf8()..];
            let parsed = after.find(MARK).and_then(|end| {
                after[..end]
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i < self.ttls.len())
                    .map(|i| (i, end))
            });
            match parsed {
                Some((index, end)) => {
                    offsets.push((text.len(), self.ttls[index]));
                    rest = &after[end + MARK.len_utf8()..];
                }
                None => {
                    // A marker character that is not ours: keep it.
                    text.push(MARK);
                    rest = after;
                }
            }
        }
        text.push_str(rest);
        (text, offsets)
    }
}

/// The conversation as template messages for a template without tool
/// support: turns merged per role, calls and results written in the tool
/// format. A final assistant turn is returned apart: it is a prefill.
fn injected_conversation(
    messages: &[InputMessage],
    tool_format: Option<&dyn ToolPromptFormat>,
    marks: &mut Marks,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let mut turns = conversation_turns(messages, tool_format, marks)?;
    let prefill = match turns.last() {
        Some((Role::Assistant, _, _)) => turns.pop().map(|(_, text, _)| text),
        _ => None,
    };
    let history = turns
        .into_iter()
        .map(|(role, text, _)| {
            let role = match role {
                Role::User | Role::System => "user",
                Role::Assistant => "assistant",
            };
            json!({"role": role, "content": text})
        })
        .collect();
    Ok((history, prefill))
}

/// The conversation in transformers' conventions, for a template that
/// renders tools itself: an assistant turn's calls as `tool_calls`
/// (`{"type": "function", "function": {"name", "arguments"}}`), each tool
/// result as a `tool` message (an error prefixed by `Error: `), `system`
/// notes folded into the following turn. A final assistant turn without
/// calls is returned apart: it is a prefill.
fn template_conversation(
    messages: &[InputMessage],
    marks: &mut Marks,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    let mut out: Vec<Value> = Vec::new();
    let mut pending_system: Option<String> = None;
    let mut open_calls: Vec<(String, String)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut call_ids = Vec::new();
        let mut results: Vec<Value> = Vec::new();
        let blocks: &[ContentBlockParam] = match &message.content {
            MessageContent::Text(t) => {
                text.push_str(t);
                &[]
            }
            MessageContent::Blocks(blocks) => blocks,
        };
        for block in blocks {
            let cache_control = match block {
                ContentBlockParam::Text {
                    text: t,
                    cache_control,
                } => {
                    push_paragraph(&mut text, t);
                    cache_control
                }
                ContentBlockParam::Image {} => {
                    push_paragraph(&mut text, "[image omitted: this model reads text only]");
                    &None
                }
                ContentBlockParam::Document {
                    source,
                    cache_control,
                } => {
                    let data = source.get("data").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "messages.{i}: only plain-text documents are supported"
                        ))
                    })?;
                    push_paragraph(&mut text, data);
                    cache_control
                }
                ContentBlockParam::ToolUse {
                    id,
                    name,
                    input,
                    cache_control,
                } => {
                    if message.role != Role::Assistant {
                        return Err(ApiError::invalid(format!(
                            "messages.{i}: tool_use blocks belong in assistant messages"
                        )));
                    }
                    calls.push(json!({
                        "type": "function",
                        "function": {"name": name, "arguments": input},
                    }));
                    call_ids.push((id.clone(), name.clone()));
                    // The template writes the calls: mark the text before them.
                    cache_control
                }
                ContentBlockParam::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                    cache_control,
                } => {
                    let name = open_calls
                        .iter()
                        .find(|(id, _)| id == tool_use_id)
                        .map(|(_, name)| name.clone())
                        .ok_or_else(|| {
                            ApiError::invalid(format!(
                                "messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                            ))
                        })?;
                    let prefix = if is_error.unwrap_or(false) {
                        "Error: "
                    } else {
                        ""
                    };
                    let mut body = format!("{prefix}{}", tool_result_text(content.as_ref()));
                    if let Some(cc) = cache_control {
                        marks.mark(&mut body, cc);
                    }
                    results.push(json!({"role": "tool", "name": name, "content": body}));
                    &None
                }
                ContentBlockParam::Thinking {}
                | ContentBlockParam::RedactedThinking {}
                | ContentBlockParam::ServerBlock {} => &None,
            };
            if let Some(cc) = cache_control {
                marks.mark(&mut text, cc);
            }
        }
        match message.role {
            Role::System => {
                push_paragraph(pending_system.get_or_insert_with(String::new), &text);
                continue;
            }
            Role::Assistant => open_calls = call_ids,
            Role::User => open_calls.clear(),
        }
        if let Some(note) = pending_system.take() {
            let mut folded = note;
            push_paragraph(&mut folded, &text);
            text = folded;
        }
        out.extend(results);
        match message.role {
            Role::Assistant if calls.is_empty() => {
                out.push(json!({"role": "assistant", "content": text}));
            }
            Role::Assistant => {
                out.push(json!({"role": "assistant", "content": text, "tool_calls": calls}));
            }
            _ if text.is_empty()
                && blocks
                    .iter()
                    .any(|b| matches!(b, ContentBlockParam::ToolResult { .. })) => {}
            _ => out.push(json!({"role": "user", "content": text})),
        }
    }
    if let Some(note) = pending_system {
        out.push(json!({"role": "user", "content": note}));
    }
    let prefill = match out.last() {
        Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_none() => out
            .pop()
            .and_then(|m| m["content"].as_str().map(str::to_string)),
        _ => None,
    };
    Ok((out, prefill))
}

/// Gemma 4's conventions, as llama.cpp passes them to its template
/// (`common/parsers/gemma4.cpp`): the `tool` messages after an assistant
/// message with `tool_calls` become that message's `tool_responses`
/// (`{"name", "response"}`, the response the result's text), and the text
/// the message had before its calls is dropped — the template writes a
/// model turn's text after its calls and results, where it would close the
/// turn the model goes on writing in. Each response stays a string (llama.cpp
/// parses one that is JSON): a breakpoint marker in it must not change how
/// it renders, and the template writes a tool message's string content as
/// such too. A following assistant message continues the same model turn
/// in the template (it opens no new one), so it stays a message of its own.
fn fold_tool_responses(messages: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len());
    let mut messages = messages.into_iter().peekable();
    while let Some(mut message) = messages.next() {
        let has_calls = message["role"] == "assistant"
            && message
                .get("tool_calls")
                .and_then(Value::as_array)
                .is_some_and(|calls| !calls.is_empty());
        if has_calls {
            let mut responses = Vec::new();
            while let Some(result) = messages.next_if(|m| m["role"] == "tool") {
                responses.push(json!({"name": result["name"], "response": result["content"]}));
            }
            message["content"] = json!("");
            if !responses.is_empty() {
                message["tool_responses"] = Value::Array(responses);
            }
        }
        out.push(message);
    }
    out
}

/// The conversation as (role, text, whether it is a turn of tool results)
/// turns: consecutive turns of one role merged, `system` notes folded into
/// the following turn (never hoisted to the front, which would change the
/// prompt's start every turn), tool calls and results written in the tool
/// format (results as a turn of their own where the format says so).
fn conversation_turns(
    messages: &[InputMessage],
    tool_format: Option<&dyn ToolPromptFormat>,
    marks: &mut Marks,
) -> Result<Vec<(Role, String, bool)>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    let results_turn = tool_format.and_then(|format| format.results_turn());
    let mut turns: Vec<(Role, String, bool)> = Vec::new();
    let mut pending_system: Option<String> = None;
    // Tool calls of the latest assistant turn: id -> name.
    let mut open_calls: Vec<(String, String)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let mut text = String::new();
        let mut calls: Vec<(String, Value)> = Vec::new();
        let mut call_ids = Vec::new();
        let mut calls_mark: Option<CacheControl> = None;
        let mut results = String::new();
        match &message.content {
            MessageContent::Text(t) => text.push_str(t),
            MessageContent::Blocks(blocks) => {
                for block in blocks {
                    let cache_control = match block {
                        ContentBlockParam::Text {
                            text: t,
                            cache_control,
                        } => {
                            push_paragraph(&mut text, t);
                            cache_control
                        }
                        ContentBlockParam::Image {} => {
                            push_paragraph(
                                &mut text,
                                "[image omitted: this model reads text only]",
                            );
                            &None
                        }
                        ContentBlockParam::Document {
                            source,
                            cache_control,
                        } => {
                            let data =
                                source.get("data").and_then(Value::as_str).ok_or_else(|| {
                                    ApiError::invalid(format!(
                                        "messages.{i}: only plain-text documents are supported"
                                    ))
                                })?;
                            push_paragraph(&mut text, data);
                            cache_control
                        }
                        ContentBlockParam::ToolUse {
                            id,
                            name,
                            input,
                            cache_control,
                        } => {
                            if message.role != Role::Assistant {
                                return Err(ApiError::invalid(format!(
                                    "messages.{i}: tool_use blocks belong in assistant messages"
                                )));
                            }
                            if tool_format.is_none() {
                                return Err(ApiError::invalid(
                                    "this model has no tool-call format",
                                ));
                            }
                            calls.push((name.clone(), Value::Object(input.clone())));
                            call_ids.push((id.clone(), name.clone()));
                            cache_control
                        }
                        ContentBlockParam::ToolResult {
                            tool_use_id,
                            content,
                            is_error,
                            cache_control,
                        } => {
                            let name = open_calls
                                .iter()
                                .find(|(id, _)| id == tool_use_id)
                                .map(|(_, name)| name.clone())
                                .ok_or_else(|| {
                                    ApiError::invalid(format!(
                                        "messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                                    ))
                                })?;
                            let format = tool_format.ok_or_else(|| {
                                ApiError::invalid("this model has no tool-call format")
                            })?;
                            let body = tool_result_text(content.as_ref());
                            let result =
                                format.tool_result(Some(&name), &body, is_error.unwrap_or(false));
                            match results_turn {
                                None => {
                                    push_paragraph(&mut text, &result);
                                    cache_control
                                }
                                Some(separator) => {
                                    if !results.is_empty() {
                                        results.push_str(separator);
                                    }
                                    results.push_str(&result);
                                    if let Some(cc) = cache_control {
                                        marks.mark(&mut results, cc);
                                    }
                                    &None
                                }
                            }
                        }
                        ContentBlockParam::Thinking {}
                        | ContentBlockParam::RedactedThinking {}
                        | ContentBlockParam::ServerBlock {} => &None,
                    };
                    if let Some(cc) = cache_control {
                        if matches!(block, ContentBlockParam::ToolUse { .. }) {
                            // Calls are written together after the text: mark there.
                            if calls_mark.replace(cc.clone()).is_some() {
                                marks.extra += 1;
                            }
                        } else {
                            marks.mark(&mut text, cc);
                        }
                    }
                }
            }
        }
        if !calls.is_empty() {
            let format = tool_format.expect("checked when the call was read");
            push_paragraph(&mut text, &format.tool_calls(&calls));
            if let Some(cc) = &calls_mark {
                marks.mark(&mut text, cc);
            }
        }
        match message.role {
            Role::System => {
                let note = pending_system.get_or_insert_with(String::new);
                push_paragraph(note, &text);
                continue;
            }
            Role::Assistant => open_calls = call_ids,
            Role::User => {}
        }
        if let Some(note) = pending_system.take() {
            let mut folded = note;
            push_paragraph(&mut folded, &text);
            text = folded;
        }
        let had_results = !results.is_empty();
        if had_results {
            let separator = results_turn.unwrap_or_default();
            match turns.last_mut() {
                Some((Role::User, previous, true)) => {
                    previous.push_str(separator);
                    previous.push_str(&results);
                }
                _ => turns.push((Role::User, results, true)),
            }
        }
        match turns.last_mut() {
            // A message of only results: no text turn after them.
            _ if had_results && text.is_empty() => {}
            Some((role, previous, false)) if *role == message.role => {
                push_paragraph(previous, &text)
            }
            _ => turns.push((message.role, text, false)),
        }
        if message.role == Role::User {
            open_calls.clear();
        }
    }
    if let Some(note) = pending_system {
        // A trailing system note joins the last turn (not a turn of results).
        match turns.last_mut() {
            Some((_, previous, false)) => push_paragraph(previous, &note),
            _ => turns.push((Role::User, note, false)),
        }
    }
    Ok(turns)
}

fn tool_result_text(content: Option<&ToolResultContent>) -> String {
    match content {
        None => String::new(),
        Some(ToolResultContent::Text(text)) => text.clone(),
        Some(ToolResultContent::Blocks(blocks)) => blocks
            .iter()
            .map(|block| match block {
                ToolResultBlock::Text { text } => text.clone(),
                ToolResultBlock::Document { source } => source
                    .get("data")
                    .and_then(Value::as_str)
                    .map_or_else(|| "[document omitted]".to_string(), str::to_string),
                ToolResultBlock::Image {} => "[image omitted]".to_string(),
                ToolResultBlock::Other {} => "[search result omitted]".to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_nonce_is_normalized() {
        let a = "x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli; cch=1f2e3;\nYou are Claude Code.";
        let b = "x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli; cch=99aa0;\nYou are Claude Code.";
        assert_eq!(normalize_billing_header(a), normalize_billing_header(b));
        assert!(normalize_billing_header(a).contains("cc_entrypoint=cli"));
        assert_eq!(normalize_billing_header("plain"), "plain");
    }

    #[test]
    fn markers_strip_to_offsets() {
        let mut marks = Marks::default();
        let mut text = "hello  \n".to_string();
        let cc = CacheControl {
            _kind: super::super::wire::CacheKind::Ephemeral,
            ttl: Some(CacheTtl::OneHour),
        };
        marks.mark(&mut text, &cc);
        let (clean, offsets) = marks.strip(&format!("<s>{}</s>", text.trim()));
        assert_eq!(clean, "<s>hello</s>");
        assert_eq!(offsets, vec![(8, CacheTtl::OneHour)]);
    }
}
