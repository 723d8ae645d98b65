//! Rope scaling in GGUF, both ways, as llama.cpp's converter writes it and llama.cpp runs it:
//! the `{arch}.rope.scaling.*` keys of linear and YaRN scaling (llama, mistral, granite, qwen2;
//! deepseek2's YaRN with its `yarn_log_multiplier`; gemma3's linear scaling of its global
//! layers), and phi3's LongRoPE as the
//! `rope_factors_long`/`rope_factors_short` tensors with its `rope.scaling.attn_factor`.
//! llama3's scaling is a tensor too (`read::ROPE_FACTORS`), read apart.
//!
//! One difference stays, the engine's and transformers' own: llama.cpp picks LongRoPE's long
//! factors for a whole context past the original, the engine (as transformers) for a sequence
//! past it; the factors, the original context and the attention factor are the file's.
//!
//! llama.cpp reads the type (absent: linear), the factor (absent or 0: none), the original
//! context (absent: the context) and `attn_factor`; for these architectures it reads no YaRN β,
//! extrapolation or attention factor key, running β 32 and 1 and YaRN's attention factor
//! `(0.1 · ln factor + 1) · attn_factor`. A file stating a key the engine would run otherwise
//! than llama.cpp is refused by name ([`refused`]), and so is a config.json whose scaling
//! llama.cpp would run otherwise than transformers ([`converter_keys`]). It reads no file.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::{Value as Json, json};

/// The tensors in which llama.cpp's converter keeps phi3's LongRoPE: one factor per rotating
/// pair, the long ones for a context past the original, the short ones within it.
pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";
pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";

/// YaRN's β llama.cpp runs for the architectures here (its defaults: none of them reads a key).
const BETA_FAST: f64 = 32.0;
const BETA_SLOW: f64 = 1.0;

/// The scaling types the engine reads from the keys of a GGUF architecture.
fn read_types(arch: &str) -> &'static [&'static str] {
    match arch {
        "llama" | "qwen2" | "granite" => &["linear", "yarn"],
        "deepseek2" => &["yarn"],
        // llama.cpp's gemma3 scales its global layers only (its sliding layers' own scale is 1),
        // as transformers scales the full-attention layers.
        "gemma3" => &["linear"],
        _ => &[],
    }
}

/// YaRN's attention factor for a scale (transformers' and llama.cpp's `get_mscale`).
fn mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 }
}

/// A file's rope scaling keys, as llama.cpp reads them.
struct Stated {
    /// The type key, if any.
    kind: Option<String>,
    /// The factor (absent or 0: none).
    factor: Option<f64>,
    /// The key it is stated in.
    factor_key: String,
    original: Option<u32>,
    attn_factor: Option<f64>,
    log_multiplier: Option<f64>,
}

impl Stated {
    fn of(md: &HashMap<String, Value>, arch: &str) -> Self {
        let get = |suffix: &str| md.get(&format!("{arch}.rope.scaling.{suffix}"));
        let float = |suffix: &str| get(suffix).and_then(|v| v.to_f32().ok()).map(f64::from);
        // llama.cpp reads the older `rope.scale_linear` where the factor key is absent.
        let older = md.get(&format!("{arch}.rope.scale_linear")).and_then(|v| v.to_f32().ok()).map(f64::from);
        Stated {
            kind: get("type").and_then(|v| v.to_string().ok()).cloned(),
            // llama.cpp reads the older `rope.scale_linear` where the factor key is absent.
            factor: float("factor").or(older).filter(|f| *f != 0.0),
            factor_key: match float("factor") {
                None if older.is_some() => format!("{arch}.rope.scale_linear"),
                _ => format!("{arch}.rope.scaling.factor"),
            },
            original: get("original_context_length").and_then(|v| v.to_u32().ok()),
            attn_factor: float("attn_factor"),
            log_multiplier: float("yarn_log_multiplier").filter(|m| *m != 0.0),
        }
    }

