//! Weights repacked once at load into column groups, and the matmul over them.
//!
//! A weight matrix is `n` output columns (the GGUF tensor's rows) of `k`
//! values. Repacking groups `G` consecutive columns (8 for AVX2, NEON and the
//! portable kernel, 16 for AVX-512) and, block by block, interleaves them: a
//! block's scales for the `G` columns side by side, then its quants in 4-byte
//! units, unit `u` of column `c` at `(u·G + c)·4`. One vector load then holds
//! the same four values of `G` columns, each in its own 32-bit lane, so one
//! broadcast activation word feeds `G` dot products at once and every lane
//! sums its column's products in the same order a scalar loop would. The
//! packed matrix has exactly the file's bytes (plus zero columns up to a
//! multiple of `G`), in another order: no second copy.
//!
//! Layout per block tile (`G` columns), by format:
//! - Q4_0: `d[G]` f16, quants 4 units (unit `u` = file bytes `4u..4u+4`:
//!   low nibbles values `4u..`, high nibbles `16+4u..`).
//! - Q4_1: `d[G]`, `m[G]`, quants as Q4_0.
//! - Q5_0: `d[G]`, `qh[G]` u32 with its bits permuted so that the high bits
//!   of unit `u` sit in bit `u` (low nibbles) and `u+4` (high) of each byte,
//!   quants as Q4_0.
//! - Q8_0: `d[G]`, 8 units of 4 signed bytes.
//! - Q4_K: `d[G]`, `dmin[G]`, the 12 scale bytes as 3 words `[3][G]`, 32
//!   units (unit `u`: file bytes `4u..`, values `64p + 4(u%8)..` low and
//!   `+32` high, `p = u / 8`).
//! - Q5_K: as Q4_K, with the 32 high-bit bytes as 8 units before the quants.
//! - Q6_K: `d[G]`, the 16 scales as 4 words `[4][G]`, `ql` as 32 units,
//!   `qh` as 16 units.
//! - MXFP4: `e[G]` E8M0 scale bytes, quants 4 units as Q4_0 (unit `u` =
//!   file bytes `1+4u..`: low nibbles values `4u..`, high `16+4u..`).
//! - NVFP4: the 4 UE4M3 scale bytes as one word `[G]` (byte `s` = sub-block
//!   `s`), quants 8 units (units `2s, 2s+1` are sub-block `s`: low nibbles
//!   values `16s + 4(u%2)..`, high `+8`).
//! - F32: per value, `G` floats.
//!
//! The FP4 formats have an AVX2 kernel; an AVX-512 CPU packs them for it
//! (8-column groups), and the portable kernel serves the rest, NEON included
//! ([`fp4_kernel`]).

use super::formats::{self, WeightFormat, QK32, QK_K};
use super::pool::{pool, Pool};
use super::quantize::{quantize_row_q8_0, quantize_row_q8k, ActBlock32, ActBlockK, QuantizedActs};
use super::{portable, Tier};

/// A weight matrix repacked for the kernels of one CPU tier.
pub struct PackedMatrix {
    format: WeightFormat,
    tier: Tier,
    /// Output columns.
    n: usize,
    /// Inner dimension.
    k: usize,
    /// Columns per group.
    g: usize,
    data: AlignedBytes,
    /// A factor every output is multiplied by after the sum (NVFP4's
    /// second, per-tensor scale: llama.cpp's `NAME.scale`), 1 for none.
    output_scale: f32,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("format", &self.format)
            .field("tier", &self.tier)
            .field("n", &self.n)
            .field("k", &self.k)
            .finish()
    }
}

/// 64-byte aligned storage.
struct AlignedBytes {
    words: Vec<Align64>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; 64]);

