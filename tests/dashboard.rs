//! The dashboard over a real SQLite file holding real runs (`showdown run` on
//! SmolLM2, twice), a transcript with a planted `<script>`, a stored tool-call
//! transcript and synthetic runs with a latency regression: the JSON and HTML
//! of every page, errors, the key check, `showdown serve` mounting it, and a
//! real headless Chromium (through chromedriver's WebDriver API) following
//! links from the overview to a trend and to a run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use showdown::{
    compare_stored, dashboard_router, dashboard_templates, CaseRecord, CheckRecord, CompareConfig,
    DashboardConfig, DashboardState, RequestMetrics, Store,
};

use crate::compare::{cases, store_run, Pins, ALL_PASS, PINS};
use crate::util::{free_port, ChildGuard};

/// What the planted transcript runs if a page lets it execute.
const PLANTED: &str = "<script>document.title='pwned';window.__pwned=1</script>";

/// The shared database: runs 1 and 2 are real, the rest synthetic.
struct Fixture {
    db: PathBuf,
    /// The two real runs of smollm2-135m on word-limit (label `main`).
    real: [i64; 2],
    /// Synthetic `test-model` on `speed` (label `nightly`): base, same, 30% slower.
    speed: [i64; 3],
    /// A synthetic run with a tool call and its result.
    tools: i64,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    // Built on its own thread: tests calling this may already be inside a runtime.
    FIXTURE.get_or_init(|| std::thread::spawn(build_fixture).join().unwrap())
}

fn build_fixture() -> Fixture {
    // Under target/ rather than the system temp dir: nothing drops a static,
    // so each test process clears what earlier ones left.
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("dashboard-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = parent.join(format!("dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("showdown.db");
    let mut real = [0; 2];
    for slot in &mut real {
        let out = Command::new(env!("CARGO_BIN_EXE_showdown"))
            .args([
                "run",
                "--model",
                "smollm2-135m",
                "--suite",
                "word-limit",
                "--case",
                "fewer-than-10-arithmetic",
            ])
            .args(["--label", "main", "--json", "--db"])
            .arg(&db)
            .current_dir(&dir)
            .env_remove("SHOWDOWN_DB")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "showdown run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        *slot = report["run_id"].as_i64().unwrap();
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(&db).await.unwrap();
        // What a model could answer: it must reach the page as text.
        let answer = format!("{PLANTED} four");
        sqlx::query(
            "UPDATE case_results SET transcript_json = json_set(transcript_json,
                 '$.final_text', ?1, '$.conversation.exchanges[0].response.content[0].text', ?1)
             WHERE run_id = ?2",
        )
        .bind(&answer)
        .bind(real[0])
        .execute(store.pool())
        .await
        .unwrap();
        // A verdict as `showdown qualify` records it.
        sqlx::query(
            "INSERT INTO qualifications (run_id, profile, model, qualified, gates_json, created_at)
             VALUES (?, 'agent-coding', 'smollm2-135m', 0, ?, '2026-01-01T00:00:00Z')",
        )
        .bind(real[1])
        .bind(
            r#"[{"suite": "word-limit", "gate": "pass_rate", "value": 0.25, "limit": "≥ 0.8",
                 "passed": false, "detail": "1 of 4 cases pass", "run_id": 2},
                {"suite": "word-limit", "gate": "p50_e2e_ms", "value": null, "limit": "≤ 5000",
                 "passed": false, "detail": "no latency figure", "run_id": 2}]"#,
        )
        .execute(store.pool())
        .await
        .unwrap();
        let nightly = |sha| Pins { sha, ..PINS };
        let mut speed = [0; 3];
        for (slot, e2e) in speed.iter_mut().zip([1000.0, 1000.0, 1300.0]) {
            *slot = store_run(
                &store,
                &nightly(PINS.sha),
                "nightly",
                &cases(&ALL_PASS, e2e, 1),
            )
            .await;
        }
        // Another model file: never compared with the nightly runs.
        let tools = store_run(&store, &nightly("cccc"), "tools", &cases(&[true], 900.0, 5)).await;
        store.record_case(tools, &tool_case()).await.unwrap();
        Fixture {
            db: db.clone(),
            real,
            speed,
            tools,
        }
    })
}

