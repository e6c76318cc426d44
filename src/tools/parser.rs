//! A streaming parser of model output into text and tool calls, for one
//! [`ToolCallFormat`]. Text may arrive split at any point: a possible partial
//! call marker is held back until the next piece says whether it is one, so
//! no part of a marker is ever emitted as text.
//!
//! A call is `START body END` where the body is the JSON
//! `{"name": ..., "arguments": {...}}` (`"parameters"` is accepted for
//! `"arguments"`, and arguments written as a JSON string are decoded).
//!
//! In the usual shape (name first, then an arguments object, as the tool
//! grammar writes it) the call streams: `ToolCallStart` as soon as
//! `"arguments": {` is read, then `ToolCallInput` fragments of the arguments
//! JSON as they are generated, then `ToolCallEnd` at the end marker. A call
//! cut off inside its arguments (at `max_tokens`) is closed: the parser adds
//! the quotes and brackets the JSON needs, as a last fragment, so the
//! fragments always concatenate to the reported input. A character that
//! cannot continue the JSON (an end marker where a value should be) ends the
//! call the same way, and what follows is read as output again.
//!
//! Any other shape is reported whole when its end marker arrives. An end
//! marker whose body is not such JSON is taken to lie inside the JSON (a
//! string holding the marker) and parsing goes on; a call that never gets a
//! well-formed body by [`ToolCallParser::finish`] is emitted as text,
//! markers included. A call cut off before its end marker still counts when
//! its body parses. Whitespace between calls, and after the last one, is
//! dropped.
//!
//! Hermes output may also hold a call without its markers: a turn that
//! starts (or goes on after a call) with `{"name"`, perhaps inside a
//! ```` ```json ```` fence, is a call whose JSON object ends it (and the
//! fence's close is dropped), as llama.cpp's and Ollama's Hermes parsers read
//! it. Small Qwen models often write their calls that way, and a server that
//! took them for text would make the model look unable to call tools.

use serde_json::Value;

use super::gemma4::Gemma4CallParser;
use super::xml::XmlCallParser;
use super::{ToolCall, ToolCallFormat, ToolDefinition};

/// What the parser recognised in model output, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedEvent {
    /// Plain text.
    Text(String),
    /// A call to `name` begins.
    ToolCallStart {
        /// The tool called.
        name: String,
    },
    /// A fragment of the call's input JSON (concatenated, the fragments of a
    /// call make its input).
    ToolCallInput(String),
    /// The call is complete.
    ToolCallEnd(ToolCall),
}

/// Streaming parser; see the module docs (and `xml.rs`'s for `qwen35`,
/// `gemma4.rs`'s for `gemma4`).
/// Built by [`ToolCallFormat::parser`] or [`ToolCallFormat::parser_for`].
pub struct ToolCallParser(Inner);

enum Inner {
    Json(JsonCallParser),
    Xml(XmlCallParser),
    Gemma4(Gemma4CallParser),
}

impl ToolCallParser {
    pub(crate) fn new(format: ToolCallFormat, tools: &[ToolDefinition]) -> Self {
        Self(match format {
            ToolCallFormat::Qwen35 => Inner::Xml(XmlCallParser::new(tools)),
            ToolCallFormat::Gemma4 => Inner::Gemma4(Gemma4CallParser::new(tools)),
            _ => Inner::Json(JsonCallParser::new(format)),
        })
    }

    /// Feeds the next piece of output; returns what it completes.
    pub fn push(&mut self, text: &str) -> Vec<ParsedEvent> {
        match &mut self.0 {
            Inner::Json(parser) => parser.push(text),
            Inner::Xml(parser) => parser.push(text),
            Inner::Gemma4(parser) => parser.push(text),
        }
    }

    /// Ends the output: flushes held-back text and any unterminated call.
    pub fn finish(self) -> Vec<ParsedEvent> {
        match self.0 {
            Inner::Json(parser) => parser.finish(),
            Inner::Xml(parser) => parser.finish(),
            Inner::Gemma4(parser) => parser.finish(),
        }
    }
}

