//! Unit tests of `mqs.rs`, kept apart so the module reads as its rules.
use proptest::prelude::*;

use super::*;
use crate::journal::test_record;

fn record(i: usize, gate: &str, category: Category, outcome: Outcome) -> EvidenceRecord {
    test_record("m", "safetensors", &format!("s{i}"), gate, category, outcome)
}

/// Every gateway passed once, then `n` trials in each category, all passing.
fn clean(n: usize) -> Vec<EvidenceRecord> {
    let mut out: Vec<EvidenceRecord> = GATEWAYS
        .iter()
        .enumerate()
        .map(|(i, g)| record(i, g, Category::Stab, Outcome::Corroborated))
        .collect();
    for (k, c) in Category::ALL.iter().enumerate() {
        for j in 0..n {
            out.push(record(100 + k * n + j, "oracles", *c, Outcome::Corroborated));
        }
    }
    out
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Corroborated),
        1 => Just(Outcome::Falsified),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::Crashed),
        1 => Just(Outcome::Skipped),
        1 => Just(Outcome::Flaky),
    ]
}

fn evidence() -> impl Strategy<Value = (Vec<EvidenceRecord>, usize, String)> {
    let gate = prop_oneof![
        Just("oracles"),
        Just("G0"),
        Just("G1"),
        Just("G2"),
        Just("G3"),
        Just("G4"),
        Just("REGR")
    ];
    let category = prop::sample::select(Category::ALL.to_vec());
    let tier = prop::sample::select(vec!["smoke", "mvp", "quick", "standard", "deep"]);
    (prop::collection::vec((gate, category, outcome()), 1..60), 0usize..80, tier).prop_map(
        |(rows, extra, tier)| {
            let records: Vec<EvidenceRecord> =
                rows.into_iter().enumerate().map(|(i, (g, c, o))| record(i, g, c, o)).collect();
            let planned = records.len() + extra;
            (records, planned, tier.to_string())
        },
    )
}

proptest! {
    #[test]
    fn score_stays_within_bounds((records, planned, tier) in evidence()) {
        let s = score(&tier, &records, planned);
        prop_assert!(s.mqs <= 1000);
        prop_assert!((0.0..=1000.0).contains(&s.raw));
        prop_assert!((0.0..=1.0).contains(&s.coverage));
        prop_assert_eq!(s.grade.as_str(), grade(s.mqs));
    }

    #[test]
    fn turning_a_pass_into_a_failure_never_raises_the_score(
        (records, planned, tier) in evidence(),
        pick in any::<prop::sample::Index>(),
        bad in prop_oneof![Just(Outcome::Falsified), Just(Outcome::Timeout), Just(Outcome::Crashed), Just(Outcome::Skipped)],
    ) {
        let passes: Vec<usize> = (0..records.len()).filter(|&i| records[i].outcome.is_pass()).collect();
        prop_assume!(!passes.is_empty());
        let before = score(&tier, &records, planned);
        let mut worse = records.clone();
        worse[passes[pick.index(passes.len())]].outcome = bad;
        let after = score(&tier, &worse, planned);
        prop_assert!(after.mqs <= before.mqs, "{} -> {}", before.mqs, after.mqs);
        prop_assert!(after.raw <= before.raw);
    }

    #[test]
    fn any_gateway_failure_gives_zero(
        (mut records, planned, tier) in evidence(),
        g in prop::sample::select(GATEWAYS.to_vec()),
        bad in prop_oneof![Just(Outcome::Falsified), Just(Outcome::Timeout), Just(Outcome::Crashed)],
    ) {
        let n = records.len();
        records.push(record(n, g, Category::Stab, bad));
        let s = score(&tier, &records, planned + 1);
        prop_assert_eq!(s.mqs, 0);
        prop_assert_eq!(s.status, Status::Blocked);
        prop_assert_eq!(s.gateways[g], GatewayState::Failed);
    }

    #[test]
    fn skipped_trials_never_count_as_passes((records, planned, tier) in evidence()) {
        let s = score(&tier, &records, planned);
        let passed: usize = s.categories.iter().map(|c| c.passed).sum();
        prop_assert_eq!(passed, records.iter().filter(|r| r.outcome == Outcome::Corroborated).count());
        prop_assert!(s.covered <= records.iter().filter(|r| r.outcome != Outcome::Skipped).count());
    }
}

