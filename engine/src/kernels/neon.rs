//! NEON kernels over 8-column groups: the aarch64 baseline.
//!
//! The packed layout is AVX2's (8 columns, one 32-bit lane each), held as two
//! 128-bit registers: columns 0..4 and 4..8. Integer products go through
//! `smlal` (i8 × i8 widened to i16 and accumulated per byte position; every
//! weight quant fits an i8: unsigned below 64, or Q8_0's signed byte), never
//! overflowing for these ranges: the largest sums are noted where they are
//! taken. Pairwise adds (`saddlp`, `addp`) then fold each column's i16 lanes
//! into one i32 lane, and sub-block scales multiply in i32, so integer sums
//! are exact. The float steps per block are the scalar reference's, in its
//! order, as separate multiplies and adds (no FMA), so every lane equals the
//! reference bit for bit. f16 scales are widened exactly by integer ops and
//! a power-of-two multiply. Rows are processed `ROWS` at a time so each
//! weight load feeds several rows. Formats without a kernel here (the FP4
//! ones) run the portable kernel.

// A row index walks several parallel arrays (accumulators, activation rows)
// at once; iterators over one of them would hide the others.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use super::formats::WeightFormat;
use super::packed::{offsets, GroupIn, GroupOut};
use super::portable;
use super::quantize::{ActBlock32, ActBlockK};

/// Columns per group.
pub(crate) const G: usize = 8;

/// Activation rows per kernel call.
const ROWS: usize = 4;

/// Eight columns' values: columns 0..4 and 4..8.
type Cols<T> = [T; 2];

/// Eight columns' i16 partial sums, four per column: columns (0, 1), (2, 3),
/// (4, 5), (6, 7).
type Sums16 = [int16x8_t; 4];

/// Computes one column group for every row of `input`.
///
/// # Safety
/// `tiles` is one group of a matrix packed with `G` columns and `nb` blocks;
/// `out` is this task's. (NEON is part of every aarch64 CPU.)
pub(crate) unsafe fn group(
    format: WeightFormat,
    tiles: &[u8],
    nb: usize,
    input: &GroupIn<'_>,
    out: &GroupOut,
) {
    let t = tiles.as_ptr();
    macro_rules! by_rows {
        ($kernel:ident, $acts:expr) => {{
            let a = $acts.as_ptr();
            let mut r0 = 0;
            while r0 + ROWS <= out.rows {
                $kernel::<ROWS>(t, nb, a, r0, out);
                r0 += ROWS;
            }
            match out.rows - r0 {
                1 => $kernel::<1>(t, nb, a, r0, out),
                2 => $kernel::<2>(t, nb, a, r0, out),
                3 => $kernel::<3>(t, nb, a, r0, out),
                _ => {}
            }
        }};
    }
    match (format, input) {
        (WeightFormat::Q4_0, GroupIn::B32(a)) => by_rows!(q4_0, a),
        (WeightFormat::Q4_1, GroupIn::B32(a)) => by_rows!(q4_1, a),
        (WeightFormat::Q5_0, GroupIn::B32(a)) => by_rows!(q5_0, a),
        (WeightFormat::Q8_0, GroupIn::B32(a)) => by_rows!(q8_0, a),
        (WeightFormat::Q4K, GroupIn::K(a)) => by_rows!(q4k, a),
        (WeightFormat::Q5K, GroupIn::K(a)) => by_rows!(q5k, a),
        (WeightFormat::Q6K, GroupIn::K(a)) => by_rows!(q6k, a),
        (WeightFormat::F32, GroupIn::F32(a)) => by_rows!(f32s, a),
        // No NEON kernel (MXFP4, NVFP4): the reference, column by column.
        _ => portable::group(format, tiles, nb, input, out),
    }
}

/// One packed unit of 8 columns (32 bytes).
#[inline(always)]
unsafe fn load(p: *const u8) -> Cols<uint8x16_t> {
    [vld1q_u8(p), vld1q_u8(p.add(16))]
}

/// One packed 32-bit word per column.
#[inline(always)]
unsafe fn load_words(p: *const u8) -> Cols<uint32x4_t> {
    [
        vld1q_u32(p as *const u32),
        vld1q_u32(p.add(16) as *const u32),
    ]
}

