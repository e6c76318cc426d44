//! Layers every architecture shares: projections ([`Linear`]), token
//! embeddings, RMSNorm, rotary embeddings, self-attention over the KV cache
//! and the gated feed-forward.
//!
//! A projection on the CPU runs the engine's own kernels over weights
//! repacked at load ([`crate::kernels`]); on Metal or CUDA, or for a weight
//! format without kernels, it runs candle's `QMatMul`, so the device builds
//! keep working through candle's backends.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Module, Shape, Tensor};

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kernels::{self, PackedMatrix};
use crate::kv_cache::{KvCache, KvRows};
use crate::models::attention::{attention, KeyMask};
use crate::models::moe::SparseMoe;

/// A weight matrix `y = x · Wᵀ`.
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    /// The engine's kernels (CPU).
    Packed(Arc<PackedMatrix>),
    /// candle's quantized matmul (other devices, other formats), with the
    /// factor its outputs are multiplied by, as in
    /// [`PackedMatrix::set_output_scale`].
    Candle {
        matmul: QMatMul,
        output_scale: Option<f32>,
    },
}

impl Linear {
    /// The weight `name`, packed for the CPU when the kernels handle it,
    /// with its output scale when the file has one (`NAME.scale`, NVFP4's
    /// second, per-tensor scale, which llama.cpp applies to any projection).
    pub(crate) fn load(gguf: &Gguf, name: &str, device: &Device) -> Result<Self> {
        let scale = gguf.output_scales(name, 1)?.map(|s| s[0]);
        Self::load_scaled(gguf, name, scale, device)
    }

    /// The weight `name` with an explicit output scale (none: the file's
    /// `NAME.scale`, if any, means something else to the architecture).
    pub(crate) fn load_scaled(
        gguf: &Gguf,
        name: &str,
        output_scale: Option<f32>,
        device: &Device,
    ) -> Result<Self> {
        if let Some(mut packed) = gguf.packed(name, device)? {
            if let Some(s) = output_scale {
                packed.set_output_scale(s);
            }
            return Ok(Self::Packed(Arc::new(packed)));
        }
        Ok(Self::Candle {
            matmul: QMatMul::from_qtensor(gguf.tensor(name, device)?)?,
            output_scale,
        })
    }

    /// `{prefix}.{name}.weight`.
    pub(crate) fn in_block(gguf: &Gguf, prefix: &str, name: &str, device: &Device) -> Result<Self> {
        Self::load(gguf, &format!("{prefix}.{name}.weight"), device)
    }

    /// `(…, k)` → `(…, n)`.
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Packed(w) => Ok(xs.contiguous()?.apply_op1_no_bwd(&PackedOp(w.as_ref()))?),
            Self::Candle {
                matmul,
                output_scale,
            } => {
                let ys = matmul.forward(xs)?;
                Ok(match output_scale {
                    Some(s) => (ys * *s as f64)?,
                    None => ys,
                })
            }
        }
    }
}

/// The packed matmul as a candle op, so it composes with tensors.
struct PackedOp<'a>(&'a PackedMatrix);

impl CustomOp1 for PackedOp<'_> {
    fn name(&self) -> &'static str {
        "showdown-packed-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = self.0;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("packed matmul expects f32 input");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed matmul expects a contiguous input");
        };
        let dims = layout.dims();
        if dims.last() != Some(&w.k()) {
            candle_core::bail!("packed matmul: input {dims:?} does not end in {}", w.k());
        }
        let m = (end - start) / w.k();
        let mut out = vec![0f32; m * w.n()];
        w.matmul(&data[start..end], m, &mut out);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank ≥ 1") = w.n();
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// A token embedding table, rows dequantized on lookup so the table stays
/// quantized (and, when the output head is tied to it, is the head's packed
/// matrix itself).
#[derive(Debug, Clone)]
pub(crate) enum Embeddings {
    /// Rows read out of a packed matrix.
    Packed(Arc<PackedMatrix>),
    /// candle's quantized tensor (other devices, other formats).
    Candle(QMatMul),
}

