//! The certification files of a checkout: `certifications/<model>/{evidence,mqs}.json`, the
//! registry `certifications/models.csv` and the README table. Everything derived is a function of
//! the committed evidence and the seed model list, so `--check` can regenerate and compare.
//! Whether evidence still describes what the harness would measure now, and why not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::evidence::{self, ModelEvidence};
use super::history;
use super::lock::{self, LockError};
use super::mqs::Score;
use super::provenance::{CACHE, Named, Namer};
use super::registry::{self, RegistryError};
use crate::config::Places;
use crate::expand::{Filter, Plan};
use crate::journal::EvidenceRecord;
use crate::matrix::Format;

/// Where the certification files of a checkout live, and where its harness reads and writes.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    /// The harness's places, relative ones joined to `root`: the harness runs there under cargo.
    pub places: Places,
}

impl Layout {
    /// A checkout with the harness's default places; the environment is not read.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_places(root, Places::from_vars(|_| None))
    }

    /// A checkout with the places the environment gives the harness.
    pub fn from_env(root: impl Into<PathBuf>) -> Self {
        Self::with_places(root, Places::from_env())
    }

    pub fn with_places(root: impl Into<PathBuf>, places: Places) -> Self {
        let root = root.into();
        let places = places.resolved_against(&root);
        Self { root, places }
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
    /// `QUALIFY_PLAYBOOKS`: a playbook file or a directory of them.
    pub fn playbooks(&self) -> PathBuf {
        self.places.playbooks.clone()
    }
    /// The folder of the playbooks, which holds their lock: `QUALIFY_PLAYBOOKS` itself, or the
    /// folder of a single playbook file.
    pub fn playbook_dir(&self) -> PathBuf {
        let p = &self.places.playbooks;
        match p.parent() {
            Some(parent) if p.is_file() => parent.to_path_buf(),
            _ => p.clone(),
        }
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
    #[error("no playbook under {playbooks} defines family `{family}`")]
    UnknownFamily { family: String, playbooks: PathBuf },
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
    let root = layout.playbook_dir();
    let drift = lock::drift(&lock::read(&root)?, &lock::hashes(&root)?);
    if drift.is_empty() {
        return Ok(());
    }
    Err(CertifyError::Unlocked(drift.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")))
}

/// How many trials the plan has under `family::tier::model::`.
pub fn planned(plan: &Plan, family: &str, tier: &str, model: &str) -> usize {
    planned_in_detail(plan, family, tier, model).total
}

/// The trials the plan has for a model in a tier, in all, per backend and per category.
pub fn planned_in_detail(plan: &Plan, family: &str, tier: &str, model: &str) -> super::mqs::Planned {
    let prefix = format!("{family}::{tier}::{model}::");
    let filter = Filter { filter: Some(prefix.clone()), exact: false, skip: Vec::new() };
    let mut refs = Vec::new();
    plan.for_each_selected(&filter, |r, name| {
        if name.starts_with(&prefix) {
            refs.push(r);
        }
    });
    let mut planned = super::mqs::Planned { total: refs.len(), ..Default::default() };
    for r in refs {
        let spec = plan.spec(r);
        *planned.by_backend.entry(spec.name.backend.as_str().to_string()).or_default() += 1;
        *planned.by_category.entry(spec.kind.category()).or_default() += 1;
    }
    planned
}

fn sha256_file(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| hex::encode(Sha256::digest(&b)))
}

/// A model file's SHA-256, remembered in the harness's cache as the harness remembers it.
fn sha256_model_file(layout: &Layout, path: &Path) -> Result<String, Unreadable> {
    crate::format::files::hash_file_in(path, &layout.places.cache_dir.join("hashes"))
        .map(|f| f.sha256)
        .map_err(|e| Unreadable(std::sync::Arc::new(e)))
}

/// Why a file named by evidence could not be hashed: the I/O error, shared so that [`Stale`]
/// stays `Clone`; two are equal when they are of one kind and say the same.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct Unreadable(pub std::sync::Arc<std::io::Error>);

impl PartialEq for Unreadable {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Unreadable {}

/// SHA-256 over the harness's and its kernels' sources (`harness/src`, `kernels/src`, their
/// manifests) and `Cargo.lock`, by sorted path: what decides how trials run and are judged.
pub fn harness_fingerprint(layout: &Layout) -> String {
    let mut files =
        ["Cargo.lock", "harness/Cargo.toml", "kernels/Cargo.toml"].map(|f| layout.root.join(f)).to_vec();
    let mut stack = vec![layout.root.join("harness/src"), layout.root.join("kernels/src")];
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
/// most recently recorded tier is certified; `tier` restricts the choice. Files are named as
/// [`super::provenance`] says: no path of this machine reaches the evidence.
pub fn evidence_from_records(
    layout: &Layout,
    records: Vec<EvidenceRecord>,
    plan: &Plan,
    family: Option<&str>,
    tier: Option<&str>,
) -> Vec<ModelEvidence> {
    let current = harness_fingerprint(layout);
    let namer = Namer::new(layout);
    let mut best: BTreeMap<String, ModelEvidence> = BTreeMap::new();
    for ((fam, t, model), records) in evidence::group(records) {
        // A dim-smoke run is a development check vouched for by another model's certification,
        // never a certification of its own.
        if family.is_some_and(|f| f != fam) || tier.is_some_and(|x| x != t) || t == crate::playbook::DIM_SMOKE
        {
            continue;
        }
        let planned = planned_in_detail(plan, &fam, &t, &model);
        let playbook_sha256 =
            records.first().and_then(|r| sha256_file(&namer.playbook_path(&r.playbook))).unwrap_or_default();
        let params = parameters(&records, &layout.root);
        let records: Vec<EvidenceRecord> = records
            .into_iter()
            .map(|mut r| {
                namer.name_record(&mut r);
                r
            })
            .collect();
        // The harness that measured, as the records say (older records say nothing: the harness
        // that certifies is taken to have measured them).
        let fingerprint =
            recorded_fingerprints(&records).into_iter().next().unwrap_or_else(|| current.clone());
        let Some(e) = ModelEvidence::new(records, planned, playbook_sha256, params, fingerprint) else {
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

/// The distinct harness fingerprints the records were measured with (records older than the
/// field carry none), sorted.
pub fn recorded_fingerprints(records: &[EvidenceRecord]) -> Vec<String> {
    let mut found: Vec<String> =
        records.iter().map(|r| r.harness_fingerprint.clone()).filter(|f| !f.is_empty()).collect();
    found.sort();
    found.dedup();
    found
}

/// Runs whose journals hold trials that started and never finished, with how many.
pub fn interrupted_runs(records: &[EvidenceRecord]) -> BTreeMap<String, usize> {
    let mut runs = BTreeMap::new();
    for r in records.iter().filter(|r| r.unfinished) {
        *runs.entry(r.run_id.clone()).or_insert(0) += 1;
    }
    runs
}

/// Why evidence no longer describes what the harness would measure now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The model has no evidence for the tier (`others`: the tiers it has evidence for).
    NoEvidence { model: String, tier: String, others: Vec<String> },
    /// The harness's sources, its manifest or `Cargo.lock` changed.
    Harness { recorded: String, now: String },
    /// A file hashes differently now (`now`), or cannot be read (the error).
    File { name: String, recorded: String, now: Result<String, Unreadable> },
    /// A converted artifact is not what its model's sources (`source`) convert to now.
    Artifact { name: String, now: String, source: String },
    /// What the evidence names cannot be checked here.
    Unverifiable { name: String, why: String },
}

/// A SHA-256 (or a name holding one) shortened for a message.
fn short(text: &str) -> String {
    let mut out = String::new();
    let mut run = 0;
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        match run {
            0..=12 => out.push(c),
            13 => out.push('…'),
            _ => {}
        }
    }
    out
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::NoEvidence { model, tier, others } if others.is_empty() => {
                write!(f, "no evidence for {model} in tier {tier}")
            }
            Stale::NoEvidence { model, tier, others } => {
                write!(f, "no evidence for {model} in tier {tier} (only in {})", others.join(", "))
            }
            Stale::Harness { recorded, now } => write!(
                f,
                "harness fingerprint changed: {} when measured, {} now (harness/src, harness/Cargo.toml or Cargo.lock)",
                if recorded.is_empty() { "none".to_string() } else { short(recorded) },
                short(now)
            ),
            Stale::File { name, recorded, now: Ok(now) } => {
                write!(f, "{name} changed (sha256 {} when measured, {} now)", short(recorded), short(now))
            }
            Stale::File { name, recorded, now: Err(why) } => {
                write!(f, "{name} cannot be read ({why}); it had sha256 {}", short(recorded))
            }
            Stale::Artifact { name, now, source } => write!(
                f,
                "{} is not what {} converts to now ({}): a source file or the converter changed",
                short(name),
                source,
                short(now)
            ),
            Stale::Unverifiable { name, why } => write!(f, "cannot check {}: {why}", short(name)),
        }
    }
}

/// Why `e` is not what this harness would measure on the playbook and model files as they are
/// now; empty when it is. A converted artifact is checked by recomputing its name from its
/// model's sources, so this needs no cache: a fresh clone agrees with the machine that measured.
pub fn why_stale(layout: &Layout, plan: &Plan, e: &ModelEvidence) -> Vec<Stale> {
    let namer = Namer::new(layout);
    let mut out = Vec::new();
    let check = |name: &str, path: &Path, recorded: &str, out: &mut Vec<Stale>| {
        let now = sha256_model_file(layout, path);
        if now.as_deref().ok() != Some(recorded) {
            out.push(Stale::File { name: name.to_string(), recorded: recorded.to_string(), now });
        }
    };
    let playbook = namer.playbook(&e.playbook);
    check(&playbook, &namer.playbook_path(&playbook), &e.playbook_sha256, &mut out);
    let fingerprint = harness_fingerprint(layout);
    if e.harness_fingerprint != fingerprint {
        out.push(Stale::Harness { recorded: e.harness_fingerprint.clone(), now: fingerprint });
    }

    // Each file once, with the format of a record that names it.
    let mut files: BTreeMap<(String, &str), &str> = BTreeMap::new();
    for r in &e.records {
        for f in &r.model_files {
            files.entry((namer.model_file(&f.path), f.sha256.as_str())).or_insert(r.format.as_str());
        }
    }
    let source = files
        .keys()
        .any(|(name, _)| !matches!(Named::parse(name), Named::Repository(_)))
        .then(|| model_source(layout, plan, e));
    for ((name, recorded), format) in files {
        let source = source.as_ref().map(|s| s.as_ref().map_err(ToString::to_string));
        match (Named::parse(&name), source) {
            (Named::Repository(rel), _) => check(&name, &layout.root.join(rel), recorded, &mut out),
            (_, Some(Err(why))) => out.push(Stale::Unverifiable { name, why }),
            (Named::Model(file), Some(Ok(dir))) => check(&name, &dir.join(file), recorded, &mut out),
            (Named::Cache(rel), Some(Ok(dir))) => {
                let Some(format) = Format::parse(format) else {
                    out.push(Stale::Unverifiable { name, why: format!("unknown format `{format}`") });
                    continue;
                };
                match crate::format::convert::artifact_name(dir, format, &layout.places.cache_dir) {
                    Ok(Some(now)) if now == rel => {}
                    Ok(now) => out.push(Stale::Artifact {
                        name,
                        now: now.map_or_else(|| "no artifact".into(), |n| format!("{CACHE}{}", n.display())),
                        source: namer.local(dir),
                    }),
                    Err(err) => out.push(Stale::Unverifiable { name, why: err.to_string() }),
                }
            }
            (Named::Playbooks(_), _) | (_, None) => {
                out.push(Stale::Unverifiable { name, why: "not a model file's name".into() })
            }
        }
    }
    out
}

/// Whether `e` is what this harness would measure now (see [`why_stale`]).
pub fn is_current(layout: &Layout, plan: &Plan, e: &ModelEvidence) -> bool {
    why_stale(layout, plan, e).is_empty()
}

/// Why the model directory of evidence is not on this machine.
#[derive(Debug, thiserror::Error)]
enum NoSource {
    #[error("no playbook under {} defines {family}::{model}", .playbooks.display())]
    NoPlaybook { playbooks: PathBuf, family: String, model: String },
    #[error("{}", crate::bind::missing_reason(.id, .looked))]
    NotFound { id: String, looked: Vec<PathBuf> },
}

/// The model directory of `e`'s model on this machine, found as the harness finds it.
fn model_source(layout: &Layout, plan: &Plan, e: &ModelEvidence) -> Result<PathBuf, NoSource> {
    let model = plan
        .playbooks()
        .iter()
        .filter(|p| p.family == e.family)
        .flat_map(|p| &p.models)
        .find(|m| m.slug == e.model)
        .ok_or_else(|| NoSource::NoPlaybook {
            playbooks: layout.playbooks(),
            family: e.family.clone(),
            model: e.model.clone(),
        })?;
    match crate::bind::locate(model, &layout.places.roots) {
        crate::bind::Location::Found(dir) => Ok(dir),
        crate::bind::Location::Missing(looked) => Err(NoSource::NotFound { id: model.id.clone(), looked }),
    }
}

/// Whether a family's evidence for a tier is what the harness would measure now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Every model of the family has current evidence; the newest recording date.
    Current { recorded: String },
    /// Why not, by model.
    Stale(Vec<(String, Stale)>),
}

/// Whether `certify --family … --tier …` has anything to measure: every model the playbooks
/// give the family needs current evidence for the tier.
pub fn freshness(layout: &Layout, plan: &Plan, family: &str, tier: &str) -> Result<Freshness, CertifyError> {
    let models: Vec<&str> = plan
        .playbooks()
        .iter()
        .filter(|p| p.family == family)
        .flat_map(|p| p.models.iter().map(|m| m.slug.as_str()))
        .collect();
    if models.is_empty() {
        return Err(CertifyError::UnknownFamily { family: family.into(), playbooks: layout.playbooks() });
    }
    let evidence = load_evidence(layout)?;
    let mut newest = String::new();
    let mut stale = Vec::new();
    for model in models {
        let mine = evidence.iter().filter(|e| e.model == model && e.family == family);
        let Some(e) = mine.clone().find(|e| e.tier == tier) else {
            let others = mine.map(|e| e.tier.clone()).collect();
            stale.push((
                model.to_string(),
                Stale::NoEvidence { model: model.into(), tier: tier.into(), others },
            ));
            continue;
        };
        stale.extend(why_stale(layout, plan, e).into_iter().map(|s| (model.to_string(), s)));
        newest = newest.max(e.recorded.clone());
    }
    Ok(if stale.is_empty() { Freshness::Current { recorded: newest } } else { Freshness::Stale(stale) })
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

/// A model's `history.json`.
pub fn history_path(layout: &Layout, model: &str) -> PathBuf {
    layout.model_dir(model).join("history.json")
}

/// A model's certifications so far, oldest first; none where it has no history yet.
pub fn load_history(layout: &Layout, model: &str) -> Result<Vec<history::Entry>, CertifyError> {
    let path = history_path(layout, model);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = read(&path)?;
    serde_json::from_str(&text).map_err(|source| CertifyError::Json { path, source })
}

/// Adds the certification `e` to its model's history, before its evidence is written: a model
/// without a history yet starts it with the certification its current `evidence.json` holds,
/// so the first trend has something to compare with. Returns whether `history.json` changed.
pub fn record_history(layout: &Layout, e: &ModelEvidence) -> Result<bool, CertifyError> {
    let mut history = load_history(layout, &e.model)?;
    let previous = layout.model_dir(&e.model).join("evidence.json");
    if history.is_empty() && previous.is_file() {
        let text = read(&previous)?;
        let old: ModelEvidence =
            serde_json::from_str(&text).map_err(|source| CertifyError::Json { path: previous, source })?;
        history.push(history::Entry::of(&old, &old.score()));
    }
    let history = history::appended(history, history::Entry::of(e, &e.score()));
    write_if_changed(&history_path(layout, &e.model), &pretty(&history))
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
    let mut histories = BTreeMap::new();
    for (e, _) in &scored {
        histories.insert(e.model.clone(), load_history(layout, &e.model)?);
    }
    let rows = registry::rows(&seed, &scored, &histories);
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
