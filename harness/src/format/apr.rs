//! APR v2, the original project's model container (`shared/reference/apr-format.md`, where the
//! code of the format is the authority): a 64-byte header with its own CRC32, JSON metadata, a
//! tensor index sorted by name, tensor data aligned to 64 bytes, and a CRC32 footer over the
//! whole file. Reading checks every offset against the file before touching data, so a corrupt
//! file is a precise error, never a panic or an out-of-bounds read.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

pub const MAGIC: [u8; 4] = *b"APR\0";
/// Earlier magic of the same v2 layout, still read.
pub const MAGIC_LEGACY: [u8; 4] = *b"APR2";
pub const HEADER_LEN: usize = 64;
pub const ALIGN: usize = 64;
pub const MAX_METADATA: usize = 16 << 20;
pub const MAX_NAME: usize = 256;
pub const MAX_DIMS: usize = 8;

/// Header flags (`AprV2Flags`).
pub mod flags {
    pub const LZ4_COMPRESSED: u16 = 0x0001;
    pub const ZSTD_COMPRESSED: u16 = 0x0002;
    pub const ENCRYPTED: u16 = 0x0004;
    pub const QUANTIZED: u16 = 0x0020;
    pub const HAS_VOCAB: u16 = 0x0200;
    pub const LAYOUT_ROW_MAJOR: u16 = 0x0400;
    pub const LAYOUT_COLUMN_MAJOR: u16 = 0x0800;
}

/// The dtype byte of an index entry (ids below 32 follow GGML's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AprDType {
    F32,
    F16,
    Bf16,
    /// Raw GGML Q4_K super-blocks: 256 elements in 144 bytes.
    Q4K,
    /// Raw GGML Q6_K super-blocks: 256 elements in 210 bytes.
    Q6K,
    /// APR's 4-bit blocks: 32 elements in 18 bytes (f16 scale, 16 bytes of nibbles).
    AprQ4,
    /// APR's 8-bit: one f32 scale for the tensor, then one i8 per element.
    AprQ8,
}

impl AprDType {
    pub fn code(self) -> u8 {
        match self {
            AprDType::F32 => 0,
            AprDType::F16 => 1,
            AprDType::Bf16 => 30,
            AprDType::Q4K => 12,
            AprDType::Q6K => 14,
            AprDType::AprQ4 => 128,
            AprDType::AprQ8 => 129,
        }
    }

    /// The dtype of a code; 8 and 9 are the pre-GH-438 spellings of APR's Q4 and Q8.
    pub fn from_code(code: u8) -> Option<AprDType> {
        Some(match code {
            0 => AprDType::F32,
            1 => AprDType::F16,
            30 => AprDType::Bf16,
            12 => AprDType::Q4K,
            14 => AprDType::Q6K,
            128 | 8 => AprDType::AprQ4,
            129 | 9 => AprDType::AprQ8,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AprDType::F32 => "F32",
            AprDType::F16 => "F16",
            AprDType::Bf16 => "BF16",
            AprDType::Q4K => "Q4_K",
            AprDType::Q6K => "Q6_K",
            AprDType::AprQ4 => "APR Q4",
            AprDType::AprQ8 => "APR Q8",
        }
    }

    /// Bytes that `shape` takes in this dtype; K-quants are stored row by row.
    pub fn byte_len(self, shape: &[u64]) -> Option<u64> {
        let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        let k_rows = |block: u64| {
            let (rows, cols) = match shape {
                [] => (1, 1),
                [c] => (1, *c),
                [r @ .., c] => (r.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?, *c),
            };
            rows.checked_mul(cols.div_ceil(256))?.checked_mul(block)
        };
        match self {
            AprDType::F32 => n.checked_mul(4),
            AprDType::F16 | AprDType::Bf16 => n.checked_mul(2),
            AprDType::Q4K => k_rows(144),
            AprDType::Q6K => k_rows(210),
            AprDType::AprQ4 => n.div_ceil(32).checked_mul(18),
            AprDType::AprQ8 => n.checked_add(4),
        }
    }
}

/// One tensor: its name, dtype, row-major shape (outermost first) and bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct AprTensor {
    pub name: String,
    pub dtype: AprDType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// A whole APR v2 file.
#[derive(Debug, Clone, PartialEq)]
pub struct AprFile {
    pub flags: u16,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Sorted by name on write.
    pub tensors: Vec<AprTensor>,
}

/// Why a file is not a readable APR v2 container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AprError {
    #[error("not an APR file: {0}")]
    NotApr(String),
    #[error("unsupported APR file: {0}")]
    Unsupported(String),
    #[error(
        "the header checksum does not match (stored {stored:#010x}, computed {computed:#010x}): the header is corrupt"
    )]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error(
        "the file checksum does not match (stored {stored:#010x}, computed {computed:#010x}): the file is corrupt or truncated"
    )]
    FileChecksum { stored: u32, computed: u32 },
    #[error(
        "{what} [{start}, {end}) lies outside the {len}-byte file: the file is truncated or its header is corrupt"
    )]
    OutOfBounds { what: String, start: u64, end: u64, len: u64 },
    #[error("invalid metadata: {0}")]
    Metadata(String),
    #[error("invalid tensor index entry {index}: {why}")]
    Index { index: usize, why: String },
    #[error("tensor `{name}`: {why}")]
    Tensor { name: String, why: String },
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn header_crc(header: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..40]);
    h.update(&header[44..64]);
    h.finalize()
}

