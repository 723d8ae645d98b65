//! `cargo xtask bench engine [--layers N] [--reps N] [--rounds N] [--threads N] [--formats …]
//! [--backend cpu|gpu] [--skip-peers] [--keep] [--python PATH]`: this project's embedded engine side by side with
//! llama.cpp (through llama-cpp-python) and Hugging Face transformers, on the same files, with
//! the same thread count and the same 64 prompt token ids, by the protocol of
//! `shared/reference/candle-cpu-speed.md`: load (timed), 1 warm-up, then `--reps` repetitions of
//! prefill (one 64-token forward from an empty cache) and decode (64 greedy tokens, one at a time
//! over the cache); the table gives medians.
//!
//! The model is the project's random generator shaped like Qwen2.5-0.5B (hidden 896, 24 layers,
//! 14 heads, 2 key/value heads, vocabulary 151,936, tied embeddings: 494 M parameters), written
//! once under `target/bench/engine/` with a bf16 copy and kept. The files are this project's
//! conversions (GGUF F32, F16, Q8_0, Q4_K_M, APR) and llama.cpp's (`convert_hf_to_gguf.py` from
//! the llama-cpp-python sdist for F32, F16, Q8_0; its quantizer for Q4_K_M). Each engine and file
//! runs in a child process of its own (cold load, its own peak RSS): modelqa in this binary's
//! hidden `bench engine-child`, the peers in `xtask/bench/peers.py`. Per file the engines run one
//! after another, and `--rounds` repeats the whole cycle, so the machine's noise hits all alike.
//!
//! The peers run in a virtualenv the bench makes once under `target/bench/venv` (pip's output
//! shown; llama-cpp-python compiles llama.cpp). A peer that cannot be had is printed with its
//! reason and the other engines still run; `--skip-peers` runs modelqa alone, with no virtualenv.
//! The table (also `target/bench/engine/results.md` and `.json`) holds load, prefill and decode
//! speed, peak RSS, file size, the ratio to llama.cpp on its own file of the same format (on
//! this project's where llama.cpp's converter could not run), the decode ceiling that a read
//! bandwidth probed right before each engine's run allows over the weight bytes read per token,
//! and how many greedy ids each engine shares with transformers f32 (where even the first
//! differs, that id's rank among the engine's five likeliest and its logit gap).
//!
//! `--backend gpu` (an xtask built with `--features cuda`, on a machine with a CUDA device) runs
//! modelqa and transformers on CUDA device 0, and the ceiling is the device's read bandwidth,
//! measured the same way on its memory; llama.cpp offloads every layer, and says so and stops where
//! llama-cpp-python was built without GPU offload. Peak RSS stays the host's.

pub(crate) mod files;

pub use files::shape as qwen05b_shape;
mod measure;
mod peers;
mod table;

use std::path::{Path, PathBuf};
use std::process::Command;

use modelqa::support::matrix::{Backend, Format, Quantization};

pub use measure::{ChildArgs, child};
use peers::Peers;
use table::{BenchFile, Engine, Maker, Measurement, Peer, Report, Row, median};

/// Prompt tokens, and tokens decoded per repetition (the reference protocol's).
const PROMPT_TOKENS: usize = 64;
const DECODE_TOKENS: usize = 64;
/// The seed the prompt ids are drawn from.
const PROMPT_SEED: u64 = 2026;

/// `bench engine …`.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Decoder layers of the generated model (Qwen2.5-0.5B has 24)
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub layers: usize,
    /// Timed repetitions per engine and file, after one warm-up
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub reps: usize,
    /// Rounds over every file and engine; repetitions pool across them
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rounds: usize,
    /// Threads for every engine [default: the machine's CPUs]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Formats to run, comma-separated
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = Choice::ALL)]
    pub formats: Vec<Choice>,
    /// modelqa alone, on this project's files: no virtualenv, no peers
    #[arg(long)]
    pub skip_peers: bool,
    /// Keep the converted files for the next run (the model and its bf16 copy are always kept)
    #[arg(long)]
    pub keep: bool,
    /// A Python with the peers' packages, instead of the virtualenv under target/bench/venv
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Where modelqa and transformers run: cpu, or gpu (CUDA device 0; needs `--features cuda`)
    #[arg(long, default_value = "cpu", value_parser = measure::backend)]
    pub backend: Backend,
}

