//! `showdown qualify`: gates checked against stored runs (hand-computed
//! figures), and the binary running what is missing on the real engine, then
//! reusing it, storing each verdict, and exiting by the verdict.

use serde_json::Value;
use showdown::{evaluate_qualification, Store, SuiteEvidence, SuiteGates};

use crate::compare::database;
use crate::util::TestEnv;

fn gates(toml_text: &str) -> SuiteGates {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn gates_hold_or_fail_on_stored_figures() {
    let env = TestEnv::new();
    let db = database(&env);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(std::path::Path::new(&db)).await.unwrap();
        // Run 5: 8 of 10 cases pass (case-03 and case-07 fail), requests
        // around 1000 ms (±10%), TTFT a fifth of that; case-00 is must-pass.
        let cases = store.cases(5).await.unwrap();
        let evidence = [SuiteEvidence {
            suite: "speed".into(),
            run_id: Some(5),
            cases: cases.iter().collect(),
        }];
        let check = |text: &str| {
            evaluate_qualification(
                "p",
                "test-model",
                &[("speed".into(), gates(text))],
                &evidence,
            )
        };

        let verdict = check("min_pass_rate = 0.8\nmax_p50_e2e_ms = 1200\nmax_p50_ttft_ms = 250");
        assert!(verdict.qualified, "{verdict:#?}");
        assert_eq!(verdict.run_ids, vec![5]);
        let rate = &verdict.gates[0];
        assert_eq!((rate.gate.as_str(), rate.value), ("pass_rate", Some(0.8)));
        assert_eq!(rate.detail, "8/10 samples passed");
        // The suite's own must-pass case (case-00) passed.
        let must = verdict
            .gates
            .iter()
            .find(|g| g.gate == "must_pass")
            .unwrap();
        assert!(must.passed && must.value == Some(1.0), "{must:?}");

        let verdict = check("min_pass_rate = 0.9");
        assert!(!verdict.qualified);
        assert!(!verdict.gates[0].passed);
        assert_eq!(verdict.gates[0].limit, "≥ 90%");

        let verdict = check("max_p50_e2e_ms = 800\nmin_decode_tok_s = 1000");
        let failed: Vec<&str> = verdict
            .gates
            .iter()
            .filter(|g| !g.passed)
            .map(|g| g.gate.as_str())
            .collect();
        // Decode speed is 40 tokens over 0.8 of ~1000 ms: ~50 tok/s.
        assert_eq!(failed, ["p50_e2e_ms", "decode_tok_s"]);
        let decode = verdict
            .gates
            .iter()
            .find(|g| g.gate == "decode_tok_s")
            .unwrap();
        assert!((decode.value.unwrap() - 50.0).abs() < 6.0, "{decode:?}");

        let verdict = check("must_pass_cases = [\"case-03\", \"case-04\"]");
        let must = verdict
            .gates
            .iter()
            .find(|g| g.gate == "must_pass")
            .unwrap();
        assert!(!must.passed);
        assert!(must.detail.contains("case-03") && !must.detail.contains("case-04"));

        // A suite the run lacks fails its gates rather than passing silently.
        let verdict = evaluate_qualification(
            "p",
            "test-model",
            &[("missing".into(), gates("min_pass_rate = 0.0"))],
            &evidence,
        );
        assert!(!verdict.qualified);
        assert_eq!(verdict.gates[0].gate, "run");
    });
}

const TINY_SUITE: &str = r#"
name = "tiny"
version = 1
description = "One arithmetic question"

[defaults]
max_tokens = 24
max_turns = 1
temperature = 0.0

[[case]]
id = "arithmetic"
category = "word_limit"
prompt = "What is 2 + 2? Answer in fewer than 10 words."
must_pass = false
[[case.check]]
kind = "max_words"
limit = 9
"#;

fn qualification_file(suite: &str) -> String {
    format!(
        r#"
default_profile = "fast"

[profiles.fast]
description = "Answers at all"
[profiles.fast.suites."{suite}"]
max_p50_e2e_ms = 600000

[profiles.impossible]
description = "Faster than any machine"
[profiles.impossible.suites."{suite}"]
min_decode_tok_s = 1e9
"#
    )
}

