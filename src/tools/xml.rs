//! The streaming parser of the `qwen35` format, the XML style Qwen 3.5's
//! (and Qwen3-Coder's) chat template teaches:
//!
//! ```text
//! <tool_call>
//! <function=NAME>
//! <parameter=KEY>
//! VALUE
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! Text before a call is text. `ToolCallStart` is sent at `<function=NAME>`;
//! the input then streams as JSON fragments that always concatenate to the
//! call's input: a parameter whose schema type is `string` streams its value
//! as it is generated (`{"KEY":"` then the escaped text, a possible partial
//! `</parameter>` held back); any other parameter is sent whole (`"KEY":`
//! and its value) at its `</parameter>`; the object is closed at
//! `</function>`. `ToolCallEnd` is sent at `</tool_call>`, or when
//! something else follows `</function>`, or at the end of the output. A
//! call cut off (at `max_tokens`) after `<function=NAME>` is closed at the
//! end of the output with what it has: a cut-off value keeps what was
//! generated, less a partial `</parameter>`. Several calls may follow each
//! other (whitespace between them is dropped), and several `<function=...>`
//! blocks in one `<tool_call>` are several calls.
//!
//! A value loses the one newline after `<parameter=KEY>` and the one
//! before `</parameter>`, which the template writes; it ends at the first
//! `</parameter>`. It is typed by the tool's `input_schema` when the
//! parameter is declared there (`type`, a list of types, `anyOf`/`oneOf`,
//! or the JSON types of `enum`/`const` values):
//!
//! - only `string`: the text as it is;
//! - other types: the text parsed as JSON, kept when it has one of the
//!   types (`True`/`False`, as Python's jinja writes booleans, count as
//!   booleans), else the text as a string — qwen3-coder.cpp tries the JSON
//!   alternatives first too;
//! - declared without a type, or not declared (or the tool is unknown): the
//!   text parsed as JSON if it is plainly not a string (an object, array,
//!   number, `true`, `false` or `null`; `True` and `False`, as the template
//!   writes booleans, too), else the text.
//!
//! A `<tool_call>` not followed by `<function=NAME>` is not a call: it is
//! sent as text, markers included, at its `</tool_call>` or at the end of
//! the output. Text inside `<function=...>` outside parameters (normally
//! newlines) is dropped.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::parser::{partial_suffix, push_text, ParsedEvent};
use super::{ToolCall, ToolDefinition};

const CALL_START: &str = "<tool_call>";
const CALL_END: &str = "</tool_call>";
const FUNCTION_START: &str = "<function=";
const FUNCTION_END: &str = "</function>";
const PARAMETER_START: &str = "<parameter=";
const PARAMETER_END: &str = "</parameter>";

/// The longest function or parameter name waited for before the `>` that
/// ends it; longer is not a name.
const MAX_NAME: usize = 256;

/// Streaming parser of `qwen35` output; see the module docs.
pub(super) struct XmlCallParser {
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
    /// After `<tool_call>` (not in `buf`), before `<function=NAME>`.
    Opened,
    /// After a `<tool_call>` that opened no call: text up to its
    /// `</tool_call>`; `buf` has been searched up to `searched`.
    Malformed { searched: usize },
    /// Inside `<function=NAME>`, between parameters.
    Function(Call),
    /// Reading a parameter's value.
    Value(Call, Parameter),
    /// After `</function>` (the input closed): waiting for `</tool_call>`.
    Closed(ToolCall),
}

/// A call being read.
struct Call {
    name: String,
    input: Map<String, Value>,
    /// Whether the opening `{` has been sent.
    opened: bool,
}

impl Call {
    fn new(name: String) -> Self {
        Self {
            name,
            input: Map::new(),
            opened: false,
        }
    }

    /// The fragment that opens the next field, `KEY` and its colon.
    fn key_fragment(&mut self, key: &str) -> String {
        let separator = if std::mem::replace(&mut self.opened, true) {
            ","
        } else {
            "{"
        };
        format!("{separator}{}:", Value::String(key.to_string()))
    }

    /// Sends the closing fragment and returns the call.
    fn close(self, events: &mut Vec<ParsedEvent>) -> ToolCall {
        let closing = if self.opened { "}" } else { "{}" };
        events.push(ParsedEvent::ToolCallInput(closing.to_string()));
        ToolCall {
            name: self.name,
            input: Value::Object(self.input),
        }
    }
}

