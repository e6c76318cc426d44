//! A deterministic generator of small random-weight MoE GGUF files, so the
//! MoE architectures can be proven against an oracle without shipping MoE
//! weights. Files borrow the tokenizer of the pinned SmolLM2 file, so prompts
//! are real text.
//!
//! [`write_moe`] writes a sparse MoE of either layout; [`write_qwen3_pair`]
//! writes a dense `qwen3` file and the same model as a `qwen3moe` whose
//! experts are slices of the dense feed-forward, for the split-dense proof.

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::util::pinned_model_path;

/// Shape and layout of a generated file.
#[derive(Debug, Clone)]
pub struct MoeSpec {
    /// `general.architecture`: `llama` (mixtral-style) or `qwen3moe`.
    pub architecture: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub expert_ff: usize,
    pub experts: usize,
    pub top_k: usize,
    /// Stacked `ffn_*_exps` tensors (current GGUF) or per-expert `ffn_*.{i}`.
    pub stacked: bool,
    pub seed: u64,
}

impl MoeSpec {
    /// Mixtral-style: 2 layers, hidden 256, 8 experts of 256, top-2.
    pub fn mixtral(stacked: bool) -> Self {
        Self {
            architecture: "llama",
            layers: 2,
            hidden: 256,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            expert_ff: 256,
            experts: 8,
            top_k: 2,
            stacked,
            seed: 7,
        }
    }

    /// Qwen3-MoE style: 2 layers, hidden 256, 8 query heads over 2 kv heads
    /// of 64, 8 experts of 256 (a multiple of 256 keeps candle on one matmul
    /// kernel for the dense and the split down projections), top-2, stacked.
    pub fn qwen3_moe() -> Self {
        Self {
            architecture: "qwen3moe",
            layers: 2,
            hidden: 256,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            expert_ff: 256,
            experts: 8,
            top_k: 2,
            stacked: true,
            seed: 11,
        }
    }
}

/// splitmix64: the same numbers on every machine.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Uniform in `[-scale, scale]`, shape `dims`.
    pub(crate) fn tensor(&mut self, dims: &[usize], scale: f32) -> Tensor {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.next_f32() * scale).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
    }

    /// A weight of `(out, inp)` scaled like a trained layer (unit-ish outputs).
    pub(crate) fn weight(&mut self, dims: &[usize], dtype: GgmlDType) -> QTensor {
        let inp = *dims.last().unwrap();
        let scale = (3.0 / inp as f32).sqrt();
        QTensor::quantize(&self.tensor(dims, scale), dtype).unwrap()
    }

    /// A norm weight near one.
    pub(crate) fn norm(&mut self, n: usize) -> QTensor {
        let t = (self.tensor(&[n], 0.2) + 1.0).unwrap();
        QTensor::quantize(&t, GgmlDType::F32).unwrap()
    }
}

/// The metadata every generated file has: the attention shape of `spec`
/// under `arch`, and the SmolLM2 tokenizer. Returns it with the vocabulary size.
fn base_metadata(arch: &str, spec: &MoeSpec) -> (Vec<(String, gguf_file::Value)>, usize) {
    let mut metadata: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
        // f32 activations in candle-transformers' qwen3 (its default is f16).
        ("general.dtype".into(), gguf_file::Value::U32(0)),
        (format!("{arch}.block_count"), u32v(spec.layers)),
        (format!("{arch}.embedding_length"), u32v(spec.hidden)),
        (format!("{arch}.context_length"), u32v(2048)),
        (format!("{arch}.attention.head_count"), u32v(spec.heads)),
        (
            format!("{arch}.attention.head_count_kv"),
            u32v(spec.kv_heads),
        ),
        (format!("{arch}.attention.key_length"), u32v(spec.head_dim)),
        (
            format!("{arch}.attention.value_length"),
            u32v(spec.head_dim),
        ),
        (format!("{arch}.rope.dimension_count"), u32v(spec.head_dim)),
        (
            format!("{arch}.rope.freq_base"),
            gguf_file::Value::F32(10_000.0),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(1e-5),
        ),
    ];
    let (tokenizer, vocab) = smollm2_tokenizer();
    metadata.push((format!("{arch}.vocab_size"), u32v(vocab)));
    metadata.extend(tokenizer);
    (metadata, vocab)
}