/// The parser of the JSON formats (`hermes`, `gemma`).
struct JsonCallParser {
    start: &'static str,
    end: &'static str,
    /// Text not yet emitted (outside a call) or the call body so far.
    buf: String,
    in_call: bool,
    /// Inside a call: how far it has been read.
    call: CallState,
    /// Inside a call: how much of `buf` has been searched for the end marker.
    searched: usize,
    /// Just after a call: leading whitespace is dropped.
    after_call: bool,
    /// Whether a bare `{"name"` may open a call here (at the start of the
    /// output or after a call, for formats that allow it).
    bare_may_open: bool,
    /// The format allows bare calls.
    bare_allowed: bool,
    /// The call being read is bare: its closing `}` ends it.
    bare: bool,
    /// A bare call opened a fence: its closing ```` ``` ```` is dropped.
    fence_open: bool,
}

/// Fences a bare call may sit in, longest first.
const BARE_FENCES: [&str; 2] = ["```json", "```"];

/// What a bare call opens with, whitespace aside.
const BARE_OPENING: [&str; 2] = ["{", "\"name\""];

impl JsonCallParser {
    fn new(format: ToolCallFormat) -> Self {
        Self {
            start: format.call_start(),
            end: format.call_end(),
            buf: String::new(),
            in_call: false,
            call: CallState::Header,
            searched: 0,
            after_call: false,
            bare_may_open: format == ToolCallFormat::Hermes,
            bare_allowed: format == ToolCallFormat::Hermes,
            bare: false,
            fence_open: false,
        }
    }

    /// Whether `buf` opens a bare call (`Some(the bytes before its {, and
    /// whether a fence opened)`), cannot (`Some(None)`) or cannot tell yet
    /// (`None`).
    fn opens_bare_call(&self) -> Option<Option<(usize, bool)>> {
        let mut rest = self.buf.trim_start();
        let mut fenced = false;
        if rest.starts_with('`') {
            let [json, plain] = BARE_FENCES;
            if let Some(after) = rest.strip_prefix(json) {
                rest = after;
            } else if json.starts_with(rest) {
                return None;
            } else if let Some(after) = rest.strip_prefix(plain) {
                rest = after;
            } else {
                return Some(None);
            }
            fenced = true;
        }
        let mut at = self.buf.len() - rest.len();
        for (i, expected) in BARE_OPENING.iter().enumerate() {
            rest = rest.trim_start();
            if i == 0 {
                at = self.buf.len() - rest.len();
            }
            if let Some(after) = rest.strip_prefix(expected) {
                rest = after;
            } else if expected.starts_with(rest) {
                return None;
            } else {
                return Some(None);
            }
        }
        Some(Some((at, fenced)))
    }

    fn start_call(&mut self, bare: bool) {
        self.in_call = true;
        self.bare = bare;
        self.call = CallState::Header;
        self.searched = 0;
        self.after_call = false;
        self.bare_may_open = false;
    }

