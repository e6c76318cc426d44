//! The agent's tools, run over a fixture repository and nothing else.
//!
//! Claude Code's read-only tools in miniature, with its names and argument
//! names (`Read`, `Glob`, `Grep`, `LS`), so a model is tested on the calls it
//! will make in the real agent. The fixture appears to the model at
//! [`VIRTUAL_ROOT`]; every path is resolved inside it and canonicalized, so
//! `..`, absolute paths elsewhere and symlinks leading out are refused. Every
//! failure is a tool error the model can read ([`ToolOutput::is_error`]), never a
//! panic or an error of the run, and output is capped at [`OUTPUT_LIMIT_BYTES`].

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobMatcher};
use regex::RegexBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Where the fixture appears to the model.
pub const VIRTUAL_ROOT: &str = "/repo";

/// Largest tool output in bytes; longer output is cut with a note.
pub const OUTPUT_LIMIT_BYTES: usize = 16 * 1024;

/// Lines `Read` returns when no `limit` is given (Claude Code's default).
const DEFAULT_READ_LINES: usize = 2000;
/// Longest line `Read` and `Grep` show before cutting it.
const MAX_LINE_CHARS: usize = 2000;
/// Most paths `Glob` lists.
const MAX_GLOB_RESULTS: usize = 100;
/// Most entries `LS` lists.
const MAX_LS_ENTRIES: usize = 1000;

/// What a tool returned: the `tool_result` content and its `is_error` flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// The text given back to the model.
    pub content: String,
    /// The call failed (bad arguments, path refused, nothing there).
    pub is_error: bool,
}

impl ToolOutput {
    fn ok(content: String) -> Self {
        Self {
            content: cap_output(content),
            is_error: false,
        }
    }
    fn error(message: String) -> Self {
        Self {
            content: cap_output(message),
            is_error: true,
        }
    }
}

/// The read-only tools over one fixture directory.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The fixture's canonical path: everything resolved must stay under it.
    root: PathBuf,
}

type ToolResult = Result<String, String>;

impl Sandbox {
    /// The tools' names, in the order [`Sandbox::tool_definitions`] lists them.
    pub const TOOL_NAMES: [&'static str; 4] = ["Read", "Glob", "Grep", "LS"];

    /// A sandbox over `root`, which must be a directory.
    pub fn new(root: impl AsRef<Path>) -> std::io::Result<Self> {
        let root = root.as_ref().canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self { root })
    }

