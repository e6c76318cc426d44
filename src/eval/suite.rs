//! Suite files: `evals/*.toml`, data not code.
//!
//! A suite names its cases and the checks each case is scored by. Loading
//! validates everything a run would otherwise trip over half-way (unknown check
//! kinds, duplicate ids, missing fixtures, malformed tool schemas), so a bad
//! suite fails before the first request. The schema is documented in
//! `evals/README.md`.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::sandbox::Sandbox;
use super::score::value_errors;

/// Categories a case may have: BFCL's for tool calls, plus the text tasks.
pub const CATEGORIES: &[&str] = &[
    "summary",
    "word_limit",
    "simple",
    "multiple",
    "parallel",
    "irrelevance",
    "multi_turn",
];

/// JSON Schema types a tool argument may declare.
const SCHEMA_TYPES: &[&str] = &[
    "string", "integer", "number", "boolean", "array", "object", "null",
];

/// A suite that could not be loaded, with the file (and case) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// The file (or a fixture file) could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the suite's shape.
    #[error("{path}: {message}")]
    Parse {
        /// The suite file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parses but says something a run cannot do.
    #[error("{path}: {}{message}", case.as_ref().map(|id| format!("case `{id}`: ")).unwrap_or_default())]
    Invalid {
        /// The suite file.
        path: PathBuf,
        /// The case at fault, if one is.
        case: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// A loaded, validated suite.
#[derive(Debug, Clone, Serialize)]
pub struct Suite {
    /// Unique among the suites of a run, e.g. `summarize`.
    pub name: String,
    /// Bumped by hand when the cases change meaning.
    pub version: u32,
    /// What the suite measures.
    pub description: String,
    /// Settings every case starts from.
    pub defaults: CaseDefaults,
    /// The cases, in file order.
    pub cases: Vec<Case>,
    /// The file the suite was loaded from.
    pub path: PathBuf,
    /// The directory `fixture` paths are relative to.
    pub fixtures_root: PathBuf,
    /// sha256 (hex) over the suite file's bytes and every fixture file it uses.
    pub hash: String,
}

/// Per-case settings a suite sets once in `[defaults]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaseDefaults {
    /// Largest number of tokens per model response.
    pub max_tokens: u32,
    /// Largest number of model requests in one case (agent turns).
    pub max_turns: u32,
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
}

impl Default for CaseDefaults {
    fn default() -> Self {
        Self {
            max_tokens: 300,
            max_turns: 4,
            temperature: 0.0,
        }
    }
}

/// One case: a prompt, what the model may call, and how the answer is scored.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// Unique within the suite.
    pub id: String,
    /// One of [`CATEGORIES`].
    pub category: String,
    /// The user's message.
    pub prompt: String,
    /// A system prompt replacing the default one (the agent prompt when a
    /// fixture is set, none otherwise).
    pub system: Option<String>,
    /// A hand-written answer that passes every text check: never sent to the
    /// model, it keeps the checks honest (tests score it).
    pub reference: Option<String>,
    /// The fixture repository, relative to the fixtures root (`repos/csvtool`).
    /// When set, the sandbox tools are offered and executed over it.
    pub fixture: Option<String>,
    /// `fixture` resolved against the fixtures root.
    pub fixture_path: Option<PathBuf>,
    /// A failure of this case fails the run whatever the overall score.
    pub must_pass: bool,
    /// Largest number of tokens per model response.
    pub max_tokens: u32,
    /// Largest number of model requests in the case.
    pub max_turns: u32,
    /// Sampling temperature.
    pub temperature: f64,
    /// Tool definitions offered in addition to the sandbox's (Anthropic JSON:
    /// `name`, `description`, `input_schema`). Never executed: the calls are
    /// what is scored.
    pub tools: Vec<Value>,
    /// Anthropic `tool_choice`, if the case sets one.
    pub tool_choice: Option<Value>,
    /// How the transcript is scored; at least one.
    pub checks: Vec<Check>,
}

