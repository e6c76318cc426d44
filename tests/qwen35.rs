//! Qwen 3.5 / 3.6 (`qwen35`, `qwen35moe`), the Gated DeltaNet hybrid, on the
//! generated files of `qwen35_gen`: showdown against llama.cpp b11434's
//! recorded greedy outputs on the same bytes, and the engine properties a
//! recurrent state must keep (chunked prefill equals one shot, resuming from
//! the cache or a snapshot equals a fresh run, sparse expert dispatch).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use showdown_engine::{CancelToken, Engine, Kernels, LoadOptions};
use tempfile::TempDir;

use crate::qwen35_gen::{write_qwen35, Qwen35Spec};
use crate::util::{
    committee_prompt as prompt, engine_logits as logits, follow_llama_cpp, generate_cold, greedy,
    relative_l2, sha256_hex, TestEnv,
};

struct Files {
    _dir: TempDir,
    moe: PathBuf,
    dense: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let moe = dir.path().join("qwen35moe.gguf");
        let dense = dir.path().join("qwen35.gguf");
        write_qwen35(&moe, &Qwen35Spec::moe());
        write_qwen35(&dense, &Qwen35Spec::dense());
        Files {
            _dir: dir,
            moe,
            dense,
        }
    })
}

fn load(path: &Path) -> Engine {
    Engine::load(path, &LoadOptions::default()).expect("load generated qwen35")
}

/// The MoE file's engine, loaded once.
fn moe() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| load(&files().moe))
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/fixtures/qwen35/{name}_llama_cpp_greedy.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// llama.cpp's own top-two margin below which the engines may pick
/// differently: measured widest 0.037 nats (both files); twice that.
const NEAR_TIE: f32 = 0.08;

/// Both files against llama.cpp b11434's greedy continuations of three
/// prompts (code, prose, and one of 901 tokens, longer than llama.cpp's
/// 512-token batch), 24 steps each, fed token by token. Both engines keep
/// keys and values in f16 and round activations to 8 bits before the
/// quantized matmuls, in different summation orders. Measured over
/// llama.cpp's top five tokens at 72 steps: qwen35moe mean 0.050, largest
/// 0.185 nats, 7 near-tie disagreements; qwen35 mean 0.044, largest 0.121,
/// 3 disagreements. Bounds: about twice that. The comparison is sharp on
/// these random weights: reading key head `h / 2` for value head `h`
/// (Qwen's `repeat_interleave` instead of ggml's tiling) fails at the first
/// step, and so does skipping the rotary embedding of the queries.
fn assert_follows_llama_cpp(engine: &Engine, name: &str) {
    let agreement = follow_llama_cpp(engine, &fixture(name), NEAR_TIE);
    eprintln!("{name} against llama.cpp: {agreement:?}");
    assert_eq!(agreement.steps, 72);
    assert!(agreement.mean_logprob_error < 0.1, "{agreement:?}");
    assert!(agreement.max_logprob_error < 0.4, "{agreement:?}");
    assert!(agreement.disagreements <= 12, "{agreement:?}");
}

#[test]
fn qwen35moe_follows_llama_cpp() {
    assert_follows_llama_cpp(moe(), "qwen35moe");
}

#[test]
fn qwen35_follows_llama_cpp() {
    assert_follows_llama_cpp(&load(&files().dense), "qwen35");
}

