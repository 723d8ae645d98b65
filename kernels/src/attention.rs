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

/// One sequence of a [`Attention::forward_sequences`] call: its queries are rows `rows` of the
/// call's `q`, and it attends over `k` and `v` (`[1, kv_heads, past + rows.len(), d]`, the
/// queries being the last positions; views of larger buffers are read in place, as in
/// [`Attention::forward`]).
pub struct Sequence<'a> {
    pub rows: std::ops::Range<usize>,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
}

impl Attention {
    /// Several sequences' causal attention in one call: `q` is `[1, heads, rows, d]` with each
    /// sequence's queries at its [`Sequence::rows`] (in order, together every row), each sequence
    /// seeing only its own keys; `[1, rows, heads · d]`, all f32 on the CPU.
    ///
    /// Each row is the same sequence of operations as in a call of [`Attention::forward`] on its
    /// sequence alone, so the bits are the same; what one call saves is a call per sequence (its
    /// copy of the queries, its output buffer and its hand-over to the pool) and the join of the
    /// outputs, which at a decode step of sixteen sequences cost more than their arithmetic.
    pub fn forward_sequences(&self, q: &Tensor, sequences: &[Sequence<'_>]) -> candle_core::Result<Tensor> {
        let q = q.contiguous()?;
        let (qs, ql) = q.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(qv)) = &*qs else {
            bail!("failed to run modelqa-attention: q is not f32 on the CPU");
        };
        let Some((qa, qb)) = ql.contiguous_offsets() else {
            bail!("failed to run modelqa-attention: q is not contiguous");
        };
        let [1, heads, rows, d] = ql.dims()[..] else {
            bail!("failed to run modelqa-attention: q is {:?}, not [1, heads, rows, d]", ql.dims())
        };
        let q = &qv[qa..qb];
        let mut covered = 0;
        for s in sequences {
            if s.rows.start != covered || s.rows.end < s.rows.start {
                bail!(
                    "failed to run modelqa-attention: sequence rows {:?} do not follow row {covered}",
                    s.rows
                );
            }
            covered = s.rows.end;
        }
        if covered != rows {
            bail!("failed to run modelqa-attention: the sequences hold {covered} of q's {rows} rows");
        }
        // Each sequence's keys and values, read in place under their storages' read locks.
        let kept: Vec<_> =
            sequences.iter().map(|s| (s.k.storage_and_layout(), s.v.storage_and_layout())).collect();
        let mut views = Vec::with_capacity(sequences.len());
        for (s, ((ks, kl), (vs, vl))) in sequences.iter().zip(&kept) {
            let (candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(vs)) = (&**ks, &**vs) else {
                bail!("failed to run modelqa-attention: k or v is not on the CPU");
            };
            let (kd, vd) = (kl.dims(), vl.dims());
            let [1, kv_heads, total, kd_] = kd[..] else {
                bail!("failed to run modelqa-attention: k is {kd:?}, not [1, kv_heads, total, d]")
            };
            let len = s.rows.len();
            if kd != vd || kd_ != d || kv_heads == 0 || heads % kv_heads != 0 || total < len {
                bail!(
                    "failed to run modelqa-attention: q {:?}, k {kd:?} and v {vd:?} do not fit together",
                    ql.dims()
                );
            }
            let (k, ks_) = keys(ks, kl, "k", d)?;
            let (v, vs_) = keys(vs, vl, "v", d)?;
            views.push(Keys { k, ks: ks_, v, vs: vs_, groups: heads / kv_heads, past: total - len });
        }
        let mut out = vec![0f32; rows * heads * d];
        // The sequence of each row.
        let of: Vec<usize> =
            sequences.iter().enumerate().flat_map(|(i, s)| s.rows.clone().map(move |_| i)).collect();
        let work: usize = sequences
            .iter()
            .zip(&views)
            .map(|(s, kv)| s.rows.len() * (kv.past + s.rows.len()) * heads * d)
            .sum();
        // Output element block `index` is row r's head h: [1, rows, heads, d].
        self.run(&mut out, d, work, |index, o, scores| {
            let (r, h) = (index / heads, index % heads);
            let (seq, kv) = (&sequences[of[r]], &views[of[r]]);
            let query = &q[(h * rows + r) * d..][..d];
            self.attend_row(query, kv, (0, h, r - seq.rows.start), o, scores);
        });
        Tensor::from_vec(out, (1, rows, heads * d), &candle_core::Device::Cpu)
    }