/// `bytes` with both checksums (header and footer) made good for what they now hold, so a
/// planted defect or a fuzzed mutation reaches the checks behind them. Shorter than a header
/// and a footer, the bytes are returned as they are.
pub fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() < 68 {
        return bytes;
    }
    let header = header_crc(&bytes[..64]);
    bytes[40..44].copy_from_slice(&header.to_le_bytes());
    let body = bytes.len() - 4;
    let footer = crc32(&bytes[..body]);
    bytes[body..].copy_from_slice(&footer.to_le_bytes());
    bytes
}

/// The file's bytes. Tensors are written sorted by name, each padded to 64 bytes.
pub fn write(file: &AprFile) -> Result<Vec<u8>, AprError> {
    let mut tensors: Vec<&AprTensor> = file.tensors.iter().collect();
    tensors.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    for pair in tensors.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(AprError::Tensor { name: pair[0].name.clone(), why: "appears twice".into() });
        }
    }
    for t in &tensors {
        let want = t.dtype.byte_len(&t.shape);
        if want != Some(t.data.len() as u64) || t.name.len() > MAX_NAME || t.shape.len() > MAX_DIMS {
            return Err(AprError::Tensor {
                name: t.name.clone(),
                why: format!(
                    "{} bytes for {} {:?} (expected {want:?}; names ≤ {MAX_NAME} bytes, ≤ {MAX_DIMS} dims)",
                    t.data.len(),
                    t.dtype.name(),
                    t.shape
                ),
            });
        }
    }
    let metadata = serde_json::to_vec(&file.metadata).map_err(|e| AprError::Metadata(e.to_string()))?;
    if metadata.len() > MAX_METADATA {
        return Err(AprError::Metadata(format!("{} bytes is over the 16 MiB limit", metadata.len())));
    }
    let mut index = Vec::new();
    let mut offset = 0u64;
    for t in &tensors {
        index.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
        index.extend_from_slice(t.name.as_bytes());
        index.push(t.dtype.code());
        index.push(t.shape.len() as u8);
        for d in &t.shape {
            index.extend_from_slice(&d.to_le_bytes());
        }
        index.extend_from_slice(&offset.to_le_bytes());
        index.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
        offset += align(t.data.len()) as u64;
    }
    let index_offset = HEADER_LEN + align(metadata.len());
    let data_offset = index_offset + align(index.len());

    let mut out = vec![0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = 2;
    out[5] = 0;
    out[6..8].copy_from_slice(&file.flags.to_le_bytes());
    out[8..12].copy_from_slice(&(tensors.len() as u32).to_le_bytes());
    out[12..20].copy_from_slice(&(HEADER_LEN as u64).to_le_bytes());
    out[20..24].copy_from_slice(&(metadata.len() as u32).to_le_bytes());
    out[24..32].copy_from_slice(&(index_offset as u64).to_le_bytes());
    out[32..40].copy_from_slice(&(data_offset as u64).to_le_bytes());
    let crc = header_crc(&out);
    out[40..44].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&metadata);
    out.resize(index_offset, 0);
    out.extend_from_slice(&index);
    out.resize(data_offset, 0);
    for t in &tensors {
        out.extend_from_slice(&t.data);
        out.resize(align(out.len() - data_offset) + data_offset, 0);
    }
    let footer = crc32(&out);
    out.extend_from_slice(&footer.to_le_bytes());
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A byte range of the file, checked before it is read.
fn range(
    what: impl Into<String>,
    start: u64,
    len: u64,
    file_len: usize,
) -> Result<std::ops::Range<usize>, AprError> {
    let end = start.checked_add(len);
    match end {
        Some(end) if end <= file_len as u64 => Ok(start as usize..end as usize),
        _ => Err(AprError::OutOfBounds {
            what: what.into(),
            start,
            end: end.unwrap_or(u64::MAX),
            len: file_len as u64,
        }),
    }
}