    /// The tools in Anthropic's tool JSON (`name`, `description`, `input_schema`).
    pub fn tool_definitions() -> Vec<Value> {
        vec![
            json!({
                "name": "Read",
                "description": "Reads a file from the repository. Returns its lines numbered like `cat -n`. Use offset and limit to read part of a long file.",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "file_path": {"type": "string", "description": "Absolute path of the file, e.g. /repo/README.md"},
                        "offset": {"type": "integer", "description": "Line number to start reading from (1-based)"},
                        "limit": {"type": "integer", "description": "Number of lines to read"}
                    },
                    "required": ["file_path"]
                }
            }),
            json!({
                "name": "Glob",
                "description": "Finds files whose path matches a glob pattern such as \"**/*.rs\" or \"src/*.py\". Returns matching paths.",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "pattern": {"type": "string", "description": "The glob pattern to match files against"},
                        "path": {"type": "string", "description": "Directory to search in (default: /repo)"}
                    },
                    "required": ["pattern"]
                }
            }),
            json!({
                "name": "Grep",
                "description": "Searches file contents with a regular expression. By default lists the files that match; output_mode \"content\" shows matching lines, \"count\" the number of matches per file.",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "pattern": {"type": "string", "description": "Regular expression to search for"},
                        "path": {"type": "string", "description": "File or directory to search in (default: /repo)"},
                        "glob": {"type": "string", "description": "Only search files matching this glob, e.g. \"*.py\""},
                        "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"], "description": "What to show (default: files_with_matches)"},
                        "-i": {"type": "boolean", "description": "Case-insensitive search"},
                        "-n": {"type": "boolean", "description": "Show line numbers in content mode (default: true)"},
                        "-A": {"type": "integer", "description": "Lines of context after each match (content mode)"},
                        "-B": {"type": "integer", "description": "Lines of context before each match (content mode)"},
                        "-C": {"type": "integer", "description": "Lines of context around each match (content mode)"},
                        "type": {"type": "string", "description": "Only search files of this type, e.g. \"py\", \"rust\", \"go\", \"md\""},
                        "head_limit": {"type": "integer", "description": "Show only the first N lines or files"}
                    },
                    "required": ["pattern"]
                }
            }),
            json!({
                "name": "LS",
                "description": "Lists the files and directories under a directory, as a tree.",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "Absolute path of the directory, e.g. /repo"},
                        "ignore": {"type": "array", "items": {"type": "string"}, "description": "Glob patterns of names to leave out"}
                    },
                    "required": ["path"]
                }
            }),
        ]
    }

    /// Runs tool `name` with the model's `input`. Never panics: unknown tools,
    /// bad arguments and refused paths come back as errors for the model.
    pub fn run(&self, name: &str, input: &Value) -> ToolOutput {
        let result = match name {
            "Read" => self.read(input),
            "Glob" => self.glob(input),
            "Grep" => self.grep(input),
            "LS" => self.ls(input),
            other => Err(format!(
                "unknown tool `{other}`; the tools are {}",
                Self::TOOL_NAMES.join(", ")
            )),
        };
        match result {
            Ok(content) => ToolOutput::ok(content),
            Err(message) => ToolOutput::error(format!("Error: {message}")),
        }
    }

    fn read(&self, input: &Value) -> ToolResult {
        let args = arguments(input, &["file_path", "offset", "limit"])?;
        let file_path = string_arg(args, "file_path")?.ok_or("missing `file_path`")?;
        let offset = count_arg(args, "offset")?.unwrap_or(1).max(1);
        let limit = count_arg(args, "limit")?
            .unwrap_or(DEFAULT_READ_LINES)
            .max(1);
        let path = self.resolve(file_path)?;
        if path.is_dir() {
            return Err(format!("{file_path} is a directory; use LS to list it"));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{file_path}: {e}"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{file_path} is a binary file and cannot be shown"))?;
        if text.is_empty() {
            return Ok(format!("{file_path} is empty."));
        }
        let total = text.lines().count();
        if offset > total {
            return Err(format!(
                "offset {offset} is past the end of {file_path} ({total} lines)"
            ));
        }
        let mut out = String::new();
        for (index, line) in text.lines().enumerate().skip(offset - 1).take(limit) {
            let _ = writeln!(out, "{:>6}\t{}", index + 1, cut_line(line));
        }
        // Saturating: `limit` is the model's number, up to u64::MAX.
        let shown_to = (offset - 1).saturating_add(limit).min(total);
        if shown_to < total {
            let _ = writeln!(
                out,
                "... ({} more lines; read on with offset {})",
                total - shown_to,
                shown_to + 1
            );
        }
        Ok(out)
    }

    fn glob(&self, input: &Value) -> ToolResult {
        let args = arguments(input, &["pattern", "path"])?;
        let pattern = string_arg(args, "pattern")?.ok_or("missing `pattern`")?;
        let dir = self.resolve_dir(string_arg(args, "path")?)?;
        // An absolute pattern under the virtual root is taken relative to it.
        let (pattern, dir) = match pattern.strip_prefix(&format!("{VIRTUAL_ROOT}/")) {
            Some(rest) => (rest, self.root.clone()),
            None if pattern.starts_with('/') => {
                return Err(format!("pattern {pattern} is outside {VIRTUAL_ROOT}"))
            }
            None => (pattern, dir),
        };
        let matcher = glob_matcher(pattern)?;
        let matches: Vec<String> = self
            .files_under(&dir)
            .into_iter()
            .filter(|file| {
                file.strip_prefix(&dir)
                    .is_ok_and(|relative| matcher.is_match(relative))
            })
            .map(|file| self.virtual_path(&file))
            .collect();
        if matches.is_empty() {
            return Ok("No files found".into());
        }
        let mut out = matches
            .iter()
            .take(MAX_GLOB_RESULTS)
            .fold(String::new(), |out, path| out + path + "\n");
        if matches.len() > MAX_GLOB_RESULTS {
            let _ = writeln!(
                out,
                "(Results are truncated: {} of {} shown. Use a more specific path or pattern.)",
                MAX_GLOB_RESULTS,
                matches.len()
            );
        }
        Ok(out)
    }

    fn grep(&self, input: &Value) -> ToolResult {
        let args = arguments(
            input,
            &[
                "pattern",
                "path",
                "glob",
                "output_mode",
                "-i",
                "-n",
                "-A",
                "-B",
                "-C",
                "type",
                "head_limit",
            ],
        )?;
        let pattern = string_arg(args, "pattern")?.ok_or("missing `pattern`")?;
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(bool_arg(args, "-i")?.unwrap_or(false))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("invalid regular expression: {e}"))?;
        let mode = string_arg(args, "output_mode")?.unwrap_or("files_with_matches");
        if !["content", "files_with_matches", "count"].contains(&mode) {
            return Err(format!(
                "output_mode must be \"content\", \"files_with_matches\" or \"count\", not {mode:?}"
            ));
        }
        let line_numbers = bool_arg(args, "-n")?.unwrap_or(true);
        let around = count_arg(args, "-C")?.unwrap_or(0);
        let after = count_arg(args, "-A")?.unwrap_or(around);
        let before = count_arg(args, "-B")?.unwrap_or(around);
        let head_limit = count_arg(args, "head_limit")?;
        let filter = string_arg(args, "glob")?.map(glob_matcher).transpose()?;
        let extensions = string_arg(args, "type")?.map(file_type_extensions);

        let target = match string_arg(args, "path")? {
            None => self.root.clone(),
            Some(path) => self.resolve(path)?,
        };
        let files = if target.is_dir() {
            self.files_under(&target)
        } else {
            vec![target.clone()]
        };
        let mut entries: Vec<String> = Vec::new();
        let mut matched_files = 0;
        for file in files {
            if let Some(filter) = &filter {
                let relative = file.strip_prefix(&target).unwrap_or(&file);
                // Like ripgrep: a glob without `/` matches the file name.
                let subject = if filter.glob().glob().contains('/') {
                    relative
                } else {
                    Path::new(file.file_name().unwrap_or_default())
                };
                if !filter.is_match(subject) {
                    continue;
                }
            }
            if let Some(extensions) = &extensions {
                let extension = file
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or_default();
                if !extensions.iter().any(|e| e == extension) {
                    continue;
                }
            }
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue; // binary or unreadable: ripgrep skips these too
            };
            let lines: Vec<&str> = text.lines().collect();
            let hits: Vec<usize> = (0..lines.len())
                .filter(|&i| regex.is_match(lines[i]))
                .collect();
            if hits.is_empty() {
                continue;
            }
            matched_files += 1;
            let shown = self.virtual_path(&file);
            match mode {
                "files_with_matches" => entries.push(shown),
                "count" => entries.push(format!("{shown}:{}", hits.len())),
                _ => entries.extend(content_lines(
                    &shown,
                    &lines,
                    &hits,
                    before,
                    after,
                    line_numbers,
                )),
            }
        }
        if entries.is_empty() {
            return Ok("No matches found".into());
        }
        let total = entries.len();
        if let Some(limit) = head_limit {
            entries.truncate(limit);
        }
        let mut out = String::new();
        if mode == "files_with_matches" {
            let _ = writeln!(out, "Found {matched_files} file(s)");
        }
        for entry in &entries {
            out.push_str(entry);
            out.push('\n');
        }
        if entries.len() < total {
            let _ = writeln!(out, "({} of {total} shown: head_limit)", entries.len());
        }
        Ok(out)
    }

    fn ls(&self, input: &Value) -> ToolResult {
        let args = arguments(input, &["path", "ignore"])?;
        let path = string_arg(args, "path")?.ok_or("missing `path`")?;
        let dir = self.resolve_dir(Some(path))?;
        let ignore = match args.get("ignore") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(patterns)) => patterns
                .iter()
                .map(|p| {
                    p.as_str()
                        .ok_or("`ignore` must list strings")
                        .map(glob_matcher)
                })
                .collect::<Result<Result<Vec<_>, _>, _>>()??,
            Some(_) => return Err("`ignore` must be a list of glob patterns".into()),
        };
        let mut out = format!("- {}/\n", self.virtual_path(&dir));
        let mut count = 0;
        let walker = walkdir::WalkDir::new(&dir)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| {
                let name = Path::new(entry.file_name());
                !is_hidden_vcs(entry.file_name()) && !ignore.iter().any(|g| g.is_match(name))
            });
        for entry in walker.flatten() {
            if entry.path_is_symlink() && self.inside(entry.path()).is_none() {
                continue;
            }
            count += 1;
            if count > MAX_LS_ENTRIES {
                let _ = writeln!(
                    out,
                    "(more than {MAX_LS_ENTRIES} entries; list a subdirectory)"
                );
                break;
            }
            let indent = "  ".repeat(entry.depth());
            let name = entry.file_name().to_string_lossy();
            let slash = if entry.file_type().is_dir() { "/" } else { "" };
            let _ = writeln!(out, "{indent}- {name}{slash}");
        }
        Ok(out)
    }

    /// The real path for a path the model gave: relative to the virtual root or
    /// absolute under it, with no `..`, and (after following symlinks) inside
    /// the fixture.
    fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        let given = path.trim();
        let relative = if given == VIRTUAL_ROOT {
            ""
        } else if let Some(rest) = given.strip_prefix(&format!("{VIRTUAL_ROOT}/")) {
            rest
        } else if given.starts_with('/') {
            return Err(format!(
                "{given} is outside the repository; paths must be under {VIRTUAL_ROOT}"
            ));
        } else {
            given
        };
        for component in Path::new(relative).components() {
            match component {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(format!("{given}: `..` is not allowed in paths"));
                }
                _ => return Err(format!("{given} is not a path under {VIRTUAL_ROOT}")),
            }
        }
        let real = self
            .root
            .join(relative)
            .canonicalize()
            .map_err(|_| format!("{given} does not exist"))?;
        if !real.starts_with(&self.root) {
            return Err(format!("{given} leads outside the repository"));
        }
        Ok(real)
    }

    /// A directory argument, defaulting to the root.
    fn resolve_dir(&self, path: Option<&str>) -> Result<PathBuf, String> {
        let Some(path) = path else {
            return Ok(self.root.clone());
        };
        let dir = self.resolve(path)?;
        if !dir.is_dir() {
            return Err(format!("{path} is not a directory"));
        }
        Ok(dir)
    }

    /// `path`'s canonical form if it lies inside the fixture.
    fn inside(&self, path: &Path) -> Option<PathBuf> {
        path.canonicalize()
            .ok()
            .filter(|real| real.starts_with(&self.root))
    }

    /// Every file under `dir`, sorted, skipping `.git` and symlinks that lead
    /// out; symlinked directories are not descended into.
    fn files_under(&self, dir: &Path) -> Vec<PathBuf> {
        walkdir::WalkDir::new(dir)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| !is_hidden_vcs(entry.file_name()))
            .flatten()
            .filter(|entry| {
                if entry.path_is_symlink() {
                    self.inside(entry.path()).is_some_and(|real| real.is_file())
                } else {
                    entry.file_type().is_file()
                }
            })
            .map(walkdir::DirEntry::into_path)
            .collect()
    }

    /// How the model sees a real path under the root.
    fn virtual_path(&self, real: &Path) -> String {
        let relative = real.strip_prefix(&self.root).unwrap_or(real);
        let mut shown = VIRTUAL_ROOT.to_string();
        for component in relative.components() {
            shown.push('/');
            shown.push_str(&component.as_os_str().to_string_lossy());
        }
        shown
    }
}

