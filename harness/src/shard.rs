//! Model-affine shards (`QUALIFY_SHARD=k/n`): the selected trials split over `n` machines so that
//! every trial of one model on one backend — all its formats, since a derived format's
//! differential trials load the model's safetensors session beside their own — runs on the same
//! shard, and each session is loaded on exactly one machine. Units go longest first to the least
//! loaded shard (LPT), by the durations an earlier run recorded (`QUALIFY_SHARD_TIMES`: journals
//! or certification evidence, a file or a directory; default the committed `certifications/`), a
//! unit with none at the median duration per trial of those that have one (a GPU trial of a build
//! without `cuda`, which is ignored, at nothing). Every shard of a CI
//! matrix computes the same assignment from the same checkout, filter and times, so together the
//! shards run each selected trial exactly once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::expand::{Plan, TrialRef};
use crate::matrix::Backend;

pub(crate) use crate::config::Shard;

/// The unit a shard takes whole: a model (its id) on a backend.
pub(crate) type Unit = (String, Backend);

/// Durations of earlier trials by full name, milliseconds.
#[derive(Debug, Default)]
pub(crate) struct Times(HashMap<String, f64>);

impl Times {
    /// The durations in journals (`*.jsonl`) and certification evidence (`evidence.json`) at
    /// `path`, a file or a directory searched two levels deep; unreadable files are passed over
    /// (the times only balance the shards, they never decide a trial).
    pub(crate) fn read(path: &Path) -> Times {
        let mut files = Vec::new();
        collect(path, 2, &mut files);
        files.sort();
        let mut times = HashMap::new();
        for file in files {
            let records = if file.extension().is_some_and(|e| e == "jsonl") {
                crate::journal::read(&file).map(|(r, _)| r).unwrap_or_default()
            } else {
                evidence_records(&file)
            };
            for r in records {
                if !r.unfinished && r.metrics.duration_ms.is_finite() && r.metrics.duration_ms >= 0.0 {
                    times.insert(r.trial, r.metrics.duration_ms);
                }
            }
        }
        Times(times)
    }

    #[cfg(test)]
    fn of(pairs: &[(&str, f64)]) -> Times {
        Times(pairs.iter().map(|(n, d)| (n.to_string(), *d)).collect())
    }
}

fn collect(path: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if p.is_file() && (name.ends_with(".jsonl") || name == "evidence.json") {
            out.push(p);
        } else if p.is_dir() && depth > 0 {
            collect(&p, depth - 1, out);
        }
    }
}

/// The records of a certification's `evidence.json`.
fn evidence_records(path: &Path) -> Vec<crate::journal::EvidenceRecord> {
    #[derive(serde::Deserialize)]
    struct Evidence {
        records: Vec<crate::journal::EvidenceRecord>,
    }
    crate::bounded::read_side_file(path)
        .ok()
        .and_then(|text| serde_json::from_str::<Evidence>(&text).ok())
        .map(|e| e.records)
        .unwrap_or_default()
}

/// Which shard runs each unit, and the estimated load of each shard.
#[derive(Debug)]
pub(crate) struct Assignment {
    shard_of: BTreeMap<Unit, usize>,
    /// Estimated milliseconds per shard (index 0 is shard 1).
    pub(crate) loads: Vec<f64>,
    /// Units per shard.
    pub(crate) units: Vec<usize>,
}

impl Assignment {
    /// The selected trials split into `count` shards, whole units longest first.
    pub(crate) fn new(plan: &Plan, selected: &[TrialRef], times: &Times, count: usize) -> Assignment {
        let mut costs: BTreeMap<Unit, (f64, usize)> = BTreeMap::new();
        let mut unknown: Vec<(Unit, usize)> = Vec::new();
        let mut known: Vec<f64> = Vec::new();
        for r in selected {
            let unit = unit_of(plan, *r);
            // A build without `cuda` ignores every GPU trial: it costs a shard nothing. (The
            // build, unlike a model's presence, is the same on every shard of an archive.)
            if unit.1 == Backend::Gpu && !cfg!(feature = "cuda") {
                costs.entry(unit).or_default();
                continue;
            }
            let name = plan.name(*r);
            match times.0.get(&name) {
                Some(ms) => {
                    known.push(*ms);
                    costs.entry(unit).or_default().0 += ms;
                }
                None => unknown.push((unit, 1)),
            }
        }
        known.sort_by(f64::total_cmp);
        let per_trial = known.get(known.len() / 2).copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
        for (unit, n) in unknown {
            let entry = costs.entry(unit).or_default();
            entry.0 += per_trial * n as f64;
            entry.1 += n;
        }
        let mut order: Vec<(Unit, f64)> = costs.into_iter().map(|(u, (c, _))| (u, c)).collect();
        // Longest first; equal costs in name order, so every shard sorts alike.
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let count = count.max(1);
        let (mut loads, mut units) = (vec![0f64; count], vec![0usize; count]);
        let mut shard_of = BTreeMap::new();
        for (unit, cost) in order {
            let least =
                (0..count).min_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b))).unwrap_or(0);
            loads[least] += cost;
            units[least] += 1;
            shard_of.insert(unit, least);
        }
        Assignment { shard_of, loads, units }
    }

    /// Whether `shard` runs trial `r`.
    pub(crate) fn runs(&self, plan: &Plan, r: TrialRef, shard: Shard) -> bool {
        self.shard_of.get(&unit_of(plan, r)).is_none_or(|&s| s + 1 == shard.index)
    }
}

