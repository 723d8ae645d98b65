//! The blocks the project's own models are built from: norms, rotary embeddings (whole or
//! partial heads), a KV cache, causal attention with grouped or multi-query heads and
//! optional soft-capping, and the two MLP shapes. Each computes as transformers does; none
//! knows an architecture's tensor names beyond the prefix it is handed.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Activation, LayerNorm, RmsNorm, VarBuilder};

use super::weights::{Linear, Weights};

/// A norm over the last dimension.
pub(super) enum Norm {
    Rms(RmsNorm),
    /// With its bias.
    Layer(LayerNorm),
}

/// Which norm a model uses, with its epsilon.
#[derive(Debug, Clone, Copy)]
pub(super) enum NormKind {
    Rms(f64),
    Layer(f64),
}

impl Norm {
    pub(super) fn load(kind: NormKind, size: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormKind::Rms(eps) => Norm::Rms(candle_nn::rms_norm(size, eps, vb)?),
            NormKind::Layer(eps) => Norm::Layer(candle_nn::layer_norm(size, eps, vb)?),
        })
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Rms(n) => n.forward(xs),
            Norm::Layer(n) => n.forward(xs),
        }
    }
}

/// Rotary position embeddings over the first `dim` of each head's units (all of them, or
/// `partial_rotary_factor` of them), in transformers' half-split layout. The angles are
/// computed per chunk in f64, so no table grows with the context.
///
/// LongRoPE picks its factors by the longest sequence a forward pass covers, as transformers
/// does: a pass over `pos..pos + len` of a sequence known to reach `reach` tokens uses the long
/// factors once `max(pos + len, reach)` passes the original context. A cache built on the short
/// factors is then stale ([`Rotary::restarts`]); transformers recomputes the whole sequence there.
#[derive(Debug, Clone)]
pub(super) struct Rotary {
    inv_freq: Vec<f64>,
    /// LongRoPE: the frequencies a pass uses once it reaches past the original context.
    long: Option<(Vec<f64>, usize)>,
    /// What cos and sin are multiplied by (LongRoPE's attention factor; else 1).
    attention_factor: f64,
    dim: usize,
}

/// `1 / (factor_i · θ^(2i/dim))` for each rotating pair.
fn frequencies(theta: f64, dim: usize, factor: impl Fn(usize) -> f64) -> Vec<f64> {
    (0..dim / 2).map(|i| 1.0 / (factor(i) * theta.powf((2 * i) as f64 / dim as f64))).collect()
}

impl Rotary {
    pub(super) fn new(theta: f64, dim: usize) -> Self {
        Self::linear(theta, dim, 1.0)
    }

    /// The rotary embedding `scaling` asks for (none: the plain one).
    pub(super) fn scaled(theta: f64, dim: usize, scaling: Option<&RopeScaling>) -> Self {
        match scaling {
            None => Self::new(theta, dim),
            Some(RopeScaling::Linear { factor }) => Self::linear(theta, dim, *factor),
            Some(RopeScaling::Llama3(s)) => Self::llama3(theta, dim, s),
            Some(RopeScaling::Yarn(s)) => Self::yarn(theta, dim, s),
        }
    }

