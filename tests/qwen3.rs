//! Qwen 3, dense (`qwen3`) and MoE (`qwen3moe`), on generated random-weight
//! files. candle-transformers' `quantized_qwen3_moe` dispatches experts with
//! CUDA kernels only, so the MoE is proven on the CPU through its dense twin:
//! showdown's dense model against candle-transformers' `quantized_qwen3` (the
//! independent oracle), then showdown's `qwen3moe` loading the same weights
//! split into experts (zero router, every expert used) against that oracle.
//! Sparse routing itself is the mixtral code proven against
//! `quantized_llama` in tests/moe.rs; here its counters, cache and
//! generation are checked on a sparse `qwen3moe` (top-2 of 8).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_transformers::models::quantized_qwen3::ModelWeights as OracleQwen3;
use showdown_engine::{argmax, Engine, KvCacheType, LoadOptions};
use tempfile::TempDir;

use crate::moe_gen::{write_moe, write_qwen3_pair, MoeSpec};
use crate::util::{
    self, committee_prompt as prompt, engine_logits as logits, generate_cold, greedy, load_oracle,
    relative_l2,
};

struct Files {
    _dir: TempDir,
    dense: PathBuf,
    split: PathBuf,
    sparse: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let dense = dir.path().join("qwen3-dense.gguf");
        let split = dir.path().join("qwen3moe-split.gguf");
        let sparse = dir.path().join("qwen3moe-sparse.gguf");
        write_qwen3_pair(&dense, &split, &MoeSpec::qwen3_moe());
        write_moe(&sparse, &MoeSpec::qwen3_moe());
        Files {
            _dir: dir,
            dense,
            split,
            sparse,
        }
    })
}

/// With the cache in f32, so the bounds here measure the kernels alone.
/// (The default f16 cache rounds every key and value to 11 bits; on these
/// random weights that alone moves the logits by about 1.5e-2 relative L2
/// (measured: 0.015 mixtral, 0.012 qwen3, 0.052 for the SmolLM2 split),
/// more than the kernels' 1e-2. Its effect on real weights is bounded in
/// tests/engine.rs, `an_f16_cache_stays_near_an_f32_cache`.)
fn load(path: &Path) -> Engine {
    let options = LoadOptions {
        kv_cache: KvCacheType::F32,
        ..LoadOptions::default()
    };
    Engine::load(path, &options).expect("load generated qwen3 file")
}

fn oracle(path: &Path) -> OracleQwen3 {
    load_oracle(path, OracleQwen3::from_gguf)
}

fn oracle_logits(oracle: &mut OracleQwen3, tokens: &[u32], pos: usize) -> Vec<f32> {
    util::oracle_logits(|x, p| oracle.forward(x, p), tokens, pos)
}

/// Ours and the oracle, token by token after the prompt, within the
/// tolerance `util::assert_tracks_oracle_steps` states and measures.
fn assert_tracks_oracle(engine: &Engine, oracle: &mut OracleQwen3, what: &str) {
    let tokens = prompt(engine);
    let mut cache = engine.new_cache();
    let mut ours = logits(engine, &tokens, &mut cache);
    let mut theirs = oracle_logits(oracle, &tokens, 0);
    let mut steps = Vec::new();
    for step in 0..8 {
        let next = argmax(&theirs);
        steps.push((ours, theirs));
        theirs = oracle_logits(oracle, &[next], tokens.len() + step);
        ours = logits(engine, &[next], &mut cache);
    }
    util::assert_tracks_oracle_steps(what, &steps);
}

#[test]
fn qwen3_dense_matches_candle_transformers_quantized_qwen3() {
    let files = files();
    let dense = load(&files.dense);
    assert_eq!(dense.info().architecture, "qwen3");
    assert!(dense.model().expert_rows().is_empty());
    assert_tracks_oracle(&dense, &mut oracle(&files.dense), "dense qwen3");
}

#[test]
fn qwen3moe_split_with_every_expert_equals_the_dense_oracle() {
    let files = files();
    let split = load(&files.split);
    assert_eq!(split.info().architecture, "qwen3moe");
    // Ours, split, against ours, dense: the same sums in another order.
    let dense = load(&files.dense);
    let tokens = prompt(&dense);
    let a = logits(&dense, &tokens, &mut dense.new_cache());
    let b = logits(&split, &tokens, &mut split.new_cache());
    let err = relative_l2(&b, &a);
    assert!(err < 1e-5, "split against dense: relative L2 {err}");
    assert_tracks_oracle(&split, &mut oracle(&files.dense), "qwen3moe split, 8 of 8");
    // Every expert ran on every row: the zero router sent each token to all.
    let before: Vec<u64> = split.model().expert_rows().concat();
    logits(&split, &tokens, &mut split.new_cache());
    let after: Vec<u64> = split.model().expert_rows().concat();
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a - b, tokens.len() as u64);
    }
}

/// Sparse `qwen3moe` (top-2 of 8): each token runs exactly two experts per
/// layer, the cache continues like a fresh run, and generation streams.
#[test]
fn qwen3moe_sparse_dispatch_cache_and_generation() {
    let engine = load(&files().sparse);
    let (experts, top_k, layers) = (8, 2, 2);
    let tokens = prompt(&engine);
    let mut cache = engine.new_cache();
    let full = logits(&engine, &tokens, &mut cache);
    let after_prompt = engine.model().expert_rows();
    assert_eq!(after_prompt.len(), layers);
    for layer in &after_prompt {
        assert_eq!(layer.iter().sum::<u64>(), (tokens.len() * top_k) as u64);
        assert!(
            layer.iter().filter(|&&n| n > 0).count() > top_k,
            "{layer:?}"
        );
    }
    logits(&engine, &[tokens[3]], &mut cache);
    for (before, after) in after_prompt.iter().zip(engine.model().expert_rows()) {
        let ran: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert_eq!(ran.iter().filter(|&&n| n == 1).count(), top_k, "{ran:?}");
        assert_eq!(ran.iter().filter(|&&n| n == 0).count(), experts - top_k);
    }

    // Truncated back into the prompt, the cache continues like a fresh run.
    cache.truncate(10);
    let resumed = logits(&engine, &tokens[10..], &mut cache);
    assert_eq!(
        resumed, full,
        "a truncated cache continues exactly like a fresh run"
    );

    // Active parameters: six idle experts of 3 × 256 × 256 per layer.
    let info = engine.info();
    assert_eq!(
        info.total_parameters + 256 - info.active_parameters,
        (layers * (experts - top_k) * 3 * 256 * 256) as u64
    );

    let generated = generate_cold(&engine, &tokens, &greedy(12));
    assert_eq!(generated.tokens.len(), 12, "{:?}", generated.text);
}

/// The fused CPU decoder (q/k norms; the sparse MoE) equals the
/// layer-by-layer path bit for bit.
#[test]
fn the_fused_decoder_equals_the_layer_by_layer_one() {
    for path in [&files().dense, &files().sparse] {
        let tokens = prompt(&load(path));
        util::assert_fused_equals_layer_by_layer(path, &tokens);
    }
}
