//! Comparisons and regression statistics: `showdown compare` decides, on a
//! noisy shared machine, whether a head run regressed against a base run.
//!
//! - `stats`: the tests themselves (Fisher's exact, Mann–Whitney U, a seeded
//!   bootstrap), small enough to check by hand.
//! - [`compare`](compare::compare): comparability, per-case flips, per-suite
//!   quality and latency verdicts, as serialisable data (`--json`).
//! - [`render_markdown`]: the same data as markdown, from `templates/`.

mod compare;
mod render;
mod stats;

pub use compare::{
    comparability, compare, compare_metric, compare_stored, CaseFlip, CompareConfig, Comparison,
    MetricComparison, RunIdentity, SuiteComparison,
};
pub use render::render_markdown;
pub use stats::{
    bootstrap_median_ratio, erfc, fisher_drop_p, ln_factorial, mann_whitney, median, MannWhitney,
    SplitMix64,
};
