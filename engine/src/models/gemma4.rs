//! Gemma 4 in llama.cpp's GGUF layout (`gemma4`): the dense models (E2B,
//! E4B with per-layer token embeddings, 31B) and the 26B-A4B mixture of
//! experts.
//!
//! - Attention: sliding-window and global layers by a per-layer flag, each
//!   kind with its own head size, KV head count, rotary base and rotated
//!   dimensions; global layers rotate with `rope_freqs` factors (Gemma 4's
//!   proportional rope leaves the upper dimensions unturned); q and k
//!   RMSNorm with weights, v RMSNorm without; a layer without `attn_v`
//!   uses its keys as values; scores unscaled (scale 1).
//! - The last `attention.shared_kv_layers` layers store no keys and values:
//!   each reads the cache of the last earlier layer of its kind.
//! - Norms around everything: post-attention, post-FFN; in an MoE layer a
//!   dense GELU feed-forward and the routed experts side by side, each with
//!   its own pre and post norms, the router reading the unweighted RMSNorm
//!   of the residual times `ffn_gate_inp.scale`.
//! - Per-layer embeddings (E2B/E4B): a second token table and a projection
//!   of the embeddings give each layer a small input, gated into the
//!   residual after its feed-forward; an optional per-layer output scale;
//!   a final logit softcap.
//!
//! Reference: llama.cpp b11434 `src/models/gemma4.cpp` and its loader. Norm
//! weights are used as stored (the converter writes Gemma 4's without a
//! shift). The forward runs on plain f32 rows: projections through
//! [`crate::models::rows`] (the engine's packed kernels on the CPU, candle's
//! `QMatMul` on other devices), attention on the engine's kernel over the
//! owned KV cache.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kernels;
use crate::kv_cache::{KvCache, KvRows};
use crate::models::layers::{
    heads_outermost, Activation, Embeddings, Linear, Mlp, RmsNorm, RopeTables, RotaryEmbedding,
};
use crate::models::moe::SparseMoe;
use crate::models::rows::{mlp_rows, project, project_all, Exec};
use crate::models::ModelInfo;

/// Hyperparameters, read from `gemma4.*` metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Hidden size.
    pub hidden_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Whether each layer attends through the sliding window.
    pub sliding: Vec<bool>,
    /// Query heads, per layer.
    pub num_attention_heads: Vec<usize>,
    /// Key/value heads, per layer.
    pub num_key_value_heads: Vec<usize>,
    /// Head size of the global layers.
    pub head_dim: usize,
    /// Head size of the sliding-window layers.
    pub head_dim_swa: usize,
    /// Rotated dimensions of a global layer's head.
    pub rope_dims: usize,
    /// Rotated dimensions of a sliding layer's head.
    pub rope_dims_swa: usize,
    /// Rotary base of the global layers.
    pub rope_theta: f32,
    /// Rotary base of the sliding layers.
    pub rope_theta_swa: f32,
    /// Keys a sliding layer's query sees, itself included.
    pub sliding_window: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Dense feed-forward inner size, per layer.
    pub intermediate_size: Vec<usize>,
    /// Routed experts per MoE layer; 0 for the dense models.
    pub num_experts: usize,
    /// Experts each token is routed to.
    pub num_experts_per_tok: usize,
    /// Inner size of one routed expert.
    pub moe_intermediate_size: usize,
    /// Layers from the first that store keys and values; the rest share.
    pub kv_layers: usize,
    /// Width of each layer's per-layer embedding input; 0 for none.
    pub per_layer_input: usize,
    /// `tanh(x / cap) · cap` on the logits; 0 for none.
    pub final_logit_softcapping: f32,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
}

