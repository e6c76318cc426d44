//! `showdown serve` over loopback: the real server, the real engine and the
//! real SmolLM2 weights, spoken to over HTTP as the Anthropic SDKs do.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};
use showdown::{resolve_model, AppState, ModelStore, ServeConfig};

/// A server on an ephemeral loopback port, running on its own thread.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl TestServer {
    /// Starts a server for the pinned SmolLM2 with `config` (its address is ignored).
    pub fn start(config: ServeConfig) -> Self {
        Self::start_model("smollm2-135m", config)
    }

    /// Starts a server for the pinned model `name` with `config`.
    pub fn start_model(name: &str, config: ServeConfig) -> Self {
        let store = ModelStore::from_env().expect("model store");
        let model = resolve_model(name, &store)
            .unwrap_or_else(|e| panic!("{name} is not pulled (run ./scripts/test): {e:#}"));
        let engine = showdown::load_engine(&model, None).expect("load the model");
        let state = Arc::new(AppState::new(config, vec![(model, engine)]).expect("app state"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                showdown::serve_on(listener, state).await.unwrap();
            });
        });
        Self { base }
    }

    /// The server most tests share: default settings plus a `claude-*` alias.
    pub fn shared() -> &'static TestServer {
        static SERVER: OnceLock<TestServer> = OnceLock::new();
        SERVER.get_or_init(|| {
            TestServer::start(ServeConfig {
                aliases: vec![("claude-*".into(), "smollm2-135m".into())],
                ..ServeConfig::default()
            })
        })
    }

    /// POSTs `body` (JSON) to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// POSTs a message and returns (status, JSON body).
    pub async fn message(&self, body: &Value) -> (u16, Value) {
        let response = self.post("/v1/messages", body).await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// POSTs a streamed message and returns its events as (name, data).
    pub async fn stream(&self, body: &Value) -> Vec<(String, Value)> {
        let response = self.post("/v1/messages", body).await;
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut events = Vec::new();
        let mut stream = response.bytes_stream().eventsource();
        while let Some(event) = stream.next().await {
            let event = event.expect("well-formed SSE");
            events.push((
                event.event,
                serde_json::from_str(&event.data).expect("JSON data"),
            ));
        }
        events
    }

    /// GET `path` as JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn ask(question: &str, max_tokens: u64) -> Value {
    json!({
        "model": "smollm2-135m",
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": question}],
    })
}

fn assert_usage_shape(usage: &Value) {
    for field in [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    ] {
        assert!(usage[field].is_u64(), "usage.{field} missing in {usage}");
    }
}

fn prompt_total(usage: &Value) -> u64 {
    usage["input_tokens"].as_u64().unwrap()
        + usage["cache_creation_input_tokens"].as_u64().unwrap()
        + usage["cache_read_input_tokens"].as_u64().unwrap()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_type: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["type"], "error", "body: {body}");
    assert_eq!(body["error"]["type"], want_type, "body: {body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(body["request_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("req_")));
}

