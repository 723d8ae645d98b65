//! Fuzz targets: one entry point per reader of bytes the harness did not write (playbooks,
//! model files, journals, HTTP requests). Each takes any bytes and must return: an error is the
//! expected answer to garbage, a panic, an abort, a hang or an unbounded allocation is a defect.
//!
//! The driver is `cargo xtask fuzz` (in-process, on stable Rust): it mutates the committed seed
//! corpus under `fuzz/corpus/<target>/`, catches panics, watches for hangs and reports peak
//! memory. This module only names the targets; it never mutates, times or counts.

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
    let rules = Rules { max_tokens_limit: 4096, template: Some(&template), gauge: Some(&gauge) };
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
        let rules = crate::serve::Rules { max_tokens_limit: 4096, template: None, gauge: Some(&gauge) };
        for name in ["completion.json", "completion-stream-stop-seed.json", "completion-defaults.json"] {
            let data = std::fs::read(dir.join(name)).expect("a seed");
            let job = crate::serve::parse(crate::serve::Shape::Completion, &data, &rules);
            assert!(job.is_ok(), "{name}: {job:?}");
        }
    }
}
