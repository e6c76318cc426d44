//! Comparing two stored runs: are they comparable (same suite hashes, model
//! sha256 and host fingerprint), did quality drop (per-case flips, Fisher's
//! exact test on pass counts, must-pass cases) and did latency regress
//! (Mann–Whitney U on per-request figures, a minimum effect size and a
//! bootstrap interval of the median ratio).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::stats::{bootstrap_median_ratio, fisher_drop_p, mann_whitney, median};
use crate::store::{RequestMetrics, RunRow, Store, StoredCase};

/// Thresholds, from `evals/compare.toml` (or `--config`) and flags.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompareConfig {
    /// Significance level of both the quality and the latency tests.
    pub alpha: f64,
    /// Smallest change of a latency median that may be flagged (0.10 = 10%).
    pub min_effect: f64,
    /// Bootstrap resamples for the interval of the median ratio.
    pub bootstrap_resamples: usize,
    /// Confidence level of that interval.
    pub confidence: f64,
    /// Seed of the bootstrap (fixed: the same runs give the same interval).
    pub seed: u64,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            min_effect: 0.10,
            bootstrap_resamples: 2000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

impl CompareConfig {
    /// Reads a TOML file of thresholds; missing keys keep their defaults.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    /// Checks that every threshold is in range.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.alpha > 0.0 && self.alpha < 1.0,
            "alpha must be between 0 and 1, not {}",
            self.alpha
        );
        anyhow::ensure!(
            self.min_effect >= 0.0 && self.min_effect.is_finite(),
            "min_effect must be a fraction ≥ 0 (0.10 = 10%), not {}",
            self.min_effect
        );
        anyhow::ensure!(
            self.confidence > 0.0 && self.confidence < 1.0,
            "confidence must be between 0 and 1, not {}",
            self.confidence
        );
        Ok(())
    }
}

/// What identifies a run in a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct RunIdentity {
    /// Run id.
    pub id: i64,
    /// Label.
    pub label: Option<String>,
    /// running, complete, incomplete, failed.
    pub status: String,
    /// Model name.
    pub model: String,
    /// Model sha256.
    pub model_sha256: Option<String>,
    /// Host fingerprint.
    pub host_fingerprint: String,
    /// Cases in flight at once when its latency was taken.
    pub concurrency: i64,
    /// Commit under test.
    pub git_commit: Option<String>,
    /// Start time.
    pub started_at: String,
}

impl From<&RunRow> for RunIdentity {
    fn from(run: &RunRow) -> Self {
        Self {
            id: run.id,
            label: run.label.clone(),
            status: run.status.clone(),
            model: run.model.clone(),
            model_sha256: run.model_sha256.clone(),
            host_fingerprint: run.host_fingerprint.clone(),
            concurrency: run.concurrency,
            git_commit: run.git_commit.clone(),
            started_at: run.started_at.clone(),
        }
    }
}

/// A case whose pass rate changed between base and head.
#[derive(Debug, Clone, Serialize)]
pub struct CaseFlip {
    /// Case id.
    pub case_id: String,
    /// Whether the case must pass.
    pub must_pass: bool,
    /// Passing samples / samples in base.
    pub base_pass_rate: f64,
    /// Passing samples / samples in head.
    pub head_pass_rate: f64,
    /// `pass_to_fail` (head's rate is lower) or `fail_to_pass`.
    pub direction: String,
}

/// One latency metric of one suite.
#[derive(Debug, Clone, Serialize)]
pub struct MetricComparison {
    /// `ttft_ms`, `e2e_ms`, `decode_tok_s` or `prefill_tok_s`.
    pub metric: String,
    /// Whether a larger value is better (speeds) or worse (times).
    pub higher_is_better: bool,
    /// Requests measured in base.
    pub base_n: usize,
    /// Requests measured in head.
    pub head_n: usize,
    /// Base median.
    pub base_median: Option<f64>,
    /// Head median.
    pub head_median: Option<f64>,
    /// Change of the median, percent of base.
    pub change_pct: Option<f64>,
    /// Mann–Whitney U of head against base.
    pub u: Option<f64>,
    /// Its two-sided p-value.
    pub p: Option<f64>,
    /// Bootstrap interval of the median change, percent (low, high).
    pub ci_pct: Option<(f64, f64)>,
    /// p < alpha.
    pub significant: bool,
    /// Significant and worse by more than the minimum effect.
    pub regressed: bool,
}

