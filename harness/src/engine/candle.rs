//! The embedded engine: candle, in process, on Hugging Face model directories, APR and GGUF
//! files, each checked by `admit` before candle sees it. Architectures are chosen by `model_type`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use tokenizers::Tokenizer;

use super::admit::HashFile;
use super::arch::{AprMatrices, CausalLm, GgufMatrices, SafetensorsMatrices, Segment, Weights};
use super::logprobs::Scorer;
use super::{
    Engine, EngineError, Finish, Flow, GenerateRequest, Generation, Joining, PromptGauge, Sampling,
    ScoredStep, Session, SessionInfo,
};
use crate::chat::ChatTemplate;
use crate::format::files::{ModelFile, hash_file};
use crate::matrix::Backend;

mod batch;

/// The candle engine (stateless; sessions hold the models).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CandleEngine;

impl Engine for CandleEngine {
    fn load(&self, model_dir: &Path, backend: Backend) -> Result<Box<dyn Session>, EngineError> {
        load_candle(model_dir, backend).map(|s| Box::new(s) as Box<dyn Session>)
    }
}

/// A model loaded by candle.
pub struct CandleSession {
    model: Box<dyn CausalLm>,
    tokenizer: Tokenizer,
    /// The same tokenizer reading control-token spellings as plain text, for the
    /// [`GenerateRequest::literal`] ranges of a prompt: made from `tokenizer` the first time a
    /// prompt has such ranges, as a copy holds the whole vocabulary and merges again (some 20 MB
    /// for a 150,000-token vocabulary) that most sessions never use.
    literal: std::sync::OnceLock<Tokenizer>,
    device: Device,
    eos: Vec<u32>,
    bos: Option<u32>,
    /// Special tokens that are not end-of-sequence: generating one is a leak.
    special: std::collections::HashMap<u32, String>,
    context: usize,
    info: SessionInfo,
}

impl Drop for CandleSession {
    /// The model's device memory is freed as the fields drop, on whichever thread drops the
    /// session: its CUDA context is made current there first.
    fn drop(&mut self) {
        let _ = bind_device(&self.device);
    }
}

/// Whether `architecture` runs its matrices on the project's kernels: a model of its own, on CPU.
fn on_own_kernels(architecture: &str, device: &Device) -> bool {
    device.is_cpu() && super::arch::OWN_KERNELS.contains(&architecture)
}

/// A load that failed on what the files say (no underlying error).
fn load_err(path: &Path, cause: impl Into<String>) -> EngineError {
    EngineError::Load { path: path.to_path_buf(), cause: cause.into() }
}

/// The device for a backend, or why there is none.
pub(super) fn device_for(backend: Backend) -> Result<Device, EngineError> {
    match backend {
        Backend::Cpu => Ok(Device::Cpu),
        Backend::Gpu => {
            if !cfg!(feature = "cuda") {
                return Err(EngineError::Backend {
                    backend,
                    why: "built without cuda (enable the `cuda` feature)".into(),
                });
            }
            Device::new_cuda(0).map_err(|e| EngineError::NoDevice { backend, source: super::cause(e) })
        }
    }
}

fn token_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect(),
        _ => Vec::new(),
    }
}

/// The config's `model_type`, if the engine runs it: asked before anything else is checked, so
/// an architecture the engine lacks is refused as that, not as tensors its loaders do not know.
fn architecture_of(path: &Path, config: &serde_json::Value) -> Result<String, EngineError> {
    let architecture = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| load_err(path, "the config has no `model_type`"))?;
    if !super::arch::ARCHITECTURES.iter().any(|(name, _)| *name == architecture) {
        let supported: Vec<&str> = super::arch::ARCHITECTURES.iter().map(|(name, _)| *name).collect();
        return Err(load_err(
            path,
            format!("model_type `{architecture}` is not supported (supported: {})", supported.join(", ")),
        ));
    }
    Ok(architecture.to_string())
}

/// What a session is assembled from, whatever the format.
struct Parts {
    /// For messages: the directory or file the model came from.
    source: PathBuf,
    config: serde_json::Value,
    weights: Weights,
    tokenizer: Tokenizer,
    generation_config: Option<serde_json::Value>,
    chat_template: Option<ChatTemplate>,
    files: Vec<ModelFile>,
}

/// Loads a Hugging Face model directory, an APR v2 file or a GGUF file, with candle.
pub fn load_candle(path: &Path, backend: Backend) -> Result<CandleSession, EngineError> {
    load_candle_with(path, backend, &hash_file)
}

/// [`load_candle`], remembering the files' hashes in `hashes` (a tool run outside cargo, whose
/// working directory need not be a checkout, passes a cache of its own).
pub fn load_candle_hashing_in(
    path: &Path,
    backend: Backend,
    hashes: &Path,
) -> Result<CandleSession, EngineError> {
    load_candle_with(path, backend, &|p| crate::format::files::hash_file_in(p, hashes))
}

/// [`load_candle`], hashing the model's files with `hash`.
pub(crate) fn load_candle_with(
    path: &Path,
    backend: Backend,
    hash: HashFile<'_>,
) -> Result<CandleSession, EngineError> {
    let started = Instant::now();
    let device = device_for(backend)?;
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return gguf_session(path, device, backend, started, hash);
    }
    let parts = if path.is_file() && path.extension().is_some_and(|e| e == "apr") {
        apr_parts(path, &device, hash)?
    } else {
        hf_parts(path, &device, hash)?
    };
    assemble(parts, device, backend, started)
}

