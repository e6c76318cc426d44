//! The Messages API's wire types, as Anthropic documents them. Requests are
//! lenient (unknown fields, beta fields and client extras are accepted and
//! ignored); responses carry every field the SDKs expect, zeros included.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/messages` and `/v1/messages/count_tokens` bodies.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    /// Model name or alias.
    pub model: String,
    /// The conversation.
    pub messages: Vec<InputMessage>,
    /// Most tokens to generate (absent in count_tokens requests).
    pub max_tokens: Option<u64>,
    /// System prompt.
    #[serde(default)]
    pub system: Option<SystemPrompt>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Sampling temperature, 0–1 (default 1).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default)]
    pub top_k: Option<u64>,
    /// Custom stop sequences.
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    /// Tool definitions.
    #[serde(default)]
    pub tools: Vec<ToolParam>,
    /// How the model may use tools.
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceParam>,
    /// Automatic caching: a breakpoint on the last cacheable block.
    #[serde(default)]
    pub cache_control: Option<CacheControl>,
}

/// `system`: a string or text blocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SystemPrompt {
    /// Plain text.
    Text(String),
    /// Text blocks, possibly with cache breakpoints.
    Blocks(Vec<SystemBlock>),
}

/// A system text block.
#[derive(Debug, Clone, Deserialize)]
pub struct SystemBlock {
    /// Always `text` (checked when parsing).
    #[serde(rename = "type")]
    pub _kind: BlockKindText,
    /// The text.
    pub text: String,
    /// A cache breakpoint after this block.
    #[serde(default)]
    pub cache_control: Option<CacheControl>,
}

/// The only block type allowed in `system`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKindText {
    /// `"text"`.
    Text,
}

/// `cache_control`: `{"type": "ephemeral", "ttl": "5m" | "1h"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct CacheControl {
    /// Always `ephemeral` (checked when parsing).
    #[serde(rename = "type")]
    pub _kind: CacheKind,
    /// Lifetime; 5 minutes when absent.
    #[serde(default)]
    pub ttl: Option<CacheTtl>,
}

/// The only cache type.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    /// `"ephemeral"`.
    Ephemeral,
}

/// Cache lifetimes Anthropic offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CacheTtl {
    /// Five minutes.
    #[serde(rename = "5m")]
    FiveMinutes,
    /// One hour.
    #[serde(rename = "1h")]
    OneHour,
}

/// One input message.
#[derive(Debug, Clone, Deserialize)]
pub struct InputMessage {
    /// Who speaks.
    pub role: Role,
    /// What was said.
    pub content: MessageContent,
}

/// Roles, including the mid-conversation `system` Claude Code sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The user (and tool results).
    User,
    /// The model.
    Assistant,
    /// A system note inside the conversation.
    System,
}

/// Message content: a string or blocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content blocks.
    Blocks(Vec<ContentBlockParam>),
}

/// An input content block.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlockParam {
    /// Text.
    Text {
        /// The text.
        text: String,
        /// A cache breakpoint after this block.
        #[serde(default)]
        cache_control: Option<CacheControl>,
    },
    /// An image: these models read text only.
    Image {},
    /// A document: text documents are read as text.
    Document {
        /// `{"type": "text", "data": ...}` is supported.
        #[serde(default)]
        source: Value,
        /// A cache breakpoint after this block.
        #[serde(default)]
        cache_control: Option<CacheControl>,
    },
    /// A tool call the assistant made.
    ToolUse {
        /// `toolu_` id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments.
        input: Value,
        /// A cache breakpoint after this block.
        #[serde(default)]
        cache_control: Option<CacheControl>,
    },
    /// The result of a tool call.
    ToolResult {
        /// The call it answers.
        tool_use_id: String,
        /// A string or text blocks.
        #[serde(default)]
        content: Option<ToolResultContent>,
        /// Whether the tool failed.
        #[serde(default)]
        is_error: Option<bool>,
        /// A cache breakpoint after this block.
        #[serde(default)]
        cache_control: Option<CacheControl>,
    },
    /// Extended thinking from an earlier turn: not shown to these models.
    Thinking {},
    /// Redacted thinking: not shown to these models.
    RedactedThinking {},
    /// Server tool blocks and anything newer: skipped.
    #[serde(other)]
    Other,
}

/// `tool_result.content`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolResultContent {
    /// Plain text.
    Text(String),
    /// Blocks (text is used; images are noted).
    Blocks(Vec<Value>),
}

/// A tool definition.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolParam {
    /// Tool name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON schema of its input (server tools have none).
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// A cache breakpoint after the tool definitions up to this one.
    #[serde(default)]
    pub cache_control: Option<CacheControl>,
}

/// `tool_choice`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoiceParam {
    /// The model decides.
    Auto {
        /// At most one call.
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    /// The model must call some tool.
    Any {
        /// At most one call.
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    /// The model must call this tool.
    Tool {
        /// The tool.
        name: String,
        /// At most one call.
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    /// No tool calls.
    None {},
}

/// A response's usage, all four counters always present.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens neither read from nor written to the cache.
    pub input_tokens: usize,
    /// Prompt tokens written to the cache at a breakpoint.
    pub cache_creation_input_tokens: usize,
    /// Prompt tokens read from the cache.
    pub cache_read_input_tokens: usize,
    /// Generated tokens.
    pub output_tokens: usize,
}

impl Usage {
    /// Prompt tokens in all.
    pub fn prompt_tokens(&self) -> usize {
        self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
    }
}

/// A response content block.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call.
    ToolUse {
        /// `toolu_` id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments.
        input: Value,
    },
}

/// A complete (non-streamed) response.
#[derive(Debug, Clone, Serialize)]
pub struct MessageResponse {
    /// `msg_` id.
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `assistant`.
    pub role: Role,
    /// The model name as requested.
    pub model: String,
    /// The answer.
    pub content: Vec<ContentBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use` (null while streaming).
    pub stop_reason: Option<&'static str>,
    /// The stop sequence that matched.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: Usage,
}

/// A model in `/v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelObject {
    /// Always `model`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The name clients send.
    pub id: String,
    /// A human-readable name.
    pub display_name: String,
    /// RFC 3339 time (the server's start).
    pub created_at: String,
}
