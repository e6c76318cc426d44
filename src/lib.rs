//! showdown: a reproducible eval and CI service for local models driving coding
//! agents.
//!
//! The `showdown` binary is thin glue over this library. Modules stay private;
//! what other crates and the binary may use is the curated list below.
//!
//! - Models: [`ModelStore`] (the pinned catalogue and the cache it is pulled into)
//!   and [`resolve_model`], which turns a reference (`NAME`, `path:FILE`,
//!   `ollama:NAME[:TAG]`) into a [`ResolvedModel`]: a file whose sha256 has just
//!   been checked against its pin.
//! - Inference: [`load_engine`] loads a resolved model into the engine;
//!   [`GenerationReport`] holds the figures `showdown generate` prints.
//! - Serving: [`serve`] answers the Anthropic Messages API ([`ServeConfig`],
//!   [`AppState`], [`server_app`] for tests) with prompt caching.
//! - Evals: [`load_suites`] reads and validates `evals/*.toml` into [`Suite`]s
//!   of [`Case`]s; [`Sandbox`] runs the agent's `Read`/`Glob`/`Grep`/`LS` calls
//!   inside a fixture ([`agent_system_prompt`] is the agent's system prompt);
//!   [`score_case`] scores a [`Transcript`] into [`CheckResult`]s
//!   ([`CaseScore`] combines them, [`SCORER_VERSION`] dates the scorers).
//! - Benchmark: [`run_bench_test`] measures pp512 / pp2048 / tg128 in
//!   llama-bench's terms.
//! - Regressions: [`compare_stored`] / [`compare`] decide whether a head run
//!   regressed against a base run ([`Comparison`], thresholds in
//!   [`CompareConfig`]); [`render_markdown`] renders the report; the tests
//!   ([`fisher_drop_p`], [`mann_whitney`], [`bootstrap_median_ratio`]) are public.
//! - Qualification: [`QualificationFile`] profiles of gates per suite;
//!   [`evaluate_qualification`] gives a [`Verdict`], [`render_verdicts`] prints it.
//! - PR bot: [`PrCommenter`] keeps one comment per pull request (found by
//!   [`COMMENT_MARKER`]) up to date through octocrab; [`render_pr_comment`].
//! - Dashboard: [`dashboard_router`] serves the read-only pages and their JSON
//!   over a results [`Store`] ([`DashboardState`] from a [`DashboardConfig`]).

mod api;
pub mod assets;
mod bench;
mod cache_bench;
mod dashboard;
mod eval;
mod github;
mod host_check;
mod inference;
mod models;
mod report;
mod runner;
mod store;
mod tools;

pub use api::{
    app as server_app, render_request_prompt, render_request_prompt_injected, serve, serve_on,
    serve_with, ApiError, AppState, OutputEvent, OutputParser, PromptCacheConfig, ServeConfig,
    ServedModel, ToolPromptFormat,
};
pub use assets::suites_dir;
pub use bench::{
    describe as describe_bench_model, run_test as run_bench_test, BenchModel, BenchResult,
    BenchTest,
};
pub use cache_bench::{run_cache_bench, CacheBenchTurn};
pub use dashboard::{
    router as dashboard_router, standalone_router as dashboard_standalone_router,
    templates as dashboard_templates, DashboardConfig, DashboardState,
};
pub use eval::{
    agent_system_prompt, call_differences, call_schema_errors, count_bullets, count_sentences,
    count_words, load_suite, load_suite_with_fixtures, load_suites, normalize_string, score_case,
    score_check, split_into_sentences, values_match, Case, CaseDefaults, CaseScore, Check,
    CheckResult, CountBound, ExpectedCall, Sandbox, Suite, SuiteError, ToolCall as TranscriptCall,
    ToolOutput, Transcript, CATEGORIES, OUTPUT_LIMIT_BYTES, SCORER_VERSION, VIRTUAL_ROOT,
};
pub use github::{
    render_pr_comment, CommentOutcome, DashboardLinks, GithubError, PrCommenter, PullRequest,
    COMMENT_MARKER,
};
pub use host_check::AllowedHosts;
pub use inference::{load_engine, mib, GenerationReport};
pub use models::{
    resolve_model, Catalogue, ChatTemplate, ModelError, ModelRef, ModelSpec, ModelStatus,
    ModelStore, OllamaName, Origin, PipPart, PullOutcome, ResolvedModel, Source, HOME_ENV,
    MODELS_FILE_ENV, OLLAMA_MODELS_ENV, PYTHON_ENV,
};
pub use report::{
    bootstrap_median_ratio, comparability, compare, compare_metric, compare_stored, erfc,
    evaluate_qualification, fisher_drop_p, ln_factorial, mann_whitney, median, render_markdown,
    render_verdicts, CaseFlip, CompareConfig, Comparison, Confirmation, GateResult, MannWhitney,
    MetricComparison, Profile, QualificationFile, RunIdentity, SplitMix64, SuiteComparison,
    SuiteEvidence, SuiteGates, Verdict,
};
pub use runner::{
    load_named_suites, render_table, rescore_case, run as run_eval, run_agent, summarize,
    AgentOutcome, AgentTask, ApiFailure, GitMeta, MessagesClient, MessagesResponse, RunOptions,
    RunReport, SuiteSummary, Target, Timeouts, ToolExecutor, DEFAULT_SUITES,
};
pub use store::{
    copy_history, now as store_now, CaseRecord, CheckRecord, CopyReport, DbLocation, HostInfo,
    NewRun, RequestMetrics, RunRow, Store, StoredCase, StoredVerdict, SuiteRow,
};
pub use tools::{
    ParsedEvent, ToolCall, ToolCallConstraint, ToolCallFormat, ToolCallParser, ToolChoice,
    ToolDefinition, ToolError, ToolGrammarEnv,
};
