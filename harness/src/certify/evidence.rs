//! A model's evidence for one tier: the latest record of every trial, merged from any number of
//! journals (the processes and machines of a partitioned CI run), with what it was measured
//! against. Written as `certifications/<model>/evidence.json`; scores are recomputed from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::journal::{self, EvidenceRecord};

/// `evidence.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEvidence {
    pub schema: u32,
    /// The model's segment in trial names.
    pub model: String,
    /// `org/name`, the registry key.
    pub model_id: String,
    pub family: String,
    pub tier: String,
    /// The playbook that planned the trials, and its SHA-256 when they ran.
    pub playbook: String,
    pub playbook_sha256: String,
    /// Trials the tier's plan has for this model: the denominator of coverage.
    pub planned: usize,
    /// The plan per backend and per category: what the score's scope and lacks are drawn from.
    #[serde(default)]
    pub planned_by_backend: BTreeMap<String, usize>,
    #[serde(default)]
    pub planned_by_category: BTreeMap<crate::vocab::Category, usize>,
    /// Weights in the model's ground-truth files, when they could be read.
    pub parameters: Option<u64>,
    /// SHA-256 over the harness's sources and `Cargo.lock` when the evidence was certified: a
    /// changed harness makes `certify --family … --tier …` measure again.
    #[serde(default)]
    pub harness_fingerprint: String,
    /// The runs the records come from, sorted.
    pub runs: Vec<String>,
    /// The newest record's timestamp: the certification date.
    pub recorded: String,
    /// One record per trial, the latest, sorted by trial name.
    pub records: Vec<EvidenceRecord>,
}

pub const EVIDENCE_SCHEMA: u32 = 1;

/// Reading journals failed.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("failed to read journal {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("no journal in {0}: run the harness first (`cargo test --test qualify`), or name a journal")]
    NoJournal(PathBuf),
}

/// Every record of the journals, and how many torn lines were skipped.
pub fn read_journals(paths: &[PathBuf]) -> Result<(Vec<EvidenceRecord>, usize), EvidenceError> {
    let mut all = Vec::new();
    let mut torn = 0;
    for path in paths {
        let (records, t) =
            journal::read(path).map_err(|source| EvidenceError::Read { path: path.clone(), source })?;
        all.extend(records);
        torn += t;
    }
    Ok((all, torn))
}

/// The most recently written journal in `dir`.
pub fn last_journal(dir: &Path) -> Result<PathBuf, EvidenceError> {
    let entries = std::fs::read_dir(dir).map_err(|_| EvidenceError::NoJournal(dir.to_path_buf()))?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| EvidenceError::NoJournal(dir.to_path_buf()))
}

