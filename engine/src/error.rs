//! The engine's error type: every way loading or running a model can fail,
//! with messages fit to show a user (no panics on bad input).

use std::path::PathBuf;

/// Errors from loading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be opened or read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid GGUF file (bad magic, truncated, corrupt metadata).
    #[error("{path} is not a valid GGUF model file: {reason}")]
    InvalidGguf {
        /// The file that failed.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// A metadata key the architecture needs is absent or has the wrong type.
    #[error("model metadata is missing or invalid: {0}")]
    Metadata(String),
    /// The GGUF declares an architecture the engine does not implement.
    #[error("unsupported model architecture `{0}` (supported: {supported})", supported = crate::models::SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture(String),
    /// The tokenizer described by the GGUF cannot be built.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The prompt does not fit the context window.
    #[error("prompt is too long: {tokens} tokens > {max} maximum")]
    PromptTooLong {
        /// Tokens in the rendered prompt.
        tokens: usize,
        /// The model's context length.
        max: usize,
    },
    /// A request parameter is out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The OS refused the KV cache's address space.
    #[error("cannot reserve {bytes} bytes for the KV cache: {source}")]
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A tensor operation failed inside candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
