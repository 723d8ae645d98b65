//! Conversion from the ground truth (a Hugging Face safetensors directory) to derived formats,
//! and the artifact cache: each artifact is made once per content hash of its sources and
//! settings, under `QUALIFY_CACHE_DIR/converted/`, safely when several processes ask at once.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::apr::{self, AprDType, AprFile, AprTensor};
use crate::matrix::Format;

/// Metadata keys under which an APR file written here carries the Hugging Face files it needs
/// to run without its source directory.
pub const HF_CONFIG: &str = "hf.config";
pub const HF_TOKENIZER: &str = "hf.tokenizer";
pub const HF_TOKENIZER_CONFIG: &str = "hf.tokenizer_config";
pub const HF_GENERATION_CONFIG: &str = "hf.generation_config";

/// Bumped whenever a converter's output changes, so cached artifacts are remade.
const CONVERTER_VERSION: &str = "6";

/// A conversion that could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("failed to read {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("failed to write {path}: {cause}")]
    Write { path: PathBuf, cause: String },
    #[error("tensor `{name}` has dtype {dtype}, which {format} cannot hold; nothing is converted silently")]
    Dtype { name: String, dtype: String, format: &'static str },
    #[error("{0} cannot be made by conversion yet")]
    Unsupported(String),
    #[error(transparent)]
    Apr(#[from] apr::AprError),
    #[error("{0} cannot be made by conversion yet")]
    Mix(#[from] super::gguf::UnimplementedMix),
}

fn read_err(path: &Path) -> impl Fn(String) -> ConvertError + '_ {
    move |cause| ConvertError::Read { path: path.to_path_buf(), cause }
}

/// A JSON file of the model (config, tokenizer and its config, generation config), bounded as
/// tokenizer.json is, the largest of them.
fn json_file(path: &Path) -> Result<Option<serde_json::Value>, ConvertError> {
    match crate::format::files::read_bounded(path, crate::format::tokenizer_json::MAX_BYTES) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| read_err(path)(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_err(path)(e.to_string())),
    }
}

/// A safetensors model directory as one APR v2 file: every tensor in its own dtype (F32, F16 or
/// BF16 pass through byte for byte), the typed config fields of the format, and the config,
/// tokenizer, tokenizer config and generation config embedded so the file runs on its own.
pub fn safetensors_to_apr(dir: &Path) -> Result<AprFile, ConvertError> {
    let config_path = dir.join("config.json");
    let config = json_file(&config_path)?.ok_or_else(|| read_err(&config_path)("missing".into()))?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = json_file(&tokenizer_path)?.ok_or_else(|| read_err(&tokenizer_path)("missing".into()))?;
    let tokenizer_config = json_file(&dir.join("tokenizer_config.json"))?;
    let generation_config = json_file(&dir.join("generation_config.json"))?;

    let files = super::files::safetensors_files(dir)?;
    let mut tensors = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| read_err(file)(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| read_err(file)(e.to_string()))?;
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => AprDType::F32,
                safetensors::Dtype::F16 => AprDType::F16,
                safetensors::Dtype::BF16 => AprDType::Bf16,
                other => {
                    return Err(ConvertError::Dtype { name, dtype: format!("{other:?}"), format: "APR" });
                }
            };
            tensors.push(AprTensor {
                name,
                dtype,
                shape: view.shape().iter().map(|&d| d as u64).collect(),
                data: view.data().to_vec(),
            });
        }
    }
    Ok(apr_file(HfFiles { config, tokenizer, tokenizer_config, generation_config }, tensors, "safetensors"))
}

/// The Hugging Face files a model carries besides its tensors.
pub struct HfFiles {
    pub config: serde_json::Value,
    pub tokenizer: serde_json::Value,
    pub tokenizer_config: Option<serde_json::Value>,
    pub generation_config: Option<serde_json::Value>,
}

