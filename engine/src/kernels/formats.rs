//! GGUF weight block formats the engine's kernels compute on, read straight
//! from the file's bytes: sizes, dequantization, and the scalar reference dot
//! products every vector kernel is tested against.
//!
//! The reference dot products fix the arithmetic every kernel reproduces bit
//! for bit: integer sums per block (exact), then a fixed sequence of f32
//! operations per block, summed over blocks in order. For the 32-value
//! formats that sequence is ggml's generic one (`vec_dot_q4_0_q8_0` and
//! friends, as candle's `vec_dot_unopt` writes them), so a kernel result also
//! equals candle's generic path exactly; for the K-quants the sums over
//! sub-blocks stay integer and only two float products per super-block
//! remain, which is both exact to reproduce in SIMD and more precise than
//! ggml's per-sub-block float accumulation.

use half::f16;

use super::quantize::{ActBlock32, ActBlockK};

/// Values per K-quant super-block.
pub const QK_K: usize = 256;
/// Values per block of the 32-value formats.
pub const QK32: usize = 32;
/// Values per NVFP4 block (four sub-blocks of [`NVFP4_SUB`]).
pub const QK_NVFP4: usize = 64;
/// Values per NVFP4 sub-block, each with its own scale.
pub const NVFP4_SUB: usize = 16;

/// The E2M1 values doubled (ggml `kvalues_mxfp4`), indexed by the 4-bit
/// code: sign bit 3, then exponent and mantissa.
pub const KVALUES_FP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// A weight format with kernels of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// Plain f32.
    F32,
    /// 4-bit, one f16 scale per 32 values, offset 8.
    Q4_0,
    /// 4-bit, f16 scale and minimum per 32 values.
    Q4_1,
    /// 5-bit, one f16 scale per 32 values, offset 16.
    Q5_0,
    /// 8-bit, one f16 scale per 32 values.
    Q8_0,
    /// 4-bit K-quant: 8 sub-blocks of 32 with 6-bit scales and minimums.
    Q4K,
    /// 5-bit K-quant, laid out like Q4_K plus one high bit per value.
    Q5K,
    /// 6-bit K-quant: 16 sub-blocks of 16 with 8-bit signed scales, offset 32.
    Q6K,
    /// 4-bit E2M1 (OCP microscaling), one E8M0 scale byte per 32 values
    /// (ggml type 39).
    Mxfp4,
    /// 4-bit E2M1 (NVIDIA), one UE4M3 scale byte per 16 values, blocks of
    /// 64 (ggml type 40).
    Nvfp4,
}

/// How activations are quantized for a weight format (ggml's `vec_dot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// Kept in f32.
    F32,
    /// 8-bit per 32 values, f16 scale (ggml `q8_0`).
    Q8_0,
    /// 8-bit per 32 values, f16 scale and scaled sum (ggml `q8_1`).
    Q8_1,
    /// 8-bit per 256 values, f32 scale and sums per 16 (ggml `q8_K`).
    Q8K,
}

impl WeightFormat {
    /// The format of a GGUF tensor type, if the kernels handle it.
    pub fn from_ggml(dtype: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as G;
        Some(match dtype {
            G::F32 => Self::F32,
            G::Q4_0 => Self::Q4_0,
            G::Q4_1 => Self::Q4_1,
            G::Q5_0 => Self::Q5_0,
            G::Q8_0 => Self::Q8_0,
            G::Q4K => Self::Q4K,
            G::Q5K => Self::Q5K,
            G::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    /// Values per block.
    pub const fn block_values(self) -> usize {
        match self {
            Self::F32 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => QK32,
            Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
            Self::Mxfp4 => QK32,
            Self::Nvfp4 => QK_NVFP4,
        }
    }

    /// The format of a GGUF type id candle does not know (the FP4 types).
    pub const fn from_ggml_id(id: u32) -> Option<Self> {
        match id {
            39 => Some(Self::Mxfp4),
            40 => Some(Self::Nvfp4),
            _ => None,
        }
    }

    /// Bytes per block in the file (and in the repacked layout).
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::Mxfp4 => 17,
            Self::Nvfp4 => 36,
        }
    }

    /// The activation format its dot products take.
    pub const fn act_format(self) -> ActFormat {
        match self {
            Self::F32 => ActFormat::F32,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 | Self::Mxfp4 | Self::Nvfp4 => ActFormat::Q8_0,
            Self::Q4_1 => ActFormat::Q8_1,
            Self::Q4K | Self::Q5K | Self::Q6K => ActFormat::Q8K,
        }
    }

    /// Bytes of one row of `k` values.
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_values() * self.block_bytes()
    }
}

