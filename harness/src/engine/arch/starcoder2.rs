//! starcoder2: llama's attention (biases where `use_bias` says) with layer norms, GPT-2's plain
//! MLP (`c_fc`, `c_proj`) and a sliding window in every layer. candle's starcoder2 masks a
//! prompt one key wider than transformers' window and never masks against the cache, so there
//! the window had to become the session's context.

use candle_nn::{Activation, VarBuilder};

use super::blocks::{NormKind, Rotary};
use super::decoder::{Decoder, MlpShape, Spec};

/// starcoder2's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    vocab_size: usize,
    norm_epsilon: f64,
    rope_theta: f64,
    use_bias: bool,
    hidden_act: Activation,
    tie_word_embeddings: bool,
    sliding_window: Option<usize>,
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
        norm: NormKind::Layer(c.norm_epsilon),
        rotary: Rotary::new(c.rope_theta, head_dim),
        fused_qkv: false,
        mlp: MlpShape::Plain,
        window: c.sliding_window,
        qkv_bias: c.use_bias,
        o_bias: c.use_bias,
        mlp_bias: c.use_bias,
        act: c.hidden_act,
        tied: c.tie_word_embeddings,
        embedding_multiplier: 1.0,
        residual_multiplier: 1.0,
        attention_scale: 1.0 / (head_dim as f64).sqrt(),
        logits_divisor: 1.0,
        parallel_residual: false,
    };
    Decoder::new(spec, vb)
}