/// An APR file of `tensors` with the format's typed config fields and the Hugging Face files
/// embedded so it runs on its own.
pub fn apr_file(hf: HfFiles, mut tensors: Vec<AprTensor>, original_format: &str) -> AprFile {
    let HfFiles { config, tokenizer, tokenizer_config, generation_config } = hf;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let param_count: u64 = tensors.iter().map(|t| t.shape.iter().product::<u64>()).sum();
    let total_size: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();

    let get = |k: &str| config.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let mut metadata = serde_json::Map::new();
    let model_type = get("model_type");
    metadata.insert("model_type".into(), model_type.clone());
    metadata.insert("total_size".into(), total_size.into());
    metadata.insert("param_count".into(), param_count.into());
    for k in ["license", "data_source", "data_license"] {
        metadata.insert(k.into(), serde_json::Value::Null);
    }
    metadata.insert("original_format".into(), original_format.into());
    metadata.insert("architecture".into(), model_type);
    for (apr_key, hf_key) in [
        ("hidden_size", "hidden_size"),
        ("num_layers", "num_hidden_layers"),
        ("num_heads", "num_attention_heads"),
        ("num_kv_heads", "num_key_value_heads"),
        ("vocab_size", "vocab_size"),
        ("intermediate_size", "intermediate_size"),
        ("max_position_embeddings", "max_position_embeddings"),
        ("rms_norm_eps", "rms_norm_eps"),
    ] {
        if let Some(v) = config.get(hf_key) {
            metadata.insert(apr_key.into(), v.clone());
        }
    }
    // Either of transformers' spellings of the rope base (5.x: `rope_parameters`); a config the
    // engine would refuse is refused when the APR file is loaded, which reads the embedded one.
    let states_rope = ["rope_theta", "rope_parameters"].iter().any(|k| config.get(*k).is_some());
    if let Ok(rope) = crate::format::hf_config::rope(std::path::Path::new("config.json"), &config)
        && states_rope
    {
        metadata.insert("rope_theta".into(), rope.theta.into());
    }
    if let Some(t) = tokenizer_config.as_ref().and_then(|c| c.get("chat_template")).filter(|t| t.is_string())
    {
        metadata.insert("chat_template".into(), t.clone());
    }
    metadata.insert(HF_CONFIG.into(), config);
    metadata.insert(HF_TOKENIZER.into(), tokenizer);
    if let Some(c) = tokenizer_config {
        metadata.insert(HF_TOKENIZER_CONFIG.into(), c);
    }
    if let Some(c) = generation_config {
        metadata.insert(HF_GENERATION_CONFIG.into(), c);
    }
    AprFile { flags: apr::flags::LAYOUT_ROW_MAJOR | apr::flags::HAS_VOCAB, metadata, tensors }
}

/// The folder of the cache that holds converted artifacts.
pub const CONVERTED: &str = "converted";

fn extension(format: Format) -> Option<&'static str> {
    match format {
        Format::Safetensors => None,
        Format::Apr => Some("apr"),
        Format::Gguf(_) => Some("gguf"),
    }
}

/// The name of the artifact of `format` made from the safetensors model in `source`, relative to
/// the cache: `converted/<key>.<ext>`, the key a SHA-256 over the converter version, the format
/// and the name and SHA-256 of each source file. It depends on content only, so it names the
/// artifact on every machine, whether or not it was ever made there. `None` for safetensors,
/// which is the source itself. Source hashes are remembered under `<cache>/hashes`.
pub fn artifact_name(source: &Path, format: Format, cache: &Path) -> Result<Option<PathBuf>, ConvertError> {
    let key = artifact_key(source, format, cache)?;
    Ok(key.map(|(key, ext)| Path::new(CONVERTED).join(format!("{key}.{ext}"))))
}

/// An artifact's key and extension (see [`artifact_name`]).
fn artifact_key(
    source: &Path,
    format: Format,
    cache: &Path,
) -> Result<Option<(String, &'static str)>, ConvertError> {
    let Some(ext) = extension(format) else { return Ok(None) };
    let mut hasher = Sha256::new();
    hasher.update(format!("modelqa-convert {CONVERTER_VERSION} {format}\n"));
    let mut inputs = super::files::safetensors_files(source)?;
    // The GGUF writer reads a Gemma's SentencePiece tokenizer.model as llama.cpp's converter does.
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "tokenizer.model",
    ] {
        let p = source.join(name);
        if p.is_file() {
            inputs.push(p);
        }
    }
    let hashes = cache.join("hashes");
    for input in &inputs {
        let hashed =
            super::files::hash_file_in(input, &hashes).map_err(|e| read_err(input)(e.to_string()))?;
        hasher.update(format!(
            "{} {}\n",
            input.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            hashed.sha256
        ));
    }
    Ok(Some((hex::encode(hasher.finalize()), ext)))
}

