//! The certification files of a checkout: `certifications/<model>/{evidence,mqs}.json`, the
//! registry `certifications/models.csv` and the README table. Everything derived is a function of
//! the committed evidence and the seed model list, so `--check` can regenerate and compare.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::evidence::{self, ModelEvidence};
use super::lock::{self, LockError};
use super::mqs::Score;
use super::registry::{self, RegistryError};
use crate::expand::{Filter, Plan};
use crate::journal::EvidenceRecord;

/// Where the certification files of a checkout live.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn certifications(&self) -> PathBuf {
        self.root.join("certifications")
    }
    pub fn registry(&self) -> PathBuf {
        self.certifications().join("models.csv")
    }
    /// The original project's 92 models, listed as PENDING until evidence exists.
    pub fn seed(&self) -> PathBuf {
        self.certifications().join("seed-models.csv")
    }
    pub fn readme(&self) -> PathBuf {
        self.root.join("README.md")
    }
    pub fn playbooks(&self) -> PathBuf {
        self.root.join("playbooks")
    }
    pub fn model_dir(&self, model: &str) -> PathBuf {
        self.certifications().join(model)
    }
}

/// Certification could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid evidence: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Evidence(#[from] evidence::EvidenceError),
    #[error(
        "playbooks changed since they were locked; review the change, then run `cargo xtask lock`:\n  {0}"
    )]
    Unlocked(String),
}

fn read(path: &Path) -> Result<String, CertifyError> {
    std::fs::read_to_string(path).map_err(|source| CertifyError::Read { path: path.to_path_buf(), source })
}

/// Writes `text` to `path` through a temporary file and a rename, so a crash never leaves half a
/// file; an unchanged file is not touched.
pub fn write_if_changed(path: &Path, text: &str) -> Result<bool, CertifyError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let err = |source| CertifyError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(true)
}

