//! Qualification: is a model good enough and fast enough for a named use?
//! `evals/qualification.toml` holds profiles (e.g. `agentic-coding`) with
//! gates per suite; [`evaluate`] checks a profile against stored case results
//! and gives a [`Verdict`] with every gate's value and limit.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::runner::summarize;
use crate::store::StoredCase;

/// The qualification file: profiles by name and the one used by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualificationFile {
    /// The profile `showdown qualify` uses without `--profile`.
    pub default_profile: String,
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
}

/// A named set of gates per suite.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// What qualifying under this profile means.
    #[serde(default)]
    pub description: String,
    /// Gates by suite (a name under `evals/`, or a path to a suite file).
    pub suites: BTreeMap<String, SuiteGates>,
}

/// The gates one suite must pass. Every gate is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteGates {
    /// Minimum fraction of case samples that pass (0.8 = 80%).
    pub min_pass_rate: Option<f64>,
    /// Maximum median request time, ms.
    pub max_p50_e2e_ms: Option<f64>,
    /// Maximum median time to first token, ms.
    pub max_p50_ttft_ms: Option<f64>,
    /// Minimum median decode speed, tokens/s.
    pub min_decode_tok_s: Option<f64>,
    /// Every case the suite marks `must_pass` must pass (default: true).
    #[serde(default = "yes")]
    pub must_pass: bool,
    /// Further cases (ids) that must pass in this profile.
    #[serde(default)]
    pub must_pass_cases: Vec<String>,
}

fn yes() -> bool {
    true
}

