//! Scorers against hand-worked expectations (IFEval counts, BFCL matching), and
//! the shipped suites: they load, they have the cases the issue asks for, and
//! their reference answers pass their own checks.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Value};
use showdown::{
    count_bullets, count_sentences, count_words, load_suites, normalize_string, score_case,
    score_check, CaseScore, Check, CountBound, ExpectedCall, Transcript,
    TranscriptCall as ToolCall, CATEGORIES,
};

fn answer(text: &str) -> Transcript {
    Transcript {
        final_text: text.to_string(),
        tool_calls: Vec::new(),
        turns: 1,
    }
}

fn calls(made: &[(&str, Value)]) -> Transcript {
    Transcript {
        final_text: String::new(),
        tool_calls: made
            .iter()
            .map(|(name, input)| ToolCall {
                name: name.to_string(),
                input: input.clone(),
                turn: 1,
            })
            .collect(),
        turns: 1,
    }
}

fn expected(name: &str, args: Value) -> ExpectedCall {
    ExpectedCall {
        name: name.to_string(),
        args: args.as_object().expect("args object").clone(),
    }
}

fn groups(groups: &[&[&str]]) -> Vec<Vec<String>> {
    groups
        .iter()
        .map(|g| g.iter().map(|k| k.to_string()).collect())
        .collect()
}

fn weather_tools() -> Vec<Value> {
    vec![
        json!({"name": "get_weather", "description": "Weather", "input_schema": {
        "type": "object", "required": ["city"],
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
        }}}),
        json!({"name": "create_event", "description": "Calendar", "input_schema": {
        "type": "object", "required": ["title", "duration_minutes"],
        "properties": {
            "title": {"type": "string"},
            "duration_minutes": {"type": "integer"},
            "budget": {"type": "number"},
            "attendees": {"type": "array", "items": {"type": "string"}}
        }}}),
    ]
}

#[test]
fn scoring_counts_words_ifeval_way() {
    assert_eq!(count_words("don't"), 2);
    assert_eq!(count_words("Don't panic, it's fine."), 6);
    // Numbers split at the dot; Unicode letters are word characters.
    assert_eq!(count_words("pi is 3.14 in a café"), 7);
    assert_eq!(count_words("  — … !!"), 0);
    assert_eq!(count_words("snake_case counts as one"), 4);
}

#[test]
fn scoring_word_limits_record_count_and_distance() {
    let over = score_check(
        &Check::MaxWords { limit: 3 },
        &answer("one two three four five"),
        &[],
    );
    assert!(!over.passed);
    assert_eq!(over.detail["count"], 5);
    assert_eq!(over.detail["distance"], 2);
    assert!((over.score - 0.6).abs() < 1e-9);

    let exact = score_check(&Check::MaxWords { limit: 2 }, &answer("don't"), &[]);
    assert!(exact.passed, "2 words is within a limit of 2");
    assert_eq!(exact.detail["distance"], 0);

    // An empty answer is not "fewer than N words": it ignores the instruction.
    let empty = score_check(&Check::MaxWords { limit: 50 }, &answer(" \n"), &[]);
    assert!(!empty.passed);
    assert_eq!(empty.score, 0.0);
    assert_eq!(empty.detail["count"], 0);

    let short = score_check(
        &Check::MinWords { limit: 10 },
        &answer("only four words here"),
        &[],
    );
    assert!(!short.passed);
    assert_eq!(short.detail["distance"], -6);
    assert!((short.score - 0.4).abs() < 1e-9);
}

#[test]
fn scoring_counts_bullets_ifeval_way() {
    let text =
        "Intro line\n* first\n* second\n  - third, indented\n**bold** is not a bullet\n-fourth\n";
    // `* first`, `* second`, `  - third`, `-fourth` count; `**bold` does not.
    assert_eq!(count_bullets(text), 4);
    let check = Check::Bullets(CountBound {
        exactly: Some(3),
        ..CountBound::default()
    });
    let result = score_check(&check, &answer(text), &[]);
    assert!(!result.passed);
    assert_eq!(result.detail["count"], 4);
    assert_eq!(result.detail["distance"], 1);
}