    /// What ends the call being read.
    fn call_end(&self) -> &'static str {
        if self.bare {
            "}"
        } else {
            self.end
        }
    }

    fn push(&mut self, text: &str) -> Vec<ParsedEvent> {
        self.buf.push_str(text);
        let mut events = Vec::new();
        loop {
            if self.in_call {
                if !self.scan_call(&mut events) {
                    break;
                }
            } else {
                if self.after_call {
                    let trimmed = self.buf.trim_start().len();
                    self.buf.drain(..self.buf.len() - trimmed);
                    if self.fence_open {
                        if self.buf.len() < 3 && "```".starts_with(self.buf.as_str()) {
                            break;
                        }
                        self.fence_open = false;
                        if self.buf.starts_with("```") {
                            self.buf.drain(..3);
                            continue;
                        }
                    }
                    if self.buf.is_empty() {
                        break;
                    }
                }
                if self.bare_may_open {
                    match self.opens_bare_call() {
                        None => break,
                        Some(Some((at, fenced))) => {
                            self.buf.drain(..at);
                            self.start_call(true);
                            self.fence_open = fenced;
                            continue;
                        }
                        Some(None) => self.bare_may_open = false,
                    }
                }
                if let Some(at) = self.buf.find(self.start) {
                    push_text(&mut events, &self.buf[..at]);
                    self.buf.drain(..at + self.start.len());
                    self.start_call(false);
                    continue;
                }
                let keep = partial_suffix(&self.buf, self.start);
                let emit = self.buf.len() - keep;
                if emit > 0 {
                    self.after_call = false;
                    push_text(&mut events, &self.buf[..emit]);
                    self.buf.drain(..emit);
                }
                break;
            }
        }
        events
    }

    fn finish(mut self) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        if self.in_call {
            match std::mem::replace(&mut self.call, CallState::Header) {
                CallState::Header | CallState::Whole => match parse_call(&self.buf) {
                    Some(call) => push_call(&mut events, call),
                    None if self.bare => push_text(&mut events, &self.buf),
                    None => push_text(&mut events, &format!("{}{}", self.start, self.buf)),
                },
                CallState::Arguments { name, scan } => {
                    let input = scan.close(&self.buf[..scan.read], &mut events);
                    events.push(ParsedEvent::ToolCallEnd(ToolCall { name, input }));
                }
                CallState::Tail { name, input } => {
                    events.push(ParsedEvent::ToolCallEnd(ToolCall { name, input }));
                }
            }
        } else if !(self.after_call
            && (self.buf.trim().is_empty()
                || (self.fence_open && "```".starts_with(self.buf.trim()))))
        {
            push_text(&mut events, &self.buf);
        }
        events
    }

    /// Reads the call body so far; returns whether the state moved on (and
    /// the caller should look again).
    fn scan_call(&mut self, events: &mut Vec<ParsedEvent>) -> bool {
        match std::mem::replace(&mut self.call, CallState::Whole) {
            CallState::Header => match read_header(&self.buf) {
                Header::Incomplete => {
                    self.call = CallState::Header;
                    false
                }
                Header::Other => true,
                Header::Complete { name, arguments_at } => {
                    events.push(ParsedEvent::ToolCallStart { name: name.clone() });
                    self.buf.drain(..arguments_at);
                    self.call = CallState::Arguments {
                        name,
                        scan: ArgumentsScan::default(),
                    };
                    true
                }
            },
            CallState::Arguments { name, mut scan } => match scan.advance(&self.buf, events) {
                Scanned::More => {
                    self.call = CallState::Arguments { name, scan };
                    false
                }
                Scanned::Complete(end) => {
                    let input = serde_json::from_str(&self.buf[..end])
                        .unwrap_or_else(|_| Value::Object(Default::default()));
                    self.buf.drain(..end);
                    self.call = CallState::Tail { name, input };
                    true
                }
                Scanned::Broken(at) => {
                    let end = self.call_end();
                    let rest = self.buf[at..].trim_start();
                    if rest.len() < end.len() && end.starts_with(rest) {
                        // Perhaps the end marker: wait for the rest of it.
                        self.call = CallState::Arguments { name, scan };
                        return false;
                    }
                    let input = scan.close(&self.buf[..at], events);
                    events.push(ParsedEvent::ToolCallEnd(ToolCall { name, input }));
                    self.buf.drain(..at);
                    let rest = self.buf.trim_start();
                    if let Some(after) = rest.strip_prefix(end) {
                        self.buf = after.to_string();
                    }
                    self.end_call();
                    true
                }
            },
            CallState::Tail { name, input } => match self.buf.find(self.call_end()) {
                Some(at) => {
                    events.push(ParsedEvent::ToolCallEnd(ToolCall { name, input }));
                    self.buf.drain(..at + self.call_end().len());
                    self.end_call();
                    true
                }
                None => {
                    self.call = CallState::Tail { name, input };
                    false
                }
            },
            CallState::Whole => {
                let end = self.call_end();
                // A bare call's body is the object, its closing brace included.
                let body_end = |at: usize| if self.bare { at + 1 } else { at };
                while let Some(offset) = self.buf[self.searched..].find(end) {
                    let at = self.searched + offset;
                    if let Some(call) = parse_call(&self.buf[..body_end(at)]) {
                        push_call(events, call);
                        self.buf.drain(..at + end.len());
                        self.end_call();
                        return true;
                    }
                    self.searched = at + end.len();
                }
                // The next search starts where a partial end marker might begin.
                self.searched = self.buf.len() - partial_suffix(&self.buf, end);
                false
            }
        }
    }

    fn end_call(&mut self) {
        self.in_call = false;
        self.bare = false;
        self.call = CallState::Header;
        self.after_call = true;
        self.bare_may_open = self.bare_allowed;
    }
}

