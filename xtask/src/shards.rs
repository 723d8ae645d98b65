//! `cargo xtask shards [--shards N]`: the CI recipe for model-affine shards, end to end with the
//! real cargo-nextest. A twelve-model playbook over one generated model is run once whole (its
//! journal gives the times to balance by), then archived once (`cargo nextest archive`) and run as
//! `N` shards from the archive (`QUALIFY_SHARD=k/N cargo nextest run --archive-file …`), as N CI
//! machines would. Checked: the shards together run every trial of the whole run exactly once,
//! with the same outcomes; every session (model, format, backend) loads on one shard only; each
//! shard's JUnit report names the trials its journal holds; the split's estimated longest shard
//! against the mean; the shards' journals merged certify every model as the whole run does
//! (`mqs.json` byte for byte, and the registry row but what a run measures: speeds and date). Trials may fail (G4 finds a random model's answers garbage): outcomes are
//! compared, not required to pass. Wall times are printed, never judged (a busy machine is not
//! a failure).
//! `cargo test` cannot run this from inside (it holds the build directory while its tests run);
//! `.ci/run` runs this task.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use modelqa::support::certify::workspace::Layout;
use modelqa::support::certify::{evidence, registry, workspace};
use modelqa::support::journal::EvidenceRecord;
use modelqa::support::testmodel::{TestArchitecture, TestModelShape, write_test_model};

/// `shards …`.
#[derive(Debug, clap::Args)]
pub struct ShardsArgs {
    /// Shards to split the run into
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub shards: usize,
}

/// Models in the playbook: twelve ids over the same files, as a registry's siblings would be.
const MODELS: usize = 12;

fn playbook() -> String {
    let models: String = (0..MODELS).map(|i| format!("  - id: test/m{i:02}\n    path: model\n")).collect();
    format!(
        r#"playbook: 1
family: shards
failure_policy: collect-all
tiers:
  smoke:
    formats: [safetensors, apr]
    backends: [cpu]
    modalities: [run]
    scenario_count: 2
models:
{models}scenarios:
  - name: any_text
    prompt: "Hello! How are you today?"
    max_tokens: 8
    oracles: [{{regex: '\S'}}]
  - name: colors
    prompt: "List three colors."
    max_tokens: 8
    oracles: [{{regex: '\S'}}]
"#
    )
}

/// The trials the recipe runs: the scenarios, the gateways G0–G4, the APR cell's logits against
/// its safetensors ground truth (which loads the ground truth's session too) and each cell's
/// batches; the longer differentials add time, not coverage of the split.
const FILTER: &str = "test(/^shards::/) & test(/::run::|::gate::g[0-4]-|::diff::logits-vs-safetensors$|::diff::batch-invariance$/)";

