//! Dense weight rows (f32, f16 or bf16) times f32 activation rows, with the rows held in
//! **panels**: [`PANEL`] consecutive rows interleaved eight values at a time, so that one stream
//! through memory feeds the running sums of four rows.
//!
//! Panel `p` holds rows `4p..4p + 4` in `4 × cols` consecutive values: for each whole step of
//! eight columns `8c..8c + 8`, row `4p`'s eight values, then row `4p + 1`'s, `4p + 2`'s and
//! `4p + 3`'s; after the last step, the columns left over (`cols % 8`), row by row. A matrix whose
//! row count is not a multiple of four has its last panel filled up with zero rows. The 16-bit
//! types stay 16-bit: values are widened a few at a time as they are read, never as a matrix.
//!
//! Why panels: with the rows one after another, a kernel that runs several rows at once reads
//! several streams, and one that runs a row alone needs several running sums per pair of rows to
//! keep the FMA units busy, which leaves too few registers to tile a batch (measured: prefill at
//! 19–23 GMAC/s a core). In panels, a tile of the four rows by three activation rows keeps its
//! twelve sums in registers and reads the weights once in order (one core, 72 rows × 896, 48
//! activation rows: f32 35–37 against 26 GMAC/s row by row, f16 43–47 against 37–39), and one
//! activation row reads them at the same pace as before (f32, f16; two threads over 1 GB).
//!
//! The reduction order, for every pair of a weight row and an activation row:
//!
//! - **Portable and AVX2:** one sum of eight lanes, lane `k` taking columns `k, k + 8, k + 16, …`
//!   of each whole step in turn (a fused multiply-add on AVX2, a multiply then an add in the
//!   portable code); the lanes added in a fixed tree; then the columns left over, one at a time.
//! - **AVX-512:** one sum of sixteen lanes, lane `k` taking columns `k, k + 16, k + 32, …` of each
//!   pair of whole steps by fused multiply-adds; its halves added into eight lanes; an odd last
//!   step fused into those; then the AVX2 tree and the columns left over. Sixteen lanes a pair let
//!   a tile load each activation vector once for four rows, where eight lanes need it broadcast
//!   into both halves of a register (see `avx512`).
//!
//! It depends on `cols`, the stored type and the instruction set only — not on how many rows or
//! activation rows a call takes. `tests.rs` emulates each SIMD order with `f32::mul_add` and
//! holds every entry to it bit for bit.

use std::ops::Range;

use half::{bf16, f16};

use super::{Isa, Spans};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// Rows a panel holds.
pub(crate) const PANEL: usize = 4;
/// Columns a panel takes from each row at a time.
pub(crate) const STEP: usize = 8;
/// Activation rows a dense tile multiplies at once: four weight rows by three keep twelve running
/// sums, which with the loaded vectors fill the sixteen AVX2 registers.
pub(crate) const TILE: usize = 3;
/// Activation rows the AVX-512 tile multiplies at once: four weight rows by six keep 24 running
/// sums of sixteen lanes, which with four weight vectors and one activation vector fit in the 32
/// registers.
pub(crate) const WIDE: usize = 6;

/// Where row `r`'s values lie in a matrix of `cols` columns held in panels, in column order:
/// `(offset, length)` pieces of [`STEP`] values, then the columns left over.
pub(crate) fn row_pieces(r: usize, cols: usize) -> impl Iterator<Item = (usize, usize)> {
    let (base, i) = (r / PANEL * PANEL * cols, r % PANEL);
    let (steps, tail) = (cols / STEP, cols % STEP);
    let whole = (0..steps).map(move |c| (base + c * PANEL * STEP + i * STEP, STEP));
    whole.chain((tail > 0).then_some((base + steps * PANEL * STEP + i * tail, tail)))
}

/// Values a matrix of `rows × cols` holds in panels (its rows filled up to whole panels).
pub(crate) fn held_len(rows: usize, cols: usize) -> usize {
    rows.next_multiple_of(PANEL) * cols
}

