//! All wording the harness shows a person on stderr, in one place.

use std::collections::BTreeMap;
use std::io::Write;

use crate::config::ConfigError;
use crate::name::NameError;
use crate::playbook::{Notice, PlaybookError};

/// Exit codes of the qualify harness (also in the README).
pub mod exit {
    /// Every selected trial passed (or none was selected).
    pub const OK: u8 = 0;
    /// A trial failed (libtest's code).
    pub const TRIAL_FAILED: u8 = 101;
    /// A playbook is malformed, or `--exact` named no trial: nothing ran.
    pub const PLAYBOOK_ERROR: u8 = 3;
    /// A `QUALIFY_*` setting is invalid, or the journal cannot be opened: nothing ran.
    pub const ENVIRONMENT_ERROR: u8 = 4;
}

pub fn playbook_error(err: &PlaybookError) {
    eprintln!("error: failed to load playbooks: {err}");
    eprintln!("note: no trial was run; fix the playbook and run again");
}

pub fn config_error(err: &ConfigError) {
    eprintln!("error: {err}");
}

pub fn journal_error(path: &std::path::Path, err: &std::io::Error) {
    eprintln!("error: failed to open the evidence journal {}: {err}", path.display());
}

pub fn invalid_exact_name(name: &str, err: &NameError) {
    eprintln!("error: `{name}` is not a trial name: {err}");
}

pub fn unknown_exact_name(name: &str, scanned: &std::path::Path) {
    eprintln!("error: no trial is named `{name}` in the playbooks under {}", scanned.display());
}

/// Says once, by name, what playbooks ask for that this build does not do yet.
pub fn notices(notices: &[Notice]) {
    let mut by_message: BTreeMap<&str, Vec<&Notice>> = BTreeMap::new();
    for n in notices {
        by_message.entry(n.message.as_str()).or_default().push(n);
    }
    let mut err = std::io::stderr().lock();
    for (message, list) in by_message {
        let first = list[0].file.display();
        let more =
            if list.len() > 1 { format!(" (and {} more playbooks)", list.len() - 1) } else { String::new() };
        let _ = writeln!(err, "note: {first}{more}: {message}");
    }
}

/// Groups ignore reasons, so a thousand trials of one missing model make one line.
pub fn ignored_summary(reasons: &BTreeMap<String, usize>) {
    let mut err = std::io::stderr().lock();
    for (reason, count) in reasons {
        let _ = writeln!(err, "ignored {count} trial{}: {reason}", if *count == 1 { "" } else { "s" });
    }
}

pub fn run_header(selected: usize, total: usize, playbooks: usize, journal: &std::path::Path) {
    eprintln!(
        "modelqa: {selected} of {total} trials selected from {playbooks} playbook{}; evidence → {}",
        if playbooks == 1 { "" } else { "s" },
        journal.display()
    );
}
