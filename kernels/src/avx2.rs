//! The AVX2 (with FMA and F16C) dot products. Each keeps its running sums in a fixed set of
//! vector registers and reduces them in a fixed order at the end, so a result depends on the row
//! length and the stored type only.
//!
//! The quantized kernels follow ggml's approach: unpack a block's weights to bytes, multiply them
//! with the activation bytes by `maddubs` (unsigned × signed pairs into i16) and `madd` (pairs
//! of i16 into i32), and turn each block's integer sum into f32 once, scaled by both scales.
//!
//! The public functions are safe: each checks that the CPU has the features before it enters the
//! `#[target_feature]` code.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::Isa;
use super::dense::{PANEL, STEP, TILE, held_len};
use super::quant::{self, Q8_0, Q8_1, Q8K, QK, QK_K};
use super::{ROWS, WIDE};

/// Whether this CPU has AVX2, FMA and F16C.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// Panics unless the CPU has what the `#[target_feature]` kernels are compiled for.
fn check() {
    assert!(Isa::detected() != Isa::Scalar, "an AVX2 kernel on a CPU without AVX2, FMA and F16C");
}

/// The safe entries to a dense kernel, each over a span of consecutive panels (see `dense`) so
/// that checks and setup are paid once per span: the span times one activation row, a panel's
/// four rows at a time, and the span times [`TILE`] activation rows, a panel's four rows by all
/// three at a time. Each result is the one-pair sequence of operations, whichever entry
/// computed it; outputs past `out`'s rows (a last panel's filling) are dropped.
macro_rules! dense_entry {
    ($span:ident, $tile:ident => $kernel:ident($w:ty)) => {
        pub(super) fn $span(w: &[$w], x: &[f32], out: &mut [f32]) {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn span(w: &[$w], x: &[f32], out: &mut [f32]) {
                let cols = x.len();
                let panel = PANEL * cols;
                assert_eq!(
                    w.len(),
                    held_len(out.len(), cols),
                    "panels of {} values for {} rows of {cols}",
                    w.len(),
                    out.len()
                );
                for (p, out) in out.chunks_mut(PANEL).enumerate() {
                    let [ys] = $kernel::<1>(&w[p * panel..(p + 1) * panel], [x]);
                    out.copy_from_slice(&ys[..out.len()]);
                }
            }
            check();
            // SAFETY: the CPU has the features the kernel is compiled for (checked above).
            unsafe { span(w, x, out) }
        }

        pub(super) fn $tile(w: &[$w], x: [&[f32]; TILE], out: [&mut [f32]; TILE]) {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn tile(w: &[$w], x: [&[f32]; TILE], out: [&mut [f32]; TILE]) {
                panel_rows(w, x, out, |w, x| $kernel::<TILE>(w, x))
            }
            check();
            // SAFETY: as above.
            unsafe { tile(w, x, out) }
        }
    };
}

/// A span of panels times `N` activation rows by `kernel`, which takes one panel and all `N`;
/// outputs past `out`'s rows (a last panel's filling) are dropped.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn panel_rows<W, const N: usize>(
    w: &[W],
    x: [&[f32]; N],
    mut out: [&mut [f32]; N],
    kernel: impl Fn(&[W], [&[f32]; N]) -> [[f32; PANEL]; N],
) {
    let (cols, len) = (x[0].len(), out[0].len());
    let panel = PANEL * cols;
    assert!(out.iter().all(|o| o.len() == len), "output rows of different lengths");
    assert_eq!(w.len(), held_len(len, cols), "panels of {} values for {len} rows of {cols}", w.len());
    for p in 0..len.div_ceil(PANEL) {
        let ys = kernel(&w[p * panel..(p + 1) * panel], x);
        let rows = p * PANEL..((p + 1) * PANEL).min(len);
        for (out, ys) in out.iter_mut().zip(ys) {
            out[rows.clone()].copy_from_slice(&ys[..rows.len()]);
        }
    }
}

/// The same for a quantized kernel, which takes one weight row and `N` activation rows: a span
/// of consecutive stored rows (`$size` bytes a block, one block per activation block) times one
/// activation row, times [`ROWS`] activation rows and times [`WIDE`] activation rows, each weight
/// block unpacked once for all of them. Unpacking is much of a quantized kernel's work, so the
/// wide entry, which shares it among twice the rows, is faster per product: 3–5 % on Q8_0 and
/// 11 % on Q5_0 when they ran here (they have `qpanel`'s kernels now), 11–23 % on Q4_K and Q6_K (one thread, 4864 × 896, 16 and 64 activation rows). The
/// dense tiles have no such entry: a panel's four rows by three activation rows already fill the
/// registers.
macro_rules! quant_entry {
    ($span:ident, $rows:ident, $wide:ident => $kernel:ident($x:ty, $size:literal bytes)) => {
        quant_entry!("avx2,fma,f16c"; $span, $rows, $wide => $kernel($x, $size bytes));
    };
    (
        $features:literal;
        $span:ident, $rows:ident, $wide:ident => $kernel:ident($x:ty, $size:literal bytes)
    ) => {
        $crate::avx2::span_entry!($features; $span => $kernel($x, $size bytes));
        $crate::avx2::batch_entry!($features; $rows, $wide => $kernel($x, $size bytes) by quant_rows);
    };
}

