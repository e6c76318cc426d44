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
    const ZERO: Self = Self {
        qs: [0; QK_K],
        bsums: [0; 16],
        bsums32: [0; 8],
        d: 0.0,
    };
}

/// `q8_0` (or, with `with_s`, `q8_1`) of one row; `xs.len()` a multiple of 32.
pub fn quantize_row_q8_0(xs: &[f32], out: &mut [ActBlock32], with_s: bool) {
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
