//! showdown's inference engine: loads a pinned GGUF model, owns the forward
//! pass and the KV cache, renders chat templates and samples. No HTTP and no
//! database live here; the `showdown` crate builds the service on top.
//!
//! Brief overview:
//! - [`Engine`] loads a model file ([`Gguf`]) with its [`Tokenizer`] and
//!   [`ChatTemplate`], and generates over a caller-owned [`KvCache`], which can
//!   be truncated to any prefix, forked and kept between requests.
//! - [`Model`] dispatches to one file per architecture under `models/`.
//! - [`Sampler`] is greedy or seeded temperature / top-k / top-p.
#![deny(missing_docs)]

mod chat_template;
mod engine;
mod error;
mod gguf;
pub mod kernels;
mod kv_cache;
mod memory;
pub mod models;
pub mod moe_split;
mod sampler;
mod stop;
mod tokenizer;

pub use candle_core::Device;
pub use chat_template::{
    named_template, python_json, ChatTemplate, ChatTemplateInput, GEMMA_TEMPLATE,
};
pub use engine::{
    CancelToken, Engine, GenerateParams, Generation, LoadOptions, LoadReport, StopReason,
    TemplateChoice, Timings, TokenConstraint, PREFILL_CHUNK,
};
pub use error::{EngineError, Result};
pub use gguf::Gguf;
pub use kernels::Kernels;
pub use kv_cache::{KvCache, KvCacheType};
pub use memory::ResidentMemory;
pub use models::{Model, ModelInfo};
pub use sampler::{argmax, Sampler, SamplingParams};
pub use stop::{StopCheck, StopMatcher};
pub use tokenizer::{IncrementalDecoder, Tokenizer};

/// Version of the engine crate, recorded with every run.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The device chosen by the build's features: Metal or CUDA when compiled in
/// and available, else CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "metal")]
    if let Ok(d) = Device::new_metal(0) {
        return d;
    }
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}
