//! Artifacts a model ships (`artifacts:` in a playbook): a GGUF file modelqa did not make in
//! this run (qa-tiny-llama converted to Q8_0 beforehand, its `modelqa.*` keys stripped as another
//! tool would not write them) is qualified against the safetensors ground truth, found through
//! the Hugging Face cache by an `hf://` address; metadata lies fail G0 naming their key; and the
//! file alone, with no ground truth, is qualified on its own with its comparisons ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{self, Value};
use modelqa::support::journal::EvidenceRecord;
use modelqa::support::matrix::Quantization;
use modelqa::vocab::Outcome;

use super::model_dir;

/// `gguf` rewritten with `edit` applied to its metadata, the tensors as they were.
fn with_metadata(gguf: &[u8], edit: impl FnOnce(&mut Vec<(String, Value)>)) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(gguf);
    let content = gguf_file::Content::read(&mut cursor).expect("a GGUF file");
    let mut md: Vec<(String, Value)> = content.metadata.clone().into_iter().collect();
    md.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut md);
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .into_iter()
        .map(|n| (n.clone(), content.tensor(&mut cursor, n, &candle_core::Device::Cpu).expect("a tensor")))
        .collect();
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &tensors).expect("the GGUF is written");
    out.into_inner()
}

fn set(md: &mut [(String, Value)], key: &str, value: Value) {
    md.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} is in the file")).1 = value;
}

/// qa-tiny-llama as a Q8_0 GGUF file without the keys only modelqa writes.
fn shipped_q8() -> Vec<u8> {
    let bytes = modelqa::support::format::gguf::from_safetensors(&model_dir("llama"), Quantization::Q8_0)
        .expect("qa-tiny converts");
    with_metadata(&bytes, |md| md.retain(|(k, _)| !k.starts_with("modelqa.")))
}

/// `bytes` as `file` of the Hugging Face repository `org/name` at `main`, in the cache `hub`.
fn into_hub_cache(hub: &Path, repo: &str, file: &str, bytes: &[u8]) {
    let dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), "0123abcd").unwrap();
    let snapshot = dir.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(snapshot.join(file), bytes).unwrap();
}

/// Runs the trials of `playbook` matching `filter`: the records by trial name, and what the
/// harness printed (stdout, then stderr, where ignore reasons are summed up).
fn qualify(
    work: &Path,
    run: &str,
    playbook: &str,
    filter: &str,
) -> (HashMap<String, EvidenceRecord>, String) {
    let file = work.join(format!("{run}.yaml"));
    std::fs::write(&file, playbook).unwrap();
    let (cache, hub) = (work.join("cache"), work.join("hub"));
    let env = [("QUALIFY_CACHE_DIR", cache.as_os_str()), ("HF_HUB_CACHE", hub.as_os_str())];
    let (records, printed) = super::run_playbook(&file, filter, work, run, &env);
    (records.into_iter().map(|r| (r.trial.clone(), r)).collect(), printed)
}

