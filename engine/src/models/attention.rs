//! Scaled dot-product attention shared by the architectures.
//!
//! The arithmetic is the oracle's (`q·kᵀ`, scale by `1/sqrt(d)`, mask,
//! softmax over the last axis, `·v`): candle's quantized matmuls round
//! activations to 8 bits, so a last-bit difference in f32 attention can flip a
//! rounding and grow into visibly different logits. Matching the float
//! operations keeps parity exact, not merely close.
//!
//! What differs is the memory traffic. candle-transformers copies each kv
//! head once per query head that reads it; here a group of query heads reads
//! its kv head in place. And candle-transformers
//! builds a `(seq, kv_len)` mask, then runs a scale, a broadcast add and a
//! softmax, each a pass over the whole `(heads, seq, kv_len)` score tensor
//! into a fresh allocation. A long prompt prefilled after a cached prefix makes
//! that tensor large (9 heads × 400 queries × 3,000 keys is 43 MB per layer),
//! and those passes cost as much as the layer's matmuls. Here one in-place,
//! parallel pass scales, masks and normalises each score row, computing the
//! same values.

use candle_core::cpu::kernels::VecOps;
use candle_core::{CpuStorage, Device, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// Which keys each query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMask {
    /// Every key (one query at the end of the sequence).
    All,
    /// Causal over `offset + seq` keys for `seq` queries that start at
    /// position `offset`; with `window = Some(w)` a query also sees only
    /// itself and the `w - 1` keys before it (sliding-window attention, as
    /// llama.cpp and Hugging Face define it).
    Causal {
        /// Position of the first query.
        offset: usize,
        /// Sliding window, if the layer has one.
        window: Option<usize>,
    },
}

impl KeyMask {
    /// Causal over everything before, no window.
    #[cfg(test)]
    pub(crate) fn causal(offset: usize) -> Self {
        KeyMask::Causal {
            offset,
            window: None,
        }
    }

    /// The keys `[first, last]` query `row` may see, or `None` for all.
    fn visible(&self, row: usize) -> Option<(usize, usize)> {
        match *self {
            KeyMask::All => None,
            KeyMask::Causal { offset, window } => {
                let query = offset + row;
                let first = window.map_or(0, |w| (query + 1).saturating_sub(w));
                Some((first, query))
            }
        }
    }
}

