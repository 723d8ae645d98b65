//! Derived formats: conversion from the ground truth, the artifact cache, and sessions on the
//! converted files against sessions on the safetensors they came from.

use std::path::{Path, PathBuf};

use modelqa::support::engine::{Session, load_candle};
use modelqa::support::format::convert::{self, ConvertError};
use modelqa::support::format::{apr, gguf};
use modelqa::support::matrix::{Backend, Format};

fn qa_tiny(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/qa-tiny").join(format!("qa-tiny-{arch}"))
}

const PROMPTS: [&str; 3] = [
    "What is 47 + 38?\n",
    "Repeat: red blue\n",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
];

#[test]
fn apr_sessions_give_the_safetensors_logits_bit_for_bit() {
    let cache = tempfile::tempdir().expect("tempdir");
    for arch in ["llama", "qwen2"] {
        let source = qa_tiny(arch);
        let artifact = convert::artifact(&source, Format::Apr, cache.path()).expect("converts");
        let mut st = load_candle(&source, Backend::Cpu).expect("safetensors loads");
        let mut ap = load_candle(&artifact, Backend::Cpu).expect("apr loads");
        for p in PROMPTS {
            assert_eq!(
                st.prompt_logits(p, 8).expect("st"),
                ap.prompt_logits(p, 8).expect("apr"),
                "{arch}: {p:?}"
            );
        }
        assert_eq!(
            ap.info().chat_template.as_ref().map(|t| t.source.clone()),
            st.info().chat_template.as_ref().map(|t| t.source.clone()),
            "the chat template travels inside the APR file"
        );
        assert_eq!(ap.info().files.len(), 1, "an APR session is one file");
    }
}

#[test]
fn an_artifact_is_made_once_even_when_processes_race() {
    let cache = tempfile::tempdir().expect("tempdir");
    let source = qa_tiny("mistral");
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| convert::artifact(&source, Format::Apr, cache.path()).expect("converts")))
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
    let made = std::fs::metadata(&paths[0]).expect("exists").modified().expect("mtime");
    let again = convert::artifact(&source, Format::Apr, cache.path()).expect("cached");
    assert_eq!(again, paths[0]);
    assert_eq!(std::fs::metadata(&again).expect("exists").modified().expect("mtime"), made, "never rebuilt");
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("converted"))
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no half-written files");
    let file = apr::read(&std::fs::read(&paths[0]).expect("read")).expect("a valid APR file");
    assert_eq!(file.metadata.get("original_format").and_then(|v| v.as_str()), Some("safetensors"));
    assert_eq!(file.metadata.get("model_type").and_then(|v| v.as_str()), Some("mistral"));
}

fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn a_dtype_apr_cannot_hold_is_an_error_not_a_silent_cast() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_model(&qa_tiny("llama"), dir.path());
    let data: Vec<u8> = [1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![3], &data).expect("view");
    let bytes = safetensors::serialize([("positions", view)], None).expect("serialize");
    std::fs::write(dir.path().join("model.safetensors"), bytes).expect("write");
    let err = convert::safetensors_to_apr(dir.path()).expect_err("I64 has no APR dtype");
    assert!(matches!(&err, ConvertError::Dtype { name, .. } if name == "positions"), "{err}");
    assert!(err.to_string().contains("nothing is converted silently"), "{err}");
}

#[test]
fn an_apr_file_without_its_tokenizer_fails_to_load_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = convert::safetensors_to_apr(&qa_tiny("llama")).expect("converts");
    file.metadata.remove(convert::HF_TOKENIZER);
    let path = dir.path().join("model.apr");
    std::fs::write(&path, apr::write(&file).expect("writes")).expect("write");
    let err = load_candle(&path, Backend::Cpu).err().expect("must not load");
    assert!(err.to_string().contains("no embedded tokenizer"), "{err}");
}

/// Every tensor of a safetensors directory: name, dtype, shape and bytes.
fn tensors(dir: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, format!("{:?}", v.dtype()), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort();
    out
}