/// Whether `path` has the shape of a converted artifact, wherever it lies: a file of
/// [`CONVERTED`] named `<64 hex digits>.apr` or `.gguf`. Its name relative to the cache, if so.
pub fn artifact_name_of(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let (key, ext) = name.split_once('.')?;
    let shaped = path.parent()?.file_name()? == CONVERTED
        && matches!(ext, "apr" | "gguf")
        && key.len() == 64
        && key.bytes().all(|b| b.is_ascii_hexdigit());
    shaped.then(|| Path::new(CONVERTED).join(name))
}

/// The derived artifact of `format` for the safetensors model in `source`: made on first use,
/// then found by its [`artifact_name`]. Several processes asking at once wait on one lock; the
/// artifact appears by rename, whole.
pub fn artifact(source: &Path, format: Format, cache: &Path) -> Result<PathBuf, ConvertError> {
    let Some((key, ext)) = artifact_key(source, format, cache)? else { return Ok(source.to_path_buf()) };
    let convert = |dir: &Path| -> Result<Vec<u8>, ConvertError> {
        match format {
            Format::Gguf(q) => super::gguf::from_safetensors(dir, q),
            _ => Ok(apr::write(&safetensors_to_apr(dir)?)?),
        }
    };
    let dir = cache.join(CONVERTED);
    let target = dir.join(format!("{key}.{ext}"));
    if target.is_file() {
        return Ok(target);
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| ConvertError::Write { path: path.clone(), cause: e.to_string() }
    };
    std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
    let lock_path = dir.join(format!("{key}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(write_err(&lock_path))?;
    lock.lock().map_err(write_err(&lock_path))?;
    // Another process may have made it while this one waited.
    if !target.is_file() {
        let started = std::time::Instant::now();
        eprintln!(
            "modelqa: converting {} to {format} (once; cached as {})",
            source.display(),
            target.display()
        );
        let bytes = convert(source)?;
        eprintln!(
            "modelqa: {format} made: {:.1} MiB in {:.1} s",
            bytes.len() as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        let tmp = dir.join(format!("{key}.{ext}.tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(write_err(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(write_err(&target))?;
    }
    drop(lock);
    Ok(target)
}

/// An APR file back to a Hugging Face directory: `model.safetensors` with every tensor in its
/// own dtype (F32, F16 and BF16 byte for byte; quantized dtypes have no safetensors equivalent
/// and are an error, never a silent cast) and the embedded config, tokenizer, tokenizer config
/// and generation config as files.
pub fn apr_to_safetensors(file: &AprFile, out: &Path) -> Result<(), ConvertError> {
    let write_err = |path: &Path, e: String| ConvertError::Write { path: path.to_path_buf(), cause: e };
    let mut views = Vec::with_capacity(file.tensors.len());
    for t in &file.tensors {
        let dtype = match t.dtype {
            AprDType::F32 => safetensors::Dtype::F32,
            AprDType::F16 => safetensors::Dtype::F16,
            AprDType::Bf16 => safetensors::Dtype::BF16,
            other => {
                return Err(ConvertError::Dtype {
                    name: t.name.clone(),
                    dtype: other.name().into(),
                    format: "safetensors",
                });
            }
        };
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let view = safetensors::tensor::TensorView::new(dtype, shape, &t.data).map_err(|e| {
            ConvertError::Apr(apr::AprError::Tensor { name: t.name.clone(), why: e.to_string() })
        })?;
        views.push((t.name.clone(), view));
    }
    std::fs::create_dir_all(out).map_err(|e| write_err(out, e.to_string()))?;
    let model = out.join("model.safetensors");
    let bytes = safetensors::serialize(views, None).map_err(|e| write_err(&model, e.to_string()))?;
    std::fs::write(&model, bytes).map_err(|e| write_err(&model, e.to_string()))?;
    for (key, name) in [
        (HF_CONFIG, "config.json"),
        (HF_TOKENIZER, "tokenizer.json"),
        (HF_TOKENIZER_CONFIG, "tokenizer_config.json"),
        (HF_GENERATION_CONFIG, "generation_config.json"),
    ] {
        if let Some(v) = file.metadata.get(key) {
            let path = out.join(name);
            let text = serde_json::to_string_pretty(v).map_err(|e| write_err(&path, e.to_string()))? + "\n";
            std::fs::write(&path, text).map_err(|e| write_err(&path, e.to_string()))?;
        }
    }
    Ok(())
}
