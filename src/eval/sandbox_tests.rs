//! Sandbox tests: each tool's output, and every way out of the fixture refused.

use std::path::{Path, PathBuf};

use serde_json::json;
use tempfile::TempDir;

use super::*;

/// A fixture in a temp dir, inside a parent that also holds a secret file the
/// sandbox must never show.
struct Fixture {
    parent: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let parent = tempfile::tempdir().expect("temp dir");
        let root = parent.path().join("repo");
        std::fs::create_dir_all(root.join("src/nested")).unwrap();
        std::fs::write(
            root.join("README.md"),
            "# demo\nA demo project.\nPort 7341.\n",
        )
        .unwrap();
        std::fs::write(
            root.join("src/main.rs"),
            "fn main() {\n    let port = 7341;\n    println!(\"{port}\");\n}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("src/nested/lib.py"),
            "PORT = 8080\nport_name = 'http'\n",
        )
        .unwrap();
        std::fs::write(parent.path().join("secret.txt"), "TOP SECRET\n").unwrap();
        Self { parent }
    }
    fn root(&self) -> PathBuf {
        self.parent.path().join("repo")
    }
    fn sandbox(&self) -> Sandbox {
        Sandbox::new(self.root()).expect("sandbox")
    }
}

fn ok(output: ToolOutput) -> String {
    assert!(!output.is_error, "unexpected error: {}", output.content);
    output.content
}

fn err(output: ToolOutput) -> String {
    assert!(
        output.is_error,
        "expected an error, got: {}",
        output.content
    );
    output.content
}

#[test]
fn eval_sandbox_read_numbers_lines_like_cat_n() {
    let fixture = Fixture::new();
    let sandbox = fixture.sandbox();
    let out = ok(sandbox.run("Read", &json!({"file_path": "/repo/README.md"})));
    assert_eq!(
        out,
        "     1\t# demo\n     2\tA demo project.\n     3\tPort 7341.\n"
    );
    // Relative paths are taken from the root; offset and limit pick lines.
    let part = ok(sandbox.run(
        "Read",
        &json!({"file_path": "src/main.rs", "offset": 2, "limit": 1}),
    ));
    assert!(part.starts_with("     2\t    let port = 7341;\n"), "{part}");
    assert!(
        part.contains("2 more lines; read on with offset 3"),
        "{part}"
    );
    assert!(err(sandbox.run("Read", &json!({"file_path": "/repo/src"}))).contains("directory"));
    assert!(
        err(sandbox.run("Read", &json!({"file_path": "missing.txt"}))).contains("does not exist")
    );
}

#[test]
fn eval_sandbox_glob_lists_matching_files() {
    let fixture = Fixture::new();
    let sandbox = fixture.sandbox();
    let all = ok(sandbox.run("Glob", &json!({"pattern": "**/*.rs"})));
    assert_eq!(all, "/repo/src/main.rs\n");
    // `*` does not cross `/`.
    let top = ok(sandbox.run("Glob", &json!({"pattern": "*.md"})));
    assert_eq!(top, "/repo/README.md\n");
    let under = ok(sandbox.run(
        "Glob",
        &json!({"pattern": "*.py", "path": "/repo/src/nested"}),
    ));
    assert_eq!(under, "/repo/src/nested/lib.py\n");
    let absolute = ok(sandbox.run("Glob", &json!({"pattern": "/repo/src/**/*.py"})));
    assert_eq!(absolute, "/repo/src/nested/lib.py\n");
    assert_eq!(
        ok(sandbox.run("Glob", &json!({"pattern": "*.go"}))),
        "No files found"
    );
}

