//! Mixtral-style MoE (`llama` with `expert_count` > 1) on generated
//! random-weight files: showdown against candle-transformers'
//! `quantized_llama` (the oracle, which loads per-expert tensors), stacked and
//! per-expert layouts giving identical logits, the prompt-cache properties, and
//! sparse dispatch checked by the experts' row counters.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_transformers::models::quantized_llama::ModelWeights as OracleLlama;
use showdown_engine::moe_split::{MoeSplit, Router};
use showdown_engine::{argmax, Engine, Gguf, Kernels, KvCacheType, LoadOptions};
use tempfile::TempDir;

use crate::moe_gen::{write_moe, MoeSpec};
use crate::util::{
    self, committee_prompt as prompt, engine_logits as logits, generate_cold, greedy, load_oracle,
    pinned_model_path, relative_l2, sha256_hex, TestEnv,
};

/// The two layouts of the same weights, generated once per test run.
struct Files {
    _dir: TempDir,
    stacked: PathBuf,
    per_expert: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let stacked = dir.path().join("mixtral-stacked.gguf");
        let per_expert = dir.path().join("mixtral-per-expert.gguf");
        write_moe(&stacked, &MoeSpec::mixtral(true));
        write_moe(&per_expert, &MoeSpec::mixtral(false));
        Files {
            _dir: dir,
            stacked,
            per_expert,
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
    Engine::load(path, &options).expect("load generated MoE")
}

fn oracle(path: &Path) -> OracleLlama {
    load_oracle(path, OracleLlama::from_gguf)
}

fn oracle_logits(oracle: &mut OracleLlama, tokens: &[u32], pos: usize) -> Vec<f32> {
    util::oracle_logits(|x, p| oracle.forward(x, p), tokens, pos)
}

#[test]
fn moe_logits_match_oracle_on_both_layouts() {
    let files = files();
    let stacked = load(&files.stacked);
    let per_expert = load(&files.per_expert);
    assert_eq!(stacked.info().architecture, "llama");
    let tokens = prompt(&stacked);
    let a = logits(&stacked, &tokens, &mut stacked.new_cache());
    let b = logits(&per_expert, &tokens, &mut per_expert.new_cache());
    assert_eq!(a, b, "stacked and per-expert layouts hold the same experts");

    // Against the oracle: on candle's kernels bit for bit (the dispatch is
    // written with the oracle's float operations); on the engine's, within
    // the tolerance `util::assert_tracks_oracle_steps` states and measures.
    let mut oracle = oracle(&files.per_expert);
    let theirs = oracle_logits(&mut oracle, &tokens, 0);
    let on_candle = Engine::load(
        &files.stacked,
        &LoadOptions {
            kernels: Kernels::Candle,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let c = logits(&on_candle, &tokens, &mut on_candle.new_cache());
    assert_eq!(c, theirs, "on candle's kernels, bit for bit");
    util::assert_tracks_oracle_steps("prefill", &[(a, theirs)]);
}

#[test]
fn moe_greedy_continuation_and_incremental_decode_match_oracle() {
    let files = files();
    let engine = load(&files.stacked);
    let tokens = prompt(&engine);
    let ours = generate_cold(&engine, &tokens, &greedy(24));

    // Step by step, the oracle's one-token forwards against ours.
    let mut oracle = oracle(&files.per_expert);
    let mut cache = engine.new_cache();
    let mut step = logits(&engine, &tokens, &mut cache);
    let mut theirs_step = oracle_logits(&mut oracle, &tokens, 0);
    let mut theirs = Vec::new();
    let mut steps = Vec::new();
    for _ in 0..ours.tokens.len() {
        let next = argmax(&theirs_step);
        theirs.push(next);
        steps.push((step, theirs_step));
        let pos = tokens.len() + theirs.len() - 1;
        theirs_step = oracle_logits(&mut oracle, &[next], pos);
        step = logits(&engine, &[next], &mut cache);
    }
    util::assert_tracks_oracle_steps("mixtral decode", &steps);
    assert_eq!(
        ours.tokens.len(),
        24,
        "random weights never emit a stop token here"
    );
    assert_eq!(ours.tokens, theirs);
}

#[test]
fn moe_truncated_cache_continues_like_a_fresh_run() {
    let engine = load(&files().stacked);
    let a = prompt(&engine);
    let mut b = a[..10].to_vec();
    b.extend(
        engine
            .tokenizer()
            .encode(" and then everyone went home early")
            .unwrap(),
    );
    let mut cache = engine.new_cache();
    logits(&engine, &a, &mut cache);
    cache.truncate(10);
    let resumed = logits(&engine, &b[10..], &mut cache);
    let fresh = logits(&engine, &b, &mut engine.new_cache());
    assert_eq!(
        resumed, fresh,
        "a truncated cache continues exactly like a fresh run"
    );
    assert_eq!(argmax(&resumed), argmax(&fresh));
}

/// Sparse dispatch: each token runs exactly top-k experts per layer, and an
/// expert no token routed to computes nothing.
#[test]
fn moe_dispatch_runs_only_routed_experts() {
    let engine = load(&files().stacked);
    let (experts, top_k, layers) = (8, 2, 2);
    assert_eq!(engine.model().expert_rows(), vec![vec![0; experts]; layers]);

    let mut cache = engine.new_cache();
    let tokens = prompt(&engine);
    logits(&engine, &tokens, &mut cache);
    let after_prompt = engine.model().expert_rows();
    for layer in &after_prompt {
        assert_eq!(
            layer.iter().sum::<u64>(),
            (tokens.len() * top_k) as u64,
            "{layer:?}"
        );
        assert!(
            layer.iter().filter(|&&n| n > 0).count() > top_k,
            "routing depends on the token: {layer:?}"
        );
    }

    // One decoded token: exactly top-k experts per layer ran, one row each;
    // the other six did not run at all.
    logits(&engine, &[tokens[3]], &mut cache);
    let after_step = engine.model().expert_rows();
    for (before, after) in after_prompt.iter().zip(&after_step) {
        let ran: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert_eq!(ran.iter().filter(|&&n| n == 1).count(), top_k, "{ran:?}");
        assert_eq!(
            ran.iter().filter(|&&n| n == 0).count(),
            experts - top_k,
            "{ran:?}"
        );
    }

    // Active parameters: the idle experts' weights are resident, not used
    // (the tied embedding counts whole as the output head, plus the row read).
    let info = engine.info();
    let expert_params = 3 * 256 * 256;
    assert_eq!(
        info.total_parameters + 256 - info.active_parameters,
        (layers * (experts - top_k) * expert_params) as u64
    );
}

fn chat(engine: &Engine, user: &str) -> Vec<u32> {
    let messages = [serde_json::json!({"role": "user", "content": user})];
    let text = engine.render_chat(&messages, None, true).unwrap();
    engine.tokenize_prompt(&text).unwrap()
}

/// The real SmolLM2 weights split into 8 experts, with a zero router (equal
/// weights 1/8), all experts active and down projections scaled by 8: the
/// mixture is the dense feed-forward: each expert's dot products cover whole
/// blocks of the dense ones and the scaling is exact on the f16 block scales,
/// so only the f32 summation order differs. candle's quantized matmul rounds
/// activations to 8 bits per block, which grows such last-bit differences over
/// 30 layers to about 2 % relative L2 (the oracle shows 1-6 % between its own
/// one-token steps and full forwards; see tests/engine.rs): within that
/// quantization error, with the same top token.
#[test]
fn moe_split_of_smollm2_with_all_experts_equals_the_dense_model() {
    let dense_path = pinned_model_path("smollm2-135m");
    let dir = tempfile::tempdir().unwrap();
    let moe_path = dir.path().join("smollm2-all8.gguf");
    let split = MoeSplit {
        experts: 8,
        experts_used: 8,
        router: Router::Zero,
        down_scale: 8.0,
    };
    let dense_gguf = Gguf::open(&dense_path).unwrap();
    split
        .write(&dense_gguf, &mut std::fs::File::create(&moe_path).unwrap())
        .unwrap();

    let dense = load(&dense_path);
    let moe = load(&moe_path);
    assert_eq!(
        moe.info().total_parameters,
        dense.info().total_parameters + 30 * 8 * 576
    );
    let tokens = chat(&dense, "What is the capital of France?");
    let a = logits(&dense, &tokens, &mut dense.new_cache());
    let b = logits(&moe, &tokens, &mut moe.new_cache());
    let err = relative_l2(&b, &a);
    eprintln!("moe-split (8 of 8, zero router) vs dense: relative L2 {err}");
    assert!(err < 5e-2, "relative L2 {err}");
    // The top token can flip between two near-equal candidates at this
    // distance; each model's choice must be among the other's top three.
    let top3 = |l: &[f32]| {
        let mut ids: Vec<usize> = (0..l.len()).collect();
        ids.sort_by(|&i, &j| l[j].total_cmp(&l[i]));
        ids.truncate(3);
        ids
    };
    assert!(
        top3(&b).contains(&(argmax(&a) as usize)),
        "{:?} vs {}",
        top3(&b),
        argmax(&a)
    );
    assert!(
        top3(&a).contains(&(argmax(&b) as usize)),
        "{:?} vs {}",
        top3(&a),
        argmax(&b)
    );
    for layer in moe.model().expert_rows() {
        assert_eq!(
            layer,
            vec![tokens.len() as u64; 8],
            "every expert ran every token"
        );
    }
}

/// `smollm2-135m-moe8` as the models file defines it: built by `models pull`
/// from the dense file, hash-checked, and generating text with top-2 routing.
#[test]
fn smollm2_moe8_is_pulled_from_the_dense_file_and_generates() {
    let env = TestEnv::new();
    let dense = pinned_model_path("smollm2-135m");
    let embedded = showdown::Catalogue::embedded().unwrap();
    let spec = embedded.get("smollm2-135m-moe8").unwrap();
    let dense_sha = &embedded.get("smollm2-135m").unwrap().sha256;
    env.write_models_file(&format!(
        r#"
[[model]]
name = "smollm2-135m"
architecture = "llama"
sha256 = "{dense_sha}"
context_length = 8192
chat_template = "embedded"
tool_call_format = "hermes"
source.kind = "file"
source.path = "{}"

[[model]]
name = "smollm2-135m-moe8"
architecture = "llama"
sha256 = "{}"
context_length = 8192
chat_template = "embedded"
tool_call_format = "hermes"
source.kind = "derived"
source.from = "smollm2-135m"
source.transform = "moe-split"
source.experts = 8
source.experts_used = 2
"#,
        dense.display(),
        spec.sha256
    ));
    env.showdown(&["models", "pull", "smollm2-135m-moe8"])
        .success();
    let built = env.models_dir().join("smollm2-135m-moe8.gguf");
    assert_eq!(sha256_hex(&std::fs::read(&built).unwrap()), spec.sha256);
    assert!(
        env.models_dir().join("smollm2-135m.gguf").exists(),
        "the dense model was pulled first"
    );

    let engine = load(&built);
    let info = engine.info();
    // 30 layers, 6 of 8 experts idle per token, 3 * 576 * 192 weights each.
    assert_eq!(
        info.total_parameters + 576 - info.active_parameters,
        30 * 6 * 3 * 576 * 192
    );
    let run = env
        .showdown(&[
            "generate",
            "--model",
            "smollm2-135m-moe8",
            "--max-tokens",
            "24",
            "What is the capital of France?",
        ])
        .success();
    assert!(
        run.stdout.chars().filter(|c| c.is_alphabetic()).count() > 10,
        "streams text: {:?}",
        run.stdout
    );
    let rows = {
        let tokens = chat(&engine, "Tell me about the sea.");
        logits(&engine, &tokens, &mut engine.new_cache());
        engine.model().expert_rows()
    };
    assert!(
        rows.iter()
            .all(|l| l.iter().filter(|&&n| n > 0).count() > 2),
        "routing varies: {rows:?}"
    );
}

/// The fused CPU decoder routes and mixes experts exactly as the
/// layer-by-layer path does.
#[test]
fn the_fused_decoder_equals_the_layer_by_layer_one() {
    let path = &files().stacked;
    let tokens = prompt(&load(path));
    util::assert_fused_equals_layer_by_layer(path, &tokens);
}
