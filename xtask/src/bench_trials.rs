//! `cargo xtask bench trials [--filter F] [--rounds N] [--baseline DIR]`: how many trials a
//! second a qualify run gets through, with every cell's scenario trials generated one at a time
//! (`QUALIFY_CELL_BATCH=1`, the sequential path) against generated as cell batches (the
//! default), in interleaved rounds, and whether the two give the same verdict to every trial.
//!
//! The harness is the test build (`cargo test --test qualify --no-run`), the one the README's
//! `cargo test --test qualify -- qa-tiny::mvp` runs, on libtest's default trial threads. A trial
//! is a journal record of the run (the harness writes one per trial that ran); the wall time is the
//! whole process's, start-up and expansion included, as a user waits for it.
//!
//! `--baseline DIR` adds a third run per round: the qualify harness of another checkout (a
//! `git worktree` of an earlier commit, say), built there into a target directory of its own
//! (`target/bench/baseline-target`: the first build compiles every dependency), and run from that
//! checkout as it stands. Its trial set
//! may differ from this one's, so its trials are counted from libtest's summary and its verdicts
//! are not compared.
//!
//! The table also says what share of the sequential run's summed trial time went to the
//! scenario trials a cell batch generates (`run` and `chat`): batching can speed up that share
//! only, whatever the engine does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use modelqa::vocab::Outcome;

/// `bench trials …`.
#[derive(Debug, clap::Args)]
pub struct TrialsArgs {
    /// The trial filter the runs select (libtest's, as after `cargo test --test qualify --`)
    #[arg(long, value_name = "FILTER", default_value = "qa-tiny::mvp")]
    pub filter: String,
    /// Interleaved rounds (each figure is the median over them)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rounds: usize,
    /// Another checkout whose qualify harness is run as a third, baseline row
    #[arg(long, value_name = "DIR")]
    pub baseline: Option<PathBuf>,
}

/// One way of running the harness.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Sequential,
    Batched,
    Baseline,
}

impl Mode {
    fn label(self, baseline: Option<&Path>) -> String {
        match self {
            Mode::Sequential => "sequential (QUALIFY_CELL_BATCH=1)".into(),
            Mode::Batched => "cell batches (the default)".into(),
            Mode::Baseline => format!(
                "baseline {} (as built there)",
                baseline.map_or(String::new(), |p| p.display().to_string())
            ),
        }
    }
    fn id(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Batched => "batched",
            Mode::Baseline => "baseline",
        }
    }
}

/// What one run gave.
struct Run {
    wall_s: f64,
    /// Trials that ran (libtest's passed + failed).
    trials: usize,
    /// Each trial's outcome, from the journal (this checkout's runs only).
    outcomes: Outcomes,
    /// Summed trial durations (ms): all, and the `run` and `chat` scenario trials'.
    summed_ms: f64,
    scenario_ms: f64,
}

