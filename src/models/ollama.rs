//! `ollama:NAME[:TAG]` references: the exact weights an Ollama install serves.
//!
//! Ollama keeps a content-addressed store: a manifest per `host/namespace/model/tag`
//! under `manifests/`, whose layer of media type `application/vnd.ollama.image.model`
//! names the GGUF blob by digest, stored as `blobs/sha256-<hex>`. Resolving through
//! the manifest lets users qualify the very file Ollama runs, and the digest is a
//! ready-made pin: the blob is hashed and must match it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::is_sha256_hex;
use super::error::{ModelError, Result};

/// The environment variable Ollama itself uses for its model store.
pub const OLLAMA_MODELS_ENV: &str = "OLLAMA_MODELS";

/// The media type of the layer that holds the GGUF weights.
const MODEL_MEDIA_TYPE: &str = "application/vnd.ollama.image.model";

const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";

/// A fully qualified Ollama model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaName {
    /// The registry host directory, e.g. `registry.ollama.ai`.
    pub host: String,
    /// The namespace, e.g. `library`.
    pub namespace: String,
    /// The model, e.g. `qwen3`.
    pub model: String,
    /// The tag, e.g. `30b-a3b` or `latest`.
    pub tag: String,
}

impl OllamaName {
    /// Parses `model`, `ns/model` or `host/ns/model`, each with an optional `:tag`
    /// (the part after `ollama:`), filling in Ollama's defaults.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        let segments: Vec<&str> = name.split('/').collect();
        let (last, rest) = segments.split_last().expect("split yields one item");
        let (model, tag) = match last.split_once(':') {
            Some((model, tag)) => (model, tag),
            None => (*last, DEFAULT_TAG),
        };
        let (host, namespace) = match rest {
            [] => (DEFAULT_HOST, DEFAULT_NAMESPACE),
            [namespace] => (DEFAULT_HOST, *namespace),
            [host, namespace] => (*host, *namespace),
            _ => {
                return Err(
                    "expected MODEL, NAMESPACE/MODEL or HOST/NAMESPACE/MODEL, each with an optional :TAG"
                        .into(),
                )
            }
        };
        check_component("host", host, true)?;
        check_component("namespace", namespace, false)?;
        check_component("model", model, false)?;
        check_component("tag", tag, false)?;
        Ok(OllamaName {
            host: host.into(),
            namespace: namespace.into(),
            model: model.into(),
            tag: tag.into(),
        })
    }

    /// Where Ollama keeps this name's manifest under its models directory.
    pub fn manifest_path(&self, models_dir: &Path) -> PathBuf {
        models_dir
            .join("manifests")
            .join(&self.host)
            .join(&self.namespace)
            .join(&self.model)
            .join(&self.tag)
    }
}

impl fmt::Display for OllamaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host != DEFAULT_HOST {
            write!(f, "{}/", self.host)?;
        }
        if self.host != DEFAULT_HOST || self.namespace != DEFAULT_NAMESPACE {
            write!(f, "{}/", self.namespace)?;
        }
        write!(f, "{}:{}", self.model, self.tag)
    }
}

/// Each part of a name becomes a directory name, so it must be one plain segment.
fn check_component(what: &str, value: &str, is_host: bool) -> std::result::Result<(), String> {
    if value.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if value == "." || value == ".." {
        return Err(format!("`{value}` is not a valid {what}"));
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (is_host && c == ':')
    };
    match value.chars().find(|&c| !allowed(c)) {
        Some(c) => Err(format!("`{c}` is not allowed in the {what} `{value}`")),
        None => Ok(()),
    }
}

/// Ollama's models directory: `$OLLAMA_MODELS`, else `~/.ollama/models`.
pub(crate) fn default_models_dir() -> Option<PathBuf> {
    match std::env::var_os(OLLAMA_MODELS_ENV) {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => dirs::home_dir().map(|home| home.join(".ollama").join("models")),
    }
}

/// A model blob found through a manifest (not yet hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OllamaBlob {
    /// The blob file.
    pub path: PathBuf,
    /// The digest the manifest gives it, lowercase hex without `sha256:`.
    pub sha256: String,
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
}

