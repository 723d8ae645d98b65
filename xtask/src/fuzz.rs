//! `cargo xtask fuzz`: the harness's fuzz targets (`modelqa::support::fuzz`) driven on stable Rust.
//!
//! Each target runs in a worker process of its own (this program, `fuzz --worker`), so an abort,
//! a signal or an allocation the system refuses is seen from outside and does not end the run:
//! the worker writes every input to a file before it runs it, and the parent, seeing the worker
//! die, saves that input under `fuzz/crashes/<target>/` and starts a new worker for the rest of
//! the budget. Inside the worker a panic is caught and saved the same way, and a watchdog thread
//! ends the worker when one input runs past the hang limit.
//!
//! Mutation is blind (no coverage feedback: that needs a nightly compiler): each input is a
//! corpus file with one to eight stacked edits: bit flips, interesting integers written over
//! 1, 2, 4 or 8 bytes in both byte orders, insertions, deletions, duplications, splices with
//! another corpus file, and words of the corpus itself (so YAML and JSON keys reappear where
//! they matter).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use modelqa::support::fuzz::{TARGETS, Target, target};

/// Drive the harness's fuzz targets over their committed corpus
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Run only these targets (repeatable; default: all)
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Stop each target after this many inputs
    #[arg(long, value_name = "N")]
    inputs: Option<u64>,
    /// Stop each target after this many seconds (default 10 when --inputs is not given)
    #[arg(long, value_name = "S")]
    seconds: Option<u64>,
    /// The mutation seed (default: from the clock; printed, so a run can be replayed)
    #[arg(long)]
    seed: Option<u64>,
    /// One input past this many seconds is a hang
    #[arg(long, value_name = "S", default_value_t = 10)]
    hang_seconds: u64,
    /// Each worker's address-space limit in MiB: an allocation past it fails (and is an abort)
    /// instead of taking the machine
    #[arg(long, value_name = "MIB", default_value_t = 8192)]
    memory_mib: u64,
    /// Run one file through a target and report what happens (with --target)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["inputs", "seconds"])]
    replay: Option<PathBuf>,
    /// List the targets and their corpus sizes
    #[arg(long)]
    list: bool,
    /// Where inputs that break a target are saved
    #[arg(long, value_name = "DIR", default_value = CRASHES)]
    crashes: PathBuf,
    /// Plant a fault at the 50th input of the first worker (panic, abort, hang, or an allocation
    /// past --memory-mib): proves the driver catches, saves and counts each kind
    #[arg(long, hide = true, value_parser = ["panic", "abort", "hang", "alloc"])]
    plant: Option<String>,
    #[arg(long, hide = true)]
    worker: bool,
    /// Where the worker writes the input it is running (worker only)
    #[arg(long, hide = true)]
    last: Option<PathBuf>,
    /// Skip the unchanged corpus pass (worker only: a restarted worker has run it)
    #[arg(long, hide = true)]
    mutants_only: bool,
}

