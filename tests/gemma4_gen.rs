//! A deterministic generator of small random-weight Gemma 4 files (`gemma4`)
//! in llama.cpp b11434's exact GGUF layout (`src/models/gemma4.cpp` and its
//! loader; tensor names from `llama-arch.cpp`, the rope factors as
//! `conversion/gemma.py` writes them). llama.cpp on these files is the
//! oracle for the engine (`fixtures/gemma4/make_reference.py`); the real
//! 26B file is not installable here.
//!
//! Two files:
//! - `dense` (the E2B/E4B shape): per-layer embeddings, two shared-KV
//!   layers (one sliding, one global) at the end whose feed-forward is
//!   twice as wide (`use_double_wide_mlp`), a per-layer output scale, the
//!   final logit softcap.
//! - `moe` (the 26B-A4B shape): every layer a dense GELU feed-forward beside
//!   16 routed experts (4 used) in one fused `ffn_gate_up_exps` tensor, with
//!   the router's input scale and per-expert down scales; global layers
//!   without `attn_v` (keys are values).
//!
//! Both: sliding layers with 32-wide heads over 2 KV heads and a 32-token
//! window, global layers with 64-wide heads over 1 KV head turning a
//! quarter of their dimensions (proportional rope). Weight types as an
//! Ollama Q4_K_M file mixes them: Q4_K where a row is whole 256-value
//! super-blocks, Q8_0 where not, Q6_K for the tied embedding, F32 norms.

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::moe_gen::{quantize_copy, smollm2_tokenizer, stack_experts, u32v, write_gguf, Rng};

/// Shape of a generated Gemma 4 file.
#[derive(Debug, Clone)]
pub struct Gemma4Spec {
    pub layers: usize,
    /// Per layer: sliding-window attention (else global).
    pub sliding: Vec<bool>,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub kv_heads_global: usize,
    pub head_dim_swa: usize,
    pub head_dim: usize,
    /// Rotated pairs of a global head (the rest have factor 1e30).
    pub rope_pairs_global: usize,
    pub window: usize,
    /// Dense feed-forward width (doubled on shared-KV layers when `double_wide`).
    pub ff: usize,
    pub double_wide: bool,
    pub shared_kv_layers: usize,
    pub per_layer_input: usize,
    pub experts: usize,
    pub top_k: usize,
    pub expert_ff: usize,
    /// Global layers without `attn_v`.
    pub k_eq_v_global: bool,
    pub softcap: f32,
    pub layer_output_scale: bool,
    pub seed: u64,
}

impl Gemma4Spec {
    /// The E2B/E4B shape: 6 layers, sliding and global alternating, the
    /// last two sharing layers 2 and 3's caches, per-layer inputs of 32.
    pub fn dense() -> Self {
        Self {
            layers: 6,
            sliding: vec![true, false, true, false, true, false],
            hidden: 256,
            heads: 4,
            kv_heads: 2,
            kv_heads_global: 1,
            head_dim_swa: 32,
            head_dim: 64,
            rope_pairs_global: 8,
            window: 32,
            ff: 512,
            double_wide: true,
            shared_kv_layers: 2,
            per_layer_input: 32,
            experts: 0,
            top_k: 0,
            expert_ff: 0,
            k_eq_v_global: false,
            softcap: 30.0,
            layer_output_scale: true,
            seed: 44,
        }
    }

    /// The 26B-A4B shape: 6 layers (two sliding, one global, twice), each
    /// with a dense feed-forward of 256 and 16 experts of 128, 4 used.
    pub fn moe() -> Self {
        Self {
            sliding: vec![true, true, false, true, true, false],
            ff: 256,
            double_wide: false,
            shared_kv_layers: 0,
            per_layer_input: 0,
            experts: 16,
            top_k: 4,
            expert_ff: 128,
            k_eq_v_global: true,
            layer_output_scale: false,
            seed: 45,
            ..Self::dense()
        }
    }

    fn ff_of(&self, layer: usize) -> usize {
        if self.double_wide && layer >= self.layers - self.shared_kv_layers {
            2 * self.ff
        } else {
            self.ff
        }
    }

    fn head_dim_of(&self, layer: usize) -> usize {
        if self.sliding[layer] {
            self.head_dim_swa
        } else {
            self.head_dim
        }
    }

    fn kv_heads_of(&self, layer: usize) -> usize {
        if self.sliding[layer] {
            self.kv_heads
        } else {
            self.kv_heads_global
        }
    }
}

/// Q4_K (or `k_type`) where a row is whole super-blocks, Q8_0 where not.
fn row_type(inp: usize, k_type: GgmlDType) -> GgmlDType {
    if inp.is_multiple_of(256) {
        k_type
    } else {
        GgmlDType::Q8_0
    }
}

fn weight(rng: &mut Rng, out: usize, inp: usize, k_type: GgmlDType) -> QTensor {
    rng.weight(&[out, inp], row_type(inp, k_type))
}