#[test]
fn safetensors_to_apr_to_safetensors_is_bit_exact_and_conversion_is_idempotent() {
    for arch in ["llama", "qwen2", "mistral"] {
        let source = qa_tiny(arch);
        let first = apr::write(&convert::safetensors_to_apr(&source).expect("converts")).expect("writes");
        let second = apr::write(&convert::safetensors_to_apr(&source).expect("converts")).expect("writes");
        assert!(first == second, "{arch}: converting twice gives identical bytes");

        let out = tempfile::tempdir().expect("tempdir");
        convert::apr_to_safetensors(&apr::read(&first).expect("reads"), out.path()).expect("back");
        assert!(tensors(&source) == tensors(out.path()), "{arch}: every tensor comes back bit for bit");
        for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            let a: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(source.join(name)).expect("a")).expect("json");
            let b: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.path().join(name)).expect("b"))
                    .expect("json");
            assert_eq!(a, b, "{arch}: {name} comes back");
        }
        // And the round-tripped directory converts to the same APR bytes again.
        let third = apr::write(&convert::safetensors_to_apr(out.path()).expect("converts")).expect("writes");
        assert!(first == third, "{arch}: APR → safetensors → APR is stable");
    }
}

#[test]
fn quantized_apr_tensors_do_not_become_safetensors_silently() {
    let mut file = convert::safetensors_to_apr(&qa_tiny("llama")).expect("converts");
    let t = &mut file.tensors[0];
    let values = apr::dequantize(t).expect("f32");
    t.dtype = apr::AprDType::AprQ8;
    t.data = apr::quantize_q8(&values);
    let out = tempfile::tempdir().expect("tempdir");
    let err = convert::apr_to_safetensors(&file, out.path()).expect_err("Q8 has no safetensors dtype");
    assert!(err.to_string().contains("safetensors cannot hold"), "{err}");
}

/// The qa-tiny llama converted to APR with `edit` applied, written to a file.
fn edited_artifact(dir: &Path, edit: impl FnOnce(&mut apr::AprFile)) -> PathBuf {
    let mut file = convert::safetensors_to_apr(&qa_tiny("llama")).expect("converts");
    edit(&mut file);
    let path = dir.join("model.apr");
    std::fs::write(&path, apr::write(&file).expect("writes")).expect("write");
    path
}

fn tensor<'a>(file: &'a mut apr::AprFile, name: &str) -> &'a mut apr::AprTensor {
    file.tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn the_tensor_differential_names_a_transposed_or_changed_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clean = edited_artifact(dir.path(), |_| {});
    let v = modelqa::support::checks::diff::tensors(&qa_tiny("llama"), &clean);
    assert_eq!(v.outcome, modelqa::vocab::Outcome::Corroborated, "{}", v.reason);

    let transposed = edited_artifact(dir.path(), |f| {
        let t = tensor(f, "model.layers.0.self_attn.k_proj.weight");
        let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
        let values = apr::dequantize(t).expect("f32");
        let mut out = vec![0f32; values.len()];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = values[r * cols + c];
            }
        }
        t.shape = vec![cols as u64, rows as u64];
        t.data = out.iter().flat_map(|x| x.to_le_bytes()).collect();
    });
    let v = modelqa::support::checks::diff::tensors(&qa_tiny("llama"), &transposed);
    assert!(v.reason.contains("`model.layers.0.self_attn.k_proj.weight` is transposed"), "{}", v.reason);

    let scaled = edited_artifact(dir.path(), |f| {
        let t = tensor(f, "model.norm.weight");
        let values: Vec<f32> = apr::dequantize(t).expect("f32").iter().map(|x| x * 1.5).collect();
        t.data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    });
    let v = modelqa::support::checks::diff::tensors(&qa_tiny("llama"), &scaled);
    assert!(v.reason.contains("`model.norm.weight` (F32 → F32): largest error"), "{}", v.reason);
}