const SCENARIOS: &str = "scenarios:\n\
    \x20 - {name: add, prompt: \"What is 47 + 38?\", max_tokens: 6, oracles: [arithmetic]}\n\
    \x20 - {name: mul, prompt: \"Calculate 7*8\", max_tokens: 6, oracles: [arithmetic]}\n\
    \x20 - {name: sub, prompt: \"What is 12 - 9?\", max_tokens: 6, oracles: [arithmetic]}\n";

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The clean third-party file passes every trial of its cell, found through `hf://`, and its
/// records say where it came from; I-1, which would repeat a conversion, is ignored.
#[test]
fn a_shipped_gguf_is_qualified_against_its_ground_truth() {
    let work = tempfile::tempdir().unwrap();
    let bytes = shipped_q8();
    into_hub_cache(&work.path().join("hub"), "other/qa-tiny-GGUF", "qa-tiny-Q8_0.gguf", &bytes);
    let playbook = format!(
        "playbook: 1\nfamily: shipped\ntiers:\n  q8: {{formats: [gguf-q8_0], backends: [cpu], modalities: [run]}}\n\
         models:\n  - id: test/qa-tiny\n    path: {}\n    prompt_template: \"{{prompt}}\\n\"\n\
         \x20   artifacts: {{gguf-q8_0: \"hf://other/qa-tiny-GGUF/qa-tiny-Q8_0.gguf\"}}\n{SCENARIOS}",
        model_dir("llama").display()
    );
    let (records, stdout) = qualify(work.path(), "clean", &playbook, "shipped::");
    assert!(records.len() >= 15, "{stdout}");
    let provenance = modelqa::support::journal::ThirdParty {
        file: "hf://other/qa-tiny-GGUF@main/qa-tiny-Q8_0.gguf".into(),
        sha256: sha256(&bytes),
    };
    for (name, r) in &records {
        assert_eq!(r.outcome, Outcome::Corroborated, "{name}: {}", r.reason);
        assert_eq!(r.third_party.as_ref(), Some(&provenance), "{name}");
    }
    let g0 = &records["shipped::q8::qa-tiny::gguf-q8_0::cpu::gate::g0-integrity"];
    assert!(
        g0.reason.starts_with("third-party gguf-q8_0 file hf://other/qa-tiny-GGUF@main/qa-tiny-Q8_0.gguf: ")
            && g0.reason.contains("agrees with config.json and tokenizer_config.json key by key"),
        "{}",
        g0.reason
    );
    for diff in
        ["logits-vs-safetensors", "generation-vs-safetensors", "tensors-vs-safetensors", "tokenizer-fuzz"]
    {
        let name = format!("shipped::q8::qa-tiny::gguf-q8_0::cpu::diff::{diff}");
        assert!(records.contains_key(&name), "{name} ran: {stdout}");
    }
    assert!(stdout.contains("a third-party gguf-q8_0 file quantizes"), "I-1 is ignored: {stdout}");
}

/// A rope base, a KV-head count and a chat template that disagree with config.json and
/// tokenizer_config.json each fail G0 naming the key; a Q8_0 file named as Q4_K_M fails naming
/// its file type and its tensor types.
#[test]
fn metadata_lies_fail_g0_naming_the_key() {
    let work = tempfile::tempdir().unwrap();
    let clean = shipped_q8();
    let lies: [(&str, Vec<u8>, &str); 3] = [
        (
            "rope",
            with_metadata(&clean, |md| set(md, "llama.rope.freq_base", Value::F32(1_000_000.0))),
            "llama.rope.freq_base 1000000 in the file, config.json rope_theta 10000",
        ),
        (
            "kv-heads",
            with_metadata(&clean, |md| set(md, "llama.attention.head_count_kv", Value::U32(4))),
            "llama.attention.head_count_kv 4 in the file, config.json num_key_value_heads 2",
        ),
        (
            "template",
            with_metadata(&clean, |md| {
                set(md, "tokenizer.chat_template", Value::String("{{ messages[0]['content'] }}".into()))
            }),
            "tokenizer.chat_template differs from tokenizer_config.json chat_template at character 1",
        ),
    ];
    let mut models = String::new();
    for (slug, bytes, _) in &lies {
        let file: PathBuf = work.path().join(format!("{slug}.gguf"));
        std::fs::write(&file, bytes).unwrap();
        models += &format!(
            "  - {{id: test/{slug}, path: {}, artifacts: {{gguf-q8_0: {}}}}}\n",
            model_dir("llama").display(),
            file.display()
        );
    }
    let mislabelled = work.path().join("mislabelled.gguf");
    std::fs::write(&mislabelled, &clean).unwrap();
    models += &format!(
        "  - {{id: test/mislabelled, path: {}, artifacts: {{gguf-q4_k_m: {}}}}}\n",
        model_dir("llama").display(),
        mislabelled.display()
    );
    let playbook = format!(
        "playbook: 1\nfamily: lies\ntiers:\n  q: {{formats: [gguf-q8_0, gguf-q4_k_m], backends: [cpu], modalities: [run]}}\n\
         models:\n{models}{SCENARIOS}"
    );
    let (records, stdout) = qualify(work.path(), "lies", &playbook, "::gate::g0-integrity");
    for (slug, _, want) in &lies {
        let r = &records[&format!("lies::q::{slug}::gguf-q8_0::cpu::gate::g0-integrity")];
        assert_eq!(r.outcome, Outcome::Falsified, "{slug}: {}", r.reason);
        assert!(r.reason.contains(want), "{slug}: `{}` lacks `{want}`", r.reason);
        // The same model's own conversion agrees with its config.
        let own = &records[&format!("lies::q::{slug}::gguf-q4_k_m::cpu::gate::g0-integrity")];
        assert_eq!(own.outcome, Outcome::Corroborated, "{slug}: {}", own.reason);
        assert!(own.third_party.is_none(), "{slug}: modelqa's own conversion");
    }
    let r = &records["lies::q::mislabelled::gguf-q4_k_m::cpu::gate::g0-integrity"];
    assert_eq!(r.outcome, Outcome::Falsified, "{}", r.reason);
    for want in [
        "general.file_type 7 (q8_0) in the file, the cell's format gguf-q4_k_m is file type 15",
        "no matrix of the file is Q4K",
    ] {
        assert!(r.reason.contains(want), "`{}` lacks `{want}`: {stdout}", r.reason);
    }
}

