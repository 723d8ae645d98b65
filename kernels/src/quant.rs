//! GGML's quantized blocks, byte for byte as GGUF stores them: their sizes, their dequantization,
//! the 8-bit activation blocks each is multiplied with (Q8_0, Q8_1, Q8_K), and the portable
//! scalar dot products. The AVX2 span kernels live in `avx2.rs`; [`spans_q8_0`] and its
//! siblings pick them where the CPU has them.
//!
//! Activations are quantized as candle and ggml do (same rounding, same f16 scales), so a product
//! here agrees with candle's `QMatMul` up to the order the block sums are added in.

use half::f16;
use rayon::prelude::*;

use super::{Isa, QuantKind, ROWS, Spans, WIDE};

/// Values in a Q4_0…Q8_0 block.
pub(super) const QK: usize = 32;
/// Values in a K-quant super-block.
pub(super) const QK_K: usize = 256;

impl QuantKind {
    /// (values, bytes) of one block.
    pub(super) fn block(self) -> (usize, usize) {
        match self {
            QuantKind::Q4_0 => (QK, 18),
            QuantKind::Q4_1 => (QK, 20),
            QuantKind::Q5_0 => (QK, 22),
            QuantKind::Q5_1 => (QK, 24),
            QuantKind::Q8_0 => (QK, 34),
            QuantKind::Q2K => (QK_K, 84),
            QuantKind::Q3K => (QK_K, 110),
            QuantKind::Q4K => (QK_K, 144),
            QuantKind::Q5K => (QK_K, 176),
            QuantKind::Q6K => (QK_K, 210),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            QuantKind::Q4_0 => "q4_0",
            QuantKind::Q4_1 => "q4_1",
            QuantKind::Q5_0 => "q5_0",
            QuantKind::Q5_1 => "q5_1",
            QuantKind::Q8_0 => "q8_0",
            QuantKind::Q2K => "q2_k",
            QuantKind::Q3K => "q3_k",
            QuantKind::Q4K => "q4_k",
            QuantKind::Q5K => "q5_k",
            QuantKind::Q6K => "q6_k",
        }
    }
}

/// 32 activations as i8 with their scale (the f16 scale GGML stores, widened once).
#[derive(Debug, Clone, Copy)]
pub(super) struct Q8_0 {
    pub(super) d: f32,
    pub(super) qs: [i8; QK],
}

/// A [`Q8_0`] block with the integer sum of its values, for the weights held in panels
/// (`qpanel`), whose integer sums start at −bias · Σy.
#[derive(Debug, Clone, Copy)]
pub(super) struct Q8S {
    pub(super) d: f32,
    pub(super) sum: i32,
    pub(super) qs: [i8; QK],
}

impl Q8S {
    pub(super) fn of(b: &Q8_0) -> Q8S {
        Q8S { d: b.d, sum: b.qs.iter().map(|&q| i32::from(q)).sum(), qs: b.qs }
    }
}

/// A [`Q8_0`] block with `s` = d · Σ qs, for the weight types that carry an offset.
#[derive(Debug, Clone, Copy)]
pub(super) struct Q8_1 {
    pub(super) d: f32,
    pub(super) s: f32,
    pub(super) qs: [i8; QK],
}

/// 256 activations with an f32 scale and the sums of each 16, for the K-quants.
#[derive(Debug, Clone, Copy)]
pub(super) struct Q8K {
    pub(super) d: f32,
    pub(super) qs: [i8; QK_K],
    pub(super) bsums: [i16; QK_K / 16],
}

/// The activation rows of one product, quantized once for every weight row.
pub(super) enum Activations {
    Q8_0(Vec<Q8_0>),
    Q8_1(Vec<Q8_1>),
    Q8K(Vec<Q8K>),
}

