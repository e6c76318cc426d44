//! The team set-up: several `showdown run` processes writing one results
//! database at once (a real PostgreSQL server, and SQLite beside it), a
//! writer killed with SIGKILL, `compare` and the dashboard reading
//! PostgreSQL as they read SQLite, and `showdown db copy` moving a history
//! SQLite → PostgreSQL → SQLite with nothing lost or changed.
//!
//! The targets are the fault tests' raw loopback servers answering valid
//! Messages streams, each writer its own with its own answer, so a case
//! written under the wrong run would show.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use showdown::{DbLocation, Store};

use crate::compare::{cases, store_run, ALL_PASS, PINS};
use crate::faults::{runner, sse, valid_events, Behaviour, FakeTarget, SSE_HEAD};
use crate::store::{dump, new_run, store_full_run};
use crate::util::{free_port, postgres_database, ChildGuard};

/// A suite of `n` one-turn cases, each passing whatever the target says.
fn write_suite(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("writers.toml");
    let mut text = String::from(
        "name = \"writers\"\nversion = 1\ndescription = \"concurrent writers\"\n\n[defaults]\nmax_turns = 1\ntemperature = 0.0\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[case]]\nid = \"case-{i:02}\"\ncategory = \"word_limit\"\nprompt = \"Say hi, {i}.\"\nmax_tokens = 16\n[[case.check]]\nkind = \"max_words\"\nlimit = 10000\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A target answering every request with `text`, after `delay` (so that
/// writers started together overlap).
fn answering(text: &str, delay: Duration) -> FakeTarget {
    FakeTarget::start(Behaviour::WriteAfter(
        delay,
        format!("{SSE_HEAD}{}", sse(&valid_events(text))).into(),
    ))
}

fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

/// `writers` runner processes started together into `db`, `cases` cases
/// each: every run complete with exactly its own cases, each case's
/// transcript holding its own target's answer, none lost, none doubled.
async fn concurrent_writers(dir: &Path, db: &DbLocation, writers: usize, n: usize) {
    // The schema first, as a team's database has it: the writers then race
    // only on their rows (sqlx's migrator locks the schema on PostgreSQL).
    drop(Store::connect(db).await.unwrap());
    let suite = write_suite(dir, n);
    let targets: Vec<FakeTarget> = (0..writers)
        .map(|w| answering(&format!("answer of writer {w}"), Duration::from_millis(20)))
        .collect();
    let started = Instant::now();
    let children: Vec<_> = targets
        .iter()
        .map(|target| {
            runner(dir, &target.url, &suite, db.as_arg(), &[])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let wall = started.elapsed();

    let store = Store::connect(db).await.unwrap();
    let mut stored = 0;
    for (w, (out, target)) in outputs.iter().zip(&targets).enumerate() {
        let report = report(out);
        assert_eq!(report["status"], "complete");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('[')).collect();
        assert_eq!(lines.len(), n, "a line per finished case: {stderr}");
        assert!(lines[0].starts_with(&format!("[1/{n}] writers/case-00 pass in ")));
        assert!(lines[n - 1].ends_with(" s, 0 left"), "{}", lines[n - 1]);
        assert_eq!(target.accepted(), n, "one request per case");
        let id = report["run_id"].as_i64().unwrap();
        let run = store.run(id).await.unwrap().unwrap();
        assert_eq!(run.status, "complete");
        assert_eq!(
            run.target, target.url,
            "writer {w}'s run holds its own target"
        );
        let cases = store.cases(id).await.unwrap();
        let ids: BTreeSet<String> = cases.iter().map(|c| c.record.case_id.clone()).collect();
        assert_eq!(cases.len(), n, "writer {w}: every case once");
        assert_eq!(ids.len(), n, "writer {w}: no case twice");
        for case in &cases {
            assert!(case.record.passed, "{:?}", case.record.error);
            assert_eq!(case.record.requests.len(), 1);
            let transcript = case.record.transcript.to_string();
            assert!(
                transcript.contains(&format!("answer of writer {w}")),
                "writer {w}'s case {} holds another's transcript: {transcript}",
                case.record.case_id
            );
        }
        stored += cases.len();
    }
    // The writers really overlapped: their cases interleave in insertion order.
    let order: Vec<i64> = sqlx::query_scalar("SELECT run_id FROM case_results ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= writers,
        "the writers ran one after another ({switches} switches): nothing concurrent was tested"
    );
    eprintln!(
        "{db}: {writers} writers × {n} cases: {stored} stored of {}, none lost, \
         {switches} switches between runs, {:.1} s",
        writers * n,
        wall.as_secs_f64()
    );
}

#[tokio::test]
async fn concurrent_writers_into_postgres_never_lose_or_mix_a_case() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    concurrent_writers(dir.path(), &db, 3, 25).await;
}

#[tokio::test]
async fn concurrent_writers_into_sqlite_never_lose_or_mix_a_case() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbLocation::Sqlite(dir.path().join("runs.db"));
    concurrent_writers(dir.path(), &db, 3, 25).await;
}

/// Two writers; one is killed with SIGKILL while it waits on a silent
/// target. Its run is incomplete at the next reader, the other's complete.
#[tokio::test]
async fn a_killed_writer_leaves_its_run_incomplete_and_the_other_complete() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    drop(Store::connect(&db).await.unwrap());
    let suite = write_suite(dir.path(), 10);
    let silent = FakeTarget::start(Behaviour::Silent);
    let answers = answering("the other writer", Duration::from_millis(20));
    let mut doomed = ChildGuard(
        runner(dir.path(), &silent.url, &suite, db.as_arg(), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let other = runner(dir.path(), &answers.url, &suite, db.as_arg(), &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The doomed run exists, and while its process lives it stays running
    // whoever reads.
    let started = Instant::now();
    let doomed_id = loop {
        let store = Store::connect(&db).await.unwrap();
        let runs = store.list_runs(10).await.unwrap();
        if let Some(run) = runs.iter().find(|r| r.target == silent.url) {
            break run.id;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no doomed run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let finished = report(&other.wait_with_output().unwrap());
    let store = Store::connect(&db).await.unwrap();
    assert_eq!(
        store.run(doomed_id).await.unwrap().unwrap().status,
        "running"
    );

    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();
    let started = Instant::now();
    let run = loop {
        let store = Store::connect(&db).await.unwrap();
        let run = store.run(doomed_id).await.unwrap().unwrap();
        if run.status != "running" {
            break run;
        }
        // The server notices the dead client when its socket closes.
        assert!(started.elapsed() < Duration::from_secs(10), "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run.status, "incomplete");
    assert_eq!(
        run.error.as_deref(),
        Some("the run's process ended before it finished")
    );
    let store = Store::connect(&db).await.unwrap();
    let other = store
        .run(finished["run_id"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.status, "complete");
    assert_eq!(store.cases(other.id).await.unwrap().len(), 10);
}

/// A dump with run ids replaced by their position among the dump's runs
/// (every reference too) and row ids dropped: equal for equal histories in
/// any store.
fn normalized(mut dump: Value) -> Value {
    let runs = dump["runs"].as_array_mut().unwrap();
    let positions: HashMap<i64, usize> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| (r["run"]["id"].as_i64().unwrap(), i))
        .collect();
    let position = |id: &Value| Value::from(positions[&id.as_i64().unwrap()]);
    for run in runs.iter_mut() {
        run["run"]["id"] = position(&run["run"]["id"]);
        for case in run["cases"].as_array_mut().unwrap() {
            case.as_object_mut().unwrap().remove("id");
        }
    }
    for verdict in dump["verdicts"].as_array_mut().unwrap() {
        verdict.as_object_mut().unwrap().remove("id");
        verdict["run_id"] = position(&verdict["run_id"]);
        for gate in verdict["gates"].as_array_mut().unwrap() {
            gate["run_id"] = position(&gate["run_id"]);
        }
    }
    dump
}

fn showdown(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args(args)
        .env_remove("SHOWDOWN_DB")
        .output()
        .unwrap()
}

fn copy(from: &str, to: &str) -> Value {
    report(&showdown(&["db", "copy", from, to, "--json"]))
}

/// SQLite → PostgreSQL → a new SQLite file: every run, suite, case, check,
/// request and verdict equal (ids aside); copying again adds nothing; a run
/// still running stays behind. Then `compare` and the dashboard over the
/// PostgreSQL copy say what they say over the SQLite one.
#[tokio::test]
async fn db_copy_round_trips_and_compare_and_the_dashboard_read_postgres() {
    let Some(pg) = postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.db");
    let store = Store::open(&source).await.unwrap();
    // Held open (its lock taken) through the copies: not copied.
    let running = store.create_run(&new_run("still going")).await.unwrap();
    let base = store_run(&store, &PINS, "base", &cases(&ALL_PASS, 1000.0, 1)).await;
    let mut flipped = ALL_PASS;
    flipped[3] = false;
    let head = store_run(&store, &PINS, "head", &cases(&flipped, 1400.0, 2)).await;
    store_full_run(&store, "full", true).await;
    let source_dump = dump(&store).await;

    let source_arg = format!("sqlite:{}", source.display());
    let there = copy(&source_arg, &pg.as_arg());
    assert_eq!(there["runs"].as_array().unwrap().len(), 3, "{there}");
    assert_eq!(there["running"], serde_json::json!([running]));
    assert_eq!(there["cases"], 10 + 10 + 3);
    assert_eq!(there["checks"], 6);
    assert_eq!(there["requests"], 40 + 40 + 6);
    assert_eq!(there["qualifications"], 1);
    let again = copy(&source_arg, &pg.as_arg());
    assert_eq!(again["runs"], serde_json::json!([]), "{again}");
    assert_eq!(again["already_there"].as_array().unwrap().len(), 3);
    assert_eq!(again["qualifications"], 0);

    let back = dir.path().join("back.db");
    let back_arg = format!("sqlite:{}", back.display());
    assert_eq!(
        copy(&pg.as_arg(), &back_arg)["runs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let finished = |mut dump: Value| {
        dump["runs"]
            .as_array_mut()
            .unwrap()
            .retain(|r| r["run"]["status"] != "running");
        normalized(dump)
    };
    let expected = finished(source_dump);
    let pg_store = Store::connect(&pg).await.unwrap();
    assert_eq!(
        finished(dump(&pg_store).await),
        expected,
        "SQLite → PostgreSQL"
    );
    let back_store = Store::open(&back).await.unwrap();
    assert_eq!(
        finished(dump(&back_store).await),
        expected,
        "SQLite → PostgreSQL → SQLite"
    );
    drop(store);

    // compare reads PostgreSQL as SQLite: the same regressions, the same
    // report. The copies number the three runs alike (1, 2, 3).
    let mapped: HashMap<i64, i64> = there["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| (pair[0].as_i64().unwrap(), pair[1].as_i64().unwrap()))
        .collect();
    let (base, head) = (mapped[&base].to_string(), mapped[&head].to_string());
    let over_pg = showdown(&["compare", &base, &head, "--db", &pg.as_arg(), "--json"]);
    let over_sqlite = showdown(&["compare", &base, &head, "--db", &back_arg, "--json"]);
    assert_eq!(
        over_pg.status.code(),
        Some(1),
        "a regression is found over PostgreSQL"
    );
    assert_eq!(over_sqlite.status.code(), Some(1));
    let pg_report: Value = serde_json::from_slice(&over_pg.stdout).unwrap();
    let sqlite_report: Value = serde_json::from_slice(&over_sqlite.stdout).unwrap();
    assert_eq!(pg_report, sqlite_report);
    assert!(pg_report.to_string().contains("case-03"), "{pg_report}");

    // The dashboard over each: the same run pages and overview.
    let mut pages = Vec::new();
    for db in [pg.as_arg(), back_arg.clone()] {
        let addr = format!("127.0.0.1:{}", free_port());
        let _dashboard = ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_showdown"))
                .args(["dashboard", "--db", &db, "--addr", &addr])
                .env_remove("SHOWDOWN_DB")
                .env_remove("SHOWDOWN_API_KEY")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no dashboard on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut got = Vec::new();
        for path in ["/api/overview", "/api/runs/3", "/dashboard/runs/3"] {
            let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            assert_eq!(response.status(), 200, "{db}{path}");
            got.push(response.text().await.unwrap());
        }
        pages.push(got);
    }
    assert_eq!(
        pages[0], pages[1],
        "the dashboard over PostgreSQL and SQLite"
    );
    assert!(
        pages[0][2].contains("pass_rate"),
        "the run page's gates table"
    );
}

/// A server that refuses, or a database that is not there: exit 2 with the
/// server's reason, and the password never printed.
#[test]
fn an_unreachable_server_or_missing_database_is_a_clear_error() {
    let server = std::env::var(crate::util::POSTGRES_ENV).unwrap_or_default();
    if server == "skip" {
        return;
    }
    let refused = format!("postgres://showdown:hunter2@127.0.0.1:{}/x", free_port());
    let out = showdown(&["runs", "list", "--db", &refused]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(stderr.contains("showdown:***@"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let mut missing = url::Url::parse(&server).expect("SHOWDOWN_TEST_POSTGRES is a URL");
    missing.set_path("/no_such_database");
    let out = showdown(&["runs", "list", "--db", missing.as_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no_such_database"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}