    /// transformers' `yarn`: each pair's frequency blended between itself (fast rotations,
    /// more than `beta_fast` turns over the original context) and itself over `factor` (slow
    /// ones, fewer than `beta_slow`), by a linear ramp over the pairs between; cos and sin
    /// scaled by the attention factor.
    pub(super) fn yarn(theta: f64, dim: usize, s: &YarnScaling) -> Self {
        let d = dim as f64;
        // The pair index at which a frequency makes `turns` rotations over the original context.
        let pair =
            |turns: f64| d * (s.original / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
        let (mut low, mut high) = (pair(s.beta_fast), pair(s.beta_slow));
        if s.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, high) = (low.max(0.0), high.min(d - 1.0));
        let span = if low == high { 0.001 } else { high - low };
        let inv_freq = frequencies(theta, dim, |_| 1.0)
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let extrapolation = 1.0 - ((i as f64 - low) / span).clamp(0.0, 1.0);
                f / s.factor * (1.0 - extrapolation) + f * extrapolation
            })
            .collect();
        Rotary { inv_freq, long: None, attention_factor: s.attention_factor, dim }
    }

    /// Whether a pass over `pos..pos + len` of a sequence known to reach `reach` tokens finds
    /// the cache of its first `pos` tokens rotated by frequencies it no longer uses (LongRoPE
    /// crossing its original context): the whole sequence must be recomputed.
    pub(super) fn restarts(&self, pos: usize, len: usize, reach: usize) -> bool {
        match &self.long {
            Some((_, original)) => pos > 0 && pos.max(reach) <= *original && pos + len > *original,
            None => false,
        }
    }

    /// Whether the frequencies depend on the length of the sequence (LongRoPE).
    pub(super) fn by_length(&self) -> bool {
        self.long.is_some()
    }

    /// transformers' `linear` rope scaling: positions divided by `factor`.
    pub(super) fn linear(theta: f64, dim: usize, factor: f64) -> Self {
        Rotary { inv_freq: frequencies(theta, dim, |_| factor), long: None, attention_factor: 1.0, dim }
    }

    /// transformers' `llama3` rope scaling: wavelengths shorter than `original / high` kept,
    /// longer than `original / low` divided by `factor`, those between blended smoothly.
    pub(super) fn llama3(theta: f64, dim: usize, scaling: &Llama3Scaling) -> Self {
        let Llama3Scaling { factor, low_freq_factor: low, high_freq_factor: high, original } = *scaling;
        let inv_freq = frequencies(theta, dim, |_| 1.0)
            .into_iter()
            .map(|f| {
                let wavelength = 2.0 * std::f64::consts::PI / f;
                if wavelength < original / high {
                    f
                } else if wavelength > original / low {
                    f / factor
                } else {
                    let smooth = (original / wavelength - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect();
        Rotary { inv_freq, long: None, attention_factor: 1.0, dim }
    }

    /// llama.cpp's rope factors (a GGUF's `rope_freqs.weight`, llama3 scaling precomputed by
    /// its converter): each pair's frequency divided by its factor.
    pub(super) fn with_factors(theta: f64, dim: usize, factors: &[f64]) -> Result<Self> {
        if factors.len() != dim / 2 || !factors.iter().all(|f| f.is_finite() && *f > 0.0) {
            candle_core::bail!(
                "the rope factors hold {} numbers (not all finite and positive?), not one per rotating pair ({})",
                factors.len(),
                dim / 2
            );
        }
        Ok(Rotary {
            inv_freq: frequencies(theta, dim, |i| factors[i]),
            long: None,
            attention_factor: 1.0,
            dim,
        })
    }

    /// transformers' `longrope`: per-pair factors, the short ones while a pass stays within
    /// `original` positions and the long ones once it reaches past them, cos and sin scaled by
    /// `attention_factor`.
    pub(super) fn longrope(
        theta: f64,
        dim: usize,
        short: &[f64],
        long: &[f64],
        original: usize,
        attention_factor: f64,
    ) -> Self {
        Rotary {
            inv_freq: frequencies(theta, dim, |i| short[i]),
            long: Some((frequencies(theta, dim, |i| long[i]), original)),
            attention_factor,
            dim,
        }
    }

    /// `x` (`[batch, heads, len, head_dim]`) rotated for positions `pos..pos + len`, of a
    /// sequence known to reach `reach` tokens (LongRoPE's choice; 0 where only the pass is known).
    pub(super) fn apply(&self, x: &Tensor, pos: usize, reach: usize) -> Result<Tensor> {
        let len = x.dim(2)?;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        self.angles(pos, len, reach, &mut cos, &mut sin);
        self.rotate(x, cos, sin)
    }

    /// `x` (`[1, heads, Σ len, head_dim]`) holding several sequences' rows one after another,
    /// each `(pos, len)` of `segments` rotated for its positions `pos..pos + len` as [`Rotary::apply`]
    /// rotates it alone (reach 0): one rotation for them all, the same values.
    pub(super) fn apply_segments(&self, x: &Tensor, segments: &[(usize, usize)]) -> Result<Tensor> {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &(pos, len) in segments {
            self.angles(pos, len, 0, &mut cos, &mut sin);
        }
        self.rotate(x, cos, sin)
    }

    /// The cosines and sines of positions `pos..pos + len` (of a sequence known to reach
    /// `reach`), appended row by row.
    fn angles(&self, pos: usize, len: usize, reach: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        let inv_freq = match &self.long {
            Some((long, original)) if (pos + len).max(reach) > *original => long,
            _ => &self.inv_freq,
        };
        cos.reserve(len * inv_freq.len());
        sin.reserve(len * inv_freq.len());
        for p in pos..pos + len {
            for f in inv_freq {
                let angle = p as f64 * f;
                cos.push((angle.cos() * self.attention_factor) as f32);
                sin.push((angle.sin() * self.attention_factor) as f32);
            }
        }
    }

    /// `x` (`[batch, heads, len, head_dim]`) rotated by row `t` of the cosines and sines for its
    /// position `t`.
    fn rotate(&self, x: &Tensor, cos: Vec<f32>, sin: Vec<f32>) -> Result<Tensor> {
        let (_, _, len, head_dim) = x.dims4()?;
        let half = self.inv_freq.len();
        let cos = Tensor::from_vec(cos, (len, half), x.device())?.to_dtype(x.dtype())?;
        let sin = Tensor::from_vec(sin, (len, half), x.device())?.to_dtype(x.dtype())?;
        if self.dim == head_dim {
            return candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin);
        }
        let rotated =
            candle_nn::rotary_emb::rope(&x.narrow(D::Minus1, 0, self.dim)?.contiguous()?, &cos, &sin)?;
        let kept = x.narrow(D::Minus1, self.dim, head_dim - self.dim)?;
        Tensor::cat(&[&rotated, &kept], D::Minus1)
    }
}

/// A rope scaling of the project's decoder, as `format::hf_config` completed it
/// (`rope_scaling`, tagged by `rope_type`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub(super) enum RopeScaling {
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    Llama3(Llama3Scaling),
    Yarn(YarnScaling),
}

/// YaRN's parameters, complete (transformers' defaults and derived attention factor filled in).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub(super) struct YarnScaling {
    pub(super) factor: f64,
    #[serde(rename = "original_max_position_embeddings")]
    pub(super) original: f64,
    pub(super) beta_fast: f64,
    pub(super) beta_slow: f64,
    pub(super) attention_factor: f64,
    pub(super) truncate: bool,
}

