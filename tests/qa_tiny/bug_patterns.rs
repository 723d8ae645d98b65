//! The original project's bug patterns (`docs/bug-patterns.md`) not planted elsewhere: each
//! defect is planted in a copy of qa-tiny and caught by the trial the table names, and the clean
//! copy passes that trial.
//!
//! - silent fallback to a wrong resource: a tokenizer of another model, the same size, beside the
//!   weights;
//! - state-advancement timing: a KV cache advanced one step early (`QUALIFY_FAULT_KV_EARLY`);
//! - missing type detection: a Q4_0 tensor labelled Q4_K (the same bytes);
//! - algorithm mismatch: a GGUF whose q/k are not permuted as llama.cpp's rope expects;
//! - missing companion data: a model directory without its config.json;
//! - path traversal: a playbook naming /etc/passwd as a model or an artifact.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use modelqa::support::checks::trace::{TraceBound, diff_trace};
use modelqa::support::engine::{Session, load_candle};
use modelqa::support::format::gguf;
use modelqa::support::journal::EvidenceRecord;
use modelqa::support::matrix::{Backend, Format, Quantization};
use modelqa::vocab::Outcome;

use super::{PROMPTS, copy_model, model_dir, run_playbook};

/// qa-tiny-llama's smoke trials of its safetensors cell, from a copy of the family's playbook
/// whose llama model is `dir`, against a copy of the committed goldens, with `env` set; records
/// by the trial's last two segments (`diff::golden-logits`, `run::arithmetic_add`).
fn smoke(dir: &Path, work: &Path, run: &str, env: &[(&str, &OsStr)]) -> HashMap<String, EvidenceRecord> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playbook = std::fs::read_to_string(root.join("playbooks/families/qa-tiny.yaml"))
        .unwrap()
        .replace("path: ../../fixtures/qa-tiny/qa-tiny-llama", &format!("path: {}", dir.display()));
    let file = work.join(format!("{run}.yaml"));
    std::fs::write(&file, playbook).unwrap();
    let golden = work.join(format!("{run}-golden/qa-tiny/qa-tiny-llama"));
    std::fs::create_dir_all(&golden).unwrap();
    for e in std::fs::read_dir(root.join("golden/qa-tiny/qa-tiny-llama")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), golden.join(e.file_name())).unwrap();
    }
    let golden = work.join(format!("{run}-golden"));
    let mut env = env.to_vec();
    env.push(("QUALIFY_GOLDEN_DIR", golden.as_os_str()));
    // The smoke tier's cell without its performance trial, which measures time, not answers.
    let filter = "qa-tiny::smoke::qa-tiny-llama::safetensors::cpu::";
    let (records, printed) = run_playbook(&file, filter, work, run, &env);
    let records: HashMap<String, EvidenceRecord> = records
        .into_iter()
        .filter(|r| !r.trial.ends_with("perf::decode"))
        .map(|r| {
            let tail: Vec<&str> = r.trial.rsplitn(3, "::").take(2).collect();
            (format!("{}::{}", tail[1], tail[0]), r)
        })
        .collect();
    assert!(records.contains_key("diff::golden-logits"), "{run}: {printed}");
    records
}

fn falsified(records: &HashMap<String, EvidenceRecord>, trial: &str, needles: &[&str]) {
    let r = records.get(trial).unwrap_or_else(|| panic!("no {trial} record in {:#?}", records.keys()));
    assert_eq!(r.outcome, Outcome::Falsified, "{trial}: {}", r.reason);
    for n in needles {
        assert!(r.reason.contains(n), "{trial}: `{}` lacks `{n}`", r.reason);
    }
}

fn all_pass(records: &HashMap<String, EvidenceRecord>, what: &str) {
    for (trial, r) in records {
        assert_eq!(r.outcome, Outcome::Corroborated, "{what}: {trial} is a false alarm: {}", r.reason);
    }
}

