//! llama.cpp's layouts of deepseek2, phi3, gemma, gemma2, gemma3 and falcon, both ways: each
//! tensor's GGUF name from its Hugging Face one and back (one table for both), the transforms
//! its converter applies and the writer applies too (deepseek2's `kv_b_proj` split into
//! `attn_k_b`/`attn_v_b` for absorbed MLA, gemma's norms stored as `1 + w`) and their inverses,
//! the config rebuilt from the KV keys with what llama.cpp assumes where a key is absent, and
//! the keys that change the maths in a way the engine does not reproduce, each refused by name.
//! It reads no file.

use std::collections::HashMap;

use candle_core::Tensor;
use candle_core::quantized::gguf_file::Value;
use serde_json::json;

/// The GGUF architectures whose layouts this module reads back.
pub(super) const LAYOUTS: [&str; 6] = ["deepseek2", "phi3", "gemma", "gemma2", "gemma3", "falcon"];

/// The Hugging Face name of a tensor of `arch` (one of this module's), `None` where it has none
/// (deepseek2's `attn_k_b`/`attn_v_b` are joined by [`join_kv_b`], not renamed).
pub(super) fn hf_name(arch: &str, gguf: &str) -> Option<String> {
    if arch == "falcon" {
        return falcon_name(gguf);
    }
    let (layer, rest) = gguf.strip_prefix("blk.").and_then(|r| r.split_once('.')).unzip();
    let own = rest.and_then(|rest| own_names(arch).iter().find(|(g, _)| *g == rest)).map(|(_, h)| *h);
    match (own, layer) {
        (Some(h), Some(layer)) => {
            layer.parse::<usize>().ok()?;
            Some(format!("model.layers.{layer}.{h}"))
        }
        _ => super::hf_name(gguf),
    }
}

/// Each layer's tensors of `arch` whose names part from the shared table: (GGUF, Hugging Face),
/// without the `blk.N.` and `model.layers.N.` prefixes.
fn own_names(arch: &str) -> &'static [(&'static str, &'static str)] {
    match arch {
        "deepseek2" => &[
            ("attn_q_a.weight", "self_attn.q_a_proj.weight"),
            ("attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight"),
            ("attn_q_b.weight", "self_attn.q_b_proj.weight"),
            ("attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight"),
            ("attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight"),
            ("attn_kv_b.weight", "self_attn.kv_b_proj.weight"),
            ("ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight"),
            ("ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight"),
            ("ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight"),
        ],
        // phi3's gate and up projections, fused as Hugging Face fuses them.
        "phi3" => {
            &[("attn_qkv.weight", "self_attn.qkv_proj.weight"), ("ffn_up.weight", "mlp.gate_up_proj.weight")]
        }
        // gemma2's and gemma3's norm before the MLP (`ffn_norm` is the llama convention's
        // post-attention one, as in gemma), and their norm after attention.
        "gemma2" | "gemma3" => &[
            ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
            ("post_attention_norm.weight", "post_attention_layernorm.weight"),
        ],
        _ => &[],
    }
}

