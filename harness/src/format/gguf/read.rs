//! GGUF → Hugging Face: the tokenizer and files a GGUF file carries or implies, its tensors as
//! stored (for APR and safetensors), and its tensors dequantized to f32.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::{
    GgufTokenizerError, HF_CONFIG, HF_GENERATION_CONFIG, HF_TOKENIZER_CONFIG, HF_TOKENIZER_JSON, err,
    hf_name, permute_qk,
};
use crate::format::apr::{AprDType, AprFile, AprTensor};
use crate::format::convert::{ConvertError, HfFiles};

/// The tokenizer a GGUF file carries: the whole `tokenizer.json` where it is embedded, else a
/// byte-level BPE built from `tokenizer.ggml.tokens` and `merges` (llama.cpp's `gpt2` model),
/// split as its `tokenizer.ggml.pre` names (the splits of `pre.rs`, the table the writer names
/// by; no name is llama.cpp's `default` split, an unknown one an error), with its control tokens
/// (as llama.cpp reads them: [`control_tokens`]) as special tokens, and BOS/EOS added as
/// `tokenizer.ggml.add_bos_token`/`add_eos_token` say (llama.cpp's default where a key is absent:
/// no BOS for `gpt2`).
pub fn tokenizer(md: &HashMap<String, Value>) -> Result<tokenizers::Tokenizer, GgufTokenizerError> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    if let Some(json) = md.get(HF_TOKENIZER_JSON).and_then(|v| v.to_string().ok()) {
        return crate::format::tokenizer_json::parse(json.as_bytes()).map_err(GgufTokenizerError::Embedded);
    }
    let kind = md.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if kind == "llama" {
        return sentencepiece(md);
    }
    if kind != "gpt2" {
        return Err(GgufTokenizerError::UnsupportedModel(kind));
    }
    // No name is llama.cpp's `default` split (with its warning that quality will suffer).
    let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned();
    let pre = pre.as_deref().unwrap_or("default");
    let splits =
        super::pre::splits_of(pre).ok_or_else(|| GgufTokenizerError::UnsupportedPre(pre.to_string()))?;
    let strings = |key: &str| string_list(md, key);
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
    {
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        let mut steps: Vec<tokenizers::pre_tokenizers::PreTokenizerWrapper> = Vec::new();
        for regex in splits {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                tokenizers::SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(GgufTokenizerError::Vocabulary)?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, true, false).into());
        tokenizer.with_pre_tokenizer(Some(Sequence::new(steps)));
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let types: Vec<i32> = md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    tokenizer
        .add_special_tokens(control_tokens(&tokens, &types))
        .map_err(GgufTokenizerError::ControlTokens)?;
    with_bos_eos(&mut tokenizer, md, &tokens, false)?;
    Ok(tokenizer)
}

