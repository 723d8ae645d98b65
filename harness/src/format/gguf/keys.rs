//! Each architecture's `{arch}.*` metadata keys, as llama.cpp's converter writes them from
//! config.json (its `TextModel` keys, and what each model class adds, drops or overrides), and
//! the config fields llama.cpp's graph cannot follow, which stop the conversion by name: the file
//! states everything that changes what the model computes, or is not written.
//!
//! Where the converter writes a value its own tensors contradict (gpt_bigcode's
//! `feed_forward_length` as 4 × `n_embd` whatever `n_inner` is, one KV head whatever
//! `multi_query` says; falcon's as 4 × `hidden_size` whatever `ffn_hidden_size` is), the writer
//! states what the tensors hold; for every released model of those architectures the two agree.
//! Where the converter leaves out a value llama.cpp then assumes (the rope base of falcon, gemma
//! and gemma2), the writer states it only where it is another. It reads no file; `write.rs` and
//! `vocab.rs` do.

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
        // transformers' falcon runs exact GELU, llama.cpp's the tanh approximation: within the
        // tolerance of every comparison, and the converter writes falcon so.
        "falcon" => ("activation", &["gelu"]),
        // Normalising moved gemma's activation to `hidden_activation` (a bare `gelu` is the tanh
        // approximation for gemma).
        "gemma" | "gemma2" | "gemma3_text" => ("hidden_activation", &["gelu_pytorch_tanh"]),
        _ => ("hidden_act", &["silu"]),
    }
}

/// The config fields llama.cpp's graph of the architecture cannot follow, refused by name.
fn refuse_what_llama_cpp_cannot_run(s: &Source) -> Result<(), ConvertError> {
    let (field, runs) = activation(s.model_type);
    // Normalising moved gemma's activation; the refusal names the field config.json states.
    let named = if field == "hidden_activation" && s.original.get(field).is_none_or(Json::is_null) {
        "hidden_act"
    } else {
        field
    };
    if let Some(act) = s.config.get(field).and_then(Json::as_str)
        && !runs.contains(&act)
    {
        let field = named;
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
        "falcon" => {
            // llama.cpp's falcon is Falcon-7B's block: multi-query attention, one layer norm
            // before attention and MLP in parallel, no biases (normalising refused ALiBi).
            for (field, want, why) in [
                (
                    "new_decoder_architecture",
                    false,
                    "is true (Falcon-40B's grouped layout and two layer norms; the writer writes multi-query falcon only)",
                ),
                (
                    "multi_query",
                    true,
                    "is false (llama.cpp's falcon reads one KV head here, and the converter writes one)",
                ),
                (
                    "parallel_attn",
                    true,
                    "is false (llama.cpp's falcon runs attention and the MLP in parallel)",
                ),
                ("bias", false, "is true (llama.cpp's falcon has no linear biases)"),
            ] {
                if flag(field) != Some(want) {
                    return Err(s.refuse(field, why));
                }
            }
            if s.uint("num_ln_in_parallel_attn") != Some(1) {
                return Err(s.refuse(
                    "num_ln_in_parallel_attn",
                    "is not 1 (llama.cpp's multi-query falcon has one layer norm per block)",
                ));
            }
        }
        "gemma2" | "gemma3_text" => refuse_gemma_layers(s)?,
        "deepseek_v2" => {
            if let Some(method) =
                s.config.get("topk_method").and_then(Json::as_str).filter(|m| *m != "greedy")
            {
                return Err(s.refuse(
                    "topk_method",
                    &format!("is `{method}` (the converter writes no key for it: llama.cpp's deepseek2 picks experts greedily)"),
                ));
            }
            // The converter writes `expert_weights_norm` for it, which llama.cpp follows.
            if s.original.get("norm_topk_prob").and_then(Json::as_bool) == Some(true) {
                return Err(s.refuse(
                    "norm_topk_prob",
                    "is true (transformers' deepseek_v2 scales the chosen experts' weights and never renormalises them; llama.cpp's deepseek2 would)",
                ));
            }
            if let Some(f) = s.config.get("scoring_func").and_then(Json::as_str).filter(|f| *f != "softmax") {
                return Err(s.refuse("scoring_func", &format!("is `{f}` (deepseek_v2 gates by softmax)")));
            }
        }
        _ => {}
    }
    Ok(())
}