impl Activations {
    /// `x` (m rows of `cols`, `cols` a whole number of blocks) in the blocks `kind` multiplies,
    /// by `isa`'s code: the portable functions below, or with AVX2 their SIMD twins, which give
    /// the same bytes and scales bit for bit. Blocks are independent, so a large batch (a
    /// prefill) is quantized on rayon's pool.
    pub(super) fn quantize(kind: QuantKind, isa: Isa, x: &[f32], m: usize, cols: usize) -> Activations {
        debug_assert_eq!(x.len(), m * cols);
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx2 | Isa::Avx512) {
            use super::avx2;
            return match kind {
                QuantKind::Q4_0 | QuantKind::Q5_0 | QuantKind::Q8_0 => {
                    Activations::Q8_0(blocks(x, avx2::q8_0_blocks))
                }
                QuantKind::Q4_1 | QuantKind::Q5_1 => Activations::Q8_1(blocks(x, avx2::q8_1_blocks)),
                _ => Activations::Q8K(blocks(x, avx2::q8k_blocks)),
            };
        }
        let _ = isa;
        match kind {
            QuantKind::Q4_0 | QuantKind::Q5_0 | QuantKind::Q8_0 => {
                Activations::Q8_0(blocks(x, |x, out| each(x, out, q8_0)))
            }
            QuantKind::Q4_1 | QuantKind::Q5_1 => Activations::Q8_1(blocks(x, |x, out| each(x, out, q8_1))),
            _ => Activations::Q8K(blocks(x, |x, out| each(x, out, q8k))),
        }
    }
}

/// An activation block: the values it holds, and one of zeros to fill a vector with.
pub(super) trait Block: Copy + Send + Sync {
    const VALUES: usize;
    const ZERO: Self;
}

impl Block for Q8_0 {
    const VALUES: usize = QK;
    const ZERO: Q8_0 = Q8_0 { d: 0.0, qs: [0; QK] };
}

impl Block for Q8_1 {
    const VALUES: usize = QK;
    const ZERO: Q8_1 = Q8_1 { d: 0.0, s: 0.0, qs: [0; QK] };
}

impl Block for Q8K {
    const VALUES: usize = QK_K;
    const ZERO: Q8K = Q8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
}

/// Below this many values activations are quantized on the calling thread: one decoded token's
/// widest row (a few thousand values) takes microseconds, less than waking a worker.
const PARALLEL_QUANTIZE_FROM: usize = 64 * 1024;
/// The blocks one task of the pool quantizes.
const BLOCKS_PER_TASK: usize = 64;

/// `x` in blocks, filled by `fill`, which takes a run of whole blocks' values and the blocks to
/// write them into.
fn blocks<B: Block>(x: &[f32], fill: impl Fn(&[f32], &mut [B]) + Sync) -> Vec<B> {
    let mut out = vec![B::ZERO; x.len() / B::VALUES];
    if x.len() < PARALLEL_QUANTIZE_FROM {
        fill(x, &mut out);
    } else {
        x.par_chunks(B::VALUES * BLOCKS_PER_TASK)
            .zip(out.par_chunks_mut(BLOCKS_PER_TASK))
            .for_each(|(x, out)| fill(x, out));
    }
    out
}

/// Each block of `out` from its values in `x` by `f`.
fn each<B, const N: usize>(x: &[f32], out: &mut [B], f: fn(&[f32; N]) -> B) {
    for (out, x) in out.iter_mut().zip(x.chunks_exact(N)) {
        *out = f(x.try_into().expect("a block"));
    }
}

/// `v` rounded to the nearest integer, halves away from zero: C's `roundf`, exactly, for
/// |v| < 2³¹ (larger values saturate, NaN gives 0), without a call into libm per value. The
/// fraction `v − trunc(v)` is exact in f32, so comparing it with ½ decides ties as `roundf` does.
#[inline(always)]
pub(super) fn round_half_away(v: f32) -> i32 {
    let whole = v as i32;
    let fraction = v - whole as f32;
    whole + i32::from(fraction >= 0.5) - i32::from(fraction <= -0.5)
}

