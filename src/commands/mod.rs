//! One function per subcommand: the glue between the clap types in `cli.rs` and
//! the library. Each prints results on stdout and progress on stderr, and returns
//! `anyhow::Result` for `main` to report.

pub mod bench;
pub mod cache_bench;
pub mod generate;
pub mod models;
pub mod run;
pub mod runs;
pub mod serve;
