//! What the embedded engine admits: every model file checked before candle sees it. config.json
//! (or the config an APR file embeds) must hold bounded, consistent hyper-parameters, every
//! tensor the architecture's loader requests must be there in the shape it requests, safetensors
//! headers must tile their files, and a GGUF file must pass the pre-pass
//! (`format::gguf::check`). candle-transformers' loaders `unwrap()`, divide and reserve on these
//! numbers; here a bad file becomes a load error that names the file and the field.
//!
//! The config candle gets is the one `format::hf_config` normalised (either transformers'
//! spelling; a field the engine would not honour is refused by name). It also clamps the
//! context a session builds rotary tables for (`limits::SESSION_CONTEXT`).
//! It never builds a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_transformers::models::quantized_llama;
use tokenizers::Tokenizer;

use super::EngineError;
use crate::format::hf_config::normalise;
use crate::format::hparams::{Hyperparameters, clamp_context};
use crate::format::limits;
use crate::format::safetensors_header::HeaderError;

/// How a session learns its files' hashes: remembered in the cache for trials, elsewhere for
/// fuzzing, whose temporary files would only fill the cache.
pub(crate) type HashFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<crate::format::files::ModelFile>;

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

/// A model whose files hold weights its loader would not read, refused naming them.
fn unread_error(
    path: &Path,
    hyper: &Hyperparameters,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(), EngineError> {
    let unread = hyper.unread_tensors(shapes);
    if unread.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = unread.iter().take(3).map(String::as_str).collect();
    let more = if unread.len() > 3 { format!(" and {} more", unread.len() - 3) } else { String::new() };
    Err(refused(
        path,
        format!(
            "the weights hold tensors the engine's {} would not read: {}{more} (config.json states a layout or a field the engine does not honour)",
            hyper.model_type,
            shown.join(", ")
        ),
    ))
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
    let config = normalise(config_path, &config).map_err(|e| refused(config_path, e.cause()))?;
    unread_error(source, &hyper, &shapes)?;
    Ok(clamp_context(config).0)
}

/// The config an APR file embeds, checked against its tensors, clamped for the session.
pub(super) fn apr_model(
    path: &Path,
    config: serde_json::Value,
    tensors: &[crate::format::apr::AprEntry],
) -> Result<serde_json::Value, EngineError> {
    let shapes: BTreeMap<String, Vec<usize>> =
        tensors.iter().map(|t| (t.name.clone(), t.shape.iter().map(|&d| d as usize).collect())).collect();
    let hyper = Hyperparameters::from_config(path, &config).map_err(|e| refused(path, e.cause()))?;
    let config = config_with_shapes(path, config, &shapes)?;
    unread_error(path, &hyper, &shapes)?;
    Ok(config)
}

/// A config (embedded in a file, or rebuilt from a GGUF's metadata) checked against the shapes
/// of the tensors it comes with, normalised and clamped for the session.
pub(super) fn config_with_shapes(
    path: &Path,
    config: serde_json::Value,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<serde_json::Value, EngineError> {
    let hyper = Hyperparameters::from_config(path, &config).map_err(|e| refused(path, e.cause()))?;
    shape_error(path, &hyper.shape_problems(shapes))?;
    let config = normalise(path, &config).map_err(|e| refused(path, e.cause()))?;
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

/// [`tokenizer_fits`] the `vocab_size` of a config [`hf_model`] or [`apr_model`] admitted.
pub(super) fn tokenizer_fits_config(
    path: &Path,
    tokenizer: &Tokenizer,
    config: &serde_json::Value,
) -> Result<(), EngineError> {
    let rows = config.get("vocab_size").and_then(serde_json::Value::as_u64).unwrap_or(0);
    tokenizer_fits(path, tokenizer, rows as usize)
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

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::{GenerateRequest, Session as _, load_candle};
    use crate::fuzz::models::seeds;
    use crate::matrix::Backend;

    /// The load of `path`: its error, asserted not to panic.
    fn load_error(path: &Path) -> String {
        let loaded = catch_unwind(AssertUnwindSafe(|| load_candle(path, Backend::Cpu).map(|_| ())));
        loaded.expect("the load does not panic").expect_err("the load refuses the model").to_string()
    }

    /// A tiny llama directory with `field` of its config.json set to `value`.
    fn with_config(dir: &Path, field: &str, value: serde_json::Value) -> PathBuf {
        let model = seeds::tiny_dir(dir, "llama");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
        config[field] = value;
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        model
    }

    #[test]
    fn a_clean_tiny_model_of_each_format_loads_and_generates() {
        let dir = tempfile::tempdir().unwrap();
        let apr = dir.path().join("tiny.apr");
        std::fs::write(&apr, seeds::tiny_apr(dir.path())).unwrap();
        let gguf = dir.path().join("tiny.gguf");
        std::fs::write(&gguf, seeds::tiny_gguf(dir.path(), "qwen2")).unwrap();
        let mut paths = vec![apr, gguf];
        for arch in ["llama", "qwen2", "mistral"] {
            paths.push(seeds::tiny_dir(dir.path(), arch));
        }
        for path in paths {
            let mut s =
                load_candle(&path, Backend::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let deadline = Instant::now() + Duration::from_secs(30);
            let g = s.generate(&GenerateRequest::greedy("a b c", 2, deadline)).unwrap();
            assert_eq!(g.prompt_tokens, 3, "{}", path.display());
        }
    }

    #[test]
    fn context_lengths_past_the_limit_are_refused_before_any_table_is_built() {
        let dir = tempfile::tempdir().unwrap();
        for (value, shown) in [(1u64 << 31, "2147483648"), (1_000_000_000_000, "1000000000000")] {
            let model = with_config(dir.path(), "max_position_embeddings", value.into());
            let e = load_error(&model);
            let want = format!(
                "config.json: `max_position_embeddings` is {shown}, more than the 4194304 tokens of context this harness loads"
            );
            assert!(e.contains(&want), "`{e}` lacks `{want}`");
        }
        // A real long context loads at once: candle's tables are built for the session's context.
        let model = with_config(dir.path(), "max_position_embeddings", 1_010_000.into());
        let started = Instant::now();
        let mut s = load_candle(&model, Backend::Cpu).expect("a 1M-token context loads");
        let long = "a ".repeat(131_073);
        let e = s.generate(&GenerateRequest::greedy(&long, 1, Instant::now() + Duration::from_secs(30)));
        assert!(
            matches!(e, Err(crate::engine::EngineError::PromptTooLong { context: 131_072, .. })),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    }

    #[test]
    fn counts_and_heads_that_cannot_be_loaded_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (field, value, want) in [
            (
                "num_hidden_layers",
                serde_json::json!(1_000_000_000_000u64),
                "`num_hidden_layers` is 1000000000000, more than the 1024 layers this harness loads",
            ),
            ("num_attention_heads", 3.into(), "`hidden_size` 8 is not divisible by num_attention_heads 3"),
            ("num_key_value_heads", 0.into(), "`num_key_value_heads` is 0; it must be at least 1"),
            ("vocab_size", 32.into(), "config.json declares vocab_size 32, the embedding has 16 rows"),
        ] {
            let e = load_error(&with_config(dir.path(), field, value));
            assert!(
                e.contains(want) && e.contains("failed to load the model from"),
                "{field}: `{e}` lacks `{want}`"
            );
        }
    }

    #[test]
    fn a_changed_tensor_shape_is_a_load_error_not_a_panic_in_the_loader() {
        let dir = tempfile::tempdir().unwrap();
        let model = seeds::tiny_dir(dir.path(), "llama");
        let weights = std::fs::read(model.join("model.safetensors")).unwrap();
        for (name, shape, want) in [
            (
                "model.layers.0.self_attn.q_proj.weight",
                vec![4, 16],
                "the weights do not fit config.json: tensor model.layers.0.self_attn.q_proj.weight has shape [4, 16], the config implies [8, 8]",
            ),
            (
                "lm_head.weight",
                vec![8, 16],
                "tensor lm_head.weight has shape [8, 16], the config implies [16, 8] (transposed)",
            ),
        ] {
            std::fs::write(model.join("model.safetensors"), seeds::reshaped(&weights, name, shape)).unwrap();
            let e = load_error(&model);
            assert!(e.contains(want) && e.contains("model.safetensors"), "`{e}` lacks `{want}`");
        }
        // With tied embeddings llama asks for no lm_head; one that is there goes unused.
        let tied = with_config(dir.path(), "tie_word_embeddings", true.into());
        load_candle(&tied, Backend::Cpu).expect("tied llama loads with its lm_head unused");
    }

    #[test]
    fn apr_counts_and_empty_tensors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let apr = seeds::tiny_apr(dir.path());
        let path = dir.path().join("m.apr");
        std::fs::write(&path, seeds::apr_with_count(&apr, 1 << 31)).unwrap();
        let e = load_error(&path);
        assert!(
            e.contains("the header counts 2147483648 tensors, more than the 65536 a file may hold"),
            "{e}"
        );
        let zero = seeds::all().into_iter().find(|(_, n, _)| n == "zero-dim-q4k.apr").unwrap().2;
        std::fs::write(&path, zero).unwrap();
        let e = load_error(&path);
        assert!(e.contains("tensor `zz.empty`: shape [0, 256] has a zero dimension"), "{e}");
    }
}