pub fn run(args: &ShardsArgs) -> anyhow::Result<()> {
    ensure!(args.shards >= 1, "--shards must be at least 1");
    let version = crate::cargo().args(["nextest", "--version"]).output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        bail!("cargo-nextest is not installed: `cargo install cargo-nextest --locked` installs it");
    }
    let root = crate::root();
    let dir = tempfile::tempdir().context("a temporary directory")?;
    write_test_model(&dir.path().join("model"), TestArchitecture::Llama, TestModelShape::default(), 11)?;
    std::fs::write(dir.path().join("playbook.yaml"), playbook())?;
    let journal_dir = dir.path().join("journal");

    eprintln!("archiving the qualify binary (cargo nextest archive)…");
    let archive = dir.path().join("qualify.tar.zst");
    let status = crate::cargo()
        .args(["nextest", "archive", "--test", "qualify", "--archive-file"])
        .arg(&archive)
        .status()
        .context("running cargo nextest archive")?;
    ensure!(status.success(), "cargo nextest archive failed");

    let nextest = |run_id: &str, shard: Option<String>| -> anyhow::Result<f64> {
        let mut cmd = crate::cargo();
        cmd.args(["nextest", "run", "--profile", "ci", "--no-fail-fast", "--archive-file"])
            .arg(&archive)
            .arg("--workspace-remap")
            .arg(&root)
            .args(["-E", FILTER])
            .env("QUALIFY_PLAYBOOKS", dir.path().join("playbook.yaml"))
            .env("QUALIFY_JOURNAL_DIR", &journal_dir)
            .env("QUALIFY_GOLDEN_DIR", dir.path().join("golden"))
            .env("QUALIFY_CACHE_DIR", dir.path().join("cache"))
            .env("QUALIFY_RUN_ID", run_id)
            .env("QUALIFY_SHARD_TIMES", journal_dir.join("whole.jsonl"))
            .env_remove("QUALIFY_MODEL_DIR")
            .env_remove("QUALIFY_FAILURE_POLICY")
            .env_remove("QUALIFY_SHARD");
        if let Some(s) = &shard {
            cmd.env("QUALIFY_SHARD", s);
        }
        let started = Instant::now();
        let out = cmd.output().context("running cargo nextest run")?;
        let seconds = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let junit = root.join("target/nextest/ci/junit.xml");
        if junit.is_file() {
            std::fs::copy(&junit, dir.path().join(format!("{run_id}.junit.xml")))?;
        }
        // Trials may fail (a random model's answers are garbage to G4): their records are the
        // evidence compared. A run that recorded nothing is the recipe's failure.
        let recorded = journal_dir.join(format!("{run_id}.jsonl"));
        ensure!(recorded.is_file(), "nextest run {run_id} recorded nothing:\n{}", crate::tail(&stderr, 3000));
        Ok(seconds)
    };

    eprintln!("the whole run, once (its journal balances the shards)…");
    let whole_s = nextest("whole", None)?;
    let whole = journal(&journal_dir.join("whole.jsonl"))?;
    ensure!(!whole.is_empty(), "the whole run recorded nothing");

    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut loaded_on: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    println!("| shard | trials | models | sessions loaded | wall s | JUnit test cases |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut walls = Vec::new();
    for k in 1..=args.shards {
        let run_id = format!("shard-{k}");
        eprintln!("shard {k}/{}…", args.shards);
        let seconds = nextest(&run_id, Some(format!("{k}/{}", args.shards)))?;
        walls.push(seconds);
        let records = journal(&journal_dir.join(format!("{run_id}.jsonl")))?;
        let cases = std::fs::read_to_string(dir.path().join(format!("{run_id}.junit.xml")))
            .map(|x| x.matches("<testcase ").count())
            .unwrap_or(0);
        if cases != records.len() {
            problems.push(format!(
                "shard {k}: JUnit has {cases} test cases, its journal {} records",
                records.len()
            ));
        }
        let models: BTreeSet<&str> = records.iter().map(|r| r.model.as_str()).collect();
        for r in &records {
            *seen.entry(r.trial.clone()).or_default() += 1;
            outcomes.insert(r.trial.clone(), r.outcome);
            if r.metrics.load_ms.is_some() {
                loaded_on.entry(format!("{}::{}::{}", r.model, r.format, r.backend)).or_default().insert(k);
            }
        }
        let sessions: BTreeSet<String> = records
            .iter()
            .filter(|r| r.metrics.load_ms.is_some())
            .map(|r| format!("{}::{}::{}", r.model, r.format, r.backend))
            .collect();
        println!(
            "| {k} | {} | {} | {} | {seconds:.1} | {cases} |",
            records.len(),
            models.len(),
            sessions.len()
        );
    }
    let mean = walls.iter().sum::<f64>() / walls.len().max(1) as f64;
    let longest = walls.iter().copied().fold(0.0, f64::max);
    println!(
        "\nthe whole run: {} trials in {whole_s:.1} s; the longest shard took {:.2}× the mean wall time (measured on this machine, not judged)",
        whole.len(),
        if mean > 0.0 { longest / mean } else { 1.0 }
    );

    let whole_names: BTreeSet<&String> = whole.iter().map(|r| &r.trial).collect();
    let shard_names: BTreeSet<&String> = seen.keys().collect();
    if whole_names != shard_names {
        let missing = whole_names.difference(&shard_names).count();
        let extra = shard_names.difference(&whole_names).count();
        problems.push(format!("the shards ran {extra} trials the whole run did not and missed {missing}"));
    }
    for (trial, n) in seen.iter().filter(|(_, n)| **n > 1) {
        problems.push(format!("{trial} ran on {n} shards"));
    }
    for r in &whole {
        if outcomes.get(&r.trial).is_some_and(|o| *o != r.outcome) {
            problems.push(format!(
                "{}: {} whole, {} sharded",
                r.trial,
                r.outcome.as_str(),
                outcomes[&r.trial].as_str()
            ));
        }
    }
    for (session, shards) in loaded_on.iter().filter(|(_, s)| s.len() > 1) {
        problems.push(format!("session {session} loaded on shards {shards:?}"));
    }
    println!(
        "every session loaded on one shard: {} sessions; every trial of the whole run once across {} shards",
        loaded_on.len(),
        args.shards
    );

    // The shards' journals merged, as `cargo xtask certify --journal …` merges them, certify
    // each model exactly as the whole run's journal does.
    let shard_journals: Vec<_> =
        (1..=args.shards).map(|k| journal_dir.join(format!("shard-{k}.jsonl"))).collect();
    let layout = Layout::new(&root);
    let (playbooks, _) = modelqa::support::playbook::load_all(&dir.path().join("playbook.yaml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = modelqa::support::expand::Plan::new(playbooks);
    let merged = certification(&layout, &plan, &shard_journals)?;
    let single = certification(&layout, &plan, &[journal_dir.join("whole.jsonl")])?;
    ensure!(!single.is_empty(), "the whole run certified no model");
    for (model, text) in &single {
        match merged.get(model) {
            None => {
                problems.push(format!("{model}: certified from the whole run, not from the merged shards"))
            }
            Some(m) if m != text => {
                let (a, b) = text.lines().zip(m.lines()).find(|(a, b)| a != b).unwrap_or(("(end)", "(end)"));
                problems.push(format!(
                    "{model}: the merged certification differs from the whole run's: `{a}` against `{b}`"
                ));
            }
            Some(_) => {}
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "the {} shard journals merged certify {} models identically to the whole run (mqs.json byte for byte, and each registry row but its measured speeds and date)",
        args.shards,
        single.len()
    );
    Ok(())
}

/// Each model's certification of `journals` read together, as `cargo xtask certify --journal …`
/// makes it, but for what a run measures rather than decides: its `mqs.json` as written, then
/// its `models.csv` row without the tokens/s columns and the date of the evidence.
fn certification(
    layout: &Layout,
    plan: &modelqa::support::expand::Plan,
    journals: &[std::path::PathBuf],
) -> anyhow::Result<BTreeMap<String, String>> {
    let (records, _) = evidence::read_journals(journals)?;
    let records = records.into_iter().filter(|r| !r.unfinished).collect();
    let found = workspace::evidence_from_records(layout, records, plan, Some("shards"), Some("smoke"));
    let scored: Vec<_> = found
        .into_iter()
        .map(|e| {
            let s = e.score();
            (e, s)
        })
        .collect();
    let mut rows = registry::rows(&[], &scored, &BTreeMap::new());
    for row in &mut rows {
        row.tps = [None; 6];
        row.last_certified.clear();
    }
    let mut out = BTreeMap::new();
    for (e, s) in &scored {
        let row: Vec<_> = rows.iter().filter(|r| r.model_id == e.model_id).cloned().collect();
        let text = format!("{}\n{}", serde_json::to_string_pretty(s)?, registry::to_csv(&row)?);
        out.insert(e.model.clone(), text);
    }
    Ok(out)
}

fn journal(path: &Path) -> anyhow::Result<Vec<EvidenceRecord>> {
    let (records, _) = modelqa::support::journal::read(path)
        .with_context(|| format!("reading the journal {}", path.display()))?;
    Ok(records.into_iter().filter(|r| !r.unfinished).collect())
}