#[test]
fn the_logit_differential_catches_a_changed_model_and_passes_quantization_within_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = |p: &Path| -> Vec<Vec<Vec<f32>>> {
        let mut s = load_candle(p, Backend::Cpu).expect("loads");
        PROMPTS.iter().map(|q| s.prompt_logits(q, 16).expect("logits")).collect()
    };
    let want = reference(&qa_tiny("llama"));
    let tol = modelqa::support::checks::diff::LogitTolerance::for_format(Format::Apr);

    let broken = edited_artifact(dir.path(), |f| {
        let t = tensor(f, "model.layers.1.mlp.down_proj.weight");
        let values: Vec<f32> = apr::dequantize(t).expect("f32").iter().map(|x| -x).collect();
        t.data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    });
    let v = modelqa::support::checks::diff::logits(&want, &reference(&broken), tol);
    assert_eq!(v.outcome, modelqa::vocab::Outcome::Falsified, "{}", v.reason);

    // APR's 8-bit quantization of every matrix stays within the Q8_0 gate.
    let q8 = edited_artifact(dir.path(), |f| {
        for t in f.tensors.iter_mut().filter(|t| t.shape.len() == 2) {
            let values = apr::dequantize(t).expect("f32");
            t.dtype = apr::AprDType::AprQ8;
            t.data = apr::quantize_q8(&values);
        }
    });
    let v = modelqa::support::checks::diff::logits(
        &want,
        &reference(&q8),
        modelqa::support::checks::diff::LogitTolerance::for_format(Format::Gguf(
            modelqa::support::matrix::Quantization::Q8_0,
        )),
    );
    assert_eq!(v.outcome, modelqa::vocab::Outcome::Corroborated, "{}", v.reason);
    let v = modelqa::support::checks::diff::tensors(&qa_tiny("llama"), &q8);
    assert_eq!(v.outcome, modelqa::vocab::Outcome::Corroborated, "{}", v.reason);
}

#[test]
fn the_tensor_differential_checks_the_embedded_tokenizer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let changed = edited_artifact(dir.path(), |f| {
        let tok = f.metadata.get_mut(convert::HF_TOKENIZER).expect("tokenizer");
        tok["added_tokens"] = serde_json::json!([]);
    });
    let v = modelqa::support::checks::diff::tensors(&qa_tiny("llama"), &changed);
    assert!(v.reason.contains("embedded tokenizer differs"), "{}", v.reason);
}

fn quantization(q: &str) -> modelqa::support::matrix::Quantization {
    match Format::parse(&format!("gguf-{q}")) {
        Some(Format::Gguf(q)) => q,
        _ => panic!("{q} is a quantization"),
    }
}

fn largest_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn safetensors_to_gguf_f32_to_safetensors_is_bit_exact_and_conversion_is_idempotent() {
    for arch in ["llama", "qwen2", "mistral"] {
        let source = qa_tiny(arch);
        let first = gguf::from_safetensors(&source, quantization("f32")).expect("converts");
        let second = gguf::from_safetensors(&source, quantization("f32")).expect("converts");
        assert!(first == second, "{arch}: converting twice gives identical bytes");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("model.gguf");
        std::fs::write(&file, &first).expect("write");
        let out = dir.path().join("back");
        gguf::to_safetensors(&file, &out).expect("back");
        assert!(
            tensors(&source) == tensors(&out),
            "{arch}: every tensor comes back bit for bit (q/k un-permuted)"
        );
        for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            let read = |d: &Path| -> serde_json::Value {
                serde_json::from_str(&std::fs::read_to_string(d.join(name)).expect("read")).expect("json")
            };
            assert_eq!(read(&source), read(&out), "{arch}: {name} comes back");
        }
    }
    let q4 = |s: &Path| gguf::from_safetensors(s, quantization("q4_k_m")).expect("converts");
    assert!(q4(&qa_tiny("llama")) == q4(&qa_tiny("llama")), "quantizing twice gives identical bytes");
}

