//! The blocks of 32 with an f16 scale and no offset (Q4_0, Q5_0, Q8_0) held in **panels of
//! sixteen rows**, and their kernels.
//!
//! Panel `p` holds rows `16p..16p + 16`, one **unit** per block of 32 columns, units in column
//! order. A unit holds one block of each of the sixteen rows, so the panels take what the file
//! does (a matrix whose row count is not a multiple of sixteen has its last panel filled up with
//! zero rows). It starts with the sixteen rows' f16 scales (32 bytes, row by row); then:
//!
//! - **Q8_0:** eight pieces of 64 bytes, piece `j` holding values `4j..4j + 4` of each row in turn
//!   (row `i`'s four bytes at `4i`).
//! - **Q4_0:** four pieces of 64 bytes, piece `g` holding bytes `4g..4g + 4` of each row's sixteen
//!   bytes of nibbles: their low nibbles are values `4g..4g + 4`, their high ones values
//!   `16 + 4g..20 + 4g`.
//! - **Q5_0:** eight masks of 64 bits, then Q4_0's four pieces. Bit `4i + k` of mask `w` is the
//!   fifth bit of value `4w + k` of row `i`, the byte it lands in once a piece is unpacked.
//!
//! Why: with the rows one after another, a 512-bit register holds one or two rows' block, and
//! each block's integer sum needs its own conversion, scaling and accumulation per activation row
//! (five instructions for two rows' 32 values, module `avx512`'s `biased`). In a panel, one
//! unpacked register holds four values of sixteen rows: eight `vpdpbusd`s against the activation
//! block's eight broadcast words leave each lane with one row's whole block sum, and one
//! conversion, one multiply and one fused multiply-add scale and add the block for all sixteen
//! rows: eleven instructions where the row-wise kernels need forty, and no horizontal sum at the
//! end. Unpacking (nibbles, fifth bits) is paid once per unit for every activation row.
//!
//! The reduction order, for every pair of a weight row and an activation row, on every
//! instruction set (the portable code, AVX2, AVX-512): for each block in column order, the exact
//! integer sum `s` of its 32 products; then `acc = fma(f32(s) · d_y, d_w, acc)`, `acc` starting at
//! zero (`f32(s)` is exact: |s| < 2²⁴). It depends on nothing but the values, so every
//! instruction set, batch size, place in a batch, span and thread count gives the same bits.
//!
//! The integer sums are formed on unsigned weight bytes u = x + `bias` (Q8_0's bytes with their
//! top bit flipped, bias 128; Q4_0's nibbles, bias 8; Q5_0's five bits, bias 16) by
//! `vpdpbusd` on AVX-512 and `maddubs`/`madd` on AVX2, each activation block's sum starting at
//! −bias · Σy; AVX2 keeps the sign trick for Q8_0 (`maddubs` on |x| and y's signs moved by x's),
//! whose unsigned pairs would pass i16's limit. Every way is exact (the pairs `maddubs` forms stay
//! below that limit: at most 2 · 31 · 127, or 2 · 128 · 127 with the sign trick, as the activation
//! quantizer never writes −128).

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::quant::{Q8S, QK};
use super::{Isa, QuantKind, ROWS, Spans, WIDE};

/// Rows a panel holds.
pub(crate) const HEIGHT: usize = 16;
/// Bytes of a unit's scales, before the rest.
const SCALES: usize = 2 * HEIGHT;
/// Activation words (four values each) of a block.
const WORDS: usize = QK / 4;

/// The types held in panels.
pub(crate) fn holds(kind: QuantKind) -> bool {
    matches!(kind, QuantKind::Q4_0 | QuantKind::Q5_0 | QuantKind::Q8_0)
}

/// Bytes of one GGML block of `kind`.
fn block(kind: QuantKind) -> usize {
    kind.block().1
}

/// Bytes of a unit: one block of each of a panel's rows.
fn unit(kind: QuantKind) -> usize {
    HEIGHT * block(kind)
}

/// Where a unit's pieces start: after the scales, and Q5_0's masks.
fn pieces(kind: QuantKind) -> usize {
    if kind == QuantKind::Q5_0 { SCALES + 8 * WORDS } else { SCALES }
}