/// The strings of a string-list key.
fn string_list(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, GgufTokenizerError> {
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
}

/// llama.cpp's `llama` tokenizer model (SentencePiece BPE: Llama 2, CodeLlama, Mistral v0.1, …)
/// as transformers' `LlamaTokenizerFast` builds it from a `tokenizer.model`: pieces with `▁` for
/// spaces and a space prefixed (`tokenizer.ggml.add_space_prefix`, default true), merges ranked
/// by the merged piece's score (llama.cpp merges the best-scoring pair first), byte fallback to
/// the `<0xXX>` pieces, control pieces as special tokens, BOS added unless
/// `tokenizer.ggml.add_bos_token` says otherwise (llama.cpp's default for the model).
fn sentencepiece(md: &HashMap<String, Value>) -> Result<tokenizers::Tokenizer, GgufTokenizerError> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::models::bpe::BPE;
    use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
    let tokens = string_list(md, "tokenizer.ggml.tokens")?;
    let scores: Vec<f32> = md
        .get("tokenizer.ggml.scores")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|s| s.to_f32().unwrap_or(0.0)).collect())
        .unwrap_or_else(|| (0..tokens.len()).map(|i| -(i as f32)).collect());
    let types: Vec<i32> = md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    // Every split of a normal piece into two pieces of the vocabulary is a merge, ranked by the
    // merged piece's score (ties by id), as transformers' SentencePiece extractor ranks them.
    let mut ranked: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types.get(id).is_some_and(|&t| t != 1) {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(at);
            if vocab.contains_key(a) && vocab.contains_key(b) {
                ranked.push((
                    scores.get(id).copied().unwrap_or(0.0),
                    id as u32,
                    a.to_string(),
                    b.to_string(),
                ));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges = ranked.into_iter().map(|(_, _, a, b)| (a, b)).collect();
    let mut builder =
        BPE::builder().vocab_and_merges(vocab.clone(), merges).byte_fallback(true).fuse_unk(true);
    let unk = md.get("tokenizer.ggml.unknown_token_id").and_then(|v| v.to_u32().ok());
    if let Some(unk) = unk.and_then(|i| tokens.get(i as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(GgufTokenizerError::Vocabulary)?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let space_prefix =
        md.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(true);
    let replace = Replace::new(" ", "\u{2581}").map_err(GgufTokenizerError::Vocabulary)?;
    let normalizer = if space_prefix {
        NormalizerSequence::new(vec![Prepend::new("\u{2581}".into()).into(), replace.into()])
    } else {
        NormalizerSequence::new(vec![replace.into()])
    };
    tokenizer.with_normalizer(Some(normalizer)).map_err(GgufTokenizerError::Vocabulary)?;
    let space = Replace::new("\u{2581}", " ").map_err(GgufTokenizerError::Vocabulary)?;
    let mut decoders = vec![space.into(), ByteFallback::new().into(), Fuse::new().into()];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    tokenizer
        .add_special_tokens(control_tokens(&tokens, &types))
        .map_err(GgufTokenizerError::ControlTokens)?;
    with_bos_eos(&mut tokenizer, md, &tokens, true)?;
    Ok(tokenizer)
}

/// Token texts llama.cpp makes control tokens whatever their `tokenizer.ggml.token_type` says
/// (llama-vocab.cpp, "control-looking token ... its type will be overridden", as of
/// llama-cpp-python 0.3.36): its end-of-generation spellings, and its end-of-turn, end-of-message
/// and fill-in-the-middle spellings (of those llama.cpp overrides the first of each kind it
/// meets; a vocabulary holds one spelling of a kind, so all are listed).
const CONTROL_LOOKING: &[&str] = &[
    // end of generation
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
    // fill in the middle: prefix, suffix, middle, pad, repository, file separator
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
    "<MID>",
    "\u{2581}<MID>",
    "<|code_middle|>",
    "<|middle|>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// The control tokens of a vocabulary as llama.cpp reads them, as special tokens (matched whole
/// in a prompt, read as text by the engine's `literal` ranges): those typed control (3), and
/// those llama.cpp types control by their text ([`CONTROL_LOOKING`]).
fn control_tokens(tokens: &[String], types: &[i32]) -> Vec<tokenizers::AddedToken> {
    tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| types.get(*i) == Some(&3) || CONTROL_LOOKING.contains(&t.as_str()))
        .map(|(_, t)| tokenizers::AddedToken::from(t.clone(), true))
        .collect()
}

/// BOS and EOS added around every encoding as the metadata says (`tokenizer.ggml.add_bos_token`,
/// `add_eos_token`); where a key is absent, `default_bos` (llama.cpp's default for the model).
fn with_bos_eos(
    tokenizer: &mut tokenizers::Tokenizer,
    md: &HashMap<String, Value>,
    tokens: &[String],
    default_bos: bool,
) -> Result<(), GgufTokenizerError> {
    use tokenizers::processors::template::TemplateProcessing;
    let flag = |key: &str| md.get(key).and_then(|v| v.to_bool().ok());
    let special = |key: &str| -> Result<Option<(String, u32)>, GgufTokenizerError> {
        let Some(id) = md.get(key).and_then(|v| v.to_u32().ok()) else { return Ok(None) };
        let text = tokens
            .get(id as usize)
            .ok_or_else(|| GgufTokenizerError::MissingKey(format!("{key} {id} in the vocabulary")))?;
        Ok(Some((text.clone(), id)))
    };
    let bos = if flag("tokenizer.ggml.add_bos_token").unwrap_or(default_bos) {
        Some(special("tokenizer.ggml.bos_token_id")?.ok_or_else(|| {
            GgufTokenizerError::MissingKey("tokenizer.ggml.bos_token_id (add_bos_token is set)".into())
        })?)
    } else {
        None
    };
    let eos = if flag("tokenizer.ggml.add_eos_token").unwrap_or(false) {
        Some(special("tokenizer.ggml.eos_token_id")?.ok_or_else(|| {
            GgufTokenizerError::MissingKey("tokenizer.ggml.eos_token_id (add_eos_token is set)".into())
        })?)
    } else {
        None
    };
    if bos.is_none() && eos.is_none() {
        return Ok(());
    }
    let (mut single, mut pair) = (Vec::new(), Vec::new());
    let specials: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
    if let Some((b, _)) = &bos {
        single.push(b.clone());
        pair.push(b.clone());
    }
    single.push("$A".to_string());
    pair.push("$A".to_string());
    if let Some((e, _)) = &eos {
        single.push(e.clone());
        pair.push(e.clone());
    }
    if let Some((b, _)) = &bos {
        pair.push(format!("{b}:1"));
    }
    pair.push("$B:1".to_string());
    if let Some((e, _)) = &eos {
        pair.push(format!("{e}:1"));
    }
    let processor = TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| GgufTokenizerError::Template(e.to_string()))?
        .special_tokens(specials)
        .build()
        .map_err(|e| GgufTokenizerError::Template(e.to_string()))?;
    tokenizer.with_post_processor(Some(processor));
    Ok(())
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
        None => {
            let mut config = serde_json::json!({
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
            });
            // Rope scaling stated in keys, as llama.cpp runs them (`rope.rs`; refused otherwise),
            // and an explicit head width.
            if let Some(scaling) = super::rope::scaling(md, &arch, int("context_length")) {
                config["rope_scaling"] = scaling;
            }
            if let Some(width) = int("attention.key_length") {
                config["head_dim"] = width.into();
            }
            config
        }
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
    let (mut file, content, _) = super::open(path).map_err(|e| err(path, e.cause()))?;
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
    Ok(crate::format::convert::apr_file(hf, tensors, "gguf"))
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
    /// [`ROPE_FACTORS`]' values, where the file has the tensor.
    pub rope_factors: Option<Vec<f32>>,
    /// phi3's LongRoPE factors, `[long, short]` ([`super::ROPE_FACTORS_LONG`], `_SHORT`).
    pub longrope: Option<[Vec<f32>; 2]>,
}

/// The tensor in which llama.cpp's converter keeps llama3's rope scaling (a llama's only): one
/// factor per rotating pair, each pair's frequency divided by its factor. It has no Hugging
/// Face name: it is read apart from the weights.
pub const ROPE_FACTORS: &str = "rope_freqs.weight";

/// The Hugging Face config.json of a GGUF file whose architecture the engine runs dequantized
/// ([`super::dequantized_model_type`]), from its KV keys: `None` for another architecture.
pub fn dequantized_config(
    md: &HashMap<String, Value>,
    has_output: bool,
    has_bias: bool,
    vocab: usize,
) -> Option<serde_json::Value> {
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok())?;
    let model_type = match arch.as_str() {
        "llama" => "llama",
        "qwen2" => "qwen2",
        other => super::dequantized_model_type(other)?,
    };
    let layouts = super::layouts::LAYOUTS.contains(&arch.as_str());
    let int = |key: &str| md.get(&format!("{arch}.{key}")).and_then(|v| v.to_u32().ok());
    let float = |key: &str| md.get(&format!("{arch}.{key}")).and_then(|v| v.to_f32().ok()).map(f64::from);
    let id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let layers = int("block_count");
    let eps = float("attention.layer_norm_rms_epsilon").or(float("attention.layer_norm_epsilon"));
    let mut config = serde_json::json!({
        "model_type": model_type,
        "hidden_size": int("embedding_length"),
        "intermediate_size": int("feed_forward_length"),
        "num_hidden_layers": layers,
        "num_attention_heads": int("attention.head_count"),
        "num_key_value_heads": int("attention.head_count_kv").or(int("attention.head_count")),
        "head_dim": int("attention.key_length"),
        "rms_norm_eps": eps,
        "rope_theta": float("rope.freq_base").unwrap_or(10000.0),
        "max_position_embeddings": int("context_length"),
        "hidden_act": "silu",
        "attention_bias": has_bias,
        "sliding_window": serde_json::Value::Null,
        "use_sliding_window": false,
        "max_window_layers": layers,
        "vocab_size": vocab,
        "tie_word_embeddings": !has_output,
        "bos_token_id": id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": id("tokenizer.ggml.eos_token_id"),
    });
    // Rope scaling stated in keys, as llama.cpp runs it (`rope.rs`; phi3's LongRoPE is its
    // tensors, which the loader adds).
    if let Some(scaling) = super::rope::scaling(md, arch, int("context_length")) {
        config["rope_scaling"] = scaling;
    }
    if layouts {
        return super::layouts::config(md, arch, config);
    }
    if model_type == "stablelm" {
        // Layer norms, a partial rotary embedding over `rope.dimension_count` of each head.
        let heads = int("attention.head_count").unwrap_or(1).max(1);
        let head_dim = int("embedding_length").unwrap_or(0) / heads;
        let rotary = int("rope.dimension_count").unwrap_or(head_dim);
        config["layer_norm_eps"] = serde_json::json!(eps);
        config["partial_rotary_factor"] = serde_json::json!(f64::from(rotary) / f64::from(head_dim.max(1)));
        config["use_parallel_residual"] = serde_json::json!(
            md.get(&format!("{arch}.use_parallel_residual")).and_then(|v| v.to_bool().ok()).unwrap_or(false)
        );
        config["use_qkv_bias"] = serde_json::json!(has_bias);
        config["qk_layernorm"] = serde_json::json!(false);
        config["head_dim"] = serde_json::Value::Null;
        // stablelm's biases are `use_qkv_bias`'s; it has no `attention_bias`.
        config["attention_bias"] = serde_json::Value::Null;
    }
    if model_type == "starcoder2" {
        // Layer norms with biases, GPT-2's MLP with tanh GELU, biases everywhere.
        config["norm_epsilon"] = serde_json::json!(eps);
        config["hidden_act"] = serde_json::json!("gelu_pytorch_tanh");
        config["use_bias"] = serde_json::json!(has_bias);
        config["head_dim"] = serde_json::Value::Null;
        config["attention_bias"] = serde_json::Value::Null;
    }
    if model_type == "gpt_bigcode" {
        // GPT-2's names; one KV head is multi-query.
        return Some(serde_json::json!({
            "model_type": model_type,
            "n_embd": int("embedding_length"),
            "n_layer": layers,
            "n_head": int("attention.head_count"),
            "n_inner": int("feed_forward_length"),
            "n_positions": int("context_length"),
            "multi_query": int("attention.head_count_kv") == Some(1),
            "layer_norm_epsilon": eps,
            "activation_function": "gelu_pytorch_tanh",
            "vocab_size": vocab,
            "tie_word_embeddings": !has_output,
            "bos_token_id": id("tokenizer.ggml.bos_token_id"),
            "eos_token_id": id("tokenizer.ggml.eos_token_id"),
        }));
    }
    if model_type == "qwen3_moe" {
        // llama.cpp's qwen3moe always renormalises the chosen experts' weights (its graph passes
        // `norm_w = true`) and the file has no key saying otherwise: the file is run as
        // llama.cpp runs it, whatever the source config's `norm_topk_prob` was.
        config["num_experts"] = serde_json::json!(int("expert_count"));
        config["num_experts_per_tok"] = serde_json::json!(int("expert_used_count"));
        config["moe_intermediate_size"] = serde_json::json!(int("expert_feed_forward_length"));
        config["norm_topk_prob"] = serde_json::json!(true);
        config["decoder_sparse_step"] = serde_json::json!(1);
        config["mlp_only_layers"] = serde_json::json!([]);
    }
    if model_type == "granite" {
        // llama.cpp's names for granite's four multipliers; absent, transformers' default 1.
        for (hf, key) in [
            ("embedding_multiplier", "embedding_scale"),
            ("residual_multiplier", "residual_scale"),
            ("attention_multiplier", "attention.scale"),
            ("logits_scaling", "logit_scale"),
        ] {
            config[hf] = serde_json::json!(float(key).unwrap_or(1.0));
        }
        config["mlp_bias"] = serde_json::json!(false);
    }
    Some(config)
}

/// The Hugging Face name of a tensor of a GGUF file of `arch` (not stacked experts, not
/// deepseek2's `kv_b` halves).
fn hf_name_in(arch: &str, name: &str) -> Option<String> {
    let hf = match arch {
        "starcoder" => super::gpt_bigcode_name(name)?,
        _ if super::layouts::LAYOUTS.contains(&arch) => super::layouts::hf_name(arch, name)?,
        _ => hf_name(name)?,
    };
    // starcoder2's MLP keeps GPT-2's names.
    Some(match arch {
        "starcoder2" => hf.replace(".mlp.up_proj.", ".mlp.c_fc.").replace(".mlp.down_proj.", ".mlp.c_proj."),
        _ => hf,
    })
}

/// G0's tensor check of a file the engine runs in its float model (a `dequantized_model_type`):
/// the shapes its tensors take under their Hugging Face names (stacked experts one each,
/// deepseek2's `kv_b` halves joined) against the config its KV keys rebuild, every missing
/// tensor and wrong shape, as the engine finds them when it loads the file; a tensor with no
/// Hugging Face name too. Empty for another architecture.
pub(crate) fn dequantized_shape_problems(path: &Path, content: &gguf_file::Content) -> Vec<String> {
    let md = &content.metadata;
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if super::dequantized_model_type(&arch).is_none() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut halves: BTreeMap<usize, [Option<Vec<usize>>; 2]> = BTreeMap::new();
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims().to_vec();
        // The rope's factors, checked with the keys (`check.rs`), are no weight.
        if [ROPE_FACTORS, super::ROPE_FACTORS_LONG, super::ROPE_FACTORS_SHORT].contains(&name.as_str()) {
            continue;
        }
        if let Some((layer, keys)) = super::layouts::kv_b_half(&arch, name) {
            halves.entry(layer).or_default()[usize::from(!keys)] = Some(dims);
        } else if let Some((layer, projection)) = stacked_experts(name) {
            for e in 0..dims.first().copied().unwrap_or(0) {
                shapes.insert(
                    format!("model.layers.{layer}.mlp.experts.{e}.{projection}.weight"),
                    dims[1..].to_vec(),
                );
            }
        } else if let Some(hf) = hf_name_in(&arch, name) {
            shapes.insert(hf, dims);
        } else {
            problems.push(format!("tensor `{name}` has no Hugging Face name"));
        }
    }
    for (layer, halves) in halves {
        match halves {
            [Some(k), Some(v)] if k.len() == 3 && v.len() == 3 => {
                shapes.insert(
                    format!("model.layers.{layer}.self_attn.kv_b_proj.weight"),
                    vec![k[0] * (k[2] + v[1]), k[1]],
                );
            }
            _ => {
                problems.push(format!("layer {layer}'s attn_k_b and attn_v_b are not a pair of 3-D tensors"))
            }
        }
    }
    let rows = content.tensor_infos.get("token_embd.weight").and_then(|t| t.shape.dims().first().copied());
    let has_output = shapes.contains_key("lm_head.weight");
    let has_bias = shapes.keys().any(|n| n.ends_with("q_proj.bias") || n.ends_with("query_key_value.bias"));
    let Some(config) = dequantized_config(md, has_output, has_bias, rows.unwrap_or(0)) else {
        problems.push(format!("the KV keys of `{arch}` do not make a config"));
        return problems;
    };
    match crate::format::hparams::Hyperparameters::from_config(path, &config) {
        Ok(hyper) => problems.extend(hyper.shape_problems(&shapes)),
        Err(e) => problems.push(e.to_string()),
    }
    problems
}