/// [`quant_entry`]'s span times one activation row.
macro_rules! span_entry {
    ($features:literal; $span:ident => $kernel:ident($x:ty, $size:literal bytes)) => {
        pub(crate) fn $span(w: &[u8], x: &[$x], out: &mut [f32]) {
            #[target_feature(enable = $features)]
            fn span(w: &[u8], x: &[$x], out: &mut [f32]) {
                let bytes = x.len() * $size;
                assert_eq!(
                    w.len(),
                    bytes * out.len(),
                    "a span of {} bytes for {} rows of {bytes}",
                    w.len(),
                    out.len()
                );
                for (r, out) in out.iter_mut().enumerate() {
                    let [y] = $kernel::<1>(&w[r * bytes..(r + 1) * bytes], [x]);
                    *out = y;
                }
            }
            check();
            // SAFETY: the CPU has the features the kernel is compiled for (checked above).
            unsafe { span(w, x, out) }
        }
    };
}

/// [`quant_entry`]'s span times [`ROWS`] and times [`WIDE`] activation rows, through `$driver`
/// ([`quant_rows`], or a driver that prepares the activation rows for the kernel first).
macro_rules! batch_entry {
    (
        $features:literal;
        $rows:ident, $wide:ident => $kernel:ident($x:ty, $size:literal bytes) by $driver:ident
    ) => {
        pub(crate) fn $rows(w: &[u8], x: [&[$x]; ROWS], out: [&mut [f32]; ROWS]) {
            #[target_feature(enable = $features)]
            fn rows(w: &[u8], x: [&[$x]; ROWS], out: [&mut [f32]; ROWS]) {
                $driver(w, x, out, $size, |w, x| $kernel::<ROWS>(w, x))
            }
            check();
            // SAFETY: the CPU has the features the kernel is compiled for (checked above).
            unsafe { rows(w, x, out) }
        }

        pub(crate) fn $wide(w: &[u8], x: [&[$x]; WIDE], out: [&mut [f32]; WIDE]) {
            #[target_feature(enable = $features)]
            fn wide(w: &[u8], x: [&[$x]; WIDE], out: [&mut [f32]; WIDE]) {
                $driver(w, x, out, $size, |w, x| $kernel::<WIDE>(w, x))
            }
            check();
            // SAFETY: as above.
            unsafe { wide(w, x, out) }
        }
    };
}

pub(super) use {batch_entry, quant_entry, span_entry};

/// A span of quantized weight rows times `N` activation rows by `kernel`, which takes one weight
/// row and all `N`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quant_rows<X, const N: usize>(
    w: &[u8],
    x: [&[X]; N],
    mut out: [&mut [f32]; N],
    size: usize,
    kernel: impl Fn(&[u8], [&[X]; N]) -> [f32; N],
) {
    let blocks = x[0].len();
    let (bytes, len) = (blocks * size, out[0].len());
    assert!(x.iter().all(|a| a.len() == blocks), "activation rows of different lengths");
    assert!(out.iter().all(|o| o.len() == len), "output rows of different lengths");
    assert_eq!(w.len(), bytes * len, "a span of {} bytes for {len} rows of {bytes}", w.len());
    for r in 0..len {
        for (out, y) in out.iter_mut().zip(kernel(&w[r * bytes..(r + 1) * bytes], x)) {
            out[r] = y;
        }
    }
}

dense_entry!(span_f32, tile_f32 => f32_kernel(f32));
dense_entry!(span_f16, tile_f16 => f16_kernel(f16));
dense_entry!(span_bf16, tile_bf16 => bf16_kernel(bf16));
quant_entry!(span_q4_1, rows_q4_1, wide_q4_1 => q4_1_kernel(Q8_1, 20 bytes));
quant_entry!(span_q5_1, rows_q5_1, wide_q5_1 => q5_1_kernel(Q8_1, 24 bytes));
quant_entry!(span_q2k, rows_q2k, wide_q2k => q2k_kernel(Q8K, 84 bytes));
quant_entry!(span_q3k, rows_q3k, wide_q3k => q3k_kernel(Q8K, 110 bytes));
quant_entry!(span_q4k, rows_q4k, wide_q4k => q4k_kernel(Q8K, 144 bytes));
quant_entry!(span_q5k, rows_q5k, wide_q5k => q5k_kernel(Q8K, 176 bytes));
quant_entry!(span_q6k, rows_q6k, wide_q6k => q6k_kernel(Q8K, 210 bytes));

/// The sum of the eight lanes: halves, then pairs, then the last two.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Bytes ahead of its loads a dense kernel prefetches, every cache line (here and in `avx512`).
/// The hardware's prefetchers alone kept too few reads in flight once a tile slowed the stream
/// down. 38912 × 896 bf16 on AVX-512, two threads: 6 activation rows in 4.0–4.3 ms against 2.0–2.2
/// for one row, and in 1.9–2.3 ms with this; 16 rows in 6.8–7.4 ms against 4.5–4.8; 64 rows
/// ×1.25 (2048 bytes ahead did less, 8192 about the same). On AVX2: 3 rows of bf16 in 1.5–1.7 ms
/// against 2.7–2.9, 64 rows of f32 in 26–28 ms against 28–32.
pub(super) const PREFETCH: usize = 4096;

/// Prefetches the `bytes` (whole cache lines) that lie [`PREFETCH`] bytes past `at`. A prefetch
/// never faults, so the address may lie past the weights.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch_ahead(at: *const i8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH + line));
    }
}

