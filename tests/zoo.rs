//! The architecture zoo: one tiny random-weight model per registry `model_type`, written by
//! transformers 5.x with its reference outputs (`fixtures/zoo/`, made by
//! `xtask/zoo/make_zoo.py`). Every zoo model either loads in the embedded engine and reproduces
//! transformers — the top-5 logits at every prompt position within [`TOLERANCE`], the greedy
//! continuation token for token, from its safetensors and from the project's APR conversion —
//! or is listed in [`UNSUPPORTED`] with the engine's refusal.
//! The list is held true both ways: a listed architecture that starts loading fails the test
//! (take it off the list), and so does one refused for another reason.
//!
//! GGUF, per architecture, in the same way: the project's own conversion
//! (`convert::artifact`, F32, the path a `gguf-f32` cell takes) and the files llama.cpp's own
//! converter made (`converter-f32.gguf`, `converter-q8_0.gguf`, written by
//! `make_zoo.py --converter`). Each either reproduces transformers or is listed with its
//! refusal ([`OWN_GGUF_REFUSED`], [`GGUF_REFUSED`], [`CONVERTER_REFUSED`]), or is listed as a
//! file that cannot say what the model computes ([`CONVERTER_LOSES`]), both ways.
//! F32 files are held to [`TOLERANCE`] and greedy ids as safetensors are. A Q8_0 file is held to
//! a quantization-aware rule, not to ids: its prompt tokenizes to transformers' ids, and at
//! every prompt position the engine's top-1 is among transformers' top-5 and transformers' top-1
//! among the engine's top-5 ([`q8_0_agrees`]); its greedy continuation is reported (how many
//! leading tokens agree), not judged: Q8_0's logit error on these wide random logits (up to
//! 2.0 measured; candle's Q8_0 kernels quantize the activations too) far exceeds the zoo's
//! smallest top-1 margin (0.02), so a greedy path may part at a near-tie without a defect.
//!
//! `variants` holds the engine to the zoo's config variants (`fixtures/zoo-variants/`) by the
//! same rule.

#[path = "zoo/variants.rs"]
mod variants;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modelqa::support::engine::{Flow, GenerateRequest, Session, load_candle};
use modelqa::support::format::{apr, convert};
use modelqa::support::matrix::{Backend, Format};

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

/// Architectures llama.cpp's converter (llama-cpp-python 0.3.36's `convert_hf_to_gguf.py`)
/// refuses, with its error as `fixtures/zoo/CONVERTER.json` records it: no converter GGUF.
const CONVERTER_REFUSED: &[(&str, &str)] = &[];

/// Converter GGUFs whose tokenizer is not the zoo model's: Gemma's and Gemma 2's converters read
/// a SentencePiece `tokenizer.model` only, and the zoo's (`make_zoo.py`'s SENTENCEPIECE) lists
/// the zoo BPE's tokens under the same ids but splits text as SentencePiece does. These files
/// are fed the reference's token ids (logits at every position, greedy steps) instead of its text.
const CONVERTER_TOKENIZES_OTHERWISE: &[&str] = &["gemma", "gemma2"];

/// Converter GGUFs (F32 and Q8_0 alike) the embedded engine refuses, with (a part of) its error.
const GGUF_REFUSED: &[(&str, &str)] = &[
    // The converter writes `starcoder.feed_forward_length` as 4 × n_embd (256), not the config's
    // n_inner (128) its weights hold: the file contradicts itself, and is refused naming the
    // shapes, as llama.cpp refuses it. (With 128 the same file is within tolerance.)
    (
        "gpt_bigcode",
        "tensor transformer.h.0.mlp.c_fc.weight has shape [128, 64], the config implies [256, 64]",
    ),
];

