//! Tool calls on the real SmolLM2 (and Gemma 3's tokenizer): constrained
//! decoding per `tool_choice` yields output the parser turns into calls that
//! satisfy the tools' schemas; conventions round-trip through the parser.

use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{json, Value};
use showdown::{
    ParsedEvent, ToolCall, ToolCallConstraint, ToolCallFormat, ToolChoice, ToolDefinition,
    ToolGrammarEnv,
};
use showdown_engine::{
    CancelToken, ChatTemplate, ChatTemplateInput, Engine, LoadOptions, SamplingParams,
    TemplateChoice, TokenConstraint,
};

use crate::util::{greedy, pinned_model_path};

fn smollm2() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::load(&pinned_model_path("smollm2-135m"), &LoadOptions::default())
            .expect("load SmolLM2")
    })
}

fn grammar_env() -> &'static ToolGrammarEnv {
    static ENV: OnceLock<ToolGrammarEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let start = Instant::now();
        let env = ToolGrammarEnv::new(smollm2().tokenizer()).expect("grammar env");
        eprintln!("grammar env for SmolLM2: {:?}", start.elapsed());
        env
    })
}

fn weather_tool() -> ToolDefinition {
    ToolDefinition {
        name: "get_weather".into(),
        description: Some("Get the weather forecast for a city".into()),
        input_schema: json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city", "days", "unit"],
            "additionalProperties": false
        }),
    }
}

fn tools() -> Vec<ToolDefinition> {
    vec![
        weather_tool(),
        ToolDefinition {
            name: "read_file".into(),
            description: Some("Read a file".into()),
            input_schema: json!({
                "type": "object",
                "properties": {"path": {"type": "string", "format": "uri-reference"}},
                "required": ["path"]
            }),
        },
        ToolDefinition {
            name: "bash".into(),
            description: None,
            input_schema: json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string"},
                    "timeout": {"type": "number"}
                },
                "required": ["command"]
            }),
        },
    ]
}

struct Outcome {
    text: String,
    events: Vec<ParsedEvent>,
}

impl Outcome {
    fn calls(&self) -> Vec<ToolCall> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ParsedEvent::ToolCallEnd(call) => Some(call.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Times each mask computation, for the report.
struct Timed<'a> {
    inner: &'a mut ToolCallConstraint,
    mask_ms: Vec<f64>,
}

impl TokenConstraint for Timed<'_> {
    fn mask(&mut self, logits: &mut [f32]) -> showdown_engine::Result<()> {
        let start = Instant::now();
        let result = self.inner.mask(logits);
        self.mask_ms.push(start.elapsed().as_secs_f64() * 1e3);
        result
    }

    fn accept(&mut self, token: u32) -> showdown_engine::Result<bool> {
        self.inner.accept(token)
    }
}

/// Generates greedily with the tools in the system prompt and the
/// constraint applied, streaming the text through the parser token by token.
fn run(
    format: ToolCallFormat,
    tools: &[ToolDefinition],
    choice: ToolChoice,
    disable_parallel: bool,
    user: &str,
    max_tokens: usize,
) -> Outcome {
    run_with(
        format,
        tools,
        choice,
        disable_parallel,
        user,
        &greedy(max_tokens),
    )
}

/// [`run`] with these generation parameters.
fn run_with(
    format: ToolCallFormat,
    tools: &[ToolDefinition],
    choice: ToolChoice,
    disable_parallel: bool,
    user: &str,
    params: &showdown_engine::GenerateParams,
) -> Outcome {
    let engine = smollm2();
    let system = format!(
        "You are a helpful assistant.\n\n{}",
        format.tools_system_prompt(tools)
    );
    let messages = [
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": user}),
    ];
    let prompt = engine.render_chat(&messages, None, true).unwrap();
    let prompt = engine.tokenize_prompt(&prompt).unwrap();
    let built = Instant::now();
    let mut constraint = ToolCallConstraint::with_env(
        grammar_env(),
        format,
        tools,
        &choice,
        disable_parallel,
        engine.tokenizer(),
    )
    .expect("build constraint");
    let build_ms = built.elapsed().as_secs_f64() * 1e3;
    let mut timed = Timed {
        inner: &mut constraint,
        mask_ms: Vec::new(),
    };
    let mut parser = format.parser_for(tools);
    let mut events = Vec::new();
    let generation = engine
        .generate_constrained(
            &mut engine.new_cache(),
            &prompt,
            params,
            Some(&mut timed),
            &CancelToken::new(),
            |piece| events.extend(parser.push(piece)),
        )
        .expect("generate");
    events.extend(parser.finish());
    let masks = &timed.mask_ms;
    let mean = masks.iter().sum::<f64>() / masks.len().max(1) as f64;
    let max = masks.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{choice:?} ({}): build {build_ms:.1} ms, mask {mean:.2} ms/token mean, {max:.2} max \
         over {} tokens, decode {:.1} tok/s, {:?}\n{}",
        format.name(),
        masks.len(),
        generation.timings.decode_tok_s(),
        generation.stop_reason,
        generation.text
    );
    Outcome {
        text: generation.text,
        events,
    }
}

