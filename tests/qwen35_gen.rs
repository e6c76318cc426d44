//! A deterministic generator of small random-weight Qwen 3.5 / 3.6 files
//! (`qwen35`, `qwen35moe`) in llama.cpp b11434's exact GGUF layout
//! (`src/models/qwen35.cpp`, `qwen35moe.cpp`): Gated DeltaNet layers with a
//! full-attention layer every `full_attention_interval`, each followed by a
//! dense feed-forward (`qwen35`) or routed experts plus a gated shared expert
//! (`qwen35moe`). llama.cpp on these files is the oracle for the engine's
//! implementation (`fixtures/qwen35/make_reference.py`); the real 35B file
//! is not installable here.
//!
//! The shapes keep the real model's ratios at a small size: 16 of 64
//! head dimensions rotated (the real file rotates 64 of 256), twice as many
//! DeltaNet value heads as key heads, 2 KV heads under 4 query heads. Weight
//! types follow an Ollama Q4_K_M file: Q4_K projections, Q6_K for the value,
//! down and output projections, Q8_0 where a row is too short for a
//! super-block, F32 for norms, router, convolution and the DeltaNet gates.

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};

use crate::fp4_gen::{patch_fp4, placeholder, Fp4};
use crate::moe_gen::{quantize_copy, smollm2_tokenizer, stack_experts, u32v, write_gguf, Rng};

/// Shape of a generated Qwen 3.5 file.
#[derive(Debug, Clone)]
pub struct Qwen35Spec {
    /// `qwen35` (dense feed-forward) or `qwen35moe`.
    pub architecture: &'static str,
    pub layers: usize,
    /// Every this many layers, the last is full attention (llama.cpp's rule:
    /// layer `i` is recurrent unless `(i + 1) % interval == 0`).
    pub full_attention_interval: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_dims: usize,
    /// `ssm.group_count`: DeltaNet key (and query) heads.
    pub linear_key_heads: usize,
    /// `ssm.time_step_rank`: DeltaNet value heads.
    pub linear_value_heads: usize,
    /// `ssm.state_size`: the dimension of a DeltaNet key, query and value head.
    pub linear_head_dim: usize,
    pub conv_kernel: usize,
    /// Dense feed-forward width (`qwen35`) or the shared expert's (`qwen35moe`).
    pub ff: usize,
    pub expert_ff: usize,
    pub experts: usize,
    pub top_k: usize,
    pub seed: u64,
    /// The routed experts in an FP4 format, quantized from the same f32
    /// draws, instead of Q4_K/Q6_K (`None`: the fixtures' files).
    pub fp4_experts: Option<Fp4>,
    /// llama.cpp's optional second scales (`NAME.scale`, as NVFP4 exports
    /// carry): each routed expert's values divided by `amax / (6 · 448)`
    /// (NVFP4's largest code times UE4M3's largest scale) before quantizing,
    /// that factor written per expert; and a per-tensor factor beside every
    /// projection of the trunk (its weights as drawn, so the factor changes
    /// the model and a loader that dropped it would be caught).
    pub second_scales: bool,
}

impl Qwen35Spec {
    /// `qwen35moe`: 6 layers (DeltaNet, DeltaNet, attention, twice), hidden
    /// 256, 16 routed experts of 256 with 4 used, and a shared expert of 256.
    pub fn moe() -> Self {
        Self {
            architecture: "qwen35moe",
            layers: 6,
            full_attention_interval: 3,
            hidden: 256,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            rope_dims: 16,
            linear_key_heads: 2,
            linear_value_heads: 4,
            linear_head_dim: 32,
            conv_kernel: 4,
            ff: 256,
            expert_ff: 256,
            experts: 16,
            top_k: 4,
            seed: 35,
            fp4_experts: None,
            second_scales: false,
        }
    }

    /// `qwen35`: the same trunk with a dense feed-forward of 512.
    pub fn dense() -> Self {
        Self {
            architecture: "qwen35",
            ff: 512,
            experts: 0,
            top_k: 0,
            seed: 36,
            ..Self::moe()
        }
    }

    pub fn is_recurrent(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(self.full_attention_interval)
    }
}