fn json(run: &crate::util::Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", run.stdout, run.stderr))
}

#[test]
fn qualify_runs_what_is_missing_then_reuses_it() {
    let env = TestEnv::new();
    let suite = env.write("evals/tiny.toml", TINY_SUITE);
    let config = env.write(
        "evals/qualification.toml",
        qualification_file(suite.to_str().unwrap()),
    );
    let db = env.path("showdown.db");
    let (config, db) = (config.to_str().unwrap(), db.to_str().unwrap());
    let qualify = |extra: &[&str]| {
        let mut args = vec![
            "qualify",
            "--config",
            config,
            "--db",
            db,
            "--model",
            "smollm2-135m",
        ];
        args.extend_from_slice(extra);
        env.showdown_with_models(&args)
    };

    // No run yet: the suite runs on the real engine, and the verdict holds.
    let first = qualify(&["--json"]);
    assert_eq!(first.code, Some(0), "{}{}", first.stdout, first.stderr);
    assert!(first.stderr.contains("running"), "{}", first.stderr);
    let verdicts = json(&first);
    assert_eq!(verdicts[0]["profile"], "fast");
    assert_eq!(verdicts[0]["qualified"], true);
    assert_eq!(verdicts[0]["gates"][0]["gate"], "p50_e2e_ms");
    assert!(verdicts[0]["gates"][0]["value"].as_f64().unwrap() > 0.0);
    let run_id = verdicts[0]["run_ids"][0].as_i64().unwrap();

    // Again: the current run is reused, nothing runs, a second verdict is stored.
    let again = qualify(&["--profile", "impossible"]);
    assert_eq!(
        again.code,
        Some(1),
        "not qualified exits 1\n{}{}",
        again.stdout,
        again.stderr
    );
    assert!(again.stderr.contains("every suite has a current run"));
    assert!(again
        .stdout
        .contains("smollm2-135m for `impossible`: NOT QUALIFIED"));
    assert!(
        again.stdout.contains("| tiny | decode_tok_s |"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("≥ 1000000000"));

    // A stored run judged directly.
    let direct = env.showdown_with_models(&[
        "qualify",
        "--config",
        config,
        "--db",
        db,
        "--run",
        &run_id.to_string(),
        "--json",
    ]);
    assert_eq!(direct.code, Some(0), "{}{}", direct.stdout, direct.stderr);
    assert_eq!(json(&direct)[0]["run_ids"][0], run_id);

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(std::path::Path::new(db)).await.unwrap();
        assert_eq!(
            store.list_runs(10).await.unwrap().len(),
            1,
            "one run, reused"
        );
        let latest = store.latest_qualifications().await.unwrap();
        let by_profile: Vec<(&str, bool)> = latest
            .iter()
            .map(|v| (v.profile.as_str(), v.qualified))
            .collect();
        assert_eq!(by_profile, [("fast", true), ("impossible", false)]);
        assert_eq!(latest[1].gates[0].gate, "decode_tok_s");
    });

    // Bad input: an unknown profile, a broken file.
    qualify(&["--profile", "nope"])
        .failure()
        .stderr_has("no profile `nope` (profiles: fast, impossible)");
    let broken = env.write("broken.toml", "default_profile = \"x\"\n[profiles]\n");
    env.showdown_embedded(&["qualify", "--config", broken.to_str().unwrap(), "--db", db])
        .failure()
        .stderr_has("default_profile `x` is not a profile");
}

#[test]
fn shipped_qualification_file_names_real_suites() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("evals");
    let file = showdown::QualificationFile::load(&dir.join("qualification.toml")).unwrap();
    let (name, profile) = file.profile(None).unwrap();
    assert_eq!(name, "agentic-coding");
    for suite in profile.suites.keys() {
        showdown::load_suite(dir.join(format!("{suite}.toml")))
            .unwrap_or_else(|e| panic!("profile names suite `{suite}`: {e}"));
    }
}