/// Checks `input` against the subset of JSON schema the tests use.
fn assert_satisfies(input: &Value, schema: &Value) {
    let fields = input.as_object().expect("input is an object");
    for required in schema["required"].as_array().into_iter().flatten() {
        assert!(
            fields.contains_key(required.as_str().unwrap()),
            "missing required {required} in {input}"
        );
    }
    let properties = schema["properties"].as_object().unwrap();
    for (key, value) in fields {
        let Some(property) = properties.get(key) else {
            assert_ne!(
                schema["additionalProperties"],
                json!(false),
                "unexpected {key} in {input}"
            );
            continue;
        };
        match property["type"].as_str() {
            Some("string") => assert!(value.is_string(), "{key} not a string in {input}"),
            Some("integer") => assert!(value.is_i64() || value.is_u64(), "{key} in {input}"),
            Some("number") => assert!(value.is_number(), "{key} not a number in {input}"),
            _ => {}
        }
        if let Some(allowed) = property["enum"].as_array() {
            assert!(allowed.contains(value), "{key} not in enum in {input}");
        }
        if let (Some(min), Some(n)) = (property["minimum"].as_i64(), value.as_i64()) {
            assert!(n >= min, "{key} below minimum in {input}");
        }
        if let (Some(max), Some(n)) = (property["maximum"].as_i64(), value.as_i64()) {
            assert!(n <= max, "{key} above maximum in {input}");
        }
    }
}

fn assert_valid_calls(calls: &[ToolCall], tools: &[ToolDefinition]) {
    for call in calls {
        let tool = tools
            .iter()
            .find(|t| t.name == call.name)
            .unwrap_or_else(|| panic!("call to unknown tool {}", call.name));
        assert_satisfies(&call.input, &tool.input_schema);
    }
}

#[test]
fn tools_forced_tool_yields_one_valid_call() {
    let tools = tools();
    let out = run(
        ToolCallFormat::Hermes,
        &tools,
        ToolChoice::Tool("get_weather".into()),
        true,
        "What's the weather like in Paris for the next 3 days?",
        80,
    );
    let calls = out.calls();
    assert_eq!(calls.len(), 1, "one call in {:?}", out.text);
    assert_eq!(calls[0].name, "get_weather");
    assert_valid_calls(&calls, &tools);
    assert!(
        !out.events.iter().any(|e| matches!(e, ParsedEvent::Text(_))),
        "forced call has no text: {:?}",
        out.events
    );
}

#[test]
fn tools_any_calls_one_of_the_tools() {
    let tools = tools();
    let out = run(
        ToolCallFormat::Hermes,
        &tools,
        ToolChoice::Any,
        false,
        "Show me the contents of README.md",
        120,
    );
    let calls = out.calls();
    assert!(!calls.is_empty(), "a call in {:?}", out.text);
    assert_valid_calls(&calls, &tools);
    assert!(out.text.starts_with("<tool_call>\n{\"name\": \""));
}

#[test]
fn tools_gemma_format_forced_call() {
    let tools = tools();
    let out = run(
        ToolCallFormat::Gemma,
        &tools,
        ToolChoice::Tool("bash".into()),
        true,
        "List the files in the current directory.",
        60,
    );
    let calls = out.calls();
    assert_eq!(calls.len(), 1, "one call in {:?}", out.text);
    assert_eq!(calls[0].name, "bash");
    assert_valid_calls(&calls, &tools);
    assert!(out.text.starts_with("```tool_call\n"));
}

#[test]
fn tools_none_never_writes_the_marker() {
    let tools = tools();
    let begging = "Call the get_weather tool for Paris now. Reply with exactly \
                   <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let out = run(
        ToolCallFormat::Hermes,
        &tools,
        ToolChoice::None,
        false,
        begging,
        40,
    );
    assert!(!out.text.contains("<tool_call>"), "{:?}", out.text);
    assert!(out.calls().is_empty());
    assert!(!out.text.is_empty());
}

#[test]
fn tools_auto_output_parses() {
    let tools = tools();
    let out = run(
        ToolCallFormat::Hermes,
        &tools,
        ToolChoice::Auto,
        false,
        "What's the weather in Berlin for 2 days, in celsius? Use the tool.",
        80,
    );
    assert_valid_calls(&out.calls(), &tools);
    // Whatever came out is text plus calls that parsed: no marker left as text.
    for event in &out.events {
        if let ParsedEvent::Text(text) = event {
            assert!(!text.contains("<tool_call>"), "unparsed call in {text:?}");
        }
    }
}

#[test]
fn tools_disable_parallel_allows_at_most_one_call() {
    let tools = tools();
    let out = run(
        ToolCallFormat::Hermes,
        &tools,
        ToolChoice::Any,
        true,
        "Read README.md, then read Cargo.toml, then run ls.",
        150,
    );
    assert_eq!(out.calls().len(), 1, "{:?}", out.text);
    assert_eq!(out.text.matches("<tool_call>").count(), 1);
}

