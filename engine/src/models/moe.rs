//! Sparse mixture-of-experts feed-forward, shared by the MoE architectures
//! (mixtral-style `llama`, `qwen3_moe`): a router picks the top-k experts per
//! token from a softmax over all experts, and only experts some token routed
//! to run, each on the rows routed to it.
//!
//! Written as candle-transformers' `quantized_llama` writes its MoE (softmax,
//! stable sort, f32 renormalisation, `index_select` / `index_add`) so the
//! mixtral-style parity with that oracle is exact, not merely close.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kernels::{self, PackedMatrix};
use crate::models::layers::{with_cpu_slice, Activation, Linear, Mlp};

/// One layer's experts, router and invocation counters.
#[derive(Debug)]
pub(crate) struct SparseMoe {
    router: Linear,
    experts: Vec<Mlp>,
    top_k: usize,
    /// Rescale the selected weights to sum to one (mixtral, most qwen3_moe).
    normalize: bool,
    /// Token rows each expert has computed since load: the proof that
    /// experts no token routed to never run.
    rows: Vec<AtomicU64>,
}

impl SparseMoe {
    /// Loads `{prefix}.ffn_gate_inp` and the experts, from stacked
    /// `ffn_{gate,up,down}_exps` tensors (what current GGUF files hold) or
    /// per-expert `ffn_{gate,up,down}.{i}` tensors (older mixtral files).
    pub(crate) fn new(
        gguf: &Gguf,
        prefix: &str,
        n_expert: usize,
        top_k: usize,
        normalize: bool,
        device: &Device,
    ) -> Result<Self> {
        let router = Linear::in_block(gguf, prefix, "ffn_gate_inp", device)?;
        Self::with_router(
            gguf,
            prefix,
            router,
            n_expert,
            top_k,
            normalize,
            Activation::Silu,
            device,
        )
    }

