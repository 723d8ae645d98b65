//! A decoder of the llama convention (llama, mistral, qwen2, qwen3) as dense f32 tensors, read
//! from one format's own files: the weights each format stores, and the hyper-parameters its own
//! metadata states (config.json for safetensors, APR's typed keys, GGUF's KV keys). It never
//! reads one format's numbers from another's files: a file that states a wrong rope θ is traced
//! with that θ, as an engine reading the file would run it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::format::{apr, convert, gguf, hf_config, hparams::Hyperparameters};

use crate::format::hf_config::TRACED;

/// Why a model could not be traced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TraceError {
    #[error("failed to read {path} for the trace: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("the tracer runs the llama convention (llama, mistral, qwen2, qwen3), not `{0}`")]
    Unsupported(String),
    #[error("the tracer cannot run {path}: {why}")]
    Unhonoured { path: PathBuf, why: String },
    #[error("{path} has no `{what}` for the trace")]
    Missing { path: PathBuf, what: String },
    #[error("the traced forward pass failed: {0}")]
    Forward(#[from] candle_core::Error),
}

/// The numbers the forward pass runs by, as the format states them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Architecture {
    pub(crate) model_type: String,
    pub(crate) layers: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) rms_norm_eps: f64,
    pub(crate) rope_theta: f64,
}

impl Architecture {
    /// The figures where `self` and `other` disagree, as `name self vs other`.
    pub(crate) fn differences(&self, other: &Architecture) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name} {a} (ground truth {b})"));
            }
        };
        check("layers", self.layers.to_string(), other.layers.to_string());
        check("heads", self.heads.to_string(), other.heads.to_string());
        check("kv heads", self.kv_heads.to_string(), other.kv_heads.to_string());
        check("head dim", self.head_dim.to_string(), other.head_dim.to_string());
        // GGUF stores both as f32: a difference within its rounding is no difference.
        let float = |x: f64| format!("{}", x as f32);
        check("rms_norm_eps", float(self.rms_norm_eps), float(other.rms_norm_eps));
        check("rope θ", float(self.rope_theta), float(other.rope_theta));
        out
    }
}

/// A model's weights, dense f32 on the CPU under their Hugging Face names, and its numbers.
pub(crate) struct Decoder {
    pub(crate) arch: Architecture,
    pub(crate) weights: HashMap<String, Tensor>,
    /// Where the file disagrees with itself: an APR file's typed keys against the config it
    /// embeds (which the engine runs), as `figure typed (embedded config.json other)`.
    pub(crate) conflicts: Vec<String>,
}

fn read_err(path: &Path, cause: impl std::fmt::Display) -> TraceError {
    TraceError::Read { path: path.to_path_buf(), cause: cause.to_string() }
}

