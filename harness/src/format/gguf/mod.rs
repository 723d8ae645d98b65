//! GGUF, read and written with `candle_core::quantized::gguf_file`: a Hugging Face safetensors
//! directory as a GGUF file at a quantization people deploy, and a GGUF file (ours or one made
//! by llama.cpp's converter) back to named f32 tensors in the Hugging Face layout.
//!
//! Names follow llama.cpp (`blk.N.attn_q.weight`, …). For the llama convention (llama and
//! mistral, both written as GGUF architecture `llama`) the q and k projections are permuted
//! as llama.cpp's converter does, so interleaved rotary embeddings compute what the Hugging
//! Face model computes; qwen2 keeps its layout (its rotary embedding is the NeoX one).
//!
//! Quantization mixes follow llama.cpp's `llama_tensor_get_type`: 1-D tensors stay f32; the
//! `_m` mixes give `output.weight` Q6_K and `attn_v`/`ffn_down` Q6_K in the layers
//! `use_more_bits` picks. A tensor whose rows a K-quant block cannot tile falls back as
//! llama.cpp falls back (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, then F16), and every fallback
//! is listed in the file's `modelqa.fallbacks` metadata: nothing changes type silently.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::apr::{AprDType, AprFile, AprTensor};
use super::convert::{ConvertError, HfFiles};
use crate::matrix::Quantization;

/// Conversions of models with at least this many parameters show a progress bar. Smaller ones
/// take seconds, and they are what qualify trials convert, where a bar would cut into libtest's
/// lines on a terminal.
const PROGRESS_ABOVE: usize = 50_000_000;

/// Metadata key of the whole `tokenizer.json`, as llama.cpp's converter may write it.
pub const HF_TOKENIZER_JSON: &str = "tokenizer.huggingface.json";
/// Metadata keys under which a GGUF file written here keeps the Hugging Face files verbatim, so
/// a conversion back gives them unchanged (other GGUF files get them rebuilt from metadata).
pub const HF_CONFIG: &str = "modelqa.hf.config";
pub const HF_TOKENIZER_CONFIG: &str = "modelqa.hf.tokenizer_config";
pub const HF_GENERATION_CONFIG: &str = "modelqa.hf.generation_config";
/// Metadata key listing the tensors that fell back to another type, `name: wanted → written`.
pub const FALLBACKS: &str = "modelqa.fallbacks";

/// A quantization whose llama.cpp mix this project does not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {} mix is not implemented", .0.as_str())]
pub struct UnimplementedMix(pub Quantization);

/// Why the tokenizer (or the Hugging Face files) of a GGUF file cannot be built from its metadata.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    #[error("the embedded {HF_TOKENIZER_JSON}: {0}")]
    Embedded(#[source] tokenizers::Error),
    #[error(
        "tokenizer model `{0}` in the GGUF metadata is not supported (gpt2 BPE, or an embedded {HF_TOKENIZER_JSON})"
    )]
    UnsupportedModel(String),
    #[error("no {0}")]
    MissingKey(String),
    /// A value of a string list is not a string.
    #[error("{key}: {source}")]
    NotAString {
        key: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("the GGUF BPE vocabulary: {0}")]
    Vocabulary(#[source] tokenizers::Error),
    #[error("the GGUF control tokens: {0}")]
    ControlTokens(#[source] tokenizers::Error),
    /// The tokenizer does not serialise as `tokenizer.json`.
    #[error("the tokenizer: {0}")]
    Serialize(#[source] tokenizers::Error),
    /// The serialised tokenizer does not parse back as JSON.
    #[error("the tokenizer: {0}")]
    Json(#[source] serde_json::Error),
}

fn err(path: &Path, cause: impl std::fmt::Display) -> ConvertError {
    ConvertError::Read { path: path.to_path_buf(), cause: cause.to_string() }
}

/// The GGUF architecture of a Hugging Face `model_type`, and whether q/k are permuted.
pub fn architecture(model_type: &str) -> Option<(&'static str, bool)> {
    match model_type {
        "llama" | "mistral" => Some(("llama", true)),
        "qwen2" => Some(("qwen2", false)),
        _ => None,
    }
}

const LAYER_NAMES: [(&str, &str); 13] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
];

const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (_, g) = LAYER_NAMES.iter().find(|(h, _)| *h == rest)?;
    Some(format!("blk.{layer}.{g}"))
}

/// The Hugging Face name of a GGUF tensor name.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (h, _) = LAYER_NAMES.iter().find(|(_, g)| *g == rest)?;
    Some(format!("model.layers.{layer}.{h}"))
}

