//! gemma2 and gemma3_text: gemma's decoder with four norms a layer (each `x · (1 + w)`), sliding
//! and full attention layers as `layer_types` says (each sliding layer masked to its window, so
//! the session keeps the whole context), scores scaled by `query_pre_attn_scalar` and optionally
//! soft-capped, the logits too. gemma3 adds per-head q/k norms and a rope base per layer type
//! (the full layers' optionally under linear scaling). candle's gemma3 fails on its first
//! full-attention layer ("slice-set only supports contiguous tensors") and reads the layer
//! pattern only as a period; candle's gemma2 applies no window.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Activation, RmsNorm, VarBuilder};

use super::weights::{Embedding, Linear, Weights};

use super::blocks::{KvCache, Mlp, Rotary, Scores, attend};
use super::lm::CausalLm;

/// gemma2's or gemma3_text's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    rope_local_base_freq: f64,
    /// The full layers' linear rope scaling factor (1 when unscaled).
    #[serde(default = "one")]
    rope_linear_factor: f64,
    hidden_activation: Activation,
    query_pre_attn_scalar: f64,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    sliding_window: usize,
    /// `sliding_attention` or `full_attention`, one per layer.
    layer_types: Vec<String>,
    #[serde(default)]
    attention_bias: bool,
    /// Per-head q/k norms (gemma3).
    #[serde(default)]
    qk_norm: bool,
}

fn one() -> f64 {
    1.0
}

/// gemma's norm: the weight is stored as an offset from 1.
fn norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    let weight = vb.get(size, "weight")?;
    Ok(RmsNorm::new((weight + 1.0)?, eps))
}

struct Layer {
    input: RmsNorm,
    post_attention: RmsNorm,
    pre_feedforward: RmsNorm,
    post_feedforward: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    mlp: Mlp,
    rotary: Rotary,
    scores: Scores,
    cache: KvCache,
}

pub(super) struct Model {
    embed: Embedding,
    embed_scale: f64,
    layers: Vec<Layer>,
    norm: RmsNorm,
    head: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    final_softcap: Option<f64>,
}

impl Model {
    pub(super) fn new(c: &Config, vb: Weights) -> Result<Self> {
        let (h, d, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let m = vb.pp("model");
        let embed = m.pp("embed_tokens").embedding(c.vocab_size, h)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let b = m.pp(format!("layers.{l}"));
            let a = b.pp("self_attn");
            let sliding = c.layer_types.get(l).is_some_and(|t| t == "sliding_attention");
            let rotary = if sliding {
                Rotary::new(c.rope_local_base_freq, d)
            } else {
                Rotary::linear(c.rope_theta, d, c.rope_linear_factor)
            };
            let bias = c.attention_bias;
            layers.push(Layer {
                input: norm(h, eps, b.vb().pp("input_layernorm"))?,
                post_attention: norm(h, eps, b.vb().pp("post_attention_layernorm"))?,
                pre_feedforward: norm(h, eps, b.vb().pp("pre_feedforward_layernorm"))?,
                post_feedforward: norm(h, eps, b.vb().pp("post_feedforward_layernorm"))?,
                q: a.pp("q_proj").linear(h, c.num_attention_heads * d, bias)?,
                k: a.pp("k_proj").linear(h, c.num_key_value_heads * d, bias)?,
                v: a.pp("v_proj").linear(h, c.num_key_value_heads * d, bias)?,
                o: a.pp("o_proj").linear(c.num_attention_heads * d, h, bias)?,
                qk_norm: if c.qk_norm {
                    Some((norm(d, eps, a.vb().pp("q_norm"))?, norm(d, eps, a.vb().pp("k_norm"))?))
                } else {
                    None
                },
                mlp: Mlp::gated(h, c.intermediate_size, false, c.hidden_activation, &b.pp("mlp"))?,
                rotary,
                scores: Scores {
                    scale: 1.0 / c.query_pre_attn_scalar.sqrt(),
                    softcap: c.attn_logit_softcapping,
                    window: sliding.then_some(c.sliding_window),
                },
                cache: KvCache::default(),
            });
        }
        let norm = norm(h, eps, m.vb().pp("norm"))?;
        let head = embed.as_head();
        Ok(Model {
            embed,
            embed_scale: (h as f64).sqrt(),
            layers,
            norm,
            head,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: d,
            final_softcap: c.final_logit_softcapping,
        })
    }
}

impl CausalLm for Model {
    fn forward(&mut self, input: &Tensor, pos: usize) -> Result<Tensor> {
        let (b, len) = input.dims2()?;
        let d = self.head_dim;
        // transformers casts the scale to the weights' dtype first.
        let mut x = (self.embed.forward(input)? * f64::from(self.embed_scale as f32))?;
        for layer in &mut self.layers {
            let normed = x.apply(&layer.input)?;
            let heads = |t: Tensor, n: usize, norm: Option<&RmsNorm>| {
                let t = t.reshape((b, len, n, d))?;
                match norm {
                    Some(norm) => t.apply(norm)?.transpose(1, 2),
                    None => t.transpose(1, 2),
                }
            };
            let (q_norm, k_norm) = match &layer.qk_norm {
                Some((q, k)) => (Some(q), Some(k)),
                None => (None, None),
            };
            let q = layer.rotary.apply(&heads(normed.apply(&layer.q)?, self.heads, q_norm)?, pos, 0)?;
            let k = layer.rotary.apply(&heads(normed.apply(&layer.k)?, self.kv_heads, k_norm)?, pos, 0)?;
            let v =
                normed.apply(&layer.v)?.reshape((b, len, self.kv_heads, d))?.transpose(1, 2)?.contiguous()?;
            let (k, v) = layer.cache.append(k, v)?;
            let attn = attend(&q, &k, &v, layer.scores)?.apply(&layer.o)?;
            x = (x + attn.apply(&layer.post_attention)?)?;
            let mlp = x.apply(&layer.pre_feedforward)?.apply(&layer.mlp)?.apply(&layer.post_feedforward)?;
            x = (x + mlp)?;
        }
        let logits = x.narrow(1, len - 1, 1)?.apply(&self.norm)?.apply(&self.head)?;
        match self.final_softcap {
            None => Ok(logits),
            Some(cap) => (logits / cap)?.tanh()? * cap,
        }
    }

    fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.cache.clear();
        }
    }
}
