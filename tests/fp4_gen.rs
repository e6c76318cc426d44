//! FP4 weights for the generated files: a round-to-nearest MXFP4 / NVFP4
//! quantizer written from the formats' bit definitions (not from the
//! engine's code), and a GGUF writer for tensors of types candle cannot hold.
//!
//! candle's GGUF writer only takes its own types, so an FP4 tensor is
//! written as an F32 placeholder of the same byte size (its innermost
//! dimension is the row's bytes / 4) and the header entry is patched
//! afterwards: the innermost dimension back to the row's values and the
//! type id to 39 (MXFP4) or 40 (NVFP4). The data section is unchanged.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

/// How a generated file stores its routed experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp4 {
    Mxfp4,
    Nvfp4,
}

impl Fp4 {
    pub fn type_id(self) -> u32 {
        match self {
            Fp4::Mxfp4 => 39,
            Fp4::Nvfp4 => 40,
        }
    }

    pub fn block_values(self) -> usize {
        match self {
            Fp4::Mxfp4 => 32,
            Fp4::Nvfp4 => 64,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            Fp4::Mxfp4 => 17,
            Fp4::Nvfp4 => 36,
        }
    }
}

/// E2M1 code `c` (sign bit 3, exponent bits 2..1 with bias 1, mantissa bit
/// 0) as a float.
pub fn e2m1(c: u8) -> f32 {
    let sign = if c & 8 != 0 { -1.0 } else { 1.0 };
    let (exp, man) = ((c >> 1) & 3, (c & 1) as f32);
    sign * if exp == 0 {
        man * 0.5
    } else {
        (1.0 + man / 2.0) * 2f32.powi(exp as i32 - 1)
    }
}

/// An E8M0 byte's value, `2^(e-127)`.
pub fn e8m0(e: u8) -> f32 {
    2f64.powi(e as i32 - 127) as f32
}

/// A UE4M3 byte's value (bias 7, 3 mantissa bits; 0x7F is NaN, read as 0).
pub fn ue4m3(x: u8) -> f32 {
    if x == 0x7F || x & 0x80 != 0 {
        return 0.0;
    }
    let (exp, man) = (((x >> 3) & 0xF) as i32, (x & 7) as f32);
    if exp == 0 {
        man / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// The code of `v / scale` rounded to the nearest E2M1 value.
fn nearest_code(v: f32, scale: f32) -> u8 {
    if scale == 0.0 {
        return 0;
    }
    (0..16u8)
        .min_by(|&a, &b| {
            let da = (e2m1(a) * scale - v).abs();
            let db = (e2m1(b) * scale - v).abs();
            da.total_cmp(&db)
        })
        .expect("16 codes")
}

/// Quantizes rows of `values` (a multiple of the block size long) to `format`:
/// the file bytes and the values they decode to.
pub fn quantize(format: Fp4, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut decoded = Vec::new();
    for block in values.chunks_exact(format.block_values()) {
        match format {
            Fp4::Mxfp4 => {
                // The smallest power-of-two scale under which the largest
                // value fits E2M1's largest magnitude, 6.
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let e = if amax == 0.0 {
                    0
                } else {
                    ((amax / 6.0).log2().ceil() as i32 + 127).clamp(1, 254) as u8
                };
                let scale = e8m0(e);
                let codes: Vec<u8> = block.iter().map(|&v| nearest_code(v, scale)).collect();
                bytes.push(e);
                for j in 0..16 {
                    bytes.push(codes[j] | (codes[j + 16] << 4));
                }
                decoded.extend(codes.iter().map(|&c| e2m1(c) * scale));
            }
            Fp4::Nvfp4 => {
                let mut scales = [0u8; 4];
                let mut codes = [0u8; 64];
                for (s, sub) in block.chunks_exact(16).enumerate() {
                    // The smallest UE4M3 scale under which the sub-block fits.
                    let amax = sub.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let want = amax / 6.0;
                    scales[s] = if amax == 0.0 {
                        0
                    } else {
                        (1..0x7Fu8).find(|&x| ue4m3(x) >= want).unwrap_or(0x7E)
                    };
                    let scale = ue4m3(scales[s]);
                    for (j, &v) in sub.iter().enumerate() {
                        codes[16 * s + j] = nearest_code(v, scale);
                    }
                }
                bytes.extend_from_slice(&scales);
                for s in 0..4 {
                    for j in 0..8 {
                        bytes.push(codes[16 * s + j] | (codes[16 * s + j + 8] << 4));
                    }
                }
                for (i, &c) in codes.iter().enumerate() {
                    decoded.push(e2m1(c) * ue4m3(scales[i / 16]));
                }
            }
        }
    }
    (bytes, decoded)
}

/// An F32 placeholder holding `bytes` (FP4 rows of `dims`' innermost
/// length), for [`patch_fp4`] to retype once written.
pub fn placeholder(format: Fp4, dims: &[usize], bytes: &[u8]) -> QTensor {
    let k = *dims.last().unwrap();
    let row_bytes = k / format.block_values() * format.block_bytes();
    assert_eq!(row_bytes % 4, 0, "rows of {row_bytes} bytes");
    let mut shape = dims.to_vec();
    *shape.last_mut().unwrap() = row_bytes / 4;
    let words: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_bits(u32::from_le_bytes(b.try_into().unwrap())))
        .collect();
    // SAFETY: a view of the words' own (aligned) storage as bytes.
    let raw = unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 4) };
    candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::F32, raw, shape, &Device::Cpu)
        .unwrap()
}

