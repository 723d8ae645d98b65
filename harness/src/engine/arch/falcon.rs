//! falcon: the parallel attention/MLP block with layer norms and one fused `query_key_value`,
//! in each of transformers' three layouts (multi-query, per-head q/k/v, and the "new decoder
//! architecture" of grouped heads with two layer norms). candle's falcon runs only the first,
//! with a fixed rope base, a fixed MLP width and the tanh approximation of GELU where
//! transformers computes the exact one, and never ties its head to the embedding.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Activation, LayerNorm, layer_norm};

use super::weights::{Embedding, Linear, Weights};

use super::blocks::{KvCache, Rotary, Scores, attend};
use super::lm::CausalLm;

/// falcon's config.json, as `format::hf_config` normalised it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    hidden_size: usize,
    num_attention_heads: usize,
    num_kv_heads: usize,
    num_hidden_layers: usize,
    ffn_hidden_size: usize,
    vocab_size: usize,
    layer_norm_epsilon: f64,
    rope_theta: f64,
    multi_query: bool,
    new_decoder_architecture: bool,
    parallel_attn: bool,
    /// Layer norms before a parallel block: 1 (shared) or 2 (`ln_attn`, `ln_mlp`).
    num_ln_in_parallel_attn: usize,
    bias: bool,
    activation: Activation,
    tie_word_embeddings: bool,
}

/// How `query_key_value`'s output is laid out.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Every query head, then one key head and one value head.
    MultiQuery,
    /// Per head: its query, key and value.
    PerHead,
    /// Per key/value group: its query heads, its key head, its value head.
    Grouped,
}

enum Norms {
    /// One norm before attention; the MLP reads its output too when the block is parallel,
    /// else a second norm after the attention's residual add.
    Input { input: LayerNorm, post: Option<LayerNorm> },
    /// Parallel block with a norm for each side.
    Two { attn: LayerNorm, mlp: LayerNorm },
}

struct Layer {
    norms: Norms,
    qkv: Linear,
    dense: Linear,
    up: Linear,
    down: Linear,
    cache: KvCache,
}

pub(super) struct Model {
    embed: Embedding,
    layers: Vec<Layer>,
    ln_f: LayerNorm,
    head: Linear,
    rotary: Rotary,
    layout: Layout,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    act: Activation,
    scores: Scores,
}

impl Model {
    pub(super) fn new(c: &Config, vb: Weights) -> Result<Self> {
        let h = c.hidden_size;
        let head_dim = h / c.num_attention_heads;
        let (layout, kv_heads) = if c.new_decoder_architecture {
            (Layout::Grouped, c.num_kv_heads)
        } else if c.multi_query {
            (Layout::MultiQuery, 1)
        } else {
            (Layout::PerHead, c.num_attention_heads)
        };
        let qkv_out = (c.num_attention_heads + 2 * kv_heads) * head_dim;
        let t = vb.pp("transformer");
        let embed = t.pp("word_embeddings").embedding(c.vocab_size, h)?;
        let eps = c.layer_norm_epsilon;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let b = t.pp(format!("h.{l}"));
            let norms = if c.parallel_attn && (c.new_decoder_architecture && c.num_ln_in_parallel_attn == 2) {
                Norms::Two {
                    attn: layer_norm(h, eps, b.vb().pp("ln_attn"))?,
                    mlp: layer_norm(h, eps, b.vb().pp("ln_mlp"))?,
                }
            } else {
                let post = if c.parallel_attn {
                    None
                } else {
                    Some(layer_norm(h, eps, b.vb().pp("post_attention_layernorm"))?)
                };
                Norms::Input { input: layer_norm(h, eps, b.vb().pp("input_layernorm"))?, post }
            };
            layers.push(Layer {
                norms,
                qkv: b.pp("self_attention.query_key_value").linear(h, qkv_out, c.bias)?,
                dense: b.pp("self_attention.dense").linear(h, h, c.bias)?,
                up: b.pp("mlp.dense_h_to_4h").linear(h, c.ffn_hidden_size, c.bias)?,
                down: b.pp("mlp.dense_4h_to_h").linear(c.ffn_hidden_size, h, c.bias)?,
                cache: KvCache::default(),
            });
        }
        let ln_f = layer_norm(h, eps, t.vb().pp("ln_f"))?;
        let head = if c.tie_word_embeddings {
            embed.as_head()
        } else {
            vb.pp("lm_head").linear(h, c.vocab_size, false)?
        };
        Ok(Model {
            embed,
            layers,
            ln_f,
            head,
            rotary: Rotary::new(c.rope_theta, head_dim),
            layout,
            heads: c.num_attention_heads,
            kv_heads,
            head_dim,
            act: c.activation,
            scores: Scores::plain(head_dim),
        })
    }

    /// q, k and v as `[batch, heads, len, head_dim]` (k and v with the key/value heads).
    fn split(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, len, _) = qkv.dims3()?;
        let d = self.head_dim;
        let t = |x: Tensor| x.transpose(1, 2)?.contiguous();
        match self.layout {
            Layout::MultiQuery => {
                let x = qkv.reshape((b, len, self.heads + 2, d))?;
                Ok((
                    t(x.narrow(2, 0, self.heads)?)?,
                    t(x.narrow(2, self.heads, 1)?)?,
                    t(x.narrow(2, self.heads + 1, 1)?)?,
                ))
            }
            Layout::PerHead => {
                let x = qkv.reshape((b, len, self.heads, 3, d))?;
                let part = |i: usize| t(x.narrow(3, i, 1)?.squeeze(3)?);
                Ok((part(0)?, part(1)?, part(2)?))
            }
            Layout::Grouped => {
                let per = self.heads / self.kv_heads;
                let x = qkv.reshape((b, len, self.kv_heads, per + 2, d))?;
                let q = x.narrow(3, 0, per)?.reshape((b, len, self.heads, d))?;
                let k = x.narrow(3, per, 1)?.squeeze(3)?;
                let v = x.narrow(3, per + 1, 1)?.squeeze(3)?;
                Ok((t(q)?, t(k)?, t(v)?))
            }
        }
    }
}

impl CausalLm for Model {
    fn forward(&mut self, input: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, len) = input.dims2()?;
        let mut x = self.embed.forward(input)?;
        for i in 0..self.layers.len() {
            let (attn_in, mlp_in) = match &self.layers[i].norms {
                Norms::Input { input, .. } => (x.apply(input)?, None),
                Norms::Two { attn, mlp } => (x.apply(attn)?, Some(x.apply(mlp)?)),
            };
            let (q, k, v) = self.split(&attn_in.apply(&self.layers[i].qkv)?)?;
            let (q, k) = (self.rotary.apply(&q, pos, 0)?, self.rotary.apply(&k, pos, 0)?);
            let layer = &mut self.layers[i];
            let (k, v) = layer.cache.append(k, v)?;
            let attn = attend(&q, &k, &v, self.scores)?.apply(&layer.dense)?;
            let mlp = |y: &Tensor| y.apply(&layer.up)?.apply(&self.act)?.apply(&layer.down);
            x = match (&layer.norms, mlp_in) {
                (Norms::Input { post: Some(post), .. }, _) => {
                    let x = (&x + attn)?;
                    (&x + mlp(&x.apply(post)?)?)?
                }
                (_, Some(mlp_in)) => ((&x + attn)? + mlp(&mlp_in)?)?,
                (_, None) => ((&x + attn)? + mlp(&attn_in)?)?,
            };
        }
        x.narrow(1, len - 1, 1)?.apply(&self.ln_f)?.apply(&self.head)
    }

    fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.cache.clear();
        }
    }
}