impl Case {
    /// Every tool offered to the model: the sandbox's when the case has a
    /// fixture, then the case's own.
    pub fn offered_tools(&self) -> Vec<Value> {
        let mut tools = if self.fixture.is_some() {
            Sandbox::tool_definitions()
        } else {
            Vec::new()
        };
        tools.extend(self.tools.iter().cloned());
        tools
    }
}

/// How many of something there must be (sentences, bullets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountBound {
    /// Exactly this many.
    pub exactly: Option<usize>,
    /// At least this many.
    pub at_least: Option<usize>,
    /// At most this many.
    pub at_most: Option<usize>,
}

/// One expected call of a `tool_calls` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCall {
    /// The tool's name.
    pub name: String,
    /// Acceptable values per argument, BFCL's way: the call matches when each
    /// argument it passes equals one of its listed values (strings compared
    /// normalised); `""` in a list means the argument may be left out; an empty
    /// list accepts any value of the schema's type. An argument not listed here
    /// is unexpected.
    #[serde(default)]
    pub args: serde_json::Map<String, Value>,
}

/// A check on a case's transcript. `kind` in the suite file selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// The final answer has at most `limit` words (IFEval's `\w+` count).
    MaxWords {
        /// Largest allowed count.
        limit: usize,
    },
    /// The final answer has at least `limit` words.
    MinWords {
        /// Smallest allowed count.
        limit: usize,
    },
    /// The number of sentences, split IFEval's way, within the bound.
    Sentences(CountBound),
    /// The number of markdown bullets (`* ` or `- ` lines), IFEval's way,
    /// within the bound.
    Bullets(CountBound),
    /// Every group must be mentioned: a group is a list of alternative keywords.
    Facts {
        /// Any-of keyword groups, all required.
        groups: Vec<Vec<String>>,
    },
    /// No claim may be made: a claim is a list of alternative keywords.
    Forbidden {
        /// Any-of keyword groups, none allowed.
        claims: Vec<Vec<String>>,
    },
    /// Like `facts`, for the final answer of an agent task.
    AnswerContains {
        /// Any-of keyword groups, all required.
        groups: Vec<Vec<String>>,
    },
    /// The model called one of `names` at least `min` times (default 1).
    UsedTool {
        /// Acceptable tool names.
        names: Vec<String>,
        /// Smallest number of such calls.
        #[serde(default = "one")]
        min: usize,
    },
    /// BFCL-style: the calls made match `calls` exactly, in any order, and each
    /// is valid against its tool's schema.
    ToolCalls {
        /// The expected calls; empty means no call is right.
        calls: Vec<ExpectedCall>,
    },
    /// Irrelevance: no tool fits, so any call fails.
    NoToolCalls {},
    /// Every call made names an offered tool and is valid against its schema.
    ValidToolCalls {},
}

fn one() -> usize {
    1
}

impl Check {
    /// The name of the check's kind as written in suite files.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::MaxWords { .. } => "max_words",
            Check::MinWords { .. } => "min_words",
            Check::Sentences(_) => "sentences",
            Check::Bullets(_) => "bullets",
            Check::Facts { .. } => "facts",
            Check::Forbidden { .. } => "forbidden",
            Check::AnswerContains { .. } => "answer_contains",
            Check::UsedTool { .. } => "used_tool",
            Check::ToolCalls { .. } => "tool_calls",
            Check::NoToolCalls {} => "no_tool_calls",
            Check::ValidToolCalls {} => "valid_tool_calls",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// The file as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    name: String,
    version: u32,
    #[serde(default)]
    description: String,
    #[serde(default)]
    defaults: CaseDefaults,
    /// Tool definitions cases may refer to by name.
    #[serde(default)]
    tool: Vec<toml::Value>,
    #[serde(default)]
    case: Vec<CaseFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    id: String,
    category: String,
    prompt: String,
    system: Option<String>,
    reference: Option<String>,
    fixture: Option<String>,
    #[serde(default)]
    must_pass: bool,
    max_tokens: Option<u32>,
    max_turns: Option<u32>,
    temperature: Option<f64>,
    /// Names of suite-level `[[tool]]`s, or inline definitions.
    #[serde(default)]
    tools: Vec<toml::Value>,
    tool_choice: Option<toml::Value>,
    /// Kept as raw values so an unknown kind is reported with its case.
    #[serde(default)]
    check: Vec<toml::Value>,
}