/// A parameter being read.
struct Parameter {
    key: String,
    kind: Kind,
    /// Whether the newline after `<parameter=KEY>` has been dealt with.
    started: bool,
    /// What of the value has been read (and, for a string, sent).
    value: String,
}

/// How a value is typed.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Only a string: streamed as it is generated.
    String,
    /// These JSON schema types (perhaps `string` among them).
    Types(Vec<String>),
    /// No type known: JSON when plainly not a string.
    Loose,
}

impl XmlCallParser {
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

    fn kind(&self, tool: &str, key: &str) -> Kind {
        let Some(schema) = self.properties.get(tool).and_then(|p| p.get(key)) else {
            return Kind::Loose;
        };
        let mut types = Vec::new();
        schema_types(schema, &mut types);
        match types.as_slice() {
            [] => Kind::Loose,
            [only] if only == "string" => Kind::String,
            _ => Kind::Types(types),
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
            State::Opened => match self.read_function_start() {
                Read::Wait => {
                    self.state = State::Opened;
                    false
                }
                Read::No => {
                    self.state = State::Malformed { searched: 0 };
                    true
                }
                Read::Name(name, consumed) => {
                    self.buf.drain(..consumed);
                    events.push(ParsedEvent::ToolCallStart { name: name.clone() });
                    self.state = State::Function(Call::new(name));
                    true
                }
            },
            State::Malformed { searched } => match self.buf[searched..].find(CALL_END) {
                Some(offset) => {
                    let end = searched + offset + CALL_END.len();
                    push_text(events, &format!("{CALL_START}{}", &self.buf[..end]));
                    self.buf.drain(..end);
                    true
                }
                None => {
                    let searched = self.buf.len() - partial_suffix(&self.buf, CALL_END);
                    self.state = State::Malformed { searched };
                    false
                }
            },
            State::Function(mut call) => {
                let found = [PARAMETER_START, FUNCTION_END, CALL_END]
                    .into_iter()
                    .filter_map(|marker| self.buf.find(marker).map(|at| (at, marker)))
                    .min();
                let Some((at, marker)) = found else {
                    // Drop what cannot begin a marker.
                    let keep = [PARAMETER_START, FUNCTION_END, CALL_END]
                        .into_iter()
                        .map(|marker| partial_suffix(&self.buf, marker))
                        .max()
                        .unwrap_or(0);
                    self.buf.drain(..self.buf.len() - keep);
                    self.state = State::Function(call);
                    return false;
                };
                match marker {
                    PARAMETER_START => {
                        let name_at = at + PARAMETER_START.len();
                        match read_name(&self.buf[name_at..]) {
                            Read::Wait => {
                                self.state = State::Function(call);
                                false
                            }
                            Read::No => {
                                // Not a parameter: skip its marker.
                                self.buf.drain(..name_at);
                                self.state = State::Function(call);
                                true
                            }
                            Read::Name(key, consumed) => {
                                self.buf.drain(..name_at + consumed);
                                let kind = self.kind(&call.name, &key);
                                if kind == Kind::String {
                                    let fragment = format!("{}\"", call.key_fragment(&key));
                                    events.push(ParsedEvent::ToolCallInput(fragment));
                                }
                                let parameter = Parameter {
                                    key,
                                    kind,
                                    started: false,
                                    value: String::new(),
                                };
                                self.state = State::Value(call, parameter);
                                true
                            }
                        }
                    }
                    FUNCTION_END => {
                        self.buf.drain(..at + FUNCTION_END.len());
                        self.state = State::Closed(call.close(events));
                        true
                    }
                    _ => {
                        self.buf.drain(..at + CALL_END.len());
                        let call = call.close(events);
                        self.end_call(events, call);
                        true
                    }
                }
            }
            State::Value(mut call, mut parameter) => {
                if !parameter.started {
                    if self.buf.is_empty() {
                        self.state = State::Value(call, parameter);
                        return false;
                    }
                    if self.buf.starts_with('\n') {
                        self.buf.drain(..1);
                    }
                    parameter.started = true;
                }
                match self.buf.find(PARAMETER_END) {
                    Some(at) => {
                        let text = self.buf[..at].to_string();
                        self.buf.drain(..at + PARAMETER_END.len());
                        let text = text.strip_suffix('\n').unwrap_or(&text);
                        finish_value(&mut call, parameter, text, events);
                        self.state = State::Function(call);
                        true
                    }
                    None => {
                        if parameter.kind == Kind::String {
                            let keep = partial_suffix(&self.buf, PARAMETER_END)
                                .max(partial_suffix(&self.buf, "\n</parameter>"));
                            let emit = self.buf.len() - keep;
                            if emit > 0 {
                                let chunk = &self.buf[..emit];
                                events.push(ParsedEvent::ToolCallInput(escaped(chunk)));
                                parameter.value.push_str(chunk);
                                self.buf.drain(..emit);
                            }
                        }
                        self.state = State::Value(call, parameter);
                        false
                    }
                }
            }
            State::Closed(call) => {
                let rest = self.buf.trim_start();
                if let Some(after) = rest.strip_prefix(CALL_END) {
                    self.buf = after.to_string();
                    self.end_call(events, call);
                    return true;
                }
                let partial = |marker: &str| rest.len() < marker.len() && marker.starts_with(rest);
                if partial(CALL_END) || partial(FUNCTION_START) {
                    self.state = State::Closed(call);
                    return false;
                }
                // No `</tool_call>`: the call ends here; another
                // `<function=` in the same `<tool_call>` is another call.
                let another = rest.starts_with(FUNCTION_START);
                self.end_call(events, call);
                if another {
                    self.buf = self.buf.trim_start().to_string();
                    self.after_call = false;
                    self.state = State::Opened;
                }
                true
            }
        }
    }