fn layer_of(gguf: &str) -> Option<usize> {
    gguf.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

/// llama.cpp's rows reordering of q/k for interleaved rotary embeddings: within each head, row
/// pairs `(i, i + d/2)` become neighbours. `inverse` undoes it.
pub fn permute_qk(t: &Tensor, heads: usize, inverse: bool) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: Vec<usize> = dims[1..].to_vec();
    let half = rows / heads / 2;
    let mut shape = vec![heads];
    shape.extend(if inverse { [half, 2] } else { [2, half] });
    shape.extend(&rest);
    t.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// `i` of `n` layers gets more bits in the `_m` mixes (llama.cpp's `use_more_bits`).
fn use_more_bits(i: usize, n: usize) -> bool {
    let first = n / 8;
    i < first || i >= 7 * n / 8 || (i - first) % 3 == 2
}

/// The type a tensor is written in at `q`, before any block fallback; invariant I-3 checks every
/// tensor of a GGUF file against it.
pub fn wanted_type(
    q: Quantization,
    name: &str,
    dims: &[usize],
    layers: usize,
) -> Result<GgmlDType, UnimplementedMix> {
    if dims.len() < 2 {
        return Ok(GgmlDType::F32);
    }
    let more_bits = |base: GgmlDType| {
        let tensor = name.rsplit_once('.').map_or(name, |(a, _)| a);
        let more = (tensor.ends_with("attn_v") || tensor.ends_with("ffn_down"))
            && layer_of(name).is_some_and(|i| use_more_bits(i, layers));
        if name == "output.weight" || more { GgmlDType::Q6K } else { base }
    };
    Ok(match q {
        Quantization::F32 => GgmlDType::F32,
        Quantization::F16 => GgmlDType::F16,
        Quantization::Q8_0 => GgmlDType::Q8_0,
        Quantization::Q6K => GgmlDType::Q6K,
        Quantization::Q5_0 => GgmlDType::Q5_0,
        Quantization::Q4_0 => GgmlDType::Q4_0,
        Quantization::Q5KM => more_bits(GgmlDType::Q5K),
        Quantization::Q4KM => more_bits(GgmlDType::Q4K),
        Quantization::Q3KM | Quantization::Q2K => return Err(UnimplementedMix(q)),
    })
}

/// llama.cpp's fallback for rows a block cannot tile.
fn fallback(t: GgmlDType) -> GgmlDType {
    match t {
        GgmlDType::Q4K | GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    }
}

/// llama.cpp's `general.file_type` of a quantization.
fn file_type(q: Quantization) -> u32 {
    match q {
        Quantization::F32 => 0,
        Quantization::F16 => 1,
        Quantization::Q4_0 => 2,
        Quantization::Q8_0 => 7,
        Quantization::Q5_0 => 8,
        Quantization::Q2K => 10,
        Quantization::Q3KM => 12,
        Quantization::Q4KM => 15,
        Quantization::Q5KM => 17,
        Quantization::Q6K => 18,
    }
}

fn u32_of(config: &serde_json::Value, key: &str) -> Option<u32> {
    config.get(key).and_then(|v| v.as_u64()).map(|v| v as u32)
}

/// A tensor written: its GGUF name, its data, and the fallback it took, if any.
type Written = (String, QTensor, Option<String>);

/// One tensor (`hf` its Hugging Face name, `name` its GGUF one) at the type mix `q` gives it, or
/// at the type llama.cpp falls back to when a block cannot tile its rows.
fn quantize_tensor(
    q: Quantization,
    hf: &str,
    name: &str,
    t: &Tensor,
    layers: usize,
) -> Result<Written, ConvertError> {
    let wanted = wanted_type(q, name, t.dims(), layers)?;
    let row = *t.dims().last().unwrap_or(&1);
    let mut written = wanted;
    while !row.is_multiple_of(written.block_size()) {
        written = fallback(written);
    }
    let qt = QTensor::quantize(t, written)
        .map_err(|e| ConvertError::Unsupported(format!("quantizing `{hf}` to {written:?}: {e}")))?;
    let note = (written != wanted).then(|| format!("{name}: {wanted:?} → {written:?} (rows of {row})"));
    Ok((name.to_string(), qt, note))
}

/// A safetensors model directory as GGUF bytes at quantization `q`; tensors are quantized in
/// parallel.
pub fn from_safetensors(dir: &Path, q: Quantization) -> Result<Vec<u8>, ConvertError> {
    let config_path = dir.join("config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).map_err(|e| err(&config_path, e))?)
            .map_err(|e| err(&config_path, e))?;
    let model_type = config["model_type"].as_str().unwrap_or_default().to_string();
    let (arch, permute) = architecture(&model_type).ok_or_else(|| {
        ConvertError::Unsupported(format!(
            "GGUF for model_type `{model_type}` (llama, mistral and qwen2 are)"
        ))
    })?;
    let heads =
        u32_of(&config, "num_attention_heads").ok_or_else(|| err(&config_path, "no num_attention_heads"))?;
    let kv_heads = u32_of(&config, "num_key_value_heads").unwrap_or(heads);
    let hidden = u32_of(&config, "hidden_size").ok_or_else(|| err(&config_path, "no hidden_size"))?;
    let layers =
        u32_of(&config, "num_hidden_layers").ok_or_else(|| err(&config_path, "no num_hidden_layers"))?;
    let head_dim = u32_of(&config, "head_dim").unwrap_or(hidden / heads);

    // Every tensor, in its Hugging Face name order, as f32 in the GGUF layout.
    let files = crate::engine::safetensors_files(dir).map_err(|e| err(dir, e))?;
    let mut named: Vec<(String, String, Tensor)> = Vec::new();
    for file in &files {
        let tensors = candle_core::safetensors::load(file, &Device::Cpu).map_err(|e| err(file, e))?;
        for (hf, t) in tensors {
            let name = gguf_name(&hf).ok_or_else(|| {
                ConvertError::Unsupported(format!(
                    "tensor `{hf}` has no GGUF name (nothing is dropped silently)"
                ))
            })?;
            let mut t = t.to_dtype(DType::F32).map_err(|e| err(file, e))?;
            if permute && (name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias")) {
                t = permute_qk(&t, heads as usize, false).map_err(|e| err(file, e))?;
            }
            if permute && (name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias")) {
                t = permute_qk(&t, kv_heads as usize, false).map_err(|e| err(file, e))?;
            }
            named.push((hf, name, t));
        }
    }
    named.sort_by(|a, b| a.1.cmp(&b.1));
    // Large models show a bar on a terminal: tensors done, and parameters, which tensors of very
    // different sizes make the better measure of the work left.
    let total: usize = named.iter().map(|(_, _, t)| t.elem_count()).sum();
    let bar = if total >= PROGRESS_ABOVE {
        crate::progress::bar(named.len() as u64, format!("quantizing to {}", q.as_str()))
    } else {
        crate::progress::ProgressBar::hidden()
    };
    let done = std::sync::atomic::AtomicUsize::new(0);
    let quantized: Vec<Result<Written, ConvertError>> = named
        .par_iter()
        .map(|(hf, name, t)| {
            let written = quantize_tensor(q, hf, name, t, layers as usize);
            let after = done.fetch_add(t.elem_count(), std::sync::atomic::Ordering::Relaxed) + t.elem_count();
            bar.set_message(format!("tensors, {}/{} M parameters", after / 1_000_000, total / 1_000_000));
            bar.inc(1);
            written
        })
        .collect();
    bar.finish_and_clear();
    let quantized: Vec<Written> = quantized.into_iter().collect::<Result<_, _>>()?;

    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into())),
        ),
        ("general.file_type".into(), Value::U32(file_type(q))),
        ("general.quantization_version".into(), Value::U32(2)),
        (
            format!("{arch}.context_length"),
            Value::U32(u32_of(&config, "max_position_embeddings").unwrap_or(2048)),
        ),
        (format!("{arch}.embedding_length"), Value::U32(hidden)),
        (format!("{arch}.block_count"), Value::U32(layers)),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(u32_of(&config, "intermediate_size").unwrap_or(0)),
        ),
        (format!("{arch}.attention.head_count"), Value::U32(heads)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(kv_heads)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(config["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(config["rope_theta"].as_f64().unwrap_or(10000.0) as f32),
        ),
        (format!("{arch}.rope.dimension_count"), Value::U32(head_dim)),
    ];
    md.extend(tokenizer_metadata(dir, &config)?);
    for (key, file) in [
        (HF_CONFIG, "config.json"),
        (HF_TOKENIZER_CONFIG, "tokenizer_config.json"),
        (HF_GENERATION_CONFIG, "generation_config.json"),
    ] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            md.push((key.to_string(), Value::String(text)));
        }
    }
    let fallbacks: Vec<Value> =
        quantized.iter().filter_map(|(_, _, n)| n.clone().map(Value::String)).collect();
    md.push((FALLBACKS.into(), Value::Array(fallbacks)));
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t, _)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md_refs, &tensor_refs).map_err(|e| err(dir, e))?;
    Ok(out.into_inner())
}

