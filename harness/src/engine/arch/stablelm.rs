//! stablelm: llama's decoder with layer norms (weight and bias), a rotary share of each head
//! (`partial_rotary_factor`), optional q/k/v biases, optional per-head q/k layer norms
//! (`qk_layernorm`, StableLM 2 12B) and an optional parallel residual. candle's
//! stable_lm cannot empty its KV cache, which every new sequence needs.

use candle_nn::Activation;

use super::blocks::{NormKind, Rotary};
use super::decoder::{Decoder, Dims, Spec};
use super::weights::Weights;

/// stablelm's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    #[serde(flatten)]
    dims: Dims,
    layer_norm_eps: f64,
    rope_theta: f64,
    partial_rotary_factor: f64,
    tie_word_embeddings: bool,
    #[serde(default)]
    use_qkv_bias: bool,
    #[serde(default)]
    use_parallel_residual: bool,
    #[serde(default)]
    qk_layernorm: bool,
    hidden_act: Activation,
}

pub(super) fn load(c: &Config, w: Weights) -> candle_core::Result<Decoder> {
    let head_dim = c.dims.head_dim();
    // transformers: int(head_dim * partial_rotary_factor).
    let rotary = Rotary::new(c.rope_theta, (head_dim as f64 * c.partial_rotary_factor) as usize);
    let base =
        Spec::of(&c.dims, NormKind::Layer(c.layer_norm_eps), rotary, c.hidden_act, c.tie_word_embeddings);
    let spec = Spec {
        qkv_bias: c.use_qkv_bias,
        parallel_residual: c.use_parallel_residual,
        head_norms: c.qk_layernorm,
        ..base
    };
    Decoder::new(spec, w)
}
