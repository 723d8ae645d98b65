//! `cargo xtask bench serve [--requests N] [--model DIR]`: the OpenAI-compatible server's
//! latency and throughput on qa-tiny, per format, against the same generations run in process.
//!
//! For each format: `N` greedy generations in process (`run`), then through the server `N`
//! whole requests (latency p50/p99) and `N` streamed ones (time to first text p50/p99), then 8
//! clients sending `N` requests each at once (requests/s), against a server answering one request
//! at a time (`max_batch` 1) and one batching them (continuous batching), in alternating rounds,
//! every answer checked against the one alone. The overhead of `serve` over `run` is the
//! difference of the p50 latencies. Each series follows 5 untimed warm-up requests. Everything
//! runs in this one process, one after the other, so the figures compare as ratios.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use modelqa::support::engine::client::{Client, Endpoint, request_body};
use modelqa::support::engine::{GenerateRequest, Sampling, Session, load_candle};
use modelqa::support::matrix::{Backend, Format, Quantization};
use modelqa::support::progress;
use modelqa::support::serve::{Server, ServerConfig};

const PROMPT: &str = "What is 47 + 38?\n";
const MAX_TOKENS: u32 = 8;
const CLIENTS: usize = 8;
/// Untimed generations before each series.
const WARMUP: usize = 5;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Rounds of the concurrent series per server kind.
const ROUNDS: usize = 3;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `CLIENTS` clients sending `n` requests each at once: requests per second, every answer
/// checked against `alone`.
fn concurrent(client: &Client, body: &serde_json::Value, alone: &str, n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    for _ in 0..n {
                        let deadline = Instant::now() + Duration::from_secs(120);
                        let text = client.request(Endpoint::Completions, body, deadline)?.text;
                        anyhow::ensure!(
                            text == alone,
                            "a concurrent answer {text:?} differs from alone {alone:?}"
                        );
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    Ok((CLIENTS * n) as f64 / started.elapsed().as_secs_f64())
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

/// `bench serve [--requests N] [--model DIR]`.
#[derive(Debug, clap::Args)]
pub struct ServeBenchArgs {
    /// Requests per series (whole, streamed, and per client in the concurrent one); at least 2
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub requests: usize,
    /// The model directory to serve [default: fixtures/qa-tiny/qa-tiny-llama]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
}

pub fn run(args: &ServeBenchArgs) -> anyhow::Result<()> {
    let n = args.requests;
    anyhow::ensure!(n >= 2, "--requests must be at least 2");
    let model = args.model.clone().unwrap_or_else(|| crate::fixtures::qa_tiny_dir().join("qa-tiny-llama"));
    let cache = crate::root().join("target").join("qualify").join("cache");
    let deadline = || Instant::now() + Duration::from_secs(120);
    let mut rows = Vec::new();
    let formats = [
        Format::Safetensors,
        Format::Apr,
        Format::Gguf(Quantization::Q8_0),
        Format::Gguf(Quantization::Q4KM),
    ];
    let bar = progress::bar(formats.len() as u64, "bench serve");
    for format in formats {
        bar.set_message(format!("{format}: converting…"));
        // A first conversion says so on stderr: above the bar, not through it.
        let artifact = bar.suspend(|| modelqa::support::format::convert::artifact(&model, format, &cache))?;
        progress::step(&bar, format!("{format}: {n} generations in process…"));
        let mut session = load_candle(&artifact, Backend::Cpu)?;
        let mut run = Vec::new();
        // Warm-up: caches, allocator and branch predictors settle before anything is timed.
        for i in 0..WARMUP + n {
            let request = GenerateRequest {
                prompt: PROMPT,
                literal: &[],
                max_tokens: MAX_TOKENS,
                sampling: Sampling::Greedy,
                deadline: deadline(),
            };
            let started = Instant::now();
            session.generate(&request)?;
            if i >= WARMUP {
                run.push(started.elapsed());
            }
        }
        let session: Box<dyn Session> = Box::new(session);
        let server = Server::start(Arc::new(Mutex::new(session)), ServerConfig::new("bench"))?;
        let client = Client::new(server.base_url());
        progress::step(
            &bar,
            format!("{format}: {n} whole and {n} streamed requests, then {CLIENTS} clients × {n}…"),
        );
        let whole = request_body(Endpoint::Completions, PROMPT, &[], MAX_TOKENS, &Sampling::Greedy, false);
        let streamed = request_body(Endpoint::Completions, PROMPT, &[], MAX_TOKENS, &Sampling::Greedy, true);
        for _ in 0..WARMUP {
            client.request(Endpoint::Completions, &whole, deadline())?;
        }
        let mut latency = Vec::new();
        for _ in 0..n {
            latency.push(client.request(Endpoint::Completions, &whole, deadline())?.latency);
        }
        let mut ttft = Vec::new();
        for _ in 0..n {
            let reply = client.request(Endpoint::Completions, &streamed, deadline())?;
            ttft.push(reply.first_text.context("a streamed reply without text")?);
        }
        let alone = client.request(Endpoint::Completions, &whole, deadline())?.text;
        server.stop();
        // The concurrent series, against a server answering one request at a time and one
        // batching them, in alternating rounds so both see the same machine; every answer is
        // checked against the one a request alone gets.
        let mut rps = [Vec::new(), Vec::new()];
        for round in 0..ROUNDS * 2 {
            let batched = round % 2 == 1;
            let max_batch = if batched { CLIENTS } else { 1 };
            let session: Box<dyn Session> = Box::new(load_candle(&artifact, Backend::Cpu)?);
            let config = ServerConfig { max_batch, ..ServerConfig::new("bench") };
            let server = Server::start(Arc::new(Mutex::new(session)), config)?;
            let client = Client::new(server.base_url());
            let rate = concurrent(&client, &whole, &alone, n)?;
            server.stop();
            rps[usize::from(batched)].push(rate);
        }
        rows.push((format, sorted(run), sorted(latency), sorted(ttft), rps.map(|r| median(&r))));
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!();
    println!(
        "serve benchmark: {} ({PROMPT:?}, {MAX_TOKENS} tokens max, greedy), {n} requests per figure, the concurrent ones the median of {ROUNDS} alternating rounds each; {} cpus, {}, {} build, load average {}",
        model.display(),
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        std::env::consts::ARCH,
        if cfg!(debug_assertions) { "debug (dependencies optimised)" } else { "release" },
        load_average()
    );
    println!();
    println!(
        "| format | run p50 | serve p50 | serve p99 | TTFT p50 | TTFT p99 | serve − run (p50) | req/s, {CLIENTS} clients, one at a time | req/s, {CLIENTS} clients, batched | batched ÷ one at a time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (format, run, latency, ttft, rps) in &rows {
        let (r, l) = (percentile(run, 0.5), percentile(latency, 0.5));
        println!(
            "| {format} | {r:.2} ms | {l:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:+.2} ms ({:.2}×) | {:.1} | {:.1} | {:.2}× |",
            percentile(latency, 0.99),
            percentile(ttft, 0.5),
            percentile(ttft, 0.99),
            l - r,
            l / r,
            rps[0],
            rps[1],
            rps[1] / rps[0]
        );
    }
    Ok(())
}