/// The tokenizer as llama.cpp's converter writes a BPE one (`gpt2`: tokens, types, merges, bos
/// and eos), the whole `tokenizer.json` under [`HF_TOKENIZER_JSON`], and the chat template.
fn tokenizer_metadata(dir: &Path, config: &serde_json::Value) -> Result<Vec<(String, Value)>, ConvertError> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e))?;
    let tok: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&path, e))?;
    let mut by_id: BTreeMap<u64, (String, i32)> = BTreeMap::new();
    if let Some(vocab) = tok["model"]["vocab"].as_object() {
        for (t, id) in vocab {
            if let Some(id) = id.as_u64() {
                by_id.insert(id, (t.clone(), 1));
            }
        }
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            let kind = if added["special"].as_bool().unwrap_or(false) { 3 } else { 4 };
            by_id.insert(id, (content.to_string(), kind));
        }
    }
    let rows =
        u32_of(config, "vocab_size").map_or(0, u64::from).max(by_id.keys().next_back().map_or(0, |m| m + 1));
    let mut tokens = Vec::with_capacity(rows as usize);
    let mut types = Vec::with_capacity(rows as usize);
    for id in 0..rows {
        let (t, kind) = by_id.remove(&id).unwrap_or_else(|| (format!("[PAD{id}]"), 5));
        tokens.push(Value::String(t));
        types.push(Value::I32(kind));
    }
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(pair) => {
                Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?))
            }
            _ => None,
        })
        .map(Value::String)
        .collect();
    let mut md = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        (HF_TOKENIZER_JSON.to_string(), Value::String(text)),
    ];
    for (key, field) in
        [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")]
    {
        if let Some(id) = config[field].as_u64().or_else(|| config[field][0].as_u64()) {
            md.push((key.to_string(), Value::U32(id as u32)));
        }
    }
    let tc_path = dir.join("tokenizer_config.json");
    if let Ok(tc) = std::fs::read_to_string(&tc_path) {
        let tc: serde_json::Value = serde_json::from_str(&tc).map_err(|e| err(&tc_path, e))?;
        if let Some(template) = crate::chat::ChatTemplate::from_tokenizer_config(&tc) {
            md.push(("tokenizer.chat_template".to_string(), Value::String(template.source)));
        }
    }
    Ok(md)
}