/// A format of `--formats`: its files from every maker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// f32 safetensors, GGUF F32 (modelqa's and llama.cpp's)
    F32,
    /// The bf16 copy of the safetensors
    Bf16,
    /// GGUF F16
    F16,
    /// GGUF Q8_0
    #[value(name = "q8_0")]
    Q8_0,
    /// GGUF Q4_K_M (llama.cpp's by its quantizer)
    #[value(name = "q4_k_m")]
    Q4KM,
    /// APR (modelqa's own format)
    Apr,
}

impl Choice {
    const ALL: [Choice; 6] =
        [Choice::F32, Choice::Bf16, Choice::F16, Choice::Q8_0, Choice::Q4KM, Choice::Apr];
}

/// The prompt: `n` ids drawn from `seed` by splitmix64, in `3..vocab` (past the special tokens).
fn prompt_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (3 + z % (vocab as u64 - 3)) as u32
        })
        .collect()
}

pub fn run(args: &EngineArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    anyhow::ensure!(
        args.layers > 0 && args.reps > 0 && args.rounds > 0 && threads > 0,
        "--layers, --reps, --rounds and --threads must be at least 1"
    );
    if args.backend == Backend::Gpu && !cfg!(feature = "cuda") {
        anyhow::bail!("--backend gpu needs an xtask built with `--features cuda`");
    }
    let bench = crate::root().join("target").join("bench");
    let root = bench.join("engine");
    std::fs::create_dir_all(&root)?;
    let (date, load_before) = (date(), loadavg());
    let layers = args.layers;
    let model = files::model(&root, layers)?;
    let peers = (!args.skip_peers).then(|| Peers::prepare(&bench.join("venv"), args.python.as_deref()));
    let ours_cache = root.join(format!("converted-{layers}"));
    let theirs = root.join(format!("llama.cpp-{layers}"));
    let mut notes = Vec::new();
    if let Some(p) = &peers {
        for (name, stack) in [("transformers", &p.transformers), ("llama.cpp", &p.llama)] {
            if let Err(why) = stack {
                eprintln!("{name} will not run: {why}");
                notes.push(format!("{name} not run: {why}"));
            }
        }
    }
    let files = make_files(args, threads, &model, &ours_cache, &theirs, &bench, peers.as_ref(), &mut notes)?;

    // The CPU's bandwidth is probed again before every engine's run (a shared host drifts); a
    // GPU's, once.
    let (cpu_probe, gpu_bandwidth, probe) = match args.backend {
        Backend::Cpu => (
            Some(measure::ReadProbe::new(threads)),
            None,
            format!("{threads} threads summing 1 GiB, median of 5 passes, probed before every engine's run"),
        ),
        Backend::Gpu => {
            eprintln!("measuring the GPU's read bandwidth (row sums of a 4 GiB f32 matrix, median of 5)…");
            let rate = measure::gpu_read_bandwidth()?;
            eprintln!("  {:.1} GB/s", rate / 1e9);
            (
                None,
                Some(rate),
                "CUDA device 0 summing the rows of a 4 GiB f32 matrix, median of 5".to_string(),
            )
        }
    };
    let mut probes = Vec::new();
    let mut bandwidth_now = || -> f64 {
        let rate = match (&cpu_probe, gpu_bandwidth) {
            (Some(p), _) => p.measure(),
            (None, rate) => rate.unwrap_or(0.0),
        };
        probes.push(rate);
        rate
    };

    let ids = prompt_ids(PROMPT_SEED, PROMPT_TOKENS, files::shape(layers).vocab);
    let csv = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=args.rounds {
        for (index, file) in files.iter().enumerate() {
            for engine in engines(file, peers.as_ref()) {
                eprintln!(
                    "[round {round}/{}] {} on {}'s {} …",
                    args.rounds,
                    engine.name(),
                    file.maker.name(),
                    file.format
                );
                let rate = bandwidth_now();
                eprintln!("  read bandwidth just before: {:.1} GB/s", rate / 1e9);
                let mut outcome = measure_one(engine, file, peers.as_ref(), threads, args, &csv);
                match &mut outcome {
                    Ok(m) => m.bandwidth.push(rate),
                    Err(why) => eprintln!("  failed: {why}"),
                }
                match rows.iter_mut().find(|r| r.file == index && r.engine == engine) {
                    None => rows.push(Row { engine, file: index, outcome }),
                    Some(row) => match (&mut row.outcome, outcome) {
                        (Ok(pooled), Ok(m)) => pooled.absorb(m),
                        (_, Err(why)) => row.outcome = Err(why),
                        (Err(_), Ok(_)) => {}
                    },
                }
            }
        }
    }

    drop(cpu_probe);
    let bandwidth = median(&probes).unwrap_or(0.0);
    let (low, high) = probes.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let low = if low.is_finite() { low } else { 0.0 };
    let source = files.iter().find(|f| f.maker == Maker::Generator && f.peer == Peer::F32);
    let params = source.map_or_else(|| "?".into(), |f| format!("{:.0} M", f.read_per_token as f64 / 4e6));
    let shape = files::shape(layers);
    let versions: Vec<String> = std::iter::once(format!("modelqa (candle 0.11.1, {} build)", build()))
        .chain(peers.iter().flat_map(|p| [&p.llama, &p.transformers]).filter_map(|v| v.clone().ok()))
        .collect();
    let header = vec![
        ("date".into(), date),
        (
            "cpu".into(),
            format!("{} ({} CPUs)", cpu_model(), std::thread::available_parallelism().map_or(1, |n| n.get())),
        ),
        (
            "threads".into(),
            format!(
                "{threads} (modelqa: RAYON_NUM_THREADS = {threads}, CANDLE_NUM_THREADS = 1, as the harness sets them; llama.cpp: n_threads = n_threads_batch = {threads}; transformers: torch.set_num_threads({threads}))"
            ),
        ),
        ("backend".into(), backend_line(args.backend)),
        ("load average before / after".into(), format!("{load_before} / {}", loadavg())),
        (
            "model".into(),
            format!(
                "random qwen2 shaped like Qwen2.5-0.5B: hidden {}, intermediate {}, {layers} layers, {} heads, {} key/value heads, vocabulary {}, tied embeddings, {params} parameters",
                shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.vocab
            ),
        ),
        (
            "protocol".into(),
            format!(
                "the same {PROMPT_TOKENS} prompt ids (splitmix64, seed {PROMPT_SEED}) for every engine; load, 1 warm-up, then {} repetitions × {} rounds of prefill (one {PROMPT_TOKENS}-token forward from an empty cache, argmax) and decode ({DECODE_TOKENS} greedy tokens one at a time over the cache); each engine and file in a child process of its own, the engines interleaved per file",
                args.reps, args.rounds
            ),
        ),
        ("engines".into(), versions.join("; ")),
        (
            "read bandwidth".into(),
            format!(
                "median {:.1} GB/s, {:.1}–{:.1} over {} probes ({probe})",
                bandwidth / 1e9,
                low / 1e9,
                high / 1e9,
                probes.len()
            ),
        ),
        (
            "commands".into(),
            format!(
                "`cargo xtask {}`; per engine and file: `xtask bench engine-child --file F --reps N --tokens {DECODE_TOKENS} --ids …`, `python xtask/bench/peers.py measure llama.cpp|transformers F --threads T --reps N --ids … [--dtype bf16]`; llama.cpp's files: `peers.py convert TREE MODEL f32|f16|q8_0 OUT`, `peers.py quantize F32.gguf OUT q4_k_m T`",
                std::env::args().skip(1).collect::<Vec<_>>().join(" ")
            ),
        ),
    ];
    let report = Report {
        header,
        notes,
        files,
        rows,
        prompt_tokens: PROMPT_TOKENS,
        decode_tokens: DECODE_TOKENS,
        bandwidth,
    };
    let markdown = report.markdown();
    std::fs::write(root.join("results.md"), &markdown)?;
    std::fs::write(root.join("results.json"), serde_json::to_string_pretty(&report.to_json())? + "\n")?;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&ours_cache);
        let _ = std::fs::remove_dir_all(&theirs);
    }
    println!();
    println!("engine benchmark (also {})", root.join("results.md").display());
    println!();
    print!("{markdown}");
    Ok(())
}

