//! Scaled dot-product attention over the KV cache, on the CPU: grouped-query
//! heads read their key/value head in place, and each query looks only at
//! the keys it may see (causal, and within its sliding window), so the masked
//! part of the score matrix is never computed.
//!
//! A query's arithmetic is a function of its absolute position alone: its
//! visible key range, each score's summation order, the softmax and the
//! weighted sum of values are the same whether the query is decoded alone,
//! prefilled in a chunk of 512 or in two chunks of 4 — which is what makes a
//! prompt served from the cache equal a fresh prefill. The fixed order:
//! - score `q·k`: eight lanes, lane `l` summing elements `l, l+8, …` with
//!   fused multiply-adds, then `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`;
//!   times the scale;
//! - softmax: the maximum; `exp(s - max)` by [`exp`] (a polynomial, not
//!   libm, so vector and scalar code agree); the sum in eight lanes over the
//!   visible keys from the first, then the same tree;
//! - output: for each dimension, fused multiply-adds of probability × value
//!   over the keys in order, divided by the sum.
//!
//! Keys and values are held in f16, as llama.cpp holds them by default (half
//! the cache's memory and bandwidth), or in f32 ([`KvElement`]); each is
//! widened to f32 when read.
//!
//! [`reference`] computes exactly that with scalar code; the AVX2 version
//! (used on AVX-512 machines too, so every x86 tier gives the same bits) is
//! tested against it.

use half::f16;

use super::pool::Pool;

/// The shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (`n_head` a multiple of it).
    pub n_kv: usize,
    /// Dimensions per head (a multiple of 8).
    pub head_dim: usize,
    /// Queries.
    pub seq: usize,
    /// Absolute position of the first query (keys before it are cached).
    pub offset: usize,
    /// Keys a query sees, itself included, on a sliding-window layer.
    pub window: Option<usize>,
    /// Score scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
}

impl AttentionShape {
    /// The keys `[first, last]` query `i` sees.
    pub fn visible(&self, i: usize) -> (usize, usize) {
        let position = self.offset + i;
        let first = self.window.map_or(0, |w| (position + 1).saturating_sub(w));
        (first, position)
    }
}

/// A value type the KV cache may hold.
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    /// The value as f32.
    fn to_f32(self) -> f32;
    /// `dst[i] = src[i]`, rounded to nearest-even.
    fn convert_from(dst: &mut [Self], src: &[f32]);
    /// Eight values at `p` as f32.
    ///
    /// # Safety
    /// `p` points at eight values, and the CPU has AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElement for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn convert_from(dst: &mut [Self], src: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl KvElement for f32 {
    fn to_f32(self) -> f32 {
        self
    }

    fn convert_from(dst: &mut [Self], src: &[f32]) {
        dst.copy_from_slice(src);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

/// The key/value cache of one layer, position-major: position `j` holds
/// `n_kv` heads of `head_dim` values, so key `j` of head `g` starts at
/// `(j · n_kv + g) · head_dim`. Appending a position is appending a row.
#[derive(Debug)]
pub struct KvView<'a, T = f16> {
    /// Keys.
    pub k: &'a [T],
    /// Values.
    pub v: &'a [T],
}

impl<T> Clone for KvView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for KvView<'_, T> {}

const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// Taylor coefficients of `e^r` for `|r| ≤ ln2 / 2`, highest first.
const EXP_POLY: [f32; 6] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0];

/// Largest argument: `e^88` is below `f32::MAX`.
pub(crate) const EXP_MAX: f32 = 88.0;
/// Smallest argument, `ln(f32::MIN_POSITIVE)`.
pub(crate) const EXP_MIN: f32 = -87.336_54;

/// `e^x`, to about 2e-7 relative: `2^n · p(r)` with `n = round(x·log2 e)`
/// and a degree-6 polynomial in the reduced argument. Arguments are clamped
/// to `[EXP_MIN, EXP_MAX]` (softmax arguments are ≤ 0; activations beyond
/// the bounds saturate harmlessly).
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    let p = p.mul_add(r, 1.0);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

