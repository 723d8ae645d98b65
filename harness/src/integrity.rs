//! Gateway G0, integrity: a model directory is checked against itself before anything runs it.
//! config.json must agree with the tensors and with the playbook's expectations, every tensor
//! the architecture needs must be there in the right shape and a float dtype, no weight may be
//! NaN or infinite, no norm may be all zeros, and the tokenizer must fit the embedding.
//!
//! config.json's numbers are bounded and checked for consistency, and the tensors against the
//! shapes the loader will request, by `format::hparams`: one definition for G0 and the engine.
//! It reads files and never runs a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::format::hparams::{ConfigError, Hyperparameters};
use crate::matrix::Format;
use crate::playbook::spec::ExpectedShape;

/// What G0 found: nothing wrong, or every problem by name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IntegrityReport {
    pub tensors: usize,
    pub parameters: u64,
    pub problems: Vec<String>,
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
    /// config.json's hyper-parameters are missing, out of bounds or inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Files(#[from] crate::format::files::ModelFilesError),
    #[error("{path} is truncated or corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
}

/// Runs every check; an unreadable model is a report with that one problem.
pub(crate) fn check(dir: &Path, expect: &ExpectedShape, architecture: Option<&str>) -> IntegrityReport {
    let mut report = IntegrityReport { tensors: 0, parameters: 0, problems: Vec::new() };
    if let Err(e) = check_into(dir, expect, architecture, &mut report) {
        report.problems.push(e.to_string());
    }
    report
}

/// Where config.json parts from the playbook's expected rope base, norm epsilon and BOS/EOS ids.
fn config_against_numbers(config: &serde_json::Value, expect: &ExpectedShape) -> Vec<String> {
    let mut problems = Vec::new();
    let number = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_f64);
    let theta = number(config.get("rope_theta")).map(|t| (t, "rope_theta")).or_else(|| {
        number(config.pointer("/rope_parameters/rope_theta")).map(|t| (t, "rope_parameters.rope_theta"))
    });
    if let Some(want) = expect.rope_theta {
        match theta {
            Some((got, field)) if !crate::format::hparams::same_number(got, want) => problems
                .push(format!("config.json declares {field} {got}, the playbook expects rope_theta {want}")),
            Some(_) => {}
            None => problems.push(format!("config.json declares no rope_theta, the playbook expects {want}")),
        }
    }
    if let Some(want) = expect.rms_norm_eps {
        match number(config.get("rms_norm_eps")) {
            Some(got) if !crate::format::hparams::same_number(got, want) => {
                problems.push(format!("config.json declares rms_norm_eps {got}, the playbook expects {want}"))
            }
            Some(_) => {}
            None => {
                problems.push(format!("config.json declares no rms_norm_eps, the playbook expects {want}"))
            }
        }
    }
    for (field, want) in [("bos_token_id", expect.bos_token_id), ("eos_token_id", expect.eos_token_id)] {
        let Some(want) = want else { continue };
        let declared: Vec<u64> = match config.get(field) {
            Some(serde_json::Value::Array(ids)) => ids.iter().filter_map(serde_json::Value::as_u64).collect(),
            Some(v) => v.as_u64().into_iter().collect(),
            None => Vec::new(),
        };
        if !declared.contains(&want) {
            let said = config.get(field).map_or_else(|| "none".to_string(), ToString::to_string);
            problems.push(format!("config.json declares {field} {said}, the playbook expects {want}"));
        }
    }
    problems
}

