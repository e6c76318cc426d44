//! Scorers: pure functions from a case and what the model did to check results.
//!
//! Counting follows the references the numbers will be compared with: IFEval's
//! `\w+` words, sentence splitter and bullet patterns, and BFCL's AST matching
//! for tool calls (names, required arguments, schema types, allowed values with
//! normalised strings, calls matched as a multiset). Every result records its
//! evidence in `detail` (counts, distances, missing facts, differences) so a run
//! can be read without re-running it, and stored transcripts can be re-scored
//! when [`SCORER_VERSION`] changes.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::suite::{Case, Check, CountBound, ExpectedCall};

/// Bumped whenever a scorer's verdict or score can change for the same input.
pub const SCORER_VERSION: u32 = 1;

/// What the model did in one case: the input of every scorer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// The text of the last assistant response (its text blocks joined by
    /// newlines): the answer word, fact and sentence checks read.
    pub final_text: String,
    /// Every tool call the model made, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Number of model requests the case took.
    pub turns: u32,
}

/// One `tool_use` block the model produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// The arguments, as the model sent them.
    pub input: Value,
    /// The turn (1-based model request) it came in.
    pub turn: u32,
}

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's kind, as in suite files (`max_words`, `tool_calls`, …).
    pub kind: String,
    /// Whether the check passed.
    pub passed: bool,
    /// Partial credit in 0..=1 (1 when passed).
    pub score: f64,
    /// The evidence: counts, limits, distances, missing or unexpected items.
    pub detail: Value,
}

/// The verdict of a whole case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseScore {
    /// Mean of the checks' scores.
    pub score: f64,
    /// Every check passed.
    pub passed: bool,
    /// Each check's result, in the suite's order.
    pub checks: Vec<CheckResult>,
}

impl CaseScore {
    /// Combines check results: the score is their mean, a pass needs all of them.
    pub fn from_checks(checks: Vec<CheckResult>) -> Self {
        let score = if checks.is_empty() {
            0.0
        } else {
            checks.iter().map(|c| c.score).sum::<f64>() / checks.len() as f64
        };
        let passed = !checks.is_empty() && checks.iter().all(|c| c.passed);
        Self {
            score,
            passed,
            checks,
        }
    }
}

/// Scores a transcript against every check of its case.
pub fn score_case(case: &Case, transcript: &Transcript) -> Vec<CheckResult> {
    let tools = case.offered_tools();
    case.checks
        .iter()
        .map(|check| score_check(check, transcript, &tools))
        .collect()
}

