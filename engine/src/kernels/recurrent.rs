//! The two operations of a Gated DeltaNet layer (Qwen 3.5's linear
//! attention) that are not matmuls: the short causal convolution over the
//! mixed q/k/v channels, and the gated delta rule, the recurrence that
//! replaces attention's KV cache with one `d × d` state per value head.
//!
//! Both follow ggml's CPU ops (`ggml_ssm_conv`, `ggml_gated_delta_net`) step
//! for step: the convolution sums its taps in order in f32, and the delta
//! rule decays the state, reads it with the key, writes the β-scaled error
//! back as a rank-one update and reads it with the query, one token at a
//! time. Each has a scalar reference beside it; the vector path differs from
//! it only in the order of the dot products' additions.

use super::pool::Pool;
use super::Tier;

/// A causal depthwise convolution of `kernel` taps over `channels` channels.
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    /// Channels, each convolved alone.
    pub channels: usize,
    /// Taps, the current input's included.
    pub kernel: usize,
}

/// Runs the convolution over `seq` token rows `x` (`seq × channels`) after
/// the `kernel - 1` rows held in `state` (time-major, oldest first), applies
/// SiLU, writes `out` (`seq × channels`) and leaves the last `kernel - 1`
/// input rows in `state`. `taps` is the weight tap-major (`kernel ×
/// channels`: tap `j` of channel `c` at `j · channels + c`), so every tap is
/// one pass over contiguous channels.
pub fn causal_conv_silu(
    shape: ConvShape,
    taps: &[f32],
    state: &mut [f32],
    x: &[f32],
    out: &mut [f32],
) {
    let ConvShape {
        channels: c,
        kernel,
    } = shape;
    assert_eq!(taps.len(), kernel * c);
    assert_eq!(state.len(), (kernel - 1) * c);
    assert_eq!(x.len(), out.len());
    let seq = x.len() / c;
    // The window rows: the held ones, then the new ones.
    let row = |t: usize| -> &[f32] {
        if t < kernel - 1 {
            &state[t * c..(t + 1) * c]
        } else {
            &x[(t + 1 - kernel) * c..(t + 2 - kernel) * c]
        }
    };
    for t in 0..seq {
        let dst = &mut out[t * c..(t + 1) * c];
        dst.fill(0.0);
        for j in 0..kernel {
            let input = row(t + j);
            let tap = &taps[j * c..(j + 1) * c];
            for ((o, &v), &w) in dst.iter_mut().zip(input).zip(tap) {
                *o += v * w;
            }
        }
        for o in dst.iter_mut() {
            *o = silu(*o);
        }
    }
    // The new state: the last kernel - 1 rows of (state ++ x).
    let total = kernel - 1 + seq;
    let mut kept = vec![0f32; (kernel - 1) * c];
    for (i, dst) in kept.chunks_exact_mut(c).enumerate() {
        dst.copy_from_slice(row(total - (kernel - 1) + i));
    }
    state.copy_from_slice(&kept);
}

