//! config.json of the architectures whose fields go beyond llama's, brought to what their
//! model reads (`hf_config::normalise` has read the shared fields first: rope, head width,
//! biases, activation, window, tie). Each field that changes the mathematics is filled with
//! transformers' default, honoured, or refused by name.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::hf_config::{Rope, rope};
use super::hparams::ConfigError;

fn refuse(path: &Path, field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError { path: path.to_path_buf(), field, why: why.into() }
}

/// gemma3's two rope bases: global layers' `rope_theta` and sliding layers'
/// `rope_local_base_freq` (4.x), or 5.x's `rope_parameters` per layer type. The global one is
/// returned (and refused where scaled, as [`rope`] would); the local one is written into
/// `object` as `rope_local_base_freq`.
pub(super) fn gemma3_rope(
    path: &Path,
    config: &Value,
    object: &mut Map<String, Value>,
) -> Result<Rope, ConfigError> {
    let by_type = config
        .get("rope_parameters")
        .and_then(Value::as_object)
        .filter(|p| p.contains_key("full_attention") || p.contains_key("sliding_attention"));
    let Some(by_type) = by_type else {
        let global = rope(path, config)?;
        let local = match config.get("rope_local_base_freq") {
            None | Some(Value::Null) => 10_000.0,
            Some(v) => v.as_f64().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(|| {
                refuse(path, "rope_local_base_freq", format!("is {v}, not a finite positive number"))
            })?,
        };
        object.insert("rope_local_base_freq".into(), json!(local));
        return Ok(global);
    };
    let of = |layer_type: &str| -> Result<Rope, ConfigError> {
        let parameters = by_type.get(layer_type).cloned().unwrap_or(Value::Null);
        rope(path, &json!({ "rope_parameters": parameters }))
    };
    let (global, local) = (of("full_attention")?, of("sliding_attention")?);
    if local.kind != "default" {
        return Err(refuse(
            path,
            "rope_parameters",
            format!(
                "asks for rope scaling of type `{}` on sliding layers, which the engine's gemma3_text does not implement",
                local.kind
            ),
        ));
    }
    object.insert("rope_local_base_freq".into(), json!(local.theta));
    Ok(global)
}

