//! Each architecture's tensor set: every tensor its loader requests, by Hugging Face name, with
//! the shape the config implies. G0 and the engine's admission compare a model's files with it
//! (`Hyperparameters::shape_problems`), so a missing, extra-shaped or transposed tensor is named
//! before a loader meets it. It reads no file.

use serde_json::Value;

use super::hparams::Hyperparameters;

/// Where an architecture keeps its embedding and its layers.
pub(crate) struct Names {
    pub(crate) embedding: &'static str,
    /// The prefix of layer `N`'s tensors, before `N`.
    pub(crate) layers: &'static str,
}

pub(crate) fn names(model_type: &str) -> Names {
    match model_type {
        "falcon" => Names { embedding: "transformer.word_embeddings.weight", layers: "transformer.h." },
        "gpt_bigcode" => Names { embedding: "transformer.wte.weight", layers: "transformer.h." },
        _ => Names { embedding: "model.embed_tokens.weight", layers: "model.layers." },
    }
}

type Tensors = Vec<(String, Vec<usize>)>;

/// A weight and, where `bias`, its bias.
fn linear(out: &mut Tensors, name: &str, rows: usize, cols: usize, bias: bool) {
    out.push((format!("{name}.weight"), vec![rows, cols]));
    if bias {
        out.push((format!("{name}.bias"), vec![rows]));
    }
}

/// A norm's weight and, where `bias` (layer norms), its bias.
fn norm(out: &mut Tensors, name: &str, size: usize, bias: bool) {
    out.push((format!("{name}.weight"), vec![size]));
    if bias {
        out.push((format!("{name}.bias"), vec![size]));
    }
}

fn gated_mlp(out: &mut Tensors, prefix: &str, hidden: usize, inner: usize, bias: bool) {
    linear(out, &format!("{prefix}.gate_proj"), inner, hidden, bias);
    linear(out, &format!("{prefix}.up_proj"), inner, hidden, bias);
    linear(out, &format!("{prefix}.down_proj"), hidden, inner, bias);
}

