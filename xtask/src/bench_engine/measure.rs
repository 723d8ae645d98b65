//! The measuring side of `bench engine` in this process: the hidden `bench engine-child`
//! (modelqa on one file, by the protocol every engine follows, printing one JSON line), and the
//! read-bandwidth probes (the CPU's, a CUDA device's) the decode ceilings are computed from.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use modelqa::support::engine::{Session, load_candle};
use modelqa::support::matrix::Backend;

/// `bench engine-child --file F --reps N --tokens N --ids A,B,…` (hidden): run by `bench engine`
/// in a child process of its own, so the load is cold in-process and the peak RSS is this
/// process's. Threads come from the environment the parent sets (`RAYON_NUM_THREADS`,
/// `CANDLE_NUM_THREADS`): candle reads them once, at first use.
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    #[arg(long)]
    pub file: PathBuf,
    #[arg(long)]
    pub reps: usize,
    #[arg(long)]
    pub tokens: usize,
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<u32>,
    /// Where the model runs: cpu, or gpu (CUDA device 0; an xtask built with `--features cuda`)
    #[arg(long, default_value = "cpu", value_parser = backend)]
    pub backend: Backend,
}

/// `--backend`'s parser: `cpu` or `gpu`.
pub fn backend(s: &str) -> Result<Backend, String> {
    Backend::parse(s).ok_or_else(|| format!("`{s}` is no backend: cpu or gpu"))
}

/// The first index of the largest value, as numpy's and torch's argmax choose.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if values[best].is_nan() || *v > values[best] {
            best = i;
        }
    }
    best as u32
}

pub fn child(args: &ChildArgs) -> anyhow::Result<()> {
    modelqa::support::engine::tune_allocator();
    let started = Instant::now();
    let mut session = load_candle(&args.file, args.backend)
        .with_context(|| format!("failed to load {}", args.file.display()))?;
    let load = started.elapsed().as_secs_f64();
    let version = session.info().engine.clone();
    let (mut prefill, mut decode, mut greedy, mut first_top) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Repetition 0 is the warm-up.
    for rep in 0..=args.reps {
        let started = Instant::now();
        let logits = session.feed(&args.ids, 0)?;
        let mut token = argmax(&logits);
        let after_prefill = Instant::now();
        if rep == 0 {
            // The warm-up's prefill logits, outside every timed repetition.
            first_top = top(&logits, 5);
        }
        greedy = vec![token];
        for step in 0..args.tokens {
            token = argmax(&session.feed(&[token], args.ids.len() + step)?);
            greedy.push(token);
        }
        let (p, d) = ((after_prefill - started).as_secs_f64(), after_prefill.elapsed().as_secs_f64());
        eprintln!("  modelqa rep {rep}/{}: prefill {p:.3} s, decode {d:.3} s", args.reps);
        if rep > 0 {
            prefill.push(p);
            decode.push(d);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "version": version,
            "load_s": load,
            "prefill_s": prefill,
            "decode_s": decode,
            "greedy": greedy,
            "first_top": first_top,
            "peak_rss_bytes": peak_rss(),
        })
    );
    Ok(())
}

/// The `k` likeliest ids of a logits row, best first (ties: the lower id), each with its logit,
/// as `peers.py` writes them.
pub fn top(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| !values[i].is_nan()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i as u32, values[i])).collect()
}

/// This process's peak resident set (VmHWM), bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim();
    kb.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The CPU's read-bandwidth probe: a 1 GiB buffer, made once and kept, that `threads` threads
/// sum. Decode streams the weights once per token, so its rate over the weight bytes is the
/// decode speed no engine on this machine can pass. A shared host's bandwidth drifts by a third
/// within minutes, so `bench engine` probes again right before every engine's run and holds each
/// row to its own probe.
pub struct ReadProbe {
    words: Vec<u64>,
    threads: usize,
}

impl ReadProbe {
    const BYTES: usize = 1 << 30;

    pub fn new(threads: usize) -> Self {
        ReadProbe { words: (0..(Self::BYTES / 8) as u64).collect(), threads: threads.max(1) }
    }

    /// Bytes per second: the median of 5 passes after one more.
    pub fn measure(&self) -> f64 {
        let chunk = self.words.len().div_ceil(self.threads);
        let mut rates = Vec::new();
        for _ in 0..6 {
            let started = Instant::now();
            let total = std::thread::scope(|s| {
                let parts: Vec<_> = self.words.chunks(chunk).map(|c| s.spawn(move || sum(c))).collect();
                parts.into_iter().map(|p| p.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
            });
            std::hint::black_box(total);
            rates.push(Self::BYTES as f64 / started.elapsed().as_secs_f64());
        }
        super::table::median(&rates[1..]).unwrap_or(0.0)
    }
}

/// Bytes per second CUDA device 0 reads summing the rows of a 4 GiB f32 matrix (262,144 rows
/// of 4,096, one thread block a row): the median of 5 passes after one more, each timed between
/// two synchronisations. The GPU's counterpart of [`ReadProbe`]: decode on the device
/// streams the weights from its memory once per token.
pub fn gpu_read_bandwidth() -> anyhow::Result<f64> {
    use candle_core::{DType, Device, Tensor};
    const ROWS: usize = 1 << 18;
    const COLS: usize = 4096;
    let device = Device::new_cuda(0).context("no CUDA device 0")?;
    let matrix = Tensor::ones((ROWS, COLS), DType::F32, &device)?;
    let mut rates = Vec::new();
    for _ in 0..6 {
        device.synchronize()?;
        let started = Instant::now();
        let sums = matrix.sum_keepdim(1)?;
        device.synchronize()?;
        rates.push((ROWS * COLS * 4) as f64 / started.elapsed().as_secs_f64());
        drop(sums);
    }
    Ok(super::table::median(&rates[1..]).unwrap_or(0.0))
}

/// Eight independent sums, so the loop is bound by loads rather than by one add chain.
fn sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let blocks = words.chunks_exact(8);
    let rest = blocks.remainder();
    for block in blocks {
        for (a, w) in acc.iter_mut().zip(block) {
            *a = a.wrapping_add(*w);
        }
    }
    acc.iter().chain(rest).fold(0, |a, b| a.wrapping_add(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_largest() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn the_backend_is_cpu_or_gpu_and_nothing_else() {
        assert_eq!(backend("cpu"), Ok(Backend::Cpu));
        assert_eq!(backend("gpu"), Ok(Backend::Gpu));
        assert_eq!(backend("cuda"), Err("`cuda` is no backend: cpu or gpu".into()));
    }

    #[test]
    fn the_sum_covers_every_word() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(sum(&words), 231);
    }
}
