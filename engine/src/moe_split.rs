//! Turns a dense llama-family GGUF into a mixtral-style MoE by splitting each
//! feed-forward into experts along its inner dimension: expert `e` owns inner
//! units `[e * n / E, (e + 1) * n / E)`, i.e. whole rows of `ffn_gate` and
//! `ffn_up` and whole column blocks of `ffn_down`. Quantization blocks stay
//! whole and their bytes are copied, so every expert holds the dense weights
//! exactly; the sum of all experts' outputs is the dense output.
//!
//! Written as stacked `ffn_*_exps` tensors, the layout of current GGUF files.

use std::io::{Seek, Write};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;

/// How the router is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Router {
    /// All zeros: every expert gets weight `1 / E` (the exactness check).
    Zero,
    /// Row `e` is the mean of expert `e`'s gate rows, so tokens go to the
    /// experts whose gates they excite on average.
    MeanGate,
}

/// The parameters of a split.
#[derive(Debug, Clone)]
pub struct MoeSplit {
    /// Experts per layer (`llama.expert_count`).
    pub experts: usize,
    /// Experts per token (`llama.expert_used_count`).
    pub experts_used: usize,
    /// Router initialisation.
    pub router: Router,
    /// Power of two that scales every expert's down projection (exact on the
    /// f16 block scales): `E` makes `E` equally weighted experts sum to the dense
    /// output; `E / k` keeps a top-k mixture at the dense output's magnitude.
    pub down_scale: f32,
}

impl MoeSplit {
    /// Writes the MoE version of `dense` to `out`. Deterministic: the same
    /// input gives the same bytes.
    pub fn write<W: Write + Seek>(&self, dense: &Gguf, out: &mut W) -> Result<()> {
        let bad = |m: String| EngineError::Metadata(format!("moe-split: {m}"));
        if dense.architecture() != "llama" {
            return Err(bad(format!(
                "needs a llama model, not `{}`",
                dense.architecture()
            )));
        }
        if dense.get("llama.expert_count").is_some() {
            return Err(bad("the model is already a mixture of experts".into()));
        }
        let (e, k) = (self.experts, self.experts_used);
        if e < 2 || k == 0 || k > e {
            return Err(bad(format!("{k} of {e} experts")));
        }
        if self.down_scale <= 0.0 || self.down_scale.log2().fract() != 0.0 {
            return Err(bad(format!(
                "down_scale {} is not a power of two",
                self.down_scale
            )));
        }
        let ff = dense.arch_u32("feed_forward_length")? as usize;
        if !ff.is_multiple_of(e) {
            return Err(bad(format!(
                "feed_forward_length {ff} does not split into {e}"
            )));
        }
        let expert_ff = ff / e;

        let mut metadata: Vec<(String, gguf_file::Value)> = dense
            .metadata()
            .iter()
            .filter(|(key, _)| key.as_str() != "llama.feed_forward_length")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let u32v = |n: usize| gguf_file::Value::U32(n as u32);
        metadata.push(("llama.feed_forward_length".into(), u32v(expert_ff)));
        metadata.push(("llama.expert_count".into(), u32v(e)));
        metadata.push(("llama.expert_used_count".into(), u32v(k)));
        metadata.sort_by(|a, b| a.0.cmp(&b.0));

        let cpu = &Device::Cpu;
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        for name in dense.tensor_names_in_file_order() {
            let Some(prefix) = name.strip_suffix(".ffn_gate.weight") else {
                if name.ends_with(".ffn_up.weight") || name.ends_with(".ffn_down.weight") {
                    continue; // Written with the gate, below.
                }
                tensors.push((name.to_string(), dense.tensor(name, cpu)?));
                continue;
            };
            let gate = dense.tensor(name, cpu)?;
            let up = dense.tensor(&format!("{prefix}.ffn_up.weight"), cpu)?;
            let down = dense.tensor(&format!("{prefix}.ffn_down.weight"), cpu)?;
            let h = gate.shape().dims()[1];
            let router = match self.router {
                Router::Zero => Tensor::zeros((e, h), candle_core::DType::F32, cpu)?,
                Router::MeanGate => gate.dequantize(cpu)?.reshape((e, expert_ff, h))?.mean(1)?,
            };
            tensors.push((
                format!("{prefix}.ffn_gate_inp.weight"),
                QTensor::quantize(&router, GgmlDType::F32)?,
            ));
            // Rows are outermost, so splitting rows into experts keeps the bytes.
            for (part, t) in [("gate", &gate), ("up", &up)] {
                let stacked = qtensor_from_ggml(t.dtype(), &t.data()?, vec![e, expert_ff, h], cpu)?;
                tensors.push((format!("{prefix}.ffn_{part}_exps.weight"), stacked));
            }
            tensors.push((
                format!("{prefix}.ffn_down_exps.weight"),
                self.split_down(&down, expert_ff)?,
            ));
        }

        let metadata: Vec<(&str, &gguf_file::Value)> =
            metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(out, &metadata, &tensors)?;
        Ok(())
    }

