//! Projections and feed-forwards on plain f32 rows, the way the hybrid
//! architectures (Qwen 3.5, Gemma 4) run a forward: fused on the engine's
//! packed kernels on the CPU, or each as a candle operation on the model's
//! device, as the Metal and CUDA builds run them.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::kernels::PackedMatrix;
use crate::models::layers::{Linear, Mlp};

/// How a forward runs its projections: straight on rows on the engine's
/// packed kernels (the fused CPU path), or each as a candle tensor
/// operation on `device`, as the Metal and CUDA builds run them (on the CPU
/// with `Kernels::EngineLayerByLayer` the same packed kernels inside candle
/// operations: the same bits, which a test checks).
#[derive(Clone, Copy)]
pub(crate) struct Exec<'a> {
    pub(crate) device: &'a Device,
    pub(crate) rows: bool,
}

/// A projection of `rows` rows.
pub(crate) fn project(w: &Linear, x: &[f32], rows: usize, exec: Exec<'_>) -> Result<Vec<f32>> {
    match w {
        Linear::Packed(p) if exec.rows => {
            let mut out = vec![0f32; rows * p.n()];
            p.matmul(x, rows, &mut out);
            Ok(out)
        }
        _ => {
            let k = x.len() / rows;
            let xs = Tensor::from_slice(x, (rows, k), exec.device)?;
            Ok(w.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?)
        }
    }
}

/// Several projections of the same rows; on rows, packed ones share one
/// quantization of the activations.
pub(crate) fn project_all<const N: usize>(
    ws: [&Linear; N],
    x: &[f32],
    rows: usize,
    exec: Exec<'_>,
) -> Result<[Vec<f32>; N]> {
    let packed: Vec<&PackedMatrix> = ws
        .iter()
        .filter_map(|w| match w {
            Linear::Packed(p) => Some(p.as_ref()),
            Linear::Candle { .. } => None,
        })
        .collect();
    if exec.rows && packed.len() == N {
        let mut outs: [Vec<f32>; N] = std::array::from_fn(|i| vec![0f32; rows * packed[i].n()]);
        let mut products: Vec<(&PackedMatrix, &mut [f32])> = packed
            .iter()
            .copied()
            .zip(outs.iter_mut().map(|o| o.as_mut_slice()))
            .collect();
        PackedMatrix::matmul_shared(&mut products, x, rows);
        return Ok(outs);
    }
    let mut outs: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
    for (out, w) in outs.iter_mut().zip(ws) {
        *out = project(w, x, rows, exec)?;
    }
    Ok(outs)
}

/// The gated feed-forward on rows.
pub(crate) fn mlp_rows(
    mlp: &Mlp,
    x: &[f32],
    rows: usize,
    hidden: usize,
    exec: Exec<'_>,
) -> Result<Vec<f32>> {
    if exec.rows && mlp.packed().is_some() {
        let mut out = vec![0f32; rows * hidden];
        mlp.forward_rows(x, rows, &mut out);
        return Ok(out);
    }
    let xs = Tensor::from_slice(x, (1, rows, x.len() / rows), exec.device)?;
    Ok(mlp.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?)
}