/// gemma2's and gemma3's attention as llama.cpp's graph runs it: queries scaled by
/// 1/√head_dim (1/√(hidden/heads) for the 27B models, 46 and 62 layers), every second (gemma2)
/// or sixth (gemma3) layer global and the others sliding, and for gemma3 no attention cap. The
/// converter states none of these, so a model that parts from them is refused by field.
fn refuse_gemma_layers(s: &Source) -> Result<(), ConvertError> {
    let gemma2 = s.model_type == "gemma2";
    let (heads, layers, hidden) =
        (s.need("num_attention_heads")?, s.need("num_hidden_layers")?, s.need("hidden_size")?);
    let head_dim = s.uint("head_dim").unwrap_or(hidden / heads.max(1));
    let scalar = if layers == if gemma2 { 46 } else { 62 } { hidden / heads.max(1) } else { head_dim };
    if s.float("query_pre_attn_scalar") != Some(f64::from(scalar)) {
        return Err(s.refuse(
            "query_pre_attn_scalar",
            &format!(
                "is not {scalar} (llama.cpp's {} scales queries by 1/√{scalar} and no key says otherwise)",
                s.arch
            ),
        ));
    }
    let period = if gemma2 { 2 } else { 6 };
    let expected = |l: usize| if l % period < period - 1 { "sliding_attention" } else { "full_attention" };
    let parts = |types: &Vec<Json>| {
        types.len() != layers as usize
            || types.iter().enumerate().any(|(l, t)| t.as_str() != Some(expected(l)))
    };
    if s.config.get("layer_types").and_then(Json::as_array).is_some_and(parts) {
        return Err(s.refuse(
            "layer_types",
            &format!("is not every {period}th layer global (llama.cpp's {} pattern, which the converter does not state)", s.arch),
        ));
    }
    if gemma2 {
        for cap in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if s.float(cap).is_none() {
                return Err(s.refuse(cap, "is not set (llama.cpp's gemma2 caps by its default then)"));
            }
        }
        if s.original.get("sliding_window").and_then(Json::as_u64).is_none() {
            return Err(s.refuse("sliding_window", "is not set (llama.cpp's gemma2 slides by 4096 then)"));
        }
    } else if s.original.get("attn_logit_softcapping").is_some_and(|v| !v.is_null()) {
        return Err(s.refuse("attn_logit_softcapping", "is set (the converter refuses it for gemma3)"));
    }
    Ok(())
}

