//! How the qualify harness fails instead of running its trials to a conclusion: the mistakes a
//! user can fix ([`UserError`]), each with the exit code the README documents, and bugs of its
//! own ([`Bug`]), with a code of their own. [`crate::reporter`] says them to a person.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::name::NameError;
use crate::playbook::PlaybookError;

/// Exit codes of the qualify harness (also in the README).
pub(crate) mod exit {
    /// Every selected trial passed (or none was selected).
    pub(crate) const OK: u8 = 0;
    /// A trial failed (libtest's code).
    pub(crate) const TRIAL_FAILED: u8 = 101;
    /// A playbook is malformed, or `--exact` named no trial: nothing ran.
    pub(crate) const PLAYBOOK_ERROR: u8 = 3;
    /// A `QUALIFY_*` setting is invalid, or the journal cannot be opened: nothing ran.
    pub(crate) const ENVIRONMENT_ERROR: u8 = 4;
    /// The filter selected no trial (nextest's convention; `QUALIFY_NO_TRIALS=warn|pass` to allow).
    pub(crate) const NO_TRIALS: u8 = 5;
    /// The harness failed outside any trial on a bug of its own (a panic): nothing the user
    /// can fix. `EX_SOFTWARE` of `sysexits.h`; not 101, which says a trial failed.
    pub(crate) const INTERNAL_ERROR: u8 = 70;
}

/// Why the harness stopped before running a trial, by something the user can fix. Each has the
/// exit code the README documents ([`UserError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UserError {
    /// `QUALIFY_*` variables the harness does not read, each with the one it may have meant.
    #[error(
        "{} set but modelqa reads no such variable",
        .0.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ")
    )]
    UnknownVariables(Vec<(String, Option<&'static str>)>),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("failed to open the evidence journal {path}: {source}")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resume: the run's journal {path} cannot be read: {source}")]
    Resume {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to load playbooks: {0}")]
    Playbook(#[source] PlaybookError),
    #[error(
        "the playbooks under {} define {total} trials; at most {} are run in one harness (lower a `count`, `scenario_count` or the matrix)",
        scanned.display(),
        crate::expand::MAX_TRIALS
    )]
    TooManyTrials { total: usize, scanned: PathBuf },
    #[error("`{name}` is not a trial name: {source}")]
    InvalidExactName {
        name: String,
        #[source]
        source: NameError,
    },
    #[error("no trial is named `{name}` in the playbooks under {scanned}")]
    UnknownExactName { name: String, scanned: PathBuf },
    /// The filter is aimed at the playbooks' trials and selected none.
    #[error("{0}")]
    NoTrials(NoTrialsFound),
}

impl UserError {
    /// The exit code the README documents for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            UserError::UnknownVariables(_)
            | UserError::Config(_)
            | UserError::Journal { .. }
            | UserError::Resume { .. } => exit::ENVIRONMENT_ERROR,
            UserError::Playbook(_)
            | UserError::TooManyTrials { .. }
            | UserError::InvalidExactName { .. }
            | UserError::UnknownExactName { .. } => exit::PLAYBOOK_ERROR,
            UserError::NoTrials(_) => exit::NO_TRIALS,
        }
    }
}

/// A failure outside any trial that no setting or playbook causes: a bug in modelqa. (A trial's
/// own panic is caught in the trial and recorded as a crash; one that gets here is the harness's.)
#[derive(Debug, thiserror::Error)]
#[error("modelqa panicked outside any trial: {message}")]
pub(crate) struct Bug {
    pub message: String,
}

impl Bug {
    pub(crate) fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        Self { message }
    }
}

/// How the harness failed instead of running its trials to a conclusion.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Bug(#[from] Bug),
}

impl Failure {
    /// The process's exit code: the user error's documented one, or [`exit::INTERNAL_ERROR`].
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Failure::User(e) => e.exit_code(),
            Failure::Bug(_) => exit::INTERNAL_ERROR,
        }
    }
}

/// What a filter that selected nothing searched: the playbooks, their families and tiers, and
/// the nearest `family::tier` when the filter looks like one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NoTrialsFound {
    /// The selection, as `the filter `x`` or `--skip a, b`.
    pub(crate) what: String,
    pub(crate) total: usize,
    /// `(family, tiers, source)` of each playbook.
    pub(crate) playbooks: Vec<(String, Vec<String>, PathBuf)>,
    pub(crate) scanned: PathBuf,
    pub(crate) nearest: Option<String>,
}

impl NoTrialsFound {
    pub(crate) fn new(
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
