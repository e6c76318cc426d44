//! `showdown run --concurrency N`: cases in parallel against a target that
//! serves many requests at once. The shipped suites (agent cases through the
//! sandbox, tool calls, word limits) run once one case at a time and once
//! with eight in flight against the same deterministic fake target: the fake
//! sees eight requests at once (never more), and every case's score, checks
//! and transcript are those of the sequential run. The run records its
//! concurrency and says so wherever its latency is shown; `compare` will not
//! set latency taken under load against one-at-a-time latency. Then the same
//! equality on the real engine behind `builtin:` (greedy).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use showdown::{Store, StoredCase};

use crate::faults::{runner, sse};

/// Requests in flight now and the most ever at once.
#[derive(Default)]
struct Load {
    now: AtomicUsize,
    peak: AtomicUsize,
    served: AtomicUsize,
    /// How long each answer waits.
    delay: Duration,
    /// Turn requests away with 429 as a rate-limited API does: 0 never, 1
    /// the first time each request is seen, 2 always.
    refuse: std::sync::atomic::AtomicU8,
    /// Requests seen, for refusing each one's first try.
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    refused: AtomicUsize,
}

/// A Messages endpoint whose answer depends only on the request, so any
/// difference between two runs' transcripts is a difference in what the
/// runner sent. Each answer waits a little so requests overlap.
pub(crate) struct AgentFake {
    pub(crate) url: String,
    load: Arc<Load>,
}

impl AgentFake {
    pub(crate) fn start(runtime: &tokio::runtime::Runtime, delay: Duration) -> Self {
        let load = Arc::new(Load {
            delay,
            ..Load::default()
        });
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .with_state(load.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url, load }
    }

    /// 0: answer everything; 1: refuse each request's first try with 429;
    /// 2: refuse everything. Returns how many were refused so far.
    fn refuse(&self, mode: u8) -> usize {
        self.load.refuse.store(mode, Ordering::SeqCst);
        self.load.refused.swap(0, Ordering::SeqCst)
    }

    /// Forgets the peak, for the next run.
    pub(crate) fn reset(&self) -> (usize, usize) {
        (
            self.load.peak.swap(0, Ordering::SeqCst),
            self.load.served.swap(0, Ordering::SeqCst),
        )
    }
}

async fn messages(
    State(load): State<Arc<Load>>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let refuse = match load.refuse.load(Ordering::SeqCst) {
        0 => false,
        1 => load.seen.lock().unwrap().insert(body.to_string()),
        _ => true,
    };
    if refuse {
        load.refused.fetch_add(1, Ordering::SeqCst);
        return axum::response::Response::builder()
            .status(429)
            .header("retry-after", "0")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
            ))
            .unwrap();
    }
    let now = load.now.fetch_add(1, Ordering::SeqCst) + 1;
    load.peak.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(load.delay).await;
    let events = reply(&body);
    load.now.fetch_sub(1, Ordering::SeqCst);
    load.served.fetch_add(1, Ordering::SeqCst);
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from(events))
        .unwrap()
}

/// The text of a message's content (a string or text blocks).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str().or(b["content"].as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A deterministic answer: after a tool result, a sentence that quotes it
/// and the task; with the sandbox offered, a listing of the repository;
/// with other tools, a call of one of them chosen by the prompt; otherwise
/// the first words of the prompt, as many as its length says.
fn reply(body: &Value) -> String {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let prompt = messages
        .first()
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let tools: Vec<Value> = body["tools"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    let after_tool = last["content"]
        .as_array()
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"));
    if after_tool {
        let result = text_of(&last["content"]);
        let first_lines: Vec<&str> = result.lines().take(3).collect();
        let task: Vec<&str> = prompt.split_whitespace().take(6).collect();
        return text_answer(&format!(
            "Asked: {}. The repository holds {} and more; {} turns so far.",
            task.join(" "),
            first_lines.join(", "),
            messages.len() / 2
        ));
    }
    if names.contains(&"LS") {
        return tool_answer("LS", json!({"path": "/repo"}));
    }
    if !tools.is_empty() {
        let tool = &tools[prompt.len() % tools.len()];
        let schema = &tool["input_schema"];
        let mut input = serde_json::Map::new();
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            let value = match schema["properties"][name]["type"].as_str() {
                Some("number") => json!(100),
                Some("integer") => json!(30),
                Some("array") => json!([]),
                Some("boolean") => json!(true),
                _ => json!(prompt.split_whitespace().last().unwrap_or("Paris")),
            };
            input.insert(name.to_string(), value);
        }
        return tool_answer(
            tool["name"].as_str().unwrap_or_default(),
            Value::Object(input),
        );
    }
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let n = (prompt.len() % 60 + 5).min(words.len());
    text_answer(&words[..n].join(" "))
}

