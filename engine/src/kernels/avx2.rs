//! AVX2 + FMA + F16C kernels over 8-column groups: the x86-64 baseline.
//!
//! Each 32-bit lane holds one column. Integer products go through
//! `vpmaddubsw` (unsigned weight quants × signed activation quants, summed in
//! pairs into i16, never saturating for these ranges: the largest sums are
//! noted where they are taken) and `vpmaddwd` (pairs into i32, by ones or by
//! the sub-block's scale). The float steps per block are the scalar
//! reference's, without FMA, so every lane equals the reference bit for bit.
//! Rows are processed `ROWS` at a time so each weight load feeds several rows.

// A row index walks several parallel arrays (accumulators, activation rows)
// at once; iterators over one of them would hide the others.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::formats::WeightFormat;
use super::packed::{offsets, GroupIn, GroupOut};
use super::quantize::{ActBlock32, ActBlockK};

/// Columns per group.
pub(crate) const G: usize = 8;

/// Computes one column group for every row of `input`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `tiles` is one group of a matrix packed
/// with `G` columns and `nb` blocks; `out` is this task's.
#[target_feature(enable = "avx2,fma,f16c")]
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
            while r0 + 4 <= out.rows {
                $kernel::<4>(t, nb, a, r0, out);
                r0 += 4;
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
        (WeightFormat::Mxfp4, GroupIn::B32(a)) => by_rows!(mxfp4, a),
        (WeightFormat::Nvfp4, GroupIn::B32(a)) => by_rows!(nvfp4, a),
        _ => unreachable!("activations quantized for another format"),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Four activation quants broadcast to every lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bcast(p: *const i8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// Eight f16 scales as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scales(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store(out: &GroupOut, r: usize, v: __m256) {
    if out.valid == G {
        _mm256_storeu_ps(out.ptr.add(r * out.stride), v);
    } else {
        let mut tmp = [0f32; G];
        _mm256_storeu_ps(tmp.as_mut_ptr(), v);
        out.store(r, &tmp);
    }
}

/// `(cvt(isum) · dx) · dy`, the 32-value formats' float step.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scaled(isum: __m256i, dx: __m256, dy: f32) -> __m256 {
    _mm256_mul_ps(
        _mm256_mul_ps(_mm256_cvtepi32_ps(isum), dx),
        _mm256_set1_ps(dy),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oq) = offsets::q4_0(G);
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 18 * G);
        // 8 products of ≤ 2·15·127 per i16 lane: ≤ 30480.
        let mut s16 = [_mm256_setzero_si256(); R];
        for u in 0..4 {
            let v = load(tile.add(oq + u * 4 * G));
            let lo = _mm256_and_si256(v, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, bcast(qs.add(4 * u))));
                s16[r] =
                    _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, bcast(qs.add(16 + 4 * u))));
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = _mm256_sub_epi32(
                _mm256_madd_epi16(s16[r], ones),
                _mm256_set1_epi32(8 * a.sum),
            );
            acc[r] = _mm256_add_ps(acc[r], scaled(isum, dx, a.d));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4_1<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, om, oq) = offsets::q4_1(G);
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 20 * G);
        // As Q4_0: ≤ 30480 per i16 lane.
        let mut s16 = [_mm256_setzero_si256(); R];
        for u in 0..4 {
            let v = load(tile.add(oq + u * 4 * G));
            let lo = _mm256_and_si256(v, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, bcast(qs.add(4 * u))));
                s16[r] =
                    _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, bcast(qs.add(16 + 4 * u))));
            }
        }
        let dx = scales(tile.add(od));
        let mx = scales(tile.add(om));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = _mm256_madd_epi16(s16[r], ones);
            let p = _mm256_add_ps(
                scaled(isum, dx, a.d),
                _mm256_mul_ps(mx, _mm256_set1_ps(a.s)),
            );
            acc[r] = _mm256_add_ps(acc[r], p);
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q5_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oh, oq) = offsets::q5_0(G);
    let mask = _mm256_set1_epi8(0x0F);
    let bit = _mm256_set1_epi8(0x01);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 22 * G);
        let mut high = load(tile.add(oh));
        let mut isum = [_mm256_setzero_si256(); R];
        for half in 0..2 {
            // 4 products of ≤ 2·31·127 per i16 lane: ≤ 31496.
            let mut s16 = [_mm256_setzero_si256(); R];
            for u in 2 * half..2 * half + 2 {
                let v = load(tile.add(oq + u * 4 * G));
                let lo_h = _mm256_slli_epi32::<4>(_mm256_and_si256(high, bit));
                let hi_h =
                    _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<4>(high), bit));
                high = _mm256_srli_epi32::<1>(high);
                let lo = _mm256_or_si256(_mm256_and_si256(v, mask), lo_h);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(v), mask), hi_h);
                for r in 0..R {
                    let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                    s16[r] =
                        _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, bcast(qs.add(4 * u))));
                    s16[r] = _mm256_add_epi16(
                        s16[r],
                        _mm256_maddubs_epi16(hi, bcast(qs.add(16 + 4 * u))),
                    );
                }
            }
            for r in 0..R {
                isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(s16[r], ones));
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = _mm256_sub_epi32(isum[r], _mm256_set1_epi32(16 * a.sum));
            acc[r] = _mm256_add_ps(acc[r], scaled(isum, dx, a.d));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q8_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oq) = offsets::q8_0(G);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 34 * G);
        let mut isum = [_mm256_setzero_si256(); R];
        for u in 0..8 {
            let w = load(tile.add(oq + u * 4 * G));
            // |w| · (a with w's sign): one product pair ≤ 2·128·127 = 32512.
            let aw = _mm256_sign_epi8(w, w);
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                let sa = _mm256_sign_epi8(bcast(qs.add(4 * u)), w);
                isum[r] = _mm256_add_epi32(
                    isum[r],
                    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sa), ones),
                );
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            acc[r] = _mm256_add_ps(acc[r], scaled(isum[r], dx, a.d));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

