//! The KV cache the engine owns. Models only append to it; the engine can
//! truncate it to any prefix, fork it, and keep it between requests, which is
//! what prompt caching stands on (candle-transformers keeps its caches private
//! inside each model, so they cannot be shared or rewound).

use candle_core::Tensor;

use crate::error::{EngineError, Result};

/// Positions are allocated in blocks of this many, so a short conversation does
/// not reserve the whole context up front.
const GROWTH_BLOCK: usize = 256;

/// Keys and values for one attention layer: `(1, n_kv_heads, capacity, head_dim)`.
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// Cached keys and values for every layer, for the token ids in `tokens`.
/// Not `Clone`: tensors share storage, so copies must go through [`KvCache::fork`].
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    tokens: Vec<u32>,
    max_len: usize,
}

impl KvCache {
    /// An empty cache for `n_layers` layers and at most `max_len` positions.
    pub fn new(n_layers: usize, max_len: usize) -> Self {
        Self {
            layers: (0..n_layers).map(|_| None).collect(),
            tokens: Vec::new(),
            max_len,
        }
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

    /// Length of the longest common prefix of the cached tokens and `tokens`.
    pub fn common_prefix_len(&self, tokens: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Forgets every position from `len` on. Later appends overwrite them.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// An independent copy of the held positions (later appends to either
    /// cache do not affect the other).
    pub fn fork(&self) -> Result<Self> {
        self.fork_prefix(self.len())
    }

    /// An independent copy of the first `len` held positions: what a second
    /// conversation sharing only that prefix continues from.
    pub fn fork_prefix(&self, len: usize) -> Result<Self> {
        let len = len.min(self.len());
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                layer
                    .as_ref()
                    .map(|kv| -> Result<LayerKv> {
                        let capacity = round_up(len.max(1), GROWTH_BLOCK).min(self.max_len);
                        Ok(LayerKv {
                            k: copy_prefix(&kv.k, len, capacity)?,
                            v: copy_prefix(&kv.v, len, capacity)?,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            tokens: self.tokens[..len].to_vec(),
            max_len: self.max_len,
        })
    }

    /// Bytes of key/value storage allocated.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|kv| (kv.k.elem_count() + kv.v.elem_count()) * kv.k.dtype().size_in_bytes())
            .sum()
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
        let end = start + seq;
        if end > self.max_len {
            return Err(EngineError::PromptTooLong {
                tokens: end,
                max: self.max_len,
            });
        }
        let slot = &mut self.layers[layer];
        let needs_growth = match slot {
            None => true,
            Some(kv) => kv.k.dim(2)? < end,
        };
        if needs_growth {
            let old_capacity = slot
                .as_ref()
                .map(|kv| kv.k.dim(2))
                .transpose()?
                .unwrap_or(0);
            let capacity = round_up(end.max(old_capacity * 2), GROWTH_BLOCK).min(self.max_len);
            let grown = LayerKv {
                k: grow(slot.as_ref().map(|kv| &kv.k), k, start, capacity)?,
                v: grow(slot.as_ref().map(|kv| &kv.v), v, start, capacity)?,
            };
            *slot = Some(grown);
        }
        let kv = slot.as_ref().expect("allocated above");
        kv.k.slice_set(&k.contiguous()?, 2, start)?;
        kv.v.slice_set(&v.contiguous()?, 2, start)?;
        Ok((kv.k.narrow(2, 0, end)?, kv.v.narrow(2, 0, end)?))
    }

    /// Layer `layer`'s whole key and value buffers, `(1, n_kv_heads,
    /// capacity, head_dim)`, once something was appended to it.
    pub(crate) fn buffers(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers[layer].as_ref().map(|kv| (&kv.k, &kv.v))
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
