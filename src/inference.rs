//! Loading a resolved, hash-checked model into the engine, and the figures a
//! user sees after a generation (`showdown generate`) in DESIGN.md's names.

use anyhow::{Context, Result};
use serde::Serialize;
use showdown_engine::{Engine, Generation, LoadOptions, ResidentMemory, TemplateChoice};

use crate::models::{ChatTemplate, ResolvedModel};

/// Loads `model` with the template and context its models-file entry names.
pub fn load_engine(model: &ResolvedModel, context_length: Option<usize>) -> Result<Engine> {
    let template = match &model.chat_template {
        None | Some(ChatTemplate::Embedded) => TemplateChoice::Embedded,
        Some(ChatTemplate::Named(name)) => TemplateChoice::Named(name.clone()),
    };
    let context_length = context_length.or(model.context_length.map(|c| c as usize));
    let options = LoadOptions {
        device: Some(showdown_engine::default_device()),
        template,
        context_length,
        ..LoadOptions::default()
    };
    Engine::load(&model.path, &options)
        .with_context(|| format!("loading model {} ({})", model.name, model.path.display()))
}

/// What one generation cost, as `showdown generate` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationReport {
    /// Model name.
    pub model: String,
    /// sha256 of the model file.
    pub sha256: String,
    /// Time to load the model.
    pub load_ms: f64,
    /// Prompt tokens.
    pub input_tokens: usize,
    /// Generated tokens.
    pub output_tokens: usize,
    /// Time to first token.
    pub ttft_ms: f64,
    /// Uncached prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Tokens per second after the first.
    pub decode_tok_s: f64,
    /// Peak resident memory of the process.
    pub peak_rss_bytes: Option<u64>,
    /// Why generation ended.
    pub stop_reason: showdown_engine::StopReason,
}

impl GenerationReport {
    /// Collects the figures of `generation` on `engine`.
    pub fn new(model: &ResolvedModel, engine: &Engine, generation: &Generation) -> Self {
        let t = &generation.timings;
        Self {
            model: model.name.clone(),
            sha256: model.sha256.clone(),
            load_ms: engine.load_report().load_ms,
            input_tokens: t.prompt_tokens,
            output_tokens: t.generated_tokens,
            ttft_ms: t.ttft_ms,
            prefill_tok_s: t.prefill_tok_s(),
            decode_tok_s: t.decode_tok_s(),
            peak_rss_bytes: ResidentMemory::read().map(|m| m.peak_bytes),
            stop_reason: generation.stop_reason.clone(),
        }
    }
}

/// Bytes as MiB with one decimal, for people.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