/// One panel (four weight rows, see `dense`) times `N` activation rows: `out[j][i]` is row `i`
/// times activation row `j`. Per pair, one accumulator of eight lanes takes the whole steps of
/// eight columns in order by fused multiply-adds, its lanes are added by [`hsum`], and the
/// columns left over are added one at a time. A pair's sums never meet another's, so a result
/// does not depend on `N` or the pair's place in the tile. Each weight vector is loaded (and
/// widened) once for the `N` activation rows, each activation vector once for the four rows.
macro_rules! dense_kernel {
    ($name:ident, $w:ty, |$p:ident| $load:expr, $widen:expr) => {
        dense_kernel!($name, $w, |$p| $load, $widen, tile_step = None);
    };
    ($name:ident, $w:ty, |$p:ident| $load:expr, $widen:expr, tile_step = $tile_step:expr) => {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name<const N: usize>(w: &[$w], x: [&[f32]; N]) -> [[f32; PANEL]; N] {
            let cols = x[0].len();
            assert!(
                w.len() == PANEL * cols && x.iter().all(|x| x.len() == cols),
                "a panel and activation rows of different lengths"
            );
            let (steps, tail) = (cols / STEP, cols % STEP);
            let load = |$p: *const $w| -> __m256 {
                // SAFETY: callers pass a pointer to 8 readable values.
                unsafe { $load }
            };
            let mut acc = [[_mm256_setzero_ps(); N]; PANEL];
            let tile_step: Option<TileStep<$w>> = $tile_step;
            match tile_step {
                Some(tile_step) if N == TILE => {
                    // SAFETY: N == TILE, so the array types are the same.
                    let acc = unsafe { &mut *(&raw mut acc).cast::<[[__m256; TILE]; PANEL]>() };
                    for c in 0..steps {
                        prefetch_ahead(
                            w.as_ptr().wrapping_add(c * PANEL * STEP).cast(),
                            PANEL * STEP * size_of::<$w>(),
                        );
                        // SAFETY: c < steps, so the panel holds 32 values at `c` and each
                        // activation row 8 at `8c`; the CPU has the features (the caller's).
                        unsafe {
                            tile_step(
                                acc,
                                w.as_ptr().add(c * PANEL * STEP),
                                std::array::from_fn(|j| x[j].as_ptr().add(c * STEP)),
                            )
                        };
                    }
                }
                _ => {
                    for c in 0..steps {
                        prefetch_ahead(
                            w.as_ptr().wrapping_add(c * PANEL * STEP).cast(),
                            PANEL * STEP * size_of::<$w>(),
                        );
                        // SAFETY: c < steps, so 8c + 8 <= cols and the panel's step holds 32
                        // values.
                        let xv: [__m256; N] =
                            std::array::from_fn(|j| unsafe { _mm256_loadu_ps(x[j].as_ptr().add(c * STEP)) });
                        let at = unsafe { w.as_ptr().add(c * PANEL * STEP) };
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let wv = load(unsafe { at.add(i * STEP) });
                            for (acc, &xv) in acc.iter_mut().zip(&xv) {
                                *acc = _mm256_fmadd_ps(wv, xv, *acc);
                            }
                        }
                    }
                }
            }
            // Plain loops, not `array::from_fn`, whose closure was not inlined: every row's
            // accumulators went through the stack into a call.
            let widen = $widen;
            let rest = &w[steps * PANEL * STEP..];
            let mut out = [[0f32; PANEL]; N];
            for i in 0..PANEL {
                for j in 0..N {
                    let mut sum = hsum(acc[i][j]);
                    for (&w, &x) in rest[i * tail..(i + 1) * tail].iter().zip(&x[j][steps * STEP..]) {
                        sum += widen(w) * x;
                    }
                    out[j][i] = sum;
                }
            }
            out
        }
    };
}

dense_kernel!(f32_kernel, f32, |p| _mm256_loadu_ps(p), |v: f32| v);
dense_kernel!(
    f16_kernel,
    f16,
    |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    f16::to_f32,
    tile_step = Some(f16_tile_step)
);

/// One step of a dense tile written by hand: `acc[i][j] += w[i] · x[j]` for the panel's four
/// rows at `w` (8 values each, in panel order) and the [`TILE`] activation rows at `x`, by fused
/// multiply-adds, row by row. The same operations as the compiled step, so the same bits.
type TileStep<W> = unsafe fn(&mut [[__m256; TILE]; PANEL], *const W, [*const f32; TILE]);

