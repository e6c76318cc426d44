//! The engine: a loaded model with its tokenizer and chat template, and
//! generation over a caller-owned [`KvCache`] — prefix reuse, chunked prefill,
//! sampling, stop sequences, streaming text increments, cancellation and timings.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::Serialize;

use crate::chat_template::{named_template, ChatTemplate, ChatTemplateInput};
use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kernels::Kernels;
use crate::kv_cache::{KvCache, KvCacheType};
use crate::memory::ResidentMemory;
use crate::models::{Model, ModelInfo};
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Prompt tokens run per forward pass during prefill: bounds the attention
/// matrix's memory and lets cancellation land between chunks.
pub const PREFILL_CHUNK: usize = 512;

/// Where the chat template comes from.
#[derive(Debug, Clone, Default)]
pub enum TemplateChoice {
    /// `tokenizer.chat_template` from the GGUF.
    #[default]
    Embedded,
    /// A template shipped with showdown, by name (e.g. `gemma`).
    Named(String),
    /// Template source given by the caller.
    Source(String),
}

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Device for the weights; CPU when `None`.
    pub device: Option<Device>,
    /// Chat template choice.
    pub template: TemplateChoice,
    /// Context length to serve; the model's own when `None` (never more).
    pub context_length: Option<usize>,
    /// Whose matmul kernels a CPU model runs.
    pub kernels: Kernels,
    /// What the engine's CPU attention keeps keys and values in.
    pub kv_cache: KvCacheType,
}

/// What loading cost.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Wall time to parse, read and prepare the weights.
    pub load_ms: f64,
    /// File size in bytes.
    pub file_bytes: u64,
    /// Resident memory after loading.
    pub memory: Option<ResidentMemory>,
}

/// A cancellation flag another thread can raise.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks generation to stop at the next token.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One generation request over already-tokenized input.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Text sequences that end generation (not included in the output).
    pub stop_sequences: Vec<String>,
    /// Prompt positions (tokens before each) at which a hybrid model's
    /// cache keeps a snapshot of its recurrent state, so a later prompt
    /// sharing only that prefix resumes there: the request's
    /// `cache_control` breakpoints. The end of the prompt always gets one.
    pub snapshot_at: Vec<usize>,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "sequence", rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn (EOS or an end-of-turn token).
    EndOfTurn,
    /// `max_tokens` reached.
    MaxTokens,
    /// A stop sequence matched.
    StopSequence(String),
    /// Cancelled from another thread.
    Cancelled,
    /// The context window is full.
    ContextFull,
}

/// Timings of one generation, in the names showdown reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused from the cache.
    pub cached_tokens: usize,
    /// Time spent running the uncached prompt tokens.
    pub prefill_ms: f64,
    /// Time from the start of the call to the first generated token.
    pub ttft_ms: f64,
    /// Tokens generated (including a final end-of-turn token).
    pub generated_tokens: usize,
    /// Time spent generating after the first token.
    pub decode_ms: f64,
}

impl Timings {
    /// Uncached prompt tokens per second of prefill.
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens - self.cached_tokens, self.prefill_ms)
    }
    /// Tokens per second after the first one.
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn rate(tokens: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        tokens as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Restricts which tokens may come next: the hook grammar-constrained
/// decoding (tool-call arguments under a JSON schema) plugs into.
pub trait TokenConstraint {
    /// Sets the logits of tokens not allowed next to negative infinity.
    /// `logits` may be longer than the tokenizer's vocabulary.
    fn mask(&mut self, logits: &mut [f32]) -> Result<()>;
    /// Records the token sampled; returns `true` when nothing more may follow,
    /// which ends generation as an end of turn.
    fn accept(&mut self, token: u32) -> Result<bool>;
}

/// The result of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The generated text, stop sequence excluded.
    pub text: String,
    /// Generated token ids (the end-of-turn token included if one ended it).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Timings.
    pub timings: Timings,
}

/// A loaded model, ready to generate.
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    context_length: usize,
    kv_cache: KvCacheType,
    load_report: LoadReport,
}