fn instant(record: &EvidenceRecord) -> jiff::Timestamp {
    record.timestamp.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Records grouped by `(family, tier, model)`, keeping the latest record of each trial (a rerun
/// replaces what it reran; a skipped record never replaces a real one).
pub fn group(records: Vec<EvidenceRecord>) -> BTreeMap<(String, String, String), Vec<EvidenceRecord>> {
    let mut latest: BTreeMap<String, EvidenceRecord> = BTreeMap::new();
    for r in records {
        match latest.get(&r.trial) {
            Some(old) if replaces(old, &r) => {}
            _ => {
                latest.insert(r.trial.clone(), r);
            }
        }
    }
    let mut groups: BTreeMap<(String, String, String), Vec<EvidenceRecord>> = BTreeMap::new();
    for (_, r) in latest {
        groups.entry((r.family.clone(), r.tier.clone(), r.model.clone())).or_default().push(r);
    }
    groups
}

/// Whether `old` stays in place of `new`.
fn replaces(old: &EvidenceRecord, new: &EvidenceRecord) -> bool {
    let (old_real, new_real) = (old.outcome.is_verdict(), new.outcome.is_verdict());
    if old_real != new_real {
        return old_real;
    }
    instant(old) > instant(new)
}

impl ModelEvidence {
    /// A model's evidence from its grouped records (sorted by trial, one per trial).
    pub fn new(
        records: Vec<EvidenceRecord>,
        planned: super::mqs::Planned,
        playbook_sha256: String,
        parameters: Option<u64>,
        harness_fingerprint: String,
    ) -> Option<Self> {
        let first = records.first()?.clone();
        let mut runs: Vec<String> = records.iter().map(|r| r.run_id.clone()).collect();
        runs.sort();
        runs.dedup();
        let recorded = records.iter().max_by_key(|r| instant(r)).map(|r| r.timestamp.clone())?;
        Some(Self {
            schema: EVIDENCE_SCHEMA,
            model: first.model,
            model_id: first.model_id,
            family: first.family,
            tier: first.tier,
            playbook: first.playbook,
            playbook_sha256,
            planned: planned.total,
            planned_by_backend: planned.by_backend,
            planned_by_category: planned.by_category,
            parameters,
            harness_fingerprint,
            runs,
            recorded,
            records,
        })
    }

    /// The model's score for its tier.
    pub fn score(&self) -> super::Score {
        let planned = super::mqs::Planned {
            total: self.planned,
            by_backend: self.planned_by_backend.clone(),
            by_category: self.planned_by_category.clone(),
        };
        super::mqs::score_in_scope(&self.tier, &self.records, &planned)
    }

    /// The median single-stream decode speed of the passing trials of a format family
    /// (`safetensors`, `gguf`, `apr`) on a backend that generated alone: an answer generated in a
    /// batch (`metrics.batch`) decoded at its share of the batch's rate, which says how the
    /// batch went, not how fast one stream decodes.
    pub fn tokens_per_second(&self, format: &str, backend: &str) -> Option<f64> {
        let mut tps: Vec<f64> = self
            .records
            .iter()
            .filter(|r| r.outcome.is_pass() && r.backend == backend && r.metrics.batch.is_none())
            .filter(|r| {
                r.format == format || r.format.strip_prefix(format).is_some_and(|q| q.starts_with('-'))
            })
            .filter_map(|r| r.metrics.tokens_per_second)
            .filter(|t| t.is_finite())
            .collect();
        if tps.is_empty() {
            return None;
        }
        tps.sort_by(f64::total_cmp);
        let mid = tps.len() / 2;
        Some(if tps.len() % 2 == 1 { tps[mid] } else { (tps[mid - 1] + tps[mid]) / 2.0 })
    }

    /// Whether every record names the same bytes for each model file: one model was measured.
    pub fn provenance_verified(&self) -> bool {
        let mut seen: BTreeMap<&Path, &str> = BTreeMap::new();
        let mut any = false;
        for f in self.records.iter().flat_map(|r| &r.model_files) {
            any = true;
            if *seen.entry(&f.path).or_insert(&f.sha256) != f.sha256 {
                return false;
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{BatchMetrics, test_record};
    use crate::vocab::{Category, Outcome};

    /// The registry's decode speed is single-stream: trials generated alone count, answers
    /// generated in a batch (at their share of its rate) do not; without a trial alone there is
    /// no figure.
    #[test]
    fn decode_speed_counts_the_trials_generated_alone() {
        let record = |i: usize, tps: f64, batch: Option<usize>| {
            let mut r = test_record(
                "m",
                "gguf-q8_0",
                &format!("s{i}"),
                "arithmetic",
                Category::Qual,
                Outcome::Corroborated,
            );
            r.metrics.tokens_per_second = Some(tps);
            r.metrics.batch =
                batch.map(|size| BatchMetrics { size, tokens: 8 * size, tokens_per_second: 400.0 });
            r
        };
        let evidence = |records: Vec<EvidenceRecord>| {
            ModelEvidence::new(
                records,
                super::super::mqs::Planned::default(),
                String::new(),
                None,
                String::new(),
            )
            .expect("records")
        };
        let alone = [100.0, 110.0, 120.0].into_iter().enumerate().map(|(i, t)| record(i, t, None));
        let batched = (3..9).map(|i| record(i, 20.0, Some(6)));
        let e = evidence(alone.chain(batched).collect());
        assert_eq!(e.tokens_per_second("gguf", "cpu"), Some(110.0));
        let e = evidence((0..4).map(|i| record(i, 20.0, Some(4))).collect());
        assert_eq!(e.tokens_per_second("gguf", "cpu"), None);
    }
}