/// Row-major `rows × cols` values put in panels. `done` is told each range of `src` (in values)
/// once it has been copied and will not be read again, a slab of rows at a time (slabs are copied
/// in parallel, so not in order), so that the caller can give back a mapped file's pages as it
/// goes.
pub(crate) fn pack<T: Copy + Default + Send + Sync>(
    rows: usize,
    cols: usize,
    src: &[T],
    done: impl Fn(Range<usize>) + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    assert_eq!(src.len(), rows * cols, "{} values for {rows} rows of {cols}", src.len());
    // Zeros: a last panel's filling keeps them.
    let mut held = vec![T::default(); held_len(rows, cols)];
    if cols == 0 {
        return held;
    }
    // Slabs of 64 panels (256 rows: 1 MiB of f32 at 1024 columns), copied in parallel, each
    // panel written in order from its four rows.
    let (steps, tail) = (cols / STEP, cols % STEP);
    let slab = 64 * PANEL * cols;
    held.par_chunks_mut(slab).enumerate().for_each(|(s, out)| {
        let first = s * 64 * PANEL;
        let last = (first + out.len() / cols).min(rows);
        for (p, panel) in out.chunks_exact_mut(PANEL * cols).enumerate() {
            let top = first + p * PANEL;
            let here = top.min(last)..(top + PANEL).min(last);
            let src = |i: usize| &src[(top + i) * cols..(top + i + 1) * cols];
            let (whole, rest) = panel.split_at_mut(steps * PANEL * STEP);
            for i in 0..here.len() {
                let row = src(i);
                for (c, to) in whole.chunks_exact_mut(PANEL * STEP).enumerate() {
                    to[i * STEP..(i + 1) * STEP].copy_from_slice(&row[c * STEP..(c + 1) * STEP]);
                }
                rest[i * tail..(i + 1) * tail].copy_from_slice(&row[steps * STEP..]);
            }
        }
        done(first * cols..last * cols);
    });
    held
}

/// The span kernels `isa` has for each type: on AVX2 one activation row and tiles of [`TILE`]; on
/// AVX-512 the same in its own order, and tiles of [`WIDE`]; the portable ones otherwise.
pub(super) fn spans_f32(isa: Isa) -> Spans<f32, f32, TILE, WIDE> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Spans { one: avx2::span_f32, rows: avx2::tile_f32, wide: None },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Spans { one: avx512::span_f32, rows: avx512::tile_f32, wide: Some(avx512::wide_f32) },
        _ => Spans {
            one: |w, x, out| span(w, x, out, |v| v),
            rows: |w, x, out| rows(w, x, out, |v| v),
            wide: None,
        },
    }
}

pub(super) fn spans_f16(isa: Isa) -> Spans<f16, f32, TILE, WIDE> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Spans { one: avx2::span_f16, rows: avx2::tile_f16, wide: None },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Spans { one: avx512::span_f16, rows: avx512::tile_f16, wide: Some(avx512::wide_f16) },
        _ => Spans {
            one: |w, x, out| span(w, x, out, f16::to_f32),
            rows: |w, x, out| rows(w, x, out, f16::to_f32),
            wide: None,
        },
    }
}

pub(super) fn spans_bf16(isa: Isa) -> Spans<bf16, f32, TILE, WIDE> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Spans { one: avx2::span_bf16, rows: avx2::tile_bf16, wide: None },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            Spans { one: avx512::span_bf16, rows: avx512::tile_bf16, wide: Some(avx512::wide_bf16) }
        }
        _ => Spans {
            one: |w, x, out| span(w, x, out, bf16::to_f32),
            rows: |w, x, out| rows(w, x, out, bf16::to_f32),
            wide: None,
        },
    }
}

/// The portable kernel: panels `w` (enough for `out.len()` rows) times one activation row.
fn span<W: Copy>(w: &[W], x: &[f32], out: &mut [f32], widen: impl Fn(W) -> f32 + Copy) {
    let cols = x.len();
    assert_eq!(
        w.len(),
        held_len(out.len(), cols),
        "panels of {} values for {} rows of {cols}",
        w.len(),
        out.len()
    );
    for (panel, out) in w.chunks_exact(PANEL * cols.max(1)).zip(out.chunks_mut(PANEL)) {
        for (i, out) in out.iter_mut().enumerate() {
            *out = lanes(panel, i, x, widen);
        }
    }
}

/// The same for [`TILE`] activation rows, one after another (the portable order is per pair).
fn rows<W: Copy>(w: &[W], x: [&[f32]; TILE], out: [&mut [f32]; TILE], widen: impl Fn(W) -> f32 + Copy) {
    for (x, out) in x.into_iter().zip(out) {
        span(w, x, out, widen);
    }
}

/// Row `i` of one panel times `x`: Σ widen(w) · x over eight lanes, the lanes in a fixed tree,
/// then the columns left over.
fn lanes<W: Copy>(panel: &[W], i: usize, x: &[f32], widen: impl Fn(W) -> f32) -> f32 {
    let cols = x.len();
    let (steps, tail) = (cols / STEP, cols % STEP);
    let mut acc = [0f32; STEP];
    for c in 0..steps {
        let w = &panel[c * PANEL * STEP + i * STEP..][..STEP];
        let x = &x[c * STEP..][..STEP];
        for k in 0..STEP {
            acc[k] += widen(w[k]) * x[k];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    let w = &panel[steps * PANEL * STEP + i * tail..][..tail];
    for (&w, &x) in w.iter().zip(&x[steps * STEP..]) {
        sum += widen(w) * x;
    }
    sum
}