pub(crate) fn expected(h: &Hyperparameters) -> Tensors {
    let c = &h.config;
    let uint = |field: &str| c.get(field).and_then(Value::as_u64).map(|n| n as usize);
    let flag = |field: &str, default: bool| c.get(field).and_then(Value::as_bool).unwrap_or(default);
    match h.model_type.as_str() {
        "falcon" => {
            return falcon(h, flag("bias", false), flag("parallel_attn", true), {
                let new = flag("new_decoder_architecture", false);
                new && uint("num_ln_in_parallel_attn").unwrap_or(2) == 2
            });
        }
        "gpt_bigcode" => return gpt_bigcode(h, uint("n_positions").unwrap_or(1024)),
        _ => {}
    }
    let (hd, inter, vocab) = (h.hidden, h.intermediate, h.vocab);
    let (q, kv) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
    let model_type = h.model_type.as_str();
    let layer_norms = matches!(model_type, "stablelm" | "starcoder2");
    let mut out: Tensors = vec![("model.embed_tokens.weight".into(), vec![vocab, hd])];
    norm(&mut out, "model.norm", hd, layer_norms);
    if h.needs_lm_head() {
        out.push(("lm_head.weight".into(), vec![vocab, hd]));
    }
    for l in 0..h.layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        // Attention.
        match model_type {
            "phi3" => {
                linear(&mut out, &format!("{a}.qkv_proj"), q + 2 * kv, hd, false);
                linear(&mut out, &format!("{a}.o_proj"), hd, q, false);
            }
            "deepseek_v2" => deepseek_attention(&mut out, &a, h),
            _ => {
                let (qkv_bias, o_bias) = match model_type {
                    "starcoder2" => (flag("use_bias", true), flag("use_bias", true)),
                    "stablelm" => (flag("use_qkv_bias", false), false),
                    // qwen2's biases are on q, k and v only; elsewhere o_proj has one too.
                    "qwen2" => (h.attention_bias, false),
                    _ => (h.attention_bias, h.attention_bias),
                };
                linear(&mut out, &format!("{a}.q_proj"), q, hd, qkv_bias);
                linear(&mut out, &format!("{a}.k_proj"), kv, hd, qkv_bias);
                linear(&mut out, &format!("{a}.v_proj"), kv, hd, qkv_bias);
                linear(&mut out, &format!("{a}.o_proj"), hd, q, o_bias);
            }
        }
        match model_type {
            "qwen3" | "qwen3_moe" | "gemma3_text" => {
                norm(&mut out, &format!("{a}.q_norm"), h.head_dim, false);
                norm(&mut out, &format!("{a}.k_norm"), h.head_dim, false);
            }
            // stablelm's per-head layer norms (weight only), one a head.
            "stablelm" if flag("qk_layernorm", false) => {
                for (side, heads) in [("q_layernorm", h.heads), ("k_layernorm", h.kv_heads)] {
                    for n in 0..heads {
                        out.push((format!("{a}.{side}.norms.{n}.weight"), vec![h.head_dim]));
                    }
                }
            }
            // Norms over the whole q and k projections.
            "olmo2" => {
                norm(&mut out, &format!("{a}.q_norm"), q, false);
                norm(&mut out, &format!("{a}.k_norm"), kv, false);
            }
            _ => {}
        }
        // Norms around the blocks.
        let around: &[&str] = match model_type {
            "olmo2" => &["post_attention_layernorm", "post_feedforward_layernorm"],
            "gemma2" | "gemma3_text" => &[
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ],
            "stablelm" if flag("use_parallel_residual", false) => &["input_layernorm"],
            _ => &["input_layernorm", "post_attention_layernorm"],
        };
        for n in around {
            norm(&mut out, &format!("{p}.{n}"), hd, layer_norms);
        }
        // The MLP.
        let m = format!("{p}.mlp");
        match model_type {
            "phi3" => {
                linear(&mut out, &format!("{m}.gate_up_proj"), 2 * inter, hd, false);
                linear(&mut out, &format!("{m}.down_proj"), hd, inter, false);
            }
            "starcoder2" => {
                let bias = flag("use_bias", true);
                linear(&mut out, &format!("{m}.c_fc"), inter, hd, bias);
                linear(&mut out, &format!("{m}.c_proj"), hd, inter, bias);
            }
            "qwen3_moe" => {
                let experts = uint("num_experts").or_else(|| uint("num_local_experts")).unwrap_or(0);
                let step = uint("decoder_sparse_step").unwrap_or(1).max(1);
                let dense = c
                    .get("mlp_only_layers")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v.as_u64() == Some(l as u64)));
                if experts > 0 && (l + 1).is_multiple_of(step) && !dense {
                    let moe = uint("moe_intermediate_size").unwrap_or(0);
                    linear(&mut out, &format!("{m}.gate"), experts, hd, false);
                    for e in 0..experts {
                        gated_mlp(&mut out, &format!("{m}.experts.{e}"), hd, moe, false);
                    }
                } else {
                    gated_mlp(&mut out, &m, hd, inter, false);
                }
            }
            "deepseek_v2" => {
                let experts = uint("n_routed_experts").unwrap_or(0);
                let first_dense = uint("first_k_dense_replace").unwrap_or(0);
                let freq = uint("moe_layer_freq").unwrap_or(1).max(1);
                if experts > 0 && l >= first_dense && l.is_multiple_of(freq) {
                    let moe = uint("moe_intermediate_size").unwrap_or(0);
                    linear(&mut out, &format!("{m}.gate"), experts, hd, false);
                    for e in 0..experts {
                        gated_mlp(&mut out, &format!("{m}.experts.{e}"), hd, moe, false);
                    }
                    if let Some(shared) = uint("n_shared_experts").filter(|n| *n > 0) {
                        gated_mlp(&mut out, &format!("{m}.shared_experts"), hd, moe * shared, false);
                    }
                } else {
                    gated_mlp(&mut out, &m, hd, inter, false);
                }
            }
            _ => {
                let bias = matches!(model_type, "granite" | "llama") && flag("mlp_bias", false);
                gated_mlp(&mut out, &m, hd, inter, bias)
            }
        }
    }
    out
}

/// deepseek_v2's multi-head latent attention: q through an optional low-rank pair, k and v
/// through a shared compressed projection.
fn deepseek_attention(out: &mut Tensors, a: &str, h: &Hyperparameters) {
    let uint = |field: &str| h.config.get(field).and_then(Value::as_u64).map(|n| n as usize).unwrap_or(0);
    let (nope, rope, v) = (uint("qk_nope_head_dim"), uint("qk_rope_head_dim"), uint("v_head_dim"));
    let kv_rank = uint("kv_lora_rank");
    let q = h.heads * (nope + rope);
    match h.config.get("q_lora_rank").and_then(Value::as_u64).map(|n| n as usize) {
        Some(rank) => {
            linear(out, &format!("{a}.q_a_proj"), rank, h.hidden, h.attention_bias);
            norm(out, &format!("{a}.q_a_layernorm"), rank, false);
            linear(out, &format!("{a}.q_b_proj"), q, rank, false);
        }
        None => linear(out, &format!("{a}.q_proj"), q, h.hidden, false),
    }
    linear(out, &format!("{a}.kv_a_proj_with_mqa"), kv_rank + rope, h.hidden, h.attention_bias);
    norm(out, &format!("{a}.kv_a_layernorm"), kv_rank, false);
    linear(out, &format!("{a}.kv_b_proj"), h.heads * (nope + v), kv_rank, false);
    linear(out, &format!("{a}.o_proj"), h.hidden, h.heads * v, h.attention_bias);
}

