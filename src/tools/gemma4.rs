//! The `gemma4` format: the tool calls Gemma 4's chat template teaches
//! (`fixtures/templates/google-gemma-4-31B-it.jinja`, llama.cpp's
//! `common/parsers/gemma4.cpp` reads them back):
//!
//! ```text
//! <|tool_call>call:NAME{KEY:VALUE,...}<tool_call|>
//! ```
//!
//! Values are in Gemma 4's own syntax, as the template's `format_argument`
//! macro writes them: a string between `<|"|>` quotes, written as it is (no
//! escapes: it ends at the next `<|"|>`); numbers, `true` and `false` as in
//! JSON; arrays `[V,V]`; objects `{KEY:V,...}` with bare keys; no spaces.
//! The template sorts object keys (`dictsort`: by key, ASCII case ignored).
//! It writes a null value as jinja prints `None`; showdown writes `null`,
//! as llama.cpp's parser reads it. Several calls follow each other with
//! nothing between them.
//!
//! The parser ([`Gemma4CallParser`]) streams: `ToolCallStart` at
//! `call:NAME{`, then the input as JSON fragments that always concatenate
//! to the call's input, `ToolCallEnd` at `<tool_call|>` (or when something
//! else follows the arguments' closing brace, or at the end of the output).
//! Strings stream as they are generated (a possible partial `<|"|>` held
//! back). It is lenient where llama.cpp's grammar is not, and reads
//! whitespace between tokens, keys in `<|"|>` or JSON quotes, JSON strings,
//! and a bare word that is no JSON scalar as a string. A top-level argument
//! is typed by the tool's `input_schema` (see `xml.rs` for what a schema
//! says about types): when the schema allows only `string`, a bare scalar
//! is its text (`02134`, `1.50` as written); when it does not allow
//! `string`, a quoted value is parsed as JSON and kept when it has one of
//! the types (`<|"|>5<|"|>` for an integer is 5). Nested values are taken
//! as written.
//!
//! A `<|tool_call>` not followed by `call:NAME{` is not a call: it is sent
//! as text, markers included, up to its `<tool_call|>` or the end of the
//! output. Arguments that stop following the syntax end the call with what
//! was read (the object closed); the rest of that call, up to and including
//! its `<tool_call|>`, is text. A call cut off (at `max_tokens`) is closed
//! with what it has: a cut-off string keeps its text.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use showdown_engine::{ChatTemplate, ChatTemplateInput};

use super::parser::{partial_suffix, push_text, ParsedEvent};
use super::xml::{json_type_fits, schema_types};
use super::{ToolCall, ToolDefinition};

pub(super) const CALL_START: &str = "<|tool_call>";
pub(super) const CALL_END: &str = "<tool_call|>";
/// What follows the start marker, before the tool's name.
pub(super) const CALL_PREFIX: &str = "call:";
/// Gemma 4's string quote.
pub(super) const QUOTE: &str = "<|\"|>";
const RESPONSE_START: &str = "<|tool_response>";
const RESPONSE_END: &str = "<tool_response|>";

/// The longest name or key waited for before what ends it.
const MAX_NAME: usize = 256;

/// Gemma 4's template (vendored from llama.cpp b11434,
/// `models/templates/google-gemma-4-31B-it.jinja`).
const GEMMA4_TEMPLATE: &str = include_str!("../../fixtures/templates/google-gemma-4-31B-it.jinja");

/// The tools section Gemma 4's template writes in the system turn (each
/// tool as `<|tool>declaration:NAME{...}<tool|>`), rendered by the vendored
/// template itself, so it is the template's text byte for byte. Empty if
/// the template cannot render these tools.
pub(super) fn tools_section(tools: &[Value]) -> String {
    static TEMPLATE: OnceLock<Option<ChatTemplate>> = OnceLock::new();
    let Some(template) = TEMPLATE
        .get_or_init(|| ChatTemplate::new(GEMMA4_TEMPLATE).ok())
        .as_ref()
    else {
        return String::new();
    };
    let messages = [serde_json::json!({"role": "user", "content": ""})];
    let rendered = template.render(&ChatTemplateInput {
        messages: &messages,
        tools: Some(tools),
        add_generation_prompt: false,
        enable_thinking: false,
        bos_token: "",
        eos_token: "",
    });
    let Ok(rendered) = rendered else {
        return String::new();
    };
    match (rendered.find("<|tool>"), rendered.rfind("<tool|>")) {
        (Some(start), Some(end)) if start < end => rendered[start..end + "<tool|>".len()].into(),
        _ => String::new(),
    }
}

