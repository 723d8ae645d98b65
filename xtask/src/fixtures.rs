//! `cargo xtask fixtures`: the models the project's playbooks and tests run.
//!
//! - `fixtures train` trains qa-tiny and writes it, in every architecture whose mathematics is
//!   identical, into `fixtures/qa-tiny/`, with a manifest of hashes; over the committed weights
//!   only with `--yes`, elsewhere with `--out DIR`.
//! - `fixtures eval` measures qa-tiny on every held-out arithmetic question.
//! - `fixtures --check` verifies the committed qa-tiny files, the architecture zoo
//!   (`fixtures/zoo/`, written by `xtask/zoo/make_zoo.py`) and its config variants
//!   (`fixtures/zoo-variants/`, `xtask/zoo/make_variants.py`) against their manifests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use modelqa::support::curriculum;
use sha2::{Digest, Sha256};

use crate::train::{self, SHAPE, Schedule};

/// The architectures qa-tiny is exported as: the same weights, the same mathematics.
pub const ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "mistral"];

pub fn qa_tiny_dir() -> PathBuf {
    crate::root().join("fixtures").join("qa-tiny")
}

/// The architecture zoo, written by `xtask/zoo/make_zoo.py` (Python, run by a developer).
pub fn zoo_dir() -> PathBuf {
    crate::root().join("fixtures").join("zoo")
}

/// The zoo's config variants, written by `xtask/zoo/make_variants.py`.
pub fn zoo_variants_dir() -> PathBuf {
    crate::root().join("fixtures").join("zoo-variants")
}

/// `fixtures train … | eval … | --check`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, arg_required_else_help = true)]
pub struct FixturesArgs {
    /// Verify fixtures/qa-tiny, fixtures/zoo and fixtures/zoo-variants against their manifests (MANIFEST.sha256)
    #[arg(long)]
    pub check: bool,
    #[command(subcommand)]
    pub command: Option<FixturesCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum FixturesCommand {
    /// Train qa-tiny and write it in every architecture, with a manifest (about 30 min on 2 cores)
    Train(TrainArgs),
    /// Held-out arithmetic accuracy of qa-tiny (or a trained copy), by operator
    Eval(EvalArgs),
}

/// `fixtures train`: the schedule's defaults are the committed weights' (`train::SCHEDULE`).
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Optimiser steps
    #[arg(long, value_name = "N", default_value_t = train::SCHEDULE.steps)]
    pub steps: usize,
    /// Examples per step
    #[arg(long, value_name = "N", default_value_t = train::SCHEDULE.batch)]
    pub batch: usize,
    /// Seed of the initial weights and of the examples drawn
    #[arg(long, value_name = "N", default_value_t = train::SCHEDULE.seed)]
    pub seed: u64,
    /// AdamW's decoupled weight decay
    #[arg(long, value_name = "X", default_value_t = train::SCHEDULE.weight_decay)]
    pub weight_decay: f64,
    /// Where to write the model directories, training.json and the manifest [default: fixtures/qa-tiny, with --yes]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite the committed weights under fixtures/qa-tiny
    #[arg(long)]
    pub yes: bool,
}

/// `fixtures eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The directory holding qa-tiny-llama [default: fixtures/qa-tiny]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// List every wrong answer (question, expected, given)
    #[arg(long)]
    pub failures: bool,
}