/// How far a call has been read.
enum CallState {
    /// Before `"arguments": {`; nothing reported yet.
    Header,
    /// Streaming the arguments object; `buf` starts at its `{`.
    Arguments { name: String, scan: ArgumentsScan },
    /// Arguments complete; waiting for the end marker.
    Tail { name: String, input: Value },
    /// Not the usual shape: reported whole at the end marker.
    Whole,
}

enum Header {
    /// Could still become the usual header.
    Incomplete,
    /// Some other shape.
    Other,
    /// `{"name": NAME, "arguments": ` read; the arguments object starts at
    /// byte `arguments_at`.
    Complete { name: String, arguments_at: usize },
}

/// Reads `{"name": "...", "arguments": {` (any whitespace) from the start of
/// a call body.
fn read_header(body: &str) -> Header {
    /// Reads `expected` after whitespace: `Some(true)` read, `Some(false)`
    /// not there yet, `None` something else.
    fn literal(rest: &mut &str, expected: &str) -> Option<bool> {
        *rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(expected) {
            *rest = after;
            Some(true)
        } else if expected.starts_with(*rest) {
            Some(false)
        } else {
            None
        }
    }
    let mut rest = body;
    for expected in ["{", "\"name\"", ":"] {
        match literal(&mut rest, expected) {
            Some(true) => {}
            Some(false) => return Header::Incomplete,
            None => return Header::Other,
        }
    }
    rest = rest.trim_start();
    if rest.is_empty() {
        return Header::Incomplete;
    }
    if !rest.starts_with('"') {
        return Header::Other;
    }
    let Some(name_len) = string_end(rest) else {
        return Header::Incomplete;
    };
    let Ok(name) = serde_json::from_str::<String>(&rest[..name_len]) else {
        return Header::Other;
    };
    rest = &rest[name_len..];
    for expected in [",", "\"arguments\"", ":", "{"] {
        match literal(&mut rest, expected) {
            Some(true) => {}
            Some(false) => return Header::Incomplete,
            None => return Header::Other,
        }
    }
    Header::Complete {
        name,
        arguments_at: body.len() - rest.len() - 1,
    }
}

/// The length of the JSON string at the start of `text` (which starts with
/// `"`), quotes included, or `None` if it has not ended yet.
pub(super) fn string_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Where a JSON object being generated stands: open brackets, and whether
/// it is inside a string.
#[derive(Default)]
struct ArgumentsScan {
    /// Bytes read so far (and sent as fragments).
    read: usize,
    /// Open `{` and `[`, innermost last.
    open: Vec<char>,
    in_string: bool,
    escaped: bool,
}

enum Scanned {
    /// The object goes on.
    More,
    /// The object closed; it is the first this many bytes.
    Complete(usize),
    /// The byte at this offset cannot continue the JSON.
    Broken(usize),
}

