//! Activation quantization: each row of a matmul's input is rounded to 8 bits
//! once, in ggml's formats (`q8_0`, `q8_1`, `q8_K`), bit for bit as ggml and
//! candle compute them, so integer sums equal theirs. Each row is quantized
//! on its own, which is what makes a row's result independent of how many
//! rows are multiplied together.

use half::f16;

use super::formats::{QK32, QK_K};

/// One 32-value activation block (`q8_0` or `q8_1`) with the sums the
/// kernels' offset corrections need.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub struct ActBlock32 {
    /// The quants.
    pub qs: [i8; QK32],
    /// Scale, the stored f16 read back as f32.
    pub d: f32,
    /// `q8_1` only: the f16 `d · Σ qs`, read back as f32.
    pub s: f32,
    /// Σ qs (exact), for formats with an offset.
    pub sum: i32,
}

impl ActBlock32 {
    const ZERO: Self = Self {
        qs: [0; QK32],
        d: 0.0,
        s: 0.0,
        sum: 0,
    };
}

/// One 256-value activation super-block (`q8_K`).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub struct ActBlockK {
    /// The quants.
    pub qs: [i8; QK_K],
    /// Sums of each 16 quants.
    pub bsums: [i16; 16],
    /// Sums of each 32 quants (pairs of `bsums`), for the Q4_K/Q5_K minimums.
    pub bsums32: [i16; 8],
    /// Scale.
    pub d: f32,
}

impl ActBlockK {
    pub(crate) const ZERO: Self = Self {
        qs: [0; QK_K],
        bsums: [0; 16],
        bsums32: [0; 8],
        d: 0.0,
    };
}

/// `q8_0` (or, with `with_s`, `q8_1`) of one row; `xs.len()` a multiple of 32.
pub fn quantize_row_q8_0(xs: &[f32], out: &mut [ActBlock32], with_s: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe { avx2::q8_0(xs, out, with_s) };
        return;
    }
    quantize_row_q8_0_reference(xs, out, with_s);
}

/// The scalar [`quantize_row_q8_0`]: ggml's `quantize_row_q8_0`/`q8_1`.
pub fn quantize_row_q8_0_reference(xs: &[f32], out: &mut [ActBlock32], with_s: bool) {
    for (x, y) in xs.chunks_exact(QK32).zip(out.iter_mut()) {
        let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let d16 = f16::from_f32(d);
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        y.d = d16.to_f32();
        y.sum = sum;
        y.s = if with_s {
            (f16::from_f32(sum as f32) * d16).to_f32()
        } else {
            0.0
        };
    }
}

/// `q8_K` of one row; `xs.len()` a multiple of 256.
pub fn quantize_row_q8k(xs: &[f32], out: &mut [ActBlockK]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe { avx2::q8k(xs, out) };
        return;
    }
    quantize_row_q8k_reference(xs, out);
}

/// The scalar [`quantize_row_q8k`]: ggml's `quantize_row_q8_K`.
pub fn quantize_row_q8k_reference(xs: &[f32], out: &mut [ActBlockK]) {
    for (x, y) in xs.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = ActBlockK::ZERO;
            continue;
        }
        let iscale = -127f32 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
        }
        for j in 0..16 {
            y.bsums[j] = y.qs[16 * j..16 * (j + 1)]
                .iter()
                .map(|&q| q as i32)
                .sum::<i32>() as i16;
        }
        for j in 0..8 {
            y.bsums32[j] = y.bsums[2 * j] + y.bsums[2 * j + 1];
        }
        y.d = 1.0 / iscale;
    }
}