fn hf_parts(dir: &Path, device: &Device, hash: HashFile<'_>) -> Result<Parts, EngineError> {
    let config_path = dir.join("config.json");
    let config_text = crate::format::files::read_side_file(&config_path)
        .map_err(|e| EngineError::load_failed(&config_path, e))?;
    let config: serde_json::Value = serde_json::from_str(&config_text)
        .map_err(|e| EngineError::load_failed_in(&config_path, "invalid JSON", e))?;
    let architecture = architecture_of(&config_path, &config)?;
    let files = super::safetensors_files(dir)?;
    let config = super::admit::hf_model(&config_path, config, &files)?;
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(load_err(&tokenizer_path, "the tokenizer is missing"));
    }
    let tokenizer = crate::format::tokenizer_json::read(&tokenizer_path)
        .map_err(|e| EngineError::load_failed(&tokenizer_path, e))?;
    // SAFETY: the files are memory-mapped read-only; the harness never writes a model file it
    // is reading, and safetensors validates the header against the file length.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device) }
        .map_err(|e| EngineError::load_failed(&files[0], e))?;
    let weights = if on_own_kernels(&architecture, device) {
        // SAFETY: as above.
        let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .map_err(|e| EngineError::load_failed(&files[0], e))?;
        Weights::with_matrices(vb, Arc::new(SafetensorsMatrices::new(mapped)))
    } else {
        Weights::candle(vb)
    };
    let generation_config = crate::format::files::read_side_file(&dir.join("generation_config.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let chat_template = ChatTemplate::from_model_dir(dir).map_err(|e| EngineError::load_failed(dir, e))?;
    let mut hashed = Vec::with_capacity(files.len() + 2);
    for f in files.iter().chain([&config_path, &tokenizer_path]) {
        hashed.push(hash(f).map_err(|e| EngineError::load_failed(f, e))?);
    }
    Ok(Parts {
        source: dir.to_path_buf(),
        config,
        weights,
        tokenizer,
        generation_config,
        chat_template,
        files: hashed,
    })
}

/// An APR file written by this project carries the Hugging Face config, tokenizer and
/// tokenizer_config in its metadata. The file is mapped and checked whole (both checksums)
/// without copying a tensor; on the project's kernels an f32, f16 or bf16 matrix is copied into
/// the kernels' panels (the mapped pages given back as it goes), and every other tensor is
/// dequantized to f32.
fn apr_parts(path: &Path, device: &Device, hash: HashFile<'_>) -> Result<Parts, EngineError> {
    let file = std::fs::File::open(path).map_err(|e| EngineError::load_failed(path, e))?;
    // SAFETY: the harness never writes a model file while it reads it (the cache writes a new
    // file and renames it into place).
    let mapped =
        Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EngineError::load_failed(path, e))?);
    let index = crate::format::apr::index(&mapped).map_err(|e| EngineError::load_failed(path, e))?;
    let custom = |key: &str| index.metadata.get(key).filter(|v| v.is_object()).cloned();
    let config = custom(crate::format::convert::HF_CONFIG).ok_or_else(|| {
        load_err(
            path,
            format!(
                "the APR metadata has no `{}` object (the model's config.json)",
                crate::format::convert::HF_CONFIG
            ),
        )
    })?;
    let architecture = architecture_of(path, &config)?;
    let config = super::admit::apr_model(path, config, &index.entries)?;
    let tokenizer_json = custom(crate::format::convert::HF_TOKENIZER).ok_or_else(|| {
        load_err(
            path,
            format!(
                "the APR metadata has no embedded tokenizer (`{}`)",
                crate::format::convert::HF_TOKENIZER
            ),
        )
    })?;
    let tokenizer_bytes =
        serde_json::to_vec(&tokenizer_json).map_err(|e| EngineError::load_failed(path, e))?;
    let tokenizer = crate::format::tokenizer_json::parse(&tokenizer_bytes)
        .map_err(|e| EngineError::load_failed_in(path, "the embedded tokenizer", e))?;
    // On the project's kernels the matrices go to them and the rest (norms, biases) to candle.
    let own = on_own_kernels(&architecture, device);
    let (matrices, rest): (Vec<_>, Vec<_>) =
        index.entries.iter().cloned().partition(|e| own && e.shape.len() == 2);
    let mut tensors = std::collections::HashMap::with_capacity(rest.len());
    for e in rest {
        let dims: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
        let values =
            crate::format::apr::dequantize_bytes(&e.name, e.dtype, &e.shape, &mapped[e.bytes.clone()])
                .map_err(|err| EngineError::load_failed(path, err))?;
        let tensor = Tensor::from_vec(values, dims, device)
            .map_err(|err| EngineError::load_failed_in(path, format!("tensor `{}`", e.name), err))?;
        tensors.insert(e.name, tensor);
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let weights = if own {
        Weights::with_matrices(vb, Arc::new(AprMatrices::new(mapped.clone(), matrices)))
    } else {
        Weights::candle(vb)
    };
    Ok(Parts {
        source: path.to_path_buf(),
        chat_template: custom(crate::format::convert::HF_TOKENIZER_CONFIG)
            .and_then(|c| ChatTemplate::from_tokenizer_config(&c)),
        generation_config: custom(crate::format::convert::HF_GENERATION_CONFIG),
        config,
        weights,
        tokenizer,
        files: vec![hash(path).map_err(|e| EngineError::load_failed(path, e))?],
    })
}