impl Embeddings {
    /// `token_embd.weight` and the output head: `output.weight`, or the
    /// table itself when the file ties them (returned as `true`). Rows are
    /// dequantized on lookup, so the table stays quantized and a tied head
    /// is the same packed matrix.
    pub(crate) fn with_output(gguf: &Gguf, device: &Device) -> Result<(Self, Linear, bool)> {
        let table = Linear::load(gguf, "token_embd.weight", device)?;
        let embed = Self::from_linear(&table);
        let tied = !gguf.has_tensor("output.weight");
        let output = if tied {
            table
        } else {
            Linear::load(gguf, "output.weight", device)?
        };
        Ok((embed, output, tied))
    }

    /// `token_embd.weight`, sharing `output` when it is the same matrix.
    pub(crate) fn from_linear(table: &Linear) -> Self {
        match table {
            Linear::Packed(w) => Self::Packed(w.clone()),
            Linear::Candle { matmul, .. } => Self::Candle(matmul.clone()),
        }
    }

    /// The rows of `tokens`, `seq × hidden`, when the table is packed.
    pub(crate) fn rows(&self, tokens: &[u32]) -> Result<Option<Vec<f32>>> {
        let Self::Packed(w) = self else {
            return Ok(None);
        };
        let hidden = w.k();
        let mut values = vec![0f32; tokens.len() * hidden];
        for (row, &token) in values.chunks_exact_mut(hidden).zip(tokens) {
            if token as usize >= w.n() {
                return Err(EngineError::InvalidRequest(format!(
                    "token id {token} is outside the vocabulary of {}",
                    w.n()
                )));
            }
            w.dequantize_column(token as usize, row);
        }
        Ok(Some(values))
    }

    /// `(1, seq)` token ids → `(1, seq, hidden)`.
    pub(crate) fn forward(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Packed(w) => {
                let values = self.rows(tokens)?.expect("a packed table");
                Ok(Tensor::from_vec(values, (1, tokens.len(), w.k()), device)?)
            }
            Self::Candle(w) => {
                let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
                Ok(w.embedding(&input)?)
            }
        }
    }
}

/// RMSNorm with a dequantized weight.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    /// The weight's values, for the CPU rows path.
    values: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(gguf: &Gguf, name: &str, eps: f64, device: &Device) -> Result<Self> {
        let weight = gguf.tensor(name, device)?.dequantize(device)?;
        let values = weight.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            weight,
            values,
            eps: eps as f32,
        })
    }

    /// Rows of `x` normalised into `out`.
    pub(crate) fn rows(&self, x: &[f32], out: &mut [f32]) {
        kernels::elementwise::rms_norm(x, &self.values, self.eps, out);
    }

    /// Rows of `x` normalised in place.
    pub(crate) fn rows_in_place(&self, x: &mut [f32]) {
        kernels::elementwise::rms_norm_in_place(x, &self.values, self.eps);
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

/// Rotary embeddings: the inverse frequencies, and per forward the cos/sin
/// tables of just the positions it runs ([`RotaryEmbedding::tables`]), so
/// memory does not grow with the context the model allows. Each angle is
/// one f32 product `position · inv_freq`, so a table row is the same
/// whichever forward computes it.
#[derive(Debug, Clone)]
pub(crate) struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

/// cos/sin tables `(seq, head_dim / 2)` for one forward's positions, as
/// tensors and as rows.
#[derive(Debug, Clone)]
pub(crate) struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    cos_rows: Vec<f32>,
    sin_rows: Vec<f32>,
    half: usize,
}

impl RotaryEmbedding {
    pub(crate) fn new(head_dim: usize, theta: f32) -> Self {
        let inv_freq = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
    }

    /// Rotary embeddings with these inverse frequencies, one per pair
    /// (a zero leaves its pair unrotated).
    pub(crate) fn from_inv_freq(inv_freq: Vec<f32>) -> Self {
        Self { inv_freq }
    }

