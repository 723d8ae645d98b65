//! The llama-shaped decoder the project's own models share (`model.embed_tokens`,
//! `model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp}`,
//! `model.norm`, `lm_head`), with what its variants change stated in one [`Spec`]: the norm,
//! the rotary embedding (partial, scaled), fused projections, the MLP's shape, biases, per-layer
//! sliding windows, per-head q/k layer norms, granite's multipliers, stablelm's parallel residual.
//!
//! Where the rotary embedding depends on the sequence's length (LongRoPE), the single sequence's
//! token ids are kept, and a pass that crosses the original context recomputes the sequence
//! from its start, as transformers does; such a decoder answers one sequence at a time.

use candle_core::{D, DType, Module, Result, Tensor};

use super::blocks::{KvCache, Mlp, Norm, NormKind, Rotary, Scores, attend, attend_sequences};
use super::lm::{CausalLm, Segment};
use super::weights::{Embedding, Linear, Weights, batched};

/// The MLP's shape and names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MlpShape {
    /// `gate_proj`, `up_proj`, `down_proj`.
    Gated,
    /// `gate_up_proj`, `down_proj` (phi3).
    GatedFused,
    /// `c_fc`, `c_proj` (starcoder2).
    Plain,
}

/// One decoder's shape and arithmetic.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub(super) hidden: usize,
    pub(super) intermediate: usize,
    pub(super) layers: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) vocab: usize,
    pub(super) norm: NormKind,
    pub(super) rotary: Rotary,
    /// q, k and v in one `qkv_proj` (phi3).
    pub(super) fused_qkv: bool,
    pub(super) mlp: MlpShape,
    /// Each layer's sliding window, where it has one (one entry a layer).
    pub(super) windows: Vec<Option<usize>>,
    /// A layer norm (weight only) over each head of q and of k, one per head, before the
    /// rotary embedding (stablelm's `qk_layernorm`).
    pub(super) head_norms: bool,
    /// Biases on q, k and v; on o; on the MLP.
    pub(super) qkv_bias: bool,
    pub(super) o_bias: bool,
    pub(super) mlp_bias: bool,
    pub(super) act: candle_nn::Activation,
    pub(super) tied: bool,
    /// Scales: the embedding, each block's output before its residual add, attention scores
    /// (1/√head_dim unless the model says otherwise), and the logits' divisor.
    pub(super) embedding_multiplier: f64,
    pub(super) residual_multiplier: f64,
    pub(super) attention_scale: f64,
    pub(super) logits_divisor: f64,
    /// Attention and MLP read the same normed input and add to one residual.
    pub(super) parallel_residual: bool,
}

/// The sizes every family's config.json states under transformers' names, read into each
/// family's `Config` (`#[serde(flatten)]`).
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Dims {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    vocab_size: usize,
}

impl Dims {
    /// The width of one head: the hidden size shared among the heads.
    pub(super) fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub(super) fn layers(&self) -> usize {
        self.num_hidden_layers
    }
}

impl Spec {
    /// llama's decoder of `dims`: q, k and v apart and without biases, a gated MLP, no window,
    /// no multipliers, attention scaled by 1/√head_dim, one residual after each block. A family
    /// states what it changes with `Spec { …, ..Spec::of(…) }`.
    pub(super) fn of(
        dims: &Dims,
        norm: NormKind,
        rotary: Rotary,
        act: candle_nn::Activation,
        tied: bool,
    ) -> Spec {
        let head_dim = dims.head_dim();
        Spec {
            hidden: dims.hidden_size,
            intermediate: dims.intermediate_size,
            layers: dims.num_hidden_layers,
            heads: dims.num_attention_heads,
            kv_heads: dims.num_key_value_heads,
            head_dim,
            vocab: dims.vocab_size,
            norm,
            rotary,
            fused_qkv: false,
            mlp: MlpShape::Gated,
            windows: vec![None; dims.num_hidden_layers],
            head_norms: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            act,
            tied,
            embedding_multiplier: 1.0,
            residual_multiplier: 1.0,
            attention_scale: 1.0 / (head_dim as f64).sqrt(),
            logits_divisor: 1.0,
            parallel_residual: false,
        }
    }
}

