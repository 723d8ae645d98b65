//! A model's hyper-parameters as config.json states them, checked before anything trusts them:
//! every size and count bounded ([`super::limits`]), the heads dividing the hidden size, the
//! head width even, and each tensor's shape against the shape the architecture's loader will
//! request. candle-transformers' loaders `unwrap()` and reshape on these numbers; a model that
//! passes here reaches them only with numbers they can hold.
//!
//! G0 (`integrity.rs`) reports every problem this module finds; the engine refuses to load a
//! model with any. It reads no file itself: callers hand it the parsed config and the shapes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::limits::{self, Limit};

/// A config.json value that is missing, of the wrong type, out of bounds or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: `{field}` {why}", path.display())]
pub(crate) struct ConfigError {
    /// The file (config.json, or the APR or GGUF file that embeds it).
    pub(crate) path: PathBuf,
    pub(crate) field: &'static str,
    pub(crate) why: String,
}

impl ConfigError {
    /// The error without the path, for a message that names the file already.
    pub(crate) fn cause(&self) -> String {
        format!("`{}` {}", self.field, self.why)
    }
}

/// Whether two stated numbers agree to a relative 1e-6: a float written by one tool and read by
/// another (GGUF keeps f32) is the same number.
pub(crate) fn same_number(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// The numbers a model's loader sizes itself by, each bounded and consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hyperparameters {
    /// config.json's `model_type` (empty when absent).
    pub(crate) model_type: String,
    pub(crate) hidden: usize,
    pub(crate) intermediate: usize,
    pub(crate) layers: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    /// The width of one head: mistral's and qwen3's explicit `head_dim`, else hidden / heads.
    pub(crate) head_dim: usize,
    pub(crate) vocab: usize,
    /// `max_position_embeddings`, where declared.
    pub(crate) context: Option<usize>,
    pub(crate) tied: bool,
    /// Attention biases (qwen2 always; the others of `hf_config::ATTENTION_BIAS` where
    /// `attention_bias` says so).
    pub(crate) attention_bias: bool,
    /// The config itself, for the fields only one architecture's tensor set depends on
    /// (`tensor_sets`).
    pub(crate) config: serde_json::Value,
}