impl AlignedBytes {
    fn zeroed(len: usize) -> Self {
        Self {
            words: vec![Align64([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// Why a tensor cannot be packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    /// `k` is not a whole number of blocks.
    Shape(String),
}

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shape(s) => f.write_str(s),
        }
    }
}

impl PackedMatrix {
    /// Repacks `n` rows of `k` values in file layout (`bytes`, row-major)
    /// for `tier`.
    pub fn pack(
        format: WeightFormat,
        n: usize,
        k: usize,
        bytes: &[u8],
        tier: Tier,
    ) -> Result<Self, PackError> {
        Self::pack_releasing(format, n, k, bytes, tier, &mut |_| {})
    }

    /// [`PackedMatrix::pack`], calling `done` with each stretch of `bytes`
    /// (a few MiB, in order) once it has been read for the last time, so a
    /// caller can drop the file's pages while the packed copy grows: the two
    /// copies of a large matrix are never resident together.
    pub fn pack_releasing(
        format: WeightFormat,
        n: usize,
        k: usize,
        bytes: &[u8],
        tier: Tier,
        done: &mut dyn FnMut(std::ops::Range<usize>),
    ) -> Result<Self, PackError> {
        const RELEASE_EVERY: usize = 4 << 20;
        let bv = format.block_values();
        if k == 0 || !k.is_multiple_of(bv) {
            return Err(PackError::Shape(format!(
                "{format:?} rows of {k} values are not whole blocks of {bv}"
            )));
        }
        let row_bytes = format.row_bytes(k);
        if bytes.len() != n * row_bytes {
            return Err(PackError::Shape(format!(
                "{} bytes for {n} rows of {row_bytes}",
                bytes.len()
            )));
        }
        // The FP4 formats have no AVX-512 kernel yet: an AVX-512 CPU (which
        // has AVX2) packs them for its AVX2 one, 8-column groups.
        #[cfg(target_arch = "x86_64")]
        let tier = if tier == Tier::Avx512
            && matches!(format, WeightFormat::Mxfp4 | WeightFormat::Nvfp4)
        {
            Tier::Avx2
        } else {
            tier
        };
        let g = tier.group_width();
        let groups = n.div_ceil(g);
        let nb = k / bv;
        let bb = format.block_bytes();
        let tile = bb * g;
        let mut data = AlignedBytes::zeroed(groups * nb * tile);
        let out = data.as_mut_slice();
        let mut released = 0;
        for col in 0..n {
            let (gi, c) = (col / g, col % g);
            let row = &bytes[col * row_bytes..(col + 1) * row_bytes];
            for b in 0..nb {
                let src = &row[b * bb..(b + 1) * bb];
                let dst = &mut out[(gi * nb + b) * tile..(gi * nb + b + 1) * tile];
                pack_block(format, src, dst, g, c);
            }
            let read = (col + 1) * row_bytes;
            if read - released >= RELEASE_EVERY || col + 1 == n {
                done(released..read);
                released = read;
            }
        }
        Ok(Self {
            format,
            tier,
            n,
            k,
            g,
            data,
            output_scale: 1.0,
        })
    }

    /// Multiplies every output by `scale` after the sum, as llama.cpp
    /// multiplies a projection by its `NAME.scale` tensor.
    pub fn set_output_scale(&mut self, scale: f32) {
        self.output_scale = scale;
    }

    /// The factor outputs are multiplied by ([`PackedMatrix::set_output_scale`]).
    pub fn output_scale(&self) -> f32 {
        self.output_scale
    }

    fn apply_output_scale(&self, out: &mut [f32]) {
        if self.output_scale != 1.0 {
            for y in out {
                *y *= self.output_scale;
            }
        }
    }

    /// The weight format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inner dimension.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len
    }

    fn blocks(&self) -> usize {
        self.k / self.format.block_values()
    }

    fn group_bytes(&self) -> usize {
        self.blocks() * self.format.block_bytes() * self.g
    }

    /// Column `col` in file layout again (for an embedding row lookup).
    pub fn column_bytes(&self, col: usize) -> Vec<u8> {
        let (gi, c) = (col / self.g, col % self.g);
        let bb = self.format.block_bytes();
        let tile = bb * self.g;
        let data = self.data.as_slice();
        let mut out = vec![0u8; self.format.row_bytes(self.k)];
        for b in 0..self.blocks() {
            let src = &data[(gi * self.blocks() + b) * tile..(gi * self.blocks() + b + 1) * tile];
            unpack_block_into(self.format, src, &mut out[b * bb..(b + 1) * bb], self.g, c);
        }
        out
    }

    /// Column `col` dequantized into `out` (`k` values).
    pub fn dequantize_column(&self, col: usize, out: &mut [f32]) {
        formats::dequantize_row(self.format, &self.column_bytes(col), out);
    }

    /// `out[r][c] = Σ x[r][i] · w[c][i]` for `m` rows of `x` (row-major `m × k`)
    /// into `out` (row-major `m × n`), on the engine's pool. Each row's result
    /// is the same whatever `m` and the thread count.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_on(pool(), x, m, out)
    }

