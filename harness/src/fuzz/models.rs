//! The tiny models the model-file targets run on: a few kilobytes per format, so one fuzz
//! iteration (write, check, load on CPU, generate two tokens) takes milliseconds. Weights are a
//! fixed arithmetic pattern, the tokenizer a word-level one of 16 words; the seed corpus under
//! `fuzz/corpus/` is written from these (`write_corpus`, run by hand) and committed.

use std::path::Path;

use crate::format::hparams::Hyperparameters;

/// The words of the tiny tokenizer, id by position; `<eos>` ends a sequence.
const WORDS: [&str; 16] = [
    "<eos>",
    "\u{0120}",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "\u{0120}a",
    "\u{0120}b",
    "\u{0120}c",
    "\u{0120}d",
    "\u{0120}e",
    "\u{0120}f",
    "\u{0120}g",
];

/// The prompt an iteration generates from: words the tokenizer knows.
pub(crate) const PROMPT: &str = "a b c";

/// The config.json of a tiny model of `model_type` (llama, qwen2 or mistral): 1 layer, hidden
/// size 8, 2 heads of 4 sharing 1 key/value head, 16 words, 16 positions.
pub(crate) fn config(model_type: &str) -> serde_json::Value {
    let mut config = serde_json::json!({
        "model_type": model_type,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 16,
        "max_position_embeddings": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "bos_token_id": 0,
        "eos_token_id": 0,
    });
    if model_type == "qwen2" {
        config["sliding_window"] = 16.into();
        config["max_window_layers"] = 1.into();
        config["use_sliding_window"] = false.into();
    }
    if model_type == "mistral" {
        config["head_dim"] = 4.into();
        config["sliding_window"] = serde_json::Value::Null;
    }
    config
}

/// The tiny tokenizer, as `tokenizer.json`: a byte-level BPE (GPT-2's split, so a GGUF names it
/// `gpt-2`) over the letters a to g, each also after `Ġ`, the byte-level space: a word is one
/// token, so `a b c` is three.
pub(crate) fn tokenizer() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> =
        WORDS.iter().enumerate().map(|(i, w)| (w.to_string(), i.into())).collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 0, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": WORDS[9..].iter().map(|w| format!("\u{0120} {}", &w[2..])).collect::<Vec<_>>()},
    })
    .to_string()
}

/// `model.safetensors` for `config`: every tensor its loader requests, F32, norms of ones and
/// other weights a small fixed pattern. `None` when the config does not validate.
pub(crate) fn weights(config: &serde_json::Value) -> Option<Vec<u8>> {
    let hyper = Hyperparameters::from_config(Path::new("config.json"), config).ok()?;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = hyper
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| if name.contains("norm") { 1.0 } else { ((i * 37 % 17) as f32 - 8.0) * 0.05 })
                .collect();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    safetensors::serialize(views, None).ok()
}

/// Writes a tiny model directory: `config`, the tokenizer and `weights`.
pub(crate) fn write_dir(dir: &Path, config: &[u8], weights: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join("config.json"), config)?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer())?;
    std::fs::write(dir.join("model.safetensors"), weights)
}

#[cfg(test)]
pub(crate) mod seeds {
    //! The committed seed corpus: a tiny valid model of each format and each crash the issue
    //! measured on main, as files.

    use std::path::{Path, PathBuf};

    use super::*;
    use crate::matrix::Quantization;

