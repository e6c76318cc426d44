//! The pre-norm decoder every architecture here is made of: blocks of
//! attention and feed-forward, each after an RMSNorm and optionally followed
//! by one (Gemma's sandwich norms), over residual rows, then the final norm
//! and the output head on the last position.
//!
//! Two paths compute the same thing. On the CPU with every weight packed,
//! [`Decoder::forward`] runs on plain rows: the hidden state is one buffer
//! the layers add into, norms, rope and bias adds are loops over it, and
//! every matmul and the attention run on the engine's kernels and its one
//! pool, so a decode step makes no tensor and starts no second thread pool.
//! Elsewhere (Metal, CUDA, candle's kernels) each step is a candle tensor
//! operation. Each row step does what the tensor operation does, in the same
//! order, so both paths give the same bits (`tests/engine.rs` checks it).

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::models::layers::{Embeddings, FeedForward, Linear, RmsNorm, RopeTables, SelfAttention};

/// One decoder block.
#[derive(Debug)]
pub(crate) struct DecoderBlock {
    pub attn_norm: RmsNorm,
    pub attn: SelfAttention,
    /// Applied to the attention output before the residual add (Gemma).
    pub post_attn_norm: Option<RmsNorm>,
    pub ffn_norm: RmsNorm,
    pub mlp: FeedForward,
    /// Applied to the feed-forward output before the residual add (Gemma).
    pub post_ffn_norm: Option<RmsNorm>,
}

impl DecoderBlock {
    fn runs_on_rows(&self) -> bool {
        self.attn.runs_on_rows() && self.mlp.runs_on_rows()
    }

    fn forward(
        &self,
        xs: Tensor,
        rope: &RopeTables,
        layer: usize,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let mut h = self
            .attn
            .forward(&self.attn_norm.forward(&xs)?, rope, layer, cache)?;
        if let Some(norm) = &self.post_attn_norm {
            h = norm.forward(&h)?;
        }
        let xs = (xs + h)?;
        let mut h = self.mlp.forward(&self.ffn_norm.forward(&xs)?)?;
        if let Some(norm) = &self.post_ffn_norm {
            h = norm.forward(&h)?;
        }
        Ok((xs + h)?)
    }

    /// The block on `seq` residual rows `xs`, in place; `normed` and `h` are
    /// scratch of the same size.
    #[allow(clippy::too_many_arguments)]
    fn forward_rows(
        &self,
        xs: &mut [f32],
        seq: usize,
        rope: &RopeTables,
        layer: usize,
        cache: &mut KvCache,
        normed: &mut [f32],
        h: &mut [f32],
    ) -> Result<()> {
        self.attn_norm.rows(xs, normed);
        self.attn.forward_rows(normed, seq, rope, layer, cache, h)?;
        add_rows(xs, h, self.post_attn_norm.as_ref());
        self.ffn_norm.rows(xs, normed);
        self.mlp.forward_rows(normed, seq, h);
        add_rows(xs, h, self.post_ffn_norm.as_ref());
        Ok(())
    }
}

/// `xs += norm(h)` (or `xs += h`).
fn add_rows(xs: &mut [f32], h: &mut [f32], norm: Option<&RmsNorm>) {
    if let Some(norm) = norm {
        norm.rows_in_place(h);
    }
    for (x, y) in xs.iter_mut().zip(h.iter()) {
        *x += y;
    }
}

/// Embeddings, blocks, final norm and output head.
pub(crate) struct Decoder {
    pub embed: Embeddings,
    /// Multiplies the embedding rows (Gemma: `sqrt(hidden)`).
    pub embed_scale: Option<f32>,
    pub blocks: Vec<DecoderBlock>,
    pub norm: RmsNorm,
    pub output: Linear,
    /// Whether [`Decoder::forward`] runs on rows (see the module docs).
    rows: bool,
}

impl Decoder {
    /// A decoder that runs on rows when `fused` (the CPU with the engine's
    /// kernels) and every part allows it.
    pub(crate) fn new(
        embed: Embeddings,
        embed_scale: Option<f32>,
        blocks: Vec<DecoderBlock>,
        norm: RmsNorm,
        output: Linear,
        fused: bool,
    ) -> Self {
        let rows = fused
            && matches!(embed, Embeddings::Packed(_))
            && matches!(output, Linear::Packed(_))
            && blocks.iter().all(DecoderBlock::runs_on_rows);
        Self {
            embed,
            embed_scale,
            blocks,
            norm,
            output,
            rows,
        }
    }

    /// Whether [`Decoder::forward`] runs on rows.
    pub(crate) fn runs_fused(&self) -> bool {
        self.rows
    }

    /// Logits `(vocab,)` for the last of `tokens`, run after `cache`'s
    /// positions; block `i` rotates by `rope(i)`.
    pub(crate) fn forward<'r>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rope: impl Fn(usize) -> &'r RopeTables,
        device: &Device,
    ) -> Result<Tensor> {
        if self.rows {
            return self.forward_rows(tokens, cache, rope, device);
        }
        let seq = tokens.len();
        let mut xs = self.embed.forward(tokens, device)?;
        if let Some(scale) = self.embed_scale {
            xs = (xs * scale as f64)?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            xs = block.forward(xs, rope(i), i, cache)?;
        }
        let last = xs.narrow(1, seq - 1, 1)?;
        let logits = self.output.forward(&self.norm.forward(&last)?)?;
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }

    fn forward_rows<'r>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rope: impl Fn(usize) -> &'r RopeTables,
        device: &Device,
    ) -> Result<Tensor> {
        let seq = tokens.len();
        let mut xs = self.embed.rows(tokens)?.expect("a packed table");
        if let Some(scale) = self.embed_scale {
            for x in &mut xs {
                *x *= scale;
            }
        }
        let hidden = xs.len() / seq;
        let mut normed = vec![0f32; xs.len()];
        let mut h = vec![0f32; xs.len()];
        for (i, block) in self.blocks.iter().enumerate() {
            block.forward_rows(&mut xs, seq, rope(i), i, cache, &mut normed, &mut h)?;
        }
        let last = &xs[(seq - 1) * hidden..];
        let mut normed_last = vec![0f32; hidden];
        self.norm.rows(last, &mut normed_last);
        let Linear::Packed(output) = &self.output else {
            unreachable!("checked in Decoder::new");
        };
        let mut logits = vec![0f32; output.n()];
        output.matmul(&normed_last, 1, &mut logits);
        Ok(Tensor::from_vec(logits, output.n(), device)?)
    }
}