fn check_into(
    dir: &Path,
    expect: &ExpectedShape,
    architecture: Option<&str>,
    report: &mut IntegrityReport,
) -> Result<(), IntegrityError> {
    let config_path = dir.join("config.json");
    let text = crate::format::files::read_side_file(&config_path)
        .map_err(|source| IntegrityError::Read { path: config_path.clone(), source })?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| IntegrityError::Json { path: config_path.clone(), source })?;
    let d = Hyperparameters::from_config(&config_path, &config)?;
    // A field the engine would not honour (a rope scaling type, a head width its loader would
    // not use, …) fails G0 by name, as the engine's load would.
    crate::format::hf_config::normalise(&config_path, &config)?;
    let model_type = d.model_type.as_str();
    if let Some(want) = architecture
        && want != model_type
    {
        report
            .problems
            .push(format!("config.json declares model_type `{model_type}`, the playbook expects `{want}`"));
    }
    for (what, declared, expected) in [
        ("hidden_size", d.hidden, expect.hidden_size),
        ("num_hidden_layers", d.layers, expect.num_layers),
        ("num_attention_heads", d.heads, expect.num_heads),
        ("num_key_value_heads", d.kv_heads, expect.num_kv_heads),
        ("intermediate_size", d.intermediate, expect.intermediate_size),
        ("vocab_size", d.vocab, expect.vocab_size),
    ] {
        if let Some(e) = expected
            && e != declared as u64
        {
            report.problems.push(format!("config.json declares {what} {declared}, the playbook expects {e}"));
        }
    }
    if let Some(e) = expect.context_length {
        match d.context {
            Some(declared) if declared as u64 != e => report.problems.push(format!(
                "config.json declares max_position_embeddings {declared}, the playbook expects a context of {e}"
            )),
            Some(_) => {}
            None => report.problems.push(format!(
                "config.json declares no max_position_embeddings, the playbook expects a context of {e}"
            )),
        }
    }

    report.problems.extend(config_against_numbers(&config, expect));

    let files = crate::format::files::safetensors_files(dir)?;
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for file in &files {
        let bytes =
            std::fs::read(file).map_err(|source| IntegrityError::Read { path: file.clone(), source })?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|source| IntegrityError::Corrupt { path: file.clone(), source })?;
        for (name, view) in st.tensors() {
            report.tensors += 1;
            report.parameters =
                report.parameters.saturating_add(view.shape().iter().product::<usize>() as u64);
            if let Some(p) = scan_values(&name, view.dtype(), view.data()) {
                report.problems.push(p);
            }
            shapes.insert(name, view.shape().to_vec());
        }
    }
    report.problems.extend(d.shape_problems(&shapes));
    check_tokenizer(dir, &d, &mut report.problems);
    Ok(())
}

/// G0's reading of a derived artifact of `format`: an APR container reads back with its
/// checksums and every tensor dequantizes to finite values; a GGUF file passes the pre-pass
/// (`format::gguf::check`), its metadata agrees with the ground truth's config.json and
/// tokenizer_config.json key by key (with the playbook's `expect` where the model has no ground
/// truth, `source` `None`), its tensor types are the quantization `format` names, and every
/// tensor dequantizes to finite values. What was checked, in words (empty for a file of neither
/// kind), or every problem.
pub(crate) fn check_artifact(
    artifact: &Path,
    format: Format,
    source: Option<&Path>,
    expect: &ExpectedShape,
    architecture: Option<&str>,
) -> Result<String, String> {
    if artifact.extension().is_some_and(|e| e == "gguf") {
        return check_gguf(artifact, format, source, expect, architecture);
    }
    if artifact.extension().is_none_or(|e| e != "apr") {
        return Ok(String::new());
    }
    let failed = |e: std::io::Error| format!("failed to read {}: {e}", artifact.display());
    let file = std::fs::File::open(artifact).map_err(failed)?;
    // SAFETY: the harness never writes a model file while it reads it. Mapped, the file is read
    // where it lies: one tensor at a time is widened for the scan.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(failed)?;
    let index = crate::format::apr::index(&bytes).map_err(|e| format!("{}: {e}", artifact.display()))?;
    for e in &index.entries {
        let values =
            crate::format::apr::dequantize_bytes(&e.name, e.dtype, &e.shape, &bytes[e.bytes.clone()])
                .map_err(|e| e.to_string())?;
        if !values.iter().all(|x| x.is_finite()) {
            return Err(format!("tensor `{}` of the APR file holds NaN or Inf", e.name));
        }
    }
    Ok(format!("the APR file ({} tensors) reads back with valid checksums", index.entries.len()))
}

