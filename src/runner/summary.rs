//! Per-suite summaries of a run: pass rate, mean score, latency percentiles,
//! decode speed, cache-hit ratio, and pass@k / pass^k over repeated samples.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::StoredCase;

/// One suite's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteSummary {
    /// Suite name.
    pub suite: String,
    /// Case samples.
    pub samples: usize,
    /// Samples that passed.
    pub passed: usize,
    /// passed / samples.
    pub pass_rate: f64,
    /// Mean case score.
    pub mean_score: f64,
    /// Distinct cases.
    pub cases: usize,
    /// Cases with at least one passing sample (pass@k, k = samples per case).
    pub pass_at_k: f64,
    /// Cases whose every sample passed (pass^k).
    pub pass_all_k: f64,
    /// Samples per case.
    pub k: usize,
    /// Median time to first token over requests.
    pub ttft_p50_ms: Option<f64>,
    /// 95th percentile time to first token.
    pub ttft_p95_ms: Option<f64>,
    /// Median request time.
    pub e2e_p50_ms: Option<f64>,
    /// 95th percentile request time.
    pub e2e_p95_ms: Option<f64>,
    /// Median decode speed.
    pub decode_tok_s_p50: Option<f64>,
    /// Median prefill speed.
    pub prefill_tok_s_p50: Option<f64>,
    /// Prompt tokens read from the cache / all prompt tokens.
    pub cache_hit_ratio: Option<f64>,
    /// Must-pass cases that failed.
    pub must_pass_failures: Vec<String>,
}

/// Summaries per suite, in suite order.
pub fn summarize(cases: &[StoredCase]) -> Vec<SuiteSummary> {
    let mut by_suite: BTreeMap<&str, Vec<&StoredCase>> = BTreeMap::new();
    for case in cases {
        by_suite.entry(&case.record.suite).or_default().push(case);
    }
    by_suite
        .into_iter()
        .map(|(suite, cases)| summarize_suite(suite, &cases))
        .collect()
}

fn summarize_suite(suite: &str, cases: &[&StoredCase]) -> SuiteSummary {
    let samples = cases.len();
    let passed = cases.iter().filter(|c| c.record.passed).count();
    let mean_score = mean(cases.iter().map(|c| c.record.score)).unwrap_or(0.0);
    let mut per_case: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
    for case in cases {
        per_case
            .entry(&case.record.case_id)
            .or_default()
            .push(case.record.passed);
    }
    let distinct = per_case.len().max(1);
    let k = per_case.values().map(Vec::len).max().unwrap_or(0);
    let any = per_case.values().filter(|s| s.iter().any(|p| *p)).count();
    let all = per_case.values().filter(|s| s.iter().all(|p| *p)).count();
    let requests: Vec<_> = cases.iter().flat_map(|c| &c.record.requests).collect();
    let ttft: Vec<f64> = requests.iter().filter_map(|r| r.ttft_ms).collect();
    let e2e: Vec<f64> = requests.iter().map(|r| r.e2e_ms).collect();
    let decode: Vec<f64> = requests.iter().filter_map(|r| r.decode_tok_s).collect();
    let prefill: Vec<f64> = requests.iter().filter_map(|r| r.prefill_tok_s).collect();
    let read: u64 = requests.iter().map(|r| r.cache_read_input_tokens).sum();
    let prompt: u64 = requests
        .iter()
        .map(|r| r.input_tokens + r.cache_read_input_tokens + r.cache_creation_input_tokens)
        .sum();
    let mut must_pass_failures: Vec<String> = cases
        .iter()
        .filter(|c| c.record.must_pass && !c.record.passed)
        .map(|c| c.record.case_id.clone())
        .collect();
    must_pass_failures.dedup();
    SuiteSummary {
        suite: suite.to_string(),
        samples,
        passed,
        pass_rate: ratio(passed, samples),
        mean_score,
        cases: per_case.len(),
        pass_at_k: any as f64 / distinct as f64,
        pass_all_k: all as f64 / distinct as f64,
        k,
        ttft_p50_ms: percentile(&ttft, 50.0),
        ttft_p95_ms: percentile(&ttft, 95.0),
        e2e_p50_ms: percentile(&e2e, 50.0),
        e2e_p95_ms: percentile(&e2e, 95.0),
        decode_tok_s_p50: percentile(&decode, 50.0),
        prefill_tok_s_p50: percentile(&prefill, 50.0),
        cache_hit_ratio: (prompt > 0).then(|| read as f64 / prompt as f64),
        must_pass_failures,
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The `p`th percentile with linear interpolation between closest ranks.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    Some(sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64))
}

/// The summary table, as `showdown run` prints it. Latency taken with
/// several cases in flight (`concurrency` > 1) says so in its headers: it
/// includes the target's queueing and is not a one-request figure.
pub fn render_table(
    summaries: &[SuiteSummary],
    peak_memory_bytes: Option<u64>,
    concurrency: u32,
) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    let under = match concurrency {
        0 | 1 => String::new(),
        n => format!(" at concurrency {n}"),
    };
    let mut out = String::new();
    out.push_str(&format!("| suite | pass | pass rate | mean score | TTFT p50/p95 ms{under} | e2e p50/p95 ms{under} | decode tok/s{under} | cache hit | peak mem |\n"));
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in summaries {
        out.push_str(&format!(
            "| {} | {}/{} | {:.0}% | {:.2} | {} / {} | {} / {} | {} | {} | {} |\n",
            s.suite,
            s.passed,
            s.samples,
            s.pass_rate * 100.0,
            s.mean_score,
            ms(s.ttft_p50_ms),
            ms(s.ttft_p95_ms),
            ms(s.e2e_p50_ms),
            ms(s.e2e_p95_ms),
            s.decode_tok_s_p50.map_or("-".into(), |v| format!("{v:.1}")),
            s.cache_hit_ratio
                .map_or("-".into(), |v| format!("{:.0}%", v * 100.0)),
            peak_memory_bytes.map_or("-".into(), crate::mib),
        ));
    }
    if concurrency > 1 {
        out.push_str(&format!(
            "latency taken with {concurrency} cases in flight at once: it includes the target's queueing\n"
        ));
    }
    for s in summaries.iter().filter(|s| s.k > 1) {
        out.push_str(&format!(
            "{}: pass@{k} {:.0}%, pass^{k} {:.0}%\n",
            s.suite,
            s.pass_at_k * 100.0,
            s.pass_all_k * 100.0,
            k = s.k
        ));
    }
    for s in summaries
        .iter()
        .filter(|s| !s.must_pass_failures.is_empty())
    {
        out.push_str(&format!(
            "{}: must-pass cases failed: {}\n",
            s.suite,
            s.must_pass_failures.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.5));
        assert_eq!(percentile(&[10.0, 20.0], 95.0), Some(19.5));
    }
}
