//! Model architectures, one file each, behind one [`Model`] type the engine
//! drives. Every architecture reads its config from GGUF metadata, appends to
//! the engine's [`KvCache`], and returns logits for the last position.

mod attention;
pub(crate) mod decoder;
pub mod gemma3;
pub mod gemma4;
pub(crate) mod layers;
pub mod llama;
mod moe;
pub mod qwen3;
pub mod qwen35;
pub(crate) mod rows;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kv_cache::KvCache;

/// Architectures the engine can load, by `general.architecture`.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "gemma3",
    "gemma4",
    "qwen2",
    "qwen3",
    "qwen3moe",
    "qwen35",
    "qwen35moe",
];

/// Facts about a loaded model, for reports and the models page.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// `general.architecture`.
    pub architecture: String,
    /// Transformer blocks.
    pub block_count: usize,
    /// Hidden size.
    pub embedding_length: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Parameters in the file.
    pub total_parameters: u64,
    /// Parameters used for one token (equal to total for dense models, less
    /// the experts not routed to for MoE models, and the embedding table, of
    /// which one row is read).
    pub active_parameters: u64,
}

/// Parameters one token uses in a file of `total`: the row of the embedding
/// table it reads (besides the whole table when that is also the output
/// head), and no routed expert it is not routed to (`experts - top_k` idle
/// per layer, each of `expert_parameters`). Everything else, a shared
/// expert included, runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn active_parameters(
    total: u64,
    tied: bool,
    vocab: usize,
    hidden: usize,
    layers: usize,
    experts: usize,
    top_k: usize,
    expert_parameters: u64,
) -> u64 {
    let embedding = (vocab * hidden) as u64;
    let active = if tied { total } else { total - embedding };
    let idle = experts.saturating_sub(top_k) as u64 * expert_parameters * layers as u64;
    active - idle + hidden as u64
}

/// A loaded model of any supported architecture.
pub enum Model {
    /// Llama family (SmolLM2, Llama 2/3, Mistral).
    Llama(llama::Model),
    /// Gemma 3.
    Gemma3(gemma3::Model),
    /// Gemma 4, dense or MoE, with or without per-layer embeddings.
    Gemma4(gemma4::Model),
    /// Qwen 2 / 2.5 and Qwen 3, dense or MoE.
    Qwen3(qwen3::Model),
    /// Qwen 3.5 / 3.6, the Gated DeltaNet hybrid, dense or MoE.
    Qwen35(qwen35::Model),
}

impl Model {
    /// Loads the architecture named in the file's metadata.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        match gguf.architecture() {
            "llama" => Ok(Self::Llama(llama::Model::from_gguf(gguf, device)?)),
            "gemma3" => Ok(Self::Gemma3(gemma3::Model::from_gguf(gguf, device)?)),
            "gemma4" => Ok(Self::Gemma4(gemma4::Model::from_gguf(gguf, device)?)),
            "qwen2" | "qwen3" | "qwen3moe" => {
                Ok(Self::Qwen3(qwen3::Model::from_gguf(gguf, device)?))
            }
            "qwen35" | "qwen35moe" => Ok(Self::Qwen35(qwen35::Model::from_gguf(gguf, device)?)),
            other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// Runs `tokens` after the positions held in `cache`, appends their keys
    /// and values, and returns the logits of the last token, shape `(vocab,)`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest("no tokens to run".into()));
        }
        if cache.len() + tokens.len() > cache.max_len() {
            return Err(EngineError::PromptTooLong {
                tokens: cache.len() + tokens.len(),
                max: cache.max_len(),
            });
        }
        let logits = match self {
            Self::Llama(m) => m.forward(tokens, cache)?,
            Self::Gemma3(m) => m.forward(tokens, cache)?,
            Self::Gemma4(m) => m.forward(tokens, cache)?,
            Self::Qwen3(m) => m.forward(tokens, cache)?,
            Self::Qwen35(m) => match m.forward(tokens, cache) {
                Ok(logits) => logits,
                Err(err) => {
                    // The recurrent state has absorbed part of `tokens`:
                    // it no longer matches the held positions.
                    cache.clear();
                    return Err(err);
                }
            },
        };
        cache.commit(tokens);
        Ok(logits)
    }

    /// Whether the forward pass runs fused on plain rows on the CPU
    /// ([`decoder`]) rather than as candle tensor operations.
    pub fn runs_fused(&self) -> bool {
        match self {
            Self::Llama(m) => m.decoder().runs_fused(),
            Self::Gemma3(m) => m.decoder().runs_fused(),
            Self::Gemma4(m) => m.runs_fused(),
            Self::Qwen3(m) => m.decoder().runs_fused(),
            Self::Qwen35(m) => m.runs_fused(),
        }
    }

    /// Whether the model keeps recurrent state (a hybrid such as Qwen 3.5),
    /// whose cache resumes only from held positions and snapshots.
    pub fn has_recurrent_layers(&self) -> bool {
        matches!(self, Self::Qwen35(_))
    }

    /// An empty cache sized for this model and `context_length` positions.
    pub fn new_cache(&self, context_length: usize) -> KvCache {
        KvCache::new(self.info().block_count, context_length)
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        match self {
            Self::Llama(m) => m.info(),
            Self::Gemma3(m) => m.info(),
            Self::Gemma4(m) => m.info(),
            Self::Qwen3(m) => m.info(),
            Self::Qwen35(m) => m.info(),
        }
    }

    /// Token rows each expert of each MoE layer has computed since load,
    /// `[layer][expert]`; empty for dense models. Experts no token routed to
    /// are never run, so their counts stay put.
    pub fn expert_rows(&self) -> Vec<Vec<u64>> {
        match self {
            Self::Llama(m) => m.expert_rows(),
            Self::Gemma3(_) => Vec::new(),
            Self::Gemma4(m) => m.expert_rows(),
            Self::Qwen3(m) => m.expert_rows(),
            Self::Qwen35(m) => m.expert_rows(),
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        match self {
            Self::Llama(m) => m.device(),
            Self::Gemma3(m) => m.device(),
            Self::Gemma4(m) => m.device(),
            Self::Qwen3(m) => m.device(),
            Self::Qwen35(m) => m.device(),
        }
    }
}