/// A case whose model called a tool, got its result, then answered.
fn tool_case() -> CaseRecord {
    CaseRecord {
        suite: "speed".into(),
        case_id: "weather-call".into(),
        sample: 0,
        category: Some("simple".into()),
        must_pass: false,
        passed: false,
        score: 0.0,
        turns: 2,
        tool_calls: 1,
        wall_ms: 1500.0,
        error: None,
        scorer_version: "1".into(),
        transcript: json!({
            "final_text": "It is sunny in Rome.",
            "calls": [{"turn": 1, "name": "get_weather", "input": {"city": "Rome"}}],
            "turns": 2,
            "conversation": {
                "system": "You are a helpful assistant.",
                "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
                "prompt": "What's the weather in Paris?",
                "exchanges": [
                    {"turn": 1, "response": {"content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}
                    ], "stop_reason": "tool_use"}},
                    {"turn": 1, "tool_results": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 24 °C", "is_error": false}
                    ]},
                    {"turn": 2, "response": {"content": [{"type": "text", "text": "It is sunny in Rome."}], "stop_reason": "end_turn"}}
                ]
            }
        }),
        checks: vec![CheckRecord {
            kind: "tool_calls".into(),
            passed: false,
            score: 0.0,
            detail: json!({
                "expected": 1, "made": 1, "matched": 0,
                "unmatched_expected": [{"name": "get_weather", "differences": ["city: expected \"Paris\", got \"Rome\""]}],
                "unexpected_calls": [{"name": "get_weather", "input": {"city": "Rome"}}],
                "invalid_calls": []
            }),
        }],
        requests: vec![RequestMetrics {
            ttft_ms: Some(300.0),
            e2e_ms: 700.0,
            input_tokens: 120,
            output_tokens: 20,
            ..Default::default()
        }],
    }
}

/// The dashboard router over the fixture, served on a loopback port.
async fn serve(api_key: Option<&str>, listen: &str) -> String {
    let state = DashboardState::new(DashboardConfig {
        store: Store::open(&fixture().db).await.unwrap(),
        models: None,
        compare: CompareConfig::default(),
        api_key: api_key.map(str::to_string),
        addr: listen.parse().unwrap(),
        allowed_hosts: Vec::new(),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, dashboard_router(state)).await });
    base
}

/// Status and body; `&#x2f;` (how minijinja escapes `/` in attributes) read
/// back as `/` so assertions can spell links plainly.
async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.text().await.unwrap().replace("&#x2f;", "/"),
    )
}

