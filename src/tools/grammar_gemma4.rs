//! The `gemma4` part of the tool-call grammar (see `grammar.rs`): the
//! markers as the tokenizer has them, and one call's Lark rules, values in
//! Gemma 4's syntax typed by the tool's schema.

use std::collections::HashSet;

use serde_json::Value;
use showdown_engine::Tokenizer;

use super::grammar::{lark_string, lenient, regex_escape, special_ids};
use super::{gemma4, ToolDefinition};

/// A marker of the `gemma4` format as the grammar writes it: the
/// tokenizer's special token when it has one of that text (Gemma 4's has
/// `<|tool_call>`, `<tool_call|>` and `<|"|>`: a model writes them as those
/// tokens, which text in a grammar cannot match), else the text.
pub(super) struct Marker {
    pub(super) lark: String,
    pub(super) special: bool,
}

impl Marker {
    fn new(text: &str, tokenizer: &Tokenizer, specials: &HashSet<u32>) -> Self {
        match tokenizer.inner().token_to_id(text) {
            Some(id) if specials.contains(&id) => Self {
                lark: format!("<[{id}]>"),
                special: true,
            },
            _ => Self {
                lark: lark_string(text),
                special: false,
            },
        }
    }
}

/// The `gemma4` markers for one tokenizer.
pub(super) struct Gemma4Markers {
    pub(super) start: Marker,
    pub(super) end: Marker,
    pub(super) quote: Marker,
}

impl Gemma4Markers {
    pub(super) fn new(tokenizer: &Tokenizer) -> Self {
        let specials = special_ids(tokenizer);
        Self {
            start: Marker::new(gemma4::CALL_START, tokenizer, &specials),
            end: Marker::new(gemma4::CALL_END, tokenizer, &specials),
            quote: Marker::new(gemma4::QUOTE, tokenizer, &specials),
        }
    }

    /// The rule of a string value, and the terminals it needs.
    pub(super) fn string_rules(&self) -> String {
        if self.quote.special {
            // Text cannot hold a special token: any text is a string's.
            format!(
                "g4_string: {q} G4_TEXT? {q}\nG4_TEXT: /(?s:.+)/\n",
                q = self.quote.lark
            )
        } else {
            // One lexeme, ending at the first quote, as the parser reads it.
            format!(
                "g4_string: G4_STRING\nG4_STRING: {q} G4_TEXT {q}\n\
                 G4_TEXT: /(?s:.*)/ & ~/(?s:.*){re}(?s:.*)/\n",
                q = self.quote.lark,
                re = regex_escape(gemma4::QUOTE),
            )
        }
    }
}

/// The `gemma4` terminals and generic rules: any value (a string, object,
/// array, number, boolean or null), as the template writes them.
pub(super) const GEMMA4_RULES: &str =
    "g4_any: g4_string | g4_dict | g4_array | G4_NUMBER | \"true\" | \"false\" | \"null\"\n\
     g4_dict: \"{\" (g4_kv (\",\" g4_kv)*)? \"}\"\n\
     g4_kv: G4_KEY \":\" g4_any\n\
     g4_array: \"[\" (g4_any (\",\" g4_any)*)? \"]\"\n\
     G4_KEY: /[^:{}\\[\\],<>\"\\s]+/\n\
     G4_INT: /-?(0|[1-9][0-9]*)/\n\
     G4_NUMBER: /-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?/\n";

/// How deep `gemma4` value rules follow a schema before taking any value.
const GEMMA4_MAX_DEPTH: usize = 8;

/// Builds the Lark rules of one `gemma4` call.
///
/// The arguments are written in the order the template sorts them (by key,
/// ASCII case ignored), the required ones always, the others optionally,
/// commas between; no undeclared argument unless the schema declares none
/// (and does not forbid them). Values follow their schema's `type` (a list
/// of types, `anyOf`/`oneOf` as alternatives), `enum` and `const`, nested
/// objects' `properties` and arrays' `items` the same way; numeric bounds,
/// lengths and patterns are not enforced. A schema without a type (or one
/// with `$ref`, which is not followed, and counts as a fallback) takes any
/// value.
pub(super) struct Gemma4Rules<'a> {
    pub(super) tool: usize,
    pub(super) next: usize,
    pub(super) markers: &'a Gemma4Markers,
    pub(super) rules: &'a mut String,
    pub(super) fell_back: bool,
}