/// The parameters of llama3's rope scaling, as config.json states them.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub(super) struct Llama3Scaling {
    pub(super) factor: f64,
    pub(super) low_freq_factor: f64,
    pub(super) high_freq_factor: f64,
    #[serde(rename = "original_max_position_embeddings")]
    pub(super) original: f64,
}

/// One layer's cached keys and values, `[batch, kv_heads, len, head_dim]`: views of buffers with
/// room for more positions, which a step writes its keys and values into in place.
///
/// Concatenating the cache with each step's keys, as before, copied every cached position at
/// every step of every layer: a generation's copying grew with the square of its length (a
/// 512-token Q8_0 decode of a 0.5 B model ran ×1.03–1.26 as fast without it, `bench
/// engine-child`). Here a step writes its own positions only, and a buffer is copied when it fills
/// (into one with room for more, [`capacity`]) or when it is another cache's
/// ([`KvCache::prefix`]: the first step after taking a prefix copies it, so a cache never writes
/// into a buffer it shares). The views are what the concatenation gave, value for value.
#[derive(Debug, Default)]
pub(super) struct KvCache(Option<Held>);

/// A copy shares the buffers as a prefix does: neither writes into them where the other sees.
impl Clone for KvCache {
    fn clone(&self) -> Self {
        KvCache(self.0.as_ref().map(|h| Held { own: false, ..h.clone() }))
    }
}

#[derive(Debug, Clone)]
struct Held {
    /// `[batch, kv_heads, capacity, head_dim]`; positions `len..` are not this cache's (unwritten,
    /// or the source's own where the buffers are a prefix of another cache's).
    k: Tensor,
    v: Tensor,
    len: usize,
    /// Whether the buffers are this cache's alone to write into (not a prefix of another's).
    own: bool,
}

