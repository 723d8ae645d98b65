//! config.json as transformers 4.x and 5.x write it, brought to the one shape the engine's
//! loaders read: the rope base from `rope_theta` or 5.x's `rope_parameters`, a null sliding
//! window, an explicit `head_dim`, tied embeddings, the defaults a 5.x config leaves out.
//!
//! Every field read here that changes the mathematics is either honoured or refused with a
//! [`ConfigError`] naming it (a rope scaling type the engine does not implement, a head width
//! the loader would not use, biases it would not load, …); nothing is dropped silently. A
//! sliding window the engine cannot apply while decoding is honoured by limiting the session's
//! context to the window, inside which it changes nothing.
//!
//! It reads no file and builds no model: callers hand it the parsed config.

use std::path::Path;

use serde_json::{Value, json};

use super::hparams::ConfigError;

/// transformers' rope base when a config states none (every architecture read here).
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// The architectures whose config this module normalises (the others are refused by the
/// engine before their config matters).
pub(crate) const NORMALISED: &[&str] = &[
    "deepseek_v2",
    "falcon",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt_bigcode",
    "granite",
    "llama",
    "mistral",
    "olmo2",
    "phi3",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "stablelm",
    "starcoder2",
];

/// The model types the project's tracer (`diff::trace`, `gate::trace`) runs: the llama
/// convention of pre-norm blocks, RMSNorm, half-split rotary embedding and a SwiGLU MLP.
pub(crate) const TRACED: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// Why the tracer cannot run `config`, a model of [`TRACED`]: what its traced forward pass does
/// not apply (a scaled rope, a sliding window narrower than the context), or the config's own
/// refusal. `None`: the tracer computes what transformers computes.
pub(crate) fn untraced(path: &Path, config: &Value) -> Option<String> {
    let normalised = match normalise(path, config) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    if let Some(scaling) = normalised.get("rope_scaling").filter(|v| !v.is_null()) {
        let kind = scaling.get("rope_type").and_then(Value::as_str).unwrap_or("scaled");
        return Some(format!("its rope scaling ({kind}) is not applied by the tracer"));
    }
    let window = normalised.get("sliding_window").and_then(Value::as_u64);
    let context = normalised.get("max_position_embeddings").and_then(Value::as_u64);
    match (window, context) {
        (Some(w), Some(c)) if w < c => Some(format!(
            "its sliding window of {w} tokens is narrower than its context of {c}, and the tracer attends over the whole prompt"
        )),
        _ => None,
    }
}

/// The largest model the tracer holds: it keeps every weight as dense f32, and `diff::trace`
/// holds the ground truth and the candidate at once, beside the cell's sessions (2 × 8 GB here).
pub(crate) const TRACE_MAX_PARAMETERS: u64 = 2_000_000_000;

/// The architectures whose loader reads an explicit `head_dim` (the others derive it;
/// deepseek_v2's heads are sized by its own fields).
pub(crate) const EXPLICIT_HEAD_DIM: &[&str] =
    &["gemma", "gemma2", "gemma3_text", "llama", "mistral", "qwen2", "qwen3", "qwen3_moe"];

/// The gemma family: `hidden_activation`, always tied, optionally bidirectional.
const GEMMA: &[&str] = &["gemma", "gemma2", "gemma3_text"];

/// The architectures whose models rotate a share of each head (`partial_rotary_factor`).
const PARTIAL_ROTARY: &[&str] = &["phi3", "stablelm"];

/// The architectures whose models load q/k/v (and o) biases when `attention_bias` says so.
pub(crate) const ATTENTION_BIAS: &[&str] =
    &["deepseek_v2", "gemma2", "gemma3_text", "granite", "llama", "qwen2", "qwen3", "qwen3_moe"];

/// The architectures whose models load MLP biases when `mlp_bias` says so.
const MLP_BIAS: &[&str] = &["granite", "llama"];

/// The architectures on the project's decoder whose rope may be scaled (linear, llama3, YaRN).
const SCALED_ROPE: &[&str] = &["granite", "llama", "mistral", "qwen2"];

/// The architectures transformers ties the head to the embedding for when a config is silent.
pub(crate) const TIED_BY_DEFAULT: &[&str] =
    &["falcon", "gemma", "gemma2", "gemma3_text", "gpt_bigcode", "starcoder2"];

