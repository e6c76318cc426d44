//! The KV cache the engine owns. Models only append to it; the engine can
//! truncate it to any prefix, fork it, and keep it between requests, which is
//! what prompt caching stands on (candle-transformers keeps its caches private
//! inside each model, so they cannot be shared or rewound).
//!
//! A layer holds its keys and values in one of two ways, fixed by the first
//! append: as candle tensors in the model's dtype (other devices, and
//! `Kernels::Candle`, whose results are compared bit for bit with
//! candle-transformers), or, for the engine's CPU attention, as f16 rows, one
//! per position (llama.cpp's default cache type: half the memory of f32), in
//! address space reserved for the whole context: the OS commits a page when
//! it is first written, so only positions really written are resident and
//! growing never copies (a growing `Vec` would hold its old and new buffers
//! at once, and the allocator would keep the old one's pages).
//!
//! A hybrid model's recurrent layers (Qwen 3.5's Gated DeltaNet) keep a
//! [`RecurrentState`] instead: a fixed-size summary of every position so
//! far, which cannot be cut back to an arbitrary prefix. The cache therefore
//! keeps snapshots of those states at chosen positions (the engine takes
//! them at `cache_control` breakpoints and at the end of each prompt), and
//! for a hybrid cache "the prefix it can resume from" is the longest of the
//! held positions and the snapshots that the new prompt shares. Snapshots
//! are bounded in number ([`KvCache::with_snapshot_limit`]), the least
//! recently used dropped first, and count in [`KvCache::allocated_bytes`],
//! so the server's memory budget bounds them too.

use candle_core::Tensor;
use half::f16;

use crate::kernels::attention::{KvElement, KvView};

use crate::error::{EngineError, Result};

/// Positions are allocated in blocks of this many, so a short conversation does
/// not reserve the whole context up front.
const GROWTH_BLOCK: usize = 256;

/// What the engine's CPU attention keeps keys and values in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheType {
    /// Half precision, llama.cpp's default: half the memory and bandwidth.
    F16,
    /// Single precision: the values as computed.
    F32,
}

impl Default for KvCacheType {
    /// f16, unless `SHOWDOWN_KV_CACHE=f32`.
    fn default() -> Self {
        match std::env::var("SHOWDOWN_KV_CACHE").as_deref() {
            Ok("f32") => Self::F32,
            _ => Self::F16,
        }
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(format!("unknown KV cache type `{other}` (f16 or f32)")),
        }
    }
}

/// Keys and values for one attention layer.
enum LayerKv {
    /// `(1, n_kv_heads, capacity, head_dim)`.
    Tensors {
        k: Tensor,
        v: Tensor,
    },
    F16(Rows<f16>),
    F32(Rows<f32>),
}

/// Position-major rows: position `j`'s `n_kv_heads · head_dim` values at `j · row`.
struct Rows<T> {
    k: RowBuffer<T>,
    v: RowBuffer<T>,
    row: usize,
}

/// What [`KvCache::append_rows`] hands the attention kernel.
pub(crate) enum KvRows<'a> {
    F16(KvView<'a, f16>),
    F32(KvView<'a, f32>),
}

impl<T: KvElement> Rows<T> {
    fn new(capacity: usize, row: usize) -> Result<Self> {
        Ok(Self {
            k: RowBuffer::new(capacity * row)?,
            v: RowBuffer::new(capacity * row)?,
            row,
        })
    }

    fn prefix(&self, len: usize) -> Result<Self> {
        Ok(Self {
            k: self.k.prefix(len * self.row)?,
            v: self.v.prefix(len * self.row)?,
            row: self.row,
        })
    }

    /// Writes `seq` positions from `start` (`k`, `v` head-major
    /// `[n_kv_heads][seq][head_dim]`) and views positions `..start + seq`.
    fn write(
        &mut self,
        start: usize,
        k: &[f32],
        v: &[f32],
        n_kv_heads: usize,
        head_dim: usize,
    ) -> KvView<'_, T> {
        let row = self.row;
        assert_eq!(row, n_kv_heads * head_dim, "a layer's row width is fixed");
        let seq = k.len() / row;
        let end = start + seq;
        for (dst, src) in [(&mut self.k, k), (&mut self.v, v)] {
            let dst = dst.values_mut(start * row..end * row);
            for g in 0..n_kv_heads {
                for s in 0..seq {
                    T::convert_from(
                        &mut dst[s * row + g * head_dim..][..head_dim],
                        &src[(g * seq + s) * head_dim..][..head_dim],
                    );
                }
            }
        }
        KvView {
            k: self.k.values(end * row),
            v: self.v.values(end * row),
        }
    }

    /// Positions `..end`.
    fn view(&self, end: usize) -> KvView<'_, T> {
        KvView {
            k: self.k.values(end * self.row),
            v: self.v.values(end * self.row),
        }
    }

    fn bytes(&self) -> usize {
        (self.k.written + self.v.written) * std::mem::size_of::<T>()
    }
}