    /// [`PackedMatrix::matmul`] on a given pool.
    pub fn matmul_on(&self, pool: &Pool, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "input is not {m} × {}", self.k);
        assert_eq!(out.len(), m * self.n, "output is not {m} × {}", self.n);
        if m == 0 {
            return;
        }
        ACTS.with(|acts| {
            let mut acts = acts.borrow_mut();
            let acts = self.quantize(pool, x, m, &mut acts);
            self.run_groups(pool, &acts, x, m, out);
        });
        self.apply_output_scale(out);
    }

    fn quantize<'a>(
        &self,
        pool: &Pool,
        x: &[f32],
        m: usize,
        acts: &'a mut QuantizedActs,
    ) -> Acts<'a> {
        let k = self.k;
        match self.format.act_format() {
            formats::ActFormat::F32 => Acts::F32,
            formats::ActFormat::Q8K => {
                let nb = k / QK_K;
                let blocks = acts.reserve_k(m * nb);
                parallel_rows(pool, blocks, nb, m, |r, out| {
                    quantize_row_q8k(&x[r * k..(r + 1) * k], out)
                });
                Acts::K(blocks)
            }
            f => {
                let nb = k / QK32;
                let with_s = f == formats::ActFormat::Q8_1;
                let blocks = acts.reserve32(m * nb);
                parallel_rows(pool, blocks, nb, m, |r, out| {
                    quantize_row_q8_0(&x[r * k..(r + 1) * k], out, with_s)
                });
                Acts::B32(blocks)
            }
        }
    }

    /// Several matrices over the same input, as one job: the activations
    /// quantized once, then every matrix's column groups spread over the
    /// pool together (a layer's q, k and v; gate and up). Each output is
    /// the same as its own [`PackedMatrix::matmul`]'s.
    pub fn matmul_shared(products: &mut [(&PackedMatrix, &mut [f32])], x: &[f32], m: usize) {
        let pool = pool();
        let first: &PackedMatrix = match products.first() {
            Some(product) => product.0,
            None => return,
        };
        let (k, act) = (first.k, first.format.act_format());
        if m == 0
            || products
                .iter()
                .any(|(w, _)| w.k != k || w.format.act_format() != act)
        {
            for (w, out) in products.iter_mut() {
                w.matmul_on(pool, x, m, out);
            }
            return;
        }
        assert_eq!(x.len(), m * k, "input is not {m} × {k}");
        for (w, out) in products.iter() {
            assert_eq!(out.len(), m * w.n, "output is not {m} × {}", w.n);
        }
        let plans: Vec<(TaskPlan, SendPtr)> = products
            .iter_mut()
            .map(|(w, out)| (w.plan(pool, m), SendPtr(out.as_mut_ptr())))
            .collect();
        let total: usize = plans.iter().map(|(p, _)| p.tasks()).sum();
        ACTS.with(|acts| {
            let mut acts = acts.borrow_mut();
            let acts = first.quantize(pool, x, m, &mut acts);
            pool.for_each(total, &|mut task| {
                for ((w, _), (plan, out)) in products.iter().zip(&plans) {
                    if task < plan.tasks() {
                        w.run_task(plan, task, &acts, x, m, *out);
                        return;
                    }
                    task -= plan.tasks();
                }
            });
        });
        for (w, out) in products.iter_mut() {
            w.apply_output_scale(out);
        }
    }

    /// How one product is cut into tasks: rows in chunks so a tall input
    /// still spreads over the threads, and columns in chunks of whole groups.
    fn plan(&self, pool: &Pool, m: usize) -> TaskPlan {
        let groups = self.n.div_ceil(self.g);
        let row_chunk = if m <= 64 { m } else { 64 };
        let row_chunks = m.div_ceil(row_chunk);
        let want = pool.threads() * 4;
        let group_chunk = (groups * row_chunks).div_ceil(want).clamp(1, groups);
        TaskPlan {
            groups,
            row_chunk,
            row_chunks,
            group_chunk,
            group_chunks: groups.div_ceil(group_chunk),
        }
    }

    fn run_groups(&self, pool: &Pool, acts: &Acts<'_>, x: &[f32], m: usize, out: &mut [f32]) {
        let plan = self.plan(pool, m);
        let out_ptr = SendPtr(out.as_mut_ptr());
        pool.for_each(plan.tasks(), &|task| {
            self.run_task(&plan, task, acts, x, m, out_ptr)
        });
    }

    /// Task `task` of `plan`: one chunk of rows times one chunk of groups.
    fn run_task(
        &self,
        plan: &TaskPlan,
        task: usize,
        acts: &Acts<'_>,
        x: &[f32],
        m: usize,
        out_ptr: SendPtr,
    ) {
        let (gc, rc) = (task / plan.row_chunks, task % plan.row_chunks);
        let r0 = rc * plan.row_chunk;
        let rows = plan.row_chunk.min(m - r0);
        let data = self.data.as_slice();
        let gb = self.group_bytes();
        let nb = self.blocks();
        // Activation blocks per row: an NVFP4 block spans two of 32.
        let na = match acts {
            Acts::B32(_) => self.k / QK32,
            Acts::K(_) => self.k / QK_K,
            Acts::F32 => 0,
        };
        for gi in gc * plan.group_chunk..((gc + 1) * plan.group_chunk).min(plan.groups) {
            let tiles = &data[gi * gb..(gi + 1) * gb];
            let c0 = gi * self.g;
            let valid = self.g.min(self.n - c0);
            let dst = GroupOut {
                // SAFETY: each (row, column) of `out` belongs to exactly one task.
                ptr: unsafe { out_ptr.get().add(r0 * self.n + c0) },
                stride: self.n,
                rows,
                valid,
            };
            let input = match acts {
                Acts::F32 => GroupIn::F32(&x[r0 * self.k..(r0 + rows) * self.k]),
                Acts::B32(a) => GroupIn::B32(&a[r0 * na..(r0 + rows) * na]),
                Acts::K(a) => GroupIn::K(&a[r0 * na..(r0 + rows) * na]),
            };
            run_group(self.tier, self.format, tiles, nb, &input, &dst);
        }
    }
}

