//! Grammar-constrained tool calls: a [`ToolCallConstraint`] masks the
//! engine's logits so that the model can only write what `tool_choice`
//! allows, in its family's [`ToolCallFormat`], with each call's JSON being
//! `{"name": <a tool offered>, "arguments": <that tool's input_schema>}`.
//!
//! Built on llguidance: a Lark grammar per request, with the call JSON as
//! `%json` schemas. The call JSON is written on one line with `", "` and
//! `": "` separators (as [`ToolCallFormat::render_tool_calls`] writes it).
//!
//! - `Any` / `Tool(name)`: call marker, JSON, end marker; then (unless
//!   parallel calls are disabled) more calls, each on a new line; then the
//!   turn ends.
//! - `Auto`: free text, then optionally calls as above.
//! - `None`: free text that never contains the call marker.
//!
//! Free text excludes special tokens. The model's end-of-turn tokens are
//! allowed exactly when the grammar accepts. A tool whose `input_schema`
//! llguidance cannot compile (even leniently: unknown keywords and formats
//! are ignored) is constrained to any JSON object instead.

use std::collections::HashMap;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use showdown_engine::{EngineError, TokenConstraint, Tokenizer};
use tokenizers::DecoderWrapper;

use super::{ToolCallFormat, ToolChoice, ToolDefinition, ToolError};

/// What llguidance needs to know about a tokenizer: built once per loaded
/// model (a few hundred milliseconds for a 50k vocabulary) and shared by
/// every request's [`ToolCallConstraint`].
pub struct ToolGrammarEnv {
    factory: ParserFactory,
    vocab_size: usize,
}

impl ToolGrammarEnv {
    /// The environment for `tokenizer`.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, ToolError> {
        let env = TokenizerBytes::new(tokenizer)?;
        let vocab_size = env.trie.vocab_size();
        let tok_env: llguidance::toktrie::TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new_simple(&tok_env).map_err(grammar_err)?;
        factory.quiet();
        Ok(Self {
            factory,
            vocab_size,
        })
    }

    fn matcher(&self, lark: &str) -> Result<Matcher, ToolError> {
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(lark.to_string()))
            .map_err(grammar_err)?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(error) => Err(ToolError::Grammar(error)),
            None => Ok(matcher),
        }
    }
}

fn grammar_err(e: impl std::fmt::Display) -> ToolError {
    ToolError::Grammar(e.to_string())
}

/// A [`TokenConstraint`] that admits only output allowed by a tool choice.
pub struct ToolCallConstraint {
    matcher: Matcher,
    vocab_size: usize,
    stop_tokens: Vec<u32>,
    lark: String,
    fallbacks: Vec<String>,
}

impl ToolCallConstraint {
    /// The constraint for one request, building the tokenizer environment
    /// on the spot; prefer [`ToolCallConstraint::with_env`] when serving.
    pub fn new(
        format: ToolCallFormat,
        tools: &[ToolDefinition],
        choice: &ToolChoice,
        disable_parallel_tool_use: bool,
        tokenizer: &Tokenizer,
    ) -> Result<Self, ToolError> {
        let env = ToolGrammarEnv::new(tokenizer)?;
        Self::with_env(
            &env,
            format,
            tools,
            choice,
            disable_parallel_tool_use,
            tokenizer,
        )
    }

    /// The constraint for one request over a prepared environment.
    pub fn with_env(
        env: &ToolGrammarEnv,
        format: ToolCallFormat,
        tools: &[ToolDefinition],
        choice: &ToolChoice,
        disable_parallel_tool_use: bool,
        tokenizer: &Tokenizer,
    ) -> Result<Self, ToolError> {
        let offered: Vec<&ToolDefinition> = match choice {
            ToolChoice::Tool(name) => vec![tools
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| ToolError::UnknownTool(name.clone()))?],
            ToolChoice::Any if tools.is_empty() => return Err(ToolError::NoTools),
            _ => tools.iter().collect(),
        };
        let mut fallbacks = Vec::new();
        let mut schemas = Vec::new();
        for tool in &offered {
            let schema = call_schema(&tool.name, &lenient(&tool.input_schema));
            let lark = format!("start: %json {schema}");
            if env.matcher(&lark).is_ok() {
                schemas.push(schema);
            } else {
                fallbacks.push(tool.name.clone());
                schemas.push(call_schema(&tool.name, &json!({"type": "object"})));
            }
        }
        let lark = lark_grammar(format, &schemas, choice, disable_parallel_tool_use);
        let matcher = env.matcher(&lark)?;
        Ok(Self {
            matcher,
            vocab_size: env.vocab_size,
            stop_tokens: tokenizer.stop_tokens().to_vec(),
            lark,
            fallbacks,
        })
    }

    /// The Lark grammar in force (for debugging).
    pub fn grammar(&self) -> &str {
        &self.lark
    }

    /// Tools whose input schema could not be compiled, so any JSON object is
    /// accepted as their input.
    pub fn schema_fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// Whether the output so far may end here.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

fn constraint_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidRequest(format!("tool call constraint: {e}"))
}