/// Reads the manifest of `name` under `models_dir` and finds its model blob.
/// `reference` is the reference as the user wrote it, for errors.
pub(crate) fn locate(models_dir: &Path, name: &OllamaName, reference: &str) -> Result<OllamaBlob> {
    let manifest_path = name.manifest_path(models_dir);
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::OllamaManifestMissing {
                reference: reference.to_string(),
                path: manifest_path,
            })
        }
        Err(e) => return Err(ModelError::io("read", manifest_path, e)),
    };
    let invalid = |message: String| ModelError::OllamaManifest {
        path: manifest_path.clone(),
        message,
    };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let mut layers = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == MODEL_MEDIA_TYPE);
    let layer = match (layers.next(), layers.next()) {
        (Some(layer), None) => layer,
        (None, _) => return Err(invalid(format!("no layer of type {MODEL_MEDIA_TYPE}"))),
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "more than one layer of type {MODEL_MEDIA_TYPE}"
            )))
        }
    };
    let sha256 = layer
        .digest
        .strip_prefix("sha256:")
        .filter(|hex| is_sha256_hex(hex))
        .ok_or_else(|| {
            invalid(format!(
                "the model layer's digest `{}` is not sha256:<64 lowercase hex digits>",
                layer.digest
            ))
        })?;
    Ok(OllamaBlob {
        path: models_dir.join("blobs").join(format!("sha256-{sha256}")),
        sha256: sha256.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str, namespace: &str, model: &str, tag: &str) -> OllamaName {
        OllamaName {
            host: host.into(),
            namespace: namespace.into(),
            model: model.into(),
            tag: tag.into(),
        }
    }

    #[test]
    fn names_get_ollamas_defaults() {
        let parse = |s| OllamaName::parse(s).unwrap();
        assert_eq!(
            parse("qwen3"),
            name("registry.ollama.ai", "library", "qwen3", "latest")
        );
        assert_eq!(
            parse("qwen3:30b-a3b"),
            name("registry.ollama.ai", "library", "qwen3", "30b-a3b")
        );
        assert_eq!(
            parse("me/tiny:q4_0"),
            name("registry.ollama.ai", "me", "tiny", "q4_0")
        );
        assert_eq!(
            parse("hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M"),
            name("hf.co", "unsloth", "gemma-3-270m-it-GGUF", "Q4_K_M")
        );
        assert_eq!(
            parse("localhost:5000/me/tiny"),
            name("localhost:5000", "me", "tiny", "latest")
        );
    }

    #[test]
    fn names_display_without_defaults() {
        let display = |s| OllamaName::parse(s).unwrap().to_string();
        assert_eq!(display("qwen3"), "qwen3:latest");
        assert_eq!(display("me/tiny:q4"), "me/tiny:q4");
        assert_eq!(display("hf.co/me/tiny:q4"), "hf.co/me/tiny:q4");
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "",
            ":tag",
            "model:",
            "a/b/c/d",
            "../model",
            "ns/..",
            "model:../x",
            "model:a:b",
            "ns//model",
            "mo del",
            "host:1/ns:2/model",
        ] {
            assert!(OllamaName::parse(bad).is_err(), "`{bad}` should be refused");
        }
    }

    #[test]
    fn manifest_paths_follow_ollamas_layout() {
        let path = OllamaName::parse("qwen3:4b")
            .unwrap()
            .manifest_path(Path::new("/o"));
        assert_eq!(
            path,
            Path::new("/o/manifests/registry.ollama.ai/library/qwen3/4b")
        );
    }

    #[test]
    fn locate_finds_the_model_layer() {
        let dir = tempfile::tempdir().unwrap();
        let name = OllamaName::parse("tiny").unwrap();
        let manifest = name.manifest_path(dir.path());
        std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        let hex = "0123456789abcdef".repeat(4);
        let write = |layers: &str| {
            std::fs::write(
                &manifest,
                format!(r#"{{"schemaVersion":2,"layers":[{layers}]}}"#),
            )
            .unwrap()
        };
        write(&format!(
            r#"{{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{}"}},
               {{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{hex}","size":3}}"#,
            "f".repeat(64)
        ));
        let blob = locate(dir.path(), &name, "ollama:tiny").unwrap();
        assert_eq!(blob.sha256, hex);
        assert_eq!(blob.path, dir.path().join(format!("blobs/sha256-{hex}")));

        write(r#"{"mediaType":"application/vnd.ollama.image.model","digest":"md5:abc"}"#);
        let err = locate(dir.path(), &name, "ollama:tiny")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not sha256:"), "{err}");

        write("");
        let err = locate(dir.path(), &name, "ollama:tiny")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no layer of type"), "{err}");
    }
}
