//! Build-time facts for the `showdown` library.
//!
//! - The suites, fixtures and templates embedded by `src/assets.rs`
//!   (`include_dir!` does not tell cargo which files it read): a change
//!   under these directories, a new file included, rebuilds.
//! - The commit the binary is built from, as `SHOWDOWN_BUILD_GIT_SHA`, which
//!   every run records: an installed binary has no checkout to ask.

use std::path::Path;
use std::process::Command;

fn main() {
    for dir in ["evals", "fixtures/repos", "templates"] {
        println!("cargo:rerun-if-changed={dir}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]) else {
        return; // not built from a git checkout: runs record no sha
    };
    // A commit or checkout moves HEAD or the branch it names. Only paths that
    // exist are named: cargo reruns the script every build for a missing one.
    let mut watched = vec![format!("{git_dir}/HEAD"), format!("{git_dir}/packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(format!("{git_dir}/{branch}"));
    }
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(sha) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=SHOWDOWN_BUILD_GIT_SHA={sha}");
    }
}