/// What the unsigned weight bytes are above the values: `u = x + bias`.
fn bias(kind: QuantKind) -> i32 {
    match kind {
        QuantKind::Q4_0 => 8,
        QuantKind::Q5_0 => 16,
        _ => 128,
    }
}

/// Bytes a matrix of `rows × cols` takes in panels (its rows filled up to whole panels).
pub(crate) fn held_len(kind: QuantKind, rows: usize, cols: usize) -> usize {
    rows.next_multiple_of(HEIGHT) * (cols / QK) * block(kind)
}

/// Where row `i` keeps byte `k` of its block's values (Q8_0) or nibbles (Q4_0, Q5_0) in a unit.
fn at(kind: QuantKind, i: usize, k: usize) -> usize {
    pieces(kind) + 64 * (k / 4) + 4 * i + k % 4
}

/// A GGML block (`b`) of row `i` put in its unit.
fn put(kind: QuantKind, unit: &mut [u8], i: usize, b: &[u8]) {
    unit[2 * i..2 * i + 2].copy_from_slice(&b[..2]);
    let qs = if kind == QuantKind::Q5_0 { &b[6..] } else { &b[2..] };
    for (g, q) in qs.chunks_exact(4).enumerate() {
        unit[at(kind, i, 4 * g)..at(kind, i, 4 * g) + 4].copy_from_slice(q);
    }
    if kind == QuantKind::Q5_0 {
        // Mask w takes the four bits of word w, at bits 4i..4i + 4.
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for w in 0..WORDS {
            unit[SCALES + 8 * w + i / 2] |= ((qh >> (4 * w) & 0xF) as u8) << (4 * (i % 2));
        }
    }
}

/// Row `i`'s GGML block taken out of its unit into `b`.
fn take(kind: QuantKind, unit: &[u8], i: usize, b: &mut [u8]) {
    b[..2].copy_from_slice(&unit[2 * i..2 * i + 2]);
    let start = if kind == QuantKind::Q5_0 { 6 } else { 2 };
    for (g, q) in b[start..].chunks_exact_mut(4).enumerate() {
        q.copy_from_slice(&unit[at(kind, i, 4 * g)..at(kind, i, 4 * g) + 4]);
    }
    if kind == QuantKind::Q5_0 {
        let mut qh = 0u32;
        for w in 0..WORDS {
            qh |= u32::from(unit[SCALES + 8 * w + i / 2] >> (4 * (i % 2)) & 0xF) << (4 * w);
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Row-major GGML rows of `kind` (`rows × cols / 32` blocks) put in panels. `done` is told each
/// range of `src` (in bytes) once it has been copied and will not be read again, a slab of rows at
/// a time (slabs are copied in parallel, so not in order), so that the caller can give back a
/// mapped file's pages as it goes.
pub(crate) fn pack(
    kind: QuantKind,
    rows: usize,
    cols: usize,
    src: &[u8],
    done: impl Fn(Range<usize>) + Sync,
) -> Vec<u8> {
    assert!(holds(kind), "{kind:?} is not held in panels");
    let row_bytes = cols / QK * block(kind);
    assert_eq!(src.len(), rows * row_bytes, "{} bytes for {rows} {kind:?} rows of {cols}", src.len());
    // Zeros: a last panel's filling keeps them (scale 0).
    let mut held = vec![0u8; held_len(kind, rows, cols)];
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
                for (unit, b) in units.chunks_exact_mut(unit(kind)).zip(row.chunks_exact(block(kind))) {
                    put(kind, unit, i, b);
                }
            }
        }
        done(first * row_bytes..last * row_bytes);
    });
    held
}

/// Row `r` of a matrix of `cols` columns held in panels, as GGML stores it, into `out`.
pub(crate) fn row_blocks(kind: QuantKind, held: &[u8], r: usize, cols: usize, out: &mut [u8]) {
    let row_bytes = cols / QK * block(kind);
    assert_eq!(out.len(), row_bytes, "a {kind:?} row of {cols} columns into {} bytes", out.len());
    let panel = &held[r / HEIGHT * HEIGHT * row_bytes..][..HEIGHT * row_bytes];
    for (unit, b) in panel.chunks_exact(unit(kind)).zip(out.chunks_exact_mut(block(kind))) {
        take(kind, unit, r % HEIGHT, b);
    }
}

