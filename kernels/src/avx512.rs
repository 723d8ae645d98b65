//! The AVX-512 kernels (F, BW, DQ, VL and VNNI, on top of AVX2, FMA and F16C).
//!
//! - **Dense: sixteen lanes a pair.** A pair of a weight row and an activation row keeps one
//!   16-lane sum over two steps of eight columns at a time (the order `dense` documents for
//!   AVX-512, not AVX2's). A row's two steps lie 32 values apart in its panel, and are read into
//!   one register's two halves; an activation row's 16 columns are one plain load, used for the
//!   panel's four rows. A tile of four rows by [`WIDE`](dense::WIDE) (six) activation rows keeps
//!   its 24 sums in 24 of the 32 registers. One activation row and tiles of three run the same
//!   order, so a result does not depend on the batch. Eight lanes a pair, the AVX2 order, needs
//!   each activation step broadcast into both halves of a register that holds two rows; against
//!   that order's tile of four rows by eight (one thread, 48 activation rows, f16), this one ran
//!   ×1.46 as fast on 4864 × 896, ×1.63 on 896 × 896 and ×1.0 on 896 × 4864, whose long
//!   activation rows stream from L2 either way.
//! - **Blocks of 32 with VNNI.** `vpdpbusd` adds four byte products into each i32 lane in one
//!   instruction, where AVX2 needs `maddubs` (pairs into i16) and `madd` (pairs of those into
//!   i32). Both sum the same four products into the same lane, exactly (the pairs `maddubs` forms
//!   stay below i16's limit: one factor is at most 128 in magnitude, the other, an activation, at
//!   most 127), so the bits are the AVX2 kernels'.
//! - **The blocks of 32 without an offset (Q4_0, Q5_0, Q8_0)** are held in panels of sixteen
//!   rows with kernels of their own (`qpanel`), where each lane of a `vpdpbusd` sums one row's
//!   whole block. (Before, their batches held two weight rows' blocks in one register's halves,
//!   38912 × 896 Q8_0 with 64 activation rows at 194 GMAC/s against 122 for one row a register.)
//! - **Batches of Q4_K, Q5_K and Q6_K: two weight rows a register** (module `kpairs`), by
//!   AVX-512 BW's `maddubs` and `madd`, each half the AVX2 kernel's lanes and steps. Against the
//!   AVX2 kernels (`cargo xtask bench kernels --only qwen-0.5b`, 896 × 4864, two threads, two
//!   runs): Q4_K ×1.23–1.26 with 8 activation rows and ×1.02–1.34 with 64, Q5_K ×1.38–1.68 and
//!   ×1.25–1.37, Q6_K ×1.50–1.52 and ×1.57–1.65.
//!
//! The public functions are safe: each checks that the CPU has the features before it enters the
//! `#[target_feature]` code.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::Isa;
use super::avx2::{
    bit_bytes, f16_at, hsum, load_i8, nibbles, panel_rows, prefetch_ahead, quant_entry, quant_rows,
    small_kernels,
};
use super::dense::{self, PANEL, STEP, TILE};
use super::quant::Q8_1;
use super::{ROWS, WIDE};

/// Whether this CPU has AVX-512 F, BW, DQ, VL and VNNI (AVX2, FMA and F16C are checked apart).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Panics unless the CPU has what the `#[target_feature]` kernels are compiled for.
fn check() {
    assert!(
        Isa::detected() == Isa::Avx512,
        "an AVX-512 kernel on a CPU without AVX-512 F, BW, DQ, VL and VNNI"
    );
}

/// Σ x·y over unsigned x and signed y bytes, as 8 f32 lanes of i32 sums, four products a lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn sum_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y))
}

small_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni", sum_u8_i8);

