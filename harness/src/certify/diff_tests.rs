use super::*;
use crate::journal::{Metrics, test_record};
use crate::vocab::{Category, Outcome};

fn record(model: &str, format: &str, scenario: &str, outcome: Outcome, kl: Option<f64>) -> EvidenceRecord {
    let mut r = test_record(model, format, scenario, "arithmetic", Category::Qual, outcome);
    r.reason = format!("{outcome:?}");
    r.metrics = Metrics { mean_kl: kl, ..Metrics::default() };
    r
}

/// A run: `scenarios` passing trials per format of model `m`, and a KL figure per format.
fn run(model: &str, scenarios: usize, kl_scale: f64) -> Vec<EvidenceRecord> {
    let mut out = Vec::new();
    for (i, format) in
        ["gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m", "gguf-q4_0"].iter().enumerate()
    {
        for s in 0..scenarios {
            out.push(record(model, format, &format!("s{s}"), Outcome::Corroborated, None));
        }
        out.push(record(
            model,
            format,
            "logits",
            Outcome::Corroborated,
            Some(0.01 * (i + 1) as f64 * kl_scale),
        ));
    }
    out
}

#[test]
fn identical_runs_give_an_empty_diff() {
    let a = run("m", 30, 1.0);
    let d = diff(&a, &a.clone(), 0.05).expect("pairs");
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(d.paired, 155);
    assert!(markdown(&d, "a", "b").contains("No difference: 155 paired trials"));
}

#[test]
fn a_planted_flip_is_named_and_many_are_beyond_noise() {
    let a = run("m", 30, 1.0);
    // One flip: named, but one discordant pair is no evidence (p = 1).
    let mut b = a.clone();
    b[3].outcome = Outcome::Falsified;
    let d = diff(&a, &b, 0.05).expect("pairs");
    assert_eq!(d.flips.len(), 1);
    assert!(d.flips[0].regressed && d.flips[0].trial == a[3].trial, "{:?}", d.flips);
    assert_eq!(d.regressions().count(), 0, "{:?}", d.verdicts);
    let md = markdown(&d, "a", "b");
    assert!(md.contains(&format!("`{}`", a[3].trial)), "{md}");
    // Eight of q8_0's 31 trials fail after: McNemar p = 2 × 0.5⁸ = 0.0078, beyond noise, named
    // with its model, format and category.
    let mut b = a.clone();
    for r in b.iter_mut().filter(|r| r.format == "gguf-q8_0").take(8) {
        r.outcome = Outcome::Falsified;
    }
    let d = diff(&a, &b, 0.05).expect("pairs");
    let regressed: Vec<&VerdictShift> = d.regressions().collect();
    assert_eq!(regressed.len(), 1, "{:?}", d.verdicts);
    let v = regressed[0];
    assert_eq!((v.model.as_str(), v.format.as_str(), v.category.as_str()), ("m", "gguf-q8_0", "QUAL"));
    assert!((v.p - 2.0 * 0.5f64.powi(8)).abs() < 1e-12, "{}", v.p);
    let md = markdown(&d, "a", "b");
    assert!(md.contains("| m | gguf-q8_0 | QUAL | 8 | 0 | 31 | 0.008 |"), "{md}");
}

#[test]
fn a_planted_doubling_of_kl_is_named_with_its_p_value() {
    let a = run("m", 2, 1.0);
    let b = run("m", 2, 2.0);
    let d = diff(&a, &b, 0.05).expect("pairs");
    assert!(d.flips.is_empty());
    let shifts: Vec<&MetricShift> = d.metric_regressions().collect();
    assert_eq!(shifts.len(), 1, "{:?}", d.metrics);
    let m = shifts[0];
    assert_eq!((m.metric, m.cells), (Metric::MeanKl, 5));
    assert!((m.ratio - 2.0).abs() < 1e-9 && m.p < 0.05, "{m:?}");
    assert!(markdown(&d, "a", "b").contains("| m | mean KL | 5 | ×2.000 |"));
    // The HTML section plots the regressed metric: a red bar per cell, each at ×2.
    let page = html(&d, "a", "b");
    assert_eq!(page.matches("<figure>").count(), 1, "{page}");
    assert!(page.contains("m — mean KL: ×2.000") && page.contains("beyond noise) over 5 cells"), "{page}");
    assert_eq!(page.matches("fill=\"#dc2626\"").count(), 5, "{page}");
    assert_eq!(page.matches(">×2.000</text>").count(), 5, "{page}");
    assert!(html(&diff(&a, &a.clone(), 0.05).expect("pairs"), "a", "a").contains("No difference"));
    // Noise that goes both ways is not a shift.
    let mut c = a.clone();
    for (i, r) in c.iter_mut().filter(|r| r.metrics.mean_kl.is_some()).enumerate() {
        r.metrics.mean_kl = r.metrics.mean_kl.map(|k| k * if i % 2 == 0 { 1.1 } else { 1.0 / 1.1 });
    }
    let d = diff(&a, &c, 0.05).expect("pairs");
    assert_eq!(d.metric_regressions().count(), 0, "{:?}", d.metrics);
}

#[test]
fn two_models_pair_by_cell_and_mismatched_sets_are_refused() {
    let a = run("m-v1", 3, 1.0);
    let b = run("m-v2", 3, 1.0);
    let d = diff(&a, &b, 0.05).expect("one model against one");
    assert_eq!((d.paired, d.flips.len()), (20, 0));
    let mut both = a.clone();
    both.extend(b.clone());
    assert!(matches!(diff(&both, &b, 0.05), Err(DiffError::Models { .. })));
    assert_eq!(diff(&[], &b, 0.05), Err(DiffError::Empty("first")));
}

#[test]
fn mcnemar_is_exact() {
    assert_eq!(mcnemar(0, 0), 1.0);
    assert!((mcnemar(5, 0) - 0.0625).abs() < 1e-12);
    assert!((mcnemar(3, 3) - 1.0).abs() < 1e-12);
}

#[test]
fn many_cells_use_the_normal_approximation_of_the_same_test() {
    let shifted: Vec<f64> = (0..500).map(|i| 0.05 + 0.01 * ((i % 7) as f64 - 3.0)).collect();
    assert!(bootstrap_p(&shifted) < 1e-6);
    let centred: Vec<f64> = (0..500).map(|i| 0.01 * ((i % 7) as f64 - 3.0)).collect();
    assert!(bootstrap_p(&centred) > 0.5, "{}", bootstrap_p(&centred));
    // Near the switch both ways agree on a borderline shift.
    let border: Vec<f64> = (0..NORMAL_FROM).map(|i| 0.002 + 0.01 * ((i % 7) as f64 - 3.0)).collect();
    let normal = bootstrap_p(&border);
    let resampled = bootstrap_p(&border[..NORMAL_FROM - 1]);
    assert!((normal - resampled).abs() < 0.05, "{normal} {resampled}");
}