    /// The type llama.cpp runs: the key's, else linear where a factor scales; `None`: unscaled.
    fn scaling(&self) -> Option<&str> {
        match (self.kind.as_deref(), self.factor) {
            (Some("none"), _) => None,
            (Some(kind), _) => Some(kind),
            (None, Some(f)) if f != 1.0 => Some("linear"),
            (None, _) => None,
        }
    }
}

/// The scaling type a file of `arch` states in keys as llama.cpp runs it (`linear` for a bare
/// factor), `None` where it scales nothing.
pub(super) fn stated_scaling(md: &HashMap<String, Value>, arch: &str) -> Option<String> {
    Stated::of(md, arch).scaling().map(str::to_string)
}

/// The rope scaling keys of `arch` the engine would not run as llama.cpp runs them: the first,
/// named, with why. phi3's factor tensors are checked with the tensors (`check.rs`).
pub(super) fn refused(md: &HashMap<String, Value>, arch: &str) -> Option<String> {
    let key = |suffix: &str| format!("{arch}.rope.scaling.{suffix}");
    let s = Stated::of(md, arch);
    let scaling = s.scaling();
    if let Some(kind) = scaling
        && !read_types(arch).contains(&kind)
    {
        // Named by the key that states it: the type, or a factor without one (linear).
        return Some(match &s.kind {
            Some(_) => format!(
                "`{}` is `{kind}`; the engine does not read a {arch} GGUF's rope scaling of that type",
                key("type")
            ),
            None => format!(
                "`{}` is {} (linear, llama.cpp's default type); the engine does not read a {arch} GGUF's linear rope scaling",
                s.factor_key,
                s.factor.unwrap_or(1.0)
            ),
        });
    }
    if let Some(f) = s.factor.filter(|f| !(f.is_finite() && *f >= 1.0)) {
        return Some(format!(
            "`{}` is {f}; the engine scales by a finite factor of at least 1",
            s.factor_key
        ));
    }
    let yarn = scaling == Some("yarn");
    // Keys llama.cpp's graph of these architectures does not read: it runs its own value.
    for (suffix, runs) in [
        ("yarn_beta_fast", BETA_FAST),
        ("yarn_beta_slow", BETA_SLOW),
        ("yarn_attn_factor", 1.0),
        ("yarn_ext_factor", if yarn { 1.0 } else { 0.0 }),
    ] {
        if let Some(v) = md.get(&key(suffix)).and_then(|v| v.to_f32().ok()).map(f64::from)
            && v != runs
        {
            return Some(format!(
                "`{}` is {v}; llama.cpp's {arch} does not read it (it runs {runs}), so the file states a rope llama.cpp does not run",
                key(suffix)
            ));
        }
    }
    // `attn_factor` scales YaRN's attention factor and phi3's LongRoPE; the engine's linear
    // scaling and deepseek2 (whose attention llama.cpp pre-scales) take none.
    if let Some(a) = s.attn_factor.filter(|a| *a != 1.0)
        && !(yarn && arch != "deepseek2")
        && arch != "phi3"
    {
        return Some(format!(
            "`{}` is {a}; the engine's {arch} takes no attention factor with {} rope",
            key("attn_factor"),
            scaling.map_or_else(|| "unscaled".to_string(), |k| format!("{k}-scaled"))
        ));
    }
    match (arch, s.log_multiplier) {
        // llama.cpp's deepseek2 takes `mscale` and `mscale_all_dim` alike from it; without it,
        // it scales attention as no transformers config does.
        ("deepseek2", None) if yarn => Some(format!(
            "`{}` is `yarn` without `{}`; llama.cpp's deepseek2 then scales attention as transformers' deepseek_v2 never does",
            key("type"),
            key("yarn_log_multiplier")
        )),
        ("deepseek2", Some(_)) if yarn => None,
        (_, Some(m)) => Some(format!(
            "`{}` is {m}; llama.cpp's {arch} reads it for deepseek2's YaRN only",
            key("yarn_log_multiplier")
        )),
        _ => None,
    }
}