/// A GGUF file with no safetensors beside it is qualified on its own: G0–G4 and its scenarios
/// pass, and every comparison with a ground truth is ignored with the reason.
#[test]
fn a_gguf_without_ground_truth_is_qualified_on_its_own() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("qa-tiny-Q8_0.gguf");
    std::fs::write(&file, shipped_q8()).unwrap();
    let playbook = format!(
        "playbook: 1\nfamily: alone\ntiers:\n  q8: {{formats: [gguf-q8_0], backends: [cpu], modalities: [run]}}\n\
         models:\n  - id: test/qa-tiny-gguf\n    architecture: llama\n    prompt_template: \"{{prompt}}\\n\"\n\
         \x20   expect: {{hidden_size: 256, num_layers: 2, num_heads: 4, num_kv_heads: 2, vocab_size: 512, context_length: 128,\
         rope_theta: 10000, rms_norm_eps: 0.00001, bos_token_id: 0, eos_token_id: 0}}\n\
         \x20   artifacts: {{gguf-q8_0: {}}}\n{SCENARIOS}",
        file.display()
    );
    // Each number the playbook expects otherwise fails G0, naming the key.
    for (expect, says) in [
        (
            "rope_theta: 10000",
            "llama.rope.freq_base 10000 in the file, the playbook expects rope_theta 500000",
        ),
        (
            "rms_norm_eps: 0.00001",
            "llama.attention.layer_norm_rms_epsilon 0.00001 in the file, the playbook expects rms_norm_eps 0.000001",
        ),
        ("eos_token_id: 0", "tokenizer.ggml.eos_token_id 0 in the file, the playbook expects eos_token_id 2"),
    ] {
        let wrong = says.rsplit(' ').next().expect("a number");
        let field = expect.split(':').next().expect("a field");
        let lying = playbook.replace(expect, &format!("{field}: {wrong}"));
        let (records, stdout) =
            qualify(work.path(), "lying", &lying, "alone::q8::qa-tiny-gguf::gguf-q8_0::cpu::gate::g0");
        let g0 = records.values().next().unwrap_or_else(|| panic!("G0 ran: {stdout}"));
        assert_eq!(g0.outcome, Outcome::Falsified, "{}", g0.reason);
        assert!(g0.reason.contains(says), "{}", g0.reason);
    }
    let (records, stdout) = qualify(work.path(), "alone", &playbook, "alone::");
    let mut gates = 0;
    for (name, r) in &records {
        assert_eq!(r.outcome, Outcome::Corroborated, "{name}: {}", r.reason);
        // The file against itself in batches needs no ground truth; every comparison with one is
        // ignored.
        assert!(
            !name.contains("::diff::") || name.ends_with("::diff::batch-invariance"),
            "{name} ran without a ground truth"
        );
        gates += usize::from(name.contains("::gate::g"));
    }
    assert_eq!(gates, 5, "G0–G4: {stdout}");
    assert!(records.keys().any(|n| n.ends_with("::run::add")), "{stdout}");
    assert!(records.keys().any(|n| n.ends_with("::diff::batch-invariance")), "{stdout}");
    assert!(
        stdout
            .contains("nothing to compare against: test/qa-tiny-gguf ships no safetensors ground truth here"),
        "{stdout}"
    );
    let g0 = &records["alone::q8::qa-tiny-gguf::gguf-q8_0::cpu::gate::g0-integrity"];
    assert!(g0.reason.contains("agrees with the playbook's expectations"), "{}", g0.reason);
}