/// Four activation quants, repeated for the two columns of half a register.
#[inline(always)]
unsafe fn bcast(p: *const i8) -> int8x8_t {
    vreinterpret_s8_s32(vdup_n_s32((p as *const i32).read_unaligned()))
}

#[inline(always)]
unsafe fn zero16() -> Sums16 {
    [vdupq_n_s16(0); 4]
}

#[inline(always)]
unsafe fn as_signed(v: Cols<uint8x16_t>) -> Cols<int8x16_t> {
    [vreinterpretq_s8_u8(v[0]), vreinterpretq_s8_u8(v[1])]
}

/// `s += w · a`, byte by byte: 4 quants of each of 8 columns against the
/// same 4 activation quants.
#[inline(always)]
unsafe fn mla(s: &mut Sums16, w: &Cols<int8x16_t>, a: int8x8_t) {
    s[0] = vmlal_s8(s[0], vget_low_s8(w[0]), a);
    s[1] = vmlal_s8(s[1], vget_high_s8(w[0]), a);
    s[2] = vmlal_s8(s[2], vget_low_s8(w[1]), a);
    s[3] = vmlal_s8(s[3], vget_high_s8(w[1]), a);
}

/// Each column's four i16 sums folded into its own i32 lane.
#[inline(always)]
unsafe fn fold16(s: &Sums16) -> Cols<int32x4_t> {
    [
        vpaddq_s32(vpaddlq_s16(s[0]), vpaddlq_s16(s[1])),
        vpaddq_s32(vpaddlq_s16(s[2]), vpaddlq_s16(s[3])),
    ]
}

/// The low and high nibbles of a unit.
#[inline(always)]
unsafe fn nibbles(v: Cols<uint8x16_t>) -> (Cols<uint8x16_t>, Cols<uint8x16_t>) {
    let mask = vdupq_n_u8(0x0F);
    (
        [vandq_u8(v[0], mask), vandq_u8(v[1], mask)],
        [vshrq_n_u8::<4>(v[0]), vshrq_n_u8::<4>(v[1])],
    )
}

#[inline(always)]
unsafe fn or(a: Cols<uint8x16_t>, b: Cols<uint8x16_t>) -> Cols<uint8x16_t> {
    [vorrq_u8(a[0], b[0]), vorrq_u8(a[1], b[1])]
}

/// f16 values (zero-extended in u32 lanes) as f32, exactly as `half` reads
/// them: the bits moved into place and the exponent rebiased by a multiply
/// by 2^112 (exact for normals and subnormals alike), infinities and NaNs
/// (quieted) kept apart.
#[inline(always)]
unsafe fn f16_to_f32(h: uint32x4_t) -> float32x4_t {
    let mag = vandq_u32(h, vdupq_n_u32(0x7FFF));
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let shifted = vshlq_n_u32::<13>(mag);
    let rebias = vdupq_n_f32(f32::from_bits((127 + 112) << 23));
    let finite = vreinterpretq_u32_f32(vmulq_f32(vreinterpretq_f32_u32(shifted), rebias));
    let nan = vandq_u32(
        vcgtq_u32(mag, vdupq_n_u32(0x7C00)),
        vdupq_n_u32(0x0040_0000),
    );
    let special = vorrq_u32(vorrq_u32(shifted, vdupq_n_u32(0x7F80_0000)), nan);
    let is_special = vcgeq_u32(mag, vdupq_n_u32(0x7C00));
    vreinterpretq_f32_u32(vorrq_u32(vbslq_u32(is_special, special, finite), sign))
}

/// Eight f16 scales as f32.
#[inline(always)]
unsafe fn scales(p: *const u8) -> Cols<float32x4_t> {
    let h = vld1q_u16(p as *const u16);
    [
        f16_to_f32(vmovl_u16(vget_low_u16(h))),
        f16_to_f32(vmovl_high_u16(h)),
    ]
}