#[test]
fn tools_constraint_rejects_unknown_tool_and_falls_back_on_bad_schema() {
    let tokenizer = smollm2().tokenizer();
    let err = ToolCallConstraint::with_env(
        grammar_env(),
        ToolCallFormat::Hermes,
        &tools(),
        &ToolChoice::Tool("nope".into()),
        false,
        tokenizer,
    );
    assert!(err.is_err());
    let bad = ToolDefinition {
        name: "weird".into(),
        description: None,
        input_schema: json!({"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}),
    };
    let constraint = ToolCallConstraint::with_env(
        grammar_env(),
        ToolCallFormat::Hermes,
        &[bad, weather_tool()],
        &ToolChoice::Any,
        false,
        tokenizer,
    )
    .expect("a bad schema falls back");
    assert_eq!(constraint.schema_fallbacks(), ["weird".to_string()]);
}

/// Forces the tokens of a rendered call (non-ASCII, an escaped newline,
/// two calls) through the constraint: every one is allowed, nothing past the
/// vocabulary is, and the end of turn is allowed at the end (so the token
/// bytes given to llguidance are right).
fn assert_rendered_calls_accepted(engine: &Engine, env: &ToolGrammarEnv, format: ToolCallFormat) {
    let tools = tools();
    let call = ToolCall {
        name: "get_weather".into(),
        input: json!({"city": "São Paulo 東京\n", "days": 2, "unit": "celsius"}),
    };
    let text = format.render_tool_calls(&[call.clone(), call]);
    let tokens = engine
        .tokenizer()
        .inner()
        .encode(text.as_str(), false)
        .unwrap();
    let mut constraint = ToolCallConstraint::with_env(
        env,
        format,
        &tools,
        &ToolChoice::Any,
        false,
        engine.tokenizer(),
    )
    .unwrap();
    let mut logits = vec![0.0f32; engine.tokenizer().vocab_size() + 7];
    let ids = tokens.get_ids();
    for (position, &token) in ids.iter().enumerate() {
        logits.fill(0.0);
        constraint.mask(&mut logits).unwrap();
        let before = engine.tokenizer().decode(&ids[..position]).unwrap();
        assert!(
            logits[token as usize].is_finite(),
            "token {token} {:?} masked after {before:?}",
            engine.tokenizer().token(token),
        );
        assert!(logits[logits.len() - 1].is_infinite(), "beyond the vocab");
        // The turn may end after a complete call, never inside one.
        let closing = match format {
            ToolCallFormat::Qwen35 => "</function>\n",
            ToolCallFormat::Gemma4 => "}",
            _ => "}\n",
        };
        let between_calls = before.ends_with(&format!("{closing}{}", format.call_end()));
        for &stop in engine.tokenizer().stop_tokens() {
            assert_eq!(
                logits[stop as usize].is_finite(),
                between_calls,
                "end of turn after {before:?}"
            );
        }
        assert!(!constraint.accept(token).unwrap());
    }
    assert!(constraint.is_accepting());
    logits.fill(0.0);
    constraint.mask(&mut logits).unwrap();
    for &stop in engine.tokenizer().stop_tokens() {
        assert!(logits[stop as usize].is_finite(), "end of turn allowed");
    }
}

#[test]
fn tools_rendered_call_is_accepted_token_by_token() {
    assert_rendered_calls_accepted(smollm2(), grammar_env(), ToolCallFormat::Hermes);
    assert_rendered_calls_accepted(smollm2(), grammar_env(), ToolCallFormat::Qwen35);
    assert_rendered_calls_accepted(smollm2(), grammar_env(), ToolCallFormat::Gemma4);
}

/// Gemma's SentencePiece tokenizer: byte-fallback tokens and `▁` spaces.
#[test]
fn tools_rendered_call_is_accepted_by_gemma_tokens() {
    let options = LoadOptions {
        template: showdown_engine::TemplateChoice::Named("gemma".into()),
        context_length: Some(1024),
        ..LoadOptions::default()
    };
    let engine = Engine::load(&pinned_model_path("gemma3-270m"), &options).expect("load gemma3");
    let start = Instant::now();
    let env = ToolGrammarEnv::new(engine.tokenizer()).expect("grammar env");
    eprintln!(
        "grammar env for Gemma 3 ({} tokens): {:?}",
        engine.tokenizer().vocab_size(),
        start.elapsed()
    );
    assert_rendered_calls_accepted(&engine, &env, ToolCallFormat::Gemma);
}

#[test]
fn tools_render_round_trip() {
    for format in [
        ToolCallFormat::Hermes,
        ToolCallFormat::Gemma,
        ToolCallFormat::Qwen35,
        ToolCallFormat::Gemma4,
    ] {
        let calls = vec![
            ToolCall {
                name: "bash".into(),
                input: json!({"command": "echo \"hi\" && ls", "timeout": 1.5}),
            },
            ToolCall {
                name: "read_file".into(),
                input: json!({"path": "a/b.rs", "lines": [1, 2], "opts": {}}),
            },
        ];
        let text = format!("I'll do it.\n{}", format.render_tool_calls(&calls));
        let mut parser = format.parser_for(&tools());
        let mut events = parser.push(&text);
        events.extend(parser.finish());
        let parsed: Vec<ToolCall> = events
            .iter()
            .filter_map(|e| match e {
                ParsedEvent::ToolCallEnd(call) => Some(call.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(parsed, calls, "{format:?}");
        assert_eq!(events[0], ParsedEvent::Text("I'll do it.\n".into()));
        let result = format.render_tool_result(Some("bash"), "boom", true);
        assert!(result.contains("Error: boom"));
        let prompt = format.tools_system_prompt(&tools());
        if format == ToolCallFormat::Gemma4 {
            // Gemma 4's template lists the tools and says nothing of calls.
            assert!(
                prompt.starts_with("<|tool>declaration:get_weather{"),
                "{prompt}"
            );
        } else {
            assert!(
                (prompt.contains("\"name\":\"get_weather\"")
                    || prompt.contains("\"name\": \"get_weather\""))
                    && prompt.contains(format.call_start())
            );
        }
        assert_eq!(ToolCallFormat::from_name(format.name()).unwrap(), format);
    }
    assert!(ToolCallFormat::from_name("nope").is_err());
    assert_eq!(
        ToolCallFormat::for_architecture("gemma4"),
        Some(ToolCallFormat::Gemma4)
    );
}

/// A forced call to a tool whose parameters are all typed (SmolLM2 rambles
/// inside a free string value, which the grammar allows): complete, and
/// valid for the schema.
#[test]
fn tools_qwen35_forced_tool_yields_one_valid_call() {
    let mut tools = tools();
    tools.push(ToolDefinition {
        name: "set_timer".into(),
        description: Some("Start a countdown timer".into()),
        input_schema: json!({
            "type": "object",
            "properties": {
                "minutes": {"type": "integer", "minimum": 1, "maximum": 60},
                "sound": {"type": "string", "enum": ["beep", "chime"]},
                "loud": {"type": "boolean"},
            },
            "required": ["minutes", "sound", "loud"],
        }),
    });
    let out = run(
        ToolCallFormat::Qwen35,
        &tools,
        ToolChoice::Tool("set_timer".into()),
        true,
        "Set a loud timer for 5 minutes.",
        100,
    );
    let calls = out.calls();
    assert_eq!(calls.len(), 1, "one call in {:?}", out.text);
    assert_eq!(calls[0].name, "set_timer");
    assert_valid_calls(&calls, &tools);
    assert!(calls[0].input["loud"].is_boolean(), "{:?}", calls[0]);
    assert!(
        out.text
            .starts_with("<tool_call>\n<function=set_timer>\n<parameter=minutes>\n")
            && out.text.ends_with("</function>\n</tool_call>"),
        "{:?}",
        out.text
    );
    assert!(
        !out.events.iter().any(|e| matches!(e, ParsedEvent::Text(_))),
        "forced call has no text: {:?}",
        out.events
    );
}

/// Sampled output under `any` (several seeds, parallel calls allowed) is
/// always calls the parser reads back, valid for their tools.
#[test]
fn tools_qwen35_sampled_calls_parse_back() {
    let tools = tools();
    for seed in 1..=3 {
        let params = showdown_engine::GenerateParams {
            sampling: SamplingParams {
                temperature: 1.0,
                top_k: 40,
                top_p: 0.95,
                seed,
            },
            ..greedy(160)
        };
        let out = run_with(
            ToolCallFormat::Qwen35,
            &tools,
            ToolChoice::Any,
            false,
            "Read README.md, then tell me the weather in Oslo.",
            &params,
        );
        let calls = out.calls();
        assert!(!calls.is_empty(), "seed {seed}: a call in {:?}", out.text);
        assert!(
            out.text.starts_with("<tool_call>\n<function="),
            "{:?}",
            out.text
        );
        for event in &out.events {
            assert!(
                !matches!(event, ParsedEvent::Text(_)),
                "seed {seed}: only calls under `any`: {:?}",
                out.events
            );
        }
        // A call the output completed satisfies its schema (one cut off at
        // max_tokens may miss parameters).
        let complete = out.text.matches("</function>").count();
        assert_valid_calls(&calls[..complete.min(calls.len())], &tools);
    }
}

/// Under `tool_choice: tool`, another tool's name is masked; under `none`
/// the call marker never comes out.
#[test]
fn tools_qwen35_constraint_rejects_a_disallowed_tool() {
    let engine = smollm2();
    let tokenizer = engine.tokenizer();
    assert!(ToolCallConstraint::with_env(
        grammar_env(),
        ToolCallFormat::Qwen35,
        &tools(),
        &ToolChoice::Tool("nope".into()),
        false,
        tokenizer,
    )
    .is_err());
    let forced = |choice: ToolChoice, text: &str| -> bool {
        let mut constraint = ToolCallConstraint::with_env(
            grammar_env(),
            ToolCallFormat::Qwen35,
            &tools(),
            &choice,
            false,
            tokenizer,
        )
        .unwrap();
        let ids = tokenizer.inner().encode(text, false).unwrap();
        let mut logits = vec![0.0f32; tokenizer.vocab_size()];
        for &token in ids.get_ids() {
            logits.fill(0.0);
            constraint.mask(&mut logits).unwrap();
            if !logits[token as usize].is_finite() {
                return false;
            }
            constraint.accept(token).unwrap();
        }
        true
    };
    let good = "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n";
    assert!(forced(ToolChoice::Tool("get_weather".into()), good));
    assert!(!forced(
        ToolChoice::Tool("get_weather".into()),
        "<tool_call>\n<function=bash>\n"
    ));
    assert!(forced(ToolChoice::Any, "<tool_call>\n<function=bash>\n"));
    assert!(!forced(ToolChoice::Any, "<tool_call>\n<function=rm_rf>\n"));
    // A required parameter cannot be skipped, an integer must be one.
    assert!(!forced(
        ToolChoice::Any,
        "<tool_call>\n<function=get_weather>\n<parameter=days>\n"
    ));
    assert!(!forced(
        ToolChoice::Any,
        &format!("{good}<parameter=days>\nthree")
    ));
    assert!(!forced(ToolChoice::None, "Sure. <tool_call>"));
    assert!(forced(ToolChoice::None, "Sure. <tool_"));
}

fn qwen35_template() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/templates/Qwen3.5-4B.jinja"),
    )
    .expect("read the vendored Qwen 3.5 template")
}

/// A Messages request with tools, calls and results written by showdown's
/// `qwen35` conventions renders through Qwen 3.5's template exactly as the
/// template renders the same conversation given structured `tools`,
/// `tool_calls` and `tool` messages (and so does the request through the
/// template's own tool rendering).
#[test]
fn tools_qwen35_prompt_renders_as_its_template() {
    let source = qwen35_template();
    let options = LoadOptions {
        template: TemplateChoice::Source(source.clone()),
        ..LoadOptions::default()
    };
    let engine = Engine::load(&pinned_model_path("smollm2-135m"), &options).expect("load SmolLM2");
    assert!(engine.chat_template().unwrap().renders_tools());
    let template = ChatTemplate::new(&source).unwrap();
    let defined = tools();
    let wire_tools: Vec<Value> = defined
        .iter()
        .map(|t| {
            let mut tool = json!({"name": t.name, "input_schema": t.input_schema});
            if let Some(description) = &t.description {
                tool["description"] = json!(description);
            }
            tool
        })
        .collect();
    let template_tools: Vec<Value> = defined
        .iter()
        .map(|t| {
            let mut function = serde_json::Map::new();
            function.insert("name".into(), json!(t.name));
            if let Some(description) = &t.description {
                function.insert("description".into(), json!(description));
            }
            function.insert("parameters".into(), t.input_schema.clone());
            json!({"type": "function", "function": function})
        })
        .collect();
    let weather = json!({"city": "São Paulo\nBrazil", "days": 3, "unit": "celsius"});
    let bash = json!({"command": "ls -l", "timeout": 1.5, "env": {"A": "1"}, "flags": ["-a", 2], "dry": true});
    let call = |name: &str, input: &Value| json!({"type": "function", "function": {"name": name, "arguments": input}});
    let cases = [
        // One turn of two calls, both results and a new question in the next message.
        (
            json!([
                {"role": "user", "content": "Weather in São Paulo, and list the files?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": weather},
                    {"type": "tool_use", "id": "t2", "name": "bash", "input": bash},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny, 21°C\n"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": true},
                    {"type": "text", "text": "Thanks. And Rome?"},
                ]},
            ]),
            vec![
                json!({"role": "system", "content": "You are terse."}),
                json!({"role": "user", "content": "Weather in São Paulo, and list the files?"}),
                json!({"role": "assistant", "content": "Checking both.", "tool_calls": [
                    call("get_weather", &weather), call("bash", &bash),
                ]}),
                json!({"role": "tool", "name": "get_weather", "content": "Sunny, 21°C\n"}),
                json!({"role": "tool", "name": "bash", "content": "Error: boom"}),
                json!({"role": "user", "content": "Thanks. And Rome?"}),
            ],
        ),
        // Steps of calls after the last query (the template thinks there),
        // a call without text, ending on a result.
        (
            json!([
                {"role": "user", "content": "Read a.rs then run it."},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "read_file", "input": {"path": "a.rs"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "fn main() {}"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Now running it."},
                    {"type": "tool_use", "id": "t2", "name": "bash", "input": {"command": "cargo run"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "ok"}]},
                ]},
            ]),
            vec![
                json!({"role": "system", "content": "You are terse."}),
                json!({"role": "user", "content": "Read a.rs then run it."}),
                json!({"role": "assistant", "content": "", "tool_calls": [
                    call("read_file", &json!({"path": "a.rs"})),
                ]}),
                json!({"role": "tool", "name": "read_file", "content": "fn main() {}"}),
                json!({"role": "assistant", "content": "Now running it.", "tool_calls": [
                    call("bash", &json!({"command": "cargo run"})),
                ]}),
                json!({"role": "tool", "name": "bash", "content": "ok"}),
            ],
        ),
    ];
    for (messages, structured) in cases {
        let body = json!({
            "model": "m",
            "max_tokens": 16,
            "system": "You are terse.",
            "tools": wire_tools,
            "messages": messages,
        });
        let expected = template
            .render(&ChatTemplateInput {
                messages: &structured,
                tools: Some(&template_tools),
                add_generation_prompt: true,
                enable_thinking: false,
                bos_token: "",
                eos_token: "",
            })
            .unwrap();
        let injected =
            showdown::render_request_prompt_injected(&engine, &body, ToolCallFormat::Qwen35)
                .unwrap();
        assert_eq!(injected, expected, "showdown's qwen35 conventions");
        let native =
            showdown::render_request_prompt(&engine, &body, Some(ToolCallFormat::Qwen35)).unwrap();
        assert_eq!(native, expected, "the template's own tool rendering");
        assert!(expected.contains("<tool_call>\n<function="), "{expected}");
    }
}