/// Zeroed values in an anonymous mapping, committed page by page as they
/// are written.
struct RowBuffer<T> {
    map: memmap2::MmapMut,
    /// Values ever written: the resident part.
    written: usize,
    _values: std::marker::PhantomData<T>,
}

impl<T: KvElement> RowBuffer<T> {
    fn new(values: usize) -> Result<Self> {
        let bytes = (values * std::mem::size_of::<T>()).max(1);
        let map = memmap2::MmapOptions::new()
            .len(bytes)
            .map_anon()
            .map_err(|source| EngineError::OutOfMemory { bytes, source })?;
        Ok(Self {
            map,
            written: 0,
            _values: std::marker::PhantomData,
        })
    }

    fn capacity(&self) -> usize {
        self.map.len() / std::mem::size_of::<T>()
    }

    fn values(&self, len: usize) -> &[T] {
        assert!(len <= self.capacity());
        // SAFETY: the mapping is page-aligned, zero-initialised (all-zero bits
        // are 0.0 in f16 and f32) and at least `len` values long.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr() as *const T, len) }
    }

    fn values_mut(&mut self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.capacity());
        self.written = self.written.max(range.end);
        // SAFETY: as above, uniquely borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self.map.as_mut_ptr() as *mut T).add(range.start),
                range.len(),
            )
        }
    }

    /// A new buffer of the same capacity holding the first `len` values.
    fn prefix(&self, len: usize) -> Result<Self> {
        let mut copy = Self::new(self.capacity())?;
        copy.values_mut(0..len).copy_from_slice(self.values(len));
        Ok(copy)
    }
}

impl LayerKv {
    fn prefix(&self, len: usize, max_len: usize) -> Result<Self> {
        Ok(match self {
            Self::Tensors { k, v } => {
                let capacity = round_up(len.max(1), GROWTH_BLOCK).min(max_len);
                Self::Tensors {
                    k: copy_prefix(k, len, capacity)?,
                    v: copy_prefix(v, len, capacity)?,
                }
            }
            Self::F16(rows) => Self::F16(rows.prefix(len)?),
            Self::F32(rows) => Self::F32(rows.prefix(len)?),
        })
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Tensors { k, v } => (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes(),
            Self::F16(rows) => rows.bytes(),
            Self::F32(rows) => rows.bytes(),
        }
    }
}

/// One recurrent layer's state after the held positions: the last
/// `kernel - 1` convolution inputs and the delta rule's per-head matrices.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecurrentState {
    pub conv: Vec<f32>,
    pub ssm: Vec<f32>,
}

impl RecurrentState {
    fn bytes(&self) -> usize {
        (self.conv.len() + self.ssm.len()) * std::mem::size_of::<f32>()
    }
}

/// Every recurrent layer's state after the first `len` positions.
#[derive(Debug, Clone)]
struct Snapshot {
    len: usize,
    layers: Vec<Option<RecurrentState>>,
    /// When it was taken or last resumed from, for eviction.
    last_used: u64,
}

impl Snapshot {
    fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(RecurrentState::bytes)
            .sum()
    }
}

/// Snapshots a hybrid cache keeps unless told otherwise.
pub const DEFAULT_SNAPSHOT_LIMIT: usize = 8;

/// Cached keys and values for every layer, for the token ids in `tokens`.
/// Not `Clone`: tensors share storage, so copies must go through [`KvCache::fork`].
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    tokens: Vec<u32>,
    max_len: usize,
    row_type: KvCacheType,
    /// Recurrent layers' states after `tokens`, by layer (`None` for
    /// attention layers and for a model without recurrent layers).
    recurrent: Vec<Option<RecurrentState>>,
    /// Recurrent states at earlier positions, by position.
    snapshots: Vec<Snapshot>,
    snapshot_limit: usize,
    clock: u64,
}

