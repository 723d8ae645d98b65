//! `cargo xtask diff` on the committed evidence: a model against itself is no difference and exit
//! 0; planted flips and a doubled KL are named beyond noise with their p-values and exit 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn evidence() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../certifications/qa-tiny-llama/evidence.json")
}

fn diff(a: &Path, b: &Path) -> Output {
    diff_with(a, b, &[])
}

fn diff_with(a: &Path, b: &Path, flags: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("diff")
        .arg(a)
        .arg(b)
        .args(flags)
        .output()
        .expect("the xtask runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_same_evidence_is_no_difference() {
    let out = diff(&evidence(), &evidence());
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(evidence()).expect("the evidence reads"))
            .expect("JSON");
    let n = records["records"].as_array().expect("records").len();
    assert!(stdout(&out).contains(&format!("No difference: {n} paired trials")), "{}", stdout(&out));
}

/// The committed evidence with eight passing QUAL trials of the APR cell failing and, with
/// `double_kl`, every logit differential's KL doubled, written to `dir/evidence.json`.
fn planted(dir: &Path, double_kl: bool) -> PathBuf {
    let mut e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(evidence()).expect("reads")).expect("json");
    let mut flipped = 0;
    for r in e["records"].as_array_mut().expect("records") {
        let trial = r["trial"].as_str().unwrap_or_default().to_string();
        if flipped < 8
            && trial.contains("::apr::cpu::")
            && r["category"] == "QUAL"
            && r["outcome"] == "corroborated"
        {
            r["outcome"] = "falsified".into();
            flipped += 1;
        }
        if let Some(kl) = r["metrics"]["mean_kl"].as_f64().filter(|_| double_kl) {
            r["metrics"]["mean_kl"] = (kl * 2.0 + 1e-3).into();
        }
    }
    assert_eq!(flipped, 8);
    let after = dir.join("evidence.json");
    std::fs::write(&after, e.to_string()).expect("writes");
    after
}

#[test]
fn planted_flips_and_a_doubled_kl_are_named_beyond_noise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("diff.html");
    let out = diff_with(&evidence(), &planted(dir.path(), true), &["--html", page.to_str().expect("utf-8")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("| qa-tiny-llama | apr | QUAL | 8 | 0 |"), "{text}");
    assert!(text.contains("0.008 |"), "McNemar's p for 8 against 0: {text}");
    assert!(text.contains("| qa-tiny-llama | mean KL |"), "{text}");
    // The HTML page plots the doubled KL: a figure with each cell's bar red, about ×2.
    let page = std::fs::read_to_string(&page).expect("the page");
    assert!(page.starts_with("<!doctype html>") && page.contains("qa-tiny-llama — mean KL: ×2.0"), "{page}");
    assert!(page.contains("<svg") && page.contains("fill=\"#dc2626\"") && page.contains(">×2.0"), "{page}");
    assert!(page.contains("<h3>Flipped trials</h3>"), "{page}");
}

#[test]
fn alpha_sets_what_is_beyond_noise_and_markdown_writes_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let after = planted(dir.path(), false);
    // McNemar's p for 8 against 0 is 0.0078: beyond noise at 0.05, not at 0.001.
    let report = dir.path().join("diff.md");
    let out = diff_with(&evidence(), &after, &["--markdown", report.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(std::fs::read_to_string(&report).expect("the report"), stdout(&out));
    let out = diff_with(&evidence(), &after, &["--alpha", "0.001"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("### Regressed beyond noise (p < 0.001)\n\nNothing."), "{}", stdout(&out));
    assert!(stdout(&out).contains("8 flipped"), "{}", stdout(&out));
}