pub fn run(args: &TrialsArgs) -> anyhow::Result<()> {
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let root = crate::root();
    let binary = crate::bench_memory::qualify_binary(&root, None)?;
    let baseline = match &args.baseline {
        Some(dir) => {
            let dir =
                dir.canonicalize().with_context(|| format!("the baseline checkout {}", dir.display()))?;
            ensure!(
                dir.join("Cargo.toml").is_file(),
                "{} is not a checkout of this project (no Cargo.toml)",
                dir.display()
            );
            // A target directory of its own: cargo names a workspace member's artifacts by its
            // path inside the workspace, so another checkout built into this one's target
            // directory would overwrite this checkout's build-script outputs with its own (its
            // harness fingerprint, stamped into every record) and leave cargo believing them
            // fresh.
            let target = root.join("target/bench/baseline-target");
            Some((crate::bench_memory::qualify_binary(&dir, Some(&target))?, dir))
        }
        None => None,
    };
    let work = root.join("target/bench/trials");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let mut modes = vec![Mode::Sequential, Mode::Batched];
    if baseline.is_some() {
        modes.push(Mode::Baseline);
    }
    let load_before = loadavg();
    let mut runs: Vec<(Mode, Run)> = Vec::new();
    for round in 1..=args.rounds {
        for &mode in &modes {
            eprintln!("round {round}/{}: {}…", args.rounds, mode.label(args.baseline.as_deref()));
            let (bin, dir) = match (mode, &baseline) {
                (Mode::Baseline, Some((bin, dir))) => (bin.as_path(), dir.as_path()),
                _ => (binary.as_path(), root.as_path()),
            };
            let r = measure(bin, dir, &work, &args.filter, mode, &format!("{}-{round}", mode.id()))?;
            eprintln!("  {} trials in {:.2} s", r.trials, r.wall_s);
            runs.push((mode, r));
        }
    }
    let load_after = loadavg();

    let median = |mode: Mode, f: &dyn Fn(&Run) -> f64| -> f64 {
        let mut v: Vec<f64> = runs.iter().filter(|(m, _)| *m == mode).map(|(_, r)| f(r)).collect();
        v.sort_by(f64::total_cmp);
        let half = v.len() / 2;
        if v.len().is_multiple_of(2) { (v[half - 1] + v[half]) / 2.0 } else { v[half] }
    };
    let rate = |r: &Run| r.trials as f64 / r.wall_s;
    let sequential_rate = median(Mode::Sequential, &rate);
    println!();
    println!(
        "qualify `{}`, test build, libtest's default trial threads; {} cpus; load average before {load_before}, after {load_after}; {} interleaved rounds, medians",
        args.filter,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.rounds
    );
    println!();
    println!("| run | trials | wall s | trials/s | vs sequential |");
    println!("|---|---:|---:|---:|---:|");
    for &mode in &modes {
        let trials = runs.iter().find(|(m, _)| *m == mode).map_or(0, |(_, r)| r.trials);
        let per_s = median(mode, &rate);
        println!(
            "| {} | {trials} | {:.2} | {per_s:.1} | {:.2} |",
            mode.label(args.baseline.as_deref()),
            median(mode, &|r| r.wall_s),
            per_s / sequential_rate
        );
    }
    let share = median(Mode::Sequential, &|r| r.scenario_ms / r.summed_ms.max(1e-9));
    println!();
    println!(
        "In the sequential runs the `run` and `chat` scenario trials (what a cell batch generates) took {:.0} % of the summed trial time; batching can shorten that share only.",
        100.0 * share
    );

    // Verdicts: every trial's outcome in every sequential and every batched run.
    let of =
        |mode: Mode| runs.iter().filter(|(m, _)| *m == mode).map(|(_, r)| &r.outcomes).collect::<Vec<_>>();
    let (sequential, batched) = (of(Mode::Sequential), of(Mode::Batched));
    let differ = differences(&sequential, &batched);
    let trials = sequential.first().map_or(0, |o| o.len());
    if differ.is_empty() {
        println!(
            "Verdicts: the same outcome for each of the {trials} trials in every sequential and every batched run."
        );
        return Ok(());
    }
    println!("Verdicts: {} of {trials} trials do not have one outcome in every run:", differ.len());
    for (name, (seq, bat)) in &differ {
        let show = |v: &[Option<Outcome>]| {
            v.iter().map(|o| o.map_or("absent", Outcome::as_str)).collect::<Vec<_>>().join("/")
        };
        println!("  {name}: sequential {}, batched {}", show(seq), show(bat));
    }
    judge(&differ)
}

/// Each run's outcome of every trial.
type Outcomes = BTreeMap<String, Outcome>;

/// A trial's outcomes run by run: the sequential runs', the batched runs' (`None`: no record).
type Both = (Vec<Option<Outcome>>, Vec<Option<Outcome>>);

/// The trials that do not get one outcome in every run, sequential and batched alike.
fn differences<'a>(sequential: &[&'a Outcomes], batched: &[&'a Outcomes]) -> BTreeMap<&'a str, Both> {
    let names: BTreeSet<&str> =
        sequential.iter().chain(batched).flat_map(|o| o.keys().map(String::as_str)).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let seq: Vec<Option<Outcome>> = sequential.iter().map(|o| o.get(name).copied()).collect();
            let bat: Vec<Option<Outcome>> = batched.iter().map(|o| o.get(name).copied()).collect();
            let first = *seq.first().or(bat.first())?;
            seq.iter().chain(&bat).any(|o| *o != first).then_some((name, (seq, bat)))
        })
        .collect()
}