/// The same on AVX2: the scales as the scalar code computes them, the
/// products and the rounding (half away from zero, as `f32::round`) exactly.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{ActBlock32, ActBlockK, QK32, QK_K};

    /// `v.round()` (half away from zero), exact: truncate, then step away
    /// from zero when the dropped part is at least a half.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn round_away(v: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
        let step = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        _mm256_add_ps(t, _mm256_and_ps(up, step))
    }

    /// 32 rounded values (each in i8 range) as bytes in order, and their sum.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn pack32(r: [__m256; 4], out: *mut i8) -> i32 {
        let i = [
            _mm256_cvtps_epi32(r[0]),
            _mm256_cvtps_epi32(r[1]),
            _mm256_cvtps_epi32(r[2]),
            _mm256_cvtps_epi32(r[3]),
        ];
        let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        // packs interleave 128-bit lanes; the permute puts them back in order.
        let w01 = _mm256_packs_epi32(i[0], i[1]);
        let w23 = _mm256_packs_epi32(i[2], i[3]);
        let b = _mm256_packs_epi16(w01, w23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out as *mut __m256i, b);
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
        _mm_cvtss_f32(m)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q8_0(xs: &[f32], out: &mut [ActBlock32], with_s: bool) {
        let abs = _mm256_set1_ps(-0.0);
        for (x, y) in xs.chunks_exact(QK32).zip(out.iter_mut()) {
            let p = x.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let a = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(abs, v[0]), _mm256_andnot_ps(abs, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(abs, v[2]), _mm256_andnot_ps(abs, v[3])),
            );
            let amax = hmax(a);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let r = v.map(|v| round_away(_mm256_mul_ps(v, idv)));
            let sum = pack32(r, y.qs.as_mut_ptr());
            let d16 = f16::from_f32(d);
            y.d = d16.to_f32();
            y.sum = sum;
            y.s = if with_s {
                (f16::from_f32(sum as f32) * d16).to_f32()
            } else {
                0.0
            };
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q8k(xs: &[f32], out: &mut [ActBlockK]) {
        let abs = _mm256_set1_ps(-0.0);
        for (x, y) in xs.chunks_exact(QK_K).zip(out.iter_mut()) {
            let p = x.as_ptr();
            let mut a = _mm256_setzero_ps();
            for c in (0..QK_K).step_by(8) {
                a = _mm256_max_ps(a, _mm256_andnot_ps(abs, _mm256_loadu_ps(p.add(c))));
            }
            let amax = hmax(a);
            if amax == 0.0 {
                *y = ActBlockK::ZERO;
                continue;
            }
            // The first value of largest magnitude, with its sign, as the
            // scalar scan finds it.
            let max = *x
                .iter()
                .find(|v| v.abs() == amax)
                .expect("the maximum is in the block");
            let iscale = -127f32 / max;
            let sv = _mm256_set1_ps(iscale);
            let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
            for g in 0..QK_K / 32 {
                let r: [__m256; 4] = std::array::from_fn(|k| {
                    let v = _mm256_mul_ps(sv, _mm256_loadu_ps(p.add(32 * g + 8 * k)));
                    _mm256_min_ps(_mm256_max_ps(round_away(v), lo), hi)
                });
                pack32(r, y.qs.as_mut_ptr().add(32 * g));
            }
            for j in 0..16 {
                y.bsums[j] = y.qs[16 * j..16 * (j + 1)]
                    .iter()
                    .map(|&q| q as i32)
                    .sum::<i32>() as i16;
            }
            for j in 0..8 {
                y.bsums32[j] = y.bsums[2 * j] + y.bsums[2 * j + 1];
            }
            y.d = 1.0 / iscale;
        }
    }
}

/// Quantized activations of `m` rows, reused between matmuls.
#[derive(Default)]
pub struct QuantizedActs {
    /// Row-major 32-value blocks.
    pub blocks32: Vec<ActBlock32>,
    /// Row-major super-blocks.
    pub blocks_k: Vec<ActBlockK>,
}

impl QuantizedActs {
    /// Room for `n` 32-value blocks (contents unspecified until written).
    pub fn reserve32(&mut self, n: usize) -> &mut [ActBlock32] {
        if self.blocks32.len() < n {
            self.blocks32.resize(n, ActBlock32::ZERO);
        }
        &mut self.blocks32[..n]
    }

    /// Room for `n` super-blocks (contents unspecified until written).
    pub fn reserve_k(&mut self, n: usize) -> &mut [ActBlockK] {
        if self.blocks_k.len() < n {
            self.blocks_k.resize(n, ActBlockK::ZERO);
        }
        &mut self.blocks_k[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Rows with ties at .5 after scaling, zeros, equal magnitudes of both
    /// signs, outliers and ordinary values.
    fn rows() -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(4);
        let mut rows = vec![vec![0.0; 512]];
        let mut ties: Vec<f32> = (0..512).map(|i| (i % 255) as f32 - 127.0).collect();
        ties[0] = 127.0;
        rows.push(ties.iter().map(|v| v + 0.5).collect());
        rows.push(ties);
        let mut signs: Vec<f32> = (0..512).map(|_| rng.random_range(-1.0..1.0)).collect();
        signs[5] = -3.0;
        signs[9] = 3.0;
        rows.push(signs);
        for _ in 0..20 {
            let scale = 10f32.powi(rng.random_range(-4..4));
            rows.push(
                (0..512)
                    .map(|_| rng.random_range(-1.0..1.0) * scale)
                    .collect(),
            );
        }
        rows
    }

    #[test]
    fn vector_quantization_equals_the_scalar_code() {
        for row in rows() {
            for with_s in [false, true] {
                let mut a = vec![ActBlock32::ZERO; 16];
                let mut b = vec![ActBlock32::ZERO; 16];
                quantize_row_q8_0(&row, &mut a, with_s);
                quantize_row_q8_0_reference(&row, &mut b, with_s);
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.qs, y.qs);
                    assert_eq!(
                        (x.d.to_bits(), x.s.to_bits(), x.sum),
                        (y.d.to_bits(), y.s.to_bits(), y.sum)
                    );
                }
            }
            let mut a = vec![ActBlockK::ZERO; 2];
            let mut b = vec![ActBlockK::ZERO; 2];
            quantize_row_q8k(&row, &mut a);
            quantize_row_q8k_reference(&row, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.qs, y.qs);
                assert_eq!(
                    (x.bsums, x.bsums32, x.d.to_bits()),
                    (y.bsums, y.bsums32, y.d.to_bits())
                );
            }
        }
    }
}
