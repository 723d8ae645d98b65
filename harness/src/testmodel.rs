//! The test model generator: a small, deterministic, random-weight model in Hugging Face layout
//! (config.json, model.safetensors, tokenizer.json trained offline, tokenizer_config.json with a
//! chat template) that the project's own tests run real inference on.
//!
//! Random weights produce noise, so oracles that judge meaning fail on it; it exists to exercise
//! loading, generation, metrics and the journal, not to pass scenarios.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

/// The architectures the generator can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestArchitecture {
    Llama,
    Qwen2,
}

/// The shape of a generated model.
#[derive(Debug, Clone, Copy)]
pub struct TestModelShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub context: usize,
    /// The output head is the embedding table (`tie_word_embeddings`), as in Qwen2.5-0.5B: no
    /// `lm_head.weight` is written, and the table is drawn at the head's scale.
    pub tied: bool,
}

impl Default for TestModelShape {
    fn default() -> Self {
        Self {
            hidden: 64,
            intermediate: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab: 384,
            context: 256,
            tied: false,
        }
    }
}

/// Special tokens, in id order from 0.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A ChatML template, as Qwen-style models carry it in tokenizer_config.json.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Text the tokenizer is trained on: the kinds of prompts the playbooks send.
fn corpus() -> Vec<String> {
    let mut lines = Vec::new();
    for a in 0..30 {
        for b in [1, 3, 7, 12, 25, 48, 99] {
            lines.push(format!("What is {a} + {b}?\n{}", a + b));
            lines.push(format!("Calculate {a}*{b}\n{}", a * b));
            lines.push(format!("{a} - {b} =\n{}", a - b));
        }
    }
    for s in [
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
        "fn main() {\n    println!(\"Hello, world!\");\n}",
        "Repeat: red green blue\nred green blue",
        "Hello! How are you today? I am fine, thank you.",
        "List three colors.\nRed, green and blue.",
        "The quick brown fox jumps over the lazy dog.",
    ] {
        for _ in 0..20 {
            lines.push(s.to_string());
        }
    }
    lines
}

/// Trains the byte-level BPE tokenizer and writes `tokenizer.json` into `dir`.
pub fn write_tokenizer(dir: &Path, vocab: usize) -> anyhow::Result<()> {
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab)
        .min_frequency(0)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect())
        .build();
    let mut tokenizer = TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
        .with_post_processor(Some(ByteLevel::default()))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(|e| anyhow::anyhow!("failed to build the tokenizer: {e}"))?;
    tokenizer
        .train(&mut trainer, corpus().iter())
        .map_err(|e| anyhow::anyhow!("failed to train the tokenizer: {e}"))?;
    tokenizer
        .save(dir.join("tokenizer.json"), true)
        .map_err(|e| anyhow::anyhow!("failed to save the tokenizer: {e}"))?;
    Ok(())
}

/// Normal numbers from the curriculum's splitmix64 stream (Box–Muller), so weights do not
/// depend on any RNG crate's version.
struct Normal(crate::curriculum::Rng);

impl Normal {
    fn sample(&mut self) -> f32 {
        let (u1, u2) = (self.0.unit().max(1e-12), self.0.unit());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// How one tensor of a generated model is drawn.
enum Fill {
    /// Normal numbers times this scale, drawn from the model's one stream in plan order.
    Normal(f32),
    Ones,
    Zeros,
}

/// Every tensor of a generated model, in the order its values are drawn.
fn plan(arch: TestArchitecture, shape: TestModelShape) -> Vec<(String, Vec<usize>, Fill)> {
    let h = shape.hidden;
    let kv = shape.kv_heads * (h / shape.heads);
    let std = 0.3 / (h as f32).sqrt();
    // A tied table is the head too: drawn at N(0, 1) its own row would dominate every final
    // state, and greedy decoding would only repeat the last token.
    let embed_scale = if shape.tied { std * 4.0 } else { 1.0 };
    let mut out =
        vec![("model.embed_tokens.weight".to_string(), vec![shape.vocab, h], Fill::Normal(embed_scale))];
    for l in 0..shape.layers {
        let p = format!("model.layers.{l}");
        for (name, rows, cols) in [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", shape.intermediate, h),
            ("mlp.up_proj", shape.intermediate, h),
            ("mlp.down_proj", h, shape.intermediate),
        ] {
            out.push((format!("{p}.{name}.weight"), vec![rows, cols], Fill::Normal(std)));
        }
        out.push((format!("{p}.input_layernorm.weight"), vec![h], Fill::Ones));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h], Fill::Ones));
        if arch == TestArchitecture::Qwen2 {
            for (proj, n) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
                out.push((format!("{p}.self_attn.{proj}.bias"), vec![n], Fill::Zeros));
            }
        }
    }
    out.push(("model.norm.weight".into(), vec![h], Fill::Ones));
    if !shape.tied {
        out.push(("lm_head.weight".into(), vec![shape.vocab, h], Fill::Normal(std * 4.0)));
    }
    out
}