/// The f16 tile's step in assembly. Compiled from intrinsics, the widened weight vectors were
/// scheduled ahead of their multiplies, seventeen vectors were live for sixteen registers, and a
/// running sum went through the stack on every step (f16 products at ×0.56–0.60 of f32's speed, a
/// 4864 × 896 product by 64 rows). Here each widened row is used up before the next is read:
/// twelve sums, three activation vectors and one weight vector.
///
/// # Safety
///
/// `w` must point to 32 readable f16 values and each `x[j]` to 8 readable f32 values, on a CPU
/// with AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_tile_step(acc: &mut [[__m256; TILE]; PANEL], w: *const f16, x: [*const f32; TILE]) {
    const { assert!(TILE == 3 && PANEL == 4 && STEP == 8, "the assembly is written for a 4 × 3 tile of 8 lanes") };
    let [[a00, a01, a02], [a10, a11, a12], [a20, a21, a22], [a30, a31, a32]] = acc;
    // SAFETY: the caller's promise: readable weights and activations, and the CPU features.
    unsafe {
        std::arch::asm!(
            "vmovups {x0}, ymmword ptr [{p0}]",
            "vmovups {x1}, ymmword ptr [{p1}]",
            "vmovups {x2}, ymmword ptr [{p2}]",
            "vcvtph2ps {w}, xmmword ptr [{wp}]",
            "vfmadd231ps {a00}, {w}, {x0}",
            "vfmadd231ps {a01}, {w}, {x1}",
            "vfmadd231ps {a02}, {w}, {x2}",
            "vcvtph2ps {w}, xmmword ptr [{wp} + 16]",
            "vfmadd231ps {a10}, {w}, {x0}",
            "vfmadd231ps {a11}, {w}, {x1}",
            "vfmadd231ps {a12}, {w}, {x2}",
            "vcvtph2ps {w}, xmmword ptr [{wp} + 32]",
            "vfmadd231ps {a20}, {w}, {x0}",
            "vfmadd231ps {a21}, {w}, {x1}",
            "vfmadd231ps {a22}, {w}, {x2}",
            "vcvtph2ps {w}, xmmword ptr [{wp} + 48]",
            "vfmadd231ps {a30}, {w}, {x0}",
            "vfmadd231ps {a31}, {w}, {x1}",
            "vfmadd231ps {a32}, {w}, {x2}",
            a00 = inout(ymm_reg) *a00,
            a01 = inout(ymm_reg) *a01,
            a02 = inout(ymm_reg) *a02,
            a10 = inout(ymm_reg) *a10,
            a11 = inout(ymm_reg) *a11,
            a12 = inout(ymm_reg) *a12,
            a20 = inout(ymm_reg) *a20,
            a21 = inout(ymm_reg) *a21,
            a22 = inout(ymm_reg) *a22,
            a30 = inout(ymm_reg) *a30,
            a31 = inout(ymm_reg) *a31,
            a32 = inout(ymm_reg) *a32,
            x0 = out(ymm_reg) _,
            x1 = out(ymm_reg) _,
            x2 = out(ymm_reg) _,
            w = out(ymm_reg) _,
            wp = in(reg) w,
            p0 = in(reg) x[0],
            p1 = in(reg) x[1],
            p2 = in(reg) x[2],
            options(pure, readonly, nostack, preserves_flags),
        );
    }
}
dense_kernel!(
    bf16_kernel,
    bf16,
    |p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))),
    bf16::to_f32
);

/// The little-endian f16 at `at`, widened by F16C. In assembly: from intrinsics, LLVM loaded the
/// value into whichever vector register was at hand (`vpinsrw`: the other lanes were of no use
/// to it), once a kernel's running sum, and every block then waited for the previous block's sum
/// (Q8_0 one-row products at half speed). `vmovd` writes the whole register.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u32::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let value: f32;
    // SAFETY: two register-to-register instructions of F16C and SSE2, which the caller's
    // features include; no memory, no stack, no flags.
    unsafe {
        std::arch::asm!(
            "vmovd {v}, {bits:e}",
            "vcvtph2ps {v}, {v}",
            bits = in(reg) bits,
            v = out(xmm_reg) value,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    value
}

/// 32 bytes at `b[at..]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load32(b: &[u8], at: usize) -> __m256i {
    let b = &b[at..at + 32];
    // SAFETY: `b` holds 32 bytes.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// 32 i8 of an activation block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_i8(q: &[i8], at: usize) -> __m256i {
    let q = &q[at..at + 32];
    // SAFETY: `q` holds 32 bytes.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

/// The 32 nibbles of 16 bytes at `b[at..]`: the low nibbles first, then the high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn nibbles(b: &[u8], at: usize) -> __m256i {
    let b = &b[at..at + 16];
    // SAFETY: `b` holds 16 bytes.
    let low = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(low), low);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// The 32 bits of the little-endian word at `b[at..]` as bytes: 0xFF where bit `k` is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bit_bytes(b: &[u8], at: usize) -> __m256i {
    let word = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    // Byte k gets a copy of the word's byte k / 8 ...
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(word as i32),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    // ... and is all ones once every bit but bit k % 8 is forced on, exactly when bit k is set.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1))
}

/// Σ x·y over unsigned x and signed y bytes, as 8 f32 lanes of i32 sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)))
}

/// The kernels of the blocks of 32 with an offset (Q4_1, Q5_1, with Q8_1 activations; those
/// without one are held in panels, `qpanel`), compiled for `$features` with `$sum_u8_i8` as the
/// block's integer dot product. Each takes `N` activation rows and unpacks each weight block once
/// for all of them; per row it runs exactly the one-row sequence of operations. A block's eight
/// lanes of integer sums become f32, are multiplied by the activation block's scale (one `vmulps`
/// with the scale broadcast from memory on AVX-512) and added to the running sums times the
/// weight block's scale in one fused step. The integer sums are exact, so two instantiations
/// whose integer products give the same lanes give the same bits.
macro_rules! small_kernels {
    ($features:literal, $sum_u8_i8:ident) => {
        $crate::avx2::q8_1_kernels!($features, $sum_u8_i8);
    };
}