/// The keys of the architectures whose converter classes write their own (deepseek2, phi3,
/// falcon and the gemmas), `None` for the others.
fn own_keys(s: &Source, shape: &Shape) -> Result<Option<Vec<(String, Value)>>, ConvertError> {
    let u = |k: &str, v: u32| (s.key(k), Value::U32(v));
    let f = |k: &str, v: f64| (s.key(k), Value::F32(v as f32));
    let original_uint = |k: &str| s.original.get(k).and_then(Json::as_u64).map(|v| v as u32);
    let eps = s.float("rms_norm_eps").unwrap_or(1e-6);
    let theta = s.float("rope_theta").unwrap_or(LLAMA_CPP_ROPE_BASE);
    let head_dim = s.uint("head_dim").unwrap_or(shape.hidden / shape.heads.max(1));
    let mut md = vec![
        u("embedding_length", shape.hidden),
        u("block_count", shape.layers),
        u("attention.head_count", shape.heads),
    ];
    match s.model_type {
        "phi3" => {
            let original = s
                .original
                .get("original_max_position_embeddings")
                .or_else(|| {
                    s.original.get("rope_parameters").and_then(|p| p.get("original_max_position_embeddings"))
                })
                .and_then(Json::as_u64)
                .ok_or_else(|| {
                    s.refuse("original_max_position_embeddings", "is missing (the converter requires it)")
                })?;
            let partial = s.float("partial_rotary_factor").unwrap_or(1.0);
            md.extend([
                // The context cut to a window llama.cpp would not slide (it runs phi3 without one).
                u("context_length", shape.context),
                u("rope.scaling.original_context_length", original as u32),
                u("feed_forward_length", shape.feed_forward),
                u("attention.head_count_kv", shape.kv_heads),
                f("attention.layer_norm_rms_epsilon", eps),
                u("rope.dimension_count", (partial * f64::from(shape.hidden)) as u32 / shape.heads.max(1)),
                f("rope.freq_base", theta),
                u("attention.sliding_window", original_uint("sliding_window").unwrap_or(0)),
            ]);
        }
        "falcon" => {
            md.extend([
                // FalconModel's fixed context ("not in config.json").
                u("context_length", 2048),
                (s.key("tensor_data_layout"), Value::String("jploski".into())),
                // The converter writes 4 × hidden_size; the tensors are `ffn_hidden_size` wide.
                u("feed_forward_length", s.uint("ffn_hidden_size").unwrap_or(4 * shape.hidden)),
                u("attention.head_count_kv", 1),
                f("attention.layer_norm_epsilon", s.float("layer_norm_epsilon").unwrap_or(1e-5)),
            ]);
            // No rope base is written: llama.cpp's default applies, so another is stated.
            if theta != LLAMA_CPP_ROPE_BASE {
                md.push(f("rope.freq_base", theta));
            }
        }
        "gemma" | "gemma2" => {
            md.extend([
                u("context_length", original_uint("max_position_embeddings").unwrap_or(shape.context)),
                u("feed_forward_length", shape.feed_forward),
                u("attention.head_count_kv", shape.kv_heads),
                f("attention.layer_norm_rms_epsilon", eps),
                u("attention.key_length", head_dim),
                u("attention.value_length", head_dim),
            ]);
            if s.model_type == "gemma2" {
                md.extend([
                    f("attn_logit_softcapping", s.float("attn_logit_softcapping").unwrap_or(50.0)),
                    f("final_logit_softcapping", s.float("final_logit_softcapping").unwrap_or(30.0)),
                    u("attention.sliding_window", original_uint("sliding_window").unwrap_or(4096)),
                ]);
            }
            // Neither converter writes a rope base: llama.cpp's default applies, so another is
            // stated.
            if theta != LLAMA_CPP_ROPE_BASE {
                md.push(f("rope.freq_base", theta));
            }
        }
        "gemma3_text" => {
            md.extend([
                u("context_length", original_uint("max_position_embeddings").unwrap_or(131_072)),
                u("feed_forward_length", shape.feed_forward),
                // Gemma3Model's defaults (transformers' too) where config.json is silent.
                u("attention.head_count_kv", original_uint("num_key_value_heads").unwrap_or(4)),
                f("rope.freq_base", theta),
                f("attention.layer_norm_rms_epsilon", eps),
                u("attention.key_length", original_uint("head_dim").unwrap_or(256)),
                u("attention.value_length", original_uint("head_dim").unwrap_or(256)),
            ]);
            if let Some(local) = s.float("rope_local_base_freq") {
                md.push(f("rope.freq_base_swa", local));
            }
            if let Some(cap) = s.float("final_logit_softcapping").filter(|c| *c != 0.0) {
                md.push(f("final_logit_softcapping", cap));
            }
            if s.original.get("sliding_window_pattern").and_then(Json::as_u64) != Some(1)
                && let Some(w) = original_uint("sliding_window")
            {
                md.push(u("attention.sliding_window", w));
            }
        }
        "deepseek_v2" => {
            let need = |k: &str| s.need(k);
            let (rank, rope, nope) =
                (need("kv_lora_rank")?, need("qk_rope_head_dim")?, need("qk_nope_head_dim")?);
            // The converter states what config.json states, as it states it.
            let o = |k: &str| s.original.get(k).filter(|v| !v.is_null());
            let ou = |k: &str| o(k).and_then(Json::as_u64).map(|v| v as u32);
            let experts = ou("n_routed_experts");
            md.extend([
                u("context_length", shape.context),
                u("feed_forward_length", shape.feed_forward),
                // MLA as multi-query attention over the latent.
                u("attention.head_count_kv", 1),
                f("rope.freq_base", theta),
                f("attention.layer_norm_rms_epsilon", eps),
            ]);
            if let Some(n) = experts {
                md.push(u("expert_count", n));
            }
            if let Some(n) = ou("num_experts_per_tok") {
                md.push(u("expert_used_count", n));
            }
            for (field, key) in [("n_group", "expert_group_count"), ("topk_group", "expert_group_used_count")]
            {
                if let Some(n) = ou(field) {
                    md.push(u(key, n));
                }
            }
            if o("scoring_func").and_then(Json::as_str) == Some("softmax") {
                md.push(u("expert_gating_func", 1));
            }
            let dense =
                ou("first_k_dense_replace").unwrap_or(if experts.is_some() { 0 } else { shape.layers });
            md.extend([
                u("attention.key_length", rank + rope),
                u("attention.value_length", rank),
                u("leading_dense_block_count", dense),
                u("vocab_size", need("vocab_size")?),
            ]);
            if let Some(q) = ou("q_lora_rank") {
                md.push(u("attention.q_lora_rank", q));
            }
            md.extend([
                u("attention.kv_lora_rank", rank),
                u("attention.key_length_mla", nope + rope),
                u("attention.value_length_mla", need("v_head_dim")?),
                u("expert_feed_forward_length", ou("moe_intermediate_size").unwrap_or(shape.feed_forward)),
                u("expert_shared_count", ou("n_shared_experts").unwrap_or(0)),
            ]);
            if let Some(scale) = o("routed_scaling_factor").and_then(Json::as_f64) {
                md.push(f("expert_weights_scale", scale));
            }
            md.push(u("rope.dimension_count", rope));
        }
        _ => return Ok(None),
    }
    Ok(Some(md))
}