fn falcon(h: &Hyperparameters, bias: bool, parallel: bool, two_norms: bool) -> Tensors {
    let (hd, d) = (h.hidden, h.head_dim);
    let mut out: Tensors = vec![("transformer.word_embeddings.weight".into(), vec![h.vocab, hd])];
    norm(&mut out, "transformer.ln_f", hd, true);
    if h.needs_lm_head() {
        out.push(("lm_head.weight".into(), vec![h.vocab, hd]));
    }
    for l in 0..h.layers {
        let p = format!("transformer.h.{l}");
        linear(
            &mut out,
            &format!("{p}.self_attention.query_key_value"),
            (h.heads + 2 * h.kv_heads) * d,
            hd,
            bias,
        );
        linear(&mut out, &format!("{p}.self_attention.dense"), hd, hd, bias);
        linear(&mut out, &format!("{p}.mlp.dense_h_to_4h"), h.intermediate, hd, bias);
        linear(&mut out, &format!("{p}.mlp.dense_4h_to_h"), hd, h.intermediate, bias);
        let norms: &[&str] = match (parallel, two_norms) {
            (true, true) => &["ln_attn", "ln_mlp"],
            (true, false) => &["input_layernorm"],
            (false, _) => &["input_layernorm", "post_attention_layernorm"],
        };
        for n in norms {
            norm(&mut out, &format!("{p}.{n}"), hd, true);
        }
    }
    out
}

fn gpt_bigcode(h: &Hyperparameters, positions: usize) -> Tensors {
    let hd = h.hidden;
    let mut out: Tensors = vec![
        ("transformer.wte.weight".into(), vec![h.vocab, hd]),
        ("transformer.wpe.weight".into(), vec![positions, hd]),
    ];
    norm(&mut out, "transformer.ln_f", hd, true);
    if h.needs_lm_head() {
        out.push(("lm_head.weight".into(), vec![h.vocab, hd]));
    }
    for l in 0..h.layers {
        let p = format!("transformer.h.{l}");
        norm(&mut out, &format!("{p}.ln_1"), hd, true);
        linear(&mut out, &format!("{p}.attn.c_attn"), hd + 2 * h.kv_heads * h.head_dim, hd, true);
        linear(&mut out, &format!("{p}.attn.c_proj"), hd, hd, true);
        norm(&mut out, &format!("{p}.ln_2"), hd, true);
        linear(&mut out, &format!("{p}.mlp.c_fc"), h.intermediate, hd, true);
        linear(&mut out, &format!("{p}.mlp.c_proj"), hd, h.intermediate, true);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;

    /// Every zoo model (written by transformers) holds exactly its architecture's tensor set.
    #[test]
    fn each_zoo_model_holds_exactly_its_tensor_set() {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo");
        let mut seen = 0;
        for entry in std::fs::read_dir(&zoo).expect("fixtures/zoo") {
            let dir = entry.expect("an entry").path();
            if !dir.is_dir() {
                continue;
            }
            let config_path = dir.join("config.json");
            let config: Value =
                serde_json::from_slice(&std::fs::read(&config_path).expect("config")).expect("json");
            let h = Hyperparameters::from_config(&config_path, &config).expect("hyper-parameters");
            let files: Vec<PathBuf> = vec![dir.join("model.safetensors")];
            let shapes = crate::format::safetensors_header::weight_shapes(&files).expect("headers");
            let expected: BTreeMap<String, Vec<usize>> = h.expected_tensors().into_iter().collect();
            assert_eq!(expected, shapes, "{}", dir.display());
            assert_eq!(h.shape_problems(&shapes), Vec::<String>::new(), "{}", dir.display());
            seen += 1;
        }
        assert_eq!(seen, 16);
    }

    #[test]
    fn a_missing_expert_and_a_reshaped_latent_projection_are_named() {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo/deepseek_v2");
        let config: Value =
            serde_json::from_slice(&std::fs::read(zoo.join("config.json")).expect("config")).expect("json");
        let h = Hyperparameters::from_config(Path::new("config.json"), &config).expect("hyper-parameters");
        let mut shapes: BTreeMap<String, Vec<usize>> = h.expected_tensors().into_iter().collect();
        shapes.remove("model.layers.1.mlp.experts.3.up_proj.weight");
        shapes.insert("model.layers.0.self_attn.kv_b_proj.weight".into(), vec![16, 96]);
        let problems = h.shape_problems(&shapes).join("; ");
        assert!(problems.contains("model.layers.1.mlp.experts.3.up_proj.weight"), "{problems}");
        assert!(
            problems
                .contains("kv_b_proj.weight has shape [16, 96], the config implies [96, 16] (transposed)"),
            "{problems}"
        );
    }
}
