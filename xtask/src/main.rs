//! `cargo xtask <task>`: the project's own tooling. One module per task, each owning the clap
//! flags struct of its task; the doc comments on those structs are the `--help`.

mod bench;
mod bench_batch;
mod bench_engine;
mod bench_formats;
mod bench_gates;
mod bench_kernels;
mod bench_load;
mod bench_memory;
mod bench_serve;
mod bench_trials;
mod bootstrap;
mod certify;
mod crashes;
mod diff;
mod fetch;
mod fixtures;
mod fuzz;
mod golden;
mod libtest;
mod schema;
mod serve;
mod shards;
mod train;

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// The project's own tooling: one module per task.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Train, evaluate or verify qa-tiny, the model the playbooks and tests run
    Fixtures(fixtures::FixturesArgs),
    /// Run the golden-reference trials and list pending references, or accept them
    Golden(golden::GoldenArgs),
    /// Write playbooks/playbook.schema.json, or fail when it is stale
    Schema(schema::SchemaArgs),
    /// Score journals (default: the last run) into certifications/, the registry and the README table
    Certify(certify::CertifyArgs),
    /// Write junit.xml, report.html and summary.md from the certified evidence
    Report(certify::ReportArgs),
    /// Write one Markdown ticket per falsified gate and root cause
    Tickets(certify::TicketsArgs),
    /// Write playbooks/playbook.lock (certify refuses unlocked playbooks)
    Lock(certify::LockArgs),
    /// Write a playbook for a model from its config.json, size and chat template, to review and lock
    Bootstrap(bootstrap::BootstrapArgs),
    /// Download a model's safetensors, config and tokenizer into the Hugging Face cache (needs a network)
    Fetch(fetch::FetchArgs),
    /// Serve a model directory or APR file with the OpenAI-compatible server (modelqa-engine, release)
    Serve(serve::ServeArgs),
    /// Fuzz the readers of untrusted bytes (playbooks, model files, journals, HTTP requests)
    Fuzz(fuzz::FuzzArgs),
    /// What changed between two runs: flipped verdicts and moved metrics, and which are beyond noise
    Diff(diff::DiffArgs),
    /// Under the real cargo-nextest: an abort, a segfault and a hang in one trial each end as its own record
    Crashes(crashes::CrashesArgs),
    /// The model-affine shard recipe under the real cargo-nextest: an archive, N shard runs, each trial and session once
    Shards(shards::ShardsArgs),
    /// Benchmarks: harness expansion, or `serve` / `formats` / `kernels` / `engine` (release builds)
    Bench(bench::BenchArgs),
}

impl Cli {
    /// The refusals clap cannot express, as usage errors (exit 2) before any work starts.
    fn check(&self) -> Result<(), clap::Error> {
        match &self.task {
            Some(Task::Fixtures(args)) => args.check(),
            _ => Ok(()),
        }
    }
}

/// Parses a command line (the program name first): clap's own errors, then [`Cli::check`].
fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    cli.check()?;
    Ok(cli)
}

/// A usage error (exit 2) with the usage line of the subcommand at `path`.
pub fn refuse(path: &[&str], message: impl std::fmt::Display) -> clap::Error {
    let mut command = Cli::command();
    command.build();
    let mut at = &mut command;
    for name in path {
        at = at.find_subcommand_mut(name).expect("a subcommand of the xtask");
    }
    at.error(clap::error::ErrorKind::MissingRequiredArgument, message)
}

fn main() -> std::process::ExitCode {
    let cli = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(task) = cli.task else {
        Cli::command().print_help()?;
        return Ok(());
    };
    match task {
        Task::Fixtures(args) => fixtures::run(&args),
        Task::Schema(args) => schema::run(&args),
        Task::Golden(args) => golden::run(&args),
        Task::Bench(args) => match args.which {
            Some(bench::Which::Serve(args)) => in_release().unwrap_or_else(|| bench_serve::run(&args)),
            Some(bench::Which::Formats(args)) => in_release().unwrap_or_else(|| bench_formats::run(&args)),
            Some(bench::Which::Kernels(args)) => in_release().unwrap_or_else(|| bench_kernels::run(&args)),
            Some(bench::Which::Engine(args)) => in_release().unwrap_or_else(|| bench_engine::run(&args)),
            Some(bench::Which::Batch(args)) => in_release().unwrap_or_else(|| bench_batch::run(&args)),
            Some(bench::Which::Memory(args)) => bench_memory::run(&args),
            Some(bench::Which::Trials(args)) => bench_trials::run(&args),
            Some(bench::Which::Load(args)) => bench_load::run(&args),
            // Started by `bench engine` from its own (release) binary.
            Some(bench::Which::EngineChild(args)) => bench_engine::child(&args),
            // Rates, not speeds: any build measures the same thing.
            Some(bench::Which::Gates(args)) => bench_gates::run(&args),
            None => bench::run(&args.harness),
        },
        Task::Certify(args) => certify::certify(&args),
        Task::Report(args) => certify::report(&args),
        Task::Tickets(args) => certify::tickets(&args),
        Task::Lock(args) => certify::lock(&args),
        Task::Fetch(args) => fetch::run(&args),
        Task::Serve(args) => serve::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Crashes(args) => crashes::run(&args),
        Task::Shards(args) => shards::run(&args),
        Task::Diff(args) => diff::run(&args),
        Task::Bootstrap(args) => bootstrap::bootstrap(&args),
    }
}