    /// `(h, ff)` → `(E, h, ff / E)`: expert `e` takes column blocks
    /// `[e * ff/E, (e+1) * ff/E)` of every row, scaled by `down_scale`.
    fn split_down(&self, down: &QTensor, expert_ff: usize) -> Result<QTensor> {
        let dtype = down.dtype();
        let (h, ff) = (down.shape().dims()[0], down.shape().dims()[1]);
        let block = dtype.block_size();
        if !expert_ff.is_multiple_of(block) {
            return Err(EngineError::Metadata(format!(
                "moe-split: {expert_ff} inner units per expert split {dtype:?} blocks of {block}"
            )));
        }
        let block_bytes = dtype.type_size();
        let row_bytes = ff / block * block_bytes;
        let expert_bytes = expert_ff / block * block_bytes;
        let data = down.data()?;
        let mut out = Vec::with_capacity(data.len());
        for e in 0..self.experts {
            for row in 0..h {
                let start = row * row_bytes + e * expert_bytes;
                out.extend_from_slice(&data[start..start + expert_bytes]);
            }
        }
        if self.down_scale != 1.0 {
            scale_blocks(&mut out, dtype, self.down_scale)?;
        }
        Ok(qtensor_from_ggml(
            dtype,
            &out,
            vec![self.experts, h, expert_ff],
            &Device::Cpu,
        )?)
    }
}

/// Multiplies every value of quantized `data` by `scale` (a power of two) by
/// scaling each block's f16 scale and offset, which is exact.
fn scale_blocks(data: &mut [u8], dtype: GgmlDType, scale: f32) -> Result<()> {
    // Byte offsets of the f16 fields that values are linear in.
    let fields: &[usize] = match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 => &[0, 2],
        other => {
            return Err(EngineError::Metadata(format!(
                "moe-split: cannot scale {other:?} blocks"
            )))
        }
    };
    for block in data.chunks_exact_mut(dtype.type_size()) {
        for &at in fields {
            let bits = u16::from_le_bytes([block[at], block[at + 1]]);
            let scaled = f32_to_f16_exact(f16_to_f32(bits) * scale).ok_or_else(|| {
                EngineError::Metadata(format!(
                    "moe-split: scaling a block by {scale} overflows f16"
                ))
            })?;
            block[at..at + 2].copy_from_slice(&scaled.to_le_bytes());
        }
    }
    Ok(())
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as f32;
    match exp {
        0 => sign * mant * 2f32.powi(-24),
        31 => sign * if mant == 0.0 { f32::INFINITY } else { f32::NAN },
        _ => sign * (1.0 + mant / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// The f16 bits of `f` when f16 holds it exactly, else `None`.
fn f32_to_f16_exact(f: f32) -> Option<u16> {
    let sign = if f.is_sign_negative() { 0x8000u16 } else { 0 };
    let a = f.abs();
    if a == 0.0 {
        return Some(sign);
    }
    // Subnormal range: multiples of 2^-24 below 2^-14.
    if a < 2f32.powi(-14) {
        let m = a * 2f32.powi(24);
        return (m.fract() == 0.0).then_some(sign | m as u16);
    }
    let exp = a.log2().floor() as i32;
    if exp > 15 {
        return None;
    }
    let mant = (a / 2f32.powi(exp) - 1.0) * 1024.0;
    ((0.0..1024.0).contains(&mant) && mant.fract() == 0.0)
        .then_some(sign | (((exp + 15) as u16) << 10) | mant as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_and_scales_exactly() {
        for bits in [0x0001u16, 0x03ff, 0x0400, 0x3c00, 0x1234, 0xb555, 0x7bff] {
            assert_eq!(f32_to_f16_exact(f16_to_f32(bits)), Some(bits), "{bits:#x}");
        }
        // 2^-24 (smallest subnormal) times 8 is 2^-21, still subnormal.
        assert_eq!(f32_to_f16_exact(f16_to_f32(0x0001) * 8.0), Some(0x0008));
        assert_eq!(f16_to_f32(f32_to_f16_exact(0.75 * 4.0).unwrap()), 3.0);
        assert_eq!(f32_to_f16_exact(65504.0 * 2.0), None);
    }
}
