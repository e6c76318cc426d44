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
    SystemPrompt, ToolResultContent,
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
    let mut marks = Marks::default();
    let mut system = String::new();

    if !request.tools.is_empty() {
        let format = tool_format.ok_or_else(|| {
            ApiError::invalid(format!(
                "model `{}` has no tool-call format; tools cannot be used with it",
                request.model
            ))
        })?;
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
            marks.mark(&mut system, cc);
        }
        if request
            .tools
            .iter()
            .filter(|t| t.cache_control.is_some())
            .count()
            > 1
        {
            marks.extra += request
                .tools
                .iter()
                .filter(|t| t.cache_control.is_some())
                .count()
                - 1;
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

    let mut turns = conversation_turns(&request.messages, tool_format, &mut marks)?;
    // Automatic caching (a top-level `cache_control`): a breakpoint after the
    // last block (a slot of the four), unless that block carries one already.
    if let (Some(cc), Some((_, last))) = (&request.cache_control, turns.last_mut()) {
        if !last.trim_end().ends_with(MARK) {
            marks.mark(last, cc);
        }
    }
    if marks.count() > MAX_BREAKPOINTS {
        return Err(ApiError::invalid(format!(
            "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {}.",
            marks.count()
        )));
    }

    // A final assistant turn is a prefill: the answer continues it.
    let (history, prefill) = match turns.last() {
        Some((Role::Assistant, text)) => (&turns[..turns.len() - 1], Some(text.as_str())),
        _ => (&turns[..], None),
    };
    let mut messages = Vec::with_capacity(history.len() + 1);
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for (role, text) in history {
        let role = match role {
            Role::User | Role::System => "user",
            Role::Assistant => "assistant",
        };
        messages.push(json!({"role": role, "content": text}));
    }
    let mut rendered = engine
        .render_chat(&messages, None, true)
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
        tokens,
        breakpoints,
    })
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

/// The conversation as (role, text) turns: consecutive turns of one role
/// merged, `system` notes folded into the following turn (never hoisted to the
/// front, which would change the prompt's start every turn), tool calls and
/// results written in the tool format.
fn conversation_turns(
    messages: &[InputMessage],
    tool_format: Option<&dyn ToolPromptFormat>,
    marks: &mut Marks,
) -> Result<Vec<(Role, String)>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    let mut turns: Vec<(Role, String)> = Vec::new();
    let mut pending_system: Option<String> = None;
    // Tool calls of the latest assistant turn: id -> name.
    let mut open_calls: Vec<(String, String)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let mut text = String::new();
        let mut calls: Vec<(String, Value)> = Vec::new();
        let mut call_ids = Vec::new();
        let mut calls_mark: Option<CacheControl> = None;
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
                            calls.push((name.clone(), input.clone()));
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
                            push_paragraph(
                                &mut text,
                                &format.tool_result(Some(&name), &body, is_error.unwrap_or(false)),
                            );
                            cache_control
                        }
                        ContentBlockParam::Thinking {}
                        | ContentBlockParam::RedactedThinking {}
                        | ContentBlockParam::Other => &None,
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
        match turns.last_mut() {
            Some((role, previous)) if *role == message.role => push_paragraph(previous, &text),
            _ => turns.push((message.role, text)),
        }
        if message.role == Role::User {
            open_calls.clear();
        }
    }
    if let Some(note) = pending_system {
        // A trailing system note joins the last turn.
        match turns.last_mut() {
            Some((_, previous)) => push_paragraph(previous, &note),
            None => turns.push((Role::User, note)),
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
            .map(|block| match block.get("type").and_then(Value::as_str) {
                Some("text") => block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                Some(other) => format!("[{other} omitted]"),
                None => String::new(),
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
