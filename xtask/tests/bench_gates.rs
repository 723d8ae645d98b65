//! `cargo xtask bench gates` measures what the README says on a small run: no false alarm on a
//! clean cell, and planted defects of the claimed sizes caught.

use std::process::Command;

#[test]
fn a_small_gate_bench_prints_its_table_with_no_false_alarm_and_defects_caught() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/qa-tiny/qa-tiny-llama");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "gates", "--model", model, "--formats", "gguf-q8_0", "--pool", "30", "--set", "15"])
        .args(["--reruns", "5", "--resamples", "12"])
        .output()
        .expect("the xtask runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let row = text
        .lines()
        .find(|l| l.starts_with("| qa-tiny-llama | gguf-q8_0 |"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("| 0 of 5 |"), "a false alarm on the clean cell: {row}");
    // The planted defects are caught in most sets (the full run measures ≥ 86%): the columns
    // are model, format, false alarms, decisive positions, top-1 claim, top-1 caught ("P% of
    // N"), KL claim, KL caught.
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let percent = |c: &str| c.split('%').next().and_then(|p| p.parse::<f64>().ok()).unwrap_or(-1.0);
    let (top1, kl) = (percent(cells[6]), percent(cells[8]));
    assert!(top1 >= 50.0 && kl >= 50.0, "top-1 {top1}%, KL {kl}%: {row}");
}