/// A span of weight rows (`size`-byte blocks) times `N` activation rows, two weight rows at a
/// time by `two` and an odd last one by `one`. Row p is paired with row half + p: two sequential
/// streams through memory. Pairing neighbours read the span out of order (each row of a pair,
/// then a jump past both), which the hardware prefetchers did not follow: a batch of 4 through a
/// 145 MB head ran at a third of the memory's pace.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn pairs<X, const N: usize>(
    w: &[u8],
    x: [&[X]; N],
    mut out: [&mut [f32]; N],
    size: usize,
    two: impl Fn(&[u8], &[u8], [&[X]; N]) -> [[f32; 2]; N],
    one: impl Fn(&[u8], [&[X]; N]) -> [f32; N],
) {
    let (bytes, len) = (x[0].len() * size, out[0].len());
    assert!(x.iter().all(|a| a.len() * size == bytes), "activation rows of different lengths");
    assert!(out.iter().all(|o| o.len() == len), "output rows of different lengths");
    assert_eq!(w.len(), bytes * len, "a span of {} bytes for {len} rows of {bytes}", w.len());
    let half = len / 2;
    let (front, back) = w.split_at(half * bytes);
    for (p, (first, second)) in front.chunks_exact(bytes).zip(back.chunks_exact(bytes)).enumerate() {
        for (out, [a, b]) in out.iter_mut().zip(two(first, second, x)) {
            (out[p], out[half + p]) = (a, b);
        }
    }
    if len % 2 == 1 {
        for (out, y) in out.iter_mut().zip(one(&back[half * bytes..], x)) {
            out[len - 1] = y;
        }
    }
}

pub(super) use kpairs::{rows_q4k, rows_q5k, rows_q6k, wide_q4k, wide_q5k, wide_q6k};

/// The batch kernels of Q4_K, Q5_K and Q6_K weights: two weight rows a register (through
/// [`pairs`]), on the activations as they are. Each 512-bit register holds a
/// 32-value piece of two weight rows in its halves; an activation piece is broadcast to both, and
/// AVX-512 BW's `maddubs` and `madd` (pairs into i16, then those pairs times the sub-block scales
/// into i32) do both rows' work in one instruction each. Each half runs the AVX2 kernel's lanes
/// and steps (the same integer sums, the same fused step with the row's own super-block scale,
/// the same mins or offsets, the same [`hsum`]), so every result has the AVX2 bits. VNNI's
/// `vpdpbusd` would sum four products a lane but leave the scales to a multiply. One activation
/// row (decode) keeps the AVX2 span, which reads the weights at the memory's pace.
mod kpairs {
    use std::arch::x86_64::*;

    use super::super::avx2::{
        bsums, f16_at, hsum, hsum_i32, k4_block_sums, k4_scale_words, load_i8, load32, q4k_kernel,
        q5k_kernel, q6k_kernel,
    };
    use super::super::quant::Q8K;
    use super::super::{ROWS, WIDE};
    use super::{check, pairs};

    /// `lo` in the low half of a register, `hi` in the high one.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn halves(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }

