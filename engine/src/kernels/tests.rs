//! Every kernel against the scalar reference, on every tier this CPU has;
//! the reference and the activation quantization against candle's generic
//! (ggml-derived) code; and the properties prompt caching needs: a row's
//! result does not depend on the row count or the thread count.

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
    GgmlType,
};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::formats::{self, WeightFormat, QK32, QK_K};
use super::packed::PackedMatrix;
use super::pool::Pool;
use super::quantize::{quantize_row_q8_0, quantize_row_q8k, ActBlock32, ActBlockK};
use super::Tier;

const FORMATS: [WeightFormat; 10] = [
    WeightFormat::F32,
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q8_0,
    WeightFormat::Q4K,
    WeightFormat::Q5K,
    WeightFormat::Q6K,
    WeightFormat::Mxfp4,
    WeightFormat::Nvfp4,
];

/// The formats candle also has (it has no FP4).
const CANDLE_FORMATS: [WeightFormat; 7] = [
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q8_0,
    WeightFormat::Q4K,
    WeightFormat::Q5K,
    WeightFormat::Q6K,
];

/// Random but valid file bytes for `n` rows of `k` values: random quants,
/// finite scales of a realistic size.
fn random_weights(format: WeightFormat, n: usize, k: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..n * format.row_bytes(k)).map(|_| rng.random()).collect();
    let bb = format.block_bytes();
    let put_f16 = |b: &mut [u8], at: usize, rng: &mut StdRng, scale: f32| {
        let v = f16::from_f32(rng.random_range(-1.0..1.0) * scale);
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    for block in bytes.chunks_exact_mut(bb) {
        match format {
            WeightFormat::F32 => {
                let v: f32 = rng.random_range(-1.0..1.0);
                block.copy_from_slice(&v.to_le_bytes());
            }
            WeightFormat::Q4_0 | WeightFormat::Q5_0 | WeightFormat::Q8_0 => {
                put_f16(block, 0, rng, 0.02)
            }
            WeightFormat::Q4_1 => {
                put_f16(block, 0, rng, 0.02);
                put_f16(block, 2, rng, 0.1);
            }
            WeightFormat::Q4K | WeightFormat::Q5K => {
                put_f16(block, 0, rng, 0.002);
                put_f16(block, 2, rng, 0.002);
            }
            WeightFormat::Q6K => put_f16(block, 208, rng, 0.002),
            // Scales of trained weights: 2^-10 .. 2^-3 (halved).
            WeightFormat::Mxfp4 => block[0] = rng.random_range(117..=124),
            // UE4M3 bytes over the normal range and a few subnormals,
            // never the NaN 0x7F; now and then a zero sub-block scale.
            WeightFormat::Nvfp4 => {
                for d in &mut block[0..4] {
                    *d = match rng.random_range(0..16) {
                        0 => 0,
                        1 => rng.random_range(1..8),
                        _ => rng.random_range(8..0x7F),
                    };
                }
            }
        }
    }
    bytes
}

/// Activations with the cases that matter: ordinary rows, an all-zero row
/// (zero scales), a row with one large outlier and a negative maximum.
fn random_inputs(m: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
    if m > 1 {
        x[k..2 * k].fill(0.0);
    }
    if m > 2 {
        x[2 * k + 3] = -300.0;
    }
    x
}

enum Acts {
    F32,
    B32(Vec<ActBlock32>),
    K(Vec<ActBlockK>),
}

fn quantize(format: WeightFormat, x: &[f32], k: usize) -> Acts {
    match format.act_format() {
        formats::ActFormat::F32 => Acts::F32,
        formats::ActFormat::Q8K => {
            let mut blocks = vec![zero_k(); x.len() / QK_K];
            for (row, out) in x.chunks_exact(k).zip(blocks.chunks_exact_mut(k / QK_K)) {
                quantize_row_q8k(row, out);
            }
            Acts::K(blocks)
        }
        f => {
            let mut blocks = vec![zero32(); x.len() / QK32];
            for (row, out) in x.chunks_exact(k).zip(blocks.chunks_exact_mut(k / QK32)) {
                quantize_row_q8_0(row, out, f == formats::ActFormat::Q8_1);
            }
            Acts::B32(blocks)
        }
    }
}

fn zero32() -> ActBlock32 {
    ActBlock32 {
        qs: [0; QK32],
        d: 0.0,
        s: 0.0,
        sum: 0,
    }
}