fn metadata(spec: &Qwen35Spec) -> (Vec<(String, gguf_file::Value)>, usize) {
    let arch = spec.architecture;
    let key = |k: &str| format!("{arch}.{k}");
    let mut metadata: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
        (key("block_count"), u32v(spec.layers)),
        (key("context_length"), u32v(4096)),
        (key("embedding_length"), u32v(spec.hidden)),
        (key("feed_forward_length"), u32v(spec.ff)),
        (key("attention.head_count"), u32v(spec.heads)),
        (key("attention.head_count_kv"), u32v(spec.kv_heads)),
        (key("attention.key_length"), u32v(spec.head_dim)),
        (key("attention.value_length"), u32v(spec.head_dim)),
        (
            key("attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(1e-6),
        ),
        (key("rope.dimension_count"), u32v(spec.rope_dims)),
        (key("rope.freq_base"), gguf_file::Value::F32(10_000_000.0)),
        // Text positions are the same in every section, so the split only
        // has to sum to half the rotated dimensions.
        (
            key("rope.dimension_sections"),
            gguf_file::Value::Array(
                [3, 3, 2, 0]
                    .into_iter()
                    .map(gguf_file::Value::I32)
                    .collect(),
            ),
        ),
        (
            key("full_attention_interval"),
            u32v(spec.full_attention_interval),
        ),
        (key("ssm.conv_kernel"), u32v(spec.conv_kernel)),
        (
            key("ssm.inner_size"),
            u32v(spec.linear_value_heads * spec.linear_head_dim),
        ),
        (key("ssm.state_size"), u32v(spec.linear_head_dim)),
        (key("ssm.time_step_rank"), u32v(spec.linear_value_heads)),
        (key("ssm.group_count"), u32v(spec.linear_key_heads)),
    ];
    if spec.experts > 0 {
        metadata.push((key("expert_count"), u32v(spec.experts)));
        metadata.push((key("expert_used_count"), u32v(spec.top_k)));
        metadata.push((key("expert_feed_forward_length"), u32v(spec.expert_ff)));
        metadata.push((key("expert_shared_feed_forward_length"), u32v(spec.ff)));
    }
    let (tokenizer, vocab) = smollm2_tokenizer();
    metadata.push((key("vocab_size"), u32v(vocab)));
    metadata.extend(tokenizer);
    (metadata, vocab)
}

fn f32_tensor(rng: &mut Rng, dims: &[usize], scale: f32) -> QTensor {
    QTensor::quantize(&rng.tensor(dims, scale), GgmlDType::F32).unwrap()
}

/// A full-attention layer: one projection for the query and its output gate
/// (per head: `head_dim` query values, then `head_dim` gate values), q/k norms.
fn attention_layer(rng: &mut Rng, spec: &Qwen35Spec, p: &str) -> Vec<(String, QTensor)> {
    let h = spec.hidden;
    let q = spec.heads * spec.head_dim;
    let kv = spec.kv_heads * spec.head_dim;
    vec![
        (
            format!("{p}.attn_q.weight"),
            rng.weight(&[2 * q, h], GgmlDType::Q4K),
        ),
        (
            format!("{p}.attn_k.weight"),
            rng.weight(&[kv, h], GgmlDType::Q4K),
        ),
        (
            format!("{p}.attn_v.weight"),
            rng.weight(&[kv, h], GgmlDType::Q6K),
        ),
        (
            format!("{p}.attn_output.weight"),
            rng.weight(&[h, q], GgmlDType::Q4K),
        ),
        (format!("{p}.attn_q_norm.weight"), rng.norm(spec.head_dim)),
        (format!("{p}.attn_k_norm.weight"), rng.norm(spec.head_dim)),
    ]
}

/// A Gated DeltaNet layer: the mixed q/k/v projection, the output gate `z`,
/// the short causal convolution over q/k/v, the decay (`ssm_a` = -exp(A_log),
/// as llama.cpp's converter stores it, and the `dt` bias), the write strength
/// `beta`, the gated norm and the output projection.
fn delta_net_layer(rng: &mut Rng, spec: &Qwen35Spec, p: &str) -> Vec<(String, QTensor)> {
    let h = spec.hidden;
    let key_dim = spec.linear_key_heads * spec.linear_head_dim;
    let value_dim = spec.linear_value_heads * spec.linear_head_dim;
    let conv_dim = 2 * key_dim + value_dim;
    let heads = spec.linear_value_heads;
    let a_log = rng.tensor(&[heads], 1.0);
    let ssm_a = a_log.exp().unwrap().neg().unwrap();
    vec![
        (
            format!("{p}.attn_qkv.weight"),
            rng.weight(&[conv_dim, h], GgmlDType::Q4K),
        ),
        (
            format!("{p}.attn_gate.weight"),
            rng.weight(&[value_dim, h], GgmlDType::Q4K),
        ),
        (
            format!("{p}.ssm_conv1d.weight"),
            f32_tensor(rng, &[conv_dim, spec.conv_kernel], 0.5),
        ),
        (format!("{p}.ssm_dt.bias"), f32_tensor(rng, &[heads], 1.0)),
        (
            format!("{p}.ssm_a"),
            QTensor::quantize(&ssm_a, GgmlDType::F32).unwrap(),
        ),
        (
            format!("{p}.ssm_beta.weight"),
            rng.weight(&[heads, h], GgmlDType::F32),
        ),
        (
            format!("{p}.ssm_alpha.weight"),
            rng.weight(&[heads, h], GgmlDType::F32),
        ),
        (
            format!("{p}.ssm_norm.weight"),
            rng.norm(spec.linear_head_dim),
        ),
        // 128-wide rows: too short for a 256-value K super-block.
        (
            format!("{p}.ssm_out.weight"),
            rng.weight(&[h, value_dim], GgmlDType::Q8_0),
        ),
    ]
}