/// ggml's `quantize_row_q8_0`: scale = amax / 127, stored as f16; values rounded half away from 0.
/// A scale too small for its inverse to be finite (a block below ~4·10⁻³⁷, which its f16 scale
/// rounds to 0 anyway) gives zeros, where ggml's cast of an infinity is undefined.
pub(super) fn q8_0(x: &[f32; QK]) -> Q8_0 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    let mut qs = [0i8; QK];
    // |v · id| is at most 127 and a rounding error; the clamp keeps the old cast's saturation.
    qs.iter_mut().zip(x).for_each(|(q, v)| *q = round_half_away(v * id).clamp(-128, 127) as i8);
    Q8_0 { d: f16::from_f32(d).to_f32(), qs }
}

/// 1 / d, or 0 where that is not finite (d is 0 or below ~2.9·10⁻³⁹).
pub(super) fn inverse_or_zero(d: f32) -> f32 {
    let inverse = 1.0 / d;
    if inverse.is_finite() { inverse } else { 0.0 }
}

/// ggml's `quantize_row_q8_1`: a [`q8_0`] block and `s` = d · Σ qs, rounded through f16 as
/// candle does.
pub(super) fn q8_1(x: &[f32; QK]) -> Q8_1 {
    q8_1_of(q8_0(x))
}

/// The [`Q8_1`] block of a [`q8_0`] block.
pub(super) fn q8_1_of(block: Q8_0) -> Q8_1 {
    let Q8_0 { d, qs } = block;
    let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
    let s = f16::from_f32(f16::from_f32(sum as f32).to_f32() * d).to_f32();
    Q8_1 { d, s, qs }
}

/// ggml's `quantize_row_q8_K`: scale from the value of largest magnitude, kept in f32. A block of
/// zeros, or one too small for `-127 / max` to be finite, is the zero block.
pub(super) fn q8k(x: &[f32; QK_K]) -> Q8K {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let iscale = -127.0 / max;
    if amax == 0.0 || !iscale.is_finite() {
        return Q8K::ZERO;
    }
    let mut qs = [0i8; QK_K];
    qs.iter_mut().zip(x).for_each(|(q, v)| *q = round_half_away(iscale * v).clamp(-128, 127) as i8);
    q8k_of(qs, iscale)
}

/// The [`Q8K`] block of `qs`, quantized with `iscale`: its sums of 16 and its scale.
pub(super) fn q8k_of(qs: [i8; QK_K], iscale: f32) -> Q8K {
    let mut bsums = [0i16; QK_K / 16];
    for (sum, q) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
        *sum = q.iter().map(|&q| i16::from(q)).sum();
    }
    Q8K { d: 1.0 / iscale, qs, bsums }
}

/// The little-endian f16 at `at`, widened.
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The high-bit word of a Q5 block at `at`.
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Q4_K's and Q5_K's eight 6-bit (scale, min) pairs packed into 12 bytes (`get_scale_min_k4`).
pub(super) fn k4_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
        };
    }
    (sc, mn)
}

/// A K-quant super-block as integers: value `k` is `d · scale[k / 16] · q[k] − dmin · min[k / 16]`.
struct Super {
    q: [i8; QK_K],
    scale: [i32; 16],
    min: [i32; 16],
    d: f32,
    dmin: f32,
}

