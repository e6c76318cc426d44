//! AVX-512 (F, BW) + VNNI kernels over 16-column groups.
//!
//! As the AVX2 tier, one column per 32-bit lane, but `vpdpbusd` sums four
//! unsigned-weight × signed-activation products straight into i32 (no i16
//! stage), and a sub-block's scale is applied to its i32 sum by a `vpmulld`.
//! Q8_0 weights are signed, so they enter `vpdpbusd` offset by 128 and the
//! offset is taken back through the activation block's sum. Integer sums are
//! exact and the float steps are the reference's, so every lane equals the
//! scalar reference bit for bit, as on the other tiers.

// A row index walks several parallel arrays (accumulators, activation rows)
// at once; iterators over one of them would hide the others.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::formats::WeightFormat;
use super::packed::{offsets, GroupIn, GroupOut};
use super::quantize::{ActBlock32, ActBlockK};

/// Columns per group.
pub(crate) const G: usize = 16;

/// Computes one column group for every row of `input`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `tiles` is one group of a matrix
/// packed with `G` columns and `nb` blocks; `out` is this task's.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
        _ => unreachable!("activations quantized for another format"),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn load(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const __m512i)
}

/// Four activation quants broadcast to every lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn bcast(p: *const i8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

/// Sixteen f16 scales as f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn scales(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn store(out: &GroupOut, r: usize, v: __m512) {
    if out.valid == G {
        _mm512_storeu_ps(out.ptr.add(r * out.stride), v);
    } else {
        let mut tmp = [0f32; G];
        _mm512_storeu_ps(tmp.as_mut_ptr(), v);
        out.store(r, &tmp);
    }
}

/// `(cvt(isum) · dx) · dy`, the 32-value formats' float step.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn scaled(isum: __m512i, dx: __m512, dy: f32) -> __m512 {
    _mm512_mul_ps(
        _mm512_mul_ps(_mm512_cvtepi32_ps(isum), dx),
        _mm512_set1_ps(dy),
    )
}

/// The 4-bit quants of one unit: low nibbles, high nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn nibbles(v: __m512i) -> (__m512i, __m512i) {
    let mask = _mm512_set1_epi8(0x0F);
    (
        _mm512_and_si512(v, mask),
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn q4_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oq) = offsets::q4_0(G);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 18 * G);
        let mut isum = [_mm512_setzero_si512(); R];
        for u in 0..4 {
            let (lo, hi) = nibbles(load(tile.add(oq + u * 4 * G)));
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                isum[r] = _mm512_dpbusd_epi32(isum[r], lo, bcast(qs.add(4 * u)));
                isum[r] = _mm512_dpbusd_epi32(isum[r], hi, bcast(qs.add(16 + 4 * u)));
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = _mm512_sub_epi32(isum[r], _mm512_set1_epi32(8 * a.sum));
            acc[r] = _mm512_add_ps(acc[r], scaled(isum, dx, a.d));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn q4_1<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, om, oq) = offsets::q4_1(G);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 20 * G);
        let mut isum = [_mm512_setzero_si512(); R];
        for u in 0..4 {
            let (lo, hi) = nibbles(load(tile.add(oq + u * 4 * G)));
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                isum[r] = _mm512_dpbusd_epi32(isum[r], lo, bcast(qs.add(4 * u)));
                isum[r] = _mm512_dpbusd_epi32(isum[r], hi, bcast(qs.add(16 + 4 * u)));
            }
        }
        let dx = scales(tile.add(od));
        let mx = scales(tile.add(om));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let p = _mm512_add_ps(
                scaled(isum[r], dx, a.d),
                _mm512_mul_ps(mx, _mm512_set1_ps(a.s)),
            );
            acc[r] = _mm512_add_ps(acc[r], p);
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn q5_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oh, oq) = offsets::q5_0(G);
    let bit = _mm512_set1_epi8(0x01);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 22 * G);
        let mut high = load(tile.add(oh));
        let mut isum = [_mm512_setzero_si512(); R];
        for u in 0..4 {
            let (lo, hi) = nibbles(load(tile.add(oq + u * 4 * G)));
            let lo = _mm512_or_si512(lo, _mm512_slli_epi32::<4>(_mm512_and_si512(high, bit)));
            let hi = _mm512_or_si512(
                hi,
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<4>(high), bit)),
            );
            high = _mm512_srli_epi32::<1>(high);
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                isum[r] = _mm512_dpbusd_epi32(isum[r], lo, bcast(qs.add(4 * u)));
                isum[r] = _mm512_dpbusd_epi32(isum[r], hi, bcast(qs.add(16 + 4 * u)));
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = _mm512_sub_epi32(isum[r], _mm512_set1_epi32(16 * a.sum));
            acc[r] = _mm512_add_ps(acc[r], scaled(isum, dx, a.d));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn q8_0<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlock32,
    r0: usize,
    out: &GroupOut,
) {
    let (od, oq) = offsets::q8_0(G);
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 34 * G);
        let mut isum = [_mm512_setzero_si512(); R];
        for u in 0..8 {
            // w + 128 as an unsigned byte.
            let w = _mm512_xor_si512(load(tile.add(oq + u * 4 * G)), flip);
            for r in 0..R {
                let qs = (*acts.add((r0 + r) * nb + b)).qs.as_ptr();
                isum[r] = _mm512_dpbusd_epi32(isum[r], w, bcast(qs.add(4 * u)));
            }
        }
        let dx = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let isum = _mm512_sub_epi32(isum[r], _mm512_set1_epi32(128 * a.sum));
            acc[r] = _mm512_add_ps(acc[r], scaled(isum, dx, a.d));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