fn unit_of(plan: &Plan, r: TrialRef) -> Unit {
    let (model, _, backend) = plan.bind_key(r);
    (model.id.clone(), backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expand::Filter;

    #[test]
    fn a_shard_is_k_of_n() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(Shard::parse(" 1 / 1 "), Ok(Shard { index: 1, count: 1 }));
        for bad in ["0/4", "5/4", "1/0", "2", "a/b", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    /// A playbook of `models` models, two formats, one tier.
    fn plan(models: usize) -> Plan {
        let ids: String = (0..models).map(|i| format!("  - {{id: org/m{i:02}, path: m}}\n")).collect();
        let yaml = format!(
            "playbook: 1\nfamily: f\ntiers:\n  t: {{formats: [safetensors, apr], backends: [cpu], modalities: [run], scenario_count: 2}}\nmodels:\n{ids}scenarios:\n  - {{name: a, prompt: x, oracles: [garbage]}}\n  - {{name: b, prompt: y, oracles: [garbage]}}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (playbooks, _) = crate::playbook::load_all(&path).unwrap();
        Plan::new(playbooks)
    }

    #[test]
    fn every_trial_runs_on_exactly_one_shard_and_a_model_never_splits() {
        let plan = plan(12);
        let selected = plan.select(&Filter::default());
        for count in [1, 3, 4, 5, 13] {
            let a = Assignment::new(&plan, &selected, &Times::default(), count);
            let mut model_shard: HashMap<String, usize> = HashMap::new();
            for r in &selected {
                let on: Vec<usize> =
                    (1..=count).filter(|&k| a.runs(&plan, *r, Shard { index: k, count })).collect();
                assert_eq!(on.len(), 1, "{} on shards {on:?} of {count}", plan.name(*r));
                let model = plan.bind_key(*r).0.id.clone();
                assert_eq!(*model_shard.entry(model).or_insert(on[0]), on[0], "a model split over shards");
            }
            // Twelve equal models: shards differ by one model at most.
            let (lo, hi) = (a.units.iter().min().unwrap(), a.units.iter().max().unwrap());
            assert!(hi - lo <= 1, "{:?}", a.units);
        }
    }

    #[test]
    fn times_are_read_from_certification_evidence_and_journals() {
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../certifications");
        let times = Times::read(&committed);
        let trial = "qa-tiny::mvp::qa-tiny-llama::safetensors::cpu::run::sums_rate";
        let ms = *times.0.get(trial).expect("the committed evidence holds qa-tiny's trials");
        assert!(ms > 0.0 && times.0.len() >= 3 * 241, "{} times", times.0.len());
        // The same records as a journal file.
        let text = std::fs::read_to_string(committed.join("qa-tiny-llama/evidence.json")).unwrap();
        let evidence: serde_json::Value = serde_json::from_str(&text).unwrap();
        let lines: Vec<String> =
            evidence["records"].as_array().unwrap().iter().map(|r| r.to_string()).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.jsonl"), lines.join("\n") + "\n").unwrap();
        let from_journal = Times::read(&dir.path().join("run.jsonl"));
        assert_eq!(from_journal.0.get(trial), Some(&ms));
        assert_eq!(Times::read(&dir.path().join("missing")).0.len(), 0);
    }

    #[test]
    fn recorded_durations_put_the_longest_model_alone() {
        let plan = plan(4);
        let selected = plan.select(&Filter::default());
        let recorded: Vec<(String, f64)> = selected
            .iter()
            .map(|r| (plan.name(*r), if plan.bind_key(*r).0.id == "org/m02" { 1000.0 } else { 100.0 }))
            .collect();
        let pairs: Vec<(&str, f64)> = recorded.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let a = Assignment::new(&plan, &selected, &Times::of(&pairs), 2);
        let alone = a.shard_of[&("org/m02".to_string(), Backend::Cpu)];
        assert_eq!(a.shard_of.values().filter(|&&s| s == alone).count(), 1, "{:?}", a.shard_of);
        assert_eq!(a.units[alone], 1);
        assert!(a.loads[alone] > a.loads[1 - alone], "{:?}", a.loads);
        // Without times every trial counts alike: two models a shard.
        let even = Assignment::new(&plan, &selected, &Times::default(), 2);
        assert_eq!(even.units, [2, 2]);
    }
}
