//! The GGUF pre-pass: the whole header read and checked before candle's
//! `gguf_file::Content::read` or a loader trusts it. candle bounds string and array lengths, but
//! divides by `general.alignment` unchecked, multiplies dimensions unchecked and builds tensors
//! from empty buffers (an abort in `slice::from_raw_parts`); its loaders divide by head counts
//! and reserve `block_count` layers. This module refuses each of those before they happen.
//!
//! Two passes: [`layout`] reads the bytes (magic, version, counts, every key, string and array
//! length, each tensor's name, dimensions, type and offset, the alignment and where the data
//! lies) without allocating more than a bounded header; [`check_model`] reads candle's parsed
//! content against what `quantized_llama` and `quantized_qwen2` will ask for. [`open`] runs
//! both and is the only way this crate opens a GGUF file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{self, Value};

use crate::format::limits;

/// Metadata entries: real files hold about 50.
pub(crate) const MAX_METADATA: u64 = 1 << 12;
/// A metadata key: real keys are under 64 bytes.
pub(crate) const MAX_KEY: u64 = 1 << 10;
/// A tensor name: llama.cpp's own limit is 64 bytes.
pub(crate) const MAX_TENSOR_NAME: u64 = 1 << 8;
/// A string value: the largest are embedded `tokenizer.json`s of a few tens of MiB.
pub(crate) const MAX_STRING: u64 = 1 << 27;
/// Array elements in the whole file: a 262,144-token vocabulary takes about 1M (tokens, types,
/// scores, merges). candle holds each as a 32-byte value, so this bounds that memory too.
pub(crate) const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;

/// Why a GGUF file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GgufError {
    #[error("failed to read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a well-formed GGUF file; `at` is where the offending field starts.
    #[error("{} is not a valid GGUF file: {what} (at byte {at})", path.display())]
    Invalid { path: PathBuf, at: u64, what: String },
    /// candle refused a file the pre-pass accepted.
    #[error("{} is not a valid GGUF file: {source}", path.display())]
    Candle {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    /// A well-formed file whose metadata or tensors the loader cannot take.
    #[error("{}: {what}", path.display())]
    Model { path: PathBuf, what: String },
}

impl GgufError {
    /// The error without the path, for a message that names the file already.
    pub(crate) fn cause(&self) -> String {
        match self {
            GgufError::Read { source, .. } => format!("failed to read the file: {source}"),
            GgufError::Invalid { at, what, .. } => format!("not a valid GGUF file: {what} (at byte {at})"),
            GgufError::Candle { source, .. } => format!("not a valid GGUF file: {source}"),
            GgufError::Model { what, .. } => what.clone(),
        }
    }
}

/// One tensor as the header declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorLayout {
    pub(crate) name: String,
    /// Outermost dimension first (the reverse of the file's order), as candle reports shapes.
    pub(crate) dims: Vec<u64>,
    pub(crate) dtype: GgmlDType,
    /// Offset from the start of the data section.
    pub(crate) offset: u64,
    pub(crate) bytes: u64,
}

/// Where everything in a GGUF file lies, every bound checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    pub(crate) version: u32,
    pub(crate) alignment: u64,
    pub(crate) data_offset: u64,
    pub(crate) tensors: Vec<TensorLayout>,
}

/// A failure at a byte offset, before the path is known.
type Fail = (u64, String);

