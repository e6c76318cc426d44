//! The runner against targets that misbehave: hostile or malformed SSE
//! streams, a target that never answers, one that stalls or hangs up
//! mid-stream, a real `showdown serve` killed mid-run, and a runner killed
//! while another process reads its database. Each case's error is recorded,
//! the run ends complete (or incomplete when the runner itself dies) and the
//! database stays consistent.
//!
//! The fake targets are raw TCP servers that write whatever bytes a test
//! gives them, so nothing between them and the client cleans the stream up.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Value};
use showdown::{MessagesClient, Store, Timeouts};

use crate::util::{free_port, ChildGuard};

/// What a fake target does with each connection.
#[derive(Clone)]
pub(crate) enum Behaviour {
    /// Reads the request and never answers (the connection stays open).
    Silent,
    /// Writes these bytes and closes.
    Write(Vec<u8>),
    /// Writes these bytes, then holds the connection open without a word.
    WriteThenStall(Vec<u8>),
    /// Writes these bytes, then a ping every 20 ms, forever.
    WriteThenPing(Vec<u8>),
    /// Waits, then writes these bytes and closes (a target that takes its time).
    WriteAfter(Duration, Vec<u8>),
}

/// A loopback server answering every connection as its behaviour says.
pub(crate) struct FakeTarget {
    pub(crate) url: String,
    /// Connections accepted so far.
    accepted: Arc<Mutex<usize>>,
}

impl FakeTarget {
    pub(crate) fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(Mutex::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                *counter.lock().unwrap() += 1;
                let behaviour = behaviour.clone();
                std::thread::spawn(move || answer(stream, behaviour));
            }
        });
        Self { url, accepted }
    }

    pub(crate) fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

/// Reads one HTTP request (headers and a Content-Length body).
fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Some(data[end + 4..end + 4 + length].to_vec());
            }
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn answer(mut stream: TcpStream, behaviour: Behaviour) {
    if read_request(&mut stream).is_none() {
        return;
    }
    match behaviour {
        Behaviour::Silent => std::thread::sleep(Duration::from_secs(3600)),
        Behaviour::Write(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        Behaviour::WriteThenStall(bytes) => {
            let _ = stream.write_all(&bytes);
            let _ = stream.flush();
            std::thread::sleep(Duration::from_secs(3600));
        }
        Behaviour::WriteAfter(wait, bytes) => {
            std::thread::sleep(wait);
            let _ = stream.write_all(&bytes);
        }
        Behaviour::WriteThenPing(bytes) => {
            let _ = stream.write_all(&bytes);
            let ping = "event: ping\ndata: {\"type\":\"ping\"}\n\n";
            while stream.write_all(ping.as_bytes()).is_ok() && stream.flush().is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A 200 event-stream response's head; the body runs until the connection closes.
pub(crate) const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";

pub(crate) fn sse(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

/// A well-formed stream answering `text`.
pub(crate) fn valid_events(text: &str) -> Vec<(&'static str, Value)> {
    let (first, rest) = text.split_at(text.len() / 2);
    vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "model": "m", "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": first}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": rest}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 3}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ]
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_secs(2),
        idle: Duration::from_secs(2),
        answer: Duration::from_secs(10),
    }
}

fn request() -> Value {
    json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
}

/// One request from the runner's client to a target writing `bytes`.
async fn answer_to(
    bytes: Vec<u8>,
    timeouts: Timeouts,
) -> anyhow::Result<showdown::MessagesResponse> {
    // One connection, answered on its own thread, which then ends.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            answer(stream, Behaviour::Write(bytes));
        }
    });
    MessagesClient::with_timeouts(&url, None, timeouts)?
        .create(&request())
        .await
}

#[tokio::test]
async fn a_valid_stream_is_assembled() {
    let body = format!("{SSE_HEAD}{}", sse(&valid_events("Hello there")));
    let response = answer_to(body.into_bytes(), short_timeouts())
        .await
        .unwrap();
    assert_eq!(response.text(), "Hello there");
    assert_eq!(response.metrics.output_tokens, 3);
    assert_eq!(response.metrics.input_tokens, 7);
    assert_eq!(response.metrics.stop_reason.as_deref(), Some("end_turn"));
}