/// One call as the template writes it: `<|tool_call>call:NAME{...}<tool_call|>`,
/// the arguments sorted by key.
pub(super) fn render_call(call: &ToolCall) -> String {
    let mut out = format!("{CALL_START}{CALL_PREFIX}{}{{", call.name);
    match &call.input {
        Value::Object(fields) => write_fields(fields, &mut out),
        // The template writes string arguments as they are.
        Value::String(text) => out.push_str(text),
        _ => {}
    }
    out.push('}');
    out.push_str(CALL_END);
    out
}

/// A tool result as the template writes a string response:
/// `<|tool_response>response:NAME{value:<|"|>CONTENT<|"|>}<tool_response|>`.
pub(super) fn render_result(name: &str, content: &str) -> String {
    format!("{RESPONSE_START}response:{name}{{value:{QUOTE}{content}{QUOTE}}}{RESPONSE_END}")
}

/// `KEY:VALUE` pairs, sorted as the template's `dictsort` sorts them.
fn write_fields(fields: &Map<String, Value>, out: &mut String) {
    let mut sorted: Vec<(&String, &Value)> = fields.iter().collect();
    sorted.sort_by_key(|(key, _)| key.to_ascii_lowercase());
    for (i, (key, value)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push(':');
        write_value(value, out);
    }
}

