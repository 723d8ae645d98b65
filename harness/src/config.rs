//! Harness settings from `QUALIFY_*` environment variables (nextest forwards no custom flags).

use std::path::PathBuf;

use crate::bind::SearchRoots;
use crate::playbook::FailurePolicy;

/// Every setting of one harness run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `QUALIFY_PLAYBOOKS`: a playbook file or a directory of them; default `playbooks/`.
    pub playbooks: PathBuf,
    pub roots: SearchRoots,
    /// `QUALIFY_FAILURE_POLICY`: overrides every playbook's `failure_policy`.
    pub failure_policy: Option<FailurePolicy>,
    /// `QUALIFY_RUN_ID`, else `NEXTEST_RUN_ID`, else generated.
    pub run_id: String,
    /// `QUALIFY_JOURNAL_DIR`; default `$CARGO_TARGET_DIR/qualify/journal` (`target/…`).
    pub journal_dir: PathBuf,
    /// Running as one of nextest's processes, which share the journal.
    pub under_nextest: bool,
}

/// A setting the user got wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let failure_policy = match var("QUALIFY_FAILURE_POLICY") {
            None => None,
            Some(v) => Some(FailurePolicy::parse(&v).ok_or_else(|| ConfigError {
                var: "QUALIFY_FAILURE_POLICY",
                value: v.clone(),
                expected: "expected collect-all, stop-on-p0 or stop-on-first".into(),
            })?),
        };
        let run_id = var("QUALIFY_RUN_ID")
            .or_else(|| var("NEXTEST_RUN_ID"))
            .unwrap_or_else(crate::journal::new_run_id);
        if run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return Err(ConfigError {
                var: "QUALIFY_RUN_ID",
                value: run_id,
                expected: "a run id is a file name: no `/`, `\\` or leading `.`".into(),
            });
        }
        let target = var("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
        Ok(Self {
            playbooks: var("QUALIFY_PLAYBOOKS").map_or_else(|| PathBuf::from("playbooks"), PathBuf::from),
            roots: SearchRoots::from_env(),
            failure_policy,
            run_id,
            journal_dir: var("QUALIFY_JOURNAL_DIR")
                .map_or_else(|| target.join("qualify").join("journal"), PathBuf::from),
            under_nextest: var("NEXTEST").as_deref() == Some("1"),
        })
    }
}

/// Where the harness keeps what it can remake: `QUALIFY_CACHE_DIR`, default
/// `$CARGO_TARGET_DIR/qualify/cache` (`target/…`). File hashes and converted artifacts live here.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("QUALIFY_CACHE_DIR").unwrap_or_else(|| {
        var("CARGO_TARGET_DIR").unwrap_or_else(|| PathBuf::from("target")).join("qualify").join("cache")
    })
}