/// The rope scaling of a file of `arch` whose [`refused`] passed, as the config.json field
/// transformers reads (`rope_scaling`), complete as llama.cpp runs it: `None` where the file
/// scales nothing the keys state (phi3's LongRoPE is its tensors, [`longrope`]).
pub(super) fn scaling(md: &HashMap<String, Value>, arch: &str, context: Option<u32>) -> Option<Json> {
    let s = Stated::of(md, arch);
    let factor = s.factor.unwrap_or(1.0);
    let original = s.original.or(context);
    match (arch, s.scaling()?) {
        ("llama" | "qwen2" | "granite" | "gemma3", "linear") => {
            Some(json!({"rope_type": "linear", "factor": factor}))
        }
        ("llama" | "qwen2" | "granite", "yarn") => Some(json!({
            "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original,
            "beta_fast": BETA_FAST, "beta_slow": BETA_SLOW,
            "attention_factor": mscale(factor, 1.0) * s.attn_factor.unwrap_or(1.0),
        })),
        // The converter writes 0.1 · mscale_all_dim; llama.cpp takes mscale to be the same.
        ("deepseek2", "yarn") => {
            let m = s.log_multiplier? / 0.1;
            Some(json!({
                "type": "yarn", "factor": factor, "original_max_position_embeddings": original,
                "beta_fast": BETA_FAST, "beta_slow": BETA_SLOW, "mscale": m, "mscale_all_dim": m,
            }))
        }
        _ => None,
    }
}

/// phi3's LongRoPE from its factor tensors (`[long, short]`), as the config.json field
/// transformers reads: the original context the file states (else its context) and the
/// attention factor it states (else llama.cpp's 1).
pub fn longrope(md: &HashMap<String, Value>, long: &[f32], short: &[f32]) -> Json {
    let get = |key: &str| md.get(key);
    let original = get("phi3.rope.scaling.original_context_length")
        .or_else(|| get("phi3.context_length"))
        .and_then(|v| v.to_u32().ok());
    let attention = get("phi3.rope.scaling.attn_factor").and_then(|v| v.to_f32().ok()).map_or(1.0, f64::from);
    json!({
        "rope_type": "longrope", "long_factor": long, "short_factor": short,
        "original_max_position_embeddings": original, "attention_factor": attention,
    })
}

