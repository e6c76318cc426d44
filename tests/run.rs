//! `showdown run` end to end: the real binary, the real model behind the
//! builtin server, a real SQLite file; then what the database holds, an
//! interrupted run, `runs show`, `rescore` and `rerun`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Runs the binary with the user's model cache and `cwd` as working directory.
fn showdown(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SHOWDOWN_DB")
        .output()
        .expect("run showdown")
}

fn ok(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "showdown failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn json(output: &std::process::Output) -> Value {
    serde_json::from_str(&ok(output)).expect("JSON output")
}

/// The first case id of a shipped suite.
fn first_case(suite: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("evals/{suite}.toml"));
    let suite = showdown::load_suite(&path).expect("shipped suite loads");
    suite.cases[0].id.clone()
}

#[test]
fn run_records_everything_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let word_case = format!("word-limit/{}", first_case("word-limit"));
    let out = showdown(
        dir.path(),
        &[
            "run",
            "--model",
            "smollm2-135m",
            "--suite",
            "word-limit",
            "--case",
            &word_case,
            "--db",
            db,
            "--label",
            "test",
            "--json",
        ],
    );
    let report = json(&out);
    assert_eq!(report["status"], "complete");
    let run_id = report["run_id"].as_i64().unwrap();
    assert_eq!(report["summaries"][0]["suite"], "word-limit");
    assert_eq!(report["summaries"][0]["samples"], 1);

    let shown = json(&showdown(
        dir.path(),
        &["runs", "show", "latest:test", "--db", db, "--json"],
    ));
    let run = &shown["run"];
    assert_eq!(run["id"], run_id);
    assert_eq!(run["status"], "complete");
    assert!(run["target"].as_str().unwrap().starts_with("builtin:"));
    assert_eq!(run["model_sha256"].as_str().unwrap().len(), 64);
    assert!(run["host"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(run["host_fingerprint"].as_str().unwrap().len(), 16);
    assert!(run["peak_memory_bytes"].as_i64().unwrap() > 0);
    assert_eq!(run["suites"][0]["hash"].as_str().unwrap().len(), 64);
    let case = &shown["cases"][0];
    assert_eq!(case["suite"], "word-limit");
    assert!(!case["checks"].as_array().unwrap().is_empty());
    let request = &case["requests"][0];
    assert!(request["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(request["e2e_ms"].as_f64().unwrap() >= request["ttft_ms"].as_f64().unwrap());
    assert!(
        request["input_tokens"].as_u64().unwrap()
            + request["cache_read_input_tokens"].as_u64().unwrap()
            > 0
    );
    assert!(request["output_tokens"].as_u64().unwrap() > 0);
    let transcript = &case["transcript"];
    assert!(transcript["conversation"]["exchanges"][0]["response"]["content"].is_array());
    assert_eq!(
        transcript["final_text"],
        transcript["conversation"]["exchanges"][0]["response"]["content"][0]["text"]
    );

    // Re-scoring keeps the verdict of an unchanged scorer.
    let rescored = ok(&showdown(
        dir.path(),
        &["rescore", &run_id.to_string(), "--db", db],
    ));
    assert!(rescored.contains("0 verdicts changed"), "{rescored}");

    // Greedy sampling: the same pins give the same transcript.
    let rerun = ok(&showdown(
        dir.path(),
        &["rerun", &run_id.to_string(), "--db", db],
    ));
    assert!(rerun.contains("transcripts identical"), "{rerun}");
}

#[test]
fn agent_case_uses_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let case = format!("summarize/{}", first_case("summarize"));
    let report = json(&showdown(
        dir.path(),
        &[
            "run",
            "--model",
            "smollm2-135m",
            "--suite",
            "summarize",
            "--case",
            &case,
            "--db",
            db,
            "--json",
        ],
    ));
    assert_eq!(report["status"], "complete");
    let shown = json(&showdown(
        dir.path(),
        &["runs", "show", "latest", "--db", db, "--json"],
    ));
    let case = &shown["cases"][0];
    let kinds: Vec<&str> = case["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"max_words"), "{kinds:?}");
    let max_words = case["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "max_words")
        .unwrap();
    assert!(
        max_words["detail"].is_object(),
        "the word count is recorded: {max_words}"
    );
    // The agent prompt offers the sandbox tools.
    let tools = case["transcript"]["conversation"]["tools"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    for tool in ["Read", "Glob", "Grep", "LS"] {
        assert!(names.contains(&tool), "{names:?}");
    }
}

#[test]
fn killed_run_is_marked_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db_arg = db.to_str().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args([
            "run",
            "--model",
            "smollm2-135m",
            "--suite",
            "word-limit",
            "--db",
            &db_arg,
            "--json",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first case is stored, then kill -9.
    for _ in 0..600 {
        if db.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the run finish creating its schema before reading beside it.
    std::thread::sleep(Duration::from_secs(2));
    let mut stored = 0;
    for _ in 0..1200 {
        std::thread::sleep(Duration::from_millis(250));
        if let Ok(out) = Command::new(env!("CARGO_BIN_EXE_showdown"))
            .args(["runs", "list", "--db", &db_arg, "--json"])
            .current_dir(dir.path())
            .output()
        {
            // Opening the store while the run lives must not mark it incomplete.
            if let Ok(runs) = serde_json::from_slice::<Value>(&out.stdout) {
                if let Some(run) = runs.get(0) {
                    assert_eq!(run["status"], "running");
                }
            }
        }
        if let Ok(count) = count_cases(&db) {
            stored = count;
            if stored >= 1 {
                break;
            }
        }
    }
    assert!(stored >= 1, "no case was stored");
    child.kill().unwrap();
    child.wait().unwrap();
    let runs = json(&showdown(
        dir.path(),
        &["runs", "list", "--db", &db_arg, "--json"],
    ));
    assert_eq!(runs[0]["status"], "incomplete", "{runs}");
    let shown = json(&showdown(
        dir.path(),
        &[
            "runs",
            "show",
            &runs[0]["id"].to_string(),
            "--db",
            &db_arg,
            "--json",
        ],
    ));
    assert!(shown["cases"].as_array().unwrap().len() >= stored);
    // `latest` never picks an incomplete run.
    let latest = showdown(dir.path(), &["runs", "show", "latest", "--db", &db_arg]);
    assert!(!latest.status.success());
}

fn count_cases(db: &Path) -> Result<usize, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args(["runs", "show", "1", "--db", db.to_str().unwrap(), "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v["cases"].as_array().map_or(0, Vec::len))
}
