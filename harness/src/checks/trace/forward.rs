//! The traced forward pass: one prompt through a [`Decoder`], every site's activations kept
//! (embedding, each block's attention and MLP outputs, the final norm, the logits) with their
//! statistics, and what the numerics gate reads beside them: each RMSNorm's output before its
//! gain, and each layer's attention probabilities. The whole prompt in one pass, causal mask, no
//! KV cache: the tracer is a second opinion on the engine, not a copy of its code path.

use candle_core::{D, DType, Device, Tensor};

use super::decoder::{Decoder, TraceError};

/// Where in the model an activation was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    Embedding,
    Attention(usize),
    Mlp(usize),
    FinalNorm,
    Logits,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Site::Embedding => f.write_str("embedding"),
            Site::Attention(l) => write!(f, "layer {l} attention output"),
            Site::Mlp(l) => write!(f, "layer {l} MLP output"),
            Site::FinalNorm => f.write_str("final norm"),
            Site::Logits => f.write_str("logits"),
        }
    }
}

impl Site {
    /// A short key for the evidence record: `embed`, `L3.attn`, `L3.mlp`, `norm`, `logits`.
    pub(crate) fn key(&self) -> String {
        match self {
            Site::Embedding => "embed".into(),
            Site::Attention(l) => format!("L{l}.attn"),
            Site::Mlp(l) => format!("L{l}.mlp"),
            Site::FinalNorm => "norm".into(),
            Site::Logits => "logits".into(),
        }
    }
}

/// Summary statistics of one activation tensor; mean, std, min and max over its finite values.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Stats {
    pub(crate) mean: f64,
    pub(crate) std: f64,
    pub(crate) l2: f64,
    pub(crate) nan: usize,
    pub(crate) inf: usize,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Stats {
    pub(crate) fn of(values: &[f32]) -> Stats {
        let (mut n, mut sum, mut sq, mut nan, mut inf) = (0usize, 0f64, 0f64, 0, 0);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for &v in values {
            if v.is_nan() {
                nan += 1;
            } else if v.is_infinite() {
                inf += 1;
            } else {
                let v = v as f64;
                n += 1;
                sum += v;
                sq += v * v;
                min = min.min(v);
                max = max.max(v);
            }
        }
        let mean = if n > 0 { sum / n as f64 } else { 0.0 };
        let var = if n > 0 { (sq / n as f64 - mean * mean).max(0.0) } else { 0.0 };
        if n == 0 {
            (min, max) = (0.0, 0.0);
        }
        Stats { mean, std: var.sqrt(), l2: sq.sqrt(), nan, inf, min, max }
    }

    /// The largest magnitude of a finite value.
    pub(crate) fn max_abs(&self) -> f64 {
        self.min.abs().max(self.max.abs())
    }
}

/// One site's activations (`[tokens, width]`, row-major) and their statistics.
#[derive(Debug, Clone)]
pub(crate) struct SiteTrace {
    pub(crate) site: Site,
    pub(crate) values: Vec<f32>,
    pub(crate) stats: Stats,
}

/// One RMSNorm's output before its gain: each row's root mean square, which is 1 up to the
/// epsilon when the norm is right.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormTrace {
    pub(crate) name: String,
    pub(crate) min_rms: f64,
    pub(crate) max_rms: f64,
    pub(crate) mean: f64,
}

/// One layer's attention probabilities, every head and query row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttentionTrace {
    pub(crate) layer: usize,
    /// The largest |row sum − 1|.
    pub(crate) max_row_error: f64,
    pub(crate) min_p: f64,
    pub(crate) max_p: f64,
    /// Non-finite probabilities.
    pub(crate) nonfinite: usize,
    /// Mean entropy of the rows with at least two keys, as a share of the uniform row's
    /// (ln of the keys it sees): 0 is one-hot, 1 uniform.
    pub(crate) entropy: f64,
}

/// One prompt's trace.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    pub(crate) tokens: usize,
    pub(crate) sites: Vec<SiteTrace>,
    pub(crate) norms: Vec<NormTrace>,
    pub(crate) attention: Vec<AttentionTrace>,
}

