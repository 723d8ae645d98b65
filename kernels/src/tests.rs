//! Each storage kind against candle (its quantization, its `QMatMul`, its dequantization), against
//! an f64 reference, scalar against SIMD, and bitwise batch invariance on both paths.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use half::{bf16, f16};

use super::{Held, Isa, Matrix, QuantKind, Storage};

const QUANT: [(QuantKind, GgmlDType); 10] = [
    (QuantKind::Q4_0, GgmlDType::Q4_0),
    (QuantKind::Q4_1, GgmlDType::Q4_1),
    (QuantKind::Q5_0, GgmlDType::Q5_0),
    (QuantKind::Q5_1, GgmlDType::Q5_1),
    (QuantKind::Q8_0, GgmlDType::Q8_0),
    (QuantKind::Q2K, GgmlDType::Q2K),
    (QuantKind::Q3K, GgmlDType::Q3K),
    (QuantKind::Q4K, GgmlDType::Q4K),
    (QuantKind::Q5K, GgmlDType::Q5K),
    (QuantKind::Q6K, GgmlDType::Q6K),
];

/// A seeded xorshift stream, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1), with one value in 64 ten times larger (outliers shape the scales).
    fn value(&mut self) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if self.next().is_multiple_of(64) { u * 10.0 } else { u }
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every instruction set this CPU runs: the portable code, and AVX2 and AVX-512 where it has them.
fn isas() -> Vec<Isa> {
    match Isa::detected() {
        Isa::Scalar => vec![Isa::Scalar],
        Isa::Avx2 => vec![Isa::Scalar, Isa::Avx2],
        Isa::Avx512 => vec![Isa::Scalar, Isa::Avx2, Isa::Avx512],
    }
}

fn quantized(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> (QTensor, Matrix) {
    let w = Tensor::from_vec(Rng(seed).values(rows * cols), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let matrix = Matrix::from_qtensor(&q).unwrap();
    (q, matrix)
}

fn dense(dtype: DType, rows: usize, cols: usize, seed: u64) -> Matrix {
    let w = Tensor::from_vec(Rng(seed).values(rows * cols), (rows, cols), &Device::Cpu).unwrap();
    Matrix::from_tensor(&w.to_dtype(dtype).unwrap()).unwrap()
}

/// Every storage kind, at a size large enough to be split over threads.
fn every_kind(rows: usize, cols: usize) -> Vec<Matrix> {
    let mut all: Vec<Matrix> =
        [DType::F32, DType::F16, DType::BF16].iter().map(|&d| dense(d, rows, cols, 3)).collect();
    all.extend(QUANT.iter().map(|&(_, dtype)| quantized(dtype, rows, cols, 5).1));
    all
}

fn matmul(matrix: &Matrix, isa: Isa, x: &[f32], m: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * matrix.rows()];
    matrix.matmul_on(isa, x, m, &mut y);
    y
}

/// x · Wᵀ in f64 over the matrix's own (dequantized) weights, with Σ|x·w| per element.
fn reference(matrix: &Matrix, x: &[f32], m: usize) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (matrix.rows(), matrix.cols());
    let mut w = vec![0f32; cols];
    let (mut y, mut scale) = (vec![0f64; m * rows], vec![0f64; m * rows]);
    for r in 0..rows {
        matrix.row_into(r, &mut w);
        for i in 0..m {
            let xi = &x[i * cols..(i + 1) * cols];
            y[i * rows + r] = w.iter().zip(xi).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum();
            scale[i * rows + r] = w.iter().zip(xi).map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs()).sum();
        }
    }
    (y, scale)
}

#[test]
fn names_and_sizes_follow_the_stored_type() {
    fn shared<T: Send + Sync>() {}
    shared::<Matrix>();
    let names: Vec<&str> = every_kind(4, 256).iter().map(Matrix::kind).collect();
    assert_eq!(
        names,
        [
            "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
            "q6_k"
        ]
    );
    let bytes: Vec<usize> = every_kind(4, 256).iter().map(Matrix::bytes).collect();
    // Q4_0's, Q5_0's and Q8_0's four rows take a whole panel of sixteen (`qpanel`).
    assert_eq!(bytes, [4096, 2048, 2048, 2304, 640, 2816, 768, 4352, 336, 440, 576, 704, 840]);
    let bytes: Vec<usize> = every_kind(32, 256).iter().map(Matrix::bytes).collect();
    assert_eq!(bytes, [32768, 16384, 16384, 4608, 5120, 5632, 6144, 8704, 2688, 3520, 4608, 5632, 6720]);
}

