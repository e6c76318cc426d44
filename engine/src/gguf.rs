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
///
/// candle's parser does not know the FP4 types (MXFP4, ggml type 39; NVFP4,
/// type 40): their tensors are recorded by the engine's own header walk
/// ([`check_header`]) in [`Gguf::fp4`], and candle parses a copy of the
/// header in which their type ids read F32, their infos then dropped from
/// its table. On the CPU they are packed for the engine's kernels like any
/// other format; where a candle tensor is wanted ([`Gguf::tensor`]: small
/// tensors, other devices, candle's kernels) they are dequantized at load,
/// to F16 when every value is exact in it (NVFP4 always is), else to F32.
pub struct Gguf {
    path: PathBuf,
    mmap: Mmap,
    content: gguf_file::Content,
    /// The FP4 tensors, which candle's table does not hold.
    fp4: std::collections::HashMap<String, Fp4Tensor>,
    architecture: String,
    vocab_size: Option<usize>,
    kernels: Kernels,
}

/// A tensor of a type candle does not read: its header entry.
#[derive(Debug, Clone)]
struct Fp4Tensor {
    format: WeightFormat,
    /// Outermost first, as candle orders shapes.
    dims: Vec<usize>,
    /// From the start of the data section.
    offset: u64,
}

/// A tensor's type: one candle reads, or one only the engine's kernels do.
#[derive(Clone, Copy)]
enum TensorType {
    Ggml(GgmlDType),
    Fp4(WeightFormat),
}

impl std::fmt::Debug for TensorType {
    /// The type's own name (`Q4K`, `Nvfp4`), as error messages name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ggml(d) => d.fmt(f),
            Self::Fp4(w) => w.fmt(f),
        }
    }
}

impl TensorType {
    fn block_size(self) -> usize {
        match self {
            Self::Ggml(d) => d.block_size(),
            Self::Fp4(f) => f.block_values(),
        }
    }

    fn type_size(self) -> usize {
        match self {
            Self::Ggml(d) => d.type_size(),
            Self::Fp4(f) => f.block_bytes(),
        }
    }

    fn format(self) -> Option<WeightFormat> {
        match self {
            Self::Ggml(d) => WeightFormat::from_ggml(d),
            Self::Fp4(f) => Some(f),
        }
    }
}

