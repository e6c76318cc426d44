//! Qwen 3.5 / 3.6 in llama.cpp's GGUF layout, dense (`qwen35`) and
//! mixture-of-experts (`qwen35moe`, Qwen3.6-35B-A3B's): a hybrid of Gated
//! DeltaNet layers (linear attention with a recurrent state) and gated
//! full-attention layers, every `full_attention_interval`-th layer the
//! latter, each followed by a post-attention RMSNorm and a SwiGLU
//! feed-forward, dense or a softmax-routed MoE plus a sigmoid-gated shared
//! expert.
//!
//! - Gated attention: the query projection gives each head's query and an
//!   output gate; per-head q/k RMSNorm; rotary embeddings on the first
//!   `rope.dimension_count` dimensions (IMRoPE, which for text positions is
//!   NeoX on those dimensions); the attention output times `sigmoid(gate)`.
//! - Gated DeltaNet: `attn_qkv` gives the mixed q/k/v channels, which pass a
//!   4-tap causal convolution and SiLU; q and k are L2-normalised per head;
//!   the gated delta rule ([`crate::kernels::recurrent`]) with decay
//!   `softplus(alpha + dt_bias) · a` and write strength `sigmoid(beta)`; an
//!   RMSNorm per head times `silu(attn_gate · x)`; `ssm_out`.
//!
//! Reference: llama.cpp b11434 `src/models/qwen35moe.cpp`, `qwen35.cpp`,
//! `delta-net-base.cpp` and ggml's `ssm_conv` / `gated_delta_net` CPU ops.
//!
//! Everything but the projections runs on plain f32 rows on the host: the
//! attention layers on the engine's attention kernel over the owned KV
//! cache, the recurrent layers on [`crate::kernels::recurrent`] over the
//! cache's [`crate::kv_cache`] recurrent state. The projections run the
//! engine's packed kernels on the CPU and candle's `QMatMul` elsewhere, so a
//! Metal or CUDA build runs the model with its matmuls on the device.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kernels;
use crate::kernels::recurrent::{self, ConvShape, DeltaShape};
use crate::kv_cache::{KvCache, KvRows};
use crate::models::layers::{
    heads_outermost, Activation, Embeddings, Linear, Mlp, RmsNorm, RopeTables, RotaryEmbedding,
};
use crate::models::moe::SparseMoe;
use crate::models::rows::{mlp_rows, project, project_all, Exec};
use crate::models::ModelInfo;

/// Hyperparameters, read from `qwen35.*` / `qwen35moe.*` metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Hidden size.
    pub hidden_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Whether each block is a recurrent (Gated DeltaNet) one.
    pub recurrent_layers: Vec<bool>,
    /// Query heads of the attention layers.
    pub num_attention_heads: usize,
    /// Key/value heads of the attention layers.
    pub num_key_value_heads: usize,
    /// Per-head size of the attention layers.
    pub head_dim: usize,
    /// Dimensions of each head the rotary embedding turns.
    pub rope_dims: usize,
    /// IMRoPE sections (time, height, width, extra), in pairs.
    pub rope_sections: [usize; 4],
    /// Rotary base.
    pub rope_theta: f32,
    /// RMSNorm epsilon (also the DeltaNet's L2-norm epsilon).
    pub rms_norm_eps: f64,
    /// Taps of the DeltaNet's causal convolution.
    pub conv_kernel: usize,
    /// DeltaNet value channels (`value heads · head size`).
    pub linear_inner_size: usize,
    /// DeltaNet key head size (the state is this squared per value head).
    pub linear_key_head_dim: usize,
    /// DeltaNet value heads.
    pub linear_value_heads: usize,
    /// DeltaNet query/key heads.
    pub linear_key_heads: usize,
    /// Dense feed-forward inner size (the dense model's).
    pub intermediate_size: usize,
    /// Routed experts per layer; 0 for the dense model.
    pub num_experts: usize,
    /// Experts each token is routed to.
    pub num_experts_per_tok: usize,
    /// Inner size of one routed expert.
    pub moe_intermediate_size: usize,
    /// Inner size of the shared expert.
    pub shared_expert_intermediate_size: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
}