/// [`small_kernels`]' Q4_1 and Q5_1 kernels, with Q8_1 activations.
macro_rules! q8_1_kernels {
    ($features:literal, $sum_u8_i8:ident) => {
        /// Q4_1 and Q5_1 (`fifth` = the offset of qh, for Q5_1): unsigned values plus the block offset
        /// times the activation block's sum.
        #[inline]
        #[target_feature(enable = $features)]
        fn q4_1_q5_1<const N: usize>(
            w: &[u8],
            y: [&[Q8_1]; N],
            size: usize,
            fifth: Option<usize>,
        ) -> [f32; N] {
            let blocks = w.len() / size;
            assert!(
                y.iter().all(|y| y.len() == blocks),
                "a weight row and activation rows of different lengths"
            );
            let (mut acc, mut offsets) = ([_mm256_setzero_ps(); N], [0f32; N]);
            for (k, b) in w.chunks_exact(size).enumerate() {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let x = match fifth {
                    Some(at) => _mm256_or_si256(
                        nibbles(b, at + 4),
                        _mm256_and_si256(bit_bytes(b, at), _mm256_set1_epi8(0x10)),
                    ),
                    None => nibbles(b, 4),
                };
                for ((acc, offsets), y) in acc.iter_mut().zip(&mut offsets).zip(&y) {
                    // SAFETY: k < blocks, the length of every activation row (asserted above).
                    let y = unsafe { y.get_unchecked(k) };
                    *offsets += m * y.s;
                    *acc = _mm256_fmadd_ps(
                        _mm256_mul_ps($sum_u8_i8(x, load_i8(&y.qs, 0)), _mm256_set1_ps(y.d)),
                        _mm256_set1_ps(d),
                        *acc,
                    );
                }
            }
            std::array::from_fn(|r| hsum(acc[r]) + offsets[r])
        }

        #[target_feature(enable = $features)]
        fn q4_1_kernel<const N: usize>(w: &[u8], y: [&[Q8_1]; N]) -> [f32; N] {
            q4_1_q5_1(w, y, 20, None)
        }

        #[target_feature(enable = $features)]
        fn q5_1_kernel<const N: usize>(w: &[u8], y: [&[Q8_1]; N]) -> [f32; N] {
            q4_1_q5_1(w, y, 24, Some(4))
        }
    };
}
pub(super) use {q8_1_kernels, small_kernels};

small_kernels!("avx2,fma,f16c", sum_u8_i8);

