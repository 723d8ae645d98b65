//! Causal attention computed one query row at a time, each over exactly the keys it sees, in key
//! order.
//!
//! Invariant: a row's result is the same sequence of floating-point operations whatever else the
//! call holds: how many query rows (a prompt prefilled whole, in pieces, or after a cached
//! prefix), which batch it sits in, the thread count. Candle's path (`q·kᵀ`, a mask, softmax,
//! `w·v` as general matrix products) reduces over the whole key axis in blocks that depend on the
//! shapes, so a prompt prefilled in two pieces differs from the same prompt prefilled whole in the
//! last bits; here it cannot, which is what lets a batch compute a shared prefix once.
//!
//! With AVX2 a row runs the same operations eight lanes at a time (`avx2`): the same products,
//! sums and tree, so the bits are the portable code's on every CPU.

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
    ///
    /// `k` and `v` may be views of larger buffers (a cache with room for more positions, narrowed
    /// to the positions it holds): they are read in place wherever each key's `d` values lie
    /// together, and copied only where they do not.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        let rows = |t: &Tensor| if t.stride().last() == Some(&1) { Ok(t.clone()) } else { t.contiguous() };
        q.contiguous()?.apply_op3_no_bwd(&rows(k)?, &rows(v)?, self)
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
        let values = |s: &'_ CpuStorage, what: &str| -> candle_core::Result<usize> {
            match s {
                CpuStorage::F32(v) => Ok(v.len()),
                _ => bail!("failed to run modelqa-attention: {what} is {:?}, not f32", s.dtype()),
            }
        };
        fn f32s(s: &CpuStorage) -> &[f32] {
            match s {
                CpuStorage::F32(v) => v.as_slice(),
                _ => &[],
            }
        }
        let Some((qa, qb)) = ql.contiguous_offsets() else {
            bail!("failed to run modelqa-attention: q is not contiguous");
        };
        values(qs, "q")?;
        let (qd, kd, vd) = (ql.dims(), kl.dims(), vl.dims());
        let [b, heads, len, d] = qd[..] else {
            bail!("failed to run modelqa-attention: q is {qd:?}, not 4-d")
        };
        let [kb_, kv_heads, total, kd_] = kd[..] else {
            bail!("failed to run modelqa-attention: k is {kd:?}, not 4-d")
        };
        if kd != vd || kb_ != b || kd_ != d || kv_heads == 0 || heads % kv_heads != 0 || total < len {
            bail!("failed to run modelqa-attention: q {qd:?}, k {kd:?} and v {vd:?} do not fit together");
        }
        // Keys and values by their layouts' strides (each key's d values side by side), every
        // offset a row can take checked against the storage once, here.
        let strided = |s: &CpuStorage, l: &Layout, what: &str| -> candle_core::Result<(usize, [usize; 3])> {
            let held = values(s, what)?;
            let st = l.stride();
            if d > 1 && st[3] != 1 {
                bail!("failed to run modelqa-attention: {what}'s rows are not contiguous (strides {st:?})");
            }
            let reach = |n: usize, stride: usize| n.saturating_sub(1) * stride;
            let last = reach(b, st[0]) + reach(kv_heads, st[1]) + reach(total, st[2]) + d;
            if b > 0 && total > 0 && l.start_offset() + last > held {
                bail!("failed to run modelqa-attention: {what}'s layout reaches past its storage");
            }
            Ok((l.start_offset(), [st[0], st[1], st[2]]))
        };
        let (ka, ks_) = strided(ks, kl, "k")?;
        let (va, vs_) = strided(vs, vl, "v")?;
        let q = &f32s(qs)[qa..qb];
        let (k, v) = (&f32s(ks)[ka..], &f32s(vs)[va..]);
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
            let at = |[sb, sh, st]: [usize; 3], j: usize| batch * sb + (h / groups) * sh + j * st;
            let key = |j: usize| &k[at(ks_, j)..][..d];
            let value = |j: usize| &v[at(vs_, j)..][..d];
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
        values: impl Iterator<Item = &'a [f32]> + Clone,
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
        weigh(scores, sum, values, out);
    }
}

