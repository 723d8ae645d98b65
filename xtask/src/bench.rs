//! `cargo xtask bench`: the harness's own speed on a synthetic playbook set, release build.
//!
//! The set has `--families` families (default 100) of `--models` models each (default 10), every
//! model with 3 formats, 2 backends, 3 modalities and 100 scenarios: 1,800,000 trials at the
//! defaults, so one `family::tier` filter selects 1%. Each figure is
//! the median of `--runs` runs (default 3), with the peak RSS of the slowest one, measured with
//! wait4(2) on the child process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use modelqa::support::progress::{self, ProgressBar};

/// `bench [--families N] [--models N] [--runs N] | bench serve … | bench formats … | bench kernels … | bench engine … | bench trials …`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Option<Which>,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// The server's latency, TTFT and throughput on qa-tiny per format, against in-process generation (release build)
    Serve(crate::bench_serve::ServeBenchArgs),
    /// Conversion, size, load and decode speed per format on a Qwen2.5-0.5B-shaped model (release build)
    Formats(crate::bench_formats::FormatsArgs),
    /// The harness's CPU matrix kernels against candle's path, per stored type and Qwen2.5-0.5B shape (release build)
    Kernels(crate::bench_kernels::KernelsArgs),
    /// modelqa's engine against llama.cpp and transformers on the same Qwen2.5-0.5B-shaped files (release build)
    Engine(crate::bench_engine::EngineArgs),
    /// Generating for many prompts at once against one at a time, on the Qwen2.5-0.5B-shaped model (release build)
    Batch(crate::bench_batch::BatchArgs),
    /// A twelve-model qualify run unlimited and under QUALIFY_MEMORY_BUDGET: estimated memory held, peak RSS, verdicts
    Memory(crate::bench_memory::MemoryArgs),
    /// A qualify run's trials per second, cell batches against one trial at a time (and another checkout's build), verdicts compared
    Trials(crate::bench_trials::TrialsArgs),
    /// A bf16 model of a real shape (0.5b, 7b) loaded and generated from: peak RSS against the file
    Load(crate::bench_load::LoadArgs),
    /// One engine measurement of `bench engine`, in a process of its own (run by `bench engine`)
    #[command(name = "engine-child", hide = true)]
    EngineChild(crate::bench_engine::ChildArgs),
    /// The logit gate's false alarms and detection rates per cell of a fixture family, against what it claims
    Gates(crate::bench_gates::GatesArgs),
}

/// `bench` without a subcommand: the harness's expansion on a synthetic playbook set.
#[derive(Debug, clap::Args)]
pub struct HarnessArgs {
    /// Families in the synthetic playbook set
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub families: usize,
    /// Models per family
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub models: usize,
    /// Runs per figure (each figure is their median)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub runs: usize,
}