/// A value as the template's `format_argument` writes it (keys bare), but
/// `null` for null.
pub(super) fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::String(text) => {
            out.push_str(QUOTE);
            out.push_str(text);
            out.push_str(QUOTE);
        }
        Value::Object(fields) => {
            out.push('{');
            write_fields(fields, out);
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Streaming parser of `gemma4` output; see the module docs.
pub(super) struct Gemma4CallParser {
    /// Each tool's declared properties, by tool name.
    properties: HashMap<String, Map<String, Value>>,
    /// Text not yet read.
    buf: String,
    state: State,
    /// Just after a call: leading whitespace is dropped.
    after_call: bool,
}

enum State {
    /// Outside calls.
    Text,
    /// After `<|tool_call>` (not in `buf`), before `call:NAME{`.
    Opened,
    /// After a `<|tool_call>` that opened no call: text up to its
    /// `<tool_call|>`; `buf` has been searched up to `searched`.
    Malformed { searched: usize },
    /// Reading the arguments.
    Args(Call),
    /// After the arguments' closing brace: waiting for `<tool_call|>`.
    Closed(ToolCall),
    /// After arguments that broke off: text up to the call's `<tool_call|>`.
    Broken { searched: usize },
}

/// A call being read.
struct Call {
    name: String,
    reader: ValueReader,
    /// How much of the reader's JSON has been sent.
    sent: usize,
}

impl Call {
    /// Sends the JSON read since the last fragment (not a held value's).
    fn send(&mut self, events: &mut Vec<ParsedEvent>) {
        let until = self.reader.sendable();
        if until > self.sent {
            let fragment = self.reader.json[self.sent..until].to_string();
            events.push(ParsedEvent::ToolCallInput(fragment));
            self.sent = until;
        }
    }

    /// Closes what is open, sends the rest and returns the call.
    fn close(mut self, events: &mut Vec<ParsedEvent>) -> ToolCall {
        self.reader.close_all();
        self.send(events);
        let input =
            serde_json::from_str(&self.reader.json).unwrap_or_else(|_| Value::Object(Map::new()));
        ToolCall {
            name: self.name,
            input,
        }
    }
}

enum Read {
    Wait,
    No,
    /// A name, and the bytes read up to and including the `{` after it.
    Name(String, usize),
}

impl Gemma4CallParser {
    pub(super) fn new(tools: &[ToolDefinition]) -> Self {
        let properties = tools
            .iter()
            .map(|tool| {
                let properties = tool
                    .input_schema
                    .get("properties")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                (tool.name.clone(), properties)
            })
            .collect();
        Self {
            properties,
            buf: String::new(),
            state: State::Text,
            after_call: false,
        }
    }

    pub(super) fn push(&mut self, text: &str) -> Vec<ParsedEvent> {
        self.buf.push_str(text);
        let mut events = Vec::new();
        while self.step(&mut events) {}
        events
    }

    /// Reads what it can of `buf`; returns whether to look again.
    fn step(&mut self, events: &mut Vec<ParsedEvent>) -> bool {
        match std::mem::replace(&mut self.state, State::Text) {
            State::Text => {
                if self.after_call {
                    let kept = self.buf.trim_start().len();
                    self.buf.drain(..self.buf.len() - kept);
                    if self.buf.is_empty() {
                        return false;
                    }
                }
                if let Some(at) = self.buf.find(CALL_START) {
                    push_text(events, &self.buf[..at]);
                    self.buf.drain(..at + CALL_START.len());
                    self.after_call = false;
                    self.state = State::Opened;
                    return true;
                }
                let emit = self.buf.len() - partial_suffix(&self.buf, CALL_START);
                if emit > 0 {
                    self.after_call = false;
                    push_text(events, &self.buf[..emit]);
                    self.buf.drain(..emit);
                }
                false
            }
            State::Opened => match read_call_name(&self.buf) {
                Read::Wait => {
                    self.state = State::Opened;
                    false
                }
                Read::No => {
                    self.state = State::Malformed { searched: 0 };
                    true
                }
                Read::Name(name, consumed) => {
                    // The `{` stays: the reader starts at it.
                    self.buf.drain(..consumed - 1);
                    events.push(ParsedEvent::ToolCallStart { name: name.clone() });
                    let properties = self.properties.get(&name).cloned().unwrap_or_default();
                    self.state = State::Args(Call {
                        name,
                        reader: ValueReader::new(properties),
                        sent: 0,
                    });
                    true
                }
            },
            State::Malformed { searched } => match self.find_end(searched) {
                Ok(end) => {
                    push_text(events, &format!("{CALL_START}{}", &self.buf[..end]));
                    self.buf.drain(..end);
                    true
                }
                Err(searched) => {
                    self.state = State::Malformed { searched };
                    false
                }
            },
            State::Broken { searched } => match self.find_end(searched) {
                Ok(end) => {
                    push_text(events, &self.buf[..end]);
                    self.buf.drain(..end);
                    self.after_call = false;
                    true
                }
                Err(searched) => {
                    self.state = State::Broken { searched };
                    false
                }
            },
            State::Args(mut call) => match call.reader.feed(&self.buf, false) {
                Ok(consumed) => {
                    self.buf.drain(..consumed);
                    call.send(events);
                    if call.reader.done {
                        self.state = State::Closed(call.close(events));
                        true
                    } else {
                        self.state = State::Args(call);
                        false
                    }
                }
                Err(consumed) => {
                    self.buf.drain(..consumed);
                    call.send(events);
                    let rest = self.buf.trim_start();
                    if let Some(after) = rest.strip_prefix(CALL_END) {
                        // Only the closing brace is missing.
                        self.buf = after.to_string();
                        let call = call.close(events);
                        self.end_call(events, call);
                        return true;
                    }
                    if rest.len() < CALL_END.len() && CALL_END.starts_with(rest) {
                        self.state = State::Args(call);
                        return false;
                    }
                    let call = call.close(events);
                    events.push(ParsedEvent::ToolCallEnd(call));
                    self.state = State::Broken { searched: 0 };
                    true
                }
            },
            State::Closed(call) => {
                let rest = self.buf.trim_start();
                if let Some(after) = rest.strip_prefix(CALL_END) {
                    self.buf = after.to_string();
                    self.end_call(events, call);
                    return true;
                }
                if rest.len() < CALL_END.len() && CALL_END.starts_with(rest) {
                    self.state = State::Closed(call);
                    return false;
                }
                // No `<tool_call|>`: the call ends here.
                self.end_call(events, call);
                true
            }
        }
    }

    /// Where the `<tool_call|>` in `buf` ends (searching from `searched`),
    /// or how far `buf` has been searched.
    fn find_end(&self, searched: usize) -> Result<usize, usize> {
        match self.buf[searched..].find(CALL_END) {
            Some(offset) => Ok(searched + offset + CALL_END.len()),
            None => Err(self.buf.len() - partial_suffix(&self.buf, CALL_END)),
        }
    }

    fn end_call(&mut self, events: &mut Vec<ParsedEvent>, call: ToolCall) {
        events.push(ParsedEvent::ToolCallEnd(call));
        self.state = State::Text;
        self.after_call = true;
    }

    pub(super) fn finish(mut self) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        match std::mem::replace(&mut self.state, State::Text) {
            State::Text | State::Broken { .. } => push_text(&mut events, &self.buf),
            State::Opened | State::Malformed { .. } => {
                push_text(&mut events, &format!("{CALL_START}{}", self.buf));
            }
            State::Closed(call) => events.push(ParsedEvent::ToolCallEnd(call)),
            State::Args(mut call) => {
                // Cut off: what was generated is final.
                let rest = match call.reader.feed(&self.buf, true) {
                    Ok(_) => "",
                    Err(consumed) => &self.buf[consumed..],
                };
                // A partial `<tool_call|>` goes with the call.
                let rest = if CALL_END.starts_with(rest.trim()) {
                    String::new()
                } else {
                    rest.to_string()
                };
                let call = call.close(&mut events);
                events.push(ParsedEvent::ToolCallEnd(call));
                push_text(&mut events, &rest);
            }
        }
        events
    }
}