struct Reader<R> {
    r: R,
    at: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Fail> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|_| (self.at, format!("the file ends inside {what}")))?;
        self.at += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Fail> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, Fail> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    /// Passes over `n` bytes, which must lie inside the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), Fail> {
        if n > self.len - self.at {
            return Err((self.at, format!("{what} needs {n} bytes, only {} remain", self.len - self.at)));
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| (self.at, format!("failed to read {what}: {e}")))?;
        if copied != n {
            return Err((self.at, format!("the file ends inside {what}")));
        }
        self.at += n;
        Ok(())
    }

    /// A length-prefixed string of at most `max` bytes; its bytes when `keep`.
    fn string(&mut self, what: &str, max: u64, keep: bool) -> Result<Vec<u8>, Fail> {
        let at = self.at;
        let n = self.u64(what)?;
        if n > max || n > self.len - self.at {
            return Err((
                at,
                format!(
                    "{what} is {n} bytes long, more than {max} or the {} that remain",
                    self.len - self.at
                ),
            ));
        }
        if !keep {
            self.skip(n, what)?;
            return Ok(Vec::new());
        }
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v).map_err(|_| (self.at, format!("the file ends inside {what}")))?;
        self.at += n;
        Ok(v)
    }
}

/// The value types of GGUF metadata, by code: (name, bytes on disk for a scalar).
fn value_type(code: u32) -> Option<(&'static str, u64)> {
    Some(match code {
        0 => ("U8", 1),
        1 => ("I8", 1),
        2 => ("U16", 2),
        3 => ("I16", 2),
        4 => ("U32", 4),
        5 => ("I32", 4),
        6 => ("F32", 4),
        7 => ("BOOL", 1),
        8 => ("STRING", 0),
        9 => ("ARRAY", 0),
        10 => ("U64", 8),
        11 => ("I64", 8),
        12 => ("F64", 8),
        _ => return None,
    })
}