/// Activation blocks quantized as the portable `quant::q8_0`, `q8_1` and `q8k` do, bit for bit:
/// the largest magnitude found on the integer bits of |x| (for finite floats their order), the
/// products by the inverse scale made in eight lanes, each rounded half away from zero as
/// `quant::round_half_away` does (truncate, then compare the exact fraction with ½) and packed
/// to bytes with saturation, which is the portable clamp. A block holding a value that is not
/// finite, or whose inverse scale is not, goes to the portable code, which defines those cases.
macro_rules! activation_blocks {
    ($(#[$doc:meta])* $name:ident: $block:ty => $simd:ident, $portable:path) => {
        $(#[$doc])*
        pub(super) fn $name(x: &[f32], out: &mut [$block]) {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn each(x: &[f32], out: &mut [$block]) {
                let n = <$block as quant::Block>::VALUES;
                for (out, x) in out.iter_mut().zip(x.chunks_exact(n)) {
                    let x = x.try_into().expect("a block");
                    *out = $simd(x).unwrap_or_else(|| $portable(x));
                }
            }
            check();
            // SAFETY: the CPU has the features the code is compiled for (checked above).
            unsafe { each(x, out) }
        }
    };
}

activation_blocks!(
    /// Blocks of 32 with an f16 scale, for Q4_0, Q5_0 and Q8_0 weights (held in `qpanel`'s panels).
    q8_0_blocks: Q8_0 => q8_0_block, quant::q8_0
);
activation_blocks!(
    /// Blocks of 32 with an f16 scale and their sum, for Q4_1 and Q5_1 weights.
    q8_1_blocks: Q8_1 => q8_1_block, quant::q8_1
);
activation_blocks!(
    /// Blocks of 256 with an f32 scale and sums of 16, for the K-quants.
    q8k_blocks: Q8K => q8k_block, quant::q8k
);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_block(x: &[f32; QK]) -> Option<Q8_0> {
    let amax = f32::from_bits(largest_magnitude(x)?);
    let d = amax / 127.0;
    let id = 1.0 / d;
    if d == 0.0 || !id.is_finite() {
        return None;
    }
    let mut qs = [0i8; QK];
    rounded_bytes(x, id, &mut qs);
    Some(Q8_0 { d: f16::from_f32(d).to_f32(), qs })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_1_block(x: &[f32; QK]) -> Option<Q8_1> {
    q8_0_block(x).map(quant::q8_1_of)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8k_block(x: &[f32; QK_K]) -> Option<Q8K> {
    let bits = largest_magnitude(x)?;
    // The portable code keeps the first value of largest magnitude, with its sign.
    let magnitudes = _mm256_set1_epi32(0x7fff_ffff);
    let at = x.chunks_exact(8).enumerate().find_map(|(c, v)| {
        // SAFETY: `v` holds 8 values.
        let v = unsafe { _mm256_loadu_si256(v.as_ptr().cast()) };
        let equal = _mm256_cmpeq_epi32(_mm256_and_si256(v, magnitudes), _mm256_set1_epi32(bits as i32));
        let mask = _mm256_movemask_ps(_mm256_castsi256_ps(equal));
        (mask != 0).then(|| 8 * c + mask.trailing_zeros() as usize)
    })?;
    let iscale = -127.0 / x[at];
    if bits == 0 || !iscale.is_finite() {
        return None;
    }
    let mut qs = [0i8; QK_K];
    for (x, qs) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)) {
        rounded_bytes(x.try_into().expect("32 values"), iscale, qs.try_into().expect("32 bytes"));
    }
    Some(quant::q8k_of(qs, iscale))
}

/// The bits of the largest |v| in `x` (a whole number of 8s), or `None` where a value is not
/// finite. For finite floats the integer order of |v|'s bits is the order of the values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn largest_magnitude(x: &[f32]) -> Option<u32> {
    let magnitudes = _mm256_set1_epi32(0x7fff_ffff);
    let mut most = _mm256_setzero_si256();
    for v in x.chunks_exact(8) {
        // SAFETY: `v` holds 8 values.
        let v = unsafe { _mm256_loadu_si256(v.as_ptr().cast()) };
        most = _mm256_max_epi32(most, _mm256_and_si256(v, magnitudes));
    }
    let most = _mm_max_epi32(_mm256_castsi256_si128(most), _mm256_extracti128_si256::<1>(most));
    let most = _mm_max_epi32(most, _mm_shuffle_epi32::<0b01_00_11_10>(most));
    let most = _mm_max_epi32(most, _mm_shuffle_epi32::<0b10_11_00_01>(most));
    let bits = _mm_cvtsi128_si32(most) as u32;
    (bits < f32::INFINITY.to_bits()).then_some(bits)
}

/// `out[k]` = `x[k] · scale` rounded half away from zero and saturated to i8, where every
/// product is finite and below 2³¹ in magnitude.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn rounded_bytes(x: &[f32; 32], scale: f32, out: &mut [i8; 32]) {
    let scale = _mm256_set1_ps(scale);
    let (half, minus_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    let lanes: [__m256i; 4] = std::array::from_fn(|i| {
        // SAFETY: `x` holds 32 values, so 8 at 8i.
        let p = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) }, scale);
        let whole = _mm256_cvttps_epi32(p);
        let fraction = _mm256_sub_ps(p, _mm256_cvtepi32_ps(whole));
        // All ones (−1) where the fraction rounds away: up for ≥ ½, down for ≤ −½.
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(fraction, half));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(fraction, minus_half));
        _mm256_add_epi32(_mm256_sub_epi32(whole, up), down)
    });
    // Packing works within 128-bit halves: the dwords come out as lanes 0–3 of each of the four
    // vectors, then lanes 4–7 of each; the permutation puts every vector's eight back together.
    let packed =
        _mm256_packs_epi16(_mm256_packs_epi32(lanes[0], lanes[1]), _mm256_packs_epi32(lanes[2], lanes[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `out` holds 32 bytes.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), ordered) };
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K super-block (its 12 bytes at `s`),
/// sub-block `j`'s in byte `j` of each word: `quant::k4_scales`' values, taken apart a word at a
/// time. Bytes 0–3 hold scales 0–3 and bytes 4–7 mins 0–3 in their low six bits; bytes 8–11
/// hold the low four bits of scales 4–7 (low nibbles) and mins 4–7 (high nibbles), whose top
/// two bits are the top two bits of bytes 0–3 and 4–7.
#[inline]
pub(super) fn k4_scale_words(s: &[u8; 12]) -> (u64, u64) {
    let word = |at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    let (s0, s1, s2) = (word(0), word(4), word(8));
    let scales =
        u64::from(s0 & 0x3f3f_3f3f) | u64::from((s2 & 0x0f0f_0f0f) | ((s0 >> 2) & 0x3030_3030)) << 32;
    let mins =
        u64::from(s1 & 0x3f3f_3f3f) | u64::from(((s2 >> 4) & 0x0f0f_0f0f) | ((s1 >> 2) & 0x3030_3030)) << 32;
    (scales, mins)
}

/// The sum of four i32 lanes (exact: integer addition does not depend on the order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_i32(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v)))
}

/// The 16 i16 sums of 16 activations of a Q8_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bsums(y: &Q8K) -> __m256i {
    // SAFETY: `bsums` holds 16 i16, 32 bytes.
    unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) }
}

/// The activations' sums over each sub-block of 32 of a Q8_K block, as eight i16: pairs of its
/// 16-value sums (each at most 32 · 127 in magnitude, no overflow).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k4_block_sums(y: &Q8K) -> __m128i {
    let sums = bsums(y);
    _mm_hadd_epi16(_mm256_castsi256_si128(sums), _mm256_extracti128_si256::<1>(sums))
}

