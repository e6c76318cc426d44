//! The results store on both backends, a real SQLite file and a real
//! PostgreSQL server: a live run is known by the lock its process holds (not
//! by its pid), a database migrated by a newer build stays readable and
//! writable, and what is written reads back as it was.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use showdown::{
    CaseRecord, CheckRecord, DbLocation, GateResult, HostInfo, NewRun, RequestMetrics, Store,
    Verdict,
};

use crate::util::postgres_database;

pub(crate) fn new_run(label: &str) -> NewRun {
    NewRun {
        label: Some(label.to_string()),
        target: "http://127.0.0.1:9".into(),
        model: "test-model".into(),
        model_sha256: None,
        engine_version: "0.1.0".into(),
        git_sha: None,
        scorer_version: "1".into(),
        sampling: json!({"temperature": 0.0}),
        seed: 0,
        repeat: 1,
        concurrency: 1,
        host: HostInfo {
            cpu_model: "test cpu".into(),
            cores: 2,
            memory_bytes: 8 << 30,
            os: "linux test".into(),
        },
        git_branch: None,
        git_commit: None,
        pr_number: None,
    }
}

fn case(id: &str) -> CaseRecord {
    CaseRecord {
        suite: "s".into(),
        case_id: id.into(),
        sample: 0,
        category: None,
        must_pass: false,
        passed: true,
        score: 1.0,
        turns: 1,
        tool_calls: 0,
        wall_ms: 1.0,
        error: None,
        scorer_version: "1".into(),
        transcript: json!({}),
        checks: Vec::new(),
        requests: Vec::new(),
    }
}

async fn status(db: &DbLocation, id: i64) -> String {
    let store = Store::connect(db).await.unwrap();
    store.run(id).await.unwrap().unwrap().status
}

/// Whether run `id`'s lock is held where the backend keeps it: the lock
/// file (SQLite) or a granted advisory lock on the run's keys (PostgreSQL).
async fn lock_held(db: &DbLocation, store: &Store, id: i64) -> bool {
    match db {
        DbLocation::Sqlite(path) => {
            let mut lock = path.as_os_str().to_owned();
            lock.push(format!(".runs/{id}.lock"));
            PathBuf::from(lock).exists()
        }
        DbLocation::Postgres(_) => {
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                     AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 2",
            )
            .bind(0x7368_6f77_i64)
            .bind(id)
            .fetch_one(store.pool())
            .await
            .unwrap();
            held == 1
        }
    }
}