/// Silent fallback to a wrong resource (realizar 33e18c2: another model's tokenizer). The
/// tokenizer of a model with the same vocabulary size but its own ids — what a fallback to a
/// sibling's `tokenizer.json` gives, and what no size check can see — beside qa-tiny's weights.
/// G0 passes (the sizes agree); the golden logits fail at position 0, where only the input can
/// differ, and so do the golden text and the scenarios' answers.
#[test]
fn a_tokenizer_of_another_model_fails_the_golden_trials_and_the_answers() {
    let work = tempfile::tempdir().unwrap();
    let clean = work.path().join("clean");
    copy_model(&clean);
    all_pass(&smoke(&clean, work.path(), "clean", &[]), "clean");

    let planted = work.path().join("tokenizer");
    copy_model(&planted);
    let path = planted.join("tokenizer.json");
    let mut t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = t["model"]["vocab"].as_object_mut().unwrap();
    let n = vocab.len() as u64;
    // The three control tokens keep their ids; every other token moves 7 ids along.
    for id in vocab.values_mut() {
        let i = id.as_u64().unwrap();
        if i >= 3 {
            *id = (3 + (i - 3 + 7) % (n - 3)).into();
        }
    }
    std::fs::write(&path, t.to_string()).unwrap();
    let records = smoke(&planted, work.path(), "tokenizer", &[]);
    assert_eq!(records["gate::g0-integrity"].outcome, Outcome::Corroborated, "the sizes agree");
    falsified(&records, "diff::golden-logits", &["arithmetic_add position 0: top ids"]);
    falsified(&records, "diff::golden-text", &["arithmetic_add:"]);
    falsified(&records, "run::arithmetic_add", &["expected 47 + 38 = 85"]);
    falsified(&records, "gate::g4-quality", &["produced garbage"]);
}

/// State-advancement timing (realizar 62147f9: the KV cache length advanced on layer 0, before
/// the other layers read it). With `QUALIFY_FAULT_KV_EARLY` every step over cached state runs one
/// position late: position 0 of every golden reference still matches, and the first difference
/// is at position 1, which is what names the cache (an input or weight defect shows at 0).
#[test]
fn a_kv_cache_advanced_one_step_early_fails_golden_logits_from_position_1() {
    let work = tempfile::tempdir().unwrap();
    let clean = work.path().join("clean");
    copy_model(&clean);
    all_pass(&smoke(&clean, work.path(), "clean", &[("QUALIFY_FAULT_KV_EARLY", OsStr::new("0"))]), "clean");

    let records = smoke(&clean, work.path(), "kv-early", &[("QUALIFY_FAULT_KV_EARLY", OsStr::new("1"))]);
    falsified(&records, "diff::golden-logits", &["arithmetic_add position 1: "]);
    let reason = &records["diff::golden-logits"].reason;
    assert!(!reason.contains("position 0:"), "the first position runs without the cache: {reason}");
    // The files are right, so nothing that reads them sees it.
    assert_eq!(records["gate::g0-integrity"].outcome, Outcome::Corroborated);
}

/// `gguf` rewritten with `edit` applied to its tensors, the metadata as it was.
fn with_tensors(gguf: &[u8], edit: impl FnOnce(&mut Vec<(String, QTensor)>)) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(gguf);
    let content = gguf_file::Content::read(&mut cursor).expect("a GGUF file");
    let mut md: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    md.sort_by(|a, b| a.0.cmp(b.0));
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = names
        .into_iter()
        .map(|n| (n.clone(), content.tensor(&mut cursor, n, &Device::Cpu).expect("a tensor")))
        .collect();
    edit(&mut tensors);
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &tensors).expect("the GGUF is written");
    out.into_inner()
}

fn replace(tensors: &mut [(String, QTensor)], name: &str, with: QTensor) {
    tensors.iter_mut().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} is in the file")).1 = with;
}

/// G0 of qa-tiny-llama's `format` cell, whose file is `bytes` named by the playbook as the
/// model's artifact.
fn g0_of_artifact(work: &Path, run: &str, format: &str, bytes: &[u8]) -> EvidenceRecord {
    let file = work.join(format!("{run}.gguf"));
    std::fs::write(&file, bytes).unwrap();
    let playbook = format!(
        "playbook: 1\nfamily: planted\ntiers: {{q: {{formats: [{format}], backends: [cpu], modalities: [run]}}}}\n\
         models:\n  - {{id: test/qa-tiny, path: {}, prompt_template: \"{{prompt}}\\n\", artifacts: {{{format}: {}}}}}\n\
         scenarios:\n  - {{name: add, prompt: \"What is 2 + 2?\", max_tokens: 6, oracles: [arithmetic]}}\n",
        model_dir("llama").display(),
        file.display()
    );
    let pb = work.join(format!("{run}.yaml"));
    std::fs::write(&pb, playbook).unwrap();
    let cache = work.join("cache");
    let (records, printed) =
        run_playbook(&pb, "::gate::g0-integrity", work, run, &[("QUALIFY_CACHE_DIR", cache.as_os_str())]);
    records.into_iter().next().unwrap_or_else(|| panic!("{run}: no G0 record: {printed}"))
}

