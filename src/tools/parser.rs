//! A streaming parser of model output into text and tool calls, for one
//! [`ToolCallFormat`]. Text may arrive split at any point: a possible partial
//! call marker is held back until the next piece says whether it is one, so
//! no part of a marker is ever emitted as text.
//!
//! A call is `START body END` where the body is the JSON
//! `{"name": ..., "arguments": {...}}` (`"parameters"` is accepted for
//! `"arguments"`, and arguments written as a JSON string are decoded). The
//! call is reported when its end marker arrives, as `ToolCallStart`, one
//! `ToolCallInput` holding the whole arguments JSON, and `ToolCallEnd`.
//!
//! Malformed calls: an end marker whose body is not such JSON is taken to lie
//! inside the JSON (a string holding the marker) and parsing goes on; a call
//! that never gets a well-formed body by [`ToolCallParser::finish`] is emitted
//! as text, markers included. A call cut off before its end marker (at
//! `max_tokens`, or a model that stops right after the JSON) still counts
//! when its body parses. Whitespace between calls, and after the last one,
//! is dropped.

use serde_json::Value;

use super::{ToolCall, ToolCallFormat};

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
    /// call make its input; currently one fragment with all of it).
    ToolCallInput(String),
    /// The call is complete.
    ToolCallEnd(ToolCall),
}

/// Streaming parser; see the module docs. Built by [`ToolCallFormat::parser`].
pub struct ToolCallParser {
    start: &'static str,
    end: &'static str,
    /// Text not yet emitted (outside a call) or the call body so far.
    buf: String,
    in_call: bool,
    /// Inside a call: how much of `buf` has been searched for the end marker.
    searched: usize,
    /// Just after a call: leading whitespace is dropped.
    after_call: bool,
}

impl ToolCallParser {
    pub(crate) fn new(format: ToolCallFormat) -> Self {
        Self {
            start: format.call_start(),
            end: format.call_end(),
            buf: String::new(),
            in_call: false,
            searched: 0,
            after_call: false,
        }
    }

    /// Feeds the next piece of output; returns what it completes.
    pub fn push(&mut self, text: &str) -> Vec<ParsedEvent> {
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
                    if self.buf.is_empty() {
                        break;
                    }
                }
                if let Some(at) = self.buf.find(self.start) {
                    push_text(&mut events, &self.buf[..at]);
                    self.buf.drain(..at + self.start.len());
                    self.in_call = true;
                    self.searched = 0;
                    self.after_call = false;
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

    /// Ends the output: flushes held-back text and any unterminated call.
    pub fn finish(self) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        if self.in_call {
            match parse_call(&self.buf) {
                Some(call) => push_call(&mut events, call),
                None => push_text(&mut events, &format!("{}{}", self.start, self.buf)),
            }
        } else if !(self.after_call && self.buf.trim().is_empty()) {
            push_text(&mut events, &self.buf);
        }
        events
    }

    /// Looks for a well-formed call body ending at an end marker; returns
    /// whether one was found (and the parser is back to text).
    fn scan_call(&mut self, events: &mut Vec<ParsedEvent>) -> bool {
        while let Some(offset) = self.buf[self.searched..].find(self.end) {
            let at = self.searched + offset;
            if let Some(call) = parse_call(&self.buf[..at]) {
                push_call(events, call);
                self.buf.drain(..at + self.end.len());
                self.in_call = false;
                self.after_call = true;
                return true;
            }
            self.searched = at + self.end.len();
        }
        // The next search starts where a partial end marker might begin.
        self.searched = self.buf.len() - partial_suffix(&self.buf, self.end);
        false
    }
}

fn push_text(events: &mut Vec<ParsedEvent>, text: &str) {
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
fn partial_suffix(text: &str, marker: &str) -> usize {
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
mod tests {
    use serde_json::json;

    use super::*;

    fn collect(format: ToolCallFormat, pieces: &[&str]) -> Vec<ParsedEvent> {
        let mut parser = format.parser();
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(parser.push(piece));
        }
        events.extend(parser.finish());
        merge_text(events)
    }

    fn merge_text(events: Vec<ParsedEvent>) -> Vec<ParsedEvent> {
        let mut merged = Vec::new();
        for event in events {
            match event {
                ParsedEvent::Text(text) => push_text(&mut merged, &text),
                other => merged.push(other),
            }
        }
        merged
    }

    fn call(name: &str, input: Value) -> ToolCall {
        ToolCall {
            name: name.into(),
            input,
        }
    }

    fn expected_events(text: Option<&str>, calls: &[ToolCall]) -> Vec<ParsedEvent> {
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
        let bounds: Vec<usize> = (0..=output.len())
            .filter(|&i| output.is_char_boundary(i))
            .collect();
        for &i in &bounds {
            let got = collect(format, &[&output[..i], &output[i..]]);
            assert_eq!(got, expected, "split at {i} of {output:?}");
        }
        for &i in bounds.iter().step_by(3) {
            for &j in bounds.iter().filter(|&&j| j >= i) {
                let got = collect(format, &[&output[..i], &output[i..j], &output[j..]]);
                assert_eq!(got, expected, "split at {i}, {j} of {output:?}");
            }
        }
        let chars: Vec<String> = output.chars().map(String::from).collect();
        let mut parser = format.parser();
        for c in &chars {
            for event in parser.push(c) {
                if let ParsedEvent::Text(text) = event {
                    assert!(
                        !format.call_start().starts_with(&text) || text.is_empty(),
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
        let output = "<tool_call>\n{\"name\": \"bash\", \"arguments\": {\n</tool_call>\ndone";
        let got = collect(ToolCallFormat::Hermes, &[output]);
        assert_eq!(got, vec![ParsedEvent::Text(output.into())]);
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