/// The pinned SmolLM2 file's `tokenizer.*` metadata, sorted by key, and its
/// vocabulary size: generated files borrow it so prompts are real text.
pub(crate) fn smollm2_tokenizer() -> (Vec<(String, gguf_file::Value)>, usize) {
    let smol = pinned_model_path("smollm2-135m");
    let mut reader = std::fs::File::open(smol).unwrap();
    let dense = gguf_file::Content::read(&mut reader).unwrap();
    let vocab = match &dense.metadata["tokenizer.ggml.tokens"] {
        gguf_file::Value::Array(a) => a.len(),
        _ => unreachable!(),
    };
    let mut keys: Vec<&String> = dense
        .metadata
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    keys.sort();
    let metadata = keys
        .into_iter()
        .map(|key| (key.clone(), dense.metadata[key].clone()))
        .collect();
    (metadata, vocab)
}

pub(crate) fn u32v(n: usize) -> gguf_file::Value {
    gguf_file::Value::U32(n as u32)
}

/// The embedding (tied output) and the final norm.
fn embedding_tensors(rng: &mut Rng, spec: &MoeSpec, vocab: usize) -> Vec<(String, QTensor)> {
    vec![
        (
            "token_embd.weight".into(),
            QTensor::quantize(&rng.tensor(&[vocab, spec.hidden], 1.0), GgmlDType::Q8_0).unwrap(),
        ),
        ("output_norm.weight".into(), rng.norm(spec.hidden)),
    ]
}

/// One layer's attention weights (with Qwen 3's q/k norms when `qk_norm`)
/// and its feed-forward norm.
fn attention_tensors(
    rng: &mut Rng,
    spec: &MoeSpec,
    layer: usize,
    qk_norm: bool,
    dtype: GgmlDType,
) -> Vec<(String, QTensor)> {
    let h = spec.hidden;
    let p = format!("blk.{layer}");
    let q_out = spec.heads * spec.head_dim;
    let kv_out = spec.kv_heads * spec.head_dim;
    let mut tensors = vec![
        (format!("{p}.attn_norm.weight"), rng.norm(h)),
        (format!("{p}.attn_q.weight"), rng.weight(&[q_out, h], dtype)),
        (
            format!("{p}.attn_k.weight"),
            rng.weight(&[kv_out, h], dtype),
        ),
        (
            format!("{p}.attn_v.weight"),
            rng.weight(&[kv_out, h], dtype),
        ),
        (
            format!("{p}.attn_output.weight"),
            rng.weight(&[h, q_out], dtype),
        ),
    ];
    if qk_norm {
        tensors.push((format!("{p}.attn_q_norm.weight"), rng.norm(spec.head_dim)));
        tensors.push((format!("{p}.attn_k_norm.weight"), rng.norm(spec.head_dim)));
    }
    tensors.push((format!("{p}.ffn_norm.weight"), rng.norm(h)));
    tensors
}