fn tree8(l: &[f32; 8]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

fn dot_reference<T: KvElement>(a: &[f32], b: &[T]) -> f32 {
    let mut lanes = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] = ca[l].mul_add(cb[l].to_f32(), lanes[l]);
        }
    }
    tree8(&lanes)
}

/// Scalar reference: `out[i][h][..]` for every query `i` and head `h`.
/// `q` is `[n_head][seq][head_dim]`, `out` is `[seq][n_head][head_dim]`.
pub fn reference<T: KvElement>(
    shape: &AttentionShape,
    q: &[f32],
    kv: KvView<'_, T>,
    out: &mut [f32],
) {
    let d = shape.head_dim;
    let row = shape.n_kv * d;
    let n_rep = shape.n_head / shape.n_kv;
    for h in 0..shape.n_head {
        let g = h / n_rep;
        let keys = &kv.k[g * d..];
        let values = &kv.v[g * d..];
        for i in 0..shape.seq {
            let query = &q[(h * shape.seq + i) * d..][..d];
            let (first, last) = shape.visible(i);
            let scores: Vec<f32> = (first..=last)
                .map(|j| dot_reference(query, &keys[j * row..][..d]) * shape.scale)
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let probs: Vec<f32> = scores.iter().map(|&s| exp(s - max)).collect();
            let mut lanes = [0f32; 8];
            for (c, p) in probs.iter().enumerate() {
                lanes[c % 8] += p;
            }
            let sum = tree8(&lanes);
            let dst = &mut out[(i * shape.n_head + h) * d..][..d];
            for (t, o) in dst.iter_mut().enumerate() {
                let mut acc = 0f32;
                for (c, p) in probs.iter().enumerate() {
                    acc = p.mul_add(values[(first + c) * row + t].to_f32(), acc);
                }
                *o = acc / sum;
            }
        }
    }
}

/// Attention on `pool`, by the fastest code this CPU runs (AVX2 + FMA + F16C
/// on x86-64, else the reference), with the same result either way.
pub fn attention<T: KvElement>(
    shape: &AttentionShape,
    q: &[f32],
    kv: KvView<'_, T>,
    out: &mut [f32],
    pool: &Pool,
) {
    let d = shape.head_dim;
    assert!(d.is_multiple_of(8) && shape.n_head.is_multiple_of(shape.n_kv));
    assert_eq!(q.len(), shape.n_head * shape.seq * d);
    assert_eq!(out.len(), shape.n_head * shape.seq * d);
    let positions = shape.offset + shape.seq;
    assert!(kv.k.len() >= positions * shape.n_kv * d && kv.v.len() >= positions * shape.n_kv * d);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // Tasks: (head, block of queries); a block reads its keys and values
        // once for all its queries.
        let blocks = shape.seq.div_ceil(QUERY_BLOCK);
        let out_ptr = out.as_mut_ptr() as usize;
        pool.for_each(shape.n_head * blocks, &|task| {
            let (h, b) = (task / blocks, task % blocks);
            let queries = b * QUERY_BLOCK..((b + 1) * QUERY_BLOCK).min(shape.seq);
            SCRATCH.with(|scratch| {
                // SAFETY: queries `queries` of head h are written by this task
                // only, and the CPU has AVX2, FMA and F16C.
                unsafe {
                    avx2::query_block(
                        shape,
                        q,
                        kv,
                        h,
                        queries,
                        out_ptr as *mut f32,
                        &mut scratch.borrow_mut(),
                    )
                };
            });
        });
        return;
    }
    let _ = pool;
    reference(shape, q, kv, out);
}

