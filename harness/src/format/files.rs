//! The files of a model as stored: which safetensors files a Hugging Face directory holds, and
//! their content hashes, remembered so a multi-gigabyte model is hashed once. Engines load from
//! these; conversions and certify name what they read by them.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub(crate) use crate::bounded::{read_bounded, read_bounded_bytes, read_side_file};

/// Why a model directory's safetensors files cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum ModelFilesError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The directory or its index says something impossible, in words.
    #[error("{}: {what}", path.display())]
    Layout { path: PathBuf, what: &'static str },
}

impl ModelFilesError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ModelFilesError::Read { path, .. }
            | ModelFilesError::Json { path, .. }
            | ModelFilesError::Layout { path, .. } => path,
        }
    }
}

impl From<ModelFilesError> for super::convert::ConvertError {
    fn from(e: ModelFilesError) -> Self {
        let cause = match &e {
            ModelFilesError::Read { source, .. } => source.to_string(),
            ModelFilesError::Json { source, .. } => format!("invalid JSON: {source}"),
            ModelFilesError::Layout { what, .. } => what.to_string(),
        };
        super::convert::ConvertError::Read { path: e.path().to_path_buf(), cause }
    }
}

fn layout(path: &Path, what: &'static str) -> ModelFilesError {
    ModelFilesError::Layout { path: path.to_path_buf(), what }
}

/// A model file a session was loaded from, with its content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards an
/// `model.safetensors.index.json` names.
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelFilesError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text =
            read_side_file(&index).map_err(|source| ModelFilesError::Read { path: index.clone(), source })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|source| ModelFilesError::Json { path: index.clone(), source })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| layout(&index, "no `weight_map` object"))?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(layout(&index, "`weight_map` names no file"));
        }
        for f in &files {
            if !f.is_file() {
                return Err(layout(f, "a shard named by the index is missing"));
            }
        }
        return Ok(files);
    }
    Err(layout(dir, "no model.safetensors or model.safetensors.index.json"))
}

/// Where file hashes are remembered: `$QUALIFY_CACHE_DIR/hashes`, default
/// `$CARGO_TARGET_DIR/qualify/cache/hashes` (`target/…`).
fn hash_cache_dir() -> PathBuf {
    crate::config::cache_dir().join("hashes")
}

/// Size and SHA-256 of a file. Hashes are remembered by path, size and modification time, so
/// the one-process-per-trial runs of nextest hash a multi-gigabyte model once, not per trial.
pub fn hash_file(path: &Path) -> std::io::Result<ModelFile> {
    hash_file_in(path, &hash_cache_dir())
}

/// As [`hash_file`], remembering hashes in `hashes` (a tool that resolved `QUALIFY_CACHE_DIR`
/// against another directory than its own working directory passes `<cache>/hashes`).
pub fn hash_file_in(path: &Path, hashes: &Path) -> std::io::Result<ModelFile> {
    let meta = std::fs::metadata(path)?;
    let modified = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = hex::encode(Sha256::digest(format!("{}\0{}\0{modified}", canonical.display(), meta.len())));
    let entry = hashes.join(key);
    if let Ok(known) = std::fs::read_to_string(&entry)
        && known.len() == 64
        && known.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(ModelFile { path: path.to_path_buf(), bytes: meta.len(), sha256: known });
    }
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    let sha256 = hex::encode(hasher.finalize());
    // Best effort, written whole and renamed into place: a missing entry only costs a re-hash.
    if std::fs::create_dir_all(entry.parent().unwrap_or(Path::new("."))).is_ok() {
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &sha256).is_ok() {
            let _ = std::fs::rename(&tmp, &entry);
        }
    }
    Ok(ModelFile { path: path.to_path_buf(), bytes, sha256 })
}