/// Where the committed seed inputs live, one folder per target.
const CORPUS: &str = "fuzz/corpus";
/// Where inputs that broke a target are saved.
const CRASHES: &str = "fuzz/crashes";
/// The worker's exit code for a hang (its watchdog ends it).
const HANG_EXIT: i32 = 86;
/// The worker's exit code when it found at least one panic.
const PANIC_EXIT: i32 = 87;
/// The input at which `--plant` plants its fault.
const PLANT_AT: u64 = 50;
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let root = crate::root();
    let chosen: Vec<&'static Target> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        args.targets
            .iter()
            .map(|n| {
                target(n).with_context(|| {
                    let known: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                    format!("no fuzz target called {n:?}; the targets are {}", known.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if args.list {
        for t in &chosen {
            let corpus = read_corpus(&root, t.name)?;
            println!("{:<16} {:>4} corpus files  {}", t.name, corpus.len(), t.reads);
        }
        return Ok(());
    }
    if let Some(file) = &args.replay {
        let [t] = chosen.as_slice() else { bail!("--replay needs exactly one --target") };
        let data = std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
        let started = Instant::now();
        (t.run)(&data);
        println!("{}: {} returned in {:.3} s", t.name, file.display(), started.elapsed().as_secs_f64());
        return Ok(());
    }
    let budget = Budget {
        inputs: args.inputs,
        seconds: args.seconds.or(if args.inputs.is_none() { Some(10) } else { None }),
    };
    if args.worker {
        let [t] = chosen.as_slice() else { bail!("a worker runs exactly one target") };
        let last = args.last.as_deref().context("a worker needs --last")?;
        let seed = args.seed.unwrap_or(0);
        return worker(&root, t, budget, seed, args, last);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("fuzzing {} target(s), seed {seed} (replay with --seed {seed})", chosen.len());
    let mut rows = Vec::new();
    for t in chosen {
        rows.push(drive(&root, t, budget, seed, args)?);
    }
    println!();
    println!("| target | inputs | seconds | inputs/s | panics | aborts | hangs | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.0} | {} | {} | {} | {} MiB |",
            r.name,
            r.inputs,
            r.seconds,
            r.inputs as f64 / r.seconds.max(1e-9),
            r.panics,
            r.aborts,
            r.hangs,
            r.peak_rss_kib / 1024
        );
    }
    let broken: u64 = rows.iter().map(|r| r.panics + r.aborts + r.hangs).sum();
    if broken > 0 {
        bail!(
            "{broken} input(s) broke a target; they are saved under {} (rerun one with --replay)",
            crashes_dir(&root, args).display()
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    inputs: Option<u64>,
    seconds: Option<u64>,
}

/// One target's totals over all its workers.
#[derive(Debug, Default)]
struct Row {
    name: &'static str,
    inputs: u64,
    seconds: f64,
    panics: u64,
    aborts: u64,
    hangs: u64,
    peak_rss_kib: u64,
}

/// What a worker prints as its last line.
#[derive(Debug, Default)]
struct WorkerReport {
    inputs: u64,
    panics: u64,
    peak_rss_kib: u64,
}

/// Runs workers for `t` until its budget is spent, restarting after each abort or hang.
fn drive(root: &Path, t: &Target, budget: Budget, seed: u64, args: &FuzzArgs) -> anyhow::Result<Row> {
    let crashes = crashes_dir(root, args);
    let corpus = read_corpus(root, t.name)?;
    if corpus.is_empty() {
        bail!("the fuzz target {} has no corpus: add seed inputs under {CORPUS}/{}/", t.name, t.name);
    }
    let scratch = tempfile::tempdir().context("failed to make a scratch directory")?;
    let last = scratch.path().join("last-input");
    let started = Instant::now();
    let mut row = Row { name: t.name, ..Row::default() };
    let mut round = 0u64;
    loop {
        let left = Budget {
            inputs: budget.inputs.map(|n| n.saturating_sub(row.inputs)),
            seconds: budget.seconds.map(|s| s.saturating_sub(started.elapsed().as_secs())),
        };
        if left.inputs == Some(0) || left.seconds == Some(0) {
            break;
        }
        let mut command = Command::new(std::env::current_exe().context("failed to find the xtask binary")?);
        command.args(["fuzz", "--worker", "--target", t.name, "--last"]).arg(&last);
        command.args(["--seed", &seed.wrapping_add(round).to_string()]);
        command.args(["--hang-seconds", &args.hang_seconds.to_string()]);
        command.args(["--memory-mib", &args.memory_mib.to_string()]);
        command.arg("--crashes").arg(&args.crashes);
        if round > 0 {
            command.arg("--mutants-only");
        } else if let Some(plant) = &args.plant {
            command.args(["--plant", plant]);
        }
        if let Some(n) = left.inputs {
            command.args(["--inputs", &n.to_string()]);
        }
        if let Some(s) = left.seconds {
            command.args(["--seconds", &s.to_string()]);
        }
        limit_memory(&mut command, args.memory_mib << 20);
        // The worker's progress and last words go straight to our stderr; its report comes on stdout.
        command.stderr(std::process::Stdio::inherit());
        let output = command.output().with_context(|| format!("failed to start a worker for {}", t.name))?;
        let report = parse_report(&String::from_utf8_lossy(&output.stdout));
        row.inputs += report.inputs;
        row.panics += report.panics;
        row.peak_rss_kib = row.peak_rss_kib.max(report.peak_rss_kib);
        match output.status.code() {
            Some(0) => break,
            Some(PANIC_EXIT) => break,
            Some(HANG_EXIT) => {
                let (before, input) = last_words(&last);
                row.hangs += 1;
                row.inputs += before + 1;
                let saved = save(&crashes, t.name, "hang", &input)?;
                eprintln!(
                    "  {}: an input ran past {} s; saved as {}",
                    t.name,
                    args.hang_seconds,
                    saved.display()
                );
            }
            code => {
                // Killed by a signal (abort, SIGSEGV, SIGKILL from the memory limit) or exited
                // with a code of its own: the input being run is the cause.
                let (before, input) = last_words(&last);
                row.aborts += 1;
                row.inputs += before + 1;
                let saved = save(&crashes, t.name, "abort", &input)?;
                let how = code.map_or_else(|| format!("{}", output.status), |c| format!("exit code {c}"));
                eprintln!("  {}: the worker died ({how}); input saved as {}", t.name, saved.display());
            }
        }
        round += 1;
    }
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}

/// The worker: runs mutated inputs of one target in process until the budget is spent.
fn worker(
    root: &Path,
    t: &Target,
    budget: Budget,
    seed: u64,
    args: &FuzzArgs,
    last: &Path,
) -> anyhow::Result<()> {
    let (hang_seconds, crashes) = (args.hang_seconds, crashes_dir(root, args));
    let corpus = read_corpus(root, t.name)?;
    let words = dictionary(&corpus);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut last_file =
        std::fs::File::create(last).with_context(|| format!("failed to create {}", last.display()))?;
    // The watchdog reads when the running input started (ms since `epoch`, 0 when idle).
    let epoch = Instant::now();
    let running_since = Arc::new(AtomicU64::new(0));
    {
        let running_since = Arc::clone(&running_since);
        let limit = hang_seconds * 1000;
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let since = running_since.load(Ordering::Relaxed);
                if since > 0 && (epoch.elapsed().as_millis() as u64).saturating_sub(since) > limit {
                    eprintln!("an input ran past {hang_seconds} s");
                    std::process::exit(HANG_EXIT);
                }
            }
        });
    }
    // Panics are counted and saved, not printed one by one: the first message is kept.
    std::panic::set_hook(Box::new(|_| {}));
    let deadline = budget.seconds.map(|s| epoch + Duration::from_secs(s));
    let mut report = WorkerReport::default();
    let mut next_progress = epoch + PROGRESS_EVERY;
    let mut input = Vec::new();
    loop {
        if budget.inputs.is_some_and(|n| report.inputs >= n) || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        // Every corpus file runs once unchanged first; then mutants.
        input.clear();
        match corpus.get(report.inputs as usize) {
            Some(seed_input) if !args.mutants_only => input.extend_from_slice(seed_input),
            _ => mutate(&mut rng, &corpus, &words, &mut input),
        }
        record(&mut last_file, report.inputs, &input)?;
        running_since.store((epoch.elapsed().as_millis() as u64).max(1), Ordering::Relaxed);
        let planted = args.plant.as_deref().filter(|_| report.inputs == PLANT_AT);
        let outcome = std::panic::catch_unwind(|| match planted {
            Some("panic") => panic!("a planted panic"),
            Some("abort") => std::process::abort(),
            Some("alloc") => {
                let bytes = vec![1u8; (args.memory_mib as usize + 1) << 20];
                std::hint::black_box(&bytes);
            }
            Some(_) => std::thread::sleep(Duration::from_secs(hang_seconds * 10)),
            None => (t.run)(&input),
        });
        running_since.store(0, Ordering::Relaxed);
        report.inputs += 1;
        if let Err(payload) = outcome {
            report.panics += 1;
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let saved = save(&crashes, t.name, "panic", &input)?;
            eprintln!("  {}: panic ({message}); input saved as {}", t.name, saved.display());
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "  {}: {} inputs, {:.0}/s, peak RSS {} MiB",
                t.name,
                report.inputs,
                report.inputs as f64 / epoch.elapsed().as_secs_f64(),
                peak_rss_kib() / 1024
            );
        }
    }
    report.peak_rss_kib = peak_rss_kib();
    println!(
        "worker-report inputs={} panics={} peak_rss_kib={}",
        report.inputs, report.panics, report.peak_rss_kib
    );
    std::io::stdout().flush()?;
    if report.panics > 0 {
        std::process::exit(PANIC_EXIT);
    }
    Ok(())
}

fn parse_report(stdout: &str) -> WorkerReport {
    let mut report = WorkerReport::default();
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with("worker-report ")) else { return report };
    for field in line.split_whitespace().skip(1) {
        let Some((key, value)) = field.split_once('=') else { continue };
        let value = value.parse().unwrap_or(0);
        match key {
            "inputs" => report.inputs = value,
            "panics" => report.panics = value,
            "peak_rss_kib" => report.peak_rss_kib = value,
            _ => {}
        }
    }
    report
}

/// Writes the input about to run over the last one, after how many ran before it (the parent
/// reads both if the worker dies).
fn record(file: &mut std::fs::File, index: u64, input: &[u8]) -> anyhow::Result<()> {
    use std::io::Seek;
    file.set_len(0)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(&index.to_le_bytes())?;
    file.write_all(input)?;
    Ok(())
}

/// What a dead worker left in its `--last` file: how many inputs it ran before the one that
/// killed it, and that input.
fn last_words(path: &Path) -> (u64, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_default();
    match bytes.split_first_chunk::<8>() {
        Some((index, input)) => (u64::from_le_bytes(*index), input.to_vec()),
        None => (0, Vec::new()),
    }
}

/// The folder of saved inputs (relative to the root unless absolute).
fn crashes_dir(root: &Path, args: &FuzzArgs) -> PathBuf {
    root.join(&args.crashes)
}

/// Saves an input that broke a target under `crashes/<target>/`, named by its kind and hash;
/// returns the path.
fn save(crashes: &Path, target: &str, kind: &str, input: &[u8]) -> anyhow::Result<PathBuf> {
    use sha2::Digest;
    let dir = crashes.join(target);
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let hash = hex::encode(sha2::Sha256::digest(input));
    let path = dir.join(format!("{kind}-{}", &hash[..16]));
    std::fs::write(&path, input).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

/// The committed seed inputs of a target, in name order.
fn read_corpus(root: &Path, target: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = root.join(CORPUS).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut paths: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("failed to read {}", p.display())))
        .collect()
}

