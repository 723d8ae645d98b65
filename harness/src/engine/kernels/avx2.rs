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
use super::quant::{Q8_0, Q8_1, Q8K, k4_scales};

/// Whether this CPU has AVX2, FMA and F16C.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// A safe entry to a `#[target_feature]` kernel.
macro_rules! entry {
    ($(#[$doc:meta])* $name:ident => $kernel:ident($w:ty, $x:ty)) => {
        $(#[$doc])*
        pub(super) fn $name(w: &[$w], x: &[$x]) -> f32 {
            assert!(Isa::detected() == Isa::Avx2, "an AVX2 kernel on a CPU without AVX2, FMA and F16C");
            // SAFETY: the CPU has the features the kernel is compiled for (checked above).
            unsafe { $kernel(w, x) }
        }
    };
}

entry!(dot_f32 => f32_kernel(f32, f32));
entry!(dot_f16 => f16_kernel(f16, f32));
entry!(dot_bf16 => bf16_kernel(bf16, f32));
entry!(dot_q4_0 => q4_0_kernel(u8, Q8_0));
entry!(dot_q5_0 => q5_0_kernel(u8, Q8_0));
entry!(dot_q8_0 => q8_0_kernel(u8, Q8_0));
entry!(dot_q4_1 => q4_1_kernel(u8, Q8_1));
entry!(dot_q5_1 => q5_1_kernel(u8, Q8_1));
entry!(dot_q4k => q4k_kernel(u8, Q8K));
entry!(dot_q5k => q5k_kernel(u8, Q8K));
entry!(dot_q6k => q6k_kernel(u8, Q8K));

/// The sum of the eight lanes: halves, then pairs, then the last two.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// A dense dot product: four accumulators over 32 values a step, one over 8, then the tail.
macro_rules! dense_kernel {
    ($name:ident, $w:ty, |$p:ident| $load:expr, $widen:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(w: &[$w], x: &[f32]) -> f32 {
            let n = w.len().min(x.len());
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let load = |$p: *const $w| -> __m256 {
                // SAFETY: callers pass a pointer to 8 readable values.
                unsafe { $load }
            };
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            // SAFETY (all loads below): each reads [i, i + 8) with i + 8 <= n.
            while i + 32 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let (wv, xv) = unsafe { (load(wp.add(i + 8 * k)), _mm256_loadu_ps(xp.add(i + 8 * k))) };
                    *a = _mm256_fmadd_ps(wv, xv, *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                let (wv, xv) = unsafe { (load(wp.add(i)), _mm256_loadu_ps(xp.add(i))) };
                acc[0] = _mm256_fmadd_ps(wv, xv, acc[0]);
                i += 8;
            }
            let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
            let widen = $widen;
            for (&w, &x) in w[i..n].iter().zip(&x[i..n]) {
                sum += widen(w) * x;
            }
            sum
        }
    };
}

dense_kernel!(f32_kernel, f32, |p| _mm256_loadu_ps(p), |v: f32| v);
dense_kernel!(f16_kernel, f16, |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())), f16::to_f32);
dense_kernel!(
    bf16_kernel,
    bf16,
    |p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))),
    bf16::to_f32
);

/// The little-endian f16 at `at`, widened by F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// 32 bytes at `b[at..]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(b: &[u8], at: usize) -> __m256i {
    let b = &b[at..at + 32];
    // SAFETY: `b` holds 32 bytes.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// 32 i8 of an activation block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i8(q: &[i8], at: usize) -> __m256i {
    let q = &q[at..at + 32];
    // SAFETY: `q` holds 32 bytes.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

/// The 32 nibbles of 16 bytes at `b[at..]`: the low nibbles first, then the high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(b: &[u8], at: usize) -> __m256i {
    let b = &b[at..at + 16];
    // SAFETY: `b` holds 16 bytes.
    let low = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(low), low);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// The 32 bits of the little-endian word at `b[at..]` as bytes: 0xFF where bit `k` is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bit_bytes(b: &[u8], at: usize) -> __m256i {
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

