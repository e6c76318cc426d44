//! Comparisons and regression statistics: `showdown compare` decides, on a
//! noisy shared machine, whether a head run regressed against a base run.
//!
//! - `stats`: the tests themselves (Fisher's exact, Mann–Whitney U, a seeded
//!   bootstrap), small enough to check by hand.
//! - [`compare`](compare::compare): comparability, per-case flips, per-suite
//!   quality and latency verdicts, as serialisable data (`--json`).
//! - `qualify`: profiles of gates per suite (`evals/qualification.toml`) and
//!   the verdict a run earns under one.
//! - [`render_markdown`]: the same data as markdown, from `templates/`.

mod compare;
mod qualify;
mod render;
mod stats;

pub use compare::{
    comparability, compare, compare_metric, compare_stored, CaseFlip, CompareConfig, Comparison,
    Confirmation, MetricComparison, RunIdentity, SuiteComparison,
};
pub use qualify::{
    evaluate as evaluate_qualification, GateResult, Profile, QualificationFile, SuiteEvidence,
    SuiteGates, Verdict,
};
pub use render::{gate_value, render_markdown, render_verdicts};
pub use stats::{
    bootstrap_median_ratio, erfc, fisher_drop_p, ln_factorial, mann_whitney, median, MannWhitney,
    SplitMix64,
};