/// Missing type detection (realizar f13f39b: Q4_0 routed to the Q4_K kernel). One Q4_0 matrix
/// of a Q4_0 file labelled Q4_K: 256 values are 144 bytes in both, so the file's layout is
/// consistent and it loads; G0 holds each tensor's type to the cell's format and names the
/// tensor.
#[test]
fn a_q4_0_tensor_labelled_q4_k_fails_g0_naming_the_tensor() {
    let work = tempfile::tempdir().unwrap();
    let clean = gguf::from_safetensors(&model_dir("llama"), Quantization::Q4_0).expect("converts");
    let r = g0_of_artifact(work.path(), "clean", "gguf-q4_0", &clean);
    assert_eq!(r.outcome, Outcome::Corroborated, "{}", r.reason);

    let name = "blk.0.attn_q.weight";
    let relabelled = with_tensors(&clean, |tensors| {
        let t = &tensors.iter().find(|(n, _)| n == name).expect("the tensor").1;
        assert_eq!(t.dtype(), GgmlDType::Q4_0);
        let bytes = t.data().expect("its bytes").into_owned();
        let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, GgmlDType::Q4K)
            .expect("the same bytes hold 256-value Q4_K blocks");
        let q4k = QTensor::new(storage, t.shape().clone()).expect("a tensor");
        replace(tensors, name, q4k);
    });
    let r = g0_of_artifact(work.path(), "relabelled", "gguf-q4_0", &relabelled);
    assert_eq!(r.outcome, Outcome::Falsified, "{}", r.reason);
    // Read as Q4_K, the Q4_0 bytes decode to NaN: the scan after dequantization (missing
    // post-transform validation, aprender GH-177) names the same tensor.
    for want in [
        "tensor types outside gguf-q4_0",
        "blk.0.attn_q.weight is Q4K",
        "tensor `blk.0.attn_q.weight` (Q4K) holds 1024 NaN and 0 infinite values of 65536 after dequantization",
    ] {
        assert!(r.reason.contains(want), "G0 names the tensor: `{}` lacks `{want}`", r.reason);
    }
}

/// `diff::trace` of the GGUF at `candidate` against qa-tiny-llama's safetensors.
fn trace_against_safetensors(candidate: &Path, format: Format) -> modelqa::support::checks::Verdict {
    let ids = |p: &Path| -> Vec<Vec<u32>> {
        let s = load_candle(p, Backend::Cpu).expect("loads");
        PROMPTS.iter().map(|q| s.encode(q).expect("encodes")).collect()
    };
    let truth = model_dir("llama");
    diff_trace(&truth, &ids(&truth), candidate, &ids(candidate), TraceBound::for_format(format), format).0
}

/// Algorithm mismatch (aprender GH-177: two implementations, incompatible layouts). llama.cpp's
/// rope rotates adjacent pairs, so a GGUF writer permutes q and k from Hugging Face's halves; a
/// writer that skips it gives a file every tensor check of shape and value passes. `diff::trace`
/// names the first layer whose attention it breaks.
#[test]
fn a_gguf_whose_q_and_k_are_not_permuted_fails_diff_trace_naming_the_layer() {
    let work = tempfile::tempdir().unwrap();
    let format = Format::Gguf(Quantization::Q8_0);
    let clean = gguf::from_safetensors(&model_dir("llama"), Quantization::Q8_0).expect("converts");
    let clean_path = work.path().join("clean.gguf");
    std::fs::write(&clean_path, &clean).unwrap();
    let v = trace_against_safetensors(&clean_path, format);
    assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);

    let weights =
        candle_core::safetensors::load(model_dir("llama").join("model.safetensors"), &Device::Cpu).unwrap();
    let unpermuted = with_tensors(&clean, |tensors| {
        for layer in 0..2 {
            for (hf, gg) in [("q_proj", "attn_q"), ("k_proj", "attn_k")] {
                let w: &Tensor = &weights[&format!("model.layers.{layer}.self_attn.{hf}.weight")];
                let q = QTensor::quantize(w, GgmlDType::Q8_0).expect("quantizes");
                replace(tensors, &format!("blk.{layer}.{gg}.weight"), q);
            }
        }
    });
    let path = work.path().join("unpermuted.gguf");
    std::fs::write(&path, &unpermuted).unwrap();
    let v = trace_against_safetensors(&path, format);
    assert_eq!(v.outcome, Outcome::Falsified, "{}", v.reason);
    assert!(v.reason.contains("layer 0 attention output"), "{}", v.reason);
}