/// One tensor of a file as its index describes it: where its bytes lie in the file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AprEntry {
    pub name: String,
    pub dtype: AprDType,
    /// Row-major, outermost first.
    pub shape: Vec<u64>,
    /// The tensor's bytes in the file (64-aligned, whole for its dtype and shape).
    pub bytes: std::ops::Range<usize>,
}

/// A file's header, metadata and tensor index, checked, with every tensor left where it lies.
#[derive(Debug, Clone, PartialEq)]
pub struct AprIndex {
    pub flags: u16,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Sorted by name, as the file holds them.
    pub entries: Vec<AprEntry>,
}

/// Parses and checks a whole file: magic, version, flags, both checksums, every bound, the
/// index order, alignment and each tensor's size for its dtype and shape. The tensors are
/// copied out; [`index`] leaves them in `bytes` (a mapped file, read in place).
pub fn read(bytes: &[u8]) -> Result<AprFile, AprError> {
    let AprIndex { flags, metadata, entries } = index(bytes)?;
    let tensors = entries
        .into_iter()
        .map(|e| AprTensor { data: bytes[e.bytes].to_vec(), name: e.name, dtype: e.dtype, shape: e.shape })
        .collect();
    Ok(AprFile { flags, metadata, tensors })
}

/// Every check of [`read`], without copying a tensor: where each one lies in `bytes`.
pub fn index(bytes: &[u8]) -> Result<AprIndex, AprError> {
    if bytes.len() < 3 || &bytes[..3] != b"APR" {
        let shown: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(AprError::NotApr(format!("the magic is [{}], not `APR\\0`", shown.join(" "))));
    }
    match bytes.get(3) {
        Some(0) | Some(b'2') => {}
        Some(b'N') => {
            return Err(AprError::Unsupported(
                "APR v1 (`APRN`) holds classical ML models, not LLM weights".into(),
            ));
        }
        Some(b'1') => {
            return Err(AprError::Unsupported("whisper APR v1 (`APR1`); convert it to APR v2".into()));
        }
        other => return Err(AprError::NotApr(format!("unknown APR variant byte {other:?}"))),
    }
    if bytes.len() < HEADER_LEN + 4 {
        return Err(AprError::OutOfBounds {
            what: "the header and footer".into(),
            start: 0,
            end: (HEADER_LEN + 4) as u64,
            len: bytes.len() as u64,
        });
    }
    let header = &bytes[..HEADER_LEN];
    if header[4] != 2 {
        return Err(AprError::Unsupported(format!(
            "version {}.{}; this reader knows 2.x",
            header[4], header[5]
        )));
    }
    let stored = u32_at(header, 40);
    let computed = header_crc(header);
    if stored != computed {
        return Err(AprError::HeaderChecksum { stored, computed });
    }
    let body_len = bytes.len() - 4;
    let stored = u32_at(bytes, body_len);
    let computed = crc32(&bytes[..body_len]);
    if stored != computed {
        return Err(AprError::FileChecksum { stored, computed });
    }
    let flags = u16_at(header, 6);
    if flags & flags::LAYOUT_COLUMN_MAJOR != 0 {
        return Err(AprError::Unsupported("column-major layout (flag 0x0800) is forbidden".into()));
    }
    if flags & (flags::LZ4_COMPRESSED | flags::ZSTD_COMPRESSED | flags::ENCRYPTED) != 0 {
        return Err(AprError::Unsupported(format!(
            "flags {flags:#06x}: compressed or encrypted payloads are not read"
        )));
    }
    let count = u32_at(header, 8) as usize;
    if count as u64 > crate::format::limits::MAX_TENSORS {
        return Err(AprError::Index {
            index: 0,
            why: format!(
                "the header counts {count} tensors, more than the {} a file may hold",
                crate::format::limits::MAX_TENSORS
            ),
        });
    }
    let meta_offset = u64_at(header, 12);
    let meta_len = u32_at(header, 20) as u64;
    let index_offset = u64_at(header, 24);
    let data_offset = u64_at(header, 32);
    if meta_len as usize > MAX_METADATA {
        return Err(AprError::Metadata(format!("{meta_len} bytes is over the 16 MiB limit")));
    }
    let meta = &bytes[range("the metadata", meta_offset, meta_len, body_len)?];
    let metadata: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(meta).map_err(|e| AprError::Metadata(format!("not a JSON object: {e}")))?;
    if data_offset < index_offset || !data_offset.is_multiple_of(ALIGN as u64) {
        return Err(AprError::Index {
            index: 0,
            why: format!("data offset {data_offset} is before the index or not 64-aligned"),
        });
    }
    let index = &bytes[range("the tensor index", index_offset, data_offset - index_offset, body_len)?];

    let mut entries = Vec::with_capacity(count.min(1 << 16));
    let mut at = 0usize;
    for i in 0..count {
        let need = |at: usize, n: usize| -> Result<(), AprError> {
            if at.checked_add(n).is_none_or(|end| end > index.len()) {
                Err(AprError::Index { index: i, why: "runs past the end of the index".into() })
            } else {
                Ok(())
            }
        };
        need(at, 2)?;
        let name_len = u16_at(index, at) as usize;
        at += 2;
        if name_len == 0 {
            return Err(AprError::Index {
                index: i,
                why: format!("the name is empty: the header counts {count} tensors, is the index shorter?"),
            });
        }
        need(at, name_len + 2)?;
        let name = std::str::from_utf8(&index[at..at + name_len])
            .map_err(|_| AprError::Index { index: i, why: "the name is not UTF-8".into() })?
            .to_string();
        at += name_len;
        let code = index[at];
        let ndim = index[at + 1] as usize;
        at += 2;
        let dtype = AprDType::from_code(code).ok_or_else(|| AprError::Tensor {
            name: name.clone(),
            why: format!("unsupported dtype code {code}"),
        })?;
        if ndim > MAX_DIMS {
            return Err(AprError::Tensor { name, why: format!("{ndim} dimensions (at most {MAX_DIMS})") });
        }
        need(at, 8 * ndim + 16)?;
        let shape: Vec<u64> = (0..ndim).map(|k| u64_at(index, at + 8 * k)).collect();
        at += 8 * ndim;
        let offset = u64_at(index, at);
        let size = u64_at(index, at + 8);
        at += 16;
        if !offset.is_multiple_of(ALIGN as u64) {
            return Err(AprError::Tensor { name, why: format!("data offset {offset} is not 64-aligned") });
        }
        // An empty tensor is never a weight, and candle aborts on the empty buffer of a
        // K-quant; a bounded element count keeps dequantization's allocation in proportion.
        if shape.contains(&0) || crate::format::limits::elements(&shape).is_none() {
            return Err(AprError::Tensor {
                name,
                why: format!(
                    "shape {shape:?} has a zero dimension, or over {} elements",
                    crate::format::limits::MAX_TENSOR_ELEMENTS
                ),
            });
        }
        let expected = dtype.byte_len(&shape);
        if expected != Some(size) {
            return Err(AprError::Tensor {
                name,
                why: format!("{size} bytes for {} {shape:?}, expected {expected:?}", dtype.name()),
            });
        }
        let start = data_offset.saturating_add(offset);
        let data = range(format!("tensor `{name}`"), start, size, body_len)?;
        if let Some(prev) = entries.last().map(|e: &AprEntry| e.name.as_str())
            && prev.as_bytes() >= name.as_bytes()
        {
            return Err(AprError::Index {
                index: i,
                why: format!("`{name}` after `{prev}`: the index is not sorted by name"),
            });
        }
        entries.push(AprEntry { name, dtype, shape, bytes: data });
    }
    Ok(AprIndex { flags, metadata, entries })
}