impl KvCache {
    /// An empty cache for `n_layers` layers and at most `max_len` positions.
    pub fn new(n_layers: usize, max_len: usize) -> Self {
        Self {
            layers: (0..n_layers).map(|_| None).collect(),
            tokens: Vec::new(),
            max_len,
            row_type: KvCacheType::default(),
            recurrent: (0..n_layers).map(|_| None).collect(),
            snapshots: Vec::new(),
            snapshot_limit: DEFAULT_SNAPSHOT_LIMIT,
            clock: 0,
        }
    }

    /// This cache, keeping at most `limit` recurrent-state snapshots.
    pub fn with_snapshot_limit(mut self, limit: usize) -> Self {
        self.snapshot_limit = limit;
        self.snapshots.truncate(limit);
        self
    }

    /// Whether a recurrent layer keeps state here (a hybrid model's cache).
    pub fn is_hybrid(&self) -> bool {
        self.recurrent.iter().any(Option::is_some)
    }

    /// Positions at which recurrent-state snapshots are held, ascending.
    pub fn snapshot_positions(&self) -> Vec<usize> {
        self.snapshots.iter().map(|s| s.len).collect()
    }

    /// Keeps the recurrent layers' state at the current position, so a later
    /// prompt sharing only this prefix resumes here. Does nothing for a
    /// cache without recurrent layers, or when one is held here already.
    pub fn snapshot(&mut self) {
        if !self.is_hybrid() || self.snapshot_limit == 0 {
            return;
        }
        let len = self.len();
        self.clock += 1;
        let clock = self.clock;
        match self.snapshots.binary_search_by_key(&len, |s| s.len) {
            Ok(i) => self.snapshots[i].last_used = clock,
            Err(i) => {
                self.snapshots.insert(
                    i,
                    Snapshot {
                        len,
                        layers: self.recurrent.clone(),
                        last_used: clock,
                    },
                );
                while self.snapshots.len() > self.snapshot_limit {
                    let oldest = self
                        .snapshots
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.last_used)
                        .map(|(i, _)| i)
                        .expect("more snapshots than the limit");
                    self.snapshots.remove(oldest);
                }
            }
        }
    }

    /// The longest resumable prefix no longer than `len`: `len` itself for a
    /// cache without recurrent state, else the held length when `len`
    /// reaches it, else the latest snapshot at or before `len`.
    fn resumable(&self, len: usize) -> usize {
        if !self.is_hybrid() || len >= self.len() {
            return len.min(self.len());
        }
        self.snapshots
            .iter()
            .rev()
            .map(|s| s.len)
            .find(|&at| at <= len)
            .unwrap_or(0)
    }

    /// The recurrent state of `layer`, zeroed (the state before any token)
    /// with the given sizes the first time.
    pub(crate) fn recurrent_mut(
        &mut self,
        layer: usize,
        conv: usize,
        ssm: usize,
    ) -> &mut RecurrentState {
        self.recurrent[layer].get_or_insert_with(|| RecurrentState {
            conv: vec![0.0; conv],
            ssm: vec![0.0; ssm],
        })
    }

    /// This cache, holding the engine's CPU attention rows as `row_type`.
    pub fn with_row_type(mut self, row_type: KvCacheType) -> Self {
        self.row_type = row_type;
        self
    }

    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The most positions this cache may hold (the context length).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The token ids whose keys and values are held, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Length of the longest prefix of `tokens` this cache can resume from:
    /// the common prefix of the cached tokens and `tokens`, or for a hybrid
    /// cache the longest of the held positions and the snapshots within it.
    pub fn common_prefix_len(&self, tokens: &[u32]) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        self.resumable(common)
    }

    /// Forgets every position from `len` on; later appends overwrite them. A
    /// hybrid cache goes back to the latest position at or before `len` it
    /// can resume from (see [`KvCache::common_prefix_len`]), restoring the
    /// recurrent state of that snapshot; [`KvCache::len`] says where.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        if self.is_hybrid() {
            let at = self.resumable(len);
            self.snapshots.retain(|s| s.len <= at);
            self.clock += 1;
            match self.snapshots.last_mut().filter(|s| s.len == at) {
                Some(snapshot) => {
                    snapshot.last_used = self.clock;
                    self.recurrent = snapshot.layers.clone();
                }
                None => {
                    debug_assert_eq!(at, 0);
                    self.recurrent.iter_mut().for_each(|r| *r = None);
                }
            }
            self.tokens.truncate(at);
            return;
        }
        self.tokens.truncate(len);
    }

    /// Forgets everything, snapshots included.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.recurrent.iter_mut().for_each(|r| *r = None);
        self.snapshots.clear();
    }

    /// An independent copy of the held positions (later appends to either
    /// cache do not affect the other).
    pub fn fork(&self) -> Result<Self> {
        self.fork_prefix(self.len())
    }

    /// An independent copy of the first `len` held positions: what a second
    /// conversation sharing only that prefix continues from. A hybrid cache
    /// copies the latest resumable prefix at or before `len` instead, with
    /// the snapshots inside it.
    pub fn fork_prefix(&self, len: usize) -> Result<Self> {
        let len = self.resumable(len);
        let (recurrent, snapshots) = if len == self.len() {
            (self.recurrent.clone(), self.snapshots.clone())
        } else {
            let kept: Vec<Snapshot> = self
                .snapshots
                .iter()
                .filter(|s| s.len <= len)
                .cloned()
                .collect();
            let state = match kept.last().filter(|s| s.len == len) {
                Some(s) => s.layers.clone(),
                None => self.recurrent.iter().map(|_| None).collect(),
            };
            (state, kept)
        };
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                layer
                    .as_ref()
                    .map(|kv| kv.prefix(len, self.max_len))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            tokens: self.tokens[..len].to_vec(),
            max_len: self.max_len,
            row_type: self.row_type,
            recurrent,
            snapshots,
            snapshot_limit: self.snapshot_limit,
            clock: self.clock,
        })
    }

    /// Bytes of key/value storage allocated, with recurrent states and
    /// their snapshots.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(LayerKv::bytes)
            .sum::<usize>()
            + self.recurrent_bytes()
    }

    /// Bytes of recurrent state: the current one and the snapshots.
    pub fn recurrent_bytes(&self) -> usize {
        self.recurrent
            .iter()
            .flatten()
            .map(RecurrentState::bytes)
            .sum::<usize>()
            + self.snapshots.iter().map(Snapshot::bytes).sum::<usize>()
    }

    fn check_room(&self, seq: usize) -> Result<usize> {
        let end = self.len() + seq;
        if end > self.max_len {
            return Err(EngineError::PromptTooLong {
                tokens: end,
                max: self.max_len,
            });
        }
        Ok(end)
    }

    /// Writes the new keys and values of `layer`, `[n_kv_heads][seq][head_dim]`
    /// f32 each, as rows of the cache's row type after the held positions,
    /// and returns the view the attention kernel reads: every held position
    /// and the new ones. The new positions count as held only after
    /// [`KvCache::commit`].
    pub(crate) fn append_rows(
        &mut self,
        layer: usize,
        k: &[f32],
        v: &[f32],
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<KvRows<'_>> {
        let row = n_kv_heads * head_dim;
        let seq = k.len() / row;
        assert_eq!(k.len(), seq * row);
        assert_eq!(v.len(), seq * row);
        let start = self.len();
        self.check_room(seq)?;
        let slot = &mut self.layers[layer];
        if slot.is_none() {
            *slot = Some(match self.row_type {
                KvCacheType::F16 => LayerKv::F16(Rows::new(self.max_len, row)?),
                KvCacheType::F32 => LayerKv::F32(Rows::new(self.max_len, row)?),
            });
        }
        Ok(match slot.as_mut().expect("allocated above") {
            LayerKv::F16(rows) => KvRows::F16(rows.write(start, k, v, n_kv_heads, head_dim)),
            LayerKv::F32(rows) => KvRows::F32(rows.write(start, k, v, n_kv_heads, head_dim)),
            LayerKv::Tensors { .. } => {
                return Err(EngineError::InvalidRequest(format!(
                    "layer {layer} caches candle tensors, not rows"
                )))
            }
        })
    }

    /// The keys and values `layer` holds for every held position and the
    /// `seq` new ones it has appended in this forward, for a layer that
    /// reads another's cache instead of storing its own (Gemma 4's shared
    /// KV layers).
    pub(crate) fn rows_of(&self, layer: usize, seq: usize) -> Result<KvRows<'_>> {
        let end = self.len() + seq;
        match self.layers.get(layer).and_then(Option::as_ref) {
            Some(LayerKv::F16(rows)) => Ok(KvRows::F16(rows.view(end))),
            Some(LayerKv::F32(rows)) => Ok(KvRows::F32(rows.view(end))),
            _ => Err(EngineError::InvalidRequest(format!(
                "layer {layer} holds no key/value rows to share"
            ))),
        }
    }

    /// Writes the new keys and values `(1, n_kv_heads, seq, head_dim)` of `layer`
    /// after the held positions and returns views over all of them. The new
    /// positions count as held only after [`KvCache::commit`].
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let start = self.len();
        let seq = k.dim(2)?;
        let end = self.check_room(seq)?;
        let slot = &mut self.layers[layer];
        let (old_k, old_v) = match slot {
            None => (None, None),
            Some(LayerKv::Tensors { k, v }) => (Some(&*k), Some(&*v)),
            Some(LayerKv::F16(_) | LayerKv::F32(_)) => {
                return Err(EngineError::InvalidRequest(format!(
                    "layer {layer} caches rows, not candle tensors"
                )))
            }
        };
        let old_capacity = old_k.map(|k| k.dim(2)).transpose()?.unwrap_or(0);
        if old_capacity < end {
            let capacity = round_up(end.max(old_capacity * 2), GROWTH_BLOCK).min(self.max_len);
            let grown = LayerKv::Tensors {
                k: grow(old_k, k, start, capacity)?,
                v: grow(old_v, v, start, capacity)?,
            };
            *slot = Some(grown);
        }
        let Some(LayerKv::Tensors { k: keys, v: values }) = slot.as_ref() else {
            unreachable!("a tensor layer, allocated above");
        };
        keys.slice_set(&k.contiguous()?, 2, start)?;
        values.slice_set(&v.contiguous()?, 2, start)?;
        Ok((keys.narrow(2, 0, end)?, values.narrow(2, 0, end)?))
    }

    /// Marks `tokens` as held, after every layer has appended them.
    pub(crate) fn commit(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }
}

