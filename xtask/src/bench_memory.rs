//! `cargo xtask bench memory`: a twelve-model run of the qualify harness, unlimited and under
//! `QUALIFY_MEMORY_BUDGET`, interleaved: what the sessions loaded at once held by their estimates,
//! the process's peak resident set (`VmHWM`, which the harness reports on its last stderr line),
//! the wall time, and whether every verdict is the same.
//!
//! The models are one generated llama-shaped model under twelve ids (each its own sessions, as a
//! registry's siblings would be), in safetensors and APR, the APR cell's logits compared with its
//! ground truth (both sessions at once), on `--threads` trial threads so that several models'
//! sessions would be loaded at once without a budget. The test build of the harness runs it (its
//! dependencies and kernels are optimised); memory, not speed, is measured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use modelqa::support::journal::EvidenceRecord;
use modelqa::support::matrix::Format;
use modelqa::support::testmodel::{TestArchitecture, TestModelShape, write_test_model};
use modelqa::vocab::Outcome;

/// `bench memory …`.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// Models (ids over the same files)
    #[arg(long, value_name = "N", default_value_t = 12)]
    pub models: usize,
    /// Trial threads (libtest's --test-threads)
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub threads: usize,
    /// The model's hidden size (its layers: 8; its vocabulary: 32,000)
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub hidden: usize,
    /// The budget, in the harness's spelling [default: what one model's two sessions need]
    #[arg(long, value_name = "SIZE")]
    pub budget: Option<String>,
    /// Interleaved repetitions of the pair of runs
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub reps: usize,
}

fn playbook(models: usize) -> String {
    let ids: String = (0..models).map(|i| format!("  - id: test/m{i:02}\n    path: model\n")).collect();
    format!(
        r#"playbook: 1
family: memory
failure_policy: collect-all
tiers:
  smoke:
    formats: [safetensors, apr]
    backends: [cpu]
    modalities: [run]
    scenario_count: 1
models:
{ids}scenarios:
  - name: any_text
    prompt: "Hello! How are you today?"
    max_tokens: 8
    oracles: [{{regex: '\S'}}]
"#
    )
}

/// The trials run: the scenario, the load and inference gateways and the APR cell's logits
/// against its ground truth (libtest takes one filter: the rest are skipped).
const SKIPS: [&str; 9] = [
    "diff::i",
    "diff::tokenizer-fuzz",
    "diff::long-context",
    "diff::perplexity",
    "diff::trace",
    "diff::generation",
    "diff::golden",
    "diff::tensors",
    "gate::trace",
];

/// What one run measured.
struct Run {
    estimated: String,
    peak_rss: String,
    wall_s: f64,
    outcomes: BTreeMap<String, Outcome>,
    reasons: BTreeMap<String, String>,
    ignored: usize,
}