/// The coding-agent system prompt: Claude Code's shape in miniature.
pub fn agent_system_prompt() -> String {
    format!(
        "You are a coding agent working in a software repository at {VIRTUAL_ROOT}. \
You answer the user's questions about this repository.\n\
\n\
# Tools\n\
- LS lists a directory, Glob finds files by name pattern, Grep searches file \
contents, Read shows a file.\n\
- Use the tools to look at the repository before you answer: do not guess. Start \
with LS on {VIRTUAL_ROOT} and read the README.\n\
- Paths are absolute, under {VIRTUAL_ROOT}.\n\
\n\
# Answers\n\
- Be concise and direct. Follow any length limit the user gives exactly.\n\
- Answer only from what you found in the repository.\n\
- When you have the answer, reply with it as plain text and make no more tool calls."
    )
}

/// Truncates `content` to [`OUTPUT_LIMIT_BYTES`] on a character boundary.
fn cap_output(mut content: String) -> String {
    if content.len() <= OUTPUT_LIMIT_BYTES {
        return content;
    }
    let mut cut = OUTPUT_LIMIT_BYTES;
    while !content.is_char_boundary(cut) {
        cut -= 1;
    }
    let omitted = content.len() - cut;
    content.truncate(cut);
    let _ = write!(
        content,
        "\n... [output truncated: {omitted} more bytes; narrow the request]"
    );
    content
}