    /// Tables for positions `offset .. offset + seq`.
    pub(crate) fn tables(&self, offset: usize, seq: usize, device: &Device) -> Result<RopeTables> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for position in offset..offset + seq {
            for &f in &self.inv_freq {
                let angle = position as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(RopeTables {
            cos: Tensor::from_vec(cos.clone(), (seq, half), device)?,
            sin: Tensor::from_vec(sin.clone(), (seq, half), device)?,
            cos_rows: cos,
            sin_rows: sin,
            half,
        })
    }
}

impl RopeTables {
    /// Rotates token-major rows `x` (`seq` tokens of whole heads) in place,
    /// token `t` by the table's row `t`.
    pub(crate) fn rotate_rows(&self, x: &mut [f32], seq: usize, style: RopeStyle) {
        let h = self.half;
        for (t, row) in x.chunks_exact_mut(x.len() / seq).enumerate() {
            kernels::elementwise::rope(
                row,
                &self.cos_rows[t * h..(t + 1) * h],
                &self.sin_rows[t * h..(t + 1) * h],
                style == RopeStyle::Interleaved,
            );
        }
    }

    /// Rotates the first `2 · half` values of every `head_dim`-wide head of
    /// token-major rows `x` as NeoX pairs (`i`, `i + half`), leaving the rest
    /// of each head as it is (partial rotary embeddings).
    pub(crate) fn rotate_rows_partial(&self, x: &mut [f32], seq: usize, head_dim: usize) {
        let h = self.half;
        for (t, row) in x.chunks_exact_mut(x.len() / seq).enumerate() {
            for head in row.chunks_exact_mut(head_dim) {
                kernels::elementwise::rope(
                    &mut head[..2 * h],
                    &self.cos_rows[t * h..(t + 1) * h],
                    &self.sin_rows[t * h..(t + 1) * h],
                    false,
                );
            }
        }
    }

    /// Half-split ("NeoX") rotation (pairs `i`, `i + d/2`) of `(b, heads, seq, head_dim)`.
    pub(crate) fn apply_neox(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::rotary_emb::rope(
            &xs.contiguous()?,
            &self.cos,
            &self.sin,
        )?)
    }

    /// Interleaved rotation (pairs `2i`, `2i+1`) of `(b, heads, seq, head_dim)`.
    pub(crate) fn apply_interleaved(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::rotary_emb::rope_i(
            &xs.contiguous()?,
            &self.cos,
            &self.sin,
        )?)
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
    gate: Linear,
    up: Linear,
    down: Linear,
    activation: Activation,
}

impl Mlp {
    pub(crate) fn new(
        gguf: &Gguf,
        prefix: &str,
        activation: Activation,
        device: &Device,
    ) -> Result<Self> {
        let w = |name: &str| Linear::in_block(gguf, prefix, name, device);
        Ok(Self {
            gate: w("ffn_gate")?,
            up: w("ffn_up")?,
            down: w("ffn_down")?,
            activation,
        })
    }

    pub(crate) fn from_weights(
        gate: Linear,
        up: Linear,
        down: Linear,
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
        if let (Some((_, _, down)), true) = (self.packed(), xs.device().is_cpu()) {
            let dims = xs.dims().to_vec();
            let k = *dims.last().expect("rank ≥ 1");
            let rows = xs.elem_count() / k;
            let hidden = down.n();
            let mut out = vec![0f32; rows * hidden];
            with_cpu_slice(&xs.contiguous()?, |x| {
                self.forward_rows(x, rows, &mut out);
                Ok(())
            })?;
            let mut shape = dims;
            *shape.last_mut().expect("rank ≥ 1") = hidden;
            return Ok(Tensor::from_vec(out, shape, xs.device())?);
        }
        let gate = self.gate.forward(xs)?;
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        let up = self.up.forward(xs)?;
        self.down.forward(&(gate * up)?)
    }

    /// The three projections when all run the engine's kernels.
    pub(crate) fn packed(&self) -> Option<(&PackedMatrix, &PackedMatrix, &PackedMatrix)> {
        match (&self.gate, &self.up, &self.down) {
            (Linear::Packed(g), Linear::Packed(u), Linear::Packed(d)) => Some((g, u, d)),
            _ => None,
        }
    }

