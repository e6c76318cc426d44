//! A deterministic generator of small random-weight MoE GGUF files, so the
//! MoE architectures can be proven against an oracle without shipping MoE
//! weights. Files borrow the tokenizer of the pinned SmolLM2 file, so prompts
//! are real text.

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::util::pinned_model_path;

/// Shape and layout of a generated file.
#[derive(Debug, Clone)]
pub struct MoeSpec {
    /// `general.architecture`: `llama` (mixtral-style) or `qwen3_moe`.
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
}

/// splitmix64: the same numbers on every machine.
struct Rng(u64);

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
    fn tensor(&mut self, dims: &[usize], scale: f32) -> Tensor {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.next_f32() * scale).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
    }

    /// A weight of `(out, inp)` scaled like a trained layer (unit-ish outputs).
    fn weight(&mut self, dims: &[usize], dtype: GgmlDType) -> QTensor {
        let inp = *dims.last().unwrap();
        let scale = (3.0 / inp as f32).sqrt();
        QTensor::quantize(&self.tensor(dims, scale), dtype).unwrap()
    }

    /// A norm weight near one.
    fn norm(&mut self, n: usize) -> QTensor {
        let t = (self.tensor(&[n], 0.2) + 1.0).unwrap();
        QTensor::quantize(&t, GgmlDType::F32).unwrap()
    }
}

/// Writes a random-weight MoE model of `spec` to `path`. Expert gate/up
/// weights are Q4_K, down and attention Q8_0, embedding (tied output) Q8_0,
/// norms and router F32, as real quantized MoE files mix them.
pub fn write_moe(path: &Path, spec: &MoeSpec) {
    let smol = pinned_model_path("smollm2-135m");
    let mut reader = std::fs::File::open(smol).unwrap();
    let dense = gguf_file::Content::read(&mut reader).unwrap();
    let vocab = match &dense.metadata["tokenizer.ggml.tokens"] {
        gguf_file::Value::Array(a) => a.len(),
        _ => unreachable!(),
    };

    let arch = spec.architecture;
    let u32v = |n: usize| gguf_file::Value::U32(n as u32);
    let mut metadata: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
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
        (format!("{arch}.expert_count"), u32v(spec.experts)),
        (format!("{arch}.expert_used_count"), u32v(spec.top_k)),
        (format!("{arch}.vocab_size"), u32v(vocab)),
    ];
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
    let mut keys: Vec<&String> = dense
        .metadata
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    keys.sort();
    for key in keys {
        metadata.push((key.clone(), dense.metadata[key].clone()));
    }

    let mut rng = Rng(spec.seed);
    let (h, ff, e) = (spec.hidden, spec.expert_ff, spec.experts);
    let mut tensors: Vec<(String, QTensor)> = vec![(
        "token_embd.weight".into(),
        QTensor::quantize(&rng.tensor(&[vocab, h], 1.0), GgmlDType::Q8_0).unwrap(),
    )];
    tensors.push(("output_norm.weight".into(), rng.norm(h)));
    for layer in 0..spec.layers {
        let p = format!("blk.{layer}");
        let q_out = spec.heads * spec.head_dim;
        let kv_out = spec.kv_heads * spec.head_dim;
        tensors.push((format!("{p}.attn_norm.weight"), rng.norm(h)));
        tensors.push((
            format!("{p}.attn_q.weight"),
            rng.weight(&[q_out, h], GgmlDType::Q8_0),
        ));
        tensors.push((
            format!("{p}.attn_k.weight"),
            rng.weight(&[kv_out, h], GgmlDType::Q8_0),
        ));
        tensors.push((
            format!("{p}.attn_v.weight"),
            rng.weight(&[kv_out, h], GgmlDType::Q8_0),
        ));
        tensors.push((
            format!("{p}.attn_output.weight"),
            rng.weight(&[h, q_out], GgmlDType::Q8_0),
        ));
        if arch == "qwen3_moe" {
            tensors.push((format!("{p}.attn_q_norm.weight"), rng.norm(spec.head_dim)));
            tensors.push((format!("{p}.attn_k_norm.weight"), rng.norm(spec.head_dim)));
        }
        tensors.push((format!("{p}.ffn_norm.weight"), rng.norm(h)));
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
            // Quantize each expert from its own storage (candle's quantize reads
            // the whole storage under a view), then stack the very same bytes.
            let experts: Vec<QTensor> = (0..e)
                .map(|i| {
                    let w = t.get(i).unwrap();
                    let data: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
                    let w = Tensor::from_vec(data, w.shape(), &Device::Cpu).unwrap();
                    QTensor::quantize(&w, dtype).unwrap()
                })
                .collect();
            if spec.stacked {
                let bytes: Vec<u8> = experts
                    .iter()
                    .flat_map(|q| q.data().unwrap().to_vec())
                    .collect();
                let mut dims = vec![e];
                dims.extend(experts[0].shape().dims());
                let stacked = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    &bytes,
                    dims,
                    &Device::Cpu,
                )
                .unwrap();
                tensors.push((format!("{p}.{name}_exps.weight"), stacked));
            } else {
                for (i, w) in experts.into_iter().enumerate() {
                    tensors.push((format!("{p}.{name}.{i}.weight"), w));
                }
            }
        }
    }

    let metadata: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}