fn cut_line(line: &str) -> &str {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((at, _)) => &line[..at],
        None => line,
    }
}

/// File extensions for Grep's `type`, ripgrep's names for the common types;
/// any other name is taken as an extension.
fn file_type_extensions(name: &str) -> Vec<String> {
    let known: &[&str] = match name {
        "rust" | "rs" => &["rs"],
        "py" | "python" => &["py", "pyi"],
        "js" => &["js", "mjs", "cjs", "jsx"],
        "ts" => &["ts", "tsx", "mts", "cts"],
        "go" => &["go"],
        "md" | "markdown" => &["md", "markdown"],
        "toml" => &["toml"],
        "yaml" | "yml" => &["yaml", "yml"],
        "json" => &["json"],
        "html" => &["html", "htm"],
        "css" => &["css"],
        "csv" => &["csv"],
        other => return vec![other.trim_start_matches('.').to_string()],
    };
    known.iter().map(|e| e.to_string()).collect()
}

fn is_hidden_vcs(name: &std::ffi::OsStr) -> bool {
    name == ".git"
}

fn glob_matcher(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|glob: Glob| glob.compile_matcher())
        .map_err(|e| format!("invalid glob pattern {pattern:?}: {e}"))
}

/// Grep's content lines for one file: `path:N:line` for matches, `path-N-line`
/// for context, `--` between separate groups (ripgrep's format).
fn content_lines(
    shown: &str,
    lines: &[&str],
    hits: &[usize],
    before: usize,
    after: usize,
    line_numbers: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut next_unprinted = 0;
    for &hit in hits {
        let start = hit.saturating_sub(before).max(next_unprinted);
        if next_unprinted > 0 && start > next_unprinted && (before > 0 || after > 0) {
            out.push("--".to_string());
        }
        let end = hit.saturating_add(after).min(lines.len() - 1);
        for (index, line) in lines.iter().enumerate().take(end + 1).skip(start) {
            let separator = if index == hit || hits.binary_search(&index).is_ok() {
                ':'
            } else {
                '-'
            };
            let line = cut_line(line);
            out.push(if line_numbers {
                format!("{shown}{separator}{}{separator}{line}", index + 1)
            } else {
                format!("{shown}{separator}{line}")
            });
        }
        next_unprinted = next_unprinted.max(end + 1);
    }
    out
}

/// The input as an object whose keys are all in `allowed`.
fn arguments<'a>(input: &'a Value, allowed: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let args = input.as_object().ok_or("the input must be a JSON object")?;
    for key in args.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "unknown argument `{key}`; the arguments are {}",
                allowed.join(", ")
            ));
        }
    }
    Ok(args)
}

fn string_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("`{name}` must be a string, not {other}")),
    }
}

fn count_arg(args: &Map<String, Value>, name: &str) -> Result<Option<usize>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("`{name}` must be a non-negative integer, not {value}")),
    }
}

fn bool_arg(args: &Map<String, Value>, name: &str) -> Result<Option<bool>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!("`{name}` must be true or false, not {other}")),
    }
}

#[cfg(test)]
#[path = "sandbox_tests.rs"]
mod tests;