impl ArgumentsScan {
    /// Reads `text` (the object so far, from its `{`) past what was read
    /// before, sending what is new as a fragment.
    fn advance(&mut self, text: &str, events: &mut Vec<ParsedEvent>) -> Scanned {
        let start = self.read;
        let mut outcome = Scanned::More;
        for (i, c) in text[start..].char_indices() {
            let at = start + i;
            if self.in_string {
                match c {
                    _ if self.escaped => self.escaped = false,
                    '\\' => self.escaped = true,
                    '"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' => self.open.push('}'),
                '[' => self.open.push(']'),
                '}' | ']' => {
                    if self.open.pop() != Some(c) {
                        outcome = Scanned::Broken(at);
                        break;
                    }
                    if self.open.is_empty() {
                        outcome = Scanned::Complete(at + 1);
                        break;
                    }
                }
                ',' | ':' | '-' | '+' | '.' => {}
                c if c.is_ascii_alphanumeric() || c.is_ascii_whitespace() => {}
                _ => {
                    outcome = Scanned::Broken(at);
                    break;
                }
            }
        }
        let end = match outcome {
            Scanned::More => text.len(),
            Scanned::Complete(end) | Scanned::Broken(end) => end,
        };
        if end > start {
            events.push(ParsedEvent::ToolCallInput(text[start..end].to_string()));
        }
        self.read = end;
        outcome
    }

    /// Closes an object cut off after `text`: sends the closing text as a
    /// last fragment and returns the parsed input. If no closing makes it
    /// parse (cut inside a number or a literal), the input is empty.
    fn close(&self, text: &str, events: &mut Vec<ParsedEvent>) -> Value {
        let quote = match (self.in_string, self.escaped) {
            (true, true) => "\\\"",
            (true, false) => "\"",
            _ => "",
        };
        let brackets: String = self.open.iter().rev().collect();
        let candidates = [
            format!("{quote}{brackets}"),
            format!("{quote}: null{brackets}"),
            format!("null{brackets}"),
            format!("\"\": null{brackets}"),
        ];
        let text = text.trim_end();
        for suffix in candidates {
            if let Ok(input @ Value::Object(_)) = serde_json::from_str(&format!("{text}{suffix}")) {
                if !suffix.is_empty() {
                    events.push(ParsedEvent::ToolCallInput(suffix));
                }
                return input;
            }
        }
        Value::Object(Default::default())
    }
}

pub(super) fn push_text(events: &mut Vec<ParsedEvent>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(ParsedEvent::Text(last)) = events.last_mut() {
        last.push_str(text);
    } else {
        events.push(ParsedEvent::Text(text.to_string()));
    }
}

fn push_call(events: &mut Vec<ParsedEvent>, call: ToolCall) {
    events.push(ParsedEvent::ToolCallStart {
        name: call.name.clone(),
    });
    events.push(ParsedEvent::ToolCallInput(call.input.to_string()));
    events.push(ParsedEvent::ToolCallEnd(call));
}

/// The length of the longest end of `text` that is a proper prefix of
/// `marker` (markers are ASCII, so cutting there keeps UTF-8 whole).
pub(super) fn partial_suffix(text: &str, marker: &str) -> usize {
    let bytes = text.as_bytes();
    (1..marker.len().min(bytes.len() + 1))
        .rev()
        .find(|&k| bytes.ends_with(&marker.as_bytes()[..k]))
        .unwrap_or(0)
}

/// A call body: `{"name": "...", "arguments": {...}}`.
fn parse_call(body: &str) -> Option<ToolCall> {
    let Value::Object(mut fields) = serde_json::from_str(body.trim()).ok()? else {
        return None;
    };
    let Some(Value::String(name)) = fields.remove("name") else {
        return None;
    };
    let input = match fields
        .remove("arguments")
        .or_else(|| fields.remove("parameters"))
    {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::String(text)) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        Some(input) => input,
    };
    Some(ToolCall { name, input })
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;

