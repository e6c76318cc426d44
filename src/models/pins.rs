//! Trust-on-first-use pins for `path:` models.
//!
//! A local file has no pin in the models file, yet a run must still mean one exact
//! set of weights. So the first use of `path:FILE` records its sha256 under the
//! file's canonical path in `pins.toml`, and every later use must match: a file
//! that changed is refused until the user removes its pin on purpose
//! (`showdown models unpin path:FILE`). The file is rewritten atomically, so a
//! crash never leaves it half-written.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::is_sha256_hex;
use super::error::{ModelError, Result};

const HEADER: &str = "\
# showdown's pins for `path:` models: canonical path = sha256 recorded on first use.
# A file whose hash differs is refused. To accept a changed file, run
# `showdown models unpin path:FILE` (or delete its line) and use it again.
";

/// The pins file, loaded into memory.
#[derive(Debug)]
pub(crate) struct Pins {
    path: PathBuf,
    pins: BTreeMap<String, String>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsFile {
    #[serde(default)]
    pins: BTreeMap<String, String>,
}

impl Pins {
    /// Loads `path`; a missing file holds no pins.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ModelError::io("read", path, e)),
        };
        let invalid = |message: String| ModelError::Pins {
            path: path.to_path_buf(),
            message,
        };
        let file: PinsFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if let Some((file, hash)) = file.pins.iter().find(|(_, h)| !is_sha256_hex(h)) {
            return Err(invalid(format!(
                "the pin of {file} is `{hash}`, not a lowercase hex sha256"
            )));
        }
        Ok(Pins {
            path: path.to_path_buf(),
            pins: file.pins,
        })
    }

    /// The pins file's location.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The hash pinned for `file`, if any.
    pub(crate) fn get(&self, file: &Path) -> Result<Option<&str>> {
        Ok(self.pins.get(self.key(file)?).map(String::as_str))
    }

    /// Pins `file` to `sha256` (in memory; call [`Pins::save`]).
    pub(crate) fn insert(&mut self, file: &Path, sha256: &str) -> Result<()> {
        let key = self.key(file)?.to_string();
        self.pins.insert(key, sha256.to_string());
        Ok(())
    }

    /// Removes the pin of `file`, returning its hash if there was one.
    pub(crate) fn remove(&mut self, file: &Path) -> Result<Option<String>> {
        let key = self.key(file)?.to_string();
        Ok(self.pins.remove(&key))
    }

    /// Writes the pins back, atomically.
    pub(crate) fn save(&self) -> Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io("create directory", dir, e))?;
        let body = toml::to_string(&PinsFile {
            pins: self.pins.clone(),
        })
        .map_err(|e| ModelError::Pins {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".pins.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| ModelError::io("create a temporary file in", dir, e))?;
        tmp.write_all(HEADER.as_bytes())
            .and_then(|()| tmp.write_all(body.as_bytes()))
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| ModelError::io("write", tmp.path().to_path_buf(), e))?;
        tmp.persist(&self.path)
            .map_err(|e| ModelError::io("replace", &self.path, e.error))?;
        Ok(())
    }

    fn key<'a>(&self, file: &'a Path) -> Result<&'a str> {
        file.to_str().ok_or_else(|| ModelError::Pins {
            path: self.path.clone(),
            message: format!("cannot pin {}: the path is not UTF-8", file.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("pins.toml");
        let mut pins = Pins::load(&path).unwrap();
        assert_eq!(pins.get(Path::new("/m/a.gguf")).unwrap(), None);
        let hash = "ab".repeat(32);
        pins.insert(Path::new("/m/a.gguf"), &hash).unwrap();
        pins.save().unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# showdown's pins"), "{text}");
        let mut pins = Pins::load(&path).unwrap();
        assert_eq!(
            pins.get(Path::new("/m/a.gguf")).unwrap(),
            Some(hash.as_str())
        );
        assert_eq!(pins.remove(Path::new("/m/a.gguf")).unwrap(), Some(hash));
        pins.save().unwrap();
        assert_eq!(
            Pins::load(&path)
                .unwrap()
                .get(Path::new("/m/a.gguf"))
                .unwrap(),
            None
        );
        // Only the pins file is left: no temporary files.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_malformed_pin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        std::fs::write(&path, "[pins]\n\"/m/a.gguf\" = \"xyz\"\n").unwrap();
        let err = Pins::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a lowercase hex sha256"), "{err}");
    }
}