/// A shipped GGUF whose KV keys state a wrong rope θ, qualified through the harness: its
/// `diff::trace` names the first layer that broke and the number the file states, its record
/// keeps the per-layer trace, and the clean file's trace trials pass.
#[test]
fn a_shipped_gguf_with_a_wrong_rope_theta_fails_diff_trace_naming_the_layer() {
    let work = tempfile::tempdir().unwrap();
    let clean = shipped_q8();
    let rope = with_metadata(&clean, |md| set(md, "llama.rope.freq_base", Value::F32(100.0)));
    let mut models = String::new();
    for (slug, bytes) in [("clean", &clean), ("rope", &rope)] {
        let file: PathBuf = work.path().join(format!("{slug}.gguf"));
        std::fs::write(&file, bytes).unwrap();
        models += &format!(
            "  - {{id: test/{slug}, path: {}, prompt_template: \"{{prompt}}\\n\", artifacts: {{gguf-q8_0: {}}}}}\n",
            model_dir("llama").display(),
            file.display()
        );
    }
    let playbook = format!(
        "playbook: 1\nfamily: traced\nfailure_policy: collect-all\ntiers:\n  q: {{formats: [safetensors, gguf-q8_0], backends: [cpu], modalities: [run]}}\n\
         models:\n{models}{SCENARIOS}"
    );
    let (records, stdout) = qualify(work.path(), "traced", &playbook, "::trace");
    for name in [
        "traced::q::clean::gguf-q8_0::cpu::diff::trace",
        "traced::q::clean::gguf-q8_0::cpu::gate::trace",
        "traced::q::clean::safetensors::cpu::gate::trace",
        "traced::q::rope::gguf-q8_0::cpu::gate::trace",
    ] {
        let r = records.get(name).unwrap_or_else(|| panic!("{name} ran: {stdout}"));
        assert_eq!(r.outcome, Outcome::Corroborated, "{name}: {}", r.reason);
    }
    let r = &records["traced::q::rope::gguf-q8_0::cpu::diff::trace"];
    assert_eq!(r.outcome, Outcome::Falsified, "{}", r.reason);
    assert!(
        r.reason.starts_with("layer 0 attention output: cosine")
            && r.reason.contains("this file states rope θ 100 (ground truth 10000)"),
        "{}",
        r.reason
    );
    let trace = r.metrics.trace.as_ref().expect("the record keeps the trace");
    let sites: Vec<&str> = trace.iter().map(|p| p.site.as_str()).collect();
    assert_eq!(sites, ["embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp", "norm", "logits"]);
    assert!(trace[0].cosine.is_some_and(|c| c > 0.999), "the embedding is untouched: {:?}", trace[0]);
    assert!(trace[1].cosine.is_some_and(|c| c < 0.998), "layer 0's attention broke: {:?}", trace[1]);
    assert!(trace.iter().all(|p| p.reference_l2.is_some() && p.nonfinite == 0));
}