/// Q4_K and Q5_K (`fifth` = the offset of qh, for Q5_K). The mins are folded into the sums'
/// lanes, as llama.cpp keeps them in a vector: against a horizontal sum and a scalar step per
/// block and activation row, batches of 896 × 4864 ran ×1.05–1.15 as fast here and ×1.1–1.2 in
/// the AVX-512 pairs (one thread, 8 and 64 rows, four interleaved rounds).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k_q5k<const N: usize>(w: &[u8], y: [&[Q8K]; N], size: usize, fifth: Option<usize>) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let low4 = _mm256_set1_epi8(0x0F);
    for (k, b) in w.chunks_exact(size).enumerate() {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = k4_scale_words(b[4..16].try_into().expect("12 bytes"));
        let mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
        // The mins' part goes into the sums' own lanes 0–3: Σ min[j] · sub-block sum, a pair of
        // j a lane, times −d·dmin, so no accumulator of its own and no sum per block.
        for (acc, y) in acc.iter_mut().zip(&y) {
            let y = &y[k];
            let prods = _mm256_cvtepi32_ps(_mm256_zextsi128_si256(_mm_madd_epi16(mn, k4_block_sums(y))));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(-(y.d * dmin)), prods, *acc);
        }
        // Scale j as i16 in lane j of both halves: broadcast by a byte shuffle below.
        let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let scale = |j: i8| {
            _mm256_shuffle_epi8(sc, _mm256_set1_epi16(i16::from_le_bytes([2 * j as u8, 2 * j as u8 + 1])))
        };
        let qs = if fifth.is_some() { 48 } else { 16 };
        let high = fifth.map(|at| load32(b, at));
        let mut sumi = [_mm256_setzero_si256(); N];
        for c in 0..4 {
            let packed = load32(b, qs + 32 * c);
            let mut lo = _mm256_and_si256(packed, low4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low4);
            if let Some(h) = high {
                // Bit 2c (2c + 1) of each qh byte is the fifth bit of the low (high) nibbles.
                let one = _mm256_set1_epi8(1);
                let bit = |k: i32| {
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(k)), one))
                };
                lo = _mm256_or_si256(lo, bit(2 * c as i32));
                hi = _mm256_or_si256(hi, bit(2 * c as i32 + 1));
            }
            let (slo, shi) = (scale(2 * c as i8), scale(2 * c as i8 + 1));
            for (sumi, y) in sumi.iter_mut().zip(&y) {
                let y = &y[k];
                let plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load_i8(&y.qs, 64 * c)), slo);
                let phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load_i8(&y.qs, 64 * c + 32)), shi);
                *sumi = _mm256_add_epi32(*sumi, _mm256_add_epi32(plo, phi));
            }
        }
        for ((acc, sumi), y) in acc.iter_mut().zip(sumi).zip(&y) {
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(y[k].d * d), _mm256_cvtepi32_ps(sumi), *acc);
        }
    }
    std::array::from_fn(|r| hsum(acc[r]))
}

/// Two groups' scales for 32 values: scale `g` (of the 16 i8 in `scales`) as i16 in the low
/// eight lanes, scale `g + 1` in the high eight.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_scale(scales: __m128i, g: usize) -> __m256i {
    let pick = _mm_set_epi64x(i64::from_le_bytes([g as u8 + 1; 8]), i64::from_le_bytes([g as u8; 8]));
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick))
}

/// The sum of eight i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32x8(v: __m256i) -> i32 {
    hsum_i32(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)))
}

/// Bits `2j, 2j + 1` of each of 32 bytes: the 2-bit values of a Q2_K/Q3_K group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn two_bits(packed: __m256i, j: usize) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(packed, _mm_cvtsi32_si128(2 * j as i32)), _mm256_set1_epi8(3))
}

/// The sixteen 6-bit scales of a Q3_K super-block (its 12 bytes at `s`), scale `g` in byte
/// `g % 8` of the first word (g < 8) or the second, still stored + 32: the low four bits are the
/// nibbles of bytes 0–7 (low nibbles for scales 0–7, high for 8–15), the top two come two at a
/// time from bytes 8–11 (bits 0–1 for scales 0–3, 2–3 for 4–7, …).
#[inline]
fn k3_scale_words(s: &[u8; 12]) -> (u64, u64) {
    let nibbles = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
    let top = u32::from_le_bytes(s[8..].try_into().expect("4 bytes"));
    let tops = |shift: u32| u64::from((top >> shift) & 0x0303_0303);
    let low = (nibbles & 0x0f0f_0f0f_0f0f_0f0f) | (tops(0) | tops(2) << 32) << 4;
    let high = ((nibbles >> 4) & 0x0f0f_0f0f_0f0f_0f0f) | (tops(4) | tops(6) << 32) << 4;
    (low, high)
}

/// Q2_K: scales[16] (scale in the low nibble, min in the high) qs[64] d dmin; value
/// 128n + 32j + l is bits 2j of qs[32n + l]. Per super-block the integer sums of the portable
/// `dot_k`, and its one float step: the same result, bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
fn q2k_kernel<const N: usize>(w: &[u8], y: [&[Q8K]; N]) -> [f32; N] {
    let mut sum = [0f32; N];
    let low4 = _mm_set1_epi8(0x0F);
    for (k, b) in w.chunks_exact(84).enumerate() {
        // SAFETY: the block holds 84 bytes; its scales are bytes 0..16.
        let packed = unsafe { _mm_loadu_si128(b[..16].as_ptr().cast()) };
        let scales = _mm_and_si128(packed, low4);
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), low4));
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        let mut sumi = [_mm256_setzero_si256(); N];
        for n in 0..2 {
            let qs = load32(b, 16 + 32 * n);
            for j in 0..4 {
                let (q, scale) = (two_bits(qs, j), pair_scale(scales, 8 * n + 2 * j));
                for (sumi, y) in sumi.iter_mut().zip(&y) {
                    let p = _mm256_maddubs_epi16(q, load_i8(&y[k].qs, 128 * n + 32 * j));
                    *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(p, scale));
                }
            }
        }
        for ((sum, sumi), y) in sum.iter_mut().zip(sumi).zip(&y) {
            let y = &y[k];
            let summ = hsum_i32x8(_mm256_madd_epi16(mins, bsums(y)));
            *sum += (d * y.d) * hsum_i32x8(sumi) as f32 - (dmin * y.d) * summ as f32;
        }
    }
    sum
}