/// An MXFP4 block's E8M0 scale byte as ggml reads it (`ggml_e8m0_to_fp32_half`):
/// `2^(e-128)`, half the E8M0 value, to go with the doubled [`KVALUES_FP4`].
/// Bytes 0 and 1 give the subnormals `2^-128` and `2^-127`; 255 (E8M0's NaN)
/// is read as `2^127`, as ggml does.
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// An NVFP4 sub-block's UE4M3 scale byte as ggml reads it
/// (`ggml_ue4m3_to_fp32`): 4 exponent bits (bias 7) and 3 mantissa bits,
/// halved for the doubled [`KVALUES_FP4`]; the top bit is ignored, and 0 and
/// 0x7F (the NaN) are 0.
pub fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let exp = ((x >> 3) & 0xF) as i32;
    let man = (x & 7) as f32;
    // Exact in f32: a 4-bit significand times a power of two.
    let pow2 = |n: i32| f32::from_bits(((n + 127) as u32) << 23);
    let raw = if exp == 0 {
        man * pow2(-9)
    } else {
        (1.0 + man / 8.0) * pow2(exp - 7)
    };
    raw * 0.5
}

/// The 32 signed values of an MXFP4 block (doubled E2M1) in order, and its scale.
pub(crate) fn decode_mxfp4(b: &[u8]) -> (f32, [i8; QK32]) {
    let mut q = [0i8; QK32];
    for j in 0..16 {
        q[j] = KVALUES_FP4[(b[1 + j] & 0xF) as usize];
        q[j + 16] = KVALUES_FP4[(b[1 + j] >> 4) as usize];
    }
    (e8m0_half(b[0]), q)
}

/// The 64 signed values of an NVFP4 block (doubled E2M1) in order, and its
/// four sub-block scales.
pub(crate) fn decode_nvfp4(b: &[u8]) -> ([f32; 4], [i8; QK_NVFP4]) {
    let mut q = [0i8; QK_NVFP4];
    for s in 0..4 {
        for j in 0..8 {
            let byte = b[4 + 8 * s + j];
            q[16 * s + j] = KVALUES_FP4[(byte & 0xF) as usize];
            q[16 * s + j + 8] = KVALUES_FP4[(byte >> 4) as usize];
        }
    }
    (
        [
            ue4m3_half(b[0]),
            ue4m3_half(b[1]),
            ue4m3_half(b[2]),
            ue4m3_half(b[3]),
        ],
        q,
    )
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K super-block
/// (ggml `get_scale_min_k4`).
pub(crate) fn scale_min_k4(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// One block's integer quants, as unsigned values before their offset, with
/// its scales: what repacking and the reference read out of the file bytes.
pub(crate) struct Decoded32 {
    pub d: f32,
    pub m: f32,
    /// Unsigned quants (Q4: 0..16, Q5: 0..32; Q8_0: the signed byte as u8).
    pub q: [u8; QK32],
}

/// Decodes one 32-value block.
pub(crate) fn decode32(format: WeightFormat, b: &[u8]) -> Decoded32 {
    let mut q = [0u8; QK32];
    let (d, m) = match format {
        WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q5_0 => {
            let qs_at = match format {
                WeightFormat::Q4_0 => 2,
                WeightFormat::Q4_1 => 4,
                _ => 6,
            };
            let qh = if format == WeightFormat::Q5_0 {
                u32_at(b, 2)
            } else {
                0
            };
            for j in 0..16 {
                let byte = b[qs_at + j];
                q[j] = (byte & 0xF) | ((((qh >> j) & 1) as u8) << 4);
                q[j + 16] = (byte >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            }
            let m = if format == WeightFormat::Q4_1 {
                f16_at(b, 2)
            } else {
                0.0
            };
            (f16_at(b, 0), m)
        }
        WeightFormat::Q8_0 => {
            q.copy_from_slice(&b[2..34]);
            (f16_at(b, 0), 0.0)
        }
        _ => unreachable!("not a 32-value format"),
    };
    Decoded32 { d, m, q }
}

/// One K-quant super-block's quants (unsigned, before offset) and scales.
pub(crate) struct DecodedK {
    pub d: f32,
    pub dmin: f32,
    /// Q4_K/Q5_K: 8 scales (6-bit); Q6_K: 16 signed scales.
    pub scales: [i32; 16],
    /// Q4_K/Q5_K: 8 minimums.
    pub mins: [i32; 8],
    /// Quants: Q4_K 0..16, Q5_K 0..32, Q6_K 0..64 (offset 32).
    pub q: [u8; QK_K],
}

/// Decodes one K-quant super-block.
pub(crate) fn decode_k(format: WeightFormat, b: &[u8]) -> DecodedK {
    let mut out = DecodedK {
        d: 0.0,
        dmin: 0.0,
        scales: [0; 16],
        mins: [0; 8],
        q: [0; QK_K],
    };
    match format {
        WeightFormat::Q4K | WeightFormat::Q5K => {
            out.d = f16_at(b, 0);
            out.dmin = f16_at(b, 2);
            let scales = &b[4..16];
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, scales);
                out.scales[j] = s as i32;
                out.mins[j] = m as i32;
            }
            let (qh, qs) = if format == WeightFormat::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for p in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * p + l];
                    let (mut lo, mut hi) = (byte & 0xF, byte >> 4);
                    if let Some(qh) = qh {
                        lo |= ((qh[l] >> (2 * p)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * p + 1)) & 1) << 4;
                    }
                    out.q[64 * p + l] = lo;
                    out.q[64 * p + 32 + l] = hi;
                }
            }
        }
        WeightFormat::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            out.d = f16_at(b, 208);
            for (j, s) in sc.iter().enumerate() {
                out.scales[j] = *s as i8 as i32;
            }
            for h in 0..2 {
                for l in 0..32 {
                    let a = ql[64 * h + l];
                    let c = ql[64 * h + 32 + l];
                    let hb = qh[32 * h + l];
                    out.q[128 * h + l] = (a & 0xF) | ((hb & 3) << 4);
                    out.q[128 * h + 32 + l] = (c & 0xF) | (((hb >> 2) & 3) << 4);
                    out.q[128 * h + 64 + l] = (a >> 4) | (((hb >> 4) & 3) << 4);
                    out.q[128 * h + 96 + l] = (c >> 4) | (((hb >> 6) & 3) << 4);
                }
            }
        }
        _ => unreachable!("not a K-quant"),
    }
    out
}