/// Fails where a trial that is not timing-judged lacks one outcome: a timing-judged (`perf::`)
/// trial may fall either side of its floor from one run to the next with the machine's load,
/// any other difference is batching (or the harness) changing a verdict.
fn judge(differ: &BTreeMap<&str, Both>) -> anyhow::Result<()> {
    let untimed = differ.keys().filter(|n| !n.contains("::perf::")).count();
    if untimed == 0 {
        println!(
            "(only timing-judged perf:: trials, whose verdicts move with the machine's load between any two runs)"
        );
        return Ok(());
    }
    bail!("{untimed} trials that are not timing-judged did not get the same verdict in every run")
}

/// One run of `binary` from `dir` on `filter`.
fn measure(
    binary: &Path,
    dir: &Path,
    work: &Path,
    filter: &str,
    mode: Mode,
    run_id: &str,
) -> anyhow::Result<Run> {
    let journal = work.join("journal");
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir)
        .arg(filter)
        .env("QUALIFY_JOURNAL_DIR", &journal)
        .env("QUALIFY_RUN_ID", run_id)
        .env_remove("QUALIFY_RESUME")
        .env_remove("QUALIFY_SHARD")
        .env_remove("QUALIFY_FAILURE_POLICY")
        .env_remove("NEXTEST");
    match mode {
        Mode::Sequential => cmd.env("QUALIFY_CELL_BATCH", "1"),
        Mode::Batched | Mode::Baseline => cmd.env_remove("QUALIFY_CELL_BATCH"),
    };
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("running {}", binary.display()))?;
    let wall_s = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().rev().find(|l| l.starts_with("test result:")).with_context(|| {
        format!(
            "{} printed no libtest summary (exit {:?}):\n{}",
            binary.display(),
            out.status.code(),
            crate::tail(&String::from_utf8_lossy(&out.stderr), 3000)
        )
    })?;
    let count = |word: &str| -> usize {
        summary
            .split(';')
            .find_map(|part| part.trim().strip_suffix(word)?.split_whitespace().last()?.parse().ok())
            .unwrap_or(0)
    };
    let trials = count(" passed") + count(" failed");
    ensure!(trials > 0, "`{filter}` selected no trial that ran ({summary})");
    let mut outcomes = BTreeMap::new();
    let (mut summed_ms, mut scenario_ms) = (0.0, 0.0);
    if mode != Mode::Baseline {
        let (records, _) = modelqa::support::journal::read(&journal.join(format!("{run_id}.jsonl")))
            .with_context(|| format!("reading the journal of run {run_id}"))?;
        for r in records.into_iter().filter(|r| !r.unfinished) {
            summed_ms += r.metrics.duration_ms;
            if matches!(r.modality.as_str(), "run" | "chat") {
                scenario_ms += r.metrics.duration_ms;
            }
            outcomes.insert(r.trial, r.outcome);
        }
    }
    Ok(Run { wall_s, trials, outcomes, summed_ms, scenario_ms })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(list: &[(&str, Outcome)]) -> Outcomes {
        list.iter().map(|(n, o)| (n.to_string(), *o)).collect()
    }

    #[test]
    fn a_verdict_batching_changes_fails_the_bench_and_a_timing_one_does_not() {
        use Outcome::{Corroborated as Pass, Falsified as Fail, Unstable};
        let clean =
            outcomes(&[("f::t::m::apr::cpu::run::add", Pass), ("f::t::m::apr::cpu::perf::decode", Pass)]);
        assert!(differences(&[&clean, &clean], &[&clean, &clean]).is_empty());

        let noisy =
            outcomes(&[("f::t::m::apr::cpu::run::add", Pass), ("f::t::m::apr::cpu::perf::decode", Unstable)]);
        let differ = differences(&[&clean, &clean], &[&noisy, &clean]);
        assert_eq!(differ.keys().copied().collect::<Vec<_>>(), ["f::t::m::apr::cpu::perf::decode"]);
        assert!(judge(&differ).is_ok());

        // Planted: a batched run that falsifies a scenario, and one that lost a record.
        let changed =
            outcomes(&[("f::t::m::apr::cpu::run::add", Fail), ("f::t::m::apr::cpu::perf::decode", Pass)]);
        let differ = differences(&[&clean], &[&changed]);
        assert_eq!(differ["f::t::m::apr::cpu::run::add"], (vec![Some(Pass)], vec![Some(Fail)]));
        assert!(judge(&differ).is_err());
        let lost = outcomes(&[("f::t::m::apr::cpu::perf::decode", Pass)]);
        assert!(judge(&differences(&[&clean], &[&lost])).is_err());
    }
}