/// The tokenizer a GGUF file carries: the whole `tokenizer.json` where it is embedded, else a
/// byte-level BPE built from `tokenizer.ggml.tokens` and `merges` (llama.cpp's `gpt2` model)
/// with its control tokens as special tokens.
pub fn tokenizer(md: &HashMap<String, Value>) -> Result<tokenizers::Tokenizer, GgufTokenizerError> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    if let Some(json) = md.get(HF_TOKENIZER_JSON).and_then(|v| v.to_string().ok()) {
        return tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(GgufTokenizerError::Embedded);
    }
    let kind = md.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if kind != "gpt2" {
        return Err(GgufTokenizerError::UnsupportedModel(kind));
    }
    let strings = |key: &str| -> Result<Vec<_>, GgufTokenizerError> {
        let values = md
            .get(key)
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| GgufTokenizerError::MissingKey(key.to_string()))?;
        values
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|source| GgufTokenizerError::NotAString { key: key.to_string(), source })
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe =
        BPE::builder().vocab_and_merges(vocab, merges).build().map_err(GgufTokenizerError::Vocabulary)?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let types = md.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok());
    let control: Vec<tokenizers::AddedToken> = types
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, t)| t.to_i32().ok() == Some(3))
        .filter_map(|(i, _)| tokens.get(i))
        .map(|t| tokenizers::AddedToken::from(t.clone(), true))
        .collect();
    tokenizer.add_special_tokens(control).map_err(GgufTokenizerError::ControlTokens)?;
    Ok(tokenizer)
}

