//! The evidence journal (pass 5): one JSON line per finished trial, appended to
//! `target/qualify/journal/<run-id>.jsonl`.
//!
//! Each record is written with a single `write` under an exclusive file lock, so threads and
//! nextest's processes share one journal without interleaving, and a run killed half way keeps
//! every record that finished. Reading tolerates a torn last line.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::certify::Category;
use crate::engine::{ModelFile, Sampling};

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every oracle accepted the output.
    Corroborated,
    /// An oracle or a gate rejected it.
    Falsified,
    /// The trial passed its timeout.
    Timeout,
    /// The engine or the trial body crashed (panic, signal).
    Crashed,
    /// Not run (a failure policy stopped it); never a pass.
    Skipped,
    /// Measured, but too noisy to judge (a performance trial on a machine whose load changed
    /// under it): recorded and shown, never a pass and never a falsification.
    Unstable,
}

impl Outcome {
    pub fn is_pass(self) -> bool {
        self == Outcome::Corroborated
    }

    /// Whether the trial said something about the model: a pass or a failure, not a trial that
    /// was stopped before it ran or whose measurement was too noisy to judge.
    pub fn is_verdict(self) -> bool {
        !matches!(self, Outcome::Skipped | Outcome::Unstable)
    }

    /// The word the journal writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Corroborated => "corroborated",
            Outcome::Falsified => "falsified",
            Outcome::Timeout => "timeout",
            Outcome::Crashed => "crashed",
            Outcome::Skipped => "skipped",
            Outcome::Unstable => "unstable",
        }
    }
}

/// Timings and counts of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Model load time, when this trial loaded the session.
    pub load_ms: Option<f64>,
    pub time_to_first_token_ms: Option<f64>,
    pub prompt_tokens: Option<usize>,
    pub tokens: Option<usize>,
    pub tokens_per_second: Option<f64>,
    /// The whole trial, wall clock.
    pub duration_ms: f64,
}

/// The machine a record was made on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpus: usize,
}

impl Host {
    pub fn current() -> Self {
        Self {
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// One finished trial. `docs/evidence.md` documents every field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRecord {
    /// Record format version.
    pub schema: u32,
    pub run_id: String,
    pub trial: String,
    pub family: String,
    pub tier: String,
    pub model: String,
    pub model_id: String,
    pub format: String,
    pub backend: String,
    pub modality: String,
    pub scenario: String,
    pub outcome: Outcome,
    /// What decided the outcome: an oracle (`arithmetic`), a gateway (`G1`), `timeout`, `policy`.
    pub gate: String,
    /// The MQS category the trial scores in (`docs/mqs.md`); absent in older records, where
    /// certify derives it from `gate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    pub reason: String,
    /// The prompt exactly as sent to the engine.
    pub prompt: Option<String>,
    pub output: Option<String>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub metrics: Metrics,
    pub model_files: Vec<ModelFile>,
    pub engine: Option<String>,
    pub device: Option<String>,
    pub playbook: String,
    pub harness_version: String,
    pub host: Host,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

pub const SCHEMA_VERSION: u32 = 1;

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Opens (creating) `<dir>/<run_id>.jsonl` for appending.
    pub fn open(dir: &Path, run_id: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{run_id}.jsonl"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { path, file: Mutex::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record atomically with respect to other threads and processes.
    pub fn append(&self, record: &EvidenceRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.lock()?;
        let written = (&*file).write_all(&line).and_then(|()| (&*file).flush());
        let unlocked = file.unlock();
        written.and(unlocked)
    }
}

/// A journal's records; a torn last line (a process killed mid-write) is skipped and counted.
pub fn read(path: &Path) -> std::io::Result<(Vec<EvidenceRecord>, usize)> {
    let file = File::open(path)?;
    let mut records = Vec::new();
    let mut torn = 0;
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => records.push(r),
            Err(_) => torn += 1,
        }
    }
    Ok((records, torn))
}

/// A fresh run id: UTC time and process id, sortable.
pub fn new_run_id() -> String {
    let now = jiff::Timestamp::now();
    format!("{}-{}", now.strftime("%Y%m%dT%H%M%SZ"), std::process::id())
}

/// The current time, RFC 3339 in UTC.
pub fn timestamp() -> String {
    jiff::Timestamp::now().to_string()
}