/// One tensor's header entry, whichever table holds it.
struct Entry<'a> {
    ty: TensorType,
    dims: &'a [usize],
    offset: u64,
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
        // Every count, length, size and offset the header declares is
        // checked against the file first (candle's parser divides by the
        // declared alignment and multiplies declared dimensions unchecked);
        // only then does candle build the header. Tensor data is not read.
        let header = check_header(&mmap).map_err(invalid)?;
        let mut content = if header.fp4.is_empty() {
            gguf_file::Content::read(&mut Cursor::new(&mmap[..]))
        } else {
            // candle reads the header only (up to the data section's start,
            // which it computes from where the header ends): a copy of it,
            // the FP4 tensors' type ids replaced by F32's.
            let mut copy = mmap[..header.end].to_vec();
            for t in &header.fp4 {
                copy[t.type_at..t.type_at + 4].copy_from_slice(&0u32.to_le_bytes());
            }
            gguf_file::Content::read(&mut Cursor::new(&copy[..]))
        }
        .map_err(|e| invalid(e.to_string()))?;
        let mut fp4 = std::collections::HashMap::new();
        for t in header.fp4 {
            // Names are unique (checked), so this entry is the one candle holds.
            content.tensor_infos.remove(&t.name);
            fp4.insert(
                t.name,
                Fp4Tensor {
                    format: t.format,
                    dims: t.dims,
                    offset: t.offset,
                },
            );
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
            fp4,
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
        self.content.tensor_infos.contains_key(name) || self.fp4.contains_key(name)
    }

    /// Names of all tensors.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content
            .tensor_infos
            .keys()
            .chain(self.fp4.keys())
            .map(String::as_str)
    }

    /// The FP4 format of tensor `name`, if it is one (candle cannot read it;
    /// [`Gguf::tensor`] dequantizes it).
    pub fn fp4_format(&self, name: &str) -> Option<WeightFormat> {
        self.fp4.get(name).map(|t| t.format)
    }

    /// Names of all tensors, in the order their data lies in the file.
    pub fn tensor_names_in_file_order(&self) -> Vec<&str> {
        let mut names: Vec<(&str, u64)> = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| (name.as_str(), info.offset))
            .chain(self.fp4.iter().map(|(name, t)| (name.as_str(), t.offset)))
            .collect();
        names.sort_by_key(|&(_, offset)| offset);
        names.into_iter().map(|(name, _)| name).collect()
    }

    /// Total number of parameters (elements) over all tensors.
    pub fn parameter_count(&self) -> u64 {
        let fp4: u64 = self
            .fp4
            .values()
            .map(|t| t.dims.iter().product::<usize>() as u64)
            .sum();
        self.content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() as u64)
            .sum::<u64>()
            + fp4
    }

    /// A tensor's dimensions, outermost first (`(n_expert, rows, cols)`).
    pub fn tensor_dims(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.entry(name)?.dims.to_vec())
    }

    /// Number of elements of a tensor, if present.
    pub fn tensor_elem_count(&self, name: &str) -> Option<usize> {
        self.entry(name).ok().map(|e| e.dims.iter().product())
    }

    /// The weight `name` repacked for the engine's CPU kernels, or `None`
    /// when `device` is not the CPU, the architecture has no vector tier
    /// (candle's own NEON kernels then serve), or the format has no kernel.
    /// The packed matrix replaces the file's pages: they are released from
    /// memory once read.
    pub(crate) fn packed(&self, name: &str, device: &Device) -> Result<Option<PackedMatrix>> {
        let entry = self.entry(name)?;
        let (n, k) = match *entry.dims {
            [k] => (1, k),
            [n, k] => (n, k),
            _ => return Ok(None),
        };
        self.pack_range(name, entry.ty, n, k, self.data_range(&entry)?, device)
    }

    fn pack_range(
        &self,
        name: &str,
        ty: TensorType,
        n: usize,
        k: usize,
        range: std::ops::Range<usize>,
        device: &Device,
    ) -> Result<Option<PackedMatrix>> {
        let Some(tier) = cpu_tier(device, self.kernels) else {
            return Ok(None);
        };
        let Some(format) = ty.format() else {
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
        let rows = self.entry(name)?.dims.get(1).copied().unwrap_or(0);
        self.expert_row_linears(name, n_expert, 0..rows, device)
    }

    /// Output rows `rows` of each expert of a stacked `(n_expert, rows,
    /// cols)` tensor as a layer: a fused `ffn_gate_up_exps` is the gate in
    /// its first half and the up projection in its second.
    pub(crate) fn expert_row_linears(
        &self,
        name: &str,
        n_expert: usize,
        rows: std::ops::Range<usize>,
        device: &Device,
    ) -> Result<Vec<Linear>> {
        let entry = self.entry(name)?;
        let dims = entry.dims;
        if dims.len() != 3 || dims[0] != n_expert || rows.end > dims[1] || rows.is_empty() {
            return Err(EngineError::Metadata(format!(
                "tensor `{name}` has shape {dims:?}, expected ({n_expert}, at least {} rows, cols)",
                rows.end
            )));
        }
        let scales = self.output_scales(name, n_expert)?;
        let scale = |e: usize| scales.as_ref().map(|s| s[e]);
        let range = self.data_range(&entry)?;
        let per_expert = (range.end - range.start) / n_expert;
        let row_bytes = per_expert / dims[1];
        let part = |e: usize| {
            let start = range.start + e * per_expert;
            start + rows.start * row_bytes..start + rows.end * row_bytes
        };
        let mut packed = Vec::with_capacity(n_expert);
        for e in 0..n_expert {
            match self.pack_range(name, entry.ty, rows.len(), dims[2], part(e), device)? {
                Some(mut p) => {
                    if let Some(s) = scale(e) {
                        p.set_output_scale(s);
                    }
                    packed.push(Linear::Packed(std::sync::Arc::new(p)))
                }
                None => break,
            }
        }
        if packed.len() == n_expert {
            return Ok(packed);
        }
        if !dims[2].is_multiple_of(entry.ty.block_size()) {
            return Err(EngineError::Metadata(format!(
                "tensor `{name}`: rows of {} values are not whole {:?} blocks",
                dims[2], entry.ty
            )));
        }
        (0..n_expert)
            .map(|e| {
                let data = &self.mmap[part(e)];
                let dims = vec![rows.len(), dims[2]];
                let t = match entry.ty {
                    TensorType::Ggml(dtype) => {
                        candle_core::quantized::ggml_file::qtensor_from_ggml(
                            dtype, data, dims, device,
                        )?
                    }
                    TensorType::Fp4(format) => fp4_qtensor(format, data, dims, device)?,
                };
                Ok(Linear::Candle {
                    matmul: QMatMul::from_qtensor(t)?,
                    output_scale: scale(e),
                })
            })
            .collect()
    }

    /// The values of a small tensor (a norm, a bias, a scale) as f32.
    pub(crate) fn tensor_values(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self
            .tensor(name, &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?)
    }

    /// The output scales of weight `name` (`STEM.weight`): the values of
    /// `STEM.scale` when the file has it, which must be `n` finite numbers
    /// (one for a matrix, one per expert for a stacked one). llama.cpp
    /// multiplies the projection's output by them (NVFP4's second scale);
    /// its `STEM.input_scale` tensors are read by no operation there, nor
    /// here.
    pub(crate) fn output_scales(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        let stem = name.strip_suffix(".weight").unwrap_or(name);
        let scale_name = format!("{stem}.scale");
        if !self.has_tensor(&scale_name) {
            return Ok(None);
        }
        let values = self.tensor_values(&scale_name)?;
        if values.len() != n {
            return Err(EngineError::Metadata(format!(
                "tensor `{scale_name}` has {} values; the output scale of `{name}` is {n}",
                values.len()
            )));
        }
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(EngineError::Metadata(format!(
                "tensor `{scale_name}` holds {bad}, not a finite scale"
            )));
        }
        Ok(Some(values))
    }

    fn entry(&self, name: &str) -> Result<Entry<'_>> {
        if let Some(info) = self.content.tensor_infos.get(name) {
            return Ok(Entry {
                ty: TensorType::Ggml(info.ggml_dtype),
                dims: info.shape.dims(),
                offset: info.offset,
            });
        }
        self.fp4
            .get(name)
            .map(|t| Entry {
                ty: TensorType::Fp4(t.format),
                dims: &t.dims,
                offset: t.offset,
            })
            .ok_or_else(|| EngineError::Metadata(format!("tensor `{name}` not found")))
    }

    /// The bytes of a tensor's data in the file (inside it: the header
    /// check made sure).
    fn data_range(&self, entry: &Entry<'_>) -> Result<std::ops::Range<usize>> {
        let ty = entry.ty;
        let elems: usize = entry.dims.iter().product();
        if !elems.is_multiple_of(ty.block_size()) {
            return Err(EngineError::Metadata(format!(
                "a tensor of {elems} values is not whole {ty:?} blocks"
            )));
        }
        let start = (self.content.tensor_data_offset + entry.offset) as usize;
        Ok(start..start + elems / ty.block_size() * ty.type_size())
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

    /// Reads a tensor by its GGUF name onto `device`. An FP4 tensor, which
    /// candle cannot hold, comes dequantized (see [`Gguf`]).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        if let Some(t) = self.fp4.get(name) {
            let entry = self.entry(name)?;
            let range = self.data_range(&entry)?;
            return fp4_qtensor(t.format, &self.mmap[range], t.dims.clone(), device);
        }
        if !self.has_tensor(name) {
            return Err(EngineError::Metadata(format!("tensor `{name}` not found")));
        }
        let mut cursor = Cursor::new(&self.mmap[..]);
        Ok(self.content.tensor(&mut cursor, name, device)?)
    }
}