fn assemble(
    parts: Parts,
    device: Device,
    backend: Backend,
    started: Instant,
) -> Result<CandleSession, EngineError> {
    let Parts { source, config, weights, tokenizer, generation_config, chat_template, files } = parts;
    let dir = source.as_path();
    let architecture = architecture_of(dir, &config)?;
    super::admit::tokenizer_fits_config(dir, &tokenizer, &config)?;
    let context = config
        .get("max_position_embeddings")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| load_err(dir, "the config states no context (`max_position_embeddings`)"))?
        as usize;
    let model = match super::arch::load(&architecture, &config, weights) {
        None => unreachable!("architecture_of admitted `{architecture}`"),
        Some(Ok(model)) => model,
        Some(Err(super::arch::LoadError::Weights(e))) => return Err(EngineError::load_failed(dir, e)),
        Some(Err(super::arch::LoadError::Config { architecture, source })) => {
            return Err(EngineError::load_failed_in(
                dir,
                format!("not a valid {architecture} config"),
                source,
            ));
        }
    };

    let mut eos = token_ids(config.get("eos_token_id"));
    if let Some(json) = &generation_config {
        eos.extend(token_ids(json.get("eos_token_id")));
    }
    let bos = token_ids(config.get("bos_token_id")).first().copied();
    let loaded = Loaded { model, context, tokenizer, eos, bos, architecture, files, chat_template };
    let own = on_own_kernels(&loaded.architecture, &device);
    let mut session = finish(loaded, device, backend, started);
    if own {
        session.info.engine = format!("{} + {KERNELS}", session.info.engine);
    }
    Ok(session)
}

/// A loaded model and what its session needs besides, whatever the format.
struct Loaded {
    model: Box<dyn CausalLm>,
    context: usize,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    bos: Option<u32>,
    architecture: String,
    files: Vec<ModelFile>,
    chat_template: Option<ChatTemplate>,
}

fn finish(loaded: Loaded, device: Device, backend: Backend, started: Instant) -> CandleSession {
    let Loaded { model, context, tokenizer, mut eos, bos, architecture, files, chat_template } = loaded;
    // End-of-turn tokens of the common chat templates end generation too.
    for special in
        ["<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>"]
    {
        if let Some(id) = tokenizer.token_to_id(special) {
            eos.push(id);
        }
    }
    eos.sort_unstable();
    eos.dedup();
    let added = tokenizer.get_added_tokens_decoder();
    let special = added
        .iter()
        .filter(|(id, t)| t.special && !eos.contains(id))
        .map(|(id, t)| (*id, t.content.clone()))
        .collect();
    let mut control: Vec<(String, u32)> = added
        .into_iter()
        .filter(|(_, t)| t.special && !t.content.is_empty())
        .map(|(id, t)| (t.content, id))
        .collect();
    control.sort_unstable();
    control.dedup_by(|a, b| a.0 == b.0);
    let (control_tokens, control_ids) = control.into_iter().unzip();
    let device_name = match backend {
        Backend::Cpu => "cpu".to_string(),
        Backend::Gpu => "cuda:0".to_string(),
    };
    CandleSession {
        model,
        tokenizer,
        literal: std::sync::OnceLock::new(),
        device,
        eos,
        bos,
        special,
        context,
        info: SessionInfo {
            engine: format!("candle {}", CANDLE_VERSION),
            device: device_name,
            architecture,
            files,
            load_time: started.elapsed(),
            chat_template,
            applies_chat_template: false,
            control_tokens,
            control_ids,
        },
    }
}

/// A GGUF file (this project's or llama.cpp's): architecture, hyper-parameters, tokenizer and
/// chat template from its metadata; the weights stay quantized, on the project's kernels (its
/// own models on CPU) or candle's on a GPU (a llama or qwen2 it would run otherwise than the
/// file says, rope-scaled or with an explicit head width, dequantized into the float model).
fn gguf_session(
    path: &Path,
    device: Device,
    backend: Backend,
    started: Instant,
    hash: HashFile<'_>,
) -> Result<CandleSession, EngineError> {
    let (mut file, content, context, rows) = super::admit::gguf_model(path)?;
    let md = &content.metadata;
    let text = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
    let number = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let arch = text("general.architecture").ok_or_else(|| load_err(path, "no general.architecture"))?;
    let tokenizer = crate::format::gguf::tokenizer(md).map_err(|e| EngineError::load_failed(path, e))?;
    super::admit::tokenizer_fits(path, &tokenizer, rows)?;
    let eos: Vec<u32> = number("tokenizer.ggml.eos_token_id").into_iter().collect();
    let bos = number("tokenizer.ggml.bos_token_id");
    let token_text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
    let chat_template = text("tokenizer.chat_template").map(|source| ChatTemplate {
        source,
        bos_token: token_text(bos),
        eos_token: token_text(eos.first().copied()),
    });
    // What candle's quantized llama or qwen2 would run otherwise than the file says (rope
    // scaling, an explicit head width): such a file runs dequantized in the float model off CPU.
    let beyond = crate::format::gguf::beyond_candles_quantized(&content);
    // The project's float model: with the matrices as stored (its own models, on CPU), or every
    // tensor dequantized (an architecture candle has no quantized model of, or `beyond`).
    let float = match gguf_on_kernels(&arch).filter(|_| device.is_cpu()) {
        Some(model_type) => Some((model_type, true)),
        None if matches!(arch.as_str(), "llama" | "qwen2") && beyond.is_none() => None,
        None if matches!(arch.as_str(), "llama" | "qwen2") => {
            Some((if arch == "llama" { "llama" } else { "qwen2" }, false))
        }
        None => Some((
            crate::format::gguf::dequantized_model_type(&arch).ok_or_else(|| {
                load_err(
                    path,
                    format!(
                        "GGUF architecture `{arch}` is not supported ({})",
                        crate::format::gguf::SUPPORTED_ARCHITECTURES
                    ),
                )
            })?,
            false,
        )),
    };
    if let Some((model_type, stored)) = float {
        drop(content);
        let (model, context) = float_model(path, model_type, rows, &device, stored)?;
        let files = vec![hash(path).map_err(|e| EngineError::load_failed(path, e))?];
        let loaded = Loaded {
            model,
            context,
            tokenizer,
            eos,
            bos,
            architecture: model_type.into(),
            files,
            chat_template,
        };
        let mut session = finish(loaded, device, backend, started);
        // Said wherever the session is named: the record's engine.
        session.info.engine = match (stored, &beyond) {
            (true, _) => format!("{} + {KERNELS}", session.info.engine),
            (false, Some(what)) => format!(
                "{} (GGUF dequantized to f32: candle's quantized {arch} would ignore its {what})",
                session.info.engine
            ),
            (false, None) => {
                format!(
                    "{} (GGUF dequantized to f32: candle has no quantized {arch} model)",
                    session.info.engine
                )
            }
        };
        return Ok(session);
    }
    let model: Box<dyn CausalLm> = if arch == "llama" {
        Box::new(
            quantized_llama::ModelWeights::from_gguf(content, &mut file, &device)
                .map_err(|e| EngineError::load_failed(path, e))?,
        )
    } else {
        Box::new(
            quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &device)
                .map_err(|e| EngineError::load_failed(path, e))?,
        )
    };
    let files = vec![hash(path).map_err(|e| EngineError::load_failed(path, e))?];
    let loaded = Loaded { model, context, tokenizer, eos, bos, architecture: arch, files, chat_template };
    Ok(finish(loaded, device, backend, started))
}

