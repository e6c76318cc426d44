//! Pinned models: what a model reference means, and the file it resolves to.
//!
//! showdown only ever runs weights it can name by sha256, because a result is
//! worthless if nobody can say which file produced it. Three kinds of reference
//! lead to a file, and all go through [`resolve_model`]:
//!
//! - a name from the models file (`smollm2-135m`): the cached copy, pulled with
//!   `showdown models pull` and checked against the pinned hash;
//! - `path:FILE`: a local file, pinned on first use in `pins.toml` (module `pins`);
//! - `ollama:NAME[:TAG]`: the blob an Ollama install serves, pinned by the digest
//!   in its manifest (module `ollama`).
//!
//! The pieces: `catalogue` parses the models file, `store` owns the cache (pull,
//! verify), `pip` fetches wheels, `digest` hashes, and `error` holds
//! [`ModelError`].

mod catalogue;
mod digest;
mod error;
mod ollama;
mod pins;
mod pip;
mod store;

use std::path::{Path, PathBuf};

pub use catalogue::{Catalogue, ChatTemplate, ModelSpec, PipPart, Source, MODELS_FILE_ENV};
pub use error::ModelError;
pub use ollama::{OllamaName, OLLAMA_MODELS_ENV};
pub use pip::PYTHON_ENV;
pub use store::{ModelStatus, ModelStore, PullOutcome, HOME_ENV};

use catalogue::validate_name;
use digest::sha256_file;
use error::Result;
use pins::Pins;

/// A parsed model reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A name from the models file.
    Name(String),
    /// `path:FILE`: a local GGUF file (as written, not yet canonical).
    Path(PathBuf),
    /// `ollama:NAME[:TAG]`.
    Ollama(OllamaName),
}

impl ModelRef {
    /// Parses `NAME`, `path:FILE` or `ollama:NAME[:TAG]`.
    pub fn parse(reference: &str) -> Result<Self> {
        let bad = |reason: String| ModelError::BadReference {
            reference: reference.to_string(),
            reason,
        };
        if let Some(file) = reference.strip_prefix("path:") {
            if file.is_empty() {
                return Err(bad("`path:` needs a file, as in path:model.gguf".into()));
            }
            return Ok(ModelRef::Path(PathBuf::from(file)));
        }
        if let Some(name) = reference.strip_prefix("ollama:") {
            return OllamaName::parse(name).map(ModelRef::Ollama).map_err(bad);
        }
        if let Some((scheme, _)) = reference.split_once(':') {
            return Err(bad(format!(
                "unknown kind `{scheme}:`; use a model name, path:FILE or ollama:NAME[:TAG]"
            )));
        }
        if let Err(reason) = validate_name(reference) {
            let hint = if reference.contains(['/', '\\']) {
                format!("; for a local file write path:{reference}")
            } else {
                String::new()
            };
            return Err(bad(format!("{reason}{hint}")));
        }
        Ok(ModelRef::Name(reference.to_string()))
    }
}

/// How a resolved model is pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Listed in the models file, which pins its hash.
    Catalogue,
    /// A `path:` file, pinned in `pins.toml`.
    Path {
        /// Whether this resolution recorded the pin (first use).
        newly_pinned: bool,
    },
    /// An Ollama blob, pinned by its manifest's digest.
    Ollama,
}

/// A model file whose hash has just been checked against its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The reference as given, e.g. `smollm2-135m`, `path:m.gguf`, `ollama:qwen3:4b`.
    pub reference: String,
    /// A short name: the catalogue name, the file name, or the Ollama `model:tag`.
    pub name: String,
    /// The file to load.
    pub path: PathBuf,
    /// Its sha256, lowercase hex; record it with every run.
    pub sha256: String,
    /// How the hash is pinned.
    pub origin: Origin,
    /// From the models file; `None` for `path:`/`ollama:` (read it from the GGUF).
    pub architecture: Option<String>,
    /// From the models file; `None` for `path:`/`ollama:` (read it from the GGUF).
    pub context_length: Option<u32>,
    /// From the models file; `None` for `path:`/`ollama:` (use the GGUF's template).
    pub chat_template: Option<ChatTemplate>,
    /// From the models file; `None` for `path:`/`ollama:`.
    pub tool_call_format: Option<String>,
}