/// The layer and Hugging Face projection of a stacked experts tensor (`blk.N.ffn_gate_exps.weight`).
fn stacked_experts(name: &str) -> Option<(usize, &'static str)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let projection = match rest {
        "ffn_gate_exps.weight" => "gate_proj",
        "ffn_up_exps.weight" => "up_proj",
        "ffn_down_exps.weight" => "down_proj",
        _ => return None,
    };
    Some((layer.parse().ok()?, projection))
}

/// Reads and dequantizes a GGUF file.
pub fn dequantize(path: &Path) -> Result<Dequantized, ConvertError> {
    let read = read_tensors(path, false)?;
    Ok(Dequantized {
        tensors: read.tensors,
        metadata: read.metadata,
        rope_factors: read.rope_factors,
        longrope: read.longrope,
    })
}

/// A GGUF file read for the engine's own kernels: its matrices as stored, the rest dequantized.
pub struct Stored {
    /// The 2-D tensors under their Hugging Face names, as stored in the file, each with the
    /// head count whose q/k row order llama.cpp permuted (to be undone on the rows), if any.
    pub matrices: BTreeMap<String, (StoredMatrix, Option<usize>)>,
    /// The other tensors (norms, biases, stacked experts), dequantized.
    pub tensors: BTreeMap<String, (Tensor, GgmlDType)>,
    pub metadata: HashMap<String, Value>,
    /// The file, memory-mapped: the [`StoredMatrix::Mapped`] bytes are its.
    pub mapped: Arc<memmap2::Mmap>,
    /// [`ROPE_FACTORS`]' values, where the file has the tensor.
    pub rope_factors: Option<Vec<f32>>,
    /// phi3's LongRoPE factors, `[long, short]`.
    pub longrope: Option<[Vec<f32>; 2]>,
}