/// A `{arch}.{key}` value given once for every layer or as a per-layer array.
fn per_layer(gguf: &Gguf, key: &str, layers: usize) -> Result<Option<Vec<usize>>> {
    let full = format!("{}.{key}", gguf.architecture());
    if let Ok(values) = gguf.array(&full) {
        let values = values
            .iter()
            .map(|v| {
                v.to_u32()
                    .map(|x| x as usize)
                    .or_else(|_| v.to_i32().map(|x| x.max(0) as usize))
                    .map_err(|e| EngineError::Metadata(format!("{full}: {e}")))
            })
            .collect::<Result<Vec<usize>>>()?;
        if values.len() != layers {
            return Err(EngineError::Metadata(format!(
                "{full} has {} values for {layers} layers",
                values.len()
            )));
        }
        return Ok(Some(values));
    }
    match gguf.arch_u32(key) {
        Ok(v) => Ok(Some(vec![v as usize; layers])),
        Err(_) => Ok(None),
    }
}

impl Config {
    /// Reads the architecture's metadata, as llama.cpp's loader does.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let arch = gguf.architecture().to_string();
        let u = |key: &str| gguf.arch_u32(key).map(|v| v as usize);
        let layers = u("block_count")?;
        let sliding = gguf
            .array(&format!("{arch}.attention.sliding_window_pattern"))?
            .iter()
            .map(|v| {
                v.to_bool()
                    .map_err(|e| EngineError::Metadata(format!("sliding_window_pattern: {e}")))
            })
            .collect::<Result<Vec<bool>>>()?;
        if sliding.len() != layers {
            return Err(EngineError::Metadata(format!(
                "{} sliding-window flags for {layers} layers",
                sliding.len()
            )));
        }
        let hidden_size = u("embedding_length")?;
        let heads = per_layer(gguf, "attention.head_count", layers)?
            .ok_or_else(|| EngineError::Metadata(format!("{arch}.attention.head_count missing")))?;
        let kv_heads = per_layer(gguf, "attention.head_count_kv", layers)?.unwrap_or(heads.clone());
        let head_dim = u("attention.key_length").unwrap_or(hidden_size / heads[0].max(1));
        let head_dim_swa = u("attention.key_length_swa")?;
        if u("attention.value_length").unwrap_or(head_dim) != head_dim
            || u("attention.value_length_swa")? != head_dim_swa
        {
            return Err(EngineError::Metadata(
                "Gemma 4 needs equal key and value head sizes".into(),
            ));
        }
        let rope_dims = u("rope.dimension_count").unwrap_or(head_dim);
        let shared = u("attention.shared_kv_layers").unwrap_or(0);
        let num_experts = u("expert_count").unwrap_or(0);
        let cfg = Self {
            hidden_size,
            num_hidden_layers: layers,
            sliding,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            head_dim_swa,
            rope_dims,
            rope_dims_swa: u("rope.dimension_count_swa").unwrap_or(rope_dims),
            rope_theta: gguf.arch_f32("rope.freq_base").unwrap_or(10_000.0),
            rope_theta_swa: gguf.arch_f32("rope.freq_base_swa").unwrap_or(10_000.0),
            sliding_window: u("attention.sliding_window")?,
            rms_norm_eps: gguf.arch_f32("attention.layer_norm_rms_epsilon")? as f64,
            intermediate_size: per_layer(gguf, "feed_forward_length", layers)?.ok_or_else(
                || EngineError::Metadata(format!("{arch}.feed_forward_length missing")),
            )?,
            num_experts,
            num_experts_per_tok: u("expert_used_count").unwrap_or(0),
            moe_intermediate_size: per_layer(gguf, "expert_feed_forward_length", layers)?
                .map(|v| v[0])
                .unwrap_or(0),
            kv_layers: layers.checked_sub(shared).ok_or_else(|| {
                EngineError::Metadata(format!("{shared} shared KV layers of {layers}"))
            })?,
            per_layer_input: u("embedding_length_per_layer_input").unwrap_or(0),
            final_logit_softcapping: gguf.arch_f32("final_logit_softcapping").unwrap_or(0.0),
            max_position_embeddings: u("context_length")?,
            vocab_size: gguf.vocab_size()?,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        let bad = |what: String| Err(EngineError::Metadata(what));
        for layer in 0..self.num_hidden_layers {
            let (q, kv) = (
                self.num_attention_heads[layer],
                self.num_key_value_heads[layer],
            );
            if kv == 0 || !q.is_multiple_of(kv) {
                return bad(format!(
                    "layer {layer}: {q} query heads over {kv} key/value heads"
                ));
            }
            if self.kv_source(layer) != layer {
                let source = self.kv_source(layer);
                if self.sliding[source] != self.sliding[layer]
                    || self.num_key_value_heads[source] != kv
                {
                    return bad(format!(
                        "layer {layer} would share layer {source}'s cache, which has another shape"
                    ));
                }
            }
        }
        if self.kv_layers < self.num_hidden_layers && self.kv_layers < 2 {
            return bad(format!(
                "{} layers with their own cache: sharing needs a sliding and a global one",
                self.kv_layers
            ));
        }
        for (what, d, rot) in [
            ("global", self.head_dim, self.rope_dims),
            ("sliding", self.head_dim_swa, self.rope_dims_swa),
        ] {
            if !d.is_multiple_of(8) || rot > d || !rot.is_multiple_of(2) {
                return bad(format!(
                    "{what} heads of {d} rotating {rot} (the attention kernel needs a multiple of 8)"
                ));
            }
        }
        Ok(())
    }