/// Routed experts (stacked, the current layout), the router, and the shared
/// expert with its one-output sigmoid gate.
fn moe_layer(
    rng: &mut Rng,
    spec: &Qwen35Spec,
    p: &str,
    fp4: &mut Vec<(String, Fp4, usize, Vec<f32>)>,
) -> Vec<(String, QTensor)> {
    let (h, ff, e) = (spec.hidden, spec.expert_ff, spec.experts);
    let router = rng.tensor(&[e, h], 4.0 / (h as f32).sqrt());
    let mut tensors = vec![(
        format!("{p}.ffn_gate_inp.weight"),
        QTensor::quantize(&router, GgmlDType::F32).unwrap(),
    )];
    let parts = [
        ("ffn_gate_exps", [e, ff, h], GgmlDType::Q4K, h),
        ("ffn_up_exps", [e, ff, h], GgmlDType::Q4K, h),
        ("ffn_down_exps", [e, h, ff], GgmlDType::Q6K, ff),
    ];
    for (name, dims, dtype, inp) in parts {
        let mut t = rng.tensor(&dims, (3.0 / inp as f32).sqrt());
        if spec.second_scales {
            let (t_scaled, scales) = divide_per_expert(&t);
            t = t_scaled;
            tensors.push((
                format!("{p}.{name}.scale"),
                QTensor::quantize(
                    &candle_core::Tensor::new(scales.as_slice(), &candle_core::Device::Cpu)
                        .unwrap(),
                    GgmlDType::F32,
                )
                .unwrap(),
            ));
        }
        if let Some(format) = spec.fp4_experts {
            let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let (bytes, decoded) = crate::fp4_gen::quantize(format, &values);
            let name = format!("{p}.{name}.weight");
            tensors.push((name.clone(), placeholder(format, &dims, &bytes)));
            fp4.push((name, format, inp, decoded));
            continue;
        }
        let experts: Vec<QTensor> = (0..e)
            .map(|i| quantize_copy(&t.get(i).unwrap(), dtype))
            .collect();
        tensors.push((format!("{p}.{name}.weight"), stack_experts(&experts, dtype)));
    }
    tensors.push((
        format!("{p}.ffn_gate_inp_shexp.weight"),
        f32_tensor(rng, &[h], 2.0 / (h as f32).sqrt()),
    ));
    tensors.extend(dense_ffn(rng, spec, p, "_shexp"));
    tensors
}

/// Each expert's values divided by its `amax / (6 · 448)`, and those factors.
fn divide_per_expert(t: &candle_core::Tensor) -> (candle_core::Tensor, Vec<f32>) {
    let dims = t.dims().to_vec();
    let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let per = values.len() / dims[0];
    let mut scales = Vec::with_capacity(dims[0]);
    let mut out = Vec::with_capacity(values.len());
    for expert in values.chunks_exact(per) {
        let amax = expert.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = amax / (6.0 * 448.0);
        scales.push(s);
        out.extend(expert.iter().map(|v| v / s));
    }
    (
        candle_core::Tensor::from_vec(out, dims, &candle_core::Device::Cpu).unwrap(),
        scales,
    )
}