/// Σ x·y over pairs of signed bytes, as 8 f32 lanes of i32 sums. `maddubs` needs an unsigned
/// left operand, so the signs move to the right one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_i8(x: __m256i, y: __m256i) -> __m256 {
    sum_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Σ x·y over unsigned x and signed y bytes, as 8 f32 lanes of i32 sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_kernel(w: &[u8], y: &[Q8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(18).zip(y) {
        let x = _mm256_sub_epi8(nibbles(b, 2), _mm256_set1_epi8(8));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0) * y.d), sum_i8(x, load_i8(&y.qs, 0)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_kernel(w: &[u8], y: &[Q8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(22).zip(y) {
        // Value − 16: a clear fifth bit makes the byte 0xF0 | nibble, which is nibble − 16 as i8.
        let clear = _mm256_andnot_si256(bit_bytes(b, 2), _mm256_set1_epi8(0xF0u8 as i8));
        let x = _mm256_or_si256(nibbles(b, 6), clear);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0) * y.d), sum_i8(x, load_i8(&y.qs, 0)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_kernel(w: &[u8], y: &[Q8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.chunks_exact(34).zip(y) {
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0) * y.d), sum_i8(load32(b, 2), load_i8(&y.qs, 0)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_kernel(w: &[u8], y: &[Q8_1]) -> f32 {
    let (mut acc, mut offsets) = (_mm256_setzero_ps(), 0f32);
    for (b, y) in w.chunks_exact(20).zip(y) {
        offsets += f16_at(b, 2) * y.s;
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_at(b, 0) * y.d),
            sum_u8_i8(nibbles(b, 4), load_i8(&y.qs, 0)),
            acc,
        );
    }
    hsum(acc) + offsets
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1_kernel(w: &[u8], y: &[Q8_1]) -> f32 {
    let (mut acc, mut offsets) = (_mm256_setzero_ps(), 0f32);
    for (b, y) in w.chunks_exact(24).zip(y) {
        offsets += f16_at(b, 2) * y.s;
        let fifth = _mm256_and_si256(bit_bytes(b, 4), _mm256_set1_epi8(0x10));
        let x = _mm256_or_si256(nibbles(b, 8), fifth);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0) * y.d), sum_u8_i8(x, load_i8(&y.qs, 0)), acc);
    }
    hsum(acc) + offsets
}

/// Σ min·bsum of a Q4_K/Q5_K super-block: each min covers two 16-sums.
fn k4_min_sum(mins: &[u8; 8], y: &Q8K) -> i32 {
    mins.iter()
        .zip(y.bsums.chunks_exact(2))
        .map(|(&m, s)| i32::from(m) * (i32::from(s[0]) + i32::from(s[1])))
        .sum()
}

/// Q4_K and Q5_K (`fifth` = the offset of qh, for Q5_K).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k_q5k(w: &[u8], y: &[Q8K], size: usize, fifth: Option<usize>) -> f32 {
    let (mut acc, mut mins) = (_mm256_setzero_ps(), 0f32);
    let low4 = _mm256_set1_epi8(0x0F);
    for (b, y) in w.chunks_exact(size).zip(y) {
        let (sc, mn) = k4_scales(&b[4..16]);
        mins += (y.d * f16_at(b, 2)) * k4_min_sum(&mn, y) as f32;
        let qs = if fifth.is_some() { 48 } else { 16 };
        let high = fifth.map(|at| load32(b, at));
        let mut sumi = _mm256_setzero_si256();
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
            let plo = _mm256_maddubs_epi16(lo, load_i8(&y.qs, 64 * c));
            let phi = _mm256_maddubs_epi16(hi, load_i8(&y.qs, 64 * c + 32));
            let plo = _mm256_madd_epi16(plo, _mm256_set1_epi16(i16::from(sc[2 * c])));
            let phi = _mm256_madd_epi16(phi, _mm256_set1_epi16(i16::from(sc[2 * c + 1])));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y.d * f16_at(b, 0)), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc) - mins
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4k_kernel(w: &[u8], y: &[Q8K]) -> f32 {
    q4k_q5k(w, y, 144, None)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5k_kernel(w: &[u8], y: &[Q8K]) -> f32 {
    q4k_q5k(w, y, 176, Some(16))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_kernel(w: &[u8], y: &[Q8K]) -> f32 {
    let (mut acc, mut offsets) = (_mm256_setzero_ps(), 0f32);
    let (low4, low2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    for (b, y) in w.chunks_exact(210).zip(y) {
        let scales: [i16; 16] = std::array::from_fn(|g| i16::from(b[192 + g] as i8));
        let d = y.d * f16_at(b, 208);
        // The values are stored + 32: take 32 · Σ scale·bsum off once per super-block.
        let bias: i32 = scales.iter().zip(&y.bsums).map(|(&s, &q)| i32::from(s) * i32::from(q)).sum();
        offsets += d * (32 * bias) as f32;
        let mut sumi = _mm256_setzero_si256();
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
                let scale = _mm256_set_m128i(_mm_set1_epi16(scales[g + 1]), _mm_set1_epi16(scales[g]));
                let p = _mm256_maddubs_epi16(q, load_i8(&y.qs, 128 * n + 32 * j));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc) - offsets
}
