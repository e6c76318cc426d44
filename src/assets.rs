//! What the binary carries besides code: the suites (`evals/`), the fixture
//! repositories their agent cases explore (`fixtures/repos/`) and the report
//! and dashboard templates (`templates/`). All are embedded at build time, so
//! a binary from `cargo install` needs no checkout and runs from any
//! directory; a directory overrides each (`--suites-dir`, `--templates-dir`).
//!
//! The sandbox and the suite loader work on real files, so the embedded
//! suites and fixtures are written once to a directory named by their
//! digest, under showdown's cache, and checked against the embedded bytes
//! each time a process first uses them: a copy someone edited, or one a
//! crash left half written, is replaced rather than silently run.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use include_dir::{include_dir, Dir, DirEntry};
use sha2::{Digest, Sha256};

/// Replaces the embedded suites: a directory of suite files, with the
/// fixtures they name under `../fixtures` (as in the repository).
pub const SUITES_DIR_ENV: &str = "SHOWDOWN_SUITES_DIR";

/// Templates here replace the embedded ones of the same relative path
/// (`compare.md.j2`, `dashboard/run.html.j2`); the others stay embedded.
pub const TEMPLATES_DIR_ENV: &str = "SHOWDOWN_TEMPLATES_DIR";

static EVALS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/evals");
static FIXTURE_REPOS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/fixtures/repos");
static TEMPLATES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/templates");