/// `out` = Σ (w / sum) · value over the scores `w` and their values, in key order, each element
/// one chain of a product then a sum per key (from zero).
fn weigh<'a>(scores: &[f32], sum: f32, values: impl Iterator<Item = &'a [f32]> + Clone, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(8) && super::Isa::detected() != super::Isa::Scalar {
        return avx2::weigh(scores, sum, values, out);
    }
    out.fill(0.0);
    for (&w, value) in scores.iter().zip(values) {
        let w = w / sum;
        for (o, &x) in out.iter_mut().zip(value) {
            *o += w * x;
        }
    }
}

/// `a · b` in eight lanes and a fixed tree, then the tail: the same order for every call of a
/// given length.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::Isa::detected() != super::Isa::Scalar {
        return avx2::dot(a, b);
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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

/// The AVX2 twins of [`dot`] and [`weigh`]: the same multiplications and additions, eight lanes
/// at a time (a product, then a sum: no fused step), so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "a dot product of rows of different lengths");
        // SAFETY: the caller checked that the CPU has AVX2 (`Isa::detected`).
        unsafe { dot_avx2(a, b) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let whole = a.len() / 8 * 8;
        let mut lanes = _mm256_setzero_ps();
        for (x, y) in a[..whole].chunks_exact(8).zip(b[..whole].chunks_exact(8)) {
            // SAFETY: eight f32 each.
            let (x, y) = unsafe { (_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr())) };
            lanes = _mm256_add_ps(lanes, _mm256_mul_ps(x, y));
        }
        // ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)), as the portable tree.
        let halves = _mm_add_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps::<1>(lanes));
        let pairs = _mm_hadd_ps(halves, halves);
        let mut sum = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
        for (x, y) in a[whole..].iter().zip(&b[whole..]) {
            sum += x * y;
        }
        sum
    }

    pub(super) fn weigh<'a>(
        scores: &[f32],
        sum: f32,
        values: impl Iterator<Item = &'a [f32]> + Clone,
        out: &mut [f32],
    ) {
        assert!(out.len().is_multiple_of(8), "rows of whole vectors");
        assert!(values.clone().all(|v| v.len() == out.len()), "values as long as the row");
        // SAFETY: the caller checked that the CPU has AVX2 (`Isa::detected`).
        unsafe { weigh_avx2(scores, sum, values, out) }
    }

    /// Thirty-two outputs at a time in four registers, over every key.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn weigh_avx2<'a>(
        scores: &[f32],
        sum: f32,
        values: impl Iterator<Item = &'a [f32]> + Clone,
        out: &mut [f32],
    ) {
        for (c, out) in out.chunks_mut(32).enumerate() {
            let n = out.len() / 8;
            let mut acc = [_mm256_setzero_ps(); 4];
            for (&w, value) in scores.iter().zip(values.clone()) {
                let w = _mm256_set1_ps(w / sum);
                let value = &value[32 * c..32 * c + 8 * n];
                for (t, acc) in acc.iter_mut().enumerate().take(n) {
                    // SAFETY: eight f32 at 8t of `value`, which holds 8n.
                    let x = unsafe { _mm256_loadu_ps(value.as_ptr().add(8 * t)) };
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(w, x));
                }
            }
            for (t, acc) in acc.iter().enumerate().take(n) {
                // SAFETY: eight f32 at 8t of `out`, which holds 8n.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * t), *acc) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simd_row_is_the_portable_row_bit_for_bit() {
        if crate::Isa::detected() == crate::Isa::Scalar {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut seed = 7u64;
        let mut value = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        for d in [8, 40, 64, 72, 128] {
            for keys in [1, 3, 17, 100] {
                let q: Vec<f32> = (0..d).map(|_| value()).collect();
                let v: Vec<Vec<f32>> = (0..keys).map(|_| (0..d).map(|_| value()).collect()).collect();
                for (k, v) in v.iter().enumerate() {
                    assert_eq!(dot(&q, v).to_bits(), dot_portable(&q, v).to_bits(), "d = {d}, key {k}");
                }
                let scores: Vec<f32> = (0..keys).map(|_| value().exp()).collect();
                let sum: f32 = scores.iter().sum();
                let mut simd = vec![0f32; d];
                avx2::weigh(&scores, sum, v.iter().map(Vec::as_slice), &mut simd);
                let mut portable = vec![0f32; d];
                for (&w, v) in scores.iter().zip(&v) {
                    let w = w / sum;
                    for (o, &x) in portable.iter_mut().zip(v) {
                        *o += w * x;
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&simd), bits(&portable), "d = {d}, {keys} keys");
            }
        }
    }
}
