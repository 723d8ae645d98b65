//! The header of a safetensors file, read and checked without reading or mapping the data: the
//! header length against the file, each tensor's dtype, a shape whose element count is bounded
//! and computed with checked arithmetic, and data offsets that tile the data section exactly.
//! The engine reads this before candle maps the file, so every tensor it then asks for is one
//! whose bytes are there.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use super::limits;

/// The longest header read: the safetensors crate's own limit.
pub(crate) const MAX_HEADER: u64 = 100_000_000;

/// One tensor as the header declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorEntry {
    pub(crate) dtype: Dtype,
    /// Outermost dimension first.
    pub(crate) shape: Vec<usize>,
}

/// Why a safetensors header cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("failed to read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The header says something impossible; `what` names the part.
    #[error("{} is not a valid safetensors file: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

/// The tensors the header of `path` declares, by name.
pub(crate) fn read_header(path: &Path) -> Result<BTreeMap<String, TensorEntry>, HeaderError> {
    let io = |source| HeaderError::Read { path: path.to_path_buf(), source };
    let invalid = |what: String| HeaderError::Invalid { path: path.to_path_buf(), what };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.seek(SeekFrom::End(0)).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    if file_len < 8 {
        return Err(invalid(format!("the file is {file_len} bytes, shorter than the 8-byte header length")));
    }
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > file_len - 8 {
        return Err(invalid(format!(
            "the header length {n} (bytes 0..8) passes the {} bytes after it or the {MAX_HEADER}-byte limit",
            file_len - 8
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    parse(&header, file_len - 8 - n).map_err(invalid)
}

/// The shape of every tensor in a model's safetensors files, by name: each header checked, each
/// tensor a float weight (F32, F16, BF16) named in one file only.
pub(crate) fn weight_shapes(files: &[PathBuf]) -> Result<BTreeMap<String, Vec<usize>>, HeaderError> {
    let mut shapes = BTreeMap::new();
    for file in files {
        let invalid = |what: String| HeaderError::Invalid { path: file.clone(), what };
        for (name, entry) in read_header(file)? {
            if !matches!(entry.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(invalid(format!(
                    "tensor `{name}` has dtype {:?}; weights must be F32, F16 or BF16",
                    entry.dtype
                )));
            }
            if shapes.insert(name.clone(), entry.shape).is_some() {
                return Err(invalid(format!("tensor `{name}` is in more than one file")));
            }
        }
    }
    Ok(shapes)
}

/// The entries of a header whose data section is `data_len` bytes.
fn parse(header: &[u8], data_len: u64) -> Result<BTreeMap<String, TensorEntry>, String> {
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("the header is not a JSON object: {e}"))?;
    if json.len() as u64 > limits::MAX_TENSORS + 1 {
        return Err(format!(
            "the header declares {} tensors, more than the {} a file may hold",
            json.len(),
            limits::MAX_TENSORS
        ));
    }
    let mut entries = BTreeMap::new();
    let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(json.len());
    for (name, info) in &json {
        if name == "__metadata__" {
            continue;
        }
        let bad = |why: String| format!("tensor `{name}` {why}");
        let dtype: Dtype =
            info.get("dtype").cloned().and_then(|d| serde_json::from_value(d).ok()).ok_or_else(|| {
                bad(format!("has no known dtype ({})", info.get("dtype").unwrap_or(&serde_json::Value::Null)))
            })?;
        let dims: Vec<u64> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(serde_json::Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad("has no shape of non-negative integers".into()))?;
        let offsets = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(serde_json::Value::as_u64).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("has no data_offsets [start, end]".into()))?;
        let (start, end) = (offsets[0], offsets[1]);
        let elements = limits::elements(&dims).ok_or_else(|| {
            bad(format!("has shape {dims:?}, over {} elements or overflowing", limits::MAX_TENSOR_ELEMENTS))
        })?;
        let bits = elements.checked_mul(dtype.bitsize() as u64).filter(|b| b % 8 == 0);
        let bytes = bits
            .map(|b| b / 8)
            .ok_or_else(|| bad(format!("has shape {dims:?}, not whole bytes of {dtype:?}")))?;
        if start > end || end > data_len || end - start != bytes {
            return Err(bad(format!(
                "has data_offsets [{start}, {end}], but {dtype:?} {dims:?} takes {bytes} bytes of the {data_len}-byte data section"
            )));
        }
        let shape = dims.iter().map(|&d| d as usize).collect();
        entries.insert(name.clone(), TensorEntry { dtype, shape });
        ranges.push((start, end, name));
    }
    // The data section is the tensors, back to back: a gap or an overlap is a changed shape or
    // a moved offset.
    ranges.sort_unstable();
    let mut at = 0u64;
    for (start, end, name) in &ranges {
        if *start != at {
            return Err(format!(
                "tensor `{name}` starts at data byte {start}, expected {at} (tensors overlap or leave a gap)"
            ));
        }
        at = *end;
    }
    if at != data_len {
        return Err(format!("the tensors end at data byte {at}, the data section is {data_len} bytes"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out
    }

    fn check(file: &[u8], want: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, file).unwrap();
        match read_header(&path) {
            Ok(e) if want.is_empty() => assert_eq!(e.len(), 1),
            Ok(e) => panic!("{e:?} read, expected `{want}`"),
            Err(e) => assert!(!want.is_empty() && e.to_string().contains(want), "`{e}` lacks `{want}`"),
        }
    }

    #[test]
    fn headers_are_checked_before_any_data_is_read() {
        let mut clean = header(r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#);
        clean.extend_from_slice(&[0u8; 16]);
        check(&clean, "");
        check(&clean[..clean.len() - 1], "takes 16 bytes of the 15-byte data section");
        check(&[1, 2, 3], "shorter than the 8-byte header length");
        let mut huge = clean.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        check(&huge, "the header length 18446744073709551615");
        let mut overflow =
            header(r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#);
        overflow.extend_from_slice(&[0u8; 16]);
        check(&overflow, "over 17179869184 elements or overflowing");
        let mut reshaped = header(r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#);
        reshaped.extend_from_slice(&[0u8; 16]);
        check(&reshaped, "tensor `w` has data_offsets [0, 16], but F32 [2, 3] takes 24 bytes");
        let mut dtype = header(r#"{"w":{"dtype":"Q9","shape":[4],"data_offsets":[0,16]}}"#);
        dtype.extend_from_slice(&[0u8; 16]);
        check(&dtype, "tensor `w` has no known dtype (\"Q9\")");
    }
}