/// Where each embedded tree goes in an unpacked copy.
const TREES: [(&str, &Dir<'static>); 2] = [("evals", &EVALS), ("fixtures/repos", &FIXTURE_REPOS)];

/// Every embedded suite and fixture file: (path in the unpacked copy, bytes),
/// sorted by path.
fn embedded_files() -> Vec<(String, &'static [u8])> {
    fn walk(dir: &Dir<'static>, prefix: &str, out: &mut Vec<(String, &'static [u8])>) {
        for entry in dir.entries() {
            match entry {
                DirEntry::Dir(sub) => walk(sub, prefix, out),
                DirEntry::File(file) => out.push((
                    format!("{prefix}/{}", file.path().to_string_lossy()),
                    file.contents(),
                )),
            }
        }
    }
    let mut files = Vec::new();
    for (prefix, dir) in TREES {
        walk(dir, prefix, &mut files);
    }
    files.sort();
    files
}

/// A digest of every embedded path and byte: names the unpacked copy, so two
/// builds with different suites never share one.
pub fn embedded_digest() -> String {
    let mut hasher = Sha256::new();
    for (path, bytes) in embedded_files() {
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The suites directory: `SHOWDOWN_SUITES_DIR` when set, else the embedded
/// suites unpacked (see the module's comment).
pub fn suites_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(SUITES_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!(
                "the suites directory {} (--suites-dir / {SUITES_DIR_ENV}) is not a directory",
                dir.display()
            );
        }
        return Ok(dir);
    }
    embedded_suites_dir()
}

/// The embedded suites, unpacked under `$SHOWDOWN_HOME/suites` (else the
/// platform cache directory's `showdown/suites`); once per process.
pub fn embedded_suites_dir() -> Result<PathBuf> {
    static UNPACKED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    UNPACKED
        .get_or_init(|| {
            let root = unpack_root().map_err(|e| format!("{e:#}"))?;
            unpack_into(&root)
                .map(|copy| copy.join("evals"))
                .map_err(|e| {
                    format!(
                        "unpacking the embedded suites under {}: {e:#}",
                        root.display()
                    )
                })
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn unpack_root() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os(crate::models::HOME_ENV).filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("suites"));
    }
    let cache = dirs::cache_dir().context("no cache directory: set SHOWDOWN_HOME")?;
    Ok(cache.join("showdown").join("suites"))
}

/// Unpacks the embedded suites and fixtures into `root/<digest>` unless a
/// whole, unedited copy is there; returns that directory. Processes doing
/// this at once take turns (a lock on `root/<digest>.lock`), and a copy is
/// written beside its place and renamed into it, so none ever reads a
/// partial one.
pub fn unpack_into(root: &Path) -> Result<PathBuf> {
    let digest = embedded_digest();
    let copy = root.join(&digest);
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let lock_path = root.join(format!("{digest}.lock"));
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if matches_embedded(&copy)? {
        return Ok(copy);
    }
    let staging = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(root)
        .with_context(|| format!("creating a directory in {}", root.display()))?;
    for (path, bytes) in embedded_files() {
        let file = staging.path().join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
    }
    if copy.exists() {
        // Edited or half written: moved aside first, so no reader ever sees
        // a mixture, then removed.
        let stale = tempfile::Builder::new()
            .prefix(".stale-")
            .tempdir_in(root)?
            .keep();
        std::fs::rename(&copy, stale.join("copy")).ok();
        std::fs::remove_dir_all(&stale).ok();
    }
    let staged = staging.keep();
    if let Err(err) = std::fs::rename(&staged, &copy) {
        std::fs::remove_dir_all(&staged).ok();
        return Err(err).with_context(|| format!("moving the copy to {}", copy.display()));
    }
    Ok(copy)
}

/// Whether `copy` holds exactly the embedded files, byte for byte.
fn matches_embedded(copy: &Path) -> Result<bool> {
    if !copy.is_dir() {
        return Ok(false);
    }
    let embedded = embedded_files();
    let mut on_disk = BTreeSet::new();
    for (prefix, _) in TREES {
        list_files(&copy.join(prefix), prefix, &mut on_disk)?;
    }
    if on_disk.len() != embedded.len() || !embedded.iter().all(|(path, _)| on_disk.contains(path)) {
        return Ok(false);
    }
    for (path, bytes) in &embedded {
        match std::fs::read(copy.join(path)) {
            Ok(found) if found == *bytes => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn list_files(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = format!("{prefix}/{}", entry.file_name().to_string_lossy());
        if entry.file_type()?.is_dir() {
            list_files(&entry.path(), &name, out)?;
        } else {
            out.insert(name);
        }
    }
    Ok(())
}

/// A template by its path under `templates/`: the file of that path in
/// `SHOWDOWN_TEMPLATES_DIR` when there is one, else the embedded one.
pub fn template(name: &str) -> Result<Cow<'static, str>> {
    if let Some(dir) = std::env::var_os(TEMPLATES_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!(
                "the templates directory {} (--templates-dir / {TEMPLATES_DIR_ENV}) is not a directory",
                dir.display()
            );
        }
        let path = dir.join(name);
        if path.is_file() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the template {}", path.display()))?;
            return Ok(Cow::Owned(text));
        }
    }
    TEMPLATES
        .get_file(name)
        .and_then(|file| file.contents_utf8())
        .map(Cow::Borrowed)
        .with_context(|| format!("no embedded template `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a checkout's `evals/` and `fixtures/repos/` hold, as the
    /// embedded list spells it.
    fn checkout_files() -> Vec<(String, Vec<u8>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut names = BTreeSet::new();
        for (prefix, _) in TREES {
            list_files(&root.join(prefix), prefix, &mut names).unwrap();
        }
        names
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(root.join(&name)).unwrap();
                (name, bytes)
            })
            .collect()
    }

    /// The build embeds what the checkout holds: every file, current bytes
    /// (a stale build, or a file left out, fails here).
    #[test]
    fn the_embedded_suites_are_the_checkouts() {
        let embedded: Vec<(String, Vec<u8>)> = embedded_files()
            .into_iter()
            .map(|(path, bytes)| (path, bytes.to_vec()))
            .collect();
        assert_eq!(embedded, checkout_files());
        assert!(embedded.iter().any(|(p, _)| p == "evals/summarize.toml"));
        assert!(embedded
            .iter()
            .any(|(p, _)| p.starts_with("fixtures/repos/csvtool/")));
    }

    #[test]
    fn an_unpacked_copy_is_checked_and_mended() {
        let root = tempfile::tempdir().unwrap();
        let copy = unpack_into(root.path()).unwrap();
        assert!(matches_embedded(&copy).unwrap());
        assert_eq!(
            std::fs::read(copy.join("evals/word-limit.toml")).unwrap(),
            EVALS.get_file("word-limit.toml").unwrap().contents()
        );
        // An edit, an extra suite, a missing fixture file: each is noticed
        // and the copy written again.
        let edits: [&dyn Fn(&Path); 3] = [
            &|c| std::fs::write(c.join("evals/word-limit.toml"), "edited").unwrap(),
            &|c| std::fs::write(c.join("evals/extra.toml"), "name = \"x\"").unwrap(),
            &|c| std::fs::remove_file(c.join("fixtures/repos/csvtool/README.md")).unwrap(),
        ];
        for edit in edits {
            edit(&copy);
            assert!(!matches_embedded(&copy).unwrap());
            assert_eq!(unpack_into(root.path()).unwrap(), copy);
            assert!(matches_embedded(&copy).unwrap());
        }
        // Nothing left behind beside the copy and its lock.
        let mut entries: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        let digest = embedded_digest();
        assert_eq!(entries, [digest.clone(), format!("{digest}.lock")]);
    }

    /// Many processes' first use at once (threads here, the same lock):
    /// each gets a whole copy, and there is one.
    #[test]
    fn unpacking_at_once_gives_everyone_one_whole_copy() {
        let root = tempfile::tempdir().unwrap();
        let copies: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let copy = unpack_into(root.path()).unwrap();
                        assert!(matches_embedded(&copy).unwrap());
                        copy
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(copies.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 2);
    }

    #[test]
    fn embedded_templates_are_found_by_their_path() {
        let embedded = template("compare.md.j2").unwrap();
        assert!(embedded.contains("showdown compare"));
        assert!(template("dashboard/run.html.j2")
            .unwrap()
            .contains("<h2>Suites</h2>"));
        assert!(template("no-such.j2").is_err());
    }
}
