//! Q8_0 weights held in **panels of sixteen rows**, and their kernels.
//!
//! Panel `p` holds rows `16p..16p + 16`, one **unit** per block of 32 columns, units in column
//! order. A unit is the sixteen rows' f16 scales (32 bytes, row by row), then eight pieces of 64
//! bytes: piece `j` holds values `4j..4j + 4` of each row in turn (row `i`'s four bytes at
//! `4i`). A unit is 544 bytes, sixteen GGML blocks' worth, so the panels take what the file
//! does; a matrix whose row count is not a multiple of sixteen has its last panel filled up with
//! zero rows.
//!
//! Why: with the rows one after another, a 512-bit register holds one or two rows' block, and
//! each block's integer sum needs its own conversion, scaling and accumulation per activation
//! row (five instructions for two rows' 32 values, module `avx512`'s `biased`). In a panel, one
//! piece is four values of sixteen rows: eight `vpdpbusd`s against the activation block's eight
//! broadcast words leave each lane with one row's whole block sum, and one conversion, one
//! multiply and one fused multiply-add scale and add the block for all sixteen rows. That is
//! eleven instructions where the row-wise kernels need forty, and no horizontal sum at the end.
//!
//! The reduction order, for every pair of a weight row and an activation row, on every
//! instruction set (the portable code, AVX2, AVX-512): for each block in column order, the exact
//! integer sum `s` of its 32 products; then `acc = fma(f32(s) · d_y, d_w, acc)`, `acc` starting at
//! zero (`f32(s)` is exact: |s| < 2²⁴). It depends on nothing but the values, so every
//! instruction set, batch size, place in a batch, span and thread count gives the same bits.
//! AVX2 forms the integer sums with the sign trick (`maddubs` on |x| and y's signs moved by x's,
//! pairs into i32 by `madd`), AVX-512 with `vpdpbusd` on the weight bytes read as x + 128 and a
//! start of −128 · Σy per activation block; both are exact (the pairs `maddubs` forms stay below
//! i16's limit: |x| ≤ 128, |y| ≤ 127, as the activation quantizer never writes −128).

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::quant::{Q8_0, QK};
use super::{Isa, ROWS, Spans, WIDE};

/// Rows a panel holds.
pub(crate) const HEIGHT: usize = 16;
/// Bytes of a GGML Q8_0 block: an f16 scale and 32 signed bytes.
const BLOCK: usize = 34;
/// Bytes of a unit: one block of each of a panel's rows.
const UNIT: usize = HEIGHT * BLOCK;
/// Bytes of a unit's scales, before its pieces.
const SCALES: usize = 2 * HEIGHT;
/// Pieces of a unit: four values of every row each.
const PIECES: usize = QK / 4;

/// Bytes a matrix of `rows × cols` takes in panels (its rows filled up to whole panels).
pub(crate) fn held_len(rows: usize, cols: usize) -> usize {
    rows.next_multiple_of(HEIGHT) * (cols / QK) * BLOCK
}

/// Where row `i` of a panel keeps values `4j..4j + 4` of a block, in the block's unit.
fn at(i: usize, j: usize) -> usize {
    SCALES + 64 * j + 4 * i
}

/// Row-major GGML Q8_0 rows (`rows × cols / 32` blocks) put in panels. `done` is told each range
/// of `src` (in bytes) once it has been copied and will not be read again, a slab of rows at a
/// time (slabs are copied in parallel, so not in order), so that the caller can give back a
/// mapped file's pages as it goes.
pub(crate) fn pack(rows: usize, cols: usize, src: &[u8], done: impl Fn(Range<usize>) + Sync) -> Vec<u8> {
    let row_bytes = cols / QK * BLOCK;
    assert_eq!(src.len(), rows * row_bytes, "{} bytes for {rows} Q8_0 rows of {cols}", src.len());
    // Zeros: a last panel's filling keeps them (scale 0, values 0).
    let mut held = vec![0u8; held_len(rows, cols)];
    if row_bytes == 0 {
        return held;
    }
    let panel = row_bytes * HEIGHT;
    // Slabs of 16 panels (256 rows), copied in parallel.
    held.par_chunks_mut(16 * panel).enumerate().for_each(|(s, out)| {
        let first = s * 16 * HEIGHT;
        let last = (first + out.len() / panel * HEIGHT).min(rows);
        for (p, units) in out.chunks_exact_mut(panel).enumerate() {
            let top = first + p * HEIGHT;
            for i in 0..last.saturating_sub(top).min(HEIGHT) {
                let row = &src[(top + i) * row_bytes..(top + i + 1) * row_bytes];
                for (unit, b) in units.chunks_exact_mut(UNIT).zip(row.chunks_exact(BLOCK)) {
                    unit[2 * i..2 * i + 2].copy_from_slice(&b[..2]);
                    for j in 0..PIECES {
                        unit[at(i, j)..at(i, j) + 4].copy_from_slice(&b[2 + 4 * j..6 + 4 * j]);
                    }
                }
            }
        }
        done(first * row_bytes..last * row_bytes);
    });
    held
}

