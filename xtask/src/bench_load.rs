//! `cargo xtask bench load [--shape 0.5b|7b]`: a bf16 model of a real model's shape (random
//! weights, written by the project's test-model generator, streamed tensor by tensor so a model
//! larger than memory can be written), loaded and generated from by `modelqa-engine generate`
//! under `/usr/bin/time -v`: the file's size, the process's peak resident set against it, the
//! load and the answer. The weights stay as stored (bf16, read in place from the mapped file), so
//! a 7 B model of 13.5 GB loads and generates on a 24 GiB machine.
//!
//! The model is written once under `target/bench/` and kept. The engine is the dev-profile build
//! (its dependencies and kernels are optimised; the harness's own code is not): the memory figures
//! are the point, not the speed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use modelqa::support::testmodel::{TestArchitecture, TestModelShape, write_test_model_bf16};

/// `bench load …`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The model's shape: `0.5b` (Qwen2.5-0.5B: 494 M parameters, tied embeddings) or `7b`
    /// (Llama-2-7B: 6.7 B parameters)
    #[arg(long, default_value = "0.5b")]
    pub shape: String,
    /// Tokens to generate
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub tokens: usize,
    /// The file loaded: the bf16 safetensors, or this project's conversion of it to a format
    /// (`gguf-q8_0`, `gguf-q4_k_m`, `gguf-f16`, `apr`, …), made once and kept beside it
    #[arg(long, value_name = "FORMAT", default_value = "safetensors")]
    pub format: String,
}

fn shape(name: &str) -> anyhow::Result<(TestArchitecture, TestModelShape)> {
    Ok(match name {
        "0.5b" => (TestArchitecture::Qwen2, crate::bench_engine::qwen05b_shape(24)),
        "7b" => (
            TestArchitecture::Llama,
            TestModelShape {
                hidden: 4096,
                intermediate: 11_008,
                layers: 32,
                heads: 32,
                kv_heads: 32,
                vocab: 32_000,
                context: 4096,
                tied: false,
            },
        ),
        other => bail!("unknown shape `{other}`: 0.5b or 7b"),
    })
}

pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    let (arch, shape) = shape(&args.shape)?;
    ensure!(
        Path::new("/usr/bin/time").is_file(),
        "/usr/bin/time (GNU time) is needed for the peak resident set"
    );
    let root = crate::root();
    let dir = root.join("target/bench").join(format!("load-{}-bf16", args.shape));
    if !dir.join("model.safetensors").is_file() || !dir.join("config.json").is_file() {
        eprintln!("writing a random bf16 model of the {} shape to {} (streamed)…", args.shape, dir.display());
        let started = Instant::now();
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        write_test_model_bf16(&partial, arch, shape, 7)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir)?;
        eprintln!("  written in {:.0} s", started.elapsed().as_secs_f64());
    }
    let format = modelqa::support::matrix::Format::parse(&args.format)
        .with_context(|| format!("`{}` is not a format", args.format))?;
    let (model, file) = match format {
        modelqa::support::matrix::Format::Safetensors => (dir.clone(), dir.join("model.safetensors")),
        other => {
            eprintln!("converting it to {other} (once)…");
            let cache = root.join("target/bench").join(format!("load-{}-converted", args.shape));
            let converted = modelqa::support::format::convert::artifact(&dir, other, &cache)?;
            (converted.clone(), converted)
        }
    };
    let file = file.metadata()?.len();
    let engine = engine_binary(&root)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map_or_else(|| "?".into(), |k| format!("{:.1} GiB", k as f64 / (1u64 << 20) as f64));
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(&engine)
        .arg("generate")
        .arg(&model)
        .args(["--prompt", "The quick brown fox jumps over the lazy dog.", "--max-tokens"])
        .arg(args.tokens.to_string())
        .arg("--json")
        .output()
        .context("running modelqa-engine under /usr/bin/time")?;
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "modelqa-engine generate failed:\n{}", crate::tail(&stderr, 3000));
    let rss_kib: u64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
        .and_then(|v| v.trim().parse().ok())
        .context("/usr/bin/time -v printed no maximum resident set size")?;
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("modelqa-engine --json printed no JSON")?;
    let rss = rss_kib * 1024;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "machine: {memory} of memory; load average {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "\n| shape | file | size | peak RSS | RSS ÷ file | wall s (load + {} tokens) | tokens generated |",
        args.tokens
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let label = match format {
        modelqa::support::matrix::Format::Safetensors => "safetensors bf16".to_string(),
        other => format!("{other} (from bf16)"),
    };
    println!(
        "| {} | {label} | {:.2} GiB | {:.2} GiB | {:.2}× | {wall:.1} | {} |",
        args.shape,
        gib(file),
        gib(rss),
        rss as f64 / file as f64,
        answer["completion_tokens"]
    );
    Ok(())
}

/// The dev-profile `modelqa-engine`, built if it is not up to date.
fn engine_binary(root: &Path) -> anyhow::Result<PathBuf> {
    let status = crate::cargo()
        .current_dir(root)
        .args(["build", "--bin", "modelqa-engine"])
        .status()
        .context("building modelqa-engine")?;
    ensure!(status.success(), "building modelqa-engine failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("debug/modelqa-engine"))
}