/// The recurrent state carries across forwards exactly: a prompt in four
/// chunks gives the same logits, bit for bit, as in one, and so do the
/// decode steps after it.
#[test]
fn chunked_prefill_equals_one_shot() {
    for path in [&files().moe, &files().dense] {
        let engine = load(path);
        let prompt = prompt(&engine);
        assert!(prompt.len() > 10);
        let mut whole = engine.new_cache();
        let mut a = logits(&engine, &prompt, &mut whole);
        let mut chunked = engine.new_cache();
        let mut b = Vec::new();
        for range in [0..1, 1..3, 3..8, 8..prompt.len()] {
            b = logits(&engine, &prompt[range], &mut chunked);
        }
        for step in 0..4 {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{}: step {step}", path.display());
            let next = showdown_engine::argmax(&a);
            a = logits(&engine, &[next], &mut whole);
            b = logits(&engine, &[next], &mut chunked);
        }
    }
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn prefill(engine: &Engine, cache: &mut showdown_engine::KvCache, prompt: &[u32]) -> Vec<f32> {
    engine
        .prefill(cache, prompt, &CancelToken::new())
        .unwrap()
        .unwrap()
}

/// A conversation's next turn resumes from the state at the end of the
/// cached one, a side request branching after a `cache_control` breakpoint
/// resumes from the snapshot there, and a repeated prompt from the one just
/// before its last token: each gives the bits a fresh run gives.
#[test]
fn resuming_from_the_cache_or_a_snapshot_equals_a_fresh_run() {
    let engine = moe();
    let first = prompt(engine);
    let n = first.len();
    let breakpoint = 8;
    let mut params = greedy(6);
    params.snapshot_at = vec![breakpoint];
    let mut cache = engine.new_cache();
    let turn = engine
        .generate(&mut cache, &first, &params, &CancelToken::new(), |_| {})
        .unwrap();
    assert_eq!(turn.tokens.len(), 6);
    assert_eq!(cache.snapshot_positions(), vec![breakpoint, n - 1]);
    assert!(cache.is_hybrid());

    // The next turn: this conversation, then more.
    let mut next: Vec<u32> = first.iter().chain(&turn.tokens).copied().collect();
    next.extend_from_slice(&first[2..7]);
    let held = cache.len();
    assert_eq!(held, n + 5, "the last sampled token is not run");
    assert_eq!(cache.common_prefix_len(&next), held);
    let mut warm = cache.fork().unwrap();
    let warm_logits = prefill(engine, &mut warm, &next);
    let cold_logits = prefill(engine, &mut engine.new_cache(), &next);
    assert_eq!(bits_of(&warm_logits), bits_of(&cold_logits));

    // A side request sharing the prefix up to the breakpoint, or a little
    // more: it resumes from the breakpoint's snapshot, not from zero, and
    // not from where it diverges (the recurrent state cannot be cut there).
    for shared in [breakpoint, breakpoint + 3] {
        let mut side: Vec<u32> = first[..shared].to_vec();
        side.extend_from_slice(&[first[1], first[0], first[3]]);
        assert_eq!(
            cache.common_prefix_len(&side),
            breakpoint,
            "sharing {shared}"
        );
        let mut branch = cache.fork_prefix(shared).unwrap();
        assert_eq!(branch.len(), breakpoint);
        let generated = engine
            .generate(&mut branch, &side, &greedy(5), &CancelToken::new(), |_| {})
            .unwrap();
        assert_eq!(generated.timings.cached_tokens, breakpoint);
        let fresh = generate_cold(engine, &side, &greedy(5));
        assert_eq!(generated.tokens, fresh.tokens, "sharing {shared}");
    }

    // The same prompt again resumes just before its last token.
    let mut again = cache.fork().unwrap();
    let repeat = engine
        .generate(&mut again, &first, &greedy(6), &CancelToken::new(), |_| {})
        .unwrap();
    assert_eq!(repeat.timings.cached_tokens, n - 1);
    assert_eq!(repeat.tokens, turn.tokens);

    // Truncating the cache itself goes back to the latest snapshot.
    cache.truncate(breakpoint + 2);
    assert_eq!(cache.len(), breakpoint);
    assert_eq!(cache.snapshot_positions(), vec![breakpoint]);
    let resumed = prefill(engine, &mut cache, &first);
    let fresh = prefill(engine, &mut engine.new_cache(), &first);
    assert_eq!(bits_of(&resumed), bits_of(&fresh));
}

/// Snapshots are bounded: past the limit the least recently used goes, and
/// every one counts in the cache's bytes (what the server's budget bounds).
#[test]
fn snapshots_are_bounded_and_counted() {
    let engine = moe();
    let spec = Qwen35Spec::moe();
    let first = prompt(engine);
    let n = first.len();
    let mut cache = engine.new_cache().with_snapshot_limit(2);
    let cancel = CancelToken::new();
    engine
        .prefill_with_snapshots(&mut cache, &first, &[4, 8, 12], &cancel)
        .unwrap();
    assert_eq!(cache.snapshot_positions(), vec![12, n - 1]);
    let recurrent_layers = (0..spec.layers)
        .filter(|i| (i + 1) % spec.full_attention_interval != 0)
        .count();
    let channels = 2 * spec.linear_key_heads * spec.linear_head_dim
        + spec.linear_value_heads * spec.linear_head_dim;
    let state = (spec.conv_kernel - 1) * channels
        + spec.linear_value_heads * spec.linear_head_dim * spec.linear_head_dim;
    let one = recurrent_layers * state * 4;
    assert_eq!(
        cache.recurrent_bytes(),
        3 * one,
        "the current state and two snapshots"
    );
    assert!(cache.allocated_bytes() > cache.recurrent_bytes());
    // The snapshot at 4 was dropped: a prompt diverging at 6 starts afresh.
    let mut side = first[..6].to_vec();
    side.push(first[0]);
    assert_eq!(cache.common_prefix_len(&side), 0);
}

/// A sparse step runs exactly its top-k routed experts and the shared one
/// in every MoE layer, as the counters show — here 8 of 16 and the shared
/// one, as the real model routes — and total and active parameters count
/// the shared expert as active and the unrouted ones as idle. (The file
/// llama.cpp's fixtures were recorded on routes 4: on random weights the
/// router is flat, and at top 8 of 16 the 8th and 9th experts are so often
/// near-tied that a last-bit difference swaps one, which moved one step of
/// the long prompt by 5 nats when we tried it.)
#[test]
fn a_sparse_step_runs_top_k_routed_experts_and_the_shared_one() {
    let spec = Qwen35Spec {
        top_k: 8,
        ..Qwen35Spec::moe()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen35moe-top8.gguf");
    write_qwen35(&path, &spec);
    let engine = load(&path);
    let prompt = prompt(&engine);
    let mut cache = engine.new_cache();
    let before = engine.model().expert_rows();
    assert_eq!(before.len(), spec.layers);
    logits(&engine, &prompt, &mut cache);
    let after_prompt = engine.model().expert_rows();
    logits(&engine, &[prompt[0]], &mut cache);
    let after_step = engine.model().expert_rows();
    for layer in 0..spec.layers {
        let delta =
            |a: &[u64], b: &[u64]| -> Vec<u64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
        let prefill = delta(&after_prompt[layer], &before[layer]);
        assert_eq!(prefill.len(), spec.experts + 1);
        assert_eq!(
            prefill[..spec.experts].iter().sum::<u64>(),
            (prompt.len() * spec.top_k) as u64
        );
        assert_eq!(
            prefill[spec.experts],
            prompt.len() as u64,
            "the shared expert"
        );
        let step = delta(&after_step[layer], &after_prompt[layer]);
        let routed: Vec<usize> = (0..spec.experts).filter(|&e| step[e] > 0).collect();
        assert_eq!(routed.len(), spec.top_k, "layer {layer}: {step:?}");
        assert!(routed.iter().all(|&e| step[e] == 1));
        assert_eq!(step[spec.experts], 1);
    }
    let info = engine.model().info();
    let expert = 3 * spec.hidden * spec.expert_ff;
    let idle = (spec.experts - spec.top_k) * expert * spec.layers;
    let embedding = info.vocab_size * spec.hidden;
    assert_eq!(
        info.active_parameters,
        info.total_parameters - (embedding + idle - spec.hidden) as u64
    );
}

/// The path the Metal and CUDA builds take (candle's quantized matmuls for
/// every projection, the recurrence and attention on the host) stays near
/// the engine's kernels. Both quantize activations to 8 bits; measured
/// relative L2 of the logits after the prompt and four greedy steps:
/// 0.017 for qwen35moe (where a router's near-tie picks another expert) and
/// 2e-7 for qwen35. Bounds: 0.05 and 1e-5.
#[test]
fn candles_matmuls_stay_near_the_engines_kernels() {
    let options = LoadOptions {
        kernels: Kernels::Candle,
        ..LoadOptions::default()
    };
    for (path, bound) in [(&files().moe, 0.05), (&files().dense, 1e-5)] {
        let ours = load(path);
        let theirs = Engine::load(path, &options).unwrap();
        assert!(ours.model().runs_fused() && !theirs.model().runs_fused());
        let prompt = prompt(&ours);
        let (mut a_cache, mut b_cache) = (ours.new_cache(), theirs.new_cache());
        let mut a = logits(&ours, &prompt, &mut a_cache);
        let mut b = logits(&theirs, &prompt, &mut b_cache);
        let mut worst = 0f32;
        for _ in 0..5 {
            worst = worst.max(relative_l2(&b, &a));
            let next = showdown_engine::argmax(&a);
            a = logits(&ours, &[next], &mut a_cache);
            b = logits(&theirs, &[next], &mut b_cache);
        }
        eprintln!(
            "{}: candle vs engine kernels, relative L2 {worst}",
            path.display()
        );
        assert!(worst < bound, "{}: {worst}", path.display());
    }
}

/// `showdown bench-cache` on the generated qwen35moe file, through the real
/// server over loopback: with the prompt cache, each later turn resumes from
/// the state before the previous prompt's last token (the answer itself is
/// replaced by the agent's scripted step, so the cache cannot resume after
/// it), and the side request, which shares only the system prompt and
/// tools, resumes from the snapshot at its `cache_control` breakpoint;
/// without the cache nothing is read.
#[test]
fn bench_cache_serves_warm_turns_and_a_side_request_from_snapshots() {
    let env = TestEnv::new();
    let model = format!("path:{}", files().moe.display());
    let run = env
        .showdown_embedded(&["bench-cache", "-m", &model, "--turns", "3", "--json"])
        .success();
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let rows = |key: &str| report[key].as_array().unwrap().clone();
    let (cached, uncached) = (rows("cached"), rows("uncached"));
    assert_eq!(cached.len(), 4);
    let field = |row: &serde_json::Value, key: &str| row[key].as_u64().unwrap();
    for turn in 1..3 {
        let (before, row) = (&cached[turn - 1], &cached[turn]);
        assert_eq!(
            field(row, "cache_read_tokens"),
            field(before, "prompt_tokens") - 1,
            "turn {}",
            turn + 1
        );
    }
    let side = &cached[3];
    assert_eq!(side["side"], true);
    let read = field(side, "cache_read_tokens");
    // The system prompt and tools are about 2,400 tokens; the question differs.
    assert!(read > 2000 && read < field(side, "prompt_tokens"), "{side}");
    assert!(uncached.iter().all(|r| field(r, "cache_read_tokens") == 0));
}

/// An `ollama:` reference to a qwen35moe blob in Ollama's store layout
/// resolves, verifies and loads, and `models info`-style facts come out of
/// the engine: the seed's `qwen3.6:35b-a3b` name, on the generated file.
#[test]
fn an_ollama_reference_to_a_qwen35moe_blob_loads_and_generates() {
    let env = TestEnv::new();
    let blob = std::fs::read(&files().moe).unwrap();
    let digest = sha256_hex(&blob);
    crate::models::ollama_model(
        &env,
        "registry.ollama.ai/library/qwen3.6/35b-a3b",
        &digest,
        &blob,
    );
    let run = env
        .showdown_embedded(&[
            "generate",
            "-m",
            "ollama:qwen3.6:35b-a3b",
            "--raw",
            "--max-tokens",
            "4",
            "The committee met on Tuesday",
        ])
        .success();
    assert!(!run.stdout.trim().is_empty(), "{}", run.stderr);
}

/// Qwen 3.5's own template opens the answer with an empty thinking block:
/// showdown renders `enable_thinking` false, so a client (and an eval's
/// word limit) gets the answer, not the model's reasoning before it.
#[test]
fn qwen35s_template_opens_the_answer_without_thinking() {
    let source = std::fs::read_to_string(format!(
        "{}/fixtures/templates/Qwen3.5-4B.jinja",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let template = showdown_engine::ChatTemplate::new(&source).unwrap();
    let messages = [serde_json::json!({"role": "user", "content": "What's this project about?"})];
    let input = |enable_thinking| showdown_engine::ChatTemplateInput {
        messages: &messages,
        tools: None,
        add_generation_prompt: true,
        enable_thinking,
        bos_token: "",
        eos_token: "<|im_end|>",
    };
    let direct = template.render(&input(false)).unwrap();
    assert!(
        direct.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "{direct:?}"
    );
    let thinking = template.render(&input(true)).unwrap();
    assert!(
        thinking.ends_with("<|im_start|>assistant\n<think>\n"),
        "{thinking:?}"
    );
}
