//! The rope scalings the engine implements, completed from config.json as transformers
//! completes them (its defaults, the factors it derives), for the model that runs them: the
//! project's decoder's linear, llama3 and YaRN scalings, gemma3's base per layer type (and
//! linear scaling), phi3's LongRoPE, deepseek_v2's YaRN. A parameter the model would not take
//! the same way is refused by name.

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

/// The original context a llama3, YaRN or LongRoPE scaling stretches: as transformers 5 reads
/// it, a top-level `original_max_position_embeddings` first (Phi-3 writes it there), then the
/// scaling's own, then the context.
fn original_context(config: &Value, p: &Map<String, Value>) -> Option<u64> {
    let read = |v: Option<&Value>| v.and_then(Value::as_u64).filter(|n| *n > 0);
    read(config.get("original_max_position_embeddings"))
        .or_else(|| read(p.get("original_max_position_embeddings")))
        .or_else(|| read(config.get("max_position_embeddings")))
}

/// The scaling `rope` names, for the project's decoder (`rope_scaling`, tagged by `rope_type`):
/// `linear`, `llama3` or `yarn`, every parameter the rotary embedding reads filled in as
/// transformers fills it; another type, or a parameter out of range, is refused by name.
pub(super) fn decoder_scaling(
    path: &Path,
    config: &Value,
    rope: &Rope,
    model_type: &str,
) -> Result<Value, ConfigError> {
    let p = rope.parameters.clone().unwrap_or_default();
    let positive = |field: &str| -> Result<Option<f64>, ConfigError> {
        match p.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().filter(|x| x.is_finite() && *x > 0.0).map(Some).ok_or_else(|| {
                refuse(path, rope.field, format!("states `{field}` {v}, not a finite positive number"))
            }),
        }
    };
    let needed = |field: &str| -> Result<f64, ConfigError> {
        positive(field)?.ok_or_else(|| {
            refuse(path, rope.field, format!("is of type {} but has no number `{field}`", rope.kind))
        })
    };
    match rope.kind.as_str() {
        "linear" => Ok(json!({"rope_type": "linear", "factor": needed("factor")?})),
        "llama3" => {
            let (low, high) = (needed("low_freq_factor")?, needed("high_freq_factor")?);
            if high <= low {
                return Err(refuse(
                    path,
                    rope.field,
                    format!("states high_freq_factor {high}, not above low_freq_factor {low}"),
                ));
            }
            let original = match config.get("original_max_position_embeddings").and_then(Value::as_f64) {
                Some(n) if n > 0.0 => n,
                _ => needed("original_max_position_embeddings")?,
            };
            Ok(json!({"rope_type": "llama3", "factor": needed("factor")?, "low_freq_factor": low,
                "high_freq_factor": high, "original_max_position_embeddings": original}))
        }
        "yarn" => {
            let original = original_context(config, &p).ok_or_else(|| {
                refuse(path, rope.field, "is of type `yarn` but states no original_max_position_embeddings")
            })?;
            let context = config.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(original);
            let factor = positive("factor")?.unwrap_or(context as f64 / original as f64);
            let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor =
                match (positive("attention_factor")?, positive("mscale")?, positive("mscale_all_dim")?) {
                    (Some(a), ..) => a,
                    (None, Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                };
            let truncate = match p.get("truncate") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(refuse(
                        path,
                        rope.field,
                        format!("states `truncate` {v}, not true or false"),
                    ));
                }
            };
            Ok(json!({"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original,
                "beta_fast": positive("beta_fast")?.unwrap_or(32.0), "beta_slow": positive("beta_slow")?.unwrap_or(1.0),
                "attention_factor": attention_factor, "truncate": truncate}))
        }
        other => Err(refuse(
            path,
            rope.field,
            format!(
                "asks for rope scaling of type `{other}`, which the engine's {model_type} does not implement"
            ),
        )),
    }
}