/// A system prompt of roughly `words` words, different per `seed`.
fn long_system(words: usize, seed: &str) -> String {
    (0..words)
        .map(|i| {
            format!(
                "{seed}{}",
                ["alpha", "beta", "gamma", "delta", "rust", "cache"][i % 6]
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn message_has_anthropic_shape() {
    let server = TestServer::shared();
    let response = server.post("/v1/messages", &ask("What is Rust?", 12)).await;
    let request_id = response.headers()["request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(request_id.starts_with("req_"));
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "smollm2-135m");
    assert_eq!(body["content"][0]["type"], "text");
    assert!(!body["content"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(body["stop_reason"], "max_tokens");
    assert!(body["stop_sequence"].is_null());
    assert_usage_shape(&body["usage"]);
    assert_eq!(body["usage"]["output_tokens"], 12);
}

#[tokio::test]
async fn stop_sequence_and_end_turn() {
    let server = TestServer::shared();
    let mut request = ask("Write a sentence about the sea.", 40);
    request["stop_sequences"] = json!([" "]);
    let (status, body) = server.message(&request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stop_reason"], "stop_sequence");
    assert_eq!(body["stop_sequence"], " ");
    assert!(!body["content"][0]["text"].as_str().unwrap().contains(' '));

    let (status, body) = server.message(&ask("Say hello.", 200)).await;
    assert_eq!(status, 200);
    assert_eq!(body["stop_reason"], "end_turn", "{body}");
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() < 200);
}

#[tokio::test]
async fn stream_events_follow_the_documented_order() {
    let server = TestServer::shared();
    let mut request = ask("Name three colours.", 16);
    let (_, plain) = server.message(&request).await;
    request["stream"] = json!(true);
    let events = server.stream(&request).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(names[names.len() - 2], "message_delta");
    assert_eq!(names[names.len() - 1], "message_stop");
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["content"], json!([]));
    assert!(start["stop_reason"].is_null());
    assert_usage_shape(&start["usage"]);

    // One block at a time, indices contiguous from 0, deltas inside their block.
    let mut open: Option<u64> = None;
    let mut next = 0;
    let mut text = String::new();
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "event name and type agree");
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none());
                assert_eq!(data["index"], next);
                open = Some(next);
                next += 1;
            }
            "content_block_delta" => {
                assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                assert_eq!(data["delta"]["type"], "text_delta");
                text.push_str(data["delta"]["text"].as_str().unwrap());
            }
            "content_block_stop" => assert_eq!(open.take(), data["index"].as_u64()),
            "message_start" | "message_delta" | "message_stop" | "ping" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(open.is_none());
    assert_eq!(next, 1);
    // Greedy: the stream says exactly what the plain response says.
    assert_eq!(text, plain["content"][0]["text"].as_str().unwrap());
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_usage_shape(&delta["usage"]);
    assert_eq!(delta["usage"]["output_tokens"], 16);
    assert_eq!(prompt_total(&delta["usage"]), prompt_total(&start["usage"]));
}

#[tokio::test]
async fn count_tokens_equals_usage() {
    let server = TestServer::shared();
    let request = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 4,
        "temperature": 0,
        "system": [{"type": "text", "text": "You answer briefly.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "What is 2+2?"}
        ],
    });
    let counted = server.post("/v1/messages/count_tokens", &request).await;
    assert_eq!(counted.status().as_u16(), 200);
    let counted: Value = counted.json().await.unwrap();
    let (status, body) = server.message(&request).await;
    assert_eq!(status, 200);
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(
        counted["input_tokens"].as_u64().unwrap(),
        prompt_total(&body["usage"])
    );
    assert!(counted["input_tokens"].as_u64().unwrap() > 20);
}

#[tokio::test]
async fn second_request_reads_the_cache() {
    let server = TestServer::start(ServeConfig::default());
    let system = long_system(400, "a");
    let request = |question: &str| {
        json!({
            "model": "smollm2-135m",
            "max_tokens": 2,
            "temperature": 0,
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": question}],
        })
    };
    let (_, first) = server.message(&request("What is the first word?")).await;
    let (_, second) = server.message(&request("What is the last word?")).await;
    let first = &first["usage"];
    let second = &second["usage"];
    assert_eq!(first["cache_read_input_tokens"], 0);
    let written = first["cache_creation_input_tokens"].as_u64().unwrap();
    assert!(
        written > 400,
        "the system prompt is written at its breakpoint: {first}"
    );
    let read = second["cache_read_input_tokens"].as_u64().unwrap();
    assert!(
        read >= written,
        "the second request reads the system prompt: {second}"
    );
    assert_eq!(second["cache_creation_input_tokens"], 0);
    assert!(second["input_tokens"].as_u64().unwrap() < 30);
}

/// Automatic caching: a top-level `cache_control` puts a breakpoint after the
/// last block, so a follow-up turn reads the whole first conversation.
#[tokio::test]
async fn top_level_cache_control_caches_the_whole_prompt() {
    let server = TestServer::start(ServeConfig::default());
    let system = long_system(300, "b");
    let first_turn = json!([{"role": "user", "content": "Name the first word."}]);
    let request = |messages: &Value| {
        json!({
            "model": "smollm2-135m",
            "max_tokens": 2,
            "temperature": 0,
            "cache_control": {"type": "ephemeral"},
            "system": system,
            "messages": messages,
        })
    };
    let (status, first) = server.message(&request(&first_turn)).await;
    assert_eq!(status, 200, "{first}");
    let first = &first["usage"];
    let total = prompt_total(first);
    // Everything up to the end of the last block is written, not only the
    // system prompt: only the template's assistant header follows it.
    let written = first["cache_creation_input_tokens"].as_u64().unwrap();
    assert!(written + 8 >= total && written > 300, "{first}");
    let mut follow_up = first_turn.as_array().unwrap().clone();
    follow_up.push(json!({"role": "assistant", "content": "The"}));
    follow_up.push(json!({"role": "user", "content": "And the second?"}));
    let (_, second) = server.message(&request(&Value::Array(follow_up))).await;
    let read = second["usage"]["cache_read_input_tokens"].as_u64().unwrap();
    assert!(read >= written, "{second}");
    // It takes one of the four slots.
    let mut too_many = request(&first_turn);
    too_many["system"] = json!([
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "c", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "d", "cache_control": {"type": "ephemeral"}},
    ]);
    let (status, body) = server.message(&too_many).await;
    assert_error(status, &body, 400, "invalid_request_error");
}

