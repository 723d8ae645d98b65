//! llama, mistral and qwen2 on the project's decoder: llama's blocks as they are, mistral's
//! explicit head width, qwen2's q/k/v biases. On CPU their matrices run on the project's
//! kernels in the file's own type; candle's models of these families widen every weight to f32.

use candle_nn::Activation;

use super::blocks::{Llama3Scaling, NormKind, Rotary};
use super::decoder::{Decoder, Dims, Spec};
use super::weights::Weights;

/// What the three families' config.json share, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    #[serde(flatten)]
    dims: Dims,
    rms_norm_eps: f64,
    rope_theta: f64,
    /// llama3's rope scaling (the only type the normalised config hands on).
    #[serde(default)]
    rope_scaling: Option<Llama3Scaling>,
    /// The same scaling as a llama GGUF holds it: one factor per rotating pair, as llama.cpp's
    /// converter computed them (`rope_freqs.weight`, put here by the engine's GGUF loader).
    #[serde(default)]
    rope_factors: Option<Vec<f64>>,
    #[serde(default)]
    tie_word_embeddings: bool,
    hidden_act: Activation,
    /// The head width, where the config states one (mistral's; a GGUF's `attention.key_length`;
    /// `format::hf_config` refuses a llama or qwen2 whose width is not hidden / heads).
    #[serde(default)]
    head_dim: Option<usize>,
}

/// Which of the three a config is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Llama,
    Mistral,
    Qwen2,
}

pub(super) fn load(family: Family, c: &Config, w: Weights) -> candle_core::Result<Decoder> {
    let head_dim = c.head_dim.unwrap_or_else(|| c.dims.head_dim());
    let rotary = match (&c.rope_scaling, &c.rope_factors) {
        (Some(_), Some(_)) => candle_core::bail!("both a rope scaling and rope factors"),
        (Some(scaling), None) => Rotary::llama3(c.rope_theta, head_dim, scaling),
        (None, Some(factors)) => Rotary::with_factors(c.rope_theta, head_dim, factors)?,
        (None, None) => Rotary::new(c.rope_theta, head_dim),
    };
    let base = Spec::of(&c.dims, NormKind::Rms(c.rms_norm_eps), rotary, c.hidden_act, c.tie_word_embeddings);
    let spec = Spec {
        head_dim,
        attention_scale: 1.0 / (head_dim as f64).sqrt(),
        qkv_bias: family == Family::Qwen2,
        ..base
    };
    Decoder::new(spec, w)
}