/// Loads one suite, with fixtures under `fixtures/` beside the suite's directory
/// (`evals/x.toml` → `fixtures/`).
pub fn load_suite(path: impl AsRef<Path>) -> Result<Suite, SuiteError> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Canonical where possible, so fixture paths read cleanly in records.
    let repository = match dir.canonicalize() {
        Ok(dir) => dir.parent().map(Path::to_path_buf).unwrap_or(dir),
        Err(_) => dir.join(".."),
    };
    load_suite_with_fixtures(path, repository.join("fixtures"))
}

/// Files in the suites directory that configure commands rather than define
/// suites (`compare.toml`: `showdown compare`'s thresholds).
const NOT_SUITES: &[&str] = &["compare.toml", "qualification.toml"];

/// Loads every `*.toml` in `dir` (but [`NOT_SUITES`]), sorted by file name;
/// suite names must be unique.
pub fn load_suites(dir: impl AsRef<Path>) -> Result<Vec<Suite>, SuiteError> {
    let dir = dir.as_ref();
    let io = |source| SuiteError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let config = path
            .file_name()
            .is_some_and(|name| NOT_SUITES.iter().any(|n| name == *n));
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() && !config {
            files.push(path);
        }
    }
    files.sort();
    let mut names = HashSet::new();
    let mut suites = Vec::new();
    for file in files {
        let suite = load_suite(&file)?;
        if !names.insert(suite.name.clone()) {
            return Err(SuiteError::Invalid {
                path: file,
                case: None,
                message: format!("suite name `{}` is used by another file", suite.name),
            });
        }
        suites.push(suite);
    }
    Ok(suites)
}