/// The `model_type` a GGUF file of `arch` runs as on the project's own model and kernels, its
/// matrices as stored: llama and qwen2 and the dequantized architectures whose model is the
/// project's. (Rope scaling in keys, llama3's factors and phi3's LongRoPE tensors are read into
/// the config; what the engine would not run as llama.cpp does was refused when it was opened.)
fn gguf_on_kernels(arch: &str) -> Option<&'static str> {
    let model_type = match arch {
        "llama" => "llama",
        "qwen2" => "qwen2",
        other => crate::format::gguf::dequantized_model_type(other)?,
    };
    super::arch::OWN_KERNELS.contains(&model_type).then_some(model_type)
}

/// A GGUF file run on the project's float model of `model_type`: the config rebuilt from the
/// KV keys and checked against the tensors' shapes as a model directory's is; with `stored`,
/// the matrices stay as stored for the project's kernels, else every tensor is dequantized to
/// f32 under its Hugging Face name (an architecture whose model is candle's).
fn float_model(
    path: &Path,
    model_type: &str,
    rows: usize,
    device: &Device,
    stored: bool,
) -> Result<(Box<dyn CausalLm>, usize), EngineError> {
    let (tensors, matrices, metadata, rope_factors, longrope) = if stored {
        let file = crate::format::gguf::read_stored(path).map_err(|e| EngineError::load_failed(path, e))?;
        (file.tensors, Some((file.mapped, file.matrices)), file.metadata, file.rope_factors, file.longrope)
    } else {
        let file = crate::format::gguf::dequantize(path).map_err(|e| EngineError::load_failed(path, e))?;
        (file.tensors, None, file.metadata, file.rope_factors, file.longrope)
    };
    let names = || tensors.keys().chain(matrices.iter().flat_map(|(_, m)| m.keys()));
    let has_output = names().any(|n| n == "lm_head.weight");
    let has_bias = names().any(|n| n.ends_with("q_proj.bias") || n.ends_with("query_key_value.bias"));
    let mut config = crate::format::gguf::dequantized_config(&metadata, has_output, has_bias, rows)
        .ok_or_else(|| load_err(path, format!("no config for `{model_type}`")))?;
    if let Some([long, short]) = &longrope {
        // phi3's LongRoPE as its factor tensors state it, completed as the config's would be.
        config["rope_scaling"] = crate::format::gguf::longrope(&metadata, long, short);
    }
    let mut shapes: std::collections::BTreeMap<String, Vec<usize>> =
        tensors.iter().map(|(n, (t, _))| (n.clone(), t.dims().to_vec())).collect();
    for (n, (m, _)) in matrices.iter().flat_map(|(_, m)| m) {
        shapes.insert(n.clone(), m.dims());
    }
    let mut config = super::admit::config_with_shapes(path, config, &shapes)?;
    if let Some(factors) = rope_factors {
        // llama3's scaling as the converter computed it (only a llama's file holds it).
        config["rope_factors"] = serde_json::json!(factors);
    }
    let context = config
        .get("max_position_embeddings")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| load_err(path, "the GGUF states no context length"))? as usize;
    let mut dense = std::collections::HashMap::with_capacity(tensors.len());
    for (name, (t, _)) in tensors {
        let t = t
            .to_device(device)
            .map_err(|e| EngineError::load_failed_in(path, format!("tensor `{name}`"), e))?;
        dense.insert(name, t);
    }
    let vb = VarBuilder::from_tensors(dense, DType::F32, device);
    let weights = match matrices {
        Some((mapped, m)) => Weights::with_matrices(vb, Arc::new(GgufMatrices::new(mapped, m))),
        None => Weights::candle(vb),
    };
    match super::arch::load(model_type, &config, weights) {
        None => Err(load_err(path, format!("model_type `{model_type}` has no loader"))),
        Some(Ok(model)) => Ok((model, context)),
        Some(Err(super::arch::LoadError::Weights(e))) => Err(EngineError::load_failed(path, e)),
        Some(Err(super::arch::LoadError::Config { architecture, source })) => {
            Err(EngineError::load_failed_in(path, format!("not a valid {architecture} config"), source))
        }
    }
}