impl FixturesArgs {
    /// `fixtures train` writes over the committed weights only when told to.
    pub fn check(&self) -> Result<(), clap::Error> {
        let Some(FixturesCommand::Train(train)) = &self.command else { return Ok(()) };
        let committed = qa_tiny_dir();
        let overwrites = train.out.as_deref().is_none_or(|out| same_dir(out, &committed));
        if overwrites && !train.yes {
            return Err(crate::refuse(
                &["fixtures", "train"],
                format!(
                    "`fixtures train` would overwrite the committed weights under {}; \
                     pass `--out DIR` to write another directory, or `--yes` to retrain them in place",
                    committed.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Whether two paths name one directory (either may not exist yet).
fn same_dir(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        std::fs::canonicalize(p).or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    resolve(a) == resolve(b)
}

pub fn run(args: &FixturesArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(FixturesCommand::Train(train)) => train_qa_tiny(train),
        Some(FixturesCommand::Eval(e)) => eval(&e.dir.clone().unwrap_or_else(qa_tiny_dir), e.failures),
        // clap shows the help when `fixtures` has neither.
        None if args.check => {
            let qa_tiny = qa_tiny_dir();
            check(&qa_tiny, &files(&qa_tiny)?, "qa-tiny")?;
            let zoo = zoo_dir();
            check(&zoo, &tree_files(&zoo)?, "zoo")?;
            let variants = zoo_variants_dir();
            check(&variants, &tree_files(&variants)?, "zoo variant")
        }
        None => bail!("usage: cargo xtask fixtures train … | eval … | --check (see --help)"),
    }
}

/// Held-out arithmetic accuracy of qa-tiny-llama, by operator, through the engine; with
/// `failures`, every wrong answer is listed too (question, expected, given).
fn eval(dir: &Path, failures: bool) -> anyhow::Result<()> {
    use modelqa::support::engine::{GenerateRequest, Sampling, Session};
    use modelqa::support::oracle::Oracle;
    use modelqa::support::playbook::spec::{ArithmeticOracleSpec, OracleSpec};
    let mut session = modelqa::support::engine::load_candle(
        &dir.join("qa-tiny-llama"),
        modelqa::support::matrix::Backend::Cpu,
    )?;
    let oracle = Oracle::from_spec(&OracleSpec::Arithmetic(ArithmeticOracleSpec::default()))
        .map_err(anyhow::Error::msg)?;
    let mut tally: std::collections::BTreeMap<char, (usize, usize)> = Default::default();
    let questions = curriculum::held_out_questions();
    let bar = modelqa::support::progress::bar(questions.len() as u64, "evaluating qa-tiny");
    bar.set_message("questions");
    for (i, (q, expected)) in questions.iter().enumerate() {
        let prompt = format!("{q}\n");
        let g = session.generate(&GenerateRequest {
            prompt: &prompt,
            literal: &[],
            max_tokens: 6,
            sampling: Sampling::Greedy,
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(30),
        })?;
        let op = q.chars().find(|c| matches!(c, '+' | '-' | '*')).unwrap_or('?');
        let entry = tally.entry(op).or_default();
        entry.1 += 1;
        if oracle.judge(q, &g.text).is_pass() {
            entry.0 += 1;
        } else if failures {
            bar.suspend(|| println!("wrong: {q:?} expected {expected}, answered {:?}", g.text));
        }
        bar.inc(1);
        if bar.is_hidden() && (i + 1) % 500 == 0 {
            eprintln!("{}/{} questions", i + 1, questions.len());
        }
    }
    bar.finish_and_clear();
    println!("| operator | held-out questions | correct | accuracy |");
    println!("|---|---:|---:|---:|");
    let (mut right, mut all) = (0, 0);
    for (op, (r, n)) in &tally {
        println!("| {op} | {n} | {r} | {:.1}% |", 100.0 * *r as f64 / *n as f64);
        right += r;
        all += n;
    }
    println!("| all | {all} | {right} | {:.1}% |", 100.0 * right as f64 / all as f64);
    Ok(())
}

fn train_qa_tiny(args: &TrainArgs) -> anyhow::Result<()> {
    let d = train::SCHEDULE;
    let TrainArgs { steps, batch, seed, weight_decay, .. } = *args;
    let out = args.out.clone().unwrap_or_else(qa_tiny_dir);
    let sched = Schedule { steps, batch, seed, weight_decay, ..d };
    let work = out.join(".work");
    std::fs::create_dir_all(&work)?;
    eprintln!("training the tokenizer…");
    curriculum::write_tokenizer(&work)?;
    eprintln!("training qa-tiny: {steps} steps of {} examples…", sched.batch);
    let (weights, loss, secs) = train::train(&work, SHAPE, sched)?;
    for arch in ARCHITECTURES {
        let dir = out.join(format!("qa-tiny-{arch}"));
        export(&dir, arch, &weights, &work.join("tokenizer.json"))?;
        eprintln!("wrote {}", dir.display());
    }
    let report = serde_json::json!({
        "steps": steps,
        "batch": sched.batch,
        "seed": sched.seed,
        "peak_lr": sched.peak_lr,
        "weight_decay": sched.weight_decay,
        "final_loss": loss,
        "train_seconds": secs.round(),
        "machine": format!("{} cpus, {}", std::thread::available_parallelism().map_or(1, |n| n.get()), std::env::consts::ARCH),
        "shape": {"hidden": SHAPE.hidden, "intermediate": SHAPE.intermediate, "layers": SHAPE.layers, "heads": SHAPE.heads, "kv_heads": SHAPE.kv_heads, "vocab": SHAPE.vocab, "context": SHAPE.context},
    });
    std::fs::write(out.join("training.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::remove_dir_all(&work)?;
    write_manifest(&out)?;
    eprintln!("final loss {loss:.4} after {secs:.0} s");
    Ok(())
}

fn config(arch: &str) -> serde_json::Value {
    let s = SHAPE;
    let mut c = serde_json::json!({
        "model_type": arch,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "vocab_size": s.vocab,
        "max_position_embeddings": s.context,
        "rms_norm_eps": s.eps,
        "rope_theta": s.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    });
    let extra = match arch {
        "llama" => serde_json::json!({"architectures": ["LlamaForCausalLM"]}),
        "qwen2" => serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "sliding_window": s.context, "max_window_layers": s.layers, "use_sliding_window": false,
        }),
        _ => {
            serde_json::json!({"architectures": ["MistralForCausalLM"], "sliding_window": null, "head_dim": s.hidden / s.heads})
        }
    };
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    c
}

/// Writes one architecture's model directory from the trained weights.
pub fn export(
    dir: &Path,
    arch: &str,
    weights: &HashMap<String, Tensor>,
    tokenizer: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tensors = weights.clone();
    if arch == "qwen2" {
        // Qwen2 has q/k/v biases; zero biases leave the mathematics unchanged.
        let kv = SHAPE.kv_heads * SHAPE.hidden / SHAPE.heads;
        for l in 0..SHAPE.layers {
            for (proj, n) in [("q_proj", SHAPE.hidden), ("k_proj", kv), ("v_proj", kv)] {
                tensors.insert(
                    format!("model.layers.{l}.self_attn.{proj}.bias"),
                    Tensor::zeros(n, DType::F32, &Device::Cpu)?,
                );
            }
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config(arch))? + "\n")?;
    std::fs::copy(tokenizer, dir.join("tokenizer.json"))?;
    let tokenizer_config = serde_json::json!({
        "bos_token": null,
        "eos_token": curriculum::EOS,
        "pad_token": curriculum::EOS,
        "model_max_length": SHAPE.context,
        "chat_template": curriculum::CHAT_TEMPLATE,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tokenizer_config)? + "\n",
    )?;
    let generation = serde_json::json!({"eos_token_id": [0, 2], "do_sample": false});
    std::fs::write(dir.join("generation_config.json"), serde_json::to_string_pretty(&generation)? + "\n")?;
    Ok(())
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for arch in ARCHITECTURES {
        let d = dir.join(format!("qa-tiny-{arch}"));
        for f in [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            out.push(d.join(f));
        }
    }
    out.push(dir.join("training.json"));
    Ok(out)
}

fn write_manifest(dir: &Path) -> anyhow::Result<()> {
    let mut text = String::new();
    for f in files(dir)? {
        let rel = f.strip_prefix(dir)?.display().to_string();
        text.push_str(&format!("{}  {rel}\n", sha256(&f)?));
    }
    std::fs::write(dir.join("MANIFEST.sha256"), text)?;
    Ok(())
}

/// Every file under `dir` but its manifest, sorted: what the zoo's manifest must list.
fn tree_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("failed to read {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path != dir.join("MANIFEST.sha256") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `dir`'s manifest against its files: every listed hash matches, and `expected` (the files
/// that must be there) are exactly the files listed.
fn check(dir: &Path, expected: &[PathBuf], what: &str) -> anyhow::Result<()> {
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.sha256"))
        .with_context(|| format!("failed to read {}", dir.join("MANIFEST.sha256").display()))?;
    let mut bad = Vec::new();
    let mut listed = std::collections::BTreeSet::new();
    for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, rel) =
            line.split_once("  ").with_context(|| format!("malformed manifest line `{line}`"))?;
        listed.insert(dir.join(rel));
        match sha256(&dir.join(rel)) {
            Ok(h) if h == hash => {}
            Ok(h) => bad.push(format!("{rel}: sha256 {h}, manifest says {hash}")),
            Err(e) => bad.push(format!("{rel}: {e:#}")),
        }
    }
    for f in expected.iter().filter(|f| !listed.contains(*f)) {
        bad.push(format!("{}: not in the manifest", f.strip_prefix(dir).unwrap_or(f).display()));
    }
    if listed.len() != expected.len() {
        bad.push(format!("the manifest lists {} files, expected {}", listed.len(), expected.len()));
    }
    if !bad.is_empty() {
        bail!("{what} fixtures do not match their manifest:\n  {}", bad.join("\n  "));
    }
    eprintln!("{} {what} files match {}", listed.len(), dir.join("MANIFEST.sha256").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fixtures train --yes` with no other flag must retrain the committed weights: its schedule and shape
    /// are the ones `training.json` records.
    #[test]
    fn default_schedule_is_the_committed_one() {
        let text = std::fs::read_to_string(qa_tiny_dir().join("training.json")).expect("training.json");
        let record: serde_json::Value = serde_json::from_str(&text).expect("training.json is JSON");
        let (d, s) = (train::SCHEDULE, SHAPE);
        assert_eq!(record["steps"], d.steps);
        assert_eq!(record["batch"], d.batch);
        assert_eq!(record["seed"], d.seed);
        assert_eq!(record["peak_lr"], d.peak_lr);
        assert_eq!(record["weight_decay"], d.weight_decay);
        let shape = &record["shape"];
        for (key, value) in [
            ("hidden", s.hidden),
            ("intermediate", s.intermediate),
            ("layers", s.layers),
            ("heads", s.heads),
            ("kv_heads", s.kv_heads),
            ("vocab", s.vocab),
            ("context", s.context),
        ] {
            assert_eq!(shape[key], value, "shape.{key}");
        }
    }
}
