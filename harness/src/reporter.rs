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
    /// The filter selected no trial (nextest's convention; `QUALIFY_NO_TRIALS=warn|pass` to allow).
    pub const NO_TRIALS: u8 = 5;
}

/// Names each `QUALIFY_*` variable the harness does not read, with the one it may have meant,
/// and every variable it does read: a mistyped setting must not run with the default silently.
pub fn unknown_variables(unknown: &[(String, Option<&'static str>)]) {
    let mut err = std::io::stderr().lock();
    for (name, nearest) in unknown {
        let hint = nearest.map_or_else(String::new, |n| format!("; did you mean {n}?"));
        let _ = writeln!(err, "error: {name} is set but modelqa reads no such variable{hint}");
    }
    let _ = writeln!(
        err,
        "note: modelqa reads {}; nothing was run (unset the variable, or fix its name)",
        crate::config::VARIABLES.join(", ")
    );
}

/// A trial whose measurement was too noisy to judge: shown by libtest as ignored, by nextest as
/// passed, so it is said on stderr as well.
pub fn unstable(trial: &str, reason: &str) {
    eprintln!("UNSTABLE {trial}: {reason}");
}

/// Says what a filter that selected nothing searched: the playbooks, their families and tiers,
/// and the nearest `family::tier` when the filter looks like one.
pub fn no_trials(
    filter: &crate::expand::Filter,
    plan: &crate::expand::Plan,
    scanned: &std::path::Path,
    fatal: bool,
) {
    let mut err = std::io::stderr().lock();
    let what = match (&filter.filter, filter.skip.is_empty()) {
        (Some(f), true) => format!("the filter `{f}`"),
        (Some(f), false) => format!("the filter `{f}` with --skip {}", filter.skip.join(", ")),
        (None, false) => format!("--skip {}", filter.skip.join(", ")),
        (None, true) => "no filter".to_string(),
    };
    let level = if fatal { "error" } else { "warning" };
    let playbooks = plan.playbooks();
    let _ = writeln!(
        err,
        "{level}: {what} selects none of the {} trials of {} playbook{} under {}",
        plan.total(),
        playbooks.len(),
        if playbooks.len() == 1 { "" } else { "s" },
        scanned.display()
    );
    let mut pairs = Vec::new();
    for pb in playbooks {
        let tiers: Vec<&str> = pb.tiers.iter().map(|t| t.name.as_str()).collect();
        let _ =
            writeln!(err, "  family {} (tiers {}) from {}", pb.family, tiers.join(", "), pb.source.display());
        pairs.extend(tiers.iter().map(|t| format!("{}::{t}", pb.family)));
    }
    if let Some(f) = &filter.filter {
        let nearest =
            pairs.iter().map(|p| (strsim::levenshtein(f, p), p)).min().filter(|(d, _)| *d > 0 && *d <= 3);
        if let Some((_, p)) = nearest {
            let _ = writeln!(err, "  did you mean `{p}`?");
        }
    }
    if fatal {
        let _ = writeln!(
            err,
            "note: a run that selects nothing fails (exit {}); set QUALIFY_NO_TRIALS=warn or pass to allow it",
            exit::NO_TRIALS
        );
    }
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
