//! Safetensors → GGUF: the tensors in llama.cpp's names, layout and quantization mixes (with
//! their block fallbacks listed), and the tokenizer and Hugging Face files as metadata.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::mix::{MixModel, wanted_type, written_type};
use super::{
    FALLBACKS, HF_CONFIG, HF_GENERATION_CONFIG, HF_TOKENIZER_CONFIG, WRITTEN_MODEL_TYPES, architecture, err,
    written_name,
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

/// gguf-py's `size_label` of a model without experts: its parameter count in K, M, B or T,
/// with at least two significant digits (`140K`, `1.5B`).
fn size_label(params: usize) -> String {
    let n = params as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let whole = (scaled.round_ties_even() as u64).to_string();
    let digits = whole.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// gguf-py's `size_label` of the tensors written: with experts, their count times the
/// parameters a token meets with one expert per layer (`4x103K`).
fn size_label_of(named: &[(String, String, Tensor)]) -> String {
    let mut shared = 0;
    let mut one_expert = 0;
    let mut experts = 0;
    for (_, name, t) in named {
        if name.contains("_exps.") && t.rank() >= 3 {
            experts = t.dims()[0];
            one_expert += t.elem_count() / experts.max(1);
        } else {
            shared += t.elem_count();
        }
    }
    if experts > 0 { format!("{experts}x{}", size_label(shared + one_expert)) } else { size_label(shared) }
}

/// A Hugging Face expert's tensor: `model.layers.N.mlp.experts.E.<projection>.weight`.
struct ExpertKey {
    layer: usize,
    expert: usize,
    projection: &'static str,
}

fn expert_of(hf: &str) -> Option<ExpertKey> {
    let (layer, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let (expert, rest) = rest.strip_prefix("mlp.experts.")?.split_once('.')?;
    let projection = ["gate_proj", "up_proj", "down_proj"]
        .into_iter()
        .find(|p| rest.strip_prefix(p).is_some_and(|r| r == ".weight"))?;
    Some(ExpertKey { layer: layer.parse().ok()?, expert: expert.parse().ok()?, projection })
}

/// Each layer's experts stacked into one tensor per projection, expert by expert, under
/// llama.cpp's name (`blk.N.ffn_gate_exps.weight`, `[experts, rows, columns]`); every one of
/// the `experts` must be there, and no other.
fn stacked(
    stacks: BTreeMap<(usize, &'static str), BTreeMap<usize, Tensor>>,
    experts: usize,
) -> Result<Vec<(String, String, Tensor)>, ConvertError> {
    let mut out = Vec::new();
    for ((layer, projection), by_expert) in stacks {
        let hf = format!("model.layers.{layer}.mlp.experts.*.{projection}.weight");
        let ids: Vec<usize> = by_expert.keys().copied().collect();
        if ids != (0..experts).collect::<Vec<_>>() {
            return Err(ConvertError::Unsupported(format!(
                "GGUF of `{hf}` with experts {ids:?} where the config states {experts}"
            )));
        }
        let tensors: Vec<Tensor> = by_expert.into_values().collect();
        let stack = Tensor::stack(&tensors, 0)
            .map_err(|e| ConvertError::Unsupported(format!("stacking `{hf}`: {e}")))?;
        let stem = projection.trim_end_matches("_proj");
        out.push((hf, format!("blk.{layer}.ffn_{stem}_exps.weight"), stack));
    }
    Ok(out)
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
    model: &MixModel,
) -> Result<Written, ConvertError> {
    let wanted = wanted_type(q, name, t.dims(), model)?;
    let written = written_type(q, name, t.dims(), model)?;
    let row = *t.dims().last().unwrap_or(&1);
    let qt = QTensor::quantize(t, written)
        .map_err(|e| ConvertError::Unsupported(format!("quantizing `{hf}` to {written:?}: {e}")))?;
    let note = (written != wanted).then(|| format!("{name}: {wanted:?} → {written:?} (rows of {row})"));
    Ok((name.to_string(), qt, note))
}

/// llama3's rope scaling of a llama's normalised `config` as the factors llama.cpp's converter
/// stores in `rope_freqs.weight`, computed in f32 as it computes them: 1 for the wavelengths
/// shorter than `original / high_freq_factor`, `factor` for those longer than `original /
/// low_freq_factor`, the blend between. `None` for any other scaling or model type.
fn llama3_rope_factors(
    model_type: &str,
    config: &serde_json::Value,
    scaling: &serde_json::Value,
) -> Option<Vec<f32>> {
    if model_type != "llama" || scaling.get("rope_type").and_then(|t| t.as_str()) != Some("llama3") {
        return None;
    }
    let number = |key: &str| scaling.get(key).and_then(serde_json::Value::as_f64).map(|v| v as f32);
    let (factor, low, high, original) = (
        number("factor")?,
        number("low_freq_factor")?,
        number("high_freq_factor")?,
        number("original_max_position_embeddings")?,
    );
    let uint = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
    let dim = match uint("head_dim") {
        Some(d) => d,
        None => uint("hidden_size")? / uint("num_attention_heads")?.max(1),
    } as usize;
    let base = config.get("rope_theta").and_then(serde_json::Value::as_f64)? as f32;
    let (low_wavelength, high_wavelength) = (original / low, original / high);
    Some(
        (0..dim / 2)
            .map(|i| {
                let frequency = 1.0 / base.powf((2 * i) as f32 / dim as f32);
                let wavelength = 2.0 * std::f32::consts::PI / frequency;
                if wavelength < high_wavelength {
                    1.0
                } else if wavelength > low_wavelength {
                    factor
                } else {
                    let smooth = (original / wavelength - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect(),
    )
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
    let original = config.clone();
    // Either of transformers' spellings (a 5.x `rope_parameters` base must not become the
    // default 10,000), and what the file cannot carry stops the conversion by name.
    let config = crate::format::hf_config::normalise(&config_path, &config)
        .map_err(|e| err(&config_path, e.cause()))?;
    let model_type = config["model_type"].as_str().unwrap_or_default().to_string();
    // llama3's scaling goes in a tensor of factors, as llama.cpp's converter writes it (a
    // llama's only); linear and YaRN scaling in keys (`keys.rs`), phi3's LongRoPE in tensors
    // of factors too (below).
    let llama3 = |s: &&serde_json::Value| s.get("rope_type").and_then(|t| t.as_str()) == Some("llama3");
    let rope_factors = match config.get("rope_scaling").filter(|v| !v.is_null()).filter(llama3) {
        None => None,
        Some(scaling) => Some(llama3_rope_factors(&model_type, &config, scaling).ok_or_else(|| {
            // Named as the model's config.json spells it.
            let field = match original.get("rope_scaling").is_some_and(|v| !v.is_null()) {
                true => "rope_scaling",
                false => "rope_parameters",
            };
            ConvertError::Unsupported(format!(
                "GGUF with `{field}` {scaling} (llama3 scaling travels as a llama's `{}` only)",
                super::ROPE_FACTORS
            ))
        })?),
    };
    let (arch, permute) = architecture(&model_type).ok_or_else(|| {
        ConvertError::Unsupported(format!("GGUF for model_type `{model_type}` ({WRITTEN_MODEL_TYPES} are)"))
    })?;
    let source = super::keys::Source { model_type: &model_type, arch, original: &original, config: &config };
    let arch_keys = super::keys::architecture_keys(&source)?;
    // phi3's LongRoPE factors (`architecture_keys` refused what the converter would not write).
    let longrope = super::rope::converter_keys(&original, arch).ok().and_then(|r| r.longrope);
    let count = |key: &str| {
        arch_keys.iter().find(|(k, _)| *k == format!("{arch}.{key}")).and_then(|(_, v)| v.to_u32().ok())
    };
    let (heads, kv_heads, layers) =
        match (count("attention.head_count"), count("attention.head_count_kv"), count("block_count")) {
            (Some(h), Some(kv), Some(l)) => (h, kv, l),
            _ => return Err(err(&config_path, "no head counts or layer count")),
        };
    let experts = count("expert_count").unwrap_or(0);
    // The tensors against the config, once the config has been read for what the file cannot say.
    let shapes =
        crate::format::safetensors_header::weight_shapes(&crate::format::files::safetensors_files(dir)?)
            .map_err(|e| ConvertError::Read { path: dir.to_path_buf(), cause: e.to_string() })?;
    if let Some(problem) = hyper.shape_problems(&shapes).first() {
        return Err(ConvertError::Read { path: dir.to_path_buf(), cause: problem.clone() });
    }

    let tied = config["tie_word_embeddings"].as_bool() == Some(true);
    if arch == "gemma3" {
        super::vocab::gemma3_vocabulary(dir, &config)?;
    }
    // Every tensor, in its Hugging Face name order, as f32 in the GGUF layout.
    let files = crate::format::files::safetensors_files(dir)?;
    let mut named: Vec<(String, String, Tensor)> = Vec::new();
    let mut stacks: BTreeMap<(usize, &'static str), BTreeMap<usize, Tensor>> = BTreeMap::new();
    for file in &files {
        let tensors = candle_core::safetensors::load(file, &Device::Cpu).map_err(|e| err(file, e))?;
        for (hf, t) in tensors {
            let mut t = t.to_dtype(DType::F32).map_err(|e| err(file, e))?;
            if experts > 0
                && let Some(key) = expert_of(&hf)
            {
                stacks.entry((key.layer, key.projection)).or_default().insert(key.expert, t);
                continue;
            }
            // GemmaModel and Gemma2Model drop the head (llama.cpp's gemma always reads the
            // embedding as its head; normalising refused an untied one), as DeepseekV2Model
            // drops a tied one.
            if hf == "lm_head.weight" && (matches!(arch, "gemma" | "gemma2") || (arch == "deepseek2" && tied))
            {
                continue;
            }
            // Gemma's norms are `x · (1 + w)`, llama.cpp's `x · w`: stored plus one.
            if arch.starts_with("gemma") && hf.ends_with("norm.weight") {
                t = t.affine(1.0, 1.0).map_err(|e| err(file, e))?;
            }
            if arch == "deepseek2" && hf.ends_with(".self_attn.kv_b_proj.weight") {
                let nope = config["qk_nope_head_dim"].as_u64().unwrap_or(0) as usize;
                let (k_b, v_b) =
                    super::layouts::split_kv_b(&t, heads as usize, nope).map_err(|e| err(file, e))?;
                let stem = hf.trim_end_matches("kv_b_proj.weight");
                let layer = stem.trim_start_matches("model.layers.").split('.').next().unwrap_or_default();
                named.push((format!("{stem}k_b_proj.weight"), format!("blk.{layer}.attn_k_b.weight"), k_b));
                named.push((format!("{stem}v_b_proj.weight"), format!("blk.{layer}.attn_v_b.weight"), v_b));
                continue;
            }
            let name = written_name(arch, &hf).ok_or_else(|| {
                ConvertError::Unsupported(format!(
                    "tensor `{hf}` has no GGUF name (nothing is dropped silently)"
                ))
            })?;
            if permute && (name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias")) {
                t = permute_qk(&t, heads as usize, false).map_err(|e| err(file, e))?;
            }
            if permute && (name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias")) {
                t = permute_qk(&t, kv_heads as usize, false).map_err(|e| err(file, e))?;
            }
            named.push((hf, name, t));
        }
    }
    named.extend(stacked(stacks, experts as usize)?);
    if let Some(factors) = rope_factors {
        let n = factors.len();
        let t = Tensor::from_vec(factors, n, &Device::Cpu).map_err(|e| err(&config_path, e))?;
        named.push(("rope_scaling".into(), super::ROPE_FACTORS.into(), t));
    }
    if let Some(lists) = longrope {
        // As the converter requires: one factor per rotating pair.
        let pairs = count("rope.dimension_count").unwrap_or(0) as usize / 2;
        for (list, name) in lists.into_iter().zip([super::ROPE_FACTORS_LONG, super::ROPE_FACTORS_SHORT]) {
            if list.len() != pairs {
                return Err(ConvertError::Unsupported(format!(
                    "GGUF of a phi3 whose longrope factor lists hold {} factors, not one per rotating pair ({pairs})",
                    list.len()
                )));
            }
            let t = Tensor::from_vec(list, pairs, &Device::Cpu).map_err(|e| err(&config_path, e))?;
            named.push(("rope_scaling".into(), name.into(), t));
        }
    }
    named.sort_by(|a, b| a.1.cmp(&b.1));
    let model = MixModel::new(
        arch,
        layers as usize,
        experts as usize,
        heads as usize,
        kv_heads as usize,
        named.iter().map(|(_, name, _)| name.as_str()),
    );
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
            let written = quantize_tensor(q, hf, name, t, &model);
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
        ("general.type".into(), Value::String("model".into())),
        ("general.size_label".into(), Value::String(size_label_of(&named))),
        ("general.file_type".into(), Value::U32(super::agree::file_type(q))),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    md.extend(arch_keys);
    md.extend(super::vocab::tokenizer_metadata(dir, &config, arch)?);
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

    /// gguf-py's labels: two significant digits at least, its rounding (Qwen2.5-0.5B's 494 M,
    /// 1.5B's 1.54 B, a 9,000-parameter toy).
    #[test]
    fn size_labels_are_gguf_pys() {
        for (params, label) in [
            (140_096, "140K"),
            (494_032_768, "494M"),
            (1_543_714_304, "1.5B"),
            (9_000, "9.0K"),
            (7_615_616_512, "7.6B"),
        ] {
            assert_eq!(size_label(params), label, "{params}");
        }
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
        // A llama's llama3 scaling is carried, as llama.cpp's converter carries it: factors.
        let llama3 = convert("llama", |c| {
            c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8});
        })
        .unwrap();
        let content =
            candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(&llama3)).unwrap();
        assert!(content.tensor_infos.contains_key(super::super::ROPE_FACTORS));
        let conflict = convert("mistral", |c| c["rope_parameters"] = json!({"rope_theta": 1e6})).unwrap_err();
        assert!(conflict.to_string().contains("`rope_parameters`"), "{conflict}");
    }

    /// The GGUF written from a copy of the zoo's `model_type` model whose config `edit` changes.
    fn convert_zoo(model_type: &str, edit: impl Fn(&mut serde_json::Value)) -> Result<Vec<u8>, ConvertError> {
        let dir = zoo_copy(model_type, edit);
        from_safetensors(dir.path(), Quantization::F32)
    }

    /// A copy of the zoo's `model_type` model whose config `edit` changes.
    fn zoo_copy(model_type: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo").join(model_type);
        let dir = tempfile::tempdir().unwrap();
        for file in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "tokenizer.model"] {
            if zoo.join(file).is_file() {
                std::fs::copy(zoo.join(file), dir.path().join(file)).unwrap();
            }
        }
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(zoo.join("config.json")).unwrap()).unwrap();
        edit(&mut c);
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
        dir
    }

    fn metadata(bytes: &[u8]) -> std::collections::HashMap<String, Value> {
        gguf_file::Content::read(&mut Cursor::new(bytes)).unwrap().metadata
    }

    /// Config fields llama.cpp's graph of the architecture cannot follow stop the conversion,
    /// naming the field.
    #[test]
    fn what_llama_cpp_cannot_run_is_refused_by_name() {
        for (model_type, field, value) in [
            ("qwen3_moe", "norm_topk_prob", json!(false)),
            ("qwen3_moe", "decoder_sparse_step", json!(2)),
            ("gpt_bigcode", "scale_attn_weights", json!(false)),
            ("gpt_bigcode", "activation_function", json!("gelu")),
            ("starcoder2", "hidden_act", json!("gelu")),
            ("stablelm", "hidden_act", json!("gelu_pytorch_tanh")),
            ("olmo2", "clip_qkv", json!(8.0)),
            ("falcon", "new_decoder_architecture", json!(true)),
            ("falcon", "multi_query", json!(false)),
            ("falcon", "parallel_attn", json!(false)),
            ("falcon", "bias", json!(true)),
            ("falcon", "alibi", json!(true)),
            ("falcon", "num_ln_in_parallel_attn", json!(2)),
            ("falcon", "activation", json!("relu")),
            ("gemma", "hidden_act", json!("relu")),
            ("gemma2", "query_pre_attn_scalar", json!(32)),
            ("gemma2", "layer_types", json!(["full_attention", "sliding_attention"])),
            ("gemma2", "attn_logit_softcapping", json!(null)),
            ("gemma2", "final_logit_softcapping", json!(null)),
            ("gemma2", "sliding_window", json!(null)),
            ("gemma3_text", "query_pre_attn_scalar", json!(64)),
            ("gemma3_text", "layer_types", json!(["sliding_attention", "full_attention"])),
            ("gemma3_text", "attn_logit_softcapping", json!(50.0)),
            ("deepseek_v2", "topk_method", json!("group_limited_greedy")),
            ("deepseek_v2", "scoring_func", json!("sigmoid")),
            ("deepseek_v2", "norm_topk_prob", json!(true)),
            ("phi3", "hidden_act", json!("gelu")),
        ] {
            let e = convert_zoo(model_type, |c| {
                if model_type == "qwen3_moe" {
                    c["norm_topk_prob"] = json!(true);
                }
                c[field] = value.clone();
            })
            .expect_err(&format!("{model_type} with {field} {value}"))
            .to_string();
            assert!(e.contains(&format!("`{field}`")), "{model_type}: {e}");
        }
        assert!(convert_zoo("qwen3_moe", |c| c["norm_topk_prob"] = json!(true)).is_ok());
    }

    /// Rope scaling travels as llama.cpp's converter writes it: linear and YaRN in keys (gemma3's
    /// linear factor too), phi3's LongRoPE as factor tensors with its attention factor; what
    /// llama.cpp would run otherwise than transformers (yarn's β, deepseek_v2's mscale apart
    /// from mscale_all_dim, factor lists of another length, gemma3's YaRN), stops the
    /// conversion by field.
    #[test]
    fn rope_scaling_travels_as_the_converter_writes_it_or_is_refused_by_field() {
        let longrope = |long: usize| {
            move |c: &mut serde_json::Value| {
                c["original_max_position_embeddings"] = json!(16);
                c["rope_parameters"] = json!({"rope_type": "longrope", "rope_theta": 10000.0,
                    "short_factor": vec![1.0; 8], "long_factor": vec![2.0; long], "original_max_position_embeddings": 16});
            }
        };
        let bytes = convert_zoo("phi3", longrope(8)).unwrap();
        let content = gguf_file::Content::read(&mut Cursor::new(&bytes)).unwrap();
        for name in [super::super::ROPE_FACTORS_LONG, super::super::ROPE_FACTORS_SHORT] {
            assert_eq!(content.tensor_infos[name].shape.dims(), [8], "{name}");
        }
        let attention = content.metadata["phi3.rope.scaling.attn_factor"].to_f32().unwrap();
        assert_eq!(attention, (1.0 + 8f64.ln() / 16f64.ln()).sqrt() as f32);
        let short = convert_zoo("phi3", longrope(6)).unwrap_err().to_string();
        assert!(short.contains("rotating pair"), "{short}");
        let linear = convert_zoo("llama", |c| {
            c["rope_parameters"] = json!({"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5});
        })
        .unwrap();
        let md = metadata(&linear);
        assert_eq!(md["llama.rope.scaling.type"].to_string().unwrap(), "linear");
        assert_eq!(md["llama.rope.scaling.factor"].to_f32().unwrap(), 4.0);
        for (model_type, scaling, field) in [
            (
                "qwen2",
                json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 8}),
                "`beta_fast` 8",
            ),
            (
                "deepseek_v2",
                json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 0.707}),
                "mscale",
            ),
        ] {
            let e = convert_zoo(model_type, |c| {
                let theta = c["rope_parameters"]["rope_theta"].clone();
                c["rope_parameters"] = scaling.clone();
                c["rope_parameters"]["rope_theta"] = theta;
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(field) && e.contains("`rope_parameters`"), "{model_type}: {e}");
        }
        // gemma3's linear factor on its global layers, as llama.cpp's gemma3 scales them: the
        // file is read back with it there, and runs as the model does (the zoo model's two
        // layers both slide, so here the factor changes nothing).
        let scaled = zoo_copy("gemma3_text", |c| {
            c["rope_parameters"]["full_attention"] =
                json!({"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6});
        });
        let bytes = from_safetensors(scaled.path(), Quantization::F32).unwrap();
        let md = metadata(&bytes);
        assert_eq!(md["gemma3.rope.scaling.type"].to_string().unwrap(), "linear");
        assert_eq!(md["gemma3.rope.scaling.factor"].to_f32().unwrap(), 8.0);
        let content = gguf_file::Content::read(&mut Cursor::new(&bytes)).unwrap();
        let rows = content.tensor_infos["token_embd.weight"].shape.dims()[0];
        let read = super::super::dequantized_config(&content.metadata, false, false, rows).unwrap();
        assert_eq!(
            read["rope_parameters"]["full_attention"],
            json!({"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6})
        );
        assert_eq!(read["rope_parameters"]["sliding_attention"]["rope_type"], "default");
        let file = scaled.path().join("scaled.gguf");
        std::fs::write(&file, &bytes).unwrap();
        use crate::engine::Session;
        let logits = |path: &Path| {
            let mut session = crate::engine::load_candle(path, crate::matrix::Backend::Cpu).unwrap();
            session.prompt_logits("the cat sat on the mat and then the dog", 10).unwrap()
        };
        let (want, got) = (logits(scaled.path()), logits(&file));
        let apart =
            want.iter().flatten().zip(got.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(apart < 1e-4, "the file: {apart}");
        let yarn = convert_zoo("gemma3_text", |c| {
            c["rope_parameters"]["full_attention"] =
                json!({"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6, "original_max_position_embeddings": 16});
        })
        .unwrap_err()
        .to_string();
        assert!(yarn.contains("`rope_parameters`") && yarn.contains("yarn"), "{yarn}");
    }

    /// A zoo variant copied to a scratch directory as llama.cpp's converter was given it: the
    /// LongRoPE variants state no tokenizer class, so they get the zoo phi3's
    /// tokenizer_config.json.
    fn variant_as_converted(fixtures: &Path, variant: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixtures.join("zoo-variants").join(variant)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        if variant.starts_with("phi-") {
            let from = fixtures.join("zoo/phi3/tokenizer_config.json");
            std::fs::copy(from, dir.path().join("tokenizer_config.json")).unwrap();
        }
        dir
    }

    /// The writer's `{arch}.*` keys and rope factor tensors for the zoo variants whose rope it
    /// carries (linear, YaRN, deepseek2's YaRN, phi3's LongRoPE, an explicit head width) are
    /// llama.cpp's converter's, key for key (`converter_keys.json`, made by
    /// `xtask/zoo/converter_keys.py`).
    #[test]
    fn the_writers_rope_keys_are_the_converters() {
        let recorded: serde_json::Value = serde_json::from_str(include_str!("converter_keys.json")).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        let variants = recorded["variants"].as_object().unwrap();
        assert_eq!(variants.len(), 7);
        for (variant, want) in variants {
            let dir = variant_as_converted(&root, variant);
            let bytes = from_safetensors(dir.path(), Quantization::F32).unwrap();
            let mut reader = Cursor::new(&bytes);
            let content = gguf_file::Content::read(&mut reader).unwrap();
            let arch = content.metadata["general.architecture"].to_string().unwrap().clone();
            let keys = want["keys"].as_object().unwrap();
            // The writer states qwen2's rotary width, llama.cpp's default for it (`keys.rs`).
            let mut ours: Vec<&String> = content
                .metadata
                .keys()
                .filter(|k| k.starts_with(&format!("{arch}.")) && *k != "qwen2.rope.dimension_count")
                .collect();
            ours.sort();
            assert_eq!(ours, keys.keys().collect::<Vec<_>>(), "{variant}: the keys written");
            for (key, v) in keys {
                let got = &content.metadata[key];
                let same = match v["type"].as_str().unwrap() {
                    "UINT32" => got.to_u32().ok() == v["value"].as_u64().map(|x| x as u32),
                    "FLOAT32" => got.to_f32().ok() == v["value"].as_f64().map(|x| x as f32),
                    "STRING" => got.to_string().ok().map(String::as_str) == v["value"].as_str(),
                    "BOOL" => got.to_bool().ok() == v["value"].as_bool(),
                    other => panic!("{variant}: {key} of type {other}"),
                };
                assert!(same, "{variant}: {key} {got:?}, the converter's {}", v["value"]);
            }
            let tensors = want["tensors"].as_object().unwrap();
            let mut ours: Vec<&String> =
                content.tensor_infos.keys().filter(|n| n.starts_with("rope_")).collect();
            ours.sort();
            assert_eq!(ours, tensors.keys().collect::<Vec<_>>(), "{variant}: the rope tensors");
            for (name, values) in tensors {
                let t = content
                    .tensor(&mut reader, name, &Device::Cpu)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap();
                let want: Vec<f32> =
                    values.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                assert_eq!(t.to_vec1::<f32>().unwrap(), want, "{variant}: {name}");
            }
        }
    }

    /// G0 holds the rope scaling keys and a llama's head width to config.json: the variants'
    /// own files agree, and a planted lie (a wrong factor, type, original context, a key
    /// config.json implies none of, a missing LongRoPE tensor, a wrong or missing head width)
    /// is named.
    #[test]
    fn g0_names_a_rope_scaling_key_that_parts_from_config_json() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        let facts = |variant: &str| {
            let dir = variant_as_converted(&root, variant);
            let bytes = from_safetensors(dir.path(), Quantization::F32).unwrap();
            let content = gguf_file::Content::read(&mut Cursor::new(&bytes)).unwrap();
            let read = |f: &str| -> serde_json::Value {
                serde_json::from_str(&std::fs::read_to_string(dir.path().join(f)).unwrap()).unwrap()
            };
            (content, read("config.json"), read("tokenizer_config.json"))
        };
        let problems = |content: &gguf_file::Content, config: &serde_json::Value, tc: &serde_json::Value| {
            super::super::against_config(&super::super::FileFacts::new(content), config, Some(tc))
        };
        for (variant, key, lie, named) in [
            (
                "llama-linear",
                "llama.rope.scaling.factor",
                Value::F32(2.0),
                "llama.rope.scaling.factor 2 in the file",
            ),
            (
                "qwen2-yarn",
                "qwen2.rope.scaling.type",
                Value::String("linear".into()),
                "qwen2.rope.scaling.type linear",
            ),
            (
                "qwen2-yarn",
                "qwen2.rope.scaling.original_context_length",
                Value::U32(32),
                "qwen2.rope.scaling.original_context_length 32",
            ),
            (
                "deepseek-coder-v2-lite",
                "deepseek2.rope.scaling.yarn_log_multiplier",
                Value::F32(0.1),
                "deepseek2.rope.scaling.yarn_log_multiplier 0.1",
            ),
            (
                "phi-4-mini",
                "phi3.rope.scaling.attn_factor",
                Value::F32(1.0),
                "phi3.rope.scaling.attn_factor 1 in",
            ),
            ("mistral-nemo", "llama.rope.scaling.factor", Value::F32(4.0), "implies no such key"),
            (
                "mistral-nemo",
                "llama.rope.scale_linear",
                Value::F32(4.0),
                "llama.rope.scale_linear 4 in the file",
            ),
            // And an explicit head width.
            (
                "llama-head-dim",
                "llama.attention.key_length",
                Value::U32(16),
                "llama.attention.key_length 16 in",
            ),
        ] {
            let (mut content, config, tc) = facts(variant);
            assert_eq!(problems(&content, &config, &tc), Vec::<String>::new(), "{variant}");
            content.metadata.insert(key.into(), lie);
            let found = problems(&content, &config, &tc);
            assert!(found.iter().any(|p| p.contains(named)), "{variant} {key}: {found:?}");
        }
        // A missing key, and LongRoPE factors the file lacks.
        let (mut content, config, tc) = facts("mistral-nemo");
        content.metadata.remove("llama.attention.value_length");
        let found = problems(&content, &config, &tc);
        assert!(found.iter().any(|p| p.contains("llama.attention.value_length is missing")), "{found:?}");
        let (mut content, config, tc) = facts("llama-linear");
        content.metadata.remove("llama.rope.scaling.type");
        let found = problems(&content, &config, &tc);
        assert!(found.iter().any(|p| p.contains("llama.rope.scaling.type is missing")), "{found:?}");
        let (mut content, config, tc) = facts("phi-3.5-mini");
        content.tensor_infos.remove(super::super::ROPE_FACTORS_SHORT);
        let found = problems(&content, &config, &tc);
        assert!(found.iter().any(|p| p.contains("rope_factors_short.weight is missing")), "{found:?}");
    }

    /// Gemma3Model cuts the embedding to the tokenizer's tokens: a model with fewer tokens than
    /// embedding rows is refused, naming `vocab_size`.
    #[test]
    fn a_gemma3_with_fewer_tokens_than_rows_is_refused() {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo/gemma3_text");
        let dir = tempfile::tempdir().unwrap();
        for file in ["model.safetensors", "config.json", "tokenizer_config.json"] {
            std::fs::copy(zoo.join(file), dir.path().join(file)).unwrap();
        }
        let mut tok: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(zoo.join("tokenizer.json")).unwrap()).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
        assert!(from_safetensors(dir.path(), Quantization::F32).is_ok());
        // The converter counts the vocabulary and the added tokens (here also in it): 512 + 3.
        let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
        for id in 508..512 {
            let t = vocab.iter().find(|(_, v)| v.as_u64() == Some(id)).map(|(t, _)| t.clone()).unwrap();
            vocab.remove(&t);
        }
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
        let e = from_safetensors(dir.path(), Quantization::F32).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("`vocab_size` 512") && e.contains("511 tokens"), "{e}");
    }

    /// A Gemma's tokenizer is the converter's from `tokenizer.model`: without one the writer
    /// says so by name.
    #[test]
    fn a_gemma_without_tokenizer_model_is_refused_by_name() {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo/gemma");
        let dir = tempfile::tempdir().unwrap();
        for file in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(zoo.join(file), dir.path().join(file)).unwrap();
        }
        let e = from_safetensors(dir.path(), Quantization::F32).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.model"), "{e}");
        std::fs::copy(zoo.join("tokenizer.model"), dir.path().join("tokenizer.model")).unwrap();
        assert!(from_safetensors(dir.path(), Quantization::F32).is_ok());
    }

    /// What the converter leaves out, or writes against the config, where it changes what the
    /// model computes: a stablelm's, falcon's, gemma's or gemma2's rope base other than
    /// llama.cpp's default, a gpt_bigcode without multi-query attention, a starcoder2's window
    /// narrower than its context.
    #[test]
    fn what_the_converter_loses_reaches_the_file() {
        let base = |c: &mut serde_json::Value, theta: f64| {
            c["rope_parameters"]["rope_theta"] = json!(theta);
        };
        let md = metadata(&convert_zoo("stablelm", |c| base(c, 1e6)).unwrap());
        assert_eq!(md["stablelm.rope.freq_base"].to_f32().unwrap(), 1e6);
        let md = metadata(&convert_zoo("stablelm", |c| base(c, 1e4)).unwrap());
        assert!(!md.contains_key("stablelm.rope.freq_base"), "llama.cpp's default is not stated");
        let md = metadata(&convert_zoo("starcoder2", |c| c["sliding_window"] = json!(32)).unwrap());
        assert_eq!(md["starcoder2.context_length"].to_u32().unwrap(), 32);
        // FalconModel, GemmaModel and Gemma2Model write no rope base either.
        for (model_type, arch) in [("falcon", "falcon"), ("gemma", "gemma"), ("gemma2", "gemma2")] {
            let md = metadata(&convert_zoo(model_type, |c| base(c, 5e5)).unwrap());
            assert_eq!(md[&format!("{arch}.rope.freq_base")].to_f32().unwrap(), 5e5, "{model_type}");
            let md = metadata(&convert_zoo(model_type, |c| base(c, 1e4)).unwrap());
            assert!(!md.contains_key(&format!("{arch}.rope.freq_base")), "{model_type}");
        }
        let md = metadata(&convert_zoo("gpt_bigcode", |_| {}).unwrap());
        assert_eq!(md["starcoder.feed_forward_length"].to_u32().unwrap(), 128, "n_inner, not 4 × n_embd");
        assert_eq!(md["starcoder.attention.head_count_kv"].to_u32().unwrap(), 1);
    }

    /// G0 judges a converted file's metadata against the model's config.json
    /// (`agree::against_config`): every zoo model the writer converts passes it.
    #[test]
    fn every_written_zoo_model_agrees_with_its_config() {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo");
        for model_type in [
            "deepseek_v2",
            "falcon",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "gpt_bigcode",
            "granite",
            "llama",
            "mistral",
            "olmo2",
            "qwen2",
            "qwen3",
            "qwen3_moe",
            "stablelm",
            "starcoder2",
        ] {
            let renormalise = |c: &mut serde_json::Value| {
                if model_type == "qwen3_moe" {
                    c["norm_topk_prob"] = json!(true);
                }
            };
            let bytes = convert_zoo(model_type, renormalise).unwrap();
            let content = gguf_file::Content::read(&mut Cursor::new(&bytes)).unwrap();
            let read = |f: &str| -> serde_json::Value {
                serde_json::from_str(&std::fs::read_to_string(zoo.join(model_type).join(f)).unwrap()).unwrap()
            };
            let mut config = read("config.json");
            renormalise(&mut config);
            let problems = super::super::against_config(
                &super::super::FileFacts::new(&content),
                &config,
                Some(&read("tokenizer_config.json")),
            );
            assert!(problems.is_empty(), "{model_type}: {problems:?}");
        }
    }
}