/// deepseek_v2's YaRN in candle's spelling, with transformers' defaults (β 32 and 1; the
/// attention factor from `mscale` over `mscale_all_dim` only when both are stated, else from
/// the factor alone); what candle's model cannot take the same way is refused by name.
pub(super) fn deepseek_yarn(path: &Path, config: &Value, rope: &Rope) -> Result<Value, ConfigError> {
    let p = rope.parameters.clone().unwrap_or_default();
    let num = |field: &str| p.get(field).and_then(Value::as_f64).filter(|x| x.is_finite());
    for field in ["attention_factor", "truncate"] {
        if p.get(field).is_some_and(|v| !v.is_null() && *v != Value::Bool(true)) {
            return Err(refuse(
                path,
                rope.field,
                format!("states yarn's `{field}`, which the engine's deepseek_v2 does not take"),
            ));
        }
    }
    let original = original_context(config, &p).ok_or_else(|| {
        refuse(path, rope.field, "is of type `yarn` but states no original_max_position_embeddings")
    })?;
    let context = config.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(original);
    let factor = num("factor").unwrap_or(context as f64 / original as f64);
    let rope_dim = config.get("qk_rope_head_dim").and_then(Value::as_u64);
    if let Some(d) = config.get("head_dim").and_then(Value::as_u64)
        && Some(d) != rope_dim
    {
        return Err(refuse(
            path,
            "head_dim",
            format!(
                "is {d}, not qk_rope_head_dim: transformers' yarn would scale {d} units, the engine's rotates qk_rope_head_dim"
            ),
        ));
    }
    let (mscale, mscale_all_dim) =
        match (num("mscale").filter(|m| *m != 0.0), num("mscale_all_dim").filter(|m| *m != 0.0)) {
            (Some(m), Some(all)) => (m, all),
            _ => (1.0, 0.0),
        };
    Ok(json!({
        "type": "yarn", "original_max_position_embeddings": original, "factor": factor,
        "beta_fast": num("beta_fast").filter(|b| *b != 0.0).unwrap_or(32.0),
        "beta_slow": num("beta_slow").filter(|b| *b != 0.0).unwrap_or(1.0),
        "mscale": mscale, "mscale_all_dim": mscale_all_dim,
    }))
}

/// phi3's LongRoPE, complete: both factor lists, the original context (from the rope
/// parameters or, as 4.x writes it, the config), and the attention factor transformers derives
/// from the context's growth when none is stated.
pub(super) fn longrope(path: &Path, config: &Value, rope: &Rope) -> Result<Value, ConfigError> {
    let p = rope.parameters.clone().unwrap_or_default();
    let factors = |field: &str| -> Result<Vec<f64>, ConfigError> {
        let list = p.get(field).and_then(Value::as_array).ok_or_else(|| {
            refuse(path, rope.field, format!("is of type longrope but has no list `{field}`"))
        })?;
        list.iter()
            .map(|v| v.as_f64().filter(|x| x.is_finite() && *x > 0.0))
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| {
                refuse(path, rope.field, format!("has a `{field}` that is not all positive numbers"))
            })
    };
    let (short, long) = (factors("short_factor")?, factors("long_factor")?);
    let original = config
        .get("original_max_position_embeddings")
        .or_else(|| p.get("original_max_position_embeddings"))
        .and_then(Value::as_u64)
        .filter(|n| *n > 1)
        .ok_or_else(|| {
            refuse(
                path,
                "original_max_position_embeddings",
                "is missing; longrope needs the original context",
            )
        })?;
    let context = config.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(original);
    let factor = p.get("factor").and_then(Value::as_f64).unwrap_or(context as f64 / original as f64);
    let attention_factor = match p.get("attention_factor").and_then(Value::as_f64) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(json!({
        "short_factor": short, "long_factor": long,
        "original_max_position_embeddings": original, "attention_factor": attention_factor,
    }))
}