/// The fields of `model_type` beyond the shared ones, read from `config` into `object`.
pub(super) fn translate(
    path: &Path,
    model_type: &str,
    config: &Value,
    object: &mut Map<String, Value>,
) -> Result<(), ConfigError> {
    let get = |field: &str| config.get(field).filter(|v| !v.is_null());
    let flag = |field: &'static str, default: bool| -> Result<bool, ConfigError> {
        match get(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(refuse(path, field, format!("is {v}, not true or false"))),
        }
    };
    let number = |field: &'static str, default: f64| -> Result<f64, ConfigError> {
        match get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| refuse(path, field, format!("is {v}, not a finite number"))),
        }
    };
    let uint = |field: &str| get(field).and_then(Value::as_u64);
    let hidden = uint("hidden_size").unwrap_or(0);
    let layers = uint("num_hidden_layers").unwrap_or(0);
    let mut set = |field: &str, v: Value| {
        object.insert(field.into(), v);
    };
    match model_type {
        "granite" => {
            for field in
                ["embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"]
            {
                set(field, json!(number(field, 1.0)?));
            }
            if number("logits_scaling", 1.0)? == 0.0 {
                return Err(refuse(path, "logits_scaling", "is 0; the logits are divided by it"));
            }
        }
        "starcoder2" => {
            set("norm_epsilon", json!(number("norm_epsilon", 1e-5)?));
            set("use_bias", json!(flag("use_bias", true)?));
            // The window is the session's context already.
            set("sliding_window", Value::Null);
            if object.get("tie_word_embeddings") == Some(&Value::Bool(false)) {
                return Err(refuse(
                    path,
                    "tie_word_embeddings",
                    "is false; the engine's starcoder2 always uses the embedding as its head",
                ));
            }
        }
        "stablelm" => {
            if flag("qk_layernorm", false)? {
                return Err(refuse(
                    path,
                    "qk_layernorm",
                    "is true; the engine's stablelm has no per-head q/k layer norms",
                ));
            }
            set("layer_norm_eps", json!(number("layer_norm_eps", 1e-5)?));
            set("use_qkv_bias", json!(flag("use_qkv_bias", false)?));
            set("use_parallel_residual", json!(flag("use_parallel_residual", false)?));
        }
        "phi3" => {}
        "gemma2" | "gemma3_text" => {
            let heads = uint("num_attention_heads").unwrap_or(1).max(1);
            let head_dim = uint("head_dim").unwrap_or(hidden / heads);
            set("head_dim", json!(head_dim));
            let scalar = number("query_pre_attn_scalar", 256.0)?;
            if scalar <= 0.0 || scalar.fract() != 0.0 {
                return Err(refuse(
                    path,
                    "query_pre_attn_scalar",
                    format!("is {scalar}; the engine's {model_type} takes a positive whole number"),
                ));
            }
            set("query_pre_attn_scalar", json!(scalar as u64));
            for cap in ["attn_logit_softcapping", "final_logit_softcapping"] {
                if let Some(v) = get(cap)
                    && v.as_f64().is_none_or(|x| !x.is_finite() || x <= 0.0)
                {
                    return Err(refuse(path, cap, format!("is {v}, not a finite positive number")));
                }
            }
            if model_type == "gemma2" {
                // A window at least the context masks nothing; the context is capped to it.
                set("sliding_window", Value::Null);
            } else {
                gemma3_layers(path, config, layers, &mut set)?;
            }
        }
        "qwen3_moe" => {
            let experts = get("num_experts").or_else(|| get("num_local_experts")).cloned();
            let Some(experts) = experts else {
                return Err(refuse(path, "num_experts", "is missing (nor is there `num_local_experts`)"));
            };
            set("num_experts", experts);
            match get("mlp_only_layers") {
                None => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(v) => {
                    return Err(refuse(
                        path,
                        "mlp_only_layers",
                        format!("is {v}; the engine's qwen3_moe places experts by decoder_sparse_step only"),
                    ));
                }
            }
            set("decoder_sparse_step", json!(uint("decoder_sparse_step").unwrap_or(1).max(1)));
            set("norm_topk_prob", json!(flag("norm_topk_prob", false)?));
            set("use_sliding_window", json!(false));
            set("max_window_layers", json!(layers));
            set("attention_bias", json!(flag("attention_bias", false)?));
            if get("head_dim").is_none() {
                let heads = uint("num_attention_heads").unwrap_or(1).max(1);
                set("head_dim", json!(hidden / heads));
            }
        }
        "falcon" => {
            if flag("alibi", false)? {
                return Err(refuse(path, "alibi", "is true; the engine's falcon has rotary positions only"));
            }
            let heads = uint("num_attention_heads").unwrap_or(1);
            let new_decoder = flag("new_decoder_architecture", false)?;
            let parallel = flag("parallel_attn", true)?;
            if new_decoder && !parallel {
                return Err(refuse(
                    path,
                    "parallel_attn",
                    "is false with new_decoder_architecture, a block transformers cannot run either",
                ));
            }
            set("num_kv_heads", json!(uint("num_kv_heads").unwrap_or(heads)));
            set("ffn_hidden_size", json!(uint("ffn_hidden_size").unwrap_or(4 * hidden)));
            set("layer_norm_epsilon", json!(number("layer_norm_epsilon", 1e-5)?));
            set("multi_query", json!(flag("multi_query", true)?));
            set("new_decoder_architecture", json!(new_decoder));
            set("parallel_attn", json!(parallel));
            set("bias", json!(flag("bias", false)?));
            let lns = match uint("num_ln_in_parallel_attn") {
                None if new_decoder => 2,
                None => 1,
                Some(n @ (1 | 2)) => n,
                Some(n) => {
                    return Err(refuse(path, "num_ln_in_parallel_attn", format!("is {n}, not 1 or 2")));
                }
            };
            set("num_ln_in_parallel_attn", json!(lns));
            activation(path, "activation", get("activation"), "gelu", &mut set)?;
            if get("max_position_embeddings").is_none() {
                set("max_position_embeddings", json!(2048));
            }
        }
        "gpt_bigcode" => {
            if flag("add_cross_attention", false)? {
                return Err(refuse(
                    path,
                    "add_cross_attention",
                    "is true; the engine's gpt_bigcode is a decoder only",
                ));
            }
            let embd = uint("n_embd").unwrap_or(768);
            set("n_inner", json!(uint("n_inner").unwrap_or(4 * embd)));
            set("layer_norm_epsilon", json!(number("layer_norm_epsilon", 1e-5)?));
            set("multi_query", json!(flag("multi_query", true)?));
            set("scale_attn_weights", json!(flag("scale_attn_weights", true)?));
            activation(
                path,
                "activation_function",
                get("activation_function"),
                "gelu_pytorch_tanh",
                &mut set,
            )?;
            // The learned position table is the context.
            let positions = uint("n_positions").unwrap_or(1024);
            set("n_positions", json!(positions));
            set("max_position_embeddings", json!(positions));
        }
        "deepseek_v2" => {
            let method = get("topk_method").and_then(Value::as_str).unwrap_or("greedy");
            if !matches!(method, "greedy" | "group_limited_greedy") {
                return Err(refuse(
                    path,
                    "topk_method",
                    format!(
                        "is `{method}`; the engine's deepseek_v2 routes by greedy or group_limited_greedy"
                    ),
                ));
            }
            if let Some(f) = get("scoring_func").and_then(Value::as_str).filter(|f| *f != "softmax") {
                return Err(refuse(
                    path,
                    "scoring_func",
                    format!("is `{f}`; the engine's deepseek_v2 scores by softmax"),
                ));
            }
            for field in ["n_group", "topk_group"] {
                match uint(field) {
                    Some(_) => {}
                    None if method == "greedy" => set(field, json!(1)),
                    None => {
                        return Err(refuse(path, field, "is missing; group_limited_greedy routing needs it"));
                    }
                }
            }
            set("attention_bias", json!(flag("attention_bias", false)?));
        }
        _ => {}
    }
    Ok(())
}

