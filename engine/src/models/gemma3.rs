//! Gemma 3 in GGUF layout: sliding-window local layers interleaved with global
//! layers (every `sliding_window_pattern`-th layer is global), q/k RMSNorm,
//! half-split rotary embeddings with a separate base for local layers,
//! sandwich norms around attention and feed-forward, a GELU (tanh) gated
//! feed-forward, and embeddings scaled by sqrt(hidden).
//! References: llama.cpp `llm_build_gemma3_iswa`, Hugging Face `Gemma3TextModel`.
//!
//! Norm weights are used as stored: the GGUF conversion already folds in
//! Gemma's `1 + weight`.

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
use crate::models::ModelInfo;

/// Rotary base of the local (sliding-window) layers, fixed by Gemma 3.
const LOCAL_ROPE_THETA: f32 = 10_000.0;
/// One global layer every this many layers, unless the file says otherwise.
const DEFAULT_SLIDING_WINDOW_PATTERN: usize = 6;

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
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base of global layers.
    pub rope_theta: f32,
    /// Rotary base of local layers.
    pub rope_local_base_freq: f32,
    /// Keys a local layer's query sees, itself included.
    pub sliding_window: usize,
    /// One global layer every this many.
    pub sliding_window_pattern: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
}

impl Config {
    /// Reads `gemma3.*` metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let hidden_size = gguf.arch_u32("embedding_length")? as usize;
        let num_attention_heads = gguf.arch_u32("attention.head_count")? as usize;
        Ok(Self {
            hidden_size,
            intermediate_size: gguf.arch_u32("feed_forward_length")? as usize,
            num_hidden_layers: gguf.arch_u32("block_count")? as usize,
            num_attention_heads,
            num_key_value_heads: gguf.arch_u32("attention.head_count_kv")? as usize,
            head_dim: gguf
                .arch_u32("attention.key_length")
                .map(|d| d as usize)
                .unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: gguf.arch_f32("attention.layer_norm_rms_epsilon")? as f64,
            rope_theta: gguf.arch_f32("rope.freq_base").unwrap_or(1_000_000.0),
            rope_local_base_freq: LOCAL_ROPE_THETA,
            sliding_window: gguf.arch_u32("attention.sliding_window")? as usize,
            sliding_window_pattern: gguf
                .arch_u32("attention.sliding_window_pattern")
                .map(|p| p as usize)
                .unwrap_or(DEFAULT_SLIDING_WINDOW_PATTERN),
            max_position_embeddings: gguf.arch_u32("context_length")? as usize,
            vocab_size: gguf.vocab_size()?,
        })
    }

    /// Whether layer `i` attends through a sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(self.sliding_window_pattern)
    }
}

/// A Gemma 3 model: weights only; the KV cache is passed in.
pub struct Model {
    decoder: Decoder,
    /// Whether each block attends within the sliding window (local rope).
    sliding: Vec<bool>,
    rope_global: RotaryEmbedding,
    rope_local: RotaryEmbedding,
    config: Config,
    info: ModelInfo,
    device: Device,
}

impl Model {
    /// Loads weights from a gemma3-architecture GGUF.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        let cfg = Config::from_gguf(gguf)?;
        // Rows are dequantized on lookup: a 262k-token table stays quantized
        // (170 MB as Q8_0 instead of 670 MB as f32) and is the output head
        // itself when the embeddings are tied.
        let (embed, output, _) = Embeddings::with_output(gguf, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let prefix = format!("blk.{i}");
            let norm =
                |name: &str| RmsNorm::in_block(gguf, &prefix, name, cfg.rms_norm_eps, device);
            let sliding = cfg.is_sliding(i);
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
                        window: sliding.then_some(cfg.sliding_window),
                        rms_norm_eps: cfg.rms_norm_eps,
                    },
                    device,
                )?,
                post_attn_norm: Some(norm("post_attention_norm")?),
                ffn_norm: norm("ffn_norm")?,
                mlp: FeedForward::Dense(Mlp::new(gguf, &prefix, Activation::GeluTanh, device)?),
                post_ffn_norm: Some(norm("post_ffw_norm")?),
            });
        }
        let total = gguf.parameter_count();
        let info = ModelInfo {
            architecture: "gemma3".into(),
            block_count: cfg.num_hidden_layers,
            embedding_length: cfg.hidden_size,
            context_length: cfg.max_position_embeddings,
            vocab_size: cfg.vocab_size,
            total_parameters: total,
            // Tied embeddings: the table is read in full as the output head.
            active_parameters: total + cfg.hidden_size as u64,
        };
        let rope = |theta| RotaryEmbedding::new(cfg.head_dim, theta);
        let norm = RmsNorm::new(gguf, "output_norm.weight", cfg.rms_norm_eps, device)?;
        let embed_scale = (cfg.hidden_size as f64).sqrt() as f32;
        let decoder = Decoder::new(
            embed,
            Some(embed_scale),
            layers,
            norm,
            output,
            gguf.fused_on(device),
        );
        Ok(Self {
            decoder,
            sliding: (0..cfg.num_hidden_layers)
                .map(|i| cfg.is_sliding(i))
                .collect(),
            rope_global: rope(cfg.rope_theta),
            rope_local: rope(cfg.rope_local_base_freq),
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

    /// Logits `(vocab,)` for the last of `tokens`, run after `cache`'s positions.
    pub(crate) fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let global = self
            .rope_global
            .tables(cache.len(), tokens.len(), &self.device)?;
        let local = self
            .rope_local
            .tables(cache.len(), tokens.len(), &self.device)?;
        let rope = |i: usize| if self.sliding[i] { &local } else { &global };
        self.decoder.forward(tokens, cache, rope, &self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_layer_is_global() {
        let cfg = Config {
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 12,
            num_attention_heads: 1,
            num_key_value_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            rope_local_base_freq: 1e4,
            sliding_window: 4,
            sliding_window_pattern: 6,
            max_position_embeddings: 16,
            vocab_size: 4,
        };
        let global: Vec<usize> = (0..12).filter(|&i| !cfg.is_sliding(i)).collect();
        assert_eq!(global, vec![5, 11]);
    }
}