    /// `a` in the eight low lanes, `b` in the eight high ones.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn two_scales(a: f32, b: f32) -> __m512 {
        _mm512_insertf32x8::<1>(_mm512_set1_ps(a), _mm256_set1_ps(b))
    }

    /// The two halves' [`hsum`]s.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn hsums(v: __m512) -> [f32; 2] {
        [hsum(_mm512_castps512_ps256(v)), hsum(_mm512_extractf32x8_ps::<1>(v))]
    }

    /// Q4_K and Q5_K (`fifth` = the offset of qh, for Q5_K), two weight rows: the AVX2
    /// `q4k_q5k` in each half.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn q4k_q5k_pair<const N: usize>(
        first: &[u8],
        second: &[u8],
        y: [&[Q8K]; N],
        size: usize,
        fifth: Option<usize>,
    ) -> [[f32; 2]; N] {
        let blocks = first.len() / size;
        assert!(
            second.len() == first.len() && y.iter().all(|y| y.len() == blocks),
            "two weight rows and activation rows of different lengths"
        );
        let mut acc = [_mm512_setzero_ps(); N];
        let low4 = _mm512_set1_epi8(0x0F);
        for (k, (b0, b1)) in first.chunks_exact(size).zip(second.chunks_exact(size)).enumerate() {
            let (mut scales, mut mns) = ([_mm_setzero_si128(); 2], [_mm_setzero_si128(); 2]);
            for (r, b) in [b0, b1].into_iter().enumerate() {
                let (sc, mn) = k4_scale_words(b[4..16].try_into().expect("12 bytes"));
                mns[r] = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
                scales[r] = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
            }
            // The mins' part in lanes 0–3 of each row's half, as the AVX2 kernel adds it.
            let dmin = [f16_at(b0, 2), f16_at(b1, 2)];
            for (acc, y) in acc.iter_mut().zip(&y) {
                let y = &y[k];
                let sums = k4_block_sums(y);
                let [p0, p1] = mns.map(|mn| _mm256_zextsi128_si256(_mm_madd_epi16(mn, sums)));
                let prods = _mm512_cvtepi32_ps(halves(p0, p1));
                *acc = _mm512_fmadd_ps(two_scales(-(y.d * dmin[0]), -(y.d * dmin[1])), prods, *acc);
            }
            let d = [f16_at(b0, 0), f16_at(b1, 0)];
            // Row 0's scale j as i16 in lane j of the two low 128-bit lanes, row 1's in the two
            // high ones: broadcast within each 128-bit lane by a byte shuffle below.
            let sc = halves(_mm256_broadcastsi128_si256(scales[0]), _mm256_broadcastsi128_si256(scales[1]));
            let scale = |j: i8| {
                _mm512_shuffle_epi8(sc, _mm512_set1_epi16(i16::from_le_bytes([2 * j as u8, 2 * j as u8 + 1])))
            };
            let pair = |at: usize| halves(load32(b0, at), load32(b1, at));
            let qs = if fifth.is_some() { 48 } else { 16 };
            let high = fifth.map(pair);
            let mut sumi = [_mm512_setzero_si512(); N];
            for c in 0..4 {
                let packed = pair(qs + 32 * c);
                let mut lo = _mm512_and_si512(packed, low4);
                let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low4);
                if let Some(h) = high {
                    // Bit 2c (2c + 1) of each qh byte is the fifth bit of the low (high) nibbles.
                    let one = _mm512_set1_epi8(1);
                    let bit = |k: i32| {
                        _mm512_slli_epi16::<4>(_mm512_and_si512(
                            _mm512_srl_epi16(h, _mm_cvtsi32_si128(k)),
                            one,
                        ))
                    };
                    lo = _mm512_or_si512(lo, bit(2 * c as i32));
                    hi = _mm512_or_si512(hi, bit(2 * c as i32 + 1));
                }
                let (slo, shi) = (scale(2 * c as i8), scale(2 * c as i8 + 1));
                for (sumi, y) in sumi.iter_mut().zip(&y) {
                    let y = &y[k];
                    let ylo = _mm512_broadcast_i64x4(load_i8(&y.qs, 64 * c));
                    let yhi = _mm512_broadcast_i64x4(load_i8(&y.qs, 64 * c + 32));
                    let plo = _mm512_madd_epi16(_mm512_maddubs_epi16(lo, ylo), slo);
                    let phi = _mm512_madd_epi16(_mm512_maddubs_epi16(hi, yhi), shi);
                    *sumi = _mm512_add_epi32(*sumi, _mm512_add_epi32(plo, phi));
                }
            }
            for ((acc, sumi), y) in acc.iter_mut().zip(sumi).zip(&y) {
                let yd = y[k].d;
                *acc = _mm512_fmadd_ps(two_scales(yd * d[0], yd * d[1]), _mm512_cvtepi32_ps(sumi), *acc);
            }
        }
        std::array::from_fn(|j| hsums(acc[j]))
    }

    /// Q6_K, two weight rows: the AVX2 `q6k_kernel` in each half.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn q6k_pair<const N: usize>(first: &[u8], second: &[u8], y: [&[Q8K]; N]) -> [[f32; 2]; N] {
        let blocks = first.len() / 210;
        assert!(
            second.len() == first.len() && y.iter().all(|y| y.len() == blocks),
            "two weight rows and activation rows of different lengths"
        );
        let (mut acc, mut offsets) = ([_mm512_setzero_ps(); N], [[0f32; 2]; N]);
        let (low4, low2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(3));
        for (k, (b0, b1)) in first.chunks_exact(210).zip(second.chunks_exact(210)).enumerate() {
            // SAFETY: a block holds 210 bytes; its 16 i8 scales are bytes 192..208.
            let scales8 = [b0, b1].map(|b| unsafe { _mm_loadu_si128(b[192..208].as_ptr().cast()) });
            let dw = [f16_at(b0, 208), f16_at(b1, 208)];
            // The values are stored + 32: take 32 · Σ scale·bsum off once per super-block.
            for r in 0..2 {
                let scales = _mm256_cvtepi8_epi16(scales8[r]);
                for (offsets, y) in offsets.iter_mut().zip(&y) {
                    let y = &y[k];
                    let bias = _mm256_madd_epi16(scales, bsums(y));
                    let bias = hsum_i32(_mm_add_epi32(
                        _mm256_castsi256_si128(bias),
                        _mm256_extracti128_si256::<1>(bias),
                    ));
                    offsets[r] += (y.d * dw[r]) * (32 * bias) as f32;
                }
            }
            let mut sumi = [_mm512_setzero_si512(); N];
            for n in 0..2 {
                let pair = |at: usize| halves(load32(b0, at), load32(b1, at));
                let (ql0, ql1, qh) = (pair(64 * n), pair(64 * n + 32), pair(128 + 32 * n));
                let q = [
                    _mm512_or_si512(
                        _mm512_and_si512(ql0, low4),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(qh, low2)),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(ql1, low4),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<2>(qh), low2)),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(ql0), low4),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(qh), low2)),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(ql1), low4),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<6>(qh), low2)),
                    ),
                ];
                for (j, q) in q.into_iter().enumerate() {
                    // 32 values: 16 under scale g, 16 under g + 1, in each row.
                    let g = 8 * n + 2 * j;
                    let pick = _mm_set_epi64x(
                        i64::from_le_bytes([g as u8 + 1; 8]),
                        i64::from_le_bytes([g as u8; 8]),
                    );
                    let [s0, s1] = scales8.map(|s| _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s, pick)));
                    let scale = halves(s0, s1);
                    for (sumi, y) in sumi.iter_mut().zip(&y) {
                        let yv = _mm512_broadcast_i64x4(load_i8(&y[k].qs, 128 * n + 32 * j));
                        let p = _mm512_maddubs_epi16(q, yv);
                        *sumi = _mm512_add_epi32(*sumi, _mm512_madd_epi16(p, scale));
                    }
                }
            }
            for ((acc, sumi), y) in acc.iter_mut().zip(sumi).zip(&y) {
                let yd = y[k].d;
                *acc = _mm512_fmadd_ps(two_scales(yd * dw[0], yd * dw[1]), _mm512_cvtepi32_ps(sumi), *acc);
            }
        }
        std::array::from_fn(|j| {
            let [a, b] = hsums(acc[j]);
            [a - offsets[j][0], b - offsets[j][1]]
        })
    }

    /// The safe entries of one K-quant type: a span times [`ROWS`] and times [`WIDE`] rows.
    macro_rules! k_entry {
        ($rows:ident, $wide:ident => $one:ident, |$a:ident, $b:ident, $y:ident| $two:expr, $size:literal bytes) => {
            pub(crate) fn $rows(w: &[u8], x: [&[Q8K]; ROWS], out: [&mut [f32]; ROWS]) {
                #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
                fn rows(w: &[u8], x: [&[Q8K]; ROWS], out: [&mut [f32]; ROWS]) {
                    pairs(w, x, out, $size, |$a, $b, $y: [&[Q8K]; ROWS]| $two, |w, x| $one::<ROWS>(w, x))
                }
                check();
                // SAFETY: the CPU has the features the kernel is compiled for (checked above).
                unsafe { rows(w, x, out) }
            }

            pub(crate) fn $wide(w: &[u8], x: [&[Q8K]; WIDE], out: [&mut [f32]; WIDE]) {
                #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
                fn wide(w: &[u8], x: [&[Q8K]; WIDE], out: [&mut [f32]; WIDE]) {
                    pairs(w, x, out, $size, |$a, $b, $y: [&[Q8K]; WIDE]| $two, |w, x| $one::<WIDE>(w, x))
                }
                check();
                // SAFETY: as above.
                unsafe { wide(w, x, out) }
            }
        };
    }

    k_entry!(rows_q4k, wide_q4k => q4k_kernel, |a, b, y| q4k_q5k_pair(a, b, y, 144, None), 144 bytes);
    k_entry!(rows_q5k, wide_q5k => q5k_kernel, |a, b, y| q4k_q5k_pair(a, b, y, 176, Some(16)), 176 bytes);
    k_entry!(rows_q6k, wide_q6k => q6k_kernel, |a, b, y| q6k_pair(a, b, y), 210 bytes);
}

