//! Llama family (Llama 2/3, SmolLM2, Mistral) in GGUF layout: pre-norm
//! decoder blocks with RMSNorm, grouped-query attention with interleaved
//! rotary embeddings (GGUF permutes q/k for it), and a SwiGLU feed-forward.
//! With `llama.expert_count` > 1 the feed-forward is a mixtral-style sparse
//! mixture of experts ([`crate::models::moe`]).
//! Reference: llama.cpp `llm_build_llama`, candle-transformers `quantized_llama`.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Embedding;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gguf::Gguf;
use crate::kv_cache::KvCache;
use crate::models::attention::{attention, KeyMask};
use crate::models::moe::SparseMoe;
use crate::models::ModelInfo;

/// Hyperparameters, named as in the Hugging Face config, read from GGUF metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Hidden size.
    pub hidden_size: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f32,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Experts per feed-forward (`num_local_experts`); 0 for a dense model.
    pub num_local_experts: usize,
    /// Experts each token is routed to (`num_experts_per_tok`); 0 when dense.
    pub num_experts_per_tok: usize,
}

impl Config {
    /// Reads `llama.*` metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let hidden_size = gguf.arch_u32("embedding_length")? as usize;
        let num_attention_heads = gguf.arch_u32("attention.head_count")? as usize;
        let head_dim = gguf
            .arch_u32("rope.dimension_count")
            .map(|d| d as usize)
            .unwrap_or(hidden_size / num_attention_heads);
        let vocab_size = match gguf.arch_u32("vocab_size") {
            Ok(v) => v as usize,
            Err(_) => gguf.array("tokenizer.ggml.tokens")?.len(),
        };
        Ok(Self {
            hidden_size,
            intermediate_size: gguf.arch_u32("feed_forward_length")? as usize,
            num_hidden_layers: gguf.arch_u32("block_count")? as usize,
            num_attention_heads,
            num_key_value_heads: gguf
                .arch_u32("attention.head_count_kv")
                .map(|n| n as usize)
                .unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: gguf.arch_f32("attention.layer_norm_rms_epsilon")? as f64,
            rope_theta: gguf.arch_f32("rope.freq_base").unwrap_or(10_000.0),
            max_position_embeddings: gguf.arch_u32("context_length")? as usize,
            vocab_size,
            num_local_experts: gguf.arch_u32("expert_count").unwrap_or(0) as usize,
            num_experts_per_tok: gguf.arch_u32("expert_used_count").unwrap_or(0) as usize,
        })
    }
}

/// RMSNorm with a dequantized weight.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(gguf: &Gguf, name: &str, eps: f64, device: &Device) -> Result<Self> {
        let weight = gguf.tensor(name, device)?.dequantize(device)?;
        Ok(Self {
            weight,
            eps: eps as f32,
        })
    }

    /// The norm `{prefix}.{name}.weight` of one block.
    pub(crate) fn in_block(
        gguf: &Gguf,
        prefix: &str,
        name: &str,
        eps: f64,
        device: &Device,
    ) -> Result<Self> {
        Self::new(gguf, &format!("{prefix}.{name}.weight"), eps, device)
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(xs, &self.weight, self.eps)?)
    }
}

/// Precomputed rotary tables, `(context, head_dim / 2)`.
#[derive(Debug, Clone)]
pub(crate) struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryEmbedding {
    pub(crate) fn new(
        head_dim: usize,
        theta: f32,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::new(inv_freq.as_slice(), device)?;
        let positions = Tensor::arange(0, max_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_len, 1))?;
        let angles = positions.matmul(&inv_freq.reshape((1, ()))?)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// Half-split ("NeoX") rotation (pairs `i`, `i + d/2`) of `(b, heads, seq, head_dim)`.
    pub(crate) fn apply_neox(&self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        let seq = xs.dim(2)?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        Ok(candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin)?)
    }

    /// Interleaved rotation (pairs `2i`, `2i+1`) of `(b, heads, seq, head_dim)`.
    pub(crate) fn apply_interleaved(&self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        let seq = xs.dim(2)?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        Ok(candle_nn::rotary_emb::rope_i(
            &xs.contiguous()?,
            &cos,
            &sin,
        )?)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    o: QMatMul,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

impl Attention {
    fn new(gguf: &Gguf, prefix: &str, cfg: &Config, device: &Device) -> Result<Self> {
        let w = |name: &str| gguf.qmatmul(&format!("{prefix}.{name}.weight"), device);
        Ok(Self {
            q: w("attn_q")?,
            k: w("attn_k")?,
            v: w("attn_v")?,
            o: w("attn_output")?,
            n_head: cfg.num_attention_heads,
            n_kv_head: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rope: &RotaryEmbedding,
        mask: KeyMask,
        layer: usize,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, seq, _) = xs.dims3()?;
        let offset = cache.len();
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, seq, n, self.head_dim))?.transpose(1, 2)?)
        };
        let q = heads(self.q.forward(xs)?, self.n_head)?;
        let k = heads(self.k.forward(xs)?, self.n_kv_head)?;
        let v = heads(self.v.forward(xs)?, self.n_kv_head)?;
        let q = rope.apply_interleaved(&q, offset)?;
        let k = rope.apply_interleaved(&k, offset)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        let y = attention(&q, &k, &v, mask)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, seq, self.n_head * self.head_dim))?;
        Ok(self.o.forward(&y)?)
    }
}

/// The gate's activation in a gated feed-forward.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Activation {
    /// SiLU (llama family).
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// Gated feed-forward: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    activation: Activation,
}