    /// `rows` rows of `x` (row-major) through the feed-forward into `out`,
    /// on the engine's kernels. Requires [`Mlp::packed`].
    pub(crate) fn forward_rows(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let (gate, up, down) = self.packed().expect("packed projections");
        let mut g = vec![0f32; rows * gate.n()];
        let mut u = vec![0f32; rows * up.n()];
        PackedMatrix::matmul_shared(&mut [(gate, &mut g), (up, &mut u)], x, rows);
        match self.activation {
            Activation::Silu => kernels::elementwise::silu_mul(&mut g, &u),
            Activation::GeluTanh => kernels::elementwise::gelu_tanh_mul(&mut g, &u),
        }
        down.matmul(&g, rows, out);
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

    /// Whether [`FeedForward::forward_rows`] can run it.
    pub(crate) fn runs_on_rows(&self) -> bool {
        match self {
            Self::Dense(mlp) => mlp.packed().is_some(),
            Self::Moe(moe) => moe.runs_on_rows(),
        }
    }

    /// `rows` rows of `x` through the feed-forward into `out`, on the
    /// engine's kernels.
    pub(crate) fn forward_rows(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        match self {
            Self::Dense(mlp) => mlp.forward_rows(x, rows, out),
            Self::Moe(moe) => {
                out.fill(0.0);
                moe.forward_rows_packed(x, rows, out);
            }
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

/// How a model rotates query and key pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopeStyle {
    /// Pairs `2i`, `2i + 1` (llama: GGUF permutes q/k rows for it).
    Interleaved,
    /// Pairs `i`, `i + d/2` (NeoX: Qwen, Gemma).
    Neox,
}

/// What distinguishes one architecture's attention block from another's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope: RopeStyle,
    /// Sliding window of the layer, if any.
    pub window: Option<usize>,
    /// RMSNorm epsilon of per-head q/k norms, when the file has them.
    pub rms_norm_eps: f64,
}

/// Grouped-query self-attention over the engine's KV cache: projections
/// (with biases when the file has `attn_{q,k,v}.bias`), per-head q/k RMSNorm
/// when it has `attn_{q,k}_norm`, rotary embeddings, an optional sliding
/// window, and the output projection. Shared by every architecture.
#[derive(Debug, Clone)]
pub(crate) struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_bias: Option<Bias>,
    k_bias: Option<Bias>,
    v_bias: Option<Bias>,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    shape: AttentionShape,
    /// Attention by the engine's kernel (CPU), else by candle's operations.
    engine_kernels: bool,
}

impl SelfAttention {
    /// Block `prefix`'s attention tensors.
    pub(crate) fn new(
        gguf: &Gguf,
        prefix: &str,
        shape: AttentionShape,
        device: &Device,
    ) -> Result<Self> {
        let w = |name: &str| Linear::in_block(gguf, prefix, name, device);
        let bias = |name: &str| -> Result<Option<Bias>> {
            let name = format!("{prefix}.{name}.bias");
            if !gguf.has_tensor(&name) {
                return Ok(None);
            }
            let tensor = gguf.tensor(&name, device)?.dequantize(device)?;
            let values = tensor.flatten_all()?.to_vec1::<f32>()?;
            Ok(Some(Bias { tensor, values }))
        };
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            if !gguf.has_tensor(&format!("{prefix}.{name}.weight")) {
                return Ok(None);
            }
            Ok(Some(RmsNorm::in_block(
                gguf,
                prefix,
                name,
                shape.rms_norm_eps,
                device,
            )?))
        };
        Ok(Self {
            q: w("attn_q")?,
            k: w("attn_k")?,
            v: w("attn_v")?,
            o: w("attn_output")?,
            q_bias: bias("attn_q")?,
            k_bias: bias("attn_k")?,
            v_bias: bias("attn_v")?,
            q_norm: norm("attn_q_norm")?,
            k_norm: norm("attn_k_norm")?,
            shape,
            engine_kernels: gguf.engine_kernels_on(device) && shape.head_dim.is_multiple_of(8),
        })
    }