#[tokio::test]
async fn no_prefix_cache_reads_nothing() {
    let mut config = ServeConfig::default();
    config.cache.enabled = false;
    let server = TestServer::start(config);
    let request = json!({
        "model": "smollm2-135m", "max_tokens": 1, "temperature": 0,
        "system": long_system(200, "b"),
        "messages": [{"role": "user", "content": "Hi"}],
    });
    server.message(&request).await;
    let (_, body) = server.message(&request).await;
    assert_eq!(body["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(
        prompt_total(&body["usage"]),
        body["usage"]["input_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn billing_nonce_does_not_defeat_the_cache() {
    let server = TestServer::start(ServeConfig::default());
    let system = long_system(300, "c");
    let request = |nonce: &str| {
        json!({
            "model": "smollm2-135m", "max_tokens": 1, "temperature": 0,
            "system": [
                {"type": "text", "text": format!("x-anthropic-billing-header: cc_version=2.0.50.a1b; cc_entrypoint=cli; cch={nonce};")},
                {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}},
            ],
            "messages": [{"role": "user", "content": "Hi"}],
        })
    };
    let (_, first) = server.message(&request("7f3a1")).await;
    let (_, second) = server.message(&request("c09e2")).await;
    let written = first["usage"]["cache_creation_input_tokens"]
        .as_u64()
        .unwrap();
    assert!(written > 300);
    assert!(second["usage"]["cache_read_input_tokens"].as_u64().unwrap() >= written);
}

#[tokio::test]
async fn mid_conversation_system_stays_in_place() {
    let server = TestServer::start(ServeConfig::default());
    let system = long_system(300, "d");
    let turn = |with_note: bool| {
        let mut messages = vec![
            json!({"role": "user", "content": "List the words."}),
            json!({"role": "assistant", "content": "alpha beta gamma"}),
        ];
        if with_note {
            messages.push(json!({"role": "system", "content": "The user prefers short answers."}));
        }
        messages.push(json!({"role": "user", "content": "Thanks. And now?"}));
        json!({"model": "smollm2-135m", "max_tokens": 1, "temperature": 0, "system": system, "messages": messages})
    };
    let (_, first) = server.message(&turn(false)).await;
    let (status, second) = server.message(&turn(true)).await;
    assert_eq!(status, 200, "{second}");
    // Hoisting the note to the front would change the prompt right after the
    // system prompt's start; kept in place, everything before it is reused.
    let before_note = prompt_total(&first["usage"]) - 12;
    assert!(
        second["usage"]["cache_read_input_tokens"].as_u64().unwrap() >= before_note,
        "{second}"
    );
}

#[tokio::test]
async fn bad_requests_get_anthropic_errors() {
    let server = TestServer::shared();
    let raw = |body: &'static str| async move {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/messages", server.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let header = response.headers()["request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["request_id"],
            header.as_str(),
            "body id equals header id"
        );
        (status, body)
    };
    let (s, b) = raw("{not json").await;
    assert_error(s, &b, 400, "invalid_request_error");
    let (s, b) =
        raw(r#"{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}]}"#).await;
    assert_error(s, &b, 400, "invalid_request_error");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    let (s, b) = raw(r#"{"model":"smollm2-135m","max_tokens":5}"#).await;
    assert_error(s, &b, 400, "invalid_request_error");
    assert!(b["error"]["message"].as_str().unwrap().contains("messages"));
    let (s, b) = raw(r#"{"model":"smollm2-135m","max_tokens":"5","messages":[]}"#).await;
    assert_error(s, &b, 400, "invalid_request_error");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    let (s, b) =
        raw(r#"{"model":"smollm2-135m","max_tokens":5,"messages":[{"role":"user","content":7}]}"#)
            .await;
    assert_error(s, &b, 400, "invalid_request_error");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("messages[0].content"));

    let (s, b) = server.message(&json!({"model": "no-such-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_error(s, &b, 404, "not_found_error");
    let (s, b) = server.get("/v1/nothing-here").await;
    assert_error(s, &b, 404, "not_found_error");

    let cc = json!({"type": "ephemeral"});
    let blocks: Vec<Value> = (0..5)
        .map(|i| json!({"type": "text", "text": format!("part {i}"), "cache_control": cc}))
        .collect();
    let (s, b) = server.message(&json!({"model": "smollm2-135m", "max_tokens": 5, "messages": [{"role": "user", "content": blocks}]})).await;
    assert_error(s, &b, 400, "invalid_request_error");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum of 4"));

    let tool = json!({"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}});
    let (s, b) = server.message(&json!({"model": "smollm2-135m", "max_tokens": 5, "tools": [tool], "tool_choice": {"type": "tool", "name": "Write"}, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_error(s, &b, 400, "invalid_request_error");
    assert!(b["error"]["message"].as_str().unwrap().contains("Write"));
    let (s, b) = server.message(&json!({"model": "smollm2-135m", "max_tokens": 5, "tools": [tool], "messages": [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_missing", "content": "data"}]}
    ]})).await;
    assert_error(s, &b, 400, "invalid_request_error");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("toolu_missing"));

    // Too long for the 8192-token context: the exact text clients key compaction on.
    let long = "word ".repeat(9000);
    let (s, b) = server.message(&ask(&long, 5)).await;
    assert_error(s, &b, 400, "invalid_request_error");
    let message = b["error"]["message"].as_str().unwrap();
    let rest = message.strip_prefix("prompt is too long: ").expect(message);
    let (tokens, max) = rest.split_once(" tokens > ").expect(message);
    assert!(tokens.parse::<u64>().unwrap() > 8191);
    assert_eq!(max, "8191 maximum");

    // max_tokens beyond the context is clamped, not refused.
    let (s, b) = server.message(&ask("Hi", 1_000_000)).await;
    assert_eq!(s, 200, "{b}");

    // And the server is still answering.
    let (s, _) = server.message(&ask("Still there?", 2)).await;
    assert_eq!(s, 200);
}

/// A body over the limit gets a 413 the client reads in full, not a broken
/// pipe: the server reads the rest of the body before it answers. Sixteen
/// times the limit overflows the loopback socket buffers, which is where a
/// server that answers and closes at once resets the connection.
#[tokio::test]
async fn oversized_body_is_413() {
    let server = TestServer::start(ServeConfig {
        max_body_bytes: 1 << 20,
        ..ServeConfig::default()
    });
    let big = "x".repeat(2 << 20);
    let (s, b) = server.message(&ask(&big, 5)).await;
    assert_error(s, &b, 413, "request_too_large");
    let huge = ask(&"x".repeat(16 << 20), 5).to_string();
    for _ in 0..3 {
        let (s, b) = server.message(&serde_json::from_str(&huge).unwrap()).await;
        assert_error(s, &b, 413, "request_too_large");
    }
    // Without a content-length (chunked): found out while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..32).map(|_| Ok(vec![b' '; 512 << 10])).collect();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", server.base))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("the 413 is read, not a broken pipe");
    let status = response.status().as_u16();
    assert_error(
        status,
        &response.json().await.unwrap(),
        413,
        "request_too_large",
    );
    // And the server still answers.
    let (s, _) = server.message(&ask("Hi", 1)).await;
    assert_eq!(s, 200);
}

/// What Anthropic refuses, refused here too, each in the envelope with the
/// right status.
#[tokio::test]
async fn hostile_requests_get_anthropic_errors() {
    let server = TestServer::shared();
    let url = format!("{}/v1/messages", server.base);
    let message = |body: &Value| {
        let mut body = body.clone();
        if body.get("messages").is_none() {
            body["messages"] = json!([{"role": "user", "content": "Hi"}]);
        }
        body["model"] = body.get("model").cloned().unwrap_or(json!("smollm2-135m"));
        body["max_tokens"] = body.get("max_tokens").cloned().unwrap_or(json!(2));
        async move { server.message(&body).await }
    };
    let refused = |status: u16, body: Value, want: u16, kind: &str, says: &str| {
        assert_error(status, &body, want, kind);
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(says), "{says:?} not in {text:?}");
    };

    let (s, b) = message(
        &json!({"messages": [{"role": "user", "content": [{"type": "hologram", "text": "x"}]}]}),
    )
    .await;
    refused(s, b, 400, "invalid_request_error", "hologram");
    let (s, b) =
        message(&json!({"messages": [{"role": "user", "content": [{"text": "no type"}]}]})).await;
    refused(s, b, 400, "invalid_request_error", "messages[0].content[0]");
    for schema in [
        json!("object"),
        json!([1, 2]),
        json!(7),
        json!({"properties": {}}),
    ] {
        let tool = json!({"name": "Read", "input_schema": schema});
        let (s, b) = message(&json!({"tools": [tool]})).await;
        refused(s, b, 400, "invalid_request_error", "tools[0].input_schema");
    }
    let (s, b) = message(&json!({"tools": [{"name": "Read"}]})).await;
    refused(s, b, 400, "invalid_request_error", "input_schema");
    let (s, b) = message(&json!({"tools": [{"type": "teleport_2099", "name": "t"}]})).await;
    refused(s, b, 400, "invalid_request_error", "teleport_2099");
    let (s, b) =
        message(&json!({"tools": [{"name": "has space", "input_schema": {"type": "object"}}]}))
            .await;
    refused(s, b, 400, "invalid_request_error", "tools[0].name");
    let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}});
    let (s, b) = message(&json!({"messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]})).await;
    refused(s, b, 400, "invalid_request_error", "reads text only");
    let tools = json!([{"name": "Read", "input_schema": {"type": "object"}}]);
    let (s, b) = message(&json!({"tools": tools, "messages": [
        {"role": "user", "content": "Read it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}]},
    ]})).await;
    refused(
        s,
        b,
        400,
        "invalid_request_error",
        "messages[2].content[0].content[0]",
    );
    let (s, b) = message(&json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Read", "input": "not an object"}]}]})).await;
    refused(s, b, 400, "invalid_request_error", "messages[0].content[0]");
    let (s, b) = message(&json!({"some_future_field": {"x": 1}})).await;
    assert_eq!(
        b["error"]["message"],
        "some_future_field: Extra inputs are not permitted"
    );
    assert_error(s, &b, 400, "invalid_request_error");
    let (s, b) =
        message(&json!({"messages": [{"role": "user", "content": "x", "name": "bob"}]})).await;
    assert_eq!(
        b["error"]["message"],
        "messages[0].name: Extra inputs are not permitted"
    );
    assert_error(s, &b, 400, "invalid_request_error");
    let (s, b) = message(&json!({"messages": [{"role": "robot", "content": "x"}]})).await;
    refused(s, b, 400, "invalid_request_error", "messages[0].role");
    let (s, b) = message(&json!({"messages": []})).await;
    refused(s, b, 400, "invalid_request_error", "at least one message");
    for (field, value) in [
        ("temperature", json!("hot")),
        ("top_k", json!(-1)),
        ("stream", json!("yes")),
        ("stop_sequences", json!("END")),
        ("system", json!(5)),
        ("metadata", json!({"user_id": 5})),
        ("max_tokens", json!(2.5)),
        ("tool_choice", json!({"type": "sometimes"})),
        ("cache_control", json!({"type": "forever"})),
    ] {
        let (s, b) = message(&json!({ field: value })).await;
        refused(s, b, 400, "invalid_request_error", field);
    }
    let (s, b) = message(&json!({"model": "gpt-5"})).await;
    refused(s, b, 404, "not_found_error", "gpt-5");
    let (s, b) = message(&json!({"model": 7})).await;
    refused(s, b, 400, "invalid_request_error", "model");

    // A body that is not said to be JSON is not read as JSON: a web page can
    // send text/plain cross-site without asking first.
    let body = ask("Hi", 1).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = reqwest::Client::new().post(&url).body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        refused(
            status,
            response.json().await.unwrap(),
            400,
            "invalid_request_error",
            "content-type",
        );
    }
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // The wrong method: 405, in the envelope.
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let response = reqwest::get(format!("{}{path}", server.base))
            .await
            .unwrap();
        assert!(response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("POST"));
        let status = response.status().as_u16();
        refused(
            status,
            response.json().await.unwrap(),
            405,
            "invalid_request_error",
            "GET",
        );
    }
    let response = reqwest::Client::new()
        .delete(format!("{}/v1/models", server.base))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    refused(
        status,
        response.json().await.unwrap(),
        405,
        "invalid_request_error",
        "DELETE",
    );

    // count_tokens checks the same way.
    let response = server
        .post("/v1/messages/count_tokens", &json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": [{"type": "hologram"}]}]}))
        .await;
    let status = response.status().as_u16();
    refused(
        status,
        response.json().await.unwrap(),
        400,
        "invalid_request_error",
        "hologram",
    );

    let (s, _) = server.message(&ask("Still there?", 2)).await;
    assert_eq!(s, 200);
}

/// DNS rebinding and cross-site requests: a `Host` or `Origin` that is not
/// loopback, an IP address or an allowed name is refused, and nothing
/// answers with CORS headers that would let a page read a response.
#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    let server = TestServer::start(ServeConfig {
        allowed_hosts: vec!["models.lan".into()],
        ..ServeConfig::default()
    });
    let client = reqwest::Client::new();
    let body = ask("Hi", 1).to_string();
    let post = |host: Option<&str>, origin: Option<&str>| {
        let mut request = client
            .post(format!("{}/v1/messages", server.base))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "models.lan.evil.example",
    ] {
        let response = post(Some(host), None).await.unwrap();
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_error(status, &body, 403, "permission_error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allowed-host"));
    }
    for host in [
        "localhost:9",
        "127.0.0.1",
        "[::1]:8080",
        "models.lan",
        "MODELS.LAN:8080",
    ] {
        let response = post(Some(host), None).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{host}");
    }
    let response = post(None, Some("https://evil.example")).await.unwrap();
    let status = response.status().as_u16();
    assert_error(
        status,
        &response.json().await.unwrap(),
        403,
        "permission_error",
    );
    let response = post(None, Some("null")).await.unwrap();
    assert_eq!(response.status().as_u16(), 403);

    // A same-machine page may call, but gets no CORS grant to read across
    // origins: no header says any origin may.
    let response = client
        .get(format!("{}/v1/models", server.base))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    for (name, _) in response.headers() {
        assert!(!name.as_str().starts_with("access-control-"), "{name}");
    }
    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/messages", server.base),
        )
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-api-key")
        .send()
        .await
        .unwrap();
    assert!(!preflight.status().is_success(), "{}", preflight.status());
    for (name, _) in preflight.headers() {
        assert!(!name.as_str().starts_with("access-control-"), "{name}");
    }
}

#[tokio::test]
async fn client_extras_are_accepted() {
    let server = TestServer::shared();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages?beta=true", server.base))
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31,context-management-2025-06-27")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(&json!({
            "model": "smollm2-135m", "max_tokens": 3, "temperature": 0,
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "disabled"},
            "context_management": {"edits": []},
            "output_config": {"effort": "low"},
            "service_tier": "auto",
            "tools": [{"name": "LS", "description": "List", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}, "strict": true, "defer_loading": false}],
            "tool_choice": {"type": "none"},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let head = reqwest::Client::new()
        .head(&server.base)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
}

#[tokio::test]
async fn api_key_is_checked() {
    let server = TestServer::start(ServeConfig {
        api_key: Some("sk-test-123".into()),
        ..ServeConfig::default()
    });
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", server.base);
    let body = ask("Hi", 1).to_string();
    let none = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = none.status().as_u16();
    assert_error(
        status,
        &none.json().await.unwrap(),
        401,
        "authentication_error",
    );
    let wrong = client
        .post(&url)
        .header("x-api-key", "nope")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = wrong.status().as_u16();
    assert_error(
        status,
        &wrong.json().await.unwrap(),
        401,
        "authentication_error",
    );
    let right = client
        .post(&url)
        .header("x-api-key", "sk-test-123")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);
    let bearer = client
        .post(&url)
        .header("authorization", "Bearer sk-test-123")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 200);
    let head = client.head(&server.base).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
}

#[tokio::test]
async fn models_are_listed_and_paged() {
    let server = TestServer::shared();
    let (s, list) = server.get("/v1/models").await;
    assert_eq!(s, 200);
    assert_eq!(list["data"][0]["type"], "model");
    assert_eq!(list["data"][0]["id"], "smollm2-135m");
    assert!(list["data"][0]["created_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], "smollm2-135m");
    let (s, page) = server.get("/v1/models?limit=1&after_id=smollm2-135m").await;
    assert_eq!(s, 200);
    assert_eq!(page["data"], json!([]));
    let (s, b) = server.get("/v1/models?limit=0").await;
    assert_error(s, &b, 400, "invalid_request_error");
    let (s, one) = server.get("/v1/models/smollm2-135m").await;
    assert_eq!(s, 200);
    assert_eq!(one["id"], "smollm2-135m");
    let (s, b) = server.get("/v1/models/gpt-5").await;
    assert_error(s, &b, 404, "not_found_error");
}

#[tokio::test]
async fn full_queue_sheds_load_with_529() {
    let server = Arc::new(TestServer::start(ServeConfig {
        queue_depth: 1,
        ..ServeConfig::default()
    }));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let server = server.clone();
        handles.push(tokio::spawn(async move {
            server
                .message(&ask("Write a long story about a dragon.", 64))
                .await
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut statuses = Vec::new();
    for handle in handles {
        let (status, body) = handle.await.unwrap();
        if status == 529 {
            assert_error(status, &body, 529, "overloaded_error");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&529), "{statuses:?}");
}

/// The served model's stats once one generation was cancelled, polled every
/// 100 ms at most `polls` times.
async fn wait_for_one_cancelled(server: &TestServer, polls: usize) -> Value {
    let mut stats = Value::Null;
    for _ in 0..polls {
        let (_, body) = server.get("/showdown/stats").await;
        stats = body["models"][0]["stats"].clone();
        if stats["cancelled"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats["cancelled"], 1, "{stats}");
    stats
}

#[tokio::test]
async fn disconnect_cancels_generation() {
    let server = TestServer::start(ServeConfig::default());
    let mut request = ask("Write a very long story about a dragon.", 4000);
    request["stream"] = json!(true);
    let response = server.post("/v1/messages", &request).await;
    let mut stream = response.bytes_stream().eventsource();
    // Read until the first text arrives, then hang up.
    while let Some(event) = stream.next().await {
        if event.unwrap().event == "content_block_delta" {
            break;
        }
    }
    drop(stream);
    // The worker is free at once: the next request does not wait for the
    // abandoned 4000 tokens (minutes of decoding).
    let started = std::time::Instant::now();
    let (status, body) = server.message(&ask("Hi", 2)).await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        waited < Duration::from_secs(20),
        "the next request waited {waited:?}"
    );
    eprintln!("after a hang-up the next request took {waited:?}");
    // One worker runs one generation at a time: that the next one is done
    // means the abandoned one ended, and it ended cancelled, not finished.
    let stats = wait_for_one_cancelled(&server, 1).await;
    assert!(
        stats["generated_tokens"].as_u64().unwrap() < 4000,
        "{stats}"
    );
}

/// A client that hangs up while its long prompt is still being prefilled
/// cancels the prefill: nothing is generated for it (before, the stream
/// only noticed at its first token, so an abandoned 19k-token Claude Code
/// request held the engine for minutes while the client retried).
#[tokio::test]
async fn disconnect_during_prefill_cancels_it() {
    let server = TestServer::start(ServeConfig::default());
    let text: String = (0..400)
        .map(|i| format!("Line {i}: the quick brown fox jumps over the lazy dog.\n"))
        .collect();
    let mut request = ask(&format!("Summarize:\n{text}"), 64);
    request["stream"] = json!(true);
    let response = server.post("/v1/messages", &request).await;
    let mut stream = response.bytes_stream().eventsource();
    // message_start is sent once the job has started, before the prefill ends.
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.event, "message_start");
    drop(stream);
    let stats = wait_for_one_cancelled(&server, 1200).await;
    assert_eq!(
        stats["generated_tokens"], 0,
        "cancelled inside the prefill: {stats}"
    );
}

/// The official Anthropic Python SDK against the server: installed by
/// `./scripts/test` into `target/sdk-venv` (or name a Python with
/// SHOWDOWN_SDK_PYTHON).
#[test]
fn anthropic_python_sdk() {
    sdk_check("smollm2-135m");
}

/// The same SDK checks on Qwen2.5-Coder-0.5B, whose own chat template
/// renders the tools, calls and results.
#[test]
fn anthropic_python_sdk_on_qwen2_with_the_models_own_tool_template() {
    sdk_check("qwen2.5-coder-0.5b");
}

/// The same on Qwen2.5-Coder-1.5B: not in CI (a 1 GiB download and a slower
/// model); run it with `cargo test -- --ignored anthropic_python_sdk_on_qwen2_1_5b`
/// after `showdown models pull qwen2.5-coder-1.5b`.
#[test]
#[ignore = "needs qwen2.5-coder-1.5b (1 GiB), not pulled in CI"]
fn anthropic_python_sdk_on_qwen2_1_5b() {
    sdk_check("qwen2.5-coder-1.5b");
}

fn sdk_check(model: &str) {
    let python = std::env::var("SHOWDOWN_SDK_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/sdk-venv/bin/python").to_string()
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "no Python with the anthropic SDK at {python}: run ./scripts/test, which installs it"
    );
    let server = TestServer::start_model(
        model,
        ServeConfig {
            api_key: Some("sk-sdk-test".into()),
            ..ServeConfig::default()
        },
    );
    let output = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/anthropic_sdk_check.py"
        ))
        .env("ANTHROPIC_BASE_URL", &server.base)
        .env("ANTHROPIC_API_KEY", "sk-sdk-test")
        .env("SHOWDOWN_MODEL", model)
        .output()
        .expect("run the SDK check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK check failed on {model}:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
}

#[tokio::test]
async fn side_request_keeps_the_conversation_cached() {
    let server = TestServer::start(ServeConfig::default());
    let main_turn = |question: &str| {
        json!({
            "model": "smollm2-135m", "max_tokens": 1, "temperature": 0,
            "system": long_system(300, "main"),
            "messages": [{"role": "user", "content": question}],
        })
    };
    let (_, first) = server.message(&main_turn("First question?")).await;
    // A side request (a title, a sub-agent) with its own long system prompt.
    let side = json!({
        "model": "smollm2-135m", "max_tokens": 1, "temperature": 0,
        "system": long_system(300, "side"),
        "messages": [{"role": "user", "content": "Title for this chat?"}],
    });
    server.message(&side).await;
    let (_, again) = server.message(&main_turn("Second question?")).await;
    let system_tokens = prompt_total(&first["usage"]) - 10;
    assert!(
        again["usage"]["cache_read_input_tokens"].as_u64().unwrap() >= system_tokens,
        "the side request evicted the conversation: {again}"
    );
    let (_, stats) = server.get("/showdown/stats").await;
    assert_eq!(stats["models"][0]["stats"]["cache_slots"], 2, "{stats}");
}

fn weather_tool() -> Value {
    json!({
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city", "unit"]
        }
    })
}

#[tokio::test]
async fn forced_tool_use_streams_input_json() {
    let server = TestServer::shared();
    let request = json!({
        "model": "smollm2-135m", "max_tokens": 80, "temperature": 0, "stream": true,
        "tools": [weather_tool()],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
    });
    let events = server.stream(&request).await;
    let start = events
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    let block = &start.1["content_block"];
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({}));
    let index = start.1["index"].clone();
    let fragments: Vec<String> = events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["index"] == index)
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    // The arguments stream as they are generated, a token or so at a time.
    assert!(fragments.len() >= 4, "{fragments:?}");
    let input = fragments.concat();
    let input: Value = serde_json::from_str(&input).expect("the streamed input is JSON");
    assert!(input["city"].is_string(), "{input}");
    assert!(
        ["celsius", "fahrenheit"].contains(&input["unit"].as_str().unwrap()),
        "{input}"
    );
    let uses = events
        .iter()
        .filter(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .count();
    assert_eq!(uses, 1, "disable_parallel_tool_use allows one call");
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn tool_choice_none_never_calls_and_results_round_trip() {
    let server = TestServer::shared();
    let (status, body) = server
        .message(&json!({
            "model": "smollm2-135m", "max_tokens": 60, "temperature": 0,
            "tools": [weather_tool()],
            "tool_choice": {"type": "none"},
            "messages": [{"role": "user", "content": "Call get_weather for Paris now, using the tool."}],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["content"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["type"] == "text"),
        "{body}"
    );
    assert_ne!(body["stop_reason"], "tool_use");

    // A tool_use / tool_result round trip (string and block content, is_error).
    let (status, body) = server
        .message(&json!({
            "model": "smollm2-135m", "max_tokens": 20, "temperature": 0,
            "tools": [weather_tool()],
            "messages": [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "unit": "celsius"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Oslo", "unit": "celsius"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 C, sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "service down"}], "is_error": true}
                ]}
            ],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(["end_turn", "max_tokens", "tool_use"].contains(&body["stop_reason"].as_str().unwrap()));
}

// ---- the real binary --------------------------------------------------------------

/// `showdown serve ARGS` on a free loopback port, its stderr in a file; ready
/// once the port answers (the model loads before the server binds).
struct SpawnedServer {
    base: String,
    pid: u32,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _child: crate::util::ChildGuard,
}

impl SpawnedServer {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", crate::util::free_port());
        let stderr = dir.path().join("stderr.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_showdown"))
            .args(["serve", "--model", "smollm2-135m", "--addr", &addr, "--db"])
            .arg(dir.path().join("no.db"))
            .args(args)
            .env_remove("SHOWDOWN_API_KEY")
            .env_remove("SHOWDOWN_ALLOWED_HOSTS")
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let guard = crate::util::ChildGuard(child);
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "showdown serve did not start: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            base: format!("http://{addr}"),
            pid,
            stderr,
            _dir: dir,
            _child: guard,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }

    /// Resident memory in MiB (Linux; `None` elsewhere).
    fn rss_mib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024)
    }

    async fn message(&self, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/messages", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

/// `--log-prompts` logs each rendered prompt at info; without it no prompt
/// text reaches the log, though the request itself is logged.
#[tokio::test]
async fn prompts_are_logged_only_with_log_prompts() {
    let marker = "zebra-quartz-4711";
    let request = ask(&format!("Repeat {marker}."), 1);
    for (flag, logged) in [(None, false), (Some("--log-prompts"), true)] {
        let server = SpawnedServer::start(flag.as_slice());
        let (status, body) = server.message(&request).await;
        assert_eq!(status, 200, "{body}");
        // The log line is written before the answer goes out; give the
        // writer a moment all the same.
        let mut log = server.stderr();
        for _ in 0..20 {
            if log.contains("output_tokens") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            log = server.stderr();
        }
        assert!(
            log.contains("output_tokens"),
            "the request is logged: {log}"
        );
        assert_eq!(log.contains(marker), logged, "{flag:?}: {log}");
        if logged {
            let line = log.lines().find(|l| l.contains(marker)).unwrap();
            assert!(line.contains("INFO") && line.contains("prompt"), "{line}");
        }
    }
}

/// `--allowed-host` (repeatable) and `SHOWDOWN_ALLOWED_HOSTS` (comma-separated)
/// add names the real binary answers to; other names stay refused.
#[tokio::test]
async fn allowed_hosts_come_from_the_flag_or_the_environment() {
    let by_flag = SpawnedServer::start(&[
        "--allowed-host",
        "box.lan",
        "--allowed-host",
        "proxy.lan:8443",
    ]);
    let by_env =
        SpawnedServer::start_with_env(&[], &[("SHOWDOWN_ALLOWED_HOSTS", "box.lan,proxy.lan:8443")]);
    for server in [&by_flag, &by_env] {
        for (host, want) in [
            ("box.lan", 200),
            ("BOX.lan:8080", 200),
            ("proxy.lan:8443", 200),
            ("proxy.lan:80", 403),
            ("evil.example", 403),
            ("localhost:1", 200),
        ] {
            let response = reqwest::Client::new()
                .get(format!("{}/v1/models", server.base))
                .header("host", host)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), want, "{host}");
        }
    }
}

/// What one streamed request came to under load.
enum Outcome {
    /// 200 and the whole stream: its text and stop reason.
    Served(String, String),
    /// 529 `overloaded_error` with `retry-after`.
    Shed,
}

async fn stream_or_shed(base: &str, body: &Value) -> Outcome {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/messages"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 529 {
        let retry_after = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(retry_after.parse::<u64>().is_ok(), "{retry_after}");
        assert_error(
            529,
            &response.json().await.unwrap(),
            529,
            "overloaded_error",
        );
        return Outcome::Shed;
    }
    assert_eq!(status, 200);
    let mut stream = response.bytes_stream().eventsource();
    let (mut text, mut stop_reason, mut stopped) = (String::new(), String::new(), false);
    while let Some(event) = stream.next().await {
        let event = event.expect("well-formed SSE");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        match event.event.as_str() {
            "content_block_delta" => text.push_str(data["delta"]["text"].as_str().unwrap()),
            "message_delta" => stop_reason = data["delta"]["stop_reason"].as_str().unwrap().into(),
            "message_stop" => stopped = true,
            "error" => panic!("the stream failed: {data}"),
            _ => {}
        }
    }
    assert!(stopped, "the stream was cut short: {text:?}");
    Outcome::Served(text, stop_reason)
}