/// Row `r` of a matrix of `cols` columns held in panels, as GGML stores it, into `out`.
pub(crate) fn row_blocks(held: &[u8], r: usize, cols: usize, out: &mut [u8]) {
    let row_bytes = cols / QK * BLOCK;
    assert_eq!(out.len(), row_bytes, "a Q8_0 row of {cols} columns into {} bytes", out.len());
    let (panel, i) = (&held[r / HEIGHT * HEIGHT * row_bytes..][..HEIGHT * row_bytes], r % HEIGHT);
    for (unit, b) in panel.chunks_exact(UNIT).zip(out.chunks_exact_mut(BLOCK)) {
        b[..2].copy_from_slice(&unit[2 * i..2 * i + 2]);
        for j in 0..PIECES {
            b[2 + 4 * j..6 + 4 * j].copy_from_slice(&unit[at(i, j)..at(i, j) + 4]);
        }
    }
}

/// The span kernels `isa` has: on AVX-512 one activation row, [`ROWS`] and [`WIDE`]; on AVX2
/// one and [`ROWS`]; the portable ones otherwise. A span is whole panels: its output rows run
/// from a panel's first row, and rows past them (a last panel's filling) are dropped.
pub(super) fn spans(isa: Isa) -> Spans<u8, Q8_0, ROWS, WIDE> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Spans { one: x86::one_avx512, rows: x86::rows_avx512, wide: Some(x86::wide_avx512) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Spans { one: x86::one_avx2, rows: x86::rows_avx2, wide: None },
        _ => Spans { one: |w, y, out| portable(w, [y], [out]), rows: portable, wide: None },
    }
}

/// Blocks per row and output rows of a span, checked against the weights it is given.
fn shape<const N: usize>(w: &[u8], y: &[&[Q8_0]; N], out: &[&mut [f32]; N]) -> (usize, usize) {
    let (blocks, len) = (y[0].len(), out[0].len());
    assert!(y.iter().all(|y| y.len() == blocks), "activation rows of different lengths");
    assert!(out.iter().all(|o| o.len() == len), "output rows of different lengths");
    assert_eq!(
        w.len(),
        len.div_ceil(HEIGHT) * blocks * UNIT,
        "a span of {} bytes for {len} rows of {blocks} blocks",
        w.len()
    );
    (blocks, len)
}