/// Every file of the chosen formats that can be made, in table order; what cannot is a note.
#[expect(clippy::too_many_arguments, reason = "one call site; the places and peers it fills from")]
fn make_files(
    args: &EngineArgs,
    threads: usize,
    model: &Path,
    ours_cache: &Path,
    theirs: &Path,
    bench: &Path,
    peers: Option<&Peers>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<BenchFile>> {
    let mut files = Vec::new();
    let mut tree: Option<Result<PathBuf, String>> = None;
    let mut keep = |made: anyhow::Result<BenchFile>, what: &str, notes: &mut Vec<String>| match made {
        Ok(f) => files.push(f),
        Err(e) => {
            eprintln!("  {what}: {e:#}");
            notes.push(format!("{what}: not made: {e:#}"));
        }
    };
    eprintln!("making the files…");
    for choice in Choice::ALL.into_iter().filter(|c| args.formats.contains(c)) {
        let quantization = match choice {
            Choice::F32 => {
                keep(
                    files::bench_file(Maker::Generator, "safetensors f32", Peer::F32, model.to_path_buf()),
                    "safetensors f32",
                    notes,
                );
                Quantization::F32
            }
            Choice::Bf16 => {
                let made = files::bf16_copy(model)
                    .and_then(|dir| files::bench_file(Maker::Generator, "safetensors bf16", Peer::F16, dir));
                keep(made, "safetensors bf16", notes);
                continue;
            }
            Choice::Apr => {
                let made = files::ours(model, Format::Apr, ours_cache)
                    .and_then(|p| files::bench_file(Maker::Modelqa, "APR f32", Peer::F32, p));
                keep(made, "APR by modelqa", notes);
                continue;
            }
            Choice::F16 => Quantization::F16,
            Choice::Q8_0 => Quantization::Q8_0,
            Choice::Q4KM => Quantization::Q4KM,
        };
        let (label, peer) = files::gguf_label(quantization);
        let made = files::ours(model, Format::Gguf(quantization), ours_cache)
            .and_then(|p| files::bench_file(Maker::Modelqa, label, peer, p));
        keep(made, &format!("{label} by modelqa"), notes);
        let Some(peers) = peers else { continue };
        let tree = tree.get_or_insert_with(|| {
            eprintln!("  llama.cpp's converter (from the llama-cpp-python sdist)…");
            peers.converter_tree(&bench.join("llama.cpp-src"))
        });
        let made = match tree {
            Ok(tree) => theirs_file(peers, tree, model, theirs, quantization, threads)
                .and_then(|p| files::bench_file(Maker::LlamaCpp, label, peer, p)),
            Err(why) => Err(anyhow::anyhow!("{why}")),
        };
        keep(made, &format!("{label} by llama.cpp"), notes);
    }
    Ok(files)
}

/// llama.cpp's GGUF of `q` under `dir`: its converter's for F32/F16/Q8_0, its quantizer's (from
/// its F32) for Q4_K_M. Made once; written aside and renamed, so a partial file is never taken.
fn theirs_file(
    peers: &Peers,
    tree: &Path,
    model: &Path,
    dir: &Path,
    q: Quantization,
    threads: usize,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = q.as_str();
    let target = dir.join(format!("converter-{name}.gguf"));
    if target.is_file() {
        return Ok(target);
    }
    let partial = dir.join(format!("converter-{name}.gguf.partial"));
    let started = std::time::Instant::now();
    match q {
        Quantization::Q4KM => {
            let f32 = theirs_file(peers, tree, model, dir, Quantization::F32, threads)?;
            peers.quantize(&f32, &partial, name, threads)
        }
        _ => peers.convert(tree, model, name, &partial),
    }
    .map_err(|why| anyhow::anyhow!("{why}"))?;
    std::fs::rename(&partial, &target)?;
    eprintln!("  {name} by llama.cpp: {} ({:.1} s)", target.display(), started.elapsed().as_secs_f64());
    Ok(target)
}

/// The engines that run a file: modelqa on every one; llama.cpp on GGUF; transformers on
/// safetensors; a peer only where its stack imports.
fn engines(file: &BenchFile, peers: Option<&Peers>) -> Vec<Engine> {
    let mut out = vec![Engine::Modelqa];
    let Some(peers) = peers else { return out };
    if file.path.is_dir() && peers.transformers.is_ok() {
        out.push(Engine::Transformers);
    }
    if file.path.extension().is_some_and(|e| e == "gguf") && peers.llama.is_ok() {
        out.push(Engine::LlamaCpp);
    }
    out
}

/// One engine on one file, in a child process of its own.
fn measure_one(
    engine: Engine,
    file: &BenchFile,
    peers: Option<&Peers>,
    threads: usize,
    args: &EngineArgs,
    ids: &str,
) -> Result<Measurement, String> {
    let path = file.path.to_string_lossy();
    let (reps, tokens, t) = (args.reps.to_string(), DECODE_TOKENS.to_string(), threads.to_string());
    let backend = args.backend.as_str();
    let device = if args.backend == Backend::Gpu { "cuda" } else { "cpu" };
    let mut command = match (engine, peers) {
        (Engine::Modelqa, _) => {
            let exe = std::env::current_exe().map_err(|e| format!("failed to find this xtask: {e}"))?;
            let mut c = Command::new(exe);
            c.args([
                "bench",
                "engine-child",
                "--file",
                &path,
                "--reps",
                &reps,
                "--tokens",
                &tokens,
                "--ids",
                ids,
                "--backend",
                backend,
            ]);
            // As the harness sizes them (`engine::size_thread_pools`): the project's kernels
            // on rayon's pool, candle's own pool (its element-wise ops, which spin between
            // calls) inline. Measured on this bench's Q8_0 file: prefill 112–114 tok/s against
            // 103–114 with candle on 2 threads, decode the same.
            c.env("RAYON_NUM_THREADS", &t).env("CANDLE_NUM_THREADS", "1");
            c
        }
        (Engine::LlamaCpp, Some(p)) => p.driver(&[
            "measure",
            "llama.cpp",
            &path,
            "--device",
            device,
            "--threads",
            &t,
            "--reps",
            &reps,
            "--tokens",
            &tokens,
            "--ids",
            ids,
        ]),
        (Engine::Transformers, Some(p)) => {
            let dtype = if file.format.ends_with("bf16") { "bf16" } else { "f32" };
            p.driver(&[
                "measure",
                "transformers",
                &path,
                "--dtype",
                dtype,
                "--device",
                device,
                "--threads",
                &t,
                "--reps",
                &reps,
                "--tokens",
                &tokens,
                "--ids",
                ids,
            ])
        }
        (_, None) => return Err("peers skipped".into()),
    };
    command.env("OMP_NUM_THREADS", &t);
    peers::measure(command)
}

/// The `backend` header line: the CPU, or the CUDA device as `nvidia-smi` names it.
fn backend_line(backend: Backend) -> String {
    match backend {
        Backend::Cpu => "cpu".into(),
        Backend::Gpu => {
            let smi = Command::new("nvidia-smi")
                .args(["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string());
            format!("gpu: CUDA device 0 ({})", smi.as_deref().unwrap_or("nvidia-smi did not answer"))
        }
    }
}

fn build() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into())
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_is_fixed_and_inside_the_vocabulary() {
        let ids = prompt_ids(PROMPT_SEED, PROMPT_TOKENS, 151_936);
        assert_eq!(ids, prompt_ids(PROMPT_SEED, PROMPT_TOKENS, 151_936));
        assert_eq!(ids.len(), 64);
        assert!(ids.iter().all(|&i| (3..151_936).contains(&i)));
        assert!(ids.iter().collect::<std::collections::HashSet<_>>().len() > 60, "{ids:?}");
        assert_ne!(ids, prompt_ids(PROMPT_SEED + 1, PROMPT_TOKENS, 151_936));
    }
}