fn zero_k() -> ActBlockK {
    ActBlockK {
        qs: [0; QK_K],
        bsums: [0; 16],
        bsums32: [0; 8],
        d: 0.0,
    }
}

/// The reference product, row by row, column by column, from file bytes.
fn reference(format: WeightFormat, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let acts = quantize(format, x, k);
    let rb = format.row_bytes(k);
    let nb = match &acts {
        Acts::F32 => k,
        Acts::B32(_) => k / QK32,
        Acts::K(_) => k / QK_K,
    };
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let row = &w[c * rb..(c + 1) * rb];
            out[r * n + c] = match &acts {
                Acts::F32 => formats::reference_dot_f32(row, &x[r * k..(r + 1) * k]),
                Acts::B32(a) => formats::reference_dot32(format, row, &a[r * nb..(r + 1) * nb]),
                Acts::K(a) => formats::reference_dot_k(format, row, &a[r * nb..(r + 1) * nb]),
            };
        }
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn product(w: &PackedMatrix, x: &[f32], m: usize, pool: &Pool) -> Vec<f32> {
    let mut out = vec![0f32; m * w.n()];
    w.matmul_on(pool, x, m, &mut out);
    out
}

/// The tests compare every tier in `Tier::available()`: on aarch64 that must
/// include NEON, or its kernels would go untested without a word.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_is_among_the_tested_tiers() {
    assert!(Tier::available().contains(&Tier::Neon));
    assert_eq!(Tier::Neon.group_width(), 8);
}

