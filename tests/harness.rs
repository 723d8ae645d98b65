//! End-to-end: the real qualify binary on a generated model, checked through its exit code,
//! its stderr and the evidence journal it writes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use modelqa::support::journal::EvidenceRecord;
use modelqa::support::testmodel::{TestArchitecture, TestModelShape, write_test_model};
use modelqa::vocab::Outcome;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(playbook: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        write_test_model(&dir.path().join("model"), TestArchitecture::Llama, TestModelShape::default(), 11)
            .expect("model");
        std::fs::write(dir.path().join("playbook.yaml"), playbook).expect("playbook");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn qualify(&self, run_id: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(common::qualify_binary());
        cmd.args(args)
            .env("QUALIFY_PLAYBOOKS", self.path().join("playbook.yaml"))
            .env("QUALIFY_JOURNAL_DIR", self.path().join("journal"))
            .env("QUALIFY_RUN_ID", run_id)
            // Golden trials of these playbooks must never write into the repository's golden/.
            .env("QUALIFY_GOLDEN_DIR", self.path().join("golden"))
            .env("HOME", self.path())
            .env_remove("QUALIFY_MODEL_DIR")
            .env_remove("QUALIFY_FAILURE_POLICY")
            .env_remove("QUALIFY_MEMORY_BUDGET")
            .env_remove("QUALIFY_CERTIFICATIONS")
            .env_remove("NEXTEST")
            .env_remove("HF_HOME")
            .env_remove("HF_HUB_CACHE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("qualify runs")
    }

    fn journal(&self, run_id: &str) -> Vec<EvidenceRecord> {
        let path = self.path().join("journal").join(format!("{run_id}.jsonl"));
        let (records, torn) = modelqa::support::journal::read(&path).expect("journal reads");
        assert_eq!(torn, 0);
        records
    }
}

const PLAYBOOK: &str = r#"
playbook: 1
family: e2e
failure_policy: collect-all
tiers:
  smoke:
    backends: [cpu, gpu]
    scenario_count: 3
models:
  - id: test/tiny
    path: model
scenarios:
  - name: any_text
    prompt: "Hello! How are you today?"
    max_tokens: 8
    oracles: [{regex: '\S'}]
  - name: arithmetic
    prompt: "What is 2+2?"
    max_tokens: 8
    oracles: [arithmetic]
  - name: sampled
    prompt: "List three colors."
    max_tokens: 8
    sampling: {temperature: 0.9, seed: 5}
    oracles: [{regex: '\S'}]
"#;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn runs_real_inference_and_records_every_trial() {
    let fx = Fixture::new(PLAYBOOK);
    let out = fx.qualify("run1", &["::run::", "--test-threads", "2"], &[]);
    // The random model cannot do arithmetic: one falsified trial, so libtest's failure code.
    assert_eq!(out.status.code(), Some(101), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("2 passed; 1 failed; 3 ignored"), "{}", stdout(&out));
    assert!(stderr(&out).contains("ignored 3 trials: built without cuda"), "{}", stderr(&out));

    let records = fx.journal("run1");
    assert_eq!(records.len(), 3, "one record per trial that ran");
    let model_file = fx.path().join("model/model.safetensors");
    let sha = modelqa::support::format::files::hash_file(&model_file).expect("hash").sha256;
    for r in &records {
        assert_eq!(r.run_id, "run1");
        assert_eq!((r.family.as_str(), r.tier.as_str(), r.model.as_str()), ("e2e", "smoke", "tiny"));
        assert_eq!(
            (r.format.as_str(), r.backend.as_str(), r.modality.as_str()),
            ("safetensors", "cpu", "run")
        );
        assert!(r.output.as_deref().is_some_and(|o| !o.is_empty()), "{r:?}");
        assert!(r.metrics.tokens.is_some_and(|t| t > 0));
        assert!(r.metrics.time_to_first_token_ms.is_some());
        assert!(r.model_files.iter().any(|f| f.sha256 == sha), "model file hashes recorded");
        assert_eq!(r.engine.as_deref(), Some("candle 0.11.1 + modelqa kernels"));
        assert_eq!(r.device.as_deref(), Some("cpu"));
        assert!(r.timestamp.ends_with('Z'));
    }
    let by = |s: &str| records.iter().find(|r| r.scenario == s).expect(s);
    assert_eq!(by("any_text").outcome, Outcome::Corroborated);
    assert_eq!(by("arithmetic").outcome, Outcome::Falsified);
    assert_eq!(by("arithmetic").gate, "arithmetic");
    assert!(by("arithmetic").reason.contains("expected 2+2 = 4"), "{}", by("arithmetic").reason);
    assert_eq!(by("arithmetic").prompt.as_deref(), Some("What is 2+2?"));
    assert!(matches!(by("sampled").sampling, modelqa::support::engine::Sampling::Seeded { seed: 5, .. }));
    // Exactly one trial loaded the session; the others shared it.
    assert_eq!(records.iter().filter(|r| r.metrics.load_ms.is_some()).count(), 1);

    // Greedy generation is deterministic across runs.
    fx.qualify("run2", &["any_text"], &[]);
    assert_eq!(fx.journal("run2")[0].output, by("any_text").output);
}

