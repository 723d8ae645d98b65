//! The evidence journal (pass 5): one JSON line per finished trial, appended to
//! `target/qualify/journal/<run-id>.jsonl`, and before it one line saying the trial started.
//!
//! Each line is written with a single `write` under an exclusive file lock, so threads and
//! nextest's processes share one journal without interleaving, and a run killed half way keeps
//! every record that finished. Reading tolerates a torn last line, and a trial that started and
//! never finished (its process crashed, aborted, was killed, or the run was interrupted) reads
//! as a `crashed` record that fails G3: a crash is never mere missing coverage.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
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
    /// A logit differential's mean KL divergence from the ground truth (absent elsewhere, and in
    /// records older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_kl: Option<f64>,
    /// A logit differential's top-1 agreement over its decisive positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// `diff::perplexity`'s ratio of the format's perplexity to the ground truth's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity_ratio: Option<f64>,
    /// `diff::trace` and `gate::trace`: the first prompt's trace, a few numbers per site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<TracePoint>>,
    /// The batch a trial's answers were generated in, where it generated several at once (the
    /// cases of a property with a pass rate); the timings above are then the trial's own within
    /// the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchMetrics>,
}

/// A batch of generations: how many sequences, the tokens they generated and the rate of all
/// of them together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMetrics {
    pub size: usize,
    pub tokens: usize,
    pub tokens_per_second: f64,
}

/// One site of a traced forward pass (`embed`, `L0.attn`, `L0.mlp`, …, `norm`, `logits`): its
/// activations' statistics and, against the ground truth, their cosine and the truth's norm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracePoint {
    pub site: String,
    pub mean: f64,
    pub std: f64,
    pub l2: f64,
    pub min: f64,
    pub max: f64,
    /// NaN and Inf values.
    pub nonfinite: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_l2: Option<f64>,
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
    /// SHA-256 over the harness's sources and `Cargo.lock` of the build that ran the trial
    /// (`build.rs`); empty in records older than the field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub harness_fingerprint: String,
    /// SHA-256 of the playbook file when the trial ran; empty in older records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub playbook_sha256: String,
    /// The trial started and never finished: read from a start line with no record after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unfinished: bool,
    /// The cell's file is one the model ships (`artifacts:` in the playbook), qualified as it is
    /// rather than converted by modelqa; absent for the ground truth and modelqa's conversions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub third_party: Option<ThirdParty>,
}

/// Provenance of a third-party file: the file as the playbook names it (`hf://org/name@revision/
/// file`, or a local file's name, never a path of the machine) and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThirdParty {
    pub file: String,
    pub sha256: String,
}

impl EvidenceRecord {
    /// The category the record scores in: the one the harness stamped, else the one its
    /// decider implies (records written before categories were).
    pub fn category(&self) -> Category {
        if let Some(c) = self.category {
            return c;
        }
        match self.gate {
            Decider::Gateway(Gate::Integrity | Gate::Load | Gate::Stability) | Decider::Numerics => {
                Category::Stab
            }
            Decider::Regr => Category::Regr,
            _ if self.modality == "diff" => Category::Comp,
            _ => Category::Qual,
        }
    }
}

pub(crate) const SCHEMA_VERSION: u32 = 1;

