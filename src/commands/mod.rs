//! One function per subcommand: the glue between the clap types in `cli.rs` and
//! the library. Each prints results on stdout and progress on stderr, and returns
//! `anyhow::Result` for `main` to report.

pub mod bench;
pub mod cache_bench;
pub mod compare;
pub mod dashboard;
pub mod db;
pub mod generate;
pub mod models;
pub mod pr_comment;
pub mod qualify;
pub mod run;
pub mod runs;
pub mod serve;

/// A command's negative verdict (a regression found): not an error, but
/// `main` exits 1 for it instead of 0.
#[derive(Debug)]
pub struct Regressed(pub usize);

impl std::fmt::Display for Regressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} regression(s) found", self.0)
    }
}

impl std::error::Error for Regressed {}

/// The model a command uses: the one named, else the models file's default.
pub fn model_or_default(
    store: &showdown::ModelStore,
    named: Option<&str>,
) -> anyhow::Result<String> {
    use anyhow::Context;
    match named {
        Some(name) => Ok(name.to_string()),
        None => Ok(store
            .catalogue()
            .default_model()
            .context("the models file names no default model; pass --model")?
            .name
            .clone()),
    }
}