/// Fails when a playbook or template differs from `playbooks/playbook.lock`, naming each.
pub fn check_lock(layout: &Layout) -> Result<(), CertifyError> {
    let root = layout.playbooks();
    let drift = lock::drift(&lock::read(&root)?, &lock::hashes(&root)?);
    if drift.is_empty() {
        return Ok(());
    }
    Err(CertifyError::Unlocked(drift.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")))
}

/// How many trials the plan has under `family::tier::model::`.
pub fn planned(plan: &Plan, family: &str, tier: &str, model: &str) -> usize {
    let prefix = format!("{family}::{tier}::{model}::");
    let filter = Filter { filter: Some(prefix.clone()), exact: false, skip: Vec::new() };
    let mut n = 0;
    plan.for_each_selected(&filter, |_, name| n += usize::from(name.starts_with(&prefix)));
    n
}

fn sha256_file(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| hex::encode(Sha256::digest(&b)))
}

/// SHA-256 over the harness's sources (`harness/src`, its manifest) and `Cargo.lock`, by sorted
/// path: what decides how trials run and are judged.
pub fn harness_fingerprint(layout: &Layout) -> String {
    let mut files = vec![layout.root.join("Cargo.lock"), layout.root.join("harness/Cargo.toml")];
    let mut stack = vec![layout.root.join("harness/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(&layout.root).unwrap_or(&f);
        hasher.update(rel.to_string_lossy().replace('\\', "/").as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(&f).unwrap_or_default());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Weights in the safetensors files the records name (0 or missing files: `None`).
fn parameters(records: &[EvidenceRecord], base: &Path) -> Option<u64> {
    let mut files: Vec<&Path> = records
        .iter()
        .filter(|r| r.format == "safetensors")
        .flat_map(|r| &r.model_files)
        .map(|f| f.path.as_path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files.dedup();
    let mut total = 0u64;
    for f in files {
        total += safetensors_parameters(&base.join(f))?;
    }
    (total > 0).then_some(total)
}

fn safetensors_parameters(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    Some(
        header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .filter_map(|(_, v)| {
                v.get("shape")?.as_array().map(|s| s.iter().filter_map(|d| d.as_u64()).product::<u64>())
            })
            .sum(),
    )
}

/// Evidence per model from journal records. Where a model has records of several tiers, the
/// most recently recorded tier is certified; `tier` restricts the choice.
pub fn evidence_from_records(
    layout: &Layout,
    records: Vec<EvidenceRecord>,
    plan: &Plan,
    family: Option<&str>,
    tier: Option<&str>,
) -> Vec<ModelEvidence> {
    let fingerprint = harness_fingerprint(layout);
    let mut best: BTreeMap<String, ModelEvidence> = BTreeMap::new();
    for ((fam, t, model), records) in evidence::group(records) {
        if family.is_some_and(|f| f != fam) || tier.is_some_and(|x| x != t) {
            continue;
        }
        let planned = planned(plan, &fam, &t, &model);
        let playbook_sha256 =
            records.first().and_then(|r| sha256_file(&layout.root.join(&r.playbook))).unwrap_or_default();
        let params = parameters(&records, &layout.root);
        let Some(e) = ModelEvidence::new(records, planned, playbook_sha256, params, fingerprint.clone())
        else {
            continue;
        };
        match best.get(&e.model) {
            Some(old) if old.recorded >= e.recorded => {}
            _ => {
                best.insert(e.model.clone(), e);
            }
        }
    }
    best.into_values().collect()
}

/// Whether `e` was measured by this harness on the playbook and model files as they are now.
pub fn is_current(layout: &Layout, e: &ModelEvidence) -> bool {
    let playbook_now = sha256_file(&layout.root.join(&e.playbook)).unwrap_or_default();
    playbook_now == e.playbook_sha256
        && e.harness_fingerprint == harness_fingerprint(layout)
        && e.records
            .iter()
            .flat_map(|r| &r.model_files)
            .all(|f| sha256_file(&layout.root.join(&f.path)).as_deref() == Some(f.sha256.as_str()))
}

/// Every `certifications/*/evidence.json`, sorted by model.
pub fn load_evidence(layout: &Layout) -> Result<Vec<ModelEvidence>, CertifyError> {
    let dir = layout.certifications();
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => return Err(CertifyError::Read { path: dir, source }),
    };
    for entry in entries {
        let path = entry
            .map_err(|source| CertifyError::Read { path: dir.clone(), source })?
            .path()
            .join("evidence.json");
        if !path.is_file() {
            continue;
        }
        let text = read(&path)?;
        let e: ModelEvidence = serde_json::from_str(&text)
            .map_err(|source| CertifyError::Json { path: path.clone(), source })?;
        out.push(e);
    }
    out.sort_by(|a, b| a.model.cmp(&b.model));
    Ok(out)
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("evidence serializes");
    s.push('\n');
    s
}

/// Writes a model's `evidence.json`.
pub fn write_evidence(layout: &Layout, e: &ModelEvidence) -> Result<bool, CertifyError> {
    write_if_changed(&layout.model_dir(&e.model).join("evidence.json"), &pretty(e))
}

/// A model's evidence with its score.
pub type Scored = (ModelEvidence, Score);

/// What the evidence of a checkout gives.
#[derive(Debug)]
pub struct Derived {
    pub scored: Vec<Scored>,
    /// Each `mqs.json`, the registry and the README, with their expected contents.
    pub files: Vec<(PathBuf, String)>,
}

/// Every score, and every file derived from the evidence.
pub fn derived(layout: &Layout) -> Result<Derived, CertifyError> {
    let scored: Vec<Scored> = load_evidence(layout)?
        .into_iter()
        .map(|e| {
            let s = e.score();
            (e, s)
        })
        .collect();
    let seed_path = layout.seed();
    let seed = registry::read_seed(&read(&seed_path)?)?;
    let rows = registry::rows(&seed, &scored);
    let mut files: Vec<(PathBuf, String)> =
        scored.iter().map(|(e, s)| (layout.model_dir(&e.model).join("mqs.json"), pretty(s))).collect();
    files.push((layout.registry(), registry::to_csv(&rows)?));
    let readme = read(&layout.readme())?;
    files.push((layout.readme(), registry::replace_table(&readme, &registry::readme_table(&rows))?));
    Ok(Derived { scored, files })
}

/// The derived files that differ from what the evidence gives.
pub fn stale(layout: &Layout) -> Result<Vec<PathBuf>, CertifyError> {
    let files = derived(layout)?.files;
    Ok(files
        .into_iter()
        .filter(|(path, text)| std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()))
        .map(|(p, _)| p)
        .collect())
}
