//! `cargo xtask crashes`: the crash and hang accounting under the real cargo-nextest, one process
//! per trial, as CI runs it with `cargo nextest run --profile ci`.
//!
//! A generated model and a three-scenario playbook; for each planted fault (an abort, a segfault
//! and a hang inside the forward pass of one trial) nextest runs the family's `run` trials, and
//! the run's journal must hold that trial as `crashed` with G3 (or `timeout`), and the others
//! finished. `cargo test` cannot check this from inside: it holds the build directory while its
//! tests run, so a test that started nextest would wait on it. `.ci/run` runs this task.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use modelqa::support::journal::EvidenceRecord;
use modelqa::support::testmodel::{TestArchitecture, TestModelShape, write_test_model};
use modelqa::vocab::Outcome;

/// `crashes` takes no arguments.
#[derive(Debug, clap::Args)]
pub struct CrashesArgs {}

const PLAYBOOK: &str = r#"
playbook: 1
family: crashes
failure_policy: collect-all
matrix:
  timeout_ms: 3000
tiers:
  smoke:
    formats: [safetensors]
    backends: [cpu]
    modalities: [run]
models:
  - id: test/tiny
    path: model
scenarios:
  - name: any_text
    prompt: "Hello! How are you today?"
    max_tokens: 8
    oracles: [{regex: '\S'}]
  - name: arithmetic
    prompt: "What is 2+2?"
    max_tokens: 8
    oracles: [{regex: '\S'}]
  - name: sampled
    prompt: "List three colors."
    max_tokens: 8
    oracles: [{regex: '\S'}]
"#;

/// The trial each fault is planted in, and the outcome its record must hold.
const FAULTS: [(&str, Outcome); 3] =
    [("abort", Outcome::Crashed), ("segfault", Outcome::Crashed), ("hang", Outcome::Timeout)];

pub fn run(_: &CrashesArgs) -> anyhow::Result<()> {
    let version = crate::cargo().args(["nextest", "--version"]).output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        bail!("cargo-nextest is not installed: `cargo install cargo-nextest --locked` installs it");
    }
    let dir = tempfile::tempdir().context("a temporary directory")?;
    write_test_model(&dir.path().join("model"), TestArchitecture::Llama, TestModelShape::default(), 11)?;
    std::fs::write(dir.path().join("playbook.yaml"), PLAYBOOK)?;
    println!("| fault | nextest exit | faulted trial | its record | the other trials |");
    println!("|---|---|---|---|---|");
    let mut problems = Vec::new();
    for (fault, want) in FAULTS {
        let run_id = format!("nextest-{fault}");
        let status = crate::cargo()
            .args([
                "nextest",
                "run",
                "--no-fail-fast",
                "--test",
                "qualify",
                "-E",
                "test(/^crashes::.*::run::/)",
            ])
            .env("QUALIFY_PLAYBOOKS", dir.path().join("playbook.yaml"))
            .env("QUALIFY_JOURNAL_DIR", dir.path().join("journal"))
            .env("QUALIFY_GOLDEN_DIR", dir.path().join("golden"))
            .env("QUALIFY_RUN_ID", &run_id)
            .env("QUALIFY_FAULT_CRASH", format!("{fault}:arithmetic"))
            .env_remove("QUALIFY_MODEL_DIR")
            .env_remove("QUALIFY_FAILURE_POLICY")
            .output()
            .context("running cargo nextest")?;
        let records = journal(&dir.path().join("journal").join(format!("{run_id}.jsonl")))?;
        let faulted = records.iter().find(|r| r.trial.ends_with("::run::arithmetic"));
        let others: Vec<&EvidenceRecord> =
            records.iter().filter(|r| !r.trial.ends_with("::run::arithmetic")).collect();
        let shown =
            faulted.map_or("no record".to_string(), |r| format!("{} ({})", r.outcome.as_str(), r.gate));
        let others_shown =
            others.iter().map(|r| r.outcome.as_str().to_string()).collect::<Vec<_>>().join(", ");
        println!(
            "| {fault} | {} | run::arithmetic | {shown} | {others_shown} |",
            status.status.code().map_or("signal".to_string(), |c| c.to_string())
        );
        match faulted {
            Some(r) if r.outcome == want && r.gate == "G3" => {}
            _ => problems
                .push(format!("{fault}: the faulted trial's record is {shown}, not {} (G3)", want.as_str())),
        }
        if status.status.success() {
            problems.push(format!("{fault}: nextest passed a run with a planted {fault}"));
        }
        if others.len() != 2 || others.iter().any(|r| r.outcome != Outcome::Corroborated) {
            problems.push(format!(
                "{fault}: the other two trials should each pass in their own process: {others_shown}"
            ));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    println!("\nevery planted fault ends as its own record under cargo-nextest, and the other trials pass");
    Ok(())
}

fn journal(path: &Path) -> anyhow::Result<Vec<EvidenceRecord>> {
    let (records, _) = modelqa::support::journal::read(path)
        .with_context(|| format!("reading the journal {}", path.display()))?;
    Ok(records)
}