#[test]
fn gguf_sessions_match_safetensors_through_the_quantized_kernels() {
    let cache = tempfile::tempdir().expect("tempdir");
    for arch in ["llama", "qwen2", "mistral"] {
        let source = qa_tiny(arch);
        let mut st = load_candle(&source, Backend::Cpu).expect("safetensors loads");
        let f32_file =
            convert::artifact(&source, Format::Gguf(quantization("f32")), cache.path()).expect("f32");
        let mut f32_session = load_candle(&f32_file, Backend::Cpu).expect("gguf f32 loads");
        for p in PROMPTS {
            let want = st.prompt_logits(p, 8).expect("st");
            let got = f32_session.prompt_logits(p, 8).expect("gguf");
            // Same weights, another kernel: the permuted q/k and the metadata must be right.
            assert!(
                largest_difference(&want, &got) < 1e-4,
                "{arch} {p:?}: {}",
                largest_difference(&want, &got)
            );
        }
        assert_eq!(
            f32_session.info().chat_template.as_ref().map(|t| t.source.clone()),
            st.info().chat_template.as_ref().map(|t| t.source.clone()),
            "{arch}: the chat template travels in tokenizer.chat_template"
        );
        let q8 = convert::artifact(&source, Format::Gguf(quantization("q8_0")), cache.path()).expect("q8_0");
        let mut q8 = load_candle(&q8, Backend::Cpu).expect("gguf q8_0 loads");
        let request = |p| modelqa::support::engine::GenerateRequest {
            prompt: p,
            literal: &[],
            max_tokens: 8,
            sampling: modelqa::support::engine::Sampling::Greedy,
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
        };
        assert_eq!(
            q8.generate(&request("What is 47 + 38?\n")).expect("q8").text,
            st.generate(&request("What is 47 + 38?\n")).expect("st").text,
            "{arch}: Q8_0 answers as the ground truth does"
        );
    }
}