quant_entry!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni";
    span_q4_1, rows_q4_1, wide_q4_1 => q4_1_kernel(Q8_1, 20 bytes)
);
quant_entry!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni";
    span_q5_1, rows_q5_1, wide_q5_1 => q5_1_kernel(Q8_1, 24 bytes)
);

/// The safe entries to a dense kernel, each over a span of consecutive panels: the span times
/// one activation row, times [`TILE`] and times [`WIDE`](dense::WIDE) activation rows, a panel's
/// four rows by all of them at a time. Outputs past `out`'s rows (a last panel's filling) are
/// dropped.
macro_rules! dense_entry {
    ($span:ident, $tile:ident, $wide:ident => $kernel:ident($w:ty)) => {
        pub(super) fn $span(w: &[$w], x: &[f32], out: &mut [f32]) {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
            fn span(w: &[$w], x: [&[f32]; 1], out: [&mut [f32]; 1]) {
                panel_rows(w, x, out, |w, x| $kernel::<1>(w, x))
            }
            check();
            // SAFETY: the CPU has the features the kernel is compiled for (checked above).
            unsafe { span(w, [x], [out]) }
        }

        pub(super) fn $tile(w: &[$w], x: [&[f32]; TILE], out: [&mut [f32]; TILE]) {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
            fn tile(w: &[$w], x: [&[f32]; TILE], out: [&mut [f32]; TILE]) {
                panel_rows(w, x, out, |w, x| $kernel::<TILE>(w, x))
            }
            check();
            // SAFETY: as above.
            unsafe { tile(w, x, out) }
        }

        pub(super) fn $wide(w: &[$w], x: [&[f32]; dense::WIDE], out: [&mut [f32]; dense::WIDE]) {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
            fn wide(w: &[$w], x: [&[f32]; dense::WIDE], out: [&mut [f32]; dense::WIDE]) {
                panel_rows(w, x, out, |w, x| $kernel::<{ dense::WIDE }>(w, x))
            }
            check();
            // SAFETY: as above.
            unsafe { wide(w, x, out) }
        }
    };
}

