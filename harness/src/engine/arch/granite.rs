//! granite: llama's decoder with four scales transformers applies and candle's granite does
//! not (`embedding_multiplier`, `residual_multiplier`, `attention_multiplier` in place of
//! 1/√head_dim, `logits_scaling` as the logits' divisor).

use candle_nn::Activation;

use super::blocks::{NormKind, RopeScaling, Rotary};
use super::decoder::{Decoder, Dims, Spec};
use super::weights::Weights;

/// granite's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    #[serde(flatten)]
    dims: Dims,
    rms_norm_eps: f64,
    rope_theta: f64,
    /// The rope scaling, complete (`format::hf_config` filled transformers' defaults in).
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
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

pub(super) fn load(c: &Config, w: Weights) -> candle_core::Result<Decoder> {
    let head_dim = c.dims.head_dim();
    let base = Spec::of(
        &c.dims,
        NormKind::Rms(c.rms_norm_eps),
        Rotary::scaled(c.rope_theta, head_dim, c.rope_scaling.as_ref()),
        c.hidden_act,
        c.tie_word_embeddings,
    );
    let spec = Spec {
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        mlp_bias: c.mlp_bias,
        embedding_multiplier: c.embedding_multiplier,
        residual_multiplier: c.residual_multiplier,
        attention_scale: c.attention_multiplier,
        logits_divisor: c.logits_scaling,
        ..base
    };
    Decoder::new(spec, w)
}
