//! Hostile input, as property tests: arbitrary JSON, mutated requests and raw
//! bytes into `/v1/messages` and `/v1/messages/count_tokens` (the router in
//! process, through `tower::ServiceExt::oneshot`) always get a valid answer:
//! Anthropic's error envelope with a 4xx, or a well-formed success; never a
//! panic, never a 5xx. Arbitrary splits and garbage into the tool-call parser
//! never panic, and splitting the output never changes what it parses to.
//!
//! Case counts are per property; `PROPTEST_SCALE` multiplies them (a value of
//! 10 runs ten times the CI count) for a longer run.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};
use showdown::{resolve_model, server_app, AppState, ModelStore, ServeConfig, ToolCallFormat};
use tower::ServiceExt;

/// `base` cases ([`crate::util::proptest_cases`]).
fn config(base: u32) -> Config {
    Config {
        cases: crate::util::proptest_cases(base),
        failure_persistence: None,
        ..Config::default()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The API with no model loaded: every request that passes validation ends
/// in a 404 for its model, so nothing runs an engine.
fn no_model_app() -> &'static Router {
    static APP: OnceLock<Router> = OnceLock::new();
    APP.get_or_init(|| {
        let config = ServeConfig {
            max_body_bytes: 64 << 10,
            ..ServeConfig::default()
        };
        server_app(Arc::new(AppState::new(config, Vec::new()).unwrap()))
    })
}

/// The API over the real SmolLM2, for requests that get as far as the
/// prompt and the engine.
fn model_app() -> &'static Router {
    static APP: OnceLock<Router> = OnceLock::new();
    APP.get_or_init(|| {
        let store = ModelStore::from_env().expect("model store");
        let model = resolve_model("smollm2-135m", &store).expect("smollm2-135m is pulled");
        let engine = showdown::load_engine(&model, None).expect("load the model");
        let state = AppState::new(ServeConfig::default(), vec![(model, engine)]).unwrap();
        server_app(Arc::new(state))
    })
}

/// What a request got back.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

fn send(app: &Router, path: &str, body: Vec<u8>) -> Answer {
    runtime().block_on(async {
        let request = Request::post(path)
            .header(header::HOST, "localhost:8080")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            content_type,
            body,
        }
    })
}

const ERROR_TYPES: [&str; 8] = [
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
];

/// A 4xx in the envelope, or a success of the endpoint's shape.
fn check_answer(path: &str, answer: &Answer) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(&answer.body);
    prop_assert!(
        answer.status.is_success() || answer.status.is_client_error(),
        "{path}: status {} ({text})",
        answer.status
    );
    if answer.content_type.starts_with("text/event-stream") {
        prop_assert_eq!(answer.status, StatusCode::OK);
        prop_assert!(text.starts_with("event: message_start"), "{text}");
        prop_assert!(
            text.contains("event: message_stop"),
            "the stream ends properly: {text}"
        );
        return Ok(());
    }
    prop_assert!(answer.content_type.starts_with("application/json"));
    let body: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| TestCaseError::fail(format!("{path}: not JSON ({e}): {text}")))?;
    if answer.status.is_success() {
        if path.ends_with("count_tokens") {
            prop_assert!(body["input_tokens"].is_u64(), "{body}");
        } else {
            prop_assert_eq!(&body["type"], "message", "{}", body);
            prop_assert!(body["content"].is_array(), "{body}");
        }
        return Ok(());
    }
    prop_assert_eq!(&body["type"], "error", "{}", body);
    let kind = body["error"]["type"].as_str().unwrap_or_default();
    prop_assert!(ERROR_TYPES.contains(&kind), "{body}");
    prop_assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    prop_assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req_")),
        "{body}"
    );
    Ok(())
}

/// Names the schema uses, so arbitrary objects often hit real fields.
const FIELD_NAMES: [&str; 32] = [
    "model",
    "messages",
    "max_tokens",
    "role",
    "content",
    "type",
    "text",
    "system",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "name",
    "description",
    "input_schema",
    "properties",
    "cache_control",
    "ttl",
    "source",
    "data",
    "id",
    "input",
    "tool_use_id",
    "is_error",
    "metadata",
    "thinking",
    "disable_parallel_tool_use",
    "citations",
    "user_id",
];