/// The `{arch}.*` keys of the model.
pub(super) fn architecture_keys(s: &Source) -> Result<Vec<(String, Value)>, ConvertError> {
    refuse_what_llama_cpp_cannot_run(s)?;
    let shape = shape(s)?;
    let mut md = common_keys(s, &shape)?;
    // The rope scaling keys as the converter writes them (after the head counts; deepseek2's
    // log multiplier last), or the field llama.cpp would run otherwise, named.
    let rope = super::rope::converter_keys(s.original, s.arch)
        .map_err(|why| ConvertError::Unsupported(format!("GGUF of a {} whose {why}", s.model_type)))?;
    let at = md.iter().position(|(k, _)| *k == s.key("attention.head_count_kv")).map_or(md.len(), |i| i + 1);
    let (last, rest): (Vec<_>, Vec<_>) =
        rope.keys.into_iter().partition(|(k, _)| *k == "yarn_log_multiplier");
    let scaling = |keys: Vec<(&'static str, Value)>| -> Vec<(String, Value)> {
        keys.into_iter().map(|(k, v)| (s.key(&format!("rope.scaling.{k}")), v)).collect()
    };
    md.splice(at..at, scaling(rest));
    md.extend(scaling(last));
    Ok(md)
}

/// The `{arch}.*` keys of the model but its rope scaling's.
fn common_keys(s: &Source, shape: &Shape) -> Result<Vec<(String, Value)>, ConvertError> {
    if let Some(md) = own_keys(s, shape)? {
        return Ok(md);
    }
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