#[test]
fn dense_matches_an_f64_reference_on_every_path() {
    for (rows, cols) in [(37, 203), (300, 896)] {
        let x = Rng(11).values(3 * cols);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let matrix = dense(dtype, rows, cols, 7);
            let (want, scale) = reference(&matrix, &x, 3);
            for isa in isas() {
                let got = matmul(&matrix, isa, &x, 3);
                for (k, (&g, (&w, &s))) in got.iter().zip(want.iter().zip(&scale)).enumerate() {
                    let err = (f64::from(g) - w).abs();
                    assert!(
                        err <= 1e-5 * s.max(1e-30),
                        "{dtype:?} {isa:?} {rows}×{cols} element {k}: {g} against {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn dequantized_rows_match_candle() {
    for (kind, dtype) in QUANT {
        let (q, matrix) = quantized(dtype, 6, 512, 13);
        let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = matrix.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{kind:?} value {k}: {g} against candle's {w}");
        }
    }
}

#[test]
fn quantized_matches_candle_qmatmul() {
    let (rows, m) = (96, 5);
    for (kind, dtype) in QUANT {
        // candle multiplies Q8_0 weights with Q8_K activations (its repacked kernels) where the
        // columns are a multiple of 256: 576 keeps the 32-blocks on its Q8_0/Q8_1 path.
        let cols = if kind.block().0 == 32 { 576 } else { 512 };
        let x = Rng(17).values(m * cols);
        let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
        let (q, matrix) = quantized(dtype, rows, cols, 19);
        let want = QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let magnitude = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for isa in isas() {
            let got = matmul(&matrix, isa, &x, m);
            for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * magnitude,
                    "{kind:?} {isa:?} element {k}: {g} against candle's {w}"
                );
            }
        }
    }
}

#[test]
fn quantized_is_within_activation_quantization_of_the_dequantized_product() {
    let (rows, cols, m) = (64, 768, 3);
    let x = Rng(23).values(m * cols);
    for (kind, dtype) in QUANT {
        let (_, matrix) = quantized(dtype, rows, cols, 29);
        let (want, scale) = reference(&matrix, &x, m);
        for isa in isas() {
            let got = matmul(&matrix, isa, &x, m);
            for (k, (&g, (&w, &s))) in got.iter().zip(want.iter().zip(&scale)).enumerate() {
                // Rounding each activation to 8 bits moves it by at most half a step, 1/254 of
                // its block's largest value: at most ~1 % of Σ|x·w| with these outliers.
                assert!(
                    (f64::from(g) - w).abs() <= 0.02 * s,
                    "{kind:?} {isa:?} element {k}: {g} against {w}"
                );
            }
        }
    }
}

#[test]
fn simd_agrees_with_scalar() {
    if Isa::detected() == Isa::Scalar {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    let (rows, cols, m) = (80, 1024, 4);
    let x = Rng(31).values(m * cols);
    for matrix in every_kind(rows, cols) {
        let scalar = matmul(&matrix, Isa::Scalar, &x, m);
        let simd = matmul(&matrix, Isa::Avx2, &x, m);
        let magnitude = scalar.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (k, (&s, &v)) in scalar.iter().zip(&simd).enumerate() {
            assert!((s - v).abs() <= 1e-5 * magnitude, "{} element {k}: scalar {s}, AVX2 {v}", matrix.kind());
        }
    }
}

/// One dense pair's sum in the order `dense` documents for `isa`, by fused multiply-adds: eight
/// lanes (AVX2), or sixteen over pairs of steps folded to eight (AVX-512) then an odd last step;
/// the AVX2 `hsum` tree; the columns left over one at a time, multiplied then added.
fn in_order(isa: Isa, w: &[f32], x: &[f32]) -> f32 {
    let (steps, cols) = (x.len() / 8, x.len());
    let mut lanes = [0f32; 8];
    let mut c = 0;
    if isa == Isa::Avx512 {
        let mut wide = [0f32; 16];
        while c + 2 <= steps {
            for k in 0..16 {
                wide[k] = w[8 * c + k].mul_add(x[8 * c + k], wide[k]);
            }
            c += 2;
        }
        for k in 0..8 {
            lanes[k] = wide[k] + wide[k + 8];
        }
    }
    for c in c..steps {
        for k in 0..8 {
            lanes[k] = w[8 * c + k].mul_add(x[8 * c + k], lanes[k]);
        }
    }
    let halves: Vec<f32> = (0..4).map(|k| lanes[k] + lanes[k + 4]).collect();
    let mut sum = (halves[0] + halves[2]) + (halves[1] + halves[3]);
    for k in 8 * steps..cols {
        sum += w[k] * x[k];
    }
    sum
}

#[test]
fn dense_products_follow_their_instruction_sets_order_bitwise() {
    let simd: Vec<Isa> = isas().into_iter().filter(|&isa| isa != Isa::Scalar).collect();
    if simd.is_empty() {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    let mut rng = Rng(71);
    // Whole steps in pairs (1024 columns), an odd last step (1000), columns left over after
    // either (1029, 203); a last panel filled up with zero rows (83, 6 rows); batches that take
    // the wide kernels (6, 8, 16), the tiles of three (3, 9, 13), the one-row kernel and mixes.
    for (rows, cols) in [(83, 1024), (21, 1000), (83, 1029), (6, 203)] {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let matrix = dense(dtype, rows, cols, 13);
            let weights: Vec<Vec<f32>> = (0..rows)
                .map(|r| {
                    let mut row = vec![0f32; cols];
                    matrix.row_into(r, &mut row);
                    row
                })
                .collect();
            for &isa in &simd {
                for m in [1, 2, 3, 6, 8, 9, 13, 16, 21] {
                    let x = rng.values(m * cols);
                    let y = matmul(&matrix, isa, &x, m);
                    for (k, &got) in y.iter().enumerate() {
                        let (i, r) = (k / rows, k % rows);
                        let want = in_order(isa, &weights[r], &x[i * cols..(i + 1) * cols]);
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{dtype:?} {rows}x{cols} on {isa:?}, m = {m}, row {r} of activation row {i}: \
                             {got} against {want} in the documented order"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn avx512_gives_the_avx2_bits_for_every_quantized_type_and_batch() {
    if Isa::detected() != Isa::Avx512 {
        eprintln!("skipped: this CPU has no AVX-512 F, BW, DQ, VL and VNNI");
        return;
    }
    let mut rng = Rng(67);
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    // Batches that take the wide kernels (8, 16), the rest after them (9, 13, 21) and none (1, 3).
    // (Dense products have an order of their own on AVX-512: the test above.)
    let matrices: Vec<Matrix> = QUANT.iter().map(|&(_, dtype)| quantized(dtype, 83, 1024, 5).1).collect();
    for matrix in &matrices {
        for m in [1, 3, 8, 9, 13, 16, 21] {
            let x = rng.values(m * matrix.cols());
            assert_eq!(
                bits(matmul(matrix, Isa::Avx512, &x, m)),
                bits(matmul(matrix, Isa::Avx2, &x, m)),
                "{} {}x{} m = {m}",
                matrix.kind(),
                matrix.rows(),
                matrix.cols()
            );
        }
    }
    // Q8_0 blocks holding -128 (a file may: ggml's quantizer never writes it), the one weight
    // byte whose magnitude is 128, against activations of either sign.
    let (rows, cols) = (16, 256);
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / 32 {
        bytes.extend(half::f16::from_f32(0.01).to_le_bytes());
        bytes.extend((0..32).map(|k| if k % 3 == 0 { 0x80 } else { rng.below(256) as u8 }));
    }
    let matrix =
        Matrix::new(rows, cols, Storage::Quant { kind: QuantKind::Q8_0, bytes: bytes.into() }).unwrap();
    for m in [1, 8] {
        let x = rng.values(m * cols);
        assert_eq!(bits(matmul(&matrix, Isa::Avx512, &x, m)), bits(matmul(&matrix, Isa::Avx2, &x, m)));
    }
}

#[test]
fn panels_of_the_blocks_of_32_give_the_portable_bits_on_every_instruction_set() {
    let mut rng = Rng(71);
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    // 83 rows: five whole panels and one of three. Random bytes beside the quantizer's blocks:
    // every pattern of Q5_0's fifth bits, and Q8_0's -128 (a file may hold it: ggml's quantizer
    // never writes it), the one weight byte whose magnitude is 128.
    let (rows, cols) = (83, 1024);
    let mut matrices = Vec::new();
    let kinds = [
        (QuantKind::Q4_0, GgmlDType::Q4_0),
        (QuantKind::Q5_0, GgmlDType::Q5_0),
        (QuantKind::Q8_0, GgmlDType::Q8_0),
    ];
    for (kind, dtype) in kinds {
        let size = kind.block().1;
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 32 {
            bytes.extend(half::f16::from_f32(rng.value() / 64.0).to_le_bytes());
            bytes.extend(
                (2..size).map(|k| if k % 5 == 0 && size == 34 { 0x80 } else { rng.below(256) as u8 }),
            );
        }
        matrices.push(Matrix::new(rows, cols, Storage::Quant { kind, bytes: bytes.into() }).unwrap());
        matrices.push(quantized(dtype, rows, cols, 9).1);
    }
    for matrix in &matrices {
        for m in [1, 3, 4, 8, 13, 16, 21] {
            let x = rng.values(m * cols);
            let portable = bits(matmul(matrix, Isa::Scalar, &x, m));
            for isa in isas() {
                assert_eq!(bits(matmul(matrix, isa, &x, m)), portable, "{} {isa:?} m = {m}", matrix.kind());
            }
        }
    }
}

#[test]
fn every_row_is_bitwise_the_row_computed_alone() {
    // 1100 × 512 is past the serial threshold, so the products are split over threads.
    let (rows, cols) = (1100, 512);
    assert!(rows * cols >= super::SERIAL_BELOW);
    let mut rng = Rng(37);
    for matrix in every_kind(rows, cols) {
        for isa in isas() {
            let probe = rng.values(cols);
            let alone = matmul(&matrix, isa, &probe, 1);
            for m in [1, 2, 5, 8, 13, 32] {
                let mut x = rng.values(m * cols);
                let at = rng.below(m);
                x[at * cols..(at + 1) * cols].copy_from_slice(&probe);
                let y = matmul(&matrix, isa, &x, m);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&y[at * rows..(at + 1) * rows]),
                    bits(&alone),
                    "{} {isa:?} m = {m} at {at}",
                    matrix.kind()
                );
                // Every other row too, against itself alone.
                for i in 0..m {
                    let own = matmul(&matrix, isa, &x[i * cols..(i + 1) * cols], 1);
                    assert_eq!(
                        bits(&y[i * rows..(i + 1) * rows]),
                        bits(&own),
                        "{} {isa:?} m = {m} row {i}",
                        matrix.kind()
                    );
                }
            }
        }
    }
}

/// Weight row `r` of `matrix` as a matrix of its own, stored exactly as in `matrix`.
fn row_alone(matrix: &Matrix, r: usize) -> Matrix {
    let cols = matrix.cols();
    let storage = match &matrix.held {
        Held::F32(_) => {
            let mut row = vec![0f32; cols];
            matrix.row_into(r, &mut row);
            Storage::F32(row.into())
        }
        // f16 and bf16 widen exactly to f32 and back.
        Held::F16(_) => {
            let mut row = vec![0f32; cols];
            matrix.row_into(r, &mut row);
            Storage::F16(row.into_iter().map(f16::from_f32).collect::<Vec<_>>().into())
        }
        Held::Bf16(_) => {
            let mut row = vec![0f32; cols];
            matrix.row_into(r, &mut row);
            Storage::Bf16(row.into_iter().map(bf16::from_f32).collect::<Vec<_>>().into())
        }
        Held::Panels { kind, bytes: held } => {
            let mut bytes = vec![0u8; matrix.row_bytes()];
            super::qpanel::row_blocks(*kind, held, r, cols, &mut bytes);
            Storage::Quant { kind: *kind, bytes: bytes.into() }
        }
        Held::Quant { kind, bytes } => {
            let size = matrix.row_bytes();
            Storage::Quant { kind: *kind, bytes: bytes[r * size..(r + 1) * size].to_vec().into() }
        }
    };
    Matrix::new(1, cols, storage).unwrap()
}

#[test]
fn every_output_is_bitwise_its_weight_row_multiplied_alone() {
    // Odd row counts, so spans end in a row without a partner; widths with a scalar tail, one
    // of them over several column blocks of a tile; one size inline and one split over threads,
    // so spans start and stop at chunk edges.
    for (rows, cols) in [(7, 203), (9, 1291), (37, 256), (1101, 512)] {
        let mut rng = Rng(59);
        let mut kinds: Vec<Matrix> =
            [DType::F32, DType::F16, DType::BF16].iter().map(|&d| dense(d, rows, cols, 61)).collect();
        if cols.is_multiple_of(256) {
            kinds.extend(QUANT.iter().map(|&(_, dtype)| quantized(dtype, rows, cols, 67).1));
        }
        for matrix in kinds {
            for isa in isas() {
                for m in [1, 3, 4, 9, 12] {
                    let x = rng.values(m * cols);
                    let y = matmul(&matrix, isa, &x, m);
                    for r in (0..rows).step_by(if rows > 100 { 37 } else { 1 }) {
                        let alone = matmul(&row_alone(&matrix, r), isa, &x, m);
                        for i in 0..m {
                            assert_eq!(
                                y[i * rows + r].to_bits(),
                                alone[i].to_bits(),
                                "{} {isa:?} {rows}×{cols} m = {m}: row {r} of activation row {i}",
                                matrix.kind()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn forward_maps_the_last_dimension_and_widens_the_input() {
    let matrix = dense(DType::F16, 24, 64, 41);
    let x = Tensor::from_vec(Rng(43).values(2 * 3 * 64), (2, 3, 64), &Device::Cpu).unwrap();
    let y = matrix.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
    assert_eq!((y.dims(), y.dtype()), (&[2, 3, 24][..], DType::F32));
    let widened = x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    let want = matmul(&matrix, Isa::detected(), &widened.flatten_all().unwrap().to_vec1::<f32>().unwrap(), 6);
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    // A transposed (non-contiguous) input is made contiguous first.
    let xt = Tensor::from_vec(Rng(47).values(64 * 5), (64, 5), &Device::Cpu).unwrap().t().unwrap();
    let y = matrix.forward(&xt).unwrap();
    let want = matmul(
        &matrix,
        Isa::detected(),
        &xt.contiguous().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        5,
    );
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    let err = matrix.forward(&Tensor::zeros((2, 63), DType::F32, &Device::Cpu).unwrap()).unwrap_err();
    assert!(err.to_string().contains("64 columns"), "{err}");
}

#[test]
fn a_gguf_dense_tensor_keeps_its_type() {
    let w = Tensor::from_vec(Rng(53).values(8 * 32), (8, 32), &Device::Cpu).unwrap();
    for (dtype, name) in [(GgmlDType::F32, "f32"), (GgmlDType::F16, "f16"), (GgmlDType::BF16, "bf16")] {
        let q = QTensor::quantize(&w, dtype).unwrap();
        let matrix = Matrix::from_qtensor(&q).unwrap();
        assert_eq!(matrix.kind(), name);
        let got = matrix.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn permuting_rows_moves_whole_rows_in_every_stored_type() {
    let order: Vec<usize> = (0..64).rev().collect();
    for matrix in every_kind(64, 256) {
        let mut permuted = matrix.clone();
        permuted.permute_rows(&order);
        let (mut a, mut b) = (vec![0f32; 256], vec![0f32; 256]);
        for (i, &r) in order.iter().enumerate() {
            permuted.row_into(i, &mut a);
            matrix.row_into(r, &mut b);
            assert_eq!(a, b, "{}: row {i}", matrix.kind());
        }
    }
}

#[test]
fn dense_weights_given_in_place_multiply_as_the_same_weights_owned_and_misaligned_bytes_are_refused() {
    let (rows, cols, m) = (7, 96, 3);
    let w: Vec<bf16> =
        (0..rows * cols).map(|i| bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0)).collect();
    let x: Vec<f32> = (0..m * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 16.0).collect();
    // The bytes as a file holds them, behind an owner that keeps them in place.
    let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
    let owner: std::sync::Arc<Vec<u8>> = std::sync::Arc::new(bytes);
    let borrowed = unsafe { crate::Values::<bf16>::borrowed(owner.clone(), &owner[..]) }.expect("aligned");
    assert!(borrowed.is_borrowed());
    let in_place = Matrix::new(rows, cols, Storage::Bf16(borrowed)).unwrap();
    let owned = Matrix::new(rows, cols, Storage::Bf16(w.into())).unwrap();
    let (mut a, mut b) = (vec![0f32; m * rows], vec![0f32; m * rows]);
    in_place.matmul(&x, m, &mut a);
    owned.matmul(&x, m, &mut b);
    assert_eq!(
        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert!(!in_place.in_place(), "dense values are copied into panels");
    drop(in_place);
    assert_eq!(std::sync::Arc::strong_count(&owner), 1, "the matrix let its owner go");
    // One byte in: no f32 starts there, and a length that is not whole values.
    assert!(unsafe { crate::Values::<f32>::borrowed(owner.clone(), &owner[1..9]) }.is_none());
    assert!(unsafe { crate::Values::<f32>::borrowed(owner.clone(), &owner[0..6]) }.is_none());
}

#[test]
fn a_ggml_matrix_read_in_place_multiplies_as_the_same_tensor_read_out() {
    let (rows, cols, m) = (6, 256, 3);
    let x: Vec<f32> = (0..m * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 16.0).collect();
    for dtype in [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::Q4_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let (q, read_out) = quantized(dtype, rows, cols, 11);
        // The bytes in a mapped file, page-aligned as the mapping starts.
        let data = q.data().unwrap().to_vec();
        let owner = std::sync::Arc::new(mapped_file(&data));
        let in_place = unsafe { Matrix::from_ggml_mapped(dtype, rows, cols, owner.clone(), &owner[..]) }
            .expect("a type kept as stored, aligned")
            .unwrap();
        assert_eq!(in_place.kind(), read_out.kind(), "{dtype:?}");
        // Quantized blocks are read in place; dense values and the blocks of 32 without an offset
        // are copied into panels at once.
        let dense = matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::Q4_0 | GgmlDType::Q8_0);
        assert_eq!(in_place.in_place(), !dense, "{dtype:?}");
        let held = if dense { 1 } else { 2 };
        assert_eq!(std::sync::Arc::strong_count(&owner), held, "{dtype:?}: the owner held while needed");
        let copied = Matrix::from_ggml_bytes(dtype, rows, cols, &data).expect("kept").unwrap();
        for isa in isas() {
            let want = matmul(&read_out, isa, &x, m);
            assert_eq!(matmul(&in_place, isa, &x, m), want, "{dtype:?} {isa:?}: in place");
            assert_eq!(matmul(&copied, isa, &x, m), want, "{dtype:?} {isa:?}: copied out");
        }
        drop(in_place);
        assert_eq!(std::sync::Arc::strong_count(&owner), 1, "{dtype:?}: the matrix let its owner go");
    }
    // A type the kernels dequantize is not taken in place, and neither are misaligned f32s.
    assert!(!Matrix::keeps(GgmlDType::Q8_1));
    let owner = std::sync::Arc::new(mapped_file(&[0u8; 32]));
    assert!(unsafe { Matrix::from_ggml_mapped(GgmlDType::F32, 1, 2, owner.clone(), &owner[1..9]) }.is_none());
}

/// `bytes` written to a temporary file and mapped read-only, as a model file is.
fn mapped_file(bytes: &[u8]) -> memmap2::Mmap {
    use std::io::Write;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    // SAFETY: nothing writes the file while it is mapped.
    unsafe { memmap2::Mmap::map(&file) }.unwrap()
}

/// Causal attention in f64, the textbook way: every query row over the keys it sees.
fn attention_reference(
    a: super::Attention,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (b, heads, kv_heads, len, total, d): (usize, usize, usize, usize, usize, usize),
) -> Vec<f64> {
    let mut out = vec![0f64; b * len * heads * d];
    let past = total - len;
    for batch in 0..b {
        for h in 0..heads {
            let kv = (batch * kv_heads + h / (heads / kv_heads)) * total;
            for i in 0..len {
                let end = past + i + 1;
                let start = a.window.map_or(0, |w| end.saturating_sub(w));
                let qi = &q[((batch * heads + h) * len + i) * d..][..d];
                let scores: Vec<f64> = (start..end)
                    .map(|j| {
                        let s = qi
                            .iter()
                            .zip(&k[(kv + j) * d..][..d])
                            .map(|(&x, &y)| x as f64 * y as f64)
                            .sum::<f64>()
                            * a.scale as f64;
                        a.softcap.map_or(s, |c| c as f64 * (s / c as f64).tanh())
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let o = &mut out[((batch * len + i) * heads + h) * d..][..d];
                for (j, s) in (start..end).zip(&scores) {
                    for (o, &x) in o.iter_mut().zip(&v[(kv + j) * d..][..d]) {
                        *o += (s - max).exp() / sum * x as f64;
                    }
                }
            }
        }
    }
    out
}

fn attention_of(a: super::Attention, q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f32> {
    a.forward(q, k, v).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// The attention kernel matches the f64 reference (grouped heads, windows, soft-capping, a
/// cached past), and each query row's result is the same bits whether the call holds the whole
/// prompt, only the rows after a prefix, or the row inside a batch of sequences; on the serial
/// and the threaded path alike.
#[test]
fn attention_matches_an_f64_reference_and_a_rows_bits_do_not_depend_on_the_call() {
    let dev = Device::Cpu;
    let mut rng = Rng(0x5eed_a77e);
    let plain = super::Attention { scale: 0.125, softcap: None, window: None };
    let cases = [
        (plain, 1, 4, 2, 9, 9, 64),
        (plain, 2, 6, 3, 5, 12, 40),
        (super::Attention { window: Some(4), ..plain }, 1, 2, 1, 11, 11, 16),
        (super::Attention { softcap: Some(2.0), ..plain }, 1, 4, 4, 7, 10, 36),
        // Large enough for rayon's pool.
        (plain, 2, 8, 2, 48, 48, 64),
    ];
    for (a, b, heads, kv_heads, len, total, d) in cases {
        let (qv, kv, vv) = (
            rng.values(b * heads * len * d),
            rng.values(b * kv_heads * total * d),
            rng.values(b * kv_heads * total * d),
        );
        let q = Tensor::from_vec(qv.clone(), (b, heads, len, d), &dev).unwrap();
        let k = Tensor::from_vec(kv.clone(), (b, kv_heads, total, d), &dev).unwrap();
        let v = Tensor::from_vec(vv.clone(), (b, kv_heads, total, d), &dev).unwrap();
        let got = attention_of(a, &q, &k, &v);
        let want = attention_reference(a, (&qv, &kv, &vv), (b, heads, kv_heads, len, total, d));
        let worst = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(worst < 2e-5, "{a:?} b{b} h{heads}/{kv_heads} len {len} of {total}: off by {worst}");

        // Keys and values read in place: views of a cache with room for 5 more positions (filled
        // with other values), and of a position-major buffer; the same bits as contiguous ones.
        let mut roomy = |t: &Tensor| {
            let more = Tensor::from_vec(rng.values(b * kv_heads * 5 * d), (b, kv_heads, 5, d), &dev).unwrap();
            Tensor::cat(&[t, &more], 2).unwrap().narrow(2, 0, total).unwrap()
        };
        let (kr, vr) = (roomy(&k), roomy(&v));
        assert!(b * kv_heads == 1 || !kr.is_contiguous());
        assert_eq!(attention_of(a, &q, &kr, &vr), got, "{a:?}: a cache's view");
        let by_position =
            |t: &Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
        assert_eq!(attention_of(a, &q, &by_position(&k), &by_position(&v)), got, "{a:?}: position-major");

        let row = |out: &[f32], batch: usize, len: usize, i: usize| {
            out[(batch * len + i) * heads * d..][..heads * d].to_vec()
        };
        // Only the rows after a prefix of `p` queries (the keys all there, as a cache holds them).
        for p in [1, len / 2, len - 1] {
            let tail = attention_of(a, &q.narrow(2, p, len - p).unwrap(), &k, &v);
            for batch in 0..b {
                for i in p..len {
                    assert_eq!(
                        row(&tail, batch, len - p, i - p),
                        row(&got, batch, len, i),
                        "{a:?}: row {i} after {p}"
                    );
                }
            }
        }
        // A sequence of the batch alone.
        let last = b - 1;
        let one = |t: &Tensor| t.narrow(0, last, 1).unwrap();
        let alone = attention_of(a, &one(&q), &one(&k), &one(&v));
        for i in 0..len {
            assert_eq!(row(&alone, 0, len, i), row(&got, last, len, i), "{a:?}: row {i} alone");
        }
    }
    // Shapes that do not fit are refused, not read out of bounds.
    let q = Tensor::zeros((1, 3, 2, 8), DType::F32, &dev).unwrap();
    let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
    let e = plain.forward(&q, &k, &k).unwrap_err().to_string();
    assert!(e.contains("do not fit together"), "{e}");
    // A layout that reaches past its storage is refused (as apply_op3 would hand it over).
    let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
    let q = Tensor::zeros((1, 2, 1, 8), DType::F32, &dev).unwrap();
    let short = candle_core::Layout::new((1, 2, 5, 8).into(), vec![80, 40, 8, 1], 0);
    let (ks, kl) = k.storage_and_layout();
    let qc = q.storage_and_layout();
    let (candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(qs)) = (&*ks, &*qc.0) else {
        unreachable!()
    };
    let e = candle_core::CustomOp3::cpu_fwd(&plain, qs, qc.1, ks, &short, ks, kl).unwrap_err().to_string();
    assert!(e.contains("do not fit together") || e.contains("reaches past"), "{e}");
    let e =
        candle_core::CustomOp3::cpu_fwd(&plain, qs, qc.1, ks, &short, ks, &short).unwrap_err().to_string();
    assert!(e.contains("reaches past its storage"), "{e}");
}

/// Several sequences in one call of `forward_sequences` (different pasts and lengths, grouped
/// heads, a window, a view of a cache with room) give every row the bits its sequence gets from
/// `forward` alone; on the serial and the threaded path. Rows that do not cover `q` in order, and
/// keys that do not fit, are refused.
#[test]
fn several_sequences_in_one_call_give_each_row_the_bits_it_gets_alone() {
    let dev = Device::Cpu;
    let mut rng = Rng(0x5e9_5e9);
    let plain = super::Attention { scale: 0.125, softcap: None, window: None };
    // (heads, kv_heads, d, each sequence's (new rows, past)): small (serial) and large (the pool).
    let cases = [
        (plain, 4, 2, 16, &[(1, 5), (3, 0), (1, 0), (2, 9)][..]),
        (super::Attention { window: Some(3), ..plain }, 2, 1, 8, &[(4, 2), (1, 7)][..]),
        (plain, 8, 2, 64, &[(1, 70), (24, 0), (1, 33), (16, 16)][..]),
    ];
    for (a, heads, kv_heads, d, shape) in cases {
        let mut qs = Vec::new();
        let mut kvs = Vec::new();
        for (i, &(len, past)) in shape.iter().enumerate() {
            let total = len + past;
            qs.push(Tensor::from_vec(rng.values(heads * len * d), (1, heads, len, d), &dev).unwrap());
            let mut kv =
                || Tensor::from_vec(rng.values(kv_heads * total * d), (1, kv_heads, total, d), &dev).unwrap();
            let (k, v) = (kv(), kv());
            // Every other sequence's keys and values a view of a cache with room for 4 more.
            let (k, v) = if i % 2 == 1 {
                let mut roomy = |t: &Tensor| {
                    let more =
                        Tensor::from_vec(rng.values(kv_heads * 4 * d), (1, kv_heads, 4, d), &dev).unwrap();
                    Tensor::cat(&[t, &more], 2).unwrap().narrow(2, 0, total).unwrap()
                };
                (roomy(&k), roomy(&v))
            } else {
                (k, v)
            };
            kvs.push((k, v));
        }
        let q = Tensor::cat(&qs, 2).unwrap();
        let mut start = 0;
        let sequences: Vec<_> = shape
            .iter()
            .zip(&kvs)
            .map(|(&(len, _), (k, v))| {
                start += len;
                super::Sequence { rows: start - len..start, k, v }
            })
            .collect();
        let all: Vec<f32> =
            a.forward_sequences(&q, &sequences).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut at = 0;
        for (s, (q, (k, v))) in qs.iter().zip(&kvs).enumerate() {
            let alone = attention_of(a, q, k, v);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&all[at..at + alone.len()]), bits(&alone), "{a:?}: sequence {s} of {shape:?}");
            at += alone.len();
        }
        assert_eq!(at, all.len());
    }
    let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
    let q = Tensor::zeros((1, 2, 3, 8), DType::F32, &dev).unwrap();
    let seq = |rows: std::ops::Range<usize>| super::Sequence { rows, k: &k, v: &k };
    let e = plain.forward_sequences(&q, &[seq(0..1), seq(2..3)]).unwrap_err().to_string();
    assert!(e.contains("do not follow row 1"), "{e}");
    let e = plain.forward_sequences(&q, &[seq(0..2)]).unwrap_err().to_string();
    assert!(e.contains("hold 2 of q's 3 rows"), "{e}");
    let wide = Tensor::zeros((1, 2, 4, 16), DType::F32, &dev).unwrap();
    let e = plain
        .forward_sequences(&q, &[seq(0..2), super::Sequence { rows: 2..3, k: &wide, v: &wide }])
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not fit together"), "{e}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_word_wise_k_quant_scales_are_the_byte_wise_ones() {
    // Every byte value in every one of the 12 places, over many random blocks.
    let mut rng = Rng(53);
    for round in 0..4096 {
        let mut s: [u8; 12] = std::array::from_fn(|_| rng.below(256) as u8);
        s[round % 12] = (round / 12 % 256) as u8;
        let (scales, mins) = super::avx2::k4_scale_words(&s);
        let (sc, mn) = super::quant::k4_scales(&s);
        assert_eq!((scales.to_le_bytes(), mins.to_le_bytes()), (sc, mn), "scale bytes {s:?}");
    }
}

#[test]
fn the_simd_q2_k_and_q3_k_products_are_the_portable_ones_bit_for_bit() {
    if Isa::detected() == Isa::Scalar {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    // Blocks of random bytes (every scale, min, sign and high-bit pattern), their f16 factors
    // set to finite values; and blocks quantized from values.
    let (rows, cols) = (40, 768);
    let mut rng = Rng(59);
    // (The other K-quants' SIMD kernels sum in vector lanes: `simd_agrees_with_scalar`.)
    for kind in [QuantKind::Q2K, QuantKind::Q3K] {
        let (values, size) = kind.block();
        let mut bytes: Vec<u8> = (0..rows * cols / values * size).map(|_| rng.below(256) as u8).collect();
        let factors: &[usize] = if kind == QuantKind::Q2K { &[80, 82] } else { &[108] };
        for block in bytes.chunks_exact_mut(size) {
            for &at in factors {
                let f = half::f16::from_f32(rng.below(1000) as f32 / 997.0 - 0.5);
                block[at..at + 2].copy_from_slice(&f.to_le_bytes());
            }
        }
        let random = Matrix::new(rows, cols, Storage::Quant { kind, bytes: bytes.into() }).unwrap();
        let dtype = QUANT.iter().find(|(k, _)| *k == kind).unwrap().1;
        for matrix in [random, quantized(dtype, rows, cols, 61).1] {
            for m in [1, 4, 5, 8, 13] {
                let x = rng.values(m * cols);
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                assert_eq!(
                    bits(matmul(&matrix, Isa::Avx2, &x, m)),
                    bits(matmul(&matrix, Isa::Scalar, &x, m)),
                    "{} m = {m}",
                    matrix.kind()
                );
            }
        }
    }
}

#[test]
fn activation_rounding_is_roundf_halves_and_neighbours_included() {
    let mut values =
        vec![0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 127.0, -128.0, 0.49999997];
    for k in -300i32..=300 {
        let half = k as f32 + 0.5;
        values.extend([
            half,
            half.next_up(),
            half.next_down(),
            k as f32,
            (k as f32).next_up(),
            (k as f32).next_down(),
        ]);
    }
    let mut rng = Rng(17);
    values.extend((0..100_000).map(|_| rng.value() * 40.0));
    for v in values {
        assert_eq!(super::quant::round_half_away(v), v.round() as i32, "{v:e}");
    }
    assert_eq!(super::quant::round_half_away(f32::NAN), 0);
}

/// Every scale, sum and byte of activation blocks, as bits.
fn activation_bits(a: &super::quant::Activations) -> Vec<u32> {
    use super::quant::Activations;
    let bytes = |qs: &[i8]| qs.iter().map(|&q| q as u8 as u32).collect::<Vec<_>>();
    match a {
        Activations::Q8_0(blocks) => {
            blocks.iter().flat_map(|b| [vec![b.d.to_bits()], bytes(&b.qs)].concat()).collect()
        }
        Activations::Q8_1(blocks) => {
            blocks.iter().flat_map(|b| [vec![b.d.to_bits(), b.s.to_bits()], bytes(&b.qs)].concat()).collect()
        }
        Activations::Q8K(blocks) => blocks
            .iter()
            .flat_map(|b| {
                let sums = b.bsums.iter().map(|&s| s as u16 as u32).collect();
                [vec![b.d.to_bits()], bytes(&b.qs), sums].concat()
            })
            .collect(),
    }
}

#[test]
fn simd_activation_blocks_are_the_portable_ones_bit_for_bit() {
    use super::quant::Activations;
    if Isa::detected() == Isa::Scalar {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    const N: usize = 256;
    let mut rng = Rng(41);
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for scale in [1e-30f32, 1e-3, 1.0, 1e3, 1e30, 3e37] {
        rows.push(rng.values(N).into_iter().map(|v| v * scale).collect());
    }
    // Exact halves: a largest magnitude of 127 makes the inverse scale ±1 in every block type.
    let halves = |first: f32| -> Vec<f32> {
        (0..N)
            .map(|k| match k % 32 {
                0 => first,
                j => {
                    let half = j as f32 * 3.97 - 63.5;
                    [half.round() + 0.5, (half.round() + 0.5).next_up(), (half.round() + 0.5).next_down()]
                        [k % 3]
                }
            })
            .collect()
    };
    rows.push(halves(127.0));
    rows.push(halves(-127.0));
    // Zeros of both signs; one value alone; two equal magnitudes of opposite signs (the first
    // decides a K block's sign); values too small for the inverse scale to be finite; values
    // that are not finite.
    let with = |values: &[(usize, f32)]| {
        let mut row = vec![0f32; N];
        values.iter().for_each(|&(k, v)| row[k] = v);
        row
    };
    rows.push(vec![0.0; N]);
    rows.push(vec![-0.0; N]);
    rows.push(with(&[(77, -2.5)]));
    rows.push(with(&[(3, -3.0), (40, 3.0), (200, 1.5)]));
    rows.push(with(&[(3, 3.0), (40, -3.0), (200, 1.5)]));
    rows.push(with(&[(5, 1e-38), (6, -2e-39), (100, 1e-45)]));
    rows.push(with(&[(5, f32::NAN), (6, 1.0), (64, f32::INFINITY), (200, f32::NEG_INFINITY)]));
    let kinds = [QuantKind::Q8_0, QuantKind::Q5_1, QuantKind::Q4K];
    for isa in isas().into_iter().filter(|&isa| isa != Isa::Scalar) {
        for kind in kinds {
            for (r, row) in rows.iter().enumerate() {
                let want = activation_bits(&Activations::quantize(kind, Isa::Scalar, row, 1, N));
                let got = activation_bits(&Activations::quantize(kind, isa, row, 1, N));
                assert_eq!(got, want, "{kind:?} on {isa:?}, row {r}: {row:?}");
            }
            // A batch large enough to be quantized on the pool, in tasks of whole blocks.
            let (m, cols) = (90, 1024);
            let x = Rng(43).values(m * cols);
            let want: Vec<u32> = x
                .chunks_exact(cols)
                .flat_map(|row| activation_bits(&Activations::quantize(kind, Isa::Scalar, row, 1, cols)))
                .collect();
            let got = activation_bits(&Activations::quantize(kind, isa, &x, m, cols));
            assert!(got == want, "{kind:?} on {isa:?}: a batch of {m} rows differs from its rows alone");
        }
    }
}

#[test]
fn one_thread_takes_a_large_matrix_in_chunks_and_gives_the_pools_bits() {
    // 1100 rows of 512 f32 are 2.2 MB, many cached chunks; 13 activation rows go in groups.
    let (rows, cols, m) = (1100, 512, 13);
    let x = Rng(71).values(m * cols);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for matrix in every_kind(rows, cols) {
        for isa in isas() {
            let pooled = matmul(&matrix, isa, &x, m);
            let alone = one.install(|| matmul(&matrix, isa, &x, m));
            assert!(
                pooled.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {isa:?}: one thread differs from the pool",
                matrix.kind()
            );
            for i in [0, m - 1] {
                let own = matmul(&matrix, isa, &x[i * cols..(i + 1) * cols], 1);
                assert_eq!(alone[i * rows..(i + 1) * rows], own[..], "{} {isa:?} row {i}", matrix.kind());
            }
        }
    }
}

#[test]
fn on_pool_runs_on_a_worker_gives_the_callers_bits_and_passes_a_panic_on() {
    // Test threads are not the pool's: run directly, the index would be `None`.
    assert_eq!(rayon::current_thread_index(), None);
    let index = super::on_pool(rayon::current_thread_index);
    assert!(index.is_some(), "on_pool ran its closure off the pool");
    // Nested, it runs in place on the worker it is on.
    let (outer, inner) =
        super::on_pool(|| (rayon::current_thread_index(), super::on_pool(rayon::current_thread_index)));
    assert_eq!(outer, inner);
    // 1100 rows of 512 are past the serial threshold: the products split over the pool.
    let (rows, cols) = (1100, 512);
    let x = Rng(72).values(5 * cols);
    for matrix in every_kind(rows, cols) {
        for m in [1, 5] {
            let outside = matmul(&matrix, Isa::detected(), &x[..m * cols], m);
            let inside = super::on_pool(|| matmul(&matrix, Isa::detected(), &x[..m * cols], m));
            assert!(
                outside.iter().zip(&inside).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} m = {m}: on the pool differs",
                matrix.kind()
            );
        }
    }
    let caught = std::panic::catch_unwind(|| super::on_pool(|| panic!("planted in the pool")));
    let message = caught.expect_err("the panic was lost").downcast::<&str>().map(|m| *m);
    assert_eq!(message.ok(), Some("planted in the pool"));
}

#[test]
fn panels_hold_every_row_as_given_and_multiply_as_the_rows_do() {
    // Shapes with a last panel filled up (rows not a multiple of four) and columns left over
    // after the steps of eight; the product is checked against the rows as given, not as read
    // back, so a misplaced value fails it even where reading back would agree with it.
    for (rows, cols) in [(1, 1), (1, 8), (5, 13), (4, 8), (9, 203), (67, 96)] {
        let given = Rng(71).values(rows * cols);
        let matrix = Matrix::new(rows, cols, Storage::F32(given.clone().into())).unwrap();
        assert_eq!(matrix.bytes(), 4 * rows.next_multiple_of(4) * cols, "{rows}×{cols}");
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            matrix.row_into(r, &mut row);
            assert_eq!(row, given[r * cols..(r + 1) * cols], "{rows}×{cols} row {r}");
        }
        let m = 5;
        let x = Rng(73).values(m * cols);
        for isa in isas() {
            let y = matmul(&matrix, isa, &x, m);
            for i in 0..m {
                for r in 0..rows {
                    let terms = given[r * cols..(r + 1) * cols].iter().zip(&x[i * cols..(i + 1) * cols]);
                    let want: f64 = terms.clone().map(|(&w, &x)| f64::from(w) * f64::from(x)).sum();
                    let scale: f64 = terms.map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs()).sum();
                    let got = f64::from(y[i * rows + r]);
                    assert!(
                        (got - want).abs() <= 1e-5 * scale.max(1e-30),
                        "{isa:?} {rows}×{cols}: row {r} of activation row {i}: {got} against {want}"
                    );
                }
            }
        }
    }
}

/// The resident bytes of the mapping that starts at `at`, from /proc/self/smaps.
#[cfg(target_os = "linux")]
fn resident_kib(at: *const u8) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{:x}-", at as usize);
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
    assert!(lines.next().is_some(), "no mapping at {start}");
    let rss = lines.find(|l| l.starts_with("Rss:")).expect("an Rss line");
    rss.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn a_mapped_files_pages_are_given_back_once_copied_into_panels_and_borrowed_ones_are_kept() {
    use std::io::Write;
    let (rows, cols, m) = (512, 1024, 3);
    let values = Rng(79).values(rows * cols);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let x = Rng(83).values(m * cols);
    let want = matmul(&Matrix::new(rows, cols, Storage::F32(values.into())).unwrap(), Isa::detected(), &x, m);
    for given_back in [true, false] {
        // SAFETY: the file is not written while it is mapped.
        let map = std::sync::Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
        let at = map.as_ptr();
        let touched: u64 = map.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        std::hint::black_box(touched);
        assert!(resident_kib(at) >= 2048, "the whole 2 MiB mapping is resident once read");
        let owner: std::sync::Arc<dyn std::any::Any + Send + Sync> = map.clone();
        // SAFETY: a read-only mapping of a file nobody writes while it is mapped.
        let values = unsafe {
            if given_back {
                crate::Values::<f32>::mapped(owner, &map[..])
            } else {
                crate::Values::<f32>::borrowed(owner, &map[..])
            }
        }
        .expect("aligned");
        let matrix = Matrix::new(rows, cols, Storage::F32(values)).unwrap();
        let resident = resident_kib(at);
        if given_back {
            assert!(resident <= 64, "{resident} KiB of the mapping still resident after the copy");
        } else {
            assert!(resident >= 2048, "a borrowed (not mapped) source is left alone: {resident} KiB");
        }
        // The pages given back read the same: the file's bytes.
        let again = Matrix::new(
            rows,
            cols,
            Storage::F32(
                map.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect::<Vec<_>>()
                    .into(),
            ),
        )
        .unwrap();
        for matrix in [&matrix, &again] {
            assert_eq!(matmul(matrix, Isa::detected(), &x, m), want, "given back: {given_back}");
        }
    }
}