/// One panel times `N` activation rows in the sixteen-lane order (see `dense`): `out[j][i]` is
/// row `i` times activation row `j`. Per pair, one accumulator of sixteen lanes takes the columns
/// two steps at a time: a row's two steps lie 32 values apart in the panel, so `$load2` reads the
/// eight values at `p` and the eight at `p + 32` into the low and high halves. The halves are
/// then added, an odd last step is fused into the eight lanes, the lanes are added in the AVX2
/// [`hsum`]'s tree, and the columns left over are added one at a time. `$load` widens the 16
/// values at a pointer, `$widen` one value. A pair's sums never meet another's, so a result does
/// not depend on `N` or the pair's place in the tile; each weight vector is loaded once for the
/// `N` activation rows, each activation vector once for the four rows. The four rows' reductions
/// with one activation row run side by side in one register, the same additions on the same
/// operands as `hsum`, in one shuffle and one add a step for four sums where `hsum` takes two or
/// three a sum: the end of a panel is paid once per 56 steps at 896 columns.
macro_rules! dense_kernel {
    ($name:ident, $w:ty, |$p:ident| $load2:expr, $load:expr, $widen:expr) => {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
        fn $name<const N: usize>(w: &[$w], x: [&[f32]; N]) -> [[f32; PANEL]; N] {
            const { assert!(PANEL == 4 && STEP == 8, "a row's next step lies 32 values on") };
            let cols = x[0].len();
            assert!(
                w.len() == PANEL * cols && x.iter().all(|x| x.len() == cols),
                "a panel and activation rows of different lengths"
            );
            let (steps, tail) = (cols / STEP, cols % STEP);
            let load2 = |$p: *const $w| -> __m512 {
                // SAFETY: callers pass a pointer with 8 readable values there and 8 more 32 on.
                unsafe { $load2 }
            };
            let load = |$p: *const $w| -> __m512 {
                // SAFETY: callers pass a pointer to 16 readable values.
                unsafe { $load }
            };
            let mut acc = [[_mm512_setzero_ps(); N]; PANEL];
            for c in 0..steps / 2 {
                // SAFETY: 2c + 1 < steps, so the panel holds 64 values at steps 2c and 2c + 1 and
                // each activation row 16 at 16c.
                let at = unsafe { w.as_ptr().add(2 * c * PANEL * STEP) };
                prefetch_ahead(at.cast(), 2 * PANEL * STEP * size_of::<$w>());
                let wv: [__m512; PANEL] = std::array::from_fn(|i| load2(unsafe { at.add(i * STEP) }));
                for j in 0..N {
                    let xv = unsafe { _mm512_loadu_ps(x[j].as_ptr().add(2 * c * STEP)) };
                    for i in 0..PANEL {
                        acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
                    }
                }
            }
            // The odd last step of rows 0 and 1, and of rows 2 and 3: side by side in the panel.
            let odd = (steps % 2 == 1).then(|| {
                // SAFETY: steps - 1 < steps, so the panel holds 32 values there.
                let at = unsafe { w.as_ptr().add((steps - 1) * PANEL * STEP) };
                [load(at), load(unsafe { at.add(2 * STEP) })]
            });
            let widen = $widen;
            let rest = &w[steps * PANEL * STEP..];
            // The register part first, for every activation row, the columns left over after: a
            // body this short is unrolled, so the sums stay in registers (with the tail inside, the
            // loop over j was not, and every panel stored its 24 sums after zeroing them by a call
            // of `memset`).
            let mut out: [[f32; PANEL]; N] = std::array::from_fn(|j| {
                // The four rows' sums with activation row j reduced side by side, each by the
                // additions `hsum` makes: [row 0's eight lanes | row 1's] and [row 2's | row 3's]
                // (each 16-lane sum's halves added), the odd step fused in, then the four rows'
                // lanes k + (k + 4) in the register's quarters, then lanes 0 + 2 and 1 + 3, then
                // those two.
                let fold = |a: __m512, b: __m512| {
                    _mm512_add_ps(
                        _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                        _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
                    )
                };
                let (mut h01, mut h23) = (fold(acc[0][j], acc[1][j]), fold(acc[2][j], acc[3][j]));
                if let Some([w01, w23]) = odd {
                    // SAFETY: steps - 1 < steps, so the activation row holds 8 values there.
                    let xv = _mm512_broadcast_f32x8(unsafe {
                        _mm256_loadu_ps(x[j].as_ptr().add((steps - 1) * STEP))
                    });
                    h01 = _mm512_fmadd_ps(w01, xv, h01);
                    h23 = _mm512_fmadd_ps(w23, xv, h23);
                }
                let s = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(h01, h23),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(h01, h23),
                );
                let t = _mm512_add_ps(s, _mm512_shuffle_ps::<0b01_00_11_10>(s, s));
                let r = _mm512_add_ps(t, _mm512_movehdup_ps(t));
                let r = _mm512_permutexvar_ps(
                    _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                    r,
                );
                let mut sums = [0f32; PANEL];
                // SAFETY: `sums` holds PANEL (four) values.
                unsafe { _mm_storeu_ps(sums.as_mut_ptr(), _mm512_castps512_ps128(r)) };
                sums
            });
            if tail > 0 {
                for (sums, x) in out.iter_mut().zip(x) {
                    for (i, sum) in sums.iter_mut().enumerate() {
                        for (&w, &x) in rest[i * tail..(i + 1) * tail].iter().zip(&x[steps * STEP..]) {
                            *sum += widen(w) * x;
                        }
                    }
                }
            }
            out
        }
    };
}

dense_kernel!(
    f32_kernel,
    f32,
    |p| _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_loadu_ps(p)), _mm256_loadu_ps(p.add(32))),
    _mm512_loadu_ps(p),
    |v: f32| v
);
dense_kernel!(
    f16_kernel,
    f16,
    |p| _mm512_cvtph_ps(two_halves(p.cast())),
    _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
    f16::to_f32
);
dense_kernel!(
    bf16_kernel,
    bf16,
    |p| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(two_halves(p.cast())))),
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))),
    bf16::to_f32
);

/// The 16 bytes at `p` and the 16 at `p + 64` (eight 16-bit values each, 32 values apart), as
/// the low and high halves of one register.
///
/// # Safety
///
/// Both 16-byte pieces must be readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn two_halves(p: *const u8) -> __m256i {
    // SAFETY: the caller's.
    unsafe {
        _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(p.cast())),
            _mm_loadu_si128(p.add(64).cast()),
        )
    }
}

dense_entry!(span_f32, tile_f32, wide_f32 => f32_kernel(f32));
dense_entry!(span_f16, tile_f16, wide_f16 => f16_kernel(f16));
dense_entry!(span_bf16, tile_bf16, wide_bf16 => bf16_kernel(bf16));