/// The positions a buffer for `needed` holds: whole steps of 64 up to 1,024 positions, of 512
/// beyond. A cache holds less than one step more than it needs (what a session's memory estimate
/// counts is positions, so a batch of many short sequences may hold up to 63 more apiece), and a
/// long sequence copies its cache once every 512 steps.
fn capacity(needed: usize) -> usize {
    needed.next_multiple_of(if needed <= 1024 { 64 } else { 512 }).max(64)
}

impl KvCache {
    /// The cached keys and values followed by `k` and `v`, which are kept.
    pub(super) fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let new = k.dim(2)?;
        let len = self.0.as_ref().map_or(0, |h| h.len);
        let fits = self.0.as_ref().is_some_and(|h| h.own && h.k.dim(2).is_ok_and(|cap| len + new <= cap));
        if !fits {
            // A buffer of its own with room: the cached positions copied over, the rest zero.
            let capacity = capacity(len + new);
            let room = |t: &Tensor| -> Result<Tensor> {
                let (b, heads, _, d) = t.dims4()?;
                Tensor::zeros((b, heads, capacity, d), t.dtype(), t.device())
            };
            let (bk, bv) = (room(&k)?, room(&v)?);
            if let Some(held) = &self.0 {
                bk.slice_set(&held.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                bv.slice_set(&held.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            self.0 = Some(Held { k: bk, v: bv, len, own: true });
        }
        let Some(held) = self.0.as_mut() else { unreachable!("a buffer was just made") };
        held.k.slice_set(&k, 2, len)?;
        held.v.slice_set(&v, 2, len)?;
        held.len = len + new;
        Ok((held.k.narrow(2, 0, held.len)?, held.v.narrow(2, 0, held.len)?))
    }

    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    /// How many positions it holds (`None`: it is empty).
    pub(super) fn len(&self) -> Option<usize> {
        self.0.as_ref().map(|h| h.len)
    }

    /// A cache of this one's first `len` positions; `None` where it holds fewer. It shares this
    /// one's buffers until its first step copies them.
    pub(super) fn prefix(&self, len: usize) -> Result<Option<KvCache>> {
        match &self.0 {
            Some(held) if held.len >= len && len > 0 => {
                Ok(Some(KvCache(Some(Held { k: held.k.clone(), v: held.v.clone(), len, own: false }))))
            }
            _ => Ok(None),
        }
    }
}

/// How scores become weights: the scale, transformers' soft-cap (`cap · tanh(s / cap)`) where
/// the model has one, and a sliding window: a query sees the `window` latest keys, itself
/// included.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scores {
    pub(super) scale: f64,
    pub(super) softcap: Option<f64>,
    pub(super) window: Option<usize>,
}

impl Scores {
    /// Scaled by 1/√`head_dim`, nothing else.
    pub(super) fn plain(head_dim: usize) -> Self {
        Scores { scale: 1.0 / (head_dim as f64).sqrt(), softcap: None, window: None }
    }
}

/// Causal attention of several sequences in one call: `q` (`[1, heads, Σ len, d]`) holds their
/// query rows one after another, sequence `s` its `lens[s]` rows, attending over `kvs[s]` (its k
/// and v, `[1, kv_heads, past + len, d]`); `[1, Σ len, heads · d]`. On the CPU in f32, one call
/// of the project's kernel (`modelqa_kernels::Attention::forward_sequences`, each row the bits it
/// gets alone); elsewhere [`attend`] per sequence, joined.
pub(super) fn attend_sequences(
    q: &Tensor,
    lens: &[usize],
    kvs: &[(Tensor, Tensor)],
    scores: Scores,
) -> Result<Tensor> {
    let f32_cpu = q.device().is_cpu()
        && q.dtype() == DType::F32
        && kvs.iter().all(|(k, v)| k.dtype() == DType::F32 && v.dtype() == DType::F32);
    if f32_cpu {
        let kernel = modelqa_kernels::Attention {
            scale: scores.scale as f32,
            softcap: scores.softcap.map(|c| c as f32),
            window: scores.window,
        };
        let mut start = 0;
        let sequences: Vec<_> = lens
            .iter()
            .zip(kvs)
            .map(|(&len, (k, v))| {
                start += len;
                modelqa_kernels::Sequence { rows: start - len..start, k, v }
            })
            .collect();
        return kernel.forward_sequences(q, &sequences);
    }
    let mut outputs = Vec::with_capacity(lens.len());
    let mut start = 0;
    for (&len, (k, v)) in lens.iter().zip(kvs) {
        outputs.push(attend(&q.narrow(2, start, len)?, k, v, scores)?);
        start += len;
    }
    match outputs.len() {
        1 => Ok(outputs.remove(0)),
        _ => Tensor::cat(&outputs, 1),
    }
}

/// Causal attention of `q` (`[batch, heads, len, d]`) over `k`, `v` (`[batch, kv_heads,
/// past + len, d]`, the queries being the last `len` positions): `[batch, len, heads · d]`.
/// On the CPU in f32 it is the project's kernel (`modelqa_kernels::Attention`), whose rows do
/// not depend on how many the call holds (a prompt prefilled in pieces is the prompt prefilled
/// whole, bit for bit); elsewhere candle's products.
pub(super) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scores: Scores) -> Result<Tensor> {
    if q.device().is_cpu() && [q, k, v].iter().all(|t| t.dtype() == DType::F32) {
        let kernel = modelqa_kernels::Attention {
            scale: scores.scale as f32,
            softcap: scores.softcap.map(|c| c as f32),
            window: scores.window,
        };
        return kernel.forward(q, k, v);
    }
    let (b, heads, len, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let total = k.dim(2)?;
    let groups = heads / kv_heads;
    let k = candle_transformers::utils::repeat_kv(k.clone(), groups)?.contiguous()?;
    let v = candle_transformers::utils::repeat_kv(v.clone(), groups)?.contiguous()?;
    let mut s = (q.contiguous()?.matmul(&k.t()?)? * scores.scale)?;
    if let Some(cap) = scores.softcap {
        s = ((s / cap)?.tanh()? * cap)?;
    }
    if len > 1 || scores.window.is_some_and(|w| total > w) {
        s = s.broadcast_add(&causal_mask(len, total - len, scores.window, q.device())?)?;
    }
    let w = candle_nn::ops::softmax_last_dim(&s)?;
    w.matmul(&v)?.transpose(1, 2)?.reshape((b, len, heads * d))
}

/// `[len, past + len]`: 0 where query `i` may see key `j` (not after it, and within the
/// window where there is one), −∞ elsewhere.
fn causal_mask(len: usize, past: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let seen = |i: usize, j: usize| j <= past + i && window.is_none_or(|w| past + i - j < w);
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..past + len).map(move |j| if seen(i, j) { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (len, past + len), device)?.to_dtype(DType::F32)
}

/// `act(gate) · up`. SiLU on the CPU in f32 is the project's one pass over both
/// (`modelqa_kernels::silu_times`, candle's bits split over the pool); elsewhere candle's two
/// operations.
fn gated(gate: &Tensor, act: Activation, up: &Tensor) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous();
    if act == Activation::Silu && cpu_f32(gate) && cpu_f32(up) && gate.dims() == up.dims() {
        return modelqa_kernels::silu_times(gate, up);
    }
    gate.apply(&act)? * up
}