/// Missing companion data (aprender GH-182: no config.json or tokenizer.json). A model directory
/// holding its weights and tokenizer but no config.json: the trials of the model fail or are
/// ignored naming the file, never pass. (Without tokenizer.json, G0 names the tokenizer:
/// `planted_defects_fail_their_gate_and_clean_models_pass`; an APR without its tokenizer does not
/// load: `formats.rs::an_apr_file_without_its_tokenizer_fails_to_load_and_says_so`.)
#[test]
fn a_model_directory_without_config_json_is_named() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("no-config");
    copy_model(&dir);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let records = super::gates(&dir, work.path(), "no-config");
    assert!(!records.is_empty(), "the model's trials ran");
    for (gate, r) in &records {
        assert_ne!(r.outcome, Outcome::Corroborated, "{gate} passed without config.json");
        assert!(r.reason.contains("config.json"), "{gate}: `{}` does not name config.json", r.reason);
    }
}

/// Path traversal (realizar 04d2774: /etc/passwd loaded as a model). A playbook naming
/// /etc/passwd, directly or through `..`, as a model or as an artifact: the model is not found
/// (it is not a model directory) and its trials are ignored with where the binder looked, never
/// run on the file; an artifact that is not a `.gguf`/`.apr` file is a playbook error.
#[test]
fn a_playbook_naming_etc_passwd_never_loads_it_as_a_model() {
    let work = tempfile::tempdir().unwrap();
    let up = "../".repeat(work.path().components().count() + 2);
    let playbook = format!(
        "playbook: 1\nfamily: traversal\ntiers: {{q: {{formats: [safetensors], backends: [cpu], modalities: [run]}}}}\n\
         models:\n  - {{id: test/passwd, path: /etc/passwd, prompt_template: \"{{prompt}}\\n\"}}\n\
         \x20 - {{id: test/dotdot, path: {up}etc/passwd, prompt_template: \"{{prompt}}\\n\"}}\n\
         scenarios:\n  - {{name: add, prompt: \"What is 2 + 2?\", max_tokens: 6, oracles: [arithmetic]}}\n"
    );
    let file = work.path().join("traversal.yaml");
    std::fs::write(&file, &playbook).unwrap();
    let (records, printed) = run_playbook(&file, "traversal::", work.path(), "traversal", &[]);
    assert!(records.is_empty(), "no trial ran on /etc/passwd: {records:#?}");
    for model in ["test/passwd", "test/dotdot"] {
        let line = printed
            .lines()
            .find(|l| l.contains(&format!("model {model} not found")))
            .unwrap_or_else(|| panic!("{model} is not reported missing: {printed}"));
        assert!(line.contains("etc/passwd"), "{model}: the reason names the path: {line}");
    }

    let artifact = playbook.replace(
        "  - {id: test/passwd, path: /etc/passwd,",
        &format!(
            "  - {{id: test/passwd, path: {}, artifacts: {{gguf-q8_0: /etc/passwd}},",
            model_dir("llama").display()
        ),
    );
    assert_ne!(artifact, playbook);
    std::fs::write(&file, &artifact).unwrap();
    let out = std::process::Command::new(super::common::qualify_binary())
        .arg("traversal::")
        .env("QUALIFY_PLAYBOOKS", &file)
        .env("QUALIFY_JOURNAL_DIR", work.path().join("journal"))
        .output()
        .expect("qualify runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("\"passwd\", which is not a `.gguf` file"), "{stderr}");
}