/// Retypes the placeholders `tensors` (name, format, row length) in the
/// GGUF v3 file at `path`.
pub fn patch_fp4(path: &Path, tensors: &[(String, Fp4, usize)]) {
    let mut file = std::fs::read(path).unwrap();
    for (name, format, k) in tensors {
        let at = tensor_info_at(&file, name);
        let dims = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        let ne0 = at + 4;
        let row_bytes = k / format.block_values() * format.block_bytes();
        let old = u64::from_le_bytes(file[ne0..ne0 + 8].try_into().unwrap());
        assert_eq!(
            old as usize * 4,
            row_bytes,
            "`{name}` is not its placeholder"
        );
        file[ne0..ne0 + 8].copy_from_slice(&(*k as u64).to_le_bytes());
        let ty = at + 4 + 8 * dims;
        assert_eq!(
            &file[ty..ty + 4],
            &0u32.to_le_bytes(),
            "`{name}` is not F32"
        );
        file[ty..ty + 4].copy_from_slice(&format.type_id().to_le_bytes());
    }
    std::fs::write(path, file).unwrap();
}

/// Where tensor `name`'s dimension count lies in a GGUF v3 header (just
/// after its length-prefixed name).
pub fn tensor_info_at(file: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let hits: Vec<usize> = file
        .windows(key.len())
        .enumerate()
        .filter(|(_, w)| *w == &key[..])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "`{name}` in the header");
    hits[0] + key.len()
}

#[test]
fn the_test_quantizer_decodes_as_the_bits_say() {
    assert_eq!(
        (0..16).map(e2m1).collect::<Vec<_>>(),
        [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    );
    assert_eq!(ue4m3(0x38), 1.0);
    assert_eq!(ue4m3(0x7E), 448.0);
    assert_eq!(ue4m3(0x01), 2f32.powi(-9));
    assert_eq!(e8m0(127), 1.0);
    let values: Vec<f32> = (0..128)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    for format in [Fp4::Mxfp4, Fp4::Nvfp4] {
        let (bytes, decoded) = quantize(format, &values);
        assert_eq!(
            bytes.len(),
            128 / format.block_values() * format.block_bytes()
        );
        // Round to nearest: within half the coarsest step (4 → 6, twice
        // the scale) of a block whose scale is at most amax / 3.
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (v, d) in values.iter().zip(&decoded) {
            assert!((v - d).abs() <= amax / 3.0, "{format:?}: {v} → {d}");
        }
        let rel = crate::util::relative_l2(&decoded, &values);
        assert!(rel < 0.15, "{format:?}: relative error {rel}");
    }
}
