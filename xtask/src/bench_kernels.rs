//! `cargo xtask bench kernels [--lm-head] [--only qa-tiny|qwen-0.5b] [--runs N] [--rows M,…]
//! [--kinds TYPE,…]`: the harness's own CPU matrix kernels (`engine::kernels`) against candle's
//! path for the same weights, on the matrix shapes of a qa-tiny layer (products small enough to
//! run inline on the calling thread) and of a Qwen2.5-0.5B layer, by default for decode (m = 1),
//! an 8-token and a 64-token prefill (`--rows 16`: a batch of sixteen sequences' decode step).
//!
//! candle's path is what the models use without the kernels: `QMatMul` built from the GGUF
//! tensor for the quantized types and f32/f16 (which it dequantizes to f32 at load), and a plain
//! bf16 `matmul` for bf16. Both sides get the same random weights and activations and are timed
//! alternately, so a neighbour's load hits both; each figure is the median of `--runs` after
//! one warm-up. "GB/s" is the kernels' weight bytes read per second.
//!
//! On a CPU with AVX-512 the kernels' AVX2 path is timed too, alternately with the rest, and the
//! table gains its time and the ratio AVX2 ÷ AVX-512 (the same bits for quantized types; dense
//! products sum in an order of each instruction set's own).

use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use modelqa_kernels::{Isa, Matrix};

/// `bench kernels [--lm-head] [--only qa-tiny|qwen-0.5b] [--runs N] [--rows M,…] [--kinds TYPE,…]`.
#[derive(Debug, clap::Args)]
pub struct KernelsArgs {
    /// Also time the 151,936 × 896 output head (slow to build: about a minute per kind)
    #[arg(long)]
    pub lm_head: bool,
    /// Time one model's shapes only (default: both)
    #[arg(long, value_enum, value_name = "MODEL")]
    pub only: Option<Model>,
    /// Timed runs per figure, after one warm-up (each figure is their median)
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub runs: usize,
    /// Activation rows per product (m), comma-separated
    #[arg(long, value_name = "M,…", value_delimiter = ',', default_values_t = [1, 8, 64])]
    pub rows: Vec<usize>,
    /// Stored types timed, comma-separated GGUF names (f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_k, q5_k, q6_k) [default: all]
    #[arg(long, value_name = "TYPE,…", value_delimiter = ',')]
    pub kinds: Vec<String>,
}