/// Unpacks one K-quant super-block (`b` is exactly one block of `kind`).
fn decode(kind: QuantKind, b: &[u8]) -> Super {
    let mut s = Super { q: [0; QK_K], scale: [0; 16], min: [0; 16], d: 0.0, dmin: 0.0 };
    match kind {
        QuantKind::Q2K => {
            // scales[16] qs[64] d dmin; value 128n + 32j + l is bits 2j of qs[32n + l].
            let (scales, qs) = (&b[..16], &b[16..80]);
            (s.d, s.dmin) = (f16_at(b, 80), f16_at(b, 82));
            s.scale = std::array::from_fn(|g| i32::from(scales[g] & 0xF));
            s.min = std::array::from_fn(|g| i32::from(scales[g] >> 4));
            for (k, q) in s.q.iter_mut().enumerate() {
                let (n, j, l) = (k / 128, k % 128 / 32, k % 32);
                *q = ((qs[32 * n + l] >> (2 * j)) & 3) as i8;
            }
        }
        QuantKind::Q3K => {
            // hmask[32] qs[64] scales[12] d; the high bit set means "no −4".
            let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
            s.d = f16_at(b, 108);
            for g in 0..16 {
                let low = if g < 8 { scales[g] & 0xF } else { scales[g - 8] >> 4 };
                let high = (scales[8 + g % 4] >> (2 * (g / 4))) & 3;
                s.scale[g] = i32::from(low | (high << 4)) - 32;
            }
            for (k, q) in s.q.iter_mut().enumerate() {
                let (n, j, l) = (k / 128, k % 128 / 32, k % 32);
                let low = ((qs[32 * n + l] >> (2 * j)) & 3) as i8;
                *q = if hmask[l] & (1 << (4 * n + j)) != 0 { low } else { low - 4 };
            }
        }
        QuantKind::Q4K | QuantKind::Q5K => {
            // d dmin scales[12] (qh[32] for Q5_K) qs[128]; value 64c + l is the low nibble of
            // qs[32c + l], 64c + 32 + l the high one; Q5_K's fifth bit is bit 2c (2c + 1) of qh[l].
            (s.d, s.dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, mn) = k4_scales(&b[4..16]);
            for g in 0..16 {
                (s.scale[g], s.min[g]) = (i32::from(sc[g / 2]), i32::from(mn[g / 2]));
            }
            let (qh, qs) =
                if kind == QuantKind::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            for (k, q) in s.q.iter_mut().enumerate() {
                let (c, half, l) = (k / 64, k % 64 / 32, k % 32);
                let nibble = (qs[32 * c + l] >> (4 * half)) & 0xF;
                let fifth = qh.map_or(0, |qh| ((qh[l] >> (2 * c + half)) & 1) << 4);
                *q = (nibble | fifth) as i8;
            }
        }
        QuantKind::Q6K => {
            // ql[128] qh[64] scales[16] (i8) d; value 128n + 32j + l: a nibble of ql, two bits of qh.
            let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
            s.d = f16_at(b, 208);
            s.scale = std::array::from_fn(|g| i32::from(scales[g] as i8));
            for (k, q) in s.q.iter_mut().enumerate() {
                let (n, j, l) = (k / 128, k % 128 / 32, k % 32);
                let low = (ql[64 * n + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0xF;
                let high = (qh[32 * n + l] >> (2 * j)) & 3;
                *q = (low | (high << 4)) as i8 - 32;
            }
        }
        _ => unreachable!("{kind:?} is not a K-quant"),
    }
    s
}

/// One stored row of `kind` (`bytes`) dequantized into `out`, as ggml's `dequantize_row_*`.
pub(super) fn dequantize_row(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
    let (values, size) = kind.block();
    for (b, out) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(values)) {
        match kind {
            QuantKind::Q4_0 | QuantKind::Q4_1 | QuantKind::Q5_0 | QuantKind::Q5_1 | QuantKind::Q8_0 => {
                let (q, d, m) = small_block(kind, b);
                out.iter_mut().zip(q).for_each(|(o, q)| *o = f32::from(q) * d + m);
            }
            _ => {
                let s = decode(kind, b);
                for (g, out) in out.chunks_exact_mut(16).enumerate() {
                    let (d, m) = (s.d * s.scale[g] as f32, s.dmin * s.min[g] as f32);
                    out.iter_mut().zip(&s.q[16 * g..]).for_each(|(o, &q)| *o = d * f32::from(q) - m);
                }
            }
        }
    }
}

/// A 32-value block as (integer values, scale, offset): value k is `q[k] · d + m`.
fn small_block(kind: QuantKind, b: &[u8]) -> ([i8; QK], f32, f32) {
    let mut q = [0i8; QK];
    let d = f16_at(b, 0);
    match kind {
        QuantKind::Q8_0 => {
            q.iter_mut().zip(&b[2..34]).for_each(|(q, &v)| *q = v as i8);
            (q, d, 0.0)
        }
        QuantKind::Q4_0 | QuantKind::Q4_1 => {
            let (qs, bias, m) =
                if kind == QuantKind::Q4_0 { (&b[2..18], 8, 0.0) } else { (&b[4..20], 0, f16_at(b, 2)) };
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) as i8 - bias;
                q[j + 16] = (qs[j] >> 4) as i8 - bias;
            }
            (q, d, m)
        }
        _ => {
            // Q5_0: d qh[4] qs[16]; Q5_1: d m qh[4] qs[16]. Bit j of qh is value j's fifth bit.
            let (at, bias, m) = if kind == QuantKind::Q5_0 { (2, 16, 0.0) } else { (4, 0, f16_at(b, 2)) };
            let (qh, qs) = (u32_at(b, at), &b[at + 4..at + 20]);
            for j in 0..16 {
                let (h0, h1) = (((qh >> j) & 1) << 4, ((qh >> (j + 16)) & 1) << 4);
                q[j] = ((qs[j] & 0xF) | h0 as u8) as i8 - bias;
                q[j + 16] = ((qs[j] >> 4) | h1 as u8) as i8 - bias;
            }
            (q, d, m)
        }
    }
}