/// A record for unit tests: trial `f::mvp::<model>::<format>::cpu::run::<scenario>`, decided by
/// `gate`, every other field a plain default.
#[cfg(test)]
pub(crate) fn test_record(
    model: &str,
    format: &str,
    scenario: &str,
    gate: &str,
    category: Category,
    outcome: Outcome,
) -> EvidenceRecord {
    EvidenceRecord {
        schema: SCHEMA_VERSION,
        run_id: "r".into(),
        trial: format!("f::mvp::{model}::{format}::cpu::run::{scenario}"),
        family: "f".into(),
        tier: "mvp".into(),
        model: model.into(),
        model_id: format!("o/{model}"),
        format: format.into(),
        backend: "cpu".into(),
        modality: "run".into(),
        scenario: scenario.into(),
        outcome,
        category: Some(category),
        gate: gate.parse().expect("a decider"),
        reason: String::new(),
        prompt: None,
        output: None,
        max_tokens: 8,
        sampling: Sampling::Greedy,
        metrics: Metrics::default(),
        model_files: Vec::new(),
        engine: None,
        device: None,
        playbook: "p.yaml".into(),
        harness_version: "0".into(),
        host: Host { hostname: "h".into(), os: "linux".into(), arch: "x86_64".into(), cpus: 2 },
        timestamp: "2026-01-01T00:00:00Z".into(),
        harness_fingerprint: String::new(),
        playbook_sha256: String::new(),
        unfinished: false,
        third_party: None,
    }
}

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
        let path = Self::path_of(dir, run_id);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { path, file: Mutex::new(file) })
    }

    /// Where the journal of `run_id` lives in `dir`.
    pub(crate) fn path_of(dir: &Path, run_id: &str) -> PathBuf {
        dir.join(format!("{run_id}.jsonl"))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record atomically with respect to other threads and processes.
    pub(crate) fn append(&self, record: &EvidenceRecord) -> std::io::Result<()> {
        self.write_line(serde_json::to_vec(record).map_err(std::io::Error::other)?)
    }

    /// Says that a trial starts: `provisional` is the record it leaves if it never finishes.
    pub(crate) fn append_start(&self, provisional: &EvidenceRecord) -> std::io::Result<()> {
        let start = Start { started: StartInfo { pid: std::process::id() }, record: provisional.clone() };
        self.write_line(serde_json::to_vec(&start).map_err(std::io::Error::other)?)
    }

    fn write_line(&self, mut line: Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.lock()?;
        let written = (&*file).write_all(&line).and_then(|()| (&*file).flush());
        let unlocked = file.unlock();
        written.and(unlocked)
    }
}

/// The line written when a trial starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    started: StartInfo,
    /// What the trial leaves if it never finishes: `crashed`, G3, `unfinished`.
    record: EvidenceRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartInfo {
    /// The process that ran the trial.
    pid: u32,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Start(Box<Start>),
    Record(Box<EvidenceRecord>),
}

/// A journal's records, in the order they finished, and how many lines were unreadable (a torn
/// last line of a process killed mid-write). A trial that started and has no record after its
/// start line in the same run reads as its provisional `crashed` record, at the end.
pub fn read(path: &Path) -> std::io::Result<(Vec<EvidenceRecord>, usize)> {
    read_from(BufReader::new(File::open(path)?))
}

/// [`read`] over any reader.
pub(crate) fn read_from(source: impl BufRead) -> std::io::Result<(Vec<EvidenceRecord>, usize)> {
    let mut records = Vec::new();
    // Trials started and not yet finished, by (run, trial): an index into `started`.
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    let mut started: Vec<Option<EvidenceRecord>> = Vec::new();
    let mut torn = 0;
    let mut source = source;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if (&mut source).take(MAX_LINE_BYTES + 1).read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        if buf.len() as u64 > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            // No record is this long: skip to the end of the line without keeping it.
            skip_line(&mut source)?;
            torn += 1;
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            torn += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(line) {
            Ok(Line::Start(start)) => {
                let key = (start.record.run_id.clone(), start.record.trial.clone());
                if let Some(i) = open.insert(key, started.len()) {
                    started[i] = None;
                }
                started.push(Some(start.record));
            }
            Ok(Line::Record(r)) => {
                if let Some(i) = open.remove(&(r.run_id.clone(), r.trial.clone())) {
                    started[i] = None;
                }
                records.push(*r);
            }
            Err(_) => torn += 1,
        }
    }
    records.extend(started.into_iter().flatten());
    Ok((records, torn))
}

/// The longest journal line read. A record holds a prompt and an output, each capped far below
/// this; a longer line is not one the harness wrote, and is counted as unreadable unread.
pub(crate) const MAX_LINE_BYTES: u64 = 64 << 20;

/// Consumes the rest of the current line.
fn skip_line(source: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let chunk = source.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match memchr::memchr(b'\n', chunk) {
            Some(i) => {
                source.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                source.consume(n);
            }
        }
    }
}

/// The current time, RFC 3339 in UTC.
pub(crate) fn timestamp() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_line_past_the_cap_is_skipped_unkept_and_the_records_around_it_survive() {
        let record = include_str!("../../fuzz/corpus/journal/unfinished.jsonl");
        let huge = std::io::repeat(b'x').take(MAX_LINE_BYTES + (1 << 20));
        let source = record
            .as_bytes()
            .chain(huge)
            .chain(&b"\n"[..])
            .chain(record.as_bytes())
            .chain(&b"\xff\xfe\n"[..]);
        let (records, torn) = read_from(BufReader::new(source)).expect("the journal reads");
        // The huge line and the line that is not UTF-8 are unreadable; the start lines read as
        // their provisional records (both are the same trial: the later one stands).
        assert_eq!(torn, 2);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, Outcome::Crashed);
    }
}