/// A matrix of a GGUF file as stored.
pub enum StoredMatrix {
    /// Its bytes where the mapped file ([`Stored::mapped`]) holds them, to be read in place.
    Mapped { dtype: GgmlDType, rows: usize, cols: usize, bytes: std::ops::Range<usize> },
    /// Read out of the file: a type the kernels do not keep as stored.
    Read(QTensor),
}

impl StoredMatrix {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            StoredMatrix::Mapped { rows, cols, .. } => vec![*rows, *cols],
            StoredMatrix::Read(q) => q.shape().dims().to_vec(),
        }
    }
}

/// Reads a GGUF file, keeping its matrices as stored: mapped, to be read in place.
pub fn read_stored(path: &Path) -> Result<Stored, ConvertError> {
    let read = read_tensors(path, true)?;
    let mapped = read.mapped.ok_or_else(|| err(path, "the file was not mapped"))?;
    Ok(Stored {
        matrices: read.matrices,
        tensors: read.tensors,
        metadata: read.metadata,
        mapped,
        rope_factors: read.rope_factors,
        longrope: read.longrope,
    })
}

/// What [`read_tensors`] read.
struct ReadTensors {
    tensors: BTreeMap<String, (Tensor, GgmlDType)>,
    matrices: BTreeMap<String, (StoredMatrix, Option<usize>)>,
    metadata: HashMap<String, Value>,
    mapped: Option<Arc<memmap2::Mmap>>,
    rope_factors: Option<Vec<f32>>,
    longrope: Option<[Vec<f32>; 2]>,
}