/// Streams that once panicked the runner (indexing into content blocks and
/// non-objects) or that it must not take for an answer: each is an error
/// that says what was wrong.
#[tokio::test]
async fn hostile_streams_are_errors_that_say_what_was_wrong() {
    let start = valid_events("x")[0].clone();
    let block = valid_events("x")[1].clone();
    let delta = |index: Value, delta: Value| {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    };
    let text = |t: &str| json!({"type": "text_delta", "text": t});
    let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
        (
            vec![start.clone(), delta(json!(0), text("a"))],
            "names block 0, but the message has 0",
        ),
        (
            vec![start.clone(), block.clone(), delta(json!(7), text("a"))],
            "names block 7, but the message has 1",
        ),
        (
            vec![
                start.clone(),
                block.clone(),
                delta(json!(u64::MAX), text("a")),
            ],
            "names block 18446744073709551615",
        ),
        (
            vec![start.clone(), block.clone(), delta(json!(-1), text("a"))],
            "index is a number, not a block number",
        ),
        (
            vec![start.clone(), block.clone(), delta(json!("0"), text("a"))],
            "index is a string",
        ),
        (
            vec![(
                "message_start",
                json!({"type": "message_start", "message": 5}),
            )],
            "message_start's message is a number",
        ),
        (
            vec![(
                "message_start",
                json!({"type": "message_start", "message": {"content": "text"}}),
            )],
            "content is a string, not a list",
        ),
        (
            vec![(
                "message_start",
                json!({"type": "message_start", "message": {"content": [], "usage": []}}),
            )],
            "usage is a list, not an object",
        ),
        (
            vec![
                start.clone(),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": "text"}),
                ),
            ],
            "block is a string, not an object",
        ),
        (
            vec![
                start.clone(),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": 5}}),
                ),
                delta(json!(0), text("a")),
            ],
            "the block's text is a number",
        ),
        (
            vec![
                start.clone(),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": 0}),
                ),
            ],
            "block is a number",
        ),
        (
            vec![
                start.clone(),
                block.clone(),
                delta(json!(0), json!({"type": "text_delta", "text": 3})),
            ],
            "text_delta without a text string",
        ),
        (
            vec![delta(json!(0), text("a"))],
            "did not start with message_start",
        ),
        (
            vec![("message_stop", json!({"type": "message_stop"}))],
            "did not start with message_start",
        ),
        (vec![start.clone(), start.clone()], "a second message_start"),
        (
            vec![start.clone(), ("message_delta", json!([1, 2]))],
            "the event is a list, not an object",
        ),
        (
            vec![
                start.clone(),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "n", "input": {}}}),
                ),
                delta(
                    json!(0),
                    json!({"type": "input_json_delta", "partial_json": "{\"a\": "}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
            ],
            "tool input is not JSON",
        ),
        (
            vec![start.clone(), block.clone(), delta(json!(0), text("a"))],
            "the stream ended before message_stop",
        ),
        (
            vec![(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
            )],
            "200 overloaded_error: busy",
        ),
    ];
    for (events, expected) in cases {
        let body = format!("{SSE_HEAD}{}", sse(&events));
        let err = answer_to(body.into_bytes(), short_timeouts())
            .await
            .expect_err(expected);
        let message = format!("{err:#}");
        assert!(message.contains(expected), "{expected:?} in {message:?}");
    }
    // Not JSON, not SSE, not HTTP.
    for (bytes, expected) in [
        (
            format!("{SSE_HEAD}event: message_start\ndata: {{not json\n\n"),
            "carries no JSON",
        ),
        (
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 9\r\n\r\nnot json!".to_string(),
            "500 http_error: not json!",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_string(),
            "ended before message_stop",
        ),
        ("garbage\r\n\r\n".to_string(), "sending a request"),
        (String::new(), "sending a request"),
    ] {
        let err = answer_to(bytes.into_bytes(), short_timeouts())
            .await
            .expect_err(expected);
        assert!(
            format!("{err:#}").contains(expected),
            "{expected:?} in {err:#}"
        );
    }
}