impl Engine {
    /// Loads a GGUF file: weights, tokenizer and chat template.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let device = options.device.clone().unwrap_or(Device::Cpu);
        let mut gguf = Gguf::open(path)?;
        gguf.use_kernels(options.kernels);
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        gguf.drop_tokenizer_arrays();
        crate::memory::return_freed_memory();
        let template_source = match &options.template {
            TemplateChoice::Embedded => gguf
                .string("tokenizer.chat_template")
                .ok()
                .map(str::to_string),
            TemplateChoice::Named(name) => Some(
                named_template(name)
                    .ok_or_else(|| {
                        EngineError::ChatTemplate(format!("no template named `{name}`"))
                    })?
                    .to_string(),
            ),
            TemplateChoice::Source(src) => Some(src.clone()),
        };
        let template = template_source
            .as_deref()
            .map(ChatTemplate::new)
            .transpose()?;
        let model = Model::from_gguf(&gguf, &device)?;
        let file_bytes = gguf.file_size();
        drop(gguf);
        crate::memory::return_freed_memory();
        let native = model.info().context_length;
        let context_length = options.context_length.map_or(native, |c| c.min(native));
        let load_report = LoadReport {
            load_ms: ms(start.elapsed()),
            file_bytes,
            memory: ResidentMemory::read(),
        };
        Ok(Self {
            model,
            tokenizer,
            template,
            context_length,
            kv_cache: options.kv_cache,
            load_report,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    /// The context length served.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// What loading cost.
    pub fn load_report(&self) -> &LoadReport {
        &self.load_report
    }

    /// The chat template, when the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        self.model
            .new_cache(self.context_length)
            .with_row_type(self.kv_cache)
    }

    /// Renders a conversation with the chat template.
    pub fn render_chat(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.template.as_ref().ok_or_else(|| {
            EngineError::ChatTemplate(
                "the model has no chat template; name one in the models file".into(),
            )
        })?;
        template.render(&ChatTemplateInput {
            messages,
            tools,
            add_generation_prompt,
            enable_thinking: false,
            bos_token: self.tokenizer.bos_token().unwrap_or(""),
            eos_token: self.tokenizer.eos_token().unwrap_or(""),
        })
    }

    /// Tokenizes a rendered prompt and checks it fits the context.
    pub fn tokenize_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let tokens = self.tokenizer.encode(prompt)?;
        if tokens.len() >= self.context_length {
            return Err(EngineError::PromptTooLong {
                tokens: tokens.len(),
                max: self.context_length,
            });
        }
        Ok(tokens)
    }

    /// Runs `prompt` after whatever prefix of it `cache` already holds (the
    /// rest of the cache is dropped) and returns the last token's logits.
    pub fn prefill(
        &self,
        cache: &mut KvCache,
        prompt: &[u32],
        cancel: &CancelToken,
    ) -> Result<Option<Vec<f32>>> {
        self.prefill_with_snapshots(cache, prompt, &[], cancel)
    }