/// The q, k and v projections: apart, or one fused `qkv_proj`.
enum Qkv {
    Split { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

/// One projection's per-head layer norms: their weights, `[1, heads, 1, head_dim]`, and epsilon.
struct HeadNorms {
    weight: Tensor,
    eps: f64,
}

impl HeadNorms {
    fn load(heads: usize, d: usize, eps: f64, w: &Weights) -> Result<Self> {
        let weights = (0..heads)
            .map(|h| w.vb().pp(format!("norms.{h}")).get(d, "weight"))
            .collect::<Result<Vec<_>>>()?;
        Ok(HeadNorms { weight: Tensor::stack(&weights, 0)?.reshape((1, heads, 1, d))?, eps })
    }

    /// `x` (`[batch, heads, len, head_dim]`), each head normalised by its own norm.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}

struct Layer {
    input_norm: Norm,
    post_norm: Option<Norm>,
    qkv: Qkv,
    o: Linear,
    /// stablelm's per-head q and k norms.
    head_norms: Option<(HeadNorms, HeadNorms)>,
    window: Option<usize>,
    mlp: Mlp,
    cache: KvCache,
    /// The caches of a batch's sequences, by slot ([`CausalLm::forward_batch`]).
    slots: Vec<KvCache>,
}

pub(super) struct Decoder {
    spec: Spec,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Norm,
    head: Linear,
    /// The single sequence's tokens so far, where the rotary embedding depends on its length.
    history: Vec<u32>,
    /// How long the single sequence is known to grow ([`CausalLm::plan`]).
    reach: usize,
}

impl Decoder {
    pub(super) fn new(spec: Spec, w: Weights) -> Result<Self> {
        let (h, d) = (spec.hidden, spec.head_dim);
        let m = w.pp("model");
        let embed = m.pp("embed_tokens").embedding(spec.vocab, h)?;
        let mut layers = Vec::with_capacity(spec.layers);
        for l in 0..spec.layers {
            let w = m.pp(format!("layers.{l}"));
            let a = w.pp("self_attn");
            let vb = w.vb();
            layers.push(Layer {
                input_norm: Norm::load(spec.norm, h, vb.pp("input_layernorm"))?,
                post_norm: if spec.parallel_residual {
                    None
                } else {
                    Some(Norm::load(spec.norm, h, vb.pp("post_attention_layernorm"))?)
                },
                qkv: if spec.fused_qkv {
                    let out = (spec.heads + 2 * spec.kv_heads) * d;
                    Qkv::Fused(a.pp("qkv_proj").linear(h, out, spec.qkv_bias)?)
                } else {
                    Qkv::Split {
                        q: a.pp("q_proj").linear(h, spec.heads * d, spec.qkv_bias)?,
                        k: a.pp("k_proj").linear(h, spec.kv_heads * d, spec.qkv_bias)?,
                        v: a.pp("v_proj").linear(h, spec.kv_heads * d, spec.qkv_bias)?,
                    }
                },
                o: a.pp("o_proj").linear(spec.heads * d, h, spec.o_bias)?,
                head_norms: match (spec.head_norms, spec.norm) {
                    (false, _) => None,
                    (true, NormKind::Layer(eps) | NormKind::Rms(eps)) => Some((
                        HeadNorms::load(spec.heads, d, eps, &a.pp("q_layernorm"))?,
                        HeadNorms::load(spec.kv_heads, d, eps, &a.pp("k_layernorm"))?,
                    )),
                },
                window: spec.windows.get(l).copied().flatten(),
                mlp: match spec.mlp {
                    MlpShape::Gated => {
                        Mlp::gated(h, spec.intermediate, spec.mlp_bias, spec.act, &w.pp("mlp"))?
                    }
                    MlpShape::GatedFused => Mlp::gated_fused(h, spec.intermediate, spec.act, &w.pp("mlp"))?,
                    MlpShape::Plain => {
                        Mlp::plain(h, spec.intermediate, spec.mlp_bias, spec.act, &w.pp("mlp"))?
                    }
                },
                cache: KvCache::default(),
                slots: Vec::new(),
            });
        }
        let norm = Norm::load(spec.norm, h, m.vb().pp("norm"))?;
        let head = if spec.tied { embed.as_head() } else { w.pp("lm_head").linear(h, spec.vocab, false)? };
        Ok(Decoder { spec, embed, layers, norm, head, history: Vec::new(), reach: 0 })
    }
}

impl Layer {
    /// q, k and v of every row of `x` (`[batch, len, hidden]`), each `[batch, len, n · head_dim]`.
    fn project(&self, x: &Tensor, spec: &Spec) -> Result<(Tensor, Tensor, Tensor)> {
        Ok(match &self.qkv {
            Qkv::Split { q, k, v } => (x.apply(q)?, x.apply(k)?, x.apply(v)?),
            Qkv::Fused(qkv) => {
                let all = x.apply(qkv)?;
                let (q, kv) = (spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim);
                (all.narrow(2, 0, q)?, all.narrow(2, q, kv)?, all.narrow(2, q + kv, kv)?)
            }
        })
    }

    /// One sequence's attention output (`[1, len, heads · head_dim]`) from its projections at
    /// positions `pos..` of a sequence known to reach `reach` tokens, through `cache`.
    fn attend_one(
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        (pos, reach): (usize, usize),
        cache: &mut KvCache,
        head_norms: Option<&(HeadNorms, HeadNorms)>,
        window: Option<usize>,
        spec: &Spec,
        rotary: &Rotary,
    ) -> Result<Tensor> {
        let (b, len, _) = q.dims3()?;
        let heads = |t: &Tensor, n: usize| t.reshape((b, len, n, spec.head_dim))?.transpose(1, 2);
        let (mut q, mut k) = (heads(q, spec.heads)?, heads(k, spec.kv_heads)?);
        if let Some((qn, kn)) = head_norms {
            (q, k) = (qn.forward(&q)?, kn.forward(&k)?);
        }
        let q = rotary.apply(&q, pos, reach)?;
        let k = rotary.apply(&k, pos, reach)?;
        let v = heads(v, spec.kv_heads)?.contiguous()?;
        let (k, v) = cache.append(k, v)?;
        let scores = Scores { scale: spec.attention_scale, softcap: None, window };
        attend(&q, &k, &v, scores)
    }

    fn attention(&mut self, x: &Tensor, at: (usize, usize), spec: &Spec, rotary: &Rotary) -> Result<Tensor> {
        let (q, k, v) = self.project(x, spec)?;
        let norms = self.head_norms.as_ref();
        Self::attend_one((&q, &k, &v), at, &mut self.cache, norms, self.window, spec, rotary)?.apply(&self.o)
    }

    /// Attention over several sequences' segments laid end to end in `x` (`[1, Σ len, hidden]`),
    /// each through its slot's cache (or none) and seeing only its own sequence: the projections,
    /// head norms, rotations and the attention itself run on every row at once (each row the
    /// values it gets alone), the caches take their own segment's keys and values in turn.
    fn attention_batch(
        &mut self,
        x: &Tensor,
        segments: &[Segment],
        spec: &Spec,
        rotary: &Rotary,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(x, spec)?;
        let rows = q.dim(1)?;
        let heads = |t: &Tensor, n: usize| t.reshape((1, rows, n, spec.head_dim))?.transpose(1, 2);
        let (mut q, mut k) = (heads(&q, spec.heads)?, heads(&k, spec.kv_heads)?);
        if let Some((qn, kn)) = self.head_norms.as_ref() {
            (q, k) = (qn.forward(&q)?, kn.forward(&k)?);
        }
        let at: Vec<(usize, usize)> = segments.iter().map(|s| (s.pos, s.len)).collect();
        let q = rotary.apply_segments(&q, &at)?;
        let k = rotary.apply_segments(&k, &at)?;
        let v = heads(&v, spec.kv_heads)?;
        let mut kvs = Vec::with_capacity(segments.len());
        let mut start = 0;
        for seg in segments {
            self.take_prefix(seg)?;
            let part = |t: &Tensor| t.narrow(2, start, seg.len);
            let mut scratch = KvCache::default();
            let cache = slot_cache(&mut self.slots, seg.slot, &mut scratch);
            kvs.push(cache.append(part(&k)?, part(&v)?)?);
            start += seg.len;
        }
        let lens: Vec<usize> = segments.iter().map(|s| s.len).collect();
        let scores = Scores { scale: spec.attention_scale, softcap: None, window: self.window };
        attend_sequences(&q, &lens, &kvs, scores)?.apply(&self.o)
    }

    /// A segment that starts from another slot's prefix ([`Segment::from`]) gets that prefix as
    /// its slot's cache, as the other slot holds it at this layer: its segment, earlier in the
    /// batch, has already appended what it computed.
    fn take_prefix(&mut self, seg: &Segment) -> Result<()> {
        let (Some(slot), Some(from)) = (seg.slot, seg.from) else { return Ok(()) };
        let prefix = self.slots.get(from).map(|c| c.prefix(seg.pos)).transpose()?.flatten();
        let Some(prefix) = prefix else {
            let held = self.slots.get(from).and_then(|c| c.len());
            candle_core::bail!("slot {from} holds {held:?} cached positions, not the {} to share", seg.pos)
        };
        *slot_cache(&mut self.slots, Some(slot), &mut KvCache::default()) = prefix;
        Ok(())
    }

    /// The block after its attention: residuals, the post-attention norm and the MLP.
    fn finish(&self, x: &Tensor, normed: &Tensor, attn: Tensor, spec: &Spec) -> Result<Tensor> {
        let r = spec.residual_multiplier;
        match &self.post_norm {
            None => {
                let mlp = normed.apply(&self.mlp)?;
                x + times((attn + mlp)?, r)?
            }
            Some(post) => {
                let x = (x + times(attn, r)?)?;
                let mlp = x.apply(post)?.apply(&self.mlp)?;
                x + times(mlp, r)?
            }
        }
    }

    fn forward(&mut self, x: &Tensor, at: (usize, usize), spec: &Spec, rotary: &Rotary) -> Result<Tensor> {
        let normed = x.apply(&self.input_norm)?;
        let attn = self.attention(&normed, at, spec, rotary)?;
        self.finish(x, &normed, attn, spec)
    }

    fn forward_batch(
        &mut self,
        x: &Tensor,
        segments: &[Segment],
        spec: &Spec,
        rotary: &Rotary,
    ) -> Result<Tensor> {
        let normed = x.apply(&self.input_norm)?;
        let attn = self.attention_batch(&normed, segments, spec, rotary)?;
        self.finish(x, &normed, attn, spec)
    }
}

/// The cache of batch slot `slot` among `slots` (made where it is new), or `scratch` for a
/// segment cached nowhere.
fn slot_cache<'a>(
    slots: &'a mut Vec<KvCache>,
    slot: Option<usize>,
    scratch: &'a mut KvCache,
) -> &'a mut KvCache {
    match slot {
        None => scratch,
        Some(slot) => {
            if slots.len() <= slot {
                slots.resize_with(slot + 1, KvCache::default);
            }
            &mut slots[slot]
        }
    }
}

impl Decoder {
    fn clear_layers(&mut self) {
        for layer in &mut self.layers {
            layer.cache.clear();
        }
    }