#[inline(always)]
unsafe fn store(out: &GroupOut, r: usize, v: &Cols<float32x4_t>) {
    if out.valid == G {
        let p = out.ptr.add(r * out.stride);
        vst1q_f32(p, v[0]);
        vst1q_f32(p.add(4), v[1]);
    } else {
        let mut tmp = [0f32; G];
        vst1q_f32(tmp.as_mut_ptr(), v[0]);
        vst1q_f32(tmp.as_mut_ptr().add(4), v[1]);
        out.store(r, &tmp);
    }
}

/// `(cvt(isum) · dx) · dy`, the 32-value formats' float step.
#[inline(always)]
unsafe fn scaled(isum: int32x4_t, dx: float32x4_t, dy: f32) -> float32x4_t {
    vmulq_n_f32(vmulq_f32(vcvtq_f32_s32(isum), dx), dy)
}

#[inline(always)]
unsafe fn zero_f32<const R: usize>() -> [Cols<float32x4_t>; R] {
    [[vdupq_n_f32(0.0); 2]; R]
}

#[inline(always)]
unsafe fn q4_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oq) = offsets::q4_0(G);
    let mut acc = zero_f32::<R>();
    for b in 0..nb {
        let tile = t.add(b * 18 * G);
        // 8 products of ≤ 15·127 per i16 lane: ≤ 15240.
        let mut s16 = [zero16(); R];
        for u in 0..4 {
            let (lo, hi) = nibbles(load(tile.add(oq + u * 4 * G)));
            let (lo, hi) = (as_signed(lo), as_signed(hi));
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                mla(&mut s16[r], &lo, bcast(qs.add(4 * u)));
                mla(&mut s16[r], &hi, bcast(qs.add(16 + 4 * u)));
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = fold16(&s16[r]);
            let offset = vdupq_n_s32(8 * a.sum);
            for h in 0..2 {
                let p = scaled(vsubq_s32(isum[h], offset), dx[h], a.d);
                acc[r][h] = vaddq_f32(acc[r][h], p);
            }
        }
    }
    for r in 0..R {
        store(out, r0 + r, &acc[r]);
    }
}

#[inline(always)]
unsafe fn q4_1<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, om, oq) = offsets::q4_1(G);
    let mut acc = zero_f32::<R>();
    for b in 0..nb {
        let tile = t.add(b * 20 * G);
        // As Q4_0: ≤ 15240 per i16 lane.
        let mut s16 = [zero16(); R];
        for u in 0..4 {
            let (lo, hi) = nibbles(load(tile.add(oq + u * 4 * G)));
            let (lo, hi) = (as_signed(lo), as_signed(hi));
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                mla(&mut s16[r], &lo, bcast(qs.add(4 * u)));
                mla(&mut s16[r], &hi, bcast(qs.add(16 + 4 * u)));
            }
        }
        let dx = scales(tile.add(od));
        let mx = scales(tile.add(om));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = fold16(&s16[r]);
            for h in 0..2 {
                let p = vaddq_f32(scaled(isum[h], dx[h], a.d), vmulq_n_f32(mx[h], a.s));
                acc[r][h] = vaddq_f32(acc[r][h], p);
            }
        }
    }
    for r in 0..R {
        store(out, r0 + r, &acc[r]);
    }
}

#[inline(always)]
unsafe fn q5_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oh, oq) = offsets::q5_0(G);
    let bit = vdupq_n_u32(0x0101_0101);
    let mut acc = zero_f32::<R>();
    for b in 0..nb {
        let tile = t.add(b * 22 * G);
        // Bit `u` (low nibbles) and `u + 4` (high) of each byte: unit `u`'s
        // fifth bits (see `permute_q5_0_high_bits`).
        let mut high = load_words(tile.add(oh));
        // 8 products of ≤ 31·127 per i16 lane: ≤ 31496.
        let mut s16 = [zero16(); R];
        for u in 0..4 {
            let fifth = |w: uint32x4_t| vreinterpretq_u8_u32(vshlq_n_u32::<4>(vandq_u32(w, bit)));
            let lo_h = [fifth(high[0]), fifth(high[1])];
            let hi_h = [
                fifth(vshrq_n_u32::<4>(high[0])),
                fifth(vshrq_n_u32::<4>(high[1])),
            ];
            high = [vshrq_n_u32::<1>(high[0]), vshrq_n_u32::<1>(high[1])];
            let (lo, hi) = nibbles(load(tile.add(oq + u * 4 * G)));
            let (lo, hi) = (as_signed(or(lo, lo_h)), as_signed(or(hi, hi_h)));
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                mla(&mut s16[r], &lo, bcast(qs.add(4 * u)));
                mla(&mut s16[r], &hi, bcast(qs.add(16 + 4 * u)));
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = fold16(&s16[r]);
            let offset = vdupq_n_s32(16 * a.sum);
            for h in 0..2 {
                let p = scaled(vsubq_s32(isum[h], offset), dx[h], a.d);
                acc[r][h] = vaddq_f32(acc[r][h], p);
            }
        }
    }
    for r in 0..R {
        store(out, r0 + r, &acc[r]);
    }
}

