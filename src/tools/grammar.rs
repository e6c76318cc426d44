//! Grammar-constrained tool calls: a [`ToolCallConstraint`] masks the
//! engine's logits so that the model can only write what `tool_choice`
//! allows, in its family's [`ToolCallFormat`], with each call's JSON being
//! `{"name": <a tool offered>, "arguments": <that tool's input_schema>}`.
//!
//! Built on llguidance: a Lark grammar per request, with the call JSON as
//! `%json` schemas. The call JSON is written on one line with `", "` and
//! `": "` separators (as [`ToolCallFormat::render_tool_calls`] writes it).
//! In `qwen35` a call is XML: `<tool_call>\n<function=NAME>\n`, the
//! parameters as `<parameter=KEY>\nVALUE\n</parameter>\n`, then
//! `</function>\n</tool_call>`, each value a string or `%json` by its
//! property's schema (see `xml_call_rule`). In `gemma4` a call is
//! `<|tool_call>call:NAME{KEY:VALUE,...}<tool_call|>` in Gemma 4's value
//! syntax, calls back to back; its markers and string quote are the
//! tokenizer's special tokens where it has them (see `grammar_gemma4.rs`).
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use showdown_engine::{EngineError, TokenConstraint, Tokenizer};
use tokenizers::DecoderWrapper;