/// Reads `call:NAME{` (whitespace before it aside).
fn read_call_name(buf: &str) -> Read {
    let rest = buf.trim_start();
    let skipped = buf.len() - rest.len();
    let Some(after) = rest.strip_prefix(CALL_PREFIX) else {
        return if CALL_PREFIX.starts_with(rest) {
            Read::Wait
        } else {
            Read::No
        };
    };
    match after.find(|c: char| c == '{' || c.is_whitespace() || "<>}:,\"".contains(c)) {
        Some(at) if after.as_bytes()[at] == b'{' && at > 0 => Read::Name(
            after[..at].to_string(),
            skipped + CALL_PREFIX.len() + at + 1,
        ),
        Some(_) => Read::No,
        None if after.len() > MAX_NAME => Read::No,
        None => Read::Wait,
    }
}

/// An open container in a value being read.
struct Frame {
    object: bool,
    expect: Expect,
    /// Whether an item has been written (the next needs a comma).
    has_items: bool,
    /// An object's key read, its value not begun.
    key: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// After the opening bracket: an item or the close.
    ItemOrClose,
    /// After a comma: an item (a close is taken too).
    Item,
    /// After an object's key and colon: its value.
    Value,
    /// After an item: a comma or the close.
    CommaOrClose,
}

/// A top-level argument whose JSON is held until it ends, to be typed.
struct Held {
    /// Where its value's JSON starts.
    from: usize,
    key: String,
    /// The bare text, for a bare scalar.
    bare: Option<String>,
}

/// An incremental reader of one Gemma 4 value (the arguments object) into
/// JSON text. Keys and commas are written when the item after them begins,
/// so the JSON can be closed wherever the text is cut off.
struct ValueReader {
    /// The tool's declared properties, typing the top-level arguments.
    properties: Map<String, Value>,
    json: String,
    stack: Vec<Frame>,
    in_string: bool,
    held: Option<Held>,
    done: bool,
}

impl ValueReader {
    fn new(properties: Map<String, Value>) -> Self {
        Self {
            properties,
            json: String::new(),
            stack: Vec::new(),
            in_string: false,
            held: None,
            done: false,
        }
    }

    /// How much of `json` may be sent: up to a held value.
    fn sendable(&self) -> usize {
        self.held.as_ref().map_or(self.json.len(), |held| held.from)
    }

    /// Reads what it can of `text` (`at_end`: nothing follows it); returns
    /// the bytes read, or, where the text stops following the syntax, the
    /// bytes read before that point as the error.
    fn feed(&mut self, text: &str, at_end: bool) -> Result<usize, usize> {
        let mut at = 0;
        while !self.done {
            let rest = &text[at..];
            if self.in_string {
                let (content, used, closed) = match rest.find(QUOTE) {
                    Some(end) => (&rest[..end], end + QUOTE.len(), true),
                    None => {
                        // A partial quote is held back (dropped when cut off).
                        let take = rest.len() - partial_suffix(rest, QUOTE);
                        (
                            &rest[..take],
                            if at_end { rest.len() } else { take },
                            at_end,
                        )
                    }
                };
                self.json.push_str(&escaped(content));
                at += used;
                if !closed {
                    return Ok(at);
                }
                self.json.push('"');
                self.in_string = false;
                self.value_done();
                continue;
            }
            let trimmed = rest.trim_start();
            at += rest.len() - trimmed.len();
            let rest = trimmed;
            if rest.is_empty() {
                if at_end {
                    self.close_all();
                }
                return Ok(at);
            }
            let expect = self
                .stack
                .last()
                .map_or(Expect::Value, |frame| frame.expect);
            let first = rest.as_bytes()[0];
            let read = match (expect, first) {
                (Expect::ItemOrClose | Expect::Item | Expect::CommaOrClose, b'}' | b']') => {
                    let frame = self.stack.last().expect("an open frame");
                    if frame.object != (first == b'}') {
                        return Err(at);
                    }
                    self.stack.pop();
                    self.json.push(first as char);
                    self.value_done();
                    Some(1)
                }
                (Expect::CommaOrClose, b',') => {
                    self.stack.last_mut().expect("an open frame").expect = Expect::Item;
                    Some(1)
                }
                (Expect::CommaOrClose, _) => return Err(at),
                (Expect::ItemOrClose | Expect::Item, _)
                    if self.stack.last().is_some_and(|frame| frame.object) =>
                {
                    self.read_key(rest, at_end).map_err(|()| at)?
                }
                _ => self.read_value(rest, at_end).map_err(|()| at)?,
            };
            match read {
                Some(used) => at += used,
                None => return Ok(at),
            }
        }
        Ok(at)
    }