/// Loads one suite whose `fixture` paths are relative to `fixtures_root`.
pub fn load_suite_with_fixtures(
    path: impl AsRef<Path>,
    fixtures_root: impl AsRef<Path>,
) -> Result<Suite, SuiteError> {
    let path = path.as_ref();
    let fixtures_root = fixtures_root.as_ref();
    let bytes = std::fs::read(path).map_err(|source| SuiteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parse = |message: String| SuiteError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| parse(e.to_string()))?;
    let file: SuiteFile = toml::from_str(text).map_err(|e| parse(e.to_string()))?;
    let invalid = |case: Option<&str>, message: String| SuiteError::Invalid {
        path: path.to_path_buf(),
        case: case.map(str::to_string),
        message,
    };

    if file.name.trim().is_empty() {
        return Err(invalid(None, "`name` is empty".into()));
    }
    if file.case.is_empty() {
        return Err(invalid(None, "the suite has no `[[case]]`".into()));
    }
    let mut named_tools = Vec::new();
    for (index, raw) in file.tool.iter().enumerate() {
        let tool = tool_definition(raw)
            .map_err(|message| invalid(None, format!("[[tool]] #{}: {message}", index + 1)))?;
        if named_tools
            .iter()
            .any(|t: &Value| t["name"] == tool["name"])
        {
            return Err(invalid(
                None,
                format!("[[tool]] `{}` is defined twice", tool["name"]),
            ));
        }
        named_tools.push(tool);
    }

    let mut ids = HashSet::new();
    let mut cases = Vec::new();
    for raw in file.case {
        let id = raw.id.clone();
        let fail = |message: String| invalid(Some(&id), message);
        if id.trim().is_empty() {
            return Err(invalid(None, "a case has an empty `id`".into()));
        }
        if !ids.insert(id.clone()) {
            return Err(invalid(None, format!("duplicate case id `{id}`")));
        }
        if !CATEGORIES.contains(&raw.category.as_str()) {
            return Err(fail(format!(
                "unknown category `{}` (expected one of {})",
                raw.category,
                CATEGORIES.join(", ")
            )));
        }
        let fixture_path = match &raw.fixture {
            None => None,
            Some(fixture) => Some(resolve_fixture(fixtures_root, fixture).map_err(&fail)?),
        };
        let mut tools = Vec::new();
        for entry in &raw.tools {
            let tool = match entry {
                toml::Value::String(name) => named_tools
                    .iter()
                    .find(|t| t["name"] == name.as_str())
                    .cloned()
                    .ok_or_else(|| fail(format!("tool `{name}` is not defined in [[tool]]")))?,
                other => tool_definition(other).map_err(&fail)?,
            };
            tools.push(tool);
        }
        let mut offered = if fixture_path.is_some() {
            Sandbox::tool_definitions()
        } else {
            Vec::new()
        };
        offered.extend(tools.iter().cloned());
        let names: HashSet<&str> = offered.iter().filter_map(|t| t["name"].as_str()).collect();
        if names.len() != offered.len() {
            return Err(fail("two offered tools share a name".into()));
        }
        let tool_choice = raw
            .tool_choice
            .as_ref()
            .map(|v| serde_json::to_value(v).map_err(|e| fail(e.to_string())))
            .transpose()?;
        if let Some(choice) = &tool_choice {
            validate_tool_choice(choice, &names).map_err(&fail)?;
        }
        if raw.check.is_empty() {
            return Err(fail("the case has no `[[case.check]]`".into()));
        }
        let mut checks = Vec::new();
        for raw_check in raw.check {
            let check = parse_check(raw_check).map_err(&fail)?;
            validate_check(&check, &offered).map_err(&fail)?;
            checks.push(check);
        }
        let max_tokens = raw.max_tokens.unwrap_or(file.defaults.max_tokens);
        let max_turns = raw.max_turns.unwrap_or(file.defaults.max_turns);
        if max_tokens == 0 || max_turns == 0 {
            return Err(fail("`max_tokens` and `max_turns` must be positive".into()));
        }
        cases.push(Case {
            id,
            category: raw.category,
            prompt: raw.prompt,
            system: raw.system,
            reference: raw.reference,
            fixture: raw.fixture,
            fixture_path,
            must_pass: raw.must_pass,
            max_tokens,
            max_turns,
            temperature: raw.temperature.unwrap_or(file.defaults.temperature),
            tools,
            tool_choice,
            checks,
        });
    }

    let hash = suite_hash(&bytes, &cases)?;
    Ok(Suite {
        name: file.name,
        version: file.version,
        description: file.description,
        defaults: file.defaults,
        cases,
        path: path.to_path_buf(),
        fixtures_root: fixtures_root.to_path_buf(),
        hash,
    })
}

/// Reads a check table, naming the kind when it is unknown.
fn parse_check(raw: toml::Value) -> Result<Check, String> {
    let kind = raw
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or("a check has no `kind`")?
        .to_string();
    Check::deserialize(raw).map_err(|e| {
        let message = e.to_string();
        if message.contains("unknown variant") {
            format!("unknown check kind `{kind}`")
        } else {
            format!("check `{kind}`: {}", message.trim())
        }
    })
}

/// Anthropic's `tool_choice` shapes, naming only offered tools.
fn validate_tool_choice(choice: &Value, offered: &HashSet<&str>) -> Result<(), String> {
    match choice["type"].as_str() {
        Some("auto" | "any" | "none") => Ok(()),
        Some("tool") => match choice["name"].as_str() {
            Some(name) if offered.contains(name) => Ok(()),
            Some(name) => Err(format!("tool_choice names `{name}`, which is not offered")),
            None => Err("tool_choice of type \"tool\" needs a `name`".into()),
        },
        _ => Err("tool_choice `type` must be auto, any, tool or none".into()),
    }
}