fn start_event(stop: &str) -> [(&'static str, Value); 2] {
    [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
                "role": "assistant", "model": "fake", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": 9}}),
        ),
    ]
}

fn text_answer(text: &str) -> String {
    let [start, end] = start_event("end_turn");
    sse(&[
        start,
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        end,
        ("message_stop", json!({"type": "message_stop"})),
    ])
}

fn tool_answer(name: &str, input: Value) -> String {
    let [start, end] = start_event("tool_use");
    sse(&[
        start,
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": "toolu_fake", "name": name, "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta":
                {"type": "input_json_delta", "partial_json": input.to_string()}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        end,
        ("message_stop", json!({"type": "message_stop"})),
    ])
}

/// What a case's outcome is, without its timings: the keys are the case,
/// the values everything scored and said.
fn outcomes(cases: &[StoredCase]) -> BTreeMap<String, Value> {
    cases
        .iter()
        .map(|c| {
            let r = &c.record;
            let mut transcript = r.transcript.clone();
            strip_timings(&mut transcript);
            (
                format!("{}/{}#{}", r.suite, r.case_id, r.sample),
                json!({
                    "passed": r.passed,
                    "score": r.score,
                    "turns": r.turns,
                    "tool_calls": r.tool_calls,
                    "error": r.error,
                    "checks": r.checks.iter().map(|k| json!([k.kind, k.passed, k.score, k.detail])).collect::<Vec<_>>(),
                    "requests": r.requests.len(),
                    "transcript": transcript,
                }),
            )
        })
        .collect()
}

/// Drops what differs between two runs of the same conversation whatever
/// the runner does: timings, the server's message ids, and usage (which
/// request of two identical ones found the other's prefix in the cache
/// depends on which was queued first).
fn strip_timings(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in ["metrics", "id", "usage"] {
                map.remove(key);
            }
            map.values_mut().for_each(strip_timings);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_timings),
        _ => {}
    }
}

