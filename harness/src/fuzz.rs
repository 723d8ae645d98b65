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