/// The runner's client against a target behaving as `behaviour`: its error
/// says `expected`, and it comes within `within`.
async fn times_out(behaviour: Behaviour, timeouts: Timeouts, expected: &str, within: Duration) {
    let target = FakeTarget::start(behaviour);
    let client = MessagesClient::with_timeouts(&target.url, None, timeouts).unwrap();
    let started = Instant::now();
    let err = client.create(&request()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains(expected),
        "{expected:?} in {err:#}"
    );
    assert!(
        started.elapsed() < within,
        "{expected:?} took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn every_wait_is_bounded() {
    let timeouts = Timeouts {
        connect: Duration::from_secs(1),
        first_byte: Duration::from_millis(500),
        idle: Duration::from_millis(300),
        answer: Duration::from_secs(2),
    };
    let soon = Duration::from_secs(3);
    times_out(
        Behaviour::Silent,
        timeouts,
        "timed out after 0.5 s waiting for the response's headers",
        soon,
    )
    .await;
    // Headers, then nothing: the first event never comes.
    times_out(
        Behaviour::WriteThenStall(SSE_HEAD.into()),
        timeouts,
        "timed out after 0.5 s waiting for the first event",
        soon,
    )
    .await;
    // A started stream that stalls: the idle timeout.
    let events = valid_events("stalled");
    times_out(
        Behaviour::WriteThenStall(format!("{SSE_HEAD}{}", sse(&events[..4])).into()),
        timeouts,
        "timed out after 0.3 s waiting for the next event",
        soon,
    )
    .await;
    // A started stream that pings forever: every event comes well inside
    // the idle timeout, and the answer's own limit ends it.
    times_out(
        Behaviour::WriteThenPing(format!("{SSE_HEAD}{}", sse(&events[..2])).into()),
        timeouts,
        "timed out after 2 s waiting for the end of the answer",
        Duration::from_secs(4),
    )
    .await;
}

use crate::util::proptest_cases as cases;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z_]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("index".to_string()),
                    Just("content".to_string()),
                    Just("text".to_string()),
                    Just("usage".to_string()),
                    Just("delta".to_string()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid stream whose events may each be replaced by arbitrary JSON or
/// have a field replaced.
fn mutated_stream() -> impl Strategy<Value = String> {
    let events = valid_events("mutated stream");
    let n = events.len();
    prop::collection::vec((0..n, 0usize..3, any_json()), 1..4).prop_map(move |mutations| {
        let mut events: Vec<(&str, Value)> = events.clone();
        for (at, how, value) in mutations {
            let data = &mut events[at].1;
            let field = match how {
                0 => {
                    *data = value;
                    continue;
                }
                1 => ["index", "delta", "content_block", "message", "usage"]
                    .into_iter()
                    .find(|key| data.get(*key).is_some()),
                _ => Some("type"),
            };
            if let (Some(field), Some(object)) = (field, data.as_object_mut()) {
                object.insert(field.into(), value);
            }
        }
        sse(&events)
    })
}

/// Bytes that look like SSE more often than random bytes do.
fn sse_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let fragments: Vec<String> = [
        "event: ",
        "data: ",
        "\n",
        "\r\n",
        "\n\n",
        ":",
        "id: 1\n",
        "retry: x\n",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "null",
        "0",
        "-1",
        "99999999999999999999",
    ]
    .iter()
    .map(|f| f.to_string())
    .chain(
        valid_events("fragment")
            .iter()
            .map(|e| sse(std::slice::from_ref(e))),
    )
    .collect();
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(fragments).prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..16),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// The stream the truncation test cuts.
fn truncation_stream() -> String {
    format!("{SSE_HEAD}{}", sse(&valid_events("truncated answer")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(400), failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and SSE-like fragments in arbitrary order, after a
    /// 200 event-stream head: an answer or an error, never a panic or a hang.
    #[test]
    fn sse_client_survives_arbitrary_bytes(
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..600), sse_like_bytes()]
    ) {
        let mut bytes = SSE_HEAD.as_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let started = Instant::now();
        let _ = runtime().block_on(answer_to(bytes, short_timeouts()));
        prop_assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A valid stream cut anywhere before its message_stop is an error;
    /// whole, it is the answer.
    #[test]
    fn sse_client_refuses_every_truncation(cut in 0usize..=truncation_stream().len()) {
        let full = truncation_stream();
        let result = runtime().block_on(answer_to(full.as_bytes()[..cut].to_vec(), short_timeouts()));
        if cut == full.len() {
            prop_assert_eq!(result.unwrap().text(), "truncated answer");
        } else if cut < full.len() - 2 {
            // (The last two bytes end the last event: a parser may take EOF
            // for them.)
            prop_assert!(result.is_err(), "cut at {} of {} taken for an answer", cut, full.len());
        }
    }

    /// Valid streams with events or fields replaced by arbitrary JSON.
    #[test]
    fn sse_client_survives_mutated_events(stream in mutated_stream()) {
        let bytes = format!("{SSE_HEAD}{stream}").into_bytes();
        if let Ok(response) = runtime().block_on(answer_to(bytes, short_timeouts())) {
            // Whatever it accepted is a message the agent loop can read.
            prop_assert!(response.message.is_object());
            prop_assert!(response.message["content"].is_array());
            let _ = (response.text(), response.tool_uses());
        }
    }
}

// ---- the runner binary ---------------------------------------------------------

/// A three-case suite with no tools.
fn write_suite(dir: &Path, max_tokens: [u32; 3]) -> PathBuf {
    let path = dir.join("faults.toml");
    let mut text = String::from(
        "name = \"faults\"\nversion = 1\ndescription = \"fault tests\"\n\n[defaults]\nmax_turns = 1\ntemperature = 0.0\n",
    );
    let prompts = [
        "Say hi.",
        "Write a very long story about a dragon and a knight, with many chapters.",
        "Write a very long story about a lighthouse keeper, with many chapters.",
    ];
    for (i, (prompt, max_tokens)) in prompts.iter().zip(max_tokens).enumerate() {
        text.push_str(&format!(
            "\n[[case]]\nid = \"case-{i}\"\ncategory = \"word_limit\"\nprompt = \"{prompt}\"\nmax_tokens = {max_tokens}\n[[case.check]]\nkind = \"max_words\"\nlimit = 10000\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn runner(
    dir: &Path,
    target: &str,
    suite: &Path,
    db: impl AsRef<std::ffi::OsStr>,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_showdown"));
    command
        .args([
            "run",
            "--target",
            target,
            "--model",
            "smollm2-135m",
            "--suite",
        ])
        .arg(suite)
        .arg("--db")
        .arg(db)
        .args(["--json", "--label", "faults"])
        .args(extra)
        .current_dir(dir)
        .env_remove("SHOWDOWN_DB");
    command
}

/// The database is whole: SQLite's own check, and each case of each
/// complete run present once.
async fn assert_consistent(db: &Path) -> Store {
    let store = Store::open(db).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(check, "ok");
    for run in store.list_runs(100).await.unwrap() {
        if run.status == "complete" {
            let expected: i64 = run.suites.iter().map(|s| s.cases * run.repeat).sum();
            let cases = store.cases(run.id).await.unwrap();
            assert_eq!(cases.len() as i64, expected, "run {} lost cases", run.id);
        }
    }
    store
}

/// Runs the runner binary against a target behaving as `behaviour`; returns
/// each case's error.
async fn run_against(behaviour: Behaviour, extra: &[&str]) -> Vec<Option<String>> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let suite = write_suite(dir.path(), [16, 16, 16]);
    let target = FakeTarget::start(behaviour);
    let started = Instant::now();
    let out = runner(dir.path(), &target.url, &suite, &db, extra)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["status"], "complete");
    assert_eq!(target.accepted(), 3, "one request per case");
    // No terminal here, as in a CI log: a line per finished case.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (i, line) in lines.iter().enumerate() {
        let head = format!("[{}/3] faults/case-{i} error in ", i + 1);
        assert!(line.starts_with(&head), "{line}");
        assert!(line.ends_with(&format!(" s, {} left", 2 - i)), "{line}");
    }
    let store = assert_consistent(&db).await;
    let id = report["run_id"].as_i64().unwrap();
    store
        .cases(id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            assert!(!c.record.passed);
            c.record.error
        })
        .collect()
}

