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
//! - Benchmark: [`run_bench_test`] measures pp512 / pp2048 / tg128 in
//!   llama-bench's terms.

mod bench;
mod inference;
mod models;
mod tools;

pub use bench::{
    describe as describe_bench_model, run_test as run_bench_test, BenchModel, BenchResult,
    BenchTest,
};
pub use inference::{load_engine, mib, GenerationReport};
pub use models::{
    resolve_model, Catalogue, ChatTemplate, ModelError, ModelRef, ModelSpec, ModelStatus,
    ModelStore, OllamaName, Origin, PipPart, PullOutcome, ResolvedModel, Source, HOME_ENV,
    MODELS_FILE_ENV, OLLAMA_MODELS_ENV, PYTHON_ENV,
};
pub use tools::{
    ParsedEvent, ToolCall, ToolCallConstraint, ToolCallFormat, ToolCallParser, ToolChoice,
    ToolDefinition, ToolError, ToolGrammarEnv,
};
