//! Certification from evidence: the committed qa-tiny evidence, replayed as journals, through
//! the registry, the README table, reports, tickets and the playbook lock.

use std::path::{Path, PathBuf};

use modelqa::certify::workspace::{self, Layout};
use modelqa::certify::{ModelEvidence, Status, evidence, lock, registry, report, tickets};
use modelqa::journal::{EvidenceRecord, Outcome};

const MODELS: [&str; 3] = ["qa-tiny-llama", "qa-tiny-mistral", "qa-tiny-qwen2"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The records of the committed qa-tiny evidence, as a journal holds them.
fn committed_records() -> Vec<EvidenceRecord> {
    let mut out = Vec::new();
    for m in MODELS {
        let path = root().join("certifications").join(m).join("evidence.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let e: ModelEvidence = serde_json::from_str(&text).expect("committed evidence parses");
        out.extend(e.records);
    }
    out
}

/// A scratch checkout: the real seed list and a README with the markers.
fn scratch() -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(dir.path());
    std::fs::create_dir_all(layout.certifications()).expect("mkdir");
    std::fs::copy(root().join("certifications/seed-models.csv"), layout.seed()).expect("seed");
    std::fs::write(
        layout.readme(),
        format!("# x\n\n{}\nold\n{}\n\nafter\n", registry::TABLE_START, registry::TABLE_END),
    )
    .expect("readme");
    (dir, layout)
}

fn write_journal(dir: &Path, name: &str, records: &[EvidenceRecord]) -> PathBuf {
    let path = dir.join(format!("{name}.jsonl"));
    let text: String = records.iter().map(|r| serde_json::to_string(r).expect("record") + "\n").collect();
    std::fs::write(&path, text).expect("journal");
    path
}

fn plan() -> modelqa::expand::Plan {
    let (playbooks, _) =
        modelqa::playbook::load_all(&root().join("playbooks")).expect("shipped playbooks load");
    modelqa::expand::Plan::new(playbooks)
}

/// Journals → evidence files → derived files, as `cargo xtask certify` does.
fn certify(layout: &Layout, journals: &[PathBuf]) -> Vec<(ModelEvidence, modelqa::certify::Score)> {
    let (records, torn) = evidence::read_journals(journals).expect("journals read");
    assert_eq!(torn, 0);
    for e in workspace::evidence_from_records(layout, records, &plan(), None, None) {
        workspace::write_evidence(layout, &e).expect("evidence written");
    }
    let workspace::Derived { scored, files } = workspace::derived(layout).expect("derived");
    for (path, text) in &files {
        workspace::write_if_changed(path, text).expect("written");
    }
    scored
}

fn csv_rows(layout: &Layout) -> Vec<csv::StringRecord> {
    let text = std::fs::read_to_string(layout.registry()).expect("registry");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().expect("header").iter().collect::<Vec<_>>(), registry::COLUMNS);
    reader.records().map(|r| r.expect("a well-formed CSV row")).collect()
}

fn row<'a>(rows: &'a [csv::StringRecord], model_id: &str) -> &'a csv::StringRecord {
    rows.iter().find(|r| &r[0] == model_id).unwrap_or_else(|| panic!("no row for {model_id}"))
}

fn col(name: &str) -> usize {
    registry::COLUMNS.iter().position(|c| *c == name).expect("column")
}

#[test]
fn the_committed_certifications_are_up_to_date() {
    let layout = Layout::new(root());
    workspace::check_lock(&layout).expect("playbooks match playbook.lock");
    let stale = workspace::stale(&layout).expect("derived files");
    assert!(stale.is_empty(), "stale: {stale:?}; run `cargo xtask certify`");
}

#[test]
fn a_planted_g1_failure_blocks_that_model_only() {
    let (dir, layout) = scratch();
    let mut records = committed_records();
    let g1 = records
        .iter_mut()
        .find(|r| r.model == "qa-tiny-qwen2" && r.gate == "G1")
        .expect("qwen2 has a G1 trial");
    g1.outcome = Outcome::Falsified;
    g1.reason = "failed to load: planted".into();
    let journal = write_journal(dir.path(), "planted", &records);
    let scored = certify(&layout, &[journal]);

    for (e, s) in &scored {
        if e.model == "qa-tiny-qwen2" {
            assert_eq!((s.mqs, s.status), (0, Status::Blocked), "{}", s.verdict);
        } else {
            assert!(s.mqs > 0, "{} must keep its score", e.model);
            assert_ne!(s.status, Status::Blocked);
        }
    }
    let rows = csv_rows(&layout);
    let qwen = row(&rows, "modelqa/qa-tiny-qwen2");
    assert_eq!(&qwen[col("status")], "BLOCKED");
    assert_eq!(&qwen[col("mqs_score")], "0");
    // The gateway flags land in their own columns (the original wrote them one off).
    let flags: Vec<&str> = ["g0", "g1", "g2", "g3", "g4"].iter().map(|c| &qwen[col(c)]).collect();
    assert_eq!(flags, ["true", "false", "true", "true", "true"]);
    let llama = row(&rows, "modelqa/qa-tiny-llama");
    assert_eq!(&llama[col("g1")], "true");
    let readme = std::fs::read_to_string(layout.readme()).expect("readme");
    assert!(readme.contains("| BLOCKED | 1/95 |"), "{readme}");
}

