//! Gateway G0, integrity: a model directory is checked against itself before anything runs it.
//! config.json must agree with the tensors and with the playbook's expectations, every tensor
//! the architecture needs must be there in the right shape and a float dtype, no weight may be
//! NaN or infinite, no norm may be all zeros, and the tokenizer must fit the embedding.
//!
//! It reads files and never runs a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::playbook::spec::ExpectedShape;

/// What G0 found: nothing wrong, or every problem by name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IntegrityReport {
    pub tensors: usize,
    pub parameters: u64,
    pub problems: Vec<String>,
}

/// The numbers config.json declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Declared {
    hidden: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    intermediate: u64,
    vocab: u64,
    tied: bool,
}

/// Why G0 could not look at a model at all: its report then holds this one problem.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntegrityError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config.json has no integer `{0}`")]
    MissingNumber(&'static str),
    #[error(transparent)]
    Files(#[from] crate::format::files::ModelFilesError),
    #[error("{path} is truncated or corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
}

fn number(config: &serde_json::Value, key: &'static str) -> Result<u64, IntegrityError> {
    config.get(key).and_then(serde_json::Value::as_u64).ok_or(IntegrityError::MissingNumber(key))
}

/// Runs every check; an unreadable model is a report with that one problem.
pub(crate) fn check(dir: &Path, expect: &ExpectedShape, architecture: Option<&str>) -> IntegrityReport {
    let mut report = IntegrityReport { tensors: 0, parameters: 0, problems: Vec::new() };
    if let Err(e) = check_into(dir, expect, architecture, &mut report) {
        report.problems.push(e.to_string());
    }
    report
}

fn check_into(
    dir: &Path,
    expect: &ExpectedShape,
    architecture: Option<&str>,
    report: &mut IntegrityReport,
) -> Result<(), IntegrityError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|source| IntegrityError::Read { path: config_path.clone(), source })?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| IntegrityError::Json { path: config_path.clone(), source })?;
    let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if let Some(want) = architecture
        && want != model_type
    {
        report
            .problems
            .push(format!("config.json declares model_type `{model_type}`, the playbook expects `{want}`"));
    }
    let heads = number(&config, "num_attention_heads")?;
    let d = Declared {
        hidden: number(&config, "hidden_size")?,
        layers: number(&config, "num_hidden_layers")?,
        heads,
        kv_heads: config.get("num_key_value_heads").and_then(|v| v.as_u64()).unwrap_or(heads),
        intermediate: number(&config, "intermediate_size")?,
        vocab: number(&config, "vocab_size")?,
        tied: config.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false),
    };
    for (what, declared, expected) in [
        ("hidden_size", d.hidden, expect.hidden_size),
        ("num_hidden_layers", d.layers, expect.num_layers),
        ("num_attention_heads", d.heads, expect.num_heads),
        ("num_key_value_heads", d.kv_heads, expect.num_kv_heads),
        ("intermediate_size", d.intermediate, expect.intermediate_size),
        ("vocab_size", d.vocab, expect.vocab_size),
    ] {
        if let Some(e) = expected
            && e != declared
        {
            report.problems.push(format!("config.json declares {what} {declared}, the playbook expects {e}"));
        }
    }
    if let Some(e) = expect.context_length {
        match config.get("max_position_embeddings").and_then(serde_json::Value::as_u64) {
            Some(declared) if declared != e => report.problems.push(format!(
                "config.json declares max_position_embeddings {declared}, the playbook expects a context of {e}"
            )),
            Some(_) => {}
            None => report.problems.push(format!(
                "config.json declares no max_position_embeddings, the playbook expects a context of {e}"
            )),
        }
    }
    if d.heads == 0
        || d.kv_heads == 0
        || !d.hidden.is_multiple_of(d.heads)
        || !d.heads.is_multiple_of(d.kv_heads)
    {
        report.problems.push(format!(
            "config.json's heads do not divide: hidden_size {}, num_attention_heads {}, num_key_value_heads {}",
            d.hidden, d.heads, d.kv_heads
        ));
        return Ok(());
    }

    let files = crate::format::files::safetensors_files(dir)?;
    let mut shapes: BTreeMap<String, (Vec<usize>, Dtype)> = BTreeMap::new();
    for file in &files {
        let bytes =
            std::fs::read(file).map_err(|source| IntegrityError::Read { path: file.clone(), source })?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|source| IntegrityError::Corrupt { path: file.clone(), source })?;
        for (name, view) in st.tensors() {
            report.tensors += 1;
            report.parameters += view.shape().iter().product::<usize>() as u64;
            if let Some(p) = scan_values(&name, view.dtype(), view.data()) {
                report.problems.push(p);
            }
            shapes.insert(name, (view.shape().to_vec(), view.dtype()));
        }
    }
    check_tensors(&d, model_type, &shapes, &mut report.problems);
    check_tokenizer(dir, &d, &mut report.problems);
    Ok(())
}