/// Scores one check; `tools` are the definitions offered to the model.
pub fn score_check(check: &Check, transcript: &Transcript, tools: &[Value]) -> CheckResult {
    let text = &transcript.final_text;
    let (passed, score, detail) = match check {
        Check::MaxWords { limit } => {
            // An empty answer follows no instruction, however short it is.
            let count = count_words(text);
            let passed = count > 0 && count <= *limit;
            let score = match count {
                0 => 0.0,
                _ if passed => 1.0,
                _ => *limit as f64 / count as f64,
            };
            (passed, score, word_detail(count, *limit))
        }
        Check::MinWords { limit } => {
            let count = count_words(text);
            let passed = count >= *limit;
            let score = if passed {
                1.0
            } else {
                count as f64 / *limit as f64
            };
            (passed, score, word_detail(count, *limit))
        }
        Check::Sentences(bound) => bound_result(count_sentences(text), bound),
        Check::Bullets(bound) => bound_result(count_bullets(text), bound),
        Check::Facts { groups } | Check::AnswerContains { groups } => {
            let (found, missing): (Vec<_>, Vec<_>) = groups
                .iter()
                .map(|group| (group, find_any(text, group)))
                .partition(|(_, hit)| hit.is_some());
            let score = found.len() as f64 / groups.len().max(1) as f64;
            let detail = json!({
                "found": found.iter().map(|(_, hit)| hit.clone()).collect::<Vec<_>>(),
                "missing": missing.iter().map(|(group, _)| group).collect::<Vec<_>>(),
            });
            (missing.is_empty(), score, detail)
        }
        Check::Forbidden { claims } => {
            let found: Vec<String> = claims.iter().filter_map(|c| find_any(text, c)).collect();
            let score = 1.0 - found.len() as f64 / claims.len().max(1) as f64;
            (found.is_empty(), score, json!({ "found": found }))
        }
        Check::UsedTool { names, min } => {
            let count = transcript
                .tool_calls
                .iter()
                .filter(|c| names.contains(&c.name))
                .count();
            let score = (count as f64 / *min as f64).min(1.0);
            let detail = json!({ "count": count, "min": min, "names": names });
            (count >= *min, score, detail)
        }
        Check::ToolCalls { calls } => match_tool_calls(calls, &transcript.tool_calls, tools),
        Check::NoToolCalls {} => {
            let made: Vec<&str> = transcript
                .tool_calls
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let passed = made.is_empty();
            (
                passed,
                f64::from(u8::from(passed)),
                json!({ "calls": made }),
            )
        }
        Check::ValidToolCalls {} => {
            let invalid = invalid_calls(&transcript.tool_calls, tools);
            let total = transcript.tool_calls.len();
            let score = if total == 0 {
                1.0
            } else {
                (total - invalid.len()) as f64 / total as f64
            };
            let detail = json!({ "calls": total, "invalid": invalid });
            (invalid.is_empty(), score, detail)
        }
    };
    CheckResult {
        kind: check.kind().to_string(),
        passed,
        score,
        detail,
    }
}

fn word_detail(count: usize, limit: usize) -> Value {
    json!({ "count": count, "limit": limit, "distance": count as i64 - limit as i64 })
}

fn bound_result(count: usize, bound: &CountBound) -> (bool, f64, Value) {
    let below = |lo: Option<usize>| lo.map_or(0, |lo| lo.saturating_sub(count));
    let above = |hi: Option<usize>| hi.map_or(0, |hi| count.saturating_sub(hi));
    let distance = below(bound.exactly)
        .max(above(bound.exactly))
        .max(below(bound.at_least))
        .max(above(bound.at_most));
    let passed = distance == 0;
    let detail = json!({
        "count": count,
        "exactly": bound.exactly,
        "at_least": bound.at_least,
        "at_most": bound.at_most,
        "distance": distance,
    });
    (passed, f64::from(u8::from(passed)), detail)
}

static WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\w+").expect("valid regex"));

/// IFEval's word count: `\w+` tokens (Unicode), so "don't" is two words.
pub fn count_words(text: &str) -> usize {
    WORD.find_iter(text).count()
}

/// IFEval's bullet count: lines starting with `* ` (not `**`) or `-`
/// (its patterns `^\s*\*[^\*].*$` and `^\s*-.*$`).
pub fn count_bullets(text: &str) -> usize {
    static STAR: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?m)^\s*\*[^\*].*$").expect("valid regex"));
    static DASH: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?m)^\s*-.*$").expect("valid regex"));
    STAR.find_iter(text).count() + DASH.find_iter(text).count()
}

/// The number of sentences by IFEval's rule-based splitter
/// (`instructions_util.split_into_sentences`).
pub fn count_sentences(text: &str) -> usize {
    split_into_sentences(text).len()
}

