//! Suite loading tests: defaults, named tools, every validation error, the hash.

use super::*;

const TOOL: &str = r#"
[[tool]]
name = "get_weather"
description = "Weather for a city"
input_schema.type = "object"
input_schema.required = ["city"]
input_schema.properties.city = { type = "string" }
"#;

/// `evals/` and `fixtures/repos/demo/` in a temp dir.
fn layout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("evals")).unwrap();
    std::fs::create_dir_all(dir.path().join("fixtures/repos/demo")).unwrap();
    std::fs::write(dir.path().join("fixtures/repos/demo/README.md"), "demo\n").unwrap();
    dir
}

fn write_suite(dir: &Path, file: &str, body: &str) -> PathBuf {
    let path = dir.join("evals").join(file);
    std::fs::write(&path, body).unwrap();
    path
}

fn load_error(body: &str) -> String {
    let dir = layout();
    let path = write_suite(dir.path(), "s.toml", body);
    load_suite(path).expect_err("suite is invalid").to_string()
}

const CASE_OK: &str = r#"
name = "demo"
version = 2
[defaults]
max_tokens = 100
[[case]]
id = "a"
category = "summary"
fixture = "repos/demo"
prompt = "What is this?"
must_pass = true
[[case.check]]
kind = "max_words"
limit = 10
[[case]]
id = "b"
category = "simple"
prompt = "Weather in Rome?"
tools = ["get_weather"]
max_tokens = 50
tool_choice = { type = "any" }
[[case.check]]
kind = "tool_calls"
calls = [{ name = "get_weather", args = { city = ["Rome"] } }]
"#;

#[test]
fn eval_suite_loads_cases_with_defaults_and_named_tools() {
    let dir = layout();
    let path = write_suite(dir.path(), "s.toml", &format!("{CASE_OK}{TOOL}"));
    let suite = load_suite(&path).unwrap();
    assert_eq!((suite.name.as_str(), suite.version), ("demo", 2));
    let [a, b] = &suite.cases[..] else {
        panic!("two cases")
    };
    assert_eq!((a.max_tokens, a.max_turns, a.temperature), (100, 4, 0.0));
    assert!(a.must_pass);
    assert!(a.fixture_path.as_ref().unwrap().join("README.md").is_file());
    assert_eq!(a.offered_tools().len(), Sandbox::TOOL_NAMES.len());
    assert_eq!(b.max_tokens, 50);
    assert_eq!(b.tools[0]["input_schema"]["required"][0], "city");
    assert_eq!(b.tool_choice, Some(serde_json::json!({"type": "any"})));
    assert_eq!(b.checks[0].kind(), "tool_calls");
}

#[test]
fn eval_suite_errors_name_the_problem() {
    let unknown_kind = CASE_OK.replace("kind = \"max_words\"", "kind = \"max_wrods\"");
    let message = load_error(&format!("{unknown_kind}{TOOL}"));
    assert!(
        message.contains("case `a`: unknown check kind `max_wrods`"),
        "{message}"
    );

    let duplicate = CASE_OK.replace("id = \"b\"", "id = \"a\"");
    let message = load_error(&format!("{duplicate}{TOOL}"));
    assert!(message.contains("duplicate case id `a`"), "{message}");

    let missing = CASE_OK.replace("repos/demo", "repos/nope");
    let message = load_error(&format!("{missing}{TOOL}"));
    assert!(
        message.contains("fixture `repos/nope` not found"),
        "{message}"
    );

    let escape = CASE_OK.replace("repos/demo", "../evals");
    assert!(load_error(&format!("{escape}{TOOL}")).contains("plain path"));

    let bad_json = CASE_OK.replace(
        "tools = [\"get_weather\"]",
        "tools = [{ name = \"get_weather\", input_schema = '{\"type\": \"object\",' }]",
    );
    let message = load_error(&bad_json);
    assert!(message.contains("bad input_schema JSON"), "{message}");

    let bad_type = TOOL.replace("{ type = \"string\" }", "{ type = \"text\" }");
    let message = load_error(&format!("{CASE_OK}{bad_type}"));
    assert!(message.contains("unknown type `text`"), "{message}");

    let undefined = load_error(CASE_OK);
    assert!(
        undefined.contains("tool `get_weather` is not defined"),
        "{undefined}"
    );

    let bad_field = CASE_OK.replace("limit = 10", "limit = 10\nlimt = 3");
    let message = load_error(&format!("{bad_field}{TOOL}"));
    assert!(
        message.contains("check `max_words`") && message.contains("limt"),
        "{message}"
    );

    let no_checks =
        "name = \"x\"\nversion = 1\n[[case]]\nid = \"c\"\ncategory = \"summary\"\nprompt = \"p\"\n";
    assert!(load_error(no_checks).contains("no `[[case.check]]`"));

    let bad_category = CASE_OK.replace("\"summary\"", "\"summaries\"");
    assert!(load_error(&format!("{bad_category}{TOOL}")).contains("unknown category"));

    let not_offered = CASE_OK.replace("name = \"get_weather\", args", "name = \"get_time\", args");
    assert!(load_error(&format!("{not_offered}{TOOL}")).contains("`get_time` is not offered"));
}

#[test]
fn eval_suite_hash_covers_fixture_contents() {
    let dir = layout();
    let path = write_suite(dir.path(), "s.toml", &format!("{CASE_OK}{TOOL}"));
    let first = load_suite(&path).unwrap().hash;
    assert_eq!(load_suite(&path).unwrap().hash, first, "stable");

    let readme = dir.path().join("fixtures/repos/demo/README.md");
    std::fs::write(&readme, "demo, changed\n").unwrap();
    let changed_fixture = load_suite(&path).unwrap().hash;
    assert_ne!(changed_fixture, first);

    std::fs::write(dir.path().join("fixtures/repos/demo/NEW.md"), "").unwrap();
    let added_file = load_suite(&path).unwrap().hash;
    assert_ne!(added_file, changed_fixture);

    std::fs::write(&path, format!("{CASE_OK}{TOOL}\n# a comment\n")).unwrap();
    assert_ne!(load_suite(&path).unwrap().hash, added_file);
}

#[test]
fn eval_suites_load_sorted_with_unique_names() {
    let dir = layout();
    write_suite(dir.path(), "b.toml", &format!("{CASE_OK}{TOOL}"));
    let other = CASE_OK.replace("name = \"demo\"", "name = \"other\"");
    write_suite(dir.path(), "a.toml", &format!("{other}{TOOL}"));
    std::fs::write(dir.path().join("evals/README.md"), "not a suite").unwrap();
    let suites = load_suites(dir.path().join("evals")).unwrap();
    let names: Vec<_> = suites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["other", "demo"]);

    write_suite(dir.path(), "c.toml", &format!("{CASE_OK}{TOOL}"));
    let error = load_suites(dir.path().join("evals"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("suite name `demo` is used by another file"),
        "{error}"
    );
}
