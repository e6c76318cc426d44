//! Evals: suite files, the tool sandbox the agent works in, and the scorers.
//!
//! The runner (agent loop, HTTP client, store) builds on three pieces:
//! [`suite`] loads and validates `evals/*.toml`, [`sandbox`] executes the
//! agent's `Read`/`Glob`/`Grep`/`LS` calls inside a fixture repository, and
//! [`score`] turns what the model did ([`Transcript`]) into check results.

mod sandbox;
mod score;
mod suite;

pub use sandbox::{agent_system_prompt, Sandbox, ToolOutput, OUTPUT_LIMIT_BYTES, VIRTUAL_ROOT};
pub use score::{
    call_differences, call_schema_errors, count_bullets, count_sentences, count_words,
    normalize_string, score_case, score_check, split_into_sentences, values_match, CaseScore,
    CheckResult, ToolCall, Transcript, SCORER_VERSION,
};
pub use suite::{
    load_suite, load_suite_with_fixtures, load_suites, Case, CaseDefaults, Check, CountBound,
    ExpectedCall, Suite, SuiteError, CATEGORIES,
};