/// What a session whose matrices run on the project's kernels adds to its engine's name.
const KERNELS: &str = "modelqa kernels";

/// The candle version the harness is built against (kept in step with Cargo.toml).
const CANDLE_VERSION: &str = "0.11.1";

/// The most tokens one forward pass of [`Session::sequence_logits`] takes: a long stretch
/// between two wanted positions goes through in pieces, so no pass's attention scores (chunk ×
/// context × heads) grow with the context.
const SEQUENCE_CHUNK: usize = 512;

/// The most wanted positions one pass of [`Session::sequence_logits`] gives logits for, so
/// their distributions (rows × vocabulary) stay bounded: 64 rows of a 152 K vocabulary are 39 MB.
const LOGIT_ROWS: usize = 64;

/// The most prompt tokens one batched forward pass takes at once: prompts are prefilled in
/// groups up to this many tokens (a longer prompt alone), so activations stay bounded while
/// each prompt still goes through in one piece, as it does alone.
const BATCH_PREFILL_TOKENS: usize = 2048;

impl CandleSession {
    /// The logits after the last of `ids`, which start at position `pos` of the sequence the
    /// cache holds.
    fn forward(&mut self, ids: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        self.pass(ids, pos, |model, input, pos| {
            model.forward(input, pos)?.flatten_all()?.to_dtype(DType::F32)
        })
    }

    /// The logits after each of `ids`' tokens at the offsets `rows` (`[rows, vocab]`), or `None`
    /// where the model gives the last token's only ([`CausalLm::forward_rows`]).
    fn forward_rows(
        &mut self,
        ids: &[u32],
        pos: usize,
        rows: &[usize],
    ) -> candle_core::Result<Option<Tensor>> {
        self.pass(ids, pos, |model, input, pos| {
            model.forward_rows(input, pos, rows)?.map(|l| l.to_dtype(DType::F32)).transpose()
        })
    }

    /// One forward pass of `ids` at `pos` through `run`, with what every pass takes: the
    /// device bound to this thread, the kernels' pool, and the faults the harness's own tests
    /// plant.
    fn pass<T: Send>(
        &mut self,
        ids: &[u32],
        pos: usize,
        run: impl FnOnce(&mut dyn CausalLm, &Tensor, usize) -> candle_core::Result<T> + Send,
    ) -> candle_core::Result<T> {
        let started = Instant::now();
        planted_crash();
        // A fault the harness's own tests plant (QUALIFY_FAULT_KV_EARLY): a step over cached
        // state runs one position late, as a cache advanced before the step would place it.
        let pos = if pos > 0 && crate::config::planted_kv_early() { pos + 1 } else { pos };
        bind_device(&self.device)?;
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let model = &mut *self.model;
        let out = run_pass(&self.device, || run(model, &input, pos))?;
        if let Some(factor) = crate::config::planted_slowdown() {
            // A fault the harness's own tests plant (QUALIFY_FAULT_SLOWDOWN): every forward
            // pass takes `factor` times as long, as a model that really got slower would.
            std::thread::sleep(started.elapsed().mul_f64(factor - 1.0));
        }
        Ok(out)
    }
}

fn processor(sampling: &Sampling) -> LogitsProcessor {
    match *sampling {
        Sampling::Greedy => LogitsProcessor::from_sampling(0, CandleSampling::ArgMax),
        Sampling::Seeded { temperature, top_p, top_k, seed } => {
            let s = if temperature <= 0.0 {
                CandleSampling::ArgMax
            } else {
                match (top_k, top_p) {
                    (None, None) => CandleSampling::All { temperature },
                    (Some(k), None) => CandleSampling::TopK { k, temperature },
                    (None, Some(p)) => CandleSampling::TopP { p, temperature },
                    (Some(k), Some(p)) => CandleSampling::TopKThenTopP { k, p, temperature },
                }
            };
            LogitsProcessor::from_sampling(seed, s)
        }
    }
}