/// Runs `showdown run` over the shipped default suites; returns its JSON report.
fn run_all(dir: &Path, url: &str, db: &Path, concurrency: usize) -> Value {
    let mut command = runner(dir, url, Path::new("summarize"), db, &[]);
    command.args([
        "--suite",
        "word-limit",
        "--suite",
        "tool-calls",
        "--concurrency",
        &concurrency.to_string(),
    ]);
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A line per finished case in the log, counting down to none left.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(" 0 left"), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn concurrent_cases_score_and_read_as_a_sequential_run() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = AgentFake::start(&runtime, Duration::from_millis(120));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");

    let sequential = run_all(dir.path(), &fake.url, &db, 1);
    let (peak_sequential, served_sequential) = fake.reset();
    let concurrent = run_all(dir.path(), &fake.url, &db, 8);
    let (peak_concurrent, served_concurrent) = fake.reset();
    assert_eq!(peak_sequential, 1, "one case at a time");
    assert_eq!(peak_concurrent, 8, "eight cases in flight at once, no more");
    assert_eq!(served_sequential, served_concurrent, "the same requests");
    assert_eq!(concurrent["concurrency"], 8);
    eprintln!(
        "{served_sequential} requests: one case at a time {:.1} s, eight at once {:.1} s",
        sequential["wall_s"].as_f64().unwrap(),
        concurrent["wall_s"].as_f64().unwrap()
    );

    let (seq_id, conc_id) = (
        sequential["run_id"].as_i64().unwrap(),
        concurrent["run_id"].as_i64().unwrap(),
    );
    runtime.block_on(async {
        let store = Store::open(&db).await.unwrap();
        let seq_cases = store.cases(seq_id).await.unwrap();
        let conc_cases = store.cases(conc_id).await.unwrap();
        let (seq, conc) = (outcomes(&seq_cases), outcomes(&conc_cases));
        assert_eq!(seq.len(), 50, "every shipped case ran: {:?}", seq.keys());
        assert_eq!(
            seq.keys().collect::<Vec<_>>(),
            conc.keys().collect::<Vec<_>>()
        );
        for (case, outcome) in &seq {
            assert_eq!(outcome, &conc[case], "{case} differs under concurrency");
        }
        // The equality means something: agent cases ran tools over their
        // fixtures, and both verdicts occur.
        let agent_turns = seq_cases.iter().filter(|c| c.record.turns > 1).count();
        assert!(agent_turns >= 10, "{agent_turns} multi-turn cases");
        let passed = seq_cases.iter().filter(|c| c.record.passed).count();
        assert!(passed > 0 && passed < seq_cases.len(), "{passed} passed");

        let (seq_row, conc_row) = (
            store.run(seq_id).await.unwrap().unwrap(),
            store.run(conc_id).await.unwrap().unwrap(),
        );
        assert_eq!((seq_row.concurrency, conc_row.concurrency), (1, 8));

        // The dashboard's run page and trend tooltips say so too.
        let state = showdown::DashboardState::new(showdown::DashboardConfig {
            store,
            models: None,
            compare: showdown::CompareConfig::default(),
            api_key: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            allowed_hosts: Vec::new(),
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, showdown::dashboard_router(state)).await });
        let page = |path: String| {
            let url = format!("{base}{path}");
            async move {
                let response = reqwest::get(&url).await.unwrap();
                assert_eq!(response.status(), 200, "{url}");
                response.text().await.unwrap()
            }
        };
        let run_page = page(format!("/dashboard/runs/{conc_id}")).await;
        assert!(run_page.contains("8 cases in flight at once"), "{run_page}");
        assert!(run_page.contains("TTFT p50/p95 ms at concurrency 8"));
        let seq_page = page(format!("/dashboard/runs/{seq_id}")).await;
        assert!(seq_page.contains("one case at a time"));
        assert!(!seq_page.contains("at concurrency"));
        let trend = page("/dashboard/trends?model=smollm2-135m&suite=word-limit".into()).await;
        assert!(trend.contains("concurrency 8"), "{trend}");
    });

    // Where latency is shown, it says it was taken under load.
    let show = std::process::Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args(["runs", "show", &conc_id.to_string(), "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{text}");
    assert!(text.contains("TTFT p50/p95 ms at concurrency 8"), "{text}");
    assert!(
        text.contains("latency taken with 8 cases in flight at once"),
        "{text}"
    );

    // compare sets one-at-a-time latency only beside its own kind.
    let compare = std::process::Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args([
            "compare",
            &seq_id.to_string(),
            &conc_id.to_string(),
            "--json",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&compare.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&compare.stderr)));
    assert_eq!(report["comparable"], false);
    let reasons = report["not_comparable_reasons"].to_string();
    assert!(
        reasons.contains("1 case(s) in flight (base) vs 8 (head)"),
        "{reasons}"
    );
    assert_eq!(report["head"]["concurrency"], 8);

    // A rate-limited target: each request's first try is turned away with
    // 429; the runner tries again and the run is the sequential one still.
    fake.refuse(1);
    let limited = run_all(dir.path(), &fake.url, &db, 8);
    let refused = fake.refuse(2);
    let (_, served_limited) = fake.reset();
    // Identical requests (the same first turn in two cases) are refused once.
    assert!(refused > served_sequential / 2, "{refused} refused");
    assert_eq!(served_limited, served_sequential, "each answered once");
    // One that never relents: each case ends in an error that says so.
    let out = runner(
        dir.path(),
        &fake.url,
        Path::new("word-limit"),
        &db,
        &["--concurrency", "4"],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused_always = fake.refuse(0);
    let always_id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["run_id"]
        .as_i64()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&db).await.unwrap();
        let seq = outcomes(&store.cases(seq_id).await.unwrap());
        let limited_id = limited["run_id"].as_i64().unwrap();
        let limited = outcomes(&store.cases(limited_id).await.unwrap());
        assert_eq!(seq, limited, "retried requests change nothing");
        let failed = store.cases(always_id).await.unwrap();
        assert_eq!(failed.len(), 14);
        for case in &failed {
            let error = case.record.error.clone().unwrap_or_default();
            assert!(
                error.contains("still refused after 4 retries")
                    && error.contains("429 rate_limit_error: slow down"),
                "{error}"
            );
        }
        assert_eq!(refused_always, 14 * 5, "a first try and four retries each");
    });
    fake.reset();

    // Zero is refused before anything runs.
    let zero = runner(
        dir.path(),
        &fake.url,
        Path::new("word-limit"),
        &db,
        &["--concurrency", "0"],
    )
    .output()
    .unwrap();
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--concurrency"));
    assert_eq!(fake.reset(), (0, 0), "nothing was sent");
}