/// NaN, infinities, and norms that are all zeros.
fn scan_values(name: &str, dtype: Dtype, data: &[u8]) -> Option<String> {
    let values: Box<dyn Iterator<Item = f32>> = match dtype {
        Dtype::F32 => Box::new(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Dtype::F16 => Box::new(data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        Dtype::BF16 => {
            Box::new(data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        other => return Some(format!("tensor {name} has dtype {other:?}; weights must be F32, F16 or BF16")),
    };
    let (mut nan, mut inf, mut nonzero, mut n) = (0u64, 0u64, 0u64, 0u64);
    for v in values {
        n += 1;
        if v.is_nan() {
            nan += 1;
        } else if v.is_infinite() {
            inf += 1;
        } else if v != 0.0 {
            nonzero += 1;
        }
    }
    if nan > 0 || inf > 0 {
        return Some(format!("tensor {name} holds {nan} NaN and {inf} infinite values of {n}"));
    }
    if name.contains("norm") && n > 0 && nonzero == 0 {
        return Some(format!("norm tensor {name} is all zeros (a zeroed norm erases its layer's input)"));
    }
    None
}

fn check_tensors(
    d: &Declared,
    model_type: &str,
    shapes: &BTreeMap<String, (Vec<usize>, Dtype)>,
    problems: &mut Vec<String>,
) {
    let (h, kv) = (d.hidden as usize, (d.kv_heads * (d.hidden / d.heads)) as usize);
    let (inter, vocab) = (d.intermediate as usize, d.vocab as usize);
    let mut expected: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, h]), ("model.norm.weight".into(), vec![h])];
    if !d.tied {
        expected.push(("lm_head.weight".into(), vec![vocab, h]));
    }
    for l in 0..d.layers {
        let p = format!("model.layers.{l}");
        expected.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
            (format!("{p}.mlp.gate_proj.weight"), vec![inter, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![inter, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, inter]),
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        ]);
        if model_type == "qwen2" {
            expected.extend([
                (format!("{p}.self_attn.q_proj.bias"), vec![h]),
                (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
                (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
            ]);
        }
    }
    // Layers in the weights against layers in the config.
    let weight_layers = shapes
        .keys()
        .filter_map(|n| n.strip_prefix("model.layers.")?.split('.').next()?.parse::<u64>().ok())
        .max()
        .map_or(0, |m| m + 1);
    if weight_layers != d.layers {
        problems.push(format!("config.json declares {} layers, the weights hold {weight_layers}", d.layers));
    }
    if let Some((shape, _)) = shapes.get("model.embed_tokens.weight")
        && shape.len() == 2
    {
        if shape[0] != vocab {
            problems.push(format!(
                "config.json declares vocab_size {vocab}, the embedding has {} rows",
                shape[0]
            ));
        }
        if shape[1] != h {
            problems
                .push(format!("config.json declares hidden_size {h}, the embedding is {} wide", shape[1]));
        }
    }
    let mut missing = Vec::new();
    for (name, want) in &expected {
        match shapes.get(name) {
            None => missing.push(name.clone()),
            Some((got, _)) if got == want => {}
            Some((got, _)) => {
                let mut reversed = got.clone();
                reversed.reverse();
                let why = if reversed == *want && got != want { " (transposed)" } else { "" };
                problems.push(format!("tensor {name} has shape {got:?}, the config implies {want:?}{why}"));
            }
        }
    }
    // q and k projections exchanged: each has the other's shape.
    for l in 0..d.layers {
        let q = shapes.get(&format!("model.layers.{l}.self_attn.q_proj.weight")).map(|s| &s.0);
        let k = shapes.get(&format!("model.layers.{l}.self_attn.k_proj.weight")).map(|s| &s.0);
        if kv != h
            && let (Some(q), Some(k)) = (q, k)
            && q == &vec![kv, h]
            && k == &vec![h, h]
        {
            problems.push(format!("layer {l}: q_proj and k_proj are swapped (each has the other's shape)"));
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        let more = if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
        problems.push(format!("{} required tensors are missing: {}{more}", missing.len(), shown.join(", ")));
    }
}

fn check_tokenizer(dir: &Path, d: &Declared, problems: &mut Vec<String>) {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        problems.push(format!("the tokenizer is missing: no {}", path.display()));
        return;
    }
    match tokenizers::Tokenizer::from_file(&path) {
        Err(e) => problems.push(format!("{} does not load: {e}", path.display())),
        Ok(t) => {
            let size = t.get_vocab_size(true) as u64;
            if size > d.vocab {
                problems.push(format!(
                    "the tokenizer has {size} tokens, more than the {} embedding rows",
                    d.vocab
                ));
            }
        }
    }
}