fn f32_values(values: &[f32]) -> QTensor {
    QTensor::quantize(&Tensor::new(values, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap()
}

/// The `general.architecture` and `gemma4.*` keys of a file of this shape.
pub(crate) fn hparams_metadata(spec: &Gemma4Spec) -> Vec<(String, gguf_file::Value)> {
    let key = |k: &str| format!("gemma4.{k}");
    let per_layer = |f: &dyn Fn(usize) -> usize| {
        gguf_file::Value::Array((0..spec.layers).map(|i| u32v(f(i))).collect())
    };
    let mut metadata: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String("gemma4".into()),
        ),
        (key("block_count"), u32v(spec.layers)),
        (key("context_length"), u32v(4096)),
        (key("embedding_length"), u32v(spec.hidden)),
        (key("feed_forward_length"), per_layer(&|i| spec.ff_of(i))),
        (key("attention.head_count"), u32v(spec.heads)),
        (
            key("attention.head_count_kv"),
            per_layer(&|i| spec.kv_heads_of(i)),
        ),
        (key("attention.key_length"), u32v(spec.head_dim)),
        (key("attention.value_length"), u32v(spec.head_dim)),
        (key("attention.key_length_swa"), u32v(spec.head_dim_swa)),
        (key("attention.value_length_swa"), u32v(spec.head_dim_swa)),
        (
            key("attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(1e-6),
        ),
        (key("attention.sliding_window"), u32v(spec.window)),
        (
            key("attention.sliding_window_pattern"),
            gguf_file::Value::Array(
                spec.sliding
                    .iter()
                    .map(|&s| gguf_file::Value::Bool(s))
                    .collect(),
            ),
        ),
        (
            key("attention.shared_kv_layers"),
            u32v(spec.shared_kv_layers),
        ),
        (
            key("embedding_length_per_layer_input"),
            u32v(spec.per_layer_input),
        ),
        (key("rope.dimension_count"), u32v(spec.head_dim)),
        (key("rope.dimension_count_swa"), u32v(spec.head_dim_swa)),
        (key("rope.freq_base"), gguf_file::Value::F32(1_000_000.0)),
        (key("rope.freq_base_swa"), gguf_file::Value::F32(10_000.0)),
        (
            key("final_logit_softcapping"),
            gguf_file::Value::F32(spec.softcap),
        ),
    ];
    if spec.experts > 0 {
        metadata.push((key("expert_count"), u32v(spec.experts)));
        metadata.push((key("expert_used_count"), u32v(spec.top_k)));
        metadata.push((key("expert_feed_forward_length"), u32v(spec.expert_ff)));
    }
    metadata
}

fn metadata(spec: &Gemma4Spec) -> (Vec<(String, gguf_file::Value)>, usize) {
    let mut metadata = hparams_metadata(spec);
    let (tokenizer, vocab) = smollm2_tokenizer();
    metadata.push(("gemma4.vocab_size".into(), u32v(vocab)));
    metadata.extend(tokenizer);
    (metadata, vocab)
}

fn attention(rng: &mut Rng, spec: &Gemma4Spec, layer: usize) -> Vec<(String, QTensor)> {
    let (h, p) = (spec.hidden, format!("blk.{layer}"));
    let d = spec.head_dim_of(layer);
    let q = spec.heads * d;
    let kv = spec.kv_heads_of(layer) * d;
    let owns_kv = layer < spec.layers - spec.shared_kv_layers;
    let mut t = vec![
        (format!("{p}.attn_norm.weight"), rng.norm(h)),
        (
            format!("{p}.attn_q.weight"),
            weight(rng, q, h, GgmlDType::Q4K),
        ),
    ];
    if owns_kv {
        t.push((
            format!("{p}.attn_k.weight"),
            weight(rng, kv, h, GgmlDType::Q4K),
        ));
        if !spec.k_eq_v_global || spec.sliding[layer] {
            t.push((
                format!("{p}.attn_v.weight"),
                weight(rng, kv, h, GgmlDType::Q6K),
            ));
        }
        t.push((format!("{p}.attn_k_norm.weight"), rng.norm(d)));
    }
    t.push((
        format!("{p}.attn_output.weight"),
        weight(rng, h, q, GgmlDType::Q4K),
    ));
    t.push((format!("{p}.attn_q_norm.weight"), rng.norm(d)));
    t.push((format!("{p}.post_attention_norm.weight"), rng.norm(h)));
    t
}

fn dense_ffn(rng: &mut Rng, spec: &Gemma4Spec, layer: usize) -> Vec<(String, QTensor)> {
    let (h, ff, p) = (spec.hidden, spec.ff_of(layer), format!("blk.{layer}"));
    vec![
        (format!("{p}.ffn_norm.weight"), rng.norm(h)),
        (
            format!("{p}.ffn_gate.weight"),
            weight(rng, ff, h, GgmlDType::Q4K),
        ),
        (
            format!("{p}.ffn_up.weight"),
            weight(rng, ff, h, GgmlDType::Q4K),
        ),
        (
            format!("{p}.ffn_down.weight"),
            weight(rng, h, ff, GgmlDType::Q6K),
        ),
        (format!("{p}.post_ffw_norm.weight"), rng.norm(h)),
    ]
}

/// The routed half: router and its input scale, the experts' norms, the
/// fused gate/up experts (gate rows first), the down experts and their
/// per-expert output scales.
fn experts(rng: &mut Rng, spec: &Gemma4Spec, layer: usize) -> Vec<(String, QTensor)> {
    let (h, ff, e, p) = (
        spec.hidden,
        spec.expert_ff,
        spec.experts,
        format!("blk.{layer}"),
    );
    let router = rng.tensor(&[e, h], 4.0 / (h as f32).sqrt());
    let router_scale: Vec<f32> = rng
        .tensor(&[h], 0.3)
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| 1.0 + v)
        .collect();
    let gate_up = rng.tensor(&[e, 2 * ff, h], (3.0 / h as f32).sqrt());
    let down = rng.tensor(&[e, h, ff], (3.0 / ff as f32).sqrt());
    let down_scale: Vec<f32> = (0..e).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
    let stack = |t: &Tensor, dtype: GgmlDType| {
        let experts: Vec<QTensor> = (0..e)
            .map(|i| quantize_copy(&t.get(i).unwrap(), dtype))
            .collect();
        stack_experts(&experts, dtype)
    };
    vec![
        (
            format!("{p}.ffn_gate_inp.weight"),
            QTensor::quantize(&router, GgmlDType::F32).unwrap(),
        ),
        (format!("{p}.ffn_gate_inp.scale"), f32_values(&router_scale)),
        (format!("{p}.pre_ffw_norm_2.weight"), rng.norm(h)),
        (format!("{p}.post_ffw_norm_1.weight"), rng.norm(h)),
        (format!("{p}.post_ffw_norm_2.weight"), rng.norm(h)),
        (
            format!("{p}.ffn_gate_up_exps.weight"),
            stack(&gate_up, row_type(h, GgmlDType::Q4K)),
        ),
        (
            format!("{p}.ffn_down_exps.weight"),
            stack(&down, row_type(ff, GgmlDType::Q6K)),
        ),
        (format!("{p}.ffn_down_exps.scale"), f32_values(&down_scale)),
    ]
}

