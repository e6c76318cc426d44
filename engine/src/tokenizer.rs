//! The tokenizer, built from the GGUF's own metadata (`tokenizer.ggml.*`) into a
//! Hugging Face `tokenizers::Tokenizer`, so a model file is self-contained:
//! gpt2-style byte-level BPE (SmolLM2, Llama 3, Qwen), SentencePiece-style
//! BPE with byte fallback (Gemma 1-3, Llama 2), and Gemma 4's BPE over raw
//! UTF-8 with stored merges and `<0xXX>` byte fallback.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{Prepend, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The gpt2 pre-tokenizer regex, used by `smollm` (after splitting digits) and `gpt2`.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regex (`llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2/3's pre-tokenizer regex (`qwen2`).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token names that end a turn for the chat families showdown knows, beyond EOS.
/// Gemma 4 ends a turn with `<turn|>` and hands over to the caller's tools at
/// `<|tool_response>` (llama.cpp's end-of-generation list, `llama-vocab.cpp`).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<turn|>",
    "<|tool_response>",
];

/// Gemma 4's pre-tokenizer: runs of newlines apart from everything else, so
/// BPE runs over whole lines (spaces are `▁` by then, so words merge across).
const GEMMA4_REGEX: &str = r"[^\n]+|[\n]+";

/// A tokenizer plus the special tokens generation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    stop_tokens: Vec<u32>,
    vocab_size: usize,
    bos_text: Option<String>,
    eos_text: Option<String>,
}

fn string_array(gguf: &Gguf, key: &str) -> Result<Vec<String>> {
    gguf.array(key)?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(EngineError::Metadata(format!(
                "`{key}` should hold strings"
            ))),
        })
        .collect()
}

fn i32_array(gguf: &Gguf, key: &str) -> Result<Vec<i32>> {
    gguf.array(key)?
        .iter()
        .map(|v| {
            v.to_i32()
                .map_err(|e| EngineError::Metadata(format!("`{key}`: {e}")))
        })
        .collect()
}

fn f32_array(gguf: &Gguf, key: &str) -> Result<Vec<f32>> {
    gguf.array(key)?
        .iter()
        .map(|v| {
            v.to_f32()
                .map_err(|e| EngineError::Metadata(format!("`{key}`: {e}")))
        })
        .collect()
}

/// `tokenizer.ggml.merges`, each `LEFT RIGHT` split at the first space after
/// the first character (a left piece may itself be a space: llama.cpp searches
/// from byte 1, which is the same, a space being one byte).
fn merges(gguf: &Gguf) -> Result<Vec<(String, String)>> {
    string_array(gguf, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            let split = m.char_indices().skip(1).find(|&(_, c)| c == ' ');
            split
                .map(|(at, _)| (m[..at].to_string(), m[at + 1..].to_string()))
                .ok_or_else(|| EngineError::Tokenizer(format!("bad merge `{m}`")))
        })
        .collect()
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn split_regex(pattern: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    Ok(split.into())
}

/// Decodes `▁` pieces and `<0xXX>` byte tokens back to text.
fn sentencepiece_decoder() -> Result<DecoderSequence> {
    let decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    Ok(DecoderSequence::new(decoders))
}

/// The pre-tokenizer named by `tokenizer.ggml.pre`, as llama.cpp defines it.
fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex| PreTokenizerWrapper::from(ByteLevel::new(false, false, use_regex));
    Ok(match pre {
        "gpt2" | "default" => byte_level(true),
        "smollm" | "starcoder" | "refact" => PreSequence::new(vec![
            split_regex(r"\p{N}")?,
            split_regex(GPT2_REGEX)?,
            byte_level(false),
        ])
        .into(),
        "llama-bpe" | "llama3" => {
            PreSequence::new(vec![split_regex(LLAMA3_REGEX)?, byte_level(false)]).into()
        }
        "qwen2" => PreSequence::new(vec![split_regex(QWEN2_REGEX)?, byte_level(false)]).into(),
        other => {
            return Err(EngineError::Tokenizer(format!(
                "unsupported pre-tokenizer `{other}` (supported: gpt2, smollm, llama-bpe, qwen2)"
            )))
        }
    })
}