/// The scalar [`causal_conv_silu`]: channel by channel, as ggml loops.
pub fn causal_conv_silu_reference(
    shape: ConvShape,
    taps: &[f32],
    state: &mut [f32],
    x: &[f32],
    out: &mut [f32],
) {
    let ConvShape {
        channels: c,
        kernel,
    } = shape;
    let seq = x.len() / c;
    let mut window: Vec<f32> = state.iter().chain(x).copied().collect();
    for t in 0..seq {
        for ch in 0..c {
            let mut sum = 0f32;
            for j in 0..kernel {
                sum += window[(t + j) * c + ch] * taps[j * c + ch];
            }
            out[t * c + ch] = silu(sum);
        }
    }
    let keep = window.split_off((seq) * c);
    state.copy_from_slice(&keep);
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rows of `dim` values scaled to unit L2 norm, as ggml's `l2_norm` with
/// `eps` folded the way llama.cpp's `build_gdn_l2_norm` writes it:
/// `x / sqrt(Σx² + eps)`.
pub fn l2_normalize_rows(x: &mut [f32], dim: usize, eps: f32) {
    for row in x.chunks_exact_mut(dim) {
        let sum: f32 = row.iter().map(|v| v * v).sum();
        let scale = 1.0 / (sum + eps).sqrt();
        for v in row.iter_mut() {
            *v *= scale;
        }
    }
}

/// Heads and sizes of one gated delta rule.
#[derive(Debug, Clone, Copy)]
pub struct DeltaShape {
    /// Value heads, each with its own state.
    pub heads: usize,
    /// Query/key heads; value head `h` reads key head `h % key_heads`
    /// (ggml tiles the key heads up to the value heads).
    pub key_heads: usize,
    /// Key and value size of a head (`d`; the state is `d × d`).
    pub dim: usize,
}

/// The gated delta rule over `seq` tokens, in place in `state`
/// (`heads × d × d`, row `j` of head `h` holding column `j` of the state
/// matrix `S`, ggml's layout). Per token and head, with `g` the log decay
/// and `β` the write strength:
///
/// ```text
/// S ← e^g · S;   δ = β · (v − Sᵀk);   S ← S + k δᵀ;   o = Sᵀq / √d
/// ```
///
/// `q`, `k` are `seq × key_heads × d`, `v` and `out` `seq × heads × d`,
/// `g` and `beta` `seq × heads`. Heads run in parallel on `pool`.
#[allow(clippy::too_many_arguments)]
pub fn gated_delta_rule(
    shape: DeltaShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    state: &mut [f32],
    out: &mut [f32],
    pool: &Pool,
) {
    let DeltaShape {
        heads,
        key_heads,
        dim,
    } = shape;
    check(shape, q, k, v, g, beta, state, out);
    let seq = g.len() / heads;
    let state_ptr = state.as_mut_ptr() as usize;
    let out_ptr = out.as_mut_ptr() as usize;
    let vector = Tier::detect() != Tier::Portable;
    pool.for_each(heads, &|h| {
        // SAFETY: head `h`'s state block and its output columns are written
        // by this task alone.
        let s = unsafe {
            std::slice::from_raw_parts_mut((state_ptr as *mut f32).add(h * dim * dim), dim * dim)
        };
        let out = unsafe { std::slice::from_raw_parts_mut(out_ptr as *mut f32, seq * heads * dim) };
        let hk = h % key_heads;
        let mut delta = vec![0f32; dim];
        for t in 0..seq {
            let q = &q[(t * key_heads + hk) * dim..][..dim];
            let k = &k[(t * key_heads + hk) * dim..][..dim];
            let v = &v[(t * heads + h) * dim..][..dim];
            let o = &mut out[(t * heads + h) * dim..][..dim];
            let (g, b) = (g[t * heads + h], beta[t * heads + h]);
            if vector {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a vector tier means the CPU has AVX2 and FMA.
                unsafe {
                    avx2::step(s, q, k, v, g, b, &mut delta, o)
                };
                #[cfg(not(target_arch = "x86_64"))]
                step(s, q, k, v, g, b, &mut delta, o);
            } else {
                step(s, q, k, v, g, b, &mut delta, o);
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn check(
    shape: DeltaShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    state: &[f32],
    out: &[f32],
) {
    let DeltaShape {
        heads,
        key_heads,
        dim,
    } = shape;
    let seq = g.len() / heads;
    assert!(key_heads > 0 && heads.is_multiple_of(key_heads));
    assert_eq!(g.len(), seq * heads);
    assert_eq!(beta.len(), seq * heads);
    assert_eq!(q.len(), seq * key_heads * dim);
    assert_eq!(k.len(), seq * key_heads * dim);
    assert_eq!(v.len(), seq * heads * dim);
    assert_eq!(out.len(), seq * heads * dim);
    assert_eq!(state.len(), heads * dim * dim);
}

/// One token of one head, written so the compiler vectorizes the row loops
/// (eight independent partial sums per dot product).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: f32,
    beta: f32,
    delta: &mut [f32],
    o: &mut [f32],
) {
    let dim = k.len();
    let decay = g.exp();
    for x in s.iter_mut() {
        *x *= decay;
    }
    for (j, d) in delta.iter_mut().enumerate() {
        *d = (v[j] - dot(&s[j * dim..(j + 1) * dim], k)) * beta;
    }
    for (j, &d) in delta.iter().enumerate() {
        for (x, &kk) in s[j * dim..(j + 1) * dim].iter_mut().zip(k) {
            *x += kk * d;
        }
    }
    let scale = 1.0 / (dim as f32).sqrt();
    for (j, o) in o.iter_mut().enumerate() {
        *o = dot(&s[j * dim..(j + 1) * dim], q) * scale;
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += x * y;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// [`super::step`] compiled for AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn step(
        s: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: f32,
        beta: f32,
        delta: &mut [f32],
        o: &mut [f32],
    ) {
        super::step(s, q, k, v, g, beta, delta, o)
    }
}

/// The scalar [`gated_delta_rule`], written as the formula reads, one head
/// and token at a time on the matrix `S[i][j]` (key index `i`, value `j`).
#[allow(clippy::too_many_arguments)]
pub fn gated_delta_rule_reference(
    shape: DeltaShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    state: &mut [f32],
    out: &mut [f32],
) {
    check(shape, q, k, v, g, beta, state, out);
    let DeltaShape {
        heads,
        key_heads,
        dim: d,
    } = shape;
    let seq = g.len() / heads;
    for h in 0..heads {
        let hk = h % key_heads;
        // S[i][j] is stored at j · d + i.
        let s = &mut state[h * d * d..(h + 1) * d * d];
        for t in 0..seq {
            let q = &q[(t * key_heads + hk) * d..][..d];
            let k = &k[(t * key_heads + hk) * d..][..d];
            let v = &v[(t * heads + h) * d..][..d];
            let (decay, b) = (g[t * heads + h].exp(), beta[t * heads + h]);
            for x in s.iter_mut() {
                *x *= decay;
            }
            let delta: Vec<f32> = (0..d)
                .map(|j| {
                    let read: f32 = (0..d).map(|i| s[j * d + i] * k[i]).sum();
                    (v[j] - read) * b
                })
                .collect();
            for j in 0..d {
                for i in 0..d {
                    s[j * d + i] += k[i] * delta[j];
                }
            }
            for j in 0..d {
                let read: f32 = (0..d).map(|i| s[j * d + i] * q[i]).sum();
                out[(t * heads + h) * d + j] = read / (d as f32).sqrt();
            }
        }
    }
}