/// gemma3's layer pattern: the engine's model slides every layer but each
/// `sliding_window_pattern`-th; 5.x's `layer_types` must say the same.
fn gemma3_layers(
    path: &Path,
    config: &Value,
    layers: u64,
    set: &mut impl FnMut(&str, Value),
) -> Result<(), ConfigError> {
    let pattern = ["sliding_window_pattern", "_sliding_window_pattern"]
        .iter()
        .find_map(|f| config.get(*f).and_then(Value::as_u64))
        .unwrap_or(6)
        .max(1);
    if let Some(types) = config.get("layer_types").and_then(Value::as_array) {
        for (l, t) in types.iter().enumerate() {
            let sliding = !(l as u64 + 1).is_multiple_of(pattern);
            let want = if sliding { "sliding_attention" } else { "full_attention" };
            if t.as_str() != Some(want) {
                return Err(refuse(
                    path,
                    "layer_types",
                    format!(
                        "makes layer {l} {t}; the engine's gemma3_text runs every {pattern}th layer with full attention and the others sliding"
                    ),
                ));
            }
        }
        if types.len() as u64 != layers {
            return Err(refuse(path, "layer_types", format!("names {} layers, not {layers}", types.len())));
        }
    }
    set("sliding_window_pattern", json!(pattern));
    let window = config.get("sliding_window").and_then(Value::as_u64).unwrap_or(4096);
    set("sliding_window", json!(window));
    Ok(())
}

/// An activation, named by `field`, that the engine computes as transformers does.
fn activation(
    path: &Path,
    field: &'static str,
    value: Option<&Value>,
    default: &str,
    set: &mut impl FnMut(&str, Value),
) -> Result<(), ConfigError> {
    let value = value.cloned().unwrap_or_else(|| json!(default));
    serde_json::from_value::<candle_nn::Activation>(value.clone())
        .map_err(|_| refuse(path, field, format!("is {value}, an activation the engine does not know")))?;
    set(field, value);
    Ok(())
}