#[test]
fn a_llamas_llama3_rope_scaling_travels_as_rope_factors_and_is_honoured() {
    // qa-tiny-llama with Llama 3.1's scaling over a short original context, so that nearly
    // every frequency is scaled at the prompts' positions.
    let dir = tempfile::tempdir().expect("tempdir");
    let scaled = dir.path().join("scaled");
    copy_model(&qa_tiny("llama"), &scaled);
    let config_path = scaled.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("config")).expect("json");
    config["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    std::fs::write(&config_path, config.to_string()).expect("write config");

    let cache = dir.path().join("cache");
    let file = convert::artifact(&scaled, Format::Gguf(quantization("f32")), &cache).expect("converts");
    let content =
        candle_core::quantized::gguf_file::Content::read(&mut std::fs::File::open(&file).expect("open"))
            .expect("gguf");
    let info = &content.tensor_infos[gguf::ROPE_FACTORS];
    assert_eq!(info.shape.dims(), [32], "one factor per rotating pair of 64-wide heads");

    let mut st = load_candle(&scaled, Backend::Cpu).expect("scaled safetensors loads");
    let mut unscaled = load_candle(&qa_tiny("llama"), Backend::Cpu).expect("safetensors loads");
    let mut from_gguf = load_candle(&file, Backend::Cpu).expect("the GGUF loads");
    for p in PROMPTS {
        let want = st.prompt_logits(p, 8).expect("st");
        let got = from_gguf.prompt_logits(p, 8).expect("gguf");
        assert!(largest_difference(&want, &got) < 1e-4, "{p:?}: {}", largest_difference(&want, &got));
        // The scaling matters here: a file whose factors were ignored would be this far off.
        let plain = unscaled.prompt_logits(p, 8).expect("unscaled");
        assert!(largest_difference(&want, &plain) > 1e-2, "{p:?}: {}", largest_difference(&want, &plain));
    }
    // Where the factors cannot be carried, the conversion stops by name.
    let err = gguf::to_safetensors(&file, &dir.path().join("back")).expect_err("no Hugging Face name");
    assert!(err.to_string().contains("rope_freqs.weight"), "{err}");
    // YaRN with a β llama.cpp's llama would not read (it runs 32): refused by its field.
    let mut yarn = config.clone();
    yarn["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 16, "beta_fast": 8.0});
    std::fs::write(&config_path, yarn.to_string()).expect("write config");
    let err = gguf::from_safetensors(&scaled, quantization("f32")).expect_err("β 8 is refused");
    assert!(err.to_string().contains("`beta_fast` 8"), "{err}");
}

/// Linear and YaRN scaling travel in `{arch}.rope.scaling.*` keys, as llama.cpp's converter
/// writes them, and are read from the keys alone (a file made elsewhere, no config.json inside):
/// the file reproduces the scaled model, which the unscaled one does not, and converts back to
/// a config.json that states the scaling.
#[test]
fn linear_and_yarn_rope_scaling_travel_in_keys_and_are_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (arch, scaling) in [
        ("llama", serde_json::json!({"rope_type": "linear", "factor": 4.0})),
        (
            "qwen2",
            serde_json::json!({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16}),
        ),
    ] {
        let scaled = dir.path().join(arch);
        copy_model(&qa_tiny(arch), &scaled);
        let config_path = scaled.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).expect("config")).expect("json");
        config["rope_scaling"] = scaling.clone();
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let bytes =
            without_hf_files(&gguf::from_safetensors(&scaled, quantization("f32")).expect("converts"));
        let content = candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(&bytes))
            .expect("gguf");
        let kind = &content.metadata[&format!("{arch}.rope.scaling.type")];
        assert_eq!(kind.to_string().expect("a string"), scaling["rope_type"].as_str().unwrap());
        let file = dir.path().join(format!("{arch}.gguf"));
        std::fs::write(&file, &bytes).expect("write");

        let mut st = load_candle(&scaled, Backend::Cpu).expect("scaled safetensors loads");
        let mut unscaled = load_candle(&qa_tiny(arch), Backend::Cpu).expect("safetensors loads");
        let mut from_gguf = load_candle(&file, Backend::Cpu).expect("the GGUF loads");
        for p in PROMPTS {
            let want = st.prompt_logits(p, 8).expect("st");
            let got = from_gguf.prompt_logits(p, 8).expect("gguf");
            assert!(
                largest_difference(&want, &got) < 1e-4,
                "{arch} {p:?}: {}",
                largest_difference(&want, &got)
            );
            let plain = unscaled.prompt_logits(p, 8).expect("unscaled");
            assert!(largest_difference(&want, &plain) > 1e-2, "{arch} {p:?}: the scaling matters here");
        }
        let back = dir.path().join(format!("{arch}-back"));
        gguf::to_safetensors(&file, &back).expect("back");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(back.join("config.json")).expect("config"))
                .expect("json");
        assert_eq!(config["rope_scaling"]["rope_type"], scaling["rope_type"], "{arch}");
        assert_eq!(config["rope_scaling"]["factor"], scaling["factor"], "{arch}");
    }
}

/// A GGUF file as llama.cpp's converter writes one: no embedded tokenizer.json, no Hugging Face
/// files; the tokenizer comes from `tokenizer.ggml.*`.
fn without_hf_files(bytes: &[u8]) -> Vec<u8> {
    use candle_core::quantized::gguf_file;
    let mut reader = std::io::Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut reader).expect("reads");
    let metadata: Vec<(String, gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("modelqa.") && k.as_str() != gguf::HF_TOKENIZER_JSON)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = names
        .iter()
        .map(|n| (n.clone(), content.tensor(&mut reader, n, &candle_core::Device::Cpu).expect("tensor")))
        .collect();
    let md: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &ts).expect("writes");
    out.into_inner()
}