/// The stored types compared, by their GGUF type (bf16 is a candle tensor on candle's side).
const KINDS: [GgmlDType; 10] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q4_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A stored type's GGUF name, as `--kinds` takes it.
fn kind_name(dtype: GgmlDType) -> String {
    match dtype {
        GgmlDType::Q4K => "q4_k".into(),
        GgmlDType::Q5K => "q5_k".into(),
        GgmlDType::Q6K => "q6_k".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The models whose layer shapes are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// The fixtures' qa-tiny models (hidden 256, intermediate 512, vocabulary 512)
    #[value(name = "qa-tiny")]
    QaTiny,
    /// Qwen2.5-0.5B (hidden 896, intermediate 4864)
    #[value(name = "qwen-0.5b")]
    Qwen05b,
}

/// (name, rows, cols) of a qa-tiny layer's matrices and its output head: every one of them under
/// the kernels' serial threshold, so the per-row cost of a product shows.
const TINY_SHAPES: [(&str, usize, usize); 5] = [
    ("tiny q/o", 256, 256),
    ("tiny k/v", 128, 256),
    ("tiny gate/up", 512, 256),
    ("tiny down", 256, 512),
    ("tiny lm_head", 512, 256),
];
/// (name, rows, cols) of a Qwen2.5-0.5B layer's matrices.
const SHAPES: [(&str, usize, usize); 4] =
    [("q/o", 896, 896), ("k/v", 128, 896), ("gate/up", 4864, 896), ("down", 896, 4864)];
const LM_HEAD: (&str, usize, usize) = ("lm_head", 151_936, 896);

pub fn run(args: &KernelsArgs) -> anyhow::Result<()> {
    let KernelsArgs { lm_head, only, runs, ref rows, ref kinds } = *args;
    let batches = rows;
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    anyhow::ensure!(!batches.is_empty() && !batches.contains(&0), "--rows are at least 1");
    if let Some(unknown) = kinds.iter().find(|k| !KINDS.iter().any(|&d| kind_name(d) == k.to_lowercase())) {
        anyhow::bail!(
            "--kinds: no stored type {unknown:?} (one of {})",
            KINDS.iter().map(|&d| kind_name(d)).collect::<Vec<_>>().join(", ")
        );
    }
    let timed: Vec<GgmlDType> = KINDS
        .into_iter()
        .filter(|&d| kinds.is_empty() || kinds.iter().any(|k| k.to_lowercase() == kind_name(d)))
        .collect();
    anyhow::ensure!(
        !(lm_head && only == Some(Model::QaTiny)),
        "--lm-head times Qwen2.5-0.5B's output head, which --only qa-tiny leaves out"
    );
    let mut shapes = Vec::new();
    if only != Some(Model::Qwen05b) {
        shapes.extend(TINY_SHAPES);
    }
    if only != Some(Model::QaTiny) {
        shapes.extend(SHAPES);
        if lm_head {
            shapes.push(LM_HEAD);
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_else(|_| "(no /proc/loadavg)".into());
    println!(
        "kernel benchmark: {} rayon threads, load average {}, {} build, median of {runs} after a warm-up",
        rayon::current_num_threads(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!();
    // On AVX-512, the AVX2 kernels beside them.
    let avx2 = (Isa::detected() == Isa::Avx512).then_some(Isa::Avx2);
    let (head, rule) = match avx2 {
        Some(_) => (" ours on AVX2 µs | AVX2 ÷ AVX-512 |", "---:|---:|"),
        None => ("", ""),
    };
    println!("| kind | shape | m | candle µs | ours µs | ratio | ours GB/s |{head}");
    println!("|---|---|---:|---:|---:|---:|---:|{rule}");
    let mut seed = 1u64;
    let (mut skipped, mut disagree) = (Vec::new(), Vec::new());
    for &(name, rows, cols) in &shapes {
        let weights = Tensor::from_vec(values(&mut seed, rows * cols), (rows, cols), &Device::Cpu)?;
        for &dtype in &timed {
            if !cols.is_multiple_of(dtype.block_size()) {
                skipped.push(format!("{dtype:?} {name}"));
                continue;
            }
            let (candle, ours) =
                prepare(&weights, dtype).with_context(|| format!("failed to prepare {dtype:?} {name}"))?;
            for &m in batches {
                let x = values(&mut seed, m * cols);
                let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu)?;
                let mut y = vec![0f32; m * rows];
                let (mut theirs, mut mine, mut narrow) = (Vec::new(), Vec::new(), Vec::new());
                for run in 0..=runs {
                    let t = Instant::now();
                    std::hint::black_box(candle.forward(&xt)?);
                    let candle_took = t.elapsed();
                    // Ours and AVX2 take turns at going first, out of candle's wake (which
                    // leaves the cache to the one that goes second).
                    let mut time = |isa: Option<Isa>| {
                        let t = Instant::now();
                        match isa {
                            Some(isa) => ours.matmul_on(isa, &x, m, &mut y),
                            None => ours.matmul(&x, m, &mut y),
                        }
                        std::hint::black_box(&y);
                        t.elapsed()
                    };
                    let (ours_took, narrow_took) = match avx2 {
                        Some(isa) if run % 2 == 1 => {
                            let narrow = time(Some(isa));
                            (time(None), narrow)
                        }
                        Some(isa) => {
                            let ours = time(None);
                            (ours, time(Some(isa)))
                        }
                        None => (time(None), Duration::ZERO),
                    };
                    if run > 0 {
                        theirs.push(candle_took);
                        mine.push(ours_took);
                        narrow.push(narrow_took);
                    }
                }
                let (theirs, mine, narrow) = (median(theirs), median(mine), median(narrow));
                // A time is only worth comparing when both sides computed the product.
                ours.matmul(&x, m, &mut y);
                let candle_y = candle.forward(&xt)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let scale = y.iter().fold(0f32, |a, v| a.max(v.abs())).max(f32::MIN_POSITIVE);
                let off = candle_y.iter().zip(&y).fold(0f32, |a, (c, o)| a.max((c - o).abs())) / scale;
                if off > 0.05 {
                    disagree.push(format!(
                        "{} {name} m = {m} (largest difference {:.0} % of the largest output)",
                        ours.kind(),
                        off * 100.0
                    ));
                }
                let isa_columns = match avx2 {
                    Some(_) => {
                        format!(" {:.1} | {:.2} |", micros(narrow), narrow.as_secs_f64() / mine.as_secs_f64())
                    }
                    None => String::new(),
                };
                println!(
                    "| {} | {name} {rows}×{cols} | {m} | {:.1} | {:.1} | {:.2} | {:.1} |{isa_columns}",
                    ours.kind(),
                    micros(theirs),
                    micros(mine),
                    theirs.as_secs_f64() / mine.as_secs_f64(),
                    ours.bytes() as f64 / mine.as_secs_f64() / 1e9
                );
            }
        }
    }
    println!();
    println!("ratio = candle ÷ ours (above 1: the kernels are faster)");
    if !disagree.is_empty() {
        println!(
            "candle's product differs from the kernels' by more than activation quantization explains, \
             so its time there is not a time for this product: {}",
            disagree.join("; ")
        );
    }
    if !skipped.is_empty() {
        // llama.cpp stores these matrices of a _K_M file as Q5_0/Q8_0 for the same reason.
        println!(
            "not measured, their rows are not whole K-quant super-blocks of 256: {}",
            skipped.join(", ")
        );
    }
    Ok(())
}

/// The weights in `dtype`, on candle's path and as a kernels matrix.
fn prepare(weights: &Tensor, dtype: GgmlDType) -> anyhow::Result<(Box<dyn Module>, Matrix)> {
    if dtype == GgmlDType::BF16 {
        let w = weights.to_dtype(DType::BF16)?;
        let ours = Matrix::from_tensor(&w)?;
        return Ok((Box::new(Bf16Matmul(w.t()?)), ours));
    }
    let q = QTensor::quantize(weights, dtype)?;
    let ours = Matrix::from_qtensor(&q)?;
    Ok((Box::new(QMatMul::from_qtensor(q)?), ours))
}

/// candle's bf16 matmul, as a bf16 model calls it: x in bf16 times the transposed weights.
struct Bf16Matmul(Tensor);

impl Module for Bf16Matmul {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.to_dtype(DType::BF16)?.matmul(&self.0)
    }
}

/// Uniform values in [-1, 1) from a seeded xorshift stream.
fn values(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Microseconds: a qa-tiny product takes a few.
fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