pub(crate) fn write_gguf(
    path: &Path,
    metadata: &[(String, gguf_file::Value)],
    tensors: &[(String, QTensor)],
) {
    let metadata: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

/// `t` quantized from its own storage (candle's quantize reads the whole
/// storage under a view).
pub(crate) fn quantize_copy(t: &Tensor, dtype: GgmlDType) -> QTensor {
    let data: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let t = Tensor::from_vec(data, t.shape(), &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

/// Experts quantized one by one, then stacked byte for byte.
pub(crate) fn stack_experts(experts: &[QTensor], dtype: GgmlDType) -> QTensor {
    let bytes: Vec<u8> = experts
        .iter()
        .flat_map(|q| q.data().unwrap().to_vec())
        .collect();
    let mut dims = vec![experts.len()];
    dims.extend(experts[0].shape().dims());
    candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &bytes, dims, &Device::Cpu).unwrap()
}

/// Writes a random-weight MoE model of `spec` to `path`. Expert gate/up
/// weights are Q4_K, down and attention Q8_0, embedding (tied output) Q8_0,
/// norms and router F32, as real quantized MoE files mix them.
pub fn write_moe(path: &Path, spec: &MoeSpec) {
    let arch = spec.architecture;
    let (mut metadata, vocab) = base_metadata(arch, spec);
    metadata.push((format!("{arch}.expert_count"), u32v(spec.experts)));
    metadata.push((format!("{arch}.expert_used_count"), u32v(spec.top_k)));
    if arch == "llama" {
        metadata.push((format!("{arch}.feed_forward_length"), u32v(spec.expert_ff)));
    } else {
        metadata.push((
            format!("{arch}.expert_feed_forward_length"),
            u32v(spec.expert_ff),
        ));
        metadata.push((
            format!("{arch}.feed_forward_length"),
            u32v(spec.expert_ff * 4),
        ));
    }

    let mut rng = Rng(spec.seed);
    let (h, ff, e) = (spec.hidden, spec.expert_ff, spec.experts);
    let mut tensors = embedding_tensors(&mut rng, spec, vocab);
    for layer in 0..spec.layers {
        let p = format!("blk.{layer}");
        tensors.extend(attention_tensors(
            &mut rng,
            spec,
            layer,
            arch != "llama",
            GgmlDType::Q8_0,
        ));
        // A router with spread-out logits, so routing varies by token.
        let router = rng.tensor(&[e, h], 4.0 / (h as f32).sqrt());
        tensors.push((
            format!("{p}.ffn_gate_inp.weight"),
            QTensor::quantize(&router, GgmlDType::F32).unwrap(),
        ));
        // Same random numbers for both layouts: quantization blocks lie within
        // rows, so stacking does not change any expert's bytes.
        let gate = rng.tensor(&[e, ff, h], (3.0 / h as f32).sqrt());
        let up = rng.tensor(&[e, ff, h], (3.0 / h as f32).sqrt());
        let down = rng.tensor(&[e, h, ff], (3.0 / ff as f32).sqrt());
        let parts = [
            ("ffn_gate", gate, GgmlDType::Q4K),
            ("ffn_up", up, GgmlDType::Q4K),
            ("ffn_down", down, GgmlDType::Q8_0),
        ];
        for (name, t, dtype) in parts {
            let experts: Vec<QTensor> = (0..e)
                .map(|i| quantize_copy(&t.get(i).unwrap(), dtype))
                .collect();
            if spec.stacked {
                tensors.push((
                    format!("{p}.{name}_exps.weight"),
                    stack_experts(&experts, dtype),
                ));
            } else {
                for (i, w) in experts.into_iter().enumerate() {
                    tensors.push((format!("{p}.{name}.{i}.weight"), w));
                }
            }
        }
    }
    write_gguf(path, &metadata, &tensors);
}

/// Writes one random model twice: as a dense `qwen3` to `dense`, and as a
/// `qwen3moe` to `split` whose `spec.experts` experts are consecutive slices of
/// each dense feed-forward (gate/up rows, down columns: whole quantization
/// blocks, so the same bytes), with a zero router, every expert used, and
/// down projections scaled by the expert count (exact: a power of two scales
/// each block's scale, not its quants). The renormalised router weights are
/// then `1/E` each, and the weighted sum of the experts is the dense
/// feed-forward, up to the order of the f32 additions.
pub fn write_qwen3_pair(dense: &Path, split: &Path, spec: &MoeSpec) {
    let (e, expert_ff) = (spec.experts, spec.expert_ff);
    assert!(e.is_power_of_two() && expert_ff.is_multiple_of(256));
    let (h, ff) = (spec.hidden, expert_ff * e);
    let (mut dense_meta, vocab) = base_metadata("qwen3", spec);
    dense_meta.push(("qwen3.feed_forward_length".into(), u32v(ff)));
    let (mut split_meta, _) = base_metadata("qwen3moe", spec);
    split_meta.extend([
        ("qwen3moe.feed_forward_length".to_string(), u32v(ff)),
        ("qwen3moe.expert_count".to_string(), u32v(e)),
        ("qwen3moe.expert_used_count".to_string(), u32v(e)),
        (
            "qwen3moe.expert_feed_forward_length".to_string(),
            u32v(expert_ff),
        ),
    ]);

    let mut rng = Rng(spec.seed);
    let mut dense_tensors = embedding_tensors(&mut rng, spec, vocab);
    let mut split_tensors: Vec<(String, QTensor)> = Vec::new();
    let copy = |tensors: &[(String, QTensor)]| -> Vec<(String, QTensor)> {
        tensors
            .iter()
            .map(|(name, t)| (name.clone(), byte_copy(t)))
            .collect()
    };
    split_tensors.extend(copy(&dense_tensors));
    for layer in 0..spec.layers {
        let p = format!("blk.{layer}");
        // f32 attention projections: the oracle's CPU attention is a flash kernel
        // whose sums differ from a matmul's in the last bit, and an 8-bit
        // activation rounding in a quantized projection can turn that bit into
        // a 1 % change of the logits. The feed-forward, the part split into
        // experts, keeps the quantized types.
        let attention = attention_tensors(&mut rng, spec, layer, true, GgmlDType::F32);
        split_tensors.extend(copy(&attention));
        dense_tensors.extend(attention);

        let gate = rng.tensor(&[ff, h], (3.0 / h as f32).sqrt());
        let up = rng.tensor(&[ff, h], (3.0 / h as f32).sqrt());
        let down = rng.tensor(&[h, ff], (3.0 / ff as f32).sqrt());
        dense_tensors.extend([
            (
                format!("{p}.ffn_gate.weight"),
                quantize_copy(&gate, GgmlDType::Q4K),
            ),
            (
                format!("{p}.ffn_up.weight"),
                quantize_copy(&up, GgmlDType::Q4K),
            ),
            (
                format!("{p}.ffn_down.weight"),
                quantize_copy(&down, GgmlDType::Q8_0),
            ),
        ]);

        let zeros = Tensor::zeros((e, h), candle_core::DType::F32, &Device::Cpu).unwrap();
        let down = (down * e as f64).unwrap();
        // Expert i: rows (gate, up) or columns (down) i * expert_ff.. of the dense weight.
        let experts = |t: &Tensor, axis: usize, dtype: GgmlDType| -> QTensor {
            let slices: Vec<QTensor> = (0..e)
                .map(|i| quantize_copy(&t.narrow(axis, i * expert_ff, expert_ff).unwrap(), dtype))
                .collect();
            stack_experts(&slices, dtype)
        };
        split_tensors.extend([
            (
                format!("{p}.ffn_gate_inp.weight"),
                QTensor::quantize(&zeros, GgmlDType::F32).unwrap(),
            ),
            (
                format!("{p}.ffn_gate_exps.weight"),
                experts(&gate, 0, GgmlDType::Q4K),
            ),
            (
                format!("{p}.ffn_up_exps.weight"),
                experts(&up, 0, GgmlDType::Q4K),
            ),
            (
                format!("{p}.ffn_down_exps.weight"),
                experts(&down, 1, GgmlDType::Q8_0),
            ),
        ]);
    }
    write_gguf(dense, &dense_meta, &dense_tensors);
    write_gguf(split, &split_meta, &split_tensors);
}

/// A byte-for-byte copy of a quantized tensor.
fn byte_copy(t: &QTensor) -> QTensor {
    candle_core::quantized::ggml_file::qtensor_from_ggml(
        t.dtype(),
        &t.data().unwrap(),
        t.shape().dims().to_vec(),
        &Device::Cpu,
    )
    .unwrap()
}