/// The doubled E2M1 values in both 128-bit halves, for `vpshufb` by code.
const KVALUES_X2: [i8; 32] = {
    let mut t = [0i8; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = super::formats::KVALUES_FP4[i % 16];
        i += 1;
    }
    t
};

/// Scale bytes read through 256-entry tables (built by the scalar decoders,
/// so every lane has the reference's value): MXFP4's E8M0 and NVFP4's UE4M3.
fn fp4_scale_tables() -> &'static ([f32; 256], [f32; 256]) {
    static TABLES: std::sync::OnceLock<([f32; 256], [f32; 256])> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut e8m0 = [0f32; 256];
        let mut ue4m3 = [0f32; 256];
        for x in 0..256 {
            e8m0[x] = super::formats::e8m0_half(x as u8);
            ue4m3[x] = super::formats::ue4m3_half(x as u8);
        }
        (e8m0, ue4m3)
    })
}

/// Eight signed FP4 values per i8 position (`codes` are nibbles 0..16) as
/// `(|w|, w)` for `vpmaddubsw` with the activations given `w`'s sign.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fp4_values(codes: __m256i, table: __m256i) -> (__m256i, __m256i) {
    let w = _mm256_shuffle_epi8(table, codes);
    (_mm256_sign_epi8(w, w), w)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mxfp4<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (oe, oq) = offsets::mxfp4(G);
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let table = _mm256_loadu_si256(KVALUES_X2.as_ptr() as *const __m256i);
    let e8m0 = fp4_scale_tables().0.as_ptr();
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 17 * G);
        // 8 products pairs of ≤ 2·12·127 per i16 lane: ≤ 24384.
        let mut s16 = [_mm256_setzero_si256(); R];
        for u in 0..4 {
            let v = load(tile.add(oq + u * 4 * G));
            let (alo, lo) = fp4_values(_mm256_and_si256(v, mask), table);
            let (ahi, hi) = fp4_values(_mm256_and_si256(_mm256_srli_epi16::<4>(v), mask), table);
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                let slo = _mm256_sign_epi8(bcast(qs.add(4 * u)), lo);
                let shi = _mm256_sign_epi8(bcast(qs.add(16 + 4 * u)), hi);
                s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(alo, slo));
                s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(ahi, shi));
            }
        }
        let e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(tile.add(oe) as *const __m128i));
        let de = _mm256_i32gather_ps::<4>(e8m0, e);
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = _mm256_madd_epi16(s16[r], ones);
            // (dy · scale) · isum, as the reference.
            let d = _mm256_mul_ps(_mm256_set1_ps(a.d), de);
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum)));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nvfp4<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oq) = offsets::nvfp4(G);
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let table = _mm256_loadu_si256(KVALUES_X2.as_ptr() as *const __m256i);
    let ue4m3 = fp4_scale_tables().1.as_ptr();
    let byte = _mm256_set1_epi32(0xFF);
    // Two activation blocks of 32 per block of 64.
    let na = 2 * nb;
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 36 * G);
        let words = load(tile.add(od));
        for s in 0..4 {
            // 4 product pairs of ≤ 2·12·127 per i16 lane: ≤ 12192.
            let mut s16 = [_mm256_setzero_si256(); R];
            for h in 0..2 {
                let u = 2 * s + h;
                let v = load(tile.add(oq + u * 4 * G));
                let (alo, lo) = fp4_values(_mm256_and_si256(v, mask), table);
                let (ahi, hi) =
                    fp4_values(_mm256_and_si256(_mm256_srli_epi16::<4>(v), mask), table);
                for r in 0..R {
                    let a = &*acts.add((r0 + r) * na + 2 * b + s / 2);
                    let qs = a.qs.as_ptr().add((s % 2) * 16 + 4 * h);
                    let slo = _mm256_sign_epi8(bcast(qs), lo);
                    let shi = _mm256_sign_epi8(bcast(qs.add(8)), hi);
                    s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(alo, slo));
                    s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(ahi, shi));
                }
            }
            let x = _mm256_and_si256(
                _mm256_srlv_epi32(words, _mm256_set1_epi32(8 * s as i32)),
                byte,
            );
            let ds = _mm256_i32gather_ps::<4>(ue4m3, x);
            for r in 0..R {
                let a = &*acts.add((r0 + r) * na + 2 * b + s / 2);
                let isum = _mm256_madd_epi16(s16[r], ones);
                let d = _mm256_mul_ps(_mm256_set1_ps(a.d), ds);
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum)));
            }
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