#[test]
fn eval_sandbox_grep_modes() {
    let fixture = Fixture::new();
    let sandbox = fixture.sandbox();
    let files = ok(sandbox.run("Grep", &json!({"pattern": "7341"})));
    assert_eq!(
        files,
        "Found 2 file(s)\n/repo/README.md\n/repo/src/main.rs\n"
    );
    let content = ok(sandbox.run(
        "Grep",
        &json!({"pattern": "PORT", "-i": true, "output_mode": "content", "glob": "*.py"}),
    ));
    assert_eq!(
        content,
        "/repo/src/nested/lib.py:1:PORT = 8080\n/repo/src/nested/lib.py:2:port_name = 'http'\n"
    );
    let count = ok(sandbox.run("Grep", &json!({"pattern": "port", "output_mode": "count"})));
    // Case-sensitive by default: README.md's "Port" does not count.
    assert_eq!(count, "/repo/src/main.rs:2\n/repo/src/nested/lib.py:1\n");
    let context = ok(sandbox.run(
        "Grep",
        &json!({"pattern": "let port", "output_mode": "content", "-C": 1, "path": "/repo/src/main.rs"}),
    ));
    assert_eq!(
        context,
        "/repo/src/main.rs-1-fn main() {\n/repo/src/main.rs:2:    let port = 7341;\n/repo/src/main.rs-3-    println!(\"{port}\");\n"
    );
    assert_eq!(
        ok(sandbox.run("Grep", &json!({"pattern": "nowhere"}))),
        "No matches found"
    );
    assert!(
        err(sandbox.run("Grep", &json!({"pattern": "("}))).contains("invalid regular expression")
    );
    assert!(
        err(sandbox.run("Grep", &json!({"pattern": "x", "output_mode": "lines"})))
            .contains("output_mode")
    );
}

#[test]
fn eval_sandbox_ls_shows_a_tree() {
    let fixture = Fixture::new();
    let sandbox = fixture.sandbox();
    let tree = ok(sandbox.run("LS", &json!({"path": "/repo"})));
    assert_eq!(
        tree,
        "- /repo/\n  - README.md\n  - src/\n    - main.rs\n    - nested/\n      - lib.py\n"
    );
    let ignored = ok(sandbox.run(
        "LS",
        &json!({"path": "/repo", "ignore": ["nested", "*.md"]}),
    ));
    assert_eq!(ignored, "- /repo/\n  - src/\n    - main.rs\n");
}

#[test]
fn eval_sandbox_refuses_escapes() {
    let fixture = Fixture::new();
    let sandbox = fixture.sandbox();
    let secret = fixture.parent.path().join("secret.txt");
    for path in [
        "../secret.txt".to_string(),
        "/repo/../secret.txt".to_string(),
        "src/../../secret.txt".to_string(),
        "/etc/passwd".to_string(),
        secret.display().to_string(),
        "/repository/x".to_string(),
    ] {
        let out = err(sandbox.run("Read", &json!({"file_path": path})));
        assert!(!out.contains("TOP SECRET"), "{path}: {out}");
    }
    assert!(err(sandbox.run("LS", &json!({"path": "/"}))).contains("outside"));
    assert!(err(sandbox.run("Grep", &json!({"pattern": "x", "path": ".."}))).contains(".."));
    assert!(err(sandbox.run("Glob", &json!({"pattern": "/etc/*"}))).contains("outside"));
}