/// The span kernels of `kind` that `isa` has: on AVX-512 one activation row, [`ROWS`] and
/// [`WIDE`]; on AVX2 one and [`ROWS`]; the portable ones otherwise. A span is whole panels: its
/// output rows run from a panel's first row, and rows past them (a last panel's filling) are
/// dropped.
pub(super) fn spans(kind: QuantKind, isa: Isa) -> Spans<u8, Q8S, ROWS, WIDE> {
    macro_rules! portable {
        ($kind:expr) => {
            Spans {
                one: |w, y, out| portable($kind, w, [y], [out]),
                rows: |w, y, out| portable($kind, w, y, out),
                wide: None,
            }
        };
    }
    match (isa, kind) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, QuantKind::Q4_0) => x86::avx512::Q4_0,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, QuantKind::Q5_0) => x86::avx512::Q5_0,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, _) => x86::avx512::Q8_0,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, QuantKind::Q4_0) => x86::avx2::Q4_0,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, QuantKind::Q5_0) => x86::avx2::Q5_0,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, _) => x86::avx2::Q8_0,
        (_, QuantKind::Q4_0) => portable!(QuantKind::Q4_0),
        (_, QuantKind::Q5_0) => portable!(QuantKind::Q5_0),
        _ => portable!(QuantKind::Q8_0),
    }
}

/// Blocks per row and output rows of a span, checked against the weights it is given.
fn shape<const N: usize>(
    kind: QuantKind,
    w: &[u8],
    y: &[&[Q8S]; N],
    out: &[&mut [f32]; N],
) -> (usize, usize) {
    let (blocks, len) = (y[0].len(), out[0].len());
    assert!(y.iter().all(|y| y.len() == blocks), "activation rows of different lengths");
    assert!(out.iter().all(|o| o.len() == len), "output rows of different lengths");
    assert_eq!(
        w.len(),
        len.div_ceil(HEIGHT) * blocks * unit(kind),
        "a span of {} bytes for {len} {kind:?} rows of {blocks} blocks",
        w.len()
    );
    (blocks, len)
}

/// Value `v` of row `i` in a unit, as the signed integer it stands for.
fn value(kind: QuantKind, unit: &[u8], i: usize, v: usize) -> i32 {
    match kind {
        QuantKind::Q8_0 => i32::from(unit[at(kind, i, v)] as i8),
        _ => {
            let byte = unit[at(kind, i, v % 16)];
            let nibble = i32::from(if v < 16 { byte & 0x0F } else { byte >> 4 });
            let (w, bit) = (v / 4, 4 * i + v % 4);
            let fifth = kind == QuantKind::Q5_0 && unit[SCALES + 8 * w + bit / 8] >> (bit % 8) & 1 == 1;
            nibble + if fifth { 16 } else { 0 } - bias(kind)
        }
    }
}