/// What a config.json's rope scaling becomes in a GGUF of `arch`, as llama.cpp's converter
/// writes it from the config: the `{arch}.rope.scaling.*` keys (without the prefix) and, for
/// phi3's LongRoPE, its factor tensors (`[long, short]`). `Err`: a field llama.cpp would run
/// otherwise than transformers, or a scaling the writer does not carry, named; llama3's
/// scaling (a llama's factors, `write.rs`) and none are `Ok` with nothing.
pub(super) fn converter_keys(config: &Json, arch: &str) -> Result<ConverterRope, String> {
    let mut out = ConverterRope::default();
    // transformers 5's `rope_parameters`, else 4.x's `rope_scaling`, as the converter reads them
    // (gemma3's per layer type: its full layers').
    let (field, p) = match ["rope_parameters", "rope_scaling"]
        .into_iter()
        .find_map(|f| config.get(f).filter(|v| v.is_object()).map(|v| (f, v)))
    {
        Some((f, p)) => (f, p.get("full_attention").unwrap_or(p)),
        None => return Ok(out),
    };
    fn kind_of(p: &Json) -> &str {
        p.get("rope_type").or_else(|| p.get("type")).and_then(Json::as_str).unwrap_or("default")
    }
    let kind = kind_of(p);
    // transformers takes a typed `rope_scaling` where `rope_parameters` is untyped; the
    // converter reads `rope_parameters` alone.
    if field == "rope_parameters"
        && let Some(other) = config.get("rope_scaling").filter(|v| v.is_object()).map(kind_of)
        && other != "default"
        && other != kind
    {
        return Err(format!(
            "`rope_scaling` is of type {other} where `rope_parameters` is {kind} (the converter reads `rope_parameters` only)"
        ));
    }
    let num = |k: &str| p.get(k).and_then(Json::as_f64);
    let refuse = |why: String| Err(format!("`{field}` {why}"));
    // The original context: the converter takes the scaling's own, else the config's top-level
    // one (mirrored in); transformers the top-level one first. Both stated, they must agree.
    let top = config.get("original_max_position_embeddings").and_then(Json::as_u64);
    let own = p.get("original_max_position_embeddings").and_then(Json::as_u64);
    if let (Some(top), Some(own)) = (top, own)
        && top != own
    {
        return refuse(format!(
            "states original_max_position_embeddings {own} and config.json's top level {top} (the converter writes the first, transformers reads the second)"
        ));
    }
    let original = own.or(top);
    match (kind, arch) {
        // llama3's is a llama's tensor (`write.rs`); dynamic NTK is the plain rope within the
        // context, for which the converter writes nothing.
        ("default" | "llama3" | "dynamic", _) => Ok(out),
        ("linear" | "yarn", "llama" | "qwen2" | "granite") | ("yarn", "deepseek2") | ("linear", "gemma3") => {
            let Some(factor) = num("factor") else {
                return refuse(format!(
                    "is of type {kind} with no `factor` (the converter then writes no scaling)"
                ));
            };
            out.keys.push(("type", Value::String(kind.into())));
            out.keys.push(("factor", Value::F32(factor as f32)));
            if kind == "linear" {
                return Ok(out);
            }
            let Some(original) = original else {
                return refuse(
                    "is of type yarn with no `original_max_position_embeddings` (the converter requires it)"
                        .into(),
                );
            };
            out.keys.push(("original_context_length", Value::U32(original as u32)));
            // What llama.cpp's graph does not read, it runs as its default: a config stating
            // another value would run otherwise (the converter writes β as stated).
            for (k, default) in [("beta_fast", BETA_FAST), ("beta_slow", BETA_SLOW)] {
                match num(k) {
                    Some(v) if v != default => {
                        return refuse(format!(
                            "states yarn's `{k}` {v} (llama.cpp's {arch} runs {default} whatever the file says)"
                        ));
                    }
                    Some(v) => out.keys.push((
                        if k == "beta_fast" { "yarn_beta_fast" } else { "yarn_beta_slow" },
                        Value::F32(v as f32),
                    )),
                    None => {}
                }
            }
            for k in ["attention_factor", "attn_factor", "extrapolation_factor"] {
                if p.get(k).is_some_and(|v| !v.is_null()) {
                    return refuse(format!("states yarn's `{k}` (llama.cpp's {arch} does not read it)"));
                }
            }
            if p.get("truncate").is_some_and(|v| *v != Json::Bool(true) && !v.is_null()) {
                return refuse(format!("states yarn's `truncate` (llama.cpp's {arch} always truncates)"));
            }
            if arch == "deepseek2" {
                // llama.cpp takes mscale to be mscale_all_dim, which the converter writes as
                // `0.1 · mscale_all_dim`; without it, llama.cpp scales attention otherwise.
                let (m, all) = (num("mscale"), num("mscale_all_dim"));
                match (m, all) {
                    (Some(m), Some(all)) if m == all && all != 0.0 => {
                        out.keys.push(("yarn_log_multiplier", Value::F32((0.1 * all) as f32)));
                    }
                    _ => {
                        return refuse(format!(
                            "states yarn's mscale {m:?} and mscale_all_dim {all:?} (llama.cpp's deepseek2 runs transformers' attention only where both are stated and equal)"
                        ));
                    }
                }
            }
            Ok(out)
        }
        ("longrope" | "su", "phi3") => {
            let factors = |k: &str| -> Option<Vec<f32>> {
                p.get(k)?.as_array()?.iter().map(|v| v.as_f64().map(|x| x as f32)).collect()
            };
            let (Some(long), Some(short)) = (factors("long_factor"), factors("short_factor")) else {
                return refuse(
                    "is of type longrope without both `long_factor` and `short_factor` lists".into(),
                );
            };
            if p.get("attention_factor").is_some_and(|v| !v.is_null()) {
                return refuse(
                    "states longrope's `attention_factor` (the converter writes its own from the context's growth)"
                        .into(),
                );
            }
            let context = config.get("max_position_embeddings").and_then(Json::as_f64);
            let (Some(original), Some(context)) = (original.map(|o| o as f64), context) else {
                return refuse("is of type longrope without the original and full contexts".into());
            };
            // Phi3MiniModel's attention factor, from the context's growth.
            let scale = context / original;
            let attention = if scale > 1.0 { (1.0 + scale.ln() / original.ln()).sqrt() } else { 1.0 };
            out.keys.push(("attn_factor", Value::F32(attention as f32)));
            out.longrope = Some([long, short]);
            Ok(out)
        }
        (other, _) => refuse(format!(
            "asks for rope scaling of type `{other}`, which the writer does not carry for a GGUF {arch}"
        )),
    }
}

