//! Qwen 2 / 2.5 (`qwen2`) and Qwen 3 in GGUF layout, dense (`qwen3`) and
//! mixture-of-experts (`qwen3moe`, the layout of Qwen3-30B-A3B and its
//! successors): pre-norm blocks with RMSNorm, grouped-query attention with
//! half-split ("NeoX") rotary embeddings — Qwen 2 with biases on the q/k/v
//! projections, Qwen 3 with per-head q/k RMSNorm instead (the shared
//! attention block reads which from the file's tensors) — and a SwiGLU
//! feed-forward —
//! dense, or a sparse MoE whose router takes a softmax over all experts, keeps
//! the top `expert_used_count` and renormalises their weights (llama.cpp
//! always renormalises for `qwen3moe`, as Qwen3-MoE's `norm_topk_prob` says).
//! References: llama.cpp `llm_build_qwen2` / `llm_build_qwen3` /
//! `llm_build_qwen3moe`, candle-transformers `quantized_qwen2` /
//! `quantized_qwen3`.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gguf::Gguf;
use crate::kv_cache::KvCache;
use crate::models::decoder::{Decoder, DecoderBlock};
use crate::models::layers::{
    Activation, AttentionShape, Embeddings, FeedForward, Mlp, RmsNorm, RopeStyle, RotaryEmbedding,
    SelfAttention,
};
use crate::models::moe::SparseMoe;
use crate::models::ModelInfo;

/// Hyperparameters, named as in the Hugging Face config, read from GGUF metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Hidden size.
    pub hidden_size: usize,
    /// Feed-forward inner size of the dense model (unused by MoE layers).
    pub intermediate_size: usize,
    /// Inner size of one expert; 0 for a dense model.
    pub moe_intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Per-head size (Qwen 3 sets it apart from hidden / heads; Qwen 2 does not).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f32,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Experts per layer; 0 for a dense model.
    pub num_experts: usize,
    /// Experts each token is routed to; 0 when dense.
    pub num_experts_per_tok: usize,
}

impl Config {
    /// Reads `qwen2.*`, `qwen3.*` or `qwen3moe.*` metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let hidden_size = gguf.arch_u32("embedding_length")? as usize;
        let num_attention_heads = gguf.arch_u32("attention.head_count")? as usize;
        let num_experts = gguf.arch_u32("expert_count").unwrap_or(0) as usize;
        Ok(Self {
            hidden_size,
            intermediate_size: gguf.arch_u32("feed_forward_length").unwrap_or(0) as usize,
            moe_intermediate_size: if num_experts > 0 {
                gguf.arch_u32("expert_feed_forward_length")? as usize
            } else {
                0
            },
            num_hidden_layers: gguf.arch_u32("block_count")? as usize,
            num_attention_heads,
            num_key_value_heads: gguf
                .arch_u32("attention.head_count_kv")
                .map(|n| n as usize)
                .unwrap_or(num_attention_heads),
            head_dim: gguf
                .arch_u32("attention.key_length")
                .map(|d| d as usize)
                .unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: gguf.arch_f32("attention.layer_norm_rms_epsilon")? as f64,
            rope_theta: gguf.arch_f32("rope.freq_base").unwrap_or(1_000_000.0),
            max_position_embeddings: gguf.arch_u32("context_length")? as usize,
            vocab_size: gguf.vocab_size()?,
            num_experts,
            num_experts_per_tok: gguf.arch_u32("expert_used_count").unwrap_or(0) as usize,
        })
    }
}

/// A Qwen 2 or Qwen 3 model, dense or MoE: weights only; the KV cache is passed in.
pub struct Model {
    decoder: Decoder,
    rope: RotaryEmbedding,
    config: Config,
    info: ModelInfo,
    device: Device,
}

impl Model {
    /// Loads weights from a `qwen2`, `qwen3` or `qwen3moe` GGUF.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        let cfg = Config::from_gguf(gguf)?;
        let (embed, output, tied) = Embeddings::with_output(gguf, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let prefix = format!("blk.{i}");
            let norm =
                |name: &str| RmsNorm::in_block(gguf, &prefix, name, cfg.rms_norm_eps, device);
            layers.push(DecoderBlock {
                attn_norm: norm("attn_norm")?,
                attn: SelfAttention::new(
                    gguf,
                    &prefix,
                    AttentionShape {
                        n_head: cfg.num_attention_heads,
                        n_kv_head: cfg.num_key_value_heads,
                        head_dim: cfg.head_dim,
                        rope: RopeStyle::Neox,
                        window: None,
                        rms_norm_eps: cfg.rms_norm_eps,
                    },
                    device,
                )?,
                post_attn_norm: None,
                ffn_norm: norm("ffn_norm")?,
                mlp: if cfg.num_experts > 0 {
                    FeedForward::Moe(SparseMoe::new(
                        gguf,
                        &prefix,
                        cfg.num_experts,
                        cfg.num_experts_per_tok,
                        true,
                        device,
                    )?)
                } else {
                    FeedForward::Dense(Mlp::new(gguf, &prefix, Activation::Silu, device)?)
                },
                post_ffn_norm: None,
            });
        }
        let total = gguf.parameter_count();
        let active = crate::models::active_parameters(
            total,
            tied,
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_experts,
            cfg.num_experts_per_tok,
            SparseMoe::expert_parameters(cfg.hidden_size, cfg.moe_intermediate_size),
        );
        let info = ModelInfo {
            architecture: gguf.architecture().to_string(),
            block_count: cfg.num_hidden_layers,
            embedding_length: cfg.hidden_size,
            context_length: cfg.max_position_embeddings,
            vocab_size: cfg.vocab_size,
            total_parameters: total,
            active_parameters: active,
        };
        let norm = RmsNorm::new(gguf, "output_norm.weight", cfg.rms_norm_eps, device)?;
        Ok(Self {
            decoder: Decoder::new(embed, None, layers, norm, output, gguf.fused_on(device)),
            rope: RotaryEmbedding::new(cfg.head_dim, cfg.rope_theta),
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

    pub(crate) fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Token rows each expert of each MoE layer has computed since load.
    pub(crate) fn expert_rows(&self) -> Vec<Vec<u64>> {
        self.decoder
            .blocks
            .iter()
            .filter_map(|l| l.mlp.expert_rows())
            .collect()
    }

    /// Logits `(vocab,)` for the last of `tokens`, run after `cache`'s positions.
    pub(crate) fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let rope = self.rope.tables(cache.len(), tokens.len(), &self.device)?;
        self.decoder.forward(tokens, cache, |_| &rope, &self.device)
    }
}
