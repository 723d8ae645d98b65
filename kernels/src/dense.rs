//! Dot products of a dense weight row (f32, f16 or bf16) with an f32 activation row. The 16-bit
//! weights are widened a few values at a time as they are read, never as a whole matrix.
//!
//! The scalar versions keep eight running sums, lane `k` taking elements `k, k + 8, …`, and add
//! them in a fixed tree: the order depends on the length only.

use half::{bf16, f16};

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::{Isa, ROWS};

/// A dot product of one weight row with one activation row of the same length.
pub(super) type Dot<W> = fn(&[W], &[f32]) -> f32;
/// The same with [`ROWS`] activation rows at once, each bitwise as [`Dot`] computes it.
pub(super) type Rows<W> = fn(&[W], [&[f32]; ROWS]) -> [f32; ROWS];

pub(super) fn dot_f32(isa: Isa) -> Dot<f32> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::dot_f32,
        _ => |w, x| lanes(w, x, |v| v),
    }
}

pub(super) fn dot_f32_rows(isa: Isa) -> Option<Rows<f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(avx2::dot_f32_rows),
        _ => None,
    }
}

pub(super) fn dot_f16(isa: Isa) -> Dot<f16> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::dot_f16,
        _ => |w, x| lanes(w, x, f16::to_f32),
    }
}

pub(super) fn dot_f16_rows(isa: Isa) -> Option<Rows<f16>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(avx2::dot_f16_rows),
        _ => None,
    }
}

pub(super) fn dot_bf16(isa: Isa) -> Dot<bf16> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::dot_bf16,
        _ => |w, x| lanes(w, x, bf16::to_f32),
    }
}

pub(super) fn dot_bf16_rows(isa: Isa) -> Option<Rows<bf16>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(avx2::dot_bf16_rows),
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