    /// Reads `<function=NAME>` at the start of `buf`, whitespace aside.
    fn read_function_start(&self) -> Read {
        let rest = self.buf.trim_start();
        let skipped = self.buf.len() - rest.len();
        match rest.strip_prefix(FUNCTION_START) {
            Some(after) => match read_name(after) {
                Read::Name(name, consumed) => {
                    Read::Name(name, skipped + FUNCTION_START.len() + consumed)
                }
                other => other,
            },
            None if FUNCTION_START.starts_with(rest) => Read::Wait,
            None => Read::No,
        }
    }

    fn end_call(&mut self, events: &mut Vec<ParsedEvent>, call: ToolCall) {
        events.push(ParsedEvent::ToolCallEnd(call));
        self.state = State::Text;
        self.after_call = true;
    }

    pub(super) fn finish(mut self) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        let call = match std::mem::replace(&mut self.state, State::Text) {
            State::Closed(call) => {
                events.push(ParsedEvent::ToolCallEnd(call));
                None
            }
            State::Text => {
                push_text(&mut events, &self.buf);
                None
            }
            State::Opened | State::Malformed { .. } => {
                push_text(&mut events, &format!("{CALL_START}{}", self.buf));
                None
            }
            State::Function(call) => Some(call),
            State::Value(mut call, parameter) => {
                // Cut off: what was generated, less a partial end marker.
                let keep = partial_suffix(&self.buf, PARAMETER_END)
                    .max(partial_suffix(&self.buf, "\n</parameter>"));
                let text = &self.buf[..self.buf.len() - keep];
                let text = if parameter.started {
                    text
                } else {
                    text.strip_prefix('\n').unwrap_or(text)
                };
                finish_value(&mut call, parameter, text, &mut events);
                Some(call)
            }
        };
        if let Some(call) = call {
            let call = call.close(&mut events);
            events.push(ParsedEvent::ToolCallEnd(call));
        }
        events
    }
}

/// The rest of a value is `text`: sends what it completes and records it.
fn finish_value(
    call: &mut Call,
    mut parameter: Parameter,
    text: &str,
    events: &mut Vec<ParsedEvent>,
) {
    if parameter.kind == Kind::String {
        let mut fragment = escaped(text);
        fragment.push('"');
        events.push(ParsedEvent::ToolCallInput(fragment));
        parameter.value.push_str(text);
        call.input
            .insert(parameter.key, Value::String(parameter.value));
        return;
    }
    parameter.value.push_str(text);
    let value = typed_value(&parameter.value, &parameter.kind);
    let fragment = format!("{}{value}", call.key_fragment(&parameter.key));
    events.push(ParsedEvent::ToolCallInput(fragment));
    call.input.insert(parameter.key, value);
}