/// APR Q8: one scale for the tensor (max|x|/127), values rounded and clamped to ±127.
pub fn quantize_q8(values: &[f32]) -> Vec<u8> {
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max == 0.0 { 1.0 } else { max / 127.0 };
    let mut out = scale.to_le_bytes().to_vec();
    out.extend(values.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8));
    out
}

/// APR Q4: blocks of 32 with an f16 scale (max|x|/7) and nibbles holding q + 8, q in −8..=7.
pub fn quantize_q4(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len().div_ceil(32) * 18);
    for block in values.chunks(32) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max == 0.0 { 1.0 } else { max / 7.0 };
        let scale = half::f16::from_f32(scale);
        let s = scale.to_f32();
        out.extend_from_slice(&scale.to_le_bytes());
        let mut packed = [0u8; 16];
        for (i, v) in block.iter().enumerate() {
            let q = ((v / s).round().clamp(-8.0, 7.0) as i8 + 8) as u8;
            packed[i / 2] |= if i % 2 == 0 { q } else { q << 4 };
        }
        out.extend_from_slice(&packed);
    }
    out
}

fn finite_scale(s: f32) -> f32 {
    if s.is_normal() { s } else { 0.0 }
}

/// The tensor's values as f32, whatever its dtype.
pub fn dequantize(t: &AprTensor) -> Result<Vec<f32>, AprError> {
    dequantize_bytes(&t.name, t.dtype, &t.shape, &t.data)
}