/// IFEval's `split_into_sentences`, rule for rule: abbreviations, initials,
/// decimals, web addresses and ellipses do not end a sentence; `.`, `?` and `!`
/// do.
pub fn split_into_sentences(text: &str) -> Vec<String> {
    const ALPHABETS: &str = "([A-Za-z])";
    const PREFIXES: &str = "(Mr|St|Mrs|Ms|Dr)[.]";
    const SUFFIXES: &str = "(Inc|Ltd|Jr|Sr|Co)";
    const STARTERS: &str = r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)";
    const ACRONYMS: &str = "([A-Z][.][A-Z][.](?:[A-Z][.])?)";
    const WEBSITES: &str = "[.](com|net|org|io|gov|edu|me)";
    const DIGITS: &str = "([0-9])";
    static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
        let rules: Vec<(String, &'static str)> = vec![
            (PREFIXES.into(), "${1}<prd>"),
            (WEBSITES.into(), "<prd>${1}"),
            (format!("{DIGITS}[.]{DIGITS}"), "${1}<prd>${2}"),
        ];
        rules
            .into_iter()
            .map(|(pattern, with)| (Regex::new(&pattern).expect("valid regex"), with))
            .collect()
    });
    static LATER_RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
        let rules: Vec<(String, &'static str)> = vec![
            (format!(r"\s{ALPHABETS}[.] "), " ${1}<prd> "),
            (format!("{ACRONYMS} {STARTERS}"), "${1}<stop> ${2}"),
            (
                format!("{ALPHABETS}[.]{ALPHABETS}[.]{ALPHABETS}[.]"),
                "${1}<prd>${2}<prd>${3}<prd>",
            ),
            (
                format!("{ALPHABETS}[.]{ALPHABETS}[.]"),
                "${1}<prd>${2}<prd>",
            ),
            (format!(" {SUFFIXES}[.] {STARTERS}"), " ${1}<stop> ${2}"),
            (format!(" {SUFFIXES}[.]"), " ${1}<prd>"),
            (format!(" {ALPHABETS}[.]"), " ${1}<prd>"),
        ];
        rules
            .into_iter()
            .map(|(pattern, with)| (Regex::new(&pattern).expect("valid regex"), with))
            .collect()
    });
    static MULTIPLE_DOTS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\.{2,}").expect("valid regex"));

    let mut text = format!(" {text}  ").replace('\n', " ");
    for (pattern, with) in RULES.iter() {
        text = pattern.replace_all(&text, *with).into_owned();
    }
    text = MULTIPLE_DOTS
        .replace_all(&text, |caps: &regex::Captures| {
            "<prd>".repeat(caps[0].len()) + "<stop>"
        })
        .into_owned();
    if text.contains("Ph.D") {
        text = text.replace("Ph.D.", "Ph<prd>D<prd>");
    }
    for (pattern, with) in LATER_RULES.iter() {
        text = pattern.replace_all(&text, *with).into_owned();
    }
    text = text
        .replace(".\u{201d}", "\u{201d}.")
        .replace(".\"", "\".")
        .replace("!\"", "\"!")
        .replace("?\"", "\"?")
        .replace('.', ".<stop>")
        .replace('?', "?<stop>")
        .replace('!', "!<stop>")
        .replace("<prd>", ".");
    let mut sentences: Vec<String> = text.split("<stop>").map(|s| s.trim().to_string()).collect();
    if sentences.last().is_some_and(|s| s.is_empty()) {
        sentences.pop();
    }
    sentences
}

/// The first keyword of `group` that `text` mentions, case-insensitively and at
/// word boundaries (a plural `s`/`es` is allowed after a keyword).
pub fn find_any(text: &str, group: &[String]) -> Option<String> {
    group
        .iter()
        .find(|keyword| keyword_regex(keyword).is_match(text))
        .cloned()
}

fn keyword_regex(keyword: &str) -> Regex {
    let keyword = keyword.trim();
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let words: Vec<String> = keyword.split_whitespace().map(regex::escape).collect();
    let mut pattern = String::from("(?i)");
    if is_word(keyword.chars().next()) {
        pattern.push_str(r"\b");
    }
    pattern.push_str(&words.join(r"\s+"));
    if is_word(keyword.chars().last()) {
        pattern.push_str(r"(?:e?s)?\b");
    }
    Regex::new(&pattern).expect("escaped keyword is a valid regex")
}