/// Writes a complete model directory; the same arguments always give the same bytes.
pub fn write_test_model(
    dir: &Path,
    arch: TestArchitecture,
    shape: TestModelShape,
    seed: u64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    check_tokenizer(dir, shape)?;
    let mut rng = Normal(crate::curriculum::Rng::new(seed));
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (name, dims, fill) in plan(arch, shape) {
        let n: usize = dims.iter().product();
        let tensor = match fill {
            Fill::Normal(scale) => {
                let data: Vec<f32> = (0..n).map(|_| rng.sample() * scale).collect();
                Tensor::from_vec(data, dims, &Device::Cpu)?
            }
            Fill::Ones => Tensor::ones(dims, candle_core::DType::F32, &Device::Cpu)?,
            Fill::Zeros => Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu)?,
        };
        map.insert(name, tensor);
    }
    candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
    write_configs(dir, arch, shape, "float32")
}

/// Writes a model directory as [`write_test_model`] draws it (the same values, rounded to bf16),
/// stored in bf16 and streamed to the file tensor by tensor: a model far larger than memory (a
/// 7 B shape: 13.5 GB) is written holding one chunk of values at a time. The same arguments
/// always give the same bytes.
pub fn write_test_model_bf16(
    dir: &Path,
    arch: TestArchitecture,
    shape: TestModelShape,
    seed: u64,
) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    check_tokenizer(dir, shape)?;
    let plan = plan(arch, shape);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dims, _) in &plan {
        let bytes = dims.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": dims, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header)?;
    // The data section starts 8-aligned, as safetensors' own writer pads it.
    while !(text.len() + 8).is_multiple_of(8) {
        text.push(' ');
    }
    let partial = dir.join("model.safetensors.partial");
    let mut out = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(&partial)?);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(text.as_bytes())?;
    let mut rng = Normal(crate::curriculum::Rng::new(seed));
    let mut chunk: Vec<u8> = Vec::with_capacity(1 << 21);
    for (_, dims, fill) in &plan {
        let mut left: usize = dims.iter().product();
        while left > 0 {
            let n = left.min(1 << 20);
            chunk.clear();
            for _ in 0..n {
                let v = match fill {
                    Fill::Normal(scale) => rng.sample() * scale,
                    Fill::Ones => 1.0,
                    Fill::Zeros => 0.0,
                };
                chunk.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
            out.write_all(&chunk)?;
            left -= n;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, dir.join("model.safetensors"))?;
    write_configs(dir, arch, shape, "bfloat16")
}

/// The tokenizer of `shape`, written into `dir`, with no more tokens than the model has rows.
fn check_tokenizer(dir: &Path, shape: TestModelShape) -> anyhow::Result<()> {
    write_tokenizer(dir, shape.vocab)?;
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("failed to reload the tokenizer: {e}"))?;
    let vocab = tokenizer.get_vocab_size(true);
    anyhow::ensure!(
        vocab <= shape.vocab,
        "the tokenizer has {vocab} tokens, more than the model's {}",
        shape.vocab
    );
    Ok(())
}