/// An FP4 tensor's file bytes dequantized into a candle tensor on `device`:
/// F16 when every value is exact in it (NVFP4's always are: at most 5
/// significant bits between 2^-10 and 2880), else F32 (MXFP4's scales reach
/// outside F16's range).
fn fp4_qtensor(
    format: WeightFormat,
    bytes: &[u8],
    dims: Vec<usize>,
    device: &Device,
) -> Result<QTensor> {
    let elems: usize = dims.iter().product();
    if elems != bytes.len() / format.block_bytes() * format.block_values()
        || !elems.is_multiple_of(format.block_values())
    {
        return Err(EngineError::Metadata(format!(
            "{} bytes of {format:?} do not hold {dims:?}",
            bytes.len()
        )));
    }
    let mut values = vec![0f32; elems];
    crate::kernels::formats::dequantize_row(format, bytes, &mut values);
    let halves: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
    let exact = halves.iter().zip(&values).all(|(h, v)| h.to_f32() == *v);
    // Views of the vectors' own (aligned) storage as bytes, for candle's
    // reader, which casts the bytes back to its element type.
    let qtensor = if exact {
        // SAFETY: f16 is plain data; the slice covers the vector exactly.
        let raw =
            unsafe { std::slice::from_raw_parts(halves.as_ptr() as *const u8, halves.len() * 2) };
        candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::F16, raw, dims, device)?
    } else {
        // SAFETY: as above, for f32.
        let raw =
            unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, values.len() * 4) };
        candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::F32, raw, dims, device)?
    };
    Ok(qtensor)
}

