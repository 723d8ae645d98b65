//! `cargo xtask <task>`: the project's own tooling. One module per task.

mod bench;
mod bench_formats;
mod bench_serve;
mod certify;
mod fetch;
mod fixtures;
mod golden;
mod libtest;
mod schema;
mod serve;
mod train;

use std::path::PathBuf;

use anyhow::{Context, bail};

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  fixtures train [--steps N] [--batch N] [--seed N] [--weight-decay X] [--out DIR]
                           train qa-tiny and write it to fixtures/qa-tiny (about 30 min on 2 cores)
  fixtures eval [--dir DIR] [--failures]
                           held-out arithmetic accuracy of qa-tiny (or a trained copy), by operator;
                           --failures lists every wrong answer
  fixtures --check         verify fixtures/qa-tiny against its manifest
  golden [--accept]        run the golden-reference trials and list pending references; accept them
  schema [--check]         write playbooks/playbook.schema.json, or fail when it is stale
  certify [--family F --tier T [--rerun]] [--journal PATH]... [RUN_ID]...
                           score journals (default: the last run) into certifications/, the registry
                           and the README table; with --family/--tier, run that selection first
  certify --check          fail when certifications/, the registry or the README table is stale
  report [--model M] [--out DIR]
                           junit.xml, report.html and summary.md (default target/qualify/report)
  tickets [--model M] [--out DIR]
                           one Markdown ticket per falsified gate and root cause
  lock                     write playbooks/playbook.lock (certify refuses unlocked playbooks)
  fetch ORG/NAME[@REVISION] [--cache DIR]
                           download a model's safetensors, config and tokenizer into the Hugging Face
                           cache the harness reads (needs a network)
  serve PATH [--host ADDR] [--port N] [--model NAME]
                           the OpenAI-compatible server on a model directory or APR file (default
                           127.0.0.1:8080)
  bench [--models N]       harness expansion benchmarks on a synthetic playbook set (release build)
  bench serve [--requests N]  the server's latency, TTFT and throughput on qa-tiny per format, against run
  bench formats [--layers N] [--tokens N] [--keep]
                           conversion, size, load and decode speed per format on a Qwen2.5-0.5B-shaped model
";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "fixtures" => fixtures::run(&rest),
        "schema" => schema::run(&rest),
        "golden" => golden::run(&rest),
        "bench" if rest.first().map(String::as_str) == Some("serve") => {
            in_release(&task, &rest).unwrap_or_else(|| bench_serve::run(&rest[1..]))
        }
        "bench" if rest.first().map(String::as_str) == Some("formats") => {
            in_release(&task, &rest).unwrap_or_else(|| bench_formats::run(&rest[1..]))
        }
        "bench" => bench::run(&rest),
        "certify" => certify::certify(&rest),
        "report" => certify::report(&rest),
        "tickets" => certify::tickets(&rest),
        "lock" => certify::lock(&rest),
        "fetch" => fetch::run(&rest),
        "serve" => serve::run(&rest),
        "" | "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

/// Benchmarks of the harness's own code must not measure a debug build: from a debug xtask,
/// runs the same task in a release build of xtask instead (`None` when already in release).
fn in_release(task: &str, rest: &[String]) -> Option<anyhow::Result<()>> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let run = || -> anyhow::Result<()> {
        build_release("xtask for the benchmark", "a few minutes", &["--package", "xtask"])?;
        let status = cargo()
            .args(["run", "--quiet", "--release", "--package", "xtask", "--", task])
            .args(rest)
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
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Where the harness reads and writes under this environment, as it resolves them: relative to
/// the root, its working directory under cargo.
pub fn places() -> modelqa::config::Places {
    modelqa::config::Places::from_env().resolved_against(&root())
}

/// `cargo test --test qualify` in the root, told these places explicitly, so the harness reads
/// and writes exactly where this process looks whatever its working directory.
pub fn qualify_command(places: &modelqa::config::Places) -> std::process::Command {
    let mut command = cargo();
    command.args(["test", "--test", "qualify"]).envs(places.vars());
    command
}

/// The value after `--flag` in `args`.
pub fn flag_value(args: &[String], flag: &str) -> anyhow::Result<Option<String>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => args.get(i + 1).cloned().map(Some).with_context(|| format!("`{flag}` needs a value")),
    }
}
