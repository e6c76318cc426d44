//! A GGUF file opened once, memory-mapped, with typed metadata getters and
//! tensors looked up by their GGUF names. Every architecture loads through it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::Device;
use memmap2::Mmap;

use crate::error::{EngineError, Result};
use crate::kernels::{Kernels, PackedMatrix, Tier, WeightFormat};
use crate::models::layers::Linear;

/// The kernel tier for weights on `device`: the CPU's on x86-64, none
/// elsewhere (candle's kernels serve other devices and architectures) or
/// when candle's kernels were asked for.
fn cpu_tier(device: &Device, kernels: Kernels) -> Option<Tier> {
    if !device.is_cpu() || !cfg!(target_arch = "x86_64") || kernels == Kernels::Candle {
        return None;
    }
    Some(Tier::detect())
}

/// A memory-mapped GGUF file and its parsed header.
pub struct Gguf {
    path: PathBuf,
    mmap: Mmap,
    content: gguf_file::Content,
    architecture: String,
    vocab_size: Option<usize>,
    kernels: Kernels,
}

/// The tokenizer's per-token arrays: a 262k vocabulary's hold tens of MB
/// in the parsed header, and nothing reads them once the tokenizer is built.
const TOKENIZER_ARRAYS: &[&str] = &[
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
];