    /// The last layer's output for `input` at `pos` through the single-sequence cache
    /// (`[1, len, hidden]`).
    fn trunk(&mut self, input: &Tensor, pos: usize) -> Result<Tensor> {
        let mut x = times(self.embed.forward(input)?, self.spec.embedding_multiplier)?;
        for layer in &mut self.layers {
            x = layer.forward(&x, (pos, self.reach), &self.spec, &self.spec.rotary)?;
        }
        Ok(x)
    }

    /// The logits of hidden rows (`[1, n, hidden]` to `[1, n, vocab]`).
    fn logits(&self, rows: &Tensor) -> Result<Tensor> {
        over(rows.apply(&self.norm)?.apply(&self.head)?, self.spec.logits_divisor)
    }
}

impl CausalLm for Decoder {
    fn forward(&mut self, input: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, len) = input.dims2()?;
        if self.spec.rotary.by_length() {
            self.history.truncate(pos);
            self.history.extend(input.flatten_all()?.to_vec1::<u32>()?);
            if self.spec.rotary.restarts(pos, len, self.reach) {
                // The cache was rotated by the short factors: the whole sequence again, on the
                // long ones (transformers' Phi-3 drops its cache here).
                let all = Tensor::new(self.history.as_slice(), input.device())?.unsqueeze(0)?;
                self.clear_layers();
                return self.forward(&all, 0);
            }
        }
        let x = self.trunk(input, pos)?;
        self.logits(&x.narrow(1, len - 1, 1)?)
    }