/// The tasks of one product ([`PackedMatrix::plan`]).
struct TaskPlan {
    groups: usize,
    row_chunk: usize,
    row_chunks: usize,
    group_chunk: usize,
    group_chunks: usize,
}

impl TaskPlan {
    fn tasks(&self) -> usize {
        self.group_chunks * self.row_chunks
    }
}

thread_local! {
    static ACTS: std::cell::RefCell<QuantizedActs> = std::cell::RefCell::new(QuantizedActs::default());
}

enum Acts<'a> {
    F32,
    B32(&'a [ActBlock32]),
    K(&'a [ActBlockK]),
}

/// One column group's input rows.
pub(crate) enum GroupIn<'a> {
    F32(&'a [f32]),
    B32(&'a [ActBlock32]),
    K(&'a [ActBlockK]),
}

/// Where one column group's results go: `rows` rows of `valid` columns at
/// `ptr`, rows `stride` floats apart.
pub(crate) struct GroupOut {
    pub ptr: *mut f32,
    pub stride: usize,
    pub rows: usize,
    pub valid: usize,
}

impl GroupOut {
    /// Stores `values` (one per column of the group) as row `r`.
    ///
    /// # Safety
    /// `r < rows`, and the destination is this task's.
    pub unsafe fn store(&self, r: usize, values: &[f32]) {
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(r * self.stride), self.valid);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint parts of the output.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn run_group(
    tier: Tier,
    format: WeightFormat,
    tiles: &[u8],
    nb: usize,
    input: &GroupIn<'_>,
    out: &GroupOut,
) {
    if matches!(format, WeightFormat::Mxfp4 | WeightFormat::Nvfp4) && !fp4_kernel(tier) {
        return portable::group(format, tiles, nb, input, out);
    }
    match tier {
        Tier::Portable => portable::group(format, tiles, nb, input, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the tier was chosen because the CPU has these features.
        Tier::Avx2 => unsafe { super::avx2::group(format, tiles, nb, input, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Tier::Avx512 => unsafe { super::avx512::group(format, tiles, nb, input, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of every aarch64 CPU.
        Tier::Neon => unsafe { super::neon::group(format, tiles, nb, input, out) },
        // Another architecture's tier (never available here).
        _ => portable::group(format, tiles, nb, input, out),
    }
}

/// Whether `tier` has vector kernels of its own for the FP4 formats: AVX2
/// (an AVX-512 CPU packs them for its AVX2 tier, see
/// [`PackedMatrix::pack_releasing`]); NEON has none yet.
pub(crate) fn fp4_kernel(tier: Tier) -> bool {
    tier == Tier::Avx2
}

/// Quantizes rows in parallel when there are several.
fn parallel_rows<T: Send>(
    pool: &Pool,
    blocks: &mut [T],
    per_row: usize,
    m: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if m == 1 {
        f(0, blocks);
        return;
    }
    let ptr = blocks.as_mut_ptr() as usize;
    pool.for_each(m, &|r| {
        // SAFETY: row `r`'s blocks are written by this task alone.
        let row =
            unsafe { std::slice::from_raw_parts_mut((ptr as *mut T).add(r * per_row), per_row) };
        f(r, row);
    });
}

/// Writes file block `src` as column `c` of a `g`-column tile `dst`.
fn pack_block(format: WeightFormat, src: &[u8], dst: &mut [u8], g: usize, c: usize) {
    let put_units = |dst: &mut [u8], at: usize, src: &[u8]| {
        for (u, unit) in src.chunks_exact(4).enumerate() {
            let o = at + (u * g + c) * 4;
            dst[o..o + 4].copy_from_slice(unit);
        }
    };
    let put = |dst: &mut [u8], at: usize, width: usize, src: &[u8]| {
        dst[at + c * width..at + (c + 1) * width].copy_from_slice(src);
    };
    match format {
        WeightFormat::F32 => put(dst, 0, 4, src),
        WeightFormat::Q4_0 => {
            put(dst, 0, 2, &src[0..2]);
            put_units(dst, 2 * g, &src[2..18]);
        }
        WeightFormat::Q4_1 => {
            put(dst, 0, 2, &src[0..2]);
            put(dst, 2 * g, 2, &src[2..4]);
            put_units(dst, 4 * g, &src[4..20]);
        }
        WeightFormat::Q5_0 => {
            put(dst, 0, 2, &src[0..2]);
            let qh = permute_q5_0_high_bits(formats::u32_at(src, 2));
            put(dst, 2 * g, 4, &qh.to_le_bytes());
            put_units(dst, 6 * g, &src[6..22]);
        }
        WeightFormat::Q8_0 => {
            put(dst, 0, 2, &src[0..2]);
            put_units(dst, 2 * g, &src[2..34]);
        }
        WeightFormat::Q4K | WeightFormat::Q5K => {
            put(dst, 0, 2, &src[0..2]);
            put(dst, 2 * g, 2, &src[2..4]);
            put_units(dst, 4 * g, &src[4..16]);
            if format == WeightFormat::Q5K {
                put_units(dst, 16 * g, &src[16..48]);
                put_units(dst, 48 * g, &src[48..176]);
            } else {
                put_units(dst, 16 * g, &src[16..144]);
            }
        }
        WeightFormat::Mxfp4 => {
            put(dst, 0, 1, &src[0..1]);
            put_units(dst, g, &src[1..17]);
        }
        WeightFormat::Nvfp4 => {
            put(dst, 0, 4, &src[0..4]);
            put_units(dst, 4 * g, &src[4..36]);
        }
        WeightFormat::Q6K => {
            put(dst, 0, 2, &src[208..210]);
            put_units(dst, 2 * g, &src[192..208]);
            put_units(dst, 18 * g, &src[0..128]);
            put_units(dst, 146 * g, &src[128..192]);
        }
    }
}

/// The inverse of [`pack_block`].
pub(crate) fn unpack_block_into(
    format: WeightFormat,
    src: &[u8],
    dst: &mut [u8],
    g: usize,
    c: usize,
) {
    let get_units = |src: &[u8], at: usize, dst: &mut [u8]| {
        for (u, unit) in dst.chunks_exact_mut(4).enumerate() {
            let o = at + (u * g + c) * 4;
            unit.copy_from_slice(&src[o..o + 4]);
        }
    };
    let get = |src: &[u8], at: usize, width: usize, dst: &mut [u8]| {
        dst.copy_from_slice(&src[at + c * width..at + (c + 1) * width]);
    };
    match format {
        WeightFormat::F32 => get(src, 0, 4, dst),
        WeightFormat::Q4_0 => {
            get(src, 0, 2, &mut dst[0..2]);
            get_units(src, 2 * g, &mut dst[2..18]);
        }
        WeightFormat::Q4_1 => {
            get(src, 0, 2, &mut dst[0..2]);
            get(src, 2 * g, 2, &mut dst[2..4]);
            get_units(src, 4 * g, &mut dst[4..20]);
        }
        WeightFormat::Q5_0 => {
            get(src, 0, 2, &mut dst[0..2]);
            let mut qh = [0u8; 4];
            get(src, 2 * g, 4, &mut qh);
            let qh = unpermute_q5_0_high_bits(u32::from_le_bytes(qh));
            dst[2..6].copy_from_slice(&qh.to_le_bytes());
            get_units(src, 6 * g, &mut dst[6..22]);
        }
        WeightFormat::Q8_0 => {
            get(src, 0, 2, &mut dst[0..2]);
            get_units(src, 2 * g, &mut dst[2..34]);
        }
        WeightFormat::Q4K | WeightFormat::Q5K => {
            get(src, 0, 2, &mut dst[0..2]);
            get(src, 2 * g, 2, &mut dst[2..4]);
            get_units(src, 4 * g, &mut dst[4..16]);
            if format == WeightFormat::Q5K {
                get_units(src, 16 * g, &mut dst[16..48]);
                get_units(src, 48 * g, &mut dst[48..176]);
            } else {
                get_units(src, 16 * g, &mut dst[16..144]);
            }
        }
        WeightFormat::Mxfp4 => {
            get(src, 0, 1, &mut dst[0..1]);
            get_units(src, g, &mut dst[1..17]);
        }
        WeightFormat::Nvfp4 => {
            get(src, 0, 4, &mut dst[0..4]);
            get_units(src, 4 * g, &mut dst[4..36]);
        }
        WeightFormat::Q6K => {
            get(src, 0, 2, &mut dst[208..210]);
            get_units(src, 2 * g, &mut dst[192..208]);
            get_units(src, 18 * g, &mut dst[0..128]);
            get_units(src, 146 * g, &mut dst[128..192]);
        }
    }
}

/// File bit `j` of a Q5_0 block's `qh` is the high bit of value `j`. Packed,
/// bit `8i + s` of the word is the high bit of byte `i` of unit `s` (low
/// nibbles, `s < 4`: value `4s + i`) or of unit `s - 4` (high nibbles:
/// value `16 + 4(s-4) + i`), so `(qh >> s) & 0x01010101` is one unit's bits.
pub(crate) fn permute_q5_0_high_bits(qh: u32) -> u32 {
    let mut out = 0u32;
    for i in 0..4 {
        for s in 0..8 {
            let value = if s < 4 {
                4 * s + i
            } else {
                16 + 4 * (s - 4) + i
            };
            out |= ((qh >> value) & 1) << (8 * i + s);
        }
    }
    out
}

fn unpermute_q5_0_high_bits(packed: u32) -> u32 {
    let mut out = 0u32;
    for i in 0..4 {
        for s in 0..8 {
            let value = if s < 4 {
                4 * s + i
            } else {
                16 + 4 * (s - 4) + i
            };
            out |= ((packed >> (8 * i + s)) & 1) << value;
        }
    }
    out
}

/// Byte offsets inside a block tile of `g` columns, shared by the kernels.
pub(crate) mod offsets {
    /// Q4_0: scales, then quants.
    pub const fn q4_0(g: usize) -> (usize, usize) {
        (0, 2 * g)
    }
    /// Q4_1: scales, minimums, quants.
    pub const fn q4_1(g: usize) -> (usize, usize, usize) {
        (0, 2 * g, 4 * g)
    }
    /// Q5_0: scales, high bits, quants.
    pub const fn q5_0(g: usize) -> (usize, usize, usize) {
        (0, 2 * g, 6 * g)
    }
    /// Q8_0: scales, quants.
    pub const fn q8_0(g: usize) -> (usize, usize) {
        (0, 2 * g)
    }
    /// Q4_K: d, dmin, scale words, quants.
    pub const fn q4k(g: usize) -> (usize, usize, usize, usize) {
        (0, 2 * g, 4 * g, 16 * g)
    }
    /// Q5_K: d, dmin, scale words, high bits, quants.
    pub const fn q5k(g: usize) -> (usize, usize, usize, usize, usize) {
        (0, 2 * g, 4 * g, 16 * g, 48 * g)
    }
    /// MXFP4: scale bytes, quants.
    // Only the AVX2 kernel reads FP4 tiles in place.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub const fn mxfp4(g: usize) -> (usize, usize) {
        (0, g)
    }
    /// NVFP4: scale words, quants.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub const fn nvfp4(g: usize) -> (usize, usize) {
        (0, 4 * g)
    }
    /// Q6_K: d, scale words, ql, qh.
    pub const fn q6k(g: usize) -> (usize, usize, usize, usize) {
        (0, 2 * g, 18 * g, 146 * g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_0_high_bit_permutation_round_trips() {
        for qh in [0u32, 1, 0x8000_0001, 0xDEAD_BEEF, u32::MAX, 0x0001_0000] {
            assert_eq!(unpermute_q5_0_high_bits(permute_q5_0_high_bits(qh)), qh);
        }
        // Value 16 (bit 16) is the first high nibble of unit 0: bit s = 4 of byte 0.
        assert_eq!(permute_q5_0_high_bits(1 << 16), 1 << 4);
        // Value 5 (bit 5) is byte 1 of unit 1.
        assert_eq!(permute_q5_0_high_bits(1 << 5), 1 << 9);
    }
}