/// One suite of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteComparison {
    /// Suite name.
    pub suite: String,
    /// Passing samples in base.
    pub base_passed: usize,
    /// Samples in base.
    pub base_samples: usize,
    /// Passing samples in head.
    pub head_passed: usize,
    /// Samples in head.
    pub head_samples: usize,
    /// base_passed / base_samples.
    pub base_pass_rate: f64,
    /// head_passed / head_samples.
    pub head_pass_rate: f64,
    /// One-sided Fisher p-value for a drop in pass count.
    pub fisher_p: f64,
    /// fisher_p < alpha.
    pub pass_count_dropped: bool,
    /// Cases whose pass rate changed.
    pub flips: Vec<CaseFlip>,
    /// Must-pass cases that passed less often in head.
    pub must_pass_regressions: Vec<String>,
    /// Cases only in base.
    pub only_in_base: Vec<String>,
    /// Cases only in head.
    pub only_in_head: Vec<String>,
    /// Latency, per metric.
    pub latency: Vec<MetricComparison>,
    /// Whether anything in this suite regressed.
    pub regressed: bool,
}

/// The outcome of `showdown compare`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The baseline.
    pub base: RunIdentity,
    /// The candidate.
    pub head: RunIdentity,
    /// Whether suite hashes, model sha256 and host fingerprint match.
    pub comparable: bool,
    /// Why not, when not.
    pub not_comparable_reasons: Vec<String>,
    /// Compared although not comparable (`--force`).
    pub forced: bool,
    /// Things worth knowing that do not stop the comparison (an incomplete run).
    pub warnings: Vec<String>,
    /// The thresholds used.
    pub config: CompareConfig,
    /// `clean`, `regression` or `not comparable`.
    pub verdict: String,
    /// One line per regression.
    pub regressions: Vec<String>,
    /// Per suite (suites in both runs, by name).
    pub suites: Vec<SuiteComparison>,
    /// The reruns of `--confirm`, when latency regressed and it was asked.
    pub confirmation: Option<Confirmation>,
}

/// What `--confirm` found: base and head run again, interleaved, on this
/// machine; a latency flag stays only if the reruns flag it too.
#[derive(Debug, Clone, Serialize)]
pub struct Confirmation {
    /// The base side's reruns.
    pub base_runs: Vec<i64>,
    /// The head side's reruns.
    pub head_runs: Vec<i64>,
    /// `suite metric` flags the reruns reproduced.
    pub reproduced: Vec<String>,
    /// `suite metric` flags the reruns did not reproduce (dropped).
    pub dropped: Vec<String>,
}

impl Comparison {
    /// Whether something regressed.
    pub fn regressed(&self) -> bool {
        !self.regressions.is_empty()
    }

    /// Whether the suites were compared at all (comparable, or forced).
    pub fn compared(&self) -> bool {
        self.comparable || self.forced
    }

    /// The suites with a latency metric flagged.
    pub fn latency_regressed_suites(&self) -> Vec<String> {
        self.suites
            .iter()
            .filter(|s| s.latency.iter().any(|m| m.regressed))
            .map(|s| s.suite.clone())
            .collect()
    }

