//! Llama family (Llama 2/3, SmolLM2, Mistral) in GGUF layout: pre-norm
//! decoder blocks with RMSNorm, grouped-query attention with interleaved
//! rotary embeddings (GGUF permutes q/k for it), and a SwiGLU feed-forward.
//! With `llama.expert_count` > 1 the feed-forward is a mixtral-style sparse
//! mixture of experts ([`crate::models::moe`]).
//! Reference: llama.cpp `llm_build_llama`, candle-transformers `quantized_llama`.

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
    fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            n_head: self.num_attention_heads,
            n_kv_head: self.num_key_value_heads,
            head_dim: self.head_dim,
            rope: RopeStyle::Interleaved,
            window: None,
            rms_norm_eps: self.rms_norm_eps,
        }
    }

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
            Err(_) => gguf.vocab_size()?,
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

/// A llama-family model: weights only; the KV cache is passed in.
pub struct Model {
    decoder: Decoder,
    rope: RotaryEmbedding,
    config: Config,
    info: ModelInfo,
    device: Device,
}

impl Model {
    /// Loads weights from a llama-architecture GGUF.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        let cfg = Config::from_gguf(gguf)?;
        // Tied embeddings: small models reuse the embedding table as output.
        let (embed, output, _) = Embeddings::with_output(gguf, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let prefix = format!("blk.{i}");
            layers.push(DecoderBlock {
                attn_norm: RmsNorm::in_block(gguf, &prefix, "attn_norm", cfg.rms_norm_eps, device)?,
                attn: SelfAttention::new(gguf, &prefix, cfg.attention_shape(), device)?,
                post_attn_norm: None,
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
                post_ffn_norm: None,
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

    /// Token rows each expert of each layer has computed since load (empty
    /// for a dense model).
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
