//! `cargo xtask bench batch [--layers N] [--batch N] [--reps N] [--formats …]`: what generating
//! for many prompts at once buys on the embedded engine. On `bench engine`'s random
//! Qwen2.5-0.5B-shaped model (tied embeddings), per file: greedy decode of one prompt alone
//! (`Session::generate`, the path a trial takes one prompt at a time) against the same engine
//! generating for `--batch` prompts at once (`Session::generate_batch`, each sequence with its
//! own KV cache, the weights read once per step for all), interleaved repetition by repetition,
//! medians after a warm-up; with `--compete N`, the prompt alone again while N CPU-bound processes
//! compete for the machine (a fair share of the CPUs is what is left). Prints aggregate decode tokens/s and the ratio, and checks at every
//! repetition that the first prompt's answer in the batch is its answer alone (every prompt's is
//! checked by `tests/qa_tiny/batch.rs`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use modelqa::support::engine::{GenerateRequest, Generation, Session, load_candle, size_thread_pools};
use modelqa::support::matrix::{Backend, Format, Quantization};

use crate::bench_engine::files;

/// Tokens each sequence decodes per repetition (`bench engine`'s protocol).
const DECODE_TOKENS: u32 = 64;

/// `bench batch …`.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Decoder layers of the generated model (Qwen2.5-0.5B has 24)
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub layers: usize,
    /// Prompts generated for at once
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub batch: usize,
    /// Timed repetitions of each side, after one warm-up
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub reps: usize,
    /// Formats, comma-separated
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Choice::Bf16, Choice::Q8_0])]
    pub formats: Vec<Choice>,
    /// Also time the prompt alone while this many CPU-bound processes compete for the machine
    /// (interleaved with the idle runs), against its idle speed
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub compete: usize,
}

/// Processes that keep a CPU busy until dropped.
struct Busy(Vec<std::process::Child>);

impl Busy {
    fn start(n: usize) -> anyhow::Result<Busy> {
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            let child = std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .context("failed to start a competing process")?;
            children.push(child);
        }
        // Let the scheduler see them before anything is timed.
        std::thread::sleep(Duration::from_millis(200));
        Ok(Busy(children))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A file of the generated model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// The f32 safetensors
    F32,
    /// Its bf16 copy
    Bf16,
    /// This project's APR conversion
    Apr,
    /// This project's GGUF F16
    #[value(name = "gguf-f16")]
    GgufF16,
    /// This project's GGUF Q8_0
    #[value(name = "q8_0")]
    Q8_0,
    /// This project's GGUF Q4_K_M
    #[value(name = "q4_k_m")]
    Q4KM,
}

impl Choice {
    fn label(self) -> &'static str {
        match self {
            Choice::F32 => "safetensors f32",
            Choice::Bf16 => "safetensors bf16",
            Choice::Apr => "APR",
            Choice::GgufF16 => "GGUF F16",
            Choice::Q8_0 => "GGUF Q8_0",
            Choice::Q4KM => "GGUF Q4_K_M",
        }
    }
}

/// The prompts: distinct texts of a few dozen tokens each.
fn prompts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Request {i}: summarise the following notes in one line. The build on machine {} failed at step {} after {} minutes; the cache was cold and the network slow.",
                i * 7 + 3,
                i % 5 + 1,
                i * 3 + 11
            )
        })
        .collect()
}