    fn collect(format: ToolCallFormat, pieces: &[&str]) -> Vec<ParsedEvent> {
        collect_with(&|| format.parser(), pieces)
    }

    /// The events of `pieces` through a new parser, merged (see [`merge_text`]).
    /// The calls among `events`, in order.
    pub(in crate::tools) fn calls_of(events: &[ParsedEvent]) -> Vec<ToolCall> {
        events
            .iter()
            .filter_map(|e| match e {
                ParsedEvent::ToolCallEnd(call) => Some(call.clone()),
                _ => None,
            })
            .collect()
    }

    pub(in crate::tools) fn collect_with(
        new_parser: &dyn Fn() -> ToolCallParser,
        pieces: &[&str],
    ) -> Vec<ParsedEvent> {
        let mut parser = new_parser();
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(parser.push(piece));
        }
        events.extend(parser.finish());
        merge_text(events)
    }

    /// Joins adjacent text, and each call's input fragments into one (as
    /// compact JSON, after checking they concatenate to the call's input).
    pub(in crate::tools) fn merge_text(events: Vec<ParsedEvent>) -> Vec<ParsedEvent> {
        let mut merged = Vec::new();
        let mut fragments = String::new();
        for event in events {
            match event {
                ParsedEvent::Text(text) => push_text(&mut merged, &text),
                ParsedEvent::ToolCallInput(fragment) => fragments.push_str(&fragment),
                ParsedEvent::ToolCallEnd(call) => {
                    let streamed: Value = serde_json::from_str(&fragments)
                        .unwrap_or_else(|e| panic!("fragments {fragments:?}: {e}"));
                    assert_eq!(streamed, call.input, "fragments {fragments:?}");
                    merged.push(ParsedEvent::ToolCallInput(streamed.to_string()));
                    fragments.clear();
                    merged.push(ParsedEvent::ToolCallEnd(call));
                }
                other => merged.push(other),
            }
        }
        merged
    }

    pub(in crate::tools) fn call(name: &str, input: Value) -> ToolCall {
        ToolCall {
            name: name.into(),
            input,
        }
    }

    pub(in crate::tools) fn expected_events(
        text: Option<&str>,
        calls: &[ToolCall],
    ) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        if let Some(text) = text {
            events.push(ParsedEvent::Text(text.into()));
        }
        for c in calls {
            push_call(&mut events, c.clone());
        }
        events
    }

    /// Every split of the output into two and three pieces parses the same
    /// as the whole, and no text event ever holds part of a marker.
    fn check_all_splits(format: ToolCallFormat, output: &str, expected: &[ParsedEvent]) {
        check_all_splits_with(&|| format.parser(), format.call_start(), output, expected);
    }

    /// [`check_all_splits`] with parsers from `new_parser`, whose call
    /// marker is `start`.
    pub(in crate::tools) fn check_all_splits_with(
        new_parser: &dyn Fn() -> ToolCallParser,
        start: &str,
        output: &str,
        expected: &[ParsedEvent],
    ) {
        let bounds: Vec<usize> = (0..=output.len())
            .filter(|&i| output.is_char_boundary(i))
            .collect();
        for &i in &bounds {
            let got = collect_with(new_parser, &[&output[..i], &output[i..]]);
            assert_eq!(got, expected, "split at {i} of {output:?}");
        }
        for &i in bounds.iter().step_by(3) {
            for &j in bounds.iter().filter(|&&j| j >= i) {
                let got = collect_with(new_parser, &[&output[..i], &output[i..j], &output[j..]]);
                assert_eq!(got, expected, "split at {i}, {j} of {output:?}");
            }
        }
        let chars: Vec<String> = output.chars().map(String::from).collect();
        let mut parser = new_parser();
        for c in &chars {
            for event in parser.push(c) {
                if let ParsedEvent::Text(text) = event {
                    assert!(
                        !start.starts_with(&text) || text.is_empty(),
                        "emitted a marker prefix {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn hermes_text_then_parallel_calls_at_every_split() {
        let calls = [
            call("read_file", json!({"path": "src/main.rs"})),
            call(
                "bash",
                json!({"command": "ls -l </tool_call> é", "timeout": 5}),
            ),
        ];
        let output = format!(
            "Let me look. ✓\n{}",
            ToolCallFormat::Hermes.render_tool_calls(&calls)
        );
        let expected = expected_events(Some("Let me look. ✓\n"), &calls);
        check_all_splits(ToolCallFormat::Hermes, &output, &expected);
    }

    #[test]
    fn gemma_calls_at_every_split() {
        let calls = [call("get_weather", json!({"city": "Paris", "days": 3}))];
        let output = format!(
            "Sure.\n{}\n",
            ToolCallFormat::Gemma.render_tool_calls(&calls)
        );
        let expected = expected_events(Some("Sure.\n"), &calls);
        check_all_splits(ToolCallFormat::Gemma, &output, &expected);
    }

    /// Calls without markers, as small Qwen models write them: one, then a
    /// second after it, at every split; JSON that is not a call, or that
    /// follows text, stays text.
    #[test]
    fn bare_hermes_calls_at_every_split() {
        let calls = [
            call("get_weather", json!({"city": "Paris", "unit": "celsius"})),
            call("get_time", json!({"zone": "a}b"})),
        ];
        let output = r#"{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"name": "get_time", "arguments": {"zone": "a}b"}}"#;
        check_all_splits(
            ToolCallFormat::Hermes,
            output,
            &expected_events(None, &calls),
        );
        let fenced = output.replace('\n', "\n```\n```json\n");
        check_all_splits(
            ToolCallFormat::Hermes,
            &format!("```json\n{fenced}\n```\n"),
            &expected_events(None, &calls),
        );
        let (first, second) = output.split_once('\n').unwrap();
        let mixed = format!(" {first}\n<tool_call>\n{second}\n</tool_call>");
        check_all_splits(
            ToolCallFormat::Hermes,
            &mixed,
            &expected_events(None, &calls),
        );
        for text in [
            r#"{"title": "not a call"}"#,
            "```json\n{\"title\": 1}\n```",
            "```rust\nfn main() {}\n```",
            r#"Here: {"name": "get_weather", "arguments": {}}"#,
        ] {
            assert_eq!(
                merge_text(collect(ToolCallFormat::Hermes, &[text])),
                vec![ParsedEvent::Text(text.into())]
            );
        }
        // Gemma's format has no bare calls.
        let text = r#"{"name": "get_weather", "arguments": {}}"#;
        assert_eq!(
            merge_text(collect(ToolCallFormat::Gemma, &[text])),
            vec![ParsedEvent::Text(text.into())]
        );
    }

    #[test]
    fn text_that_only_resembles_a_marker_is_text() {
        let output = "a <tool_ b <tool_call x";
        let got = collect(ToolCallFormat::Hermes, &[output]);
        // An opened call with no JSON body comes back as text, marker included.
        assert_eq!(got, vec![ParsedEvent::Text(output.into())]);
        let mut parser = ToolCallFormat::Hermes.parser();
        assert_eq!(
            parser.push("a <tool_"),
            vec![ParsedEvent::Text("a ".into())]
        );
        assert_eq!(parser.push("x"), vec![ParsedEvent::Text("<tool_x".into())]);
    }

    #[test]
    fn malformed_call_is_emitted_as_text() {
        let output = "<tool_call>\n{\"name\": \"bash\", \"args\": {\n</tool_call>\ndone";
        let got = collect(ToolCallFormat::Hermes, &[output]);
        assert_eq!(got, vec![ParsedEvent::Text(output.into())]);
    }

    #[test]
    fn arguments_broken_off_by_the_end_marker_are_closed_there() {
        let output =
            "<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"cmd\": [1, \n</tool_call>\ndone";
        let expected = vec![
            ParsedEvent::ToolCallStart {
                name: "bash".into(),
            },
            // The comma was already sent: the array is closed with a null.
            ParsedEvent::ToolCallInput(r#"{"cmd":[1,null]}"#.into()),
            ParsedEvent::ToolCallEnd(call("bash", json!({"cmd": [1, null]}))),
            ParsedEvent::Text("done".into()),
        ];
        check_all_splits(ToolCallFormat::Hermes, output, &expected);
    }

    #[test]
    fn arguments_stream_as_they_are_generated() {
        let mut parser = ToolCallFormat::Hermes.parser();
        assert_eq!(parser.push("<tool_call>\n{\"name\": \"gr"), vec![]);
        assert_eq!(
            parser.push("ep\", \"arguments\": {\"pat"),
            vec![
                ParsedEvent::ToolCallStart {
                    name: "grep".into()
                },
                ParsedEvent::ToolCallInput(r#"{"pat"#.into()),
            ]
        );
        assert_eq!(
            parser.push("tern\": \"fn }\"}"),
            vec![ParsedEvent::ToolCallInput(r#"tern": "fn }"}"#.into())]
        );
        assert_eq!(parser.push("}\n</tool_"), vec![]);
        assert_eq!(
            parser.push("call>"),
            vec![ParsedEvent::ToolCallEnd(call(
                "grep",
                json!({"pattern": "fn }"})
            ))]
        );
    }

    #[test]
    fn a_call_cut_off_in_its_arguments_is_closed() {
        for (output, input, closing) in [
            (
                r#"{"name": "f", "arguments": {"a": "x\"y"#,
                json!({"a": "x\"y"}),
                "\"}",
            ),
            (
                r#"{"name": "f", "arguments": {"a": [1, {"b": 2"#,
                json!({"a": [1, {"b": 2}]}),
                "}]}",
            ),
            (
                r#"{"name": "f", "arguments": {"a": "#,
                json!({"a": null}),
                "null}",
            ),
            (
                r#"{"name": "f", "arguments": {"a"#,
                json!({"a": null}),
                "\": null}",
            ),
        ] {
            let mut parser = ToolCallFormat::Hermes.parser();
            let mut events = parser.push(&format!("<tool_call>{output}"));
            events.extend(parser.finish());
            assert_eq!(
                events.last(),
                Some(&ParsedEvent::ToolCallEnd(call("f", input.clone()))),
                "{output}"
            );
            assert_eq!(
                events[events.len() - 2],
                ParsedEvent::ToolCallInput(closing.into()),
                "{output}"
            );
            merge_text(events);
        }
    }

    #[test]
    fn unterminated_but_complete_call_counts() {
        let output = "<tool_call>\n{\"name\": \"ls\", \"arguments\": {\"dir\": \".\"}}";
        let got = collect(ToolCallFormat::Hermes, &[output]);
        assert_eq!(
            got,
            expected_events(None, &[call("ls", json!({"dir": "."}))])
        );
    }

    #[test]
    fn string_arguments_and_missing_arguments() {
        let output = "<tool_call>{\"name\": \"a\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>\
                      <tool_call>{\"name\": \"b\"}</tool_call>";
        let got = collect(ToolCallFormat::Hermes, &[output]);
        assert_eq!(
            got,
            expected_events(None, &[call("a", json!({"x": 1})), call("b", json!({}))])
        );
    }

    #[test]
    fn input_fragments_concatenate_to_the_input() {
        let calls = [call("f", json!({"q": [1, 2, {"r": null}]}))];
        let output = ToolCallFormat::Hermes.render_tool_calls(&calls);
        let mut parser = ToolCallFormat::Hermes.parser();
        let mut events = parser.push(&output);
        events.extend(parser.finish());
        let input: String = events
            .iter()
            .filter_map(|e| match e {
                ParsedEvent::ToolCallInput(fragment) => Some(fragment.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&input).unwrap(),
            calls[0].input
        );
    }
}