#[test]
fn exact_builds_one_trial_and_rejects_bad_names() {
    let fx = Fixture::new(PLAYBOOK);
    let name = "e2e::smoke::tiny::safetensors::cpu::run::any_text";
    let out = fx.qualify("exact", &["--exact", name], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 passed"), "{}", stdout(&out));
    assert_eq!(fx.journal("exact").len(), 1);

    let out = fx.qualify("exact", &["--exact", "e2e::smoke::tiny"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("is not a trial name: expected 7 segments"), "{}", stderr(&out));

    let out = fx.qualify("exact", &["--exact", "e2e::smoke::tiny::safetensors::cpu::run::nope"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no trial is named"), "{}", stderr(&out));
    assert_eq!(fx.journal("exact").len(), 1, "nothing more ran");
}

#[test]
fn a_filter_that_selects_nothing_fails_and_names_what_exists() {
    let fx = Fixture::new(PLAYBOOK);
    let out = fx.qualify("none", &["e2f::smoke"], &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: the filter `e2f::smoke` selects none of the 27 trials of 1 playbook under"),
        "{err}"
    );
    assert!(err.contains("family e2e (tiers smoke) from"), "{err}");
    assert!(err.contains("did you mean `e2e::smoke`?"), "{err}");
    assert!(err.contains("QUALIFY_NO_TRIALS"), "{err}");
    assert!(!fx.path().join("journal/none.jsonl").exists(), "nothing ran");

    // Asked for, an empty selection passes (nextest's `--no-tests=pass`) or warns.
    let out = fx.qualify("none", &["e2f::smoke"], &[("QUALIFY_NO_TRIALS", "pass")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = fx.qualify("none", &["e2f::smoke"], &[("QUALIFY_NO_TRIALS", "warn")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: the filter `e2f::smoke` selects none"), "{}", stderr(&out));
    let out = fx.qualify("none", &["e2f::smoke"], &[("QUALIFY_NO_TRIALS", "maybe")]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // A filter meant for other tests (`cargo test --workspace -- perf::tests` hands it to every
    // test binary) only warns, unless failing is asked for.
    let out = fx.qualify("none", &["perf::tests"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: the filter `perf::tests` selects none"), "{}", stderr(&out));
    let out = fx.qualify("none", &["perf::tests"], &[("QUALIFY_NO_TRIALS", "fail")]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));

    // Listing keeps libtest's behaviour: an empty list is not an error.
    let out = fx.qualify("none", &["--list", "e2f::smoke"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A filter that matches runs as before.
    let out = fx.qualify("some", &["e2e::smoke::tiny::safetensors::cpu::run::any"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_mistyped_variable_is_named_with_what_it_likely_meant() {
    let fx = Fixture::new(PLAYBOOK);
    let out = fx.qualify(
        "typo",
        &["e2e::smoke::tiny::safetensors::cpu::run::any"],
        &[("QUALIFY_PLAYBOOK", "elsewhere"), ("QUALIFY_ZZZ_UNRELATED", "1")],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: QUALIFY_PLAYBOOK is set but modelqa reads no such variable; did you mean QUALIFY_PLAYBOOKS?"),
        "{err}"
    );
    assert!(
        err.contains("error: QUALIFY_ZZZ_UNRELATED is set but modelqa reads no such variable\n"),
        "{err}"
    );
    assert!(err.contains("note: modelqa reads QUALIFY_PLAYBOOKS, QUALIFY_MODEL_DIR"), "{err}");
    assert!(!fx.path().join("journal/typo.jsonl").exists(), "nothing ran");
    let out = fx.qualify("typo", &["e2e::smoke::tiny::safetensors::cpu::run::any"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("reads no such variable"), "{}", stderr(&out));
}

#[test]
fn list_matches_libtest_and_nextest_expectations() {
    let fx = Fixture::new(PLAYBOOK);
    let out = fx.qualify("list", &["--list", "--format", "terse"], &[]);
    assert!(out.status.success());
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(
        lines.len(),
        27,
        "3 scenarios, 5 gates, the injection gate, gate::trace, diff::batch-invariance and 2 golden comparisons, on cpu and gpu; the gpu cell's backend parity"
    );
    assert!(lines.iter().all(|l| l.ends_with(": test")));
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    let ignored = fx.qualify("list", &["--list", "--format", "terse", "--ignored"], &[]);
    assert_eq!(stdout(&ignored).lines().count(), 14, "the gpu trials");
    assert!(stdout(&ignored).lines().all(|l| l.contains("::gpu::")));
    let filtered = fx.qualify("list", &["--list", "::run::a"], &[]);
    assert_eq!(stdout(&filtered).lines().count(), 4);
    let skipped = fx.qualify("list", &["--list", "--skip", "gpu"], &[]);
    assert_eq!(stdout(&skipped).lines().count(), 13);
    assert!(!fx.path().join("journal/list.jsonl").exists(), "listing runs nothing");
}

#[test]
fn stop_on_p0_stops_a_group_after_its_first_gateway_failure() {
    let fx = Fixture::new(PLAYBOOK);
    // A truncated weights file: G0 names it, and the rest of the group is not run.
    let weights = fx.path().join("model/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let out = fx.qualify("p0", &["--test-threads", "1"], &[("QUALIFY_FAILURE_POLICY", "stop-on-p0")]);
    assert_eq!(out.status.code(), Some(101));
    let records = fx.journal("p0");
    assert_eq!(
        records.len(),
        13,
        "5 gates, the injection gate, gate::trace, diff::batch-invariance, 2 golden comparisons and 3 scenarios on cpu"
    );
    // In name order the first trial is `diff::batch-invariance`, whose load fails (G1).
    assert_eq!(records[0].gate, "G1");
    assert_eq!(records[0].outcome, Outcome::Falsified);
    assert!(records[0].reason.contains("model.safetensors"), "{}", records[0].reason);
    for r in &records[1..] {
        assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
        assert!(r.reason.starts_with("not run: gateway G1 failed"), "{}", r.reason);
    }

    // collect-all runs every trial; each that needs the model fails its load on its own.
    let out = fx.qualify("all", &["--test-threads", "1"], &[("QUALIFY_FAILURE_POLICY", "collect-all")]);
    assert_eq!(out.status.code(), Some(101));
    let records = fx.journal("all");
    assert_eq!(records.len(), 13);
    assert!(records.iter().all(|r| r.outcome == Outcome::Falsified));
    assert_eq!(records.iter().filter(|r| r.gate == "G1").count(), 12, "{records:#?}");
    assert!(records.iter().filter(|r| r.gate == "G1").all(|r| r.reason.contains("model.safetensors")));
    let g0 = records.iter().find(|r| r.gate == "G0").expect("G0 ran");
    assert!(g0.reason.contains("model.safetensors is truncated or corrupt"), "{}", g0.reason);
}

#[test]
fn gateways_run_as_trials_and_g4_catches_noise() {
    let fx = Fixture::new(PLAYBOOK);
    let out = fx.qualify("gates", &["::cpu::gate::"], &[]);
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    let records = fx.journal("gates");
    let by = |g: &str| records.iter().find(|r| r.gate == g).unwrap_or_else(|| panic!("{g}: {records:#?}"));
    for g in ["G0", "G1", "G2", "G3"] {
        assert_eq!(by(g).outcome, Outcome::Corroborated, "{:?}", by(g));
    }
    assert!(by("G0").reason.contains("consistent with config.json"), "{}", by("G0").reason);
    // G0 loads no session, yet its record names and hashes the files it read.
    let read: Vec<String> = by("G0").model_files.iter().map(|f| f.path.display().to_string()).collect();
    assert!(
        ["model.safetensors", "config.json", "tokenizer.json"]
            .iter()
            .all(|n| read.iter().any(|p| p.ends_with(n))),
        "{read:?}"
    );
    assert!(by("G0").model_files.iter().all(|f| f.sha256.len() == 64));
    // Random weights decode to broken text: the quality gateway says so.
    assert_eq!(by("G4").outcome, Outcome::Falsified);
    assert!(by("G4").reason.contains("produced garbage"), "{}", by("G4").reason);
}

#[test]
fn stop_on_first_stops_the_run() {
    let fx = Fixture::new(PLAYBOOK);
    let out = fx.qualify(
        "first",
        &["::run::", "--test-threads", "1"],
        &[("QUALIFY_FAILURE_POLICY", "stop-on-first")],
    );
    assert_eq!(out.status.code(), Some(101));
    let records = fx.journal("first");
    // Trials run in name order: any_text passes, arithmetic fails, sampled is not run.
    let outcomes: Vec<_> = records.iter().map(|r| (r.scenario.as_str(), r.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            ("any_text", Outcome::Corroborated),
            ("arithmetic", Outcome::Falsified),
            ("sampled", Outcome::Skipped)
        ]
    );
    assert!(records[2].reason.contains("stop-on-first"), "{}", records[2].reason);
}

#[test]
fn missing_model_is_ignored_with_where_it_looked() {
    let fx = Fixture::new(&PLAYBOOK.replace("path: model", "path: elsewhere"));
    let out = fx.qualify("missing", &[], &[]);
    assert!(out.status.success(), "ignored is not failed: {}", stderr(&out));
    assert!(stdout(&out).contains("0 passed; 0 failed; 27 ignored"), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("model test/tiny not found (looked in"), "{err}");
    assert!(err.contains("elsewhere"), "{err}");
    // Asked to run them anyway, they stay ignored with the reason rather than passing.
    let out = fx.qualify("missing", &["--include-ignored"], &[]);
    assert!(stdout(&out).contains("0 passed; 0 failed; 27 ignored"), "{}", stdout(&out));
}

#[test]
fn code_tests_run_the_answer_and_are_ignored_without_their_interpreter() {
    let fx = Fixture::new(
        r#"
playbook: 1
family: e2e
failure_policy: collect-all
tiers:
  smoke: {}
models:
  - id: test/tiny
    path: model
scenarios:
  - name: code
    prompt: "def double(x):"
    max_tokens: 8
    oracles: [{code_tests: {language: python, tests: ["assert double(2) == 4"]}}]
"#,
    );
    // Without python3 the oracle cannot judge: ignored with the reason, never passed or failed.
    let empty = fx.path().join("empty-path");
    std::fs::create_dir_all(&empty).expect("a directory");
    let out = fx.qualify("no-python", &["::run::code"], &[("PATH", empty.to_str().expect("utf-8"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("0 passed; 0 failed; 1 ignored"), "{}", stdout(&out));
    assert!(stderr(&out).contains("ignored 1 trial: no python3 on PATH"), "{}", stderr(&out));

    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped the run with python3: there is none on PATH");
        return;
    }
    // With it, the random model's answer really runs, and is not a function that doubles.
    let out = fx.qualify("python", &["::run::code"], &[]);
    assert_eq!(out.status.code(), Some(101), "{}\n{}", stdout(&out), stderr(&out));
    let records = fx.journal("python");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Falsified, "{:?}", records[0]);
    assert_eq!(records[0].gate, "code_tests", "{:?}", records[0]);
    let reason = &records[0].reason;
    assert!(reason.starts_with("the code") || reason.starts_with("test 1 of 1 failed"), "{reason}");
}

#[test]
fn malformed_playbook_stops_before_any_trial() {
    let fx = Fixture::new(
        "playbook: 1\nfamily: e2e\ntiers: {smoke: {}}\nmodels: [{id: test/tiny, paht: model}]\n",
    );
    let out = fx.qualify("bad", &[], &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("playbook.yaml:4:"), "{err}");
    assert!(err.contains("at `models[0].paht`: unknown field `paht`"), "{err}");
    assert!(!fx.path().join("journal").exists());

    let out = fx.qualify("bad", &[], &[("QUALIFY_FAILURE_POLICY", "sometimes")]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("invalid QUALIFY_FAILURE_POLICY"), "{}", stderr(&out));
}

#[test]
fn a_plan_past_the_trial_bound_is_refused_before_anything_is_listed() {
    // 200 models × 4 cells × 10,000 generated cases in 3 modalities, and each cell's own checks:
    // 24,019,200 trials.
    let models: String = (0..200).map(|i| format!("  - {{id: org/m{i}, path: model}}\n")).collect();
    let fx = Fixture::new(&format!(
        "playbook: 1\nfamily: e2e\ntiers:\n  big: {{formats: [safetensors, apr], backends: [cpu, gpu], modalities: [run, chat, serve], scenario_count: 10000}}\nmodels:\n{models}scenarios:\n  - {{name: sums, generate: {{arithmetic: {{ops: [\"+\", \"*\"], operands: [0, 9999]}}}}, count: 10000, oracles: [arithmetic]}}\n"
    ));
    let out = fx.qualify("big", &["--list"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("define 24019200 trials; at most 20000000 are run in one harness"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_corrupt_model_fails_only_its_own_trials() {
    let two_models = PLAYBOOK.replace(
        "models:\n  - id: test/tiny\n    path: model\n",
        "models:\n  - id: test/tiny\n    path: model\n  - id: test/broken\n    path: broken\n",
    );
    assert_ne!(two_models, PLAYBOOK);
    let fx = Fixture::new(&two_models);
    let broken = fx.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{\"model_type\": \"llama\"").unwrap();
    let out = fx.qualify("corrupt", &["any_text"], &[]);
    assert_eq!(out.status.code(), Some(101));
    let records = fx.journal("corrupt");
    let tiny = records.iter().find(|r| r.model == "tiny").expect("tiny ran");
    let bad = records.iter().find(|r| r.model == "broken").expect("broken ran");
    assert_eq!(tiny.outcome, Outcome::Corroborated);
    assert_eq!(bad.outcome, Outcome::Falsified);
    assert!(bad.reason.contains("config.json") && bad.reason.contains("invalid JSON"), "{}", bad.reason);
}

#[test]
fn a_property_reports_its_shrunk_minimal_case() {
    let fx = Fixture::new(
        r#"
playbook: 1
family: e2e
tiers: {smoke: {}}
models: [{id: test/tiny, path: model}]
scenarios:
  - name: sums
    property: {arithmetic: {ops: ["+"], operands: [0, 50], phrasings: [what_is]}}
    count: 8
    max_tokens: 6
    oracles: [arithmetic]
"#,
    );
    let out = fx.qualify("prop", &["sums"], &[]);
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    let records = fx.journal("prop");
    assert_eq!(records.len(), 1, "a property is one trial");
    let r = &records[0];
    assert_eq!(r.outcome, Outcome::Falsified);
    // Shrinking moves both operands to the bottom of their range.
    assert!(r.reason.contains("minimal failing case \"What is 0 + 0?\""), "{}", r.reason);
    assert_eq!(r.prompt.as_deref(), Some("What is 0 + 0?"));
    assert!(r.output.is_some());
}

#[test]
fn a_trial_past_its_timeout_is_a_timeout() {
    let fx = Fixture::new(
        &PLAYBOOK.replace("    scenario_count: 3\n", "    scenario_count: 3\n    timeout_ms: 1\n"),
    );
    let out = fx.qualify("slow", &["any_text"], &[]);
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    let records = fx.journal("slow");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Timeout, "{:?}", records[0]);
    assert!(stdout(&out).contains("timeout [timeout]"), "{}", stdout(&out));
}

#[test]
fn golden_differences_become_pending_files_outside_ci_only() {
    let fx = Fixture::new(PLAYBOOK);
    let golden = fx.path().join("golden");
    let cache = fx.path().join("cache");
    let env = |ci: &'static str| {
        [
            ("QUALIFY_GOLDEN_DIR", golden.to_str().unwrap().to_string()),
            ("QUALIFY_CACHE_DIR", cache.to_str().unwrap().to_string()),
            ("CI", ci.to_string()),
        ]
    };
    let run = |id: &str, ci: &'static str| {
        let vars = env(ci);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        fx.qualify(id, &["::cpu::diff::golden-text"], &pairs)
    };
    // In CI a missing reference fails and nothing is written.
    let out = run("ci", "true");
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    assert!(fx.journal("ci")[0].reason.contains("no golden reference"), "{:?}", fx.journal("ci")[0]);
    assert!(!golden.exists(), "CI never writes golden files");
    // Outside CI the output is written beside the reference as a pending file, never as the reference.
    let out = run("local", "");
    assert_eq!(out.status.code(), Some(101));
    let pending = golden.join("e2e/tiny/any_text.snap.new");
    assert!(pending.is_file(), "{}", stderr(&out));
    assert!(!golden.join("e2e/tiny/any_text.snap").exists());
    // Accepted, the references make the trial pass.
    for p in modelqa::support::checks::golden::pending_files(&golden) {
        std::fs::rename(&p, p.with_extension("")).unwrap();
    }
    let out = run("accepted", "true");
    assert!(out.status.success(), "{}", stdout(&out));
    // The model's file hashes were remembered where QUALIFY_CACHE_DIR says.
    assert!(std::fs::read_dir(cache.join("hashes")).is_ok_and(|d| d.count() >= 3));
}

const CHAT_PLAYBOOK: &str = r#"
playbook: 1
family: e2e
failure_policy: collect-all
tiers:
  quick:
    scenario_count: 2
models:
  - id: test/tiny
    path: model
scenarios:
  - name: greeting
    prompt: "Hello! How are you today?"
    max_tokens: 4
    oracles: [{regex: '\S'}]
  - name: conversation
    messages:
      - {role: system, content: "Be brief."}
      - {role: user, content: "Remember the word apple."}
      - {role: assistant, content: "OK."}
      - {role: user, content: "Which word?"}
    max_tokens: 4
    oracles: [{regex: '\S'}]
"#;

#[test]
fn chat_renders_the_models_own_template_and_needs_one() {
    let fx = Fixture::new(CHAT_PLAYBOOK);
    fx.qualify("chat", &[], &[]);
    let records = fx.journal("chat");
    let prompt = |modality: &str, scenario: &str| {
        records
            .iter()
            .find(|r| r.modality == modality && r.scenario == scenario)
            .unwrap_or_else(|| panic!("{modality}::{scenario} ran: {records:?}"))
            .prompt
            .clone()
            .expect("prompt recorded")
    };
    assert_eq!(
        prompt("chat", "greeting"),
        "<|im_start|>user\nHello! How are you today?<|im_end|>\n<|im_start|>assistant\n"
    );
    let conversation = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nRemember the word apple.<|im_end|>\n\
                        <|im_start|>assistant\nOK.<|im_end|>\n<|im_start|>user\nWhich word?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(prompt("chat", "conversation"), conversation, "every turn, in order");
    assert_eq!(
        prompt("run", "conversation"),
        conversation,
        "run lays a conversation out with the template too"
    );
    assert_eq!(prompt("run", "greeting"), "Hello! How are you today?");

    // Without a chat template the model cannot chat: chat trials fail and say why; run falls
    // back to a plain transcript.
    let config = fx.path().join("model/tokenizer_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("json");
    json.as_object_mut().expect("object").remove("chat_template");
    std::fs::write(&config, json.to_string()).expect("write");
    fx.qualify("plain", &[], &[]);
    let records = fx.journal("plain");
    let chat = records.iter().find(|r| r.modality == "chat" && r.scenario == "greeting").expect("chat ran");
    assert_eq!((chat.outcome, chat.gate.as_str()), (Outcome::Falsified, "chat_template"));
    assert!(chat.reason.contains("no chat template"), "{}", chat.reason);
    let run = records.iter().find(|r| r.modality == "run" && r.scenario == "conversation").expect("run ran");
    assert_eq!(
        run.prompt.as_deref(),
        Some(
            "System: Be brief.\nUser: Remember the word apple.\nAssistant: OK.\nUser: Which word?\nAssistant:"
        )
    );
}

#[test]
fn performance_assertions_are_perf_trials_that_fail_on_a_missed_floor() {
    let with = |floor: &str| {
        PLAYBOOK.replace(
            "models:\n",
            &format!(
                "performance:\n  prompt: \"Hello! How are you today?\"\n  max_tokens: 8\n  runs: 3\n  min_tokens_per_second: {{cpu: {floor}}}\nmodels:\n"
            ),
        )
    };
    // The gpu cell asserts nothing (no gpu figure), so only the cpu cell gets the trial.
    let fx = Fixture::new(&with("0.001"));
    let listed = fx.qualify("list", &["--list", "perf::"], &[]);
    assert_eq!(stdout(&listed).lines().count(), 1, "{}", stdout(&listed));
    let out = fx.qualify("pass", &["perf::"], &[]);
    assert!(out.status.success(), "{}", stdout(&out));
    let r = &fx.journal("pass")[0];
    assert_eq!(r.trial, "e2e::smoke::tiny::safetensors::cpu::perf::decode");
    assert_eq!(r.category, Some(modelqa::vocab::Category::Perf));
    assert!(r.metrics.tokens_per_second.is_some_and(|t| t > 0.001), "{:?}", r.metrics);
    assert!(r.reason.contains("3 timed generations, machine at "), "{}", r.reason);
    assert!(r.reason.contains("tokens/s at reference speed"), "{}", r.reason);
    assert!(r.reason.contains("load average"), "{}", r.reason);

    let fx = Fixture::new(&with("1000000000"));
    let out = fx.qualify("fail", &["perf::"], &[]);
    assert_eq!(out.status.code(), Some(101));
    let r = &fx.journal("fail")[0];
    assert_eq!(r.outcome, Outcome::Falsified);
    assert!(r.reason.contains("is below 1000000000"), "{}", r.reason);
}

/// The trial of `records` whose name ends with `tail`.
fn trial<'a>(records: &'a [EvidenceRecord], tail: &str) -> &'a EvidenceRecord {
    records.iter().find(|r| r.trial.ends_with(tail)).unwrap_or_else(|| panic!("no {tail} in {records:#?}"))
}

#[test]
fn a_process_that_dies_inside_a_forward_pass_leaves_a_crashed_record_that_fails_g3() {
    let fx = Fixture::new(PLAYBOOK);
    for (kind, run) in [("abort", "aborted"), ("segfault", "segfaulted")] {
        let fault = format!("{kind}:arithmetic");
        // Each trial generating alone (a cell's batch: the next test).
        let env = [("QUALIFY_FAULT_CRASH", fault.as_str()), ("QUALIFY_CELL_BATCH", "1")];
        let out = fx.qualify(run, &["::run::", "--test-threads", "1"], &env);
        assert_eq!(out.status.code(), None, "{kind}: the process dies by a signal\n{}", stderr(&out));
        let records = fx.journal(run);
        // The trial before it finished; the one it died in reads as crashed; the one after never
        // started, so it is missing, not crashed.
        assert_eq!(trial(&records, "run::any_text").outcome, Outcome::Corroborated);
        let died = trial(&records, "run::arithmetic");
        assert_eq!(
            (died.outcome, died.gate.as_str(), died.unfinished),
            (Outcome::Crashed, "G3", true),
            "{died:?}"
        );
        assert!(died.reason.contains("never finished"), "{}", died.reason);
        assert!(!records.iter().any(|r| r.trial.ends_with("run::sampled")), "{records:#?}");
    }
    // As nextest runs it: one process for one trial.
    let name = "e2e::smoke::tiny::safetensors::cpu::run::any_text";
    let out =
        fx.qualify("nextest", &["--exact", name], &[("QUALIFY_FAULT_CRASH", "abort"), ("NEXTEST", "1")]);
    assert_eq!(out.status.code(), None, "{}", stderr(&out));
    let records = fx.journal("nextest");
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!((records[0].outcome, records[0].gate.as_str()), (Outcome::Crashed, "G3"));
}

/// A process that dies inside a cell's batch (the first `run` trial generating the cell's answers
/// ahead) leaves every trial of the batch crashed, each saying why; resumed, they generate alone,
/// so the trial whose prompt kills the process dies again by itself and the others pass.
#[test]
fn a_process_that_dies_inside_a_cells_batch_leaves_its_trials_crashed_and_a_resume_finds_the_one() {
    let fx = Fixture::new(PLAYBOOK);
    let crash = ("QUALIFY_FAULT_CRASH", "abort:arithmetic");
    let out = fx.qualify("batch", &["::run::", "--test-threads", "1"], &[crash]);
    assert_eq!(out.status.code(), None, "the process dies by a signal\n{}", stderr(&out));
    let records = fx.journal("batch");
    for tail in ["run::any_text", "run::arithmetic", "run::sampled"] {
        let r = trial(&records, tail);
        assert_eq!((r.outcome, r.gate.as_str(), r.unfinished), (Outcome::Crashed, "G3", true), "{r:?}");
    }
    for tail in ["run::arithmetic", "run::sampled"] {
        let why = &trial(&records, tail).reason;
        assert!(
            why.contains("e2e::smoke::tiny::safetensors::cpu::run::any_text generated a batch of"),
            "{why}"
        );
        assert!(why.contains("a resumed run (QUALIFY_RESUME) generates it alone"), "{why}");
    }

    let resume = ("QUALIFY_RESUME", "batch");
    let out = fx.qualify("batch", &["::run::", "--test-threads", "1"], &[crash, resume]);
    assert_eq!(out.status.code(), None, "arithmetic alone kills it again\n{}", stderr(&out));
    let records = fx.journal("batch");
    let any_text = trial(&records, "run::any_text");
    assert!(!any_text.unfinished && any_text.outcome == Outcome::Corroborated, "{any_text:?}");
    assert!(any_text.metrics.batch.is_none(), "{any_text:?}");
    let died = trial(&records, "run::arithmetic");
    assert!(died.unfinished && died.reason.contains("never finished"), "{died:?}");

    let out = fx.qualify("batch", &["::run::", "--test-threads", "1"], &[resume]);
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    let records = fx.journal("batch");
    for tail in ["run::arithmetic", "run::sampled"] {
        let r = trial(&records, tail);
        assert!(!r.unfinished && r.outcome != Outcome::Crashed, "{r:?}");
    }

    // A panic inside the batch is caught there: each trial then generates alone, and only the
    // one whose generation panics is crashed.
    let out = fx.qualify(
        "panic",
        &["::run::", "--test-threads", "1"],
        &[("QUALIFY_FAULT_CRASH", "panic:arithmetic")],
    );
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    let records = fx.journal("panic");
    let died = trial(&records, "run::arithmetic");
    assert_eq!((died.outcome, died.unfinished), (Outcome::Crashed, false), "{died:?}");
    assert!(died.reason.contains("a planted panic"), "{}", died.reason);
    for tail in ["run::any_text", "run::sampled"] {
        let r = trial(&records, tail);
        assert!(!r.unfinished && r.outcome != Outcome::Crashed && r.metrics.batch.is_none(), "{r:?}");
    }
}

#[test]
fn a_clean_run_leaves_no_unfinished_record_and_a_panic_is_caught_in_its_trial() {
    let fx = Fixture::new(PLAYBOOK);
    let out = fx.qualify("clean", &["::run::", "--test-threads", "2"], &[]);
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    let records = fx.journal("clean");
    assert_eq!(records.len(), 3, "{records:#?}");
    assert!(records.iter().all(|r| !r.unfinished && r.outcome != Outcome::Crashed), "{records:#?}");
    // Every record names the build that measured it and the playbook as it was.
    assert!(records.iter().all(|r| r.harness_fingerprint.len() == 64 && r.playbook_sha256.len() == 64));

    let out = fx.qualify("panicked", &["::run::any_text"], &[("QUALIFY_FAULT_CRASH", "panic")]);
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    let records = fx.journal("panicked");
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(
        (records[0].outcome, records[0].gate.as_str(), records[0].unfinished),
        (Outcome::Crashed, "G3", false)
    );
    assert!(records[0].reason.contains("a planted panic"), "{}", records[0].reason);
}

#[test]
fn a_forward_pass_that_never_returns_is_a_timeout_and_its_session_is_abandoned() {
    let fx = Fixture::new(
        &PLAYBOOK.replace("    scenario_count: 3\n", "    scenario_count: 3\n    timeout_ms: 2000\n"),
    );
    let started = std::time::Instant::now();
    let out =
        fx.qualify("hung", &["::run::", "--test-threads", "1"], &[("QUALIFY_FAULT_CRASH", "hang:any_text")]);
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    let records = fx.journal("hung");
    let hung = trial(&records, "run::any_text");
    assert_eq!((hung.outcome, hung.gate.as_str()), (Outcome::Timeout, "G3"), "{hung:?}");
    assert!(hung.reason.contains("hung") && hung.reason.contains("abandoned"), "{}", hung.reason);
    // The session's other trials fail at once with the reason instead of waiting on it.
    for tail in ["run::arithmetic", "run::sampled"] {
        let r = trial(&records, tail);
        assert_eq!(r.outcome, Outcome::Timeout, "{r:?}");
        assert!(r.reason.contains("abandoned"), "{}", r.reason);
    }
    // The watchdog's grace on a 2 s timeout is 2 s; the run does not wait on the hung call.
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
}

#[test]
fn a_resumed_run_runs_only_what_has_no_final_record_and_loses_nothing() {
    let fx = Fixture::new(PLAYBOOK);
    let out = fx.qualify(
        "resumed",
        &["::run::", "--test-threads", "1"],
        &[("QUALIFY_FAULT_CRASH", "abort:arithmetic"), ("QUALIFY_CELL_BATCH", "1")],
    );
    assert_eq!(out.status.code(), None, "{}", stderr(&out));
    let first = trial(&fx.journal("resumed"), "run::any_text").clone();

    let out = fx.qualify("resumed", &["::run::", "--test-threads", "1"], &[("QUALIFY_RESUME", "resumed")]);
    assert!(
        stderr(&out).contains("resuming run resumed: 1 of the 6 selected trials finished"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("ignored 1 trial: finished in run resumed before it stopped"),
        "{}",
        stderr(&out)
    );
    let records = fx.journal("resumed");
    assert_eq!(records.len(), 3, "one final record per trial, none twice: {records:#?}");
    assert_eq!(trial(&records, "run::any_text"), &first, "the finished trial is kept as it was");
    for tail in ["run::arithmetic", "run::sampled"] {
        let r = trial(&records, tail);
        assert!(!r.unfinished && r.outcome != Outcome::Crashed, "{r:?}");
    }

    let out = fx.qualify("nothing-here", &["::run::"], &[("QUALIFY_RESUME", "nothing-here")]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot resume"), "{}", stderr(&out));
}

/// A playbook whose engine is a shell command answering "What is 2+2?" with 4, except every
/// fifth call (counted in `counter`), which answers 5: an engine right 80% of the time.
fn eighty_percent_playbook(counter: &Path, repeat: &str) -> String {
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; if [ $((n % 5)) -eq 0 ]; then echo 5; else echo 4; fi",
        c = counter.display()
    );
    format!(
        r#"
playbook: 1
family: flaky
failure_policy: collect-all
engine:
  kind: command
  args: [sh, -c, '{script}', sh, '{{prompt}}']
tiers:
  smoke:
    formats: [safetensors]
    backends: [cpu]
    modalities: [run]
    scenario_count: 1
models:
  - id: test/tiny
    path: model
scenarios:
  - name: arithmetic
    prompt: "What is 2+2?"
    max_tokens: 8
    oracles: [arithmetic]
    repeat: {repeat}
"#
    )
}

#[test]
fn repeats_catch_an_engine_right_four_times_in_five_and_name_it_flaky() {
    let probe = tempfile::tempdir().expect("tempdir");
    let counter = probe.path().join("calls");
    // At `repeat: 5` (every run must pass) the wrong fifth answer is caught whichever call the
    // trial starts on.
    for start in 0..5 {
        std::fs::write(&counter, start.to_string()).expect("counter");
        let fx = Fixture::new(&eighty_percent_playbook(&counter, "5"));
        let run = format!("all{start}");
        let out = fx.qualify(&run, &["::run::arithmetic"], &[]);
        assert_eq!(out.status.code(), Some(101), "{}\n{}", stdout(&out), stderr(&out));
        let r = trial(&fx.journal(&run), "run::arithmetic").clone();
        assert_eq!(r.outcome, Outcome::Falsified, "{r:?}");
        assert!(r.reason.starts_with("4 of 5 runs passed (the policy needs 5)"), "{}", r.reason);
    }
    // A majority is met, but the runs disagree: flaky, which is never a pass.
    std::fs::write(&counter, "0").expect("counter");
    let fx = Fixture::new(&eighty_percent_playbook(&counter, "{times: 5, pass: majority}"));
    let out = fx.qualify("majority", &["::run::arithmetic"], &[]);
    assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
    let r = trial(&fx.journal("majority"), "run::arithmetic").clone();
    assert_eq!((r.outcome, r.gate.as_str()), (Outcome::Flaky, "arithmetic"), "{r:?}");
    assert!(r.reason.contains("4 of 5 runs passed (the policy needs 3)"), "{}", r.reason);
    // Four runs never reach the wrong fifth call: every run passes, so the trial does.
    std::fs::write(&counter, "0").expect("counter");
    let fx = Fixture::new(&eighty_percent_playbook(&counter, "4"));
    let out = fx.qualify("clean", &["::run::arithmetic"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = trial(&fx.journal("clean"), "run::arithmetic").clone();
    assert_eq!(r.outcome, Outcome::Corroborated, "{r:?}");
    assert!(r.reason.starts_with("4 of 4 runs passed"), "{}", r.reason);
}

/// A playbook whose engine is a shell command that multiplies the two numbers of the question,
/// except every `wrong_every`-th call (counted in `counter`), which answers one more; its one
/// scenario is a property of 100 products with the given `pass_rate` line.
fn rate_playbook(counter: &Path, wrong_every: u32, pass_rate: &str) -> String {
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; set -- $(echo \"$1\" | tr -c 0-9 \" \"); \
         if [ $((n % {wrong_every})) -eq 0 ]; then echo $(($1*$2+1)); else echo $(($1*$2)); fi",
        c = counter.display()
    );
    format!(
        r#"
playbook: 1
family: rates
failure_policy: collect-all
engine:
  kind: command
  args: [sh, -c, '{script}', sh, '{{prompt}}']
tiers:
  smoke:
    formats: [safetensors]
    backends: [cpu]
    modalities: [run]
models:
  - id: test/tiny
    path: model
scenarios:
  - name: products
    property: {{arithmetic: {{ops: ["*"], operands: [0, 20]}}}}
    count: 100
    max_tokens: 8
    oracles: [arithmetic]
    {pass_rate}
"#
    )
}

#[test]
fn a_property_pass_rate_is_judged_by_an_exact_binomial_test() {
    let probe = tempfile::tempdir().expect("tempdir");
    let counter = probe.path().join("calls");
    let judge = |wrong_every: u32, pass_rate: &str, run: &str| {
        std::fs::write(&counter, "0").expect("counter");
        let fx = Fixture::new(&rate_playbook(&counter, wrong_every, pass_rate));
        let out = fx.qualify(run, &["::run::products"], &[]);
        let r = trial(&fx.journal(run), "run::products").clone();
        (out.status.code(), r)
    };
    // Right 95 times in 100 against a 90% rate: a pass, with n and the derived rule said.
    let (code, r) = judge(20, "pass_rate: 0.9", "fine");
    assert_eq!((code, r.outcome), (Some(0), Outcome::Corroborated), "{r:?}");
    for said in [
        "95 of 100 generated cases passed",
        "pass rate ≥ 90.0%",
        "fails at 83 or fewer of 100",
        "with 90% power",
    ] {
        assert!(r.reason.contains(said), "{said:?} not in {}", r.reason);
    }
    // Planted: right two times in three. Caught, and the first miss is named.
    let (code, r) = judge(3, "pass_rate: 0.9", "poor");
    assert_eq!((code, r.outcome), (Some(101), Outcome::Falsified), "{r:?}");
    assert!(r.reason.starts_with("67 of 100 generated cases passed"), "{}", r.reason);
    assert!(r.reason.contains("first miss"), "{}", r.reason);
    // Without a rate every case must pass: the 95% engine fails, shrunk to a minimal case.
    let (code, r) = judge(20, "", "strict");
    assert_eq!((code, r.outcome), (Some(101), Outcome::Falsified), "{r:?}");
    assert!(r.reason.contains("minimal failing case"), "{}", r.reason);
}

/// `QUALIFY_SHARD=k/n` splits the selected trials over `n` shards by model and backend: the
/// shards' lists together are the whole list, each trial on one shard, each model on a backend
/// never split (its formats share its ground-truth session); recorded times move the split; a
/// malformed shard is refused with the variable named.
#[test]
fn shards_partition_the_trials_by_model_and_backend() {
    let models: String = (0..6).map(|i| format!("  - id: test/m{i}\n    path: model\n")).collect();
    let fx = Fixture::new(&PLAYBOOK.replace("  - id: test/tiny\n    path: model\n", &models));
    let list = |env: &[(&str, &str)]| -> Vec<String> {
        let out = fx.qualify("list", &["--list", "--format", "terse"], env);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().map(|l| l.trim_end_matches(": test").to_string()).collect()
    };
    let all = list(&[]);
    assert_eq!(all.len(), 6 * 27);
    let none = fx.path().join("no-times");
    let mut seen: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for k in 1..=4 {
        let shard = format!("{k}/4");
        let part = list(&[("QUALIFY_SHARD", &shard), ("QUALIFY_SHARD_TIMES", none.to_str().unwrap())]);
        for name in &part {
            let group = name
                .split("::")
                .take(3)
                .chain(name.split("::").skip(4).take(1))
                .collect::<Vec<_>>()
                .join("::");
            assert_eq!(*groups.entry(group.clone()).or_insert(k), k, "{group} split over shards");
        }
        seen.extend(part);
    }
    seen.sort();
    assert_eq!(seen, all, "the shards together list every trial once");
    // Six models and two backends: twelve groups. The GPU trials of a build without `cuda` are
    // ignored and cost nothing, so the six CPU groups are what is balanced: one or two a shard.
    assert_eq!(groups.len(), 12);
    for k in 1..=4 {
        let cpu = groups.iter().filter(|(g, s)| **s == k && g.ends_with("::cpu")).count();
        assert!((1..=2).contains(&cpu), "shard {k}: {groups:?}");
    }

    let out = fx.qualify("bad", &["--list"], &[("QUALIFY_SHARD", "5/4")]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid QUALIFY_SHARD=\"5/4\""), "{}", stderr(&out));
}

/// Two models over the same files, safetensors and APR on CPU, one scenario: each APR
/// differential needs both of its model's sessions at once.
fn two_model_playbook() -> String {
    let models: String = (0..2).map(|i| format!("  - id: test/m{i}\n    path: model\n")).collect();
    PLAYBOOK.replace("  - id: test/tiny\n    path: model\n", &models).replace(
        "    backends: [cpu, gpu]\n    scenario_count: 3\n",
        "    formats: [safetensors, apr]\n    backends: [cpu]\n    scenario_count: 1\n",
    )
}

#[test]
fn a_run_within_a_tight_memory_budget_keeps_every_verdict_and_past_it_trials_are_ignored() {
    use modelqa::support::engine::estimate_footprint;
    use modelqa::support::matrix::Format;
    let fx = Fixture::new(&two_model_playbook());
    let dir = fx.path().join("model");
    let pair = estimate_footprint(&dir, Format::Safetensors, None).unwrap().bytes()
        + estimate_footprint(&dir, Format::Apr, None).unwrap().bytes();
    let outcomes = |run: &str| -> BTreeMap<String, Outcome> {
        fx.journal(run).into_iter().filter(|r| !r.unfinished).map(|r| (r.trial, r.outcome)).collect()
    };

    let free = fx.qualify("free", &["--test-threads", "2"], &[("QUALIFY_MEMORY_BUDGET", "unlimited")]);
    assert!(
        stderr(&free).contains("memory: the sessions loaded at once held at most an estimated"),
        "{}",
        stderr(&free)
    );
    // A check that reads the APR file holds it twice (read, then copied out) beside the ground
    // truth's weights; the file's size is in the records.
    let size = |suffix: &str| -> u64 {
        fx.journal("free")
            .iter()
            .flat_map(|r| r.model_files.clone())
            .find(|f| f.path.to_string_lossy().ends_with(suffix))
            .map_or(0, |f| f.bytes)
    };
    let reading = size(".safetensors") + 2 * size(".apr");
    assert!(reading > 0);
    // Room for one model's two sessions, or for one check reading the APR: the models take
    // turns, and nothing changes.
    let budget = pair.max(reading).to_string();
    let tight = fx.qualify("tight", &["--test-threads", "2"], &[("QUALIFY_MEMORY_BUDGET", &budget)]);
    assert_eq!(tight.status.code(), free.status.code(), "{}", stderr(&tight));
    let (free_outcomes, tight_outcomes) = (outcomes("free"), outcomes("tight"));
    assert!(free_outcomes.len() > 40, "{}", free_outcomes.len());
    assert_eq!(tight_outcomes, free_outcomes, "the budget changed a verdict");
    assert!(stderr(&tight).contains("(QUALIFY_MEMORY_BUDGET)"), "{}", stderr(&tight));
    assert!(!stderr(&tight).contains("ignored"), "{}", stderr(&tight));

    // Room for one session but not a pair: the APR differentials are ignored with the reason,
    // the checks reading the APR are not run, saying why, and the rest keep their verdicts.
    let one = (pair * 3 / 4).to_string();
    let short = fx.qualify("short", &["--test-threads", "2"], &[("QUALIFY_MEMORY_BUDGET", &one)]);
    let err = stderr(&short);
    assert!(
        err.contains("test/m0 needs an estimated")
            && err.contains("apr ")
            && err.contains("+ safetensors ")
            && err.contains("(QUALIFY_MEMORY_BUDGET)"),
        "{err}"
    );
    let short_records: Vec<EvidenceRecord> =
        fx.journal("short").into_iter().filter(|r| !r.unfinished).collect();
    assert!(short_records.iter().all(|r| !r.trial.contains("::apr::cpu::diff::logits")));
    let mut not_run = 0;
    for r in &short_records {
        if r.outcome == Outcome::Skipped {
            assert!(
                r.trial.contains("::apr::") && r.reason.contains("memory budget"),
                "{}: {}",
                r.trial,
                r.reason
            );
            not_run += 1;
        } else {
            assert_eq!(Some(&r.outcome), free_outcomes.get(&r.trial), "{}", r.trial);
        }
    }
    assert!(not_run > 0 && short_records.len() < free_outcomes.len());

    // Nothing fits: the trials that load sessions are ignored, and those that only read files
    // are not run either, each saying so.
    let none = fx.qualify("none", &["--test-threads", "2"], &[("QUALIFY_MEMORY_BUDGET", "1KiB")]);
    assert!(
        stderr(&none).contains("past the memory budget of 1.0 KiB (QUALIFY_MEMORY_BUDGET)"),
        "{}",
        stderr(&none)
    );
    let ran: Vec<EvidenceRecord> = fx.journal("none").into_iter().filter(|r| !r.unfinished).collect();
    assert!(ran.iter().any(|r| r.trial.ends_with("::gate::g0-integrity")));
    for r in &ran {
        assert!(r.metrics.load_ms.is_none(), "{} loaded a session", r.trial);
        assert_eq!(r.outcome, Outcome::Skipped, "{}", r.trial);
        assert!(r.reason.contains("past the memory budget of 1.0 KiB"), "{}", r.reason);
    }

    let bad = fx.qualify("bad", &["--list"], &[("QUALIFY_MEMORY_BUDGET", "12 parsecs")]);
    assert_eq!(bad.status.code(), Some(4), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("invalid QUALIFY_MEMORY_BUDGET"), "{}", stderr(&bad));
}

#[test]
fn dim_smoke_checks_a_sibling_by_its_files_and_its_certified_representative() {
    let playbook =
        PLAYBOOK.replace("  smoke:\n    backends: [cpu, gpu]\n    scenario_count: 3\n", "  dim-smoke: {}\n");
    let fx = Fixture::new(&playbook);
    let listed = fx.qualify("list", &["--list"], &[]);
    assert_eq!(
        stdout(&listed).lines().collect::<Vec<_>>(),
        [
            "e2e::dim-smoke::tiny::safetensors::cpu::gate::g0-integrity: test",
            "e2e::dim-smoke::tiny::safetensors::cpu::gate::kernel-class: test"
        ],
        "{}",
        stderr(&listed)
    );
    // The representative: a smaller model of the same architecture, certified (as `cargo xtask
    // certify` writes what the check reads) by this build of the harness.
    let rep = fx.path().join("rep");
    let shape = TestModelShape { hidden: 32, intermediate: 64, layers: 1, ..TestModelShape::default() };
    write_test_model(&rep, TestArchitecture::Llama, shape, 3).expect("representative");
    let certs = fx.path().join("certifications");
    let certify = |fingerprint: &str| {
        let dir = certs.join("test-rep");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mqs.json"), r#"{"tier": "mvp", "mqs": 800, "status": "PROVISIONAL"}"#)
            .unwrap();
        let config = rep.join("config.json");
        let sha256 = modelqa::support::format::files::hash_file(&config).unwrap().sha256;
        let evidence = serde_json::json!({
            "model_id": "test/rep", "harness_fingerprint": fingerprint,
            "records": [{"format": "safetensors", "model_files": [{"path": config, "sha256": sha256}]}]
        });
        std::fs::write(dir.join("evidence.json"), evidence.to_string()).unwrap();
    };
    let certs_env = certs.to_str().unwrap();

    let alone = fx.qualify("alone", &[], &[("QUALIFY_CERTIFICATIONS", certs_env)]);
    assert_eq!(alone.status.code(), Some(101), "no representative: {}", stderr(&alone));
    assert!(stdout(&alone).contains("has no current certification"), "{}", stdout(&alone));

    certify(modelqa::support::config::HARNESS_FINGERPRINT);
    let out = fx.qualify("vouched", &[], &[("QUALIFY_CERTIFICATIONS", certs_env)]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let records = fx.journal("vouched");
    assert_eq!(records.len(), 2);
    let class =
        records.iter().find(|r| r.trial.ends_with("::kernel-class")).expect("the kernel-class record");
    assert_eq!(class.gate, "kernel_class");
    assert!(class.reason.contains("proven by test/rep (PROVISIONAL at mvp, MQS 800"), "{}", class.reason);
    assert!(class.reason.contains("hidden_size 64 (32 there)"), "{}", class.reason);

    certify("feedfacefeedface");
    let stale = fx.qualify("stale", &[], &[("QUALIFY_CERTIFICATIONS", certs_env)]);
    assert_eq!(stale.status.code(), Some(101));
    assert!(
        stdout(&stale).contains("certified by another harness build (feedfacefeed…)"),
        "{}",
        stdout(&stale)
    );

    // A dim-smoke tier runs no scenarios: setting them is refused where it is written.
    let fx = Fixture::new(&PLAYBOOK.replace(
        "  smoke:\n    backends: [cpu, gpu]\n    scenario_count: 3\n",
        "  dim-smoke:\n    modalities: [chat]\n",
    ));
    let refused = fx.qualify("refused", &["--list"], &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("`modalities` cannot be set"), "{}", stderr(&refused));
}
