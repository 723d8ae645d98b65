//! granite: llama's decoder with four scales transformers applies and candle's granite does
//! not (`embedding_multiplier`, `residual_multiplier`, `attention_multiplier` in place of
//! 1/√head_dim, `logits_scaling` as the logits' divisor).

use candle_nn::{Activation, VarBuilder};

use super::blocks::{NormKind, Rotary};
use super::decoder::{Decoder, MlpShape, Spec};

/// granite's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Activation,
    #[serde(default = "one")]
    embedding_multiplier: f64,
    #[serde(default = "one")]
    residual_multiplier: f64,
    #[serde(default = "one")]
    attention_multiplier: f64,
    #[serde(default = "one")]
    logits_scaling: f64,
}

fn one() -> f64 {
    1.0
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
        norm: NormKind::Rms(c.rms_norm_eps),
        rotary: Rotary::new(c.rope_theta, head_dim),
        fused_qkv: false,
        mlp: MlpShape::Gated,
        window: None,
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        mlp_bias: c.mlp_bias,
        act: c.hidden_act,
        tied: c.tie_word_embeddings,
        embedding_multiplier: c.embedding_multiplier,
        residual_multiplier: c.residual_multiplier,
        attention_scale: c.attention_multiplier,
        logits_divisor: c.logits_scaling,
        parallel_residual: false,
    };
    Decoder::new(spec, vb)
}
