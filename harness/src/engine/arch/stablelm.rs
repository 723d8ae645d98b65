//! stablelm: llama's decoder with layer norms (weight and bias), a rotary share of each head
//! (`partial_rotary_factor`), optional q/k/v biases and an optional parallel residual. candle's
//! stable_lm cannot empty its KV cache, which every new sequence needs.

use candle_nn::{Activation, VarBuilder};

use super::blocks::{NormKind, Rotary};
use super::decoder::{Decoder, MlpShape, Spec};

/// stablelm's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    vocab_size: usize,
    layer_norm_eps: f64,
    rope_theta: f64,
    partial_rotary_factor: f64,
    tie_word_embeddings: bool,
    #[serde(default)]
    use_qkv_bias: bool,
    #[serde(default)]
    use_parallel_residual: bool,
    hidden_act: Activation,
}

pub(super) fn load(c: &Config, vb: VarBuilder) -> candle_core::Result<Decoder> {
    let head_dim = c.hidden_size / c.num_attention_heads;
    let spec = Spec {
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim,
        vocab: c.vocab_size,
        norm: NormKind::Layer(c.layer_norm_eps),
        // transformers: int(head_dim * partial_rotary_factor).
        rotary: Rotary::new(c.rope_theta, (head_dim as f64 * c.partial_rotary_factor) as usize),
        fused_qkv: false,
        mlp: MlpShape::Gated,
        window: None,
        qkv_bias: c.use_qkv_bias,
        o_bias: false,
        mlp_bias: false,
        act: c.hidden_act,
        tied: c.tie_word_embeddings,
        embedding_multiplier: 1.0,
        residual_multiplier: 1.0,
        attention_scale: 1.0 / (head_dim as f64).sqrt(),
        logits_divisor: 1.0,
        parallel_residual: c.use_parallel_residual,
    };
    Decoder::new(spec, vb)
}