    /// Applies `--confirm`: `rerun` compares the pooled reruns of base and
    /// head. Each latency flag is kept only where `rerun` flags the same
    /// suite and metric; quality verdicts are untouched.
    pub fn confirm_latency(
        &mut self,
        rerun: &Comparison,
        base_runs: Vec<i64>,
        head_runs: Vec<i64>,
    ) {
        let mut reproduced = Vec::new();
        let mut dropped = Vec::new();
        for suite in &mut self.suites {
            for metric in suite.latency.iter_mut().filter(|m| m.regressed) {
                let again = rerun
                    .suites
                    .iter()
                    .find(|s| s.suite == suite.suite)
                    .and_then(|s| s.latency.iter().find(|m| m.metric == metric.metric))
                    .is_some_and(|m| m.regressed);
                let name = format!("{} {}", suite.suite, metric.metric);
                if again {
                    reproduced.push(name);
                } else {
                    metric.regressed = false;
                    dropped.push(name);
                }
            }
            suite.regressed = suite.pass_count_dropped
                || !suite.must_pass_regressions.is_empty()
                || suite.latency.iter().any(|m| m.regressed);
        }
        self.regressions = self
            .suites
            .iter()
            .flat_map(|s| describe_regressions(s, &self.config))
            .collect();
        self.verdict = if self.regressed() {
            "regression"
        } else {
            "clean"
        }
        .to_string();
        self.confirmation = Some(Confirmation {
            base_runs,
            head_runs,
            reproduced,
            dropped,
        });
    }
}

/// The latency metrics compared: name, higher is better, extractor.
type Extractor = fn(&RequestMetrics) -> Option<f64>;
const METRICS: [(&str, bool, Extractor); 4] = [
    ("ttft_ms", false, |r| r.ttft_ms),
    ("e2e_ms", false, |r| Some(r.e2e_ms)),
    ("decode_tok_s", true, |r| r.decode_tok_s),
    ("prefill_tok_s", true, |r| r.prefill_tok_s),
];

/// Why two runs are not comparable (empty when they are).
pub fn comparability(base: &RunRow, head: &RunRow) -> Vec<String> {
    let mut reasons = Vec::new();
    if base.model_sha256 != head.model_sha256 {
        reasons.push(format!(
            "model sha256 differs: {} (base) vs {} (head)",
            short(base.model_sha256.as_deref()),
            short(head.model_sha256.as_deref())
        ));
    }
    if base.concurrency != head.concurrency {
        reasons.push(format!(
            "latency was taken with {} case(s) in flight (base) vs {} (head)",
            base.concurrency, head.concurrency
        ));
    }
    if base.host_fingerprint != head.host_fingerprint {
        reasons.push(format!(
            "host fingerprint differs: {} (base) vs {} (head)",
            base.host_fingerprint, head.host_fingerprint
        ));
    }
    for b in &base.suites {
        match head.suites.iter().find(|h| h.suite == b.suite) {
            None => reasons.push(format!("suite {} is only in base", b.suite)),
            Some(h) if h.hash != b.hash => reasons.push(format!(
                "suite {} hash differs: {} (base) vs {} (head)",
                b.suite,
                short(Some(&b.hash)),
                short(Some(&h.hash))
            )),
            Some(_) => {}
        }
    }
    for h in &head.suites {
        if !base.suites.iter().any(|b| b.suite == h.suite) {
            reasons.push(format!("suite {} is only in head", h.suite));
        }
    }
    reasons
}

fn short(hash: Option<&str>) -> String {
    match hash {
        Some(h) => h[..12.min(h.len())].to_string(),
        None => "none".to_string(),
    }
}