/// Opens `db` until run `id` is no longer running (a PostgreSQL server
/// learns a client is gone when its socket closes, a moment after the drop;
/// SQLite's lock goes with the file handle, at once).
async fn status_after_release(db: &DbLocation, id: i64) -> String {
    let started = Instant::now();
    loop {
        let status = status(db, id).await;
        if status != "running" || db.sqlite_path().is_some() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "run {id} still running 10 s after its runner went"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_run_is_live_while_its_lock_is_held(db: &DbLocation) {
    let runner = Store::connect(db).await.unwrap();
    let id = runner.create_run(&new_run("live")).await.unwrap();
    assert!(lock_held(db, &runner, id).await);
    // Another handle (another file description or server session, as
    // another process has) sees the lock held: the run stays running.
    assert_eq!(status(db, id).await, "running");
    assert_eq!(status(db, id).await, "running");
    // The runner goes away without finishing (its lock is released, as the
    // OS releases a dead process's, and a server a dead client's). The row's
    // pid is this test's, alive: liveness by pid would keep it running.
    drop(runner);
    assert_eq!(status_after_release(db, id).await, "incomplete");
    let store = Store::connect(db).await.unwrap();
    let row = store.run(id).await.unwrap().unwrap();
    assert_eq!(
        row.error.as_deref(),
        Some("the run's process ended before it finished")
    );
    assert!(!lock_held(db, &store, id).await);

    // A finished run gives its lock back and stays finished.
    let id = store.create_run(&new_run("done")).await.unwrap();
    assert!(lock_held(db, &store, id).await);
    store.finish_run(id, "complete", None, None).await.unwrap();
    assert!(!lock_held(db, &store, id).await);
    drop(store);
    assert_eq!(status(db, id).await, "complete");
}

#[tokio::test]
async fn a_run_is_live_while_its_lock_is_held_whatever_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    a_run_is_live_while_its_lock_is_held(&DbLocation::Sqlite(dir.path().join("runs.db"))).await;
}

#[tokio::test]
async fn a_run_is_live_while_its_advisory_lock_is_held_on_postgres() {
    if let Some(db) = postgres_database().await {
        a_run_is_live_while_its_lock_is_held(&db).await;
    }
}

/// A database a newer build migrated (one more applied migration, one more
/// column): this build opens it, reads the old runs, and appends new ones.
async fn an_older_build_reads_and_appends(db: &DbLocation) {
    let store = Store::connect(db).await.unwrap();
    let old = store.create_run(&new_run("before")).await.unwrap();
    store.record_case(old, &case("a")).await.unwrap();
    store.finish_run(old, "complete", None, None).await.unwrap();
    // What a newer build's migration 0099 would leave behind.
    sqlx::query("ALTER TABLE runs ADD COLUMN newer_field TEXT DEFAULT NULL")
        .execute(store.pool())
        .await
        .unwrap();
    let checksum = if store.is_postgres() {
        "'\\x00ff'::bytea"
    } else {
        "x'00ff'"
    };
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99, 'from a newer build', TRUE, {checksum}, 1)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    drop(store);

    let store = Store::connect(db)
        .await
        .expect("a newer build's database opens");
    assert_eq!(store.run(old).await.unwrap().unwrap().status, "complete");
    assert_eq!(store.cases(old).await.unwrap().len(), 1);
    let new = store.create_run(&new_run("after")).await.unwrap();
    store.record_case(new, &case("b")).await.unwrap();
    store.finish_run(new, "complete", None, None).await.unwrap();
    assert_eq!(store.cases(new).await.unwrap()[0].record.case_id, "b");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(versions.last(), Some(&99), "the newer migration is kept");
    if !store.is_postgres() {
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(check, "ok");
    }
}

#[tokio::test]
async fn an_older_build_reads_and_appends_to_a_newer_database() {
    let dir = tempfile::tempdir().unwrap();
    an_older_build_reads_and_appends(&DbLocation::Sqlite(dir.path().join("runs.db"))).await;
}

#[tokio::test]
async fn an_older_build_reads_and_appends_to_a_newer_postgres_database() {
    if let Some(db) = postgres_database().await {
        an_older_build_reads_and_appends(&db).await;
    }
}

/// A run with everything a run holds: two suites, NULLs and values in every
/// optional column, checks with JSON details, requests with and without
/// TTFT, a transcript with text in several scripts, and a verdict.
pub(crate) async fn store_full_run(store: &Store, label: &str, passed: bool) -> i64 {
    let id = store.create_run(&new_run(label)).await.unwrap();
    store
        .add_suite(id, "summaries", 3, "abc123", 2)
        .await
        .unwrap();
    store.add_suite(id, "tools", 1, "def456", 1).await.unwrap();
    for (suite, case_id, sample) in [
        ("summaries", "one", 0),
        ("summaries", "two", 0),
        ("tools", "call", 1),
    ] {
        let record = CaseRecord {
            suite: suite.into(),
            case_id: case_id.into(),
            sample,
            category: (suite == "tools").then(|| "tool_calls".into()),
            must_pass: case_id == "one",
            passed: passed || case_id != "two",
            score: if case_id == "two" { 0.25 } else { 1.0 },
            turns: 2,
            tool_calls: u32::from(suite == "tools"),
            wall_ms: 1234.5,
            error: (case_id == "two").then(|| "the target said: no".into()),
            scorer_version: "4".into(),
            transcript: json!({"messages": [{"role": "user", "content": format!("{label} {case_id}: résumé, 日本語, \"quotes\" & <tags>")}]}),
            checks: vec![
                CheckRecord {
                    kind: "max_words".into(),
                    passed: true,
                    score: 1.0,
                    detail: json!({"words": 87, "limit": 100}),
                },
                CheckRecord {
                    kind: "contains".into(),
                    passed: case_id != "two",
                    score: 0.5,
                    detail: json!("found \"README\""),
                },
            ],
            requests: vec![
                RequestMetrics {
                    ttft_ms: Some(120.25),
                    e2e_ms: 900.5,
                    input_tokens: 1500,
                    cache_read_input_tokens: 1200,
                    cache_creation_input_tokens: 300,
                    output_tokens: 64,
                    prefill_tok_s: Some(2494.8),
                    decode_tok_s: Some(81.0),
                    stop_reason: Some("end_turn".into()),
                },
                RequestMetrics {
                    ttft_ms: None,
                    e2e_ms: 15.0,
                    stop_reason: None,
                    ..Default::default()
                },
            ],
        };
        store.record_case(id, &record).await.unwrap();
    }
    store
        .finish_run(id, "complete", Some(345 << 20), None)
        .await
        .unwrap();
    store
        .record_qualification(&Verdict {
            profile: "agent".into(),
            model: "test-model".into(),
            qualified: passed,
            gates: vec![GateResult {
                suite: "summaries".into(),
                gate: "pass_rate".into(),
                value: Some(if passed { 1.0 } else { 0.5 }),
                limit: "≥ 0.8".into(),
                passed,
                detail: "2 of 2".into(),
                run_id: Some(id),
            }],
            run_ids: vec![id],
        })
        .await
        .unwrap();
    id
}