impl QualificationFile {
    /// Reads and checks a qualification file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: Self =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        file.validate()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(file)
    }

    fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.profiles.contains_key(&self.default_profile),
            "default_profile `{}` is not a profile",
            self.default_profile
        );
        for (name, profile) in &self.profiles {
            anyhow::ensure!(!profile.suites.is_empty(), "profile `{name}` has no suites");
            for (suite, gates) in &profile.suites {
                if let Some(rate) = gates.min_pass_rate {
                    anyhow::ensure!(
                        (0.0..=1.0).contains(&rate),
                        "profile `{name}`, suite `{suite}`: min_pass_rate is a fraction (0.8 = 80%), not {rate}"
                    );
                }
                for (gate, value) in [
                    ("max_p50_e2e_ms", gates.max_p50_e2e_ms),
                    ("max_p50_ttft_ms", gates.max_p50_ttft_ms),
                    ("min_decode_tok_s", gates.min_decode_tok_s),
                ] {
                    if let Some(v) = value {
                        anyhow::ensure!(
                            v.is_finite() && v >= 0.0,
                            "profile `{name}`, suite `{suite}`: {gate} must be ≥ 0, not {v}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The profile named, or the default one.
    pub fn profile(&self, name: Option<&str>) -> Result<(&str, &Profile)> {
        let name = name.unwrap_or(&self.default_profile);
        self.profiles
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .with_context(|| {
                format!(
                    "no profile `{name}` (profiles: {})",
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }
}

/// One gate's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateResult {
    /// The suite's name.
    pub suite: String,
    /// The gate: `pass_rate`, `p50_e2e_ms`, `p50_ttft_ms`, `decode_tok_s`
    /// or `must_pass`.
    pub gate: String,
    /// The measured value (`None` when the run has no such figure).
    pub value: Option<f64>,
    /// The limit, with its direction: `≥ 0.8`, `≤ 5000`.
    pub limit: String,
    /// Whether the gate holds.
    pub passed: bool,
    /// Why it failed, or what it counted.
    pub detail: String,
    /// The run the figure comes from.
    pub run_id: Option<i64>,
}

/// A profile's verdict on one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// The profile.
    pub profile: String,
    /// The model.
    pub model: String,
    /// Whether every gate holds.
    pub qualified: bool,
    /// Every gate, in suite order.
    pub gates: Vec<GateResult>,
    /// The runs the figures come from.
    pub run_ids: Vec<i64>,
}

/// The case results of one suite, and the run they come from (`None` when
/// the suite was not run).
pub struct SuiteEvidence<'a> {
    /// The suite's name (as stored with the run).
    pub suite: String,
    /// The run.
    pub run_id: Option<i64>,
    /// Its stored cases of this suite.
    pub cases: Vec<&'a StoredCase>,
}

/// Checks every gate of `profile` (with suite names resolved, in `suites`
/// order) against the evidence.
pub fn evaluate(
    profile_name: &str,
    model: &str,
    gates: &[(String, SuiteGates)],
    evidence: &[SuiteEvidence<'_>],
) -> Verdict {
    let mut results = Vec::new();
    for (suite, suite_gates) in gates {
        let found = evidence.iter().find(|e| &e.suite == suite);
        let run_id = found.and_then(|e| e.run_id);
        let cases: Vec<StoredCase> = found
            .map(|e| e.cases.iter().map(|c| (*c).clone()).collect())
            .unwrap_or_default();
        let summary = summarize(&cases).into_iter().find(|s| &s.suite == suite);
        let mut push = |gate: &str, value: Option<f64>, limit: String, passed: bool, detail| {
            results.push(GateResult {
                suite: suite.clone(),
                gate: gate.to_string(),
                value,
                limit,
                passed,
                detail,
                run_id,
            })
        };
        let Some(summary) = summary else {
            push(
                "run",
                None,
                "suite run".into(),
                false,
                "no complete run of this suite".into(),
            );
            continue;
        };
        if let Some(min) = suite_gates.min_pass_rate {
            let value = summary.pass_rate;
            // In percent, as the value is shown.
            push(
                "pass_rate",
                Some(value),
                format!("≥ {}%", (min * 1000.0).round() / 10.0),
                value >= min,
                format!("{}/{} samples passed", summary.passed, summary.samples),
            );
        }
        for (gate, value, max) in [
            ("p50_e2e_ms", summary.e2e_p50_ms, suite_gates.max_p50_e2e_ms),
            (
                "p50_ttft_ms",
                summary.ttft_p50_ms,
                suite_gates.max_p50_ttft_ms,
            ),
        ] {
            if let Some(max) = max {
                let passed = value.is_some_and(|v| v <= max);
                let detail = if value.is_none() {
                    "no request measured it".into()
                } else {
                    String::new()
                };
                push(gate, value, format!("≤ {max}"), passed, detail);
            }
        }
        if let Some(min) = suite_gates.min_decode_tok_s {
            let value = summary.decode_tok_s_p50;
            let detail = if value.is_none() {
                "no request decoded more than one token".into()
            } else {
                String::new()
            };
            push(
                "decode_tok_s",
                value,
                format!("≥ {min}"),
                value.is_some_and(|v| v >= min),
                detail,
            );
        }
        let mut required: Vec<String> = Vec::new();
        if suite_gates.must_pass {
            required.extend(
                cases
                    .iter()
                    .filter(|c| c.record.must_pass)
                    .map(|c| c.record.case_id.clone()),
            );
        }
        required.extend(suite_gates.must_pass_cases.iter().cloned());
        required.sort();
        required.dedup();
        if !required.is_empty() {
            let failed: Vec<String> = required
                .iter()
                .filter(|id| {
                    let samples: Vec<_> =
                        cases.iter().filter(|c| &&c.record.case_id == id).collect();
                    samples.is_empty() || samples.iter().any(|c| !c.record.passed)
                })
                .cloned()
                .collect();
            let detail = if failed.is_empty() {
                format!("all {} passed", required.len())
            } else {
                format!("failed or missing: {}", failed.join(", "))
            };
            push(
                "must_pass",
                Some((required.len() - failed.len()) as f64),
                format!("= {}", required.len()),
                failed.is_empty(),
                detail,
            );
        }
    }
    let mut run_ids: Vec<i64> = evidence.iter().filter_map(|e| e.run_id).collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    Verdict {
        profile: profile_name.to_string(),
        model: model.to_string(),
        qualified: results.iter().all(|g| g.passed),
        gates: results,
        run_ids,
    }
}