use super::grammar_gemma4::{Gemma4Markers, Gemma4Rules, GEMMA4_RULES};
use super::{gemma4, ToolCallFormat, ToolChoice, ToolDefinition, ToolError};

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
        let mut bodies = Vec::new();
        let mut rules = String::new();
        let markers = Gemma4Markers::new(tokenizer);
        for (i, tool) in offered.iter().enumerate() {
            if format == ToolCallFormat::Gemma4 {
                let mut rule = Gemma4Rules {
                    tool: i,
                    next: 0,
                    markers: &markers,
                    rules: &mut rules,
                    fell_back: false,
                };
                bodies.push(rule.call(tool));
                if rule.fell_back {
                    fallbacks.push(tool.name.clone());
                }
                continue;
            }
            if format == ToolCallFormat::Qwen35 {
                let (body, fell_back) = xml_call_rule(env, i, tool, &mut rules);
                if fell_back {
                    fallbacks.push(tool.name.clone());
                }
                bodies.push(body);
                continue;
            }
            let schema = call_schema(&tool.name, &lenient(&tool.input_schema));
            if compiles(env, &schema) {
                bodies.push(format!("%json {schema}"));
            } else {
                fallbacks.push(tool.name.clone());
                let schema = call_schema(&tool.name, &json!({"type": "object"}));
                bodies.push(format!("%json {schema}"));
            }
        }
        let mut lark = lark_grammar(format, &bodies, choice, disable_parallel_tool_use, &markers);
        if !bodies.is_empty() && !matches!(choice, ToolChoice::None) {
            lark.push_str(&rules);
        }
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
pub(super) fn lenient(schema: &Value) -> Value {
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
pub(super) fn lark_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// `text` escaped for a Lark `/regex/`.
pub(super) fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether llguidance compiles `schema`.
fn compiles(env: &ToolGrammarEnv, schema: &Value) -> bool {
    env.matcher(&format!("start: %json {schema}")).is_ok()
}

/// What a call's body ends with after its tool's rule, as Lark: the end
/// marker (`hermes`, `gemma`: after a newline; `qwen35`: after
/// `</function>`; `gemma4`: after the arguments' `}`).
fn call_closing(format: ToolCallFormat, markers: &Gemma4Markers) -> String {
    match format {
        ToolCallFormat::Qwen35 => lark_string(&format!("</function>\n{}", format.call_end())),
        ToolCallFormat::Gemma4 => format!("\"}}\" {}", markers.end.lark),
        _ => lark_string(&format!("\n{}", format.call_end())),
    }
}

/// The Lark rule of one `qwen35` call to `tool` (`<function=NAME>\n`, then
/// its parameters; the caller adds `</function>` and the end marker), its
/// helper rules appended to `rules`, and whether a parameter's schema fell
/// back to any text.
///
/// Parameters are written in the schema's `properties` order, the required
/// ones always, the others optionally; no undeclared parameter, unless the
/// schema declares none (and does not forbid them): then any parameters.
/// A value is `\n</parameter>\n`-terminated: a string (only `string` among
/// its types, or several types with `string`, or none said) is any text
/// without `</parameter>`, an `enum` or `const` one of its values (strings
/// as they are, others as JSON), a boolean JSON's or Python's (`True`, as
/// the template writes it); other types are JSON matching the
/// property's schema, on one line with `", "` and `": "` separators, as
/// [`ToolCallFormat::render_tool_calls`] writes them.
fn xml_call_rule(
    env: &ToolGrammarEnv,
    index: usize,
    tool: &ToolDefinition,
    rules: &mut String,
) -> (String, bool) {
    let schema = lenient(&tool.input_schema);
    let mut body = lark_string(&format!("<function={}>\n", tool.name));
    let mut fell_back = false;
    let properties = schema.get("properties").and_then(Value::as_object);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    match properties {
        Some(properties) if !properties.is_empty() => {
            for (j, (key, property)) in properties.iter().enumerate() {
                let rule = format!("tool_{index}_{j}");
                let open = lark_string(&format!("<parameter={key}>\n"));
                let value = match xml_value(env, property) {
                    Some(value) => value,
                    None => {
                        fell_back = true;
                        "XML_STRING_VALUE".to_string()
                    }
                };
                rules.push_str(&format!("{rule}: {open} {value}\n"));
                body.push(' ');
                body.push_str(&rule);
                if !required.contains(&key.as_str()) {
                    body.push('?');
                }
            }
        }
        _ if !closed => body.push_str(" (\"<parameter=\" XML_NAME \">\\n\" XML_STRING_VALUE)*"),
        _ => {}
    }
    (body, fell_back)
}

/// A `qwen35` parameter value and its `\n</parameter>\n`, or `None` when
/// its schema does not compile (the caller takes any text).
fn xml_value(env: &ToolGrammarEnv, property: &Value) -> Option<String> {
    let close = lark_string(XML_VALUE_END);
    let literal = |value: &Value| match value {
        Value::String(text) => lark_string(text),
        other => {
            let mut json = String::new();
            super::write_json(other, &mut json);
            lark_string(&json)
        }
    };
    if let Some(values) = property.get("enum").and_then(Value::as_array) {
        if !values.is_empty() {
            let alternatives: Vec<String> = values.iter().map(literal).collect();
            return Some(format!("({}) {close}", alternatives.join(" | ")));
        }
    }
    if let Some(value) = property.get("const") {
        return Some(format!("{} {close}", literal(value)));
    }
    let types: Vec<&str> = match property.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.is_empty() || types.contains(&"string") {
        return Some("XML_STRING_VALUE".to_string());
    }
    if types == ["boolean"] {
        // JSON's, or Python's as the template writes them in history.
        return Some(format!(
            "(\"true\" | \"false\" | \"True\" | \"False\") {close}"
        ));
    }
    let mut schema = match property {
        Value::Object(fields) => fields.clone(),
        _ => return Some("XML_STRING_VALUE".to_string()),
    };
    schema.insert(
        "x-guidance".into(),
        json!({
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
            "lenient": true,
        }),
    );
    let schema = Value::Object(schema);
    compiles(env, &schema).then(|| format!("%json {schema} {close}"))
}

/// What ends a `qwen35` parameter value.
const XML_VALUE_END: &str = "\n</parameter>\n";

/// The terminals of `qwen35` values: a string value is one lexeme, any text
/// without `</parameter>` then `\n</parameter>\n`, so it ends at the first
/// `</parameter>` as the parser reads it.
const XML_TERMINALS: &str = "XML_STRING_VALUE: XML_TEXT \"\\n</parameter>\\n\"\n\
     XML_TEXT: /(?s:.*)/ & ~/(?s:.*)<\\/parameter>(?s:.*)/\n\
     XML_NAME: /[^<>\\n]+/\n";

fn lark_grammar(
    format: ToolCallFormat,
    bodies: &[String],
    choice: &ToolChoice,
    disable_parallel: bool,
    markers: &Gemma4Markers,
) -> String {
    let start = format.call_start();
    let gemma4 = format == ToolCallFormat::Gemma4;
    // A special start token cannot be written as text: free text is any.
    let special_start = gemma4 && markers.start.special;
    let no_marker = if special_start {
        "TEXT: /(?s:.*)/\n".to_string()
    } else {
        format!(
            "TEXT: /(?s:.*)/ & ~/(?s:.*){}(?s:.*)/\n",
            regex_escape(start)
        )
    };
    if matches!(choice, ToolChoice::None) || bodies.is_empty() {
        return format!("start: TEXT\n{no_marker}");
    }
    // What opens a call, up to its tool's rule; what separates calls.
    let (open, separator) = if gemma4 {
        (
            format!(
                "{} {}",
                markers.start.lark,
                lark_string(gemma4::CALL_PREFIX)
            ),
            "",
        )
    } else {
        (lark_string(&format!("{start}\n")), "\"\\n\" ")
    };
    let mut lark = String::new();
    let more = if disable_parallel {
        String::new()
    } else {
        format!(" ({separator}call)*")
    };
    match choice {
        ToolChoice::Auto if special_start => {
            lark.push_str(&format!("start: TEXT | TEXT call{more}\n{no_marker}"));
        }
        ToolChoice::Auto => {
            lark.push_str(&format!(
                "start: TEXT | text_start call_body{more}\n{no_marker}"
            ));
            let opening = if gemma4 {
                format!("{start}{}", gemma4::CALL_PREFIX)
            } else {
                format!("{start}\n")
            };
            lark.push_str(&format!(
                "text_start[lazy]: /(?s:.*)/ {}\n",
                lark_string(&opening)
            ));
        }
        _ => lark.push_str(&format!("start: call{more}\n")),
    }
    lark.push_str(&format!("call: {open} call_body\n"));
    let alternatives: Vec<String> = (0..bodies.len()).map(|i| format!("tool_{i}")).collect();
    lark.push_str(&format!(
        "call_body: ({}) {}\n",
        alternatives.join(" | "),
        call_closing(format, markers)
    ));
    for (i, body) in bodies.iter().enumerate() {
        lark.push_str(&format!("tool_{i}: {body}\n"));
    }
    if format == ToolCallFormat::Qwen35 {
        lark.push_str(XML_TERMINALS);
    }
    if gemma4 {
        lark.push_str(GEMMA4_RULES);
        lark.push_str(&markers.string_rules());
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

/// The tokens llguidance is told are special (written only as themselves,
/// never as text): added tokens that are special or look like markup
/// (`<...>`).
pub(super) fn special_ids(tokenizer: &Tokenizer) -> HashSet<u32> {
    tokenizer
        .inner()
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special || (t.content.starts_with('<') && t.content.ends_with('>')))
        .map(|(id, _)| id)
        .collect()
}

impl TokenizerBytes {
    fn new(tokenizer: &Tokenizer) -> Result<Self, ToolError> {
        let inner = tokenizer.inner();
        let byte_level = is_byte_level(inner.get_decoder());
        let chars = byte_level_chars();
        let specials = special_ids(tokenizer);
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