#[test]
fn a_gguf_made_elsewhere_loads_from_its_metadata_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    for arch in ["llama", "qwen2"] {
        let source = qa_tiny(arch);
        let foreign = dir.path().join(format!("{arch}.gguf"));
        std::fs::write(
            &foreign,
            without_hf_files(&gguf::from_safetensors(&source, quantization("f32")).unwrap()),
        )
        .expect("write");
        let mut st = load_candle(&source, Backend::Cpu).expect("safetensors");
        let mut g = load_candle(&foreign, Backend::Cpu).expect("a GGUF with ggml tokens and merges loads");
        for p in PROMPTS {
            let (want, got) = (st.prompt_logits(p, 8).unwrap(), g.prompt_logits(p, 8).unwrap());
            assert!(
                largest_difference(&want, &got) < 1e-4,
                "{arch} {p:?}: the rebuilt tokenizer gives the same ids"
            );
        }
        assert!(g.info().chat_template.is_some(), "{arch}: the chat template comes from the metadata");
        // And it converts back: config.json rebuilt from the hyper-parameters, tensors exact.
        let out = dir.path().join(format!("{arch}-back"));
        gguf::to_safetensors(&foreign, &out).expect("back");
        assert!(tensors(&source) == tensors(&out), "{arch}: tensors come back bit for bit");
        let back = load_candle(&out, Backend::Cpu).expect("the rebuilt directory loads");
        drop(back);
    }
}

#[test]
fn gguf_to_apr_keeps_k_quants_and_refuses_what_apr_cannot_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = qa_tiny("llama");
    let q4 = dir.path().join("q4.gguf");
    std::fs::write(&q4, gguf::from_safetensors(&source, quantization("q4_k_m")).unwrap()).unwrap();
    let file = gguf::to_apr(&q4).expect("Q4_K_M is F32, Q4_K and Q6_K, which APR holds");
    assert!(file.tensors.iter().any(|t| t.dtype == apr::AprDType::Q4K));
    assert!(file.tensors.iter().any(|t| t.dtype == apr::AprDType::Q6K));
    let apr_path = dir.path().join("q4.apr");
    std::fs::write(&apr_path, apr::write(&file).unwrap()).unwrap();
    let mut from_apr = load_candle(&apr_path, Backend::Cpu).expect("the APR file runs");
    let mut st = load_candle(&source, Backend::Cpu).expect("safetensors");
    let (want, got) =
        (st.prompt_logits(PROMPTS[0], 8).unwrap(), from_apr.prompt_logits(PROMPTS[0], 8).unwrap());
    let kl = modelqa::support::checks::diff::logits(
        &[want],
        &[got],
        modelqa::support::checks::diff::LogitTolerance { max_mean_kl: 0.12, min_top1: 0.9 },
    );
    assert_eq!(kl.outcome, modelqa::vocab::Outcome::Corroborated, "{}", kl.reason);

    let q8 = dir.path().join("q8.gguf");
    std::fs::write(&q8, gguf::from_safetensors(&source, quantization("q8_0")).unwrap()).unwrap();
    let e = gguf::to_apr(&q8).expect_err("APR has no Q8_0");
    assert!(matches!(e, ConvertError::Dtype { .. }) && e.to_string().contains("Q8_0"), "{e}");
    let e = gguf::to_safetensors(&q4, &dir.path().join("x")).expect_err("safetensors has no Q4_K");
    assert!(e.to_string().contains("safetensors cannot hold"), "{e}");
}

#[test]
fn a_truncated_or_foreign_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = gguf::from_safetensors(&qa_tiny("qwen2"), quantization("q8_0")).unwrap();
    for (name, data) in
        [("truncated", &bytes[..bytes.len() / 2]), ("header", &bytes[..40]), ("not", &b"GGUF"[..])]
    {
        let p = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&p, data).unwrap();
        let e = load_candle(&p, Backend::Cpu).err().unwrap_or_else(|| panic!("{name} loaded"));
        assert!(e.to_string().contains(&p.display().to_string()), "{name}: {e}");
    }
}