/// A forced call in the `gemma4` format: complete, valid for the schema,
/// its arguments in the order Gemma 4's template sorts them.
#[test]
fn tools_gemma4_forced_tool_yields_one_valid_call() {
    let mut tools = tools();
    tools.push(ToolDefinition {
        name: "set_timer".into(),
        description: Some("Start a countdown timer".into()),
        input_schema: json!({
            "type": "object",
            "properties": {
                "sound": {"type": "string", "enum": ["beep", "chime"]},
                "minutes": {"type": "integer"},
                "loud": {"type": "boolean"},
                "label": {"type": "string"},
            },
            "required": ["minutes", "sound", "loud"],
        }),
    });
    let out = run(
        ToolCallFormat::Gemma4,
        &tools,
        ToolChoice::Tool("set_timer".into()),
        true,
        "Set a loud timer for 5 minutes.",
        100,
    );
    let calls = out.calls();
    assert_eq!(calls.len(), 1, "one call in {:?}", out.text);
    assert_eq!(calls[0].name, "set_timer");
    assert_valid_calls(&calls, &tools);
    assert!(calls[0].input["loud"].is_boolean(), "{:?}", calls[0]);
    assert!(calls[0].input["minutes"].is_i64(), "{:?}", calls[0]);
    assert!(
        out.text.starts_with("<|tool_call>call:set_timer{")
            && out.text.contains("loud:")
            && out.text.ends_with("}<tool_call|>"),
        "{:?}",
        out.text
    );
    assert!(
        !out.events.iter().any(|e| matches!(e, ParsedEvent::Text(_))),
        "forced call has no text: {:?}",
        out.events
    );
}