/// Dequantizes one row of `out.len()` values from its file bytes.
pub fn dequantize_row(format: WeightFormat, bytes: &[u8], out: &mut [f32]) {
    let bv = format.block_values();
    let bb = format.block_bytes();
    for (i, dst) in out.chunks_exact_mut(bv).enumerate() {
        let b = &bytes[i * bb..(i + 1) * bb];
        match format {
            WeightFormat::F32 => dst[0] = f32::from_le_bytes(b.try_into().expect("4 bytes")),
            WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q8_0 => {
                let blk = decode32(format, b);
                for (x, &q) in dst.iter_mut().zip(&blk.q) {
                    *x = match format {
                        WeightFormat::Q4_0 => (q as i32 - 8) as f32 * blk.d,
                        WeightFormat::Q5_0 => (q as i32 - 16) as f32 * blk.d,
                        WeightFormat::Q8_0 => (q as i8) as f32 * blk.d,
                        _ => q as f32 * blk.d + blk.m,
                    };
                }
            }
            WeightFormat::Q4K | WeightFormat::Q5K => {
                let blk = decode_k(format, b);
                for (v, x) in dst.iter_mut().enumerate() {
                    let j = v / 32;
                    let d = blk.d * blk.scales[j] as f32;
                    let m = blk.dmin * blk.mins[j] as f32;
                    *x = d * blk.q[v] as f32 - m;
                }
            }
            WeightFormat::Q6K => {
                let blk = decode_k(format, b);
                for (v, x) in dst.iter_mut().enumerate() {
                    let d = blk.d * blk.scales[v / 16] as f32;
                    *x = d * (blk.q[v] as i32 - 32) as f32;
                }
            }
            WeightFormat::Mxfp4 => {
                let (d, q) = decode_mxfp4(b);
                for (x, &q) in dst.iter_mut().zip(&q) {
                    *x = q as f32 * d;
                }
            }
            WeightFormat::Nvfp4 => {
                let (d, q) = decode_nvfp4(b);
                for (v, (x, &q)) in dst.iter_mut().zip(&q).enumerate() {
                    *x = q as f32 * d[v / NVFP4_SUB];
                }
            }
        }
    }
}