    /// [`SparseMoe::new`] with a given router and expert activation; the
    /// experts' gate and up projections may also be one fused
    /// `ffn_gate_up_exps` tensor (gate rows first), as Gemma 4 files hold.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn with_router(
        gguf: &Gguf,
        prefix: &str,
        router: Linear,
        n_expert: usize,
        top_k: usize,
        normalize: bool,
        activation: Activation,
        device: &Device,
    ) -> Result<Self> {
        if top_k == 0 || top_k > n_expert {
            return Err(EngineError::Metadata(format!(
                "expert_used_count {top_k} must be between 1 and expert_count {n_expert}"
            )));
        }
        let fused = format!("{prefix}.ffn_gate_up_exps.weight");
        let experts = if gguf.has_tensor(&fused) {
            let rows = gguf.tensor_dims(&fused)?.get(1).copied().unwrap_or(0);
            if rows == 0 || !rows.is_multiple_of(2) {
                return Err(EngineError::Metadata(format!(
                    "tensor `{fused}` has {rows} rows per expert, not a gate and an up half"
                )));
            }
            let half = rows / 2;
            let gate = gguf.expert_row_linears(&fused, n_expert, 0..half, device)?;
            let up = gguf.expert_row_linears(&fused, n_expert, half..rows, device)?;
            let down =
                gguf.expert_linears(&format!("{prefix}.ffn_down_exps.weight"), n_expert, device)?;
            gate.into_iter()
                .zip(up)
                .zip(down)
                .map(|((g, u), d)| Mlp::from_weights(g, u, d, activation))
                .collect()
        } else if gguf.has_tensor(&format!("{prefix}.ffn_gate_exps.weight")) {
            let split = |name: &str| {
                gguf.expert_linears(&format!("{prefix}.{name}.weight"), n_expert, device)
            };
            let (gate, up, down) = (
                split("ffn_gate_exps")?,
                split("ffn_up_exps")?,
                split("ffn_down_exps")?,
            );
            gate.into_iter()
                .zip(up)
                .zip(down)
                .map(|((g, u), d)| Ok(Mlp::from_weights(g, u, d, activation)))
                .collect::<Result<Vec<_>>>()?
        } else {
            (0..n_expert)
                .map(|i| {
                    let w = |name: &str| {
                        Linear::load(gguf, &format!("{prefix}.{name}.{i}.weight"), device)
                    };
                    Ok(Mlp::from_weights(
                        w("ffn_gate")?,
                        w("ffn_up")?,
                        w("ffn_down")?,
                        activation,
                    ))
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Self {
            router,
            experts,
            top_k,
            normalize,
            rows: (0..n_expert).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Rows each expert has computed since load.
    pub(crate) fn expert_rows(&self) -> Vec<u64> {
        self.rows
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether the router and every expert run the engine's kernels.
    pub(crate) fn runs_on_rows(&self) -> bool {
        matches!(self.router, Linear::Packed(_))
            && self.experts.iter().all(|e| e.packed().is_some())
    }

    /// `rows` rows of `x` through the layer, added into `out`, on the
    /// engine's kernels. Requires [`SparseMoe::runs_on_rows`].
    pub(crate) fn forward_rows_packed(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let Linear::Packed(router) = &self.router else {
            panic!("a packed router");
        };
        self.forward_rows(router, x, rows, x.len() / rows, out);
    }

    /// `(b, seq, hidden)` → `(b, seq, hidden)`.
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.device().is_cpu() {
            if let (Linear::Packed(router), true) = (
                &self.router,
                self.experts.iter().all(|e| e.packed().is_some()),
            ) {
                let (b, seq, hidden) = xs.dims3()?;
                let rows = b * seq;
                let mut out = vec![0f32; rows * hidden];
                with_cpu_slice(&xs.contiguous()?, |x| {
                    self.forward_rows(router, x, rows, hidden, &mut out);
                    Ok(())
                })?;
                return Ok(Tensor::from_vec(out, (b, seq, hidden), xs.device())?);
            }
        }
        let (b, seq, hidden) = xs.dims3()?;
        let xs = xs.reshape(((), hidden))?;
        let router_logits = self.router.forward(&xs)?;
        let weights = candle_nn::ops::softmax_last_dim(&router_logits)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;

        // Group token rows by expert, with each row's (renormalised) weight.
        let n_expert = self.experts.len();
        let mut rows = vec![vec![]; n_expert];
        let mut row_weights = vec![vec![]; n_expert];
        for (row, w) in weights.iter().enumerate() {
            let mut order: Vec<usize> = (0..w.len()).collect();
            // Stable sort: ties go to the lower expert index, as in the oracle.
            order.sort_by(|&i, &j| w[j].total_cmp(&w[i]));
            let chosen = &order[..self.top_k];
            let sum: f32 = if self.normalize {
                chosen.iter().map(|&e| w[e]).sum()
            } else {
                1.0
            };
            for &e in chosen {
                rows[e].push(row as u32);
                row_weights[e].push(w[e] / sum);
            }
        }

        let mut ys = xs.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            self.rows[e].fetch_add(rows[e].len() as u64, Ordering::Relaxed);
            let index = Tensor::new(rows[e].as_slice(), xs.device())?;
            let scale = Tensor::new(row_weights[e].as_slice(), xs.device())?.reshape(((), 1))?;
            let out = expert.forward(&xs.index_select(&index, 0)?)?;
            ys = ys.index_add(&index, &out.broadcast_mul(&scale)?, 0)?;
        }
        Ok(ys.reshape((b, seq, hidden))?)
    }

    /// The same on the engine's kernels and plain slices: the router, a
    /// softmax per row, the top-k (ties to the lower expert) renormalised,
    /// then each expert on the rows routed to it, gathered, and its outputs
    /// added into those rows weighted, experts in index order, so a row's
    /// sum does not depend on the other rows.
    fn forward_rows(
        &self,
        router: &PackedMatrix,
        x: &[f32],
        rows: usize,
        hidden: usize,
        out: &mut [f32],
    ) {
        let n_expert = self.experts.len();
        let mut probs = vec![0f32; rows * n_expert];
        router.matmul(x, rows, &mut probs);
        let routed = self.route(&mut probs);
        self.run_routed(&routed, x, hidden, out, |expert, gathered, n, y| {
            expert.forward_rows(gathered, n, y);
            Ok(())
        })
        .expect("the packed experts do not fail");
    }

    /// Which rows each expert takes, with their weights, from the router's
    /// logits (`rows × n_expert`, overwritten by the probabilities): a
    /// softmax per row, the top-k (ties to the lower expert), renormalised
    /// when the model does.
    pub(crate) fn route(&self, logits: &mut [f32]) -> Vec<Vec<(usize, f32)>> {
        let n_expert = self.experts.len();
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_expert];
        let mut order: Vec<usize> = Vec::with_capacity(n_expert);
        for (row, p) in logits.chunks_exact_mut(n_expert).enumerate() {
            kernels::elementwise::softmax(p);
            order.clear();
            order.extend(0..n_expert);
            order.sort_by(|&i, &j| p[j].total_cmp(&p[i]));
            let chosen = &order[..self.top_k];
            let sum: f32 = if self.normalize {
                chosen.iter().map(|&e| p[e]).sum()
            } else {
                1.0
            };
            for &e in chosen {
                routed[e].push((row, p[e] / sum));
            }
        }
        routed
    }

    /// Each expert on the rows of `x` routed to it (gathered), its outputs
    /// added into those rows of `out` weighted, experts in index order, so
    /// a row's sum does not depend on the other rows. `run(expert, rows, n,
    /// out)` computes one expert on `n` gathered rows.
    pub(crate) fn run_routed(
        &self,
        routed: &[Vec<(usize, f32)>],
        x: &[f32],
        hidden: usize,
        out: &mut [f32],
        mut run: impl FnMut(&Mlp, &[f32], usize, &mut Vec<f32>) -> Result<()>,
    ) -> Result<()> {
        let mut gathered = Vec::new();
        let mut y = Vec::new();
        for (e, expert) in self.experts.iter().enumerate() {
            let picks = &routed[e];
            if picks.is_empty() {
                continue;
            }
            self.rows[e].fetch_add(picks.len() as u64, Ordering::Relaxed);
            gathered.clear();
            for &(row, _) in picks {
                gathered.extend_from_slice(&x[row * hidden..(row + 1) * hidden]);
            }
            y.resize(picks.len() * hidden, 0.0);
            run(expert, &gathered, picks.len(), &mut y)?;
            for (i, &(row, w)) in picks.iter().enumerate() {
                let dst = &mut out[row * hidden..(row + 1) * hidden];
                for (o, v) in dst.iter_mut().zip(&y[i * hidden..(i + 1) * hidden]) {
                    *o += w * v;
                }
            }
        }
        Ok(())
    }

    /// The router (for a model that computes its logits itself).
    pub(crate) fn router(&self) -> &Linear {
        &self.router
    }

    /// Parameters of one expert.
    pub(crate) fn expert_parameters(hidden: usize, expert_ff: usize) -> u64 {
        3 * (hidden * expert_ff) as u64
    }
}