#[test]
fn partitioned_journals_merge_into_the_result_of_one() {
    let records = committed_records();
    let (dir_a, one) = scratch();
    let single = certify(&one, &[write_journal(dir_a.path(), "all", &records)]);

    let (dir_b, many) = scratch();
    let parts: Vec<PathBuf> = (0..3)
        .map(|k| {
            let part: Vec<EvidenceRecord> = records.iter().skip(k).step_by(3).cloned().collect();
            write_journal(dir_b.path(), &format!("part-{k}"), &part)
        })
        .collect();
    let merged = certify(&many, &parts);
    assert_eq!(single.len(), 3);
    for ((a, sa), (b, sb)) in single.iter().zip(&merged) {
        assert_eq!(a.records, b.records);
        assert_eq!(sa, sb);
    }
    assert_eq!(
        std::fs::read_to_string(one.registry()).expect("one"),
        std::fs::read_to_string(many.registry()).expect("many")
    );
}

#[test]
fn a_rerun_replaces_a_record_and_a_skip_never_replaces_a_real_one() {
    let records = committed_records();
    let target =
        records.iter().find(|r| r.gate != "G1" && r.model == "qa-tiny-llama").expect("a trial").clone();
    let mut later = target.clone();
    later.timestamp = "2099-01-01T00:00:00Z".into();
    later.outcome = Outcome::Falsified;
    let mut skipped = later.clone();
    skipped.timestamp = "2099-06-01T00:00:00Z".into();
    skipped.outcome = Outcome::Skipped;
    let mut all = records.clone();
    all.push(later);
    all.push(skipped);
    let groups = evidence::group(all);
    let kept = groups.values().flatten().find(|r| r.trial == target.trial).expect("the trial is kept once");
    assert_eq!(kept.outcome, Outcome::Falsified, "the latest real record wins over a later skip");
    assert_eq!(groups.values().map(Vec::len).sum::<usize>(), records.len());
}

#[test]
fn the_registry_lists_every_seed_model_and_quotes_fields() {
    let (dir, layout) = scratch();
    let mut seed = std::fs::read_to_string(layout.seed()).expect("seed");
    seed.push_str(
        "\"acme/model, with comma\",acme,7B,large,PENDING,0,-,none,,false,false,false,false,,,,,,,false\n",
    );
    std::fs::write(layout.seed(), seed).expect("seed");
    certify(&layout, &[write_journal(dir.path(), "j", &committed_records())]);
    let rows = csv_rows(&layout);
    assert_eq!(rows.len(), 92 + 1 + 3);
    assert!(rows.iter().all(|r| r.len() == registry::COLUMNS.len()));
    let odd = row(&rows, "acme/model, with comma");
    assert_eq!(&odd[col("status")], "PENDING");
    assert_eq!(&odd[col("mqs_score")], "", "no evidence: no score");
    let pending = rows.iter().filter(|r| &r[col("status")] == "PENDING").count();
    assert!(pending >= 93, "every seed model without evidence is pending");
}

#[test]
fn certifying_the_same_evidence_twice_changes_nothing() {
    let (dir, layout) = scratch();
    let journal = write_journal(dir.path(), "j", &committed_records());
    certify(&layout, std::slice::from_ref(&journal));
    let snapshot = |l: &Layout| {
        let mut files =
            vec![std::fs::read(l.readme()).expect("readme"), std::fs::read(l.registry()).expect("csv")];
        for m in MODELS {
            files.push(std::fs::read(l.model_dir(m).join("evidence.json")).expect("evidence"));
            files.push(std::fs::read(l.model_dir(m).join("mqs.json")).expect("mqs"));
        }
        files
    };
    let first = snapshot(&layout);
    certify(&layout, &[journal]);
    assert!(first == snapshot(&layout));
    assert!(workspace::stale(&layout).expect("stale").is_empty());

    std::fs::write(layout.registry(), "model_id\n").expect("tamper");
    assert_eq!(workspace::stale(&layout).expect("stale"), vec![layout.registry()]);
}

#[test]
fn a_readme_without_markers_is_a_clear_error() {
    let err = registry::replace_table("# no markers\n", "table").expect_err("must fail");
    assert!(err.to_string().contains("CERTIFICATION_TABLE_START"), "{err}");
    let once = registry::replace_table(
        &format!("a\n{}\nx\n{}\nb\n", registry::TABLE_START, registry::TABLE_END),
        "t\n",
    )
    .expect("markers");
    assert_eq!(registry::replace_table(&once, "t\n").expect("again"), once);
}

