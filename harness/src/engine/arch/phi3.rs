//! phi3 (Phi-3, Phi-3.5, Phi-4-mini): llama's decoder with fused `qkv_proj` and `gate_up_proj`,
//! a rotary share of each head, and transformers' LongRoPE. candle's phi3 multiplies the
//! frequencies by LongRoPE's factors where transformers divides by them, never scales cos and sin
//! by the attention factor, and picks the long factors by position rather than by how far a
//! pass reaches.

use candle_nn::Activation;

use super::blocks::{NormKind, Rotary};
use super::decoder::{Decoder, Dims, MlpShape, Spec};
use super::weights::Weights;

/// phi3's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    #[serde(flatten)]
    dims: Dims,
    rms_norm_eps: f64,
    rope_theta: f64,
    #[serde(default = "one")]
    partial_rotary_factor: f64,
    tie_word_embeddings: bool,
    hidden_act: Activation,
    /// Every layer's sliding window.
    sliding_window: Option<usize>,
    /// LongRoPE's parameters, complete (`hf_config` derived the factor and attention factor).
    rope_longrope: Option<LongRope>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct LongRope {
    short_factor: Vec<f64>,
    long_factor: Vec<f64>,
    original_max_position_embeddings: usize,
    attention_factor: f64,
}

fn one() -> f64 {
    1.0
}

pub(super) fn load(c: &Config, w: Weights) -> candle_core::Result<Decoder> {
    let head_dim = c.dims.head_dim();
    // transformers: int(head_dim * partial_rotary_factor).
    let rotary_dim = (head_dim as f64 * c.partial_rotary_factor) as usize;
    let rotary = match &c.rope_longrope {
        None => Rotary::new(c.rope_theta, rotary_dim),
        Some(l) => {
            if l.short_factor.len() != rotary_dim / 2 || l.long_factor.len() != rotary_dim / 2 {
                candle_core::bail!(
                    "rope scaling's short_factor and long_factor hold {} and {} numbers, not one per rotating pair ({})",
                    l.short_factor.len(),
                    l.long_factor.len(),
                    rotary_dim / 2
                );
            }
            Rotary::longrope(
                c.rope_theta,
                rotary_dim,
                &l.short_factor,
                &l.long_factor,
                l.original_max_position_embeddings,
                l.attention_factor,
            )
        }
    };
    let base = Spec::of(&c.dims, NormKind::Rms(c.rms_norm_eps), rotary, c.hidden_act, c.tie_word_embeddings);
    let spec = Spec {
        fused_qkv: true,
        mlp: MlpShape::GatedFused,
        windows: vec![c.sliding_window; c.dims.layers()],
        ..base
    };
    Decoder::new(spec, w)
}