#[inline(always)]
unsafe fn q8_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oq) = offsets::q8_0(G);
    let mut acc = zero_f32::<R>();
    for b in 0..nb {
        let tile = t.add(b * 34 * G);
        // Pairs of i32 per column, as `Sums16` folded once.
        let mut s32 = [[vdupq_n_s32(0); 4]; R];
        for pair in 0..4 {
            // 2 products of ≤ 128·127 per i16 lane: ≤ 32512.
            let mut s16 = [zero16(); R];
            for u in 2 * pair..2 * pair + 2 {
                let w = as_signed(load(tile.add(oq + u * 4 * G)));
                for r in 0..R {
                    let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                    mla(&mut s16[r], &w, bcast(qs.add(4 * u)));
                }
            }
            for r in 0..R {
                for i in 0..4 {
                    s32[r][i] = vpadalq_s16(s32[r][i], s16[r][i]);
                }
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = [
                vpaddq_s32(s32[r][0], s32[r][1]),
                vpaddq_s32(s32[r][2], s32[r][3]),
            ];
            for h in 0..2 {
                acc[r][h] = vaddq_f32(acc[r][h], scaled(isum[h], dx[h], a.d));
            }
        }
    }
    for r in 0..R {
        store(out, r0 + r, &acc[r]);
    }
}

/// Byte `k` of each 32-bit lane, zero-extended.
#[inline(always)]
unsafe fn byte_u(words: uint32x4_t, k: usize) -> int32x4_t {
    let shifted = vshlq_u32(words, vdupq_n_s32(-8 * k as i32));
    vreinterpretq_s32_u32(vandq_u32(shifted, vdupq_n_u32(0xFF)))
}

/// Byte `k` of each 32-bit lane, sign-extended.
#[inline(always)]
unsafe fn byte_s(words: uint32x4_t, k: usize) -> int32x4_t {
    let top = vreinterpretq_s32_u32(vshlq_u32(words, vdupq_n_s32(24 - 8 * k as i32)));
    vshlq_s32(top, vdupq_n_s32(-24))
}

/// The 6-bit scales and minimums of 8 Q4_K/Q5_K columns, per half: `(scales
/// 0..4, scales 4..8, mins 0..4, mins 4..8)`, one byte each per 32-bit lane.
#[inline(always)]
unsafe fn k4_scales(words: *const u8) -> Cols<[uint32x4_t; 4]> {
    let w0 = load_words(words);
    let w1 = load_words(words.add(4 * G));
    let w2 = load_words(words.add(8 * G));
    let m6 = vdupq_n_u32(0x3F3F_3F3F);
    let m4 = vdupq_n_u32(0x0F0F_0F0F);
    let m2 = vdupq_n_u32(0x0303_0303);
    let top = |w: uint32x4_t| vshlq_n_u32::<4>(vandq_u32(vshrq_n_u32::<6>(w), m2));
    std::array::from_fn(|h| {
        [
            vandq_u32(w0[h], m6),
            vorrq_u32(vandq_u32(w2[h], m4), top(w0[h])),
            vandq_u32(w1[h], m6),
            vorrq_u32(vandq_u32(vshrq_n_u32::<4>(w2[h]), m4), top(w1[h])),
        ]
    })
}