/// `vpshufb` controls over the scale words of 8 columns. `PAIR_SAME[j]` puts
/// byte `j` of each 32-bit lane in both of its i16 halves; `PAIR_NEXT[j]`
/// puts bytes `j` and `j + 1` in the low and high halves. Zero-extended for
/// the unsigned K-quant scales; for the signed Q6_K scales the byte goes to
/// the high half of each i16 (`*_HI`) and an arithmetic shift sign-extends.
const fn control(first: u8, second: u8, high: bool) -> [u8; 32] {
    let mut c = [0x80u8; 32];
    let mut lane = 0;
    while lane < 8 {
        let base = ((lane % 4) * 4) as u8;
        let (a, b) = if high { (1, 3) } else { (0, 2) };
        c[lane * 4 + a] = base + first;
        c[lane * 4 + b] = base + second;
        lane += 1;
    }
    c
}

const PAIR_SAME: [[u8; 32]; 4] = [
    control(0, 0, false),
    control(1, 1, false),
    control(2, 2, false),
    control(3, 3, false),
];
const PAIR_NEXT: [[u8; 32]; 2] = [control(0, 1, false), control(2, 3, false)];
const PAIR_SAME_HI: [[u8; 32]; 4] = [
    control(0, 0, true),
    control(1, 1, true),
    control(2, 2, true),
    control(3, 3, true),
];
const PAIR_NEXT_HI: [[u8; 32]; 2] = [control(0, 1, true), control(2, 3, true)];

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn shuffle(words: __m256i, control: &[u8; 32]) -> __m256i {
    _mm256_shuffle_epi8(words, load(control.as_ptr()))
}

/// The 6-bit scales and minimums of 8 Q4_K/Q5_K columns: `(scales 0..4,
/// scales 4..8, mins 0..4, mins 4..8)`, one byte each per 32-bit lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_scales(words: *const u8) -> [__m256i; 4] {
    let w0 = load(words);
    let w1 = load(words.add(4 * G));
    let w2 = load(words.add(8 * G));
    let m6 = _mm256_set1_epi8(0x3F);
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let top = |w: __m256i| _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<6>(w), m2));
    [
        _mm256_and_si256(w0, m6),
        _mm256_or_si256(_mm256_and_si256(w2, m4), top(w0)),
        _mm256_and_si256(w1, m6),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32::<4>(w2), m4), top(w1)),
    ]
}

