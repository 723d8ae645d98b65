//! Causal attention computed one query row at a time, each over exactly the keys it sees, in key
//! order.
//!
//! Invariant: a row's result is the same sequence of floating-point operations whatever else the
//! call holds: how many query rows (a prompt prefilled whole, in pieces, or after a cached
//! prefix), which batch it sits in, the thread count. Candle's path (`q·kᵀ`, a mask, softmax,
//! `w·v` as general matrix products) reduces over the whole key axis in blocks that depend on the
//! shapes, so a prompt prefilled in two pieces differs from the same prompt prefilled whole in the
//! last bits; here it cannot, which is what lets a batch compute a shared prefix once.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

/// How scores become weights: the scale, transformers' soft-cap (`cap · tanh(s / cap)`) where
/// the model has one, and a sliding window (a query sees the `window` latest keys, itself
/// included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attention {
    pub scale: f32,
    pub softcap: Option<f32>,
    pub window: Option<usize>,
}

impl Attention {
    /// Causal attention of `q` (`[batch, heads, len, d]`) over `k` and `v` (`[batch, kv_heads,
    /// past + len, d]`, the queries being the last `len` positions; `heads` a multiple of
    /// `kv_heads`): `[batch, len, heads · d]`, all f32 on the CPU.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, self)
    }
}

/// Below this many multiply-adds a call runs on the calling thread (a decode step of a small
/// model), above it on rayon's pool, a (row, head) pair per task.
const SERIAL_BELOW: usize = 1 << 16;

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "modelqa-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let slice =
            |s: &'_ CpuStorage, l: &Layout, what: &str| -> candle_core::Result<(Vec<usize>, usize, usize)> {
                let CpuStorage::F32(_) = s else {
                    bail!("failed to run modelqa-attention: {what} is {:?}, not f32", s.dtype());
                };
                let Some((start, end)) = l.contiguous_offsets() else {
                    bail!("failed to run modelqa-attention: {what} is not contiguous");
                };
                Ok((l.dims().to_vec(), start, end))
            };
        fn f32s(s: &CpuStorage) -> &[f32] {
            match s {
                CpuStorage::F32(v) => v.as_slice(),
                _ => &[],
            }
        }
        let (qd, qa, qb) = slice(qs, ql, "q")?;
        let (kd, ka, kb) = slice(ks, kl, "k")?;
        let (vd, va, vb) = slice(vs, vl, "v")?;
        let [b, heads, len, d] = qd[..] else {
            bail!("failed to run modelqa-attention: q is {qd:?}, not 4-d")
        };
        let [kb_, kv_heads, total, kd_] = kd[..] else {
            bail!("failed to run modelqa-attention: k is {kd:?}, not 4-d")
        };
        if kd != vd || kb_ != b || kd_ != d || kv_heads == 0 || heads % kv_heads != 0 || total < len {
            bail!("failed to run modelqa-attention: q {qd:?}, k {kd:?} and v {vd:?} do not fit together");
        }
        let (q, k, v) = (&f32s(qs)[qa..qb], &f32s(ks)[ka..kb], &f32s(vs)[va..vb]);
        let shape = Shape::from((b, len, heads * d));
        let mut out = vec![0f32; b * len * heads * d];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), shape));
        }
        let (groups, past) = (heads / kv_heads, total - len);
        // Output element block `index` is row `(batch, i)`'s head `h`: [batch, len, heads, d].
        let one = |index: usize, o: &mut [f32], scores: &mut Vec<f32>| {
            let (row, h) = (index / heads, index % heads);
            let (batch, i) = (row / len, row % len);
            let end = past + i + 1;
            let start = self.window.map_or(0, |w| end.saturating_sub(w));
            let query = &q[((batch * heads + h) * len + i) * d..][..d];
            let kv = (batch * kv_heads + h / groups) * total;
            let key = |j: usize| &k[(kv + j) * d..][..d];
            let value = |j: usize| &v[(kv + j) * d..][..d];
            self.row(query, (start..end).map(key), (start..end).map(value), o, scores);
        };
        let work = b * len * heads * total * d;
        if work < SERIAL_BELOW {
            let mut scores = Vec::new();
            for (index, o) in out.chunks_exact_mut(d).enumerate() {
                one(index, o, &mut scores);
            }
        } else {
            out.par_chunks_exact_mut(d)
                .enumerate()
                .for_each_init(Vec::new, |scores, (index, o)| one(index, o, scores));
        }
        Ok((CpuStorage::F32(out), shape))
    }
}

impl Attention {
    /// One query row against the keys and values it sees, in key order, into `out`.
    fn row<'a>(
        &self,
        query: &[f32],
        keys: impl Iterator<Item = &'a [f32]>,
        values: impl Iterator<Item = &'a [f32]>,
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        scores.clear();
        scores.extend(keys.map(|key| {
            let s = dot(query, key) * self.scale;
            match self.softcap {
                Some(cap) => cap * (s / cap).tanh(),
                None => s,
            }
        }));
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        out.fill(0.0);
        for (&w, value) in scores.iter().zip(values) {
            let w = w / sum;
            for (o, &x) in out.iter_mut().zip(value) {
                *o += w * x;
            }
        }
    }
}

/// `a · b` in eight lanes and a fixed tree, then the tail: the same order for every call of a
/// given length.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let whole = a.len() / 8 * 8;
    let mut lanes = [0f32; 8];
    for (x, y) in a[..whole].chunks_exact(8).zip(b[..whole].chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut sum =
        ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (x, y) in a[whole..].iter().zip(&b[whole..]) {
        sum += x * y;
    }
    sum
}