/// The Hugging Face files of a GGUF file: the ones this project embedded, verbatim, or else
/// rebuilt from the GGUF hyper-parameters and tokenizer.
pub fn hf_files(md: &HashMap<String, Value>, has_output: bool) -> Result<HfFiles, GgufTokenizerError> {
    let embedded = |key: &str| -> Option<serde_json::Value> {
        md.get(key).and_then(|v| v.to_string().ok()).and_then(|t| serde_json::from_str(t).ok())
    };
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let int = |key: &str| md.get(&format!("{arch}.{key}")).and_then(|v| v.to_u32().ok());
    let float = |key: &str| md.get(&format!("{arch}.{key}")).and_then(|v| v.to_f32().ok()).map(f64::from);
    let id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let tokenizer = tokenizer(md)?;
    let config = match embedded(HF_CONFIG) {
        Some(c) => c,
        None => serde_json::json!({
            "model_type": arch,
            "architectures": [if arch == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "hidden_size": int("embedding_length"),
            "intermediate_size": int("feed_forward_length"),
            "num_hidden_layers": int("block_count"),
            "num_attention_heads": int("attention.head_count"),
            "num_key_value_heads": int("attention.head_count_kv"),
            "rms_norm_eps": float("attention.layer_norm_rms_epsilon"),
            "rope_theta": float("rope.freq_base").unwrap_or(10000.0),
            "max_position_embeddings": int("context_length"),
            "hidden_act": "silu",
            "sliding_window": int("context_length"),
            "use_sliding_window": false,
            "max_window_layers": int("block_count"),
            "vocab_size": tokenizer.get_vocab_size(true),
            "tie_word_embeddings": !has_output,
            "bos_token_id": id("tokenizer.ggml.bos_token_id"),
            "eos_token_id": id("tokenizer.ggml.eos_token_id"),
        }),
    };
    let tokenizer_json = match md.get(HF_TOKENIZER_JSON).and_then(|v| v.to_string().ok()) {
        Some(json) => json.clone(),
        None => tokenizer.to_string(false).map_err(GgufTokenizerError::Serialize)?,
    };
    let tokenizer_config = embedded(HF_TOKENIZER_CONFIG).or_else(|| {
        md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).map(|t| {
            let text = |key: &str| id(key).and_then(|i| tokenizer.id_to_token(i));
            serde_json::json!({"chat_template": t, "bos_token": text("tokenizer.ggml.bos_token_id"), "eos_token": text("tokenizer.ggml.eos_token_id")})
        })
    });
    Ok(HfFiles {
        config,
        tokenizer: serde_json::from_str(&tokenizer_json).map_err(GgufTokenizerError::Json)?,
        tokenizer_config,
        generation_config: embedded(HF_GENERATION_CONFIG),
    })
}

/// One tensor of a GGUF file in the Hugging Face layout, its bytes as stored (q/k rows put back
/// in the Hugging Face order for the llama convention; GGML blocks never straddle rows).
struct RawTensor {
    name: String,
    dtype: GgmlDType,
    dims: Vec<usize>,
    data: Vec<u8>,
}

fn raw_tensors(path: &Path) -> Result<(Vec<RawTensor>, HashMap<String, Value>), ConvertError> {
    let mut file = std::fs::File::open(path).map_err(|e| err(path, e))?;
    let content =
        gguf_file::Content::read(&mut file).map_err(|e| err(path, format!("not a GGUF file: {e}")))?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let heads = |key: &str| {
        content.metadata.get(&format!("{arch}.{key}")).and_then(|v| v.to_u32().ok()).map(|v| v as usize)
    };
    let (q_heads, kv_heads) = (heads("attention.head_count"), heads("attention.head_count_kv"));
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let hf =
            hf_name(name).ok_or_else(|| err(path, format!("tensor `{name}` has no Hugging Face name")))?;
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        let dims = q.shape().dims().to_vec();
        let mut data = q.data().map_err(|e| err(path, e))?.into_owned();
        let heads = if name.contains(".attn_q.") {
            q_heads
        } else if name.contains(".attn_k.") {
            kv_heads.or(q_heads)
        } else {
            None
        };
        if let (true, Some(h)) = (arch == "llama", heads) {
            data = permute_rows(&data, dims[0], h).map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        }
        out.push(RawTensor { name: hf, dtype: q.dtype(), dims, data });
    }
    Ok((out, content.metadata))
}