/// SentencePiece stores scores, not merges: derive BPE merges from every way a
/// piece splits into two pieces, ranked by the merged piece's score (higher
/// first), which is the order SentencePiece's BPE applies them.
fn merges_from_scores(tokens: &[String], scores: &[f32], types: &[i32]) -> Vec<(String, String)> {
    let vocab: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] != 1 || piece.chars().count() < 2 {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push((scores[id], id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer described by the GGUF's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let model = gguf.string("tokenizer.ggml.model")?.to_string();
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let types = match gguf.get("tokenizer.ggml.token_type") {
            Some(_) => i32_array(gguf, "tokenizer.ggml.token_type")?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(EngineError::Tokenizer(
                "token_type and tokens differ in length".into(),
            ));
        }
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bos = gguf.u32("tokenizer.ggml.bos_token_id").ok();
        let eos = gguf.u32("tokenizer.ggml.eos_token_id").ok();
        let unk = gguf
            .u32("tokenizer.ggml.unknown_token_id")
            .ok()
            .and_then(|id| tokens.get(id as usize).cloned());

        let mut inner = match model.as_str() {
            "gpt2" => {
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges(gguf)?)
                    .build()
                    .map_err(tok_err)?;
                let pre = gguf.string("tokenizer.ggml.pre").unwrap_or("gpt2");
                let mut t = tokenizers::Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
                t.with_decoder(Some(ByteLevelDecoder::default()));
                t
            }
            "llama" => {
                let scores = f32_array(gguf, "tokenizer.ggml.scores")?;
                if scores.len() != tokens.len() {
                    return Err(EngineError::Tokenizer(
                        "scores and tokens differ in length".into(),
                    ));
                }
                let merges = merges_from_scores(&tokens, &scores, &types);
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                if let Some(unk) = unk {
                    builder = builder.unk_token(unk);
                }
                let bpe = builder.build().map_err(tok_err)?;
                let add_space_prefix = gguf.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
                if add_space_prefix {
                    normalizers.push(Prepend::new("▁".into()).into());
                }
                normalizers.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
                let mut t = tokenizers::Tokenizer::new(bpe);
                t.with_normalizer(Some(NormalizerSequence::new(normalizers)));
                t.with_decoder(Some(sentencepiece_decoder()?));
                t
            }
            "gemma4" => {
                // llama.cpp's `gemma4` tokenizer: spaces become `▁` (no space
                // prefix), the text splits into lines and newline runs, merges
                // apply by rank over raw UTF-8 characters, and what no token
                // covers falls back to `<0xXX>` byte tokens.
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges(gguf)?)
                    .byte_fallback(true);
                if let Some(unk) = unk {
                    builder = builder.unk_token(unk);
                }
                let bpe = builder.build().map_err(tok_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                t.with_normalizer(Some(Replace::new(" ", "▁").map_err(tok_err)?));
                t.with_pre_tokenizer(Some(split_regex(GEMMA4_REGEX)?));
                t.with_decoder(Some(sentencepiece_decoder()?));
                t
            }
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "unsupported tokenizer model `{other}` (supported: gpt2, llama, gemma4)"
                )))
            }
        };

        // Control and user-defined tokens are matched whole in rendered prompts,
        // as llama.cpp does when it tokenizes a chat-templated prompt.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TOKEN_TYPE_CONTROL))
            .collect();
        inner.add_special_tokens(&added);

        let mut stop_tokens: Vec<u32> = eos.into_iter().collect();
        if let Ok(eot) = gguf.u32("tokenizer.ggml.eot_token_id") {
            stop_tokens.push(eot);
        }
        for name in END_OF_TURN_TOKENS {
            if let Some(id) = tokens.iter().position(|t| t == name) {
                stop_tokens.push(id as u32);
            }
        }
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        // llama.cpp forces BOS on for Gemma 4 whatever the file says.
        let add_bos = model == "gemma4"
            || gguf
                .bool("tokenizer.ggml.add_bos_token")
                .unwrap_or(model == "llama");

        let text = |id: Option<u32>| id.and_then(|id| tokens.get(id as usize).cloned());
        Ok(Self {
            inner,
            bos,
            add_bos,
            stop_tokens,
            vocab_size: tokens.len(),
            bos_text: text(bos),
            eos_text: text(eos),
        })
    }

    /// Token ids of `text`, with special tokens written in the text (`<|im_start|>`)
    /// matched as such, and BOS prepended when the model asks for it and the text
    /// does not already start with it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = encoding.get_ids().to_vec();
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The raw piece for a token id (the tokenizer's own table holds the
    /// pieces; no second copy of a 262k vocabulary is kept here).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The BOS token's text, for chat templates.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_text.as_deref()
    }

    /// The EOS token's text, for chat templates.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_text.as_deref()
    }

    /// Tokens that end generation: EOS and the family's end-of-turn tokens.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The underlying Hugging Face tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns a stream of token ids into text increments that never split a UTF-8
/// character: bytes of a partial character are held back until it completes.
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    emitted: usize,
}

impl<'a> IncrementalDecoder<'a> {
    /// A decoder with no tokens yet.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            emitted: 0,
        }
    }

    /// Adds a token; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        // Decode a short window (from a few tokens back) so the cost stays
        // constant per token while byte-level merges across tokens still work.
        let window = &self.ids[self.prefix_offset..];
        let text = self.tokenizer.decode(window)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let new = text[self.emitted.min(text.len())..].to_string();
        if self.ids.len() - self.prefix_offset > 8 {
            // Slide the window: everything decoded so far is final.
            self.prefix_offset = self.ids.len();
            self.emitted = 0;
        } else {
            self.emitted = text.len();
        }
        Ok((!new.is_empty()).then_some(new))
    }

    /// Flushes whatever is held back (an incomplete character at the end).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        let new = text
            .get(self.emitted.min(text.len())..)
            .unwrap_or("")
            .to_string();
        self.prefix_offset = self.ids.len();
        self.emitted = 0;
        Ok((!new.is_empty()).then_some(new))
    }
}