#[test]
fn a_flaky_trial_is_counted_and_never_a_pass() {
    let mut records = clean(10);
    let full = score("deep", &records, records.len());
    let i = records
        .iter()
        .position(|r| r.category() == Category::Qual && r.gate.gateway().is_none())
        .expect("a scenario");
    records[i].outcome = Outcome::Flaky;
    let flaky = score("deep", &records, records.len());
    assert_eq!(flaky.flaky, 1);
    assert!(flaky.mqs < full.mqs, "{} vs {}", flaky.mqs, full.mqs);
    assert_eq!(flaky.gateways["G2"], GatewayState::Passed, "a flaky scenario is not a gateway failure");
}

#[test]
fn a_clean_full_tier_certifies_and_a_clean_mvp_is_provisional() {
    let records = clean(10);
    let full = score("deep", &records, records.len());
    assert_eq!((full.mqs, full.grade.as_str(), full.status), (1000, "A+", Status::Certified));
    let mvp = score("mvp", &records, records.len());
    assert_eq!((mvp.mqs, mvp.grade.as_str(), mvp.status), (800, "B", Status::Provisional));
}

#[test]
fn an_unmeasured_category_earns_nothing_and_is_shown() {
    let records: Vec<_> = clean(10).into_iter().filter(|r| r.category() != Category::Perf).collect();
    let s = score("deep", &records, records.len());
    let perf = s.categories.iter().find(|c| c.category == Category::Perf).expect("perf row");
    assert_eq!(perf.points, None);
    assert_eq!(s.raw, 850.0);
    assert_eq!(s.status, Status::Blocked, "85% is below the 90% threshold");
    assert_eq!(s.mqs, 594);
}

#[test]
fn coverage_below_the_tier_keeps_it_pending() {
    let records = clean(10);
    let s = score("deep", &records, records.len() * 2);
    assert_eq!(s.status, Status::Pending);
    assert!(s.verdict.contains("needs 90%"), "{}", s.verdict);
    assert_eq!(s.mqs, 1000, "the score is still reported");
}

#[test]
fn a_crash_anywhere_fails_g3_and_timeouts_cost_points() {
    let mut records = clean(10);
    records[10].outcome = Outcome::Timeout;
    let s = score("deep", &records, records.len());
    assert_eq!(s.timeouts, 1);
    assert!((s.raw - (1000.0 - 200.0 / 10.0 - TIMEOUT_PENALTY)).abs() < 1e-9, "{}", s.raw);
    records[11].outcome = Outcome::Crashed;
    let s = score("deep", &records, records.len());
    assert_eq!(s.gateways["G3"], GatewayState::Failed);
    assert_eq!((s.mqs, s.status), (0, Status::Blocked));
}

#[test]
fn tier_mapping_matches_the_published_bands() {
    for (class, q, want) in [
        (TierClass::Mvp, 0.95, (800, Status::Provisional)),
        (TierClass::Mvp, 0.899, (628, Status::Blocked)),
        (TierClass::Full, 1.0, (1000, Status::Certified)),
        (TierClass::Full, 0.95, (950, Status::Certified)),
        (TierClass::Full, 0.925, (849, Status::Provisional)),
        (TierClass::Full, 0.90, (800, Status::Provisional)),
        (TierClass::Full, 0.5, (349, Status::Blocked)),
    ] {
        assert_eq!(tier_score(class, q), want, "{class:?} {q}");
    }
    for (mqs, g) in [(1000, "A+"), (950, "A+"), (949, "A"), (850, "B+"), (800, "B"), (700, "C"), (699, "F")] {
        assert_eq!(grade(mqs), g);
    }
}