/// Compares two runs and their case results. Not comparable runs are only
/// compared when `force` is set.
pub fn compare(
    base: &RunRow,
    base_cases: &[StoredCase],
    head: &RunRow,
    head_cases: &[StoredCase],
    config: &CompareConfig,
    force: bool,
) -> Comparison {
    let reasons = comparability(base, head);
    let comparable = reasons.is_empty();
    let mut warnings = Vec::new();
    for (side, run) in [("base", base), ("head", head)] {
        if run.status != "complete" {
            warnings.push(format!("{side} run {} is {}", run.id, run.status));
        }
    }
    let mut comparison = Comparison {
        base: base.into(),
        head: head.into(),
        comparable,
        not_comparable_reasons: reasons,
        forced: force && !comparable,
        warnings,
        config: config.clone(),
        verdict: String::new(),
        regressions: Vec::new(),
        suites: Vec::new(),
        confirmation: None,
    };
    if comparison.compared() {
        let base_by_suite = by_suite(base_cases);
        let head_by_suite = by_suite(head_cases);
        for (suite, base_suite) in &base_by_suite {
            if let Some(head_suite) = head_by_suite.get(suite) {
                let s = compare_suite(suite, base_suite, head_suite, config);
                comparison
                    .regressions
                    .extend(describe_regressions(&s, config));
                comparison.suites.push(s);
            }
        }
    }
    comparison.verdict = if !comparison.compared() {
        "not comparable"
    } else if comparison.regressed() {
        "regression"
    } else {
        "clean"
    }
    .to_string();
    comparison
}

/// Resolves `base` and `head` (ids or `latest`, `latest:LABEL`) in `store`
/// and compares them.
pub async fn compare_stored(
    store: &Store,
    base: &str,
    head: &str,
    config: &CompareConfig,
    force: bool,
) -> Result<Comparison> {
    let base_id = store.resolve_run(base).await.context("base run")?;
    let head_id = store.resolve_run(head).await.context("head run")?;
    let base_row = store.run(base_id).await?.context("base run vanished")?;
    let head_row = store.run(head_id).await?.context("head run vanished")?;
    let base_cases = store.cases(base_id).await?;
    let head_cases = store.cases(head_id).await?;
    Ok(compare(
        &base_row,
        &base_cases,
        &head_row,
        &head_cases,
        config,
        force,
    ))
}

fn by_suite(cases: &[StoredCase]) -> BTreeMap<&str, Vec<&StoredCase>> {
    let mut map: BTreeMap<&str, Vec<&StoredCase>> = BTreeMap::new();
    for case in cases {
        map.entry(case.record.suite.as_str())
            .or_default()
            .push(case);
    }
    map
}

/// Per case: (passed samples, samples, must_pass).
fn per_case<'a>(cases: &[&'a StoredCase]) -> BTreeMap<&'a str, (usize, usize, bool)> {
    let mut map: BTreeMap<&str, (usize, usize, bool)> = BTreeMap::new();
    for case in cases {
        let entry = map.entry(case.record.case_id.as_str()).or_default();
        entry.0 += usize::from(case.record.passed);
        entry.1 += 1;
        entry.2 |= case.record.must_pass;
    }
    map
}