    /// The layer whose keys and values `layer` attends over: itself, or for
    /// a shared layer the last layer of its kind that keeps a cache
    /// (llama.cpp's rule: the last two cache layers are sliding, then global).
    pub fn kv_source(&self, layer: usize) -> usize {
        if layer < self.kv_layers {
            layer
        } else if self.sliding[layer] {
            self.kv_layers - 2
        } else {
            self.kv_layers - 1
        }
    }

    fn head_dim_of(&self, layer: usize) -> usize {
        if self.sliding[layer] {
            self.head_dim_swa
        } else {
            self.head_dim
        }
    }
}

struct Attention {
    q: Linear,
    /// `None` on a layer that reads another layer's cache.
    k: Option<Linear>,
    /// `None`: the keys are the values (before the key norm).
    v: Option<Linear>,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: Option<RmsNorm>,
}

/// An MoE layer's routed half.
struct Experts {
    moe: SparseMoe,
    /// `ffn_gate_inp.scale`: the router's input, per hidden unit.
    router_scale: Vec<f32>,
    pre_norm: RmsNorm,
    /// After the dense feed-forward (`post_ffw_norm_1`).
    post_norm_dense: RmsNorm,
    /// After the experts (`post_ffw_norm_2`).
    post_norm: RmsNorm,
}

/// A layer's part of the per-layer embeddings.
struct PerLayerInput {
    gate: Linear,
    proj: Linear,
    post_norm: RmsNorm,
}

struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: Mlp,
    experts: Option<Experts>,
    post_ffn_norm: RmsNorm,
    per_layer: Option<PerLayerInput>,
    out_scale: Option<f32>,
}

/// The model-level half of the per-layer embeddings.
struct PerLayerEmbeddings {
    /// `per_layer_token_embd`: per token, every layer's input.
    table: Embeddings,
    /// `per_layer_model_proj`: the embeddings projected to the same.
    model_proj: Linear,
    proj_norm: RmsNorm,
}

/// A Gemma 4 model: weights only; the KV cache is passed in.
pub struct Model {
    embed: Embeddings,
    per_layer: Option<PerLayerEmbeddings>,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: Linear,
    rope_global: RotaryEmbedding,
    rope_sliding: RotaryEmbedding,
    /// Ones, as the weight of the unweighted norms (v, the router's input).
    ones: Vec<f32>,
    config: Config,
    info: ModelInfo,
    device: Device,
    rows: bool,
}