#[test]
fn the_lock_names_changed_new_and_removed_playbooks() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("templates")).expect("mkdir");
    std::fs::write(dir.path().join("a.yaml"), "family: a\n").expect("a");
    std::fs::write(dir.path().join("templates/t.yaml"), "scenarios: []\n").expect("t");
    let locked = lock::hashes(dir.path()).expect("hashes");
    let text = lock::render(&locked);
    assert_eq!(lock::parse(Path::new("playbook.lock"), &text).expect("parses"), locked);
    assert!(lock::drift(&locked, &locked).is_empty());

    std::fs::write(dir.path().join("templates/t.yaml"), "scenarios: [x]\n").expect("t");
    std::fs::write(dir.path().join("b.yaml"), "family: b\n").expect("b");
    std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
    let drift: Vec<String> = lock::drift(&locked, &lock::hashes(dir.path()).expect("hashes"))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(drift.len(), 3, "{drift:?}");
    assert!(drift.iter().any(|d| d.starts_with("templates/t.yaml changed since it was locked")));
    assert!(drift.iter().any(|d| d == "b.yaml is not in the lock"));
    assert!(drift.iter().any(|d| d == "a.yaml is locked but no longer exists"));
    let bad = lock::parse(Path::new("playbook.lock"), "nothex  a.yaml\n").expect_err("bad line");
    assert!(bad.to_string().contains("playbook.lock:1"), "{bad}");
}

#[test]
fn junit_keeps_failures_and_errors_apart_and_carries_the_score() {
    let (dir, layout) = scratch();
    let mut records = committed_records();
    let mut scenario = records.iter_mut().filter(|r| r.model == "qa-tiny-llama" && r.modality == "run");
    let falsified = scenario.next().expect("a run trial");
    falsified.outcome = Outcome::Falsified;
    falsified.reason = "expected 14, got 15".into();
    let timed_out = scenario.next().expect("another run trial");
    timed_out.outcome = Outcome::Timeout;
    let scored = certify(&layout, &[write_journal(dir.path(), "j", &records)]);
    let xml = report::junit(&scored).expect("junit");
    assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
    assert_eq!(xml.matches("<error").count(), 1, "{xml}");
    assert!(xml.contains("name=\"mqs\""), "{xml}");
    let html = report::html(&scored);
    assert!(html.contains("<svg") && html.contains("expected 14, got 15"));
    assert!(!html.contains("<script"), "self-contained, no script");
    let md = report::markdown(&scored);
    assert!(md.contains("### Falsifications (2)"), "{md}");
}

#[test]
fn tickets_group_falsifications_by_gate_and_root_cause() {
    let mut records = committed_records();
    let mut arithmetic = records.iter_mut().filter(|r| r.model == "qa-tiny-mistral" && r.gate == "oracles");
    for (got, r) in [15, 99].into_iter().zip(arithmetic.by_ref()) {
        r.outcome = Outcome::Falsified;
        r.reason = format!("expected 14, got {got}");
    }
    let e = evidence::group(records)
        .into_values()
        .filter_map(|r| ModelEvidence::new(r, 0, String::new(), None, String::new()))
        .collect::<Vec<_>>();
    let tickets = tickets::tickets(&e);
    assert_eq!(tickets.len(), 1, "{:?}", tickets.iter().map(|t| &t.title).collect::<Vec<_>>());
    let t = &tickets[0];
    assert!(t.title.contains("2 trials"), "{}", t.title);
    assert!(t.body.contains("cargo test --test qualify -- --exact 'qa-tiny::"), "{}", t.body);
    assert_eq!(tickets::root_cause("expected 14, got 15"), tickets::root_cause("expected 9, got -7"));
}

#[test]
fn evidence_is_current_until_its_playbook_model_files_or_harness_change() {
    let (dir, layout) = scratch();
    std::fs::write(dir.path().join("p.yaml"), "family: x\n").expect("playbook");
    std::fs::write(dir.path().join("model.safetensors"), b"weights").expect("model");
    let mut records = committed_records();
    records.retain(|r| r.model == "qa-tiny-llama");
    for r in &mut records {
        r.playbook = "p.yaml".into();
        for f in &mut r.model_files {
            f.path = "model.safetensors".into();
            f.sha256 = "a0fdd0a2f4c2e7fb0fcfbd4c8ba8ecf8dd2da5b5a5b4e1b0e8cf1e1e06a3d1b5".into();
        }
    }
    let journal = write_journal(dir.path(), "j", &records);
    let (records, _) = evidence::read_journals(&[journal]).expect("read");
    let e = workspace::evidence_from_records(&layout, records, &plan(), None, None).remove(0);
    assert!(!workspace::is_current(&layout, &e), "the recorded model hash differs from the file");

    let real = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"weights"))
    };
    let mut e = e;
    for f in e.records.iter_mut().flat_map(|r| &mut r.model_files) {
        f.sha256 = real.clone();
    }
    assert!(workspace::is_current(&layout, &e));
    std::fs::write(dir.path().join("p.yaml"), "family: y\n").expect("playbook");
    assert!(!workspace::is_current(&layout, &e), "a changed playbook makes the evidence stale");
    let mut e2 = e.clone();
    e2.playbook_sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"family: y\n"))
    };
    assert!(workspace::is_current(&layout, &e2));
    e2.harness_fingerprint = "another harness".into();
    assert!(!workspace::is_current(&layout, &e2), "a changed harness makes the evidence stale");
}