impl Hyperparameters {
    /// Reads and checks the hyper-parameters of `config` (from `path`, for messages).
    pub(crate) fn from_config(path: &Path, config: &serde_json::Value) -> Result<Self, ConfigError> {
        let err = |field: &'static str, why: String| ConfigError { path: path.to_path_buf(), field, why };
        if !config.is_object() {
            return Err(err("model_type", "cannot be read: the config is not a JSON object".into()));
        }
        let model_type = match config.get("model_type") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(err("model_type", format!("is {other}, not a string"))),
        };
        // A present field must hold a positive integer within its limit; `None` when absent.
        let optional = |field: &'static str, limit: Limit| -> Result<Option<usize>, ConfigError> {
            match config.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => {
                    let n =
                        v.as_u64().ok_or_else(|| err(field, format!("is {v}, not a positive integer")))?;
                    let n = limit.check(n).map_err(|why| err(field, why))?;
                    Ok(Some(n as usize))
                }
            }
        };
        // The first of `fields` the config states (GPT-2's and falcon's names after llama's).
        let either = |fields: &[&'static str], limit: Limit| -> Result<Option<usize>, ConfigError> {
            for field in fields {
                if let Some(n) = optional(field, limit)? {
                    return Ok(Some(n));
                }
            }
            Ok(None)
        };
        let required = |fields: &[&'static str], limit: Limit| -> Result<usize, ConfigError> {
            either(fields, limit)?.ok_or_else(|| err(fields[0], "is missing".into()))
        };
        let flag = |field: &str, default: bool| {
            config.get(field).and_then(serde_json::Value::as_bool).unwrap_or(default)
        };
        let hidden = required(&["hidden_size", "n_embd"], limits::HIDDEN)?;
        let heads = required(&["num_attention_heads", "n_head"], limits::HEADS)?;
        let kv_heads = match model_type.as_str() {
            // falcon's key/value heads follow its layout; gpt_bigcode's its multi-query flag.
            "falcon" if flag("new_decoder_architecture", false) => {
                optional("num_kv_heads", limits::HEADS)?.unwrap_or(heads)
            }
            "falcon" | "gpt_bigcode" if flag("multi_query", true) => 1,
            "falcon" | "gpt_bigcode" => heads,
            _ => optional("num_key_value_heads", limits::HEADS)?.unwrap_or(heads),
        };
        let layers = required(&["num_hidden_layers", "n_layer"], limits::LAYERS)?;
        let intermediate = match model_type.as_str() {
            // transformers' default: four times the hidden size.
            "falcon" | "gpt_bigcode" => {
                either(&["ffn_hidden_size", "n_inner"], limits::INTERMEDIATE)?.unwrap_or(4 * hidden)
            }
            _ => required(&["intermediate_size"], limits::INTERMEDIATE)?,
        };
        let vocab = required(&["vocab_size"], limits::VOCAB)?;
        let context = either(&["max_position_embeddings", "n_positions"], limits::CONTEXT)?;
        optional("sliding_window", limits::CONTEXT)?;
        optional("max_window_layers", limits::LAYERS)?;
        // Only some loaders read an explicit head width; the others derive it.
        let explicit_head_dim = if super::hf_config::EXPLICIT_HEAD_DIM.contains(&model_type.as_str()) {
            optional("head_dim", limits::HEAD_DIM)?
        } else {
            None
        };
        let head_dim = match explicit_head_dim {
            Some(d) => d,
            None => {
                if !hidden.is_multiple_of(heads) {
                    return Err(err(
                        "hidden_size",
                        format!("{hidden} is not divisible by num_attention_heads {heads}"),
                    ));
                }
                let d = hidden / heads;
                limits::HEAD_DIM
                    .check(d as u64)
                    .map_err(|why| err("hidden_size", format!("/ heads {why}")))?;
                d
            }
        };
        if !heads.is_multiple_of(kv_heads) {
            return Err(err(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(err(
                "num_attention_heads",
                format!("gives heads {head_dim} wide; rotary embeddings need an even width"),
            ));
        }
        for field in ["rope_theta", "rms_norm_eps"] {
            match config.get(field) {
                None | Some(serde_json::Value::Null) => {}
                Some(v) => {
                    let ok = v.as_f64().is_some_and(|x| {
                        x.is_finite() && if field == "rope_theta" { x > 0.0 } else { x >= 0.0 }
                    });
                    if !ok {
                        let field = if field == "rope_theta" { "rope_theta" } else { "rms_norm_eps" };
                        return Err(err(field, format!("is {v}, not a finite positive number")));
                    }
                }
            }
        }
        let tied = match config.get("tie_word_embeddings") {
            // transformers' gemma (and others) tie unless told otherwise.
            None | Some(serde_json::Value::Null) => {
                super::hf_config::TIED_BY_DEFAULT.contains(&model_type.as_str())
            }
            Some(serde_json::Value::Bool(b)) => *b,
            Some(v) => return Err(err("tie_word_embeddings", format!("is {v}, not true or false"))),
        };
        let attention_bias = model_type == "qwen2"
            || (super::hf_config::ATTENTION_BIAS.contains(&model_type.as_str())
                && config.get("attention_bias") == Some(&serde_json::Value::Bool(true)));
        Ok(Hyperparameters {
            config: config.clone(),
            attention_bias,
            model_type,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context,
            tied,
        })
    }

    /// Whether the loader asks for `lm_head.weight`: not when the embeddings are tied (the
    /// engine hands mistral's loader the embedding as its head).
    pub(crate) fn needs_lm_head(&self) -> bool {
        !self.tied
    }

    /// Every tensor the architecture's loader requests, with the shape it requests, in Hugging
    /// Face names (outermost dimension first).
    pub(crate) fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        super::tensor_sets::expected(self)
    }

    /// The tensors among `shapes` that the loader will not read, save those transformers does
    /// not read either (a tied model's `lm_head.weight`, rotary frequency and attention-mask
    /// buffers old checkpoints saved). A weight nothing reads is what a config field the engine
    /// does not honour leaves behind (biases, norms, layers of another kind), so the engine
    /// refuses a model that has one rather than run it without.
    pub(crate) fn unread_tensors(&self, shapes: &BTreeMap<String, Vec<usize>>) -> Vec<String> {
        let expected: std::collections::BTreeSet<String> =
            self.expected_tensors().into_iter().map(|(name, _)| name).collect();
        let buffer = |name: &str| {
            name.ends_with(".inv_freq") || name.ends_with(".masked_bias") || name.ends_with(".attn.bias")
        };
        shapes
            .keys()
            .filter(|name| !expected.contains(*name) && !buffer(name))
            .filter(|name| !(self.tied && name.as_str() == "lm_head.weight"))
            .cloned()
            .collect()
    }

    /// Every way the tensors' shapes (by Hugging Face name) disagree with what the loader will
    /// request, in words; empty when the loader can take them.
    pub(crate) fn shape_problems(&self, shapes: &BTreeMap<String, Vec<usize>>) -> Vec<String> {
        let mut problems = Vec::new();
        let (h, vocab) = (self.hidden, self.vocab);
        let names = super::tensor_sets::names(&self.model_type);
        let weight_layers = shapes
            .keys()
            .filter_map(|n| n.strip_prefix(names.layers)?.split('.').next()?.parse::<u64>().ok())
            .max()
            .map_or(0, |m| m.saturating_add(1));
        if weight_layers != self.layers as u64 {
            problems.push(format!(
                "config.json declares {} layers, the weights hold {weight_layers}",
                self.layers
            ));
        }
        if let Some(shape) = shapes.get(names.embedding)
            && shape.len() == 2
        {
            if shape[0] != vocab {
                problems.push(format!(
                    "config.json declares vocab_size {vocab}, the embedding has {} rows",
                    shape[0]
                ));
            }
            if shape[1] != h {
                problems.push(format!(
                    "config.json declares hidden_size {h}, the embedding is {} wide",
                    shape[1]
                ));
            }
        }
        let mut missing = Vec::new();
        for (name, want) in self.expected_tensors() {
            match shapes.get(&name) {
                None => missing.push(name),
                Some(got) if *got == want => {}
                Some(got) => {
                    let reversed: Vec<usize> = got.iter().rev().copied().collect();
                    let why = if reversed == want { " (transposed)" } else { "" };
                    problems
                        .push(format!("tensor {name} has shape {got:?}, the config implies {want:?}{why}"));
                }
            }
        }
        // q and k projections exchanged: each has the other's shape.
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        for l in 0..self.layers {
            let q_got = shapes.get(&format!("model.layers.{l}.self_attn.q_proj.weight"));
            let k_got = shapes.get(&format!("model.layers.{l}.self_attn.k_proj.weight"));
            if kv != q
                && let (Some(q_got), Some(k_got)) = (q_got, k_got)
                && *q_got == [kv, h]
                && *k_got == [q, h]
            {
                problems
                    .push(format!("layer {l}: q_proj and k_proj are swapped (each has the other's shape)"));
            }
        }
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
            let more =
                if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
            problems.push(format!(
                "{} required tensors are missing: {}{more}",
                missing.len(),
                shown.join(", ")
            ));
        }
        problems
    }
}