/// The architectures whose model masks its sliding layers to the window, prompt and cache
/// alike: their sessions keep the whole context.
const WINDOWED: &[&str] = &["gemma2", "gemma3_text", "mistral", "phi3", "qwen2", "starcoder2"];

/// The architectures whose transformers model has no sliding window: a `sliding_window` in
/// their config.json is not read.
const UNWINDOWED: &[&str] = &["granite", "llama"];

/// The architectures whose activation is not `hidden_act` (falcon's `activation`,
/// gpt_bigcode's `activation_function`, read in `hf_families`).
const OWN_ACTIVATION: &[&str] = &["falcon", "gpt_bigcode"];

fn refuse(path: &Path, field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError { path: path.to_path_buf(), field, why: why.into() }
}

/// transformers' `max_position_embeddings` for `model_type` when a config states none
/// (gpt_bigcode's context is its `n_positions`).
fn default_context(model_type: &str) -> Option<u64> {
    Some(match model_type {
        "llama" | "olmo2" | "granite" | "deepseek_v2" | "falcon" => 2048,
        "phi3" | "starcoder2" | "stablelm" => 4096,
        "gemma" | "gemma2" => 8192,
        "qwen2" | "qwen3" | "qwen3_moe" => 32_768,
        "mistral" | "gemma3_text" => 131_072,
        _ => return None,
    })
}

/// The rope settings of a config: base and type, from either spelling.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rope {
    /// The rope base (θ).
    pub(crate) theta: f64,
    /// `default`, `llama3`, `linear`, `yarn`, …
    pub(crate) kind: String,
    /// The object the type's parameters are in (`rope_parameters` or `rope_scaling`), if any.
    pub(crate) parameters: Option<serde_json::Map<String, Value>>,
    /// The field that named the type, for messages.
    pub(crate) field: &'static str,
    /// The share of each head that rotates (`partial_rotary_factor`, top level in 4.x, in
    /// `rope_parameters` in 5.x), with the field it came from; 1 when neither states it.
    pub(crate) partial: (f64, &'static str),
}

/// The rope base and scaling of `config`: `rope_theta` (4.x) or `rope_parameters.rope_theta`
/// (5.x), which must agree when both are given; the scaling type from `rope_parameters` or
/// `rope_scaling` (`rope_type`, or 4.x's older `type`). A config with neither has transformers'
/// default base, 10,000, and no scaling.
pub(crate) fn rope(path: &Path, config: &Value) -> Result<Rope, ConfigError> {
    let number = |field: &'static str, v: &Value| -> Result<f64, ConfigError> {
        v.as_f64()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| refuse(path, field, format!("is {v}, not a finite positive number")))
    };
    let top = match config.get("rope_theta") {
        None | Some(Value::Null) => None,
        Some(v) => Some(number("rope_theta", v)?),
    };
    let object = |field: &'static str| -> Result<Option<serde_json::Map<String, Value>>, ConfigError> {
        match config.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(v) => Err(refuse(path, field, format!("is {v}, not an object"))),
        }
    };
    let parameters = object("rope_parameters")?;
    let scaling = object("rope_scaling")?;
    let nested = match parameters.as_ref().and_then(|p| p.get("rope_theta")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(number("rope_parameters", v)?),
    };
    let theta = match (top, nested) {
        (Some(a), Some(b)) if a != b => {
            return Err(refuse(
                path,
                "rope_parameters",
                format!("states rope_theta {b}, the config's `rope_theta` is {a}: which one is meant?"),
            ));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => DEFAULT_ROPE_THETA,
    };
    let kind_of = |m: &serde_json::Map<String, Value>| {
        m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str).map(str::to_string)
    };
    let partial = match (
        config.get("partial_rotary_factor").filter(|v| !v.is_null()),
        parameters.as_ref().and_then(|p| p.get("partial_rotary_factor")).filter(|v| !v.is_null()),
    ) {
        (_, Some(v)) => (number("rope_parameters", v)?, "rope_parameters"),
        (Some(v), None) => (number("partial_rotary_factor", v)?, "partial_rotary_factor"),
        (None, None) => (1.0, "partial_rotary_factor"),
    };
    let typed =
        |m: &Option<serde_json::Map<String, Value>>| m.as_ref().and_then(kind_of).filter(|k| k != "default");
    let (kind, parameters, field) = match (typed(&parameters), typed(&scaling)) {
        (Some(a), Some(b)) if a != b => {
            return Err(refuse(
                path,
                "rope_scaling",
                format!("is of type `{b}`, `rope_parameters` of type `{a}`: which one is meant?"),
            ));
        }
        (Some(kind), _) => (kind, parameters, "rope_parameters"),
        (None, Some(kind)) => (kind, scaling, "rope_scaling"),
        (None, None) => ("default".to_string(), None, "rope_parameters"),
    };
    Ok(Rope { theta, kind, parameters, field, partial })
}