#[test]
fn each_invariant_fails_on_the_defect_it_names_and_passes_clean_files() {
    use modelqa::support::checks::diff::invariant;
    use modelqa::vocab::Invariant;
    use modelqa::vocab::Outcome;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = qa_tiny("llama");
    let texts = vec!["What is 47 + 38?\n".to_string()];
    let clean = edited_artifact(dir.path(), |_| {});
    for inv in Invariant::ALL {
        let v = invariant(inv, &source, &clean, Format::Apr, &texts);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}: {}", inv.slug(), v.reason);
    }
    let check = |inv: Invariant, path: &Path, format: Format, says: &str| {
        let v = invariant(inv, &source, path, format, &texts);
        assert_eq!(v.outcome, Outcome::Falsified, "{} passed: {}", inv.slug(), v.reason);
        assert!(v.reason.starts_with(inv.slug()) && v.reason.contains(says), "{}", v.reason);
    };
    // I-1, I-3, I-4: one value nudged in a tensor that keeps its dtype.
    let nudged = dir.path().join("nudged");
    std::fs::create_dir(&nudged).unwrap();
    let nudged = edited_artifact(&nudged, |f| tensor(f, "model.norm.weight").data[0] ^= 1);
    check(Invariant::RoundTrip, &nudged, Format::Apr, "model.norm.weight");
    check(Invariant::StatisticsPreserved, &nudged, Format::Apr, "checksum changed");
    // I-2: a tensor renamed.
    let renamed = dir.path().join("renamed");
    std::fs::create_dir(&renamed).unwrap();
    let renamed =
        edited_artifact(&renamed, |f| tensor(f, "model.norm.weight").name = "model.final_norm.weight".into());
    check(Invariant::NameBijection, &renamed, Format::Apr, "model.final_norm.weight");
    // I-3: a tensor stored as f16 where the source is f32.
    let narrowed = dir.path().join("narrowed");
    std::fs::create_dir(&narrowed).unwrap();
    let narrowed = edited_artifact(&narrowed, |f| {
        let t = tensor(f, "model.norm.weight");
        let values: Vec<f32> =
            t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        t.data = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        t.dtype = apr::AprDType::F16;
    });
    check(Invariant::NoSilentDtypeFallback, &narrowed, Format::Apr, "was F32 and is stored as F16");
    // I-5: a merge dropped from the embedded tokenizer.
    let retokenized = dir.path().join("retokenized");
    std::fs::create_dir(&retokenized).unwrap();
    let retokenized = edited_artifact(&retokenized, |f| {
        let tok = f.metadata.get_mut(convert::HF_TOKENIZER).expect("tokenizer");
        let merges = tok["model"]["merges"].as_array_mut().expect("merges");
        merges.truncate(merges.len() / 2);
    });
    check(Invariant::TokenizerRoundTrip, &retokenized, Format::Apr, "encodes to");
    // A GGUF file whose tensor is re-typed without the fallback being listed.
    let q4 = dir.path().join("q4.gguf");
    std::fs::write(&q4, gguf::from_safetensors(&source, quantization("q4_k_m")).unwrap()).unwrap();
    for inv in Invariant::ALL {
        let v = invariant(inv, &source, &q4, Format::Gguf(quantization("q4_k_m")), &texts);
        assert_eq!(v.outcome, Outcome::Corroborated, "gguf {}: {}", inv.slug(), v.reason);
    }
    check(
        Invariant::NoSilentDtypeFallback,
        &q4,
        Format::Gguf(quantization("q8_0")),
        "the file lists no fallback",
    );
}

