//! Each architecture's `{arch}.*` metadata keys, as llama.cpp's converter writes them from
//! config.json (its `TextModel` keys, and what each model class adds, drops or overrides), and
//! the config fields llama.cpp's graph cannot follow, which stop the conversion by name: the file
//! states everything that changes what the model computes, or is not written.
//!
//! Where the converter writes a value its own tensors contradict (gpt_bigcode's
//! `feed_forward_length` as 4 × `n_embd` whatever `n_inner` is, one KV head whatever
//! `multi_query` says), the writer states what the tensors hold; for every released model of
//! those architectures the two agree. It never reads tensors; `write.rs` does.

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use crate::format::convert::ConvertError;

/// llama.cpp's rope base when a file states none (`rope_freq_base_train`'s default).
const LLAMA_CPP_ROPE_BASE: f64 = 10_000.0;

/// What the keys are computed from: `original` is config.json as written (the converter reads
/// it), `config` the same normalised (`hf_config::normalise`: defaults filled, the context cut
/// to a window the engine would not mask).
pub(super) struct Source<'a> {
    pub(super) model_type: &'a str,
    pub(super) arch: &'a str,
    pub(super) original: &'a Json,
    pub(super) config: &'a Json,
}

impl Source<'_> {
    fn uint(&self, key: &str) -> Option<u32> {
        self.config.get(key).and_then(Json::as_u64).map(|v| v as u32)
    }

    fn float(&self, key: &str) -> Option<f64> {
        self.config.get(key).and_then(Json::as_f64)
    }

    fn need(&self, key: &str) -> Result<u32, ConvertError> {
        self.uint(key).ok_or_else(|| self.refuse(key, "is missing"))
    }

    fn refuse(&self, field: &str, why: &str) -> ConvertError {
        ConvertError::Unsupported(format!("GGUF of a {} whose `{field}` {why}", self.model_type))
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }
}

/// The model's shape under its own config names (GPT-2's for gpt_bigcode).
struct Shape {
    hidden: u32,
    layers: u32,
    heads: u32,
    kv_heads: u32,
    feed_forward: u32,
    context: u32,
}

fn shape(s: &Source) -> Result<Shape, ConvertError> {
    if s.model_type == "gpt_bigcode" {
        let hidden = s.need("n_embd")?;
        let heads = s.need("n_head")?;
        let multi_query = s.config.get("multi_query").and_then(Json::as_bool).unwrap_or(true);
        return Ok(Shape {
            hidden,
            layers: s.need("n_layer")?,
            heads,
            kv_heads: if multi_query { 1 } else { heads },
            feed_forward: s.uint("n_inner").unwrap_or(4 * hidden),
            context: s.need("n_positions")?,
        });
    }
    let heads = s.need("num_attention_heads")?;
    let mut context = s.uint("max_position_embeddings").unwrap_or(2048);
    // llama.cpp's starcoder2, llama (mistral) and qwen2 attend over the whole context; a
    // narrower window, in every layer or some, is the context.
    let slides = match s.model_type {
        "starcoder2" | "mistral" => true,
        "qwen2" => s
            .config
            .get("layer_types")
            .and_then(Json::as_array)
            .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("sliding_attention"))),
        _ => false,
    };
    if slides && let Some(window) = s.uint("sliding_window") {
        context = context.min(window);
    }
    Ok(Shape {
        hidden: s.need("hidden_size")?,
        layers: s.need("num_hidden_layers")?,
        heads,
        kv_heads: s.uint("num_key_value_heads").unwrap_or(heads),
        feed_forward: s.uint("intermediate_size").unwrap_or(0),
        context,
    })
}