impl Session for CandleSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn logits_after(&mut self, prompt: &str, continuation: &[u32]) -> Result<Vec<f32>, EngineError> {
        let inference = |e: candle_core::Error| EngineError::inference(e);
        let mut ids = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| EngineError::inference_in("failed to tokenize the prompt", e))?
            .get_ids()
            .to_vec();
        ids.extend_from_slice(continuation);
        if ids.is_empty() || ids.len() > self.context {
            return Err(EngineError::OutsideContext { tokens: ids.len(), context: self.context });
        }
        self.clear_cache();
        let logits = self.forward(&ids, 0).map_err(inference)?;
        logits.to_vec1::<f32>().map_err(inference)
    }

    fn prompt_logits(&mut self, prompt: &str, positions: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let inference = |e: candle_core::Error| EngineError::inference(e);
        let ids = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| EngineError::inference_in("failed to tokenize the prompt", e))?
            .get_ids()
            .to_vec();
        self.clear_cache();
        self.model.plan(ids.len().min(positions).min(self.context));
        let mut out = Vec::new();
        for (pos, id) in ids.iter().take(positions.min(self.context)).enumerate() {
            let logits = self.forward(&[*id], pos).map_err(inference)?;
            out.push(logits.to_vec1::<f32>().map_err(inference)?);
        }
        Ok(out)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::inference_in("failed to tokenize the text", e))?
            .get_ids()
            .to_vec())
    }

    fn prompt_ids(&self, request: &GenerateRequest<'_>) -> Result<Vec<u32>, EngineError> {
        self.encode_prompt(request.prompt, request.literal)
    }

    fn context(&self) -> Option<usize> {
        Some(self.context)
    }

    fn sequence_logits(
        &mut self,
        ids: &[u32],
        positions: &[usize],
        on_logits: &mut dyn FnMut(usize, Vec<f32>) -> Flow,
    ) -> Result<(), EngineError> {
        let inference = |e: candle_core::Error| EngineError::inference(e);
        if ids.is_empty() || ids.len() > self.context {
            return Err(EngineError::OutsideContext { tokens: ids.len(), context: self.context });
        }
        if positions.windows(2).any(|w| w[0] >= w[1]) || positions.last().is_some_and(|&p| p >= ids.len()) {
            return Err(EngineError::Inference(format!(
                "positions must ascend and lie below the sequence's {} tokens",
                ids.len()
            )));
        }
        self.clear_cache();
        self.model.plan(ids.len());
        let mut fed = 0;
        let mut next = 0;
        // Whether the model gives the logits of several rows of a pass (CausalLm::forward_rows).
        let mut by_rows = true;
        while let Some(&position) = positions.get(next) {
            if by_rows {
                // A pass of at most SEQUENCE_CHUNK tokens, ending at the last of the next
                // LOGIT_ROWS wanted positions, gives the logits of every wanted position in it.
                let reach = positions[(next + LOGIT_ROWS).min(positions.len()) - 1];
                let end = (fed + SEQUENCE_CHUNK).min(reach + 1);
                let rows: Vec<usize> =
                    positions[next..].iter().take_while(|&&p| p < end).map(|&p| p - fed).collect();
                if rows.is_empty() {
                    // A stretch before the next wanted position: through the cache only.
                    self.forward(&ids[fed..end], fed).map_err(inference)?;
                    fed = end;
                    continue;
                }
                if let Some(logits) = self.forward_rows(&ids[fed..end], fed, &rows).map_err(inference)? {
                    let logits = logits.to_vec2::<f32>().map_err(inference)?;
                    for (row, logits) in rows.iter().zip(logits) {
                        if on_logits(fed + row, logits) == Flow::Stop {
                            return Ok(());
                        }
                    }
                    (fed, next) = (end, next + rows.len());
                    continue;
                }
                by_rows = false;
            }
            // The tokens up to the position go through the KV cache in chunks, the last of which
            // ends at the position: its logits are the chunk's (a forward returns the last
            // token's only), and no chunk's attention grows past SEQUENCE_CHUNK rows.
            while fed <= position {
                let end = (fed + SEQUENCE_CHUNK).min(position + 1);
                let logits = self.forward(&ids[fed..end], fed).map_err(inference)?;
                fed = end;
                if fed == position + 1
                    && on_logits(position, logits.to_vec1::<f32>().map_err(inference)?) == Flow::Stop
                {
                    return Ok(());
                }
            }
            next += 1;
        }
        Ok(())
    }

    fn batch_logits(&mut self, sequences: &[Vec<u32>]) -> Result<Option<Vec<Vec<f32>>>, EngineError> {
        if let Some(s) = sequences.iter().find(|s| s.is_empty() || s.len() > self.context) {
            return Err(EngineError::OutsideContext { tokens: s.len(), context: self.context });
        }
        let parts: Vec<(Segment, &[u32])> = sequences
            .iter()
            .map(|s| (Segment { slot: None, pos: 0, len: s.len(), from: None }, s.as_slice()))
            .collect();
        let Some(logits) = self.forward_segments(&parts).map_err(EngineError::inference)? else {
            return Ok(None);
        };
        logits.to_vec2::<f32>().map(Some).map_err(EngineError::inference)
    }

    fn generate_batch(
        &mut self,
        requests: &[GenerateRequest<'_>],
    ) -> Result<Option<Vec<Result<Generation, EngineError>>>, EngineError> {
        Ok(self.generate_together(requests))
    }

    fn serve_continuously(&mut self, intake: &mut dyn FnMut() -> Option<Joining>, slots: usize) {
        if !self.run_continuous(intake, slots) {
            super::one_at_a_time(self, intake);
        }
    }

    fn feed(&mut self, ids: &[u32], position: usize) -> Result<Vec<f32>, EngineError> {
        let inference = |e: candle_core::Error| EngineError::inference(e);
        if ids.is_empty() || position + ids.len() > self.context {
            return Err(EngineError::OutsideContext { tokens: position + ids.len(), context: self.context });
        }
        if position == 0 {
            self.clear_cache();
        }
        self.forward(ids, position).map_err(inference)?.to_vec1::<f32>().map_err(inference)
    }

    fn generate_streaming(
        &mut self,
        request: &GenerateRequest<'_>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        self.generate_until(request, &mut |piece| {
            on_text(piece);
            Flow::Continue
        })
    }

    fn prompt_gauge(&self) -> Option<PromptGauge> {
        Some(PromptGauge::of_tokenizer(self.context, &self.tokenizer, self.bos.is_some()))
    }

    fn generate_until(
        &mut self,
        request: &GenerateRequest<'_>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Generation, EngineError> {
        self.generate_inner(request, on_text, None)
    }

    fn generate_scored(
        &mut self,
        request: &GenerateRequest<'_>,
        top: usize,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<(Generation, Vec<ScoredStep>), EngineError> {
        let mut steps = Vec::new();
        let g = self.generate_inner(request, on_text, Some((top, &mut steps)))?;
        Ok((g, steps))
    }
}