/// What serde cannot see: empty lists, contradictory bounds, unknown tools,
/// expected calls that no valid call could match.
fn validate_check(check: &Check, offered_tools: &[Value]) -> Result<(), String> {
    let offered = |name: &str| offered_tools.iter().find(|t| t["name"] == name);
    let kind = check.kind();
    match check {
        Check::Facts { groups } | Check::AnswerContains { groups } => validate_groups(kind, groups),
        Check::Forbidden { claims } => validate_groups(kind, claims),
        Check::Sentences(bound) | Check::Bullets(bound) => {
            if bound.exactly.is_none() && bound.at_least.is_none() && bound.at_most.is_none() {
                return Err(format!(
                    "check `{kind}` needs `exactly`, `at_least` or `at_most`"
                ));
            }
            if let (Some(lo), Some(hi)) = (bound.at_least, bound.at_most) {
                if lo > hi {
                    return Err(format!("check `{kind}`: at_least {lo} > at_most {hi}"));
                }
            }
            Ok(())
        }
        Check::UsedTool { names, min } => {
            if names.is_empty() || *min == 0 {
                return Err(format!("check `{kind}` needs `names` and a positive `min`"));
            }
            for name in names {
                if offered(name).is_none() {
                    return Err(format!("check `{kind}`: tool `{name}` is not offered"));
                }
            }
            Ok(())
        }
        Check::ToolCalls { calls } => {
            for call in calls {
                let tool = offered(&call.name).ok_or_else(|| {
                    format!("check `{kind}`: tool `{}` is not offered", call.name)
                })?;
                validate_expected_call(call, &tool["input_schema"])
                    .map_err(|e| format!("check `{kind}`: `{}`: {e}", call.name))?;
            }
            Ok(())
        }
        Check::MaxWords { .. }
        | Check::MinWords { .. }
        | Check::NoToolCalls {}
        | Check::ValidToolCalls {} => Ok(()),
    }
}

/// An expected call must be satisfiable: its arguments exist in the schema,
/// every required one is listed (else a valid call would be "unexpected"), and
/// each acceptable value is valid for its argument.
fn validate_expected_call(call: &ExpectedCall, schema: &Value) -> Result<(), String> {
    for (arg, values) in &call.args {
        let property = &schema["properties"][arg];
        if property.is_null() {
            return Err(format!("argument `{arg}` is not in the tool's schema"));
        }
        let values = values
            .as_array()
            .ok_or_else(|| format!("`{arg}` must be a list of acceptable values"))?;
        for value in values.iter().filter(|v| *v != "") {
            let errors = value_errors(value, property, arg);
            if let Some(error) = errors.first() {
                return Err(format!("acceptable value {error}"));
            }
        }
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap_or_default();
        let listed = call.args.get(required).and_then(Value::as_array);
        if listed.is_none_or(|values| values.iter().any(|v| v == "")) {
            return Err(format!(
                "required argument `{required}` needs acceptable values (and cannot be optional)"
            ));
        }
    }
    Ok(())
}

fn validate_groups(kind: &str, groups: &[Vec<String>]) -> Result<(), String> {
    if groups.is_empty() || groups.iter().any(|g| g.is_empty()) {
        return Err(format!("check `{kind}` needs non-empty keyword groups"));
    }
    if groups.iter().flatten().any(|k| k.trim().is_empty()) {
        return Err(format!("check `{kind}` has an empty keyword"));
    }
    Ok(())
}

