//! The architecture zoo: one tiny random-weight model per registry `model_type`, written by
//! transformers 5.x with its reference outputs (`fixtures/zoo/`, made by
//! `xtask/zoo/make_zoo.py`). Every zoo model either loads in the embedded engine and reproduces
//! transformers — the top-5 logits at every prompt position within [`TOLERANCE`], the greedy
//! continuation token for token, from its safetensors and from the project's APR conversion —
//! or is listed in [`UNSUPPORTED`] with the engine's refusal.
//! The list is held true both ways: a listed architecture that starts loading fails the test
//! (take it off the list), and so does one refused for another reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modelqa::support::engine::{Flow, GenerateRequest, Session, load_candle};
use modelqa::support::format::{apr, convert};
use modelqa::support::matrix::Backend;

/// The registry's `model_type`s: the zoo holds exactly one model of each.
const ARCHITECTURES: [&str; 16] = [
    "deepseek_v2",
    "falcon",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt_bigcode",
    "granite",
    "llama",
    "mistral",
    "olmo2",
    "phi3",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "stablelm",
    "starcoder2",
];

/// Architectures the embedded engine does not run yet, each with (a part of) its load error.
const UNSUPPORTED: &[(&str, &str)] = &[];

/// The largest difference from transformers' logit (computed in f64 from the f32 weights)
/// that an f32 engine may show.
const TOLERANCE: f64 = 1e-4;

fn zoo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/zoo")
}

#[derive(serde::Deserialize)]
struct Reference {
    model_type: String,
    prompts: Vec<PromptReference>,
}

#[derive(serde::Deserialize)]
struct PromptReference {
    text: String,
    ids: Vec<u32>,
    positions: Vec<TopK>,
    greedy: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct TopK {
    ids: Vec<u32>,
    logits: Vec<f64>,
}

/// How one zoo model fared.
enum Outcome {
    /// Reproduces transformers from safetensors and from the project's APR conversion; the
    /// largest logit difference seen in each.
    Pass(f64, f64),
    /// Refused as [`UNSUPPORTED`] says.
    Unsupported(&'static str),
    /// The failure, in words.
    Fail(String),
}

fn reference(dir: &Path) -> Reference {
    let path = dir.join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The largest difference from the reference over every prompt, or the first divergence.
fn compare(session: &mut dyn Session, reference: &Reference) -> Result<f64, String> {
    let mut worst = 0f64;
    for (n, prompt) in reference.prompts.iter().enumerate() {
        let ids = session.encode(&prompt.text).map_err(|e| format!("prompt {n}: {e}"))?;
        if ids != prompt.ids {
            return Err(format!(
                "prompt {n} encodes as {ids:?}, transformers' tokenizer gave {:?}",
                prompt.ids
            ));
        }
        let positions: Vec<usize> = (0..ids.len()).collect();
        let mut rows = Vec::new();
        session
            .sequence_logits(&ids, &positions, &mut |_, logits| {
                rows.push(logits);
                Flow::Continue
            })
            .map_err(|e| format!("prompt {n}: {e}"))?;
        if rows.len() != prompt.positions.len() {
            return Err(format!(
                "prompt {n}: {} positions scored, the reference has {}",
                rows.len(),
                prompt.positions.len()
            ));
        }
        for (pos, (row, want)) in rows.iter().zip(&prompt.positions).enumerate() {
            for (&id, &value) in want.ids.iter().zip(&want.logits) {
                let got = f64::from(row[id as usize]);
                let diff = (got - value).abs();
                worst = worst.max(diff);
                if diff.is_nan() || diff > TOLERANCE {
                    return Err(format!(
                        "prompt {n} position {pos}: token {id} has logit {got}, transformers {value} (off by {diff:.2e})"
                    ));
                }
            }
            // The engine's own top-k: the reference's ids, in its order, save where two are
            // closer than the tolerance.
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            for (k, (&got, &id)) in order.iter().zip(&want.ids).enumerate() {
                if got as u32 != id && (f64::from(row[got]) - want.logits[k]).abs() > TOLERANCE {
                    return Err(format!(
                        "prompt {n} position {pos}: top-{} is token {got} ({}), transformers' is {id} ({})",
                        k + 1,
                        row[got],
                        want.logits[k]
                    ));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let request = GenerateRequest::greedy(&prompt.text, prompt.greedy.len() as u32, deadline);
        let generation = session.generate(&request).map_err(|e| format!("prompt {n}: {e}"))?;
        if generation.tokens != prompt.greedy {
            return Err(format!(
                "prompt {n}: greedy ids {:?}, transformers' {:?}",
                generation.tokens, prompt.greedy
            ));
        }
    }
    Ok(worst)
}

fn check(model_type: &str) -> Outcome {
    let dir = zoo().join(model_type);
    let reference = reference(&dir);
    if reference.model_type != model_type {
        return Outcome::Fail(format!("reference.json is of `{}`", reference.model_type));
    }
    let unsupported = UNSUPPORTED.iter().find(|(m, _)| *m == model_type).map(|(_, why)| *why);
    match (load_candle(&dir, Backend::Cpu), unsupported) {
        (Ok(_), Some(_)) => Outcome::Fail(
            "loads, but is listed in UNSUPPORTED: take it off the list so the zoo test checks it".into(),
        ),
        (Err(e), Some(why)) if e.to_string().contains(why) => Outcome::Unsupported(why),
        (Err(e), Some(why)) => Outcome::Fail(format!("refused with `{e}`, UNSUPPORTED says `{why}`")),
        (Err(e), None) => Outcome::Fail(format!("does not load: {e}")),
        (Ok(mut session), None) => match compare(&mut session, &reference) {
            Ok(worst) => match from_apr(&dir, &reference) {
                Ok(apr) => Outcome::Pass(worst, apr),
                Err(why) => Outcome::Fail(format!("from APR: {why}")),
            },
            Err(why) => Outcome::Fail(why),
        },
    }
}

/// The comparison of the model converted to APR (every tensor as stored, config and tokenizer
/// embedded) and loaded from that one file.
fn from_apr(dir: &Path, reference: &Reference) -> Result<f64, String> {
    let file = convert::safetensors_to_apr(dir).map_err(|e| format!("does not convert: {e}"))?;
    let bytes = apr::write(&file).map_err(|e| format!("does not write: {e}"))?;
    let out = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = out.path().join("model.apr");
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    let mut session = load_candle(&path, Backend::Cpu).map_err(|e| format!("does not load: {e}"))?;
    compare(&mut session, reference)
}

#[test]
fn every_architecture_reproduces_transformers_or_is_listed_unsupported() {
    let mut present: Vec<String> = std::fs::read_dir(zoo())
        .expect("fixtures/zoo")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(present, ARCHITECTURES, "the zoo holds one model per registry model_type");

    let mut table = String::from("architecture  | zoo (safetensors; APR)\n");
    let mut failures = Vec::new();
    for model_type in ARCHITECTURES {
        let line = match check(model_type) {
            Outcome::Pass(worst, apr) => format!("pass (max logit diff {worst:.1e}; APR {apr:.1e})"),
            Outcome::Unsupported(why) => format!("unsupported: {why}"),
            Outcome::Fail(why) => {
                failures.push(format!("{model_type}: {why}"));
                format!("FAIL: {why}")
            }
        };
        table.push_str(&format!("{model_type:13} | {line}\n"));
    }
    println!("{table}");
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n"));
}