async fn get_json(url: &str) -> Value {
    let (status, body) = get(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The `data-run-id`s of the points of one chart, in document order.
fn chart_points(html: &str, chart: &str) -> Vec<(i64, bool)> {
    let start = html
        .find(&format!("id=\"chart-{chart}\""))
        .unwrap_or_else(|| panic!("no chart {chart}"));
    let svg = &html[start..start + html[start..].find("</svg>").unwrap()];
    svg.split("<circle class=\"point")
        .skip(1)
        .map(|circle| {
            let regression =
                circle.starts_with(" s0 regression") || circle.starts_with(" s1 regression");
            let id = circle.split("data-run-id=\"").nth(1).unwrap();
            (id[..id.find('"').unwrap()].parse().unwrap(), regression)
        })
        .collect()
}

#[tokio::test]
async fn two_real_runs_show_in_overview_trends_run_pages_and_comparison() {
    let f = fixture();
    let base = serve(None, "127.0.0.1:8090").await;
    let [first, second] = f.real;

    let overview = get_json(&format!("{base}/api/overview")).await;
    let row = overview["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "smollm2-135m" && r["suite"] == "word-limit")
        .expect("a row for the real runs");
    assert_eq!(row["runs"], 2);
    assert_eq!(row["latest_run"], second);
    assert!(row["e2e_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(row["decode_tok_s_p50"].as_f64().unwrap() > 0.0);
    assert_eq!(row["sparkline"]["points"].as_array().unwrap().len(), 2);
    assert_eq!(row["e2e_sparkline"]["points"].as_array().unwrap().len(), 2);
    assert_eq!(row["qualification"]["profile"], "agent-coding");
    assert_eq!(row["qualification"]["qualified"], false);
    let (_, html) = get(&format!("{base}/dashboard")).await;
    assert!(html.contains("<span class=\"badge not-qualified\">not qualified</span>"));
    assert!(html.contains("href=\"/dashboard/trends?model=smollm2-135m&amp;suite=word-limit\""));

    let trends = get_json(&format!(
        "{base}/api/trends?model=smollm2-135m&suite=word-limit"
    ))
    .await;
    let points = trends["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["run_id"], first);
    assert!(
        points[0]["comparison"].is_null(),
        "the first run has no base"
    );
    assert_eq!(points[1]["comparison"]["base_run"], first);
    let (status, html) = get(&format!(
        "{base}/dashboard/trends?model=smollm2-135m&suite=word-limit&label=main"
    ))
    .await;
    assert_eq!(status, 200);
    for chart in ["pass_rate", "decode", "prefill", "peak_memory"] {
        let ids: Vec<i64> = chart_points(&html, chart).iter().map(|p| p.0).collect();
        assert_eq!(ids, [first, second], "chart {chart}");
    }
    // Two lines: p95, then p50.
    let ids: Vec<i64> = chart_points(&html, "e2e").iter().map(|p| p.0).collect();
    assert_eq!(ids, [first, second, first, second]);
    assert!(html.contains(&format!("<a href=\"/dashboard/runs/{first}\">")));
    // A label no run has: no points, still a page.
    let trends = get_json(&format!(
        "{base}/api/trends?model=smollm2-135m&suite=word-limit&label=nope"
    ))
    .await;
    assert_eq!(trends["points"].as_array().unwrap().len(), 0);

    let run = get_json(&format!("{base}/api/runs/{second}")).await;
    assert_eq!(run["run"]["model_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(run["previous_comparable"], first);
    let case = &run["cases"][0];
    assert_eq!(case["case_id"], "fewer-than-10-arithmetic");
    assert!(case["transcript"]["conversation"]["exchanges"].is_array());
    let note = case["check_notes"][0].as_str().unwrap();
    assert!(note.contains("words, at most 9 allowed"), "{note}");
    let (_, html) = get(&format!("{base}/dashboard/runs/{second}")).await;
    for needle in [
        run["run"]["model_sha256"].as_str().unwrap(),
        run["run"]["host_fingerprint"].as_str().unwrap(),
        "fewer-than-10-arithmetic",
        note,
        "What is 2 + 2? Answer in fewer than 10 words.",
        &format!("href=\"/dashboard/compare?base={first}&amp;head={second}\""),
        "profile agent-coding",
        // The gates as a table, values in their units, as the CLI prints them.
        "<tr><td>word-limit</td><td>pass_rate</td><td class=\"num\">25%</td><td>≥ 0.8</td>\
         <td><span class=\"badge fail\">fail</span></td><td>1 of 4 cases pass</td></tr>",
        "<tr><td>word-limit</td><td>p50_e2e_ms</td><td class=\"num\">–</td><td>≤ 5000</td>",
    ] {
        assert!(html.contains(needle), "run page lacks {needle}");
    }

    // The comparison is the library's, with the same verdict.
    let expected = compare_stored(
        &Store::open(&f.db).await.unwrap(),
        &first.to_string(),
        &second.to_string(),
        &CompareConfig::default(),
        false,
    )
    .await
    .unwrap();
    let compared = get_json(&format!("{base}/api/compare?base={first}&head={second}")).await;
    assert_eq!(compared["comparison"]["verdict"], expected.verdict.as_str());
    assert_eq!(compared["comparison"]["comparable"], true);
    assert_eq!(
        compared["comparison"]["suites"][0]["latency"][1]["p"],
        json!(expected.suites[0].latency[1].p)
    );
    let (_, html) = get(&format!(
        "{base}/dashboard/compare?base={first}&head=latest:main"
    ))
    .await;
    assert!(html.contains(&format!(
        "<span class=\"badge {}\">",
        expected.verdict.replace(' ', "-")
    )));
    assert!(html.contains("id=\"latency\""));
}

#[tokio::test]
async fn transcripts_are_escaped_and_tool_calls_are_shown_as_such() {
    let f = fixture();
    let base = serve(None, "127.0.0.1:8090").await;
    let (_, html) = get(&format!("{base}/dashboard/runs/{}", f.real[0])).await;
    assert!(
        !html.contains("<script"),
        "a transcript's script reached the page"
    );
    assert!(html.contains(
        "&lt;script&gt;document.title=&#x27;pwned&#x27;;window.__pwned=1&lt;/script&gt; four"
    ));
    // The JSON keeps the transcript as it was.
    let run = get_json(&format!("{base}/api/runs/{}", f.real[0])).await;
    assert_eq!(
        run["cases"][0]["transcript"]["final_text"],
        format!("{PLANTED} four")
    );

    let (_, html) = get(&format!("{base}/dashboard/runs/{}", f.tools)).await;
    assert!(html.contains("turn 1 · tool call · get_weather"));
    assert!(html.contains("&quot;city&quot;: &quot;Rome&quot;"));
    assert!(html.contains("tool result · get_weather"));
    assert!(html.contains("sunny, 24 °C"));
    assert!(html.contains("tools offered: get_weather"));
    assert!(html.contains(
        "0 of 1 expected calls matched, 1 made; get_weather: city: expected &quot;Paris&quot;, got &quot;Rome&quot;"
    ));
}

#[tokio::test]
async fn regressions_flagged_by_compare_are_marked_on_the_trend() {
    let f = fixture();
    let base = serve(None, "127.0.0.1:8090").await;
    let [first, same, slower] = f.speed;
    let trends = get_json(&format!(
        "{base}/api/trends?model=test-model&suite=speed&label=nightly"
    ))
    .await;
    let points = trends["points"].as_array().unwrap();
    let ids: Vec<i64> = points
        .iter()
        .map(|p| p["run_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [first, same, slower]);
    assert_eq!(points[1]["comparison"]["verdict"], "clean");
    let flagged = &points[2]["comparison"];
    assert_eq!(flagged["base_run"], same);
    assert_eq!(flagged["verdict"], "regression");
    assert!(flagged["metrics"]
        .as_array()
        .unwrap()
        .contains(&json!("e2e_ms")));
    assert_eq!(flagged["quality"], false);

    let (_, html) = get(&format!(
        "{base}/dashboard/trends?model=test-model&suite=speed&label=nightly"
    ))
    .await;
    let e2e = chart_points(&html, "e2e");
    // p95, then p50 drawn on top: only the median of the slower run is flagged.
    assert_eq!(
        e2e,
        [
            (first, false),
            (same, false),
            (slower, false),
            (first, false),
            (same, false),
            (slower, true)
        ]
    );
    assert!(chart_points(&html, "pass_rate").iter().all(|p| !p.1));
    assert!(html.contains("class=\"regression-marker\""));
    assert!(html.contains("speed: e2e_ms median +"));

    // The other file's run is not comparable: its own series, never compared.
    let trends = get_json(&format!(
        "{base}/api/trends?model=test-model&suite=speed&label=tools"
    ))
    .await;
    assert_eq!(trends["points"][0]["run_id"], f.tools);
    assert!(trends["points"][0]["comparison"].is_null());

    let overview = get_json(&format!("{base}/api/overview")).await;
    let row = overview["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "test-model")
        .unwrap();
    assert_eq!(row["latest_run"], f.tools);
    // The e2e sparkline rings the slower run; the pass-rate one rings nothing.
    let flagged = |spark: &str| -> Vec<bool> {
        row[spark]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["regression"].as_bool().unwrap())
            .collect()
    };
    assert_eq!(flagged("e2e_sparkline"), [false, false, true, false]);
    assert_eq!(flagged("sparkline"), [false; 4]);
}

#[tokio::test]
async fn bad_queries_are_400_unknown_runs_404_and_nothing_writes() {
    let base = serve(None, "127.0.0.1:8090").await;
    let cases = [
        ("/api/runs/9999", 404, "no run 9999 in this database"),
        (
            "/api/runs/abc",
            400,
            "expected a run id, latest or latest:LABEL",
        ),
        (
            "/api/runs/latest:nope",
            404,
            "no complete run labelled `nope`",
        ),
        (
            "/api/compare?base=1",
            400,
            "base and head are both required",
        ),
        ("/api/compare?base=1&head=9999", 404, "no run 9999"),
        ("/api/compare?base=1&head=2&force=maybe", 400, "bad query"),
        (
            "/api/trends?model=nope",
            404,
            "no complete runs of model `nope`",
        ),
        (
            "/api/trends?model=smollm2-135m&suite=nope",
            404,
            "on suite `nope`",
        ),
    ];
    for (path, status, message) in cases {
        let (got, body) = get(&format!("{base}{path}")).await;
        assert_eq!(got, status, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["status"], status);
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{path}: {text}");
    }
    // Pages answer the same statuses with an error page.
    let (status, html) = get(&format!("{base}/dashboard/runs/9999")).await;
    assert_eq!(status, 404);
    assert!(html.contains("no run 9999 in this database") && html.contains("<h1>404</h1>"));
    // Read-only: no route takes a write.
    let client = reqwest::Client::new();
    for path in ["/api/runs/1", "/dashboard/runs/1", "/api/overview"] {
        let response = client.post(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405, "POST {path}");
    }
}

#[tokio::test]
async fn the_key_is_asked_for_off_loopback_only() {
    let base = serve(Some("sesame"), "0.0.0.0:8090").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let status = |r: &reqwest::Response| r.status().as_u16();
    let r = client
        .get(format!("{base}/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(status(&r), 401);
    assert!(
        r.text().await.unwrap().contains("name=\"key\""),
        "a form asks for the key"
    );
    let r = client
        .get(format!("{base}/api/overview"))
        .send()
        .await
        .unwrap();
    assert_eq!(status(&r), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["status"], 401);
    let r = client
        .get(format!("{base}/api/overview"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(status(&r), 401);
    for (name, value) in [("x-api-key", "sesame"), ("authorization", "Bearer sesame")] {
        let r = client
            .get(format!("{base}/api/overview"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(status(&r), 200, "{name}");
    }
    // A browser: ?key= once, sent back without it, then the cookie it set.
    let r = client
        .get(format!(
            "{base}/dashboard/trends?key=sesame&model=test-model"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(status(&r), 303);
    assert_eq!(
        r.headers()["location"],
        "/dashboard/trends?model=test-model"
    );
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && !cookie.contains("sesame"),
        "{cookie}"
    );
    let r = client
        .get(format!("{base}/dashboard"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(status(&r), 200);

    assert!(
        cookie.contains("Max-Age=43200"),
        "a 12-hour cookie: {cookie}"
    );

    // A forged, tampered, expired, old-style (the key's bare sha256) or
    // another server's cookie opens nothing.
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let (expires, tag) = value.split_once('.').expect("EXPIRES.MAC");
    let expires: u64 = expires.parse().unwrap();
    let other = serve(Some("sesame"), "0.0.0.0:8090").await;
    let r = client
        .get(format!("{other}/dashboard?key=sesame"))
        .send()
        .await
        .unwrap();
    let foreign = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for bad in [
        format!("showdown_key={}", crate::util::sha256_hex(b"sesame")),
        format!("showdown_key={}.{tag}", expires + 60),
        format!("showdown_key={}.{tag}", expires - 43200 - 60),
        format!("showdown_key={expires}.{}", "0".repeat(64)),
        format!("showdown_key={expires}"),
        foreign,
    ] {
        for path in ["/dashboard", "/api/overview"] {
            let r = client
                .get(format!("{base}{path}"))
                .header("cookie", &bad)
                .send()
                .await
                .unwrap();
            assert_eq!(status(&r), 401, "{path} with {bad}");
        }
    }

    // The cookie opens the dashboard only: the API asks for the key itself.
    let api = showdown::server_app(std::sync::Arc::new(
        showdown::AppState::new(
            showdown::ServeConfig {
                api_key: Some("sesame".into()),
                ..showdown::ServeConfig::default()
            },
            Vec::new(),
        )
        .unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api).await });
    let r = client
        .get(format!("{api_base}/v1/models"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(status(&r), 401, "a dashboard cookie does not open /v1");
    let r = client
        .get(format!("{api_base}/v1/models"))
        .header("x-api-key", "sesame")
        .send()
        .await
        .unwrap();
    assert_eq!(status(&r), 200);

    // On loopback the same key is not asked for.
    let open = serve(Some("sesame"), "127.0.0.1:8090").await;
    assert_eq!(get(&format!("{open}/dashboard")).await.0, 200);
}

/// DNS rebinding would let a web page read the dashboard: a foreign `Host`
/// or `Origin` is refused on every page and JSON route, with a JSON envelope
/// and no HTML.
#[tokio::test]
async fn foreign_hosts_cannot_read_the_dashboard() {
    let base = serve(None, "127.0.0.1:8090").await;
    let client = reqwest::Client::new();
    for path in [
        "/dashboard",
        "/dashboard/runs/1",
        "/api/overview",
        "/api/runs/1",
    ] {
        for (name, value) in [
            ("host", "rebind.evil.example:8090"),
            ("origin", "http://evil.example"),
        ] {
            let r = client
                .get(format!("{base}{path}"))
                .header(name, value)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 403, "{path} {name}: {value}");
            assert!(r.headers().get("access-control-allow-origin").is_none());
            let body = r.text().await.unwrap();
            assert!(!body.contains('<'), "no HTML: {body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], "permission_error");
        }
        let r = client
            .get(format!("{base}{path}"))
            .header("host", "localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
}

#[test]
fn html_templates_escape_and_other_templates_do_not() {
    let env = dashboard_templates().unwrap();
    let ctx = minijinja::context! { v => "<b>&'" };
    assert_eq!(
        env.render_named_str("probe.html.j2", "{{ v }}", &ctx)
            .unwrap(),
        "&lt;b&gt;&amp;&#x27;"
    );
    assert_eq!(
        env.render_named_str("probe.md.j2", "{{ v }}", &ctx)
            .unwrap(),
        "<b>&'"
    );
}

/// Starts the binary in the background.
fn spawn_showdown(args: &[&str]) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args(args)
        .env_remove("SHOWDOWN_DB")
        .env_remove("SHOWDOWN_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// Waits until something listens on `addr`.
fn wait_for(addr: &str, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {addr} after {limit:?}");
}

#[test]
fn showdown_dashboard_needs_a_database_and_serve_mounts_the_pages() {
    let f = fixture();
    let missing = f.db.with_file_name("missing.db");
    let out = Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args(["dashboard", "--db"])
        .arg(&missing)
        .env_remove("SHOWDOWN_DB")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no results database at"));
    assert!(!missing.exists(), "a missing database is not created");

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let db = f.db.to_str().unwrap();
    let _server = spawn_showdown(&[
        "serve",
        "--model",
        "smollm2-135m",
        "--addr",
        &addr,
        "--db",
        db,
    ]);
    wait_for(&addr, Duration::from_secs(120));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let base = format!("http://{addr}");
        let overview = get_json(&format!("{base}/api/overview")).await;
        assert!(overview["rows"].as_array().unwrap().len() >= 2);
        let models = get_json(&format!("{base}/api/models")).await;
        let smollm = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "smollm2-135m")
            .unwrap();
        assert_eq!(smollm["pinned"], true);
        assert_eq!(smollm["runs"], 2);
        assert!(smollm["total_parameters"].as_u64().unwrap() > 100_000_000);
        assert!(smollm["peak_memory_bytes"].as_u64().unwrap() > 0);
        let (status, html) = get(&format!("{base}/dashboard/models")).await;
        assert_eq!(status, 200);
        assert!(html.contains("134.5M"), "SmolLM2's parameters");
        // The API is untouched; a browser asking for / is sent to the dashboard.
        assert_eq!(get(&format!("{base}/v1/models")).await.0, 200);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = client
            .get(format!("{base}/"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["location"], "/dashboard");
        let r = client.get(format!("{base}/")).send().await.unwrap();
        assert!(r.text().await.unwrap().contains("Messages API"));
    });
    drop(_server);

    // Serving never creates a database: without one, no dashboard.
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = spawn_showdown(&["serve", "--addr", &addr, "--db", missing.to_str().unwrap()]);
    wait_for(&addr, Duration::from_secs(120));
    rt.block_on(async {
        assert_eq!(get(&format!("http://{addr}/dashboard")).await.0, 404);
        assert_eq!(get(&format!("http://{addr}/v1/models")).await.0, 200);
    });
    assert!(!missing.exists());
}

// ---- a real browser -------------------------------------------------------------

/// A program on PATH.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A headless Chromium session through chromedriver's W3C WebDriver API
/// (plain HTTP and JSON: no extra crate to build).
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: ChildGuard,
    _profile: tempfile::TempDir,
}

/// How WebDriver names an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Self {
        let driver = on_path(&["chromedriver"]).expect(
            "chromedriver is not installed: apt-get install chromium chromium-driver \
             (scripts/test installs them)",
        );
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let guard = ChildGuard(child);
        wait_for(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
        let profile = tempfile::tempdir().unwrap();
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--hide-scrollbars",
                     format!("--user-data-dir={}", profile.path().display())]
        });
        if let Some(binary) = on_path(&["chromium", "chromium-browser", "google-chrome"]) {
            options["binary"] = json!(binary);
        }
        let http = reqwest::Client::new();
        let mut browser = Browser {
            http,
            session: format!("http://127.0.0.1:{port}"),
            _driver: guard,
            _profile: profile,
        };
        let created = browser
            .command(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome", "goog:chromeOptions": options
                }}}),
            )
            .await;
        let id = created["sessionId"].as_str().unwrap().to_string();
        browser.session = format!("{}/session/{id}", browser.session);
        browser
    }

    /// Sends one command; its `value`, or a panic with WebDriver's error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.session);
        let mut request = self.http.request(method, &url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let ok = response.status().is_success();
        let value: Value = response.json().await.unwrap();
        assert!(ok, "WebDriver {path}: {value}");
        value["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn url(&self) -> String {
        let v = self
            .command(reqwest::Method::GET, "/url", Value::Null)
            .await;
        v.as_str().unwrap().to_string()
    }

    /// Clicks the element `css` selects, then waits until the URL contains `expect`.
    async fn click_to(&self, css: &str, expect: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let element = found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("finding {css}: {found}"))
            .to_string();
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
        let started = Instant::now();
        loop {
            let url = self.url().await;
            if url.contains(expect) {
                return url;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "clicking {css} led to {url}, not {expect}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` in the page and returns what it returns.
    async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64_decode(v.as_str().unwrap())
    }

    async fn quit(&self) {
        self.command(reqwest::Method::DELETE, "", Value::Null).await;
    }
}

/// Standard base64 (what WebDriver sends screenshots in).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let n =
                chunk.iter().fold(0u32, |acc, d| acc << 6 | *d as u32) << (6 * (4 - chunk.len()));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(chunk.len() * 3 / 4)
        })
        .collect()
}

#[tokio::test]
async fn a_browser_follows_links_to_a_trend_and_a_run_and_scripts_stay_text() {
    let f = fixture();
    let [first, second] = f.real;
    let addr = format!("127.0.0.1:{}", free_port());
    let _dashboard =
        spawn_showdown(&["dashboard", "--db", f.db.to_str().unwrap(), "--addr", &addr]);
    wait_for(&addr, Duration::from_secs(30));
    let browser = Browser::start().await;

    browser.goto(&format!("http://{addr}/")).await;
    assert!(
        browser.url().await.ends_with("/dashboard"),
        "/ leads to the overview"
    );
    assert_eq!(
        browser.eval("return document.title").await,
        "Overview · showdown"
    );
    browser
        .click_to(
            "a.trends-link[href*='model=smollm2-135m']",
            "/dashboard/trends?model=smollm2-135m&suite=word-limit",
        )
        .await;
    let ids = browser
        .eval(
            "return [...document.querySelectorAll('#chart-pass_rate circle.point')]
                 .map(c => Number(c.dataset.runId))",
        )
        .await;
    assert_eq!(ids, json!([first, second]), "one point per run");
    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshot.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, &png).unwrap();

    browser
        .click_to(
            &format!("#chart-pass_rate circle[data-run-id='{first}']"),
            &format!("/dashboard/runs/{first}"),
        )
        .await;
    let page = browser
        .eval(
            "return {title: document.title, pwned: typeof window.__pwned,
                     scripts: document.scripts.length,
                     answer: document.querySelector('.final-text').textContent}",
        )
        .await;
    assert_eq!(page["title"], format!("Run {first} · showdown"));
    assert_eq!(page["pwned"], "undefined", "the planted script ran");
    assert_eq!(page["scripts"], 0);
    assert_eq!(page["answer"], format!("{PLANTED} four"), "shown as text");
    browser.quit().await;
}