#[test]
fn the_generation_rule_passes_agreement_and_names_a_token_outside_the_top_k() {
    use modelqa::support::engine::SharedSession;
    use modelqa::support::trial::Ask;
    use modelqa::vocab::Outcome;
    let shared = |p: &Path| -> SharedSession {
        let s: Box<dyn Session> = Box::new(load_candle(p, Backend::Cpu).expect("loads"));
        std::sync::Arc::new(std::sync::Mutex::new(s))
    };
    let asks = vec![Ask {
        name: "add".into(),
        prompt: "What is 47 + 38?\n".into(),
        literal: Vec::new(),
        conversation: None,
        max_tokens: 8,
    }];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let reference = shared(&qa_tiny("llama"));
    let same = modelqa::support::checks::differential::first_divergence(
        &reference,
        &shared(&qa_tiny("llama")),
        &asks,
        5,
        deadline,
    );
    assert_eq!(same.outcome, Outcome::Corroborated, "{}", same.reason);
    assert!(same.reason.starts_with("1 of 1 greedy outputs identical"), "{}", same.reason);
    // The final norm negated: every logit flips sign, so the format's first token is the ground
    // truth's least likely one.
    let dir = tempfile::tempdir().expect("tempdir");
    let flipped = edited_artifact(dir.path(), |f| {
        let t = tensor(f, "model.norm.weight");
        t.data = t
            .data
            .chunks_exact(4)
            .flat_map(|c| (-f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect();
    });
    let candidate = shared(&flipped);
    let v =
        modelqa::support::checks::differential::first_divergence(&reference, &candidate, &asks, 5, deadline);
    assert_eq!(v.outcome, Outcome::Falsified, "{}", v.reason);
    assert!(v.reason.contains("part at token 0") && v.reason.contains("top 5"), "{}", v.reason);
    // With k as large as the vocabulary every token is in the other's top k: `top_k` is read.
    let v = modelqa::support::checks::differential::first_divergence(
        &reference, &candidate, &asks, 512, deadline,
    );
    assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
    assert!(v.reason.contains("top 512 (add at token 0)"), "{}", v.reason);
}

/// Defects that load, run and answer, planted in a converted file whose weights are otherwise
/// right: each is named by the differential meant to see it, where the clean file passes both.
#[test]
fn subtle_numeric_defects_in_an_artifact_are_named_by_the_trial_meant_for_them() {
    use modelqa::support::checks::diff::{LogitTolerance, logits, tensors};
    use modelqa::vocab::Outcome;
    let dir = tempfile::tempdir().expect("tempdir");
    let read = |p: &Path| -> Vec<Vec<Vec<f32>>> {
        let mut s = load_candle(p, Backend::Cpu).expect("loads");
        PROMPTS.iter().map(|q| s.prompt_logits(q, 16).expect("logits")).collect()
    };
    let want = read(&qa_tiny("llama"));
    let tol = LogitTolerance::for_format(Format::Apr);
    let clean = edited_artifact(dir.path(), |_| {});
    assert_eq!(logits(&want, &read(&clean), tol).outcome, Outcome::Corroborated);

    // A lying rms_norm_eps (1e-5 → 0.1): every tensor is right, so only the logits see it.
    let eps = edited_artifact(dir.path(), |f| {
        f.metadata.get_mut(convert::HF_CONFIG).expect("the embedded config")["rms_norm_eps"] =
            serde_json::json!(0.1);
    });
    assert_eq!(tensors(&qa_tiny("llama"), &eps).outcome, Outcome::Corroborated);
    let v = logits(&want, &read(&eps), tol);
    assert_eq!(v.outcome, Outcome::Falsified, "{}", v.reason);

    // Numeric drift: one matrix scaled by 1.05, past its stored type's rounding bound.
    let drift = edited_artifact(dir.path(), |f| {
        let t = tensor(f, "model.layers.1.mlp.down_proj.weight");
        let values: Vec<f32> = apr::dequantize(t).expect("f32").iter().map(|x| x * 1.05).collect();
        t.data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    });
    let v = tensors(&qa_tiny("llama"), &drift);
    assert_eq!(v.outcome, Outcome::Falsified, "{}", v.reason);
    assert!(v.reason.contains("model.layers.1.mlp.down_proj.weight"), "{}", v.reason);
}
