//! `cargo xtask bench formats [--layers N] [--tokens N] [--keep]`: every format on a
//! random-weight model shaped like Qwen2.5-0.5B (hidden 896, intermediate 4864, 24 layers, 14
//! heads, 2 key/value heads, vocabulary 151,936): conversion time from safetensors, file size,
//! load time and decode tokens/s on CPU, one row per format, in one process so the rows compare.
//!
//! The generator writes an untied output head, so the model has 630 M parameters where
//! Qwen2.5-0.5B, which ties it, has 494 M. It is made once under `target/bench/qwen2.5-0.5b-shape`
//! (about 2.5 GB) and kept with `--keep`.

use std::time::{Duration, Instant};

use modelqa::support::engine::{GenerateRequest, Sampling, Session, load_candle};
use modelqa::support::matrix::{Backend, Format, Quantization};
use modelqa::support::progress;
use modelqa::support::testmodel::{TestArchitecture, TestModelShape, write_test_model};

/// `bench formats [--layers N] [--tokens N] [--keep]`.
#[derive(Debug, clap::Args)]
pub struct FormatsArgs {
    /// Decoder layers of the generated model (Qwen2.5-0.5B has 24)
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub layers: usize,
    /// Tokens decoded per format
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub tokens: u32,
    /// Keep the converted files (target/bench/formats-cache) after the run
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: &FormatsArgs) -> anyhow::Result<()> {
    let FormatsArgs { layers, tokens, keep } = *args;
    // `bench engine`'s shape, with the untied head this benchmark has always measured.
    let shape = TestModelShape { tied: false, ..crate::bench_engine::qwen05b_shape(layers) };
    let root = crate::root().join("target").join("bench");
    let model = root.join(format!("qwen2.5-0.5b-shape-{layers}"));
    if !model.join("model.safetensors").is_file() {
        eprintln!(
            "writing a random qwen2 model shaped like Qwen2.5-0.5B ({layers} layers) to {}…",
            model.display()
        );
        let started = Instant::now();
        write_test_model(&model, TestArchitecture::Qwen2, shape, 7)?;
        eprintln!("  written in {:.1} s", started.elapsed().as_secs_f64());
    }
    let cache = root.join("formats-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let formats = [
        Format::Safetensors,
        Format::Apr,
        Format::Gguf(Quantization::F16),
        Format::Gguf(Quantization::Q8_0),
        Format::Gguf(Quantization::Q6K),
        Format::Gguf(Quantization::Q5KM),
        Format::Gguf(Quantization::Q4KM),
    ];
    let mut rows = Vec::new();
    let bar = progress::bar(formats.len() as u64, "bench formats");
    for format in formats {
        // The conversion says what it makes on stderr and draws a bar of its own: this one only
        // names the row, and steps aside meanwhile.
        bar.set_message(format!("{format}: converting…"));
        let started = Instant::now();
        let artifact = bar.suspend(|| modelqa::support::format::convert::artifact(&model, format, &cache))?;
        let convert = (format != Format::Safetensors).then(|| started.elapsed());
        let bytes: u64 = if artifact.is_dir() {
            modelqa::support::engine::safetensors_files(&artifact)?
                .iter()
                .map(|f| f.metadata().map_or(0, |m| m.len()))
                .sum()
        } else {
            artifact.metadata()?.len()
        };
        progress::step(&bar, format!("{format}: loading…"));
        let started = Instant::now();
        let mut session = load_candle(&artifact, Backend::Cpu)?;
        let load = started.elapsed();
        progress::step(&bar, format!("{format}: decoding {tokens} tokens…"));
        let request = GenerateRequest {
            prompt: "The quick brown fox",
            literal: &[],
            max_tokens: tokens,
            sampling: Sampling::Greedy,
            deadline: Instant::now() + Duration::from_secs(1800),
        };
        let g = session.generate(&request)?;
        drop(session);
        rows.push((
            format,
            convert,
            bytes,
            load,
            g.token_count.unwrap_or(0),
            g.tokens_per_second(),
            g.time_to_first_token,
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !keep {
        let _ = std::fs::remove_dir_all(&cache);
    }
    println!();
    println!(
        "format benchmark: random qwen2, hidden 896, {layers} layers, vocabulary 151,936; greedy decode of up to {tokens} tokens; {} cpus, {}, {} build",
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        std::env::consts::ARCH,
        if cfg!(debug_assertions) { "debug (dependencies optimised)" } else { "release" }
    );
    println!();
    println!("| format | conversion | file size | load | first token | decode tok/s (tokens) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (format, convert, bytes, load, n, tps, ttft) in rows {
        println!(
            "| {format} | {} | {:.0} MiB | {:.2} s | {:.0} ms | {} ({n}) |",
            convert.map_or("(source)".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            bytes as f64 / (1 << 20) as f64,
            load.as_secs_f64(),
            ttft.as_secs_f64() * 1e3,
            tps.map_or("–".to_string(), |t| format!("{t:.1}"))
        );
    }
    Ok(())
}
