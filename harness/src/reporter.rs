//! All wording the harness shows a person on stderr, in one place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use crate::cli::{Bug, Failure, UserError};
use crate::playbook::Notice;

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
    /// The harness failed outside any trial on a bug of its own (a panic): nothing the user
    /// can fix. `EX_SOFTWARE` of `sysexits.h`; not 101, which says a trial failed.
    pub const INTERNAL_ERROR: u8 = 70;
}

/// Says why the harness stopped before running (or instead of finishing) its trials.
pub fn failure(failure: &Failure) {
    match failure {
        Failure::User(e) => user_error(e),
        Failure::Bug(bug) => self::bug(bug),
    }
}

fn user_error(err: &UserError) {
    match err {
        UserError::UnknownVariables(unknown) => unknown_variables(unknown),
        UserError::Playbook(_) => {
            eprintln!("error: {err}");
            eprintln!("note: no trial was run; fix the playbook and run again");
        }
        UserError::NoTrials(found) => no_trials(found, true),
        UserError::Config(_)
        | UserError::Journal { .. }
        | UserError::InvalidExactName { .. }
        | UserError::UnknownExactName { .. } => eprintln!("error: {err}"),
    }
}

fn bug(bug: &Bug) {
    eprintln!("error: {bug}");
    eprintln!("note: this is a bug in modelqa, please report it (exit {})", exit::INTERNAL_ERROR);
}

/// Names each `QUALIFY_*` variable the harness does not read, with the one it may have meant,
/// and every variable it does read: a mistyped setting must not run with the default silently.
fn unknown_variables(unknown: &[(String, Option<&'static str>)]) {
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

/// What a filter that selected nothing searched: the playbooks, their families and tiers, and
/// the nearest `family::tier` when the filter looks like one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoTrialsFound {
    /// The selection, as `the filter `x`` or `--skip a, b`.
    what: String,
    total: usize,
    /// `(family, tiers, source)` of each playbook.
    playbooks: Vec<(String, Vec<String>, PathBuf)>,
    scanned: PathBuf,
    nearest: Option<String>,
}

impl NoTrialsFound {
    pub fn new(
        filter: &crate::expand::Filter,
        plan: &crate::expand::Plan,
        scanned: &std::path::Path,
    ) -> Self {
        let what = match (&filter.filter, filter.skip.is_empty()) {
            (Some(f), true) => format!("the filter `{f}`"),
            (Some(f), false) => format!("the filter `{f}` with --skip {}", filter.skip.join(", ")),
            (None, false) => format!("--skip {}", filter.skip.join(", ")),
            (None, true) => "no filter".to_string(),
        };
        let playbooks: Vec<(String, Vec<String>, PathBuf)> = plan
            .playbooks()
            .iter()
            .map(|pb| {
                (pb.family.clone(), pb.tiers.iter().map(|t| t.name.clone()).collect(), pb.source.clone())
            })
            .collect();
        let pairs = playbooks
            .iter()
            .flat_map(|(family, tiers, _)| tiers.iter().map(move |t| format!("{family}::{t}")));
        let nearest = filter.filter.as_ref().and_then(|f| {
            pairs
                .map(|p| (strsim::levenshtein(f, &p), p))
                .min()
                .filter(|(d, _)| *d > 0 && *d <= 3)
                .map(|(_, p)| p)
        });
        Self { what, total: plan.total(), playbooks, scanned: scanned.to_path_buf(), nearest }
    }
}

impl std::fmt::Display for NoTrialsFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} selects none of the {} trials of {} playbook{} under {}",
            self.what,
            self.total,
            self.playbooks.len(),
            if self.playbooks.len() == 1 { "" } else { "s" },
            self.scanned.display()
        )
    }
}

/// Says what a filter that selected nothing searched; `fatal` when the run stops on it.
pub fn no_trials(found: &NoTrialsFound, fatal: bool) {
    let mut err = std::io::stderr().lock();
    let level = if fatal { "error" } else { "warning" };
    let _ = writeln!(err, "{level}: {found}");
    for (family, tiers, source) in &found.playbooks {
        let _ = writeln!(err, "  family {family} (tiers {}) from {}", tiers.join(", "), source.display());
    }
    if let Some(p) = &found.nearest {
        let _ = writeln!(err, "  did you mean `{p}`?");
    }
    if fatal {
        let _ = writeln!(
            err,
            "note: a run that selects nothing fails (exit {}); set QUALIFY_NO_TRIALS=warn or pass to allow it",
            exit::NO_TRIALS
        );
    }
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