/// A per-tensor `NAME.scale` of one value beside each trunk projection of
/// `layer`, 0.5 to 1.5 by name and layer, with no weight rescaled.
fn per_tensor_scales(spec: &Qwen35Spec, layer: usize) -> Vec<(String, QTensor)> {
    let names: &[&str] = if spec.is_recurrent(layer) {
        &["attn_qkv", "attn_gate", "ssm_beta", "ssm_alpha", "ssm_out"]
    } else {
        &["attn_q", "attn_k", "attn_v", "attn_output"]
    };
    let shared: &[&str] = if spec.experts > 0 {
        &["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
    } else {
        &["ffn_gate", "ffn_up", "ffn_down"]
    };
    names
        .iter()
        .chain(shared)
        .enumerate()
        .map(|(i, name)| {
            let s = 0.5 + ((i + 3 * layer) % 5) as f32 * 0.25;
            let t = candle_core::Tensor::new(&[s], &candle_core::Device::Cpu).unwrap();
            (
                format!("blk.{layer}.{name}.scale"),
                QTensor::quantize(&t, GgmlDType::F32).unwrap(),
            )
        })
        .collect()
}

fn dense_ffn(rng: &mut Rng, spec: &Qwen35Spec, p: &str, suffix: &str) -> Vec<(String, QTensor)> {
    let (h, ff) = (spec.hidden, spec.ff);
    vec![
        (
            format!("{p}.ffn_gate{suffix}.weight"),
            rng.weight(&[ff, h], GgmlDType::Q4K),
        ),
        (
            format!("{p}.ffn_up{suffix}.weight"),
            rng.weight(&[ff, h], GgmlDType::Q4K),
        ),
        (
            format!("{p}.ffn_down{suffix}.weight"),
            rng.weight(&[h, ff], GgmlDType::Q6K),
        ),
    ]
}

/// Writes the random-weight model of `spec` to `path`.
pub fn write_qwen35(path: &Path, spec: &Qwen35Spec) {
    write_qwen35_fp4(path, spec);
}

/// [`write_qwen35`], returning each FP4 tensor's name and the values its
/// bytes decode to (by the test quantizer's own reading of the bits).
pub fn write_qwen35_fp4(path: &Path, spec: &Qwen35Spec) -> Vec<(String, Vec<f32>)> {
    let (metadata, vocab) = metadata(spec);
    let mut rng = Rng(spec.seed);
    let h = spec.hidden;
    let mut fp4 = Vec::new();
    let mut tensors = vec![
        (
            "token_embd.weight".to_string(),
            QTensor::quantize(&rng.tensor(&[vocab, h], 1.0), GgmlDType::Q4K).unwrap(),
        ),
        ("output_norm.weight".to_string(), rng.norm(h)),
        (
            "output.weight".to_string(),
            rng.weight(&[vocab, h], GgmlDType::Q6K),
        ),
    ];
    for layer in 0..spec.layers {
        let p = format!("blk.{layer}");
        tensors.push((format!("{p}.attn_norm.weight"), rng.norm(h)));
        tensors.push((format!("{p}.post_attention_norm.weight"), rng.norm(h)));
        if spec.is_recurrent(layer) {
            tensors.extend(delta_net_layer(&mut rng, spec, &p));
        } else {
            tensors.extend(attention_layer(&mut rng, spec, &p));
        }
        if spec.experts > 0 {
            tensors.extend(moe_layer(&mut rng, spec, &p, &mut fp4));
        } else {
            tensors.extend(dense_ffn(&mut rng, spec, &p, ""));
        }
        if spec.second_scales {
            tensors.extend(per_tensor_scales(spec, layer));
        }
    }
    write_gguf(path, &metadata, &tensors);
    if !fp4.is_empty() {
        let retype: Vec<(String, Fp4, usize)> = fp4
            .iter()
            .map(|(name, format, k, _)| (name.clone(), *format, *k))
            .collect();
        patch_fp4(path, &retype);
    }
    fp4.into_iter()
        .map(|(name, _, _, decoded)| (name, decoded))
        .collect()
}

/// Writes both generated files into `$SHOWDOWN_QWEN35_OUT` for
/// `fixtures/qwen35/make_reference.py` (which runs llama.cpp on them).
#[test]
#[ignore = "writes the generated qwen35 files for the fixture script"]
fn write_generated_qwen35_files() {
    let dir = std::env::var("SHOWDOWN_QWEN35_OUT").expect("SHOWDOWN_QWEN35_OUT");
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    write_qwen35(&dir.join("qwen35moe.gguf"), &Qwen35Spec::moe());
    write_qwen35(&dir.join("qwen35.gguf"), &Qwen35Spec::dense());
}

/// The generator is deterministic: it writes the very files llama.cpp's
/// fixtures were recorded on, so those fixtures stay the oracle for them.
#[test]
fn the_generated_files_are_the_ones_the_llama_cpp_fixtures_were_recorded_on() {
    let dir = tempfile::tempdir().unwrap();
    for (name, spec) in [
        ("qwen35moe", Qwen35Spec::moe()),
        ("qwen35", Qwen35Spec::dense()),
    ] {
        let path = dir.path().join(format!("{name}.gguf"));
        write_qwen35(&path, &spec);
        let sha = crate::util::sha256_hex(&std::fs::read(&path).unwrap());
        let fixture = format!(
            "{}/fixtures/qwen35/{name}_llama_cpp_greedy.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        assert_eq!(fixture["sha256"].as_str(), Some(sha.as_str()), "{name}");
        assert_eq!(fixture["cases"].as_array().unwrap().len(), 3, "{name}");
    }
}
