//! A GGUF file against what it claims to be: its metadata against the model's config.json and
//! tokenizer_config.json key by key (naming the key and both values where they part), its
//! tensor types against the quantization its cell names, and its numbers against the playbook's
//! `expect`. G0 of every GGUF cell runs these, on a file modelqa converted (a free consistency
//! check of the converter) as on one a model ships. Pure: it reads no file.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{self, Value};

use crate::matrix::Quantization;
use crate::playbook::spec::ExpectedShape;

/// What the file's metadata says, read leniently: [`super::check_model`] has already refused a
/// file whose required keys are missing or mistyped.
pub(crate) struct FileFacts<'a> {
    md: &'a HashMap<String, Value>,
    /// `general.architecture`.
    pub(crate) arch: String,
    /// Rows of `token_embd.weight`, where the file has one.
    vocab: Option<u64>,
    /// Whether the file holds llama3's rope scaling as factors (`read::ROPE_FACTORS`).
    rope_factors: bool,
    /// Whether it holds phi3's LongRoPE factors (`rope::ROPE_FACTORS_LONG` and `_SHORT`).
    longrope: [bool; 2],
}

impl<'a> FileFacts<'a> {
    pub(crate) fn new(content: &'a gguf_file::Content) -> Self {
        let md = &content.metadata;
        let arch =
            md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let vocab = content
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims().first())
            .map(|&r| r as u64);
        let rope_factors = content.tensor_infos.contains_key(super::read::ROPE_FACTORS);
        let longrope = [super::ROPE_FACTORS_LONG, super::ROPE_FACTORS_SHORT]
            .map(|n| content.tensor_infos.contains_key(n));
        Self { md, arch, vocab, rope_factors, longrope }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// An integer of any width; `None` when absent or not an integer.
    fn int(&self, key: &str) -> Option<u64> {
        match self.md.get(key)? {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    fn float(&self, key: &str) -> Option<f32> {
        match self.md.get(key)? {
            Value::F32(v) => Some(*v),
            Value::F64(v) => Some(*v as f32),
            _ => None,
        }
    }

    fn text(&self, key: &str) -> Option<&'a str> {
        self.md.get(key).and_then(|v| v.to_string().ok()).map(String::as_str)
    }
}

/// A config.json integer, or the first of a list (`eos_token_id: [1, 2]`).
fn config_int(config: &serde_json::Value, field: &str) -> Option<u64> {
    let v = config.get(field)?;
    v.as_u64().or_else(|| v.get(0).and_then(serde_json::Value::as_u64))
}

/// falcon's KV heads: one for the old decoder architecture's `multi_query`, else `num_kv_heads`.
fn falcon_kv_heads(config: &serde_json::Value) -> Option<u64> {
    let flag = |field: &str| config.get(field).and_then(serde_json::Value::as_bool);
    match (flag("new_decoder_architecture").unwrap_or(false), flag("multi_query").unwrap_or(true)) {
        (false, true) => Some(1),
        _ => config_int(config, "num_kv_heads"),
    }
}

/// The integer keys one GGUF architecture adds, each with the config.json field it states and
/// that field's value (`None`: the config has none, so the file should not either).
fn architecture_integers(
    arch: &str,
    config: &serde_json::Value,
) -> Vec<(&'static str, &'static str, Option<u64>)> {
    let int = |field: &str| config_int(config, field);
    match arch {
        "deepseek2" => vec![
            ("attention.kv_lora_rank", "kv_lora_rank", int("kv_lora_rank")),
            ("attention.q_lora_rank", "q_lora_rank", int("q_lora_rank")),
            (
                "attention.key_length_mla",
                "qk_nope_head_dim + qk_rope_head_dim",
                int("qk_nope_head_dim").zip(int("qk_rope_head_dim")).map(|(a, b)| a + b),
            ),
            ("attention.value_length_mla", "v_head_dim", int("v_head_dim")),
            ("expert_count", "n_routed_experts", int("n_routed_experts")),
            ("expert_used_count", "num_experts_per_tok", int("num_experts_per_tok")),
            ("expert_shared_count", "n_shared_experts", int("n_shared_experts")),
            ("expert_feed_forward_length", "moe_intermediate_size", int("moe_intermediate_size")),
            ("leading_dense_block_count", "first_k_dense_replace", int("first_k_dense_replace")),
        ],
        "gemma" => vec![
            ("attention.key_length", "head_dim", int("head_dim")),
            ("attention.value_length", "head_dim", int("head_dim")),
        ],
        "gemma2" | "gemma3" => vec![
            ("attention.key_length", "head_dim", int("head_dim")),
            ("attention.value_length", "head_dim", int("head_dim")),
            ("attention.sliding_window", "sliding_window", int("sliding_window")),
        ],
        "falcon" => vec![("feed_forward_length", "ffn_hidden_size", int("ffn_hidden_size"))],
        "phi3" => vec![(
            "rope.scaling.original_context_length",
            "original_max_position_embeddings",
            int("original_max_position_embeddings"),
        )],
        _ => Vec::new(),
    }
}

/// The float keys one GGUF architecture adds, as [`architecture_integers`].
fn architecture_floats(
    arch: &str,
    config: &serde_json::Value,
) -> Vec<(&'static str, &'static str, Option<f64>)> {
    let float = |field: &str| config.get(field).and_then(serde_json::Value::as_f64);
    let rope = |layers: &str| {
        config.get("rope_parameters")?.get(layers)?.get("rope_theta").and_then(serde_json::Value::as_f64)
    };
    match arch {
        "deepseek2" => {
            vec![("expert_weights_scale", "routed_scaling_factor", float("routed_scaling_factor"))]
        }
        "gemma2" => vec![
            ("attn_logit_softcapping", "attn_logit_softcapping", float("attn_logit_softcapping")),
            ("final_logit_softcapping", "final_logit_softcapping", float("final_logit_softcapping")),
        ],
        "gemma3" => vec![(
            "rope.freq_base_swa",
            "rope_parameters.sliding_attention.rope_theta",
            rope("sliding_attention").or(float("rope_local_base_freq")),
        )],
        _ => Vec::new(),
    }
}

/// The `{arch}.rope.scaling.*` keys (and phi3's LongRoPE tensors) against what llama.cpp's
/// converter writes from config.json's rope scaling (`rope::converter_keys`): each key that
/// parts, is missing, or states a scaling config.json has not, named with both values; a
/// config.json scaling llama.cpp would run otherwise, named by its field.
fn rope_scaling(file: &FileFacts<'_>, config: &serde_json::Value, problems: &mut Vec<String>) {
    let want = match super::rope::converter_keys(config, &file.arch) {
        Ok(w) => w,
        Err(why) => {
            problems
                .push(format!("config.json's {why}, so no {} GGUF runs it as transformers does", file.arch));
            return;
        }
    };
    let prefix = file.key("rope.scaling.");
    let shown = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::F32(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        other => format!("{other:?}"),
    };
    // Each key as the file states it: its name and value (llama.cpp reads the older
    // `rope.scale_linear` where the factor key is absent).
    let stated = |suffix: &str| -> Option<(String, String)> {
        let mut key = format!("{prefix}{suffix}");
        if suffix == "factor" && !file.md.contains_key(&key) {
            key = file.key("rope.scale_linear");
        }
        let value = match file.md.get(&key)? {
            Value::String(s) => Some(s.clone()),
            _ => file.float(&key).map(|x| x.to_string()).or_else(|| file.int(&key).map(|x| x.to_string())),
        };
        Some(key).zip(value)
    };
    for (suffix, value) in &want.keys {
        let want = shown(value);
        match stated(suffix) {
            Some((key, got)) if got != want => {
                problems.push(format!("{key} {got} in the file, config.json's rope scaling {want}"))
            }
            None => problems.push(format!(
                "{prefix}{suffix} is missing from the file, config.json's rope scaling {want}"
            )),
            Some(_) => {}
        }
    }
    // A scaling key llama.cpp reads that config.json does not imply (phi3 states its original
    // context whatever).
    const READ: [&str; 9] = [
        "type",
        "factor",
        "attn_factor",
        "original_context_length",
        "yarn_log_multiplier",
        "yarn_beta_fast",
        "yarn_beta_slow",
        "yarn_ext_factor",
        "yarn_attn_factor",
    ];
    for suffix in READ {
        let implied = want.keys.iter().any(|(k, _)| *k == suffix)
            || (file.arch == "phi3" && suffix == "original_context_length");
        if let Some((key, got)) = stated(suffix).filter(|(_, v)| !implied && v != "none") {
            problems.push(format!("{key} {got} in the file, config.json's rope implies no such key"));
        }
    }
    let names = [super::ROPE_FACTORS_LONG, super::ROPE_FACTORS_SHORT];
    for (name, has) in names.into_iter().zip(file.longrope) {
        match (has, want.longrope.is_some()) {
            (false, true) => {
                problems.push(format!("{name} is missing from the file, config.json's rope is LongRoPE"))
            }
            (true, false) => problems.push(format!(
                "{name} (LongRoPE factors) is in the file, config.json's rope is not LongRoPE"
            )),
            _ => {}
        }
    }
}

/// config.json's rope base as transformers 4 (`rope_theta`) or 5 (`rope_parameters.rope_theta`)
/// write it, with the field it came from.
fn config_rope_theta(config: &serde_json::Value) -> Option<(f64, &'static str)> {
    if let Some(t) = config.get("rope_theta").and_then(serde_json::Value::as_f64) {
        return Some((t, "rope_theta"));
    }
    // gemma3's per layer type, whose global layers' base is the file's `rope.freq_base`.
    if let Some(t) = config
        .get("rope_parameters")
        .and_then(|p| p.get("full_attention"))
        .and_then(|p| p.get("rope_theta"))
        .and_then(serde_json::Value::as_f64)
    {
        return Some((t, "rope_parameters.full_attention.rope_theta"));
    }
    config
        .get("rope_parameters")
        .and_then(|p| p.get("rope_theta"))
        .and_then(serde_json::Value::as_f64)
        .map(|t| (t, "rope_parameters.rope_theta"))
}

/// Where the file's metadata and the model's config.json (and tokenizer_config.json, when the
/// model has one) part: one sentence per key, naming the key and both values.
pub(crate) fn against_config(
    file: &FileFacts<'_>,
    config: &serde_json::Value,
    tokenizer_config: Option<&serde_json::Value>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let model_type = config.get("model_type").and_then(serde_json::Value::as_str).unwrap_or_default();
    if let Some((arch, _)) = super::architecture(model_type)
        && arch != file.arch
    {
        problems.push(format!(
            "general.architecture {} in the file, config.json model_type {model_type} (GGUF {arch})",
            file.arch
        ));
    }
    let heads = config_int(config, "num_attention_heads");
    let hidden = config_int(config, "hidden_size");
    let integers = [
        ("block_count", "num_hidden_layers", config_int(config, "num_hidden_layers")),
        ("embedding_length", "hidden_size", hidden),
        ("feed_forward_length", "intermediate_size", config_int(config, "intermediate_size")),
        ("attention.head_count", "num_attention_heads", heads),
        (
            "attention.head_count_kv",
            "num_key_value_heads",
            // llama.cpp's converter writes deepseek2's latent attention as one KV head; falcon's
            // KV heads are `num_kv_heads`, one where `multi_query` says so.
            match file.arch.as_str() {
                "deepseek2" => Some(1),
                "falcon" => falcon_kv_heads(config).or(heads),
                _ => config_int(config, "num_key_value_heads").or(heads),
            },
        ),
        ("context_length", "max_position_embeddings", config_int(config, "max_position_embeddings")),
    ];
    for (suffix, field, want) in integers {
        // llama.cpp's falcon converter writes 2048 whatever config.json says.
        if file.arch == "falcon" && suffix == "context_length" {
            continue;
        }
        let key = file.key(suffix);
        match (file.int(&key), want) {
            (Some(got), Some(want)) if got != want => {
                problems.push(format!("{key} {got} in the file, config.json {field} {want}"));
            }
            (None, Some(want)) => {
                problems.push(format!("{key} is missing from the file, config.json {field} {want}"))
            }
            _ => {}
        }
    }
    for (key, field, want) in architecture_integers(&file.arch, config) {
        let key = file.key(key);
        match (file.int(&key), want) {
            (Some(got), Some(want)) if got != want => {
                problems.push(format!("{key} {got} in the file, config.json {field} {want}"));
            }
            (None, Some(want)) => {
                problems.push(format!("{key} is missing from the file, config.json {field} {want}"))
            }
            (Some(got), None) => {
                problems.push(format!("{key} {got} in the file, config.json has no {field}"))
            }
            _ => {}
        }
    }
    // A llama's and qwen2's head width: `attention.key_length` and `value_length` where the file
    // states them (the converter does where config.json states `head_dim`), else hidden / heads.
    if matches!(file.arch.as_str(), "llama" | "qwen2") {
        let derived = hidden.zip(heads.filter(|h| *h > 0)).map(|(h, n)| h / n);
        let width = config_int(config, "head_dim").or(derived);
        for suffix in ["attention.key_length", "attention.value_length"] {
            let key = file.key(suffix);
            match (file.int(&key), width) {
                (Some(got), Some(want)) if got != want => {
                    problems.push(format!("{key} {got} in the file, config.json's heads are {want} wide"))
                }
                (None, Some(want)) if Some(want) != derived => problems.push(format!(
                    "{key} is missing from the file, config.json head_dim {want} (not hidden / heads)"
                )),
                _ => {}
            }
        }
    }
    // The rotary width: an explicit head_dim (deepseek2: its rotating part), else hidden / heads,
    // times the share that rotates (stablelm's `partial_rotary_factor`); only where the file says
    // one.
    let head_dim = match file.arch.as_str() {
        "deepseek2" => config_int(config, "qk_rope_head_dim"),
        _ => config_int(config, "head_dim").or_else(|| Some(hidden? / heads.filter(|h| *h > 0)?)),
    };
    let partial = ["partial_rotary_factor", "rope_parameters"]
        .iter()
        .filter_map(|f| config.get(f))
        .find_map(|v| v.as_f64().or_else(|| v.get("partial_rotary_factor")?.as_f64()))
        .unwrap_or(1.0);
    let key = file.key("rope.dimension_count");
    if let (Some(got), Some(width)) = (file.int(&key), head_dim)
        && got != (width as f64 * partial) as u64
    {
        let share = if partial == 1.0 { String::new() } else { format!(", {partial} of each rotating") };
        problems.push(format!("{key} {got} in the file, config.json's heads are {width} wide{share}"));
    }
    // Both sides default to the base transformers and llama.cpp assume where none is written.
    let key = file.key("rope.freq_base");
    let (theta, field) = config_rope_theta(config).unwrap_or((10_000.0, "rope_theta (absent: 10000)"));
    let got = file.float(&key).unwrap_or(10_000.0);
    if got != theta as f32 {
        problems.push(format!("{key} {got} in the file, config.json {field} {theta}"));
    }
    // llama3's rope scaling travels as a tensor of factors (the engine's load holds its length);
    // a file without it would run the model unscaled, one with it a model that is not scaled.
    let llama3 = ["rope_scaling", "rope_parameters"].iter().filter_map(|f| config.get(f)).any(|v| {
        v.get("rope_type").or_else(|| v.get("type")).and_then(serde_json::Value::as_str) == Some("llama3")
    });
    match (file.rope_factors, llama3) {
        (false, true) => problems.push(format!(
            "{} is missing from the file, config.json's rope scaling is llama3",
            super::read::ROPE_FACTORS
        )),
        (true, false) => problems.push(format!(
            "{} (llama3 rope scaling) is in the file, config.json's rope is not llama3-scaled",
            super::read::ROPE_FACTORS
        )),
        _ => {}
    }
    rope_scaling(file, config, &mut problems);
    for (key, field, want) in architecture_floats(&file.arch, config) {
        let key = file.key(key);
        match (file.float(&key), want) {
            (Some(got), Some(want)) if got != want as f32 => {
                problems.push(format!("{key} {got} in the file, config.json {field} {want}"));
            }
            (None, Some(want)) => {
                problems.push(format!("{key} is missing from the file, config.json {field} {want}"))
            }
            _ => {}
        }
    }
    let key = file.key("attention.layer_norm_rms_epsilon");
    if let (Some(got), Some(want)) =
        (file.float(&key), config.get("rms_norm_eps").and_then(serde_json::Value::as_f64))
        && got != want as f32
    {
        problems.push(format!("{key} {got} in the file, config.json rms_norm_eps {want}"));
    }
    if let Some(want) = config_int(config, "vocab_size") {
        if let Some(rows) = file.vocab
            && rows != want
        {
            problems.push(format!(
                "token_embd.weight has {rows} rows in the file, config.json vocab_size {want}"
            ));
        }
        if let Some(tokens) = file.md.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok())
            && tokens.len() as u64 != want
        {
            problems.push(format!(
                "tokenizer.ggml.tokens holds {} tokens in the file, config.json vocab_size {want}",
                tokens.len()
            ));
        }
    }
    for (key, field) in
        [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")]
    {
        let allowed: Vec<u64> = match config.get(field) {
            Some(serde_json::Value::Array(ids)) => ids.iter().filter_map(serde_json::Value::as_u64).collect(),
            Some(v) => v.as_u64().into_iter().collect(),
            None => Vec::new(),
        };
        match (file.int(key), allowed.as_slice()) {
            (_, []) => {}
            (Some(got), _) if allowed.contains(&got) => {}
            (Some(got), [one]) => {
                problems.push(format!("{key} {got} in the file, config.json {field} {one}"))
            }
            (Some(got), many) => {
                problems.push(format!("{key} {got} in the file, config.json {field} {many:?}"))
            }
            (None, _) => problems.push(format!(
                "{key} is missing from the file, config.json {field} {}",
                config.get(field).map_or_else(String::new, ToString::to_string)
            )),
        }
    }
    let want = tokenizer_config.and_then(crate::chat::ChatTemplate::from_tokenizer_config).map(|t| t.source);
    match (file.text("tokenizer.chat_template"), want.as_deref()) {
        (Some(got), Some(want)) if got != want => {
            let at = got.chars().zip(want.chars()).take_while(|(a, b)| a == b).count();
            let around = |s: &str| -> String { s.chars().skip(at.saturating_sub(8)).take(40).collect() };
            problems.push(format!(
                "tokenizer.chat_template differs from tokenizer_config.json chat_template at character {at}: {:?} in the file, {:?} in tokenizer_config.json",
                around(got),
                around(want)
            ));
        }
        (None, Some(_)) => problems.push(
            "tokenizer.chat_template is missing from the file, tokenizer_config.json has a chat_template"
                .into(),
        ),
        (Some(_), None) => problems.push(
            "tokenizer.chat_template is in the file, tokenizer_config.json has no chat_template".into(),
        ),
        _ => {}
    }
    problems
}

/// Where the file's numbers part from the playbook's `expect` and `architecture` (for a model
/// with no config.json to compare against).
pub(crate) fn against_expectations(
    file: &FileFacts<'_>,
    expect: &ExpectedShape,
    architecture: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(want) = architecture
        && let Some((arch, _)) = super::architecture(want)
        && arch != file.arch
    {
        problems.push(format!(
            "general.architecture {} in the file, the playbook expects {want} (GGUF {arch})",
            file.arch
        ));
    }
    let fields = [
        ("embedding_length", "hidden_size", expect.hidden_size),
        ("block_count", "num_layers", expect.num_layers),
        ("attention.head_count", "num_heads", expect.num_heads),
        ("attention.head_count_kv", "num_kv_heads", expect.num_kv_heads),
        ("feed_forward_length", "intermediate_size", expect.intermediate_size),
        ("context_length", "context_length", expect.context_length),
    ];
    for (suffix, field, want) in fields {
        let key = file.key(suffix);
        match (file.int(&key), want) {
            (Some(got), Some(want)) if got != want => {
                problems.push(format!("{key} {got} in the file, the playbook expects {field} {want}"));
            }
            (None, Some(want)) => {
                problems.push(format!("{key} is missing from the file, the playbook expects {field} {want}"));
            }
            _ => {}
        }
    }
    for (suffix, field, want) in [
        ("rope.freq_base", "rope_theta", expect.rope_theta),
        ("attention.layer_norm_rms_epsilon", "rms_norm_eps", expect.rms_norm_eps),
    ] {
        let key = file.key(suffix);
        match (file.float(&key), want) {
            (Some(got), Some(want)) if !crate::format::hparams::same_number(f64::from(got), want) => {
                problems.push(format!("{key} {got} in the file, the playbook expects {field} {want}"));
            }
            (None, Some(want)) => {
                problems.push(format!("{key} is missing from the file, the playbook expects {field} {want}"));
            }
            _ => {}
        }
    }
    for (key, field, want) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id", expect.bos_token_id),
        ("tokenizer.ggml.eos_token_id", "eos_token_id", expect.eos_token_id),
    ] {
        match (file.int(key), want) {
            (Some(got), Some(want)) if got != want => {
                problems.push(format!("{key} {got} in the file, the playbook expects {field} {want}"));
            }
            (None, Some(want)) => {
                problems.push(format!("{key} is missing from the file, the playbook expects {field} {want}"));
            }
            _ => {}
        }
    }
    if let (Some(want), Some(rows)) = (expect.vocab_size, file.vocab)
        && rows != want
    {
        problems.push(format!(
            "token_embd.weight has {rows} rows in the file, the playbook expects vocab_size {want}"
        ));
    }
    problems
}