/// Converter GGUFs that load and run as llama.cpp runs them, but not as transformers runs the
/// zoo model, because the file cannot say what the config says; with (a part of) the
/// comparison's failure for the F32 file and for the Q8_0 file. qwen3_moe: llama.cpp's qwen3moe always renormalises the chosen
/// experts' weights and the GGUF has no key for `norm_topk_prob`, which the zoo model (as
/// transformers' default) has false. (Run with `norm_topk_prob` false, the same file gives
/// transformers' logits within 1.4e-5: the dequantization itself is right.)
const CONVERTER_LOSES: &[(&str, &str, &str)] =
    &[("qwen3_moe", "(off by", "the top-1s are not in each other's top-5")];

/// Architectures the project's GGUF writer refuses, with (a part of) its refusal.
const OWN_GGUF_REFUSED: &[(&str, &str)] = &[
    // The zoo's `norm_topk_prob` is false, which llama.cpp's qwen3moe cannot run (see
    // CONVERTER_LOSES): the writer refuses it by name rather than write a file that computes
    // otherwise. Its file of a renormalising copy is held to the converter's file in
    // `the_writers_qwen3_moe_runs_as_the_converters_file`.
    ("qwen3_moe", "`norm_topk_prob` is false"),
];

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

/// The prompt's ids, which must be transformers' (BOS included or not as its tokenizer says),
/// and the engine's logits at every one of its positions.
fn prompt_rows(
    session: &mut dyn Session,
    n: usize,
    prompt: &PromptReference,
    by_ids: bool,
) -> Result<Vec<Vec<f32>>, String> {
    let ids = match by_ids {
        true => prompt.ids.clone(),
        false => session.encode(&prompt.text).map_err(|e| format!("prompt {n}: {e}"))?,
    };
    if ids != prompt.ids {
        return Err(format!("prompt {n} encodes as {ids:?}, transformers' tokenizer gave {:?}", prompt.ids));
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
    Ok(rows)
}

fn top(row: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.into_iter().take(k).map(|i| i as u32).collect()
}

fn greedy(
    session: &mut dyn Session,
    n: usize,
    prompt: &PromptReference,
    by_ids: bool,
) -> Result<Vec<u32>, String> {
    if by_ids {
        // Each step's argmax after the reference's ids and the steps before it.
        let mut ids = prompt.ids.clone();
        for _ in 0..prompt.greedy.len() {
            let mut last = Vec::new();
            session
                .sequence_logits(&ids, &[ids.len() - 1], &mut |_, logits| {
                    last = logits;
                    Flow::Continue
                })
                .map_err(|e| format!("prompt {n}: {e}"))?;
            ids.push(top(&last, 1)[0]);
        }
        return Ok(ids[prompt.ids.len()..].to_vec());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let request = GenerateRequest::greedy(&prompt.text, prompt.greedy.len() as u32, deadline);
    Ok(session.generate(&request).map_err(|e| format!("prompt {n}: {e}"))?.tokens)
}

/// How a Q8_0 file fared under the quantization-aware rule (see the module docs).
struct Quantized {
    /// The largest difference from transformers' top-5 logits.
    worst: f64,
    /// Greedy tokens that agree with transformers' before the first that does not, of all.
    greedy_agree: usize,
    greedy_total: usize,
}

/// The Q8_0 rule: transformers' ids for every prompt; at every prompt position the engine's
/// top-1 among transformers' top-5, and transformers' top-1 among the engine's top-5.
fn q8_0_agrees(session: &mut dyn Session, reference: &Reference, by_ids: bool) -> Result<Quantized, String> {
    let mut out = Quantized { worst: 0.0, greedy_agree: 0, greedy_total: 0 };
    for (n, prompt) in reference.prompts.iter().enumerate() {
        let rows = prompt_rows(session, n, prompt, by_ids)?;
        for (pos, (row, want)) in rows.iter().zip(&prompt.positions).enumerate() {
            for (&id, &value) in want.ids.iter().zip(&want.logits) {
                out.worst = out.worst.max((f64::from(row[id as usize]) - value).abs());
            }
            let ours = top(row, 5);
            if !want.ids.contains(&ours[0]) || !ours.contains(&want.ids[0]) {
                return Err(format!(
                    "prompt {n} position {pos}: top-5 {ours:?}, transformers' {:?}: the top-1s are not in each other's top-5",
                    want.ids
                ));
            }
        }
        let tokens = greedy(session, n, prompt, by_ids)?;
        out.greedy_agree += tokens.iter().zip(&prompt.greedy).take_while(|(a, b)| a == b).count();
        out.greedy_total += prompt.greedy.len();
    }
    Ok(out)
}

/// The largest difference from the reference over every prompt, or the first divergence.
fn compare(session: &mut dyn Session, reference: &Reference) -> Result<f64, String> {
    compare_with(session, reference, false)
}

/// [`compare`], the prompts given as the reference's ids where `by_ids`.
fn compare_with(session: &mut dyn Session, reference: &Reference, by_ids: bool) -> Result<f64, String> {
    let mut worst = 0f64;
    for (n, prompt) in reference.prompts.iter().enumerate() {
        let rows = prompt_rows(session, n, prompt, by_ids)?;
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
        let tokens = greedy(session, n, prompt, by_ids)?;
        if tokens != prompt.greedy {
            return Err(format!("prompt {n}: greedy ids {tokens:?}, transformers' {:?}", prompt.greedy));
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

fn listed(list: &'static [(&'static str, &'static str)], model_type: &str) -> Option<&'static str> {
    list.iter().find(|(m, _)| *m == model_type).map(|(_, why)| *why)
}

/// One GGUF's outcome held to its list: `Ok(line)` when it is as listed, `Err(why)` otherwise.
fn judged<T>(
    result: Result<T, String>,
    refused: Option<&str>,
    line: impl FnOnce(T) -> String,
) -> Result<String, String> {
    match (result, refused) {
        (Ok(_), Some(_)) => Err("works, but is listed as refused: take it off the list".into()),
        (Ok(v), None) => Ok(line(v)),
        (Err(e), Some(why)) if e.contains(why) => Ok(format!("as listed: {why}")),
        (Err(e), Some(why)) => Err(format!("{e} (the list says `{why}`)")),
        (Err(e), None) => Err(e),
    }
}

fn load_file(path: &Path) -> Result<impl Session, String> {
    load_candle(path, Backend::Cpu).map_err(|e| format!("does not load: {e}"))
}

/// The project's own F32 conversion, as a `gguf-f32` cell makes it, against transformers.
fn own_gguf(dir: &Path, reference: &Reference, cache: &Path) -> Result<f64, String> {
    let format = Format::parse("gguf-f32").expect("a format");
    let file = convert::artifact(dir, format, cache).map_err(|e| format!("does not convert: {e}"))?;
    compare(&mut load_file(&file)?, reference)
}

/// The converter's GGUFs of one architecture: a line for the table, or the failure.
fn converter_ggufs(model_type: &str, dir: &Path, reference: &Reference) -> Result<String, String> {
    let f32_file = dir.join("converter-f32.gguf");
    let q8_file = dir.join("converter-q8_0.gguf");
    match (f32_file.is_file() || q8_file.is_file(), listed(CONVERTER_REFUSED, model_type)) {
        (false, Some(why)) => return Ok(format!("converter refuses: {why}")),
        (false, None) => return Err("no converter GGUF, and the converter is not listed as refusing".into()),
        (true, Some(_)) => return Err("converter GGUFs present, but listed in CONVERTER_REFUSED".into()),
        (true, None) => {}
    }
    let refused = listed(GGUF_REFUSED, model_type);
    let loses = CONVERTER_LOSES.iter().find(|(m, ..)| *m == model_type);
    let f32_refused = refused.or(loses.map(|(_, f32, _)| *f32));
    let q8_refused = refused.or(loses.map(|(.., q8)| *q8));
    let by_ids = CONVERTER_TOKENIZES_OTHERWISE.contains(&model_type);
    if by_ids {
        // Held true: some prompt must encode otherwise, or the file is fed text like the others.
        let session = load_file(&f32_file)?;
        let mut differs = false;
        for prompt in &reference.prompts {
            differs |= session.encode(&prompt.text).map_err(|e| e.to_string())? != prompt.ids;
        }
        if !differs {
            return Err(
                "tokenizes every prompt as transformers: take it off CONVERTER_TOKENIZES_OTHERWISE".into()
            );
        }
    }
    let f32 = judged(
        load_file(&f32_file).and_then(|mut s| compare_with(&mut s, reference, by_ids)),
        f32_refused,
        |w| format!("F32 {w:.1e}"),
    )
    .map_err(|e| format!("converter F32: {e}"))?;
    let q8 = judged(
        load_file(&q8_file).and_then(|mut s| q8_0_agrees(&mut s, reference, by_ids)),
        q8_refused,
        |q| format!("Q8_0 {:.1e} top-5 ok, greedy {}/{}", q.worst, q.greedy_agree, q.greedy_total),
    )
    .map_err(|e| format!("converter Q8_0: {e}"))?;
    let line = if f32 == q8 { f32 } else { format!("{f32}; {q8}") };
    Ok(if by_ids { format!("{line} (on ids)") } else { line })
}

#[test]
fn every_architecture_gguf_reproduces_transformers_or_is_listed_refused() {
    let cache = tempfile::tempdir().expect("tempdir");
    let mut table = String::from("architecture  | own GGUF F32 | converter GGUF F32; Q8_0\n");
    let mut failures = Vec::new();
    for model_type in ARCHITECTURES {
        let dir = zoo().join(model_type);
        let reference = reference(&dir);
        let own =
            judged(own_gguf(&dir, &reference, cache.path()), listed(OWN_GGUF_REFUSED, model_type), |w| {
                format!("pass {w:.1e}")
            })
            .map_err(|e| format!("own GGUF: {e}"));
        let converter = converter_ggufs(model_type, &dir, &reference);
        let cell = |r: &Result<String, String>| match r {
            Ok(line) => line.clone(),
            Err(why) => format!("FAIL: {why}"),
        };
        table.push_str(&format!("{model_type:13} | {} | {}\n", cell(&own), cell(&converter)));
        for r in [own, converter] {
            if let Err(why) = r {
                failures.push(format!("{model_type}: {why}"));
            }
        }
    }
    println!("{table}");
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n"));
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

/// The zoo's qwen3_moe with `norm_topk_prob` true (what llama.cpp's qwen3moe runs), through the
/// project's own F32 conversion, gives the converter's F32 file's logits at every prompt
/// position within [`TOLERANCE`]: the stacked experts and the keys the writer writes are the
/// ones the converter's file runs with.
#[test]
fn the_writers_qwen3_moe_runs_as_the_converters_file() {
    let dir = zoo().join("qwen3_moe");
    let reference = reference(&dir);
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("qwen3_moe");
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(dir.join(file), copy.join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["norm_topk_prob"] = serde_json::json!(true);
    std::fs::write(copy.join("config.json"), config.to_string()).unwrap();
    let format = Format::parse("gguf-f32").expect("a format");
    let ours = convert::artifact(&copy, format, &tmp.path().join("cache")).expect("the writer converts");
    let mut ours = load_file(&ours).expect("the writer's file loads");
    let converter = dir.join("converter-f32.gguf");
    let mut theirs = load_file(&converter).expect("the converter's file loads");
    let mut worst = 0f64;
    for (n, prompt) in reference.prompts.iter().enumerate() {
        let a = prompt_rows(&mut ours, n, prompt, false).expect("the writer's file scores the prompt");
        let b = prompt_rows(&mut theirs, n, prompt, false).expect("the converter's file scores the prompt");
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            worst = worst.max((f64::from(*x) - f64::from(*y)).abs());
        }
    }
    assert!(worst <= TOLERANCE, "the writer's qwen3_moe is off the converter's file by {worst:.2e}");
}
