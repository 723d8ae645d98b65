//! Dot products of dense weight rows (f32, f16 or bf16) with f32 activation rows: the portable
//! one-row versions, and the SIMD span kernels where the instruction set has them. The 16-bit
//! weights are widened a few values at a time as they are read, never as a whole matrix.
//!
//! The scalar versions keep eight running sums, lane `k` taking elements `k, k + 8, …`, and add
//! them in a fixed tree: the order depends on the length only.

use half::{bf16, f16};

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::{Isa, Spans};

/// The portable dot products of one weight row with one activation row of the same length.
pub(super) fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    lanes(w, x, |v| v)
}

pub(super) fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    lanes(w, x, f16::to_f32)
}

pub(super) fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    lanes(w, x, bf16::to_f32)
}

/// The SIMD span kernels `isa` has for each type, if any.
pub(super) fn spans_f32(isa: Isa) -> Option<Spans<f32, f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(Spans { one: avx2::span_f32, rows: avx2::rows_f32, wide: None }),
        _ => None,
    }
}

pub(super) fn spans_f16(isa: Isa) -> Option<Spans<f16, f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(Spans { one: avx2::span_f16, rows: avx2::rows_f16, wide: None }),
        _ => None,
    }
}

pub(super) fn spans_bf16(isa: Isa) -> Option<Spans<bf16, f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(Spans { one: avx2::span_bf16, rows: avx2::rows_bf16, wide: None }),
        _ => None,
    }
}

/// Σ widen(w[k]) · x[k] over eight lanes, then the lanes pairwise.
fn lanes<W: Copy>(w: &[W], x: &[f32], widen: impl Fn(W) -> f32) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = [0f32; 8];
    let (wc, wt) = w.as_chunks::<8>();
    let (xc, xt) = x.as_chunks::<8>();
    for (w8, x8) in wc.iter().zip(xc) {
        for k in 0..8 {
            acc[k] += widen(w8[k]) * x8[k];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&w, &x) in wt.iter().zip(xt) {
        sum += widen(w) * x;
    }
    sum
}