fn round_up(n: usize, block: usize) -> usize {
    n.div_ceil(block) * block
}

/// A zeroed buffer of `capacity` positions shaped like `like`, holding the
/// first `keep` positions of `old`.
fn grow(old: Option<&Tensor>, like: &Tensor, keep: usize, capacity: usize) -> Result<Tensor> {
    let (b, h, _, d) = like.dims4()?;
    let buffer = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
    if let (Some(old), true) = (old, keep > 0) {
        buffer.slice_set(&old.narrow(2, 0, keep)?.contiguous()?, 2, 0)?;
    }
    Ok(buffer)
}

fn copy_prefix(buffer: &Tensor, len: usize, capacity: usize) -> Result<Tensor> {
    let (b, h, _, d) = buffer.dims4()?;
    let copy = Tensor::zeros((b, h, capacity, d), buffer.dtype(), buffer.device())?;
    if len > 0 {
        copy.slice_set(&buffer.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn filled(value: f32, seq: usize) -> Tensor {
        Tensor::full(value, (1, 2, seq, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn append_grows_and_returns_all_positions() {
        let mut cache = KvCache::new(1, 1000);
        let (k, _) = cache.append(0, &filled(1.0, 3), &filled(1.0, 3)).unwrap();
        assert_eq!(k.dims(), &[1, 2, 3, 4]);
        cache.commit(&[1, 2, 3]);
        let (k, v) = cache
            .append(0, &filled(2.0, 300), &filled(2.0, 300))
            .unwrap();
        cache.commit(&[9; 300]);
        assert_eq!(k.dims(), &[1, 2, 303, 4]);
        let first: Vec<f32> = k
            .narrow(2, 0, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            first.iter().all(|&x| x == 1.0),
            "old positions survive growth"
        );
        let last: f32 = v
            .narrow(2, 302, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert_eq!(last, 2.0);
        assert_eq!(cache.len(), 303);
    }

    #[test]
    fn truncate_then_append_overwrites() {
        let mut cache = KvCache::new(1, 64);
        cache.append(0, &filled(1.0, 4), &filled(1.0, 4)).unwrap();
        cache.commit(&[1, 2, 3, 4]);
        cache.truncate(2);
        let (k, _) = cache.append(0, &filled(5.0, 1), &filled(5.0, 1)).unwrap();
        cache.commit(&[7]);
        assert_eq!(cache.tokens(), &[1, 2, 7]);
        let vals: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(vals.len(), 2 * 3 * 4);
        assert_eq!(
            k.narrow(2, 2, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0],
            5.0
        );
    }

    #[test]
    fn fork_is_independent() {
        let mut cache = KvCache::new(1, 64);
        cache.append(0, &filled(1.0, 2), &filled(1.0, 2)).unwrap();
        cache.commit(&[1, 2]);
        let mut fork = cache.fork().unwrap();
        fork.append(0, &filled(3.0, 1), &filled(3.0, 1)).unwrap();
        fork.commit(&[3]);
        cache.append(0, &filled(4.0, 1), &filled(4.0, 1)).unwrap();
        cache.commit(&[4]);
        let (k, _) = fork.append(0, &filled(0.0, 1), &filled(0.0, 1)).unwrap();
        assert_eq!(
            k.narrow(2, 2, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0],
            3.0
        );
        assert_eq!(fork.common_prefix_len(&[1, 2, 4]), 2);
    }

    /// Rows: head-major input lands position-major, in f16; truncation and
    /// forks keep exactly the held prefix.
    #[test]
    fn rows_append_truncate_and_fork() {
        let mut cache = KvCache::new(1, 16);
        // 2 heads of 4 values, 3 positions: value = 100·head + 10·position + i.
        let input = |positions: std::ops::Range<usize>| -> Vec<f32> {
            let mut out = Vec::new();
            for g in 0..2 {
                for s in positions.clone() {
                    out.extend((0..4).map(|i| (100 * g + 10 * s + i) as f32));
                }
            }
            out
        };
        let x = input(0..3);
        let Ok(KvRows::F16(view)) = cache.append_rows(0, &x, &x, 2, 4) else {
            panic!("f16 rows by default")
        };
        assert_eq!(view.k.len(), 3 * 8);
        assert_eq!(view.k[8 + 4].to_f32(), 110.0, "position 1, head 1, value 0");
        cache.commit(&[1, 2, 3]);
        cache.truncate(1);
        let x = input(1..3);
        let Ok(KvRows::F16(view)) = cache.append_rows(0, &x, &x, 2, 4) else {
            panic!("f16 rows")
        };
        let values: Vec<f32> = view.v.iter().map(|h| h.to_f32()).collect();
        let fresh: Vec<f32> = (0..3)
            .flat_map(|s| {
                (0..2).flat_map(move |g| (0..4).map(move |i| (100 * g + 10 * s + i) as f32))
            })
            .collect();
        assert_eq!(values, fresh);
        cache.commit(&[2, 3]);
        let fork = cache.fork_prefix(2).unwrap();
        assert_eq!(
            fork.allocated_bytes(),
            2 * (2 * 8) * 2,
            "only written rows count"
        );
        assert_eq!(cache.allocated_bytes(), 2 * (3 * 8) * 2);
        let err = cache.append_rows(0, &vec![0.0; 14 * 8], &vec![0.0; 14 * 8], 2, 4);
        assert!(matches!(
            err,
            Err(EngineError::PromptTooLong {
                tokens: 17,
                max: 16
            })
        ));

        // f32 rows keep the values as given.
        let mut cache = KvCache::new(1, 4).with_row_type(KvCacheType::F32);
        let x = [1.0 + 1e-4; 8];
        let Ok(KvRows::F32(view)) = cache.append_rows(0, &x, &x, 2, 4) else {
            panic!("f32 rows")
        };
        assert_eq!(view.k, &x[..]);
    }

    #[test]
    fn refuses_to_exceed_context() {
        let mut cache = KvCache::new(1, 4);
        let err = cache
            .append(0, &filled(1.0, 5), &filled(1.0, 5))
            .err()
            .unwrap();
        assert!(matches!(
            err,
            EngineError::PromptTooLong { tokens: 5, max: 4 }
        ));
    }
}
