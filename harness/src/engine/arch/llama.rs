//! llama, mistral and qwen2 on the project's decoder: llama's blocks as they are (optionally
//! with attention and MLP biases), mistral's explicit head width, qwen2's q/k/v biases; rope
//! scaling (linear, llama3, YaRN) and sliding windows on the layers `layer_types` names. On CPU
//! their matrices run on the project's kernels in the file's own type; candle's models of these
//! families widen every weight to f32.

use candle_nn::Activation;

use super::blocks::{NormKind, RopeScaling, Rotary};
use super::decoder::{Decoder, Dims, Spec};
use super::weights::Weights;

/// What the three families' config.json share, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    #[serde(flatten)]
    dims: Dims,
    rms_norm_eps: f64,
    rope_theta: f64,
    /// The rope scaling, complete (`format::hf_config` filled transformers' defaults in).
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    /// llama3's scaling as a llama GGUF holds it: one factor per rotating pair, as llama.cpp's
    /// converter computed them (`rope_freqs.weight`, put here by the engine's GGUF loader).
    #[serde(default)]
    rope_factors: Option<Vec<f64>>,
    #[serde(default)]
    tie_word_embeddings: bool,
    hidden_act: Activation,
    /// The head width, where the config states one (transformers reads it for all three, and a
    /// GGUF states it as `attention.key_length`); hidden / heads otherwise.
    #[serde(default)]
    head_dim: Option<usize>,
    /// llama's biases on q, k, v and o; on the MLP.
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    /// The sliding window, on the layers `layer_types` calls `sliding_attention` (every layer
    /// where it names none).
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
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
        (_, Some(factors)) => Rotary::with_factors(c.rope_theta, head_dim, factors)?,
        (scaling, None) => Rotary::scaled(c.rope_theta, head_dim, scaling.as_ref()),
    };
    let base = Spec::of(&c.dims, NormKind::Rms(c.rms_norm_eps), rotary, c.hidden_act, c.tie_word_embeddings);
    let windows = (0..c.dims.layers())
        .map(|l| match &c.layer_types {
            Some(types) if types.get(l).is_none_or(|t| t != "sliding_attention") => None,
            _ => c.sliding_window,
        })
        .collect();
    // qwen2 has q/k/v biases always (a GGUF's config may say so as `attention_bias`); llama has
    // them on q, k, v and o where `attention_bias` says.
    let llama_bias = family == Family::Llama && c.attention_bias;
    let spec = Spec {
        head_dim,
        attention_scale: 1.0 / (head_dim as f64).sqrt(),
        qkv_bias: family == Family::Qwen2 || llama_bias,
        o_bias: llama_bias,
        mlp_bias: c.mlp_bias,
        windows,
        ..base
    };
    Decoder::new(spec, w)
}