/// Rows of a row-major tensor's bytes in the order [`permute_qk`]`(…, inverse)` gives.
fn permute_rows(data: &[u8], rows: usize, heads: usize) -> candle_core::Result<Vec<u8>> {
    let index = Tensor::arange(0u32, rows as u32, &Device::Cpu)?.to_dtype(DType::F32)?;
    let order = permute_qk(&index, heads, true)?.to_vec1::<f32>()?;
    let row = data.len() / rows;
    Ok(order.iter().flat_map(|&r| &data[r as usize * row..(r as usize + 1) * row]).copied().collect())
}

/// A GGUF file as APR: tensors in their stored types where APR holds them byte for byte (F32,
/// F16, Q4_K, Q6_K); any other type is an error, never a silent conversion.
pub fn to_apr(path: &Path) -> Result<AprFile, ConvertError> {
    let (raw, md) = raw_tensors(path)?;
    let has_output = raw.iter().any(|t| t.name == "lm_head.weight");
    let hf = hf_files(&md, has_output).map_err(|e| err(path, e))?;
    let mut tensors = Vec::with_capacity(raw.len());
    for t in raw {
        let dtype = match t.dtype {
            GgmlDType::F32 => AprDType::F32,
            GgmlDType::F16 => AprDType::F16,
            GgmlDType::Q4K => AprDType::Q4K,
            GgmlDType::Q6K => AprDType::Q6K,
            other => {
                return Err(ConvertError::Dtype { name: t.name, dtype: format!("{other:?}"), format: "APR" });
            }
        };
        tensors.push(AprTensor {
            name: t.name,
            dtype,
            shape: t.dims.iter().map(|&d| d as u64).collect(),
            data: t.data,
        });
    }
    Ok(super::convert::apr_file(hf, tensors, "gguf"))
}