impl Config {
    /// Reads the architecture's metadata, as llama.cpp's loader does.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let u = |key: &str| gguf.arch_u32(key).map(|v| v as usize);
        let layers = u("block_count")?;
        let recurrent_layers = match gguf.array(&format!(
            "{}.attention.recurrent_layers",
            gguf.architecture()
        )) {
            Ok(flags) => flags
                .iter()
                .map(|v| {
                    v.to_bool()
                        .map_err(|e| EngineError::Metadata(e.to_string()))
                })
                .collect::<Result<Vec<bool>>>()?,
            // llama.cpp's default interval when the key is absent is 4.
            Err(_) => {
                let interval = u("full_attention_interval").unwrap_or(4).max(1);
                (0..layers).map(|i| (i + 1) % interval != 0).collect()
            }
        };
        if recurrent_layers.len() != layers {
            return Err(EngineError::Metadata(format!(
                "{} recurrent-layer flags for {layers} blocks",
                recurrent_layers.len()
            )));
        }
        let mut rope_sections = [0usize; 4];
        if let Ok(sections) =
            gguf.array(&format!("{}.rope.dimension_sections", gguf.architecture()))
        {
            for (dst, v) in rope_sections.iter_mut().zip(sections) {
                *dst = v
                    .to_i32()
                    .map(|x| x.max(0) as usize)
                    .or_else(|_| v.to_u32().map(|x| x as usize))
                    .map_err(|e| EngineError::Metadata(e.to_string()))?;
            }
        }
        let num_attention_heads = u("attention.head_count")?;
        let hidden_size = u("embedding_length")?;
        let num_experts = u("expert_count").unwrap_or(0);
        let head_dim = u("attention.key_length").unwrap_or(hidden_size / num_attention_heads);
        let cfg = Self {
            hidden_size,
            num_hidden_layers: layers,
            recurrent_layers,
            num_attention_heads,
            num_key_value_heads: u("attention.head_count_kv").unwrap_or(num_attention_heads),
            head_dim,
            rope_dims: u("rope.dimension_count").unwrap_or(head_dim),
            rope_sections,
            rope_theta: gguf.arch_f32("rope.freq_base").unwrap_or(10_000_000.0),
            rms_norm_eps: gguf.arch_f32("attention.layer_norm_rms_epsilon")? as f64,
            conv_kernel: u("ssm.conv_kernel")?,
            linear_inner_size: u("ssm.inner_size")?,
            linear_key_head_dim: u("ssm.state_size")?,
            linear_value_heads: u("ssm.time_step_rank")?,
            linear_key_heads: u("ssm.group_count")?,
            intermediate_size: u("feed_forward_length").unwrap_or(0),
            num_experts,
            num_experts_per_tok: u("expert_used_count").unwrap_or(0),
            moe_intermediate_size: u("expert_feed_forward_length").unwrap_or(0),
            shared_expert_intermediate_size: u("expert_shared_feed_forward_length")
                .or_else(|_| u("feed_forward_length"))
                .unwrap_or(0),
            max_position_embeddings: u("context_length")?,
            vocab_size: gguf.vocab_size()?,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        let bad = |what: String| Err(EngineError::Metadata(what));
        if self.linear_key_heads == 0
            || !self
                .linear_value_heads
                .is_multiple_of(self.linear_key_heads)
        {
            return bad(format!(
                "ssm.time_step_rank {} is not a multiple of ssm.group_count {}",
                self.linear_value_heads, self.linear_key_heads
            ));
        }
        if self.linear_inner_size != self.linear_value_heads * self.linear_key_head_dim {
            return bad(format!(
                "ssm.inner_size {} is not {} value heads of {} (llama.cpp requires equal key and value head sizes)",
                self.linear_inner_size, self.linear_value_heads, self.linear_key_head_dim
            ));
        }
        if self.conv_kernel < 1 {
            return bad("ssm.conv_kernel is 0".into());
        }
        if self.rope_dims > self.head_dim || !self.rope_dims.is_multiple_of(2) {
            return bad(format!(
                "rope.dimension_count {} does not fit heads of {}",
                self.rope_dims, self.head_dim
            ));
        }
        if !self.head_dim.is_multiple_of(8) {
            return bad(format!(
                "attention heads of {} (the attention kernel needs a multiple of 8)",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// Channels of the DeltaNet's convolution: q, k and v.
    fn conv_channels(&self) -> usize {
        2 * self.linear_key_heads * self.linear_key_head_dim + self.linear_inner_size
    }

    /// Inverse frequencies of the rotated pairs. IMRoPE interleaves the
    /// sections: pair `i` (sector `i mod Σsections`) takes the time, height
    /// or width position by `sector mod 3`, within three times its section,
    /// else the extra one. A text token's positions are `(p, p, p, 0)`, so
    /// every pair but the extra section's turns by `p`; those do not turn.
    fn rope_inv_freq(&self) -> Vec<f32> {
        let pairs = self.rope_dims / 2;
        let [t, h, w, _] = self.rope_sections;
        let total: usize = self.rope_sections.iter().sum();
        (0..pairs)
            .map(|i| {
                let turns = total == 0 || {
                    let sector = i % total;
                    (sector.is_multiple_of(3) && sector < 3 * t)
                        || (sector % 3 == 1 && sector < 3 * h)
                        || (sector % 3 == 2 && sector < 3 * w)
                };
                if turns {
                    1f32 / self.rope_theta.powf(2.0 * i as f32 / self.rope_dims as f32)
                } else {
                    0.0
                }
            })
            .collect()
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// ggml's softplus: `ln(1 + eˣ)`, `x` itself above 20.
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        (1.0 + x.exp()).ln()
    }
}

/// A Gated DeltaNet layer's weights.
struct GatedDeltaNet {
    qkv: Linear,
    gate: Linear,
    beta: Linear,
    alpha: Linear,
    /// `dt_bias`, per value head.
    dt_bias: Vec<f32>,
    /// `a = -exp(A_log)`, per value head.
    a: Vec<f32>,
    /// The convolution, tap-major (`kernel × channels`).
    conv_taps: Vec<f32>,
    /// RMSNorm weight of one value head.
    norm: Vec<f32>,
    out: Linear,
}

impl GatedDeltaNet {
    fn new(gguf: &Gguf, prefix: &str, cfg: &Config, device: &Device) -> Result<Self> {
        let w = |name: &str| Linear::in_block(gguf, prefix, name, device);
        let channels = cfg.conv_channels();
        let kernel = cfg.conv_kernel;
        let conv = gguf.tensor_values(&format!("{prefix}.ssm_conv1d.weight"))?;
        if conv.len() != channels * kernel {
            return Err(EngineError::Metadata(format!(
                "{prefix}.ssm_conv1d has {} values, expected {channels} channels of {kernel} taps",
                conv.len()
            )));
        }
        // The file holds channel-major taps (`c · kernel + j`).
        let mut conv_taps = vec![0f32; conv.len()];
        for c in 0..channels {
            for j in 0..kernel {
                conv_taps[j * channels + c] = conv[c * kernel + j];
            }
        }
        let per_head = |name: &str| -> Result<Vec<f32>> {
            let v = gguf.tensor_values(&format!("{prefix}.{name}"))?;
            if v.len() != cfg.linear_value_heads {
                return Err(EngineError::Metadata(format!(
                    "{prefix}.{name} has {} values for {} value heads",
                    v.len(),
                    cfg.linear_value_heads
                )));
            }
            Ok(v)
        };
        Ok(Self {
            qkv: w("attn_qkv")?,
            gate: w("attn_gate")?,
            beta: w("ssm_beta")?,
            alpha: w("ssm_alpha")?,
            dt_bias: per_head("ssm_dt.bias")?,
            a: per_head("ssm_a")?,
            conv_taps,
            norm: gguf.tensor_values(&format!("{prefix}.ssm_norm.weight"))?,
            out: w("ssm_out")?,
        })
    }

    fn forward(
        &self,
        x: &[f32],
        seq: usize,
        cfg: &Config,
        layer: usize,
        cache: &mut KvCache,
        exec: Exec<'_>,
    ) -> Result<Vec<f32>> {
        let heads = cfg.linear_value_heads;
        let d = cfg.linear_key_head_dim;
        let key_dim = cfg.linear_key_heads * d;
        let channels = cfg.conv_channels();
        let [qkv, z, mut beta, alpha] = project_all(
            [&self.qkv, &self.gate, &self.beta, &self.alpha],
            x,
            seq,
            exec,
        )?;
        for b in &mut beta {
            *b = sigmoid(*b);
        }
        let decay: Vec<f32> = alpha
            .iter()
            .enumerate()
            .map(|(i, &al)| softplus(al + self.dt_bias[i % heads]) * self.a[i % heads])
            .collect();
        let state = cache.recurrent_mut(layer, (cfg.conv_kernel - 1) * channels, heads * d * d);
        let mut mixed = vec![0f32; qkv.len()];
        recurrent::causal_conv_silu(
            ConvShape {
                channels,
                kernel: cfg.conv_kernel,
            },
            &self.conv_taps,
            &mut state.conv,
            &qkv,
            &mut mixed,
        );
        let mut q = Vec::with_capacity(seq * key_dim);
        let mut k = Vec::with_capacity(seq * key_dim);
        let mut v = Vec::with_capacity(seq * cfg.linear_inner_size);
        for row in mixed.chunks_exact(channels) {
            q.extend_from_slice(&row[..key_dim]);
            k.extend_from_slice(&row[key_dim..2 * key_dim]);
            v.extend_from_slice(&row[2 * key_dim..]);
        }
        let eps = cfg.rms_norm_eps as f32;
        recurrent::l2_normalize_rows(&mut q, d, eps);
        recurrent::l2_normalize_rows(&mut k, d, eps);
        let mut o = vec![0f32; v.len()];
        recurrent::gated_delta_rule(
            DeltaShape {
                heads,
                key_heads: cfg.linear_key_heads,
                dim: d,
            },
            &q,
            &k,
            &v,
            &decay,
            &beta,
            &mut state.ssm,
            &mut o,
            kernels::pool::pool(),
        );
        // RMSNorm per head, times silu(z).
        kernels::elementwise::rms_norm_in_place(&mut o, &self.norm, eps);
        for (y, &g) in o.iter_mut().zip(&z) {
            *y *= g * sigmoid(g);
        }
        project(&self.out, &o, seq, exec)
    }
}

/// A gated full-attention layer's weights.
struct GatedAttention {
    /// Per head: the query, then the output gate.
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
}

impl GatedAttention {
    fn new(gguf: &Gguf, prefix: &str, cfg: &Config, device: &Device) -> Result<Self> {
        let w = |name: &str| Linear::in_block(gguf, prefix, name, device);
        let norm = |name: &str| RmsNorm::in_block(gguf, prefix, name, cfg.rms_norm_eps, device);
        Ok(Self {
            q: w("attn_q")?,
            k: w("attn_k")?,
            v: w("attn_v")?,
            o: w("attn_output")?,
            q_norm: norm("attn_q_norm")?,
            k_norm: norm("attn_k_norm")?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &[f32],
        seq: usize,
        cfg: &Config,
        rope: &RopeTables,
        layer: usize,
        cache: &mut KvCache,
        exec: Exec<'_>,
    ) -> Result<Vec<f32>> {
        let (n_head, n_kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let [q_gate, mut k, v] = project_all([&self.q, &self.k, &self.v], x, seq, exec)?;
        let mut q = Vec::with_capacity(seq * n_head * d);
        let mut gate = Vec::with_capacity(seq * n_head * d);
        for head in q_gate.chunks_exact(2 * d) {
            q.extend_from_slice(&head[..d]);
            gate.extend_from_slice(&head[d..]);
        }
        self.q_norm.rows_in_place(&mut q);
        self.k_norm.rows_in_place(&mut k);
        rope.rotate_rows_partial(&mut q, seq, d);
        rope.rotate_rows_partial(&mut k, seq, d);
        let (q, k, v) = if seq == 1 {
            (q, k, v)
        } else {
            (
                heads_outermost(&q, seq, n_head, d),
                heads_outermost(&k, seq, n_kv, d),
                heads_outermost(&v, seq, n_kv, d),
            )
        };
        let shape = kernels::attention::AttentionShape {
            n_head,
            n_kv,
            head_dim: d,
            seq,
            offset: cache.len(),
            window: None,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let mut y = vec![0f32; seq * n_head * d];
        let pool = kernels::pool::pool();
        match cache.append_rows(layer, &k, &v, n_kv, d)? {
            KvRows::F16(kv) => kernels::attention::attention(&shape, &q, kv, &mut y, pool),
            KvRows::F32(kv) => kernels::attention::attention(&shape, &q, kv, &mut y, pool),
        }
        for (y, &g) in y.iter_mut().zip(&gate) {
            *y *= sigmoid(g);
        }
        project(&self.o, &y, seq, exec)
    }
}

/// What follows the attention of a block.
enum FeedForward {
    Dense(Mlp),
    /// Routed experts plus the shared expert, scaled by `sigmoid(gate · x)`.
    Moe {
        routed: SparseMoe,
        shared: Mlp,
        /// `ffn_gate_inp_shexp`, one value per hidden unit.
        shared_gate: Vec<f32>,
        /// Token rows the shared expert has computed since load.
        shared_rows: AtomicU64,
    },
}

impl FeedForward {
    fn forward(&self, x: &[f32], seq: usize, hidden: usize, exec: Exec<'_>) -> Result<Vec<f32>> {
        match self {
            Self::Dense(mlp) => mlp_rows(mlp, x, seq, hidden, exec),
            Self::Moe {
                routed,
                shared,
                shared_gate,
                shared_rows,
            } => {
                let mut out = if exec.rows && routed.runs_on_rows() {
                    let mut out = vec![0f32; seq * hidden];
                    routed.forward_rows_packed(x, seq, &mut out);
                    out
                } else {
                    let xs = Tensor::from_slice(x, (1, seq, hidden), exec.device)?;
                    routed.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?
                };
                let expert = mlp_rows(shared, x, seq, hidden, exec)?;
                let gate = x
                    .chunks_exact(hidden)
                    .map(|row| row.iter().zip(shared_gate).map(|(a, b)| a * b).sum::<f32>());
                shared_rows.fetch_add(seq as u64, Ordering::Relaxed);
                for ((row, e), g) in out
                    .chunks_exact_mut(hidden)
                    .zip(expert.chunks_exact(hidden))
                    .zip(gate)
                {
                    let g = sigmoid(g);
                    for (o, &y) in row.iter_mut().zip(e) {
                        *o += y * g;
                    }
                }
                Ok(out)
            }
        }
    }
}

enum Mixer {
    Linear(GatedDeltaNet),
    Attention(GatedAttention),
}

struct Block {
    attn_norm: RmsNorm,
    mixer: Mixer,
    post_attn_norm: RmsNorm,
    ffn: FeedForward,
}

/// A Qwen 3.5 model, dense or MoE: weights only; the KV cache and the
/// recurrent state are passed in.
pub struct Model {
    embed: Embeddings,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: Linear,
    rope: RotaryEmbedding,
    config: Config,
    info: ModelInfo,
    device: Device,
    /// Whether packed projections run straight on rows ([`Exec`]).
    rows: bool,
}

impl Model {
    /// Loads weights from a `qwen35` or `qwen35moe` GGUF.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        let cfg = Config::from_gguf(gguf)?;
        let (embed, output, tied) = Embeddings::with_output(gguf, device)?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, &recurrent) in cfg.recurrent_layers.iter().enumerate() {
            let prefix = format!("blk.{i}");
            let norm =
                |name: &str| RmsNorm::in_block(gguf, &prefix, name, cfg.rms_norm_eps, device);
            let w = |name: &str| Linear::in_block(gguf, &prefix, name, device);
            let mixer = if recurrent {
                Mixer::Linear(GatedDeltaNet::new(gguf, &prefix, &cfg, device)?)
            } else {
                Mixer::Attention(GatedAttention::new(gguf, &prefix, &cfg, device)?)
            };
            let ffn = if cfg.num_experts > 0 {
                FeedForward::Moe {
                    routed: SparseMoe::new(
                        gguf,
                        &prefix,
                        cfg.num_experts,
                        cfg.num_experts_per_tok,
                        true,
                        device,
                    )?,
                    shared: Mlp::from_weights(
                        w("ffn_gate_shexp")?,
                        w("ffn_up_shexp")?,
                        w("ffn_down_shexp")?,
                        Activation::Silu,
                    ),
                    shared_gate: gguf
                        .tensor_values(&format!("{prefix}.ffn_gate_inp_shexp.weight"))?,
                    shared_rows: AtomicU64::new(0),
                }
            } else {
                FeedForward::Dense(Mlp::new(gguf, &prefix, Activation::Silu, device)?)
            };
            blocks.push(Block {
                attn_norm: norm("attn_norm")?,
                mixer,
                post_attn_norm: norm("post_attention_norm")?,
                ffn,
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
        Ok(Self {
            embed,
            blocks,
            norm: RmsNorm::new(gguf, "output_norm.weight", cfg.rms_norm_eps, device)?,
            output,
            rope: RotaryEmbedding::from_inv_freq(cfg.rope_inv_freq()),
            config: cfg,
            info,
            device: device.clone(),
            rows: gguf.fused_on(device),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the forward runs on rows with the projections on the
    /// engine's packed kernels directly (see [`Exec`]).
    pub(crate) fn runs_fused(&self) -> bool {
        self.rows
            && matches!(self.embed, Embeddings::Packed(_))
            && matches!(self.output, Linear::Packed(_))
    }

    /// Token rows each routed expert of each MoE layer has computed since
    /// load, `[layer][expert]`, with the shared expert's as the last entry.
    pub(crate) fn expert_rows(&self) -> Vec<Vec<u64>> {
        self.blocks
            .iter()
            .filter_map(|b| match &b.ffn {
                FeedForward::Dense(_) => None,
                FeedForward::Moe {
                    routed,
                    shared_rows,
                    ..
                } => {
                    let mut rows = routed.expert_rows();
                    rows.push(shared_rows.load(Ordering::Relaxed));
                    Some(rows)
                }
            })
            .collect()
    }

    /// Logits `(vocab,)` for the last of `tokens`, run after `cache`'s
    /// positions; advances the recurrent layers' state in `cache`.
    pub(crate) fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let cfg = &self.config;
        let seq = tokens.len();
        let hidden = cfg.hidden_size;
        let exec = Exec {
            device: &self.device,
            rows: self.rows,
        };
        let mut xs = match self.embed.rows(tokens)? {
            Some(rows) => rows,
            None => {
                let t = self.embed.forward(tokens, &self.device)?;
                t.flatten_all()?.to_vec1::<f32>()?
            }
        };
        let rope = self.rope.tables(cache.len(), seq, &Device::Cpu)?;
        let mut normed = vec![0f32; xs.len()];
        for (layer, block) in self.blocks.iter().enumerate() {
            block.attn_norm.rows(&xs, &mut normed);
            let h = match &block.mixer {
                Mixer::Linear(net) => net.forward(&normed, seq, cfg, layer, cache, exec)?,
                Mixer::Attention(attn) => {
                    attn.forward(&normed, seq, cfg, &rope, layer, cache, exec)?
                }
            };
            for (x, y) in xs.iter_mut().zip(&h) {
                *x += y;
            }
            block.post_attn_norm.rows(&xs, &mut normed);
            let h = block.ffn.forward(&normed, seq, hidden, exec)?;
            for (x, y) in xs.iter_mut().zip(&h) {
                *x += y;
            }
        }
        let mut last = vec![0f32; hidden];
        self.norm.rows(&xs[(seq - 1) * hidden..], &mut last);
        let logits = project(&self.output, &last, 1, exec)?;
        let n = logits.len();
        Ok(Tensor::from_vec(logits, n, &self.device)?)
    }
}