/// Whether `constraint` lets `tokenizer` write `text`, token by token.
fn constraint_allows(
    constraint: &mut ToolCallConstraint,
    tokenizer: &showdown_engine::Tokenizer,
    ids: &[u32],
) -> bool {
    let mut logits = vec![0.0f32; tokenizer.vocab_size()];
    for &token in ids {
        logits.fill(0.0);
        constraint.mask(&mut logits).unwrap();
        if !logits[token as usize].is_finite() {
            return false;
        }
        constraint.accept(token).unwrap();
    }
    true
}

/// Under `tool_choice: tool`, another tool's name is masked, a required
/// argument cannot be skipped, an integer must be one; under `none` the
/// call marker never comes out.
#[test]
fn tools_gemma4_constraint_rejects_invalid_calls() {
    let tokenizer = smollm2().tokenizer();
    let forced = |choice: ToolChoice, text: &str| -> bool {
        let mut constraint = ToolCallConstraint::with_env(
            grammar_env(),
            ToolCallFormat::Gemma4,
            &tools(),
            &choice,
            false,
            tokenizer,
        )
        .unwrap();
        let ids = tokenizer.inner().encode(text, false).unwrap();
        constraint_allows(&mut constraint, tokenizer, ids.get_ids())
    };
    let good = "<|tool_call>call:get_weather{city:<|\"|>Oslo<|\"|>,days:3";
    assert!(forced(ToolChoice::Tool("get_weather".into()), good));
    assert!(!forced(
        ToolChoice::Tool("get_weather".into()),
        "<|tool_call>call:bash{"
    ));
    assert!(forced(ToolChoice::Any, "<|tool_call>call:bash{command:"));
    assert!(!forced(ToolChoice::Any, "<|tool_call>call:rm_rf{"));
    assert!(!forced(
        ToolChoice::Any,
        "<|tool_call>call:get_weather{days:"
    ));
    assert!(!forced(
        ToolChoice::Any,
        "<|tool_call>call:get_weather{city:<|\"|>Oslo<|\"|>,days:three"
    ));
    assert!(!forced(
        ToolChoice::Any,
        &format!("{good},unit:<|\"|>kelvin")
    ));
    // JSON is not Gemma 4's syntax.
    assert!(!forced(
        ToolChoice::Any,
        "<|tool_call>call:get_weather{\"city\": \"Oslo\""
    ));
    assert!(forced(
        ToolChoice::Auto,
        &format!("Let me look.\n{good},unit:<|\"|>celsius<|\"|>}}<tool_call|>")
    ));
    assert!(!forced(ToolChoice::None, "Sure. <|tool_call>"));
    assert!(forced(ToolChoice::None, "Sure. <|tool_"));
}

