//! starcoder2: llama's attention (biases where `use_bias` says) with layer norms, GPT-2's plain
//! MLP (`c_fc`, `c_proj`) and a sliding window in every layer. candle's starcoder2 masks a
//! prompt one key wider than transformers' window and never masks against the cache, so there
//! the window had to become the session's context.

use candle_nn::Activation;

use super::blocks::{NormKind, Rotary};
use super::decoder::{Decoder, Dims, MlpShape, Spec};
use super::weights::Weights;

/// starcoder2's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    #[serde(flatten)]
    dims: Dims,
    norm_epsilon: f64,
    rope_theta: f64,
    use_bias: bool,
    hidden_act: Activation,
    tie_word_embeddings: bool,
    sliding_window: Option<usize>,
}

pub(super) fn load(c: &Config, w: Weights) -> candle_core::Result<Decoder> {
    let head_dim = c.dims.head_dim();
    let rotary = Rotary::new(c.rope_theta, head_dim);
    let base =
        Spec::of(&c.dims, NormKind::Layer(c.norm_epsilon), rotary, c.hidden_act, c.tie_word_embeddings);
    let spec = Spec {
        mlp: MlpShape::Plain,
        windows: vec![c.sliding_window; c.dims.layers()],
        qkv_bias: c.use_bias,
        o_bias: c.use_bias,
        mlp_bias: c.use_bias,
        ..base
    };
    Decoder::new(spec, w)
}
