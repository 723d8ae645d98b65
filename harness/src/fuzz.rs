//! Fuzz targets: one entry point per reader of bytes the harness did not write (playbooks,
//! model files, journals, HTTP requests). Each takes any bytes and must return: an error is the
//! expected answer to garbage, a panic, an abort, a hang or an unbounded allocation is a defect.
//!
//! The driver is `cargo xtask fuzz` (in-process, on stable Rust): it mutates the committed seed
//! corpus under `fuzz/corpus/<target>/`, catches panics, watches for hangs and reports peak
//! memory. This module only names the targets; it never mutates, times or counts.
//!
//! The model-file targets take the bytes along a trial's path: the file-only checks of G0, the
//! conversions a derived format is made by, and the embedded engine's load on CPU, then two
//! generated tokens when it loads. They run on the tiny models of [`models`], written to a
//! temporary directory per input.

pub(crate) mod models;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The name on the command line and the corpus folder under `fuzz/corpus/`.
    pub name: &'static str,
    /// What the target reads, for `--list`.
    pub reads: &'static str,
    /// Feeds `data` to the reader; the result is dropped (an error is fine).
    pub run: fn(&[u8]),
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target { name: "playbook", reads: "a playbook file, either language", run: playbook },
    Target { name: "journal", reads: "an evidence journal", run: journal },
    Target {
        name: "server-request",
        reads: "a request body to the server's /v1/completions and /v1/chat/completions",
        run: server_request,
    },
    Target { name: "gguf", reads: "a GGUF model file, loaded on CPU", run: gguf },
    Target { name: "safetensors", reads: "a model's safetensors weights, loaded on CPU", run: safetensors },
    Target { name: "apr", reads: "an APR v2 model file, loaded on CPU", run: apr },
    Target { name: "model-config", reads: "a model's config.json, loaded on CPU", run: model_config },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn playbook(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // A root that does not exist: `extends` can only be refused.
    let root = std::path::Path::new("/nonexistent/modelqa-fuzz");
    if let Ok((playbooks, _)) = crate::playbook::load_text(&root.join("playbook.yaml"), root, text) {
        // Expansion is where counts become allocations: run it too.
        let _ = crate::expand::Plan::new(playbooks).total();
    }
}

fn journal(data: &[u8]) {
    let _ = crate::journal::read_from(data);
}

/// The server's whole check of a request body, both endpoints, as far as the model: no network
/// and no model. A stand-in gauge (one token per byte, qa-tiny's context of 128) and qa-tiny's
/// ChatML template take the places of the model's tokenizer and template; an accepted job's stop
/// sequences are run over its own prompt, whole and in pieces.
fn server_request(data: &[u8]) {
    use crate::serve::{Rules, Shape, StopScanner, parse, refuse_long_tokens};
    const CHATML: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + \
                          message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt \
                          %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
    let template = crate::chat::ChatTemplate {
        source: CHATML.into(),
        bos_token: String::new(),
        eos_token: "<|endoftext|>".into(),
    };
    let gauge = crate::engine::PromptGauge::new(128, 1, |p: &str| Ok(p.len()));
    let rules =
        Rules { max_tokens_limit: 4096, template: Some(&template), gauge: Some(&gauge), control: &[] };
    for shape in [Shape::Completion, Shape::Chat] {
        let Ok(job) = parse(shape, data, &rules) else { continue };
        let _ = refuse_long_tokens(&job, &gauge);
        let mut scanner = StopScanner::new(job.stop.clone());
        let chars: Vec<char> = job.prompt.chars().collect();
        for piece in chars.chunks(3) {
            let _ = scanner.push(&piece.iter().collect::<String>());
        }
        let _ = scanner.finish();
    }
}

/// A scratch directory for one input; `None` where none can be made (nothing to fuzz then).
fn scratch() -> Option<tempfile::TempDir> {
    tempfile::Builder::new().prefix("modelqa-fuzz").tempdir().ok()
}