/// A feed-forward block.
pub(super) enum Mlp {
    /// `down(act(gate(x)) · up(x))`.
    Gated { gate: Linear, up: Linear, down: Linear, act: Activation },
    /// `down(act(gate) · up)` with gate and up the halves of one `gate_up_proj` (phi3).
    GatedFused { gate_up: Linear, down: Linear, act: Activation },
    /// `proj(act(fc(x)))`, under the names the model gives them.
    Plain { fc: Linear, proj: Linear, act: Activation },
}

impl Mlp {
    /// llama's naming: `gate_proj`, `up_proj`, `down_proj`.
    pub(super) fn gated(
        hidden: usize,
        inner: usize,
        bias: bool,
        act: Activation,
        w: &Weights,
    ) -> Result<Self> {
        Ok(Mlp::Gated {
            gate: w.pp("gate_proj").linear(hidden, inner, bias)?,
            up: w.pp("up_proj").linear(hidden, inner, bias)?,
            down: w.pp("down_proj").linear(inner, hidden, bias)?,
            act,
        })
    }

    /// phi3's naming: `gate_up_proj`, `down_proj`.
    pub(super) fn gated_fused(hidden: usize, inner: usize, act: Activation, w: &Weights) -> Result<Self> {
        Ok(Mlp::GatedFused {
            gate_up: w.pp("gate_up_proj").linear(hidden, 2 * inner, false)?,
            down: w.pp("down_proj").linear(inner, hidden, false)?,
            act,
        })
    }