/// The values of tensor `name` (`dtype`, `shape`) held in `data`, as f32.
pub fn dequantize_bytes(
    name: &str,
    dtype: AprDType,
    shape: &[u64],
    data: &[u8],
) -> Result<Vec<f32>, AprError> {
    let bad = |why: String| AprError::Tensor { name: name.to_string(), why };
    // A tensor made by hand rather than read has had none of `read`'s checks.
    let n = crate::format::limits::elements(shape)
        .filter(|&n| n > 0 && dtype.byte_len(shape) == Some(data.len() as u64))
        .ok_or_else(|| bad(format!("{} bytes do not hold {} {:?}", data.len(), dtype.name(), shape)))?
        as usize;
    Ok(match dtype {
        AprDType::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
        AprDType::F16 => {
            data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        AprDType::Bf16 => {
            data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        AprDType::AprQ8 => {
            let scale = finite_scale(f32::from_le_bytes(data[..4].try_into().expect("4")));
            data[4..].iter().map(|&q| q as i8 as f32 * scale).collect()
        }
        AprDType::AprQ4 => {
            let mut out = Vec::with_capacity(n);
            for block in data.chunks_exact(18) {
                let scale = finite_scale(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
                for i in 0..32 {
                    let byte = block[2 + i / 2];
                    let q = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    out.push((q as f32 - 8.0) * scale);
                }
            }
            out.truncate(n);
            out
        }
        AprDType::Q4K | AprDType::Q6K => {
            let ggml = if dtype == AprDType::Q4K { GgmlDType::Q4K } else { GgmlDType::Q6K };
            let cols = *shape.last().unwrap_or(&1) as usize;
            if !cols.is_multiple_of(256) {
                return Err(bad(format!("{} rows of {cols} are not whole 256-element blocks", dtype.name())));
            }
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(ggml, data, dims, &Device::Cpu)
                .map_err(|e| bad(e.to_string()))?;
            let f = q.dequantize(&Device::Cpu).map_err(|e| bad(e.to_string()))?;
            f.flatten_all().and_then(|f| f.to_vec1::<f32>()).map_err(|e| bad(e.to_string()))?
        }
    })
}

/// Why [`quantize_k`] made no K-quant.
#[derive(Debug, thiserror::Error)]
pub enum KQuantError {
    #[error("{0} is not a K-quant")]
    NotAKQuant(&'static str),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// An f32 tensor quantized to a K-quant through candle's GGML kernels (rows of 256).
pub fn quantize_k(values: &[f32], shape: &[u64], dtype: AprDType) -> Result<Vec<u8>, KQuantError> {
    let ggml = match dtype {
        AprDType::Q4K => GgmlDType::Q4K,
        AprDType::Q6K => GgmlDType::Q6K,
        other => return Err(KQuantError::NotAKQuant(other.name())),
    };
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let t = Tensor::from_slice(values, dims, &Device::Cpu)?;
    let q = candle_core::quantized::QTensor::quantize(&t, ggml)?;
    Ok(q.data()?.into_owned())
}