    /// `fuzz/corpus/` of the checkout.
    pub(crate) fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
    }

    /// A tiny model directory of `model_type` under `dir`.
    pub(crate) fn tiny_dir(dir: &Path, model_type: &str) -> PathBuf {
        let path = dir.join(model_type);
        std::fs::create_dir_all(&path).unwrap();
        let config = config(model_type);
        write_dir(&path, config.to_string().as_bytes(), &weights(&config).unwrap()).unwrap();
        path
    }

    pub(crate) fn tiny_gguf(dir: &Path, model_type: &str) -> Vec<u8> {
        crate::format::gguf::from_safetensors(&tiny_dir(dir, model_type), Quantization::Q8_0).unwrap()
    }

    /// The tiny llama with YaRN scaling, its `llama.rope.scaling.*` keys for the fuzzer to vary.
    fn tiny_yarn_gguf(dir: &Path) -> Vec<u8> {
        let mut config = config("llama");
        config["rope_scaling"] =
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8});
        gguf_of(&dir.join("llama-yarn"), &config)
    }

    /// The Q8_0 GGUF of a tiny model of `config` (its weights as [`weights`] makes them),
    /// written through a model directory at `path`.
    pub(crate) fn gguf_of(path: &Path, config: &serde_json::Value) -> Vec<u8> {
        std::fs::create_dir_all(path).unwrap();
        write_dir(path, config.to_string().as_bytes(), &weights(config).unwrap()).unwrap();
        // The writer's phi3 vocabulary is a `GPT2Tokenizer`'s (Phi-4-mini's), which it checks.
        if config["model_type"] == "phi3" {
            std::fs::write(path.join("tokenizer_config.json"), r#"{"tokenizer_class": "GPT2Tokenizer"}"#)
                .unwrap();
        }
        crate::format::gguf::from_safetensors(path, Quantization::Q8_0).unwrap()
    }

    pub(crate) fn tiny_apr(dir: &Path) -> Vec<u8> {
        let source = crate::format::convert::safetensors_to_apr(&tiny_dir(dir, "llama")).unwrap();
        crate::format::apr::write(&source).unwrap()
    }

    /// `bytes` with `value` written at the first occurrence of `after` plus `skip` bytes.
    pub(crate) fn patched(bytes: &[u8], after: &[u8], skip: usize, value: &[u8]) -> Vec<u8> {
        let at = bytes.windows(after.len()).position(|w| w == after).expect("the marker is in the file");
        let mut out = bytes.to_vec();
        out[at + after.len() + skip..][..value.len()].copy_from_slice(value);
        out
    }

    /// A GGUF string as it is stored: its u64 length, then its bytes.
    fn stored(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// A GGUF file's metadata value of `key` (a u32 after its type code) set to `value`.
    pub(crate) fn gguf_u32(bytes: &[u8], key: &str, value: u32) -> Vec<u8> {
        patched(bytes, &stored(key), 4, &value.to_le_bytes())
    }

    /// A GGUF file's tensor `name` with its innermost dimension set to `value`.
    pub(crate) fn gguf_dim(bytes: &[u8], name: &str, value: u64) -> Vec<u8> {
        patched(bytes, &stored(name), 4, &value.to_le_bytes())
    }

    /// The tiny safetensors weights with `name` declared in `shape` (the same bytes).
    pub(crate) fn reshaped(weights: &[u8], name: &str, shape: Vec<usize>) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(weights).unwrap();
        let views: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let dims = if n == name { shape.clone() } else { v.shape().to_vec() };
                (n, safetensors::tensor::TensorView::new(v.dtype(), dims, v.data()).unwrap())
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    /// Each seed, by target and file name.
    pub(crate) fn all() -> Vec<(&'static str, String, Vec<u8>)> {
        let tmp = tempfile::tempdir().unwrap();
        let gguf = tiny_gguf(tmp.path(), "llama");
        let first = "output.weight";
        let mut seeds = vec![
            ("gguf", "tiny-llama.gguf".to_string(), gguf.clone()),
            ("gguf", "tiny-qwen2.gguf".into(), tiny_gguf(tmp.path(), "qwen2")),
            ("gguf", "alignment-0.gguf".into(), with_alignment(&gguf, 0)),
            ("gguf", "dims-overflow.gguf".into(), gguf_dim(&gguf, first, 1 << 62)),
            ("gguf", "dim-zero.gguf".into(), gguf_dim(&gguf, first, 0)),
            ("gguf", "shape-changed.gguf".into(), gguf_dim(&gguf, first, 16)),
            ("gguf", "block-count-2p31.gguf".into(), gguf_u32(&gguf, "llama.block_count", 1 << 31)),
            ("gguf", "rope-dim-2p31.gguf".into(), gguf_u32(&gguf, "llama.rope.dimension_count", 1 << 31)),
            ("gguf", "head-count-0.gguf".into(), gguf_u32(&gguf, "llama.attention.head_count", 0)),
            (
                "gguf",
                "tensor-count-2p31.gguf".into(),
                patched(&gguf, b"GGUF", 4, &(1u64 << 31).to_le_bytes()),
            ),
            ("gguf", "truncated.gguf".into(), gguf[..gguf.len() - 40].to_vec()),
            ("gguf", "tiny-llama-yarn.gguf".into(), tiny_yarn_gguf(tmp.path())),
        ];
        let llama = config("llama");
        let weights_bytes = weights(&llama).unwrap();
        seeds.push(("safetensors", "tiny-llama.safetensors".into(), weights_bytes.clone()));
        seeds.push((
            "safetensors",
            "q-proj-reshaped.safetensors".into(),
            reshaped(&weights_bytes, "model.layers.0.self_attn.q_proj.weight", vec![4, 16]),
        ));
        seeds.push((
            "safetensors",
            "lm-head-transposed.safetensors".into(),
            reshaped(&weights_bytes, "lm_head.weight", vec![8, 16]),
        ));
        for model_type in ["llama", "qwen2", "mistral"] {
            seeds.push((
                "model-config",
                format!("tiny-{model_type}.json"),
                config(model_type).to_string().into(),
            ));
        }
        for (name, field, value) in [
            ("context-2p31", "max_position_embeddings", serde_json::json!(1u64 << 31)),
            ("context-1e12", "max_position_embeddings", serde_json::json!(1_000_000_000_000u64)),
            ("layers-1e12", "num_hidden_layers", serde_json::json!(1_000_000_000_000u64)),
            ("heads-3", "num_attention_heads", serde_json::json!(3)),
            ("heads-0", "num_attention_heads", serde_json::json!(0)),
            ("kv-heads-0", "num_key_value_heads", serde_json::json!(0)),
            ("sliding-window-max", "sliding_window", serde_json::json!(u64::MAX)),
        ] {
            let mut c = config(if field == "sliding_window" { "qwen2" } else { "llama" });
            c[field] = value;
            seeds.push(("model-config", format!("{name}.json"), c.to_string().into()));
        }
        let apr = tiny_apr(tmp.path());
        seeds.push(("apr", "tiny-llama.apr".into(), apr.clone()));
        seeds.push(("apr", "count-2p31.apr".into(), apr_with_count(&apr, 1 << 31)));
        seeds.push(("apr", "zero-dim-q4k.apr".into(), {
            let mut file = crate::format::apr::read(&apr).unwrap();
            file.tensors.push(crate::format::apr::AprTensor {
                name: "zz.empty".into(),
                dtype: crate::format::apr::AprDType::Q4K,
                shape: vec![0, 256],
                data: Vec::new(),
            });
            crate::format::apr::write(&file).unwrap()
        }));
        seeds
    }

    /// The APR file with its header's tensor count set to `count`, both checksums made good so
    /// the count is what a reader meets.
    pub(crate) fn apr_with_count(apr: &[u8], count: u32) -> Vec<u8> {
        let mut b = apr.to_vec();
        b[8..12].copy_from_slice(&count.to_le_bytes());
        crate::format::apr::reseal(b)
    }

    /// The tiny GGUF with `general.alignment` set, written again through candle.
    pub(crate) fn with_alignment(gguf: &[u8], alignment: u32) -> Vec<u8> {
        use candle_core::quantized::gguf_file::{self, Value};
        let mut cursor = std::io::Cursor::new(gguf);
        let content = gguf_file::Content::read(&mut cursor).unwrap();
        let mut tensors = Vec::new();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            tensors
                .push((name.clone(), content.tensor(&mut cursor, name, &candle_core::Device::Cpu).unwrap()));
        }
        let alignment = Value::U32(alignment);
        let mut metadata: Vec<(&str, &Value)> =
            content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        metadata.sort_by_key(|(k, _)| *k);
        metadata.push(("general.alignment", &alignment));
        let tensors: Vec<(&str, &candle_core::quantized::QTensor)> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &metadata, &tensors).unwrap();
        out.into_inner()
    }

    /// Writes the seed corpus into the checkout: `cargo test -p modelqa-harness --lib
    /// write_corpus -- --ignored`, then review and commit `fuzz/corpus/`.
    #[test]
    #[ignore = "writes fuzz/corpus/; run by hand when the seeds change"]
    fn write_corpus() {
        for (target, name, bytes) in all() {
            let dir = corpus_dir().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