/// Deepest nesting of arrays in a metadata value (candle's own cap).
const MAX_VALUE_DEPTH: usize = 64;
/// Most dimensions of a tensor (GGML_MAX_DIMS).
const MAX_TENSOR_DIMS: u64 = 4;

/// The ggml type of a GGUF type id, for the types candle reads.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A bounds-checked little-endian reader over the file's bytes.
struct HeaderReader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// GGUF v1 writes lengths and dimensions as u32, later versions as u64.
    wide: bool,
}

impl<'a> HeaderReader<'a> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        let left = self.bytes.len() - self.at;
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let taken = &self.bytes[self.at..self.at + n];
                self.at += n;
                Ok(taken)
            }
            _ => Err(format!(
                "{what} needs {n} bytes at byte {}, but only {left} remain (truncated?)",
                self.at
            )),
        }
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A count, length or dimension: u32 in v1, u64 after.
    fn length(&mut self, what: &str) -> std::result::Result<u64, String> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn string(&mut self, what: &str) -> std::result::Result<&'a [u8], String> {
        let len = self.length(what)?;
        self.take(len, what)
    }

    /// Skips a metadata value of type `kind`; returns it when it is a
    /// non-negative integer of a type candle takes `general.alignment` from.
    fn skip_value(&mut self, kind: u32, depth: usize) -> std::result::Result<Option<u64>, String> {
        if depth > MAX_VALUE_DEPTH {
            return Err(format!(
                "metadata arrays nest deeper than {MAX_VALUE_DEPTH}"
            ));
        }
        if let Some(size) = fixed_size(kind) {
            let b = self.take(size, "a metadata value")?;
            let value = match kind {
                0 => i64::from(b[0]),
                1 => i64::from(b[0] as i8),
                2 => i64::from(u16::from_le_bytes([b[0], b[1]])),
                3 => i64::from(i16::from_le_bytes([b[0], b[1]])),
                4 => i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                5 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                _ => return Ok(None),
            };
            return Ok(u64::try_from(value).ok());
        }
        match kind {
            8 => {
                self.string("a metadata string")?;
            }
            9 => {
                let element = self.u32("an array's element type")?;
                let len = self.length("an array's length")?;
                let prefix = if self.wide { 8 } else { 4 };
                let smallest = match element {
                    8 => prefix,
                    9 => 4 + prefix,
                    _ => fixed_size(element)
                        .ok_or_else(|| format!("unknown metadata value type {element}"))?,
                };
                let left = (self.bytes.len() - self.at) as u64;
                let needed = len.saturating_mul(smallest);
                if needed > left {
                    return Err(format!(
                        "an array declares {len} elements ({needed} bytes at least), but only {left} bytes remain"
                    ));
                }
                match fixed_size(element) {
                    Some(_) => {
                        self.take(needed, "an array")?;
                    }
                    None => {
                        for _ in 0..len {
                            self.skip_value(element, depth + 1)?;
                        }
                    }
                }
            }
            other => return Err(format!("unknown metadata value type {other}")),
        }
        Ok(None)
    }
}