/// Everything a store holds about its runs, as the readers see it.
pub(crate) async fn dump(store: &Store) -> Value {
    let mut runs = Vec::new();
    for run in store.list_runs(1000).await.unwrap() {
        let cases = store.cases(run.id).await.unwrap();
        runs.push(json!({"run": run, "cases": cases}));
    }
    json!({"runs": runs, "verdicts": store.latest_qualifications().await.unwrap()})
}

async fn records_read_back_as_written(db: &DbLocation) {
    let store = Store::connect(db).await.unwrap();
    let id = store_full_run(&store, "full", false).await;
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!(run.status, "complete");
    assert_eq!(run.peak_memory_bytes, Some(345 << 20));
    assert_eq!(run.pid, i64::from(std::process::id()));
    assert_eq!(run.host["cpu_model"], "test cpu");
    assert_eq!(run.sampling, json!({"temperature": 0.0}));
    let suites: Vec<_> = run
        .suites
        .iter()
        .map(|s| (s.suite.as_str(), s.version, s.hash.as_str(), s.cases))
        .collect();
    assert_eq!(
        suites,
        [("summaries", 3, "abc123", 2), ("tools", 1, "def456", 1)]
    );
    let cases = store.cases(id).await.unwrap();
    assert_eq!(cases.len(), 3);
    let two = &cases[1].record;
    assert_eq!(
        (two.case_id.as_str(), two.passed, two.must_pass, two.score),
        ("two", false, false, 0.25)
    );
    assert_eq!(two.error.as_deref(), Some("the target said: no"));
    assert_eq!(two.checks[0].detail, json!({"words": 87, "limit": 100}));
    assert_eq!(two.checks[1].detail, json!("found \"README\""));
    assert!(!two.checks[1].passed);
    assert_eq!(two.requests[0].ttft_ms, Some(120.25));
    assert_eq!(two.requests[0].cache_read_input_tokens, 1200);
    assert_eq!(
        two.requests[1],
        RequestMetrics {
            ttft_ms: None,
            e2e_ms: 15.0,
            ..Default::default()
        }
    );
    assert!(two.transcript["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("日本語, \"quotes\" & <tags>"));
    let call = &cases[2].record;
    assert_eq!(
        (call.sample, call.category.as_deref(), call.tool_calls),
        (1, Some("tool_calls"), 1)
    );
    assert!(cases[0].record.must_pass);
    let verdicts = store.latest_qualifications().await.unwrap();
    assert_eq!(verdicts.len(), 1);
    assert!(!verdicts[0].qualified);
    assert_eq!(verdicts[0].run_id, id);
    assert_eq!(verdicts[0].gates[0].run_id, Some(id));
    assert_eq!(store.resolve_run("latest:full").await.unwrap(), id);
}

#[tokio::test]
async fn records_read_back_as_written_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    records_read_back_as_written(&DbLocation::Sqlite(dir.path().join("runs.db"))).await;
}

#[tokio::test]
async fn records_read_back_as_written_on_postgres() {
    if let Some(db) = postgres_database().await {
        records_read_back_as_written(&db).await;
    }
}