    /// `(1, seq, hidden)` after the cache's positions → `(1, seq, hidden)`;
    /// appends this layer's keys and values to `cache`.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        rope: &RopeTables,
        layer: usize,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let s = &self.shape;
        let (b, seq, _) = xs.dims3()?;
        let offset = cache.len();
        let project = |w: &Linear, bias: &Option<Bias>, n: usize| -> Result<Tensor> {
            let mut t = w.forward(xs)?;
            if let Some(bias) = bias {
                t = t.broadcast_add(&bias.tensor)?;
            }
            Ok(t.reshape((b, seq, n, s.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut q = project(&self.q, &self.q_bias, s.n_head)?;
        let mut k = project(&self.k, &self.k_bias, s.n_kv_head)?;
        let v = project(&self.v, &self.v_bias, s.n_kv_head)?;
        if let Some(norm) = &self.q_norm {
            q = norm.forward(&q)?;
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(&k)?;
        }
        let (q, k) = match s.rope {
            RopeStyle::Interleaved => (rope.apply_interleaved(&q)?, rope.apply_interleaved(&k)?),
            RopeStyle::Neox => (rope.apply_neox(&q)?, rope.apply_neox(&k)?),
        };
        if self.engine_kernels {
            let y = self.cpu_attention(&q, &k, &v, cache, layer, offset, seq)?;
            return self.o.forward(&y);
        }
        let (k, v) = cache.append(layer, &k, &v)?;
        let kv_len = offset + seq;
        let y = match s.window {
            // One query: keep only the keys inside its window, no mask needed.
            Some(w) if seq == 1 && kv_len > w => attention(
                &q,
                &k.narrow(2, kv_len - w, w)?,
                &v.narrow(2, kv_len - w, w)?,
                KeyMask::All,
            )?,
            _ if seq == 1 => attention(&q, &k, &v, KeyMask::All)?,
            window => attention(&q, &k, &v, KeyMask::Causal { offset, window })?,
        };
        let y = y
            .transpose(1, 2)?
            .reshape((b, seq, s.n_head * s.head_dim))?;
        self.o.forward(&y)
    }

    /// Whether [`SelfAttention::forward_rows`] can run it.
    pub(crate) fn runs_on_rows(&self) -> bool {
        self.engine_kernels && self.packed().is_some()
    }

    fn packed(&self) -> Option<[&PackedMatrix; 4]> {
        match (&self.q, &self.k, &self.v, &self.o) {
            (Linear::Packed(q), Linear::Packed(k), Linear::Packed(v), Linear::Packed(o)) => {
                Some([q, k, v, o])
            }
            _ => None,
        }
    }

    /// The same as [`SelfAttention::forward`] on plain rows: `x` is `seq`
    /// normalised token rows, `out` gets the attention block's output rows.
    /// Each step is the tensor path's arithmetic, so both give the same bits.
    pub(crate) fn forward_rows(
        &self,
        x: &[f32],
        seq: usize,
        rope: &RopeTables,
        layer: usize,
        cache: &mut KvCache,
        out: &mut [f32],
    ) -> Result<()> {
        let s = &self.shape;
        let d = s.head_dim;
        let [wq, wk, wv, wo] = self
            .packed()
            .ok_or_else(|| EngineError::InvalidRequest("attention is not packed".into()))?;
        let mut q = vec![0f32; seq * s.n_head * d];
        let mut k = vec![0f32; seq * s.n_kv_head * d];
        let mut v = vec![0f32; seq * s.n_kv_head * d];
        PackedMatrix::matmul_shared(&mut [(wq, &mut q), (wk, &mut k), (wv, &mut v)], x, seq);
        for (rows, bias) in [
            (&mut q, &self.q_bias),
            (&mut k, &self.k_bias),
            (&mut v, &self.v_bias),
        ] {
            if let Some(bias) = bias {
                for row in rows.chunks_exact_mut(bias.values.len()) {
                    for (x, b) in row.iter_mut().zip(&bias.values) {
                        *x += b;
                    }
                }
            }
        }
        if let Some(norm) = &self.q_norm {
            norm.rows_in_place(&mut q);
        }
        if let Some(norm) = &self.k_norm {
            norm.rows_in_place(&mut k);
        }
        rope.rotate_rows(&mut q, seq, s.rope);
        rope.rotate_rows(&mut k, seq, s.rope);
        // The kernels take heads outermost; one token's rows already are.
        let (q, k, v) = if seq == 1 {
            (q, k, v)
        } else {
            (
                heads_outermost(&q, seq, s.n_head, d),
                heads_outermost(&k, seq, s.n_kv_head, d),
                heads_outermost(&v, seq, s.n_kv_head, d),
            )
        };
        let shape = kernels::attention::AttentionShape {
            n_head: s.n_head,
            n_kv: s.n_kv_head,
            head_dim: d,
            seq,
            offset: cache.len(),
            window: s.window,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let mut y = vec![0f32; s.n_head * seq * d];
        let pool = kernels::pool::pool();
        match cache.append_rows(layer, &k, &v, s.n_kv_head, d)? {
            KvRows::F16(kv) => kernels::attention::attention(&shape, &q, kv, &mut y, pool),
            KvRows::F32(kv) => kernels::attention::attention(&shape, &q, kv, &mut y, pool),
        }
        wo.matmul(&y, seq, out);
        Ok(())
    }

    /// Appends `k`, `v` (`(1, n_kv_head, seq, d)`) to the f16 rows of `layer`
    /// and runs the engine's attention kernel over them: `q` is `(1, n_head,
    /// seq, d)`, the result `(1, seq, n_head · d)`.
    #[allow(clippy::too_many_arguments)]
    fn cpu_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut KvCache,
        layer: usize,
        offset: usize,
        seq: usize,
    ) -> Result<Tensor> {
        let s = &self.shape;
        let shape = kernels::attention::AttentionShape {
            n_head: s.n_head,
            n_kv: s.n_kv_head,
            head_dim: s.head_dim,
            seq,
            offset,
            window: s.window,
            scale: 1.0 / (s.head_dim as f32).sqrt(),
        };
        let mut out = vec![0f32; s.n_head * seq * s.head_dim];
        with_cpu_slice(&q.contiguous()?, |q| {
            with_cpu_slice(&k.contiguous()?, |k| {
                with_cpu_slice(&v.contiguous()?, |v| {
                    let pool = kernels::pool::pool();
                    match cache.append_rows(layer, k, v, s.n_kv_head, s.head_dim)? {
                        KvRows::F16(kv) => {
                            kernels::attention::attention(&shape, q, kv, &mut out, pool)
                        }
                        KvRows::F32(kv) => {
                            kernels::attention::attention(&shape, q, kv, &mut out, pool)
                        }
                    }
                    Ok(())
                })
            })
        })?;
        Ok(Tensor::from_vec(
            out,
            (1, seq, s.n_head * s.head_dim),
            q.device(),
        )?)
    }
}

/// A projection's bias, as a tensor and as values.
#[derive(Debug, Clone)]
struct Bias {
    tensor: Tensor,
    values: Vec<f32>,
}

/// `[seq][heads][d]` → `[heads][seq][d]`.
pub(crate) fn heads_outermost(x: &[f32], seq: usize, heads: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for t in 0..seq {
        for h in 0..heads {
            out[(h * seq + t) * d..][..d].copy_from_slice(&x[(t * heads + h) * d..][..d]);
        }
    }
    out
}

/// Runs `f` on the f32 values of a contiguous CPU tensor.
pub(crate) fn with_cpu_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(EngineError::InvalidRequest("expected a CPU tensor".into()));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| EngineError::InvalidRequest("expected a contiguous tensor".into()))?;
    f(&data[start..end])
}
