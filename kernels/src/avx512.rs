//! The AVX-512 kernels (F, BW, DQ, VL and VNNI, on top of AVX2, FMA and F16C), for the batch
//! products of a prefill. Each gives the bits its AVX2 sibling gives: a pair's sums run through
//! the same lanes in the same order, only more of them at once.
//!
//! - **Dense, eight activation rows at once.** One 16-lane register holds two of a panel's rows
//!   for one step of eight columns (the panel layout puts them side by side), each activation
//!   step is broadcast to both halves, and a panel by eight activation rows keeps its 32 running
//!   sums of eight lanes in 16 of the 32 registers. Each half is the AVX2 kernel's accumulator of
//!   that pair, taking the same fused multiply-adds in the same order; the halves are added by the
//!   AVX2 [`hsum`]. Twice the lanes per instruction and enough sums in flight to cover the FMA
//!   latency, where the AVX2 tile of four rows by three keeps 12.
//! - **Blocks of 32 with VNNI.** `vpdpbusd` adds four byte products into each i32 lane in one
//!   instruction, where AVX2 needs `maddubs` (pairs into i16) and `madd` (pairs of those into
//!   i32). Both sum the same four products into the same lane, exactly (the pairs `maddubs` forms
//!   stay below i16's limit: one factor is at most 128 in magnitude, the other, an activation, at
//!   most 127), so the bits are the AVX2 kernels'.
//!
//! The public functions are safe: each checks that the CPU has the features before it enters the
//! `#[target_feature]` code.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::Isa;
use super::avx2::{
    bit_bytes, f16_at, hsum, load_i8, load32, nibbles, panel_rows, quant_entry, quant_rows, small_kernels,
};
use super::dense::{PANEL, STEP};
use super::quant::{Q8_0, Q8_1};
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

/// Σ x·y over pairs of signed bytes, as 8 f32 lanes of i32 sums: `maddubs` needs an unsigned left
/// operand, so the signs move to the right one, as on AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn sum_i8(x: __m256i, y: __m256i) -> __m256 {
    sum_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Σ x·y over unsigned x and signed y bytes, as 8 f32 lanes of i32 sums, four products a lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn sum_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y))
}

small_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni", sum_i8, sum_u8_i8);

quant_entry!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni";
    span_q4_0, rows_q4_0, wide_q4_0 => q4_0_kernel(Q8_0, 18 bytes)
);
quant_entry!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni";
    span_q5_0, rows_q5_0, wide_q5_0 => q5_0_kernel(Q8_0, 22 bytes)
);
quant_entry!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni";
    span_q8_0, rows_q8_0, wide_q8_0 => q8_0_kernel(Q8_0, 34 bytes)
);
quant_entry!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni";
    span_q4_1, rows_q4_1, wide_q4_1 => q4_1_kernel(Q8_1, 20 bytes)
);
quant_entry!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni";
    span_q5_1, rows_q5_1, wide_q5_1 => q5_1_kernel(Q8_1, 24 bytes)
);

/// The safe entry to a dense wide kernel: a span of consecutive panels times [`WIDE`] activation
/// rows; outputs past `out`'s rows (a last panel's filling) are dropped.
macro_rules! dense_wide {
    ($wide:ident => $kernel:ident($w:ty)) => {
        pub(super) fn $wide(w: &[$w], x: [&[f32]; WIDE], out: [&mut [f32]; WIDE]) {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
            fn wide(w: &[$w], x: [&[f32]; WIDE], out: [&mut [f32]; WIDE]) {
                panel_rows(w, x, out, |w, x| $kernel(w, x))
            }
            check();
            // SAFETY: the CPU has the features the kernel is compiled for (checked above).
            unsafe { wide(w, x, out) }
        }
    };
}

/// One panel times [`WIDE`] activation rows: `out[j][i]` is row `i` times activation row `j`, by
/// the AVX2 kernel's sequence of operations per pair (see the module's notes). `$load` widens the
/// 16 values at a pointer (two rows' step of eight) to f32, `$widen` one value.
macro_rules! dense_wide_kernel {
    ($name:ident, $w:ty, |$p:ident| $load:expr, $widen:expr) => {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
        fn $name(w: &[$w], x: [&[f32]; WIDE]) -> [[f32; PANEL]; WIDE] {
            const { assert!(PANEL == 4 && STEP == 8, "two rows of a panel's step fill one register") };
            let cols = x[0].len();
            assert!(
                w.len() == PANEL * cols && x.iter().all(|x| x.len() == cols),
                "a panel and activation rows of different lengths"
            );
            let (steps, tail) = (cols / STEP, cols % STEP);
            let load = |$p: *const $w| -> __m512 {
                // SAFETY: callers pass a pointer to 16 readable values.
                unsafe { $load }
            };
            // acc[h][j]: rows 2h and 2h + 1 (low and high half) times activation row j.
            let mut acc = [[_mm512_setzero_ps(); WIDE]; 2];
            for c in 0..steps {
                // SAFETY: c < steps, so the panel holds 32 values at step c and each activation
                // row 8 at 8c.
                let at = unsafe { w.as_ptr().add(c * PANEL * STEP) };
                let (low, high) = (load(at), load(unsafe { at.add(2 * STEP) }));
                for j in 0..WIDE {
                    let xv = _mm512_broadcast_f32x8(unsafe { _mm256_loadu_ps(x[j].as_ptr().add(c * STEP)) });
                    acc[0][j] = _mm512_fmadd_ps(low, xv, acc[0][j]);
                    acc[1][j] = _mm512_fmadd_ps(high, xv, acc[1][j]);
                }
            }
            let widen = $widen;
            let rest = &w[steps * PANEL * STEP..];
            let mut out = [[0f32; PANEL]; WIDE];
            for i in 0..PANEL {
                for j in 0..WIDE {
                    let pair = acc[i / 2][j];
                    let lanes = if i % 2 == 0 {
                        _mm512_castps512_ps256(pair)
                    } else {
                        _mm512_extractf32x8_ps::<1>(pair)
                    };
                    let mut sum = hsum(lanes);
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

dense_wide_kernel!(f32_wide, f32, |p| _mm512_loadu_ps(p), |v: f32| v);
dense_wide_kernel!(f16_wide, f16, |p| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())), f16::to_f32);
dense_wide_kernel!(
    bf16_wide,
    bf16,
    |p| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))),
    bf16::to_f32
);

dense_wide!(wide_f32 => f32_wide(f32));
dense_wide!(wide_f16 => f16_wide(f16));
dense_wide!(wide_bf16 => bf16_wide(bf16));
