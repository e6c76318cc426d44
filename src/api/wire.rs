//! The Messages API's wire types, as Anthropic documents them. Requests are
//! checked as Anthropic checks them: a field the schema does not have, a
//! content block or tool of an unknown type, or a value of the wrong type is
//! a 400 naming the field. Documented fields these models have no use for
//! (`metadata`, `thinking`, server tools, beta fields) are type-checked and
//! ignored. Responses carry every field the SDKs expect, zeros included.

use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/messages` and `/v1/messages/count_tokens` bodies (count_tokens
/// takes the same fields; those it has no use for are ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// `{"user_id": ...}`: accepted, unused.
    #[serde(default, rename = "metadata")]
    pub _metadata: Option<Metadata>,
    /// Extended thinking settings: these models do not think aloud.
    #[serde(default, rename = "thinking")]
    pub _thinking: Option<Map<String, Value>>,
    /// `auto` or `standard_only`: one tier here.
    #[serde(default, rename = "service_tier")]
    pub _service_tier: Option<ServiceTier>,
    /// A code-execution container (an id or its settings): unused.
    #[serde(default, rename = "container")]
    pub _container: Option<Value>,
    /// Context editing (beta): unused.
    #[serde(default, rename = "context_management")]
    pub _context_management: Option<Map<String, Value>>,
    /// Remote MCP servers (beta): unused.
    #[serde(default, rename = "mcp_servers")]
    pub _mcp_servers: Option<Vec<Map<String, Value>>>,
    /// Output settings such as `effort` (beta): unused.
    #[serde(default, rename = "output_config")]
    pub _output_config: Option<Map<String, Value>>,
    /// Structured output format (beta): unused.
    #[serde(default, rename = "output_format")]
    pub _output_format: Option<Map<String, Value>>,
}

/// `metadata`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// An opaque user id.
    #[serde(default, rename = "user_id")]
    pub _user_id: Option<String>,
}

/// `service_tier`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceTier {
    /// Priority capacity when available.
    Auto,
    /// Standard capacity only.
    StandardOnly,
}

/// `system`: a string or text blocks.
#[derive(Debug, Clone)]
pub enum SystemPrompt {
    /// Plain text.
    Text(String),
    /// Text blocks, possibly with cache breakpoints.
    Blocks(Vec<SystemBlock>),
}

impl<'de> Deserialize<'de> for SystemPrompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            match string_or_list(deserializer, "a string or a list of text blocks")? {
                StringOrList::String(text) => Self::Text(text),
                StringOrList::List(blocks) => Self::Blocks(blocks),
            },
        )
    }
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

/// `cache_control`: `{"type": "ephemeral", "ttl": "5m" | "1h"}`. Like the
/// fields inside content blocks, extra fields here are let through: clients
/// add to them first.
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
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content blocks.
    Blocks(Vec<ContentBlockParam>),
}

impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            match string_or_list(deserializer, "a string or a list of content blocks")? {
                StringOrList::String(text) => Self::Text(text),
                StringOrList::List(blocks) => Self::Blocks(blocks),
            },
        )
    }
}

/// An input content block. Every type Anthropic documents parses; an
/// unknown `type` is refused.
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
    /// An image: refused, these models read text only.
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
        /// Arguments (an object).
        input: Map<String, Value>,
        /// A cache breakpoint after this block.
        #[serde(default)]
        cache_control: Option<CacheControl>,
    },
    /// The result of a tool call.
    ToolResult {
        /// The call it answers.
        tool_use_id: String,
        /// A string or blocks.
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
    /// Server-side tool calls and their results, search results and
    /// container uploads: blocks of Anthropic's own tools, skipped.
    #[serde(
        rename = "server_tool_use",
        alias = "web_search_tool_result",
        alias = "web_fetch_tool_result",
        alias = "code_execution_tool_result",
        alias = "bash_code_execution_tool_result",
        alias = "text_editor_code_execution_tool_result",
        alias = "tool_search_tool_result",
        alias = "mcp_tool_use",
        alias = "mcp_tool_result",
        alias = "container_upload",
        alias = "search_result"
    )]
    ServerBlock {},
}

/// `tool_result.content`.
#[derive(Debug, Clone)]
pub enum ToolResultContent {
    /// Plain text.
    Text(String),
    /// Blocks.
    Blocks(Vec<ToolResultBlock>),
}

impl<'de> Deserialize<'de> for ToolResultContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            match string_or_list(deserializer, "a string or a list of content blocks")? {
                StringOrList::String(text) => Self::Text(text),
                StringOrList::List(blocks) => Self::Blocks(blocks),
            },
        )
    }
}

/// A block inside a tool result.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolResultBlock {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image: refused, these models read text only.
    Image {},
    /// A document (plain-text ones are read).
    Document {
        /// Where its data is.
        #[serde(default)]
        source: Value,
    },
    /// A search result or a tool reference: noted, not read.
    #[serde(rename = "search_result", alias = "tool_reference")]
    Other {},
}

/// A tool definition: a client tool (`type` absent or `custom`) with its
/// input schema, or one of Anthropic's versioned server tools.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolParam {
    /// `custom`, a server tool such as `web_search_20250305`, or absent.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
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

impl ToolParam {
    /// A tool the client runs (not one of Anthropic's server tools).
    pub fn is_custom(&self) -> bool {
        matches!(self.kind.as_deref(), None | Some("custom"))
    }
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

/// A string, or a list of `T` (content, system prompts, tool results): a
/// hand-written visitor, so an error inside the list names its element
/// instead of "did not match any variant".
enum StringOrList<T> {
    String(String),
    List(Vec<T>),
}

fn string_or_list<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
) -> Result<StringOrList<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct StringOrListVisitor<T>(&'static str, PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for StringOrListVisitor<T> {
        type Value = StringOrList<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.0)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(StringOrList::String(v.to_owned()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(StringOrList::String(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(StringOrList::List(items))
        }
    }

    deserializer.deserialize_any(StringOrListVisitor(expecting, PhantomData))
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