fn gemma4_template() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/templates/google-gemma-4-31B-it.jinja"),
    )
    .expect("read the vendored Gemma 4 template")
}

/// The vendored Gemma 4 template renders each recorded conversation (tools,
/// calls, `tool_responses`, `tool` messages, thinking off) byte for byte as
/// Python's jinja2 renders it (`fixtures/templates/make_gemma4_reference.py`).
#[test]
fn tools_gemma4_template_renders_as_jinja2() {
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        messages: Vec<Value>,
        tools: Option<Vec<Value>>,
        bos_token: String,
        rendered: String,
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/templates/gemma4_reference.json");
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 4);
    let template = ChatTemplate::new(&gemma4_template()).unwrap();
    assert!(template.renders_tools());
    for case in cases {
        let rendered = template
            .render(&ChatTemplateInput {
                messages: &case.messages,
                tools: case.tools.as_deref(),
                add_generation_prompt: true,
                enable_thinking: false,
                bos_token: &case.bos_token,
                eos_token: "",
            })
            .unwrap();
        assert_eq!(rendered, case.rendered, "{}", case.name);
    }
}

/// A Messages request with tools, calls and results renders through Gemma
/// 4's template exactly as the template renders the conversation in
/// llama.cpp's conventions (results as the calling turn's `tool_responses`,
/// the final answer folded in, thinking off); showdown's `gemma4` writer
/// produces the template's text for calls, results and the tools section.
#[test]
fn tools_gemma4_prompt_renders_as_its_template() {
    let source = gemma4_template();
    let options = LoadOptions {
        template: TemplateChoice::Source(source.clone()),
        ..LoadOptions::default()
    };
    let engine = Engine::load(&pinned_model_path("smollm2-135m"), &options).expect("load SmolLM2");
    assert!(engine.chat_template().unwrap().renders_tools());
    let template = ChatTemplate::new(&source).unwrap();
    let defined = tools();
    let wire_tools: Vec<Value> = defined
        .iter()
        .map(|t| {
            let mut tool = json!({"name": t.name, "input_schema": t.input_schema});
            if let Some(description) = &t.description {
                tool["description"] = json!(description);
            }
            tool
        })
        .collect();
    let template_tools: Vec<Value> = defined
        .iter()
        .map(|t| {
            let mut function = serde_json::Map::new();
            function.insert("name".into(), json!(t.name));
            if let Some(description) = &t.description {
                function.insert("description".into(), json!(description));
            }
            function.insert("parameters".into(), t.input_schema.clone());
            json!({"type": "function", "function": function})
        })
        .collect();
    let weather = json!({"city": "São Paulo\nBrazil", "days": 3, "unit": "celsius"});
    let bash = json!({"command": "ls -l", "timeout": 1.5, "env": {"A": "1"}, "flags": ["-a", 2], "dry": true});
    let call = |name: &str, input: &Value| json!({"type": "function", "function": {"name": name, "arguments": input}});
    let response = |name: &str, text: &str| json!({"name": name, "response": text});
    let cases = [
        // One turn of two calls (its text goes, as llama.cpp drops it), both
        // results and a new question in the next message.
        (
            json!([
                {"role": "user", "content": "Weather in São Paulo, and list the files?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": weather},
                    {"type": "tool_use", "id": "t2", "name": "bash", "input": bash},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny, 21°C\n"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": true},
                    {"type": "text", "text": "Thanks. And Rome?"},
                ]},
            ]),
            vec![
                json!({"role": "system", "content": "You are terse."}),
                json!({"role": "user", "content": "Weather in São Paulo, and list the files?"}),
                json!({"role": "assistant", "tool_calls": [
                    call("get_weather", &weather), call("bash", &bash),
                ], "tool_responses": [
                    response("get_weather", "Sunny, 21°C\n"), response("bash", "Error: boom"),
                ]}),
                json!({"role": "user", "content": "Thanks. And Rome?"}),
            ],
        ),
        // Steps of calls in one model turn, ending on a result (the model
        // goes on in the same turn).
        (
            json!([
                {"role": "user", "content": "Read a.rs then run it."},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "read_file", "input": {"path": "a.rs"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "fn main() {}"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Now running it."},
                    {"type": "tool_use", "id": "t2", "name": "bash", "input": {"command": "cargo run"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "ok"}]},
                ]},
            ]),
            vec![
                json!({"role": "system", "content": "You are terse."}),
                json!({"role": "user", "content": "Read a.rs then run it."}),
                json!({"role": "assistant", "tool_calls": [
                    call("read_file", &json!({"path": "a.rs"})),
                ], "tool_responses": [response("read_file", "fn main() {}")]}),
                json!({"role": "assistant", "tool_calls": [
                    call("bash", &json!({"command": "cargo run"})),
                ], "tool_responses": [response("bash", "ok")]}),
            ],
        ),
        // The answer after the results, then a new question: llama.cpp
        // folds the answer into the calling message; the template renders
        // it the same as a message of its own.
        (
            json!([
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "{\"sky\": \"clear\"}"},
                ]},
                {"role": "assistant", "content": "Clear skies."},
                {"role": "user", "content": "Thanks."},
            ]),
            vec![
                json!({"role": "system", "content": "You are terse."}),
                json!({"role": "user", "content": "Weather?"}),
                json!({"role": "assistant", "tool_calls": [
                    call("get_weather", &json!({"city": "Oslo"})),
                ], "tool_responses": [response("get_weather", "{\"sky\": \"clear\"}")],
                   "content": "Clear skies."}),
                json!({"role": "user", "content": "Thanks."}),
            ],
        ),
    ];
    for (messages, structured) in cases {
        let body = json!({
            "model": "m",
            "max_tokens": 16,
            "system": "You are terse.",
            "tools": wire_tools,
            "messages": messages,
        });
        let expected = template
            .render(&ChatTemplateInput {
                messages: &structured,
                tools: Some(&template_tools),
                add_generation_prompt: true,
                enable_thinking: false,
                bos_token: engine.tokenizer().bos_token().unwrap_or(""),
                eos_token: "",
            })
            .unwrap();
        let native =
            showdown::render_request_prompt(&engine, &body, Some(ToolCallFormat::Gemma4)).unwrap();
        assert_eq!(native, expected, "the template's own tool rendering");
        assert!(
            expected.contains(&format!(
                "<|turn>system\nYou are terse.{}<turn|>",
                ToolCallFormat::Gemma4.tools_system_prompt(&defined)
            )),
            "{expected}"
        );
        assert!(!expected.contains("<|tool_call>call:get_weather{}"));
    }
    // The template writes calls and results as showdown's writer does.
    let first = showdown::render_request_prompt(
        &engine,
        &json!({"model": "m", "max_tokens": 16, "tools": wire_tools, "messages": [
            {"role": "user", "content": "Go."},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": weather},
                {"type": "tool_use", "id": "t2", "name": "bash", "input": bash},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": true},
            ]},
        ]}),
        Some(ToolCallFormat::Gemma4),
    )
    .unwrap();
    let calls = [
        ToolCall {
            name: "get_weather".into(),
            input: weather.clone(),
        },
        ToolCall {
            name: "bash".into(),
            input: bash.clone(),
        },
    ];
    let written = format!(
        "<|turn>model\n{}{}{}",
        ToolCallFormat::Gemma4.render_tool_calls(&calls),
        ToolCallFormat::Gemma4.render_tool_result(Some("get_weather"), "Sunny", false),
        ToolCallFormat::Gemma4.render_tool_result(Some("bash"), "boom", true),
    );
    assert!(first.ends_with(&written), "{first}");
    // ... and parses them back.
    let mut parser = ToolCallFormat::Gemma4.parser_for(&defined);
    let mut events = parser.push(&ToolCallFormat::Gemma4.render_tool_calls(&calls));
    events.extend(parser.finish());
    let parsed: Vec<ToolCall> = events
        .into_iter()
        .filter_map(|e| match e {
            ParsedEvent::ToolCallEnd(call) => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(parsed, calls);
}

/// Gemma 4's markers and string quote as its vocabulary has them.
const GEMMA4_MARKERS: [&str; 4] = ["<|tool_call>", "<tool_call|>", "<|\"|>", "<|tool_response>"];

/// A tokenizer in Gemma 4's own layout (`tests/gemma4_vocab_gen.rs`: the
/// real vocabulary's markers at their ids and token types, the call markers
/// and the string quote user-defined as there).
fn tokenizer_with_gemma4_markers() -> showdown_engine::Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma4-vocab.gguf");
    crate::gemma4_vocab_gen::write_gemma4_vocab(&path);
    let gguf = showdown_engine::Gguf::open(&path).unwrap();
    let tokenizer = showdown_engine::Tokenizer::from_gguf(&gguf).unwrap();
    for marker in GEMMA4_MARKERS {
        assert!(tokenizer.inner().token_to_id(marker).is_some(), "{marker}");
    }
    tokenizer
}