    /// GPT-2's naming: `c_fc`, `c_proj`.
    pub(super) fn plain(
        hidden: usize,
        inner: usize,
        bias: bool,
        act: Activation,
        w: &Weights,
    ) -> Result<Self> {
        Ok(Mlp::Plain {
            fc: w.pp("c_fc").linear(hidden, inner, bias)?,
            proj: w.pp("c_proj").linear(inner, hidden, bias)?,
            act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::Gated { gate, up, down, act } => gated(&xs.apply(gate)?, *act, &xs.apply(up)?)?.apply(down),
            Mlp::GatedFused { gate_up, down, act } => {
                let both = xs.apply(gate_up)?;
                let inner = both.dim(D::Minus1)? / 2;
                let gate = both.narrow(D::Minus1, 0, inner)?.apply(act)?;
                (gate * both.narrow(D::Minus1, inner, inner)?)?.apply(down)
            }
            Mlp::Plain { fc, proj, act } => xs.apply(fc)?.apply(act)?.apply(proj),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(seed: u32, n: usize, len: usize) -> Vec<Tensor> {
        (0..n)
            .map(|i| {
                let values: Vec<f32> =
                    (0..2 * len * 4).map(|j| (seed * 1000 + (i * 100 + j) as u32) as f32).collect();
                Tensor::from_vec(values, (1, 2, len, 4), &Device::Cpu).unwrap()
            })
            .collect()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Appending step by step, past a buffer's first capacity, gives what concatenating the steps
    /// gives; a prefix taken from another cache and appended to leaves that cache as it was.
    #[test]
    fn a_cache_holds_what_concatenation_would_and_a_prefix_never_writes_into_its_source() {
        let (ks, vs) = (steps(1, 40, 3), steps(2, 40, 3));
        let mut cache = KvCache::default();
        for i in 0..ks.len() {
            let (k, v) = cache.append(ks[i].clone(), vs[i].clone()).unwrap();
            assert_eq!(values(&k), values(&Tensor::cat(&ks[..=i], 2).unwrap()), "keys after step {i}");
            assert_eq!(values(&v), values(&Tensor::cat(&vs[..=i], 2).unwrap()), "values after step {i}");
        }
        assert_eq!(cache.len(), Some(120));

        let mut borrowed = cache.prefix(50).unwrap().unwrap();
        let mut copy = cache.clone();
        let (other_k, other_v) = (steps(3, 1, 7).remove(0), steps(4, 1, 7).remove(0));
        let (k, _) = borrowed.append(other_k.clone(), other_v.clone()).unwrap();
        let head = Tensor::cat(&ks, 2).unwrap().narrow(2, 0, 50).unwrap();
        assert_eq!(values(&k), values(&Tensor::cat(&[&head, &other_k], 2).unwrap()));
        let (k, _) = copy.append(other_k.clone(), other_v).unwrap();
        assert_eq!(values(&k.narrow(2, 0, 120).unwrap()), values(&Tensor::cat(&ks, 2).unwrap()));
        // The source still holds its own 120 positions, and its next step follows them.
        let (k, _) = cache.append(ks[0].clone(), vs[0].clone()).unwrap();
        let mut want = ks.clone();
        want.push(ks[0].clone());
        assert_eq!(values(&k), values(&Tensor::cat(&want, 2).unwrap()));
        assert_eq!(cache.len(), Some(123));
        assert!(cache.prefix(124).unwrap().is_none());
    }
}