impl Model {
    /// Loads weights from a `gemma4` GGUF.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        let cfg = Config::from_gguf(gguf)?;
        let eps = cfg.rms_norm_eps;
        let (embed, output, tied) = Embeddings::with_output(gguf, device)?;
        let per_layer = if cfg.per_layer_input > 0 {
            Some(PerLayerEmbeddings {
                table: Embeddings::from_linear(&Linear::load(
                    gguf,
                    "per_layer_token_embd.weight",
                    device,
                )?),
                model_proj: Linear::load(gguf, "per_layer_model_proj.weight", device)?,
                proj_norm: RmsNorm::new(gguf, "per_layer_proj_norm.weight", eps, device)?,
            })
        } else {
            None
        };
        // Proportional rope: the global layers' factors divide each pair's
        // frequency (1e30 leaves a pair unturned).
        let factors = if gguf.has_tensor("rope_freqs.weight") {
            let f = gguf.tensor_values("rope_freqs.weight")?;
            if f.len() != cfg.rope_dims / 2 {
                return Err(EngineError::Metadata(format!(
                    "rope_freqs has {} factors for {} rotated pairs",
                    f.len(),
                    cfg.rope_dims / 2
                )));
            }
            f
        } else {
            vec![1.0; cfg.rope_dims / 2]
        };
        let inv_freq = |theta: f32, dims: usize, factors: &[f32]| -> Vec<f32> {
            (0..dims / 2)
                .map(|i| theta.powf(-2.0 * i as f32 / dims as f32) / factors[i])
                .collect()
        };
        let rope_global =
            RotaryEmbedding::from_inv_freq(inv_freq(cfg.rope_theta, cfg.rope_dims, &factors));
        let rope_sliding = RotaryEmbedding::from_inv_freq(inv_freq(
            cfg.rope_theta_swa,
            cfg.rope_dims_swa,
            &vec![1.0; cfg.rope_dims_swa / 2],
        ));

        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        let mut expert_layers = 0;
        for i in 0..cfg.num_hidden_layers {
            let prefix = format!("blk.{i}");
            let name = |n: &str| format!("{prefix}.{n}.weight");
            let norm = |n: &str| RmsNorm::in_block(gguf, &prefix, n, eps, device);
            let w = |n: &str| Linear::in_block(gguf, &prefix, n, device);
            let optional = |n: &str| -> Result<Option<Linear>> {
                if gguf.has_tensor(&name(n)) {
                    Ok(Some(w(n)?))
                } else {
                    Ok(None)
                }
            };
            let owns_kv = i < cfg.kv_layers;
            let attn = Attention {
                q: w("attn_q")?,
                k: if owns_kv { Some(w("attn_k")?) } else { None },
                v: if owns_kv { optional("attn_v")? } else { None },
                o: w("attn_output")?,
                q_norm: norm("attn_q_norm")?,
                k_norm: if owns_kv {
                    Some(norm("attn_k_norm")?)
                } else {
                    None
                },
            };
            let experts = if gguf.has_tensor(&name("ffn_gate_inp")) {
                expert_layers += 1;
                // The router's own `.scale` multiplies its input, not its
                // output: not a projection scale.
                let router = Linear::load_scaled(gguf, &name("ffn_gate_inp"), None, device)?;
                let router_scale = gguf.tensor_values(&format!("{prefix}.ffn_gate_inp.scale"))?;
                if router_scale.len() != cfg.hidden_size {
                    return Err(EngineError::Metadata(format!(
                        "{prefix}.ffn_gate_inp.scale has {} values for hidden size {}",
                        router_scale.len(),
                        cfg.hidden_size
                    )));
                }
                Some(Experts {
                    moe: SparseMoe::with_router(
                        gguf,
                        &prefix,
                        router,
                        cfg.num_experts,
                        cfg.num_experts_per_tok,
                        true,
                        Activation::GeluTanh,
                        device,
                    )?,
                    router_scale,
                    pre_norm: norm("pre_ffw_norm_2")?,
                    post_norm_dense: norm("post_ffw_norm_1")?,
                    post_norm: norm("post_ffw_norm_2")?,
                })
            } else {
                None
            };
            let per_layer = if cfg.per_layer_input > 0 {
                Some(PerLayerInput {
                    gate: w("inp_gate")?,
                    proj: w("proj")?,
                    post_norm: norm("post_norm")?,
                })
            } else {
                None
            };
            let out_scale = if gguf.has_tensor(&name("layer_output_scale")) {
                let s = gguf.tensor_values(&name("layer_output_scale"))?;
                if s.len() != 1 {
                    return Err(EngineError::Metadata(format!(
                        "{prefix}.layer_output_scale has {} values, not one",
                        s.len()
                    )));
                }
                Some(s[0])
            } else {
                None
            };
            blocks.push(Block {
                attn_norm: norm("attn_norm")?,
                attn,
                post_attn_norm: norm("post_attention_norm")?,
                ffn_norm: norm("ffn_norm")?,
                mlp: Mlp::new(gguf, &prefix, Activation::GeluTanh, device)?,
                experts,
                post_ffn_norm: norm("post_ffw_norm")?,
                per_layer,
                out_scale,
            });
        }
        let total = gguf.parameter_count();
        let active = crate::models::active_parameters(
            total,
            tied,
            cfg.vocab_size,
            cfg.hidden_size,
            expert_layers,
            cfg.num_experts,
            cfg.num_experts_per_tok,
            SparseMoe::expert_parameters(cfg.hidden_size, cfg.moe_intermediate_size),
        );
        // One row of the per-layer table is read per token, as of the main one.
        let active = match &per_layer {
            Some(_) => {
                active - ((cfg.vocab_size - 1) * cfg.per_layer_input * cfg.num_hidden_layers) as u64
            }
            None => active,
        };
        let info = ModelInfo {
            architecture: "gemma4".into(),
            block_count: cfg.num_hidden_layers,
            embedding_length: cfg.hidden_size,
            context_length: cfg.max_position_embeddings,
            vocab_size: cfg.vocab_size,
            total_parameters: total,
            active_parameters: active,
        };
        Ok(Self {
            embed,
            per_layer,
            blocks,
            norm: RmsNorm::new(gguf, "output_norm.weight", eps, device)?,
            output,
            rope_global,
            rope_sliding,
            ones: vec![1.0; cfg.hidden_size.max(cfg.head_dim).max(cfg.head_dim_swa)],
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

    /// Whether the forward runs its projections on the packed kernels.
    pub(crate) fn runs_fused(&self) -> bool {
        self.rows
            && matches!(self.embed, Embeddings::Packed(_))
            && matches!(self.output, Linear::Packed(_))
    }

    /// Token rows each routed expert of each MoE layer has computed.
    pub(crate) fn expert_rows(&self) -> Vec<Vec<u64>> {
        self.blocks
            .iter()
            .filter_map(|b| b.experts.as_ref().map(|e| e.moe.expert_rows()))
            .collect()
    }

    /// RMSNorm without a weight, over rows of `width`.
    fn rms_norm_plain(&self, x: &mut [f32], width: usize) {
        let eps = self.config.rms_norm_eps as f32;
        kernels::elementwise::rms_norm_in_place(x, &self.ones[..width], eps);
    }

    fn embeddings(&self, table: &Embeddings, tokens: &[u32]) -> Result<Vec<f32>> {
        match table.rows(tokens)? {
            Some(rows) => Ok(rows),
            None => Ok(table
                .forward(tokens, &self.device)?
                .flatten_all()?
                .to_vec1::<f32>()?),
        }
    }

    /// Every layer's per-layer input, `seq × (layers · width)`.
    fn per_layer_inputs(
        &self,
        ple: &PerLayerEmbeddings,
        tokens: &[u32],
        x: &[f32],
        exec: Exec<'_>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let width = cfg.per_layer_input;
        let seq = tokens.len();
        let mut selected = self.embeddings(&ple.table, tokens)?;
        let table_scale = (width as f32).sqrt();
        let mut projected = project(&ple.model_proj, x, seq, exec)?;
        let proj_scale = 1.0 / (cfg.hidden_size as f32).sqrt();
        for p in &mut projected {
            *p *= proj_scale;
        }
        ple.proj_norm.rows_in_place(&mut projected);
        let input_scale = 1.0 / 2f32.sqrt();
        for (s, p) in selected.iter_mut().zip(&projected) {
            *s = (p + *s * table_scale) * input_scale;
        }
        Ok(selected)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        attn: &Attention,
        x: &[f32],
        seq: usize,
        rope: &RopeTables,
        cache: &mut KvCache,
        exec: Exec<'_>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let (n_head, n_kv, d) = (
            cfg.num_attention_heads[layer],
            cfg.num_key_value_heads[layer],
            cfg.head_dim_of(layer),
        );
        let sliding = cfg.sliding[layer];
        let (mut q, kv) = match (&attn.k, &attn.v) {
            (Some(k), Some(v)) => {
                let [q, k, v] = project_all([&attn.q, k, v], x, seq, exec)?;
                (q, Some((k, v)))
            }
            (Some(k), None) => {
                let [q, k] = project_all([&attn.q, k], x, seq, exec)?;
                let v = k.clone();
                (q, Some((k, v)))
            }
            _ => (project(&attn.q, x, seq, exec)?, None),
        };
        attn.q_norm.rows_in_place(&mut q);
        rope.rotate_rows_partial(&mut q, seq, d);
        let q = if seq == 1 {
            q
        } else {
            heads_outermost(&q, seq, n_head, d)
        };
        let shape = kernels::attention::AttentionShape {
            n_head,
            n_kv,
            head_dim: d,
            seq,
            offset: cache.len(),
            window: sliding.then_some(cfg.sliding_window),
            scale: 1.0,
        };
        let mut y = vec![0f32; seq * n_head * d];
        let pool = kernels::pool::pool();
        let rows = match kv {
            Some((mut k, mut v)) => {
                attn.k_norm
                    .as_ref()
                    .expect("a cache layer has a key norm")
                    .rows_in_place(&mut k);
                self.rms_norm_plain(&mut v, d);
                rope.rotate_rows_partial(&mut k, seq, d);
                let (k, v) = if seq == 1 {
                    (k, v)
                } else {
                    (
                        heads_outermost(&k, seq, n_kv, d),
                        heads_outermost(&v, seq, n_kv, d),
                    )
                };
                cache.append_rows(layer, &k, &v, n_kv, d)?
            }
            None => cache.rows_of(cfg.kv_source(layer), seq)?,
        };
        match rows {
            KvRows::F16(kv) => kernels::attention::attention(&shape, &q, kv, &mut y, pool),
            KvRows::F32(kv) => kernels::attention::attention(&shape, &q, kv, &mut y, pool),
        }
        project(&attn.o, &y, seq, exec)
    }

    /// The routed experts on rows `x` (the router reads `residual`).
    fn experts(
        &self,
        experts: &Experts,
        residual: &[f32],
        seq: usize,
        exec: Exec<'_>,
    ) -> Result<Vec<f32>> {
        let hidden = self.config.hidden_size;
        let mut router_in = residual.to_vec();
        self.rms_norm_plain(&mut router_in, hidden);
        let scale = 1.0 / (hidden as f32).sqrt();
        for row in router_in.chunks_exact_mut(hidden) {
            for (r, s) in row.iter_mut().zip(&experts.router_scale) {
                *r = *r * scale * s;
            }
        }
        let mut logits = project(experts.moe.router(), &router_in, seq, exec)?;
        let routed = experts.moe.route(&mut logits);
        let mut x = vec![0f32; residual.len()];
        experts.pre_norm.rows(residual, &mut x);
        let mut out = vec![0f32; residual.len()];
        experts
            .moe
            .run_routed(&routed, &x, hidden, &mut out, |expert, rows, n, y| {
                *y = mlp_rows(expert, rows, n, hidden, exec)?;
                Ok(())
            })?;
        Ok(out)
    }

    /// Logits `(vocab,)` for the last of `tokens`, run after `cache`'s positions.
    pub(crate) fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let cfg = &self.config;
        let seq = tokens.len();
        let hidden = cfg.hidden_size;
        let exec = Exec {
            device: &self.device,
            rows: self.rows,
        };
        let mut xs = self.embeddings(&self.embed, tokens)?;
        let embed_scale = (hidden as f32).sqrt();
        for x in &mut xs {
            *x *= embed_scale;
        }
        let per_layer_inputs = match &self.per_layer {
            Some(ple) => Some(self.per_layer_inputs(ple, tokens, &xs, exec)?),
            None => None,
        };
        // One table per kind of layer for this forward's positions.
        let global = self.rope_global.tables(cache.len(), seq, &Device::Cpu)?;
        let sliding = self.rope_sliding.tables(cache.len(), seq, &Device::Cpu)?;
        let mut normed = vec![0f32; xs.len()];
        for (layer, block) in self.blocks.iter().enumerate() {
            block.attn_norm.rows(&xs, &mut normed);
            let rope = if cfg.sliding[layer] {
                &sliding
            } else {
                &global
            };
            let mut h = self.attention(layer, &block.attn, &normed, seq, rope, cache, exec)?;
            block.post_attn_norm.rows_in_place(&mut h);
            for (x, y) in xs.iter_mut().zip(&h) {
                *x += y;
            }
            block.ffn_norm.rows(&xs, &mut normed);
            let mut f = mlp_rows(&block.mlp, &normed, seq, hidden, exec)?;
            if let Some(experts) = &block.experts {
                experts.post_norm_dense.rows_in_place(&mut f);
                let mut e = self.experts(experts, &xs, seq, exec)?;
                experts.post_norm.rows_in_place(&mut e);
                for (a, b) in f.iter_mut().zip(&e) {
                    *a += b;
                }
            }
            block.post_ffn_norm.rows_in_place(&mut f);
            for (x, y) in xs.iter_mut().zip(&f) {
                *x += y;
            }
            if let (Some(pl), Some(inputs)) = (&block.per_layer, &per_layer_inputs) {
                let width = cfg.per_layer_input;
                let mut g = project(&pl.gate, &xs, seq, exec)?;
                let mine: Vec<f32> = inputs
                    .chunks_exact(width * cfg.num_hidden_layers)
                    .flat_map(|row| row[layer * width..(layer + 1) * width].iter().copied())
                    .collect();
                kernels::elementwise::gelu_tanh_mul(&mut g, &mine);
                let mut p = project(&pl.proj, &g, seq, exec)?;
                pl.post_norm.rows_in_place(&mut p);
                for (x, y) in xs.iter_mut().zip(&p) {
                    *x += y;
                }
            }
            if let Some(s) = block.out_scale {
                for x in &mut xs {
                    *x *= s;
                }
            }
        }
        let mut last = vec![0f32; hidden];
        self.norm.rows(&xs[(seq - 1) * hidden..], &mut last);
        let mut logits = project(&self.output, &last, 1, exec)?;
        let cap = cfg.final_logit_softcapping;
        if cap > 0.0 {
            for l in &mut logits {
                *l = (*l / cap).tanh() * cap;
            }
        }
        let n = logits.len();
        Ok(Tensor::from_vec(logits, n, &self.device)?)
    }
}