/// A dot product of one stored weight row with one quantized activation row.
pub(super) type QDot<A> = fn(&[u8], &[A]) -> f32;

/// The SIMD span kernels of Q4_1 or Q5_1 weights with Q8_1 activations, where `isa` has them
/// (AVX2; with VNNI on AVX-512, whose batches take two weight rows a register): each weight block
/// is unpacked once for [`ROWS`](super::ROWS) or [`WIDE`](super::WIDE) activation rows. (The
/// blocks without an offset, Q4_0, Q5_0 and Q8_0, are held in panels with kernels of their own:
/// `qpanel`.)
pub(super) fn spans_q8_1(kind: QuantKind, isa: Isa) -> Option<Spans<u8, Q8_1, ROWS, WIDE>> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        use super::avx512::*;
        return match kind {
            QuantKind::Q4_1 => Some(Spans { one: span_q4_1, rows: rows_q4_1, wide: Some(wide_q4_1) }),
            QuantKind::Q5_1 => Some(Spans { one: span_q5_1, rows: rows_q5_1, wide: Some(wide_q5_1) }),
            _ => None,
        };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        use super::avx2::*;
        return match kind {
            QuantKind::Q4_1 => Some(Spans { one: span_q4_1, rows: rows_q4_1, wide: Some(wide_q4_1) }),
            QuantKind::Q5_1 => Some(Spans { one: span_q5_1, rows: rows_q5_1, wide: Some(wide_q5_1) }),
            _ => None,
        };
    }
    let _ = (kind, isa);
    None
}