impl Decoder {
    /// The model at `path`: a Hugging Face directory, an `.apr` file or a `.gguf` file.
    pub(crate) fn open(path: &Path) -> Result<Decoder, TraceError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("apr") if path.is_file() => Self::from_apr(path),
            Some("gguf") if path.is_file() => Self::from_gguf(path),
            _ => Self::from_safetensors(path),
        }
    }

    /// A Hugging Face directory: config.json and its safetensors files.
    pub(crate) fn from_safetensors(dir: &Path) -> Result<Decoder, TraceError> {
        let path = dir.join("config.json");
        let text = crate::bounded::read_side_file(&path).map_err(|e| read_err(&path, e))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| read_err(&path, e))?;
        let arch = from_config(&path, &config)?;
        let mut weights = HashMap::new();
        let files = crate::engine::safetensors_files(dir).map_err(|e| read_err(dir, e))?;
        for file in files {
            let tensors =
                candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| read_err(&file, e))?;
            for (name, t) in tensors {
                weights.insert(name, t.to_dtype(DType::F32)?);
            }
        }
        Ok(Decoder { arch, weights, conflicts: Vec::new() })
    }

    /// An APR file: its typed metadata states the numbers; what it has no key for (the head
    /// width, qwen3's explicit `head_dim`) comes from the config it embeds.
    pub(crate) fn from_apr(path: &Path) -> Result<Decoder, TraceError> {
        let bytes = std::fs::read(path).map_err(|e| read_err(path, e))?;
        let file = apr::read(&bytes).map_err(|e| read_err(path, e))?;
        let md = &file.metadata;
        let embedded = md.get(convert::HF_CONFIG).cloned().unwrap_or(Value::Null);
        let embedded_arch = embedded.is_object().then(|| from_config(path, &embedded)).and_then(Result::ok);
        let mut config = if embedded.is_object() { embedded } else { serde_json::json!({}) };
        for (apr_key, hf_key) in [
            ("architecture", "model_type"),
            ("hidden_size", "hidden_size"),
            ("num_layers", "num_hidden_layers"),
            ("num_heads", "num_attention_heads"),
            ("num_kv_heads", "num_key_value_heads"),
            ("vocab_size", "vocab_size"),
            ("intermediate_size", "intermediate_size"),
            ("rms_norm_eps", "rms_norm_eps"),
            ("rope_theta", "rope_theta"),
        ] {
            if let Some(v) = md.get(apr_key).filter(|v| !v.is_null()) {
                config[hf_key] = v.clone();
            }
        }
        if md.get("rope_theta").is_some_and(|v| !v.is_null())
            && let Some(o) = config.as_object_mut()
        {
            o.remove("rope_parameters");
        }
        let arch = from_config(path, &config)?;
        let conflicts = embedded_arch
            .map(|e| {
                arch.differences(&e)
                    .into_iter()
                    .map(|d| d.replace("(ground truth", "in the typed metadata (embedded config.json"))
                    .collect()
            })
            .unwrap_or_default();
        let mut weights = HashMap::new();
        for t in &file.tensors {
            let values =
                apr::dequantize(t).map_err(|e| read_err(path, format!("tensor `{}`: {e}", t.name)))?;
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            weights.insert(t.name.clone(), Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        Ok(Decoder { arch, weights, conflicts })
    }

    /// A GGUF file: its KV keys state the numbers; its tensors are dequantized, q/k un-permuted.
    pub(crate) fn from_gguf(path: &Path) -> Result<Decoder, TraceError> {
        let d = gguf::dequantize(path).map_err(|e| read_err(path, e))?;
        let md = &d.metadata;
        let missing = |what: String| TraceError::Missing { path: path.to_path_buf(), what };
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| missing("general.architecture".into()))?;
        let uint = |key: &str| -> Result<usize, TraceError> {
            let k = format!("{arch_name}.{key}");
            md.get(&k)
                .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
                .map(|v| v as usize)
                .ok_or_else(|| missing(k))
        };
        let float = |key: &str| -> Result<f64, TraceError> {
            let k = format!("{arch_name}.{key}");
            md.get(&k)
                .and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
                .ok_or_else(|| missing(k))
        };
        // The Hugging Face model type the GGUF architecture stands for: llama's files are
        // llama's and mistral's alike, whose mathematics is the same.
        let model_type = match arch_name.as_str() {
            "llama" | "qwen2" | "qwen3" => arch_name.clone(),
            other => return Err(TraceError::Unsupported(other.to_string())),
        };
        let heads = uint("attention.head_count")?;
        let hidden = uint("embedding_length")?;
        let head_dim = uint("attention.key_length").unwrap_or(hidden / heads.max(1));
        let arch = Architecture {
            model_type,
            layers: uint("block_count")?,
            heads,
            kv_heads: uint("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")?,
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        };
        let weights = d.tensors.into_iter().map(|(name, (t, _))| (name, t)).collect();
        Ok(Decoder { arch, weights, conflicts: Vec::new() })
    }

    /// The tensor called `name`.
    pub(crate) fn weight(&self, name: &str) -> Result<&Tensor, TraceError> {
        self.weights.get(name).ok_or_else(|| TraceError::Missing {
            path: PathBuf::from("the model"),
            what: format!("tensor `{name}`"),
        })
    }
}

/// The numbers of a config.json (or one rebuilt from a format's metadata).
fn from_config(path: &Path, config: &Value) -> Result<Architecture, TraceError> {
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or_default().to_string();
    if !TRACED.contains(&model_type.as_str()) {
        return Err(TraceError::Unsupported(model_type));
    }
    if let Some(why) = hf_config::untraced(path, config) {
        return Err(TraceError::Unhonoured { path: path.to_path_buf(), why });
    }
    let normalised = hf_config::normalise(path, config).map_err(|e| read_err(path, e.cause()))?;
    let h = Hyperparameters::from_config(path, &normalised).map_err(|e| read_err(path, e.cause()))?;
    let rope = hf_config::rope(path, &normalised).map_err(|e| read_err(path, e.cause()))?;
    let rms_norm_eps = normalised.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6);
    Ok(Architecture {
        model_type,
        layers: h.layers,
        heads: h.heads,
        kv_heads: h.kv_heads,
        head_dim: h.head_dim,
        rms_norm_eps,
        rope_theta: rope.theta,
    })
}