/// Q3_K: hmask[32] qs[64] scales[12] d; value 128n + 32j + l is bits 2j of qs[32n + l], less 4
/// where bit 4n + j of hmask[l] is clear. As the portable `dot_k`, bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
fn q3k_kernel<const N: usize>(w: &[u8], y: [&[Q8K]; N]) -> [f32; N] {
    let mut sum = [0f32; N];
    for (k, b) in w.chunks_exact(110).enumerate() {
        let hmask = load32(b, 0);
        let (low, high) = k3_scale_words(b[96..108].try_into().expect("12 bytes"));
        let scales = _mm_sub_epi8(_mm_set_epi64x(high as i64, low as i64), _mm_set1_epi8(32));
        let d = f16_at(b, 108);
        let mut sumi = [_mm256_setzero_si256(); N];
        for n in 0..2 {
            let qs = load32(b, 32 + 32 * n);
            for j in 0..4 {
                let bit = _mm256_set1_epi8((1u8 << (4 * n + j)) as i8);
                let clear = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), _mm256_setzero_si256());
                let q = _mm256_sub_epi8(two_bits(qs, j), _mm256_and_si256(clear, _mm256_set1_epi8(4)));
                let scale = pair_scale(scales, 8 * n + 2 * j);
                for (sumi, y) in sumi.iter_mut().zip(&y) {
                    let p = _mm256_maddubs_epi16(
                        _mm256_sign_epi8(q, q),
                        _mm256_sign_epi8(load_i8(&y[k].qs, 128 * n + 32 * j), q),
                    );
                    *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(p, scale));
                }
            }
        }
        for ((sum, sumi), y) in sum.iter_mut().zip(sumi).zip(&y) {
            let y = &y[k];
            // Q3_K has no mins: the portable form's `dmin · … · 0` is kept for the same bits.
            *sum += (d * y.d) * hsum_i32x8(sumi) as f32 - (0f32 * y.d) * 0f32;
        }
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4k_kernel<const N: usize>(w: &[u8], y: [&[Q8K]; N]) -> [f32; N] {
    q4k_q5k(w, y, 144, None)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5k_kernel<const N: usize>(w: &[u8], y: [&[Q8K]; N]) -> [f32; N] {
    q4k_q5k(w, y, 176, Some(16))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6k_kernel<const N: usize>(w: &[u8], y: [&[Q8K]; N]) -> [f32; N] {
    let (mut acc, mut offsets) = ([_mm256_setzero_ps(); N], [0f32; N]);
    let (low4, low2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    for (k, b) in w.chunks_exact(210).enumerate() {
        // SAFETY: the block holds 210 bytes; its 16 i8 scales are bytes 192..208.
        let scales8 = unsafe { _mm_loadu_si128(b[192..208].as_ptr().cast()) };
        let scales = _mm256_cvtepi8_epi16(scales8);
        let dw = f16_at(b, 208);
        // The values are stored + 32: take 32 · Σ scale·bsum off once per super-block.
        for (offsets, y) in offsets.iter_mut().zip(&y) {
            let y = &y[k];
            let bias = _mm256_madd_epi16(scales, bsums(y));
            let bias =
                hsum_i32(_mm_add_epi32(_mm256_castsi256_si128(bias), _mm256_extracti128_si256::<1>(bias)));
            *offsets += (y.d * dw) * (32 * bias) as f32;
        }
        let mut sumi = [_mm256_setzero_si256(); N];
        for n in 0..2 {
            let (ql0, ql1, qh) = (load32(b, 64 * n), load32(b, 64 * n + 32), load32(b, 128 + 32 * n));
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, low4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, low2)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, low4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), low2)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), low2)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), low2)),
                ),
            ];
            for (j, q) in q.into_iter().enumerate() {
                // 32 values: 16 under scale g, 16 under g + 1.
                let g = 8 * n + 2 * j;
                // Scale g in the low eight lanes, g + 1 in the high eight.
                let pick =
                    _mm_set_epi64x(i64::from_le_bytes([g as u8 + 1; 8]), i64::from_le_bytes([g as u8; 8]));
                let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pick));
                for (sumi, y) in sumi.iter_mut().zip(&y) {
                    let p = _mm256_maddubs_epi16(q, load_i8(&y[k].qs, 128 * n + 32 * j));
                    *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(p, scale));
                }
            }
        }
        for ((acc, sumi), y) in acc.iter_mut().zip(sumi).zip(&y) {
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(y[k].d * dw), _mm256_cvtepi32_ps(sumi), *acc);
        }
    }
    std::array::from_fn(|r| hsum(acc[r]) - offsets[r])
}