/// A value's text as JSON, by its kind (see the module docs).
fn typed_value(text: &str, kind: &Kind) -> Value {
    let raw = || Value::String(text.to_string());
    let trimmed = text.trim();
    match kind {
        Kind::String => raw(),
        Kind::Types(types) => {
            let has = |t: &str| types.iter().any(|have| have == t);
            let parsed = match trimmed {
                "True" if has("boolean") => Some(Value::Bool(true)),
                "False" if has("boolean") => Some(Value::Bool(false)),
                _ => serde_json::from_str::<Value>(trimmed).ok(),
            };
            match parsed {
                Some(value) if json_type_fits(&value, &has) => value,
                _ => raw(),
            }
        }
        Kind::Loose => match trimmed {
            "True" => Value::Bool(true),
            "False" => Value::Bool(false),
            _ => match serde_json::from_str::<Value>(trimmed) {
                Ok(Value::String(_)) | Err(_) => raw(),
                Ok(value) => value,
            },
        },
    }
}

pub(super) fn json_type_fits(value: &Value, has: &dyn Fn(&str) -> bool) -> bool {
    match value {
        Value::Null => has("null"),
        Value::Bool(_) => has("boolean"),
        Value::Number(n) => has("number") || (has("integer") && (n.is_i64() || n.is_u64())),
        // A quoted string stays the text it is, quotes included.
        Value::String(_) => false,
        Value::Array(_) => has("array"),
        Value::Object(_) => has("object"),
    }
}

/// The JSON types a property schema allows, as far as it says.
pub(super) fn schema_types(schema: &Value, out: &mut Vec<String>) {
    fn add(out: &mut Vec<String>, t: &str) {
        if !out.iter().any(|have| have == t) {
            out.push(t.to_string());
        }
    }
    match schema.get("type") {
        Some(Value::String(t)) => add(out, t),
        Some(Value::Array(types)) => {
            for t in types.iter().filter_map(Value::as_str) {
                add(out, t);
            }
        }
        _ => {
            let values = schema
                .get("enum")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(schema.get("const"));
            for value in values {
                let t = match value {
                    Value::Null => "null",
                    Value::Bool(_) => "boolean",
                    Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                    Value::Number(_) => "number",
                    Value::String(_) => "string",
                    Value::Array(_) => "array",
                    Value::Object(_) => "object",
                };
                add(out, t);
            }
            for key in ["anyOf", "oneOf"] {
                let alternatives = schema.get(key).and_then(Value::as_array);
                for alternative in alternatives.into_iter().flatten() {
                    schema_types(alternative, out);
                }
            }
        }
    }
}