impl CandleSession {
    /// The ids of `prompt`, its `literal` ranges encoded as plain text: the text between them
    /// is encoded as a whole prompt is (control tokens read as such), each range by the tokenizer
    /// that reads control-token spellings as text, and the pieces joined before the tokenizer's
    /// post-processor adds what it adds (BOS). Without ranges, exactly the tokenizer's encoding.
    fn encode_prompt(
        &self,
        prompt: &str,
        literal: &[std::ops::Range<usize>],
    ) -> Result<Vec<u32>, EngineError> {
        let failed = |e: tokenizers::Error| EngineError::inference_in("failed to tokenize the prompt", e);
        if literal.is_empty()
            || crate::config::planted_injection() == Some(crate::config::PlantedInjection::Engine)
        {
            return Ok(self.tokenizer.encode(prompt, true).map_err(failed)?.get_ids().to_vec());
        }
        let mut pieces = Vec::with_capacity(2 * literal.len() + 1);
        let mut at = 0;
        for range in literal {
            let fits = at <= range.start && range.start < range.end && prompt.get(range.clone()).is_some();
            if !fits {
                return Err(EngineError::Inference(format!(
                    "literal range {range:?} is not a sorted, disjoint, non-empty range of the {}-byte prompt on character boundaries",
                    prompt.len()
                )));
            }
            if at < range.start {
                pieces.push(self.tokenizer.encode(&prompt[at..range.start], false).map_err(failed)?);
            }
            let literal = self.literal.get_or_init(|| {
                let mut literal = self.tokenizer.clone();
                literal.set_encode_special_tokens(true);
                literal
            });
            pieces.push(literal.encode(&prompt[range.clone()], false).map_err(failed)?);
            at = range.end;
        }
        if at < prompt.len() {
            pieces.push(self.tokenizer.encode(&prompt[at..], false).map_err(failed)?);
        }
        let joined = tokenizers::Encoding::merge(pieces, true);
        let encoding = self.tokenizer.post_process(joined, None, true).map_err(failed)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Generation, scoring each step into `scores` (with how many alternatives) where asked.
    fn generate_inner(
        &mut self,
        request: &GenerateRequest<'_>,
        on_text: &mut dyn FnMut(&str) -> Flow,
        mut scores: Option<(usize, &mut Vec<ScoredStep>)>,
    ) -> Result<Generation, EngineError> {
        let inference = |e: candle_core::Error| EngineError::inference(e);
        let started = Instant::now();
        let ids = self.prompt_for(request)?;
        self.clear_cache();
        let mut sampler = processor(&request.sampling);
        let prompt_tokens = ids.len();
        let mut logits = self.forward(&ids, 0).map_err(inference)?;
        let first_logits_finite = logits.to_vec1::<f32>().map_err(inference)?.iter().all(|v| v.is_finite());
        let mut tokens = Vec::new();
        let mut sent = String::new();
        let mut time_to_first_token = None;
        let finish = loop {
            let next = sampler.sample(&logits).map_err(inference)?;
            time_to_first_token.get_or_insert_with(|| started.elapsed());
            if let Some((top, steps)) = scores.as_mut() {
                let scorer = Scorer { tokenizer: &self.tokenizer, ends: &self.eos, top: *top };
                steps.push(scorer.step(&logits.to_vec1::<f32>().map_err(inference)?, &tokens, next));
            }
            if self.eos.contains(&next) {
                break Finish::Eos;
            }
            tokens.push(next);
            // Decoding the whole output each step keeps multi-token characters intact; a
            // trailing replacement character means one is still incomplete.
            if let Ok(text) = self.tokenizer.decode(&tokens, true)
                && !text.ends_with('\u{FFFD}')
                && text.len() > sent.len()
                && text.starts_with(&sent)
            {
                let flow = on_text(&text[sent.len()..]);
                sent = text;
                if flow == Flow::Stop {
                    break Finish::Stopped;
                }
            }
            let pos = prompt_tokens + tokens.len() - 1;
            if tokens.len() >= request.max_tokens as usize || pos + 1 >= self.context {
                break Finish::Length;
            }
            if Instant::now() >= request.deadline {
                let partial = self.tokenizer.decode(&tokens, true).unwrap_or_default();
                return Err(EngineError::Timeout { tokens: tokens.len(), partial });
            }
            logits = self.forward(&[next], pos).map_err(inference)?;
        };
        let text = self
            .tokenizer
            .decode(&tokens, true)
            .map_err(|e| EngineError::inference_in("failed to decode the output tokens", e))?;
        if let Some(rest) = text.strip_prefix(sent.as_str()).filter(|r| !r.is_empty()) {
            let _ = on_text(rest);
        }
        let leaked_special_tokens = tokens.iter().filter_map(|t| self.special.get(t).cloned()).collect();
        Ok(Generation {
            text,
            token_count: Some(tokens.len()),
            tokens,
            prompt_tokens,
            finish,
            time_to_first_token: time_to_first_token.unwrap_or_default(),
            duration: started.elapsed(),
            first_logits_finite: Some(first_logits_finite),
            leaked_special_tokens,
        })
    }
}

impl CandleSession {
    /// Empties the KV cache with the device's context current: its device memory is freed here.
    fn clear_cache(&mut self) {
        let _ = bind_device(&self.device);
        self.model.clear_kv_cache();
    }