/// Q4_K/Q5_K minimum term `Σ_j m_j · bsum32_j` of one row, per column.
#[inline(always)]
unsafe fn k4_mins(sc: &Cols<[uint32x4_t; 4]>, a: &ActBlockK) -> Cols<int32x4_t> {
    std::array::from_fn(|h| {
        let mut s = vdupq_n_s32(0);
        for j in 0..8 {
            s = vmlaq_n_s32(s, byte_u(sc[h][2 + j / 4], j % 4), a.bsums32[j] as i32);
        }
        s
    })
}

/// `acc + ((d · dy) · cvt(isum) − (dmin · dy) · cvt(imin))`, the reference's
/// Q4_K/Q5_K float step.
#[inline(always)]
unsafe fn k_float(
    acc: float32x4_t,
    d: float32x4_t,
    dmin: float32x4_t,
    dy: f32,
    isum: int32x4_t,
    imin: int32x4_t,
) -> float32x4_t {
    let sum = vmulq_f32(vmulq_n_f32(d, dy), vcvtq_f32_s32(isum));
    let min = vmulq_f32(vmulq_n_f32(dmin, dy), vcvtq_f32_s32(imin));
    vaddq_f32(acc, vsubq_f32(sum, min))
}

/// Q4_K and Q5_K (`FIFTH`: with the high-bit units at `oh`).
#[inline(always)]
unsafe fn k4<const R: usize, const FIFTH: bool>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    let (od, odm, osc, oh, oq, tile_bytes) = if FIFTH {
        let (od, odm, osc, oh, oq) = offsets::q5k(G);
        (od, odm, osc, oh, oq, 176 * G)
    } else {
        let (od, odm, osc, oq) = offsets::q4k(G);
        (od, odm, osc, 0, oq, 144 * G)
    };
    let one = vdupq_n_u8(1);
    let mut acc = zero_f32::<R>();
    for b in 0..nb {
        let tile = t.add(b * tile_bytes);
        let sc = k4_scales(tile.add(osc));
        let mut isum = [[vdupq_n_s32(0); 2]; R];
        // Sub-block `j`: the low (even `j`) or high nibbles of units
        // `8p..8p+8`, `p = j / 2`.
        for j in 0..8 {
            let p = j / 2;
            let scale = [byte_u(sc[0][j / 4], j % 4), byte_u(sc[1][j / 4], j % 4)];
            let fifth_shift = vdupq_n_s8(-(j as i8));
            // 8 products of ≤ 31·128 per i16 lane: ≤ 31744.
            let mut s16 = [zero16(); R];
            for w in 0..8 {
                let (lo, hi) = nibbles(load(tile.add(oq + (8 * p + w) * 4 * G)));
                let mut q = if j % 2 == 0 { lo } else { hi };
                if FIFTH {
                    // Bit `j` of each high-bit byte.
                    let h = load(tile.add(oh + w * 4 * G));
                    let fifth =
                        |v: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(vshlq_u8(v, fifth_shift), one));
                    q = or(q, [fifth(h[0]), fifth(h[1])]);
                }
                let q = as_signed(q);
                for r in 0..R {
                    let qs = (*acts.add((r0 + r) * nb + b))
                        .qs
                        .as_ptr()
                        .add(32 * j + 4 * w);
                    mla(&mut s16[r], &q, bcast(qs));
                }
            }
            for r in 0..R {
                let s = fold16(&s16[r]);
                for h in 0..2 {
                    isum[r][h] = vmlaq_s32(isum[r][h], s[h], scale[h]);
                }
            }
        }
        let d = scales(tile.add(od));
        let dmin = scales(tile.add(odm));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let imin = k4_mins(&sc, a);
            for h in 0..2 {
                acc[r][h] = k_float(acc[r][h], d[h], dmin[h], a.d, isum[r][h], imin[h]);
            }
        }
    }
    for r in 0..R {
        store(out, r0 + r, &acc[r]);
    }
}

#[inline(always)]
unsafe fn q4k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    k4::<R, false>(t, nb, acts, r0, out)
}

#[inline(always)]
unsafe fn q5k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    k4::<R, true>(t, nb, acts, r0, out)
}