impl Mlp {
    pub(crate) fn new(
        gguf: &Gguf,
        prefix: &str,
        activation: Activation,
        device: &Device,
    ) -> Result<Self> {
        let w = |name: &str| gguf.qmatmul(&format!("{prefix}.{name}.weight"), device);
        Ok(Self {
            gate: w("ffn_gate")?,
            up: w("ffn_up")?,
            down: w("ffn_down")?,
            activation,
        })
    }

    pub(crate) fn from_weights(
        gate: QMatMul,
        up: QMatMul,
        down: QMatMul,
        activation: Activation,
    ) -> Self {
        Self {
            gate,
            up,
            down,
            activation,
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate.forward(xs)?;
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        let up = self.up.forward(xs)?;
        Ok(self.down.forward(&(gate * up)?)?)
    }
}

/// A dense or a sparse (mixture-of-experts) feed-forward.
#[derive(Debug)]
pub(crate) enum FeedForward {
    Dense(Mlp),
    Moe(SparseMoe),
}

impl FeedForward {
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(mlp) => mlp.forward(xs),
            Self::Moe(moe) => moe.forward(xs),
        }
    }

    /// Token rows each expert has computed since load; `None` when dense.
    pub(crate) fn expert_rows(&self) -> Option<Vec<u64>> {
        match self {
            Self::Dense(_) => None,
            Self::Moe(moe) => Some(moe.expert_rows()),
        }
    }
}

#[derive(Debug)]
struct DecoderLayer {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: FeedForward,
}

/// A llama-family model: weights only; the KV cache is passed in.
pub struct Model {
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    output: QMatMul,
    rope: RotaryEmbedding,
    config: Config,
    info: ModelInfo,
    device: Device,
}

impl Model {
    /// Loads weights from a llama-architecture GGUF.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        let cfg = Config::from_gguf(gguf)?;
        let embed_q = gguf.tensor("token_embd.weight", device)?;
        let embed = Embedding::new(embed_q.dequantize(device)?, cfg.hidden_size);
        // Tied embeddings: small models reuse the embedding table as output.
        let output = if gguf.has_tensor("output.weight") {
            gguf.tensor("output.weight", device)?
        } else {
            embed_q
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let prefix = format!("blk.{i}");
            layers.push(DecoderLayer {
                attn_norm: RmsNorm::in_block(gguf, &prefix, "attn_norm", cfg.rms_norm_eps, device)?,
                attn: Attention::new(gguf, &prefix, &cfg, device)?,
                ffn_norm: RmsNorm::in_block(gguf, &prefix, "ffn_norm", cfg.rms_norm_eps, device)?,
                mlp: if cfg.num_local_experts > 1 {
                    // Mixtral renormalises the top-k weights.
                    FeedForward::Moe(SparseMoe::new(
                        gguf,
                        &prefix,
                        cfg.num_local_experts,
                        cfg.num_experts_per_tok,
                        true,
                        device,
                    )?)
                } else {
                    FeedForward::Dense(Mlp::new(gguf, &prefix, Activation::Silu, device)?)
                },
            });
        }
        let total = gguf.parameter_count();
        let embedding = (cfg.vocab_size * cfg.hidden_size) as u64;
        // One embedding row is read per token; count the output head when tied.
        let active = if gguf.has_tensor("output.weight") {
            total - embedding
        } else {
            total
        };
        // Experts a token is not routed to are resident but not used.
        let idle = cfg
            .num_local_experts
            .saturating_sub(cfg.num_experts_per_tok) as u64
            * SparseMoe::expert_parameters(cfg.hidden_size, cfg.intermediate_size)
            * cfg.num_hidden_layers as u64;
        let active = active - idle;
        let info = ModelInfo {
            architecture: "llama".into(),
            block_count: cfg.num_hidden_layers,
            embedding_length: cfg.hidden_size,
            context_length: cfg.max_position_embeddings,
            vocab_size: cfg.vocab_size,
            total_parameters: total,
            active_parameters: active + cfg.hidden_size as u64,
        };
        Ok(Self {
            embed,
            layers,
            norm: RmsNorm::new(gguf, "output_norm.weight", cfg.rms_norm_eps, device)?,
            output: QMatMul::from_qtensor(output)?,
            rope: RotaryEmbedding::new(
                cfg.head_dim,
                cfg.rope_theta,
                cfg.max_position_embeddings,
                device,
            )?,
            config: cfg,
            info,
            device: device.clone(),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Token rows each expert of each layer has computed since load (empty
    /// for a dense model).
    pub(crate) fn expert_rows(&self) -> Vec<Vec<u64>> {
        self.layers
            .iter()
            .filter_map(|l| l.mlp.expert_rows())
            .collect()
    }

    /// Logits `(vocab,)` for the last of `tokens`, run after `cache`'s positions.
    pub(crate) fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let seq = tokens.len();
        let offset = cache.len();
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mask = if seq > 1 {
            KeyMask::causal(offset)
        } else {
            KeyMask::All
        };
        let mut xs = self.embed.forward(&input)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h =
                layer
                    .attn
                    .forward(&layer.attn_norm.forward(&xs)?, &self.rope, mask, i, cache)?;
            xs = (xs + h)?;
            let h = layer.mlp.forward(&layer.ffn_norm.forward(&xs)?)?;
            xs = (xs + h)?;
        }
        let last = xs.narrow(1, seq - 1, 1)?;
        let logits = self.output.forward(&self.norm.forward(&last)?)?;
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }
}