/// Benchmarks of the harness's own code must not measure a debug build: from a debug xtask,
/// runs the same command line in a release build of xtask instead (`None` when already in release).
fn in_release() -> Option<anyhow::Result<()>> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let run = || -> anyhow::Result<()> {
        build_release("xtask for the benchmark", "a few minutes", &["--package", "xtask"])?;
        let status = cargo()
            .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
            .args(std::env::args_os().skip(1))
            .status()
            .context("failed to run cargo")?;
        anyhow::ensure!(status.success(), "the release benchmark ended with {status}");
        Ok(())
    };
    Some(run())
}

/// cargo, in the root.
fn cargo() -> std::process::Command {
    let mut command = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// `cargo build --release ARGS`, not quiet: a first release build is long (`first_build`), and
/// cargo's own progress on stderr shows it working. The `cargo run --quiet` after it then only
/// starts the binary.
pub fn build_release(what: &str, first_build: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("building {what} in release (the first build takes {first_build}; later ones reuse it)…");
    let status = cargo().args(["build", "--release"]).args(args).status().context("failed to run cargo")?;
    anyhow::ensure!(status.success(), "the release build of {what} failed ({status})");
    Ok(())
}

/// The workspace root (xtask lives one level below it).
/// The last `max` bytes of `s` (from a character boundary): the end of a child's output.
pub(crate) fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Where the harness reads and writes under this environment, as it resolves them: relative to
/// the root, its working directory under cargo.
pub fn places() -> modelqa::support::config::Places {
    modelqa::support::config::Places::from_env().resolved_against(&root())
}

/// `cargo test --test qualify` in the root, told these places explicitly, so the harness reads
/// and writes exactly where this process looks whatever its working directory.
pub fn qualify_command(places: &modelqa::support::config::Places) -> std::process::Command {
    let mut command = cargo();
    command.args(["test", "--test", "qualify"]).envs(places.vars());
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(line: &str) -> Result<Cli, clap::Error> {
        parse(line.split_whitespace())
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every invocation README.md, ARCHITECTURE.md, docs/ and .ci/run show still parses.
    #[test]
    fn the_documented_invocations_parse() {
        for line in [
            "xtask",
            "xtask fixtures --check",
            "xtask fixtures train --yes",
            "xtask fixtures train --steps 3200 --batch 128 --seed 7 --weight-decay 0.1 --out target/qa-tiny-7",
            "xtask fixtures eval",
            "xtask fixtures eval --failures",
            "xtask fixtures eval --dir target/qa-tiny-7 --failures",
            "xtask golden",
            "xtask golden --accept",
            "xtask golden --accept --yes",
            "xtask schema",
            "xtask schema --check",
            "xtask certify",
            "xtask certify --check",
            "xtask certify --family qa-tiny --tier mvp",
            "xtask certify --family qa-tiny --tier mvp --rerun",
            "xtask certify run-1 run-2 --journal a.jsonl --journal b.jsonl",
            "xtask report",
            "xtask report --model qa-tiny-llama --out target/report",
            "xtask tickets",
            "xtask tickets --model modelqa/qa-tiny-llama --out target/tickets",
            "xtask lock",
            "xtask fetch Qwen/Qwen2.5-Coder-0.5B-Instruct",
            "xtask fetch Qwen/Qwen2.5-Coder-0.5B-Instruct@main --cache target/hub",
            "xtask serve fixtures/qa-tiny/qa-tiny-qwen2 --port 8080",
            "xtask serve model.apr --host 0.0.0.0 --port 0 --model qa --backend cpu",
            "xtask serve fixtures/qa-tiny/qa-tiny-qwen2 --api-key-env MODELQA_API_KEY",
            "xtask serve fixtures/qa-tiny/qa-tiny-qwen2 --max-batch 1",
            "xtask bench",
            "xtask bench --families 10 --models 5 --runs 1",
            "xtask bench serve",
            "xtask bench serve --requests 10 --model fixtures/qa-tiny/qa-tiny-llama",
            "xtask bench formats",
            "xtask bench formats --layers 2 --tokens 8 --keep",
            "xtask bench kernels",
            "xtask bench kernels --lm-head --runs 9",
            "xtask bench kernels --only qa-tiny --runs 21",
            "xtask bench kernels --only qwen-0.5b --lm-head --rows 1,16 --kinds q8_0,bf16",
            "xtask bench trials",
            "xtask bench trials --filter qa-tiny::mvp --rounds 3 --baseline ../modelqa-old",
            "xtask bench engine",
            "xtask bench engine --skip-peers --layers 4",
            "xtask bench engine --layers 4 --reps 5 --threads 2 --formats f32,f16,q8_0,q4_k_m --keep",
            "xtask bench engine --formats f32,bf16,apr --rounds 2 --python /tmp/venv/bin/python",
            "xtask bench batch",
            "xtask bench batch --layers 2 --batch 4 --reps 1 --formats f32,q4_k_m --compete 2",
            "xtask bench batch --formats apr,gguf-f16 --compete 2",
            "xtask bench load --shape 0.5b",
            "xtask bench load --shape 0.5b --format gguf-q8_0",
        ] {
            if let Err(e) = parses(line) {
                panic!("`{line}` does not parse:\n{e}");
            }
        }
    }

    #[test]
    fn flags_reach_their_task_with_their_defaults() {
        let Ok(Cli { task: Some(Task::Fixtures(args)) }) = parses("xtask fixtures train --yes") else {
            panic!("fixtures train --yes")
        };
        let Some(fixtures::FixturesCommand::Train(t)) = args.command else { panic!("train") };
        let d = train::SCHEDULE;
        assert_eq!((t.steps, t.batch, t.seed, t.weight_decay), (d.steps, d.batch, d.seed, d.weight_decay));
        assert_eq!(t.out, None);

        let Ok(Cli { task: Some(Task::Certify(c)) }) =
            parses("xtask certify r1 --journal a.jsonl r2 --journal b.jsonl")
        else {
            panic!("certify")
        };
        assert_eq!(c.run_ids, ["r1", "r2"]);
        assert_eq!(c.journal, [PathBuf::from("a.jsonl"), PathBuf::from("b.jsonl")]);

        let Ok(Cli { task: Some(Task::Bench(b)) }) = parses("xtask bench") else { panic!("bench") };
        assert!(b.which.is_none());
        assert_eq!((b.harness.families, b.harness.models, b.harness.runs), (100, 10, 3));

        let Ok(Cli { task: Some(Task::Bench(b)) }) = parses("xtask bench engine") else {
            panic!("bench engine")
        };
        let Some(bench::Which::Engine(e)) = b.which else { panic!("engine") };
        assert_eq!(
            (e.layers, e.reps, e.rounds, e.threads, e.skip_peers, e.keep),
            (24, 5, 1, None, false, false)
        );
        assert_eq!(e.formats.len(), 6, "every format by default");
        let Ok(Cli { task: Some(Task::Bench(b)) }) =
            parses("xtask bench engine --formats q8_0,q4_k_m --threads 2 --skip-peers")
        else {
            panic!("bench engine --formats")
        };
        let Some(bench::Which::Engine(e)) = b.which else { panic!("engine") };
        assert_eq!(e.formats, [bench_engine::Choice::Q8_0, bench_engine::Choice::Q4KM]);
        assert_eq!((e.threads, e.skip_peers), (Some(2), true));
    }

    /// The example: `--step` for `--steps` used to retrain silently for 30 minutes.
    #[test]
    fn a_mistyped_flag_is_refused() {
        for line in [
            "xtask fixtures train --step 100 --yes",
            "xtask fixtures --chek",
            "xtask golden --acept",
            "xtask certify --familly qa-tiny --tier mvp",
            "xtask lock --force",
            "xtask bench --model 3",
            "xtask bench serve --request 3",
            "xtask bench engine --format f32",
            "xtask bench engine --formats q5_k_m",
            "xtask serve m --prot 8080",
            "xtask fetch a/b --cahce dir",
            "xtask fixtures train eval",
            "xtask nonsense",
        ] {
            let e = parses(line).err().unwrap_or_else(|| panic!("`{line}` parsed"));
            assert_eq!(e.exit_code(), 2, "{line}: {e}");
        }
    }

    #[test]
    fn flags_that_go_together_are_held_together() {
        for line in [
            "xtask certify --family qa-tiny",
            "xtask certify --tier mvp",
            "xtask certify --rerun",
            "xtask certify --family qa-tiny --tier mvp r1",
            "xtask certify --check --journal a.jsonl",
            "xtask golden --yes",
            "xtask fixtures --check train --yes",
            "xtask serve",
            "xtask serve m --backend tpu",
            "xtask fetch",
        ] {
            assert!(parses(line).is_err(), "`{line}` parsed");
        }
    }

    #[test]
    fn fixtures_train_refuses_to_overwrite_the_committed_weights_unless_told() {
        let committed = fixtures::qa_tiny_dir();
        for line in [
            "xtask fixtures train".to_string(),
            "xtask fixtures train --steps 100".to_string(),
            format!("xtask fixtures train --out {}", committed.display()),
        ] {
            let e = parses(&line).err().unwrap_or_else(|| panic!("`{line}` parsed"));
            assert_eq!(e.exit_code(), 2, "{line}: {e}");
            let message = e.to_string();
            assert!(message.contains("committed weights") && message.contains("--yes"), "{message}");
        }
        for line in [
            "xtask fixtures train --yes".to_string(),
            "xtask fixtures train --out target/qa-tiny-retrained".to_string(),
            format!("xtask fixtures train --out {} --yes", committed.display()),
        ] {
            assert!(parses(&line).is_ok(), "`{line}` refused");
        }
    }
}