#[test]
fn every_tier_equals_the_reference_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(7);
    let pool = Pool::new(2);
    for format in FORMATS {
        let bv = format.block_values().max(32);
        // Odd column counts leave a partial last group; three blocks of k.
        for (n, k) in [(37, 3 * bv), (16, bv), (9, 2 * bv)] {
            let w = random_weights(format, n, k, &mut rng);
            for m in [1, 2, 3, 5, 9] {
                let x = random_inputs(m, k, &mut rng);
                let want = reference(format, &w, n, k, &x, m);
                for tier in Tier::available() {
                    let packed = PackedMatrix::pack(format, n, k, &w, tier).unwrap();
                    let got = product(&packed, &x, m, &pool);
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{format:?} on {tier:?}, n {n} k {k} m {m}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_row_does_not_depend_on_the_row_count_or_the_threads() {
    let mut rng = StdRng::seed_from_u64(11);
    let pools = [Pool::new(1), Pool::new(2), Pool::new(3)];
    for format in FORMATS {
        let k = format.block_values().max(32) * 2;
        let n = 72;
        let w = random_weights(format, n, k, &mut rng);
        let m = 512;
        let x = random_inputs(m, k, &mut rng);
        for tier in Tier::available() {
            let packed = PackedMatrix::pack(format, n, k, &w, tier).unwrap();
            let all = product(&packed, &x, m, &pools[1]);
            for pool in &pools {
                assert_eq!(
                    bits(&product(&packed, &x, m, pool)),
                    bits(&all),
                    "{format:?}"
                );
            }
            for r in [0, 1, 2, 3, 17, 255, 511] {
                let one = product(&packed, &x[r * k..(r + 1) * k], 1, &pools[0]);
                assert_eq!(
                    bits(&one),
                    bits(&all[r * n..(r + 1) * n]),
                    "{format:?} on {tier:?}, row {r}"
                );
            }
        }
    }
}

#[test]
fn a_packed_column_reads_back_as_its_file_row() {
    let mut rng = StdRng::seed_from_u64(3);
    for format in FORMATS {
        let k = format.block_values().max(32) * 2;
        let n = 21;
        let w = random_weights(format, n, k, &mut rng);
        let rb = format.row_bytes(k);
        for tier in Tier::available() {
            let packed = PackedMatrix::pack(format, n, k, &w, tier).unwrap();
            for c in 0..n {
                assert_eq!(
                    packed.column_bytes(c),
                    &w[c * rb..(c + 1) * rb],
                    "{format:?} {c}"
                );
            }
        }
    }
}

/// Reinterprets file bytes as candle's block structs (`#[repr(C)]`, the
/// GGUF layout), copied into storage aligned for them.
fn as_blocks<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    assert_eq!(bytes.len() % size, 0);
    let mut out = vec![T::zeros(); bytes.len() / size];
    // SAFETY: `T` is a plain `#[repr(C)]` block of integers and f16s whose
    // size is the GGUF block size; any bytes are a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, bytes.len());
    }
    out
}

fn to_bytes<T>(blocks: &[T]) -> Vec<u8> {
    let len = std::mem::size_of_val(blocks);
    // SAFETY: reading plain-old-data blocks as bytes.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, len).to_vec() }
}

/// candle's generic dot product of one file row against `x`, with candle's
/// own activation quantization.
fn candle_dot(format: WeightFormat, row: &[u8], x: &[f32]) -> f32 {
    fn dot<T: GgmlType>(row: &[u8], x: &[f32]) -> f32 {
        let w: Vec<T> = as_blocks(row);
        let mut a = vec![T::VecDotType::zeros(); x.len() / T::VecDotType::BLCK_SIZE];
        T::VecDotType::from_float(x, &mut a);
        T::vec_dot_unopt(x.len(), &w, &a)
    }
    match format {
        WeightFormat::Q4_0 => dot::<BlockQ4_0>(row, x),
        WeightFormat::Q4_1 => dot::<BlockQ4_1>(row, x),
        WeightFormat::Q5_0 => dot::<BlockQ5_0>(row, x),
        WeightFormat::Q8_0 => dot::<BlockQ8_0>(row, x),
        WeightFormat::Q4K => dot::<BlockQ4K>(row, x),
        WeightFormat::Q5K => dot::<BlockQ5K>(row, x),
        WeightFormat::Q6K => dot::<BlockQ6K>(row, x),
        _ => unreachable!("candle has no {format:?}"),
    }
}

/// The 32-value formats follow ggml's generic arithmetic exactly, so the
/// reference equals candle's `vec_dot_unopt` bit for bit. The K-quants keep
/// sub-block sums in integers where ggml sums them in floats: within 1e-5.
#[test]
fn the_reference_is_candles_generic_dot_product() {
    let mut rng = StdRng::seed_from_u64(5);
    for format in &CANDLE_FORMATS {
        let format = *format;
        let k = 2 * QK_K;
        let w = random_weights(format, 1, k, &mut rng);
        for trial in 0..20 {
            let x = random_inputs(3, k, &mut rng)[(trial % 3) * k..(trial % 3 + 1) * k].to_vec();
            let ours = reference(format, &w, 1, k, &x, 1)[0];
            let theirs = candle_dot(format, &w, &x);
            match format {
                WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => {
                    let scale = theirs.abs().max(1e-3);
                    assert!(
                        (ours - theirs).abs() / scale < 1e-5,
                        "{format:?}: {ours} vs {theirs}"
                    );
                }
                _ => assert_eq!(
                    ours.to_bits(),
                    theirs.to_bits(),
                    "{format:?}: {ours} vs {theirs}"
                ),
            }
        }
    }
}

#[test]
fn dequantization_equals_candles() {
    let mut rng = StdRng::seed_from_u64(9);
    for format in &CANDLE_FORMATS {
        let format = *format;
        let k = 2 * QK_K;
        let w = random_weights(format, 1, k, &mut rng);
        let mut ours = vec![0f32; k];
        formats::dequantize_row(format, &w, &mut ours);
        let mut theirs = vec![0f32; k];
        fn deq<T: GgmlType>(row: &[u8], out: &mut [f32]) {
            T::to_float(&as_blocks::<T>(row), out);
        }
        match format {
            WeightFormat::Q4_0 => deq::<BlockQ4_0>(&w, &mut theirs),
            WeightFormat::Q4_1 => deq::<BlockQ4_1>(&w, &mut theirs),
            WeightFormat::Q5_0 => deq::<BlockQ5_0>(&w, &mut theirs),
            WeightFormat::Q8_0 => deq::<BlockQ8_0>(&w, &mut theirs),
            WeightFormat::Q4K => deq::<BlockQ4K>(&w, &mut theirs),
            WeightFormat::Q5K => deq::<BlockQ5K>(&w, &mut theirs),
            WeightFormat::Q6K => deq::<BlockQ6K>(&w, &mut theirs),
            _ => unreachable!("candle has no {format:?}"),
        }
        assert_eq!(bits(&ours), bits(&theirs), "{format:?}");
    }
}

#[test]
fn activation_quantization_equals_candles() {
    let mut rng = StdRng::seed_from_u64(13);
    let x = random_inputs(4, QK_K, &mut rng);
    for row in x.chunks_exact(QK_K) {
        for with_s in [false, true] {
            let mut ours = vec![zero32(); QK_K / QK32];
            quantize_row_q8_0(row, &mut ours, with_s);
            let (qs, d, s): (Vec<i8>, Vec<f32>, Vec<f32>) = if with_s {
                let mut theirs = vec![BlockQ8_1::zeros(); QK_K / QK32];
                BlockQ8_1::from_float(row, &mut theirs);
                // `BlockQ8_1` is d, s (f16), qs.
                let bytes = to_bytes(&theirs);
                split_q8(&bytes, 36, 4)
            } else {
                let mut theirs = vec![BlockQ8_0::zeros(); QK_K / QK32];
                BlockQ8_0::from_float(row, &mut theirs);
                let bytes = to_bytes(&theirs);
                split_q8(&bytes, 34, 2)
            };
            for (i, b) in ours.iter().enumerate() {
                assert_eq!(&b.qs[..], &qs[i * 32..(i + 1) * 32]);
                assert_eq!(b.d.to_bits(), d[i].to_bits());
                assert_eq!(b.sum, b.qs.iter().map(|&q| q as i32).sum::<i32>());
                if with_s {
                    assert_eq!(b.s.to_bits(), s[i].to_bits());
                }
            }
        }
        let mut ours = vec![zero_k(); 1];
        quantize_row_q8k(row, &mut ours);
        let mut theirs = vec![BlockQ8K::zeros(); 1];
        BlockQ8K::from_float(row, &mut theirs);
        // `BlockQ8K` is d (f32), qs, bsums.
        let bytes = to_bytes(&theirs);
        let d = f32::from_le_bytes(bytes[0..4].try_into().unwrap());
        let qs: Vec<i8> = bytes[4..260].iter().map(|&b| b as i8).collect();
        let bsums: Vec<i16> = bytes[260..292]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(ours[0].d.to_bits(), d.to_bits());
        assert_eq!(&ours[0].qs[..], &qs[..]);
        assert_eq!(&ours[0].bsums[..], &bsums[..]);
    }
}

/// Quants, scales and (for `q8_1`) scaled sums of candle's `q8_0`/`q8_1` blocks.
fn split_q8(bytes: &[u8], block: usize, head: usize) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
    let mut qs = Vec::new();
    let mut d = Vec::new();
    let mut s = Vec::new();
    for b in bytes.chunks_exact(block) {
        d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
        if head == 4 {
            s.push(f16::from_le_bytes([b[2], b[3]]).to_f32());
        }
        qs.extend(b[head..].iter().map(|&v| v as i8));
    }
    (qs, d, s)
}

/// Random values in `-1..1`.
fn random_values(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

#[test]
fn the_causal_convolution_matches_its_reference_and_chunks_equal_one_shot() {
    use super::recurrent::{causal_conv_silu, causal_conv_silu_reference, ConvShape};
    let mut rng = StdRng::seed_from_u64(7);
    let shape = ConvShape {
        channels: 40,
        kernel: 4,
    };
    let taps = random_values(4 * 40, &mut rng);
    let x = random_values(9 * 40, &mut rng);
    let (mut state, mut reference_state) = (vec![0f32; 3 * 40], vec![0f32; 3 * 40]);
    let (mut out, mut reference) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    causal_conv_silu(shape, &taps, &mut state, &x, &mut out);
    causal_conv_silu_reference(shape, &taps, &mut reference_state, &x, &mut reference);
    // Same additions in the same order: the same bits.
    assert_eq!(out, reference);
    assert_eq!(state, reference_state);
    assert_eq!(
        &state[..],
        &x[6 * 40..],
        "the state keeps the last three inputs"
    );
    // Two tokens, then one, then six: the state carries the window across.
    let mut chunked_state = vec![0f32; 3 * 40];
    let mut chunked = vec![0f32; x.len()];
    for range in [0..2, 2..3, 3..9] {
        let (a, b) = (range.start * 40, range.end * 40);
        causal_conv_silu(
            shape,
            &taps,
            &mut chunked_state,
            &x[a..b],
            &mut chunked[a..b],
        );
    }
    assert_eq!(chunked, out);
    assert_eq!(chunked_state, state);
}

#[test]
fn the_gated_delta_rule_matches_its_reference_on_every_tier_and_thread_count() {
    use super::recurrent::{gated_delta_rule, gated_delta_rule_reference, DeltaShape};
    let mut rng = StdRng::seed_from_u64(11);
    let shape = DeltaShape {
        heads: 4,
        key_heads: 2,
        dim: 36, // not a multiple of 8: the remainder loop runs too
    };
    let seq = 5;
    let q = random_values(seq * 2 * 36, &mut rng);
    let k = random_values(seq * 2 * 36, &mut rng);
    let v = random_values(seq * 4 * 36, &mut rng);
    let g: Vec<f32> = (0..seq * 4).map(|_| rng.random_range(-2.0..0.0)).collect();
    let beta: Vec<f32> = (0..seq * 4).map(|_| rng.random_range(0.0..1.0)).collect();
    let start = random_values(4 * 36 * 36, &mut rng);
    let mut reference_state = start.clone();
    let mut reference = vec![0f32; seq * 4 * 36];
    gated_delta_rule_reference(
        shape,
        &q,
        &k,
        &v,
        &g,
        &beta,
        &mut reference_state,
        &mut reference,
    );
    let close = |a: &[f32], b: &[f32], what: &str| {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs reference {y}"
            );
        }
    };
    for threads in [1, 2, 3] {
        let pool = Pool::new(threads);
        let mut state = start.clone();
        let mut out = vec![0f32; reference.len()];
        gated_delta_rule(shape, &q, &k, &v, &g, &beta, &mut state, &mut out, &pool);
        close(&out, &reference, "output");
        close(&state, &reference_state, "state");
        // Token by token from the same start: the same bits as all at once.
        let mut stepped_state = start.clone();
        let mut stepped = vec![0f32; reference.len()];
        for t in 0..seq {
            let (kq, vq, gh) = (2 * 36, 4 * 36, 4);
            gated_delta_rule(
                shape,
                &q[t * kq..(t + 1) * kq],
                &k[t * kq..(t + 1) * kq],
                &v[t * vq..(t + 1) * vq],
                &g[t * gh..(t + 1) * gh],
                &beta[t * gh..(t + 1) * gh],
                &mut stepped_state,
                &mut stepped[t * vq..(t + 1) * vq],
                &pool,
            );
        }
        assert_eq!(stepped, out, "{threads} threads");
        assert_eq!(stepped_state, state, "{threads} threads");
    }
}