#[inline(always)]
unsafe fn q6k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    let (od, osc, oql, oqh) = offsets::q6k(G);
    let three = vdupq_n_u8(3);
    let mut acc = zero_f32::<R>();
    for b in 0..nb {
        let tile = t.add(b * 210 * G);
        let words: [Cols<uint32x4_t>; 4] =
            std::array::from_fn(|i| load_words(tile.add(osc + i * 4 * G)));
        let mut isum = [[vdupq_n_s32(0); 2]; R];
        // Sub-block `j = 8h + 2tq + wq`: 16 values `128h + 32tq + 16wq..`,
        // from ql units `16h + 8(tq % 2) + w` (low nibbles for `tq < 2`)
        // and bits `2tq..2tq+2` of qh units `8h + w`, `w = 4wq..4wq+4`.
        for h in 0..2 {
            for tq in 0..4 {
                let high_shift = vdupq_n_s8(-2 * tq as i8);
                for wq in 0..2 {
                    let j = 8 * h + 2 * tq + wq;
                    // 4 products of ≤ 63·128 per i16 lane: ≤ 32256.
                    let mut s16 = [zero16(); R];
                    for w in 4 * wq..4 * wq + 4 {
                        let (lo, hi) =
                            nibbles(load(tile.add(oql + (16 * h + 8 * (tq % 2) + w) * 4 * G)));
                        let qh = load(tile.add(oqh + (8 * h + w) * 4 * G));
                        let top = |v: uint8x16_t| {
                            vshlq_n_u8::<4>(vandq_u8(vshlq_u8(v, high_shift), three))
                        };
                        let q = or(if tq < 2 { lo } else { hi }, [top(qh[0]), top(qh[1])]);
                        let q = as_signed(q);
                        for r in 0..R {
                            let qs = (*acts.add((r0 + r) * nb + b))
                                .qs
                                .as_ptr()
                                .add(128 * h + 32 * tq + 4 * w);
                            mla(&mut s16[r], &q, bcast(qs));
                        }
                    }
                    let scale = [
                        byte_s(words[j / 4][0], j % 4),
                        byte_s(words[j / 4][1], j % 4),
                    ];
                    for r in 0..R {
                        let a = &*acts.add((r0 + r) * nb + b);
                        // The offset 32, through the sub-block's activation sum.
                        let offset = vdupq_n_s32(32 * a.bsums[j] as i32);
                        let s = fold16(&s16[r]);
                        for c in 0..2 {
                            isum[r][c] = vmlaq_s32(isum[r][c], vsubq_s32(s[c], offset), scale[c]);
                        }
                    }
                }
            }
        }
        let d = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            for c in 0..2 {
                let p = vmulq_f32(vmulq_n_f32(d[c], a.d), vcvtq_f32_s32(isum[r][c]));
                acc[r][c] = vaddq_f32(acc[r][c], p);
            }
        }
    }
    for r in 0..R {
        store(out, r0 + r, &acc[r]);
    }
}

#[inline(always)]
unsafe fn f32s<const R: usize>(t: *const u8, k: usize, x: *const f32, r0: usize, out: &GroupOut) {
    let mut acc = zero_f32::<R>();
    for i in 0..k {
        let p = t.add(i * 4 * G) as *const f32;
        let w = [vld1q_f32(p), vld1q_f32(p.add(4))];
        for r in 0..R {
            let xv = *x.add((r0 + r) * k + i);
            for h in 0..2 {
                acc[r][h] = vaddq_f32(acc[r][h], vmulq_n_f32(w[h], xv));
            }
        }
    }
    for r in 0..R {
        store(out, r0 + r, &acc[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_scales_widen_as_half_does() {
        for base in (0..=u16::MAX as u32).step_by(4) {
            let lanes = [base, base + 1, base + 2, base + 3];
            let mut got = [0f32; 4];
            // SAFETY: NEON is part of every aarch64 CPU.
            unsafe { vst1q_f32(got.as_mut_ptr(), f16_to_f32(vld1q_u32(lanes.as_ptr()))) };
            for (&h, g) in lanes.iter().zip(got) {
                let want = half::f16::from_bits(h as u16).to_f32();
                if want.is_nan() {
                    assert!(g.is_nan(), "{h:#06x}");
                } else {
                    assert_eq!(g.to_bits(), want.to_bits(), "{h:#06x}");
                }
            }
        }
    }
}