/// 32 streamed requests at once into a queue of 4: each is answered in full
/// or shed with 529 and `retry-after`; none hangs; the server answers
/// normally afterwards, within 64 MiB of the memory it held before.
#[tokio::test]
async fn a_burst_of_32_streams_is_served_or_shed_and_nothing_is_lost() {
    let server = SpawnedServer::start(&["--queue", "4"]);
    let mut request = ask("Count from one to ten.", 8);
    let (status, plain) = server.message(&request).await;
    assert_eq!(status, 200, "{plain}");
    let expected = plain["content"][0]["text"].as_str().unwrap().to_string();
    let rss_before = server.rss_mib();
    request["stream"] = json!(true);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let base = server.base.clone();
            let request = request.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(120), stream_or_shed(&base, &request))
                    .await
                    .expect("a request hung")
            })
        })
        .collect();
    let (mut served, mut shed) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Served(text, stop_reason) => {
                // Greedy and the same prompt: every answer is the whole answer.
                assert_eq!(text, expected);
                assert_eq!(stop_reason, plain["stop_reason"].as_str().unwrap());
                served += 1;
            }
            Outcome::Shed => shed += 1,
        }
    }
    eprintln!("32 concurrent streams: {served} served in full, {shed} shed with 529");
    assert_eq!(served + shed, 32);
    // One generating and four queued are always taken.
    assert!(served >= 5, "{served} served");
    assert!(shed >= 1, "a queue of 4 sheds some of 32");

    request["stream"] = json!(false);
    let (status, after) = server.message(&request).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["content"][0]["text"], plain["content"][0]["text"]);
    if let (Some(before), Some(now)) = (rss_before, server.rss_mib()) {
        eprintln!("RSS {before} MiB before the burst, {now} MiB after");
        assert!(
            now <= before + 64,
            "RSS {before} MiB before, {now} MiB after"
        );
    }
}