/// The integer dot product of one 32-value block with one activation block,
/// offset applied (exact).
fn isum32(format: WeightFormat, blk: &Decoded32, act: &ActBlock32) -> i32 {
    let offset = match format {
        WeightFormat::Q4_0 => 8,
        WeightFormat::Q5_0 => 16,
        _ => 0,
    };
    blk.q
        .iter()
        .zip(&act.qs)
        .map(|(&q, &a)| {
            let w = if format == WeightFormat::Q8_0 {
                q as i8 as i32
            } else {
                q as i32 - offset
            };
            w * a as i32
        })
        .sum()
}

/// Scalar reference: one output of `row_bytes` (a weight row in file layout)
/// against one quantized activation row of 32-value blocks.
///
/// The FP4 formats follow ggml's generic `vec_dot_{mxfp4,nvfp4}_q8_0`: per
/// 32-value block `(dy · scale) · isum`; NVFP4 takes two activation blocks
/// per block and does that step per 16-value sub-block.
pub fn reference_dot32(format: WeightFormat, row_bytes: &[u8], acts: &[ActBlock32]) -> f32 {
    let bb = format.block_bytes();
    match format {
        WeightFormat::Mxfp4 => {
            let mut sumf = 0f32;
            for (i, act) in acts.iter().enumerate() {
                let (d, q) = decode_mxfp4(&row_bytes[i * bb..(i + 1) * bb]);
                let sumi: i32 = q
                    .iter()
                    .zip(&act.qs)
                    .map(|(&w, &a)| w as i32 * a as i32)
                    .sum();
                sumf += (act.d * d) * sumi as f32;
            }
            return sumf;
        }
        WeightFormat::Nvfp4 => {
            let mut sumf = 0f32;
            for (i, pair) in acts.chunks_exact(2).enumerate() {
                let (d, q) = decode_nvfp4(&row_bytes[i * bb..(i + 1) * bb]);
                for s in 0..4 {
                    let act = &pair[s / 2];
                    let off = (s % 2) * NVFP4_SUB;
                    let sumi: i32 = (0..NVFP4_SUB)
                        .map(|j| q[16 * s + j] as i32 * act.qs[off + j] as i32)
                        .sum();
                    sumf += (act.d * d[s]) * sumi as f32;
                }
            }
            return sumf;
        }
        _ => {}
    }
    let mut sumf = 0f32;
    for (i, act) in acts.iter().enumerate() {
        let blk = decode32(format, &row_bytes[i * bb..(i + 1) * bb]);
        let sumi = isum32(format, &blk, act) as f32;
        sumf += if format == WeightFormat::Q4_1 {
            sumi * blk.d * act.d + blk.m * act.s
        } else {
            sumi * blk.d * act.d
        };
    }
    sumf
}

/// Scalar reference: one output against a row of Q8_K activation blocks.
pub fn reference_dot_k(format: WeightFormat, row_bytes: &[u8], acts: &[ActBlockK]) -> f32 {
    let bb = format.block_bytes();
    let mut sumf = 0f32;
    for (i, act) in acts.iter().enumerate() {
        let blk = decode_k(format, &row_bytes[i * bb..(i + 1) * bb]);
        match format {
            WeightFormat::Q6K => {
                let mut sumi = 0i32;
                for j in 0..16 {
                    let part: i32 = (0..16)
                        .map(|l| (blk.q[16 * j + l] as i32 - 32) * act.qs[16 * j + l] as i32)
                        .sum();
                    sumi += blk.scales[j] * part;
                }
                sumf += blk.d * act.d * sumi as f32;
            }
            _ => {
                let mut sumi = 0i32;
                let mut summ = 0i32;
                for j in 0..8 {
                    let part: i32 = (0..32)
                        .map(|l| blk.q[32 * j + l] as i32 * act.qs[32 * j + l] as i32)
                        .sum();
                    sumi += blk.scales[j] * part;
                    let bsum = act.bsums[2 * j] as i32 + act.bsums[2 * j + 1] as i32;
                    summ += blk.mins[j] * bsum;
                }
                sumf += blk.d * act.d * sumi as f32 - blk.dmin * act.d * summ as f32;
            }
        }
    }
    sumf
}

/// Scalar reference for f32 weights: the products summed in order.
pub fn reference_dot_f32(row_bytes: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (w, &x) in row_bytes.chunks_exact(4).zip(x) {
        sum += f32::from_le_bytes(w.try_into().expect("4 bytes")) * x;
    }
    sum
}
