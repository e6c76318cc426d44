//! Chat templates: Hugging Face Jinja templates rendered with minijinja, with
//! the environment transformers gives them (`trim_blocks`, `lstrip_blocks`,
//! `raise_exception`, a Python-compatible `tojson`, `strftime_now`, and Python
//! string methods through minijinja-contrib's pycompat), so a prompt renders
//! byte for byte as the model was trained on.

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::error::{EngineError, Result};

/// Gemma's turn template, for Gemma files that ship without one.
pub const GEMMA_TEMPLATE: &str = include_str!("templates/gemma.jinja");

/// Templates known by name, for models files that name one.
pub fn named_template(name: &str) -> Option<&'static str> {
    match name {
        "gemma" => Some(GEMMA_TEMPLATE),
        _ => None,
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    renders_tools: bool,
}

/// What a template is rendered with.
#[derive(Debug, Clone, Serialize)]
pub struct ChatTemplateInput<'a> {
    /// The conversation, as the template expects it (`role`, `content`, and
    /// whatever else the template reads, such as `tool_calls`).
    pub messages: &'a [serde_json::Value],
    /// Tool definitions in the OpenAI/HF function shape, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<&'a [serde_json::Value]>,
    /// Whether to open the assistant's turn at the end.
    pub add_generation_prompt: bool,
    /// For templates with a thinking switch (Qwen 3, Qwen 3.5 / 3.6 read
    /// `enable_thinking`): whether the opened turn lets the model think
    /// first. showdown renders `false`: clients get the answer itself, as
    /// the Messages API gives it without `thinking` (which is accepted and
    /// ignored), and an eval's word limit counts only the answer.
    pub enable_thinking: bool,
    /// The tokenizer's BOS text.
    pub bos_token: &'a str,
    /// The tokenizer's EOS text.
    pub eos_token: &'a str,
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> String {
    chrono::Local::now().format(&format).to_string()
}

/// Python's `json.dumps` separators: `", "` and `": "` on one line, or `","`
/// with newlines and `": "` when indenting (transformers' `tojson`).
struct PythonJsonFormatter {
    indent: Option<Vec<u8>>,
    depth: usize,
    has_value: bool,
}

impl PythonJsonFormatter {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.depth {
                w.write_all(indent)?;
            }
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for PythonJsonFormatter {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        self.has_value = true;
        w.write_all(b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            w.write_all(if self.indent.is_some() { b"," } else { b", " })?;
        }
        self.newline(w)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        self.has_value = true;
        w.write_all(b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            w.write_all(if self.indent.is_some() { b"," } else { b", " })?;
        }
        self.newline(w)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers' `tojson`.
pub fn python_json(
    value: &impl Serialize,
    indent: Option<usize>,
) -> std::result::Result<String, serde_json::Error> {
    let formatter = PythonJsonFormatter {
        indent: indent.map(|n| vec![b' '; n]),
        depth: 0,
        has_value: false,
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser)?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = python_json(&value, indent)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(json))
}

impl ChatTemplate {
    /// Compiles a template's source.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::ChatTemplate(format!("{e:#}")))?;
        let mut template = Self {
            env,
            source: source.to_string(),
            renders_tools: false,
        };
        template.renders_tools = template.probe_tools();
        Ok(template)
    }

    /// Whether the template itself renders tool definitions, assistant tool
    /// calls and tool results (Qwen 2.5's and 3's, Gemma 4's do; SmolLM2's
    /// and Gemma 3's do not). Probed once, as llama.cpp's template
    /// capabilities are: a conversation with one tool, one call and one
    /// result in transformers' conventions must show all three.
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    fn probe_tools(&self) -> bool {
        let tools = [serde_json::json!({
            "type": "function",
            "function": {
                "name": "probe_tool_definition",
                "description": "probe",
                "parameters": {"type": "object", "properties": {}},
            },
        })];
        let messages = [
            serde_json::json!({"role": "user", "content": "probe"}),
            serde_json::json!({"role": "assistant", "content": "", "tool_calls": [{
                "type": "function",
                "function": {"name": "probe_tool_call", "arguments": {"probe": 1}},
            }]}),
            serde_json::json!({"role": "tool", "name": "probe_tool_call", "content": "probe_tool_result"}),
        ];
        let rendered = self.render(&ChatTemplateInput {
            messages: &messages,
            tools: Some(&tools),
            add_generation_prompt: true,
            enable_thinking: false,
            bos_token: "",
            eos_token: "",
        });
        rendered.is_ok_and(|text| {
            [
                "probe_tool_definition",
                "probe_tool_call",
                "probe_tool_result",
            ]
            .iter()
            .all(|needle| text.contains(needle))
        })
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation into the prompt text.
    pub fn render(&self, input: &ChatTemplateInput<'_>) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        template
            .render(input)
            .map_err(|e| EngineError::ChatTemplate(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_json_matches_json_dumps_separators() {
        let v = json!({"name": "Read", "args": [1, "é", {"a": null}], "z": true});
        assert_eq!(
            python_json(&v, None).unwrap(),
            r#"{"name": "Read", "args": [1, "é", {"a": null}], "z": true}"#
        );
        assert_eq!(
            python_json(&json!({"a": [1, 2], "b": {}}), Some(2)).unwrap(),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}"
        );
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let t = ChatTemplate::new("{{ raise_exception('nope') }}").unwrap();
        let err = t
            .render(&ChatTemplateInput {
                messages: &[],
                tools: None,
                add_generation_prompt: false,
                enable_thinking: false,
                bos_token: "",
                eos_token: "",
            })
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn gemma_template_alternates_and_folds_system() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE).unwrap();
        let messages = [
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Hi "}),
        ];
        let out = t
            .render(&ChatTemplateInput {
                messages: &messages,
                tools: None,
                add_generation_prompt: true,
                enable_thinking: false,
                bos_token: "<bos>",
                eos_token: "<eos>",
            })
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
