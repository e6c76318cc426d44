//! The binary as `cargo install` leaves it: copied out of the build tree and
//! run from an empty directory, with its own home, it finds the suites, the
//! fixtures its agent cases explore and the templates inside itself.
//! `qualify` runs the shipped profile end to end (against a deterministic
//! fake target, so no model is needed), the run's suites hash as the
//! checkout's do, and `--suites-dir` / `--templates-dir` replace what is
//! built in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use showdown::Store;

use crate::concurrency::AgentFake;

/// The installed binary, run in `cwd` with nothing of the checkout around.
struct Installed {
    bin: PathBuf,
    home: PathBuf,
    cwd: PathBuf,
}

impl Installed {
    fn new(root: &Path) -> Self {
        let bin_dir = root.join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let bin = bin_dir.join("showdown");
        std::fs::copy(env!("CARGO_BIN_EXE_showdown"), &bin).unwrap();
        let cwd = root.join("elsewhere");
        std::fs::create_dir_all(&cwd).unwrap();
        Self {
            bin,
            home: root.join("home"),
            cwd,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .current_dir(&self.cwd)
            .env("SHOWDOWN_HOME", &self.home)
            .env("HOME", self.home.join("user"))
            .env_remove("XDG_CACHE_HOME")
            .env_remove("SHOWDOWN_DB")
            .env_remove("SHOWDOWN_MODELS_FILE")
            .env_remove("SHOWDOWN_SUITES_DIR")
            .env_remove("SHOWDOWN_TEMPLATES_DIR");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The checkout's HEAD, short, as build.rs records it.
fn checkout_head() -> Option<String> {
    let out = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn an_installed_binary_qualifies_from_any_directory() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = AgentFake::start(&runtime, Duration::ZERO);
    let root = tempfile::tempdir().unwrap();
    let installed = Installed::new(root.path());
    assert!(!installed.cwd.join("evals").exists());

    // The shipped profile, every suite of it, through the agent loop.
    let qualify = installed.run(&["qualify", "--target", &fake.url, "--model", "fake"]);
    let log = text(&qualify);
    assert!(matches!(qualify.status.code(), Some(0 | 1)), "{log}");
    assert!(log.contains("fake for `agentic-coding`"), "{log}");
    assert!(log.contains("| summarize | pass_rate |"), "{log}");
    assert!(installed.cwd.join("showdown.db").is_file(), "{log}");

    // The suites unpacked under the binary's home are the checkout's: same
    // hashes (suite text and fixture files), and the agent cases explored
    // the fixtures there without an error.
    let unpacked = installed
        .home
        .join("suites")
        .join(showdown::assets::embedded_digest());
    assert!(unpacked.join("evals/summarize.toml").is_file());
    assert!(unpacked.join("fixtures/repos/csvtool/README.md").is_file());
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("evals");
    runtime.block_on(async {
        let store = Store::open(&installed.cwd.join("showdown.db"))
            .await
            .unwrap();
        let runs = store.list_runs(10).await.unwrap();
        assert_eq!(runs.len(), 1);
        let run = store.run(runs[0].id).await.unwrap().unwrap();
        assert_eq!(run.suites.len(), 3);
        for stored in &run.suites {
            let shipped =
                showdown::load_suite(checkout.join(format!("{}.toml", stored.suite))).unwrap();
            assert_eq!(stored.hash, shipped.hash, "{}", stored.suite);
            assert_eq!(stored.cases, shipped.cases.len() as i64);
        }
        let cases = store.cases(run.id).await.unwrap();
        let explored: Vec<_> = cases
            .iter()
            .filter(|c| c.record.suite == "summarize")
            .collect();
        assert!(!explored.is_empty());
        for case in explored {
            assert_eq!(case.record.error, None, "{}", case.record.case_id);
            assert!(
                case.record.turns >= 2,
                "{} used no tool",
                case.record.case_id
            );
            let results = case.record.transcript["conversation"]["exchanges"][1]["tool_results"][0]
                ["is_error"]
                .clone();
            assert_eq!(results, Value::Bool(false), "{}", case.record.case_id);
        }
        // The commit it was built from, although no checkout is asked.
        if let Some(head) = checkout_head() {
            let sha = run.git_sha.clone().unwrap_or_default();
            assert!(sha.starts_with(&head), "{sha} vs {head}");
        }
    });

    // A copy someone edited is written again before it is used.
    let word_limit = unpacked.join("evals/word-limit.toml");
    let shipped = std::fs::read(checkout.join("word-limit.toml")).unwrap();
    std::fs::write(&word_limit, "name = \"edited\"\n").unwrap();
    let again = installed.run(&[
        "run",
        "--target",
        &fake.url,
        "--model",
        "fake",
        "--suite",
        "word-limit",
        "--json",
    ]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(std::fs::read(&word_limit).unwrap(), shipped);
}

#[test]
fn suites_and_templates_directories_replace_the_built_in_ones() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = AgentFake::start(&runtime, Duration::ZERO);
    let root = tempfile::tempdir().unwrap();
    let installed = Installed::new(root.path());
    let mine = root.path().join("team/evals");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(
        mine.join("mine.toml"),
        r#"
name = "mine"
version = 1
description = "A team's own suite"

[[case]]
id = "hello"
category = "word_limit"
prompt = "Say hello to the team in a few words."
[[case.check]]
kind = "max_words"
limit = 50
"#,
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--target", &fake.url, "--model", "fake", "--json"];
        args.extend_from_slice(extra);
        installed.run(&args)
    };

    // By flag and by variable.
    let by_flag = run(&["--suites-dir", mine.to_str().unwrap(), "--suite", "mine"]);
    assert!(by_flag.status.success(), "{}", text(&by_flag));
    let report: Value = serde_json::from_slice(&by_flag.stdout).unwrap();
    assert_eq!(report["summaries"][0]["suite"], "mine");
    let by_env = installed
        .command(&[
            "run", "--target", &fake.url, "--model", "fake", "--suite", "mine",
        ])
        .env("SHOWDOWN_SUITES_DIR", &mine)
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{}", text(&by_env));
    // The built-in suites are not in it.
    let missing = run(&[
        "--suites-dir",
        mine.to_str().unwrap(),
        "--suite",
        "word-limit",
    ]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("loading suite `word-limit`"));
    // A directory that is not there is said to be so.
    let nowhere = run(&["--suites-dir", "/nonexistent/evals", "--suite", "mine"]);
    assert_eq!(nowhere.status.code(), Some(2));
    assert!(
        text(&nowhere)
            .contains("/nonexistent/evals (--suites-dir / SHOWDOWN_SUITES_DIR) is not a directory"),
        "{}",
        text(&nowhere)
    );

    // A template of the same path replaces the built-in one; the others stay.
    let templates = root.path().join("team/templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("compare.md.j2"),
        "Team report: run {{ base.id }} against run {{ head.id }}, {{ verdict }}.\n",
    )
    .unwrap();
    let db = installed.cwd.join("showdown.db");
    let compare = |dir: &Path| {
        installed.run(&[
            "compare",
            "1",
            "2",
            "--db",
            db.to_str().unwrap(),
            "--templates-dir",
            dir.to_str().unwrap(),
        ])
    };
    let custom = compare(&templates);
    assert!(
        matches!(custom.status.code(), Some(0 | 1)),
        "{}",
        text(&custom)
    );
    assert!(
        text(&custom).contains("Team report: run 1 against run 2, clean."),
        "{}",
        text(&custom)
    );
    let empty = root.path().join("team/no-templates");
    std::fs::create_dir_all(&empty).unwrap();
    let built_in = compare(&empty);
    assert!(
        text(&built_in).contains("## showdown compare: run 1 → run 2"),
        "{}",
        text(&built_in)
    );
    // A broken one is an error that names it.
    std::fs::write(templates.join("compare.md.j2"), "{% if %}").unwrap();
    let broken = compare(&templates);
    assert_eq!(broken.status.code(), Some(2));
    assert!(text(&broken).contains("compare.md.j2"), "{}", text(&broken));
}