impl Gemma4Rules<'_> {
    /// A new rule named for this tool, with `body`.
    fn rule(&mut self, body: &str) -> String {
        let name = format!("g4_{}_{}", self.tool, self.next);
        self.next += 1;
        self.rules.push_str(&format!("{name}: {body}\n"));
        name
    }

    /// `NAME{` and the fields (after the opening's `call:`; the caller adds
    /// `}` and the end marker).
    pub(super) fn call(&mut self, tool: &ToolDefinition) -> String {
        let schema = lenient(&tool.input_schema);
        let head = lark_string(&format!("{}{{", tool.name));
        match self.fields(&schema, 0) {
            Some(fields) => format!("{head} {fields}"),
            None => head,
        }
    }

    /// The fields of an object schema, without braces (`None`: no field).
    fn fields(&mut self, schema: &Value, depth: usize) -> Option<String> {
        let properties = schema.get("properties").and_then(Value::as_object);
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        let Some(properties) = properties.filter(|p| !p.is_empty()) else {
            return (!closed).then(|| "(g4_kv (\",\" g4_kv)*)?".to_string());
        };
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut sorted: Vec<(&String, &Value)> = properties.iter().collect();
        sorted.sort_by_key(|(key, _)| key.to_ascii_lowercase());
        // From the last field back: `rest` is what may follow field k (each
        // after a comma), `first` what the fields from k on may start with.
        let mut rest: Option<String> = None;
        let mut first: Option<String> = None;
        for (key, property) in sorted.into_iter().rev() {
            let value = self.value(property, depth + 1);
            let field = format!("{} {value}", lark_string(&format!("{key}:")));
            let field = self.rule(&field);
            let then = rest.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
            let required = required.contains(&key.as_str());
            let (new_rest, new_first) = if required {
                (format!("\",\" {field}{then}"), format!("{field}{then}"))
            } else {
                let first_after = match &first {
                    Some(f) => format!("{field}{then} | {f}"),
                    None => format!("({field}{then})?"),
                };
                (format!("(\",\" {field})?{then}"), first_after)
            };
            rest = Some(self.rule(&new_rest));
            first = Some(self.rule(&new_first));
        }
        first
    }

    /// The value a property schema allows, as a Lark expression.
    fn value(&mut self, schema: &Value, depth: usize) -> String {
        if depth > GEMMA4_MAX_DEPTH || !schema.is_object() {
            return "g4_any".into();
        }
        if schema.get("$ref").is_some() {
            self.fell_back = true;
            return "g4_any".into();
        }
        let literals = schema
            .get("enum")
            .and_then(Value::as_array)
            .filter(|values| !values.is_empty())
            .cloned()
            .or_else(|| schema.get("const").map(|value| vec![value.clone()]));
        if let Some(values) = literals {
            let alternatives: Option<Vec<String>> =
                values.iter().map(|value| self.literal(value)).collect();
            if let Some(alternatives) = alternatives {
                return format!("({})", alternatives.join(" | "));
            }
            return "g4_any".into();
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                if !options.is_empty() {
                    let alternatives: Vec<String> =
                        options.iter().map(|o| self.value(o, depth + 1)).collect();
                    return format!("({})", alternatives.join(" | "));
                }
            }
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if types.is_empty() {
            return "g4_any".into();
        }
        let mut alternatives = Vec::new();
        for t in types {
            let alternative = match t {
                "string" => "g4_string".to_string(),
                "integer" => "G4_INT".to_string(),
                "number" => "G4_NUMBER".to_string(),
                "boolean" => "(\"true\" | \"false\")".to_string(),
                "null" => "\"null\"".to_string(),
                "array" => match schema.get("items") {
                    Some(items) if items.is_object() => {
                        let item = self.value(items, depth + 1);
                        self.rule(&format!("\"[\" ({item} (\",\" {item})*)? \"]\""))
                    }
                    _ => "g4_array".to_string(),
                },
                "object" => match self.fields(schema, depth) {
                    Some(fields) => self.rule(&format!("\"{{\" {fields} \"}}\"")),
                    None => "\"{}\"".to_string(),
                },
                _ => "g4_any".to_string(),
            };
            alternatives.push(alternative);
        }
        format!("({})", alternatives.join(" | "))
    }

    /// An `enum` or `const` value as the template writes it (`None` for an
    /// array or object holding strings, taken as any value).
    fn literal(&self, value: &Value) -> Option<String> {
        match value {
            Value::String(text) => Some(format!(
                "{q} {} {q}",
                lark_string(text),
                q = self.markers.quote.lark
            )),
            Value::Array(_) | Value::Object(_) if value.to_string().contains('"') => None,
            other => {
                let mut out = String::new();
                gemma4::write_value(other, &mut out);
                Some(lark_string(&out))
            }
        }
    }
}