impl Gguf {
    /// Opens and parses `path`. A truncated or corrupt file is an error, not a panic.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| EngineError::Io {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: the mapping is read-only; model files are not modified while
        // loaded (the model store moves new files in atomically).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| EngineError::Io {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: String| EngineError::InvalidGguf {
            path: path.to_owned(),
            reason,
        };
        let content = gguf_file::Content::read(&mut Cursor::new(&mmap[..]))
            .map_err(|e| invalid(e.to_string()))?;
        // Candle reads tensor data lazily; check every tensor lies inside the
        // file now so a truncated download fails at load with a clear message.
        let file_len = mmap.len() as u64;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = content.tensor_data_offset + info.offset + bytes;
            if end > file_len {
                return Err(invalid(format!(
                    "tensor `{name}` ends at byte {end} but the file has {file_len} bytes (truncated?)"
                )));
            }
        }
        let architecture = match content.metadata.get("general.architecture") {
            Some(gguf_file::Value::String(s)) => s.clone(),
            _ => return Err(invalid("no general.architecture in metadata".into())),
        };
        let vocab_size = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(gguf_file::Value::Array(tokens)) => Some(tokens.len()),
            _ => None,
        };
        Ok(Self {
            path: path.to_owned(),
            mmap,
            content,
            architecture,
            vocab_size,
            kernels: Kernels::default(),
        })
    }

    /// Entries in the vocabulary (`tokenizer.ggml.tokens`), also after
    /// [`Gguf::drop_tokenizer_arrays`].
    pub fn vocab_size(&self) -> Result<usize> {
        self.vocab_size
            .ok_or_else(|| EngineError::Metadata("`tokenizer.ggml.tokens` not found".into()))
    }

    /// Frees the tokenizer's per-token arrays from the parsed header, once
    /// the tokenizer is built from them.
    pub fn drop_tokenizer_arrays(&mut self) {
        for key in TOKENIZER_ARRAYS {
            self.content.metadata.remove(*key);
        }
    }

    /// Whose kernels the layers loaded from here will run on the CPU.
    pub fn use_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Whether layers loaded for `device` run the engine's own CPU kernels.
    pub(crate) fn engine_kernels_on(&self, device: &Device) -> bool {
        cpu_tier(device, self.kernels).is_some()
    }

    /// Whether a decoder loaded for `device` runs fused on plain rows
    /// ([`crate::models::decoder`]).
    pub(crate) fn fused_on(&self, device: &Device) -> bool {
        self.engine_kernels_on(device) && self.kernels == Kernels::Engine
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// All metadata, for callers that need raw access.
    pub fn metadata(&self) -> &std::collections::HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }

    /// Raw metadata value by full key.
    pub fn get(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&gguf_file::Value> {
        self.get(key)
            .ok_or_else(|| EngineError::Metadata(format!("`{key}` not found")))
    }

    /// An unsigned integer by full key (any integer width).
    pub fn u32(&self, key: &str) -> Result<u32> {
        let v = self.required(key)?;
        let n = match v {
            gguf_file::Value::U8(x) => *x as u64,
            gguf_file::Value::U16(x) => *x as u64,
            gguf_file::Value::U32(x) => *x as u64,
            gguf_file::Value::U64(x) => *x,
            gguf_file::Value::I8(x) if *x >= 0 => *x as u64,
            gguf_file::Value::I16(x) if *x >= 0 => *x as u64,
            gguf_file::Value::I32(x) if *x >= 0 => *x as u64,
            gguf_file::Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(EngineError::Metadata(format!(
                    "`{key}` should be an unsigned integer, found {:?}",
                    other.value_type()
                )))
            }
        };
        u32::try_from(n).map_err(|_| EngineError::Metadata(format!("`{key}` = {n} is too large")))
    }

    /// A float by full key.
    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.required(key)? {
            gguf_file::Value::F32(x) => Ok(*x),
            gguf_file::Value::F64(x) => Ok(*x as f32),
            other => Err(EngineError::Metadata(format!(
                "`{key}` should be a float, found {:?}",
                other.value_type()
            ))),
        }
    }

    /// A string by full key.
    pub fn string(&self, key: &str) -> Result<&str> {
        match self.required(key)? {
            gguf_file::Value::String(s) => Ok(s),
            other => Err(EngineError::Metadata(format!(
                "`{key}` should be a string, found {:?}",
                other.value_type()
            ))),
        }
    }

    /// A bool by full key.
    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.required(key)? {
            gguf_file::Value::Bool(b) => Ok(*b),
            other => Err(EngineError::Metadata(format!(
                "`{key}` should be a bool, found {:?}",
                other.value_type()
            ))),
        }
    }

    /// An array by full key.
    pub fn array(&self, key: &str) -> Result<&Vec<gguf_file::Value>> {
        match self.required(key)? {
            gguf_file::Value::Array(a) => Ok(a),
            other => Err(EngineError::Metadata(format!(
                "`{key}` should be an array, found {:?}",
                other.value_type()
            ))),
        }
    }

    /// An unsigned integer under the architecture's prefix: `arch_u32("block_count")`
    /// reads `{general.architecture}.block_count`.
    pub fn arch_u32(&self, key: &str) -> Result<u32> {
        self.u32(&format!("{}.{key}", self.architecture))
    }

    /// A float under the architecture's prefix.
    pub fn arch_f32(&self, key: &str) -> Result<f32> {
        self.f32(&format!("{}.{key}", self.architecture))
    }

    /// Whether a tensor of this name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Names of all tensors.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    /// Names of all tensors, in the order their data lies in the file.
    pub fn tensor_names_in_file_order(&self) -> Vec<&str> {
        let mut names: Vec<(&str, u64)> = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| (name.as_str(), info.offset))
            .collect();
        names.sort_by_key(|&(_, offset)| offset);
        names.into_iter().map(|(name, _)| name).collect()
    }

    /// Total number of parameters (elements) over all tensors.
    pub fn parameter_count(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() as u64)
            .sum()
    }

    /// Number of elements of a tensor, if present.
    pub fn tensor_elem_count(&self, name: &str) -> Option<usize> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.elem_count())
    }

    /// The weight `name` repacked for the engine's CPU kernels, or `None`
    /// when `device` is not the CPU, the architecture has no vector tier
    /// (candle's own NEON kernels then serve), or the format has no kernel.
    /// The packed matrix replaces the file's pages: they are released from
    /// memory once read.
    pub(crate) fn packed(&self, name: &str, device: &Device) -> Result<Option<PackedMatrix>> {
        let info = self.info(name)?;
        let dims = info.shape.dims();
        let (n, k) = match *dims {
            [k] => (1, k),
            [n, k] => (n, k),
            _ => return Ok(None),
        };
        self.pack_range(name, info.ggml_dtype, n, k, self.data_range(info)?, device)
    }

    fn pack_range(
        &self,
        name: &str,
        dtype: GgmlDType,
        n: usize,
        k: usize,
        range: std::ops::Range<usize>,
        device: &Device,
    ) -> Result<Option<PackedMatrix>> {
        let Some(tier) = cpu_tier(device, self.kernels) else {
            return Ok(None);
        };
        let Some(format) = WeightFormat::from_ggml(dtype) else {
            return Ok(None);
        };
        if !k.is_multiple_of(format.block_values()) {
            return Ok(None);
        }
        let base = range.start;
        let packed =
            PackedMatrix::pack_releasing(format, n, k, &self.mmap[range], tier, &mut |done| {
                self.release(base + done.start..base + done.end)
            })
            .map_err(|e| EngineError::Metadata(format!("tensor `{name}`: {e}")))?;
        Ok(Some(packed))
    }

    /// Each expert of a stacked `(n_expert, rows, cols)` tensor as a layer.
    pub(crate) fn expert_linears(
        &self,
        name: &str,
        n_expert: usize,
        device: &Device,
    ) -> Result<Vec<Linear>> {
        let info = self.info(name)?;
        let dims = info.shape.dims();
        if dims.len() != 3 || dims[0] != n_expert {
            return Err(EngineError::Metadata(format!(
                "tensor `{name}` has shape {dims:?}, expected ({n_expert}, rows, cols)"
            )));
        }
        let range = self.data_range(info)?;
        let per_expert = (range.end - range.start) / n_expert;
        let mut packed = Vec::with_capacity(n_expert);
        for e in 0..n_expert {
            let part = range.start + e * per_expert..range.start + (e + 1) * per_expert;
            match self.pack_range(name, info.ggml_dtype, dims[1], dims[2], part, device)? {
                Some(p) => packed.push(Linear::Packed(std::sync::Arc::new(p))),
                None => break,
            }
        }
        if packed.len() == n_expert {
            return Ok(packed);
        }
        self.expert_tensors(name, n_expert, device)?
            .into_iter()
            .map(|t| Ok(Linear::Candle(QMatMul::from_qtensor(t)?)))
            .collect()
    }

    fn info(&self, name: &str) -> Result<&gguf_file::TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::Metadata(format!("tensor `{name}` not found")))
    }

    /// The bytes of a tensor's data in the file.
    fn data_range(&self, info: &gguf_file::TensorInfo) -> Result<std::ops::Range<usize>> {
        let dtype = info.ggml_dtype;
        let elems = info.shape.elem_count();
        if !elems.is_multiple_of(dtype.block_size()) {
            return Err(EngineError::Metadata(format!(
                "a tensor of {elems} values is not whole {dtype:?} blocks"
            )));
        }
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok(start..start + elems / dtype.block_size() * dtype.type_size())
    }

    /// Drops the file pages wholly inside `range` from this process's
    /// memory: once a tensor is repacked its file bytes are not read again.
    fn release(&self, range: std::ops::Range<usize>) {
        const PAGE: usize = 4096;
        let start = range.start.div_ceil(PAGE) * PAGE;
        let end = range.end / PAGE * PAGE;
        if end > start {
            // SAFETY: the mapping is read-only and file-backed: dropping its
            // pages only means a later read faults them in again from the file.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }

    /// Splits a stacked expert tensor, `(n_expert, rows, cols)` with the
    /// experts outermost as GGUF stores `ffn_*_exps`, into one 2-D tensor per
    /// expert. Each expert's blocks are contiguous, so this is a byte slice.
    fn expert_tensors(&self, name: &str, n_expert: usize, device: &Device) -> Result<Vec<QTensor>> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::Metadata(format!("tensor `{name}` not found")))?;
        let dims = info.shape.dims();
        if dims.len() != 3 || dims[0] != n_expert {
            return Err(EngineError::Metadata(format!(
                "tensor `{name}` has shape {dims:?}, expected ({n_expert}, rows, cols)"
            )));
        }
        let dtype = info.ggml_dtype;
        let elems = dims[1] * dims[2];
        if !elems.is_multiple_of(dtype.block_size()) {
            return Err(EngineError::Metadata(format!(
                "tensor `{name}`: an expert is not a whole number of {dtype:?} blocks"
            )));
        }
        let bytes = elems / dtype.block_size() * dtype.type_size();
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        (0..n_expert)
            .map(|e| {
                let data = &self.mmap[start + e * bytes..start + (e + 1) * bytes];
                Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    data,
                    vec![dims[1], dims[2]],
                    device,
                )?)
            })
            .collect()
    }

    /// Reads a tensor by its GGUF name onto `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(EngineError::Metadata(format!("tensor `{name}` not found")));
        }
        let mut cursor = Cursor::new(&self.mmap[..]);
        Ok(self.content.tensor(&mut cursor, name, device)?)
    }
}