/// `vpshufb` controls over 16 columns' scale words: `ZERO_EXT[j]` makes
/// byte `j` of each 32-bit lane the lane's value; `PAIR_NEXT[j]` puts bytes
/// `j`, `j + 1` in its low and high i16; `PAIR_NEXT_HI` the same in the high
/// byte of each i16, for an arithmetic shift to sign-extend.
const fn control(bytes: [u8; 4]) -> [u8; 64] {
    let mut c = [0x80u8; 64];
    let mut lane = 0;
    while lane < 16 {
        let base = ((lane % 4) * 4) as u8;
        let mut i = 0;
        while i < 4 {
            if bytes[i] != 0x80 {
                c[lane * 4 + i] = base + bytes[i];
            }
            i += 1;
        }
        lane += 1;
    }
    c
}

const Z: u8 = 0x80;
const ZERO_EXT: [[u8; 64]; 4] = [
    control([0, Z, Z, Z]),
    control([1, Z, Z, Z]),
    control([2, Z, Z, Z]),
    control([3, Z, Z, Z]),
];
const PAIR_NEXT: [[u8; 64]; 2] = [control([0, Z, 1, Z]), control([2, Z, 3, Z])];
const SIGNED: [[u8; 64]; 4] = [
    control([Z, Z, Z, 0]),
    control([Z, Z, Z, 1]),
    control([Z, Z, Z, 2]),
    control([Z, Z, Z, 3]),
];
const PAIR_NEXT_HI: [[u8; 64]; 2] = [control([Z, 0, Z, 1]), control([Z, 2, Z, 3])];

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn shuffle(words: __m512i, control: &[u8; 64]) -> __m512i {
    _mm512_shuffle_epi8(words, load(control.as_ptr()))
}

/// The 6-bit scales and minimums of 16 Q4_K/Q5_K columns: `(scales 0..4,
/// scales 4..8, mins 0..4, mins 4..8)`, one byte each per 32-bit lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn k4_scales(words: *const u8) -> [__m512i; 4] {
    let w0 = load(words);
    let w1 = load(words.add(4 * G));
    let w2 = load(words.add(8 * G));
    let m6 = _mm512_set1_epi8(0x3F);
    let m4 = _mm512_set1_epi8(0x0F);
    let m2 = _mm512_set1_epi8(0x03);
    let top0 = _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w0), m2));
    let top1 = _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w1), m2));
    [
        _mm512_and_si512(w0, m6),
        _mm512_or_si512(_mm512_and_si512(w2, m4), top0),
        _mm512_and_si512(w1, m6),
        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(w2), m4), top1),
    ]
}