    fn forward_rows(&mut self, input: &Tensor, pos: usize, rows: &[usize]) -> Result<Option<Tensor>> {
        // A LongRoPE sequence may be recomputed from its start: one token's logits at a time.
        if self.spec.rotary.by_length() {
            return Ok(None);
        }
        let (_, len) = input.dims2()?;
        if rows.windows(2).any(|w| w[0] >= w[1]) || rows.last().is_some_and(|&r| r >= len) {
            candle_core::bail!("rows {rows:?} must ascend and lie below the input's {len} tokens");
        }
        let x = self.trunk(input, pos)?;
        let at: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let picked = x.index_select(&Tensor::new(at.as_slice(), input.device())?, 1)?;
        Ok(Some(self.logits(&picked)?.squeeze(0)?))
    }

    fn clear_kv_cache(&mut self) {
        self.clear_layers();
        self.history.clear();
        self.reach = 0;
    }

    fn plan(&mut self, len: usize) {
        self.reach = len;
    }

    fn forward_batch(&mut self, input: &Tensor, segments: &[Segment]) -> Result<Option<Tensor>> {
        let mut x = times(self.embed.forward(input)?, self.spec.embedding_multiplier)?;
        for layer in &mut self.layers {
            x = batched(|| layer.forward_batch(&x, segments, &self.spec, &self.spec.rotary))?;
        }
        let last = match segments {
            [seg] => x.narrow(1, seg.len - 1, 1)?,
            _ => {
                let mut lasts = Vec::with_capacity(segments.len());
                let mut end = 0;
                for seg in segments {
                    end += seg.len;
                    lasts.push(x.narrow(1, end - 1, 1)?);
                }
                Tensor::cat(&lasts, 1)?
            }
        }
        .apply(&self.norm)?;
        Ok(Some(over(last.apply(&self.head)?, self.spec.logits_divisor)?.squeeze(0)?))
    }

    fn batches(&self) -> bool {
        // A batch slot keeps no token ids to recompute from.
        !self.spec.rotary.by_length()
    }

    fn clear_batch(&mut self) {
        for layer in &mut self.layers {
            layer.slots.clear();
        }
    }

    fn clear_slot(&mut self, slot: usize) {
        for layer in &mut self.layers {
            if let Some(cache) = layer.slots.get_mut(slot) {
                cache.clear();
            }
        }
    }
}

/// `t × factor`. A factor of 1 (every family but those with multipliers, such as granite) leaves
/// `t` as it is instead of passing over it: the same bits, and at a batch's output head no
/// second buffer of logits (9.7 MB a step for sixteen sequences of a 151,936-token vocabulary).
fn times(t: Tensor, factor: f64) -> Result<Tensor> {
    if factor == 1.0 { Ok(t) } else { t * factor }
}

/// `t ÷ divisor`, as [`times`] leaves `t` alone where the divisor is 1.
fn over(t: Tensor, divisor: f64) -> Result<Tensor> {
    if divisor == 1.0 { Ok(t) } else { t / divisor }
}