/// The portable kernel: the order the module documents, one pair at a time.
fn portable<const N: usize>(w: &[u8], y: [&[Q8_0]; N], mut out: [&mut [f32]; N]) {
    let (blocks, len) = shape(w, &y, &out);
    if blocks == 0 {
        out.iter_mut().for_each(|o| o.fill(0.0));
        return;
    }
    for (p, panel) in w.chunks_exact(blocks * UNIT).enumerate() {
        for i in 0..(len - p * HEIGHT).min(HEIGHT) {
            for (y, out) in y.iter().zip(out.iter_mut()) {
                let mut acc = 0f32;
                for (unit, y) in panel.chunks_exact(UNIT).zip(y.iter()) {
                    let d = f16::from_le_bytes([unit[2 * i], unit[2 * i + 1]]).to_f32();
                    let mut s = 0i32;
                    for j in 0..PIECES {
                        for (k, &x) in unit[at(i, j)..at(i, j) + 4].iter().enumerate() {
                            s += i32::from(x as i8) * i32::from(y.qs[4 * j + k]);
                        }
                    }
                    acc = (s as f32 * y.d).mul_add(d, acc);
                }
                out[p * HEIGHT + i] = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::quant::Q8_0;
    use super::super::{Isa, ROWS, WIDE};
    use super::{HEIGHT, PIECES, SCALES, UNIT, shape};

    /// Activation word `j` (values `4j..4j + 4`) of a block, as one i32 to broadcast.
    #[inline]
    fn word(y: &Q8_0, j: usize) -> i32 {
        let q = &y.qs[4 * j..4 * j + 4];
        i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])
    }

    /// The output rows of panel `p` from a register of its lanes (`lanes` rows' worth).
    fn store(out: &mut [f32], first: usize, lanes: &[f32]) {
        let n = (out.len() - first).min(lanes.len());
        out[first..first + n].copy_from_slice(&lanes[..n]);
    }

    /// Panels times `N` activation rows, sixteen rows a register by `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn panels_avx512<const N: usize>(w: &[u8], y: [&[Q8_0]; N], mut out: [&mut [f32]; N]) {
        let (blocks, _) = shape(w, &y, &out);
        if blocks == 0 {
            out.iter_mut().for_each(|o| o.fill(0.0));
            return;
        }
        // −128 · Σy per activation block: `vpdpbusd` reads the weight bytes as x + 128.
        let starts: [Vec<i32>; N] =
            y.map(|row| row.iter().map(|b| -128 * b.qs.iter().map(|&q| i32::from(q)).sum::<i32>()).collect());
        let flip = _mm512_set1_epi8(-128);
        for (p, panel) in w.chunks_exact(blocks * UNIT).enumerate() {
            let mut acc = [_mm512_setzero_ps(); N];
            for (k, unit) in panel.chunks_exact(UNIT).enumerate() {
                let unit: &[u8; UNIT] = unit.try_into().expect("a unit");
                // SAFETY: 32 and 64 bytes inside the unit (SCALES + 64 · 7 + 64 = UNIT).
                let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(unit.as_ptr().cast()) });
                let x: [__m512i; PIECES] = std::array::from_fn(|j| {
                    let piece = unsafe { _mm512_loadu_si512(unit.as_ptr().add(SCALES + 64 * j).cast()) };
                    _mm512_xor_si512(piece, flip)
                });
                for ((acc, y), start) in acc.iter_mut().zip(&y).zip(&starts) {
                    // SAFETY: k < blocks, the length of every activation row and of its starts
                    // (checked by `shape`).
                    let (y, start) = unsafe { (y.get_unchecked(k), *start.get_unchecked(k)) };
                    let mut s = _mm512_set1_epi32(start);
                    for (j, x) in x.iter().enumerate() {
                        s = _mm512_dpbusd_epi32(s, *x, _mm512_set1_epi32(word(y, j)));
                    }
                    let t = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(y.d));
                    *acc = _mm512_fmadd_ps(t, d, *acc);
                }
            }
            for (out, acc) in out.iter_mut().zip(acc) {
                let mut lanes = [0f32; HEIGHT];
                // SAFETY: `lanes` holds sixteen f32.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
                store(out, p * HEIGHT, &lanes);
            }
        }
    }

    /// Panels times `N` activation rows, eight rows a register (each panel's halves in turn) by
    /// the sign trick.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn panels_avx2<const N: usize>(w: &[u8], y: [&[Q8_0]; N], mut out: [&mut [f32]; N]) {
        let (blocks, len) = shape(w, &y, &out);
        if blocks == 0 {
            out.iter_mut().for_each(|o| o.fill(0.0));
            return;
        }
        let ones = _mm256_set1_epi16(1);
        for (p, panel) in w.chunks_exact(blocks * UNIT).enumerate() {
            for h in 0..2 {
                let first = p * HEIGHT + 8 * h;
                if first >= len {
                    break;
                }
                let mut acc = [_mm256_setzero_ps(); N];
                for (k, unit) in panel.chunks_exact(UNIT).enumerate() {
                    let unit: &[u8; UNIT] = unit.try_into().expect("a unit");
                    // SAFETY: 16 and 32 bytes inside the unit.
                    let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(unit.as_ptr().add(16 * h).cast()) });
                    let mut s = [_mm256_setzero_si256(); N];
                    for j in 0..PIECES {
                        // SAFETY: as above.
                        let x =
                            unsafe { _mm256_loadu_si256(unit.as_ptr().add(SCALES + 64 * j + 32 * h).cast()) };
                        let ax = _mm256_sign_epi8(x, x);
                        for (s, y) in s.iter_mut().zip(&y) {
                            // SAFETY: k < blocks (checked by `shape`).
                            let y = _mm256_set1_epi32(word(unsafe { y.get_unchecked(k) }, j));
                            let pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
                            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                    for ((acc, s), y) in acc.iter_mut().zip(s).zip(&y) {
                        // SAFETY: as above.
                        let yd = unsafe { y.get_unchecked(k) }.d;
                        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(yd));
                        *acc = _mm256_fmadd_ps(t, d, *acc);
                    }
                }
                for (out, acc) in out.iter_mut().zip(acc) {
                    let mut lanes = [0f32; 8];
                    // SAFETY: `lanes` holds eight f32.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
                    store(out, first, &lanes);
                }
            }
        }
    }

    /// The safe entries: each checks that the CPU has the features before it enters the
    /// `#[target_feature]` code.
    macro_rules! entries {
        ($kernel:ident, $isa:pat, $what:literal: $one:ident, $rows:ident $(, $wide:ident)?) => {
            fn check() {
                assert!(matches!(Isa::detected(), $isa), concat!("a ", $what, " kernel on a CPU without it"));
            }

            pub(crate) fn $one(w: &[u8], y: &[Q8_0], out: &mut [f32]) {
                check();
                // SAFETY: the CPU has the features the kernel is compiled for (checked above).
                unsafe { $kernel(w, [y], [out]) }
            }

            pub(crate) fn $rows(w: &[u8], y: [&[Q8_0]; ROWS], out: [&mut [f32]; ROWS]) {
                check();
                // SAFETY: as above.
                unsafe { $kernel(w, y, out) }
            }

            $(
                pub(crate) fn $wide(w: &[u8], y: [&[Q8_0]; WIDE], out: [&mut [f32]; WIDE]) {
                    check();
                    // SAFETY: as above.
                    unsafe { $kernel(w, y, out) }
                }
            )?
        };
    }

    mod avx512 {
        use super::*;
        entries!(panels_avx512, Isa::Avx512, "AVX-512": one_avx512, rows_avx512, wide_avx512);
    }
    mod avx2 {
        use super::*;
        entries!(panels_avx2, Isa::Avx2 | Isa::Avx512, "AVX2": one_avx2, rows_avx2);
    }
    pub(super) use avx2::{one_avx2, rows_avx2};
    pub(super) use avx512::{one_avx512, rows_avx512, wide_avx512};
}