/// Q4_K/Q5_K minimum term `Σ_j m_j · bsum32_j` of one row, per lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn k4_mins(mins: &[__m512i; 4], a: &ActBlockK) -> __m512i {
    let b = a.bsums32.as_ptr() as *const i32;
    let mut s = _mm512_setzero_si512();
    for (i, m) in mins.iter().enumerate() {
        s = _mm512_add_epi32(
            s,
            _mm512_madd_epi16(*m, _mm512_set1_epi32(b.add(i).read_unaligned())),
        );
    }
    s
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn k_float(
    acc: __m512,
    d: __m512,
    dmin: __m512,
    dy: f32,
    isum: __m512i,
    imin: __m512i,
) -> __m512 {
    let dy = _mm512_set1_ps(dy);
    _mm512_add_ps(
        acc,
        _mm512_sub_ps(
            _mm512_mul_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(isum)),
            _mm512_mul_ps(_mm512_mul_ps(dmin, dy), _mm512_cvtepi32_ps(imin)),
        ),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn q4k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    let (od, odm, osc, oq) = offsets::q4k(G);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 144 * G);
        let sc = k4_scales(tile.add(osc));
        let mins = [
            shuffle(sc[2], &PAIR_NEXT[0]),
            shuffle(sc[2], &PAIR_NEXT[1]),
            shuffle(sc[3], &PAIR_NEXT[0]),
            shuffle(sc[3], &PAIR_NEXT[1]),
        ];
        let mut isum = [_mm512_setzero_si512(); R];
        for p in 0..4 {
            let words = sc[p / 2];
            let s_lo = shuffle(words, &ZERO_EXT[2 * (p % 2)]);
            let s_hi = shuffle(words, &ZERO_EXT[2 * (p % 2) + 1]);
            let mut i_lo = [_mm512_setzero_si512(); R];
            let mut i_hi = [_mm512_setzero_si512(); R];
            for w in 0..8 {
                let (lo, hi) = nibbles(load(tile.add(oq + (8 * p + w) * 4 * G)));
                for r in 0..R {
                    let qs = (*acts.add((r0 + r) * nb + b))
                        .qs
                        .as_ptr()
                        .add(64 * p + 4 * w);
                    i_lo[r] = _mm512_dpbusd_epi32(i_lo[r], lo, bcast(qs));
                    i_hi[r] = _mm512_dpbusd_epi32(i_hi[r], hi, bcast(qs.add(32)));
                }
            }
            for r in 0..R {
                isum[r] = _mm512_add_epi32(
                    isum[r],
                    _mm512_add_epi32(
                        _mm512_mullo_epi32(i_lo[r], s_lo),
                        _mm512_mullo_epi32(i_hi[r], s_hi),
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

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn q5k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    let (od, odm, osc, oh, oq) = offsets::q5k(G);
    let bit = _mm512_set1_epi8(0x01);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 176 * G);
        let sc = k4_scales(tile.add(osc));
        let mins = [
            shuffle(sc[2], &PAIR_NEXT[0]),
            shuffle(sc[2], &PAIR_NEXT[1]),
            shuffle(sc[3], &PAIR_NEXT[0]),
            shuffle(sc[3], &PAIR_NEXT[1]),
        ];
        let mut isum = [_mm512_setzero_si512(); R];
        for p in 0..4 {
            let words = sc[p / 2];
            let s_lo = shuffle(words, &ZERO_EXT[2 * (p % 2)]);
            let s_hi = shuffle(words, &ZERO_EXT[2 * (p % 2) + 1]);
            let shift_lo = _mm_cvtsi32_si128(2 * p as i32);
            let shift_hi = _mm_cvtsi32_si128(2 * p as i32 + 1);
            let mut i_lo = [_mm512_setzero_si512(); R];
            let mut i_hi = [_mm512_setzero_si512(); R];
            for w in 0..8 {
                let (lo, hi) = nibbles(load(tile.add(oq + (8 * p + w) * 4 * G)));
                let h = load(tile.add(oh + w * 4 * G));
                let lo = _mm512_or_si512(
                    lo,
                    _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srl_epi32(h, shift_lo), bit)),
                );
                let hi = _mm512_or_si512(
                    hi,
                    _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srl_epi32(h, shift_hi), bit)),
                );
                for r in 0..R {
                    let qs = (*acts.add((r0 + r) * nb + b))
                        .qs
                        .as_ptr()
                        .add(64 * p + 4 * w);
                    i_lo[r] = _mm512_dpbusd_epi32(i_lo[r], lo, bcast(qs));
                    i_hi[r] = _mm512_dpbusd_epi32(i_hi[r], hi, bcast(qs.add(32)));
                }
            }
            for r in 0..R {
                isum[r] = _mm512_add_epi32(
                    isum[r],
                    _mm512_add_epi32(
                        _mm512_mullo_epi32(i_lo[r], s_lo),
                        _mm512_mullo_epi32(i_hi[r], s_hi),
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

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn q6k<const R: usize>(
    t: *const u8,
    nb: usize,
    acts: *const ActBlockK,
    r0: usize,
    out: &GroupOut,
) {
    let (od, osc, oql, oqh) = offsets::q6k(G);
    let m4 = _mm512_set1_epi8(0x0F);
    let m03 = _mm512_set1_epi8(0x03);
    let m0c = _mm512_set1_epi8(0x0C);
    let m30 = _mm512_set1_epi8(0x30);
    let mc0 = _mm512_set1_epi8(0xC0u8 as i8);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let tile = t.add(b * 210 * G);
        let words = [
            load(tile.add(osc)),
            load(tile.add(osc + 4 * G)),
            load(tile.add(osc + 8 * G)),
            load(tile.add(osc + 12 * G)),
        ];
        let mut isum = [_mm512_setzero_si512(); R];
        for h in 0..2 {
            for wq in 0..2 {
                // Sub-block 8h + 2t + wq, sign-extended, per lane.
                let sc: [__m512i; 4] = std::array::from_fn(|tq| {
                    let j = 8 * h + 2 * tq + wq;
                    _mm512_srai_epi32::<24>(shuffle(words[j / 4], &SIGNED[j % 4]))
                });
                let mut part = [[_mm512_setzero_si512(); 4]; R];
                for w in 4 * wq..4 * wq + 4 {
                    let qa = load(tile.add(oql + (16 * h + w) * 4 * G));
                    let qb = load(tile.add(oql + (16 * h + 8 + w) * 4 * G));
                    let qh = load(tile.add(oqh + (8 * h + w) * 4 * G));
                    let g = [
                        _mm512_or_si512(
                            _mm512_and_si512(qa, m4),
                            _mm512_slli_epi16::<4>(_mm512_and_si512(qh, m03)),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(qb, m4),
                            _mm512_slli_epi16::<2>(_mm512_and_si512(qh, m0c)),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(qa), m4),
                            _mm512_and_si512(qh, m30),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(qb), m4),
                            _mm512_srli_epi16::<2>(_mm512_and_si512(qh, mc0)),
                        ),
                    ];
                    for (tq, gq) in g.iter().enumerate() {
                        for r in 0..R {
                            let qs = (*acts.add((r0 + r) * nb + b))
                                .qs
                                .as_ptr()
                                .add(128 * h + 32 * tq + 4 * w);
                            part[r][tq] = _mm512_dpbusd_epi32(part[r][tq], *gq, bcast(qs));
                        }
                    }
                }
                for r in 0..R {
                    for tq in 0..4 {
                        isum[r] =
                            _mm512_add_epi32(isum[r], _mm512_mullo_epi32(part[r][tq], sc[tq]));
                    }
                }
            }
        }
        // The offset 32: Σ_j sc_j · bsum16_j, by pairs of sub-blocks.
        let pairs: [__m512i; 8] = std::array::from_fn(|i| {
            _mm512_srai_epi16::<8>(shuffle(words[i / 2], &PAIR_NEXT_HI[i % 2]))
        });
        let d = scales(tile.add(od));
        for r in 0..R {
            let a = &*acts.add((r0 + r) * nb + b);
            let bs = a.bsums.as_ptr() as *const i32;
            let mut corr = _mm512_setzero_si512();
            for (i, pair) in pairs.iter().enumerate() {
                corr = _mm512_add_epi32(
                    corr,
                    _mm512_madd_epi16(*pair, _mm512_set1_epi32(bs.add(i).read_unaligned())),
                );
            }
            let isum = _mm512_sub_epi32(isum[r], _mm512_slli_epi32::<5>(corr));
            let dy = _mm512_set1_ps(a.d);
            acc[r] = _mm512_add_ps(
                acc[r],
                _mm512_mul_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(isum)),
            );
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn f32s<const R: usize>(t: *const u8, k: usize, x: *const f32, r0: usize, out: &GroupOut) {
    let mut acc = [_mm512_setzero_ps(); R];
    for i in 0..k {
        let w = _mm512_loadu_ps(t.add(i * 4 * G) as *const f32);
        for r in 0..R {
            let xv = _mm512_set1_ps(*x.add((r0 + r) * k + i));
            acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(w, xv));
        }
    }
    for (r, v) in acc.iter().enumerate() {
        store(out, r0 + r, *v);
    }
}