pub fn run(args: &MemoryArgs) -> anyhow::Result<()> {
    ensure!(
        args.models >= 1 && args.threads >= 1 && args.reps >= 1,
        "--models, --threads and --reps are at least 1"
    );
    let root = crate::root();
    let binary = qualify_binary(&root, None)?;
    let bench = root.join("target/bench");
    std::fs::create_dir_all(&bench)?;
    let model = bench.join(format!("memory-llama-{}", args.hidden));
    let shape = TestModelShape {
        hidden: args.hidden,
        intermediate: 3 * args.hidden,
        layers: 8,
        heads: 8,
        kv_heads: 4,
        vocab: 32_000,
        context: 1024,
        tied: false,
    };
    if !model.join("model.safetensors").is_file() {
        eprintln!("writing a random llama model (hidden {}) to {}…", args.hidden, model.display());
        write_test_model(&model, TestArchitecture::Llama, shape, 5)?;
    }
    let pair = modelqa::support::engine::estimate_footprint(&model, Format::Safetensors, None)
        .and_then(|st| {
            Ok(st.bytes() + modelqa::support::engine::estimate_footprint(&model, Format::Apr, None)?.bytes())
        })
        .map_err(|e| anyhow::anyhow!("estimating the model's footprint: {e}"))?;
    let budget = args.budget.clone().unwrap_or_else(|| pair.to_string());
    let dir = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&model, dir.path().join("model"))?;
    std::fs::write(dir.path().join("playbook.yaml"), playbook(args.models))?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{} models × safetensors, APR on {} trial threads; one model's two sessions are estimated at {:.1} MiB; load average {}",
        args.models,
        args.threads,
        pair as f64 / (1u64 << 20) as f64,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("\n| budget | rep | held at most (estimated) | peak RSS | wall s | trials | ignored |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut runs: Vec<(String, Run)> = Vec::new();
    for rep in 1..=args.reps {
        for b in ["unlimited", budget.as_str()] {
            let r = measure(
                &binary,
                dir.path(),
                b,
                args.threads,
                &format!("{}-{rep}", b.replace(['/', ' '], "_")),
            )?;
            println!(
                "| {b} | {rep} | {} | {} | {:.1} | {} | {} |",
                r.estimated,
                r.peak_rss,
                r.wall_s,
                r.outcomes.len(),
                r.ignored
            );
            runs.push((b.to_string(), r));
        }
    }
    let first = &runs[0].1.outcomes;
    let same = runs.iter().all(|(_, r)| r.outcomes == *first);
    for (budget, r) in &runs {
        for (trial, outcome) in r.outcomes.iter().filter(|(t, o)| first.get(*t) != Some(*o)).take(5) {
            println!(
                "under {budget}: {trial} {} ({})",
                outcome.as_str(),
                r.reasons.get(trial).map_or("", String::as_str)
            );
        }
    }
    println!("\nevery run gave the same verdicts: {}", if same { "yes" } else { "NO" });
    ensure!(same, "the memory budget changed a verdict");
    Ok(())
}

fn measure(binary: &Path, dir: &Path, budget: &str, threads: usize, run_id: &str) -> anyhow::Result<Run> {
    let mut cmd = Command::new(binary);
    cmd.args(["--test-threads", &threads.to_string()]);
    for s in SKIPS {
        cmd.args(["--skip", s]);
    }
    cmd.env("QUALIFY_PLAYBOOKS", dir.join("playbook.yaml"))
        .env("QUALIFY_JOURNAL_DIR", dir.join("journal"))
        .env("QUALIFY_GOLDEN_DIR", dir.join("golden"))
        .env("QUALIFY_CACHE_DIR", dir.join("cache"))
        .env("QUALIFY_RUN_ID", run_id)
        .env("QUALIFY_MEMORY_BUDGET", budget)
        .env_remove("QUALIFY_MODEL_DIR")
        .env_remove("QUALIFY_FAILURE_POLICY")
        .env_remove("NEXTEST");
    let started = Instant::now();
    let out = cmd.output().context("running the qualify harness")?;
    let wall_s = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("memory: ")).with_context(|| {
        format!("the run under {budget} printed no memory line:\n{}", crate::tail(&stderr, 3000))
    })?;
    let after = |marker: &str| -> String {
        line.split_once(marker)
            .map(|(_, rest)| rest.split([' ']).take(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "?".into())
    };
    let (records, _) = modelqa::support::journal::read(&dir.join("journal").join(format!("{run_id}.jsonl")))?;
    let records: Vec<EvidenceRecord> = records.into_iter().filter(|r| !r.unfinished).collect();
    let reasons = records.iter().map(|r| (r.trial.clone(), r.reason.clone())).collect();
    let outcomes = records.into_iter().map(|r| (r.trial, r.outcome)).collect();
    let ignored = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("ignored ")?.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    Ok(Run {
        estimated: after("held at most an estimated "),
        peak_rss: after("peak resident set was ").trim_end_matches([';', ',']).to_string(),
        wall_s,
        outcomes,
        reasons,
        ignored,
    })
}

/// The qualify harness of the test profile in `checkout`, built if it is not up to date (into
/// `target_dir` where one is given, else where cargo would build it).
pub(crate) fn qualify_binary(checkout: &Path, target_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    eprintln!("building the qualify harness in {} (cargo test --test qualify --no-run)…", checkout.display());
    let mut cargo = crate::cargo();
    cargo.current_dir(checkout).args(["test", "--test", "qualify", "--no-run", "--message-format", "json"]);
    if let Some(dir) = target_dir {
        cargo.env("CARGO_TARGET_DIR", dir);
    }
    let out = cargo.output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the qualify harness failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "qualify")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo built no qualify executable")
}