/// Additive `(seq, offset + seq)` mask: 0 where a query may look, -inf
/// elsewhere. Used where scores are not on the CPU, and by tests.
pub(crate) fn mask_tensor(seq: usize, mask: KeyMask, device: &Device) -> Result<Tensor> {
    let kv_len = match mask {
        KeyMask::All => seq,
        KeyMask::Causal { offset, .. } => offset + seq,
    };
    let values: Vec<f32> = (0..seq)
        .flat_map(|row| {
            let visible = mask.visible(row);
            (0..kv_len).map(move |key| match visible {
                Some((first, last)) if key < first || key > last => f32::NEG_INFINITY,
                _ => 0.0,
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (seq, kv_len), device)?)
}

/// Scaled dot-product attention. `q`: `(1, n_head, seq, d)`, `k`/`v`:
/// `(1, n_kv, kv_len, d)`; with a causal mask `kv_len` is `offset + seq`.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: KeyMask) -> Result<Tensor> {
    let (_, n_head, seq, _) = q.dims4()?;
    let (_, n_kv, _, d) = k.dims4()?;
    let n_rep = n_head / n_kv;
    let scale = 1.0 / (d as f64).sqrt();
    // One matmul pair per query head, reading its kv head (head h reads
    // h / n_rep) in place instead of from n_rep copies. These are the gemm
    // calls candle makes for the oracle's batched matmul, one per head, with
    // the same shapes and strides, so the sums come out the same. (A batched
    // matmul over a stride-0 kv head would be folded by candle into one
    // taller gemm, which sums in a different order.)
    let heads = (0..n_head)
        .map(|head| {
            let q = q.narrow(1, head, 1)?;
            let group = head / n_rep;
            let scores = q.matmul(&k.narrow(1, group, 1)?.t()?)?;
            let probs = scaled_masked_softmax(scores, scale, mask, seq)?;
            Ok(probs.matmul(&v.narrow(1, group, 1)?)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&heads, 1)?)
}

/// `softmax(scores / sqrt(d) + mask)` over the last axis of `(b, h, seq, kv_len)` scores.
fn scaled_masked_softmax(scores: Tensor, scale: f64, mask: KeyMask, seq: usize) -> Result<Tensor> {
    if scores.device().is_cpu() {
        scores.inplace_op1(&ScaledMaskedSoftmax {
            scale: scale as f32,
            mask,
            seq,
        })?;
        return Ok(scores);
    }
    let scores = (scores * scale)?;
    let scores = match mask {
        KeyMask::All => scores,
        mask => scores.broadcast_add(&mask_tensor(seq, mask, scores.device())?)?,
    };
    Ok(candle_nn::ops::softmax_last_dim(&scores)?)
}

/// `softmax(scores · scale + mask)` over the last axis, in place, one row per
/// rayon task. The values equal candle's `affine`, `broadcast_add` and
/// `softmax_last_dim` run in turn: the same products, the same maximum, the
/// same `exp`, and the row sum taken by candle's own vectorised reduction
/// over the whole row, masked keys included as zeros.
struct ScaledMaskedSoftmax {
    scale: f32,
    mask: KeyMask,
    seq: usize,
}

impl InplaceOp1 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "scaled-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("scaled-masked-softmax expects f32 scores");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("scaled-masked-softmax expects contiguous scores");
        };
        let kv_len = *layout.dims().last().unwrap_or(&0);
        if kv_len == 0 {
            return Ok(());
        }
        if let KeyMask::Causal { offset, .. } = self.mask {
            if offset + self.seq != kv_len {
                candle_core::bail!(
                    "causal attention over {kv_len} keys for {} queries at {offset}",
                    self.seq
                );
            }
        }
        data[start..end]
            .par_chunks_mut(kv_len)
            .enumerate()
            .for_each(|(row_index, row)| {
                let visible = self.mask.visible(row_index % self.seq);
                let (first, last) = visible.unwrap_or((0, kv_len - 1));
                let mut max = f32::NEG_INFINITY;
                for x in &mut row[first..=last] {
                    *x *= self.scale;
                    max = max.max(*x);
                }
                row[..first].fill(0.0);
                row[last + 1..].fill(0.0);
                for x in &mut row[first..=last] {
                    *x = (*x - max).exp();
                }
                let mut sum = 0f32;
                // SAFETY: `row` holds `kv_len` initialised f32s.
                unsafe { f32::vec_reduce_sum(row.as_ptr(), &mut sum, kv_len) };
                for x in &mut row[first..=last] {
                    *x /= sum;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn causal_mask_rectangular_values() {
        let mask = mask_tensor(2, KeyMask::causal(2), &Device::Cpu).unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(values(&mask), vec![0., 0., 0., inf, 0., 0., 0., 0.]);
    }

    #[test]
    fn sliding_window_mask_sees_self_and_window_minus_one_before() {
        let mask = KeyMask::Causal {
            offset: 4,
            window: Some(3),
        };
        let inf = f32::NEG_INFINITY;
        // Query at position 4 sees keys 2, 3, 4.
        assert_eq!(
            values(&mask_tensor(1, mask, &Device::Cpu).unwrap()),
            vec![inf, inf, 0., 0., 0.]
        );
    }

    #[test]
    fn repeat_kv_groups_heads_in_order() {
        let k = Tensor::arange(0f32, 2., &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        // Query heads 0..3 share kv head 0, heads 3..6 share kv head 1.
        assert_eq!(
            values(&repeat_kv(&k, 3).unwrap()),
            vec![0., 0., 0., 1., 1., 1.]
        );
    }

    /// Repeats each key/value head `n_rep` times so grouped-query attention can
    /// run as plain multi-head attention (`(b, n_kv, L, d)` → `(b, n_kv * n_rep, L, d)`).
    fn repeat_kv(xs: &Tensor, n_rep: usize) -> Result<Tensor> {
        if n_rep == 1 {
            return Ok(xs.clone());
        }
        let (b, n_kv, len, d) = xs.dims4()?;
        Ok(Tensor::cat(&vec![xs; n_rep], 2)?.reshape((b, n_kv * n_rep, len, d))?)
    }

    /// The oracle's sequence of tensor operations, as candle-transformers runs it.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: KeyMask) -> Tensor {
        let (_, n_head, seq, d) = q.dims4().unwrap();
        let n_rep = n_head / k.dim(1).unwrap();
        let k = repeat_kv(k, n_rep).unwrap();
        let v = repeat_kv(v, n_rep).unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let att = match mask {
            KeyMask::All => att,
            mask => att
                .broadcast_add(&mask_tensor(seq, mask, &Device::Cpu).unwrap())
                .unwrap(),
        };
        candle_nn::ops::softmax_last_dim(&att)
            .unwrap()
            .matmul(&v)
            .unwrap()
    }

    #[test]
    fn fused_softmax_is_bit_equal_to_the_separate_operations() {
        let dev = Device::Cpu;
        // kv_len 70 is not a multiple of the 32-wide vector sum, and the
        // window cuts rows on both sides.
        for (seq, offset, window) in [
            (1, 69, None),
            (7, 63, None),
            (70, 0, None),
            (9, 61, Some(5)),
        ] {
            let q = Tensor::randn(0f32, 1., (1, 6, seq, 8), &dev).unwrap();
            let k = Tensor::randn(0f32, 1., (1, 2, offset + seq, 8), &dev).unwrap();
            let v = Tensor::randn(0f32, 1., (1, 2, offset + seq, 8), &dev).unwrap();
            let mask = if seq == 1 && window.is_none() {
                KeyMask::All
            } else {
                KeyMask::Causal { offset, window }
            };
            let fused = values(&attention(&q, &k, &v, mask).unwrap());
            let separate = values(&reference(&q, &k, &v, mask));
            assert_eq!(
                fused, separate,
                "seq {seq} offset {offset} window {window:?}"
            );
        }
    }

    #[test]
    fn masked_attention_ignores_future_positions() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 2, 3, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (1, 1, 3, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (1, 1, 3, 4), &dev).unwrap();
        let out = attention(&q, &k, &v, KeyMask::causal(0)).unwrap();
        // The first query sees only the first key, so it returns the first value.
        let first = values(&out.narrow(2, 0, 1).unwrap());
        let v0 = values(&v.narrow(2, 0, 1).unwrap());
        for (head, chunk) in first.chunks(4).enumerate() {
            for (a, b) in chunk.iter().zip(&v0) {
                assert!((a - b).abs() < 1e-6, "head {head}: {a} vs {b}");
            }
        }
    }
}