/// A GGUF file back to a Hugging Face directory: F32 and F16 tensors byte for byte; quantized
/// types have no safetensors equivalent and are an error, never a silent dequantization.
pub fn to_safetensors(path: &Path, out: &Path) -> Result<(), ConvertError> {
    let (raw, md) = raw_tensors(path)?;
    let has_output = raw.iter().any(|t| t.name == "lm_head.weight");
    let hf = hf_files(&md, has_output).map_err(|e| err(path, e))?;
    let mut views = Vec::with_capacity(raw.len());
    for t in &raw {
        let dtype = match t.dtype {
            GgmlDType::F32 => safetensors::Dtype::F32,
            GgmlDType::F16 => safetensors::Dtype::F16,
            other => {
                return Err(ConvertError::Dtype {
                    name: t.name.clone(),
                    dtype: format!("{other:?}"),
                    format: "safetensors",
                });
            }
        };
        let view = safetensors::tensor::TensorView::new(dtype, t.dims.clone(), &t.data)
            .map_err(|e| err(path, format!("tensor `{}`: {e}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::write(p, bytes)
            .map_err(|e| ConvertError::Write { path: p.to_path_buf(), cause: e.to_string() })
    };
    std::fs::create_dir_all(out)
        .map_err(|e| ConvertError::Write { path: out.to_path_buf(), cause: e.to_string() })?;
    let model = out.join("model.safetensors");
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| ConvertError::Write { path: model.clone(), cause: e.to_string() })?;
    write(&model, &bytes)?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    write(&out.join("config.json"), pretty(&hf.config).as_bytes())?;
    write(&out.join("tokenizer.json"), pretty(&hf.tokenizer).as_bytes())?;
    if let Some(c) = &hf.tokenizer_config {
        write(&out.join("tokenizer_config.json"), pretty(c).as_bytes())?;
    }
    if let Some(c) = &hf.generation_config {
        write(&out.join("generation_config.json"), pretty(c).as_bytes())?;
    }
    Ok(())
}

/// A GGUF file's tensors dequantized to f32 under their Hugging Face names, q/k un-permuted
/// for the llama convention, with the GGUF type each was stored in.
pub struct Dequantized {
    pub tensors: BTreeMap<String, (Tensor, GgmlDType)>,
    pub metadata: HashMap<String, Value>,
}

/// Reads and dequantizes a GGUF file.
pub fn dequantize(path: &Path) -> Result<Dequantized, ConvertError> {
    let mut file = std::fs::File::open(path).map_err(|e| err(path, e))?;
    let content =
        gguf_file::Content::read(&mut file).map_err(|e| err(path, format!("not a GGUF file: {e}")))?;
    let arch = content.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned();
    let arch = arch.ok_or_else(|| err(path, "no general.architecture"))?;
    let permuted = arch == "llama";
    let count = |key: &str| -> Result<usize, ConvertError> {
        content
            .metadata
            .get(&format!("{arch}.{key}"))
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
            .ok_or_else(|| err(path, format!("no {arch}.{key}")))
    };
    let heads = count("attention.head_count")?;
    let kv_heads = count("attention.head_count_kv").unwrap_or(heads);
    let mut tensors = BTreeMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let hf =
            hf_name(name).ok_or_else(|| err(path, format!("tensor `{name}` has no Hugging Face name")))?;
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        let dtype = q.dtype();
        let mut t = q.dequantize(&Device::Cpu).map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        if permuted && (name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias")) {
            t = permute_qk(&t, heads, true).map_err(|e| err(path, e))?;
        }
        if permuted && (name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias")) {
            t = permute_qk(&t, kv_heads, true).map_err(|e| err(path, e))?;
        }
        tensors.insert(hf, (t, dtype));
    }
    Ok(Dequantized { tensors, metadata: content.metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.11.self_attn.k_proj.bias",
            "model.layers.0.mlp.down_proj.weight",
        ] {
            let g = gguf_name(hf).unwrap();
            assert_eq!(hf_name(&g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(gguf_name("model.layers.3.mlp.gate_proj.weight").unwrap(), "blk.3.ffn_gate.weight");
        assert!(gguf_name("model.layers.x.mlp.up_proj.weight").is_none());
        assert!(gguf_name("vision.patch_embed.weight").is_none());
    }

    #[test]
    fn the_qk_permutation_is_llama_cpps_and_inverts() {
        // 2 heads of dimension 4: rows (0,1,2,3 | 4,5,6,7) become (0,2,1,3 | 4,6,5,7).
        let t = Tensor::arange(0f32, 8., &Device::Cpu).unwrap().reshape((8, 1)).unwrap();
        let p = permute_qk(&t, 2, false).unwrap();
        assert_eq!(p.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0., 2., 1., 3., 4., 6., 5., 7.]);
        let back = permute_qk(&p, 2, true).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0., 1., 2., 3., 4., 5., 6., 7.]);
    }

    #[test]
    fn the_m_mixes_give_more_bits_where_llama_cpp_does() {
        let dims = [256, 256];
        let t = |name: &str| wanted_type(Quantization::Q4KM, name, &dims, 24).unwrap();
        assert_eq!(t("output.weight"), GgmlDType::Q6K);
        assert_eq!(t("blk.0.attn_v.weight"), GgmlDType::Q6K);
        assert_eq!(t("blk.4.attn_v.weight"), GgmlDType::Q4K);
        assert_eq!(t("blk.5.ffn_down.weight"), GgmlDType::Q6K); // (5 - 3) % 3 == 2
        assert_eq!(t("blk.23.ffn_down.weight"), GgmlDType::Q6K);
        assert_eq!(t("blk.4.attn_q.weight"), GgmlDType::Q4K);
        assert_eq!(
            wanted_type(Quantization::Q4KM, "blk.0.attn_norm.weight", &[256], 24).unwrap(),
            GgmlDType::F32
        );
        assert_eq!(fallback(GgmlDType::Q4K), GgmlDType::Q5_0);
        assert_eq!(fallback(GgmlDType::Q6K), GgmlDType::Q8_0);
    }
}