/// [`converter_keys`]' answer.
#[derive(Debug, Default)]
pub(super) struct ConverterRope {
    /// The `{arch}.rope.scaling.*` keys, without the prefix, in the converter's order.
    pub(super) keys: Vec<(&'static str, Value)>,
    /// phi3's LongRoPE factors, `[long, short]`.
    pub(super) longrope: Option<[Vec<f32>; 2]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, Value)]) -> HashMap<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn shown(keys: &[(&str, Value)]) -> Vec<String> {
        keys.iter().map(|(k, v)| format!("{k} {v:?}")).collect()
    }

    fn text(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn the_type_key_is_read_and_one_the_engine_does_not_run_is_refused_by_name() {
        let linear = md(&[
            ("llama.rope.scaling.type", text("linear")),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
        ]);
        assert_eq!(refused(&linear, "llama"), None);
        assert_eq!(scaling(&linear, "llama", Some(128)), Some(json!({"rope_type": "linear", "factor": 4.0})));
        // "none" scales nothing, whatever the factor; no type with a factor is llama.cpp's linear.
        let none =
            md(&[("qwen2.rope.scaling.type", text("none")), ("qwen2.rope.scaling.factor", Value::F32(4.0))]);
        assert_eq!((refused(&none, "qwen2"), scaling(&none, "qwen2", None)), (None, None));
        let bare = md(&[("qwen2.rope.scaling.factor", Value::F32(2.0))]);
        assert_eq!(scaling(&bare, "qwen2", None).unwrap()["rope_type"], json!("linear"));
        for (arch, kind, why) in [
            ("qwen3", "yarn", "`qwen3.rope.scaling.type` is `yarn`"),
            ("gemma3", "yarn", "`gemma3.rope.scaling.type` is `yarn`"),
            ("phi3", "longrope", "`phi3.rope.scaling.type` is `longrope`"),
            ("deepseek2", "linear", "`deepseek2.rope.scaling.type` is `linear`"),
            ("llama", "longrope", "`llama.rope.scaling.type` is `longrope`"),
        ] {
            let file = md(&[(&format!("{arch}.rope.scaling.type"), text(kind))]);
            assert!(
                refused(&file, arch).is_some_and(|w| w.contains(why)),
                "{arch} {kind}: {:?}",
                refused(&file, arch)
            );
        }
        let bare = md(&[("qwen3.rope.scaling.factor", Value::F32(4.0))]);
        assert!(refused(&bare, "qwen3").is_some_and(|w| w.contains("`qwen3.rope.scaling.factor` is 4")));
        // The older spelling of the factor, which llama.cpp still reads.
        let older = md(&[("llama.rope.scale_linear", Value::F32(2.0))]);
        assert_eq!(scaling(&older, "llama", None), Some(json!({"rope_type": "linear", "factor": 2.0})));
        let older = md(&[("qwen3.rope.scale_linear", Value::F32(2.0))]);
        assert!(refused(&older, "qwen3").is_some_and(|w| w.contains("`qwen3.rope.scale_linear` is 2")));
    }

    #[test]
    fn the_factor_is_read_and_one_below_1_refused() {
        let file = md(&[
            ("granite.rope.scaling.type", text("linear")),
            ("granite.rope.scaling.factor", Value::F32(8.0)),
        ]);
        assert_eq!(scaling(&file, "granite", None).unwrap()["factor"], json!(8.0));
        let shrink = md(&[
            ("llama.rope.scaling.type", text("linear")),
            ("llama.rope.scaling.factor", Value::F32(0.5)),
        ]);
        assert!(refused(&shrink, "llama").is_some_and(|w| w.contains("`llama.rope.scaling.factor` is 0.5")));
        // 0 is llama.cpp's "none".
        let zero = md(&[("llama.rope.scaling.factor", Value::F32(0.0))]);
        assert_eq!((refused(&zero, "llama"), scaling(&zero, "llama", None)), (None, None));
    }

    #[test]
    fn yarns_original_context_is_read_else_the_context() {
        let mut file =
            md(&[("qwen2.rope.scaling.type", text("yarn")), ("qwen2.rope.scaling.factor", Value::F32(4.0))]);
        assert_eq!(
            scaling(&file, "qwen2", Some(128)).unwrap()["original_max_position_embeddings"],
            json!(128)
        );
        file.insert("qwen2.rope.scaling.original_context_length".into(), Value::U32(16));
        let y = scaling(&file, "qwen2", Some(128)).unwrap();
        assert_eq!(y["original_max_position_embeddings"], json!(16));
        // llama.cpp's β, and its attention factor: 0.1 · ln 4 + 1.
        assert_eq!((y["beta_fast"].clone(), y["beta_slow"].clone()), (json!(32.0), json!(1.0)));
        assert!((y["attention_factor"].as_f64().unwrap() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn attn_factor_scales_yarn_and_is_refused_for_linear() {
        let mut file = md(&[
            ("llama.rope.scaling.type", text("yarn")),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
            ("llama.rope.scaling.attn_factor", Value::F32(2.0)),
        ]);
        assert_eq!(refused(&file, "llama"), None);
        let a = scaling(&file, "llama", Some(64)).unwrap()["attention_factor"].as_f64().unwrap();
        assert!((a - 2.0 * (0.1 * 4f64.ln() + 1.0)).abs() < 1e-6, "{a}");
        file.insert("llama.rope.scaling.type".into(), text("linear"));
        assert!(refused(&file, "llama").is_some_and(|w| w.contains("`llama.rope.scaling.attn_factor` is 2")));
    }

    #[test]
    fn keys_llama_cpp_does_not_read_are_refused_where_they_part_from_what_it_runs() {
        let yarn =
            [("qwen2.rope.scaling.type", text("yarn")), ("qwen2.rope.scaling.factor", Value::F32(4.0))];
        for (key, v, ok) in [
            ("qwen2.rope.scaling.yarn_beta_fast", 32.0, true),
            ("qwen2.rope.scaling.yarn_beta_fast", 16.0, false),
            ("qwen2.rope.scaling.yarn_beta_slow", 2.0, false),
            ("qwen2.rope.scaling.yarn_attn_factor", 0.5, false),
            ("qwen2.rope.scaling.yarn_ext_factor", 1.0, true),
            ("qwen2.rope.scaling.yarn_log_multiplier", 0.1, false),
        ] {
            let mut file = md(&yarn);
            file.insert(key.into(), Value::F32(v));
            let why = refused(&file, "qwen2");
            assert_eq!(why.is_none(), ok, "{key} {v}: {why:?}");
            assert!(why.is_none_or(|w| w.contains(&format!("`{key}`"))), "{key}");
        }
    }

    #[test]
    fn deepseek2s_yarn_log_multiplier_is_its_mscale_and_required() {
        let mut file = md(&[
            ("deepseek2.rope.scaling.type", text("yarn")),
            ("deepseek2.rope.scaling.factor", Value::F32(40.0)),
            ("deepseek2.rope.scaling.original_context_length", Value::U32(16)),
        ]);
        assert!(
            refused(&file, "deepseek2")
                .is_some_and(|w| w.contains("without `deepseek2.rope.scaling.yarn_log_multiplier`"))
        );
        file.insert("deepseek2.rope.scaling.yarn_log_multiplier".into(), Value::F32(0.0707));
        assert_eq!(refused(&file, "deepseek2"), None);
        let y = scaling(&file, "deepseek2", Some(128)).unwrap();
        assert!((y["mscale"].as_f64().unwrap() - 0.707).abs() < 1e-6);
        assert_eq!(y["mscale"], y["mscale_all_dim"]);
        assert_eq!(
            (y["type"].clone(), y["original_max_position_embeddings"].clone()),
            (json!("yarn"), json!(16))
        );
    }

    #[test]
    fn phi3s_longrope_reads_its_attention_factor_and_original_context() {
        let file = md(&[
            ("phi3.context_length", Value::U32(128)),
            ("phi3.rope.scaling.original_context_length", Value::U32(16)),
            ("phi3.rope.scaling.attn_factor", Value::F32(1.25)),
        ]);
        assert_eq!(refused(&file, "phi3"), None);
        let l = longrope(&file, &[2.0, 3.0], &[1.0, 1.5]);
        assert_eq!(l["long_factor"], json!([2.0, 3.0]));
        assert_eq!(l["short_factor"], json!([1.0, 1.5]));
        assert_eq!(
            (l["original_max_position_embeddings"].clone(), l["attention_factor"].clone()),
            (json!(16), json!(1.25))
        );
        // Absent, llama.cpp's attention factor is 1.
        assert_eq!(longrope(&md(&[]), &[1.0], &[1.0])["attention_factor"], json!(1.0));
    }

    #[test]
    fn the_converters_keys_from_config_json_and_what_it_would_run_otherwise() {
        let keys = |c: Json, arch: &str| converter_keys(&c, arch);
        let yarn = json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 1e6}});
        let k = shown(&keys(yarn, "qwen2").unwrap().keys);
        assert_eq!(k, ["type String(\"yarn\")", "factor F32(4.0)", "original_context_length U32(16)"]);
        let linear = json!({"rope_scaling": {"type": "linear", "factor": 2.0}});
        assert_eq!(keys(linear, "llama").unwrap().keys.len(), 2);
        let beta = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 8}});
        assert!(keys(beta, "llama").unwrap_err().contains("`beta_fast` 8"));
        let attention = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "attention_factor": 1.5}});
        assert!(keys(attention, "llama").unwrap_err().contains("`attention_factor`"));
        let ds = json!({"rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 0.707}});
        assert!(keys(ds, "deepseek2").unwrap_err().contains("mscale"));
        let gemma3 = json!({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0}}});
        assert_eq!(
            shown(&keys(gemma3, "gemma3").unwrap().keys),
            ["type String(\"linear\")", "factor F32(8.0)"]
        );
        let gemma3 = json!({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 8.0}}});
        assert!(keys(gemma3, "gemma3").unwrap_err().contains("`yarn`"));
        let llama3 = json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}});
        assert!(keys(llama3, "llama").unwrap().keys.is_empty());
        let phi = json!({"max_position_embeddings": 128, "original_max_position_embeddings": 16,
            "rope_scaling": {"type": "longrope", "long_factor": [2.0, 3.0], "short_factor": [1.0, 1.0]}});
        let phi = keys(phi, "phi3").unwrap();
        assert_eq!(phi.longrope, Some([vec![2.0, 3.0], vec![1.0, 1.0]]));
        let a = (1.0 + 8f64.ln() / 16f64.ln()).sqrt() as f32;
        assert_eq!(shown(&phi.keys), [format!("attn_factor F32({a:?})")]);
    }
}