    /// [`Engine::prefill`], keeping a hybrid model's recurrent state at each
    /// of `snapshot_at` and just before the last prompt token (a turn
    /// boundary: a request repeating this prompt, or branching anywhere
    /// after it, resumes there with the last token still to run for its
    /// logits).
    pub fn prefill_with_snapshots(
        &self,
        cache: &mut KvCache,
        prompt: &[u32],
        snapshot_at: &[usize],
        cancel: &CancelToken,
    ) -> Result<Option<Vec<f32>>> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("empty prompt".into()));
        }
        // Keep at least the last prompt token to run: its logits start
        // decoding. A hybrid cache may resume earlier than the common prefix
        // (at its latest snapshot within it).
        let reuse = cache.common_prefix_len(&prompt[..prompt.len() - 1]);
        cache.truncate(reuse);
        let reuse = cache.len();
        let mut stops: Vec<usize> = Vec::new();
        if self.model.has_recurrent_layers() {
            stops.extend(
                snapshot_at
                    .iter()
                    .copied()
                    .filter(|&p| p > reuse && p < prompt.len()),
            );
            stops.push(prompt.len() - 1);
        }
        stops.push(prompt.len());
        stops.sort_unstable();
        stops.dedup();
        let mut logits = None;
        let mut at = reuse;
        for stop in stops {
            if stop == at && stop < prompt.len() {
                cache.snapshot();
                continue;
            }
            for chunk in prompt[at..stop].chunks(PREFILL_CHUNK) {
                if cancel.is_cancelled() {
                    return Ok(None);
                }
                logits = Some(self.model.forward(chunk, cache)?);
            }
            at = stop;
            if stop < prompt.len() {
                cache.snapshot();
            }
        }
        let logits = logits.expect("at least one token to run");
        Ok(Some(logits.to_vec1::<f32>()?))
    }

    /// Generates after `prompt`, reusing `cache`'s common prefix with it and
    /// leaving the cache holding prompt and output, so the next turn's prompt
    /// shares the longest possible prefix. `on_text` receives text increments.
    pub fn generate(
        &self,
        cache: &mut KvCache,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.generate_constrained(cache, prompt, params, None, cancel, on_text)
    }

    /// [`Engine::generate`] with an optional [`TokenConstraint`] applied to
    /// every sampled token.
    pub fn generate_constrained(
        &self,
        cache: &mut KvCache,
        prompt: &[u32],
        params: &GenerateParams,
        mut constraint: Option<&mut dyn TokenConstraint>,
        cancel: &CancelToken,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let start = Instant::now();
        if prompt.len() >= self.context_length {
            return Err(EngineError::PromptTooLong {
                tokens: prompt.len(),
                max: self.context_length,
            });
        }
        let mut sampler = Sampler::new(params.sampling)?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("empty prompt".into()));
        }
        let cached_tokens = cache.common_prefix_len(&prompt[..prompt.len() - 1]);
        let mut timings = Timings {
            prompt_tokens: prompt.len(),
            cached_tokens,
            ..Timings::default()
        };
        let finish = |text, tokens, stop_reason, timings| Generation {
            text,
            tokens,
            stop_reason,
            timings,
        };
        let Some(mut logits) =
            self.prefill_with_snapshots(cache, prompt, &params.snapshot_at, cancel)?
        else {
            timings.prefill_ms = ms(start.elapsed());
            return Ok(finish(
                String::new(),
                vec![],
                StopReason::Cancelled,
                timings,
            ));
        };
        timings.prefill_ms = ms(start.elapsed());

        let mut decoder = IncrementalDecoder::new(&self.tokenizer);
        let mut stops = StopMatcher::new(&params.stop_sequences);
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut first_token_at = None;
        let mut emit = |piece: &str, text: &mut String| {
            if !piece.is_empty() {
                text.push_str(piece);
                on_text(piece);
            }
        };
        let stop_reason = loop {
            if tokens.len() >= params.max_tokens {
                break StopReason::MaxTokens;
            }
            if cancel.is_cancelled() {
                break StopReason::Cancelled;
            }
            if let Some(constraint) = constraint.as_deref_mut() {
                constraint.mask(&mut logits)?;
            }
            let token = sampler.sample(&logits)?;
            tokens.push(token);
            let constraint_done = match constraint.as_deref_mut() {
                Some(constraint) => constraint.accept(token)?,
                None => false,
            };
            if first_token_at.is_none() {
                first_token_at = Some(Instant::now());
                timings.ttft_ms = ms(start.elapsed());
            }
            if self.tokenizer.stop_tokens().contains(&token) {
                break StopReason::EndOfTurn;
            }
            if let Some(piece) = decoder.push(token)? {
                let check = stops.push(&piece);
                emit(&check.emit, &mut text);
                if let Some(stop) = check.matched {
                    break StopReason::StopSequence(stop);
                }
            }
            if constraint_done {
                break StopReason::EndOfTurn;
            }
            if tokens.len() >= params.max_tokens {
                break StopReason::MaxTokens;
            }
            if cache.len() + 1 > self.context_length {
                break StopReason::ContextFull;
            }
            logits = self.model.forward(&[token], cache)?.to_vec1::<f32>()?;
        };
        if !matches!(stop_reason, StopReason::StopSequence(_)) {
            if let Some(rest) = decoder.finish()? {
                let check = stops.push(&rest);
                emit(&check.emit, &mut text);
            }
            let rest = stops.finish();
            emit(&rest, &mut text);
        }
        timings.generated_tokens = tokens.len();
        if let Some(first) = first_token_at {
            timings.decode_ms = ms(first.elapsed());
        }
        Ok(finish(text, tokens, stop_reason, timings))
    }
}