/// Four short cases, two with a shared system prompt (so the prompt cache
/// serves one conversation's prefix to another while both are queued).
const FOUR_CASES: &str = r#"
name = "four"
version = 1
description = "Four short answers"

[defaults]
max_tokens = 24
max_turns = 1
temperature = 0.0

[[case]]
id = "arithmetic"
category = "word_limit"
system = "You are a terse assistant. You answer every question in as few words as you can."
prompt = "What is 2 + 2? Answer in fewer than 10 words."
[[case.check]]
kind = "max_words"
limit = 9

[[case]]
id = "capital"
category = "word_limit"
system = "You are a terse assistant. You answer every question in as few words as you can."
prompt = "What is the capital of France?"
[[case.check]]
kind = "max_words"
limit = 5

[[case]]
id = "colour"
category = "word_limit"
prompt = "Name a colour in one word."
[[case.check]]
kind = "max_words"
limit = 1

[[case]]
id = "haiku"
category = "word_limit"
prompt = "Write a haiku about the sea."
[[case.check]]
kind = "max_words"
limit = 17
"#;

/// The real engine, greedy: four cases twice each with four in flight at
/// once (the builtin server queues them to its one worker, whose prompt
/// cache is shared) answer as they do one at a time.
#[test]
fn concurrent_cases_on_the_real_engine_equal_a_sequential_run() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("four.toml");
    std::fs::write(&suite, FOUR_CASES).unwrap();
    let db = dir.path().join("runs.db");
    let run = |concurrency: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_showdown"))
            .args(["run", "--model", "smollm2-135m", "--suite"])
            .arg(&suite)
            .args([
                "--repeat",
                "2",
                "--concurrency",
                concurrency,
                "--json",
                "--db",
            ])
            .arg(&db)
            .env_remove("SHOWDOWN_DB")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        report["run_id"].as_i64().unwrap()
    };
    let (sequential, concurrent) = (run("1"), run("4"));
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(&db).await.unwrap();
        let seq = outcomes(&store.cases(sequential).await.unwrap());
        let conc = outcomes(&store.cases(concurrent).await.unwrap());
        assert_eq!(seq.len(), 8);
        assert_eq!(seq, conc, "greedy answers differ under concurrency");
        // Both samples of a case agree too (greedy), and the cases differ.
        let texts: Vec<String> = seq
            .values()
            .map(|o| o["transcript"]["final_text"].to_string())
            .collect();
        assert!(texts.chunks(2).all(|pair| pair[0] == pair[1]), "{texts:?}");
        assert!(texts[0] != texts[2], "{texts:?}");
        let run = store.run(concurrent).await.unwrap().unwrap();
        assert_eq!(run.concurrency, 4);
    });
}
