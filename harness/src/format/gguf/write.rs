//! Safetensors → GGUF: the tensors in llama.cpp's names, layout and quantization mixes (with
//! their block fallbacks listed), and the tokenizer and Hugging Face files as metadata.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::{
    FALLBACKS, HF_CONFIG, HF_GENERATION_CONFIG, HF_TOKENIZER_CONFIG, HF_TOKENIZER_JSON, UnimplementedMix,
    architecture, err, gguf_name, layer_of,
};
use crate::format::convert::ConvertError;
use crate::matrix::Quantization;

/// Conversions of models with at least this many parameters show a progress bar. Smaller ones
/// take seconds, and they are what qualify trials convert, where a bar would cut into libtest's
/// lines on a terminal.
const PROGRESS_ABOVE: usize = 50_000_000;

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
    let config: serde_json::Value = serde_json::from_str(
        &crate::format::files::read_side_file(&config_path).map_err(|e| err(&config_path, e))?,
    )
    .map_err(|e| err(&config_path, e))?;
    // The writer divides and permutes by these numbers: they are checked, with every tensor's
    // shape, before it does.
    let hyper = crate::format::hparams::Hyperparameters::from_config(&config_path, &config)
        .map_err(|e| err(&config_path, e.cause()))?;
    let shapes =
        crate::format::safetensors_header::weight_shapes(&crate::format::files::safetensors_files(dir)?)
            .map_err(|e| ConvertError::Read { path: dir.to_path_buf(), cause: e.to_string() })?;
    if let Some(problem) = hyper.shape_problems(&shapes).first() {
        return Err(ConvertError::Read { path: dir.to_path_buf(), cause: problem.clone() });
    }
    // Either of transformers' spellings (a 5.x `rope_parameters` base must not become the
    // default 10,000), and what the file cannot carry stops the conversion by name.
    let config = crate::format::hf_config::normalise(&config_path, &config)
        .map_err(|e| err(&config_path, e.cause()))?;
    let rope_theta = config["rope_theta"]
        .as_f64()
        .ok_or_else(|| err(&config_path, "the normalised config has no rope_theta"))?;
    if let Some(scaling) = config.get("rope_scaling").filter(|v| !v.is_null()) {
        return Err(ConvertError::Unsupported(format!(
            "GGUF with `rope_scaling` {scaling} (the writer carries the rope base only)"
        )));
    }
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
    let files = crate::format::files::safetensors_files(dir)?;
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
        ("general.file_type".into(), Value::U32(super::agree::file_type(q))),
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
        (format!("{arch}.rope.freq_base"), Value::F32(rope_theta as f32)),
        (format!("{arch}.rope.dimension_count"), Value::U32(head_dim)),
    ];
    md.extend(tokenizer_metadata(dir, &config)?);
    for (key, file) in [
        (HF_CONFIG, "config.json"),
        (HF_TOKENIZER_CONFIG, "tokenizer_config.json"),
        (HF_GENERATION_CONFIG, "generation_config.json"),
    ] {
        if let Ok(text) = crate::format::files::read_side_file(&dir.join(file)) {
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
    let text = crate::format::files::read_bounded(&path, crate::format::tokenizer_json::MAX_BYTES)
        .map_err(|e| err(&path, e))?;
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
    if let Ok(tc) = crate::format::files::read_side_file(&tc_path) {
        let tc: serde_json::Value = serde_json::from_str(&tc).map_err(|e| err(&tc_path, e))?;
        if let Some(template) = crate::chat::ChatTemplate::from_tokenizer_config(&tc) {
            md.push(("tokenizer.chat_template".to_string(), Value::String(template.source)));
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fuzz::models::{config, weights, write_dir};

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

    /// The GGUF written from a tiny `model_type` directory whose config is edited by `edit`.
    fn convert(model_type: &str, edit: impl Fn(&mut serde_json::Value)) -> Result<Vec<u8>, ConvertError> {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(model_type);
        edit(&mut c);
        write_dir(dir.path(), c.to_string().as_bytes(), &weights(&c).unwrap()).unwrap();
        from_safetensors(dir.path(), Quantization::F32)
    }

    fn freq_base(bytes: &[u8], arch: &str) -> f32 {
        let content = gguf_file::Content::read(&mut Cursor::new(bytes)).unwrap();
        content.metadata[&format!("{arch}.rope.freq_base")].to_f32().unwrap()
    }

    /// transformers 5 writes the rope base under `rope_parameters`: the file carries that base,
    /// not the default 10,000 it once wrote without a word.
    #[test]
    fn the_rope_base_of_either_spelling_reaches_the_file() {
        for (model_type, arch) in [("qwen2", "qwen2"), ("llama", "llama"), ("mistral", "llama")] {
            let v5 = convert(model_type, |c| {
                c.as_object_mut().unwrap().remove("rope_theta");
                c["rope_parameters"] = json!({"rope_theta": 1_000_000.0, "rope_type": "default"});
            })
            .unwrap();
            assert_eq!(freq_base(&v5, arch), 1_000_000.0, "{model_type}");
            let v4 = convert(model_type, |c| c["rope_theta"] = json!(500_000.0)).unwrap();
            assert_eq!(freq_base(&v4, arch), 500_000.0, "{model_type}");
        }
    }

    /// Rope settings the file cannot carry stop the conversion, naming the field.
    #[test]
    fn rope_settings_the_file_cannot_carry_are_refused() {
        let yarn = convert("qwen2", |c| {
            c.as_object_mut().unwrap().remove("rope_theta");
            c["rope_parameters"] = json!({"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0});
        })
        .unwrap_err()
        .to_string();
        assert!(yarn.contains("`rope_parameters`") && yarn.contains("yarn"), "{yarn}");
        let llama3 = convert("llama", |c| {
            c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8});
        })
        .unwrap_err()
        .to_string();
        assert!(llama3.contains("rope_scaling"), "{llama3}");
        let conflict = convert("mistral", |c| c["rope_parameters"] = json!({"rope_theta": 1e6})).unwrap_err();
        assert!(conflict.to_string().contains("`rope_parameters`"), "{conflict}");
    }
}