/// Decode tokens/s of answers generated together: the tokens after each first token, over the
/// time from the first first-token to the last end.
fn aggregate(answers: &[Generation]) -> Option<f64> {
    let tokens: usize = answers.iter().map(|g| g.tokens.len().saturating_sub(1)).sum();
    let start = answers.iter().map(|g| g.time_to_first_token).min()?;
    let end = answers.iter().map(|g| g.duration).max()?;
    let window = end.checked_sub(start).filter(|d| !d.is_zero())?;
    Some(tokens as f64 / window.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

pub fn run(args: &BatchArgs) -> anyhow::Result<()> {
    // The engine runs in this process: its thread pools sized as the harness sizes its own
    // (without this, candle's barrier pool spun through 6.5 % of a bf16 batch run, profiled).
    size_thread_pools();
    modelqa::support::engine::tune_allocator();
    anyhow::ensure!(
        args.layers > 0 && args.batch > 1 && args.reps > 0,
        "--layers and --reps must be at least 1, --batch at least 2"
    );
    let root = crate::root().join("target").join("bench").join("engine");
    std::fs::create_dir_all(&root)?;
    let model = files::model(&root, args.layers)?;
    let cache = root.join(format!("converted-{}", args.layers));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let texts = prompts(args.batch);
    let deadline = Instant::now() + Duration::from_secs(24 * 3600);
    let requests: Vec<GenerateRequest<'_>> =
        texts.iter().map(|t| GenerateRequest::greedy(t, DECODE_TOKENS, deadline)).collect();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut rows = Vec::new();
    for choice in &args.formats {
        let path: PathBuf = match choice {
            Choice::F32 => model.clone(),
            Choice::Bf16 => files::bf16_copy(&model)?,
            Choice::Apr => files::ours(&model, Format::Apr, &cache)?,
            Choice::GgufF16 => files::ours(&model, Format::Gguf(Quantization::F16), &cache)?,
            Choice::Q8_0 => files::ours(&model, Format::Gguf(Quantization::Q8_0), &cache)?,
            Choice::Q4KM => files::ours(&model, Format::Gguf(Quantization::Q4KM), &cache)?,
        };
        eprintln!("{}: loading {}…", choice.label(), path.display());
        let mut session =
            load_candle(&path, Backend::Cpu).with_context(|| format!("failed to load {}", path.display()))?;
        let (mut alone, mut together, mut loaded) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..=args.reps {
            let one = session.generate(&requests[0])?;
            let a = one.tokens_per_second().unwrap_or(f64::NAN);
            if args.compete > 0 {
                let busy = Busy::start(args.compete)?;
                let under = session.generate(&requests[0])?;
                drop(busy);
                anyhow::ensure!(
                    under.tokens == one.tokens,
                    "{}: the answer changed under load",
                    choice.label()
                );
                let l = under.tokens_per_second().unwrap_or(f64::NAN);
                eprintln!(
                    "  rep {rep}/{}: alone under {} busy processes {l:.2} tok/s",
                    args.reps, args.compete
                );
                if rep > 0 {
                    loaded.push(l);
                }
            }
            let batch = session.generate_batch(&requests)?.context("the engine does not batch this model")?;
            let batch: Vec<_> = batch.into_iter().collect::<Result<_, _>>()?;
            anyhow::ensure!(
                batch[0].tokens == one.tokens,
                "{}: the first prompt's answer in the batch is not its answer alone",
                choice.label()
            );
            let b = aggregate(&batch).unwrap_or(f64::NAN);
            eprintln!("  rep {rep}/{}: alone {a:.2} tok/s, batch of {} {b:.2} tok/s", args.reps, args.batch);
            if rep > 0 {
                alone.push(a);
                together.push(b);
            }
        }
        rows.push((choice.label(), median(alone), median(together), median(loaded)));
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\n## Batched generation, {} layers, {threads} threads, {} tokens per sequence\n",
        args.layers, DECODE_TOKENS
    );
    if args.compete > 0 {
        println!(
            "| file | decode alone tok/s | aggregate decode, batch of {} tok/s | ratio | alone under {} busy processes tok/s | ÷ idle |",
            args.batch, args.compete
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (label, a, b, l) in &rows {
            println!("| {label} | {a:.2} | {b:.2} | {:.2}× | {l:.2} | {:.2}× |", b / a, l / a);
        }
    } else {
        println!("| file | decode alone tok/s | aggregate decode, batch of {} tok/s | ratio |", args.batch);
        println!("|---|---:|---:|---:|");
        for (label, a, b, _) in &rows {
            println!("| {label} | {a:.2} | {b:.2} | {:.2}× |", b / a);
        }
    }
    println!(
        "\nMedians of {} interleaved repetitions after a warm-up; the first prompt's answer in every batch equals its answer alone. Load average before: {}, after: {}.",
        args.reps,
        load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_distinct() {
        let p = prompts(16);
        let set: std::collections::BTreeSet<_> = p.iter().collect();
        assert_eq!(set.len(), 16);
    }

    #[test]
    fn median_takes_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }
}