#[cfg(unix)]
#[test]
fn eval_sandbox_refuses_symlinks_out() {
    let fixture = Fixture::new();
    let root = fixture.root();
    let secret = fixture.parent.path().join("secret.txt");
    std::os::unix::fs::symlink(&secret, root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(fixture.parent.path(), root.join("up")).unwrap();
    std::os::unix::fs::symlink(root.join("README.md"), root.join("readme-link.md")).unwrap();
    let sandbox = fixture.sandbox();

    let out = err(sandbox.run("Read", &json!({"file_path": "/repo/leak.txt"})));
    assert!(
        out.contains("outside") && !out.contains("TOP SECRET"),
        "{out}"
    );
    let out = err(sandbox.run("Read", &json!({"file_path": "up/secret.txt"})));
    assert!(!out.contains("TOP SECRET"), "{out}");
    // Searches skip links that lead out, and keep those that stay in.
    let grep = ok(sandbox.run(
        "Grep",
        &json!({"pattern": "SECRET|demo", "output_mode": "content"}),
    ));
    assert!(!grep.contains("SECRET"), "{grep}");
    assert!(grep.contains("/repo/readme-link.md:1:# demo"), "{grep}");
    let glob = ok(sandbox.run("Glob", &json!({"pattern": "**/*.txt"})));
    assert_eq!(glob, "No files found");
    let ls = ok(sandbox.run("LS", &json!({"path": "/repo"})));
    assert!(
        !ls.contains("leak.txt") && !ls.contains("up") && ls.contains("readme-link.md"),
        "{ls}"
    );
    // A link inside the fixture still reads.
    assert!(ok(sandbox.run("Read", &json!({"file_path": "readme-link.md"}))).contains("# demo"));
}

#[test]
fn eval_sandbox_refuses_bad_calls() {
    let fixture = Fixture::new();
    let sandbox = fixture.sandbox();
    assert!(
        err(sandbox.run("Bash", &json!({"command": "cat /etc/passwd"}))).contains("unknown tool")
    );
    assert!(err(sandbox.run("Read", &json!({}))).contains("missing `file_path`"));
    assert!(err(sandbox.run("Read", &json!("README.md"))).contains("JSON object"));
    assert!(err(sandbox.run("Read", &json!({"file_path": 3}))).contains("must be a string"));
    assert!(
        err(sandbox.run("Read", &json!({"file_path": "README.md", "limit": "5"})))
            .contains("integer")
    );
    assert!(
        err(sandbox.run("Read", &json!({"path": "README.md"}))).contains("unknown argument `path`")
    );
    assert!(err(sandbox.run("Glob", &json!({"pattern": "a[b"}))).contains("invalid glob"));
    assert!(err(sandbox.run("LS", &json!({"path": "/repo", "ignore": "x"}))).contains("ignore"));
}

#[test]
fn eval_sandbox_caps_output() {
    let fixture = Fixture::new();
    let long: String = (0..5000)
        .map(|i| format!("line {i} of a long file\n"))
        .collect();
    std::fs::write(fixture.root().join("big.txt"), &long).unwrap();
    let out = ok(fixture
        .sandbox()
        .run("Read", &json!({"file_path": "big.txt"})));
    assert!(out.len() < OUTPUT_LIMIT_BYTES + 100, "{} bytes", out.len());
    assert!(
        out.contains("[output truncated:"),
        "{}",
        &out[out.len() - 200..]
    );
    assert!(out.starts_with("     1\tline 0 of a long file\n"));
}

#[test]
fn eval_sandbox_tools_on_a_shipped_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/repos/csvtool");
    let sandbox = Sandbox::new(root).expect("fixture exists");
    let manifest = ok(sandbox.run("Read", &json!({"file_path": "/repo/Cargo.toml"})));
    assert!(
        manifest.contains("     3\tversion = \"0.4.2\""),
        "{manifest}"
    );
    let found = ok(sandbox.run(
        "Grep",
        &json!({"pattern": "^version", "output_mode": "content"}),
    ));
    assert_eq!(found, "/repo/Cargo.toml:3:version = \"0.4.2\"\n");
    let sources = ok(sandbox.run("Glob", &json!({"pattern": "src/*.rs"})));
    assert_eq!(sources, "/repo/src/main.rs\n/repo/src/stats.rs\n");
    assert!(ok(sandbox.run("LS", &json!({"path": "/repo"}))).contains("  - README.md\n"));
}

#[test]
fn eval_sandbox_tool_definitions_are_anthropic_tools() {
    let tools = Sandbox::tool_definitions();
    let names: Vec<_> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, Sandbox::TOOL_NAMES);
    for tool in &tools {
        assert_eq!(tool["input_schema"]["type"], "object");
        assert!(tool["description"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(tools[0]["input_schema"]["required"], json!(["file_path"]));
    assert!(agent_system_prompt().contains(VIRTUAL_ROOT));
}
