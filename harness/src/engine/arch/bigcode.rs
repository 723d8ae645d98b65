//! gpt_bigcode (StarCoder, SantaCoder): GPT-2's block with learned positions, layer norms,
//! one fused `c_attn` and multi-query attention (one key/value head) or per-head fused
//! q/k/v. candle's bigcode cannot empty its KV cache, which every new sequence needs.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Activation, LayerNorm, layer_norm};

use super::weights::{Embedding, Linear, Weights};

use super::blocks::{KvCache, Mlp, Scores, attend};
use super::lm::CausalLm;

/// gpt_bigcode's config.json, as `format::hf_config` normalised it (GPT-2's names).
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Config {
    n_embd: usize,
    n_head: usize,
    n_layer: usize,
    n_inner: Option<usize>,
    n_positions: usize,
    vocab_size: usize,
    layer_norm_epsilon: f64,
    multi_query: bool,
    activation_function: Activation,
    scale_attn_weights: bool,
    tie_word_embeddings: bool,
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    c_proj: Linear,
    ln_2: LayerNorm,
    mlp: Mlp,
    cache: KvCache,
}

pub(super) struct Model {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    heads: usize,
    head_dim: usize,
    multi_query: bool,
    scores: Scores,
}

impl Model {
    pub(super) fn new(c: &Config, vb: Weights) -> Result<Self> {
        let h = c.n_embd;
        let head_dim = h / c.n_head;
        let kv_dim = if c.multi_query { head_dim } else { h };
        let t = vb.pp("transformer");
        let wte = t.pp("wte").embedding(c.vocab_size, h)?;
        let wpe = t.pp("wpe").embedding(c.n_positions, h)?;
        let mut blocks = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let b = t.pp(format!("h.{l}"));
            blocks.push(Block {
                ln_1: layer_norm(h, c.layer_norm_epsilon, b.vb().pp("ln_1"))?,
                c_attn: b.pp("attn.c_attn").linear(h, h + 2 * kv_dim, true)?,
                c_proj: b.pp("attn.c_proj").linear(h, h, true)?,
                ln_2: layer_norm(h, c.layer_norm_epsilon, b.vb().pp("ln_2"))?,
                mlp: Mlp::plain(h, c.n_inner.unwrap_or(4 * h), true, c.activation_function, &b.pp("mlp"))?,
                cache: KvCache::default(),
            });
        }
        let ln_f = layer_norm(h, c.layer_norm_epsilon, t.vb().pp("ln_f"))?;
        let head = if c.tie_word_embeddings {
            wte.as_head()
        } else {
            vb.pp("lm_head").linear(h, c.vocab_size, false)?
        };
        let scale = if c.scale_attn_weights { 1.0 / (head_dim as f64).sqrt() } else { 1.0 };
        Ok(Model {
            wte,
            wpe,
            blocks,
            ln_f,
            head,
            heads: c.n_head,
            head_dim,
            multi_query: c.multi_query,
            scores: Scores { scale, softcap: None, window: None },
        })
    }

    /// q, k and v of `x` (`[batch, len, hidden]`) as `[batch, heads, len, head_dim]`.
    fn split(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, len, _) = qkv.dims3()?;
        let d = self.head_dim;
        let h = self.heads * d;
        if self.multi_query {
            let heads = |t: Tensor, n: usize| t.reshape((b, len, n, d))?.transpose(1, 2)?.contiguous();
            let q = heads(qkv.narrow(D::Minus1, 0, h)?, self.heads)?;
            let k = heads(qkv.narrow(D::Minus1, h, d)?, 1)?;
            let v = heads(qkv.narrow(D::Minus1, h + d, d)?, 1)?;
            Ok((q, k, v))
        } else {
            // Each head's q, k and v lie side by side.
            let per_head = qkv.reshape((b, len, self.heads, 3 * d))?.transpose(1, 2)?;
            let part = |i: usize| per_head.narrow(D::Minus1, i * d, d)?.contiguous();
            Ok((part(0)?, part(1)?, part(2)?))
        }
    }
}

impl CausalLm for Model {
    fn forward(&mut self, input: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, len) = input.dims2()?;
        let positions = Tensor::arange(pos as u32, (pos + len) as u32, input.device())?.unsqueeze(0)?;
        let mut x = (self.wte.forward(input)? + self.wpe.forward(&positions)?)?;
        for i in 0..self.blocks.len() {
            let qkv = x.apply(&self.blocks[i].ln_1)?.apply(&self.blocks[i].c_attn)?;
            let (q, k, v) = self.split(&qkv)?;
            let block = &mut self.blocks[i];
            let (k, v) = block.cache.append(k, v)?;
            let attn = attend(&q, &k, &v, self.scores)?.apply(&block.c_proj)?;
            x = (x + attn)?;
            x = (&x + x.apply(&block.ln_2)?.apply(&block.mlp)?)?;
        }
        x.narrow(1, len - 1, 1)?.apply(&self.ln_f)?.apply(&self.head)
    }

    fn clear_kv_cache(&mut self) {
        for block in &mut self.blocks {
            block.cache.clear();
        }
    }
}