/// Resolves `reference` to a file whose hash matches its pin.
///
/// A listed name must have been pulled; a `path:` file is pinned on first use and
/// refused if it later changes; an `ollama:` blob must match its manifest digest.
/// This hashes the whole file, so it costs a read of the model.
pub fn resolve_model(reference: &str, store: &ModelStore) -> Result<ResolvedModel> {
    match ModelRef::parse(reference)? {
        ModelRef::Name(name) => {
            let spec = store.catalogue().get(&name)?;
            let path = store.verify(&name)?;
            Ok(ResolvedModel {
                reference: reference.to_string(),
                name: spec.name.clone(),
                path,
                sha256: spec.sha256.clone(),
                origin: Origin::Catalogue,
                architecture: Some(spec.architecture.clone()),
                context_length: Some(spec.context_length),
                chat_template: Some(spec.chat_template.clone()),
                tool_call_format: Some(spec.tool_call_format.clone()),
            })
        }
        ModelRef::Path(file) => resolve_path(reference, &file, store),
        ModelRef::Ollama(name) => resolve_ollama(reference, &name, store),
    }
}

fn resolve_path(reference: &str, file: &Path, store: &ModelStore) -> Result<ResolvedModel> {
    let path = std::fs::canonicalize(file).map_err(|e| ModelError::io("find", file, e))?;
    if !path.is_file() {
        return Err(ModelError::BadReference {
            reference: reference.to_string(),
            reason: format!("{} is not a file", path.display()),
        });
    }
    let actual = sha256_file(&path)?;
    let mut pins = Pins::load(store.pins_file())?;
    let newly_pinned = match pins.get(&path)? {
        Some(pinned) if pinned == actual => false,
        Some(pinned) => {
            return Err(ModelError::PinMismatch {
                path,
                pinned: pinned.to_string(),
                actual,
                pins_file: pins.path().to_path_buf(),
            })
        }
        None => {
            pins.insert(&path, &actual)?;
            pins.save()?;
            true
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(unlisted(
        reference,
        name,
        path,
        actual,
        Origin::Path { newly_pinned },
    ))
}

fn resolve_ollama(reference: &str, name: &OllamaName, store: &ModelStore) -> Result<ResolvedModel> {
    let dir = store.ollama_dir().ok_or_else(|| ModelError::BadReference {
        reference: reference.to_string(),
        reason: format!("cannot find Ollama's models directory; set {OLLAMA_MODELS_ENV}"),
    })?;
    let blob = ollama::locate(dir, name, reference)?;
    let actual = sha256_file(&blob.path)?;
    if actual != blob.sha256 {
        return Err(ModelError::OllamaBlobMismatch {
            reference: reference.to_string(),
            path: blob.path,
            expected: blob.sha256,
            actual,
        });
    }
    Ok(unlisted(
        reference,
        name.to_string(),
        blob.path,
        actual,
        Origin::Ollama,
    ))
}

/// A resolved model the models file says nothing about.
fn unlisted(
    reference: &str,
    name: String,
    path: PathBuf,
    sha256: String,
    origin: Origin,
) -> ResolvedModel {
    ResolvedModel {
        reference: reference.to_string(),
        name,
        path,
        sha256,
        origin,
        architecture: None,
        context_length: None,
        chat_template: None,
        tool_call_format: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_by_prefix() {
        assert_eq!(
            ModelRef::parse("smollm2-135m").unwrap(),
            ModelRef::Name("smollm2-135m".into())
        );
        assert_eq!(
            ModelRef::parse("path:models/m.gguf").unwrap(),
            ModelRef::Path(PathBuf::from("models/m.gguf"))
        );
        assert_eq!(
            ModelRef::parse("ollama:qwen3:4b").unwrap(),
            ModelRef::Ollama(OllamaName::parse("qwen3:4b").unwrap())
        );
    }

    #[test]
    fn bad_references_say_what_is_expected() {
        let err = |r| ModelRef::parse(r).unwrap_err().to_string();
        assert!(err("path:").contains("needs a file"));
        assert!(err("hf:org/model").contains("unknown kind `hf:`"));
        assert!(err("ollama:a/b/c/d").contains("HOST/NAMESPACE/MODEL"));
        assert!(err("models/m.gguf").contains("write path:models/m.gguf"));
        assert!(err("").contains("empty"));
    }
}