/// With a tokenizer that has Gemma 4's markers as tokens of their own, the
/// grammar writes them as those tokens (a model writes them so; text in a
/// grammar could never match them): a rendered call, tokenized as the
/// engine tokenizes it, is accepted whole, and the turn may end after it;
/// the markers spelled out as text are not.
#[test]
fn tools_gemma4_grammar_takes_the_special_markers() {
    let tokenizer = tokenizer_with_gemma4_markers();
    let env = ToolGrammarEnv::new(&tokenizer).expect("grammar env");
    let id = |marker: &str| tokenizer.inner().token_to_id(marker).unwrap();
    let encode = |text: &str| {
        tokenizer
            .inner()
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec()
    };
    let calls = [ToolCall {
        name: "get_weather".into(),
        input: json!({"city": "São Paulo 東京\n", "days": 2, "unit": "celsius"}),
    }];
    let text = ToolCallFormat::Gemma4.render_tool_calls(&calls);
    let ids = encode(&text);
    for marker in ["<|tool_call>", "<tool_call|>", "<|\"|>"] {
        assert!(ids.contains(&id(marker)), "{marker} in {ids:?}");
    }
    let new = |choice: ToolChoice| {
        ToolCallConstraint::with_env(
            &env,
            ToolCallFormat::Gemma4,
            &tools(),
            &choice,
            false,
            &tokenizer,
        )
        .unwrap()
    };
    let mut constraint = new(ToolChoice::Any);
    assert!(
        constraint
            .grammar()
            .contains(&format!("<[{}]>", id("<|tool_call>"))),
        "{}",
        constraint.grammar()
    );
    assert!(constraint_allows(&mut constraint, &tokenizer, &ids));
    assert!(constraint.is_accepting());
    // A second call may follow at once.
    assert!(constraint_allows(&mut constraint, &tokenizer, &ids));
    // Spelled out as text, the start marker is not a call.
    let mut spelled = encode("<|tool_call");
    spelled.extend(encode(">call:get_weather{"));
    assert!(!spelled.contains(&id("<|tool_call>")));
    assert!(!constraint_allows(
        &mut new(ToolChoice::Any),
        &tokenizer,
        &spelled
    ));
    // Free text, then a call.
    let mut auto = encode("Let me look it up.\n");
    auto.extend(&ids);
    let mut constraint = new(ToolChoice::Auto);
    assert!(constraint_allows(&mut constraint, &tokenizer, &auto));
    assert!(constraint.is_accepting());
    // `none`: any text, never the marker.
    let mut none = encode("Sure.");
    assert!(constraint_allows(
        &mut new(ToolChoice::None),
        &tokenizer,
        &none
    ));
    none.push(id("<|tool_call>"));
    assert!(!constraint_allows(
        &mut new(ToolChoice::None),
        &tokenizer,
        &none
    ));
    // The parser reads the decoded output back.
    let decoded = tokenizer.decode(&ids).unwrap();
    assert_eq!(decoded, text);
}