fn planned(cpu: usize, gpu: usize, categories: &[Category]) -> Planned {
    Planned {
        total: cpu + gpu,
        by_backend: [("cpu".to_string(), cpu), ("gpu".to_string(), gpu)].into_iter().collect(),
        by_category: categories.iter().map(|c| (*c, 1)).collect(),
    }
}

#[test]
fn a_backend_without_evidence_is_out_of_scope_not_a_pass_or_a_failure() {
    let records = clean(4);
    let n = records.len();
    let s = score_in_scope("mvp", &records, &planned(n, n, &Category::ALL));
    assert_eq!(s.scope, ["cpu"]);
    assert!(
        s.not_covered["gpu"].starts_with(&format!("no evidence: its {n} planned trials")),
        "{:?}",
        s.not_covered
    );
    // Coverage is counted within the scope: all of the cpu plan.
    assert_eq!((s.planned, s.covered), (n, n));
    assert_eq!((s.mqs, s.status), (800, Status::Provisional));
    assert!(s.verdict.ends_with("; scope cpu only: gpu not covered"), "{}", s.verdict);
    assert_eq!(s.scoped_status(), "PROVISIONAL (cpu)");
    // The plain score of the same evidence over the whole plan stays pending.
    assert_eq!(score("mvp", &records, 2 * n).status, Status::Pending);
}

#[test]
fn a_backend_with_any_evidence_is_in_scope_and_counts_whole() {
    let mut records = clean(4);
    let n = records.len();
    let mut gpu = record(999, "G1", Category::Stab, Outcome::Falsified);
    gpu.backend = "gpu".into();
    records.push(gpu);
    let s = score_in_scope("mvp", &records, &planned(n, n, &Category::ALL));
    assert_eq!(s.scope, ["cpu", "gpu"]);
    assert!(s.not_covered.is_empty());
    assert_eq!(s.planned, 2 * n);
    assert_eq!(s.status, Status::Blocked, "{}", s.verdict);
    assert_eq!(s.scoped_status(), "BLOCKED");
}

#[test]
fn nothing_run_scores_the_whole_plan_and_a_missing_category_is_named() {
    let s = score_in_scope("mvp", &[], &planned(10, 10, &[Category::Qual, Category::Stab]));
    assert!(s.scope.is_empty());
    assert_eq!((s.planned, s.status), (20, Status::Pending));
    let lacking: Vec<&str> = s.lacks.iter().map(|l| l.split(' ').next().unwrap_or("")).collect();
    assert_eq!(lacking, ["PERF", "COMP", "EDGE", "REGR"]);
    assert!(
        s.lacks[2].contains("add a scenario marked `edge: true` or made by the `edge_cases` generator"),
        "{:?}",
        s.lacks
    );
    assert!(s.verdict.ends_with("; the playbook plans nothing for PERF, COMP, EDGE, REGR"), "{}", s.verdict);
    // Evidence recorded before plans were itemised names nothing it cannot know.
    let old = Planned { total: 20, ..Default::default() };
    let s = score_in_scope("mvp", &[], &old);
    assert!(s.lacks.is_empty() && s.not_covered.is_empty());
}

#[test]
fn a_category_judged_only_unstable_waits_instead_of_blocking() {
    let mut records = clean(3);
    let perf: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.category == Some(Category::Perf))
        .map(|(i, _)| i)
        .collect();
    for &i in &perf {
        records[i].outcome = Outcome::Unstable;
    }
    let s = score("mvp", &records, records.len() - perf.len());
    assert_eq!(s.status, Status::Pending, "{}", s.verdict);
    assert!(s.verdict.starts_with("3 PERF trials measured but too noisy to judge"), "{}", s.verdict);
    // One judged PERF trial is enough to score the category on what was judged.
    records[perf[0]].outcome = Outcome::Corroborated;
    let s = score("mvp", &records, records.len() - perf.len() + 1);
    assert_eq!(s.status, Status::Provisional, "{}", s.verdict);
}