#[test]
fn scoring_counts_sentences_ifeval_way() {
    assert_eq!(count_sentences("One. Two! Three?"), 3);
    // Titles, decimals, web addresses and initials do not end sentences.
    assert_eq!(
        count_sentences("Dr. Smith paid 3.50 dollars at shop.com today."),
        1
    );
    assert_eq!(
        count_sentences("It was built by J. R. Tolkien fans. They liked it."),
        2
    );
    // An ellipsis ends a sentence once.
    assert_eq!(count_sentences("Wait... what happened"), 2);
    assert_eq!(count_sentences("No final stop"), 1);
    assert_eq!(count_sentences(""), 0);
    let check = Check::Sentences(CountBound {
        at_least: Some(2),
        at_most: Some(3),
        ..CountBound::default()
    });
    assert!(score_check(&check, &answer("Yes. No."), &[]).passed);
    assert!(!score_check(&check, &answer("One. Two. Three. Four."), &[]).passed);
    // Single letters with a dot are initials, not sentences.
    assert_eq!(count_sentences("A. B."), 1);
}

#[test]
fn scoring_facts_are_any_of_groups_at_word_boundaries() {
    let check = Check::Facts {
        groups: groups(&[&["rust"], &["csv", "comma-separated"], &["redis"]]),
    };
    let result = score_check(&check, &answer("A RUST tool for CSVs."), &[]);
    assert!(!result.passed);
    assert!((result.score - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(result.detail["found"], json!(["rust", "csv"]));
    assert_eq!(result.detail["missing"], json!([["redis"]]));

    // "trusty" does not mention "rust"; "csvtool" does not mention "csv".
    let partial = score_check(&check, &answer("a trusty csvtool with redis"), &[]);
    assert_eq!(partial.detail["found"], json!(["redis"]));

    let forbidden = Check::Forbidden {
        claims: groups(&[&["python"], &["postgres", "postgresql"]]),
    };
    let clean = score_check(
        &forbidden,
        &answer("Written in Go; stores links in Redis."),
        &[],
    );
    assert!(clean.passed);
    let caught = score_check(&forbidden, &answer("A Python app on PostgreSQL"), &[]);
    assert!(!caught.passed);
    assert_eq!(caught.detail["found"], json!(["python", "postgresql"]));
    assert_eq!(caught.score, 0.0);
}

#[test]
fn scoring_bfcl_simple_match_with_normalised_strings() {
    let check = Check::ToolCalls {
        calls: vec![expected(
            "get_weather",
            json!({"city": ["Paris, France"], "unit": ["celsius", "fahrenheit", ""]}),
        )],
    };
    let tools = weather_tools();
    // Case, spaces and punctuation do not matter; the optional unit may be left out.
    let made = calls(&[("get_weather", json!({"city": " paris france "}))]);
    let result = score_check(&check, &made, &tools);
    assert!(result.passed, "{}", result.detail);
    assert_eq!(result.score, 1.0);

    let wrong_city = calls(&[("get_weather", json!({"city": "Lyon", "unit": "celsius"}))]);
    let result = score_check(&check, &wrong_city, &tools);
    assert!(!result.passed);
    assert_eq!(result.detail["matched"], 0);
    let differences = result.detail["unmatched_expected"][0]["differences"].to_string();
    assert!(differences.contains("city"), "{differences}");

    let wrong_tool = calls(&[("create_event", json!({"title": "x", "duration_minutes": 5}))]);
    let result = score_check(&check, &wrong_tool, &tools);
    assert!(!result.passed);
    assert!(result.detail["unmatched_expected"][0]["differences"][0]
        .as_str()
        .unwrap()
        .contains("instead of `get_weather`"));
}

#[test]
fn scoring_bfcl_type_mismatches() {
    let tools = weather_tools();
    let check = Check::ToolCalls {
        calls: vec![expected(
            "create_event",
            json!({"title": ["Standup"], "duration_minutes": [15], "budget": ["", 20]}),
        )],
    };
    let ok = calls(&[(
        "create_event",
        json!({"title": "standup", "duration_minutes": 15, "budget": 20}),
    )]);
    assert!(
        score_check(&check, &ok, &tools).passed,
        "an integer is a valid number"
    );

    // A numeric string where an integer is expected is a type mismatch.
    let string_number = calls(&[(
        "create_event",
        json!({"title": "Standup", "duration_minutes": "15"}),
    )]);
    let result = score_check(&check, &string_number, &tools);
    assert!(!result.passed);
    let invalid = result.detail["invalid_calls"][0]["errors"].to_string();
    assert!(
        invalid.contains("expected integer, got string"),
        "{invalid}"
    );

    // So is a float where an integer is expected.
    let float = calls(&[(
        "create_event",
        json!({"title": "Standup", "duration_minutes": 15.0}),
    )]);
    assert!(!score_check(&check, &float, &tools).passed);

    // Array items are checked too.
    let items = Check::ValidToolCalls {};
    let bad_items = calls(&[(
        "create_event",
        json!({"title": "x", "duration_minutes": 5, "attendees": ["a@b.c", 7]}),
    )]);
    let result = score_check(&items, &bad_items, &tools);
    assert!(!result.passed);
    assert!(result.detail["invalid"]
        .to_string()
        .contains("attendees[1]"));
}

#[test]
fn scoring_bfcl_schema_validity() {
    let tools = weather_tools();
    let check = Check::ValidToolCalls {};
    let made = calls(&[
        ("get_weather", json!({"city": "Oslo"})),
        ("get_weather", json!({"unit": "kelvin"})),
        ("get_weather", json!({"city": "Oslo", "country": "NO"})),
        ("launch_rocket", json!({})),
    ]);
    let result = score_check(&check, &made, &tools);
    assert!(!result.passed);
    assert!((result.score - 0.25).abs() < 1e-9);
    let invalid = result.detail["invalid"].to_string();
    assert!(
        invalid.contains("missing required argument `city`"),
        "{invalid}"
    );
    assert!(invalid.contains("is not one of"), "{invalid}");
    assert!(
        invalid.contains("unexpected argument `country`"),
        "{invalid}"
    );
    assert!(
        invalid.contains("unknown tool `launch_rocket`"),
        "{invalid}"
    );
}

#[test]
fn scoring_bfcl_parallel_calls_match_in_any_order() {
    let tools = weather_tools();
    let check = Check::ToolCalls {
        calls: vec![
            expected("get_weather", json!({"city": ["London"]})),
            expected("get_weather", json!({"city": ["Berlin"]})),
        ],
    };
    let reversed = calls(&[
        ("get_weather", json!({"city": "Berlin"})),
        ("get_weather", json!({"city": "London"})),
    ]);
    assert!(score_check(&check, &reversed, &tools).passed);

    // A multiset: the same call twice does not cover both cities.
    let twice = calls(&[
        ("get_weather", json!({"city": "London"})),
        ("get_weather", json!({"city": "London"})),
    ]);
    let result = score_check(&check, &twice, &tools);
    assert!(!result.passed);
    assert_eq!(result.detail["matched"], 1);
    assert_eq!(result.score, 0.5);

    // An extra call is unexpected even when every expected call is there.
    let extra = calls(&[
        ("get_weather", json!({"city": "London"})),
        ("get_weather", json!({"city": "Berlin"})),
        ("get_weather", json!({"city": "Rome"})),
    ]);
    let result = score_check(&check, &extra, &tools);
    assert!(!result.passed);
    assert_eq!(
        result.detail["unexpected_calls"][0]["input"]["city"],
        "Rome"
    );

    // Missing one call.
    let one = calls(&[("get_weather", json!({"city": "London"}))]);
    let result = score_check(&check, &one, &tools);
    assert!(!result.passed);
    assert_eq!(
        result.detail["unmatched_expected"][0]["name"],
        "get_weather"
    );
}

#[test]
fn scoring_irrelevance_passes_only_without_calls() {
    let tools = weather_tools();
    let none = score_check(&Check::NoToolCalls {}, &answer("Ottawa."), &tools);
    assert!(none.passed);
    let called = calls(&[("get_weather", json!({"city": "Ottawa"}))]);
    let result = score_check(&Check::NoToolCalls {}, &called, &tools);
    assert!(!result.passed);
    assert_eq!(result.score, 0.0);
    assert_eq!(result.detail["calls"], json!(["get_weather"]));
    // An empty `tool_calls` expectation means the same.
    let empty = Check::ToolCalls { calls: vec![] };
    assert!(!score_check(&empty, &called, &tools).passed);
    assert!(score_check(&empty, &answer("Ottawa."), &tools).passed);
}

#[test]
fn scoring_agent_tasks_on_answer_and_calls_made() {
    let mut transcript = calls(&[
        ("LS", json!({"path": "/repo"})),
        ("Grep", json!({"pattern": "version"})),
    ]);
    transcript.final_text = "csvtool is at version 0.4.2.".into();
    let contains = Check::AnswerContains {
        groups: groups(&[&["0.4.2"]]),
    };
    assert!(score_check(&contains, &transcript, &[]).passed);
    let used = Check::UsedTool {
        names: vec!["Read".into(), "Grep".into()],
        min: 2,
    };
    let result = score_check(&used, &transcript, &[]);
    assert!(!result.passed);
    assert_eq!(result.detail["count"], 1);
    assert_eq!(result.score, 0.5);
}

#[test]
fn scoring_normalises_strings_like_bfcl() {
    assert_eq!(normalize_string(" New-York, NY. "), "newyorkny");
    assert_eq!(normalize_string("It's"), "it\"s");
    assert_eq!(
        normalize_string("living_room"),
        normalize_string("Living Room")
    );
}

#[test]
fn scoring_shipped_suites_load_with_the_required_cases() {
    let evals = Path::new(env!("CARGO_MANIFEST_DIR")).join("evals");
    let suites = load_suites(&evals).expect("shipped suites load");
    let suite = |name: &str| {
        suites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("suite {name} is shipped"))
    };

    let summarize = suite("summarize");
    assert!(summarize.cases.len() >= 8);
    let repos: HashSet<_> = summarize
        .cases
        .iter()
        .filter_map(|c| c.fixture.clone())
        .collect();
    assert!(repos.len() >= 5, "summaries cover {repos:?}");
    let limits: HashSet<usize> = summarize
        .cases
        .iter()
        .flat_map(|c| &c.checks)
        .filter_map(|check| match check {
            Check::MaxWords { limit } => Some(*limit),
            _ => None,
        })
        .collect();
    for limit in [30, 50, 100, 150] {
        assert!(
            limits.contains(&limit),
            "a summary limited to {limit} words"
        );
    }
    for case in &summarize.cases {
        let kinds: Vec<_> = case.checks.iter().map(Check::kind).collect();
        for kind in ["max_words", "facts", "forbidden"] {
            assert!(kinds.contains(&kind), "{} has a {kind} check", case.id);
        }
    }

    let word_limit = suite("word-limit");
    assert!(word_limit.cases.len() >= 12);
    assert!(word_limit.cases.iter().all(|c| c.fixture.is_none()));
    let kinds: HashSet<_> = word_limit
        .cases
        .iter()
        .flat_map(|c| c.checks.iter().map(Check::kind))
        .collect();
    for kind in ["max_words", "min_words", "sentences", "bullets"] {
        assert!(kinds.contains(kind), "word-limit has {kind}");
    }

    let tool_calls = suite("tool-calls");
    assert!(tool_calls.cases.len() >= 20);
    let categories: HashSet<_> = tool_calls
        .cases
        .iter()
        .map(|c| c.category.as_str())
        .collect();
    for category in [
        "simple",
        "multiple",
        "parallel",
        "irrelevance",
        "multi_turn",
    ] {
        assert!(categories.contains(category), "tool-calls has {category}");
    }
    for case in &tool_calls.cases {
        if case.category == "multi_turn" {
            assert!(case.fixture.is_some() && case.max_turns > 1, "{}", case.id);
        } else {
            assert!(!case.tools.is_empty(), "{} offers tools", case.id);
        }
    }

    let fixtures: HashSet<_> = suites
        .iter()
        .flat_map(|s| &s.cases)
        .filter_map(|c| c.fixture.clone())
        .collect();
    assert!(fixtures.len() >= 5);
    for suite in &suites {
        assert_eq!(suite.hash.len(), 64);
        assert!(
            suite.cases.iter().any(|c| c.must_pass),
            "{} marks must_pass cases",
            suite.name
        );
        for case in &suite.cases {
            assert!(CATEGORIES.contains(&case.category.as_str()));
            assert!(
                case.max_turns <= 4 && case.max_tokens <= 300,
                "{} stays cheap",
                case.id
            );
        }
    }
}

#[test]
fn scoring_shipped_reference_answers_pass_their_checks() {
    let evals = Path::new(env!("CARGO_MANIFEST_DIR")).join("evals");
    let mut scored = 0;
    for suite in load_suites(&evals).expect("shipped suites load") {
        for case in &suite.cases {
            let text_task = matches!(
                case.category.as_str(),
                "summary" | "word_limit" | "multi_turn"
            );
            let Some(reference) = &case.reference else {
                assert!(
                    !text_task,
                    "{}/{} needs a reference answer",
                    suite.name, case.id
                );
                continue;
            };
            // An agent that read the file the answer is in.
            let tool_calls = case
                .fixture
                .iter()
                .map(|_| ToolCall {
                    name: "Read".into(),
                    input: json!({"file_path": "/repo/README.md"}),
                    turn: 1,
                })
                .collect();
            let transcript = Transcript {
                final_text: reference.clone(),
                tool_calls,
                turns: 2,
            };
            for result in score_case(case, &transcript) {
                assert!(
                    result.passed,
                    "{}/{}: the reference fails `{}`: {}",
                    suite.name, case.id, result.kind, result.detail
                );
            }
            scored += 1;
        }
    }
    assert!(scored >= 8 + 12 + 5, "{scored} references scored");
}

#[test]
fn scoring_case_score_is_the_mean_and_a_pass_needs_every_check() {
    let evals = Path::new(env!("CARGO_MANIFEST_DIR")).join("evals");
    let suites = load_suites(&evals).expect("shipped suites load");
    let case = suites
        .iter()
        .flat_map(|s| &s.cases)
        .find(|c| c.id == "five-bullets-dns-under-100")
        .expect("shipped case");
    // Five bullets but 104 words: one check passes, one fails.
    let long_bullet = "word ".repeat(20);
    let text = format!("* {long_bullet}\n").repeat(5) + "four more words here";
    let score = CaseScore::from_checks(score_case(case, &answer(&text)));
    assert!(!score.passed);
    assert_eq!(score.checks.len(), 2);
    assert!(score.checks[0].passed && !score.checks[1].passed);
    assert_eq!(score.checks[1].detail["count"], 104);
    let expected = (1.0 + 99.0 / 104.0) / 2.0;
    assert!((score.score - expected).abs() < 1e-9, "{}", score.score);

    let bullets = format!("* {}\n", "word ".repeat(3)).repeat(5);
    let score = CaseScore::from_checks(score_case(case, &answer(&bullets)));
    assert!(score.passed);
    assert_eq!(score.score, 1.0);

    // No checks, no pass.
    assert!(!CaseScore::from_checks(Vec::new()).passed);
}

#[test]
fn scoring_fixture_repos_stay_small() {
    // SmolLM2 has an 8192-token context: a few files of a fixture must fit.
    let repos = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/repos");
    let mut count = 0;
    for repo in std::fs::read_dir(&repos).expect("fixtures/repos") {
        let repo = repo.unwrap().path();
        let mut bytes = 0;
        let mut stack = vec![repo.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else {
                    bytes += entry.metadata().unwrap().len();
                }
            }
        }
        assert!(bytes < 20 * 1024, "{} holds {bytes} bytes", repo.display());
        assert!(
            repo.join("README.md").is_file(),
            "{} has a README",
            repo.display()
        );
        count += 1;
    }
    assert!(count >= 5, "{count} fixture repositories");
}