fn check_gguf(
    artifact: &Path,
    format: Format,
    source: Option<&Path>,
    expect: &ExpectedShape,
    architecture: Option<&str>,
) -> Result<String, String> {
    use crate::format::gguf;
    let (mut file, content) = gguf::read(artifact).map_err(|e| e.to_string())?;
    let facts = gguf::FileFacts::new(&content);
    let mut problems = Vec::new();
    let against = match source {
        Some(dir) => {
            let json = |name: &str| -> Result<Option<serde_json::Value>, String> {
                let path = dir.join(name);
                match crate::format::files::read_side_file(&path) {
                    Ok(text) => serde_json::from_str(&text)
                        .map(Some)
                        .map_err(|e| format!("{} is not valid JSON: {e}", path.display())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("failed to read {}: {e}", path.display())),
                }
            };
            let config =
                json("config.json")?.ok_or_else(|| format!("no config.json in {}", dir.display()))?;
            problems.extend(gguf::against_config(&facts, &config, json("tokenizer_config.json")?.as_ref()));
            "config.json and tokenizer_config.json key by key"
        }
        None => {
            problems.extend(gguf::against_expectations(&facts, expect, architecture));
            if let Err(e) = gguf::tokenizer(&content.metadata) {
                problems.push(format!("the file's tokenizer does not load: {e}"));
            }
            "the playbook's expectations (no ground truth to compare with)"
        }
    };
    // The tensors judged by the metadata (after the metadata was judged by config.json, so a
    // lie is named by its key, not only by the shapes it contradicts).
    if let Err(e) = gguf::check_model(artifact, &content) {
        problems.push(e.to_string());
        return Err(problems.join("; "));
    }
    problems.extend(gguf::dequantized_shape_problems(artifact, &content));
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, Vec<usize>, candle_core::quantized::GgmlDType)> = names
        .iter()
        .map(|n| {
            let info = &content.tensor_infos[*n];
            (n.to_string(), info.shape.dims().to_vec(), info.ggml_dtype)
        })
        .collect();
    if let Format::Gguf(q) = format {
        problems.extend(gguf::against_quantization(&facts, q, &tensors));
    }
    // Every tensor dequantized, one at a time, and scanned.
    for name in names {
        let values = content
            .tensor(&mut file, name, &candle_core::Device::Cpu)
            .and_then(|q| q.dequantize(&candle_core::Device::Cpu))
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>());
        match values {
            Err(e) => problems.push(format!("tensor `{name}` does not dequantize: {e}")),
            Ok(v) => {
                let (nan, inf) = v.iter().fold((0u64, 0u64), |(n, i), x| {
                    (n + u64::from(x.is_nan()), i + u64::from(x.is_infinite()))
                });
                if nan > 0 || inf > 0 {
                    let dtype = content.tensor_infos[name].ggml_dtype;
                    problems.push(format!(
                        "tensor `{name}` ({dtype:?}) holds {nan} NaN and {inf} infinite values of {} after dequantization",
                        v.len()
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(format!(
        "the GGUF file ({} tensors) passes the header, layout and shape checks, agrees with {against}, holds {format}'s tensor types and dequantizes to finite values",
        tensors.len()
    ))
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

fn check_tokenizer(dir: &Path, d: &Hyperparameters, problems: &mut Vec<String>) {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        problems.push(format!("the tokenizer is missing: no {}", path.display()));
        return;
    }
    match crate::format::tokenizer_json::read(&path) {
        Err(e) => problems.push(format!("{} does not load: {e}", path.display())),
        Ok(t) => {
            let size = t.get_vocab_size(true);
            if size > d.vocab {
                problems.push(format!(
                    "the tokenizer has {size} tokens, more than the {} embedding rows",
                    d.vocab
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use candle_core::quantized::gguf_file::{self, Value};

    use super::*;
    use crate::fuzz::models::seeds;
    use crate::matrix::Quantization;

    fn config_set(dir: &Path, field: &str, value: serde_json::Value) {
        let path = dir.join("config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config[field] = value;
        std::fs::write(path, config.to_string()).unwrap();
    }

    #[test]
    fn a_clean_tiny_model_passes_g0() {
        let dir = tempfile::tempdir().unwrap();
        for arch in ["llama", "qwen2", "mistral"] {
            let report = check(&seeds::tiny_dir(dir.path(), arch), &ExpectedShape::default(), Some(arch));
            assert_eq!(report.problems, Vec::<String>::new(), "{arch}");
            assert!(report.tensors > 10);
        }
    }

    #[test]
    fn expected_rope_theta_eps_and_token_ids_are_held_to_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let model = seeds::tiny_dir(dir.path(), "llama");
        config_set(
            &model,
            "rope_parameters",
            serde_json::json!({"rope_type": "default", "rope_theta": 500000.0}),
        );
        config_set(&model, "rms_norm_eps", serde_json::json!(1e-6));
        config_set(&model, "eos_token_id", serde_json::json!([1, 2]));
        config_set(&model, "bos_token_id", serde_json::json!(0));
        if let Some(o) =
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(model.join("config.json")).unwrap())
                .unwrap()
                .as_object()
                .filter(|o| o.contains_key("rope_theta"))
        {
            let mut o = o.clone();
            o.remove("rope_theta");
            std::fs::write(model.join("config.json"), serde_json::Value::Object(o).to_string()).unwrap();
        }
        let right = ExpectedShape {
            rope_theta: Some(500_000.0),
            rms_norm_eps: Some(1e-6),
            bos_token_id: Some(0),
            eos_token_id: Some(2),
            ..ExpectedShape::default()
        };
        assert_eq!(check(&model, &right, None).problems, Vec::<String>::new());
        let wrong = ExpectedShape {
            rope_theta: Some(10_000.0),
            rms_norm_eps: Some(1e-5),
            bos_token_id: Some(1),
            eos_token_id: Some(3),
            ..ExpectedShape::default()
        };
        assert_eq!(
            check(&model, &wrong, None).problems,
            [
                "config.json declares rope_parameters.rope_theta 500000, the playbook expects rope_theta 10000",
                "config.json declares rms_norm_eps 0.000001, the playbook expects 0.00001",
                "config.json declares bos_token_id 0, the playbook expects 1",
                "config.json declares eos_token_id [1,2], the playbook expects 3",
            ]
        );
    }

    #[test]
    fn g0_answers_a_trillion_layers_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let model = seeds::tiny_dir(dir.path(), "llama");
        config_set(&model, "num_hidden_layers", 1_000_000_000_000u64.into());
        let started = Instant::now();
        let report = check(&model, &ExpectedShape::default(), None);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0].ends_with(
                "config.json: `num_hidden_layers` is 1000000000000, more than the 1024 layers this harness loads"
            ),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn g0_names_contexts_past_the_limit_and_heads_that_do_not_divide() {
        let dir = tempfile::tempdir().unwrap();
        for (field, value, want) in [
            (
                "max_position_embeddings",
                serde_json::json!(1u64 << 31),
                "`max_position_embeddings` is 2147483648",
            ),
            (
                "max_position_embeddings",
                serde_json::json!(1_000_000_000_000u64),
                "`max_position_embeddings` is 1000000000000",
            ),
            (
                "num_attention_heads",
                serde_json::json!(3),
                "`hidden_size` 8 is not divisible by num_attention_heads 3",
            ),
        ] {
            let model = seeds::tiny_dir(dir.path(), "llama");
            config_set(&model, field, value);
            let problems = check(&model, &ExpectedShape::default(), None).problems.join("; ");
            assert!(problems.contains(want), "`{problems}` lacks `{want}`");
        }
    }

    #[test]
    fn g0_of_an_artifact_runs_the_gguf_pre_pass() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = seeds::tiny_gguf(dir.path(), "llama");
        let path = dir.path().join("m.gguf");
        let (q8, source) = (Format::Gguf(Quantization::Q8_0), Some(dir.path().join("llama")));
        let check =
            |path: &Path| check_artifact(path, q8, source.as_deref(), &ExpectedShape::default(), None);
        std::fs::write(&path, &gguf).unwrap();
        let passed = check(&path).unwrap();
        assert!(
            passed.contains("passes the header, layout and shape checks, agrees with config.json"),
            "{passed}"
        );
        std::fs::write(&path, seeds::with_alignment(&gguf, 0)).unwrap();
        let e = check(&path).unwrap_err();
        assert!(e.contains("`general.alignment` is 0; it must be a nonzero power of two"), "{e}");
    }

    /// `gguf` rewritten with `edit` applied to its metadata; the tensors as they were.
    fn with_metadata(gguf: &[u8], edit: impl FnOnce(&mut Vec<(String, Value)>)) -> Vec<u8> {
        let mut cursor = std::io::Cursor::new(gguf);
        let content = gguf_file::Content::read(&mut cursor).unwrap();
        let mut md: Vec<(String, Value)> = content.metadata.clone().into_iter().collect();
        md.sort_by(|a, b| a.0.cmp(&b.0));
        edit(&mut md);
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let tensors: Vec<(String, candle_core::quantized::QTensor)> = names
            .into_iter()
            .map(|n| (n.clone(), content.tensor(&mut cursor, n, &candle_core::Device::Cpu).unwrap()))
            .collect();
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
        out.into_inner()
    }

    fn set(md: &mut [(String, Value)], key: &str, value: Value) {
        md.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} is in the file")).1 = value;
    }

    /// Each planted lie fails G0 naming the key and both values; the clean file passes.
    #[test]
    fn g0_names_each_metadata_key_that_parts_from_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = seeds::tiny_gguf(dir.path(), "llama");
        let source = dir.path().join("llama");
        std::fs::write(
            source.join("tokenizer_config.json"),
            serde_json::json!({"chat_template": "{{ messages[0].content }}"}).to_string(),
        )
        .unwrap();
        let path = dir.path().join("m.gguf");
        let q8 = Format::Gguf(Quantization::Q8_0);
        let check = |bytes: Vec<u8>, format: Format| {
            std::fs::write(&path, bytes).unwrap();
            check_artifact(&path, format, Some(&source), &ExpectedShape::default(), None)
        };
        let template = |md: &mut Vec<(String, Value)>| {
            md.push(("tokenizer.chat_template".into(), Value::String("{{ messages[0].content }}".into())));
        };
        let clean = with_metadata(&gguf, |md| {
            md.retain(|(k, _)| k != "tokenizer.chat_template");
            template(md);
        });
        check(clean.clone(), q8).unwrap();
        type Plant = Box<dyn Fn(&mut Vec<(String, Value)>)>;
        let cases: [(&str, Plant, &str); 6] = [
            (
                "rope base",
                Box::new(|md| set(md, "llama.rope.freq_base", Value::F32(1e6))),
                "llama.rope.freq_base 1000000 in the file, config.json rope_theta 10000",
            ),
            (
                "kv heads",
                Box::new(|md| set(md, "llama.attention.head_count_kv", Value::U32(2))),
                "llama.attention.head_count_kv 2 in the file, config.json num_key_value_heads 1",
            ),
            (
                "chat template",
                Box::new(|md| {
                    set(md, "tokenizer.chat_template", Value::String("{{ messages[1].content }}".into()))
                }),
                "tokenizer.chat_template differs from tokenizer_config.json chat_template at character 12",
            ),
            (
                "context",
                Box::new(|md| set(md, "llama.context_length", Value::U32(4096))),
                "llama.context_length 4096 in the file, config.json max_position_embeddings",
            ),
            (
                "eos",
                Box::new(|md| set(md, "tokenizer.ggml.eos_token_id", Value::U32(7))),
                "tokenizer.ggml.eos_token_id 7 in the file, config.json eos_token_id",
            ),
            (
                "file type",
                Box::new(|md| set(md, "general.file_type", Value::U32(15))),
                "general.file_type 15 (q4_k_m) in the file, the cell's format gguf-q8_0 is file type 7",
            ),
        ];
        for (what, plant, want) in cases {
            let e = check(with_metadata(&clean, |md| plant(md)), q8).unwrap_err();
            assert!(e.contains(want), "{what}: `{e}` lacks `{want}`");
        }
        // llama3's rope scaling lives in a tensor: a file without it against a scaled config,
        // and a scaled model's file against an unscaled config, are named.
        let config_path = source.join("config.json");
        let unscaled = std::fs::read_to_string(&config_path).unwrap();
        let mut scaled: serde_json::Value = serde_json::from_str(&unscaled).unwrap();
        scaled["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
        std::fs::write(&config_path, scaled.to_string()).unwrap();
        let e = check(clean.clone(), q8).unwrap_err();
        assert!(
            e.contains("rope_freqs.weight is missing from the file, config.json's rope scaling is llama3"),
            "{e}"
        );
        let with_factors = crate::format::gguf::from_safetensors(&source, Quantization::Q8_0).unwrap();
        let with_factors = with_metadata(&with_factors, |md| {
            md.retain(|(k, _)| k != "tokenizer.chat_template");
            template(md);
        });
        check(with_factors.clone(), q8).unwrap();
        std::fs::write(&config_path, unscaled).unwrap();
        let e = check(with_factors, q8).unwrap_err();
        assert!(e.contains("rope_freqs.weight (llama3 rope scaling) is in the file"), "{e}");
        // The clean Q8_0 file named as Q4_K_M: its types say otherwise.
        let e = check(clean, Format::Gguf(Quantization::Q4KM)).unwrap_err();
        assert!(
            e.contains(
                "general.file_type 7 (q8_0) in the file, the cell's format gguf-q4_k_m is file type 15"
            ),
            "{e}"
        );
    }

    /// `gguf` rewritten with `edit` applied to its metadata and the tensor `drop` left out.
    fn rewritten(gguf: &[u8], edit: impl FnOnce(&mut Vec<(String, Value)>), drop: &str) -> Vec<u8> {
        let mut cursor = std::io::Cursor::new(gguf);
        let content = gguf_file::Content::read(&mut cursor).unwrap();
        let mut md: Vec<(String, Value)> = content.metadata.clone().into_iter().collect();
        md.sort_by(|a, b| a.0.cmp(&b.0));
        edit(&mut md);
        let mut names: Vec<&String> = content.tensor_infos.keys().filter(|n| *n != drop).collect();
        names.sort();
        let tensors: Vec<(String, candle_core::quantized::QTensor)> = names
            .into_iter()
            .map(|n| (n.clone(), content.tensor(&mut cursor, n, &candle_core::Device::Cpu).unwrap()))
            .collect();
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
        out.into_inner()
    }

    /// G0 of llama.cpp's converter files of the zoo models whose layouts `gguf::layouts` reads
    /// back (deepseek2, phi3, gemma, gemma2, gemma3, falcon): the clean F32 and Q8_0 files pass against the model's
    /// config.json; a metadata key planted wrong fails naming it, and a tensor left out fails
    /// naming the tensor the model then lacks.
    #[test]
    fn g0_passes_the_converters_deepseek2_phi3_gemma_files_and_names_planted_defects() {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo");
        let out = tempfile::tempdir().unwrap();
        let planted = out.path().join("planted.gguf");
        let cases: [(&str, &str, Value, &str, &str, &str); 6] = [
            (
                "deepseek_v2",
                "deepseek2.attention.kv_lora_rank",
                Value::U32(8),
                "deepseek2.attention.kv_lora_rank 8 in the file, config.json kv_lora_rank 16",
                "blk.1.ffn_up_shexp.weight",
                "model.layers.1.mlp.shared_experts.up_proj.weight",
            ),
            (
                "phi3",
                "phi3.rope.dimension_count",
                Value::U32(8),
                "phi3.rope.dimension_count 8 in the file, config.json's heads are 16 wide",
                "blk.0.attn_qkv.weight",
                "model.layers.0.self_attn.qkv_proj.weight",
            ),
            (
                "gemma3_text",
                "gemma3.rope.freq_base_swa",
                Value::F32(1e6),
                "gemma3.rope.freq_base_swa 1000000 in the file, config.json rope_parameters.sliding_attention.rope_theta 10000",
                "blk.1.attn_q_norm.weight",
                "model.layers.1.self_attn.q_norm.weight",
            ),
            (
                "gemma2",
                "gemma2.attn_logit_softcapping",
                Value::F32(40.0),
                "gemma2.attn_logit_softcapping 40 in the file, config.json attn_logit_softcapping 50",
                "blk.0.post_ffw_norm.weight",
                "model.layers.0.post_feedforward_layernorm.weight",
            ),
            (
                "gemma",
                "gemma.attention.key_length",
                Value::U32(8),
                "gemma.attention.key_length 8 in the file, config.json head_dim 16",
                "blk.1.ffn_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
            (
                "falcon",
                "falcon.feed_forward_length",
                Value::U32(512),
                "falcon.feed_forward_length 512 in the file, config.json ffn_hidden_size 256",
                "blk.1.attn_norm.weight",
                "transformer.h.1.input_layernorm.weight",
            ),
        ];
        for (model_type, key, value, lie, dropped, missing) in cases {
            let source = zoo.join(model_type);
            let check = |path: &Path, q: Quantization| {
                check_artifact(path, Format::Gguf(q), Some(&source), &ExpectedShape::default(), None)
            };
            for (file, q) in
                [("converter-f32.gguf", Quantization::F32), ("converter-q8_0.gguf", Quantization::Q8_0)]
            {
                let passed =
                    check(&source.join(file), q).unwrap_or_else(|e| panic!("{model_type} {file}: {e}"));
                assert!(passed.contains("agrees with config.json"), "{passed}");
            }
            let clean = std::fs::read(source.join("converter-f32.gguf")).unwrap();
            std::fs::write(&planted, rewritten(&clean, |md| set(md, key, value), "")).unwrap();
            let e = check(&planted, Quantization::F32).unwrap_err();
            assert!(e.contains(lie), "{model_type}: `{e}` lacks `{lie}`");
            std::fs::write(&planted, rewritten(&clean, |_| {}, dropped)).unwrap();
            let e = check(&planted, Quantization::F32).unwrap_err();
            assert!(e.contains(missing), "{model_type}: `{e}` lacks `{missing}`");
        }
        // Keys that change the maths in a way the engine does not reproduce: refused by name.
        let unhonoured: [(&str, &str, Value, &str); 4] = [
            (
                "deepseek_v2",
                "deepseek2.expert_weights_norm",
                Value::Bool(true),
                "`deepseek2.expert_weights_norm` is true",
            ),
            (
                "deepseek_v2",
                "deepseek2.expert_gating_func",
                Value::U32(2),
                "`deepseek2.expert_gating_func` is 2",
            ),
            (
                "gemma3_text",
                "gemma3.rope.scaling.type",
                Value::String("yarn".into()),
                "`gemma3.rope.scaling.type` is `yarn`",
            ),
            (
                "falcon",
                "falcon.attention.head_count_kv",
                Value::U32(2),
                "`falcon.attention.head_count_kv` is 2",
            ),
        ];
        for (model_type, key, value, why) in unhonoured {
            let source = zoo.join(model_type);
            let clean = std::fs::read(source.join("converter-f32.gguf")).unwrap();
            std::fs::write(
                &planted,
                rewritten(
                    &clean,
                    |md| match md.iter_mut().find(|(k, _)| k == key) {
                        Some(entry) => entry.1 = value,
                        None => md.push((key.into(), value)),
                    },
                    "",
                ),
            )
            .unwrap();
            let e = check_artifact(
                &planted,
                Format::Gguf(Quantization::F32),
                Some(&source),
                &ExpectedShape::default(),
                None,
            )
            .unwrap_err();
            assert!(e.contains(why), "{model_type}: `{e}` lacks `{why}`");
            let e = crate::engine::load_candle(&planted, crate::matrix::Backend::Cpu).err().expect("refused");
            assert!(e.to_string().contains(why), "{model_type}: `{e}` lacks `{why}`");
        }
    }
}