impl Trace {
    /// The logits of every position, `[tokens][vocab]`.
    pub(crate) fn logits(&self) -> Vec<Vec<f32>> {
        let Some(l) = self.sites.iter().find(|s| s.site == Site::Logits) else { return Vec::new() };
        let width = l.values.len() / self.tokens.max(1);
        l.values.chunks(width.max(1)).map(<[f32]>::to_vec).collect()
    }
}

/// The attention probabilities of a layer as the statistics above. `probs` is `[heads, q, k]`.
pub(crate) fn attention_stats(layer: usize, probs: &[f32], heads: usize, tokens: usize) -> AttentionTrace {
    let (mut max_row_error, mut min_p, mut max_p, mut nonfinite) =
        (0f64, f64::INFINITY, f64::NEG_INFINITY, 0);
    let (mut entropy, mut rows) = (0f64, 0usize);
    for h in 0..heads {
        for q in 0..tokens {
            let row = &probs[(h * tokens + q) * tokens..(h * tokens + q + 1) * tokens];
            let mut sum = 0f64;
            let mut ent = 0f64;
            for &p in row {
                if !p.is_finite() {
                    nonfinite += 1;
                    continue;
                }
                let p = p as f64;
                sum += p;
                min_p = min_p.min(p);
                max_p = max_p.max(p);
                if p > 0.0 {
                    ent -= p * p.ln();
                }
            }
            max_row_error = max_row_error.max((sum - 1.0).abs());
            // A query sees q + 1 keys (causal); one key has no entropy to speak of.
            if q >= 1 {
                entropy += ent / ((q + 1) as f64).ln();
                rows += 1;
            }
        }
    }
    AttentionTrace {
        layer,
        max_row_error,
        min_p: if min_p.is_finite() { min_p } else { 0.0 },
        max_p: if max_p.is_finite() { max_p } else { 0.0 },
        nonfinite,
        entropy: if rows > 0 { entropy / rows as f64 } else { 0.0 },
    }
}

/// RMSNorm of the rows of `x` before the gain, and the gain applied.
fn rms_norm(
    x: &Tensor,
    gain: &Tensor,
    eps: f64,
    name: String,
    norms: &mut Vec<NormTrace>,
) -> Result<Tensor, TraceError> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    let rms: Vec<f32> = normed.sqr()?.mean(D::Minus1)?.sqrt()?.flatten_all()?.to_vec1()?;
    let mean = normed.mean_all()?.to_scalar::<f32>()? as f64;
    let finite = rms.iter().filter(|v| v.is_finite()).map(|&v| v as f64);
    let min_rms = finite.clone().fold(f64::INFINITY, f64::min);
    let max_rms = finite.fold(f64::NEG_INFINITY, f64::max);
    norms.push(NormTrace { name, min_rms, max_rms, mean });
    Ok(normed.broadcast_mul(gain)?)
}

