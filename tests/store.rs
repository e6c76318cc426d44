//! The results store on a real SQLite file: a live run is known by the lock
//! its process holds (not by its pid), and a database migrated by a newer
//! build stays readable and writable.

use std::path::Path;

use serde_json::json;
use showdown::{CaseRecord, HostInfo, NewRun, Store};

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

async fn status(db: &Path, id: i64) -> String {
    let store = Store::open(db).await.unwrap();
    store.run(id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn a_run_is_live_while_its_lock_is_held_whatever_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let runner = Store::open(&db).await.unwrap();
    let id = runner.create_run(&new_run("live")).await.unwrap();
    assert!(dir.path().join(format!("runs.db.runs/{id}.lock")).exists());
    // Another handle (another file description, as another process has)
    // sees the lock held: the run stays running.
    assert_eq!(status(&db, id).await, "running");
    assert_eq!(status(&db, id).await, "running");
    // The runner goes away without finishing (its lock is released, as the
    // OS releases a dead process's). The row's pid is this test's, alive:
    // liveness by pid would keep it running forever.
    drop(runner);
    assert_eq!(status(&db, id).await, "incomplete");
    let store = Store::open(&db).await.unwrap();
    let row = store.run(id).await.unwrap().unwrap();
    assert_eq!(
        row.error.as_deref(),
        Some("the run's process ended before it finished")
    );
    assert!(!dir.path().join(format!("runs.db.runs/{id}.lock")).exists());

    // A finished run gives its lock back and stays finished.
    let id = store.create_run(&new_run("done")).await.unwrap();
    store.finish_run(id, "complete", None, None).await.unwrap();
    assert!(!dir.path().join(format!("runs.db.runs/{id}.lock")).exists());
    drop(store);
    assert_eq!(status(&db, id).await, "complete");
}

/// A database a newer build migrated (one more applied migration, one more
/// column): this build opens it, reads the old runs, and appends new ones.
#[tokio::test]
async fn an_older_build_reads_and_appends_to_a_newer_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let store = Store::open(&db).await.unwrap();
    let old = store.create_run(&new_run("before")).await.unwrap();
    store.record_case(old, &case("a")).await.unwrap();
    store.finish_run(old, "complete", None, None).await.unwrap();
    // What a newer build's migration 0099 would leave behind.
    sqlx::query("ALTER TABLE runs ADD COLUMN newer_field TEXT DEFAULT NULL")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99, 'from a newer build', 1, x'00ff', 1)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    drop(store);

    let store = Store::open(&db)
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
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(check, "ok");
}