/// The tensor types candle reads (`GgmlDType::from_u32`, which candle keeps private).
fn ggml_type(code: u32) -> Option<GgmlDType> {
    Some(match code {
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

/// Reads the header of a GGUF file of `len` bytes and checks every count, length and offset.
pub(crate) fn layout_of<R: Read>(r: R, len: u64) -> Result<Layout, Fail> {
    let mut r = Reader { r, at: 0, len };
    let magic = r.array::<4>("the magic")?;
    if &magic != b"GGUF" {
        return Err((0, format!("the magic is {magic:02x?}, not `GGUF`")));
    }
    let version = r.u32("the version")?;
    if !matches!(version, 2 | 3) {
        return Err((4, format!("version {version} is not read (2 and 3 are)")));
    }
    let tensor_count = r.u64("the tensor count")?;
    if tensor_count > limits::MAX_TENSORS {
        return Err((
            8,
            format!(
                "tensor_count is {tensor_count}, more than the {} tensors a file may hold",
                limits::MAX_TENSORS
            ),
        ));
    }
    let kv_count = r.u64("the metadata count")?;
    if kv_count > MAX_METADATA {
        return Err((
            16,
            format!("metadata_kv_count is {kv_count}, more than the {MAX_METADATA} entries a file may hold"),
        ));
    }
    let mut keys = HashSet::new();
    let mut alignment = gguf_file::DEFAULT_ALIGNMENT;
    let mut array_elements = 0u64;
    for i in 0..kv_count {
        let key_at = r.at;
        let key = r.string(&format!("the key of metadata entry {i}"), MAX_KEY, true)?;
        let key = candle_string(key);
        if !keys.insert(key.clone()) {
            return Err((key_at, format!("metadata key `{key}` appears twice")));
        }
        let type_at = r.at;
        let code = r.u32(&format!("the type of `{key}`"))?;
        let (type_name, size) =
            value_type(code).ok_or_else(|| (type_at, format!("`{key}` has unknown value type {code}")))?;
        let value_at = r.at;
        match code {
            8 => {
                r.string(&format!("the string `{key}`"), MAX_STRING, false)?;
            }
            9 => {
                let elem = r.u32(&format!("the element type of `{key}`"))?;
                let (elem_name, elem_size) = value_type(elem)
                    .ok_or_else(|| (value_at, format!("`{key}` is an array of unknown type {elem}")))?;
                if elem == 9 {
                    return Err((
                        value_at,
                        format!("`{key}` is an array of arrays, which no model file needs"),
                    ));
                }
                let n_at = r.at;
                let n = r.u64(&format!("the length of `{key}`"))?;
                array_elements = array_elements.saturating_add(n);
                if array_elements > MAX_ARRAY_ELEMENTS {
                    return Err((
                        n_at,
                        format!(
                            "`{key}` has {n} elements, past the {MAX_ARRAY_ELEMENTS} array elements a file may hold"
                        ),
                    ));
                }
                if elem == 8 {
                    let min = n.saturating_mul(8);
                    if min > r.len - r.at {
                        return Err((
                            n_at,
                            format!(
                                "`{key}` has {n} strings, which need at least {min} bytes, only {} remain",
                                r.len - r.at
                            ),
                        ));
                    }
                    for j in 0..n {
                        r.string(&format!("string {j} of `{key}`"), MAX_STRING, false)?;
                    }
                } else if elem == 7 {
                    for j in 0..n {
                        let b = r.array::<1>(&format!("`{key}`"))?[0];
                        if b > 1 {
                            return Err((
                                r.at - 1,
                                format!("element {j} of `{key}` is the bool {b}, not 0 or 1"),
                            ));
                        }
                    }
                } else {
                    let bytes = n.saturating_mul(elem_size);
                    r.skip(bytes, &format!("`{key}` ({n} × {elem_name})"))?;
                }
            }
            _ => {
                let mut b = [0u8; 8];
                for slot in b.iter_mut().take(size as usize) {
                    *slot = r.array::<1>(&format!("`{key}`"))?[0];
                }
                if code == 7 && b[0] > 1 {
                    return Err((value_at, format!("`{key}` is the bool {}, not 0 or 1", b[0])));
                }
                if key == "general.alignment" {
                    alignment = alignment_of(code, type_name, b)
                        .map_err(|why| (value_at, format!("`general.alignment` {why}")))?;
                }
            }
        }
    }
    let mut names = HashSet::new();
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let name_at = r.at;
        let name = candle_string(r.string(&format!("the name of tensor {i}"), MAX_TENSOR_NAME, true)?);
        if !names.insert(name.clone()) {
            return Err((name_at, format!("tensor `{name}` appears twice")));
        }
        let dims_at = r.at;
        let n_dims = r.u32(&format!("the dimension count of `{name}`"))?;
        if !(1..=4).contains(&n_dims) {
            return Err((dims_at, format!("tensor `{name}` has {n_dims} dimensions (1 to 4 are read)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&format!("the dimensions of `{name}`"))?);
        }
        let elements = limits::elements(&dims).filter(|_| dims.iter().all(|&d| d > 0)).ok_or_else(|| {
            (
                dims_at,
                format!(
                    "tensor `{name}` has dimensions {dims:?}: a zero, or over {} elements or overflowing",
                    limits::MAX_TENSOR_ELEMENTS
                ),
            )
        })?;
        let type_at = r.at;
        let code = r.u32(&format!("the type of `{name}`"))?;
        let dtype = ggml_type(code)
            .ok_or_else(|| (type_at, format!("tensor `{name}` has unknown GGML type {code}")))?;
        let block = dtype.block_size() as u64;
        if !dims[0].is_multiple_of(block) {
            return Err((
                dims_at,
                format!("tensor `{name}` has rows of {}, not whole {dtype:?} blocks of {block}", dims[0]),
            ));
        }
        let bytes = (elements / block)
            .checked_mul(dtype.type_size() as u64)
            .ok_or_else(|| (type_at, format!("tensor `{name}` overflows in bytes")))?;
        let offset_at = r.at;
        let offset = r.u64(&format!("the offset of `{name}`"))?;
        dims.reverse();
        tensors.push((offset_at, TensorLayout { name, dims, dtype, offset, bytes }));
    }
    let data_offset = r.at.div_ceil(alignment).saturating_mul(alignment);
    // As llama.cpp requires: each tensor's data starts where the previous one's ends, padded to
    // the alignment. A changed shape or a moved offset breaks this, so it is named here rather
    // than read as another tensor's bytes.
    let mut expected = 0u64;
    for (offset_at, t) in &tensors {
        if t.offset != expected {
            return Err((
                *offset_at,
                format!(
                    "tensor `{}` has data offset {}, expected {expected} (the previous tensor's end, aligned to {alignment}): a shape or an offset was changed",
                    t.name, t.offset
                ),
            ));
        }
        let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.bytes));
        if end.is_none_or(|end| end > len) {
            return Err((
                *offset_at,
                format!(
                    "tensor `{}` ({:?} {:?}, {} bytes at data offset {}) lies past the end of the {len}-byte file",
                    t.name, t.dtype, t.dims, t.bytes, t.offset
                ),
            ));
        }
        expected = t.offset.saturating_add(t.bytes).div_ceil(alignment).saturating_mul(alignment);
    }
    Ok(Layout { version, alignment, data_offset, tensors: tensors.into_iter().map(|(_, t)| t).collect() })
}

/// A name as candle keeps it: trailing NULs dropped, invalid UTF-8 replaced.
fn candle_string(mut v: Vec<u8>) -> String {
    while v.last() == Some(&0) {
        v.pop();
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// `general.alignment` as candle reads it (8-, 16- and 32-bit integers), if a power of two.
fn alignment_of(code: u32, type_name: &str, b: [u8; 8]) -> Result<u64, String> {
    let value: i64 = match code {
        0 => i64::from(b[0]),
        1 => i64::from(b[0] as i8),
        2 => i64::from(u16::from_le_bytes([b[0], b[1]])),
        3 => i64::from(i16::from_le_bytes([b[0], b[1]])),
        4 => i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        5 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        _ => return Err(format!("is a {type_name} value; it must be a 32-bit unsigned integer")),
    };
    match u64::try_from(value) {
        Ok(v) if v.is_power_of_two() => Ok(v),
        _ => Err(format!("is {value}; it must be a nonzero power of two")),
    }
}

/// [`layout_of`] over a file.
pub(crate) fn layout(path: &Path) -> Result<Layout, GgufError> {
    let io = |source| GgufError::Read { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.seek(SeekFrom::End(0)).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    layout_of(BufReader::new(file), len).map_err(|(at, what)| GgufError::Invalid {
        path: path.to_path_buf(),
        at,
        what,
    })
}

/// What a checked GGUF model declares that the session needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GgufModel {
    pub(crate) architecture: String,
    /// `{arch}.context_length`, or 2048 where a llama file declares none.
    pub(crate) context: u64,
    /// Rows of `token_embd.weight`.
    pub(crate) vocab: u64,
}

/// Reads the hyper-parameters candle's quantized loaders read, bounded and consistent, and each
/// tensor they ask for against the shape they need.
pub(crate) fn check_model(path: &Path, content: &gguf_file::Content) -> Result<GgufModel, GgufError> {
    model_of(&content.metadata, &content.tensor_infos)
        .map_err(|what| GgufError::Model { path: path.to_path_buf(), what })
}

fn model_of(
    md: &HashMap<String, Value>,
    infos: &HashMap<String, gguf_file::TensorInfo>,
) -> Result<GgufModel, String> {
    let arch = match md.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(format!("`general.architecture` is {v:?}, not a string")),
        None => return Err("`general.architecture` is missing".into()),
    };
    // llama and qwen2 have their tensors checked here (the names and shapes candle's quantized
    // models and the project's own read alike); an
    // architecture the engine dequantizes into its float model has its shapes checked against
    // the config rebuilt from these keys, as a model directory's are (`engine::admit`).
    let quantized = matches!(arch.as_str(), "llama" | "qwen2");
    if !quantized && super::dequantized_model_type(&arch).is_none() {
        return Err(format!(
            "GGUF architecture `{arch}` is not supported ({})",
            super::SUPPORTED_ARCHITECTURES
        ));
    }
    if let Some(why) = super::layouts::refused_key(md, &arch) {
        return Err(why);
    }
    // candle's loaders read these with `to_u32`, which takes a U32 value and nothing else.
    let number = |key: &str, limit: limits::Limit, required: bool| -> Result<Option<u64>, String> {
        let key = format!("{arch}.{key}");
        match md.get(&key) {
            None if required => Err(format!("`{key}` is missing")),
            None => Ok(None),
            Some(Value::U32(v)) => {
                limit.check(u64::from(*v)).map(Some).map_err(|why| format!("`{key}` {why}"))
            }
            Some(v) => Err(format!("`{key}` is {v:?}, not the u32 candle reads")),
        }
    };
    let hidden = number("embedding_length", limits::HIDDEN, true)?.unwrap_or(1);
    let heads = number("attention.head_count", limits::HEADS, true)?.unwrap_or(1);
    let kv_heads = number("attention.head_count_kv", limits::HEADS, true)?.unwrap_or(1);
    let layers = number("block_count", limits::LAYERS, true)?.unwrap_or(1);
    let context = number("context_length", limits::CONTEXT, arch != "llama")?.unwrap_or(2048);
    let ff = number("feed_forward_length", limits::INTERMEDIATE, false)?;
    // An explicit head width (mistral-nemo's), llama.cpp's `attention.key_length`, which a
    // llama's and a qwen2's values share; else hidden / heads.
    let key_length = number("attention.key_length", limits::HEAD_DIM, false)?;
    let value_length = number("attention.value_length", limits::HEAD_DIM, false)?;
    if quantized && value_length.is_some_and(|v| Some(v) != key_length.or(Some(hidden / heads))) {
        return Err(format!(
            "`{arch}.attention.value_length` {value_length:?} is not `{arch}.attention.key_length` {key_length:?}; the engine's {arch} has one head width"
        ));
    }
    if quantized && key_length.is_none() && !hidden.is_multiple_of(heads) {
        return Err(format!(
            "`{arch}.embedding_length` {hidden} is not divisible by `{arch}.attention.head_count` {heads}"
        ));
    }
    if !heads.is_multiple_of(kv_heads) {
        return Err(format!(
            "`{arch}.attention.head_count_kv` {kv_heads} does not divide `{arch}.attention.head_count` {heads}"
        ));
    }
    let head_dim = match key_length {
        Some(d) if quantized => d,
        _ => hidden / heads,
    };
    if quantized && !head_dim.is_multiple_of(2) {
        return Err(format!(
            "`{arch}.attention.head_count` {heads} gives heads {head_dim} wide; rotary embeddings need an even width"
        ));
    }
    if arch == "llama" {
        let rope = number("rope.dimension_count", limits::HEAD_DIM, true)?;
        if rope != Some(head_dim) {
            return Err(format!(
                "`llama.rope.dimension_count` is {rope:?}; llama.cpp's llama rotates whole heads of {head_dim}"
            ));
        }
        if let Some(v) = md.get("llama.expert_count")
            && v.to_u32().is_ok_and(|n| n > 1)
        {
            return Err(
                "`llama.expert_count` is over 1: mixture-of-experts GGUF files are not supported".into()
            );
        }
    }
    // llama3's rope scaling as llama.cpp's converter keeps it: one F32 factor per rotating
    // pair, which the engine's llama reads; no other architecture's model would.
    if let Some(info) = infos.get(super::read::ROPE_FACTORS) {
        let pairs = (head_dim / 2) as usize;
        if arch != "llama" {
            return Err(format!(
                "tensor `{}` (rope scaling factors) in a {arch} GGUF: the engine reads it for llama only",
                super::read::ROPE_FACTORS
            ));
        }
        if info.shape.dims() != [pairs] || info.ggml_dtype != GgmlDType::F32 {
            return Err(format!(
                "tensor `{}` is {:?} {:?}, not F32 [{pairs}] (one factor per rotating pair)",
                super::read::ROPE_FACTORS,
                info.ggml_dtype,
                info.shape.dims()
            ));
        }
    }
    // phi3's LongRoPE as llama.cpp's converter keeps it: F32 factors, long and short, one per
    // rotating pair; no other architecture's model would read them.
    let longrope = [super::ROPE_FACTORS_LONG, super::ROPE_FACTORS_SHORT].map(|n| infos.get(n));
    if longrope.iter().any(Option::is_some) {
        if arch != "phi3" {
            return Err(format!(
                "tensor `{}` (LongRoPE factors) in a {arch} GGUF: the engine reads it for phi3 only",
                if longrope[0].is_some() { super::ROPE_FACTORS_LONG } else { super::ROPE_FACTORS_SHORT }
            ));
        }
        let rotary = number("rope.dimension_count", limits::HEAD_DIM, false)?.unwrap_or(head_dim);
        let pairs = (rotary / 2) as usize;
        for (name, info) in [super::ROPE_FACTORS_LONG, super::ROPE_FACTORS_SHORT].into_iter().zip(longrope) {
            match info {
                None => return Err(format!("tensor `{name}` is missing; LongRoPE needs both factor lists")),
                Some(info) if info.shape.dims() != [pairs] || info.ggml_dtype != GgmlDType::F32 => {
                    return Err(format!(
                        "tensor `{name}` is {:?} {:?}, not F32 [{pairs}] (one factor per rotating pair of `phi3.rope.dimension_count`)",
                        info.ggml_dtype,
                        info.shape.dims()
                    ));
                }
                Some(_) => {}
            }
        }
    } else if arch == "phi3"
        && let Some(a) =
            md.get("phi3.rope.scaling.attn_factor").and_then(|v| v.to_f32().ok()).filter(|a| *a != 1.0)
    {
        return Err(format!(
            "`phi3.rope.scaling.attn_factor` is {a} without LongRoPE's factor tensors; the engine's phi3 scales an unscaled rope by nothing"
        ));
    }
    // An RMS norm's epsilon, or a layer norm's for the architectures that have layer norms.
    let eps_key = match md.get(&format!("{arch}.attention.layer_norm_epsilon")) {
        Some(_) if !quantized => "layer_norm_epsilon",
        _ => "layer_norm_rms_epsilon",
    };
    match md.get(&format!("{arch}.attention.{eps_key}")) {
        Some(Value::F32(e)) if e.is_finite() && *e >= 0.0 => {}
        Some(v) => {
            return Err(format!("`{arch}.attention.{eps_key}` is {v:?}, not a finite f32 ≥ 0"));
        }
        None => return Err(format!("`{arch}.attention.{eps_key}` is missing")),
    }
    if let Some(Value::F32(base)) = md.get(&format!("{arch}.rope.freq_base"))
        && !(base.is_finite() && *base > 0.0)
    {
        return Err(format!("`{arch}.rope.freq_base` is {base}, not a finite positive number"));
    }
    let shapes: BTreeMap<&str, Vec<u64>> =
        infos.iter().map(|(n, t)| (n.as_str(), t.shape.dims().iter().map(|&d| d as u64).collect())).collect();
    let embedding = shapes.get("token_embd.weight").ok_or("tensor `token_embd.weight` is missing")?;
    let vocab = match embedding.as_slice() {
        [rows, cols] if *cols == hidden => {
            limits::VOCAB.check(*rows).map_err(|why| format!("`token_embd.weight` has rows: {why}"))?
        }
        other => {
            return Err(format!(
                "tensor `token_embd.weight` has shape {other:?}, `{arch}.embedding_length` implies [vocabulary, {hidden}]"
            ));
        }
    };
    let ff = match ff {
        Some(ff) => ff,
        None => shapes.get("blk.0.ffn_gate.weight").and_then(|s| s.first().copied()).unwrap_or(0),
    };
    let kv = kv_heads * head_dim;
    let q = heads * head_dim;
    let mut expected: Vec<(String, Vec<u64>)> = vec![("output_norm.weight".into(), vec![hidden])];
    if shapes.contains_key("output.weight") {
        expected.push(("output.weight".into(), vec![vocab, hidden]));
    }
    for l in 0..layers {
        let p = format!("blk.{l}");
        expected.extend([
            (format!("{p}.attn_q.weight"), vec![q, hidden]),
            (format!("{p}.attn_k.weight"), vec![kv, hidden]),
            (format!("{p}.attn_v.weight"), vec![kv, hidden]),
            (format!("{p}.attn_output.weight"), vec![hidden, q]),
            (format!("{p}.ffn_gate.weight"), vec![ff, hidden]),
            (format!("{p}.ffn_up.weight"), vec![ff, hidden]),
            (format!("{p}.ffn_down.weight"), vec![hidden, ff]),
            (format!("{p}.attn_norm.weight"), vec![hidden]),
            (format!("{p}.ffn_norm.weight"), vec![hidden]),
        ]);
        if arch == "qwen2" {
            expected.extend([
                (format!("{p}.attn_q.bias"), vec![q]),
                (format!("{p}.attn_k.bias"), vec![kv]),
                (format!("{p}.attn_v.bias"), vec![kv]),
            ]);
        }
    }
    for (name, want) in expected.iter().filter(|_| quantized) {
        match shapes.get(name.as_str()) {
            None => return Err(format!("tensor `{name}` is missing (`{arch}.block_count` is {layers})")),
            Some(got) if got != want => {
                return Err(format!("tensor `{name}` has shape {got:?}, the metadata implies {want:?}"));
            }
            Some(_) => {}
        }
    }
    let weight_layers = shapes
        .keys()
        .filter_map(|n| n.strip_prefix("blk.")?.split('.').next()?.parse::<u64>().ok())
        .max()
        .map_or(0, |m| m.saturating_add(1));
    if weight_layers != layers {
        return Err(format!("`{arch}.block_count` is {layers}, the weights hold {weight_layers} layers"));
    }
    Ok(GgufModel { architecture: arch, context, vocab })
}

/// What a llama or qwen2 file states that candle's quantized models (a GPU session's) would
/// ignore, so the engine runs it in its float model instead: rope scaling (llama3's factors, or
/// keys) or a head width other than hidden / heads. `None` for any other file.
pub(crate) fn beyond_candles_quantized(content: &gguf_file::Content) -> Option<String> {
    let md = &content.metadata;
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok())?;
    if !matches!(arch.as_str(), "llama" | "qwen2") {
        return None;
    }
    if content.tensor_infos.contains_key(super::read::ROPE_FACTORS) {
        return Some(format!("tensor `{}` (llama3 rope scaling)", super::read::ROPE_FACTORS));
    }
    let int = |suffix: &str| md.get(&format!("{arch}.{suffix}")).and_then(|v| v.to_u32().ok());
    if let Some(kind) = super::rope::stated_scaling(md, arch) {
        return Some(format!("{kind} rope scaling in `{arch}.rope.scaling.*`"));
    }
    let derived = int("embedding_length").zip(int("attention.head_count")).map(|(h, n)| h / n.max(1));
    match int("attention.key_length") {
        Some(d) if Some(d) != derived => Some(format!("`{arch}.attention.key_length` {d}")),
        _ => None,
    }
}

/// Opens a GGUF file for candle: the pre-pass, candle's own read, then the model check. The
/// file is positioned for `Content::tensor`.
pub(crate) fn open(path: &Path) -> Result<(std::fs::File, gguf_file::Content, GgufModel), GgufError> {
    let (file, content) = read(path)?;
    let model = check_model(path, &content)?;
    Ok((file, content, model))
}

/// The pre-pass and candle's own read, without the model check: for G0, which compares the
/// metadata with config.json before it judges the tensors by that metadata.
pub(crate) fn read(path: &Path) -> Result<(std::fs::File, gguf_file::Content), GgufError> {
    layout(path)?;
    let mut file =
        std::fs::File::open(path).map_err(|source| GgufError::Read { path: path.to_path_buf(), source })?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|source| GgufError::Candle { path: path.to_path_buf(), source })?;
    Ok((file, content))
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