/// E2M1 from its bits (sign, 2 exponent bits with bias 1, 1 mantissa bit),
/// doubled as ggml's tables are: independent of [`formats::KVALUES_FP4`].
fn e2m1_doubled(code: u8) -> f64 {
    let sign = if code & 8 != 0 { -1.0 } else { 1.0 };
    let (exp, man) = ((code >> 1) & 3, (code & 1) as f64);
    let v = if exp == 0 {
        man * 0.5
    } else {
        (1.0 + man / 2.0) * 2f64.powi(exp as i32 - 1)
    };
    sign * 2.0 * v
}

/// UE4M3 from its bits (4 exponent bits with bias 7, 3 mantissa bits), half,
/// as ggml reads the byte: the top bit ignored, 0 and 0x7F are 0.
fn ue4m3_value_half(x: u8) -> f64 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let x = x & 0x7F;
    let (exp, man) = (((x >> 3) & 0xF) as i32, (x & 7) as f64);
    let v = if exp == 0 {
        man / 8.0 * 2f64.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f64.powi(exp - 7)
    };
    v * 0.5
}

fn dequantized(format: WeightFormat, block: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; format.block_values()];
    formats::dequantize_row(format, block, &mut out);
    out
}

#[test]
fn fp4_dequantization_follows_the_bit_definitions() {
    // The table is E2M1 doubled.
    for code in 0..16u8 {
        assert_eq!(
            formats::KVALUES_FP4[code as usize] as f64,
            e2m1_doubled(code),
            "code {code:#x}"
        );
    }
    // MXFP4, e = 127: scale 0.5 (ggml's half of 2^0).
    let mut b = [0u8; 17];
    b[0] = 127;
    b[1] = 0x07; // value 0: code 7 = 12 · 0.5; value 16: code 0
    b[2] = 0xF9; // value 1: code 9 = -1 · 0.5; value 17: code 0xF = -12 · 0.5
    b[16] = 0x5A; // value 15: code 0xA = -2 · 0.5; value 31: code 5 = 6 · 0.5
    let v = dequantized(WeightFormat::Mxfp4, &b);
    assert_eq!(v[0], 6.0);
    assert_eq!(v[16], 0.0);
    assert_eq!(v[1], -0.5);
    assert_eq!(v[17], -6.0);
    assert_eq!(v[15], -1.0);
    assert_eq!(v[31], 3.0);
    assert!(v[2..15].iter().chain(&v[18..31]).all(|&x| x == 0.0));
    // Other exponents: 2^(e-127) · 0.5, subnormal at the bottom.
    for (e, want) in [
        (130u8, 4.0f32),
        (120, 2f32.powi(-8)),
        (1, 2f32.powi(-127)),
        (0, 2f32.powi(-128)),
        (254, 2f32.powi(126)),
    ] {
        b[0] = e;
        let v = dequantized(WeightFormat::Mxfp4, &b);
        assert_eq!(v[0], 12.0 * want, "e = {e}");
        assert_eq!(formats::e8m0_half(e), want, "e = {e}");
        assert_eq!(
            want as f64,
            0.5 * 2f64.powi(e as i32 - 127),
            "e = {e} by definition"
        );
    }
    // UE4M3 scale bytes, as ggml reads them (halved; 0 and 0x7F are 0).
    for (x, want) in [
        (0x38u8, 0.5f32), // 1.0
        (0x3C, 0.75),     // 1.5
        (0x40, 1.0),      // 2.0
        (0x30, 0.25),     // 0.5
        (0x01, 2f32.powi(-10)),
        (0x07, 7.0 * 2f32.powi(-10)),
        (0x7E, 224.0), // 448, the largest finite
        (0x7F, 0.0),
        (0x00, 0.0),
    ] {
        assert_eq!(formats::ue4m3_half(x), want, "{x:#04x}");
    }
    for x in 0..=255u8 {
        assert_eq!(
            formats::ue4m3_half(x) as f64,
            ue4m3_value_half(x),
            "{x:#04x}"
        );
    }
    // NVFP4: sub-block s reads bytes 4 + 8s .., low nibble value 16s + j,
    // high nibble 16s + j + 8.
    let mut b = [0u8; 36];
    b[0..4].copy_from_slice(&[0x38, 0x40, 0x7F, 0x30]);
    b[4] = 0x17; // value 0: 12 · 0.5; value 8: 1 · 0.5
    b[4 + 8] = 0xE3; // value 16: 3 · 1.0; value 24: -8 · 1.0
    b[4 + 16] = 0x77; // sub-block 2 has scale 0x7F: zeros
    b[4 + 31] = 0x2C; // value 55: -4 · 0.25; value 63: 2 · 0.25
    let v = dequantized(WeightFormat::Nvfp4, &b);
    let mut want = vec![0f32; 64];
    want[0] = 6.0;
    want[8] = 0.5;
    want[16] = 3.0;
    want[24] = -8.0;
    want[55] = -1.0;
    want[63] = 0.5;
    assert_eq!(v, want);
}