/// What a trial does with a model once its files are in place: load on CPU (hashes remembered
/// inside the scratch directory, not the cache) and generate two tokens.
fn load_and_generate(path: &std::path::Path, scratch: &std::path::Path) {
    use crate::engine::Session as _;
    let hashes = scratch.join("hashes");
    let hash = |p: &std::path::Path| crate::format::files::hash_file_in(p, &hashes);
    let Ok(mut session) = crate::engine::load_candle_with(path, crate::matrix::Backend::Cpu, &hash) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let _ = session.generate(&crate::engine::GenerateRequest::greedy(models::PROMPT, 2, deadline));
}

/// G0 of a Hugging Face directory, the conversions to APR and GGUF, and the load.
fn model_dir(dir: &std::path::Path, scratch: &std::path::Path) {
    let _ = crate::integrity::check(dir, &Default::default(), None);
    let _ = crate::format::convert::safetensors_to_apr(dir);
    let _ = crate::format::gguf::from_safetensors(dir, crate::matrix::Quantization::Q8_0);
    load_and_generate(dir, scratch);
}

fn safetensors(data: &[u8]) {
    let Some(tmp) = scratch() else { return };
    let dir = tmp.path().join("model");
    let config = models::config("llama").to_string();
    if std::fs::create_dir(&dir).is_ok() && models::write_dir(&dir, config.as_bytes(), data).is_ok() {
        model_dir(&dir, tmp.path());
    }
}

fn model_config(data: &[u8]) {
    let Some(tmp) = scratch() else { return };
    // Weights of the tiny model of the architecture the config names, so a mutated config is
    // judged against real tensors.
    let model_type = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|c| c.get("model_type")?.as_str().map(str::to_string))
        .filter(|t| matches!(t.as_str(), "llama" | "qwen2" | "mistral"))
        .unwrap_or_else(|| "llama".to_string());
    let Some(weights) = models::weights(&models::config(&model_type)) else { return };
    let dir = tmp.path().join("model");
    if std::fs::create_dir(&dir).is_ok() && models::write_dir(&dir, data, &weights).is_ok() {
        model_dir(&dir, tmp.path());
    }
}

fn gguf(data: &[u8]) {
    let Some(tmp) = scratch() else { return };
    let path = tmp.path().join("model.gguf");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let any = crate::matrix::Format::Gguf(crate::matrix::Quantization::Q8_0);
    let _ = crate::integrity::check_artifact(&path, any, None, &Default::default(), None);
    let _ = crate::format::gguf::dequantize(&path);
    let _ = crate::format::gguf::to_apr(&path);
    load_and_generate(&path, tmp.path());
}

/// The bytes as they are, then with both checksums made good: nearly every mutation breaks a
/// CRC, and the reader behind the checksums must hold against the rest as well.
fn apr(data: &[u8]) {
    let Some(tmp) = scratch() else { return };
    let path = tmp.path().join("model.apr");
    for bytes in [data.to_vec(), crate::format::apr::reseal(data.to_vec())] {
        if std::fs::write(&path, &bytes).is_err() {
            return;
        }
        let _ = crate::integrity::check_artifact(
            &path,
            crate::matrix::Format::Apr,
            None,
            &Default::default(),
            None,
        );
        load_and_generate(&path, tmp.path());
    }
}

#[cfg(test)]
#[path = "fuzz/smoke_tests.rs"]
mod smoke_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seeds of `server-request` run clean, and the valid ones are accepted (a
    /// corpus of refusals alone would never reach generation settings or stop sequences).
    #[test]
    fn the_server_request_seeds_run_and_the_valid_ones_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/server-request");
        let target = target("server-request").expect("the target");
        let mut seeds = 0;
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.display()))
        {
            let path = entry.expect("an entry").path();
            let data = std::fs::read(&path).expect("a seed");
            (target.run)(&data);
            seeds += 1;
        }
        assert!(seeds >= 20, "{seeds} seeds in {}", dir.display());
        let gauge = crate::engine::PromptGauge::new(128, 1, |p: &str| Ok(p.len()));
        let rules =
            crate::serve::Rules { max_tokens_limit: 4096, template: None, gauge: Some(&gauge), control: &[] };
        for name in ["completion.json", "completion-stream-stop-seed.json", "completion-defaults.json"] {
            let data = std::fs::read(dir.join(name)).expect("a seed");
            let job = crate::serve::parse(crate::serve::Shape::Completion, &data, &rules);
            assert!(job.is_ok(), "{name}: {job:?}");
        }
    }
}
