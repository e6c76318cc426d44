//! The engine benchmark in llama-bench's terms, so figures sit beside
//! llama.cpp's on the same machine: `ppN` is prompt processing of N tokens
//! from an empty cache (in 512-token batches, as llama-bench's default
//! ubatch), `tgN` is generating N tokens one at a time, and `@ dD` runs a
//! test after D tokens already in the cache (llama-bench's `-d`: the warm
//! turn of an agent). Speed targets live here, printed, never in timed tests.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use showdown_engine::{Engine, ResidentMemory, PREFILL_CHUNK};

/// One benchmark test, e.g. pp512.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTest {
    /// Prompt processing of this many tokens.
    Prompt(usize),
    /// Generation of this many tokens.
    Generate(usize),
}

impl BenchTest {
    /// llama-bench's label: `pp512`, `tg128`.
    pub fn label(&self) -> String {
        match self {
            Self::Prompt(n) => format!("pp{n}"),
            Self::Generate(n) => format!("tg{n}"),
        }
    }

    /// Tokens the test runs.
    pub fn tokens(&self) -> usize {
        match self {
            Self::Prompt(n) | Self::Generate(n) => *n,
        }
    }
}

/// llama-bench's label of a test at a depth: `pp256 @ d2048`.
pub fn label_at(test: BenchTest, depth: usize) -> String {
    if depth == 0 {
        test.label()
    } else {
        format!("{} @ d{depth}", test.label())
    }
}

/// The figures of one test.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Model name.
    pub model: String,
    /// `pp512`, `pp2048`, `tg128`, `tg128 @ d2048`.
    pub test: String,
    /// Tokens in the cache before the test.
    pub depth: usize,
    /// Tokens per second of each repetition.
    pub samples_tok_s: Vec<f64>,
    /// Mean tokens per second.
    pub mean_tok_s: f64,
    /// Standard deviation.
    pub stddev_tok_s: f64,
}

/// Per-model facts printed next to the speeds.
#[derive(Debug, Clone, Serialize)]
pub struct BenchModel {
    /// Model name.
    pub model: String,
    /// Architecture.
    pub architecture: String,
    /// File size in bytes.
    pub file_bytes: u64,
    /// Parameters in the file.
    pub total_parameters: u64,
    /// Parameters used per token.
    pub active_parameters: u64,
    /// Peak resident memory after the runs.
    pub peak_rss_bytes: Option<u64>,
    /// Threads used.
    pub threads: usize,
}

/// Deterministic pseudo-random token ids (llama-bench also feeds random tokens):
/// avoids special tokens at the start of the vocabulary.
fn bench_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 33) as usize;
            (1000 + r % (vocab - 1000)) as u32
        })
        .collect()
}

/// Runs one test `repetitions` times after one warm-up run, each time after
/// `depth` tokens prefilled (untimed) into a fresh cache.
pub fn run_test(
    engine: &Engine,
    model: &str,
    test: BenchTest,
    depth: usize,
    repetitions: usize,
) -> Result<BenchResult> {
    let vocab = engine.info().vocab_size;
    let mut samples = Vec::with_capacity(repetitions);
    for rep in 0..=repetitions {
        let mut cache = engine.new_cache();
        for chunk in bench_tokens(depth, vocab, 1000 + rep as u64).chunks(PREFILL_CHUNK) {
            engine.model().forward(chunk, &mut cache)?;
        }
        let tok_s = match test {
            BenchTest::Prompt(n) => {
                let tokens = bench_tokens(n, vocab, rep as u64);
                let start = Instant::now();
                for chunk in tokens.chunks(PREFILL_CHUNK) {
                    engine.model().forward(chunk, &mut cache)?;
                }
                n as f64 / start.elapsed().as_secs_f64()
            }
            BenchTest::Generate(n) => {
                let tokens = bench_tokens(n, vocab, rep as u64);
                let start = Instant::now();
                for &token in &tokens {
                    engine.model().forward(&[token], &mut cache)?;
                }
                n as f64 / start.elapsed().as_secs_f64()
            }
        };
        if rep > 0 {
            samples.push(tok_s);
        }
    }
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>()
        / samples.len().max(2).saturating_sub(1) as f64;
    Ok(BenchResult {
        model: model.to_string(),
        test: label_at(test, depth),
        depth,
        samples_tok_s: samples,
        mean_tok_s: mean,
        stddev_tok_s: var.sqrt(),
    })
}

/// The per-model facts, read after the runs so peak memory includes them.
pub fn describe(engine: &Engine, model: &str, threads: usize) -> BenchModel {
    let info = engine.info();
    BenchModel {
        model: model.to_string(),
        architecture: info.architecture.clone(),
        file_bytes: engine.load_report().file_bytes,
        total_parameters: info.total_parameters,
        active_parameters: info.active_parameters,
        peak_rss_bytes: ResidentMemory::read().map(|m| m.peak_bytes),
        threads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_tokens() {
        assert_eq!(BenchTest::Prompt(512).label(), "pp512");
        assert_eq!(BenchTest::Generate(128).label(), "tg128");
        let t = bench_tokens(100, 49152, 1);
        assert_eq!(t, bench_tokens(100, 49152, 1));
        assert!(t.iter().all(|&id| (1000..49152).contains(&id)));
    }
}