/// llama.cpp's `general.file_type` of a quantization.
pub(crate) fn file_type(q: Quantization) -> u32 {
    match q {
        Quantization::F32 => 0,
        Quantization::F16 => 1,
        Quantization::Q4_0 => 2,
        Quantization::Q8_0 => 7,
        Quantization::Q5_0 => 8,
        Quantization::Q2K => 10,
        Quantization::Q3KM => 12,
        Quantization::Q4KM => 15,
        Quantization::Q5KM => 17,
        Quantization::Q6K => 18,
    }
}

/// The types a matrix of a file at `q` may be stored in: the mix's own type first, then
/// llama.cpp's higher-bit choices and the block fallbacks.
fn matrix_types(q: Quantization) -> &'static [GgmlDType] {
    use GgmlDType::*;
    // The mix's own type first; then what llama.cpp's rules (`mix.rs`) and their fallbacks give
    // some matrices: Q6_K/Q8_0 for the head, Q8_0 for attention with 8 experts, Q5_K for a 70B's
    // attn_v or an 8-expert attn_output, and f32 for what is never quantized (a mixture's router,
    // learned positions).
    match q {
        Quantization::F32 => &[F32],
        Quantization::F16 => &[F16, F32],
        Quantization::Q8_0 => &[Q8_0, F16, F32],
        Quantization::Q6K => &[Q6K, Q8_0, F16, F32],
        Quantization::Q5_0 => &[Q5_0, Q6K, Q8_0, F16, F32],
        Quantization::Q4_0 => &[Q4_0, Q6K, Q8_0, F16, F32],
        Quantization::Q5KM => &[Q5K, Q5_1, Q6K, Q8_0, F16, F32],
        Quantization::Q4KM => &[Q4K, Q5_0, Q5K, Q5_1, Q6K, Q8_0, F16, F32],
        Quantization::Q3KM => &[Q3K, Q4_0, Q4K, Q5_0, Q5K, Q5_1, Q6K, Q8_0, F16, F32],
        Quantization::Q2K => &[Q2K, Q4_0, Q3K, Q4K, Q5_0, Q5K, Q5_1, Q6K, Q8_0, F16, F32],
    }
}