impl TokenConstraint for ToolCallConstraint {
    fn mask(&mut self, logits: &mut [f32]) -> showdown_engine::Result<()> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(constraint_err)?;
        let words = allowed.as_slice();
        for (id, logit) in logits.iter_mut().enumerate() {
            let ok = id < self.vocab_size && (words[id / 32] >> (id % 32)) & 1 != 0;
            if !ok {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn accept(&mut self, token: u32) -> showdown_engine::Result<bool> {
        if self.stop_tokens.contains(&token) {
            return Ok(true);
        }
        self.matcher.consume_token(token).map_err(constraint_err)?;
        Ok(self.matcher.is_stopped())
    }
}

/// The schema of one call's JSON, on one line with fixed separators.
fn call_schema(name: &str, arguments: &Value) -> Value {
    json!({
        "x-guidance": {
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
            "lenient": true,
        },
        "type": "object",
        "properties": {
            "name": {"const": name},
            "arguments": arguments,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// The input schema without what only documents it (`$schema`, `$id`) and
/// with a missing or non-object type made an object.
fn lenient(schema: &Value) -> Value {
    let Value::Object(fields) = schema else {
        return json!({"type": "object"});
    };
    let mut fields = fields.clone();
    fields.remove("$schema");
    fields.remove("$id");
    if fields.is_empty() {
        return json!({"type": "object"});
    }
    Value::Object(fields)
}

/// A Lark string literal.
fn lark_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// `text` escaped for a Lark `/regex/`.
fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn lark_grammar(
    format: ToolCallFormat,
    schemas: &[Value],
    choice: &ToolChoice,
    disable_parallel: bool,
) -> String {
    let start = format.call_start();
    let no_marker = format!(
        "TEXT: /(?s:.*)/ & ~/(?s:.*){}(?s:.*)/\n",
        regex_escape(start)
    );
    if matches!(choice, ToolChoice::None) || schemas.is_empty() {
        return format!("start: TEXT\n{no_marker}");
    }
    let mut lark = String::new();
    let more = if disable_parallel {
        ""
    } else {
        " (\"\\n\" call)*"
    };
    match choice {
        ToolChoice::Auto => {
            lark.push_str(&format!(
                "start: TEXT | text_start call_body{more}\n{no_marker}"
            ));
            lark.push_str(&format!(
                "text_start[lazy]: /(?s:.*)/ {}\n",
                lark_string(&format!("{start}\n"))
            ));
        }
        _ => lark.push_str(&format!("start: call{more}\n")),
    }
    lark.push_str(&format!(
        "call: {} call_body\n",
        lark_string(&format!("{start}\n"))
    ));
    let alternatives: Vec<String> = (0..schemas.len()).map(|i| format!("tool_{i}")).collect();
    lark.push_str(&format!(
        "call_body: ({}) {}\n",
        alternatives.join(" | "),
        lark_string(&format!("\n{}", format.call_end()))
    ));
    for (i, schema) in schemas.iter().enumerate() {
        lark.push_str(&format!("tool_{i}: %json {schema}\n"));
    }
    lark
}

/// The bytes of every token, as llguidance's trie wants them.
struct TokenizerBytes {
    trie: TokTrie,
}

/// GPT-2's byte-to-unicode table, reversed: the character byte-level BPE
/// writes for each byte.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::new();
    let mut next = 0x100u32;
    for byte in 0..=255u8 {
        if printable(byte) {
            map.insert(byte as char, byte);
        } else {
            map.insert(char::from_u32(next).expect("valid char"), byte);
            next += 1;
        }
    }
    map
}

fn is_byte_level(decoder: Option<&DecoderWrapper>) -> bool {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(seq)) => {
            seq.get_decoders().iter().any(|d| is_byte_level(Some(d)))
        }
        _ => false,
    }
}

/// `<0xHH>`, SentencePiece's byte-fallback token.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl TokenizerBytes {
    fn new(tokenizer: &Tokenizer) -> Result<Self, ToolError> {
        let inner = tokenizer.inner();
        let byte_level = is_byte_level(inner.get_decoder());
        let chars = byte_level_chars();
        let specials: std::collections::HashSet<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special || (t.content.starts_with('<') && t.content.ends_with('>')))
            .map(|(id, _)| id)
            .collect();
        let vocab_size = tokenizer.vocab_size();
        let mut words = Vec::with_capacity(vocab_size);
        for id in 0..vocab_size as u32 {
            let piece = tokenizer.token(id).unwrap_or_default();
            let bytes = if specials.contains(&id) || tokenizer.stop_tokens().contains(&id) {
                let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                bytes.extend_from_slice(piece.as_bytes());
                bytes
            } else if byte_level {
                // A piece outside the table cannot be written: no bytes.
                piece
                    .chars()
                    .map(|c| chars.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_default()
            } else if let Some(byte) = byte_fallback(&piece) {
                vec![byte]
            } else {
                piece.replace('\u{2581}', " ").into_bytes()
            };
            words.push(bytes);
        }
        let eos = tokenizer.stop_tokens().first().copied().unwrap_or(0);
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(tokenizer.stop_tokens());
        Ok(Self { trie })
    }
}

impl TokenizerEnv for TokenizerBytes {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    /// Greedy tokenization is not what BPE or SentencePiece would produce,
    /// and a model may write text in any tokenization. Saying so keeps
    /// llguidance from forcing its own split of text the grammar fixes (it
    /// allowed only `"}` after `"celsius`, masking the `"` then `}}` that
    /// SmolLM2's tokenizer writes).
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}