/// The GGUF name llama.cpp's converter gives a Hugging Face tensor of `arch` (one of this
/// module's), `None` where the shared table names it (deepseek2's `kv_b_proj` is split by
/// [`split_kv_b`], its experts stacked, before naming).
pub(super) fn written_name(arch: &str, hf: &str) -> Option<String> {
    if arch == "falcon" {
        return super::through_tables(hf, &FALCON_GLOBAL, &FALCON_LAYER, ("transformer.h.", "blk."), false);
    }
    let (layer, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (g, _) = own_names(arch).iter().find(|(_, h)| *h == rest)?;
    Some(format!("blk.{layer}.{g}"))
}

/// falcon's names: the model's own (GGUF, Hugging Face), then each layer's (without
/// `transformer.h.N.` and `.weight`/`.bias`).
const FALCON_GLOBAL: [(&str, &str); 4] = [
    ("token_embd.weight", "transformer.word_embeddings.weight"),
    ("output_norm.weight", "transformer.ln_f.weight"),
    ("output_norm.bias", "transformer.ln_f.bias"),
    ("output.weight", "lm_head.weight"),
];
const FALCON_LAYER: [(&str, &str); 5] = [
    ("attn_norm", "input_layernorm"),
    ("attn_qkv", "self_attention.query_key_value"),
    ("attn_output", "self_attention.dense"),
    ("ffn_up", "mlp.dense_h_to_4h"),
    ("ffn_down", "mlp.dense_4h_to_h"),
];

/// deepseek2's `kv_b_proj` (`[heads · (nope + v), kv_lora_rank]`) split as the converter splits
/// it for absorbed MLA: `k_b` `[heads, kv_lora_rank, nope]` (each head's key rows, transposed)
/// and `v_b` `[heads, v, kv_lora_rank]`; [`join_kv_b`] undoes it.
pub(super) fn split_kv_b(kv_b: &Tensor, heads: usize, nope: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let (rows, rank) = kv_b.dims2()?;
    let per_head = rows / heads.max(1);
    let grouped = kv_b.reshape((heads, per_head, rank))?;
    let k_b = grouped.narrow(1, 0, nope)?.transpose(1, 2)?.contiguous()?;
    let v = per_head.checked_sub(nope).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "kv_b_proj has {per_head} rows a head, fewer than qk_nope_head_dim {nope}"
        ))
    })?;
    let v_b = grouped.narrow(1, nope, v)?.contiguous()?;
    Ok((k_b, v_b))
}

/// The Hugging Face name of a tensor of llama.cpp's multi-query falcon (Falcon-7B's layout: one
/// layer norm before the parallel attention and MLP; `query_key_value` every query head, then
/// the key head and the value head, which the converter's regrouping leaves as it is).
fn falcon_name(gguf: &str) -> Option<String> {
    super::through_tables(gguf, &FALCON_GLOBAL, &FALCON_LAYER, ("blk.", "transformer.h."), true)
}

