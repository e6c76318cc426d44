//! Element-wise activations and the small row operations around the
//! matmuls, on plain slices: each value computed alone, so a row's result
//! never depends on the other rows. The activations go through the engine's
//! polynomial `exp` ([`super::attention::exp`]), vectorized on AVX2 with the
//! same operations as the scalar code, so both give the same bits.

use super::attention::exp;

/// SiLU of the gate times the up projection, in place in `gate`:
/// `g / (1 + e^-g) · u`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the slices have equal lengths.
        unsafe { avx2::gated(gate, up, false) };
        return;
    }
    silu_mul_reference(gate, up);
}

/// The scalar [`silu_mul`].
pub fn silu_mul_reference(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// GELU (tanh approximation) of the gate times the up projection, in place
/// in `gate`. `0.5·x·(1 + tanh(y))` is written as `x / (1 + e^(-2y))`, the
/// same function, with `y = sqrt(2/π)·x·(1 + 0.044715·x²)`.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: as in `silu_mul`.
        unsafe { avx2::gated(gate, up, true) };
        return;
    }
    gelu_tanh_mul_reference(gate, up);
}

const MINUS_TWO_SQRT_2_OVER_PI: f32 = -1.595_769_2;
const GELU_CUBIC: f32 = 0.044_715;

/// The scalar [`gelu_tanh_mul`].
pub fn gelu_tanh_mul_reference(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let z = MINUS_TWO_SQRT_2_OVER_PI * x * (1.0 + GELU_CUBIC * x * x);
        *g = x / (1.0 + exp(z)) * u;
    }
}

/// Softmax of one row in place: the maximum, `e^(x - max)`, the sum in
/// order, then each divided by it.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = exp(*x - max);
        sum += *x;
    }
    for x in row.iter_mut() {
        *x /= sum;
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x` into `out`:
/// `x / sqrt(mean(x²) + eps) · weight`, the squares summed in order, as
/// candle's `rms_norm` computes it (so both paths of a model agree).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    assert_eq!(x.len(), out.len());
    assert!(x.len().is_multiple_of(n));
    for (src, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum2: f32 = src.iter().map(|&v| v * v).sum();
        let m = (sum2 / n as f32 + eps).sqrt();
        for ((d, &s), &w) in dst.iter_mut().zip(src).zip(weight) {
            *d = s / m * w;
        }
    }
}

/// [`rms_norm`] in place.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    assert!(x.len().is_multiple_of(n));
    for row in x.chunks_exact_mut(n) {
        let sum2: f32 = row.iter().map(|&v| v * v).sum();
        let m = (sum2 / n as f32 + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v / m * w;
        }
    }
}

/// Rotates each `2 · cos.len()`-wide head of `x` in place by the angles
/// whose cosines and sines are given: pairs `(2i, 2i + 1)` when
/// `interleaved`, else `(i, i + d/2)` (NeoX), with candle's formulas
/// `(a·cos - b·sin, a·sin + b·cos)`.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    assert_eq!(sin.len(), half);
    assert!(x.len().is_multiple_of(2 * half));
    for head in x.chunks_exact_mut(2 * half) {
        for i in 0..half {
            let (i1, i2) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (a, b) = (head[i1], head[i2]);
            head[i1] = a * cos[i] - b * sin[i];
            head[i2] = a * sin[i] + b * cos[i];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::attention::avx2::exp8;
    use super::{exp, GELU_CUBIC, MINUS_TWO_SQRT_2_OVER_PI};

    /// `gate = gate / (1 + e^z) · up` with `z = -gate` (SiLU) or the GELU
    /// argument, eight at a time, the tail by the scalar formula.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gated(gate: &mut [f32], up: &[f32], gelu: bool) {
        let n = gate.len();
        let g = gate.as_mut_ptr();
        let u = up.as_ptr();
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(g.add(i));
            let z = if gelu {
                // -2·sqrt(2/π)·x·(1 + c·x²), multiplied in the scalar order.
                let x2 = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_CUBIC), x), x);
                _mm256_mul_ps(
                    _mm256_mul_ps(_mm256_set1_ps(MINUS_TWO_SQRT_2_OVER_PI), x),
                    _mm256_add_ps(one, x2),
                )
            } else {
                _mm256_sub_ps(_mm256_setzero_ps(), x)
            };
            let y = _mm256_mul_ps(
                _mm256_div_ps(x, _mm256_add_ps(one, exp8(z))),
                _mm256_loadu_ps(u.add(i)),
            );
            _mm256_storeu_ps(g.add(i), y);
            i += 8;
        }
        for j in i..n {
            let x = *g.add(j);
            let z = if gelu {
                MINUS_TWO_SQRT_2_OVER_PI * x * (1.0 + GELU_CUBIC * x * x)
            } else {
                -x
            };
            *g.add(j) = x / (1.0 + exp(z)) * *u.add(j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_their_definitions() {
        let xs: Vec<f32> = (-200..=200).map(|i| i as f32 * 0.05).collect();
        let up = vec![2.0; xs.len()];
        let mut g = xs.clone();
        let mut h = xs.clone();
        silu_mul(&mut g, &up);
        gelu_tanh_mul(&mut h, &up);
        for (i, &x) in xs.iter().enumerate() {
            let x = x as f64;
            let silu = x / (1.0 + (-x).exp()) * 2.0;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
            let gelu = 0.5 * x * (1.0 + inner.tanh()) * 2.0;
            assert!(
                (g[i] as f64 - silu).abs() < 1e-5 * (1.0 + silu.abs()),
                "silu {x}"
            );
            assert!(
                (h[i] as f64 - gelu).abs() < 1e-5 * (1.0 + gelu.abs()),
                "gelu {x}"
            );
        }
    }

    #[test]
    fn vector_and_scalar_activations_agree_bit_for_bit() {
        // 403 values: fifty vector groups and a tail of three.
        let xs: Vec<f32> = (0..403).map(|i| (i as f32 - 200.0) * 0.137).collect();
        let up: Vec<f32> = (0..403).map(|i| 1.0 - i as f32 * 0.003).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (mut a, mut b) = (xs.clone(), xs.clone());
        silu_mul(&mut a, &up);
        silu_mul_reference(&mut b, &up);
        assert_eq!(bits(&a), bits(&b));
        let (mut a, mut b) = (xs.clone(), xs);
        gelu_tanh_mul(&mut a, &up);
        gelu_tanh_mul_reference(&mut b, &up);
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn rms_norm_scales_rows_to_unit_mean_square() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let w = [1.0, 2.0, 1.0, 1.0];
        let mut out = [0f32; 8];
        rms_norm(&x, &w, 0.0, &mut out);
        // Row 1: mean square 25/4, so x / 2.5.
        assert_eq!(out[..4], [1.2, 3.2, 0.0, 0.0]);
        assert_eq!(out[4..], [1.0, 2.0, 1.0, 1.0]);
        let mut y = x;
        rms_norm_in_place(&mut y, &w, 0.0);
        assert_eq!(y, out);
    }

    #[test]
    fn rope_rotates_the_right_pairs() {
        // A quarter turn: (a, b) → (-b, a).
        let (cos, sin) = ([0.0, 1.0], [1.0, 0.0]);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope(&mut x, &cos, &sin, true);
        assert_eq!(x, [-2.0, 1.0, 3.0, 4.0]);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope(&mut x, &cos, &sin, false);
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row = vec![1.0, 3.0, -2.0, 3.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[1] == row[3] && row[1] > row[0] && row[0] > row[2]);
    }
}