fn compare_suite(
    suite: &str,
    base: &[&StoredCase],
    head: &[&StoredCase],
    config: &CompareConfig,
) -> SuiteComparison {
    let base_passed = base.iter().filter(|c| c.record.passed).count();
    let head_passed = head.iter().filter(|c| c.record.passed).count();
    let fisher_p = fisher_drop_p(
        base_passed as u64,
        (base.len() - base_passed) as u64,
        head_passed as u64,
        (head.len() - head_passed) as u64,
    );
    let base_cases = per_case(base);
    let head_cases = per_case(head);
    let mut flips = Vec::new();
    let mut only_in_base = Vec::new();
    for (case_id, &(bp, bn, b_must)) in &base_cases {
        let Some(&(hp, hn, h_must)) = head_cases.get(case_id) else {
            only_in_base.push(case_id.to_string());
            continue;
        };
        let base_rate = bp as f64 / bn as f64;
        let head_rate = hp as f64 / hn as f64;
        if base_rate != head_rate {
            flips.push(CaseFlip {
                case_id: case_id.to_string(),
                must_pass: b_must || h_must,
                base_pass_rate: base_rate,
                head_pass_rate: head_rate,
                direction: if head_rate < base_rate {
                    "pass_to_fail"
                } else {
                    "fail_to_pass"
                }
                .to_string(),
            });
        }
    }
    let only_in_head = head_cases
        .keys()
        .filter(|k| !base_cases.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let must_pass_regressions: Vec<String> = flips
        .iter()
        .filter(|f| f.must_pass && f.direction == "pass_to_fail")
        .map(|f| f.case_id.clone())
        .collect();
    let latency: Vec<MetricComparison> = METRICS
        .iter()
        .enumerate()
        .map(|(i, &(name, higher_is_better, get))| {
            let values = |cases: &[&StoredCase]| -> Vec<f64> {
                cases
                    .iter()
                    .flat_map(|c| &c.record.requests)
                    .filter_map(get)
                    .filter(|v| v.is_finite())
                    .collect()
            };
            // Each metric gets its own stream, so adding one does not move the others.
            let seed = config.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            compare_metric(
                name,
                higher_is_better,
                &values(base),
                &values(head),
                config,
                seed,
            )
        })
        .collect();
    let pass_count_dropped = fisher_p < config.alpha;
    let regressed = pass_count_dropped
        || !must_pass_regressions.is_empty()
        || latency.iter().any(|m| m.regressed);
    SuiteComparison {
        suite: suite.to_string(),
        base_passed,
        base_samples: base.len(),
        head_passed,
        head_samples: head.len(),
        base_pass_rate: rate(base_passed, base.len()),
        head_pass_rate: rate(head_passed, head.len()),
        fisher_p,
        pass_count_dropped,
        flips,
        must_pass_regressions,
        only_in_base,
        only_in_head,
        latency,
        regressed,
    }
}

fn rate(a: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        a as f64 / n as f64
    }
}

/// Compares one metric's per-request samples.
pub fn compare_metric(
    metric: &str,
    higher_is_better: bool,
    base: &[f64],
    head: &[f64],
    config: &CompareConfig,
    seed: u64,
) -> MetricComparison {
    let base_median = median(base);
    let head_median = median(head);
    let change = match (base_median, head_median) {
        (Some(b), Some(h)) if b > 0.0 => Some(h / b - 1.0),
        _ => None,
    };
    let test = mann_whitney(head, base);
    let ci = bootstrap_median_ratio(
        head,
        base,
        config.bootstrap_resamples,
        config.confidence,
        seed,
    );
    let significant = test.is_some_and(|t| t.p < config.alpha);
    let worse_by = change.map(|c| if higher_is_better { -c } else { c });
    let regressed = significant && worse_by.is_some_and(|w| w > config.min_effect);
    MetricComparison {
        metric: metric.to_string(),
        higher_is_better,
        base_n: base.len(),
        head_n: head.len(),
        base_median,
        head_median,
        change_pct: change.map(|c| c * 100.0),
        u: test.map(|t| t.u),
        p: test.map(|t| t.p),
        ci_pct: ci.map(|(lo, hi)| ((lo - 1.0) * 100.0, (hi - 1.0) * 100.0)),
        significant,
        regressed,
    }
}

fn describe_regressions(s: &SuiteComparison, config: &CompareConfig) -> Vec<String> {
    let mut out = Vec::new();
    if s.pass_count_dropped {
        out.push(format!(
            "{}: pass count dropped from {}/{} to {}/{} (Fisher p = {:.4} < {})",
            s.suite,
            s.base_passed,
            s.base_samples,
            s.head_passed,
            s.head_samples,
            s.fisher_p,
            config.alpha
        ));
    }
    for case in &s.must_pass_regressions {
        out.push(format!("{}: must-pass case {case} failed", s.suite));
    }
    for m in s.latency.iter().filter(|m| m.regressed) {
        out.push(format!(
            "{}: {} median {:+.1}% (p = {:.4})",
            s.suite,
            m.metric,
            m.change_pct.unwrap_or(0.0),
            m.p.unwrap_or(1.0)
        ));
    }
    out
}