/// Words of the corpus (runs of letters, digits, `_`, `-`, `.` and `:`), for inserting keys and
/// values where a format expects them.
fn dictionary(corpus: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut words: Vec<Vec<u8>> = corpus
        .iter()
        .flat_map(|c| c.split(|b| !(b.is_ascii_alphanumeric() || b"_-.:".contains(b))))
        .filter(|w| (2..=40).contains(&w.len()))
        .map(<[u8]>::to_vec)
        .collect();
    words.sort();
    words.dedup();
    words
}

/// Integers at the edges where readers go wrong.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Replaces `out` with a mutant of a corpus file.
fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>], words: &[Vec<u8>], out: &mut Vec<u8>) {
    out.extend_from_slice(&corpus[rng.usize(..corpus.len())]);
    for _ in 0..rng.usize(1..=8) {
        let at = if out.is_empty() { 0 } else { rng.usize(..out.len()) };
        match rng.u8(..9) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.u8(..8),
            1 if !out.is_empty() => out[at] = rng.u8(..),
            2 => {
                let width = [1, 2, 4, 8][rng.usize(..4)];
                let value = INTERESTING[rng.usize(..INTERESTING.len())];
                let bytes = if rng.bool() { value.to_le_bytes() } else { value.to_be_bytes() };
                let end = (at + width).min(out.len());
                let from = if rng.bool() { 0 } else { 8 - width };
                out.splice(at..end, bytes[from..from + width].iter().copied());
            }
            3 => {
                let n = rng.usize(1..=16);
                out.splice(at..at, std::iter::repeat_with(|| rng.u8(..)).take(n));
            }
            4 if !out.is_empty() => {
                let end = (at + rng.usize(1..=64)).min(out.len());
                out.drain(at..end);
            }
            5 if !out.is_empty() => {
                let end = (at + rng.usize(1..=64)).min(out.len());
                let piece = out[at..end].to_vec();
                let times = if rng.u8(..16) == 0 { rng.usize(2..=64) } else { 1 };
                let to = rng.usize(..=out.len());
                out.splice(to..to, piece.iter().copied().cycle().take(piece.len() * times));
            }
            6 => {
                let other = &corpus[rng.usize(..corpus.len())];
                if !other.is_empty() {
                    let from = rng.usize(..other.len());
                    let end = (from + rng.usize(1..=256)).min(other.len());
                    out.truncate(at);
                    out.extend_from_slice(&other[from..end]);
                }
            }
            7 if !words.is_empty() => {
                let word = &words[rng.usize(..words.len())];
                out.splice(at..at, word.iter().copied());
            }
            8 => {
                let digits = INTERESTING[rng.usize(..INTERESTING.len())].to_string();
                out.splice(at..at, digits.bytes());
            }
            _ => {}
        }
    }
}

/// Sets the child's address-space limit between fork and exec.
fn limit_memory(command: &mut Command, bytes: u64) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe, the only call made between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// This process's peak resident set, in KiB (`VmHWM`), or 0 where the system does not say.
fn peak_rss_kib() -> u64 {
    modelqa::support::engine::peak_resident().map_or(0, |b| b / 1024)
}