/// Values the schema gives meaning to.
const WORDS: [&str; 24] = [
    "smollm2-135m",
    "user",
    "assistant",
    "system",
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "server_tool_use",
    "object",
    "string",
    "ephemeral",
    "5m",
    "1h",
    "auto",
    "any",
    "tool",
    "none",
    "custom",
    "web_search_20250305",
    "toolu_01",
    "",
];

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(&FIELD_NAMES[..]).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-3i64..10).prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        proptest::sample::select(&WORDS[..]).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid request, the starting point for mutations.
fn valid_request() -> Value {
    json!({
        "model": "smollm2-135m",
        "max_tokens": 1,
        "temperature": 0,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "tool_choice": {"type": "auto"},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "18 C"}]},
                {"type": "text", "text": "Thanks"}
            ]}
        ],
    })
}

/// Places in [`valid_request`] a mutation may hit.
const POINTERS: [&str; 24] = [
    "",
    "/model",
    "/max_tokens",
    "/temperature",
    "/system",
    "/system/0",
    "/system/0/type",
    "/system/0/cache_control",
    "/tools",
    "/tools/0",
    "/tools/0/name",
    "/tools/0/input_schema",
    "/tools/0/input_schema/type",
    "/tool_choice",
    "/messages",
    "/messages/0",
    "/messages/0/role",
    "/messages/0/content",
    "/messages/1/content/0",
    "/messages/1/content/1/input",
    "/messages/1/content/1/id",
    "/messages/2/content/0/tool_use_id",
    "/messages/2/content/0/content",
    "/messages/2/content/1/type",
];