/// Q4_K/Q5_K minimum term `Σ_j m_j · bsum32_j` of one row, per lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_mins(mins: &[__m256i; 4], a: &ActBlockK) -> __m256i {
    let b = a.bsums32.as_ptr() as *const i32;
    let mut s = _mm256_setzero_si256();
    for i in 0..4 {
        s = _mm256_add_epi32(
            s,
            _mm256_madd_epi16(mins[i], _mm256_set1_epi32(b.add(i).read_unaligned())),
        );
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k_float(
    acc: __m256,
    d: __m256,
    dmin: __m256,
    dy: f32,
    isum: __m256i,
    imin: __m256i,
) -> __m256 {
    let dy = _mm256_set1_ps(dy);
    _mm256_add_ps(
        acc,
        _mm256_sub_ps(
            _mm256_mul_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(isum)),
            _mm256_mul_ps(_mm256_mul_ps(dmin, dy), _mm256_cvtepi32_ps(imin)),
        ),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    let (od, odm, osc, oq) = offsets::q4k(G);
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 144 * G);
        let sc = k4_scales(tile.add(osc));
        let mins = [
            shuffle(sc[2], &PAIR_NEXT[0]),
            shuffle(sc[2], &PAIR_NEXT[1]),
            shuffle(sc[3], &PAIR_NEXT[0]),
            shuffle(sc[3], &PAIR_NEXT[1]),
        ];
        let mut isum = [_mm256_setzero_si256(); R];
        for p in 0..4 {
            let words = sc[p / 2];
            let sp_lo = shuffle(words, &PAIR_SAME[2 * (p % 2)]);
            let sp_hi = shuffle(words, &PAIR_SAME[2 * (p % 2) + 1]);
            // 8 products of ≤ 2·15·127 per i16 lane: ≤ 30480.
            let mut s_lo = [_mm256_setzero_si256(); R];
            let mut s_hi = [_mm256_setzero_si256(); R];
            for w in 0..8 {
                let v = load(tile.add(oq + (8 * p + w) * 4 * G));
                let lo = _mm256_and_si256(v, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                for r in 0..R {
                    let qs = (*acts.add((r0 + r) * nb + b))
                        .qs
                        .as_ptr()
                        .add(64 * p + 4 * w);
                    s_lo[r] = _mm256_add_epi16(s_lo[r], _mm256_maddubs_epi16(lo, bcast(qs)));
                    s_hi[r] =
                        _mm256_add_epi16(s_hi[r], _mm256_maddubs_epi16(hi, bcast(qs.add(32))));
                }
            }
            for r in 0..R {
                isum[r] = _mm256_add_epi32(
                    isum[r],
                    _mm256_add_epi32(
                        _mm256_madd_epi16(s_lo[r], sp_lo),
                        _mm256_madd_epi16(s_hi[r], sp_hi),
                    ),
                );
            }
        }
        let d = scales(tile.add(od));
        let dmin = scales(tile.add(odm));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            acc[r] = k_float(acc[r], d, dmin, a.d, isum[r], k4_mins(&mins, a));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q5k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    let (od, odm, osc, oh, oq) = offsets::q5k(G);
    let mask = _mm256_set1_epi8(0x0F);
    let bit = _mm256_set1_epi8(0x01);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 176 * G);
        let sc = k4_scales(tile.add(osc));
        let mins = [
            shuffle(sc[2], &PAIR_NEXT[0]),
            shuffle(sc[2], &PAIR_NEXT[1]),
            shuffle(sc[3], &PAIR_NEXT[0]),
            shuffle(sc[3], &PAIR_NEXT[1]),
        ];
        let mut isum = [_mm256_setzero_si256(); R];
        for p in 0..4 {
            let words = sc[p / 2];
            let sp_lo = shuffle(words, &PAIR_SAME[2 * (p % 2)]);
            let sp_hi = shuffle(words, &PAIR_SAME[2 * (p % 2) + 1]);
            let shift_lo = _mm_cvtsi32_si128(2 * p as i32);
            let shift_hi = _mm_cvtsi32_si128(2 * p as i32 + 1);
            for half in 0..2 {
                // 4 products of ≤ 2·31·127 per i16 lane: ≤ 31496.
                let mut s_lo = [_mm256_setzero_si256(); R];
                let mut s_hi = [_mm256_setzero_si256(); R];
                for w in 4 * half..4 * half + 4 {
                    let v = load(tile.add(oq + (8 * p + w) * 4 * G));
                    let h = load(tile.add(oh + w * 4 * G));
                    let lo_h = _mm256_slli_epi32::<4>(_mm256_and_si256(
                        _mm256_srl_epi32(h, shift_lo),
                        bit,
                    ));
                    let hi_h = _mm256_slli_epi32::<4>(_mm256_and_si256(
                        _mm256_srl_epi32(h, shift_hi),
                        bit,
                    ));
                    let lo = _mm256_or_si256(_mm256_and_si256(v, mask), lo_h);
                    let hi =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(v), mask), hi_h);
                    for r in 0..R {
                        let qs = (*acts.add((r0 + r) * nb + b))
                            .qs
                            .as_ptr()
                            .add(64 * p + 4 * w);
                        s_lo[r] = _mm256_add_epi16(s_lo[r], _mm256_maddubs_epi16(lo, bcast(qs)));
                        s_hi[r] =
                            _mm256_add_epi16(s_hi[r], _mm256_maddubs_epi16(hi, bcast(qs.add(32))));
                    }
                }
                for r in 0..R {
                    isum[r] = _mm256_add_epi32(
                        isum[r],
                        _mm256_add_epi32(
                            _mm256_madd_epi16(s_lo[r], sp_lo),
                            _mm256_madd_epi16(s_hi[r], sp_hi),
                        ),
                    );
                }
            }
        }
        let d = scales(tile.add(od));
        let dmin = scales(tile.add(odm));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            acc[r] = k_float(acc[r], d, dmin, a.d, isum[r], k4_mins(&mins, a));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    let (od, osc, oql, oqh) = offsets::q6k(G);
    let m4 = _mm256_set1_epi8(0x0F);
    let m03 = _mm256_set1_epi8(0x03);
    let m0c = _mm256_set1_epi8(0x0C);
    let m30 = _mm256_set1_epi8(0x30);
    let mc0 = _mm256_set1_epi8(0xC0u8 as i8);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 210 * G);
        let words = [
            load(tile.add(osc)),
            load(tile.add(osc + 4 * G)),
            load(tile.add(osc + 8 * G)),
            load(tile.add(osc + 12 * G)),
        ];
        // Sign-extended scale of sub-block j in both i16 halves of each lane.
        let scale_pair =
            |j: usize| _mm256_srai_epi16::<8>(shuffle(words[j / 4], &PAIR_SAME_HI[j % 4]));
        let mut isum = [_mm256_setzero_si256(); R];
        for h in 0..2 {
            for wq in 0..2 {
                let sp = [
                    scale_pair(8 * h + wq),
                    scale_pair(8 * h + 2 + wq),
                    scale_pair(8 * h + 4 + wq),
                    scale_pair(8 * h + 6 + wq),
                ];
                for w in 4 * wq..4 * wq + 4 {
                    let qa = load(tile.add(oql + (16 * h + w) * 4 * G));
                    let qb = load(tile.add(oql + (16 * h + 8 + w) * 4 * G));
                    let qh = load(tile.add(oqh + (8 * h + w) * 4 * G));
                    let g = [
                        _mm256_or_si256(
                            _mm256_and_si256(qa, m4),
                            _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m03)),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(qb, m4),
                            _mm256_slli_epi16::<2>(_mm256_and_si256(qh, m0c)),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(qa), m4),
                            _mm256_and_si256(qh, m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(qb), m4),
                            _mm256_srli_epi16::<2>(_mm256_and_si256(qh, mc0)),
                        ),
                    ];
                    for (tq, gq) in g.iter().enumerate() {
                        for r in 0..R {
                            let qs = (*acts.add((r0 + r) * nb + b))
                                .qs
                                .as_ptr()
                                .add(128 * h + 32 * tq + 4 * w);
                            // One pair ≤ 2·63·128 = 16128, times a scale ≤ 128.
                            isum[r] = _mm256_add_epi32(
                                isum[r],
                                _mm256_madd_epi16(_mm256_maddubs_epi16(*gq, bcast(qs)), sp[tq]),
                            );
                        }
                    }
                }
            }
        }
        // The offset 32: Σ_j sc_j · bsum16_j, by pairs of sub-blocks.
        let pairs: [__m256i; 8] = std::array::from_fn(|i| {
            _mm256_srai_epi16::<8>(shuffle(words[i / 2], &PAIR_NEXT_HI[i % 2]))
        });
        let d = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let bs = a.bsums.as_ptr() as *const i32;
            let mut corr = _mm256_setzero_si256();
            for (i, pair) in pairs.iter().enumerate() {
                corr = _mm256_add_epi32(
                    corr,
                    _mm256_madd_epi16(*pair, _mm256_set1_epi32(bs.add(i).read_unaligned())),
                );
            }
            let isum = _mm256_sub_epi32(isum[r], _mm256_slli_epi32::<5>(corr));
            let dy = _mm256_set1_ps(a.d);
            acc[r] = _mm256_add_ps(
                acc[r],
                _mm256_mul_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(isum)),
            );
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f32s<const R: usize>(t: *const u8, k: usize, x: *const f32, r0: usize, out: &GroupOut) {
    let mut acc = [_mm256_setzero_ps(); R];
    for i in 0..k {
        let w = _mm256_loadu_ps(t.add(i * 4 * G) as *const f32);
        for r in 0..R {
            let xv = _mm256_set1_ps(*x.add((r0 + r) * k + i));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(w, xv));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}