pub fn run(args: &HarnessArgs) -> anyhow::Result<()> {
    let HarnessArgs { families, models: per_family, runs } = *args;
    anyhow::ensure!(families > 0 && per_family > 0, "--families and --models must be at least 1");
    let models = families * per_family;
    let root = crate::root();
    let dir = root.join("target").join("bench").join("playbooks");
    write_synthetic_set(&dir, families, per_family)?;
    eprintln!("building the qualify harness (release)…");
    let binary = build_release_qualify(&root)?;
    let env = [("QUALIFY_PLAYBOOKS", dir.clone())];

    let fam = format!("fam{:03}::", families / 2);
    let exact = format!(
        "fam{:03}::full::model-{:04}::gguf-q4_k_m::cpu::chat::s-042",
        families / 2,
        families / 2 * per_family
    );
    // Four `measure` rows, then the nextest-style trial.
    let bar = progress::bar(5, "bench rows");
    let mut rows = Vec::new();
    rows.push(measure(&bar, "--list (all trials)", &binary, &["--list"], &env, runs)?);
    rows.push(measure(
        &bar,
        &format!("filter `{fam}full` (1 family of {families})"),
        &binary,
        &["--list", &format!("{fam}full")],
        &env,
        runs,
    )?);
    rows.push(measure(
        &bar,
        "--exact one trial (listing it)",
        &binary,
        &["--list", "--exact", &exact],
        &env,
        runs,
    )?);
    rows.push(measure(
        &bar,
        "--exact one trial (run; model absent → ignored)",
        &binary,
        &["--exact", &exact],
        &env,
        runs,
    )?);

    // Per-trial overhead under nextest's process-per-test: process start, playbook loading and
    // expansion, model load from the page cache and the journal, i.e. everything but inference.
    let trial = "qa-tiny::smoke::qa-tiny-llama::safetensors::cpu::run::arithmetic_add";
    let journal_dir = root.join("target").join("bench").join("journal");
    let _ = std::fs::remove_dir_all(&journal_dir);
    let overhead_env = [
        ("QUALIFY_PLAYBOOKS", root.join("playbooks")),
        ("QUALIFY_JOURNAL_DIR", journal_dir.clone()),
        ("QUALIFY_RUN_ID", PathBuf::from("bench")),
    ];
    let mut overheads = Vec::new();
    let mut walls = Vec::new();
    bar.set_message("a nextest-style trial");
    for i in 0..runs.max(5) {
        let (wall, _) = spawn(&binary, &["--exact", trial, "--nocapture"], &overhead_env)?;
        let (records, _) = modelqa::support::journal::read(&journal_dir.join("bench.jsonl"))?;
        let r = records.get(i).context("the trial recorded no evidence")?;
        let inference_ms = r.metrics.duration_ms - r.metrics.load_ms.unwrap_or(0.0);
        overheads.push(wall.as_secs_f64() * 1e3 - inference_ms);
        walls.push(wall.as_secs_f64() * 1e3);
    }
    bar.finish_and_clear();
    overheads.sort_by(f64::total_cmp);
    walls.sort_by(f64::total_cmp);

    let total = models * 3 * 2 * 3 * 100;
    println!();
    println!(
        "harness benchmark: {total} trials ({models} models × 3 formats × 2 backends × 3 modalities × 100 scenarios)"
    );
    println!(
        "machine: {} cpus, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::consts::ARCH
    );
    println!();
    println!("| case | median wall | peak RSS |");
    println!("|---|---:|---:|");
    for (case, wall, rss) in &rows {
        println!("| {case} | {:.1} ms | {:.1} MiB |", wall.as_secs_f64() * 1e3, *rss as f64 / 1024.0);
    }
    println!(
        "| nextest-style trial, everything but inference (median of {}) | {:.1} ms | – |",
        overheads.len(),
        overheads[overheads.len() / 2]
    );
    println!("| nextest-style trial, whole process | {:.1} ms | – |", walls[walls.len() / 2]);
    Ok(())
}

/// Median wall time and the largest peak RSS (KiB) over `runs` runs.
fn measure(
    bar: &ProgressBar,
    case: &str,
    binary: &Path,
    args: &[&str],
    env: &[(&str, PathBuf)],
    runs: usize,
) -> anyhow::Result<(String, Duration, i64)> {
    bar.set_message(case.to_string());
    let mut walls = Vec::new();
    let mut rss = 0;
    for _ in 0..runs.max(1) {
        let (wall, peak) = spawn(binary, args, env)?;
        walls.push(wall);
        rss = rss.max(peak);
    }
    walls.sort();
    bar.inc(1);
    if bar.is_hidden() {
        eprintln!("measured: {case}");
    }
    Ok((case.to_string(), walls[walls.len() / 2], rss))
}

/// Runs the binary with stdout discarded; its wall time and peak RSS in KiB.
fn spawn(binary: &Path, args: &[&str], env: &[(&str, PathBuf)]) -> anyhow::Result<(Duration, i64)> {
    let mut cmd = Command::new(binary);
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("failed to start {}", binary.display()))?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, and wait4 writes a complete one for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child we spawned; the pointers are to live locals.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if pid < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if code != Some(0) {
        bail!("{} {args:?} exited with {code:?}", binary.display());
    }
    Ok((wall, usage.ru_maxrss))
}

fn build_release_qualify(root: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["test", "--release", "--test", "qualify", "--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("cargo test --release --no-run failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "qualify")
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
        .context("cargo did not report the qualify executable")
}

fn write_synthetic_set(dir: &Path, families: usize, per_family: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    for i in 0..families {
        let models: String = (0..per_family)
            .map(|m| format!("  - {{id: synthetic/model-{0:04}, slug: model-{0:04}}}\n", i * per_family + m))
            .collect();
        let text = format!(
            "playbook: 1\nfamily: fam{i:03}\ntiers:\n  full:\n    formats: [safetensors, apr, gguf]\n    backends: [cpu, gpu]\n    modalities: [run, chat, serve]\nmodels:\n{models}scenarios:\n  - name: s\n    generate:\n      arithmetic: {{operands: [0, 999]}}\n    count: 100\n    oracles: [arithmetic, garbage]\n"
        );
        std::fs::write(dir.join(format!("fam{i:03}.yaml")), text)?;
    }
    Ok(())
}