    /// Every block of `d` outputs by `one` (its index, the block, a scratch vector of scores):
    /// on the calling thread below [`SERIAL_BELOW`] multiply-adds (`work`), else on the pool.
    fn run(
        &self,
        out: &mut [f32],
        d: usize,
        work: usize,
        one: impl Fn(usize, &mut [f32], &mut Vec<f32>) + Sync,
    ) {
        if out.is_empty() {
            return;
        }
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
    }

    /// The query row of `(batch, head h, new position i)` against the keys and values it sees
    /// in `kv`, into `out`.
    fn attend_row(
        &self,
        query: &[f32],
        kv: &Keys<'_>,
        (batch, h, i): (usize, usize, usize),
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        let d = query.len();
        let end = kv.past + i + 1;
        let start = self.window.map_or(0, |w| end.saturating_sub(w));
        let at = |[sb, sh, st]: [usize; 3], j: usize| batch * sb + (h / kv.groups) * sh + j * st;
        let key = |j: usize| &kv.k[at(kv.ks, j)..][..d];
        let value = |j: usize| &kv.v[at(kv.vs, j)..][..d];
        self.row(query, (start..end).map(key), (start..end).map(value), out, scores);
    }
}

/// A sequence's keys and values as [`Attention::forward_sequences`] reads them: each from its
/// layout's start, with its strides (batch, head, position).
struct Keys<'a> {
    k: &'a [f32],
    ks: [usize; 3],
    v: &'a [f32],
    vs: [usize; 3],
    /// Query heads per key head.
    groups: usize,
    /// Positions before the sequence's queries.
    past: usize,
}

/// A key or value tensor's values from its layout's start and its strides, with every offset a
/// row can take checked against the storage once (each key's `d` values side by side).
fn keys<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
    d: usize,
) -> candle_core::Result<(&'a [f32], [usize; 3])> {
    let CpuStorage::F32(held) = s else {
        bail!("failed to run modelqa-attention: {what} is {:?}, not f32", s.dtype());
    };
    let st = l.stride();
    let [b, kv_heads, total, _] = l.dims()[..] else {
        bail!("failed to run modelqa-attention: {what} is {:?}, not 4-d", l.dims())
    };
    if d > 1 && st[3] != 1 {
        bail!("failed to run modelqa-attention: {what}'s rows are not contiguous (strides {st:?})");
    }
    let reach = |n: usize, stride: usize| n.saturating_sub(1) * stride;
    let last = reach(b, st[0]) + reach(kv_heads, st[1]) + reach(total, st[2]) + d;
    if b > 0 && total > 0 && l.start_offset() + last > held.len() {
        bail!("failed to run modelqa-attention: {what}'s layout reaches past its storage");
    }
    Ok((&held[l.start_offset()..], [st[0], st[1], st[2]]))
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
        let CpuStorage::F32(q) = qs else {
            bail!("failed to run modelqa-attention: q is {:?}, not f32", qs.dtype());
        };
        let Some((qa, qb)) = ql.contiguous_offsets() else {
            bail!("failed to run modelqa-attention: q is not contiguous");
        };
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
        let (k, ks_) = keys(ks, kl, "k", d)?;
        let (v, vs_) = keys(vs, vl, "v", d)?;
        let kv = Keys { k, ks: ks_, v, vs: vs_, groups: heads / kv_heads, past: total - len };
        let q = &q[qa..qb];
        let shape = Shape::from((b, len, heads * d));
        let mut out = vec![0f32; b * len * heads * d];
        // Output element block `index` is row `(batch, i)`'s head `h`: [batch, len, heads, d].
        self.run(&mut out, d, b * len * heads * total * d, |index, o, scores| {
            let (row, h) = (index / heads, index % heads);
            let (batch, i) = (row / len, row % len);
            let query = &q[((batch * heads + h) * len + i) * d..][..d];
            self.attend_row(query, &kv, (batch, h, i), o, scores);
        });
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