/// BFCL's string normalisation: lowercase, without spaces and `,./-_*^`, single
/// quotes as double quotes.
pub fn normalize_string(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, ' ' | ',' | '.' | '/' | '-' | '_' | '*' | '^'))
        .collect::<String>()
        .to_lowercase()
        .replace('\'', "\"")
        .trim()
        .to_string()
}

/// Whether a value the model sent equals an acceptable one: strings normalised,
/// numbers by value, lists element by element, objects key by key.
pub fn values_match(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::String(a), Value::String(e)) => normalize_string(a) == normalize_string(e),
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(a, e)| values_match(a, e))
        }
        (Value::Object(a), Value::Object(e)) => {
            a.len() == e.len()
                && a.iter()
                    .all(|(key, a)| e.get(key).is_some_and(|e| values_match(a, e)))
        }
        (a, e) => a == e,
    }
}

/// The definition of tool `name` among `tools`.
fn find_tool<'a>(tools: &'a [Value], name: &str) -> Option<&'a Value> {
    tools.iter().find(|t| t["name"] == name)
}

/// Why `call` is not a valid call of an offered tool: unknown tool, missing
/// required arguments, unknown arguments, wrong types, values outside `enum`.
pub fn call_schema_errors(call: &ToolCall, tools: &[Value]) -> Vec<String> {
    let Some(tool) = find_tool(tools, &call.name) else {
        return vec![format!("unknown tool `{}`", call.name)];
    };
    object_errors(&call.input, &tool["input_schema"], "")
}

fn object_errors(value: &Value, schema: &Value, at: &str) -> Vec<String> {
    let Some(input) = value.as_object() else {
        return vec![format!("{}: expected an object", path_or_input(at))];
    };
    let mut errors = Vec::new();
    let properties = schema["properties"].as_object();
    for name in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = name.as_str() {
            if !input.contains_key(name) {
                errors.push(format!("missing required argument `{at}{name}`"));
            }
        }
    }
    for (name, value) in input {
        match properties.and_then(|p| p.get(name)) {
            None => errors.push(format!("unexpected argument `{at}{name}`")),
            Some(property) => errors.extend(value_errors(value, property, &format!("{at}{name}"))),
        }
    }
    errors
}

fn path_or_input(at: &str) -> &str {
    if at.is_empty() {
        "input"
    } else {
        at.trim_end_matches('.')
    }
}

/// Type and `enum` errors of one argument value against its property schema.
/// An integer is a number; a numeric string is not an integer.
pub(super) fn value_errors(value: &Value, property: &Value, at: &str) -> Vec<String> {
    let expected = property["type"].as_str().unwrap_or("any");
    let type_ok = match expected {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    };
    if !type_ok {
        return vec![format!(
            "`{at}`: expected {expected}, got {} {value}",
            json_type(value)
        )];
    }
    let mut errors = Vec::new();
    if let Some(allowed) = property["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!(
                "`{at}`: {value} is not one of {}",
                Value::from(allowed.clone())
            ));
        }
    }
    match (value, expected) {
        (Value::Array(items), "array") if property.get("items").is_some() => {
            for (index, item) in items.iter().enumerate() {
                errors.extend(value_errors(
                    item,
                    &property["items"],
                    &format!("{at}[{index}]"),
                ));
            }
        }
        (Value::Object(_), "object") if property.get("properties").is_some() => {
            errors.extend(object_errors(value, property, &format!("{at}.")));
        }
        _ => {}
    }
    errors
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// How `call` differs from `expected`, BFCL's way; empty when it matches.
pub fn call_differences(call: &ToolCall, expected: &ExpectedCall) -> Vec<String> {
    if call.name != expected.name {
        return vec![format!(
            "called `{}` instead of `{}`",
            call.name, expected.name
        )];
    }
    let empty = serde_json::Map::new();
    let input = call.input.as_object().unwrap_or(&empty);
    let mut differences = Vec::new();
    for (name, value) in input {
        match expected.args.get(name).and_then(Value::as_array) {
            None => differences.push(format!("unexpected argument `{name}`")),
            Some(allowed) if allowed.is_empty() => {}
            Some(allowed) => {
                if !allowed.iter().any(|a| values_match(value, a)) {
                    differences.push(format!(
                        "`{name}` = {value}, expected one of {}",
                        Value::from(allowed.clone())
                    ));
                }
            }
        }
    }
    for (name, allowed) in &expected.args {
        let optional = allowed
            .as_array()
            .is_some_and(|values| values.iter().any(|v| v == ""));
        if !input.contains_key(name) && !optional {
            differences.push(format!("missing argument `{name}`"));
        }
    }
    differences
}