/// The layer and half of deepseek2's split `kv_b_proj` a tensor is (`true`: `attn_k_b`).
pub(super) fn kv_b_half(arch: &str, gguf: &str) -> Option<(usize, bool)> {
    if arch != "deepseek2" {
        return None;
    }
    let (layer, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let keys = match rest {
        "attn_k_b.weight" => true,
        "attn_v_b.weight" => false,
        _ => return None,
    };
    Some((layer.parse().ok()?, keys))
}

/// deepseek2's `kv_b_proj` (`[heads · (nope + v), kv_lora_rank]`, each head's key rows then
/// its value rows) from the halves the converter split it into for absorbed MLA: `k_b`
/// `[heads, kv_lora_rank, nope]` (transposed) and `v_b` `[heads, v, kv_lora_rank]`.
pub(super) fn join_kv_b(k_b: &Tensor, v_b: &Tensor) -> candle_core::Result<Tensor> {
    let (heads, rank, _) = k_b.dims3()?;
    let keys = k_b.transpose(1, 2)?;
    let joined = Tensor::cat(&[&keys, v_b], 1)?;
    let rows = joined.dim(1)?;
    joined.reshape((heads * rows, rank))
}

/// Whether a tensor of `arch` was stored as `1 + w` (gemma's norms, `x · (1 + w)` in the Hugging
/// Face model, `x · w` in llama.cpp's), so reading it back subtracts the one.
pub(super) fn shifted_by_one(arch: &str, gguf: &str) -> bool {
    matches!(arch, "gemma" | "gemma2" | "gemma3") && gguf.ends_with("norm.weight")
}

/// Keys of `arch` (for one of this module's) that change the maths in a way the engine's model
/// does not reproduce, or that contradict each other: the first, named, with why.
pub(super) fn refused_key(md: &HashMap<String, Value>, arch: &str) -> Option<String> {
    let key = |suffix: &str| format!("{arch}.{suffix}");
    let int = |suffix: &str| md.get(&key(suffix)).and_then(|v| v.to_u32().ok());
    // Rope scaling stated in keys, of any architecture: what the engine would not run as
    // llama.cpp runs it (`rope.rs`).
    if let Some(why) = super::rope::refused(md, arch) {
        return Some(why);
    }
    if !LAYOUTS.contains(&arch) {
        return None;
    }
    match arch {
        "deepseek2" => {
            if md.get(&key("expert_weights_norm")).and_then(|v| v.to_bool().ok()) == Some(true) {
                return Some(format!(
                    "`{}` is true; the engine's deepseek_v2 scales the chosen experts' weights, never renormalises them",
                    key("expert_weights_norm")
                ));
            }
            // llama.cpp's gating functions: 1 softmax, 2 sigmoid.
            if let Some(f) = int("expert_gating_func").filter(|f| *f != 1) {
                return Some(format!(
                    "`{}` is {f}; the engine's deepseek_v2 gates by softmax (1)",
                    key("expert_gating_func")
                ));
            }
            if let Some(mla) = int("attention.key_length_mla") {
                let (rank, rope) = (int("attention.kv_lora_rank"), int("rope.dimension_count"));
                let want_key = rank.zip(rope).map(|(r, d)| r + d);
                if int("attention.key_length") != want_key || int("attention.value_length") != rank {
                    return Some(format!(
                        "`{}` {mla} says absorbed MLA, but `{}` {:?} and `{}` {:?} are not kv_lora_rank + rope dimensions ({want_key:?}) and kv_lora_rank ({rank:?})",
                        key("attention.key_length_mla"),
                        key("attention.key_length"),
                        int("attention.key_length"),
                        key("attention.value_length"),
                        int("attention.value_length"),
                    ));
                }
                if int("attention.head_count_kv") != Some(1) {
                    return Some(format!(
                        "`{}` is {:?}; absorbed MLA is one KV head",
                        key("attention.head_count_kv"),
                        int("attention.head_count_kv")
                    ));
                }
            }
            None
        }
        "falcon" => {
            // More KV heads is Falcon-40B's grouped layout, whose `query_key_value` the
            // converter regroups and whose second layer norm this reader does not map.
            match int("attention.head_count_kv") {
                Some(1) => None,
                kv => Some(format!(
                    "`{}` is {}; the engine reads multi-query falcon GGUFs (one KV head) only",
                    key("attention.head_count_kv"),
                    kv.map_or_else(|| "absent".to_string(), |k| k.to_string())
                )),
            }
        }
        "gemma" | "gemma2" | "gemma3" => {
            if int("attention.key_length") != int("attention.value_length") {
                return Some(format!(
                    "`{}` {:?} and `{}` {:?} differ; the engine's {arch} has one head width",
                    key("attention.key_length"),
                    int("attention.key_length"),
                    key("attention.value_length"),
                    int("attention.value_length")
                ));
            }
            // gemma2's layers share one rope base.
            if arch == "gemma2"
                && let Some(local) = md.get(&key("rope.freq_base_swa")).and_then(|v| v.to_f32().ok())
                && Some(local)
                    != md.get(&key("rope.freq_base")).and_then(|v| v.to_f32().ok()).or(Some(10_000.0))
            {
                return Some(format!(
                    "`{}` is {local}; the engine's gemma2 rotates every layer by `{}`",
                    key("rope.freq_base_swa"),
                    key("rope.freq_base")
                ));
            }
            if md.get(&key("attention.sliding_window_pattern")).is_some_and(|v| v.to_vec().is_ok()) {
                return Some(format!(
                    "`{}` is a list; the engine reads a period only",
                    key("attention.sliding_window_pattern")
                ));
            }
            None
        }
        _ => None,
    }
}

/// The Hugging Face config.json of a file of `arch` (one of this module's), over `common` (the
/// keys every architecture shares, `read::dequantized_config`'s).
pub(super) fn config(
    md: &HashMap<String, Value>,
    arch: &str,
    mut common: serde_json::Value,
) -> Option<serde_json::Value> {
    let int = |suffix: &str| md.get(&format!("{arch}.{suffix}")).and_then(|v| v.to_u32().ok());
    let float =
        |suffix: &str| md.get(&format!("{arch}.{suffix}")).and_then(|v| v.to_f32().ok()).map(f64::from);
    let hidden = int("embedding_length")?;
    let heads = int("attention.head_count")?.max(1);
    let layers = int("block_count")?;
    let c = &mut common;
    let drop = |c: &mut serde_json::Value, field: &str| {
        if let Some(object) = c.as_object_mut() {
            object.remove(field);
        }
    };
    match arch {
        "deepseek2" => {
            // Absorbed MLA (this converter) states the per-head widths as `*_mla` and the
            // latent ones as key/value lengths; an older file states the per-head ones only.
            let rope = int("rope.dimension_count")?;
            let key = int("attention.key_length_mla").or(int("attention.key_length"))?;
            let value = int("attention.value_length_mla").or(int("attention.value_length"))?;
            c["model_type"] = json!("deepseek_v2");
            c["num_key_value_heads"] = json!(heads);
            c["head_dim"] = json!(rope);
            c["qk_rope_head_dim"] = json!(rope);
            c["qk_nope_head_dim"] = json!(key.checked_sub(rope)?);
            c["v_head_dim"] = json!(value);
            c["kv_lora_rank"] = json!(int("attention.kv_lora_rank")?);
            c["q_lora_rank"] = json!(int("attention.q_lora_rank"));
            c["n_routed_experts"] = json!(int("expert_count"));
            c["num_experts_per_tok"] = json!(int("expert_used_count"));
            c["n_shared_experts"] = json!(int("expert_shared_count").filter(|n| *n > 0));
            c["moe_intermediate_size"] = json!(int("expert_feed_forward_length"));
            c["first_k_dense_replace"] = json!(int("leading_dense_block_count").unwrap_or(0));
            // Absent, llama.cpp does not scale the chosen experts' weights.
            c["routed_scaling_factor"] = json!(float("expert_weights_scale").unwrap_or(1.0));
            c["topk_method"] = json!("greedy");
            c["scoring_func"] = json!("softmax");
            c["attention_bias"] = json!(false);
        }
        "phi3" => {
            // llama.cpp runs phi3 without its sliding window (it warns and disables it), so the
            // file is run so too, whatever `attention.sliding_window` says.
            let head_dim = hidden / heads;
            let rotary = int("rope.dimension_count").unwrap_or(head_dim);
            drop(c, "head_dim");
            c["partial_rotary_factor"] = json!(f64::from(rotary) / f64::from(head_dim.max(1)));
            c["original_max_position_embeddings"] = json!(int("rope.scaling.original_context_length"));
            c["sliding_window"] = serde_json::Value::Null;
        }
        "falcon" => {
            // transformers' falcon names; llama.cpp's falcon: parallel attention and MLP, rotary
            // positions (never ALiBi). GELU as transformers' falcon computes it (exact).
            return Some(json!({
                "model_type": "falcon",
                "hidden_size": hidden,
                "num_attention_heads": heads,
                "num_kv_heads": 1,
                "num_hidden_layers": layers,
                "multi_query": true,
                "new_decoder_architecture": false,
                "parallel_attn": true,
                "alibi": false,
                "bias": c["attention_bias"],
                "ffn_hidden_size": int("feed_forward_length"),
                "layer_norm_epsilon": float("attention.layer_norm_epsilon"),
                "rope_theta": float("rope.freq_base").unwrap_or(10_000.0),
                "max_position_embeddings": int("context_length"),
                "activation": "gelu",
                "vocab_size": c["vocab_size"],
                "tie_word_embeddings": c["tie_word_embeddings"],
                "bos_token_id": c["bos_token_id"],
                "eos_token_id": c["eos_token_id"],
            }));
        }
        "gemma" => {
            c["head_dim"] = json!(int("attention.key_length").unwrap_or(hidden / heads));
            c["hidden_act"] = json!("gelu_pytorch_tanh");
        }
        "gemma2" | "gemma3" => {
            let head_dim = int("attention.key_length").unwrap_or(hidden / heads);
            let context = int("context_length")?;
            let gemma2 = arch == "gemma2";
            // llama.cpp's gemma2 always slides (4096 unless stated); gemma3 only with a window.
            let window = match int("attention.sliding_window") {
                None if gemma2 => Some(4096),
                w => w.filter(|w| *w > 0),
            };
            // Every `sliding_window_pattern`-th layer is global (llama.cpp: 2 for gemma2, 6 for
            // gemma3, unless stated; 0: every layer slides), the others sliding.
            let period = int("attention.sliding_window_pattern").unwrap_or(if gemma2 { 2 } else { 6 });
            let layer_types: Vec<&str> = (0..layers)
                .map(|l| match (window, period) {
                    (None, _) => "full_attention",
                    (Some(_), 0) => "sliding_attention",
                    (Some(_), p) if l % p < p - 1 => "sliding_attention",
                    _ => "full_attention",
                })
                .collect();
            let base = float("rope.freq_base").unwrap_or(10_000.0);
            // llama.cpp scales queries by 1/√head_dim, save for the 27B models (gemma2's 46
            // layers, gemma3's 62), by 1/√(hidden/heads).
            let scalar = if layers == if gemma2 { 46 } else { 62 } { hidden / heads } else { head_dim };
            // llama.cpp's gemma2 caps attention and final logits (50 and 30 unless stated);
            // gemma3 caps the final logits only where the file says so.
            let (attention_cap, final_cap) = if gemma2 {
                (
                    Some(float("attn_logit_softcapping").unwrap_or(50.0)),
                    Some(float("final_logit_softcapping").unwrap_or(30.0)),
                )
            } else {
                (None, float("final_logit_softcapping"))
            };
            c["model_type"] = json!(if gemma2 { "gemma2" } else { "gemma3_text" });
            c["head_dim"] = json!(head_dim);
            c["hidden_activation"] = json!("gelu_pytorch_tanh");
            drop(c, "hidden_act");
            c["query_pre_attn_scalar"] = json!(scalar);
            c["attn_logit_softcapping"] = json!(attention_cap);
            c["final_logit_softcapping"] = json!(final_cap);
            c["sliding_window"] = json!(window.unwrap_or(context));
            c["layer_types"] = json!(layer_types);
            if !gemma2 {
                drop(c, "rope_theta");
                // Linear scaling (`rope.rs`) on the global layers only, as llama.cpp scales them.
                let full = match c.get("rope_scaling").and_then(|s| s.get("factor")).cloned() {
                    Some(factor) => json!({"rope_type": "linear", "factor": factor, "rope_theta": base}),
                    None => json!({"rope_type": "default", "rope_theta": base}),
                };
                drop(c, "rope_scaling");
                c["rope_parameters"] = json!({
                    "full_attention": full,
                    "sliding_attention": {
                        "rope_type": "default",
                        "rope_theta": float("rope.freq_base_swa").unwrap_or(base),
                    },
                });
            }
        }
        _ => return None,
    }
    Some(common)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_b_halves_join_back_into_each_heads_key_rows_then_value_rows() {
        // kv_b_proj of 2 heads, nope 2, v 3, rank 4: row r holds r · 10 + column.
        let (heads, nope, v, rank) = (2usize, 2usize, 3usize, 4usize);
        let rows = heads * (nope + v);
        let kv_b: Vec<f32> = (0..rows * rank).map(|i| ((i / rank) * 10 + i % rank) as f32).collect();
        let kv_b = Tensor::from_vec(kv_b, (rows, rank), &candle_core::Device::Cpu).unwrap();
        // The converter's halves: per head, k_b transposed to [rank, nope], v_b as [v, rank].
        let grouped = kv_b.reshape((heads, nope + v, rank)).unwrap();
        let k_b = grouped.narrow(1, 0, nope).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let v_b = grouped.narrow(1, nope, v).unwrap().contiguous().unwrap();
        let joined = join_kv_b(&k_b, &v_b).unwrap();
        assert_eq!(joined.to_vec2::<f32>().unwrap(), kv_b.to_vec2::<f32>().unwrap());
    }

    /// The writer's split is the converter's (the halves the reader's test builds by hand) and
    /// joins back to the same tensor.
    #[test]
    fn kv_b_splits_as_the_converter_splits_and_joins_back() {
        let (heads, nope, v, rank) = (2usize, 2usize, 3usize, 4usize);
        let rows = heads * (nope + v);
        let data: Vec<f32> = (0..rows * rank).map(|i| i as f32).collect();
        let kv_b = Tensor::from_vec(data, (rows, rank), &candle_core::Device::Cpu).unwrap();
        let (k_b, v_b) = split_kv_b(&kv_b, heads, nope).unwrap();
        assert_eq!((k_b.dims(), v_b.dims()), (&[heads, rank, nope][..], &[heads, v, rank][..]));
        // Head 1's first key row (row nope + v = 5 of kv_b) is k_b[1]'s first column.
        let column: Vec<f32> =
            k_b.get(1).unwrap().narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(column, [20., 21., 22., 23.]);
        let joined = join_kv_b(&k_b, &v_b).unwrap();
        assert_eq!(joined.to_vec2::<f32>().unwrap(), kv_b.to_vec2::<f32>().unwrap());
        assert!(split_kv_b(&kv_b, heads, 6).is_err(), "more key rows than a head has");
        assert!(split_kv_b(&kv_b, 3, nope).is_err(), "rows no head count divides");
    }

    /// Every name the writer gives a tensor of these architectures reads back to the same
    /// Hugging Face name.
    #[test]
    fn written_names_read_back() {
        for (arch, hf, gguf) in [
            ("deepseek2", "model.layers.3.self_attn.kv_a_proj_with_mqa.weight", "blk.3.attn_kv_a_mqa.weight"),
            (
                "deepseek2",
                "model.layers.1.mlp.shared_experts.down_proj.weight",
                "blk.1.ffn_down_shexp.weight",
            ),
            ("phi3", "model.layers.2.mlp.gate_up_proj.weight", "blk.2.ffn_up.weight"),
            ("phi3", "model.layers.0.self_attn.qkv_proj.weight", "blk.0.attn_qkv.weight"),
            ("gemma2", "model.layers.0.pre_feedforward_layernorm.weight", "blk.0.ffn_norm.weight"),
            ("gemma3", "model.layers.1.post_attention_layernorm.weight", "blk.1.post_attention_norm.weight"),
            ("falcon", "transformer.h.1.self_attention.query_key_value.weight", "blk.1.attn_qkv.weight"),
            ("falcon", "transformer.ln_f.bias", "output_norm.bias"),
        ] {
            assert_eq!(written_name(arch, hf).as_deref(), Some(gguf), "{arch} {hf}");
            assert_eq!(hf_name(arch, gguf).as_deref(), Some(hf), "{arch} {gguf}");
        }
        // The shared table names the rest; gemma's post-attention norm is the llama convention's.
        assert_eq!(written_name("gemma", "model.layers.0.post_attention_layernorm.weight"), None);
        assert_eq!(
            super::super::written_name("gemma", "model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(super::super::written_name("falcon", "model.layers.0.mlp.up_proj.weight"), None);
    }

    #[test]
    fn names_map_back_per_architecture() {
        for (arch, gguf, hf) in [
            ("deepseek2", "blk.3.attn_kv_a_mqa.weight", "model.layers.3.self_attn.kv_a_proj_with_mqa.weight"),
            ("deepseek2", "blk.1.ffn_up_shexp.weight", "model.layers.1.mlp.shared_experts.up_proj.weight"),
            ("deepseek2", "blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight"),
            ("phi3", "blk.2.ffn_up.weight", "model.layers.2.mlp.gate_up_proj.weight"),
            ("phi3", "blk.2.attn_qkv.weight", "model.layers.2.self_attn.qkv_proj.weight"),
            ("gemma", "blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
            ("gemma2", "blk.0.ffn_norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"),
            ("gemma3", "blk.0.post_attention_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
            ("falcon", "blk.1.attn_norm.bias", "transformer.h.1.input_layernorm.bias"),
            ("falcon", "token_embd.weight", "transformer.word_embeddings.weight"),
        ] {
            assert_eq!(hf_name(arch, gguf).as_deref(), Some(hf), "{arch} {gguf}");
        }
        assert_eq!(kv_b_half("deepseek2", "blk.4.attn_v_b.weight"), Some((4, false)));
        assert_eq!(kv_b_half("qwen3", "blk.4.attn_v_b.weight"), None);
        assert!(hf_name("falcon", "blk.0.attn_norm_2.weight").is_none(), "Falcon-40B's second norm");
        assert!(shifted_by_one("gemma2", "blk.0.post_ffw_norm.weight"));
        assert!(!shifted_by_one("phi3", "blk.0.attn_norm.weight"));
    }

    #[test]
    fn rope_scaling_keys_the_engine_does_not_run_are_refused_and_the_rest_for_this_modules() {
        let md = |pairs: &[(&str, Value)]| -> HashMap<String, Value> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        // A llama's linear scaling (deepseek-coder-1.3b's) and a qwen2's YaRN are read
        // (`rope.rs`); a qwen3's YaRN is not, refused by name, as is a qwen3 factor (linear,
        // llama.cpp's default type). "none" is no scaling.
        let linear = md(&[
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
        ]);
        assert_eq!(refused_key(&linear, "llama"), None);
        assert_eq!(refused_key(&md(&[("qwen2.rope.scaling.factor", Value::F32(4.0))]), "qwen2"), None);
        let why = refused_key(&md(&[("qwen3.rope.scaling.type", Value::String("yarn".into()))]), "qwen3");
        assert!(why.is_some_and(|w| w.contains("`qwen3.rope.scaling.type` is `yarn`")));
        let why = refused_key(&md(&[("qwen3.rope.scaling.factor", Value::F32(4.0))]), "qwen3");
        assert!(why.is_some_and(|w| w.contains("`qwen3.rope.scaling.factor` is 4")));
        assert_eq!(
            refused_key(&md(&[("llama.rope.scaling.type", Value::String("none".into()))]), "llama"),
            None
        );
        assert_eq!(refused_key(&md(&[("llama.rope.scaling.factor", Value::F32(1.0))]), "llama"), None);
        // The other keys are this module's architectures' only.
        assert_eq!(refused_key(&md(&[("llama.rope.freq_base_swa", Value::F32(1e6))]), "llama"), None);
        let why = refused_key(&md(&[("phi3.rope.scaling.type", Value::String("longrope".into()))]), "phi3");
        assert!(why.is_some_and(|w| w.contains("`phi3.rope.scaling.type` is `longrope`")));
        // deepseek2's factor without a type is linear, which its model does not run.
        let why = refused_key(&md(&[("deepseek2.rope.scaling.factor", Value::F32(40.0))]), "deepseek2");
        assert!(why.is_some_and(|w| w.contains("`deepseek2.rope.scaling.factor` is 40")));
        let why = refused_key(&md(&[("gemma2.rope.freq_base_swa", Value::F32(1e6))]), "gemma2");
        assert!(why.is_some_and(|w| w.contains("`gemma2.rope.freq_base_swa` is 1000000")));
    }
}