/// The dequantized tensors by Hugging Face name; with `keep_matrices`, the 2-D ones (experts
/// aside) kept as stored instead, apart: those the kernels keep as stored left in the file,
/// which is mapped (and returned), the others read out. [`ROPE_FACTORS`] is read apart.
fn read_tensors(path: &Path, keep_matrices: bool) -> Result<ReadTensors, ConvertError> {
    let (mut file, content, _) = super::open(path).map_err(|e| err(path, e.cause()))?;
    let mapped = match keep_matrices {
        // SAFETY: the harness never writes a model file while it reads it (conversions are
        // written under another name and renamed into place), so the mapping stays unchanged.
        true => Some(Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(path, e))?)),
        false => None,
    };
    let arch = content.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned();
    let arch = arch.ok_or_else(|| err(path, "no general.architecture"))?;
    let permuted = super::permutes_qk(&arch);
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
    let mut matrices = BTreeMap::new();
    // deepseek2's halves of each layer's kv_b_proj, joined once both are read.
    let mut kv_b: BTreeMap<usize, [Option<(Tensor, GgmlDType)>; 2]> = BTreeMap::new();
    // The rope's factor tensors (llama3's; phi3's LongRoPE, long then short), read apart.
    let mut rope: [Option<Vec<f32>>; 3] = [None, None, None];
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        if let Some(i) =
            [ROPE_FACTORS, super::ROPE_FACTORS_LONG, super::ROPE_FACTORS_SHORT].iter().position(|n| n == name)
        {
            let t = content
                .tensor(&mut file, name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
            rope[i] = Some(t);
            continue;
        }
        if let Some((layer, keys)) = super::layouts::kv_b_half(&arch, name) {
            let q = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
            let dtype = q.dtype();
            let t = q.dequantize(&Device::Cpu).map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
            kv_b.entry(layer).or_default()[usize::from(!keys)] = Some((t, dtype));
            continue;
        }
        if let Some((layer, projection)) = stacked_experts(name) {
            // llama.cpp stacks a layer's experts into one tensor; the float model has one each.
            let q = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
            let dtype = q.dtype();
            let t = q.dequantize(&Device::Cpu).map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
            let experts = t.dims().first().copied().unwrap_or(0);
            for e in 0..experts {
                let one = t.get(e).map_err(|x| err(path, format!("tensor `{name}` expert {e}: {x}")))?;
                tensors.insert(
                    format!("model.layers.{layer}.mlp.experts.{e}.{projection}.weight"),
                    (one, dtype),
                );
            }
            continue;
        }
        let hf = hf_name_in(&arch, name)
            .ok_or_else(|| err(path, format!("tensor `{name}` has no Hugging Face name")))?;
        let unpermute = match () {
            _ if !permuted => None,
            _ if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") => Some(heads),
            _ if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") => Some(kv_heads),
            _ => None,
        };
        if let (Some(mapped), Some(info)) = (&mapped, content.tensor_infos.get(name))
            && let [rows, cols] = *info.shape.dims()
            && modelqa_kernels::Matrix::keeps(info.ggml_dtype)
        {
            let dtype = info.ggml_dtype;
            let size = (rows * cols).checked_div(dtype.block_size()).unwrap_or(0) * dtype.type_size();
            let start =
                usize::try_from(content.tensor_data_offset.saturating_add(info.offset)).unwrap_or(usize::MAX);
            if !(rows * cols).is_multiple_of(dtype.block_size()) || start.saturating_add(size) > mapped.len()
            {
                return Err(err(
                    path,
                    format!("tensor `{name}` ({rows} × {cols} {dtype:?}) does not lie within the file"),
                ));
            }
            matrices.insert(
                hf,
                (StoredMatrix::Mapped { dtype, rows, cols, bytes: start..start + size }, unpermute),
            );
            continue;
        }
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        if keep_matrices && q.shape().rank() == 2 {
            matrices.insert(hf, (StoredMatrix::Read(q), unpermute));
            continue;
        }
        let dtype = q.dtype();
        let mut t = q.dequantize(&Device::Cpu).map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        if let Some(heads) = unpermute {
            t = permute_qk(&t, heads, true).map_err(|e| err(path, e))?;
        }
        if super::layouts::shifted_by_one(&arch, name) {
            t = t.affine(1.0, -1.0).map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        }
        tensors.insert(hf, (t, dtype));
    }
    for (layer, halves) in kv_b {
        let [Some((k_b, dtype)), Some((v_b, _))] = halves else {
            return Err(err(
                path,
                format!("layer {layer} has one of attn_k_b and attn_v_b without the other"),
            ));
        };
        let joined = super::layouts::join_kv_b(&k_b, &v_b)
            .map_err(|e| err(path, format!("tensors `blk.{layer}.attn_k_b.weight` and `attn_v_b`: {e}")))?;
        tensors.insert(format!("model.layers.{layer}.self_attn.kv_b_proj.weight"), (joined, dtype));
    }
    let [rope_factors, long, short] = rope;
    let longrope = match (long, short) {
        (Some(long), Some(short)) => Some([long, short]),
        (None, None) => None,
        _ => {
            return Err(err(
                path,
                format!(
                    "one of `{}` and `{}` without the other",
                    super::ROPE_FACTORS_LONG,
                    super::ROPE_FACTORS_SHORT
                ),
            ));
        }
    };
    Ok(ReadTensors { tensors, matrices, metadata: content.metadata, mapped, rope_factors, longrope })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SentencePiece vocabulary as llama.cpp writes it: control pieces, the 256 byte pieces,
    /// then normal pieces whose merges reach "▁hello" and "▁world".
    fn sentencepiece_metadata(add_bos: Option<bool>) -> HashMap<String, Value> {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        for piece in [
            "\u{2581}",
            "h",
            "e",
            "l",
            "o",
            "w",
            "r",
            "d",
            "he",
            "ll",
            "llo",
            "\u{2581}he",
            "\u{2581}hello",
            "or",
            "ld",
            "\u{2581}w",
            "\u{2581}wor",
            "\u{2581}world",
        ] {
            tokens.push(piece.into());
            types.push(1);
        }
        let n = tokens.len();
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        md.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        );
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array((0..n).map(|i| Value::F32(-(i as f32))).collect()),
        );
        md.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        );
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
        if let Some(add) = add_bos {
            md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(add));
        }
        md
    }

    #[test]
    fn a_sentencepiece_gguf_tokenizer_merges_falls_back_to_bytes_and_honours_add_bos_token() {
        let tokenizer = tokenizer(&sentencepiece_metadata(None)).expect("builds");
        let id = |piece: &str| tokenizer.token_to_id(piece).expect(piece);
        let ids = tokenizer.encode("hello world", true).expect("encodes").get_ids().to_vec();
        // llama.cpp's default for the SentencePiece model: BOS first.
        assert_eq!(ids, [1, id("\u{2581}hello"), id("\u{2581}world")]);
        assert_eq!(tokenizer.decode(&ids, true).expect("decodes"), "hello world");
        // A character outside the vocabulary falls back to its bytes.
        let ids = tokenizer.encode("hi", true).expect("encodes").get_ids().to_vec();
        assert_eq!(ids, [1, id("\u{2581}"), id("h"), id("<0x69>")]);
        assert_eq!(tokenizer.decode(&ids, true).expect("decodes"), "hi");

        let without = tokenizer_without_bos();
        let ids = without.encode("hello world", true).expect("encodes").get_ids().to_vec();
        assert_eq!(ids, [id("\u{2581}hello"), id("\u{2581}world")], "add_bos_token false");
        // The control pieces are special tokens, read as such in text.
        let ids = tokenizer.encode("</s>", true).expect("encodes").get_ids().to_vec();
        assert_eq!(ids.last(), Some(&2));
    }

    /// A piece llama.cpp types control by its text is a special token though typed normal, and
    /// only such a piece: `<end_of_turn>` typed normal is matched whole, `<start_of_turn>` is not.
    #[test]
    fn a_control_looking_piece_typed_normal_is_a_control_token_as_in_llama_cpp() {
        let mut md = sentencepiece_metadata(Some(false));
        for piece in ["<end_of_turn>", "<start_of_turn>"] {
            let Some(Value::Array(tokens)) = md.get_mut("tokenizer.ggml.tokens") else { panic!() };
            tokens.push(Value::String(piece.into()));
            let Some(Value::Array(types)) = md.get_mut("tokenizer.ggml.token_type") else { panic!() };
            types.push(Value::I32(1));
            let Some(Value::Array(scores)) = md.get_mut("tokenizer.ggml.scores") else { panic!() };
            scores.push(Value::F32(-1000.0));
        }
        let tokenizer = tokenizer(&md).expect("builds");
        let end = tokenizer.token_to_id("<end_of_turn>").expect("in the vocabulary");
        let ids = tokenizer.encode("<end_of_turn>", false).expect("encodes").get_ids().to_vec();
        assert_eq!(ids, [end]);
        let ids = tokenizer.encode("<start_of_turn>", false).expect("encodes").get_ids().to_vec();
        assert!(ids.len() > 1, "a piece llama.cpp leaves normal stays text: {ids:?}");
    }

    fn tokenizer_without_bos() -> tokenizers::Tokenizer {
        tokenizer(&sentencepiece_metadata(Some(false))).expect("builds")
    }
}