#[derive(Debug, Clone)]
enum Mutation {
    Set(&'static str, Value),
    Remove(&'static str),
    AddField(&'static str, String, Value),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let pointer = proptest::sample::select(&POINTERS[..]);
    prop_oneof![
        3 => (pointer.clone(), arb_json()).prop_map(|(p, v)| Mutation::Set(p, v)),
        1 => pointer.clone().prop_map(Mutation::Remove),
        1 => (pointer, arb_key(), arb_json()).prop_map(|(p, k, v)| Mutation::AddField(p, k, v)),
    ]
}

fn apply(request: &mut Value, mutation: &Mutation) {
    let split = |pointer: &str| -> Option<(String, String)> {
        let (parent, last) = pointer.rsplit_once('/')?;
        Some((parent.to_string(), last.to_string()))
    };
    match mutation {
        Mutation::Set(pointer, value) => {
            if let Some(slot) = request.pointer_mut(pointer) {
                *slot = value.clone();
            }
        }
        Mutation::Remove(pointer) => {
            if let Some((parent, last)) = split(pointer) {
                match request.pointer_mut(&parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&last);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Mutation::AddField(pointer, key, value) => {
            if let Some(Value::Object(map)) = request.pointer_mut(pointer) {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Keeps a mutated request cheap to generate: a few tokens at most.
fn bounded(mut request: Value) -> Value {
    if let Some(n) = request.get("max_tokens").and_then(Value::as_u64) {
        if n > 4 {
            request["max_tokens"] = json!(4);
        }
    }
    request
}

fn arb_mutated() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(arb_mutation(), 1..4),
        any::<bool>(),
    )
        .prop_map(|(mutations, stream)| {
            let mut request = valid_request();
            if stream {
                request["stream"] = json!(true);
            }
            for mutation in &mutations {
                apply(&mut request, mutation);
            }
            bounded(request)
        })
}

const PATHS: [&str; 2] = ["/v1/messages", "/v1/messages/count_tokens"];

/// Runs `cases` of `strategy` (a body and which of [`PATHS`]) against
/// `app`; returns how many answers had each status.
fn run(
    cases: u32,
    strategy: impl Strategy<Value = (Vec<u8>, usize)>,
    app: fn() -> &'static Router,
) -> std::collections::BTreeMap<u16, usize> {
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::new());
    TestRunner::new(config(cases))
        .run(&strategy, |(body, path)| {
            let path = PATHS[path];
            let answer = send(app(), path, body);
            *statuses
                .lock()
                .unwrap()
                .entry(answer.status.as_u16())
                .or_insert(0) += 1;
            check_answer(path, &answer)
        })
        .unwrap();
    let statuses = statuses.into_inner().unwrap();
    eprintln!("statuses: {statuses:?}");
    statuses
}

#[test]
fn arbitrary_json_gets_an_envelope() {
    let strategy = (
        prop_oneof![
            arb_json(),
            proptest::collection::vec((arb_key(), arb_json()), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ],
        0..2usize,
    )
        .prop_map(|(v, path)| (v.to_string().into_bytes(), path));
    run(1000, strategy, no_model_app);
}

#[test]
fn mutated_requests_get_an_envelope() {
    let strategy =
        (arb_mutated(), 0..2usize).prop_map(|(v, path)| (v.to_string().into_bytes(), path));
    let statuses = run(1000, strategy, no_model_app);
    // Some mutations leave a valid request (the model is then not found):
    // the mutations reach past the first check.
    assert!(statuses.get(&404).is_some_and(|&n| n > 0), "{statuses:?}");
}

#[test]
fn arbitrary_bytes_and_truncations_get_an_envelope() {
    let valid = valid_request().to_string().into_bytes();
    let strategy = (
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            (0..valid.len()).prop_map(move |n| valid[..n].to_vec()),
            // Past the 64 KiB limit of the no-model server.
            (64usize..80).prop_map(|kib| vec![b' '; kib << 10]),
        ],
        0..2usize,
    );
    run(500, strategy, no_model_app);
}

/// The same mutations against the real model: what passes validation is
/// rendered, tokenized and generated (a token or four), streamed or not.
#[test]
fn mutated_requests_on_a_real_model_get_a_valid_answer() {
    let strategy =
        (arb_mutated(), 0..2usize).prop_map(|(v, path)| (v.to_string().into_bytes(), path));
    let statuses = run(150, strategy, model_app);
    assert!(statuses.get(&200).is_some_and(|&n| n > 0), "{statuses:?}");
    // The unmutated request is served, both ways.
    for path in PATHS {
        let answer = send(model_app(), path, valid_request().to_string().into_bytes());
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }
}

// ---- the tool-call parser ---------------------------------------------------------

/// Pieces of model output a tool-call parser has to cope with.
const FRAGMENTS: [&str; 20] = [
    "<tool_call>",
    "</tool_call>",
    "```tool_call",
    "```json",
    "```",
    "{",
    "}",
    "\"name\"",
    ": ",
    "\"get_weather\"",
    ", ",
    "\"arguments\"",
    "{\"city\": \"Paris\"}",
    "\"",
    "\\",
    "\n",
    " ",
    "é",
    "🦀",
    "text",
];

fn arb_output() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::sample::select(&FRAGMENTS[..]).prop_map(str::to_string),
            1 => any::<String>(),
            1 => proptest::collection::vec(any::<u8>(), 0..16)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

/// Text and completed calls, with runs of text joined: what a split must not
/// change (the input fragments of a call may be cut differently).
fn outcome(events: Vec<showdown::ParsedEvent>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut text = String::new();
    for event in events {
        match event {
            showdown::ParsedEvent::Text(t) => text.push_str(&t),
            showdown::ParsedEvent::ToolCallEnd(call) => {
                out.push(std::mem::take(&mut text));
                out.push(format!("CALL {} {}", call.name, call.input));
            }
            _ => {}
        }
    }
    out.push(text);
    out
}

fn parse_in_pieces(format: ToolCallFormat, text: &str, cuts: &[usize]) -> Vec<String> {
    let mut parser = format.parser();
    let mut events = Vec::new();
    let mut from = 0;
    let mut cuts: Vec<usize> = cuts
        .iter()
        .map(|c| {
            // Byte positions, moved back to the nearest character boundary.
            let mut at = c % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        })
        .collect();
    cuts.sort_unstable();
    for at in cuts.into_iter().chain([text.len()]) {
        if at > from {
            events.extend(parser.push(&text[from..at]));
            from = at;
        }
    }
    events.extend(parser.finish());
    outcome(events)
}

#[test]
fn tool_call_parser_survives_any_split_of_any_output() {
    let strategy = (
        arb_output(),
        proptest::collection::vec(any::<usize>(), 0..12),
        any::<bool>(),
    );
    TestRunner::new(config(2000))
        .run(&strategy, |(text, cuts, gemma)| {
            let format = if gemma {
                ToolCallFormat::Gemma
            } else {
                ToolCallFormat::Hermes
            };
            let whole = parse_in_pieces(format, &text, &[]);
            let pieces = parse_in_pieces(format, &text, &cuts);
            prop_assert_eq!(&whole, &pieces, "{:?} cut at {:?}", text, cuts);
            // Byte by byte (every character on its own) as well.
            let every: Vec<usize> = (0..=text.len()).collect();
            prop_assert_eq!(&whole, &parse_in_pieces(format, &text, &every));
            Ok(())
        })
        .unwrap();
}