/// `config` with its context clamped to [`limits::SESSION_CONTEXT`] (and the session's context),
/// for the loaders that precompute rotary tables over the whole declared context; the reason is
/// at [`limits::SESSION_CONTEXT`]. A config without a context is returned unchanged.
pub(crate) fn clamp_context(mut config: serde_json::Value) -> (serde_json::Value, Option<usize>) {
    let cap = limits::SESSION_CONTEXT;
    let declared = config.get("max_position_embeddings").and_then(serde_json::Value::as_u64);
    let Some(declared) = declared else { return (config, None) };
    let context = declared.min(cap);
    if let Some(object) = config.as_object_mut() {
        object.insert("max_position_embeddings".into(), context.into());
    }
    (config, Some(context as usize))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tiny() -> serde_json::Value {
        json!({
            "model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16,
            "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        })
    }

    fn error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut config = tiny();
        edit(&mut config);
        Hyperparameters::from_config(Path::new("m/config.json"), &config).unwrap_err().to_string()
    }

    #[test]
    fn a_clean_config_passes_and_its_own_tensors_fit() {
        let h = Hyperparameters::from_config(Path::new("config.json"), &tiny()).unwrap();
        assert_eq!((h.head_dim, h.kv_heads, h.context), (4, 1, Some(16)));
        let shapes: BTreeMap<String, Vec<usize>> = h.expected_tensors().into_iter().collect();
        assert_eq!(h.shape_problems(&shapes), Vec::<String>::new());
    }

    #[test]
    fn every_bound_and_consistency_rule_can_fail() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            (
                "max_position_embeddings",
                json!(1u64 << 31),
                "m/config.json: `max_position_embeddings` is 2147483648, more than the 4194304 tokens of context",
            ),
            (
                "max_position_embeddings",
                json!(1_000_000_000_000u64),
                "`max_position_embeddings` is 1000000000000, more than the 4194304 tokens of context",
            ),
            (
                "num_hidden_layers",
                json!(1_000_000_000_000u64),
                "`num_hidden_layers` is 1000000000000, more than the 1024 layers",
            ),
            (
                "num_hidden_layers",
                json!(1e12),
                "`num_hidden_layers` is 1000000000000.0, not a positive integer",
            ),
            ("num_attention_heads", json!(3), "`hidden_size` 8 is not divisible by num_attention_heads 3"),
            ("num_attention_heads", json!(0), "`num_attention_heads` is 0; it must be at least 1"),
            (
                "num_key_value_heads",
                json!(3),
                "`num_key_value_heads` 3 does not divide num_attention_heads 2",
            ),
            ("hidden_size", json!(-8), "`hidden_size` is -8, not a positive integer"),
            ("vocab_size", json!(1u64 << 32), "`vocab_size` is 4294967296, more than the 1048576"),
            ("intermediate_size", json!(u64::MAX), "`intermediate_size` is 18446744073709551615"),
            ("sliding_window", json!(1u64 << 40), "`sliding_window` is 1099511627776"),
            ("rope_theta", json!(-1.0), "`rope_theta` is -1.0, not a finite positive number"),
            ("tie_word_embeddings", json!("yes"), "`tie_word_embeddings` is \"yes\", not true or false"),
        ];
        for (field, value, want) in cases {
            let got = error(|c| c[*field] = value.clone());
            assert!(got.contains(want), "{field}: `{got}` lacks `{want}`");
        }
        let got = error(|c| {
            c.as_object_mut().unwrap().remove("vocab_size");
        });
        assert!(got.contains("`vocab_size` is missing"), "{got}");
        // Heads of odd width: 2 heads over 6 units.
        let got = error(|c| {
            c["hidden_size"] = json!(6);
        });
        assert!(got.contains("heads 3 wide"), "{got}");
    }

    #[test]
    fn shapes_that_the_loader_would_refuse_are_named() {
        let mut config = tiny();
        config["tie_word_embeddings"] = json!(true);
        let h = Hyperparameters::from_config(Path::new("config.json"), &config).unwrap();
        let mut shapes: BTreeMap<String, Vec<usize>> = h.expected_tensors().into_iter().collect();
        assert!(!shapes.contains_key("lm_head.weight"), "tied embeddings need no lm_head");
        shapes.insert("model.layers.0.mlp.up_proj.weight".into(), vec![8, 16]);
        shapes.remove("model.norm.weight");
        let problems = h.shape_problems(&shapes).join("; ");
        assert!(
            problems.contains(
                "model.layers.0.mlp.up_proj.weight has shape [8, 16], the config implies [16, 8] (transposed)"
            ),
            "{problems}"
        );
        assert!(problems.contains("1 required tensors are missing: model.norm.weight"), "{problems}");
    }

    #[test]
    fn weights_no_loader_reads_are_named_and_buffers_are_not() {
        let h = Hyperparameters::from_config(Path::new("config.json"), &tiny()).unwrap();
        let mut shapes: BTreeMap<String, Vec<usize>> = h.expected_tensors().into_iter().collect();
        assert_eq!(h.unread_tensors(&shapes), Vec::<String>::new());
        // Buffers transformers never reads as weights.
        shapes.insert("model.layers.0.self_attn.rotary_emb.inv_freq".into(), vec![2]);
        assert_eq!(h.unread_tensors(&shapes), Vec::<String>::new());
        // MLP biases of a config that states no mlp_bias: transformers would not load them either,
        // but a config that does is what this catches when the engine drops the field.
        shapes.insert("model.layers.0.mlp.up_proj.bias".into(), vec![16]);
        assert_eq!(h.unread_tensors(&shapes), vec!["model.layers.0.mlp.up_proj.bias".to_string()]);
        let mut with_bias = tiny();
        with_bias["mlp_bias"] = json!(true);
        let h = Hyperparameters::from_config(Path::new("config.json"), &with_bias).unwrap();
        let shapes: BTreeMap<String, Vec<usize>> = h.expected_tensors().into_iter().collect();
        assert!(shapes.contains_key("model.layers.0.mlp.gate_proj.bias"), "llama's mlp_bias is read");
        // A tied model may ship the head as well: transformers ties it to the embedding.
        let mut tied = tiny();
        tied["tie_word_embeddings"] = json!(true);
        let h = Hyperparameters::from_config(Path::new("config.json"), &tied).unwrap();
        let mut shapes: BTreeMap<String, Vec<usize>> = h.expected_tensors().into_iter().collect();
        shapes.insert("lm_head.weight".into(), vec![16, 8]);
        assert_eq!(h.unread_tensors(&shapes), Vec::<String>::new());
    }

    #[test]
    fn the_session_context_is_clamped_and_small_contexts_are_kept() {
        let (config, context) = clamp_context(json!({"max_position_embeddings": 1_010_000}));
        assert_eq!(context, Some(131_072));
        assert_eq!(config["max_position_embeddings"], 131_072);
        assert_eq!(clamp_context(json!({"max_position_embeddings": 128})).1, Some(128));
    }
}