/// Where the file's tensor types say it is not the quantization `q` its cell names: its
/// `general.file_type`, a matrix in a type the mix never writes, or no matrix in the mix's own
/// type at all. `tensors` is each tensor's name, dimensions and type.
pub(crate) fn against_quantization(
    file: &FileFacts<'_>,
    q: Quantization,
    tensors: &[(String, Vec<usize>, GgmlDType)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let format = format!("gguf-{}", q.as_str());
    let want = file_type(q);
    if let Some(got) = file.int("general.file_type")
        && got != u64::from(want)
    {
        let named = Quantization::ALL.into_iter().find(|q| u64::from(file_type(*q)) == got);
        let named = named.map_or_else(String::new, |q| format!(" ({})", q.as_str()));
        problems.push(format!(
            "general.file_type {got}{named} in the file, the cell's format {format} is file type {want}"
        ));
    }
    let allowed = matrix_types(q);
    let matrices: Vec<&(String, Vec<usize>, GgmlDType)> =
        tensors.iter().filter(|(_, d, _)| d.len() >= 2).collect();
    let mut outside: Vec<String> = matrices
        .iter()
        .filter(|(_, _, t)| !allowed.contains(t))
        .map(|(n, _, t)| format!("{n} is {t:?}"))
        .collect();
    if !outside.is_empty() {
        let shown = outside.len().min(3);
        let more = outside.len() - shown;
        outside.truncate(shown);
        problems.push(format!(
            "tensor types outside {format} ({allowed:?}): {}{}",
            outside.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ));
    }
    // Where the mix's own type can tile a matrix's rows, some matrix must be in it.
    let own = allowed[0];
    let tiled =
        matrices.iter().filter(|(_, d, _)| d.last().is_some_and(|r| r % own.block_size() == 0)).count();
    if tiled > 0 && !matrices.iter().any(|(_, _, t)| *t == own) {
        problems.push(format!(
            "no matrix of the file is {own:?}, though {own:?} blocks tile the rows of {tiled} of its {}: the file is not {format}",
            matrices.len()
        ));
    }
    problems
}
