//! The trained qa-tiny family: its architectures agree, it answers held-out arithmetic, and
//! planted defects fail the gateway they belong to while the clean models pass; a planted
//! slowdown fails `perf::decode`, and a server that answers otherwise fails `diff::serve-vs-run`.

mod common;

#[path = "qa_tiny/artifacts.rs"]
mod artifacts;
#[path = "qa_tiny/batch.rs"]
mod batch;
#[path = "qa_tiny/bug_patterns.rs"]
mod bug_patterns;
#[path = "qa_tiny/trace.rs"]
mod trace;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use modelqa::support::curriculum;
use modelqa::support::engine::{GenerateRequest, Sampling, Session, load_candle};
use modelqa::support::journal::EvidenceRecord;
use modelqa::support::matrix::Backend;
use modelqa::support::oracle::Oracle;
use modelqa::support::playbook::spec::{ArithmeticOracleSpec, OracleSpec};
use modelqa::vocab::Outcome;

fn model_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qa-tiny").join(format!("qa-tiny-{arch}"))
}

const PROMPTS: &[&str] = &[
    "What is 47 + 38?\n",
    "Calculate 7*8\n",
    "Repeat: red green blue\n",
    "def fibonacci(n):\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
];

#[test]
fn every_architecture_computes_the_same_logits() {
    let mut reference: Option<Vec<Vec<Vec<f32>>>> = None;
    for arch in ["llama", "qwen2", "mistral"] {
        let mut s = load_candle(&model_dir(arch), Backend::Cpu).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let logits: Vec<Vec<Vec<f32>>> =
            PROMPTS.iter().map(|p| s.prompt_logits(p, 64).expect("logits")).collect();
        match &reference {
            None => reference = Some(logits),
            Some(r) => {
                let mut max = 0f32;
                for (a, b) in r.iter().flatten().zip(logits.iter().flatten()) {
                    assert_eq!(a.len(), b.len());
                    for (x, y) in a.iter().zip(b) {
                        max = max.max((x - y).abs());
                    }
                }
                assert!(max <= 1e-4, "{arch} differs from llama by {max}");
            }
        }
    }
}

#[test]
fn held_out_arithmetic_is_answered() {
    let mut s = load_candle(&model_dir("llama"), Backend::Cpu).expect("loads");
    let oracle = Oracle::from_spec(&OracleSpec::Arithmetic(ArithmeticOracleSpec::default())).expect("oracle");
    let questions = curriculum::held_out_questions();
    // Every fourth held-out question keeps the test quick; `cargo xtask fixtures eval` runs all.
    let sample: Vec<_> = questions.iter().step_by(4).collect();
    let mut right = 0;
    let mut wrong = Vec::new();
    for (q, _) in &sample {
        let prompt = format!("{q}\n");
        let g = s
            .generate(&GenerateRequest {
                prompt: &prompt,
                literal: &[],
                max_tokens: 6,
                sampling: Sampling::Greedy,
                deadline: Instant::now() + Duration::from_secs(30),
            })
            .expect("generates");
        if oracle.judge(q, &g.text).is_pass() {
            right += 1;
        } else if wrong.len() < 10 {
            wrong.push(format!("{q:?} → {:?}", g.text));
        }
    }
    let accuracy = right as f64 / sample.len() as f64;
    // The family must answer at least 95% of held-out questions; the committed model measures
    // 99.1% on the whole set (`cargo xtask fixtures eval`).
    assert!(
        accuracy >= 0.95,
        "held-out accuracy {accuracy:.3} on {} questions; e.g. {wrong:#?}",
        sample.len()
    );
}