#[test]
fn fp4_references_equal_the_dequantized_dot_product() {
    // The integer-sum reference equals Σ w·a over dequantized weights and
    // activations (in f64) to rounding: the blocks' values meet the right
    // activations and scales.
    let mut rng = StdRng::seed_from_u64(17);
    for format in [WeightFormat::Mxfp4, WeightFormat::Nvfp4] {
        let k = 4 * 64;
        let w = random_weights(format, 1, k, &mut rng);
        let mut wf = vec![0f32; k];
        formats::dequantize_row(format, &w, &mut wf);
        for trial in 0..3 {
            let x = random_inputs(3, k, &mut rng)[trial * k..(trial + 1) * k].to_vec();
            let Acts::B32(a) = quantize(format, &x, k) else {
                panic!("{format:?} takes q8_0 activations")
            };
            let exact: f64 = (0..k)
                .map(|i| wf[i] as f64 * a[i / 32].qs[i % 32] as f64 * a[i / 32].d as f64)
                .sum();
            let ours = formats::reference_dot32(format, &w, &a) as f64;
            let scale: f64 = (0..k)
                .map(|i| (wf[i] as f64 * a[i / 32].qs[i % 32] as f64 * a[i / 32].d as f64).abs())
                .sum();
            assert!(
                (ours - exact).abs() <= 1e-5 * scale.max(1e-30),
                "{format:?}: {ours} vs {exact}"
            );
            if trial != 1 {
                assert!(exact != 0.0, "{format:?}: a degenerate test row");
            }
        }
    }
}