/// The portable kernel: the order the module documents, one pair at a time.
fn portable<const N: usize>(kind: QuantKind, w: &[u8], y: [&[Q8S]; N], mut out: [&mut [f32]; N]) {
    let (blocks, len) = shape(kind, w, &y, &out);
    if blocks == 0 {
        out.iter_mut().for_each(|o| o.fill(0.0));
        return;
    }
    for (p, panel) in w.chunks_exact(blocks * unit(kind)).enumerate() {
        for i in 0..(len - p * HEIGHT).min(HEIGHT) {
            for (y, out) in y.iter().zip(out.iter_mut()) {
                let mut acc = 0f32;
                for (unit, y) in panel.chunks_exact(unit(kind)).zip(y.iter()) {
                    let d = f16::from_le_bytes([unit[2 * i], unit[2 * i + 1]]).to_f32();
                    let s: i32 = (0..QK).map(|v| value(kind, unit, i, v) * i32::from(y.qs[v])).sum();
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

    use super::super::avx2::bit_bytes;
    use super::super::quant::Q8S;
    use super::super::{Isa, QuantKind};
    use super::{HEIGHT, SCALES, WORDS, bias, pieces, shape, unit};

    /// The type a kernel is compiled for, as its const parameter (so that every test of the
    /// type folds away).
    const K4: u8 = 0;
    const K5: u8 = 1;
    const K8: u8 = 2;

    const fn kind_of(k: u8) -> QuantKind {
        match k {
            K4 => QuantKind::Q4_0,
            K5 => QuantKind::Q5_0,
            _ => QuantKind::Q8_0,
        }
    }

    /// Activation word `j` (values `4j..4j + 4`) of a block, as one i32 to broadcast.
    #[inline]
    fn word(y: &Q8S, j: usize) -> i32 {
        let q = &y.qs[4 * j..4 * j + 4];
        i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])
    }

    /// A unit's outputs (`lanes`, one per row from `first`) into `out`, the rows it has.
    fn store(out: &mut [f32], first: usize, lanes: &[f32]) {
        let n = (out.len() - first).min(lanes.len());
        out[first..first + n].copy_from_slice(&lanes[..n]);
    }

    /// 64 bytes of a unit at `at`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn load64(unit: &[u8], at: usize) -> __m512i {
        let b = &unit[at..at + 64];
        // SAFETY: `b` holds 64 bytes.
        unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
    }

    /// A unit's sixteen rows' words as unsigned bytes u = x + bias, word by word: register `j`
    /// holds values `4j..4j + 4` of every row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn words_avx512(kind: QuantKind, unit: &[u8]) -> [__m512i; WORDS] {
        let at = pieces(kind);
        if kind == QuantKind::Q8_0 {
            let flip = _mm512_set1_epi8(-128);
            return std::array::from_fn(|j| _mm512_xor_si512(load64(unit, at + 64 * j), flip));
        }
        let low4 = _mm512_set1_epi8(0x0F);
        let nibbles: [__m512i; 4] = std::array::from_fn(|g| load64(unit, at + 64 * g));
        std::array::from_fn(|j| {
            let p = nibbles[j % 4];
            let q = if j < 4 { p } else { _mm512_srli_epi16::<4>(p) };
            let q = _mm512_and_si512(q, low4);
            if kind == QuantKind::Q5_0 {
                let m =
                    u64::from_le_bytes(unit[SCALES + 8 * j..SCALES + 8 * j + 8].try_into().expect("8 bytes"));
                _mm512_or_si512(q, _mm512_maskz_mov_epi8(m, _mm512_set1_epi8(16)))
            } else {
                q
            }
        })
    }

    /// Panels of `kind` times `N` activation rows, sixteen rows a register by `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn panels_avx512<const K: u8, const N: usize>(w: &[u8], y: [&[Q8S]; N], mut out: [&mut [f32]; N]) {
        let kind = kind_of(K);
        let (blocks, _) = shape(kind, w, &y, &out);
        if blocks == 0 {
            out.iter_mut().for_each(|o| o.fill(0.0));
            return;
        }
        let (size, bias) = (unit(kind), bias(kind));
        for (p, panel) in w.chunks_exact(blocks * size).enumerate() {
            let mut acc = [_mm512_setzero_ps(); N];
            for (k, unit) in panel.chunks_exact(size).enumerate() {
                let scales = &unit[..SCALES];
                // SAFETY: `scales` holds 32 bytes.
                let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales.as_ptr().cast()) });
                let x = words_avx512(kind, unit);
                for (acc, y) in acc.iter_mut().zip(&y) {
                    // SAFETY: k < blocks, the length of every activation row (checked by `shape`).
                    let y = unsafe { y.get_unchecked(k) };
                    // −bias · Σy takes the weights' bias out of the sum.
                    let mut s = _mm512_set1_epi32(-bias * y.sum);
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

    /// 32 bytes of a unit at `at`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load32(unit: &[u8], at: usize) -> __m256i {
        let b = &unit[at..at + 32];
        // SAFETY: `b` holds 32 bytes.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    /// Word `j` of half `h` of a unit (rows `8h..8h + 8`): its bytes, signed (Q8_0, for the sign
    /// trick) or unsigned u = x + bias (Q4_0, Q5_0). Unpacked a word at a time: eight words live
    /// at once leave AVX2's sixteen registers too few for the sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn word_avx2(kind: QuantKind, unit: &[u8], h: usize, j: usize) -> __m256i {
        let at = pieces(kind) + 32 * h;
        if kind == QuantKind::Q8_0 {
            return load32(unit, at + 64 * j);
        }
        let p = load32(unit, at + 64 * (j % 4));
        let q = if j < 4 { p } else { _mm256_srli_epi16::<4>(p) };
        let q = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
        if kind == QuantKind::Q5_0 {
            let fifth = _mm256_and_si256(bit_bytes(unit, SCALES + 8 * j + 4 * h), _mm256_set1_epi8(16));
            _mm256_or_si256(q, fifth)
        } else {
            q
        }
    }

    /// Panels of `kind` times `N` activation rows, eight rows a register (each panel's halves in
    /// turn).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn panels_avx2<const K: u8, const N: usize>(w: &[u8], y: [&[Q8S]; N], mut out: [&mut [f32]; N]) {
        let kind = kind_of(K);
        let (blocks, len) = shape(kind, w, &y, &out);
        if blocks == 0 {
            out.iter_mut().for_each(|o| o.fill(0.0));
            return;
        }
        // Q8_0 keeps the sign trick, on the signed bytes; the others' sums start at −bias · Σy.
        let signed = kind == QuantKind::Q8_0;
        let bias = bias(kind);
        let ones = _mm256_set1_epi16(1);
        let size = unit(kind);
        for (p, panel) in w.chunks_exact(blocks * size).enumerate() {
            for h in 0..2 {
                let first = p * HEIGHT + 8 * h;
                if first >= len {
                    break;
                }
                let mut acc = [_mm256_setzero_ps(); N];
                for (k, unit) in panel.chunks_exact(size).enumerate() {
                    let scales = &unit[16 * h..16 * h + 16];
                    // SAFETY: `scales` holds 16 bytes.
                    let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(scales.as_ptr().cast()) });
                    let mut s: [__m256i; N] = if signed {
                        [_mm256_setzero_si256(); N]
                    } else {
                        // SAFETY: k < blocks, the length of every activation row (checked by `shape`).
                        std::array::from_fn(|r| {
                            _mm256_set1_epi32(-bias * unsafe { y[r].get_unchecked(k) }.sum)
                        })
                    };
                    for j in 0..WORDS {
                        let x = word_avx2(kind, unit, h, j);
                        let ax = if signed { _mm256_sign_epi8(x, x) } else { x };
                        for (s, y) in s.iter_mut().zip(&y) {
                            // SAFETY: k < blocks (checked by `shape`).
                            let y = _mm256_set1_epi32(word(unsafe { y.get_unchecked(k) }, j));
                            let y = if signed { _mm256_sign_epi8(y, x) } else { y };
                            let pairs = _mm256_maddubs_epi16(ax, y);
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

    /// The safe entries of one instruction set: for each type, a [`Spans`](super::super::Spans)
    /// whose kernels check that the CPU has the features before they enter the
    /// `#[target_feature]` code.
    macro_rules! entries {
        ($kernel:ident, $isa:pat, $what:literal, $wide:ident) => {
            use super::super::super::{ROWS, Spans, WIDE};
            use super::*;

            fn check() {
                assert!(matches!(Isa::detected(), $isa), concat!("a ", $what, " kernel on a CPU without it"));
            }

            entries!(@spans Q4_0, $kernel, K4, $wide);
            entries!(@spans Q5_0, $kernel, K5, $wide);
            entries!(@spans Q8_0, $kernel, K8, $wide);
        };
        (@spans $name:ident, $kernel:ident, $kind:ident, $wide:ident) => {
            pub(crate) const $name: Spans<u8, Q8S, ROWS, WIDE> = Spans {
                one: |w, y, out| {
                    check();
                    // SAFETY: the CPU has the features the kernel is compiled for (checked above).
                    unsafe { $kernel::<$kind, 1>(w, [y], [out]) }
                },
                rows: |w, y, out| {
                    check();
                    // SAFETY: as above.
                    unsafe { $kernel::<$kind, ROWS>(w, y, out) }
                },
                wide: entries!(@wide $wide, $kernel, $kind),
            };
        };
        (@wide with_wide, $kernel:ident, $kind:ident) => {
            Some(|w, y, out| {
                check();
                // SAFETY: as above.
                unsafe { $kernel::<$kind, WIDE>(w, y, out) }
            })
        };
        (@wide without_wide, $kernel:ident, $kind:ident) => {
            None
        };
    }

    pub(super) mod avx512 {
        entries!(panels_avx512, Isa::Avx512, "AVX-512", with_wide);
    }
    pub(super) mod avx2 {
        entries!(panels_avx2, Isa::Avx2 | Isa::Avx512, "AVX2", without_wide);
    }
}