    /// Reads `KEY:`: the bytes read, `None` to wait for more.
    fn read_key(&mut self, rest: &str, at_end: bool) -> Result<Option<usize>, ()> {
        let Some(colon) = rest.find([':', '}', '{', ',', '[', ']', '\n']) else {
            return match () {
                // Cut off inside a key: it is dropped.
                _ if at_end => Ok(Some(rest.len())),
                _ if rest.len() > MAX_NAME => Err(()),
                _ => Ok(None),
            };
        };
        if rest.as_bytes()[colon] != b':' {
            return Err(());
        }
        let key = rest[..colon].trim();
        let key = key
            .strip_prefix(QUOTE)
            .and_then(|k| k.strip_suffix(QUOTE))
            .or_else(|| key.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
            .unwrap_or(key);
        if key.is_empty() {
            return Err(());
        }
        let frame = self.stack.last_mut().expect("an open object");
        frame.key = Some(key.to_string());
        frame.expect = Expect::Value;
        Ok(Some(colon + 1))
    }

    /// Reads a value's start (a whole scalar): the bytes read, `None` to
    /// wait for more.
    fn read_value(&mut self, rest: &str, at_end: bool) -> Result<Option<usize>, ()> {
        if rest.starts_with(QUOTE) {
            self.begin_item(None, true);
            self.json.push('"');
            self.in_string = true;
            return Ok(Some(QUOTE.len()));
        }
        if rest.len() < QUOTE.len() && QUOTE.starts_with(rest) {
            // A quote's start; cut off there, the value is dropped.
            return Ok(at_end.then_some(rest.len()));
        }
        match rest.as_bytes()[0] {
            b'{' | b'[' => {
                let object = rest.starts_with('{');
                self.begin_item(None, false);
                self.json.push(if object { '{' } else { '[' });
                self.stack.push(Frame {
                    object,
                    expect: Expect::ItemOrClose,
                    has_items: false,
                    key: None,
                });
                return Ok(Some(1));
            }
            b'"' => {
                // A JSON string.
                let Some(end) = super::parser::string_end(rest) else {
                    // Cut off inside it: it is dropped.
                    return Ok(at_end.then_some(rest.len()));
                };
                let text: String = serde_json::from_str(&rest[..end]).map_err(|_| ())?;
                self.begin_item(None, true);
                self.json.push_str(&Value::String(text).to_string());
                self.value_done();
                return Ok(Some(end));
            }
            _ => {}
        }
        let end = match rest.find(|c: char| c.is_whitespace() || ",}]{[<:\"".contains(c)) {
            Some(end) => end,
            None if at_end => rest.len(),
            None if rest.len() > MAX_NAME => return Err(()),
            None => return Ok(None),
        };
        let word = &rest[..end];
        if word.is_empty() {
            return Err(());
        }
        let value = match serde_json::from_str::<Value>(word) {
            Ok(scalar @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => scalar,
            _ => Value::String(word.to_string()),
        };
        self.begin_item(Some(word), false);
        self.json.push_str(&value.to_string());
        self.value_done();
        Ok(Some(end))
    }

    /// Writes the comma and key an item needs; a top-level argument that
    /// may be retyped is held (`bare`: its text, for a bare scalar;
    /// `quoted`: a string).
    fn begin_item(&mut self, bare: Option<&str>, quoted: bool) {
        let depth = self.stack.len();
        let Some(frame) = self.stack.last_mut() else {
            return;
        };
        if std::mem::replace(&mut frame.has_items, true) {
            self.json.push(',');
        }
        let Some(key) = frame.key.take() else {
            return;
        };
        self.json.push_str(&Value::String(key.clone()).to_string());
        self.json.push(':');
        if depth != 1 || !(bare.is_some() || quoted) {
            return;
        }
        let types = self.types(&key);
        let string_only = types.as_slice() == ["string"];
        let hold = match bare {
            Some(_) => string_only,
            None => !types.is_empty() && !types.iter().any(|t| t == "string"),
        };
        if hold {
            self.held = Some(Held {
                from: self.json.len(),
                key,
                bare: bare.map(str::to_string),
            });
        }
    }

    /// The JSON types the schema allows for top-level argument `key`.
    fn types(&self, key: &str) -> Vec<String> {
        let mut types = Vec::new();
        if let Some(schema) = self.properties.get(key) {
            schema_types(schema, &mut types);
        }
        types
    }

    /// An item ended: types a held argument; the frame wants a comma next.
    fn value_done(&mut self) {
        if self.stack.len() == 1 {
            if let Some(held) = self.held.take() {
                let written: Value =
                    serde_json::from_str(&self.json[held.from..]).unwrap_or(Value::Null);
                let value = self.typed(&held, written);
                self.json.truncate(held.from);
                self.json.push_str(&value.to_string());
            }
        }
        match self.stack.last_mut() {
            Some(frame) => frame.expect = Expect::CommaOrClose,
            None => self.done = true,
        }
    }

    /// A held argument's value by its schema (see the module docs).
    fn typed(&self, held: &Held, written: Value) -> Value {
        let types = self.types(&held.key);
        if types.as_slice() == ["string"] {
            return match &held.bare {
                Some(text) => Value::String(text.clone()),
                None => written,
            };
        }
        let has = |t: &str| types.iter().any(|have| have == t);
        match (&held.bare, &written) {
            (None, Value::String(text)) => match serde_json::from_str::<Value>(text.trim()) {
                Ok(value) if json_type_fits(&value, &has) => value,
                _ => written,
            },
            _ => written,
        }
    }

    /// Closes what is open (the text was cut off or broke off): a string
    /// ends, a key without its value is dropped.
    fn close_all(&mut self) {
        if self.in_string {
            self.json.push('"');
            self.in_string = false;
            self.value_done();
        }
        // Scalars are read whole: nothing is held now.
        while let Some(frame) = self.stack.pop() {
            self.json.push(if frame.object { '}' } else { ']' });
        }
        self.done = true;
    }
}

/// `text` as the inside of a JSON string.
fn escaped(text: &str) -> String {
    let quoted = Value::String(text.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::parser::tests::{
        call, calls_of, check_all_splits_with, collect_with, expected_events, merge_text,
    };
    use super::super::{ToolCallFormat, ToolCallParser};
    use super::*;

    fn tools() -> Vec<ToolDefinition> {
        let tool = |name: &str, schema: Value| ToolDefinition {
            name: name.into(),
            description: None,
            input_schema: schema,
        };
        vec![
            tool(
                "get_weather",
                json!({"type": "object", "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                }, "required": ["city"]}),
            ),
            tool(
                "typed",
                json!({"type": "object", "properties": {
                    "n": {"type": "integer"},
                    "x": {"type": "number"},
                    "ok": {"type": "boolean"},
                    "either": {"type": ["integer", "string"]},
                    "maybe": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                    "text": {"type": "string"},
                    "zip": {"type": "string"},
                }}),
            ),
            tool(
                "write",
                json!({"type": "object", "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                }}),
            ),
        ]
    }

    fn new_parser() -> ToolCallParser {
        ToolCallFormat::Gemma4.parser_for(&tools())
    }

    fn parse(output: &str) -> Vec<ParsedEvent> {
        collect_with(&new_parser, &[output])
    }

    #[test]
    fn gemma4_call_as_the_template_writes_it() {
        let output = "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>,days:2,\
                      extra:{b:-1.5,List:[1,true,null,<|\"|>a<|\"|>]}}<tool_call|>";
        // Keys as the template sorts them, whatever the input's order.
        let unsorted =
            json!({"extra": {"List": [1, true, null, "a"], "b": -1.5}, "days": 2, "city": "Paris"});
        assert_eq!(
            ToolCallFormat::Gemma4.render_tool_calls(&[call("get_weather", unsorted)]),
            output
        );
        // Parsed in the order written.
        let input =
            json!({"city": "Paris", "days": 2, "extra": {"b": -1.5, "List": [1, true, null, "a"]}});
        assert_eq!(
            parse(output),
            expected_events(None, &[call("get_weather", input)])
        );
    }

    #[test]
    fn gemma4_text_then_two_calls_at_every_split() {
        let calls = [
            call(
                "get_weather",
                json!({"city": "São Paulo, \"SP\"", "days": 3, "unit": "celsius"}),
            ),
            call(
                "write",
                json!({"content": "fn main() {}\n<tool_call|> {x:1}", "path": "a.rs"}),
            ),
        ];
        let output = format!(
            "Let me check. ✓\n\n{}",
            ToolCallFormat::Gemma4.render_tool_calls(&calls)
        );
        let expected = expected_events(Some("Let me check. ✓\n\n"), &calls);
        check_all_splits_with(&new_parser, CALL_START, &output, &expected);
    }

    #[test]
    fn gemma4_values_are_typed_by_the_schema() {
        let output = "<|tool_call>call:typed{either:<|\"|>abc<|\"|>,maybe:null,\
            n:<|\"|>42<|\"|>,ok:<|\"|>true<|\"|>,text:007,x:<|\"|>-1.5e3<|\"|>,zip:02134,\
            free:<|\"|>7<|\"|>,word:celsius,\"quoted\": \"a,b\" , <|\"|>k<|\"|>:1}<tool_call|>";
        let input = json!({
            "either": "abc", "maybe": null, "n": 42, "ok": true, "text": "007",
            "x": -1500.0, "zip": "02134", "free": "7", "word": "celsius", "quoted": "a,b", "k": 1,
        });
        let expected = expected_events(None, &[call("typed", input)]);
        check_all_splits_with(&new_parser, CALL_START, output, &expected);
        // A value that is not of its type stays as written.
        let output = "<|tool_call>call:typed{n:<|\"|>many<|\"|>,ok:yes,text:1.50}<tool_call|>";
        assert_eq!(
            calls_of(&parse(output)),
            [call(
                "typed",
                json!({"n": "many", "ok": "yes", "text": "1.50"})
            )]
        );
        // Without the tools: values as written.
        let output = "<|tool_call>call:f{a:5,b:<|\"|>5<|\"|>}<tool_call|>";
        let events = collect_with(&|| ToolCallFormat::Gemma4.parser(), &[output]);
        assert_eq!(calls_of(&events), [call("f", json!({"a": 5, "b": "5"}))]);
    }

    #[test]
    fn gemma4_string_values_stream() {
        let mut parser = new_parser();
        assert_eq!(
            parser.push("Sure.<|tool_call>call:wri"),
            vec![ParsedEvent::Text("Sure.".into())]
        );
        assert_eq!(
            parser.push("te{content:<|\"|>line \"1\"\n<|\""),
            vec![
                ParsedEvent::ToolCallStart {
                    name: "write".into()
                },
                ParsedEvent::ToolCallInput("{\"content\":\"line \\\"1\\\"\\n".into()),
            ]
        );
        assert_eq!(
            parser.push("|>,path:<|\"|>a"),
            vec![ParsedEvent::ToolCallInput("\",\"path\":\"a".into())]
        );
        assert_eq!(
            parser.push("<|\"|>}"),
            vec![ParsedEvent::ToolCallInput("\"}".into())]
        );
        assert_eq!(
            parser.push("<tool_call|>"),
            vec![ParsedEvent::ToolCallEnd(call(
                "write",
                json!({"content": "line \"1\"\n", "path": "a"})
            ))]
        );
        assert_eq!(parser.finish(), vec![]);
    }

    /// Output cut off anywhere (at `max_tokens`) still parses: a call whose
    /// `call:NAME{` was read ends with what it has, its fragments
    /// concatenating to its input.
    #[test]
    fn gemma4_call_cut_off_anywhere_is_closed() {
        let calls = [call(
            "get_weather",
            json!({"city": "Paris", "days": 12, "unit": "celsius", "more": [{"a": [1]}]}),
        )];
        let output = format!(
            "Checking.\n{}",
            ToolCallFormat::Gemma4.render_tool_calls(&calls)
        );
        let opened = output.find("call:get_weather{").unwrap() + "call:get_weather{".len();
        for cut in (0..=output.len()).filter(|&i| output.is_char_boundary(i)) {
            let prefix = &output[..cut];
            let events = parse(prefix);
            let got = calls_of(&events);
            if cut < opened {
                assert!(got.is_empty(), "{prefix:?}: {events:?}");
                let text: String = events
                    .iter()
                    .map(|e| match e {
                        ParsedEvent::Text(t) => t.as_str(),
                        _ => panic!("{prefix:?}: {events:?}"),
                    })
                    .collect();
                assert_eq!(text, prefix);
                continue;
            }
            assert_eq!(got.len(), 1, "{prefix:?}: {events:?}");
            assert_eq!(got[0].name, "get_weather");
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, ParsedEvent::Text(t) if t != "Checking.\n")),
                "{prefix:?}: {events:?}"
            );
        }
        for (prefix, input) in [
            ("{", json!({})),
            ("{city:<|\"|>Par", json!({"city": "Par"})),
            ("{city:<|\"|>Paris<|\"", json!({"city": "Paris"})),
            ("{city:<|\"|>Paris<|\"|>,da", json!({"city": "Paris"})),
            (
                "{city:<|\"|>Paris<|\"|>,days:1",
                json!({"city": "Paris", "days": 1}),
            ),
            ("{more:[{a:[1,", json!({"more": [{"a": [1]}]})),
            ("{more:[{a:", json!({"more": [{}]})),
            ("{days:1}<tool_ca", json!({"days": 1})),
        ] {
            let events = parse(&format!("<|tool_call>call:get_weather{prefix}"));
            assert_eq!(
                events,
                expected_events(None, &[call("get_weather", input)]),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn gemma4_malformed_calls_are_text() {
        for output in [
            "<|tool_call>{\"name\": \"write\", \"arguments\": {}}<tool_call|>",
            "a <|tool_ b <|tool_call x",
            "<|tool_call>call:wri te{}<tool_call|>",
            "<|tool_call>call:{}<tool_call|>",
            "<|tool_call>call:",
        ] {
            let expected = vec![ParsedEvent::Text(output.into())];
            check_all_splits_with(&new_parser, CALL_START, output, &expected);
        }
        // Text goes on after a malformed call, and a real call after it parses.
        let output = "<|tool_call>oops<tool_call|> then <|tool_call>call:write{}<tool_call|>";
        let mut expected = vec![ParsedEvent::Text(
            "<|tool_call>oops<tool_call|> then ".into(),
        )];
        expected.extend(expected_events(None, &[call("write", json!({}))]));
        check_all_splits_with(&new_parser, CALL_START, output, &expected);
        assert_eq!(merge_text(expected.clone()), expected);
    }

    /// Arguments that break off end the call with what was read; the rest
    /// of that call is text, and output after it parses as usual.
    #[test]
    fn gemma4_broken_arguments_end_the_call() {
        let output = "<|tool_call>call:write{path:<|\"|>a<|\"|> content:x}<tool_call|>Done.";
        let mut expected = expected_events(None, &[call("write", json!({"path": "a"}))]);
        expected.push(ParsedEvent::Text("content:x}<tool_call|>Done.".into()));
        check_all_splits_with(&new_parser, CALL_START, output, &expected);
        // Only the closing brace missing: the call ends at its marker.
        let output = "<|tool_call>call:write{path:<|\"|>a<|\"|><tool_call|>\nOK";
        let mut expected = expected_events(None, &[call("write", json!({"path": "a"}))]);
        expected.push(ParsedEvent::Text("OK".into()));
        check_all_splits_with(&new_parser, CALL_START, output, &expected);
        // Brackets that do not match, a key without a colon, a value missing.
        for (output, input) in [
            ("<|tool_call>call:f{a:[1}<tool_call|>", json!({"a": [1]})),
            ("<|tool_call>call:f{a}<tool_call|>", json!({})),
            ("<|tool_call>call:f{a:,b:1}<tool_call|>", json!({})),
            ("<|tool_call>call:f{a:1,,b:2}<tool_call|>", json!({"a": 1})),
        ] {
            let events = parse(output);
            assert_eq!(calls_of(&events), [call("f", input)], "{output:?}");
            assert!(
                matches!(events.last(), Some(ParsedEvent::Text(t)) if t.ends_with(CALL_END)),
                "{output:?}: {events:?}"
            );
        }
        // No `<tool_call|>` after the arguments: the call ends, text follows.
        let output = "<|tool_call>call:write{}\nDone.";
        let mut expected = expected_events(None, &[call("write", json!({}))]);
        expected.push(ParsedEvent::Text("Done.".into()));
        assert_eq!(parse(output), expected);
    }
}
