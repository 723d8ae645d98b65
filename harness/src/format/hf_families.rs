//! config.json of the architectures whose fields go beyond llama's, brought to what their
//! model reads (`hf_config::normalise` has read the shared fields first: rope, head width,
//! biases, activation, window, tie). Each field that changes the mathematics is filled with
//! transformers' default, honoured, or refused by name.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::hparams::ConfigError;

fn refuse(path: &Path, field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError { path: path.to_path_buf(), field, why: why.into() }
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
    let object_theta = object.get("rope_theta").cloned().unwrap_or(Value::Null);
    // A share of each head that rotates must be a whole, even number of units.
    if matches!(model_type, "phi3" | "stablelm")
        && let Some(factor) = object.get("partial_rotary_factor").and_then(Value::as_f64)
    {
        let heads = uint("num_attention_heads").unwrap_or(1).max(1);
        let dim = (hidden / heads) as f64 * factor;
        let rotates = factor > 0.0 && factor <= 1.0 && dim >= 2.0;
        if !(rotates && (dim as u64).is_multiple_of(2)) {
            return Err(refuse(
                path,
                "partial_rotary_factor",
                format!("is {factor}: it must rotate an even number of each head's units, at least 2"),
            ));
        }
    }
    // A token is routed to at most every expert.
    if let (Some(per_token), Some(experts)) = (
        uint("num_experts_per_tok"),
        ["num_experts", "num_local_experts", "n_routed_experts"].iter().find_map(|f| uint(f)),
    ) && (per_token == 0 || per_token > experts)
    {
        return Err(refuse(
            path,
            "num_experts_per_tok",
            format!("is {per_token}; it must lie between 1 and the {experts} experts"),
        ));
    }
    if model_type == "deepseek_v2" {
        for field in ["qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "kv_lora_rank"] {
            match uint(field) {
                Some(n) if n > 0 && (field != "qk_rope_head_dim" || n.is_multiple_of(2)) => {}
                _ => {
                    return Err(refuse(
                        path,
                        field,
                        "is missing or not a positive whole number (the rotary one even)",
                    ));
                }
            }
        }
    }
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
        }
        "stablelm" => {
            set("qk_layernorm", json!(flag("qk_layernorm", false)?));
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
            if scalar <= 0.0 {
                return Err(refuse(
                    path,
                    "query_pre_attn_scalar",
                    format!("is {scalar}, not a positive number"),
                ));
            }
            set("query_pre_attn_scalar", json!(scalar));
            for cap in ["attn_logit_softcapping", "final_logit_softcapping"] {
                if let Some(v) = get(cap)
                    && v.as_f64().is_none_or(|x| !x.is_finite() || x <= 0.0)
                {
                    return Err(refuse(path, cap, format!("is {v}, not a finite positive number")));
                }
            }
            gemma_layers(path, model_type, config, layers, &mut set)?;
            if model_type == "gemma2" {
                // One rope base for every layer.
                let theta = object_theta.clone();
                set("rope_local_base_freq", theta);
            } else {
                set("qk_norm", json!(true));
                // transformers 5's gemma3 stores `attn_logit_softcapping` but never applies it
                // (its attention is not handed the cap, unlike gemma2's): reproducing it means
                // not applying it either.
                set("attn_logit_softcapping", Value::Null);
            }
        }
        "qwen3_moe" => {
            let experts = get("num_experts").or_else(|| get("num_local_experts")).cloned();
            let Some(experts) = experts else {
                return Err(refuse(path, "num_experts", "is missing (nor is there `num_local_experts`)"));
            };
            set("num_experts", experts);
            let step = sparse_step(path, config, layers)?;
            set("decoder_sparse_step", json!(step));
            set("mlp_only_layers", json!([]));
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
            // candle's group-limited routing indexes past its groups (a gather error on the
            // first forward pass), so only greedy routing runs.
            if method != "greedy" {
                return Err(refuse(
                    path,
                    "topk_method",
                    format!(
                        "is `{method}`; the engine's deepseek_v2 routes greedily only (candle's group-limited routing fails)"
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
            // Unused by greedy routing; candle's struct asks for them.
            for field in ["n_group", "topk_group"] {
                if uint(field).is_none() {
                    set(field, json!(1));
                }
            }
            // transformers 5's router drops `norm_topk_prob` and always scales the chosen
            // weights by routed_scaling_factor; candle's normalises them instead where it is true.
            set("norm_topk_prob", json!(false));
            set("attention_bias", json!(flag("attention_bias", false)?));
        }
        _ => {}
    }
    Ok(())
}

/// qwen3_moe's experts as candle's model places them: in every `decoder_sparse_step`-th layer.
/// transformers also keeps the layers `mlp_only_layers` names dense; such a list is honoured
/// where the sparse layers it leaves are those of one step (then that step), else refused.
fn sparse_step(path: &Path, config: &Value, layers: u64) -> Result<u64, ConfigError> {
    let step = config.get("decoder_sparse_step").and_then(Value::as_u64).unwrap_or(1).max(1);
    let dense: Vec<u64> = match config.get("mlp_only_layers") {
        None | Some(Value::Null) => return Ok(step),
        Some(Value::Array(a)) if a.iter().all(|v| v.as_u64().is_some()) => {
            a.iter().filter_map(Value::as_u64).collect()
        }
        Some(v) => {
            return Err(refuse(path, "mlp_only_layers", format!("is {v}, not a list of layer numbers")));
        }
    };
    let sparse_by = |k: u64| (0..layers).filter(move |l| (l + 1).is_multiple_of(k));
    let wanted: Vec<u64> = sparse_by(step).filter(|l| !dense.contains(l)).collect();
    (1..=layers.max(1))
        .find(|&k| sparse_by(k).eq(wanted.iter().copied()))
        .ok_or_else(|| {
            refuse(
                path,
                "mlp_only_layers",
                format!(
                    "is {dense:?}, leaving experts in layers {wanted:?}; the engine's qwen3_moe places experts in every decoder_sparse_step-th layer only"
                ),
            )
        })
}

/// gemma2's and gemma3's layers, each `sliding_attention` or `full_attention`: 5.x's
/// `layer_types`, else 4.x's period (`sliding_window_pattern`, 6 for gemma3 and 2 for gemma2:
/// every such layer is full, the others slide).
fn gemma_layers(
    path: &Path,
    model_type: &str,
    config: &Value,
    layers: u64,
    set: &mut impl FnMut(&str, Value),
) -> Result<(), ConfigError> {
    let types: Vec<Value> = match config.get("layer_types") {
        None | Some(Value::Null) => {
            let pattern = ["sliding_window_pattern", "_sliding_window_pattern"]
                .iter()
                .find_map(|f| config.get(*f).and_then(Value::as_u64))
                .unwrap_or(if model_type == "gemma2" { 2 } else { 6 })
                .max(1);
            (0..layers)
                .map(|l| {
                    let full = (l + 1).is_multiple_of(pattern);
                    json!(if full { "full_attention" } else { "sliding_attention" })
                })
                .collect()
        }
        Some(Value::Array(types)) => types.clone(),
        Some(v) => return Err(refuse(path, "layer_types", format!("is {v}, not a list"))),
    };
    if let Some(t) =
        types.iter().find(|t| !matches!(t.as_str(), Some("sliding_attention" | "full_attention")))
    {
        return Err(refuse(
            path,
            "layer_types",
            format!("names {t}; the engine's {model_type} has sliding_attention and full_attention layers"),
        ));
    }
    if types.len() as u64 != layers {
        return Err(refuse(path, "layer_types", format!("names {} layers, not {layers}", types.len())));
    }
    set("layer_types", Value::Array(types));
    let window = config.get("sliding_window").and_then(Value::as_u64).unwrap_or(4096).max(1);
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::format::hf_config::normalise;

    fn config(model_type: &str, fields: Value) -> Value {
        let mut c = json!({
            "model_type": model_type, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512, "max_position_embeddings": 128,
        });
        if model_type == "deepseek_v2" {
            for (k, v) in
                [("qk_rope_head_dim", 8), ("qk_nope_head_dim", 8), ("v_head_dim", 16), ("kv_lora_rank", 16)]
            {
                c[k] = json!(v);
            }
        }
        for (k, v) in fields.as_object().expect("an object") {
            c[k] = v.clone();
        }
        c
    }

    fn normalised(model_type: &str, fields: Value) -> Value {
        normalise(Path::new("config.json"), &config(model_type, fields)).expect("the config is admitted")
    }

    /// The refused field and the message.
    fn refused(model_type: &str, fields: Value) -> (&'static str, String) {
        let e = normalise(Path::new("config.json"), &config(model_type, fields)).expect_err("refused");
        (e.field, e.to_string())
    }

    #[test]
    fn granite_multipliers_default_to_one_and_are_kept() {
        let c = normalised("granite", json!({}));
        assert_eq!(c["embedding_multiplier"], json!(1.0));
        assert_eq!(c["logits_scaling"], json!(1.0));
        let c =
            normalised("granite", json!({"embedding_multiplier": 12.0, "attention_multiplier": 0.015625}));
        assert_eq!(
            (c["embedding_multiplier"].clone(), c["attention_multiplier"].clone()),
            (json!(12.0), json!(0.015625))
        );
        assert_eq!(refused("granite", json!({"logits_scaling": 0.0})).0, "logits_scaling");
        assert_eq!(refused("granite", json!({"residual_multiplier": "x"})).0, "residual_multiplier");
        // granite honours attention and MLP biases; llama refuses them.
        assert!(normalise(Path::new("c"), &config("granite", json!({"mlp_bias": true}))).is_ok());
    }

    #[test]
    fn gemma3_reads_either_versions_rope_bases_and_layers() {
        let v5 = normalised(
            "gemma3_text",
            json!({"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
                "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 512}),
        );
        assert_eq!((v5["rope_theta"].clone(), v5["rope_local_base_freq"].clone()), (json!(1e6), json!(1e4)));
        // The model masks its sliding layers: the context is not capped to the window.
        assert_eq!(
            (v5["sliding_window"].clone(), v5["max_position_embeddings"].clone()),
            (json!(512), json!(128))
        );
        let v4 = normalised(
            "gemma3_text",
            json!({"rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window_pattern": 2,
                "rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
        );
        assert_eq!(v4["layer_types"], json!(["sliding_attention", "full_attention"]));
        assert_eq!((v4["rope_theta"].clone(), v4["rope_linear_factor"].clone()), (json!(1e6), json!(8.0)));
        assert_eq!(
            refused("gemma3_text", json!({"layer_types": ["chunked_attention", "full_attention"]})).0,
            "layer_types"
        );
        assert_eq!(refused("gemma3_text", json!({"layer_types": ["full_attention"]})).0, "layer_types");
        let scaled_local = json!({"rope_parameters": {"full_attention": {"rope_theta": 1e6},
            "sliding_attention": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 2.0}}});
        assert!(refused("gemma3_text", scaled_local).1.contains("sliding layers"));
    }

    #[test]
    fn family_fields_the_engine_does_not_honour_are_refused_by_name() {
        for (model_type, fields, field) in [
            ("stablelm", json!({"qk_layernorm": "yes"}), "qk_layernorm"),
            ("falcon", json!({"alibi": true}), "alibi"),
            ("falcon", json!({"new_decoder_architecture": true, "parallel_attn": false}), "parallel_attn"),
            ("falcon", json!({"activation": "swishy"}), "activation"),
            ("gpt_bigcode", json!({"add_cross_attention": true}), "add_cross_attention"),
            ("qwen3_moe", json!({"num_experts": 4, "mlp_only_layers": [1]}), "mlp_only_layers"),
            ("qwen3_moe", json!({"num_experts": 4, "mlp_only_layers": "all"}), "mlp_only_layers"),
            ("qwen3_moe", json!({}), "num_experts"),
            ("deepseek_v2", json!({"topk_method": "noaux_tc"}), "topk_method"),
            ("deepseek_v2", json!({"scoring_func": "sigmoid"}), "scoring_func"),
            ("deepseek_v2", json!({"topk_method": "group_limited_greedy"}), "topk_method"),
            (
                "phi3",
                json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}),
                "original_max_position_embeddings",
            ),
            ("phi3", json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0]}}), "rope_scaling"),
            ("phi3", json!({"rope_scaling": {"type": "yarn", "factor": 2.0}}), "rope_scaling"),
            (
                "deepseek_v2",
                json!({"rope_scaling": {"type": "yarn", "factor": 40.0, "attention_factor": 2.0}}),
                "rope_scaling",
            ),
            ("deepseek_v2", json!({"rope_scaling": {"type": "dynamic", "factor": 4.0}}), "rope_scaling"),
            ("stablelm", json!({"partial_rotary_factor": 1.5}), "partial_rotary_factor"),
            ("phi3", json!({"partial_rotary_factor": 0.1}), "partial_rotary_factor"),
            ("qwen3_moe", json!({"num_experts": 4, "num_experts_per_tok": 5}), "num_experts_per_tok"),
            ("deepseek_v2", json!({"qk_rope_head_dim": 7}), "qk_rope_head_dim"),
        ] {
            let (got, message) = refused(model_type, fields.clone());
            assert_eq!(got, field, "{model_type} {fields}: {message}");
        }
    }

    #[test]
    fn phi3_longrope_is_completed_as_transformers_completes_it() {
        let c = normalised(
            "phi3",
            json!({"original_max_position_embeddings": 32, "rope_parameters": {"rope_theta": 1e4,
                "rope_type": "longrope", "short_factor": [1.0, 2.0], "long_factor": [3.0, 4.0]}}),
        );
        let l = &c["rope_longrope"];
        assert_eq!(
            (l["original_max_position_embeddings"].clone(), l["long_factor"].clone()),
            (json!(32), json!([3.0, 4.0]))
        );
        // 128 positions over 32: sqrt(1 + ln 4 / ln 32).
        let want = (1.0 + 4f64.ln() / 32f64.ln()).sqrt();
        assert!((l["attention_factor"].as_f64().expect("a number") - want).abs() < 1e-12);
        assert!(c.get("rope_scaling").is_none());
    }

    #[test]
    fn gpt2_and_falcon_names_and_defaults_reach_their_models() {
        let c = normalise(
            Path::new("config.json"),
            &json!({"model_type": "gpt_bigcode", "n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 512}),
        )
        .expect("admitted");
        assert_eq!((c["n_inner"].clone(), c["n_positions"].clone()), (json!(256), json!(1024)));
        assert_eq!((c["multi_query"].clone(), c["tie_word_embeddings"].clone()), (json!(true), json!(true)));
        assert_eq!(c["max_position_embeddings"], json!(1024));
        let f = normalised("falcon", json!({"new_decoder_architecture": true, "num_kv_heads": 2}));
        assert_eq!(
            (f["num_ln_in_parallel_attn"].clone(), f["ffn_hidden_size"].clone()),
            (json!(2), json!(256))
        );
        assert_eq!(f["activation"], json!("gelu"));
        let f = normalised("falcon", json!({}));
        assert_eq!((f["num_ln_in_parallel_attn"].clone(), f["multi_query"].clone()), (json!(1), json!(true)));
        let q = normalised("qwen3_moe", json!({"num_local_experts": 8}));
        assert_eq!(q["num_experts"], json!(8));
        // Dense layers named where one sparse step leaves the same experts: that step.
        let q = normalised("qwen3_moe", json!({"num_experts": 4, "mlp_only_layers": [0]}));
        assert_eq!((q["decoder_sparse_step"].clone(), q["mlp_only_layers"].clone()), (json!(2), json!([])));
        let s = normalised(
            "stablelm",
            json!({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.25}}),
        );
        assert_eq!(s["partial_rotary_factor"], json!(0.25));
    }
}