/// The same for K-quant weights with Q8_K activations. On AVX-512, batches of Q4_K, Q5_K and
/// Q6_K take two weight rows a register (the AVX2 bits); one activation row, Q2_K and Q3_K run
/// the AVX2 kernels (their `madd` applies the sub-block scales, which VNNI's sums would leave to a
/// multiply).
pub(super) fn spans_q8k(kind: QuantKind, isa: Isa) -> Option<Spans<u8, Q8K, ROWS, WIDE>> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        use super::avx2::{span_q4k, span_q5k, span_q6k};
        use super::avx512::*;
        match kind {
            QuantKind::Q4K => return Some(Spans { one: span_q4k, rows: rows_q4k, wide: Some(wide_q4k) }),
            QuantKind::Q5K => return Some(Spans { one: span_q5k, rows: rows_q5k, wide: Some(wide_q5k) }),
            QuantKind::Q6K => return Some(Spans { one: span_q6k, rows: rows_q6k, wide: Some(wide_q6k) }),
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) {
        use super::avx2::*;
        return match kind {
            QuantKind::Q2K => Some(Spans { one: span_q2k, rows: rows_q2k, wide: Some(wide_q2k) }),
            QuantKind::Q3K => Some(Spans { one: span_q3k, rows: rows_q3k, wide: Some(wide_q3k) }),
            QuantKind::Q4K => Some(Spans { one: span_q4k, rows: rows_q4k, wide: Some(wide_q4k) }),
            QuantKind::Q5K => Some(Spans { one: span_q5k, rows: rows_q5k, wide: Some(wide_q5k) }),
            QuantKind::Q6K => Some(Spans { one: span_q6k, rows: rows_q6k, wide: Some(wide_q6k) }),
            _ => None,
        };
    }
    let _ = (kind, isa);
    None
}

/// The portable dot product of Q4_1 or Q5_1 weights with Q8_1 activations.
pub(super) fn dot_q8_1_fn(kind: QuantKind) -> QDot<Q8_1> {
    match kind {
        QuantKind::Q4_1 => |w, y| dot_small_q8_1(QuantKind::Q4_1, w, y),
        QuantKind::Q5_1 => |w, y| dot_small_q8_1(QuantKind::Q5_1, w, y),
        _ => unreachable!("{kind:?} is not multiplied with Q8_1 activations"),
    }
}

/// The portable dot product of K-quant weights with Q8_K activations.
pub(super) fn dot_q8k_fn(kind: QuantKind) -> QDot<Q8K> {
    match kind {
        QuantKind::Q2K => |w, y| dot_k(QuantKind::Q2K, w, y),
        QuantKind::Q3K => |w, y| dot_k(QuantKind::Q3K, w, y),
        QuantKind::Q4K => |w, y| dot_k(QuantKind::Q4K, w, y),
        QuantKind::Q5K => |w, y| dot_k(QuantKind::Q5K, w, y),
        QuantKind::Q6K => |w, y| dot_k(QuantKind::Q6K, w, y),
        _ => unreachable!("{kind:?} is not multiplied with Q8_K activations"),
    }
}

/// Σ over blocks of (Σ q·y) · (d_w · d_y) (the integer sum per block, then one float step), plus
/// each block's offset times the activation block's sum.
fn dot_small_q8_1(kind: QuantKind, w: &[u8], y: &[Q8_1]) -> f32 {
    let size = kind.block().1;
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(size).zip(y) {
        let (q, d, m) = small_block(kind, b);
        let sumi: i32 = q.iter().zip(&y.qs).map(|(&q, &v)| i32::from(q) * i32::from(v)).sum();
        sum += sumi as f32 * (d * y.d) + m * y.s;
    }
    sum
}

/// Per super-block: Σ scale·(Σ q·y) and Σ min·bsum as integers, then `d·… − dmin·…`.
fn dot_k(kind: QuantKind, w: &[u8], y: &[Q8K]) -> f32 {
    let size = kind.block().1;
    let mut sum = 0f32;
    for (b, y) in w.chunks_exact(size).zip(y) {
        let s = decode(kind, b);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for g in 0..16 {
            let span = 16 * g..16 * g + 16;
            let dot: i32 =
                s.q[span.clone()].iter().zip(&y.qs[span]).map(|(&q, &v)| i32::from(q) * i32::from(v)).sum();
            sumi += s.scale[g] * dot;
            summ += s.min[g] * i32::from(y.bsums[g]);
        }
        sum += (s.d * y.d) * sumi as f32 - (s.dmin * y.d) * summ as f32;
    }
    sum
}