/// `config` (of `path`, for messages) as the engine's loader for its `model_type` reads it, or
/// the first field the engine would not honour. Architectures outside [`NORMALISED`] are
/// returned unchanged.
pub(crate) fn normalise(path: &Path, config: &Value) -> Result<Value, ConfigError> {
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or_default();
    if !NORMALISED.contains(&model_type) {
        return Ok(config.clone());
    }
    // A config silent on its context has transformers' default for the architecture.
    let filled;
    let config = match default_context(model_type) {
        Some(context)
            if config.get("max_position_embeddings").is_none_or(Value::is_null) && config.is_object() =>
        {
            let mut c = config.clone();
            c["max_position_embeddings"] = json!(context);
            filled = c;
            &filled
        }
        _ => config,
    };
    let mut out = config.clone();
    let Some(object) = out.as_object_mut() else {
        return Err(refuse(path, "model_type", "cannot be read: the config is not a JSON object"));
    };
    let get = |field: &str| config.get(field).filter(|v| !v.is_null());
    let uint = |field: &str| get(field).and_then(Value::as_u64).map(|n| n as usize);
    let flag = |field: &'static str| -> Result<bool, ConfigError> {
        match get(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(refuse(path, field, format!("is {v}, not true or false"))),
        }
    };
    let hidden = uint("hidden_size").unwrap_or(0);
    let heads = uint("num_attention_heads").unwrap_or(1).max(1);
    let layers = uint("num_hidden_layers").unwrap_or(0);

    // Rope: the base reaches the loader as `rope_theta`; a scaling the family's model
    // implements reaches it complete, as `rope_scaling` (the project's decoder), or in the
    // family's own spelling.
    let rope = if model_type == "gemma3_text" {
        super::rope_scaling::gemma3_rope(path, config, object)?
    } else {
        rope(path, config)?
    };
    object.insert("rope_theta".into(), json!(rope.theta));
    object.remove("rope_parameters");
    match (rope.kind.as_str(), model_type) {
        ("default", _) => {
            object.remove("rope_scaling");
        }
        // transformers' dynamic NTK scaling computes the default frequencies until a sequence
        // outgrows `max_position_embeddings`, which the session's context never passes.
        ("dynamic", m) if SCALED_ROPE.contains(&m) => {
            let factor = rope.parameters.as_ref().and_then(|p| p.get("factor")).and_then(Value::as_f64);
            if factor.is_none_or(|f| !f.is_finite() || f <= 0.0) {
                return Err(refuse(
                    path,
                    rope.field,
                    "is of type dynamic but has no positive number `factor`",
                ));
            }
            object.remove("rope_scaling");
        }
        (_, m) if SCALED_ROPE.contains(&m) => {
            let scaling = super::rope_scaling::decoder_scaling(path, config, &rope, model_type)?;
            object.insert("rope_scaling".into(), scaling);
        }
        ("yarn", "deepseek_v2") => {
            let yarn = super::rope_scaling::deepseek_yarn(path, config, &rope)?;
            object.insert("rope_scaling".into(), yarn);
        }
        ("longrope" | "su", "phi3") => {
            let longrope = super::rope_scaling::longrope(path, config, &rope)?;
            object.remove("rope_scaling");
            object.insert("rope_longrope".into(), longrope);
        }
        // The project's gemma3 scales its full layers' positions.
        ("linear", "gemma3_text") => {
            let factor = rope.parameters.as_ref().and_then(|p| p.get("factor")).and_then(Value::as_f64);
            let Some(factor) = factor.filter(|f| f.is_finite() && *f >= 1.0) else {
                return Err(refuse(path, rope.field, "is of type linear but has no `factor` of at least 1"));
            };
            object.remove("rope_scaling");
            object.insert("rope_linear_factor".into(), json!(factor));
        }
        (other, _) => {
            return Err(refuse(
                path,
                rope.field,
                format!(
                    "asks for rope scaling of type `{other}`, which the engine's {model_type} does not implement"
                ),
            ));
        }
    }
    if PARTIAL_ROTARY.contains(&model_type) {
        object.insert("partial_rotary_factor".into(), json!(rope.partial.0));
    } else if rope.partial.0 != 1.0 {
        return Err(refuse(
            path,
            rope.partial.1,
            format!(
                "states partial_rotary_factor {}; the engine's {model_type} rotates whole heads",
                rope.partial.0
            ),
        ));
    } else {
        object.remove("partial_rotary_factor");
    }

    // The head width: the loaders of EXPLICIT_HEAD_DIM read `head_dim`; the others derive it.
    if let Some(d) = uint("head_dim")
        && !EXPLICIT_HEAD_DIM.contains(&model_type)
        && model_type != "deepseek_v2"
        && d * heads != hidden
    {
        return Err(refuse(
            path,
            "head_dim",
            format!(
                "is {d}; the engine's {model_type} uses hidden_size / num_attention_heads = {}",
                hidden / heads
            ),
        ));
    }

    // Biases and activations the loaders do not take.
    // qwen2's loader always takes q/k/v biases, qwen3's where the config says so.
    if !ATTENTION_BIAS.contains(&model_type) && flag("attention_bias")? {
        return Err(refuse(
            path,
            "attention_bias",
            format!("is true; the engine's {model_type} has no attention biases"),
        ));
    }
    if !MLP_BIAS.contains(&model_type) && flag("mlp_bias")? {
        return Err(refuse(
            path,
            "mlp_bias",
            format!("is true; the engine's {model_type} has no MLP biases"),
        ));
    }
    if GEMMA.contains(&model_type) {
        // 4.x wrote the activation gemma runs as `hidden_activation` (beside a legacy
        // `hidden_act`), 5.x as `hidden_act`; both read a bare "gelu" as the tanh approximation.
        let act = get("hidden_activation").or_else(|| get("hidden_act")).cloned();
        let act = match act {
            None => json!("gelu_pytorch_tanh"),
            Some(Value::String(a)) if a == "gelu" => json!("gelu_pytorch_tanh"),
            Some(a) => a,
        };
        object.insert("hidden_activation".into(), act);
        object.insert("hidden_act".into(), Value::Null);
        if flag("use_bidirectional_attention")? {
            return Err(refuse(
                path,
                "use_bidirectional_attention",
                format!("is true; the engine's {model_type} is causal"),
            ));
        }
        if get("tie_word_embeddings") == Some(&Value::Bool(false)) {
            return Err(refuse(
                path,
                "tie_word_embeddings",
                format!("is false; the engine's {model_type} always uses the embedding as its head"),
            ));
        }
        if get("head_dim").is_none() {
            object.insert("head_dim".into(), json!(hidden / heads));
        }
        // gemma2's and gemma3's biases where the config says so (gemma's were refused above).
        object.insert("attention_bias".into(), json!(flag("attention_bias")?));
    }
    if model_type == "olmo2" {
        match get("clip_qkv") {
            None => {}
            Some(v) if v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0) => {}
            Some(v) => return Err(refuse(path, "clip_qkv", format!("is {v}, not a finite positive number"))),
        }
    }
    match object.get("hidden_act").filter(|v| !v.is_null()).cloned() {
        _ if OWN_ACTIVATION.contains(&model_type) => {}
        None if GEMMA.contains(&model_type) => {}
        None => {
            object.insert("hidden_act".into(), json!("silu"));
        }
        Some(Value::String(a)) if a == "silu" => {}
        Some(v) if GEMMA.contains(&model_type) => unreachable!("gemma's activation was moved: {v}"),
        Some(v) if model_type == "llama" => {
            return Err(refuse(path, "hidden_act", format!("is {v}; the engine's llama runs silu only")));
        }
        Some(v) => {
            serde_json::from_value::<candle_nn::Activation>(v.clone()).map_err(|_| {
                refuse(path, "hidden_act", format!("is {v}, an activation the engine does not know"))
            })?;
        }
    }

    // The sliding window: which layers slide (5.x's `layer_types`, else 4.x's rules), and over
    // how many tokens. candle applies a window only to a prompt's own mask, never against the
    // cache while decoding, so for candle's models a window narrower than the context becomes
    // the session's context.
    // transformers' qwen2 family has a window only where `use_sliding_window` says so.
    let qwen = matches!(model_type, "qwen2" | "qwen3" | "qwen3_moe");
    let window = if UNWINDOWED.contains(&model_type) || (qwen && !flag("use_sliding_window")?) {
        None
    } else {
        uint("sliding_window")
    };
    let sliding_layers = match get("layer_types") {
        Some(Value::Array(types)) => types.iter().any(|t| t.as_str() == Some("sliding_attention")),
        Some(v) => return Err(refuse(path, "layer_types", format!("is {v}, not a list"))),
        None if qwen => window.is_some() && uint("max_window_layers").is_none_or(|m| m < layers),
        None => window.is_some(),
    };
    let context = uint("max_position_embeddings");
    // The project's own models mask their sliding layers themselves.
    if !WINDOWED.contains(&model_type)
        && sliding_layers
        && let Some(w) = window
        && context.is_none_or(|c| w < c)
    {
        object.insert("max_position_embeddings".into(), json!(w));
    }
    match model_type {
        // The project's qwen2 slides the layers `layer_types` names (4.x: those from
        // `max_window_layers` on).
        "qwen2" => {
            let types: Vec<Value> = match get("layer_types") {
                Some(Value::Array(types)) => types.clone(),
                _ => {
                    let first = uint("max_window_layers").unwrap_or(layers);
                    let slides = |l: usize| window.is_some() && l >= first;
                    (0..layers)
                        .map(|l| json!(if slides(l) { "sliding_attention" } else { "full_attention" }))
                        .collect()
                }
            };
            if let Some(t) =
                types.iter().find(|t| !matches!(t.as_str(), Some("sliding_attention" | "full_attention")))
            {
                return Err(refuse(
                    path,
                    "layer_types",
                    format!("names {t}; the engine's qwen2 has sliding_attention and full_attention layers"),
                ));
            }
            if types.len() != layers {
                return Err(refuse(
                    path,
                    "layer_types",
                    format!("names {} layers, not {layers}", types.len()),
                ));
            }
            // Without a sliding layer, no list: the configs of two depths then differ in
            // numbers only (`gate::kernel-class`).
            let slides = types.iter().any(|t| t.as_str() == Some("sliding_attention"));
            match window {
                Some(w) if slides => {
                    object.insert("layer_types".into(), Value::Array(types));
                    object.insert("sliding_window".into(), json!(w));
                }
                _ => {
                    object.remove("layer_types");
                    object.insert("sliding_window".into(), Value::Null);
                }
            }
            object.remove("use_sliding_window");
            object.remove("max_window_layers");
        }
        // candle's qwen3 refuses `use_sliding_window`; the window is the context already.
        "qwen3" => {
            object.insert("use_sliding_window".into(), json!(false));
            object.insert("max_window_layers".into(), json!(layers));
            object.insert("attention_bias".into(), json!(flag("attention_bias")?));
            if get("head_dim").is_none() {
                object.insert("head_dim".into(), json!(hidden / heads));
            }
        }
        "mistral" => {
            object.insert("sliding_window".into(), json!(window));
            object.remove("layer_types");
        }
        "llama" | "granite" => {
            object.remove("sliding_window");
            object.remove("layer_types");
        }
        "olmo2" => {
            object.insert("attention_bias".into(), json!(false));
        }
        // gemma has no window.
        "gemma" => {
            object.insert("tie_word_embeddings".into(), json!(true));
        }
        _ => {}
    }
    // The tie first, for the families that read it.
    let tied = match get("tie_word_embeddings") {
        None => TIED_BY_DEFAULT.contains(&model_type),
        Some(_) => flag("tie_word_embeddings")?,
    };
    object.insert("tie_word_embeddings".into(), json!(tied));
    super::hf_families::translate(path, model_type, config, object)?;

    // What 5.x leaves out and candle's structs require.
    if get("num_key_value_heads").is_none() {
        object.insert("num_key_value_heads".into(), json!(heads));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(model_type: &str) -> Value {
        let mut c = json!({
            "model_type": model_type, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
        });
        if model_type == "qwen3_moe" {
            c["num_experts"] = json!(4);
            c["moe_intermediate_size"] = json!(32);
        }
        if model_type == "deepseek_v2" {
            for (k, v) in
                [("qk_rope_head_dim", 8), ("qk_nope_head_dim", 8), ("v_head_dim", 16), ("kv_lora_rank", 16)]
            {
                c[k] = json!(v);
            }
        }
        c
    }

    fn with(model_type: &str, fields: Value) -> Value {
        let mut c = base(model_type);
        for (k, v) in fields.as_object().expect("an object") {
            c[k] = v.clone();
        }
        c
    }

    fn normalised(c: &Value) -> Value {
        normalise(Path::new("config.json"), c).expect("the config is admitted")
    }

    /// The refusal of `c`: its field and message.
    fn refused(c: &Value) -> (String, String) {
        let e = normalise(Path::new("config.json"), c).expect_err("the config is refused");
        (e.field.to_string(), e.to_string())
    }

    #[test]
    fn the_rope_base_is_read_from_either_spelling() {
        for m in NORMALISED {
            let v5 = with(m, json!({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}));
            assert_eq!(normalised(&v5)["rope_theta"], json!(1e6), "{m}");
            assert!(normalised(&v5).get("rope_parameters").is_none());
            let v4 = with(m, json!({"rope_theta": 5e5, "rope_scaling": null}));
            assert_eq!(normalised(&v4)["rope_theta"], json!(5e5), "{m}");
            assert_eq!(normalised(&base(m))["rope_theta"], json!(10_000.0), "{m}");
        }
        let both = with("qwen2", json!({"rope_theta": 1e6, "rope_parameters": {"rope_theta": 1e6}}));
        assert_eq!(normalised(&both)["rope_theta"], json!(1e6));
    }

    #[test]
    fn rope_fields_the_engine_does_not_honour_are_refused_by_name() {
        let cases = [
            (
                json!({"rope_theta": 1e6, "rope_parameters": {"rope_theta": 1e4}}),
                "rope_parameters",
                "which one",
            ),
            (
                json!({"rope_parameters": {"rope_theta": 1e6, "rope_type": "dynamic", "factor": 4.0}}),
                "rope_parameters",
                "`dynamic`",
            ),
            (json!({"rope_parameters": {"rope_theta": -1.0}}), "rope_parameters", "not a finite positive"),
            (json!({"rope_parameters": "1e6"}), "rope_parameters", "not an object"),
            (json!({"partial_rotary_factor": 0.5}), "partial_rotary_factor", "whole heads"),
            (
                json!({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.25}}),
                "rope_parameters",
                "whole heads",
            ),
        ];
        for m in NORMALISED {
            for (fields, field, words) in &cases {
                if PARTIAL_ROTARY.contains(m) && words == &"whole heads" {
                    continue;
                }
                if SCALED_ROPE.contains(m) && words == &"`dynamic`" {
                    assert!(normalised(&with(m, fields.clone())).get("rope_scaling").is_none(), "{m}");
                    continue;
                }
                let (got, message) = refused(&with(m, fields.clone()));
                assert_eq!(&got, field, "{m} {fields}");
                assert!(message.contains(words), "{m}: {message}");
            }
        }
    }

    #[test]
    fn rope_scalings_reach_the_decoders_families_complete() {
        let llama3 = json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}});
        let c = normalised(&with("llama", llama3.clone()));
        assert_eq!(c["rope_scaling"]["rope_type"], json!("llama3"));
        assert_eq!(c["rope_scaling"]["factor"], json!(8.0));
        assert_eq!(c["rope_theta"], json!(5e5));
        // A family whose model takes no scaling refuses it by name.
        assert_eq!(refused(&with("olmo2", llama3)).0, "rope_parameters");
        let incomplete = json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}});
        assert!(refused(&with("llama", incomplete)).1.contains("low_freq_factor"));
        let linear = normalised(&with("llama", json!({"rope_scaling": {"type": "linear", "factor": 4.0}})));
        assert_eq!(linear["rope_scaling"], json!({"rope_type": "linear", "factor": 4.0}));
        assert_eq!(refused(&with("llama", json!({"rope_scaling": {"type": "linear"}}))).0, "rope_scaling");
        // YaRN as transformers completes it: the factor's attention factor 0.1 ln 4 + 1, β 32
        // and 1, truncation; mscale over mscale_all_dim where both are stated.
        let yarn = normalised(&with(
            "qwen2",
            json!({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}}),
        ));
        let y = &yarn["rope_scaling"];
        assert_eq!(
            (y["rope_type"].clone(), y["original_max_position_embeddings"].clone()),
            (json!("yarn"), json!(32))
        );
        assert!((y["attention_factor"].as_f64().expect("a number") - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        assert_eq!(
            (y["beta_fast"].clone(), y["beta_slow"].clone(), y["truncate"].clone()),
            (json!(32.0), json!(1.0), json!(true))
        );
        let m = normalised(&with(
            "mistral",
            json!({"rope_parameters": {"rope_type": "yarn", "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707,
                "original_max_position_embeddings": 16}}),
        ));
        assert_eq!(m["rope_scaling"]["attention_factor"], json!(1.0));
        // Without an original context of its own, YaRN stretches the config's.
        let silent = normalised(&with("llama", json!({"rope_scaling": {"type": "yarn", "factor": 2.0}})));
        assert_eq!(silent["rope_scaling"]["original_max_position_embeddings"], json!(128));
        // Dynamic NTK is the plain rope within the context, which the session never passes.
        let dynamic = normalised(&with("llama", json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}})));
        assert!(dynamic.get("rope_scaling").is_none() && dynamic["max_position_embeddings"] == json!(128));
        let bad = json!({"rope_scaling": {"type": "yarn", "factor": 2.0, "truncate": "no"}});
        assert!(refused(&with("llama", bad)).1.contains("truncate"));
    }

    #[test]
    fn a_null_sliding_window_is_no_window() {
        let q = normalised(&with("qwen2", json!({"sliding_window": null, "use_sliding_window": false})));
        assert_eq!(
            (q["sliding_window"].clone(), q["max_position_embeddings"].clone()),
            (Value::Null, json!(128))
        );
        assert_eq!(q.get("layer_types"), None);
        let m = normalised(&with("mistral", json!({"sliding_window": null})));
        assert_eq!(
            (m["sliding_window"].clone(), m["max_position_embeddings"].clone()),
            (Value::Null, json!(128))
        );
    }

    #[test]
    fn a_narrower_window_is_the_models_or_the_context() {
        // The project's mistral and qwen2 mask their sliding layers: the context stays whole.
        let m = normalised(&with("mistral", json!({"sliding_window": 32})));
        assert_eq!(
            (m["max_position_embeddings"].clone(), m["sliding_window"].clone()),
            (json!(128), json!(32))
        );
        // qwen2 slides only where the config says so: the layers from max_window_layers on.
        let off = normalised(&with("qwen2", json!({"sliding_window": 32, "use_sliding_window": false})));
        assert_eq!(
            (off["sliding_window"].clone(), off["max_position_embeddings"].clone()),
            (Value::Null, json!(128))
        );
        let on = normalised(&with(
            "qwen2",
            json!({"sliding_window": 32, "use_sliding_window": true, "max_window_layers": 1}),
        ));
        assert_eq!(on["layer_types"], json!(["full_attention", "sliding_attention"]));
        assert_eq!(
            (on["sliding_window"].clone(), on["max_position_embeddings"].clone()),
            (json!(32), json!(128))
        );
        let typed = json!({"sliding_window": 32, "use_sliding_window": true,
            "layer_types": ["sliding_attention", "full_attention"]});
        assert_eq!(
            normalised(&with("qwen2", typed))["layer_types"],
            json!(["sliding_attention", "full_attention"])
        );
        assert_eq!(refused(&with("qwen2", json!({"layer_types": "all"}))).0, "layer_types");
        assert_eq!(refused(&with("qwen2", json!({"layer_types": ["full_attention"]}))).0, "layer_types");
        // llama has no window: a stray one is not read.
        let l = normalised(&with("llama", json!({"sliding_window": 32})));
        assert_eq!((l.get("sliding_window"), l["max_position_embeddings"].clone()), (None, json!(128)));
        // candle's qwen3 cannot mask: its narrower window becomes the context.
        let q3 = normalised(&with("qwen3", json!({"sliding_window": 32, "use_sliding_window": true})));
        assert_eq!(q3["max_position_embeddings"], json!(32));
    }

    #[test]
    fn head_dim_biases_and_activations_are_honoured_or_refused() {
        assert_eq!(normalised(&with("llama", json!({"head_dim": 16})))["head_dim"], json!(16));
        // llama's and qwen2's heads as wide as `head_dim` says, as transformers reads it.
        assert_eq!(normalised(&with("llama", json!({"head_dim": 32})))["head_dim"], json!(32));
        assert_eq!(normalised(&with("qwen2", json!({"head_dim": 8})))["head_dim"], json!(8));
        assert_eq!(refused(&with("granite", json!({"head_dim": 32}))).0, "head_dim");
        assert_eq!(normalised(&with("qwen3", json!({"head_dim": 32})))["head_dim"], json!(32));
        assert_eq!(normalised(&base("qwen3"))["head_dim"], json!(16));
        assert_eq!(normalised(&with("mistral", json!({"head_dim": 32})))["head_dim"], json!(32));
        assert_eq!(
            normalised(&with("llama", json!({"attention_bias": true, "mlp_bias": true})))["mlp_bias"],
            json!(true)
        );
        assert_eq!(refused(&with("mistral", json!({"attention_bias": true}))).0, "attention_bias");
        assert_eq!(refused(&with("mistral", json!({"mlp_bias": true}))).0, "mlp_bias");
        assert!(normalise(Path::new("c"), &with("qwen2", json!({"attention_bias": true}))).is_ok());
        assert_eq!(refused(&with("llama", json!({"hidden_act": "gelu"}))).0, "hidden_act");
        assert_eq!(refused(&with("qwen2", json!({"hidden_act": "swishy"}))).0, "hidden_act");
        assert_eq!(normalised(&with("mistral", json!({"hidden_act": "gelu"})))["hidden_act"], json!("gelu"));
    }

    #[test]
    fn a_config_silent_on_its_context_has_transformers_default() {
        for (m, want) in [("llama", 2048), ("qwen2", 32_768), ("mistral", 131_072), ("phi3", 4096)] {
            let mut c = base(m);
            c.as_object_mut().expect("an object").remove("max_position_embeddings");
            assert_eq!(normalised(&c)["max_position_embeddings"], json!(want), "{m}");
        }
    }

    #[test]
    fn what_transformers_5_leaves_out_is_filled_in() {
        let mut c = base("qwen2");
        c.as_object_mut().expect("an object").remove("num_key_value_heads");
        let q = normalised(&c);
        assert_eq!(q["num_key_value_heads"], json!(4));
        assert_eq!(q["tie_word_embeddings"], json!(false));
        assert_eq!(q["hidden_act"], json!("silu"));
        assert_eq!(q.get("layer_types"), None);
        let tied = normalised(&with("mistral", json!({"tie_word_embeddings": true})));
        assert_eq!(tied["tie_word_embeddings"], json!(true));
    }

    #[test]
    fn gemma_runs_the_activation_either_version_names() {
        let v4 = normalised(&with(
            "gemma",
            json!({"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}),
        ));
        assert_eq!(
            (v4["hidden_activation"].clone(), v4["hidden_act"].clone()),
            (json!("gelu_pytorch_tanh"), Value::Null)
        );
        let legacy = normalised(&with("gemma", json!({"hidden_act": "gelu"})));
        assert_eq!(legacy["hidden_activation"], json!("gelu_pytorch_tanh"));
        assert_eq!(normalised(&base("gemma"))["tie_word_embeddings"], json!(true));
        assert_eq!(refused(&with("gemma", json!({"tie_word_embeddings": false}))).0, "tie_word_embeddings");
        assert_eq!(refused(&with("gemma", json!({"attention_bias": true}))).0, "attention_bias");
        assert_eq!(
            normalised(&with("gemma2", json!({"attention_bias": true})))["attention_bias"],
            json!(true)
        );
        assert_eq!(
            refused(&with("gemma", json!({"use_bidirectional_attention": true}))).0,
            "use_bidirectional_attention"
        );
    }

    #[test]
    fn the_tracer_is_told_what_it_does_not_apply() {
        let p = Path::new("config.json");
        assert_eq!(untraced(p, &base("llama")), None);
        let scaled = with("llama", json!({"rope_scaling": {"type": "linear", "factor": 4.0}}));
        assert!(untraced(p, &scaled).is_some_and(|why| why.contains("linear")));
        let window = with("mistral", json!({"sliding_window": 32}));
        assert!(untraced(p, &window).is_some_and(|why| why.contains("sliding window of 32")));
        assert_eq!(untraced(p, &with("mistral", json!({"sliding_window": 4096}))), None);
        // candle's qwen3 has its window as its context: the tracer never sees past it.
        assert_eq!(
            untraced(p, &with("qwen3", json!({"sliding_window": 32, "use_sliding_window": true}))),
            None
        );
        assert!(
            untraced(p, &with("granite", json!({"head_dim": 32})))
                .is_some_and(|why| why.contains("head_dim"))
        );
    }

    #[test]
    fn other_architectures_pass_unchanged() {
        let c = with("mamba", json!({"rope_parameters": {"rope_type": "yarn"}}));
        assert_eq!(normalised(&c), c);
    }
}