/// Bytes of a metadata value of a fixed-size type; `None` for strings,
/// arrays and unknown types.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// What the header walk found that candle's parser cannot.
struct HeaderScan {
    /// Where the tensor infos end (the data section starts at the next
    /// multiple of the alignment).
    end: usize,
    /// The FP4 tensors, in header order.
    fp4: Vec<Fp4Entry>,
}

struct Fp4Entry {
    name: String,
    format: WeightFormat,
    /// Outermost first.
    dims: Vec<usize>,
    offset: u64,
    /// Byte position of its type id in the file.
    type_at: usize,
}

/// Walks a GGUF header over the whole file's bytes without allocating from
/// anything it declares: every string, array, tensor shape, type id and
/// tensor extent is checked against the file, and the arithmetic on them
/// (dimension products, byte sizes, offsets, alignment) is checked too.
/// Tensor names must be unique (as llama.cpp requires).
fn check_header(bytes: &[u8]) -> std::result::Result<HeaderScan, String> {
    let mut r = HeaderReader {
        bytes,
        at: 0,
        wide: true,
    };
    let magic = r.take(4, "the magic")?;
    if magic != b"GGUF" && magic != b"FUGG" {
        return Err(format!("unknown magic {magic:02x?}"));
    }
    let version = r.u32("the version")?;
    r.wide = match version {
        1 => false,
        2 | 3 => true,
        other => return Err(format!("unsupported GGUF version {other}")),
    };
    let tensor_count = r.length("the tensor count")?;
    let metadata_count = r.length("the metadata count")?;
    let mut alignment = None;
    for _ in 0..metadata_count {
        let key = r.string("a metadata key")?;
        let kind = r.u32("a metadata value type")?;
        let value = r.skip_value(kind, 0)?;
        if key == b"general.alignment" {
            // The last entry wins, as in candle's map.
            alignment = value;
        }
    }
    let alignment = alignment.unwrap_or(gguf_file::DEFAULT_ALIGNMENT);
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(format!(
            "general.alignment {alignment} is not a power of two"
        ));
    }
    let mut extents = Vec::new();
    let mut fp4 = Vec::new();
    let mut names = std::collections::HashSet::new();
    for _ in 0..tensor_count {
        let name = String::from_utf8_lossy(r.string("a tensor name")?).into_owned();
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{name}` is declared twice"));
        }
        let dims = r.u32("a tensor's dimension count")?;
        if u64::from(dims) > MAX_TENSOR_DIMS {
            return Err(format!(
                "tensor `{name}` has {dims} dimensions, at most {MAX_TENSOR_DIMS} are allowed"
            ));
        }
        let mut elems: u64 = 1;
        let mut shape = Vec::new();
        for _ in 0..dims {
            let dim = r.length("a tensor dimension")?;
            shape.push(dim);
            // An empty tensor has no data for candle to point at (it casts a
            // dangling pointer to blocks, which must be aligned).
            if dim == 0 {
                return Err(format!("tensor `{name}` has a dimension of 0"));
            }
            elems = elems
                .checked_mul(dim)
                .ok_or_else(|| format!("tensor `{name}`: its dimensions' product overflows"))?;
        }
        let type_at = r.at;
        let id = r.u32("a tensor type")?;
        let (block, type_size) = match (ggml_dtype(id), WeightFormat::from_ggml_id(id)) {
            (Some(dtype), _) => (dtype.block_size() as u64, dtype.type_size() as u64),
            (None, Some(format)) => (format.block_values() as u64, format.block_bytes() as u64),
            (None, None) => return Err(format!("tensor `{name}` has unknown type id {id}")),
        };
        let kind = match WeightFormat::from_ggml_id(id) {
            Some(format) => format!("{format:?}"),
            None => format!("{:?}", ggml_dtype(id).expect("known")),
        };
        let offset = r.u64("a tensor offset")?;
        // The data is read in place as blocks of f16s and f32s: GGUF aligns it.
        if !offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor `{name}`'s offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        if !elems.is_multiple_of(block) {
            return Err(format!(
                "tensor `{name}`: {elems} values are not whole {kind} blocks of {block}"
            ));
        }
        let size = (elems / block)
            .checked_mul(type_size)
            .ok_or_else(|| format!("tensor `{name}`: its size in bytes overflows"))?;
        if let Some(format) = WeightFormat::from_ggml_id(id) {
            // Rows are blocks of their own: the kernels and dequantization
            // work row by row.
            if !shape[0].is_multiple_of(block) {
                return Err(format!(
                    "tensor `{name}`: rows of {} values are not whole {kind} blocks of {block}",
                    shape[0]
                ));
            }
            let dims = shape
                .iter()
                .rev()
                .map(|&d| usize::try_from(d).map_err(|_| format!("tensor `{name}` is too large")))
                .collect::<std::result::Result<Vec<usize>, String>>()?;
            fp4.push(Fp4Entry {
                name: name.clone(),
                format,
                dims,
                offset,
                type_at,
            });
        }
        extents.push((name, offset, size));
    }
    let end = r.at;
    let file_len = bytes.len() as u64;
    let data_start = (r.at as u64).div_ceil(alignment) * alignment;
    for (name, offset, size) in extents {
        let fits = data_start
            .checked_add(offset)
            .and_then(|start| start.checked_add(size))
            .is_some_and(|end| end <= file_len);
        if !fits {
            return Err(format!(
                "tensor `{name}` ({size} bytes at offset {offset} from byte {data_start}) ends past the file's {file_len} bytes (truncated?)"
            ));
        }
    }
    Ok(HeaderScan { end, fp4 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An FP4 tensor read as a candle tensor keeps its values exactly:
    /// F16 when they fit it, F32 when an E8M0 scale is beyond F16's range.
    #[test]
    fn fp4_tensors_dequantize_exactly_to_f16_or_f32() {
        let mut block = [0u8; 17];
        block[1] = 0x71; // values 0 and 16: codes 1 and 7 (0.5 and 6, doubled 1 and 12)
        for (e, dtype) in [
            (127u8, GgmlDType::F16),
            (20, GgmlDType::F32),
            (200, GgmlDType::F32),
        ] {
            block[0] = e;
            let t = fp4_qtensor(WeightFormat::Mxfp4, &block, vec![1, 32], &Device::Cpu).unwrap();
            assert_eq!(t.dtype(), dtype, "e = {e}");
            let v: Vec<f32> = t
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let half = crate::kernels::formats::e8m0_half(e);
            assert_eq!((v[0], v[16]), (half, 12.0 * half), "e = {e}");
        }
        // Bytes that do not hold the shape are an error.
        assert!(fp4_qtensor(WeightFormat::Mxfp4, &block, vec![2, 32], &Device::Cpu).is_err());
    }
}
