//! `cargo xtask fuzz` catches what it exists to catch: a planted panic, abort and hang are each
//! counted, saved and reported with a failing exit; a clean run of the same target passes.

use std::path::Path;
use std::process::{Command, Output};

fn fuzz(crashes: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fuzz", "--target", "journal", "--inputs", "200", "--seed", "7", "--hang-seconds", "1"])
        .arg("--crashes")
        .arg(crashes)
        .args(extra)
        .output()
        .expect("the xtask runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The saved inputs of the journal target, by kind.
fn saved(crashes: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(crashes.join("journal")) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().split('-').next().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn a_clean_target_passes_and_saves_nothing() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = fuzz(dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("| journal | 200 |"), "{}", text(&out));
    assert!(saved(dir.path()).is_empty());
}

#[test]
fn a_planted_panic_abort_hang_and_oversized_allocation_are_each_caught_saved_and_failed() {
    // An allocation past the worker's address-space limit fails, which Rust answers with an
    // abort: it is counted, and saved, as one.
    for (kind, column, saved_as) in
        [("panic", 5, "panic"), ("abort", 6, "abort"), ("hang", 7, "hang"), ("alloc", 6, "abort")]
    {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let out = fuzz(dir.path(), &["--plant", kind, "--memory-mib", "512"]);
        assert!(!out.status.success(), "{kind}: {}", text(&out));
        let all = text(&out);
        let row = all.lines().find(|l| l.starts_with("| journal |")).unwrap_or_else(|| panic!("{all}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[column], "1", "{kind}: {row}");
        // The run went on after the fault: every input was run.
        assert_eq!(cells[2], "200", "{kind}: {row}");
        assert_eq!(saved(dir.path()), [saved_as], "{kind}: {all}");
    }
}

#[test]
fn list_names_every_target_and_replay_runs_one_input() {
    let list = Command::new(env!("CARGO_BIN_EXE_xtask")).args(["fuzz", "--list"]).output().expect("runs");
    assert!(list.status.success(), "{}", text(&list));
    for target in ["playbook", "journal", "server-request", "gguf", "safetensors", "apr", "model-config"] {
        assert!(text(&list).lines().any(|l| l.starts_with(target)), "{target} missing: {}", text(&list));
    }
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/journal/hostile-trial-name.jsonl");
    let replay = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fuzz", "--target", "journal", "--replay"])
        .arg(&input)
        .output()
        .expect("runs");
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(text(&replay).contains("returned in"), "{}", text(&replay));
    // A replay needs exactly one target.
    let two = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fuzz", "--target", "journal", "--target", "playbook", "--replay"])
        .arg(&input)
        .output()
        .expect("runs");
    assert!(
        !two.status.success() && text(&two).contains("--replay needs exactly one --target"),
        "{}",
        text(&two)
    );
}
