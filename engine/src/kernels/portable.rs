//! The portable kernel: each column of the packed group read back into file
//! layout and run through the scalar reference. Used where no vector tier
//! applies; slow, but exactly the reference by construction.

use super::formats::{self, WeightFormat};
use super::packed::{GroupIn, GroupOut};

/// Computes one column group for every row of `input`.
pub(crate) fn group(
    format: WeightFormat,
    tiles: &[u8],
    nb: usize,
    input: &GroupIn<'_>,
    out: &GroupOut,
) {
    let g = out_group_width(tiles, format, nb);
    let bb = format.block_bytes();
    let tile = bb * g;
    let mut row = vec![0u8; nb * bb];
    let mut values = vec![0f32; out.valid];
    // Activation blocks per row (an NVFP4 block spans two of 32).
    let na = match input {
        GroupIn::F32(x) => x.len() / out.rows.max(1),
        GroupIn::B32(a) => a.len() / out.rows.max(1),
        GroupIn::K(a) => a.len() / out.rows.max(1),
    };
    for r in 0..out.rows {
        for (c, value) in values.iter_mut().enumerate() {
            for b in 0..nb {
                super::packed::unpack_block_into(
                    format,
                    &tiles[b * tile..(b + 1) * tile],
                    &mut row[b * bb..(b + 1) * bb],
                    g,
                    c,
                );
            }
            *value = match input {
                GroupIn::F32(x) => formats::reference_dot_f32(&row, &x[r * na..(r + 1) * na]),
                GroupIn::B32(a) => formats::reference_dot32(format, &row, &a[r * na..(r + 1) * na]),
                GroupIn::K(a) => formats::reference_dot_k(format, &row, &a[r * na..(r + 1) * na]),
            };
        }
        // SAFETY: row `r` of this group is this task's.
        unsafe { out.store(r, &values) };
    }
}

fn out_group_width(tiles: &[u8], format: WeightFormat, nb: usize) -> usize {
    tiles.len() / (nb * format.block_bytes())
}