/// config.json (stating `torch_dtype`) and tokenizer_config.json.
fn write_configs(
    dir: &Path,
    arch: TestArchitecture,
    shape: TestModelShape,
    torch_dtype: &str,
) -> anyhow::Result<()> {
    let h = shape.hidden;
    let eos = 0u32;
    let config = match arch {
        TestArchitecture::Llama => serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": h,
            "intermediate_size": shape.intermediate,
            "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads,
            "vocab_size": shape.vocab,
            "max_position_embeddings": shape.context,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": shape.tied,
            "bos_token_id": eos,
            "eos_token_id": eos,
            "torch_dtype": torch_dtype,
        }),
        TestArchitecture::Qwen2 => serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_size": h,
            "intermediate_size": shape.intermediate,
            "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads,
            "vocab_size": shape.vocab,
            "max_position_embeddings": shape.context,
            "sliding_window": shape.context,
            "max_window_layers": shape.layers,
            "use_sliding_window": false,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": shape.tied,
            "bos_token_id": eos,
            "eos_token_id": eos,
            "torch_dtype": torch_dtype,
        }),
    };
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
    let tokenizer_config = serde_json::json!({
        "eos_token": SPECIAL_TOKENS[0],
        "pad_token": SPECIAL_TOKENS[0],
        "model_max_length": shape.context,
        "chat_template": CHAT_TEMPLATE,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tokenizer_config)? + "\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::{GenerateRequest, Sampling, Session, load_candle};
    use crate::matrix::Backend;

    fn generate(dir: &Path, prompt: &str) -> crate::engine::Generation {
        let mut s = load_candle(dir, Backend::Cpu).expect("loads");
        s.generate(&GenerateRequest {
            prompt,
            literal: &[],
            max_tokens: 12,
            sampling: Sampling::Greedy,
            deadline: Instant::now() + Duration::from_secs(60),
        })
        .expect("generates")
    }

    #[test]
    fn the_streamed_bf16_model_holds_the_f32_models_values_rounded_and_runs() {
        let (f32_dir, bf16_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let shape = TestModelShape { tied: true, ..TestModelShape::default() };
        write_test_model(f32_dir.path(), TestArchitecture::Qwen2, shape, 3).unwrap();
        write_test_model_bf16(bf16_dir.path(), TestArchitecture::Qwen2, shape, 3).unwrap();
        let load =
            |d: &Path| candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap();
        let (wide, narrow) = (load(f32_dir.path()), load(bf16_dir.path()));
        assert_eq!(wide.len(), narrow.len());
        for (name, t) in &wide {
            let rounded: Vec<u16> = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_bits())
                .collect();
            let stored: Vec<u16> = narrow[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<half::bf16>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(rounded, stored, "{name}");
        }
        let config = std::fs::read_to_string(bf16_dir.path().join("config.json")).unwrap();
        assert!(config.contains("\"torch_dtype\": \"bfloat16\""), "{config}");
        // The engine's own header check admits it, and it generates.
        let g = generate(bf16_dir.path(), "What is 2 + 2?");
        assert!(g.prompt_tokens > 3);
    }

    #[test]
    fn generated_models_are_deterministic_and_run() {
        for arch in [TestArchitecture::Llama, TestArchitecture::Qwen2] {
            let a = tempfile::tempdir().unwrap();
            let b = tempfile::tempdir().unwrap();
            write_test_model(a.path(), arch, TestModelShape::default(), 7).unwrap();
            write_test_model(b.path(), arch, TestModelShape::default(), 7).unwrap();
            for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
                assert_eq!(
                    std::fs::read(a.path().join(f)).unwrap(),
                    std::fs::read(b.path().join(f)).unwrap(),
                    "{f} differs"
                );
            }
            let g1 = generate(a.path(), "What is 2 + 2?");
            let g2 = generate(b.path(), "What is 2 + 2?");
            assert_eq!(g1.tokens, g2.tokens);
            assert!(g1.prompt_tokens > 3);
            assert!(!g1.tokens.is_empty() || g1.finish == crate::engine::Finish::Eos);
        }
    }

    #[test]
    fn a_tied_model_has_no_head_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let shape = TestModelShape { tied: true, ..TestModelShape::default() };
        write_test_model(dir.path(), TestArchitecture::Qwen2, shape, 7).unwrap();
        let tensors =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &candle_core::Device::Cpu)
                .unwrap();
        assert!(!tensors.contains_key("lm_head.weight"));
        let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(config.contains("\"tie_word_embeddings\": true"), "{config}");
        let g = generate(dir.path(), "What is 2 + 2?");
        assert!(!g.tokens.is_empty() || g.finish == crate::engine::Finish::Eos);
    }

    #[test]
    fn sharded_safetensors_load_like_a_single_file() {
        let dir = tempfile::tempdir().unwrap();
        write_test_model(dir.path(), TestArchitecture::Qwen2, TestModelShape::default(), 3).unwrap();
        let single = generate(dir.path(), "Hello there");

        let tensors =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &candle_core::Device::Cpu)
                .unwrap();
        let mut names: Vec<_> = tensors.keys().cloned().collect();
        names.sort();
        let (a, b) = names.split_at(names.len() / 2);
        let mut weight_map = serde_json::Map::new();
        for (shard, part) in
            [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)]
        {
            let subset: HashMap<String, Tensor> =
                part.iter().map(|n| (n.clone(), tensors[n].clone())).collect();
            candle_core::safetensors::save(&subset, dir.path().join(shard)).unwrap();
            for n in part {
                weight_map.insert(n.clone(), shard.into());
            }
        }
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

        let sharded = generate(dir.path(), "Hello there");
        assert_eq!(single.tokens, sharded.tokens);
        let info = load_candle(dir.path(), Backend::Cpu).unwrap().info().clone();
        assert_eq!(info.files.iter().filter(|f| f.path.to_string_lossy().contains("-of-00002")).count(), 2);
    }

    #[test]
    fn corrupt_files_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_test_model(dir.path(), TestArchitecture::Llama, TestModelShape::default(), 3).unwrap();
        let weights = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        let check = |expected: &str| {
            let err = load_candle(dir.path(), Backend::Cpu).err().expect("load fails").to_string();
            assert!(err.contains(expected), "`{err}` lacks `{expected}`");
        };
        std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
        check("model.safetensors");
        std::fs::write(&weights, b"not a safetensors file").unwrap();
        check("model.safetensors");
        std::fs::write(&weights, &bytes).unwrap();
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        check("tokenizer is missing");
        std::fs::write(dir.path().join("tokenizer.json"), "{").unwrap();
        check("tokenizer.json");
        write_test_model(dir.path(), TestArchitecture::Llama, TestModelShape::default(), 3).unwrap();
        let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        std::fs::write(dir.path().join("config.json"), config.replace("\"llama\"", "\"gpt-j\"")).unwrap();
        check("model_type `gpt-j` is not supported");
        std::fs::write(
            dir.path().join("config.json"),
            config.replace("\"hidden_size\": 64", "\"hidden_size\": 128"),
        )
        .unwrap();
        check("shape");
    }
}