fn copy_model(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(model_dir("llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&path, c.to_string()).unwrap();
}

/// Runs the gateway trials of one (possibly defective) model; its evidence by gate.
fn gates(dir: &Path, work: &Path, run: &str) -> HashMap<String, EvidenceRecord> {
    let playbook = format!(
        "playbook: 1\nfamily: planted\ntiers: {{smoke: {{}}}}\nmodels:\n  - id: test/qa-tiny\n    path: {}\n    prompt_template: \"{{prompt}}\\n\"\nscenarios:\n  - {{name: add, prompt: \"What is 2 + 2?\", max_tokens: 6, oracles: [arithmetic]}}\n",
        dir.display()
    );
    std::fs::write(work.join("playbook.yaml"), playbook).unwrap();
    run_playbook(&work.join("playbook.yaml"), "::gate::", work, run, &[])
        .0
        .into_iter()
        .map(|r| (r.scenario.clone(), r))
        .collect()
}

/// Runs the trials of `playbook` matching `filter` one at a time, every failure collected, with
/// the journal under `work/journal` and `env` set: the run's records, and what the harness printed
/// (stdout, then stderr, where ignore reasons are summed up).
fn run_playbook(
    playbook: &Path,
    filter: &str,
    work: &Path,
    run: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (Vec<EvidenceRecord>, String) {
    let out = Command::new(common::qualify_binary())
        .args([filter, "--test-threads", "1"])
        .env("QUALIFY_PLAYBOOKS", playbook)
        .env("QUALIFY_JOURNAL_DIR", work.join("journal"))
        .env("QUALIFY_RUN_ID", run)
        .env("QUALIFY_FAILURE_POLICY", "collect-all")
        .envs(env.iter().copied())
        .env_remove("QUALIFY_MODEL_DIR")
        .output()
        .expect("qualify runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let (records, _) = modelqa::support::journal::read(&work.join("journal").join(format!("{run}.jsonl")))
        .unwrap_or_else(|e| panic!("{run}: no journal ({e}): {printed}"));
    (records, printed)
}

/// The trials of qa-tiny's own playbook that match `filter`, run with `env`.
fn trials_of(filter: &str, work: &Path, run: &str, env: &[(&str, &str)]) -> Vec<EvidenceRecord> {
    let playbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/families/qa-tiny.yaml");
    let out = Command::new(common::qualify_binary())
        .arg(filter)
        .env("QUALIFY_PLAYBOOKS", playbook)
        .env("QUALIFY_JOURNAL_DIR", work)
        .env("QUALIFY_RUN_ID", run)
        .envs(env.iter().copied())
        .output()
        .expect("qualify runs");
    let (records, _) = modelqa::support::journal::read(&work.join(format!("{run}.jsonl")))
        .unwrap_or_else(|e| panic!("{run}: no journal ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(!records.is_empty(), "{run}: no trial ran: {}", String::from_utf8_lossy(&out.stderr));
    records
}

/// The playbook's performance floors catch a model that got ten times slower, in every format,
/// on any machine speed; the same trials without the fault never fail (they may be `unstable` on
/// a machine whose load swings, which is not a failure).
#[test]
fn a_tenfold_slowdown_fails_perf_and_the_clean_model_does_not() {
    let work = tempfile::tempdir().unwrap();
    for filter in [
        "mvp::qa-tiny-llama::safetensors::cpu::perf::decode",
        "mvp::qa-tiny-qwen2::gguf-q4_k_m::cpu::perf::decode",
    ] {
        let clean = trials_of(filter, work.path(), "clean", &[]);
        for r in &clean {
            assert!(
                matches!(r.outcome, Outcome::Corroborated | Outcome::Unstable),
                "{}: {}",
                r.trial,
                r.reason
            );
            assert!(!r.reason.contains("planted"), "{}", r.reason);
        }
        // A measurement that load made too noisy to place is measured again, up to four times:
        // `unstable` is the harness declining to judge, never a pass. On a machine so busy that
        // every attempt stays unstable, the slowdown must still never pass.
        let mut slowed = Vec::new();
        for attempt in 0..4 {
            let run = format!("slowed-{attempt}");
            slowed = trials_of(filter, work.path(), &run, &[("QUALIFY_FAULT_SLOWDOWN", "10")]);
            let _ = std::fs::remove_file(work.path().join(format!("{run}.jsonl")));
            if !slowed.iter().any(|r| r.outcome == Outcome::Unstable) {
                break;
            }
        }
        assert_eq!(slowed.len(), clean.len());
        for r in &slowed {
            assert!(matches!(r.outcome, Outcome::Falsified | Outcome::Unstable), "{}: {}", r.trial, r.reason);
            assert!(r.reason.contains("a 10× slowdown was planted"), "{}", r.reason);
            if r.outcome == Outcome::Falsified {
                // The decode floor or the first-token ceiling, whichever the slowdown crosses.
                let crossed = ["at reference speed is below", "at reference speed is above"];
                assert!(crossed.iter().any(|c| r.reason.contains(c)), "{}", r.reason);
            } else {
                eprintln!(
                    "note: {} stayed unstable on a busy machine after four runs: {}",
                    r.trial, r.reason
                );
            }
        }
        let _ = std::fs::remove_file(work.path().join("clean.jsonl"));
    }
}

/// A server whose answers are not the model's fails `diff::serve-vs-run`: a wrong first token on
/// every served answer at concurrency 1 already, and one only on requests that waited behind
/// another at concurrency 8. The clean server's answers are the in-process ones token for token.
#[test]
fn a_server_that_answers_otherwise_fails_serve_vs_run_and_the_clean_server_passes() {
    let work = tempfile::tempdir().unwrap();
    for filter in [
        "mvp::qa-tiny-llama::safetensors::cpu::diff::serve-vs-run",
        "mvp::qa-tiny-qwen2::gguf-q4_k_m::cpu::diff::serve-vs-run",
    ] {
        for r in trials_of(filter, work.path(), "clean", &[]) {
            assert_eq!(r.outcome, Outcome::Corroborated, "{}: {}", r.trial, r.reason);
            assert!(r.reason.contains("identical to the in-process answer token for token"), "{}", r.reason);
            assert!(r.reason.contains("with 8 in flight"), "{}", r.reason);
        }
        // Every answer, so the first scenario at concurrency 1; or only answers that queued, so
        // some at concurrency 8 (whichever request reached the model first did not wait).
        for (fault, first) in [
            ("always", "the first: scenario arithmetic_multiply at concurrency 1 "),
            ("queued", " at concurrency 8 "),
        ] {
            let planted = trials_of(filter, work.path(), fault, &[("QUALIFY_FAULT_SERVE", fault)]);
            for r in &planted {
                assert_eq!(r.outcome, Outcome::Falsified, "{fault}: {}: {}", r.trial, r.reason);
                assert!(r.reason.contains(first), "{fault}: {}", r.reason);
                assert!(r.reason.contains("they part at token 0: the served token"), "{}", r.reason);
                assert!(r.reason.contains("is not in the in-process top 5"), "{}", r.reason);
                assert!(r.output.is_some() && r.prompt.is_some(), "{}", r.reason);
            }
        }
        for run in ["clean", "always", "queued"] {
            let _ = std::fs::remove_file(work.path().join(format!("{run}.jsonl")));
        }
    }
}

/// Batching does not change a logit in any format of qa-tiny: `diff::batch-invariance` passes on
/// the clean engine, and a batch whose projections take another reduction order
/// (`QUALIFY_FAULT_BATCH_REDUCTION=1`) fails it, naming the prompt, its slot and the batch.
#[test]
fn a_batch_dependent_reduction_fails_batch_invariance_and_the_clean_engine_passes() {
    let work = tempfile::tempdir().unwrap();
    for format in ["safetensors", "apr", "gguf-q4_k_m"] {
        let filter = format!("mvp::qa-tiny-llama::{format}::cpu::diff::batch-invariance");
        let clean = trials_of(&filter, work.path(), "clean", &[]);
        let planted = trials_of(&filter, work.path(), "planted", &[("QUALIFY_FAULT_BATCH_REDUCTION", "1")]);
        assert_eq!((clean.len(), planted.len()), (1, 1), "{filter}");
        let (clean, planted) = (&clean[0], &planted[0]);
        assert_eq!(clean.outcome, Outcome::Corroborated, "{}: {}", clean.trial, clean.reason);
        assert!(clean.reason.starts_with("all "), "{}", clean.reason);
        assert!(
            clean.reason.contains("next-token logits, alone and in batches of 2, 8, 32"),
            "{}",
            clean.reason
        );
        assert_eq!(planted.outcome, Outcome::Falsified, "{}: {}", planted.trial, planted.reason);
        assert!(planted.reason.contains("are not the same bits; the first: scenario "), "{}", planted.reason);
        assert!(planted.reason.contains("differs from alone"), "{}", planted.reason);
        assert!(planted.prompt.is_some(), "{}", planted.reason);
        for run in ["clean", "planted"] {
            let _ = std::fs::remove_file(work.path().join(format!("{run}.jsonl")));
        }
    }
}

/// A property with a pass rate generates its 200 cases as one batch on the embedded engine and
/// says so in its record; the verdict is the one the cases give alone.
#[test]
fn a_pass_rate_property_generates_its_cases_as_one_batch() {
    let work = tempfile::tempdir().unwrap();
    let records = trials_of("mvp::qa-tiny-llama::safetensors::cpu::run::sums_rate", work.path(), "rate", &[]);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.outcome, Outcome::Corroborated, "{}", r.reason);
    assert!(r.reason.starts_with("200 of 200 generated cases passed"), "{}", r.reason);
    let batch = r.metrics.batch.as_ref().expect("the cases ran as a batch");
    assert_eq!(batch.size, 200);
    assert!(batch.tokens >= 200 && batch.tokens_per_second > 0.0, "{batch:?}");
}

/// A cell's `run` and `chat` scenario trials are generated as batches (`QUALIFY_CELL_BATCH`, at
/// most 8 sequences here, so a cell takes several) and every trial gets what it gets alone: the
/// same outcome, gate, prompt and answer, trial by trial, in a safetensors and a GGUF cell;
/// generated one at a time (`QUALIFY_CELL_BATCH=1`) no scenario record says it was batched.
#[test]
fn a_cells_scenario_trials_generated_as_batches_get_what_each_gets_alone() {
    let work = tempfile::tempdir().unwrap();
    for (i, cell) in
        ["mvp::qa-tiny-llama::safetensors::cpu", "mvp::qa-tiny-qwen2::gguf-q4_k_m::cpu"].iter().enumerate()
    {
        let alone = trials_of(cell, work.path(), &format!("alone-{i}"), &[("QUALIFY_CELL_BATCH", "1")]);
        let batched = trials_of(cell, work.path(), &format!("batched-{i}"), &[("QUALIFY_CELL_BATCH", "8")]);
        let scenario = |r: &EvidenceRecord| {
            matches!(r.modality.as_str(), "run" | "chat") && !r.reason.contains("generated cases")
        };
        let by_name: std::collections::BTreeMap<&str, &EvidenceRecord> =
            alone.iter().map(|r| (r.trial.as_str(), r)).collect();
        assert_eq!(by_name.len(), batched.len(), "{cell}: both runs hold the same trials");
        let mut sizes = Vec::new();
        for b in &batched {
            let a = by_name.get(b.trial.as_str()).unwrap_or_else(|| panic!("{}: not run alone", b.trial));
            assert_eq!(
                (&a.outcome, &a.gate, &a.prompt, &a.output),
                (&b.outcome, &b.gate, &b.prompt, &b.output),
                "{}: alone and in its cell's batch",
                b.trial
            );
            if scenario(b) {
                assert!(a.metrics.batch.is_none(), "{}: generated alone, yet {:?}", a.trial, a.metrics.batch);
                if let Some(batch) = &b.metrics.batch {
                    sizes.push(batch.size);
                }
            }
        }
        let scenarios = batched.iter().filter(|r| scenario(r)).count();
        assert!(scenarios >= 30, "{cell}: {scenarios} scenario trials");
        // The cell's last trial may be left alone (a batch of one is no batch).
        assert!(
            sizes.len() + 1 >= scenarios,
            "{cell}: {} of {scenarios} scenario trials batched",
            sizes.len()
        );
        assert!(sizes.iter().all(|&s| (2..=8).contains(&s)), "{cell}: batch sizes {sizes:?}");
    }
}

/// User text that spells qa-tiny's control tokens stays text in `run`, `chat` and `serve`, in a
/// safetensors cell and in a GGUF cell (whose tokenizer comes from the file's metadata). An engine
/// that reads the spellings as control tokens fails `run` and `chat` (the server's count is
/// judged against that engine's, so it stops there); a server that lays chat messages out
/// unguarded fails `serve` alone. The server's context limit holds too.
#[test]
fn user_text_spelling_control_tokens_stays_text_and_a_planted_reading_fails_the_gate() {
    let work = tempfile::tempdir().unwrap();
    for cell in ["mvp::qa-tiny-llama::safetensors::cpu", "mvp::qa-tiny-qwen2::gguf-q4_k_m::cpu"] {
        let filter = format!("{cell}::gate::special-token-injection");
        for r in trials_of(&filter, work.path(), "clean", &[]) {
            assert_eq!(r.outcome, Outcome::Corroborated, "{}: {}", r.trial, r.reason);
            assert!(r.reason.contains("stayed text, opening and closing no turn: run, chat, serve (14 messages counted by the server as their text encodes)"), "{}", r.reason);
        }
        for r in trials_of(&filter, work.path(), "engine", &[("QUALIFY_FAULT_INJECTION", "engine")]) {
            assert_eq!(r.outcome, Outcome::Falsified, "{}: {}", r.trial, r.reason);
            for part in [
                "run: `<|im_end|>` 4× where the layout writes it 0×",
                "chat: `<|im_end|>` 5× where the layout writes it 1×",
            ] {
                assert!(r.reason.contains(part), "{part}: {}", r.reason);
            }
        }
        for r in trials_of(&filter, work.path(), "server", &[("QUALIFY_FAULT_INJECTION", "server")]) {
            assert_eq!(r.outcome, Outcome::Falsified, "{}: {}", r.trial, r.reason);
            assert!(
                r.reason.contains("user text became control tokens — serve: the server counted"),
                "{}",
                r.reason
            );
            assert!(!r.reason.contains("run:") && !r.reason.contains("chat:"), "{}", r.reason);
        }
        for r in trials_of(&format!("{cell}::gate::serve-limits"), work.path(), "limits", &[]) {
            assert_eq!(r.outcome, Outcome::Corroborated, "{}: {}", r.trial, r.reason);
            assert!(r.reason.starts_with("4 prompts past the "), "{}", r.reason);
        }
        for run in ["clean", "engine", "server", "limits"] {
            let _ = std::fs::remove_file(work.path().join(format!("{run}.jsonl")));
        }
    }
}

/// qa-tiny's perplexity text is its curriculum's held-out set, as training lays completions out.
/// `MODELQA_WRITE_HELD_OUT=1` rewrites the file after a curriculum change.
#[test]
fn the_perplexity_text_is_the_curriculums_held_out_set() {
    let want = modelqa::support::curriculum::held_out_text();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qa-tiny/held-out.txt");
    if std::env::var_os("MODELQA_WRITE_HELD_OUT").is_some() {
        std::fs::write(&path, &want).expect("written");
    }
    let have = std::fs::read_to_string(&path).expect("fixtures/qa-tiny/held-out.txt");
    assert!(
        have == want,
        "{} is not the held-out set: rewrite it with MODELQA_WRITE_HELD_OUT=1",
        path.display()
    );
    assert!(want.lines().count() > 100, "{}", want.lines().count());
}

#[test]
fn planted_defects_fail_their_gate_and_clean_models_pass() {
    let work = tempfile::tempdir().unwrap();
    let clean = work.path().join("clean");
    copy_model(&clean);
    let records = gates(&clean, work.path(), "clean");
    // G0–G4, the numerics of the traced forward pass (`gate::trace`) and
    // `gate::special-token-injection`.
    assert_eq!(records.len(), 7, "{:?}", records.keys());
    for r in records.values() {
        assert_eq!(r.outcome, Outcome::Corroborated, "no false alarm on the clean model: {r:?}");
    }

    type Plant = Box<dyn Fn(&Path)>;
    let defects: Vec<(&str, Plant, &str, &str)> = vec![
        (
            "truncated",
            Box::new(|d: &Path| {
                let p = d.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() * 2 / 3]).unwrap();
            }),
            "g0-integrity",
            "truncated or corrupt",
        ),
        (
            "nan",
            Box::new(|d: &Path| {
                edit_tensors(d, |t| {
                    let w = &t["model.layers.1.mlp.up_proj.weight"];
                    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    v[17] = f32::NAN;
                    let nan = Tensor::from_vec(v, w.shape(), &Device::Cpu).unwrap();
                    t.insert("model.layers.1.mlp.up_proj.weight".into(), nan);
                })
            }),
            "g0-integrity",
            "model.layers.1.mlp.up_proj.weight holds 1 NaN",
        ),
        (
            "transposed",
            Box::new(|d: &Path| {
                edit_tensors(d, |t| {
                    let w = t["model.layers.0.mlp.gate_proj.weight"].t().unwrap().contiguous().unwrap();
                    t.insert("model.layers.0.mlp.gate_proj.weight".into(), w);
                })
            }),
            "g0-integrity",
            "model.layers.0.mlp.gate_proj.weight has shape [256, 512], the config implies [512, 256] (transposed)",
        ),
        (
            "layers",
            Box::new(|d: &Path| edit_config(d, "num_hidden_layers", 3.into())),
            "g0-integrity",
            "declares 3 layers, the weights hold 2",
        ),
        (
            "hidden",
            Box::new(|d: &Path| edit_config(d, "hidden_size", 512.into())),
            "g0-integrity",
            "declares hidden_size 512, the embedding is 256 wide",
        ),
        (
            "vocab",
            Box::new(|d: &Path| edit_config(d, "vocab_size", 1024.into())),
            "g0-integrity",
            "declares vocab_size 1024, the embedding has 512 rows",
        ),
        (
            "tokenizer",
            Box::new(|d: &Path| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
            "g0-integrity",
            "the tokenizer is missing",
        ),
        (
            "zeroed-norm",
            Box::new(|d: &Path| {
                edit_tensors(d, |t| {
                    let z = t["model.layers.0.input_layernorm.weight"].zeros_like().unwrap();
                    t.insert("model.layers.0.input_layernorm.weight".into(), z);
                })
            }),
            "g0-integrity",
            "model.layers.0.input_layernorm.weight is all zeros",
        ),
        (
            "swapped-qk",
            Box::new(|d: &Path| {
                edit_tensors(d, |t| {
                    let q = t.remove("model.layers.1.self_attn.q_proj.weight").unwrap();
                    let k = t.remove("model.layers.1.self_attn.k_proj.weight").unwrap();
                    t.insert("model.layers.1.self_attn.q_proj.weight".into(), k);
                    t.insert("model.layers.1.self_attn.k_proj.weight".into(), q);
                })
            }),
            "g0-integrity",
            "layer 1: q_proj and k_proj are swapped",
        ),
    ];
    for (name, plant, gate, message) in defects {
        let dir = work.path().join(name);
        copy_model(&dir);
        plant(&dir);
        let records = gates(&dir, work.path(), name);
        let r = records.get(gate).unwrap_or_else(|| panic!("{name}: no {gate} record in {records:#?}"));
        assert_eq!(r.outcome, Outcome::Falsified, "{name}: {r:?}");
        assert!(r.reason.contains(message), "{name}: `{}` does not name the defect (`{message}`)", r.reason);
    }
}

/// The `diff::` trials of qa-tiny-llama as gguf-f16, with `plant` applied to its converted GGUF
/// in a fresh artifact cache first: their evidence by scenario.
fn long_context_trials(
    work: &Path,
    run: &str,
    plant: impl Fn(&[u8]) -> Vec<u8>,
) -> HashMap<String, EvidenceRecord> {
    use modelqa::support::format::{convert, gguf};
    use modelqa::support::matrix::{Format, Quantization};
    let dir = model_dir("llama");
    let cache = work.join(format!("{run}-cache"));
    let name = convert::artifact_name(&dir, Format::Gguf(Quantization::F16), &cache)
        .unwrap()
        .expect("a derived format");
    std::fs::create_dir_all(cache.join(&name).parent().unwrap()).unwrap();
    let bytes = gguf::from_safetensors(&dir, Quantization::F16).unwrap();
    std::fs::write(cache.join(&name), plant(&bytes)).unwrap();
    let playbook = format!(
        "playbook: 1\nfamily: planted\ntiers:\n  rope: {{formats: [gguf], quantizations: [f16], backends: [cpu], modalities: [run]}}\n\
         models:\n  - id: test/qa-tiny\n    path: {}\n    prompt_template: \"{{prompt}}\\n\"\nscenarios:\n\
         \x20 - {{name: add, prompt: \"What is 47 + 38?\", max_tokens: 6, oracles: [arithmetic]}}\n\
         \x20 - {{name: mul, prompt: \"Calculate 7*8\", max_tokens: 6, oracles: [arithmetic]}}\n\
         \x20 - {{name: sub, prompt: \"What is 12 - 9?\", max_tokens: 6, oracles: [arithmetic]}}\n",
        dir.display()
    );
    let file = work.join(format!("{run}.yaml"));
    std::fs::write(&file, playbook).unwrap();
    run_playbook(&file, "::diff::", work, run, &[("QUALIFY_CACHE_DIR", cache.as_os_str())])
        .0
        .into_iter()
        .map(|r| (r.scenario.clone(), r))
        .collect()
}

/// `gguf` with the f32 metadata value of `key` set to `value`, in place.
fn with_f32(gguf: &[u8], key: &str, value: f32) -> Vec<u8> {
    let mut stored = (key.len() as u64).to_le_bytes().to_vec();
    stored.extend_from_slice(key.as_bytes());
    let at = gguf.windows(stored.len()).position(|w| w == stored.as_slice()).expect("the key is in the file");
    let ty = at + stored.len();
    assert_eq!(gguf[ty..ty + 4], 6u32.to_le_bytes(), "{key} is an f32");
    let mut out = gguf.to_vec();
    out[ty + 4..ty + 8].copy_from_slice(&value.to_le_bytes());
    out
}

/// A GGUF whose rope θ (`llama.rope.freq_base`) is a quarter too high, planted in the artifact
/// cache: `diff::long-context` fails its long bucket while its first 16 positions pass, and
/// `diff::logits-vs-safetensors`, which looks at 16 positions of each prompt, misses it. The
/// clean GGUF passes both.
#[test]
fn a_wrong_rope_theta_fails_long_context_and_the_clean_gguf_passes() {
    let work = tempfile::tempdir().unwrap();
    let clean = long_context_trials(work.path(), "clean", <[u8]>::to_vec);
    for scenario in ["long-context", "logits-vs-safetensors"] {
        let r = clean.get(scenario).unwrap_or_else(|| panic!("no {scenario} record in {clean:#?}"));
        assert_eq!(r.outcome, Outcome::Corroborated, "no false alarm on the clean GGUF: {r:?}");
    }
    let wrong =
        long_context_trials(work.path(), "wrong-theta", |g| with_f32(g, "llama.rope.freq_base", 12_500.0));
    let r = &wrong["long-context"];
    assert_eq!(r.outcome, Outcome::Falsified, "{r:?}");
    assert!(
        r.reason.contains("[0,16) 16 positions: ") && r.reason.contains("), pass; [16,64)"),
        "{}",
        r.reason
    );
    assert!(
        r.reason.contains("[64,128) 32 of 64 positions: ")
            && r.reason.contains("FAIL. The first failing bucket"),
        "{}",
        r.reason
    );
    let short = &wrong["logits-vs-safetensors"];
    assert_eq!(short.outcome, Outcome::Corroborated, "the 16-position trial misses it: {short:?}");
}

/// candle against an independent implementation: Hugging Face transformers on PyTorch, whose
/// logits `xtask/scripts/reference_logits.py` wrote into golden/qa-tiny.
#[test]
fn candle_matches_transformers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/qa-tiny/reference-transformers.json");
    let text = std::fs::read_to_string(&path).expect("the committed transformers reference");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let models = reference["models"].as_object().expect("models");
    assert_eq!(models.len(), 3);
    let mut compared = 0;
    for (model, scenarios) in models {
        let arch = model.trim_start_matches("qa-tiny-");
        let mut s = load_candle(&model_dir(arch), Backend::Cpu).expect("loads");
        for (scenario, entry) in scenarios.as_object().expect("scenarios") {
            let prompt = entry["prompt"].as_str().expect("prompt");
            let rows = s.prompt_logits(prompt, 4).expect("logits");
            let positions = entry["positions"].as_array().expect("positions");
            assert_eq!(rows.len(), positions.len(), "{model} {scenario}");
            for (row, want) in rows.iter().zip(positions) {
                for (id, logit) in
                    want["ids"].as_array().unwrap().iter().zip(want["logits"].as_array().unwrap())
                {
                    let (id, logit) = (id.as_u64().unwrap() as usize, logit.as_f64().unwrap() as f32);
                    let got = row[id];
                    assert!(
                        (got - logit).abs() <= 1e-4,
                        "{model} {scenario}: token {id} logit {got}, transformers {logit}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 500, "{compared} logits compared");
}

/// The golden trials of qa-tiny-llama's ground truth, run from a copy of the family's playbook
/// whose llama model is `dir`, against a copy of the committed goldens; records by trial tail.
fn goldens(dir: &Path, work: &Path, run: &str) -> HashMap<String, EvidenceRecord> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playbook = std::fs::read_to_string(root.join("playbooks/families/qa-tiny.yaml"))
        .unwrap()
        .replace("path: ../../fixtures/qa-tiny/qa-tiny-llama", &format!("path: {}", dir.display()));
    std::fs::write(work.join("qa-tiny.yaml"), playbook).unwrap();
    let golden = work.join("golden");
    if !golden.exists() {
        std::fs::create_dir_all(golden.join("qa-tiny/qa-tiny-llama")).unwrap();
        for e in std::fs::read_dir(root.join("golden/qa-tiny/qa-tiny-llama")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), golden.join("qa-tiny/qa-tiny-llama").join(e.file_name())).unwrap();
        }
    }
    let filter = "qa-tiny::mvp::qa-tiny-llama::safetensors::cpu::diff::golden-";
    run_playbook(&work.join("qa-tiny.yaml"), filter, work, run, &[("QUALIFY_GOLDEN_DIR", golden.as_os_str())])
        .0
        .into_iter()
        .map(|r| (r.trial.rsplit("::").next().unwrap_or_default().to_string(), r))
        .collect()
}

/// Numeric defects of the ground truth itself that load, run and mostly answer right: a matrix
/// scaled by 1.05, a lying `rms_norm_eps`, a wrong rope θ. No comparison with safetensors can see
/// them (safetensors is the reference); the golden logits, recorded from the model as trained,
/// do, and the clean copy passes them.
#[test]
fn numeric_defects_of_the_ground_truth_fail_its_golden_logits() {
    let work = tempfile::tempdir().unwrap();
    let clean = work.path().join("clean");
    copy_model(&clean);
    let records = goldens(&clean, work.path(), "clean");
    assert_eq!(records["golden-logits"].outcome, Outcome::Corroborated, "{:?}", records["golden-logits"]);
    type Plant = Box<dyn Fn(&Path)>;
    let defects: Vec<(&str, Plant)> = vec![
        (
            "drift",
            Box::new(|d: &Path| {
                edit_tensors(d, |t| {
                    let w = (&t["model.layers.1.mlp.down_proj.weight"] * 1.05).unwrap();
                    t.insert("model.layers.1.mlp.down_proj.weight".into(), w);
                })
            }),
        ),
        ("eps", Box::new(|d: &Path| edit_config(d, "rms_norm_eps", serde_json::json!(0.1)))),
        ("rope", Box::new(|d: &Path| edit_config(d, "rope_theta", serde_json::json!(100.0)))),
    ];
    for (name, plant) in defects {
        let dir = work.path().join(name);
        copy_model(&dir);
        plant(&dir);
        let records = goldens(&dir, work.path(), name);
        let r = &records["golden-logits"];
        assert_eq!(r.outcome, Outcome::Falsified, "{name}: {r:?}");
        assert!(r.reason.contains("differ from golden"), "{name}: {}", r.reason);
    }
}
