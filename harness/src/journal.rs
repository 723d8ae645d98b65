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

use crate::engine::Sampling;
use crate::format::files::ModelFile;
use crate::vocab::{Category, Decider, Gate, Outcome};

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
    pub gate: Decider,
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

impl EvidenceRecord {
    /// The category the record scores in: the one the harness stamped, else the one its
    /// decider implies (records written before categories were).
    pub fn category(&self) -> Category {
        if let Some(c) = self.category {
            return c;
        }
        match self.gate {
            Decider::Gateway(Gate::Integrity | Gate::Load | Gate::Stability) => Category::Stab,
            Decider::Regr => Category::Regr,
            _ if self.modality == "diff" => Category::Comp,
            _ => Category::Qual,
        }
    }
}

pub(crate) const SCHEMA_VERSION: u32 = 1;

/// An open journal.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Opens (creating) `<dir>/<run_id>.jsonl` for appending.
    pub(crate) fn open(dir: &Path, run_id: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{run_id}.jsonl"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { path, file: Mutex::new(file) })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record atomically with respect to other threads and processes.
    pub(crate) fn append(&self, record: &EvidenceRecord) -> std::io::Result<()> {
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

/// The current time, RFC 3339 in UTC.
pub(crate) fn timestamp() -> String {
    jiff::Timestamp::now().to_string()
}