/// Writes the random-weight model of `spec` to `path`.
pub fn write_gemma4(path: &Path, spec: &Gemma4Spec) {
    let (metadata, vocab) = metadata(spec);
    let mut rng = Rng(spec.seed);
    let h = spec.hidden;
    let mut tensors = vec![
        (
            "token_embd.weight".to_string(),
            QTensor::quantize(&rng.tensor(&[vocab, h], 1.0), GgmlDType::Q6K).unwrap(),
        ),
        ("output_norm.weight".to_string(), rng.norm(h)),
    ];
    // Proportional rope: a quarter of a global head's pairs turn.
    let pairs = spec.head_dim / 2;
    let factors: Vec<f32> = (0..pairs)
        .map(|i| {
            if i < spec.rope_pairs_global {
                1.0
            } else {
                1e30
            }
        })
        .collect();
    tensors.push(("rope_freqs.weight".to_string(), f32_values(&factors)));
    if spec.per_layer_input > 0 {
        let all = spec.per_layer_input * spec.layers;
        tensors.push((
            "per_layer_token_embd.weight".to_string(),
            QTensor::quantize(&rng.tensor(&[vocab, all], 1.0), GgmlDType::Q8_0).unwrap(),
        ));
        tensors.push((
            "per_layer_model_proj.weight".to_string(),
            weight(&mut rng, all, h, GgmlDType::Q4K),
        ));
        tensors.push((
            "per_layer_proj_norm.weight".to_string(),
            rng.norm(spec.per_layer_input),
        ));
    }
    for layer in 0..spec.layers {
        let p = format!("blk.{layer}");
        tensors.extend(attention(&mut rng, spec, layer));
        tensors.extend(dense_ffn(&mut rng, spec, layer));
        if spec.experts > 0 {
            tensors.extend(experts(&mut rng, spec, layer));
        }
        if spec.per_layer_input > 0 {
            let w = spec.per_layer_input;
            tensors.push((
                format!("{p}.inp_gate.weight"),
                weight(&mut rng, w, h, GgmlDType::Q4K),
            ));
            tensors.push((
                format!("{p}.proj.weight"),
                weight(&mut rng, h, w, GgmlDType::Q4K),
            ));
            tensors.push((format!("{p}.post_norm.weight"), rng.norm(h)));
        }
        if spec.layer_output_scale {
            let s = 0.6 + 0.1 * layer as f32;
            tensors.push((format!("{p}.layer_output_scale.weight"), f32_values(&[s])));
        }
    }
    write_gguf(path, &metadata, &tensors);
}

/// Writes both generated files into `$SHOWDOWN_GEMMA4_OUT` for
/// `fixtures/gemma4/make_reference.py` (which runs llama.cpp on them).
#[test]
#[ignore = "writes the generated gemma4 files for the fixture script"]
fn write_generated_gemma4_files() {
    let dir = std::env::var("SHOWDOWN_GEMMA4_OUT").expect("SHOWDOWN_GEMMA4_OUT");
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    write_gemma4(&dir.join("gemma4.gguf"), &Gemma4Spec::dense());
    write_gemma4(&dir.join("gemma4-moe.gguf"), &Gemma4Spec::moe());
}
