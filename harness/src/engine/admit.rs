//! What the embedded engine admits: every model file checked before candle sees it. config.json
//! (or the config an APR file embeds) must hold bounded, consistent hyper-parameters, every
//! tensor the architecture's loader requests must be there in the shape it requests, safetensors
//! headers must tile their files, and a GGUF file must pass the pre-pass
//! (`format::gguf::check`). candle-transformers' loaders `unwrap()`, divide and reserve on these
//! numbers; here a bad file becomes a load error that names the file and the field.
//!
//! It also clamps the context a session builds rotary tables for (`limits::SESSION_CONTEXT`).
//! It never builds a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_transformers::models::quantized_llama;
use tokenizers::Tokenizer;

use super::EngineError;
use crate::format::hparams::{Hyperparameters, clamp_context};
use crate::format::limits;
use crate::format::safetensors_header::HeaderError;

fn refused(path: &Path, cause: impl Into<String>) -> EngineError {
    EngineError::Load { path: path.to_path_buf(), cause: cause.into() }
}

/// The problems a loader would meet, as one load error (the first few, then a count).
fn shape_error(path: &Path, problems: &[String]) -> Result<(), EngineError> {
    if problems.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
    let more = if problems.len() > 3 { format!(" and {} more", problems.len() - 3) } else { String::new() };
    Err(refused(path, format!("the weights do not fit config.json: {}{more}", shown.join("; "))))
}

/// The config of a Hugging Face directory, checked against the headers of its safetensors
/// files and clamped for the session: the config to give candle.
pub(super) fn hf_model(
    config_path: &Path,
    config: serde_json::Value,
    files: &[PathBuf],
) -> Result<serde_json::Value, EngineError> {
    let hyper =
        Hyperparameters::from_config(config_path, &config).map_err(|e| refused(config_path, e.cause()))?;
    let shapes = crate::format::safetensors_header::weight_shapes(files).map_err(|e| match e {
        HeaderError::Read { path, source } => EngineError::load_failed(&path, source),
        HeaderError::Invalid { path, what } => refused(&path, what),
    })?;
    let source = files.first().map_or(config_path, PathBuf::as_path);
    shape_error(source, &hyper.shape_problems(&shapes))?;
    Ok(clamp_context(config).0)
}

/// The config an APR file embeds, checked against its tensors, clamped for the session.
pub(super) fn apr_model(
    path: &Path,
    config: serde_json::Value,
    tensors: &[crate::format::apr::AprTensor],
) -> Result<serde_json::Value, EngineError> {
    let hyper = Hyperparameters::from_config(path, &config).map_err(|e| refused(path, e.cause()))?;
    let shapes: BTreeMap<String, Vec<usize>> =
        tensors.iter().map(|t| (t.name.clone(), t.shape.iter().map(|&d| d as usize).collect())).collect();
    shape_error(path, &hyper.shape_problems(&shapes))?;
    Ok(clamp_context(config).0)
}

/// A GGUF file opened through the pre-pass and the model check, its context clamped: the
/// file, candle's content, the session's context and the embedding's rows.
pub(super) fn gguf_model(
    path: &Path,
) -> Result<(std::fs::File, gguf_file::Content, usize, usize), EngineError> {
    let (file, mut content, model) = crate::format::gguf::open(path).map_err(|e| refused(path, e.cause()))?;
    // quantized_qwen2 builds its rotary tables for `qwen2.context_length` positions;
    // quantized_llama always for its own MAX_SEQ_LEN, past which it cannot run.
    let context = match model.architecture.as_str() {
        "qwen2" => {
            let context = model.context.min(limits::SESSION_CONTEXT);
            content.metadata.insert("qwen2.context_length".into(), Value::U32(context as u32));
            context as usize
        }
        _ => (model.context as usize).min(quantized_llama::MAX_SEQ_LEN),
    };
    Ok((file, content, context, model.vocab as usize))
}

/// A tokenizer whose ids all index the embedding: an id past the last row would make the first
/// forward pass read outside it.
pub(super) fn tokenizer_fits(path: &Path, tokenizer: &Tokenizer, rows: usize) -> Result<(), EngineError> {
    let size = tokenizer.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1);
    if size > rows {
        return Err(refused(
            path,
            format!("the tokenizer's ids reach {}, past the {rows} embedding rows", size - 1),
        ));
    }
    Ok(())
}