    /// Whether this session answers several sequences in one pass: a model that batches, on the
    /// CPU. On a GPU the matrix products are cuBLAS's, whose reduction order follows the number of
    /// rows, so a batched pass would not give each sequence its logits alone bit for bit: there
    /// every sequence runs alone, and batching cannot change a verdict.
    pub(super) fn batches(&self) -> bool {
        self.device.is_cpu() && self.model.batches()
    }

    /// The logits after each segment of a batch (`[segments, vocab]`, f32), with the faults the
    /// harness's own tests plant applied as [`CandleSession::forward`] applies them. `None`: the
    /// model runs one sequence at a time.
    fn forward_segments(&mut self, parts: &[(Segment, &[u32])]) -> candle_core::Result<Option<Tensor>> {
        let started = Instant::now();
        planted_crash();
        let kv_early = crate::config::planted_kv_early();
        let segments: Vec<Segment> = parts
            .iter()
            // The planted fault moves a continuation of a cached sequence, as a cache advanced
            // early would; a prompt starting from a shared prefix is a first prefill, left alone.
            .map(|(s, _)| {
                let early = kv_early && s.pos > 0 && s.from.is_none();
                Segment { pos: if early { s.pos + 1 } else { s.pos }, ..*s }
            })
            .collect();
        if !self.batches() {
            return Ok(None);
        }
        let ids: Vec<u32> = parts.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
        bind_device(&self.device)?;
        let input = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let model = &mut self.model;
        let Some(logits) = run_pass(&self.device, || model.forward_batch(&input, &segments))? else {
            return Ok(None);
        };
        let logits = logits.to_dtype(DType::F32)?;
        if let Some(factor) = crate::config::planted_slowdown() {
            std::thread::sleep(started.elapsed().mul_f64(factor - 1.0));
        }
        Ok(Some(logits))
    }

    /// A request's prompt ids as generation feeds them: BOS for an empty prompt, an error for one
    /// that leaves no room in the context.
    fn prompt_for(&self, request: &GenerateRequest<'_>) -> Result<Vec<u32>, EngineError> {
        let mut ids = self.encode_prompt(request.prompt, request.literal)?;
        if ids.is_empty() {
            ids.push(self.bos.ok_or(EngineError::EmptyPrompt)?);
        }
        if ids.len() >= self.context {
            return Err(EngineError::PromptTooLong { tokens: ids.len(), context: self.context });
        }
        Ok(ids)
    }
}

/// Makes `device`'s CUDA context current on this thread: a session is loaded on one thread and
/// driven from others (trial threads, the server's), where the driver would otherwise answer
/// `CUDA_ERROR_INVALID_CONTEXT`, and device memory freed on a thread without it is lost. Called
/// before every pass and every emptying of a cache. Nothing on the CPU.
fn bind_device(device: &Device) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let context = cuda.cuda_stream().context().clone();
        // cudarc keeps the last error that a free recorded, on whatever thread it ran, and
        // answers it from the next call that checks, the binding included: left there, it would
        // fail this pass, which did nothing wrong, and leave this thread unbound.
        let _ = context.check_err();
        context
            .bind_to_thread()
            .map_err(|e| candle_core::Error::Msg(format!("binding the CUDA context to this thread: {e}")))?;
    }
    let _ = device;
    Ok(())
}

/// Runs a forward pass: on the CPU, on the kernels' thread pool ([`modelqa_kernels::on_pool`]:
/// its products then split their work with the calling worker instead of waking the pool and
/// sleeping, ~170 times a decoded token); on a GPU, whose work the kernels do not do, on this
/// thread.
fn run_pass<R: Send>(device: &Device, pass: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() { modelqa_kernels::on_pool(pass) } else { pass() }
}

/// The crash the harness's own tests plant (`QUALIFY_FAULT_CRASH`), in the forward pass of the
/// trials it names (trial bodies run on threads named `trial <name>`; a batch generating a cell's
/// answers ahead counts for every trial it holds).
fn planted_crash() {
    let Some(fault) = crate::config::planted_crash() else { return };
    let here = std::thread::current();
    let name = here.name().unwrap_or("");
    // A batch generating a cell's answers ahead runs in one trial's thread for all of them.
    let named = |t: &str| name.contains(t) || crate::config::generating_for(t);
    if !name.starts_with("trial ") || fault.trial.as_deref().is_some_and(|t| !named(t)) {
        return;
    }
    match fault.kind {
        crate::config::CrashKind::Abort => std::process::abort(),
        crate::config::CrashKind::Segfault => {
            // The standard library's SIGSEGV handler (stack-overflow detection) takes the first
            // signal that is not a fault of its guard page, restores the default action and
            // returns; the second ends the process as a real segmentation fault does.
            #[cfg(unix)]
            for _ in 0..2 {
                let _ =
                    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::SEGV);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            // Should the signal still be caught, the trial hangs instead.
            loop {
                std::thread::park();
            }
        }
        crate::config::CrashKind::Hang => loop {
            std::thread::park();
        },
        crate::config::CrashKind::Panic => {
            panic!("a planted panic in the forward pass (QUALIFY_FAULT_CRASH)")
        }
    }
}