/// The activation llama.cpp's graph of `model_type` runs, and the config field naming the
/// model's. GELU is llama.cpp's tanh approximation, which these spellings name.
fn activation(model_type: &str) -> (&'static str, &'static [&'static str]) {
    match model_type {
        "gpt_bigcode" => ("activation_function", &["gelu_pytorch_tanh", "gelu_new", "gelu_fast"]),
        "starcoder2" => ("hidden_act", &["gelu_pytorch_tanh", "gelu_new", "gelu_fast"]),
        _ => ("hidden_act", &["silu"]),
    }
}

/// The config fields llama.cpp's graph of the architecture cannot follow, refused by name.
fn refuse_what_llama_cpp_cannot_run(s: &Source) -> Result<(), ConvertError> {
    let (field, runs) = activation(s.model_type);
    if let Some(act) = s.config.get(field).and_then(Json::as_str)
        && !runs.contains(&act)
    {
        return Err(
            s.refuse(field, &format!("is `{act}` (llama.cpp's {} runs {} only)", s.arch, runs.join(" or ")))
        );
    }
    let flag = |key: &str| s.config.get(key).and_then(Json::as_bool);
    match s.model_type {
        "qwen3_moe" => {
            if flag("norm_topk_prob") != Some(true) {
                return Err(s.refuse(
                    "norm_topk_prob",
                    "is false (llama.cpp's qwen3moe always renormalises the chosen experts' weights, and no key says otherwise)",
                ));
            }
            if s.uint("decoder_sparse_step").unwrap_or(1) != 1 {
                return Err(s.refuse(
                    "decoder_sparse_step",
                    "is not 1 (llama.cpp's qwen3moe has experts in every layer)",
                ));
            }
        }
        "gpt_bigcode" if flag("scale_attn_weights") == Some(false) => {
            return Err(s.refuse(
                "scale_attn_weights",
                "is false (llama.cpp's starcoder scales attention by 1/√head_dim)",
            ));
        }
        "olmo2" if s.config.get("clip_qkv").is_some_and(|v| !v.is_null()) => {
            return Err(s.refuse("clip_qkv", "is set (llama.cpp's olmo2 does not clip q, k and v)"));
        }
        _ => {}
    }
    Ok(())
}

/// The `{arch}.*` keys of the model.
pub(super) fn architecture_keys(s: &Source) -> Result<Vec<(String, Value)>, ConvertError> {
    refuse_what_llama_cpp_cannot_run(s)?;
    let shape = shape(s)?;
    let mut md = vec![
        (s.key("context_length"), Value::U32(shape.context)),
        (s.key("embedding_length"), Value::U32(shape.hidden)),
        (s.key("block_count"), Value::U32(shape.layers)),
        (s.key("feed_forward_length"), Value::U32(shape.feed_forward)),
        (s.key("attention.head_count"), Value::U32(shape.heads)),
        (s.key("attention.head_count_kv"), Value::U32(shape.kv_heads)),
    ];
    let head_dim = shape.hidden / shape.heads.max(1);
    let rope_theta = s.float("rope_theta");
    match s.model_type {
        // Layer norms, and no rope: learned positions.
        "gpt_bigcode" => {
            let eps = s.float("layer_norm_epsilon").unwrap_or(1e-5);
            md.push((s.key("attention.layer_norm_epsilon"), Value::F32(eps as f32)));
        }
        // StableLMModel writes its own keys: the rotating share of each head, the residual,
        // layer norms, and no rope base (llama.cpp's default then applies, so the base is
        // stated only where it is another).
        "stablelm" => {
            let factor = s.float("partial_rotary_factor").unwrap_or(1.0);
            md.push((s.key("rope.dimension_count"), Value::U32((factor * f64::from(head_dim)) as u32)));
            let parallel = s.config.get("use_parallel_residual").and_then(Json::as_bool).unwrap_or(false);
            md.push((s.key("use_parallel_residual"), Value::Bool(parallel)));
            let eps = s.float("layer_norm_eps").unwrap_or(1e-5);
            md.push((s.key("attention.layer_norm_epsilon"), Value::F32(eps as f32)));
            if let Some(theta) = rope_theta.filter(|t| *t != LLAMA_CPP_ROPE_BASE) {
                md.push((s.key("rope.freq_base"), Value::F32(theta as f32)));
            }
        }
        _ => {
            let theta = rope_theta.ok_or_else(|| s.refuse("rope_theta", "is missing after normalising"))?;
            md.push((s.key("rope.freq_base"), Value::F32(theta as f32)));
            if s.model_type == "starcoder2" {
                let eps = s.float("norm_epsilon").unwrap_or(1e-5);
                md.push((s.key("attention.layer_norm_epsilon"), Value::F32(eps as f32)));
            } else {
                let eps = s.float("rms_norm_eps").unwrap_or(1e-6);
                md.push((s.key("attention.layer_norm_rms_epsilon"), Value::F32(eps as f32)));
            }
            // The converter states key and value widths only where config.json states
            // `head_dim` (normalising may fill one in); GraniteModel drops it.
            if let Some(d) = s.original.get("head_dim").and_then(Json::as_u64).filter(|_| s.arch != "granite")
            {
                md.push((s.key("attention.key_length"), Value::U32(d as u32)));
                md.push((s.key("attention.value_length"), Value::U32(d as u32)));
            }
        }
    }
    // LlamaModel (and GraniteModel, one) adds the vocabulary size and the rotary width;
    // qwen2's rotary width is the project's own, llama.cpp's default for it.
    if matches!(s.arch, "llama" | "granite" | "qwen2") {
        let rotary = match s.arch {
            "granite" => head_dim,
            _ => s.uint("head_dim").unwrap_or(head_dim),
        };
        md.push((s.key("rope.dimension_count"), Value::U32(rotary)));
    }
    if matches!(s.arch, "llama" | "granite")
        && let Some(v) = s.uint("vocab_size")
    {
        md.push((s.key("vocab_size"), Value::U32(v)));
    }
    if s.model_type == "qwen3_moe" {
        md.push((s.key("expert_count"), Value::U32(s.need("num_experts")?)));
        md.push((s.key("expert_used_count"), Value::U32(s.need("num_experts_per_tok")?)));
        md.push((s.key("expert_feed_forward_length"), Value::U32(s.need("moe_intermediate_size")?)));
    }
    // GraniteModel's four multipliers, under llama.cpp's names (normalising filled in
    // transformers' default, 1, for any the config leaves out).
    if s.model_type == "granite" {
        for (field, key) in [
            ("attention_multiplier", "attention.scale"),
            ("embedding_multiplier", "embedding_scale"),
            ("residual_multiplier", "residual_scale"),
            ("logits_scaling", "logit_scale"),
        ] {
            let v = s.float(field).unwrap_or(1.0);
            md.push((s.key(key), Value::F32(v as f32)));
        }
    }
    Ok(md)
}