/// Every call that is not valid against the offered tools, with its errors.
fn invalid_calls(calls: &[ToolCall], tools: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .filter_map(|(index, call)| {
            let errors = call_schema_errors(call, tools);
            (!errors.is_empty())
                .then(|| json!({ "index": index, "name": call.name, "errors": errors }))
        })
        .collect()
}

/// BFCL's multiset match: each expected call paired with a distinct made call
/// that matches it (any order), no call left over, every call schema-valid.
fn match_tool_calls(
    expected: &[ExpectedCall],
    made: &[ToolCall],
    tools: &[Value],
) -> (bool, f64, Value) {
    let compatible: Vec<Vec<bool>> = expected
        .iter()
        .map(|e| {
            made.iter()
                .map(|m| call_differences(m, e).is_empty())
                .collect()
        })
        .collect();
    let pairing = maximum_matching(&compatible, made.len());
    let matched = pairing.iter().filter(|p| p.is_some()).count();
    let used: Vec<usize> = pairing.iter().flatten().copied().collect();
    let unexpected: Vec<usize> = (0..made.len()).filter(|i| !used.contains(i)).collect();

    let unmatched: Vec<Value> = expected
        .iter()
        .zip(&pairing)
        .filter(|(_, pair)| pair.is_none())
        .map(|(e, _)| {
            // Explain against the closest leftover call: same name first.
            let closest = unexpected
                .iter()
                .map(|&i| &made[i])
                .find(|m| m.name == e.name)
                .or_else(|| unexpected.first().map(|&i| &made[i]));
            let differences = match closest {
                Some(call) => call_differences(call, e),
                None => vec!["no call made".to_string()],
            };
            json!({ "name": e.name, "differences": differences })
        })
        .collect();
    let invalid = invalid_calls(made, tools);
    let passed = invalid.is_empty() && matched == expected.len() && unexpected.is_empty();
    let score = if passed {
        1.0
    } else {
        matched as f64 / expected.len().max(made.len()).max(1) as f64
    };
    let detail = json!({
        "expected": expected.len(),
        "made": made.len(),
        "matched": matched,
        "unmatched_expected": unmatched,
        "unexpected_calls": unexpected
            .iter()
            .map(|&i| json!({ "name": made[i].name, "input": made[i].input }))
            .collect::<Vec<_>>(),
        "invalid_calls": invalid,
    });
    (passed, score, detail)
}

/// Kuhn's augmenting paths: for each row, the column it is paired with.
fn maximum_matching(compatible: &[Vec<bool>], columns: usize) -> Vec<Option<usize>> {
    fn augment(
        row: usize,
        compatible: &[Vec<bool>],
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for column in 0..owner.len() {
            if compatible[row][column] && !seen[column] {
                seen[column] = true;
                if owner[column].is_none_or(|other| augment(other, compatible, seen, owner)) {
                    owner[column] = Some(row);
                    return true;
                }
            }
        }
        false
    }
    let mut owner: Vec<Option<usize>> = vec![None; columns];
    for row in 0..compatible.len() {
        let mut seen = vec![false; columns];
        augment(row, compatible, &mut seen, &mut owner);
    }
    let mut pairing = vec![None; compatible.len()];
    for (column, row) in owner.iter().enumerate() {
        if let Some(row) = row {
            pairing[*row] = Some(column);
        }
    }
    pairing
}