fn linear(x: &Tensor, d: &Decoder, name: &str) -> Result<Tensor, TraceError> {
    let w = d.weight(&format!("{name}.weight"))?;
    let y = x.matmul(&w.t()?)?;
    Ok(match d.weights.get(&format!("{name}.bias")) {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Hugging Face's rotary embedding: the two halves of each head rotated, `[heads, t, dim]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TraceError> {
    let dim = x.dim(D::Minus1)?;
    let (a, b) = (x.narrow(D::Minus1, 0, dim / 2)?, x.narrow(D::Minus1, dim / 2, dim / 2)?);
    let rotated = Tensor::cat(&[&b.neg()?, &a], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

fn record(sites: &mut Vec<SiteTrace>, site: Site, x: &Tensor) -> Result<(), TraceError> {
    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let stats = Stats::of(&values);
    sites.push(SiteTrace { site, values, stats });
    Ok(())
}

/// Runs `tokens` through `d`, recording every site.
pub(crate) fn trace(d: &Decoder, tokens: &[u32]) -> Result<Trace, TraceError> {
    let a = &d.arch;
    let t = tokens.len();
    let (heads, kv_heads, hd) = (a.heads, a.kv_heads.max(1), a.head_dim);
    let dev = Device::Cpu;
    let mut sites = Vec::new();
    let mut norms = Vec::new();
    let mut attention = Vec::new();
    let ids = Tensor::new(tokens, &dev)?;
    let mut x = d.weight("model.embed_tokens.weight")?.index_select(&ids, 0)?;
    record(&mut sites, Site::Embedding, &x)?;
    // Rotary tables, `[t, hd]`, each frequency repeated for both halves.
    let inv: Vec<f32> =
        (0..hd / 2).map(|i| (1.0 / a.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
    let inv = Tensor::new(inv.as_slice(), &dev)?;
    let pos = Tensor::arange(0u32, t as u32, &dev)?.to_dtype(DType::F32)?;
    let angles = pos.unsqueeze(1)?.broadcast_mul(&inv.unsqueeze(0)?)?;
    let angles = Tensor::cat(&[&angles, &angles], 1)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    let mask = Tensor::from_vec(mask, (t, t), &dev)?;
    let group = (heads / kv_heads).max(1);
    for l in 0..a.layers {
        let p = format!("model.layers.{l}");
        let n = rms_norm(
            &x,
            d.weight(&format!("{p}.input_layernorm.weight"))?,
            a.rms_norm_eps,
            format!("layer {l} input norm"),
            &mut norms,
        )?;
        let q = linear(&n, d, &format!("{p}.self_attn.q_proj"))?.reshape((t, heads, hd))?.transpose(0, 1)?;
        let k =
            linear(&n, d, &format!("{p}.self_attn.k_proj"))?.reshape((t, kv_heads, hd))?.transpose(0, 1)?;
        let v =
            linear(&n, d, &format!("{p}.self_attn.v_proj"))?.reshape((t, kv_heads, hd))?.transpose(0, 1)?;
        let (q, k) = match (
            d.weights.get(&format!("{p}.self_attn.q_norm.weight")),
            d.weights.get(&format!("{p}.self_attn.k_norm.weight")),
        ) {
            (Some(qn), Some(kn)) => (
                rms_norm(&q.contiguous()?, qn, a.rms_norm_eps, format!("layer {l} q norm"), &mut norms)?,
                rms_norm(&k.contiguous()?, kn, a.rms_norm_eps, format!("layer {l} k norm"), &mut norms)?,
            ),
            _ => (q, k),
        };
        let q = rope(&q.contiguous()?, &cos, &sin)?;
        let k = rope(&k.contiguous()?, &cos, &sin)?;
        // Grouped-query attention: query head h reads key/value head h / group.
        let expand = |x: Tensor| -> Result<Tensor, TraceError> {
            Ok(x.unsqueeze(1)?.broadcast_as((kv_heads, group, t, hd))?.reshape((kv_heads * group, t, hd))?)
        };
        let (k, v) = (expand(k)?, expand(v.contiguous()?)?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let pv: Vec<f32> = probs.flatten_all()?.to_vec1()?;
        attention.push(attention_stats(l, &pv, heads, t));
        let ctx = probs.matmul(&v)?.transpose(0, 1)?.reshape((t, heads * hd))?;
        let attn = linear(&ctx, d, &format!("{p}.self_attn.o_proj"))?;
        record(&mut sites, Site::Attention(l), &attn)?;
        x = (x + attn)?;
        let n = rms_norm(
            &x,
            d.weight(&format!("{p}.post_attention_layernorm.weight"))?,
            a.rms_norm_eps,
            format!("layer {l} post-attention norm"),
            &mut norms,
        )?;
        let gate = linear(&n, d, &format!("{p}.mlp.gate_proj"))?.silu()?;
        let up = linear(&n, d, &format!("{p}.mlp.up_proj"))?;
        let mlp = linear(&(gate * up)?, d, &format!("{p}.mlp.down_proj"))?;
        record(&mut sites, Site::Mlp(l), &mlp)?;
        x = (x + mlp)?;
    }
    let x = rms_norm(&x, d.weight("model.norm.weight")?, a.rms_norm_eps, "final norm".into(), &mut norms)?;
    record(&mut sites, Site::FinalNorm, &x)?;
    let head = match d.weights.get("lm_head.weight") {
        Some(w) => w,
        None => d.weight("model.embed_tokens.weight")?,
    };
    let logits = x.matmul(&head.t()?)?;
    record(&mut sites, Site::Logits, &logits)?;
    Ok(Trace { tokens: t, sites, norms, attention })
}