#[tokio::test]
async fn a_target_that_never_answers_times_out_on_each_case() {
    let errors = run_against(
        Behaviour::Silent,
        &["--first-byte-timeout", "1", "--idle-timeout", "1"],
    )
    .await;
    assert_eq!(errors.len(), 3);
    for error in errors {
        let error = error.unwrap();
        assert!(
            error.contains("timed out after 1 s waiting for the response's headers"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_target_that_stalls_mid_stream_hits_the_idle_timeout() {
    let events = valid_events("stalls");
    let errors = run_against(
        Behaviour::WriteThenStall(format!("{SSE_HEAD}{}", sse(&events[..4])).into()),
        &["--idle-timeout", "1"],
    )
    .await;
    for error in errors {
        let error = error.unwrap();
        assert!(error.contains("waiting for the next event"), "{error}");
    }
}

#[tokio::test]
async fn a_target_that_closes_the_stream_early() {
    let events = valid_events("closes early");
    let errors = run_against(
        Behaviour::Write(format!("{SSE_HEAD}{}", sse(&events[..5])).into()),
        &[],
    )
    .await;
    for error in errors {
        let error = error.unwrap();
        assert!(
            error.contains("the stream ended before message_stop"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_hostile_stream_is_an_error_on_the_case_not_a_crash() {
    let start = valid_events("x")[0].clone();
    let hostile = sse(&[
        start,
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "boom"}}),
        ),
    ]);
    let errors = run_against(Behaviour::Write(format!("{SSE_HEAD}{hostile}").into()), &[]).await;
    for error in errors {
        assert!(error
            .unwrap()
            .contains("names block 3, but the message has 0"));
    }
}

async fn wait_for_run(db: &Path, limit: Duration) -> Store {
    // The lock directory appears with the first run, after the schema: from
    // then on opening the database beside the runner races no migration.
    let mut locks = db.as_os_str().to_owned();
    locks.push(".runs");
    let locks = PathBuf::from(locks);
    let started = Instant::now();
    while started.elapsed() < limit {
        if locks.exists() {
            if let Ok(store) = Store::open(db).await {
                if !store.list_runs(1).await.unwrap().is_empty() {
                    return store;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no run in {} after {limit:?}", db.display());
}

/// A runner in another process, waiting on a silent target, holds its run:
/// opening the database from here leaves it running. Killed (SIGKILL: no
/// chance to clean up), its run is incomplete at the next open.
#[tokio::test]
async fn a_live_run_in_another_process_stays_running_and_a_killed_one_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let suite = write_suite(dir.path(), [16, 16, 16]);
    let target = FakeTarget::start(Behaviour::Silent);
    let mut child = ChildGuard(
        runner(dir.path(), &target.url, &suite, &db, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let store = wait_for_run(&db, Duration::from_secs(60)).await;
    let id = store.list_runs(1).await.unwrap()[0].id;
    drop(store);
    for _ in 0..5 {
        let store = Store::open(&db).await.unwrap();
        assert_eq!(store.run(id).await.unwrap().unwrap().status, "running");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let store = assert_consistent(&db).await;
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!(run.status, "incomplete");
    assert_eq!(
        run.error.as_deref(),
        Some("the run's process ended before it finished")
    );
}

fn wait_for_listener(addr: &str, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {addr} after {limit:?}");
}

/// A real `showdown serve` on the pinned SmolLM2, killed while the runner is
/// on its second case: the cases after it record the failure, the run
/// finishes, every case is in the database.
#[tokio::test]
async fn the_server_killed_mid_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let suite = write_suite(dir.path(), [4, 4000, 4000]);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_showdown"))
            .args(["serve", "--model", "smollm2-135m", "--addr", &addr, "--db"])
            .arg(dir.path().join("unused.db"))
            .env_remove("SHOWDOWN_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_listener(&addr, Duration::from_secs(120));
    let run = runner(
        dir.path(),
        &format!("http://{addr}"),
        &suite,
        &db,
        &["--first-byte-timeout", "60", "--idle-timeout", "30"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Kill the server once the first case is stored.
    let store = wait_for_run(&db, Duration::from_secs(60)).await;
    let id = store.list_runs(1).await.unwrap()[0].id;
    let started = Instant::now();
    while store.cases(id).await.unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no case stored"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(store);
    let out = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["status"], "complete");
    let store = assert_consistent(&db).await;
    let cases = store.cases(id).await.unwrap();
    assert_eq!(cases.len(), 3);
    assert_eq!(cases[0].record.error, None, "the first case ran whole");
    // The second case was streaming when the server died; the third found
    // nobody listening.
    let second = cases[1].record.error.as_deref().unwrap();
    assert!(
        second.contains("reading the event stream") || second.contains("sending a request"),
        "{second}"
    );
    let last = cases[2].record.error.as_deref().unwrap();
    assert!(last.contains("sending a request to http://"), "{last}");
}