/// Queries computed together, sharing their key and value reads (the AVX2
/// kernel; elsewhere the reference runs).
#[cfg(target_arch = "x86_64")]
const QUERY_BLOCK: usize = 8;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{AttentionShape, KvElement, KvView, EXP_POLY, LN2_HI, LN2_LO, LOG2E};

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(super::EXP_MIN)),
            _mm256_set1_ps(super::EXP_MAX),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }

    /// `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))` of one vector.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tree8(v: __m256) -> f32 {
        // hadd pairs (l0+l1, l2+l3 | l4+l5, l6+l7), then pairs again, then halves.
        let h = _mm256_hadd_ps(v, v);
        let h = _mm256_hadd_ps(h, h);
        _mm_cvtss_f32(_mm_add_ss(
            _mm256_castps256_ps128(h),
            _mm256_extractf128_ps::<1>(h),
        ))
    }

    /// Eight keys' dot products with one query, each summed as the
    /// reference sums it, as one vector. Key `k` starts at `keys + k · row`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dots8<T: KvElement>(
        query: *const f32,
        keys: *const T,
        d: usize,
        row: usize,
    ) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..d).step_by(8) {
            let qv = _mm256_loadu_ps(query.add(c));
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, T::load8(keys.add(k * row + c)), *a);
            }
        }
        // Three levels of pairwise adds: key k's lanes reduce in the tree order.
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h45 = _mm256_hadd_ps(acc[4], acc[5]);
        let h67 = _mm256_hadd_ps(acc[6], acc[7]);
        let h0123 = _mm256_hadd_ps(h01, h23);
        let h4567 = _mm256_hadd_ps(h45, h67);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(h0123, h4567),
            _mm256_permute2f128_ps::<0x31>(h0123, h4567),
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot1<T: KvElement>(query: *const f32, key: *const T, d: usize) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for c in (0..d).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(query.add(c)), T::load8(key.add(c)), acc);
        }
        tree8(acc)
    }

    /// Queries `queries` of head `h` into `out` (`[seq][n_head][head_dim]`).
    ///
    /// Scores for every key any of the queries sees, eight keys at a time
    /// for each query in turn (the keys stay in L1), then each query's
    /// softmax over its own keys, then the values: each key's row read once
    /// and added into every query that sees it, in key order, with the
    /// block's output rows accumulating in scratch.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn query_block<T: KvElement>(
        shape: &AttentionShape,
        q: &[f32],
        kv: KvView<'_, T>,
        h: usize,
        queries: std::ops::Range<usize>,
        out: *mut f32,
        scratch: &mut Vec<f32>,
    ) {
        let d = shape.head_dim;
        let row = shape.n_kv * d;
        let g = h / (shape.n_head / shape.n_kv);
        let keys = kv.k.as_ptr().add(g * d);
        let values = kv.v.as_ptr().add(g * d);
        let nq = queries.len();
        let ranges: Vec<(usize, usize)> = queries.clone().map(|i| shape.visible(i)).collect();
        let lo = ranges.iter().map(|r| r.0).min().expect("a query");
        let hi = ranges.iter().map(|r| r.1).max().expect("a query");
        let width = hi + 1 - lo;
        // Rows of scores, padded so a probability group of 8 never runs off.
        let stride = width.div_ceil(8) * 8 + 8;
        let need = nq * stride + nq * d;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (scores, acc) = scratch.split_at_mut(nq * stride);
        let scale = _mm256_set1_ps(shape.scale);
        let query = |b: usize| q.as_ptr().add((h * shape.seq + queries.start + b) * d);

        // 1. Scores: each (query, key) dot product the same whichever way computed.
        let mut c = 0;
        while c + 8 <= width {
            let k8 = keys.add((lo + c) * row);
            for b in 0..nq {
                let dots = dots8(query(b), k8, d, row);
                _mm256_storeu_ps(
                    scores.as_mut_ptr().add(b * stride + c),
                    _mm256_mul_ps(dots, scale),
                );
            }
            c += 8;
        }
        for j in c..width {
            let key = keys.add((lo + j) * row);
            for b in 0..nq {
                scores[b * stride + j] = dot1(query(b), key, d) * shape.scale;
            }
        }

        // 2. Each query's probabilities over its own keys, summed in eight
        // lanes from its first key; the sums kept for the division.
        let mut sums = [0f32; super::QUERY_BLOCK];
        for (b, &(first, last)) in ranges.iter().enumerate() {
            let row = scores.as_mut_ptr().add(b * stride + (first - lo));
            let n = last + 1 - first;
            let mut max = f32::NEG_INFINITY;
            for c in 0..n {
                max = max.max(*row.add(c));
            }
            let maxv = _mm256_set1_ps(max);
            let mut sum = _mm256_setzero_ps();
            let mut c = 0;
            while c < n {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row.add(c)), maxv));
                let lanes = n - c;
                let e = if lanes >= 8 {
                    e
                } else {
                    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), idx);
                    _mm256_and_ps(e, _mm256_castsi256_ps(keep))
                };
                sum = _mm256_add_ps(sum, e);
                _mm256_storeu_ps(row.add(c), e);
                c += 8;
            }
            sums[b] = tree8(sum);
        }

        // 3. Values: key by key, into every query that sees the key.
        acc[..nq * d].fill(0.0);
        for j in lo..=hi {
            let v = values.add(j * row);
            for (b, &(first, last)) in ranges.iter().enumerate() {
                if j < first || j > last {
                    continue;
                }
                let p = _mm256_set1_ps(scores[b * stride + (j - lo)]);
                let a = acc.as_mut_ptr().add(b * d);
                for t in (0..d).step_by(8) {
                    let sum = _mm256_fmadd_ps(p, T::load8(v.add(t)), _mm256_loadu_ps(a.add(t)));
                    _mm256_storeu_ps(a.add(t), sum);
                }
            }
        }
        for (b, &sum) in sums.iter().enumerate().take(nq) {
            let i = queries.start + b;
            let dst = out.add((i * shape.n_head + h) * d);
            let sum = _mm256_set1_ps(sum);
            for t in (0..d).step_by(8) {
                _mm256_storeu_ps(
                    dst.add(t),
                    _mm256_div_ps(_mm256_loadu_ps(acc.as_ptr().add(b * d + t)), sum),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn exp_is_close_to_libm_and_exact_at_zero() {
        assert_eq!(exp(0.0), 1.0);
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = x.exp();
            assert!(
                ((exp(x) - want) / want).abs() < 5e-7,
                "{x}: {} vs {want}",
                exp(x)
            );
            x += 0.013;
        }
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        let mut x = 0.0f32;
        while x <= 88.0 {
            let want = x.exp();
            assert!(
                ((exp(x) - want) / want).abs() < 5e-7,
                "{x}: {} vs {want}",
                exp(x)
            );
            x += 0.017;
        }
        assert!(exp(1000.0).is_finite());
    }

    #[allow(clippy::too_many_arguments)]
    fn case(
        n_head: usize,
        n_kv: usize,
        d: usize,
        seq: usize,
        offset: usize,
        window: Option<usize>,
        capacity: usize,
        rng: &mut StdRng,
    ) -> (AttentionShape, Vec<f32>, Vec<f16>, Vec<f16>) {
        let shape = AttentionShape {
            n_head,
            n_kv,
            head_dim: d,
            seq,
            offset,
            window,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let q = random(n_head * seq * d, rng);
        let halves = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
        let k = halves(random(capacity * n_kv * d, rng));
        let v = halves(random(capacity * n_kv * d, rng));
        (shape, q, k, v)
    }

    #[test]
    fn the_vector_code_equals_the_reference_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(1);
        let pool = Pool::new(2);
        // Key counts that are and are not multiples of 8, a window cutting
        // the range, GQA groups, a capacity that ends mid-group.
        for &(n_head, n_kv, d, seq, offset, window, capacity) in &[
            (6, 2, 64, 1, 37, None, 40),
            (6, 2, 64, 13, 0, None, 13),
            (4, 1, 256, 9, 600, Some(512), 612),
            (2, 2, 8, 3, 5, None, 8),
            (3, 1, 128, 20, 100, Some(7), 130),
        ] {
            let (shape, q, k, v) = case(n_head, n_kv, d, seq, offset, window, capacity, &mut rng);
            let kv = KvView { k: &k, v: &v };
            let mut want = vec![0f32; q.len()];
            reference(&shape, &q, kv, &mut want);
            let mut got = vec![0f32; q.len()];
            attention(&shape, &q, kv, &mut got, &pool);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{shape:?}");
            // The same values held in f32: the same bits again.
            let (k32, v32): (Vec<f32>, Vec<f32>) = (
                k.iter().map(|x| x.to_f32()).collect(),
                v.iter().map(|x| x.to_f32()).collect(),
            );
            let kv32 = KvView { k: &k32, v: &v32 };
            let mut want32 = vec![0f32; q.len()];
            reference(&shape, &q, kv32, &mut want32);
            let mut got32 = vec![0f32; q.len()];
            attention(&shape, &q, kv32, &mut got32, &pool);
            assert_eq!(bits(&got32), bits(&want32), "{shape:?}, f32");
            assert_eq!(bits(&want32), bits(&want), "{shape:?}: f16 widens exactly");
        }
    }

    /// The same queries in one chunk, in two chunks, or one at a time, on
    /// any number of threads: the same bits.
    #[test]
    fn a_query_does_not_depend_on_its_chunk_or_the_threads() {
        let mut rng = StdRng::seed_from_u64(2);
        let (n_head, n_kv, d, capacity) = (4, 2, 64, 64);
        let (shape, q, k, v) = case(n_head, n_kv, d, 24, 30, Some(20), capacity, &mut rng);
        let kv = KvView { k: &k, v: &v };
        let mut whole = vec![0f32; q.len()];
        attention(&shape, &q, kv, &mut whole, &Pool::new(1));
        // Query rows [from, to) as their own call.
        let part = |from: usize, to: usize, pool: &Pool| {
            let sub = AttentionShape {
                seq: to - from,
                offset: shape.offset + from,
                ..shape
            };
            let mut sub_q = Vec::new();
            for h in 0..n_head {
                sub_q.extend_from_slice(&q[(h * shape.seq + from) * d..(h * shape.seq + to) * d]);
            }
            let mut out = vec![0f32; sub_q.len()];
            attention(&sub, &sub_q, kv, &mut out, pool);
            out
        };
        let rows =
            |v: &[f32], from: usize, to: usize| v[from * n_head * d..to * n_head * d].to_vec();
        for pool in [Pool::new(1), Pool::new(3)] {
            assert_eq!(part(0, 24, &pool), whole);
            assert_eq!(part(0, 10, &pool), rows(&whole, 0, 10));
            assert_eq!(part(10, 24, &pool), rows(&whole, 10, 24));
            for i in [0, 7, 23] {
                assert_eq!(part(i, i + 1, &pool), rows(&whole, i, i + 1), "query {i}");
            }
        }
    }

    /// Against a plain softmax attention in f64: the fused code is accurate,
    /// not merely self-consistent.
    #[test]
    fn close_to_an_f64_softmax_attention() {
        let mut rng = StdRng::seed_from_u64(3);
        let (shape, q, k, v) = case(4, 2, 64, 10, 50, Some(16), 64, &mut rng);
        let kv = KvView { k: &k, v: &v };
        let mut got = vec![0f32; q.len()];
        attention(&shape, &q, kv, &mut got, &Pool::new(2));
        let d = 64;
        for h in 0..4 {
            let g = h / 2;
            for i in 0..10 {
                let (first, last) = shape.visible(i);
                let query = &q[(h * 10 + i) * d..][..d];
                let scores: Vec<f64> = (first..=last)
                    .map(|j| {
                        let key = &k[(j * 2 + g) * d..][..d];
                        query
                            .iter()
                            .zip(key)
                            .map(|(&a, &b)| a as f64 * b.to_f64())
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for t in 0..d {
                    let want: f64 = e
                        .iter()
                        .enumerate()
                        .map(|(c, p)| p * v[((first + c) * 2 + g) * d + t].to_f64())
                        .sum::<f64>()
                        / sum;
                    let have = got[(i * 4 + h) * d + t] as f64;
                    assert!(
                        (have - want).abs() < 1e-5,
                        "h {h} i {i} t {t}: {have} vs {want}"
                    );
                }
            }
        }
    }
}