/// `text` as the inside of a JSON string.
fn escaped(text: &str) -> String {
    let quoted = Value::String(text.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

enum Read {
    /// Not known yet.
    Wait,
    /// Not what was expected.
    No,
    /// A name, and the bytes read up to and including its `>`.
    Name(String, usize),
}

/// Reads `NAME>` (the name trimmed; not empty, on one line).
fn read_name(text: &str) -> Read {
    match text.find(['>', '\n', '<']) {
        Some(at) if text.as_bytes()[at] == b'>' => {
            let name = text[..at].trim();
            if name.is_empty() {
                Read::No
            } else {
                Read::Name(name.to_string(), at + 1)
            }
        }
        Some(_) => Read::No,
        None if text.len() > MAX_NAME => Read::No,
        None => Read::Wait,
    }
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
                    "obj": {"type": "object"},
                    "list": {"type": "array", "items": {"type": "string"}},
                    "either": {"type": ["integer", "string"]},
                    "maybe": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                    "free": {"description": "no type"},
                    "text": {"type": "string"},
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
        ToolCallFormat::Qwen35.parser_for(&tools())
    }

    fn parse(output: &str) -> Vec<ParsedEvent> {
        collect_with(&new_parser, &[output])
    }

    #[test]
    fn qwen35_text_then_two_calls_at_every_split() {
        let calls = [
            call(
                "get_weather",
                json!({"city": "São Paulo", "days": 3, "unit": "celsius"}),
            ),
            call(
                "write",
                json!({"path": "a.rs", "content": "fn main() {}\n"}),
            ),
        ];
        let output = format!(
            "Let me check. ✓\n\n{}",
            ToolCallFormat::Qwen35.render_tool_calls(&calls)
        );
        let expected = expected_events(Some("Let me check. ✓\n\n"), &calls);
        check_all_splits_with(&new_parser, "<tool_call>", &output, &expected);
    }

    #[test]
    fn qwen35_call_as_the_template_writes_it() {
        let output = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n\
                      <parameter=days>\n2\n</parameter>\n</function>\n</tool_call>";
        assert_eq!(
            ToolCallFormat::Qwen35
                .render_tool_calls(&[call("get_weather", json!({"city": "Paris", "days": 2}))]),
            output
        );
        assert_eq!(
            parse(output),
            expected_events(
                None,
                &[call("get_weather", json!({"city": "Paris", "days": 2}))]
            )
        );
    }

    #[test]
    fn qwen35_values_are_typed_by_the_schema() {
        let output = "<tool_call>\n<function=typed>\n\
            <parameter=n>\n42\n</parameter>\n\
            <parameter=x>\n-1.5e3\n</parameter>\n\
            <parameter=ok>\nTrue\n</parameter>\n\
            <parameter=obj>\n{\"a\": [1, null]}\n</parameter>\n\
            <parameter=list>\n[\"x\", \"y\"]\n</parameter>\n\
            <parameter=either>\nabc\n</parameter>\n\
            <parameter=maybe>\nnull\n</parameter>\n\
            <parameter=free>\n7\n</parameter>\n\
            <parameter=text>\n007\n</parameter>\n\
            <parameter=extra>\n{\"k\": true}\n</parameter>\n\
            <parameter=quoted>\n\"hi\"\n</parameter>\n\
            <parameter=flag>\nFalse\n</parameter>\n\
            </function>\n</tool_call>";
        let input = json!({
            "n": 42, "x": -1500.0, "ok": true, "obj": {"a": [1, null]}, "list": ["x", "y"],
            "either": "abc", "maybe": null, "free": 7, "text": "007", "extra": {"k": true},
            "quoted": "\"hi\"", "flag": false,
        });
        let expected = expected_events(None, &[call("typed", input)]);
        check_all_splits_with(&new_parser, "<tool_call>", output, &expected);
        // A value that is not of its type stays the text.
        let output = "<tool_call>\n<function=typed>\n<parameter=n>\nmany\n</parameter>\n\
                      <parameter=ok>\nyes\n</parameter>\n</function>\n</tool_call>";
        assert_eq!(
            calls_of(&parse(output)),
            [call("typed", json!({"n": "many", "ok": "yes"}))]
        );
        // Without the tools: plainly non-string values are JSON.
        let output = "<tool_call>\n<function=f>\n<parameter=a>\n5\n</parameter>\n\
                      <parameter=b>\nfive\n</parameter>\n</function>\n</tool_call>";
        let events = collect_with(&|| ToolCallFormat::Qwen35.parser(), &[output]);
        assert_eq!(calls_of(&events), [call("f", json!({"a": 5, "b": "five"}))]);
    }

    /// Newlines inside a value are kept (only the template's own one on
    /// each side goes), and the other markers may appear in a string.
    #[test]
    fn qwen35_multiline_string_values() {
        let content =
            "\nfirst line\n\n  </function>\n</tool_call>\n<tool_call>\n<parameter=x>\nlast\n";
        let calls = [call(
            "write",
            json!({"path": "notes.md", "content": content}),
        )];
        let output = ToolCallFormat::Qwen35.render_tool_calls(&calls);
        assert!(output.contains("<parameter=content>\n\nfirst line"));
        check_all_splits_with(
            &new_parser,
            "<tool_call>",
            &output,
            &expected_events(None, &calls),
        );
    }

    #[test]
    fn qwen35_string_values_stream() {
        let mut parser = new_parser();
        assert_eq!(
            parser.push("Sure.\n<tool_call>\n<function=wri"),
            vec![ParsedEvent::Text("Sure.\n".into())]
        );
        assert_eq!(
            parser.push("te>\n<parameter=content>\nline \"1\"\n"),
            vec![
                ParsedEvent::ToolCallStart {
                    name: "write".into()
                },
                ParsedEvent::ToolCallInput("{\"content\":\"".into()),
                ParsedEvent::ToolCallInput("line \\\"1\\\"".into()),
            ]
        );
        // The newline may be the value's or the template's: held back.
        assert_eq!(
            parser.push("line 2\n</param"),
            vec![ParsedEvent::ToolCallInput("\\nline 2".into())]
        );
        assert_eq!(
            parser.push("eter>\n</function>\n"),
            vec![
                ParsedEvent::ToolCallInput("\"".into()),
                ParsedEvent::ToolCallInput("}".into()),
            ]
        );
        assert_eq!(
            parser.push("</tool_call>"),
            vec![ParsedEvent::ToolCallEnd(call(
                "write",
                json!({"content": "line \"1\"\nline 2"})
            ))]
        );
        assert_eq!(parser.finish(), vec![]);
    }

    /// Output cut off anywhere (at `max_tokens`) still parses: a call whose
    /// `<function=NAME>` was read ends with what it has, its fragments
    /// concatenating to its input.
    #[test]
    fn qwen35_call_cut_off_anywhere_is_closed() {
        let calls = [call(
            "get_weather",
            json!({"city": "Paris", "days": 12, "unit": "celsius"}),
        )];
        let output = format!(
            "Checking.\n{}",
            ToolCallFormat::Qwen35.render_tool_calls(&calls)
        );
        let function_at = output.find("<function=get_weather>").unwrap();
        for cut in (0..=output.len()).filter(|&i| output.is_char_boundary(i)) {
            let prefix = &output[..cut];
            let events = parse(prefix);
            let got = calls_of(&events);
            if cut < function_at + "<function=get_weather>".len() {
                assert!(got.is_empty(), "{prefix:?}: {events:?}");
                continue;
            }
            assert_eq!(got.len(), 1, "{prefix:?}: {events:?}");
            assert_eq!(got[0].name, "get_weather");
        }
        for (prefix, input) in [
            ("<function=get_weather>\n", json!({})),
            (
                "<function=get_weather>\n<parameter=city>\nPar",
                json!({"city": "Par"}),
            ),
            (
                "<function=get_weather>\n<parameter=city>\nParis\n</para",
                json!({"city": "Paris"}),
            ),
            (
                "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n1",
                json!({"city": "Paris", "days": 1}),
            ),
            (
                "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=da",
                json!({"city": "Paris"}),
            ),
        ] {
            let events = parse(&format!("<tool_call>\n{prefix}"));
            assert_eq!(
                events,
                expected_events(None, &[call("get_weather", input)]),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn qwen35_missing_end_markers() {
        // No `</tool_call>` after `</function>`: at the end, or before text.
        let output =
            "<tool_call>\n<function=write>\n<parameter=path>\na\n</parameter>\n</function>";
        let expected = expected_events(None, &[call("write", json!({"path": "a"}))]);
        check_all_splits_with(&new_parser, "<tool_call>", output, &expected);
        let mut expected = expected.clone();
        expected.push(ParsedEvent::Text("Done.".into()));
        assert_eq!(parse(&format!("{output}\nDone.")), expected);
        // Two functions in one `<tool_call>`; a `</tool_call>` without `</function>`.
        let output = "<tool_call>\n<function=write>\n</function>\n<function=get_weather>\n\
                      <parameter=city>\nRome\n</parameter>\n</tool_call>";
        let expected = expected_events(
            None,
            &[
                call("write", json!({})),
                call("get_weather", json!({"city": "Rome"})),
            ],
        );
        check_all_splits_with(&new_parser, "<tool_call>", output, &expected);
    }

    #[test]
    fn qwen35_malformed_calls_are_text() {
        for output in [
            "<tool_call>\n{\"name\": \"write\", \"arguments\": {}}\n</tool_call>",
            "a <tool_ b <tool_call x",
            "<tool_call>\n<function=\nwrite>\n</tool_call>",
            "<tool_call>\n<function=",
        ] {
            let expected = vec![ParsedEvent::Text(output.into())];
            check_all_splits_with(&new_parser, "<tool_call>", output, &expected);
        }
        // Text goes on after a malformed call, and a real call after it parses.
        let output = "<tool_call>oops</tool_call> then <tool_call>\n<function=write>\n</function>\n</tool_call>";
        let mut expected = vec![ParsedEvent::Text(
            "<tool_call>oops</tool_call> then ".into(),
        )];
        expected.extend(expected_events(None, &[call("write", json!({}))]));
        check_all_splits_with(&new_parser, "<tool_call>", output, &expected);
        assert_eq!(merge_text(expected.clone()), expected);
    }
}