/// A tool definition from TOML: `input_schema` is a table or a JSON string.
fn tool_definition(raw: &toml::Value) -> Result<Value, String> {
    let mut tool = serde_json::to_value(raw).map_err(|e| e.to_string())?;
    let object = tool.as_object_mut().ok_or("a tool must be a table")?;
    for key in object.keys() {
        if !["name", "description", "input_schema"].contains(&key.as_str()) {
            return Err(format!("unknown tool field `{key}`"));
        }
    }
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("a tool needs a `name`")?
        .to_string();
    if let Some(Value::String(json)) = object.get("input_schema") {
        let parsed: Value = serde_json::from_str(json)
            .map_err(|e| format!("tool `{name}`: bad input_schema JSON: {e}"))?;
        object.insert("input_schema".into(), parsed);
    }
    let schema = object
        .get("input_schema")
        .ok_or_else(|| format!("tool `{name}` has no `input_schema`"))?;
    validate_schema(schema).map_err(|e| format!("tool `{name}`: bad input_schema: {e}"))?;
    Ok(tool)
}

/// The subset of JSON Schema the scorers understand.
fn validate_schema(schema: &Value) -> Result<(), String> {
    if schema["type"] != "object" {
        return Err("`type` must be \"object\"".into());
    }
    let empty = serde_json::Map::new();
    let properties = match schema.get("properties") {
        None => &empty,
        Some(p) => p.as_object().ok_or("`properties` must be an object")?,
    };
    for (name, property) in properties {
        validate_property(property).map_err(|e| format!("property `{name}`: {e}"))?;
    }
    if let Some(required) = schema.get("required") {
        for name in required.as_array().ok_or("`required` must be a list")? {
            let name = name.as_str().ok_or("`required` must list names")?;
            if !properties.contains_key(name) {
                return Err(format!("required `{name}` is not in `properties`"));
            }
        }
    }
    Ok(())
}

fn validate_property(property: &Value) -> Result<(), String> {
    let kind = property["type"].as_str().ok_or("needs a string `type`")?;
    if !SCHEMA_TYPES.contains(&kind) {
        return Err(format!("unknown type `{kind}`"));
    }
    if let Some(values) = property.get("enum") {
        if values.as_array().is_none_or(|v| v.is_empty()) {
            return Err("`enum` must be a non-empty list".into());
        }
    }
    match kind {
        "array" => match property.get("items") {
            Some(items) => validate_property(items).map_err(|e| format!("items: {e}")),
            None => Ok(()),
        },
        "object" if property.get("properties").is_some() => validate_schema(property),
        _ => Ok(()),
    }
}

/// `fixture` must be a relative path to a directory under the fixtures root.
fn resolve_fixture(fixtures_root: &Path, fixture: &str) -> Result<PathBuf, String> {
    let relative = Path::new(fixture);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "fixture `{fixture}` must be a plain path relative to fixtures/"
        ));
    }
    let path = fixtures_root.join(relative);
    if !path.is_dir() {
        return Err(format!(
            "fixture `{fixture}` not found (looked for {})",
            path.display()
        ));
    }
    Ok(path)
}

/// sha256 over the suite file, then each distinct fixture (sorted) file by file
/// (sorted relative paths, each with its length), so a changed fixture changes
/// the hash as surely as a changed case.
fn suite_hash(bytes: &[u8], cases: &[Case]) -> Result<String, SuiteError> {
    let mut hasher = Sha256::new();
    hasher.update(b"showdown-suite\0");
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
    let fixtures: BTreeSet<(&str, &Path)> = cases
        .iter()
        .filter_map(|c| Some((c.fixture.as_deref()?, c.fixture_path.as_deref()?)))
        .collect();
    for (name, dir) in fixtures {
        hasher.update(b"fixture\0");
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry = entry.map_err(|e| SuiteError::Io {
                path: dir.to_path_buf(),
                source: e.into(),
            })?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
        files.sort();
        for file in files {
            let contents = std::fs::read(&file).map_err(|source| SuiteError::Io {
                path: file.clone(),
                source,
            })?;
            let relative = file.strip_prefix(dir).unwrap_or(&file);
            let relative: Vec<_> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect();
            hasher.update(relative.join("/").as_bytes());
            hasher.update(b"\0");
            hasher.update((contents.len() as u64).to_le_bytes());
            hasher.update(&contents);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
#[path = "suite_tests.rs"]
mod tests;
