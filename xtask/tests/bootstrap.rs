//! `cargo xtask bootstrap`: a playbook written from a model's own files loads, expects what the
//! model's config.json says, runs `run` only where the model ships no chat template, and is never
//! written over without `--force`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A playbooks folder holding the project's templates and no family.
fn playbooks() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("templates")).expect("mkdir");
    for e in std::fs::read_dir(root().join("playbooks/templates")).expect("templates") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dir.path().join("templates").join(e.file_name())).expect("copy");
    }
    dir
}

fn bootstrap(playbooks: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("bootstrap")
        .args(args)
        .env("QUALIFY_PLAYBOOKS", playbooks)
        .output()
        .expect("the xtask runs")
}

fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_zoo_model_gets_a_playbook_that_loads_and_expects_its_config() {
    let pb = playbooks();
    let model = root().join("fixtures/zoo/qwen2");
    let out =
        bootstrap(pb.path(), &[model.to_str().expect("utf-8"), "--tier", "mvp", "--family", "zoo-qwen2"]);
    assert!(out.status.success(), "{}", said(&out));
    let text = std::fs::read_to_string(pb.path().join("families/zoo-qwen2.yaml")).expect("written");
    for want in [
        "family: \"zoo-qwen2\"",
        "extends: [../templates/core-scenarios.yaml]",
        "architecture: \"qwen2\"",
        "mvp: {}",
        "hidden_size: 64",
        "num_kv_heads: 2",
        "context_length: 128",
        "rope_theta: 1000000",
        "rms_norm_eps: 1e-6",
        "eos_token_id: 0",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    // Never over an existing playbook without --force.
    let again = bootstrap(pb.path(), &[model.to_str().expect("utf-8"), "--family", "zoo-qwen2"]);
    assert!(!again.status.success());
    assert!(said(&again).contains("pass --force"), "{}", said(&again));
    let forced = bootstrap(
        pb.path(),
        &[model.to_str().expect("utf-8"), "--family", "zoo-qwen2", "--tier", "smoke", "--force"],
    );
    assert!(forced.status.success(), "{}", said(&forced));
}

#[test]
fn a_model_without_a_chat_template_runs_run_only_and_a_directory_without_config_is_refused() {
    let pb = playbooks();
    let copy = tempfile::tempdir().expect("tempdir");
    let model = copy.path().join("plain");
    std::fs::create_dir(&model).expect("mkdir");
    for e in std::fs::read_dir(root().join("fixtures/zoo/llama")).expect("zoo") {
        let e = e.expect("entry");
        if e.file_name() != "tokenizer_config.json" && e.path().is_file() {
            std::fs::copy(e.path(), model.join(e.file_name())).expect("copy");
        }
    }
    let out = bootstrap(pb.path(), &[model.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", said(&out));
    let text = std::fs::read_to_string(pb.path().join("families/plain.yaml")).expect("written");
    assert!(text.contains("mvp: {modalities: [run]}"), "{text}");
    assert!(text.contains("ships no chat template"), "{text}");
    // dim-smoke's matrix is fixed: nothing is written into its tier, and it loads back.
    let out = bootstrap(
        pb.path(),
        &[model.to_str().expect("utf-8"), "--tier", "dim-smoke", "--family", "plain-dims"],
    );
    assert!(out.status.success(), "{}", said(&out));
    let text = std::fs::read_to_string(pb.path().join("families/plain-dims.yaml")).expect("written");
    assert!(text.contains("dim-smoke: {}") && text.contains("G0 and the kernel class only"), "{text}");

    std::fs::remove_file(model.join("config.json")).expect("removed");
    let out = bootstrap(pb.path(), &[model.to_str().expect("utf-8"), "--family", "other"]);
    assert!(!out.status.success());
    assert!(said(&out).contains("has no config.json"), "{}", said(&out));
    let out = bootstrap(pb.path(), &["nobody/nothing-here"]);
    assert!(!out.status.success());
    assert!(said(&out).contains("nobody/nothing-here is not here"), "{}", said(&out));
}

#[test]
fn every_architecture_fixture_gets_a_playbook_whose_trials_list() {
    let pb = playbooks();
    let mut fixtures: Vec<PathBuf> = Vec::new();
    for dir in ["fixtures/zoo", "fixtures/qa-tiny"] {
        for e in std::fs::read_dir(root().join(dir)).expect("fixtures") {
            let path = e.expect("entry").path();
            if path.join("config.json").is_file() {
                fixtures.push(path);
            }
        }
    }
    fixtures.sort();
    assert!(fixtures.len() >= 19, "16 zoo architectures and qa-tiny's three: {fixtures:?}");
    for (i, model) in fixtures.iter().enumerate() {
        let family = format!("fx{i}");
        let out =
            bootstrap(pb.path(), &[model.to_str().expect("utf-8"), "--tier", "mvp", "--family", &family]);
        assert!(out.status.success(), "{}: {}", model.display(), said(&out));
    }
    // What `--list` lists: every family's trials, expanded from the written playbooks.
    let (playbooks, _) = modelqa::support::playbook::load_all(pb.path()).expect("the playbooks load");
    let plan = modelqa::support::expand::Plan::new(playbooks);
    for (i, model) in fixtures.iter().enumerate() {
        let filter = modelqa::support::expand::Filter {
            filter: Some(format!("fx{i}::mvp::")),
            exact: false,
            skip: Vec::new(),
        };
        assert!(plan.select(&filter).len() > 50, "{}: too few trials", model.display());
    }
}
