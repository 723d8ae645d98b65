//! The one definition of the Model Qualification Score (`docs/mqs.md`): gateways, categories,
//! penalties, the tier mapping, grades and statuses. Pure: records in, a [`Score`] out; it reads
//! no files and never looks at the clock.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::journal::EvidenceRecord;
use crate::vocab::{Category, Gate, Outcome};

/// The five gateways, in order, as the score names them.
pub const GATEWAYS: [&str; 5] = ["G0", "G1", "G2", "G3", "G4"];

/// What the evidence says of one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayState {
    Passed,
    Failed,
    /// No trial of this gateway ran (ignored, skipped or not planned).
    Unmeasured,
}

/// How far a tier can take a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierClass {
    /// A partial matrix (smoke, quick, mvp): at best 800, B, PROVISIONAL.
    Mvp,
    /// Every format, backend and modality (standard, deep): up to 1000, A+, CERTIFIED.
    Full,
}

/// The scoring rules of a tier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TierRules {
    pub class: TierClass,
    /// The share of the planned trials that must have evidence before the tier can certify.
    pub min_coverage: f64,
}

impl TierRules {
    /// The built-in tiers; any other tier name is a partial matrix that needs full coverage.
    pub fn of(tier: &str) -> TierRules {
        match tier {
            "standard" | "deep" => TierRules { class: TierClass::Full, min_coverage: 0.9 },
            "mvp" => TierRules { class: TierClass::Mvp, min_coverage: 0.9 },
            _ => TierRules { class: TierClass::Mvp, min_coverage: 1.0 },
        }
    }
}

/// Certification status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Certified,
    Provisional,
    Blocked,
    Pending,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Certified => "CERTIFIED",
            Status::Provisional => "PROVISIONAL",
            Status::Blocked => "BLOCKED",
            Status::Pending => "PENDING",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "CERTIFIED" => Status::Certified,
            "PROVISIONAL" => Status::Provisional,
            "BLOCKED" => Status::Blocked,
            "PENDING" => Status::Pending,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One category's evidence and points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryScore {
    pub category: Category,
    pub weight: u32,
    pub passed: usize,
    pub total: usize,
    /// `None` when the category has no evidence: it earns nothing and is shown as unmeasured.
    pub points: Option<f64>,
}

/// The full breakdown of a model's MQS for one tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub tier: String,
    pub tier_class: TierClass,
    /// 0–1000, the published score.
    pub mqs: u32,
    pub grade: String,
    pub status: Status,
    /// Why the status is what it is, in one sentence.
    pub verdict: String,
    pub gateways: BTreeMap<String, GatewayState>,
    pub categories: Vec<CategoryScore>,
    pub crashes: usize,
    pub timeouts: usize,
    pub penalty: f64,
    /// Category points less penalties, 0–1000, before gateways and the tier mapping.
    pub raw: f64,
    pub planned: usize,
    /// Planned trials with evidence (a skipped trial is not evidence).
    pub covered: usize,
    pub coverage: f64,
    pub min_coverage: f64,
    /// The backends the score speaks for: those with evidence. Empty in scores made before
    /// scopes were recorded, and when nothing ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Planned backends without evidence, each with why: the score says nothing about them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_covered: BTreeMap<String, String>,
    /// What the tier scores that the playbook plans no trial for, with what would add it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lacks: Vec<String>,
}

/// What a tier's plan holds for one model: the denominators of coverage and scope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    pub total: usize,
    /// Planned trials per backend (`cpu`, `gpu`).
    #[serde(default)]
    pub by_backend: BTreeMap<String, usize>,
    /// Planned trials per category.
    #[serde(default)]
    pub by_category: BTreeMap<Category, usize>,
}

/// What a playbook adds to plan trials of a category.
fn plans_category(c: Category) -> &'static str {
    match c {
        Category::Qual => "scenarios with oracles",
        Category::Perf => "a `performance` block",
        Category::Stab => "any cell (gateways G0, G1, G3)",
        Category::Comp => "a derived format (apr, gguf-*) beside safetensors",
        Category::Edge => "a scenario marked `edge: true` or made by the `edge_cases` generator",
        Category::Regr => "a safetensors cell (golden references)",
    }
}

/// Scores one model's evidence within the backends it has evidence for. A planned backend with
/// none (the gpu cells of a tier run on a machine without a device: ignored, never run) is left
/// out of the scope and named as not covered — its trials are neither passes nor failures, and
/// coverage is counted within the scope. Categories the plan holds no trial for are named too:
/// they earn nothing, and the verdict says what would add them.
pub fn score_in_scope(tier: &str, records: &[EvidenceRecord], planned: &Planned) -> Score {
    let with_verdict: std::collections::BTreeSet<&str> =
        records.iter().filter(|r| r.outcome.is_verdict()).map(|r| r.backend.as_str()).collect();
    let mut scope: Vec<String> = Vec::new();
    let mut not_covered = BTreeMap::new();
    let mut in_scope = 0;
    for (backend, n) in &planned.by_backend {
        if with_verdict.contains(backend.as_str()) {
            scope.push(backend.clone());
            in_scope += n;
        } else if *n > 0 {
            not_covered.insert(
                backend.clone(),
                if backend == "gpu" {
                    format!(
                        "no evidence: its {n} planned trials did not run here (a gpu cell needs the `cuda` feature and a CUDA device)"
                    )
                } else {
                    format!("no evidence: its {n} planned trials did not run here")
                },
            );
        }
    }
    // Nothing ran at all, or a score recorded before scopes: the whole plan is the denominator.
    let denominator = if scope.is_empty() { planned.total } else { in_scope };
    let scoped: Vec<EvidenceRecord> = if scope.is_empty() {
        records.to_vec()
    } else {
        records.iter().filter(|r| scope.contains(&r.backend)).cloned().collect()
    };
    let mut s = score(tier, &scoped, denominator);
    if !planned.by_category.is_empty() {
        s.lacks = Category::ALL
            .iter()
            .filter(|c| planned.by_category.get(c).copied().unwrap_or(0) == 0)
            .map(|c| {
                format!(
                    "{c} ({} points): the playbook plans no trial; add {}",
                    c.weight(),
                    plans_category(*c)
                )
            })
            .collect();
    }
    if !not_covered.is_empty() && !scope.is_empty() {
        let others: Vec<&str> = not_covered.keys().map(String::as_str).collect();
        s.verdict.push_str(&format!("; scope {} only: {} not covered", scope.join(", "), others.join(", ")));
    }
    if !s.lacks.is_empty() {
        let names: Vec<String> =
            s.lacks.iter().filter_map(|l| l.split(' ').next().map(str::to_string)).collect();
        s.verdict.push_str(&format!("; the playbook plans nothing for {}", names.join(", ")));
    }
    s.scope = scope;
    s.not_covered = not_covered;
    s
}

impl Score {
    /// The status with its scope where the score speaks for fewer backends than were planned:
    /// `PROVISIONAL (cpu)`.
    pub fn scoped_status(&self) -> String {
        if self.not_covered.is_empty() || self.scope.is_empty() {
            self.status.to_string()
        } else {
            format!("{} ({})", self.status, self.scope.join(", "))
        }
    }
}

/// Penalty points per crashed trial.
pub const CRASH_PENALTY: f64 = 20.0;
/// Penalty points per timed-out trial.
pub const TIMEOUT_PENALTY: f64 = 10.0;

/// Grade of a published score.
pub fn grade(mqs: u32) -> &'static str {
    match mqs {
        950.. => "A+",
        900.. => "A",
        850.. => "B+",
        800.. => "B",
        700.. => "C",
        _ => "F",
    }
}

/// The tier mapping: the weighted pass fraction `q` (raw / 1000) to a score, and whether the tier
/// threshold was reached (and so which status it earns).
pub fn tier_score(class: TierClass, q: f64) -> (u32, Status) {
    let q = q.clamp(0.0, 1.0);
    let below = ((q * 699.0).floor() as u32, Status::Blocked);
    match class {
        TierClass::Mvp if q >= 0.90 => (800, Status::Provisional),
        TierClass::Full if q >= 0.95 => {
            (950 + ((q - 0.95) * 1000.0).floor().clamp(0.0, 50.0) as u32, Status::Certified)
        }
        TierClass::Full if q >= 0.90 => {
            (800 + ((q - 0.90) / 0.05 * 99.0).floor().clamp(0.0, 99.0) as u32, Status::Provisional)
        }
        _ => below,
    }
}

/// Scores one model's evidence for one tier. `records` holds at most one record per trial (the
/// latest); `planned` is how many trials the tier's plan has for the model.
pub fn score(tier: &str, records: &[EvidenceRecord], planned: usize) -> Score {
    let rules = TierRules::of(tier);

    let mut gateways: BTreeMap<String, GatewayState> =
        GATEWAYS.iter().map(|g| (g.to_string(), GatewayState::Unmeasured)).collect();
    for (r, gate) in records.iter().filter_map(|r| Some((r, r.gate.gateway()?))) {
        let state = gateways.get_mut(gate.id()).expect("every gateway is in the map");
        match r.outcome {
            Outcome::Corroborated if *state == GatewayState::Unmeasured => *state = GatewayState::Passed,
            Outcome::Corroborated | Outcome::Skipped | Outcome::Unstable => {}
            Outcome::Falsified | Outcome::Timeout | Outcome::Crashed => *state = GatewayState::Failed,
        }
    }
    // G3 is also "no crash in any trial of the group".
    if records.iter().any(|r| r.outcome == Outcome::Crashed) {
        gateways.insert(Gate::Stability.id().into(), GatewayState::Failed);
    }

    let mut tally: BTreeMap<Category, (usize, usize)> = BTreeMap::new();
    // A skipped trial counts against its category; an unstable measurement said nothing either
    // way, so it earns nothing and costs nothing.
    for r in records.iter().filter(|r| r.outcome != Outcome::Unstable) {
        let t = tally.entry(r.category()).or_default();
        t.1 += 1;
        if r.outcome.is_pass() {
            t.0 += 1;
        }
    }
    let categories: Vec<CategoryScore> = Category::ALL
        .iter()
        .map(|&c| {
            let (passed, total) = tally.get(&c).copied().unwrap_or_default();
            let points = (total > 0).then(|| f64::from(c.weight()) * passed as f64 / total as f64);
            CategoryScore { category: c, weight: c.weight(), passed, total, points }
        })
        .collect();

    let crashes = records.iter().filter(|r| r.outcome == Outcome::Crashed).count();
    let timeouts = records.iter().filter(|r| r.outcome == Outcome::Timeout).count();
    let penalty = crashes as f64 * CRASH_PENALTY + timeouts as f64 * TIMEOUT_PENALTY;
    let earned: f64 = categories.iter().filter_map(|c| c.points).sum();
    let raw = (earned - penalty).clamp(0.0, 1000.0);

    // A category whose every record is unstable was measured but not judged: it must neither
    // earn its points nor, by earning none, block the model. The status waits for a quieter run.
    let unjudged: Vec<String> = categories
        .iter()
        .filter(|c| c.total == 0)
        .filter_map(|c| {
            let n = records
                .iter()
                .filter(|r| r.outcome == Outcome::Unstable && r.category() == c.category)
                .count();
            (n > 0).then(|| format!("{n} {} trial{}", c.category, if n == 1 { "" } else { "s" }))
        })
        .collect();

    let covered = records.iter().filter(|r| r.outcome.is_verdict()).count().min(planned);
    let coverage = if planned == 0 { 0.0 } else { covered as f64 / planned as f64 };

    let failed: Vec<&str> =
        gateways.iter().filter(|(_, s)| **s == GatewayState::Failed).map(|(g, _)| g.as_str()).collect();
    let unmeasured: Vec<&str> =
        gateways.iter().filter(|(_, s)| **s == GatewayState::Unmeasured).map(|(g, _)| g.as_str()).collect();

    let (mqs, status, verdict) = if !failed.is_empty() {
        (0, Status::Blocked, format!("gateway {} failed: the score is 0", failed.join(", ")))
    } else {
        let (mqs, reached) = tier_score(rules.class, raw / 1000.0);
        if coverage + 1e-9 < rules.min_coverage {
            (
                mqs,
                Status::Pending,
                format!(
                    "evidence for {covered} of {planned} planned trials ({:.1}%); tier {tier} needs {:.0}% to certify",
                    coverage * 100.0,
                    rules.min_coverage * 100.0
                ),
            )
        } else if !unmeasured.is_empty() {
            (mqs, Status::Pending, format!("gateway {} has no evidence", unmeasured.join(", ")))
        } else if !unjudged.is_empty() {
            (
                mqs,
                Status::Pending,
                format!(
                    "{} measured but too noisy to judge (unstable): measure again on a quieter machine",
                    unjudged.join(", ")
                ),
            )
        } else if reached == Status::Blocked {
            (mqs, Status::Blocked, format!("weighted pass rate {:.1}% is below the tier's 90%", raw / 10.0))
        } else {
            (mqs, reached, format!("weighted pass rate {:.1}% at tier {tier}", raw / 10.0))
        }
    };

    Score {
        tier: tier.to_string(),
        tier_class: rules.class,
        mqs,
        grade: grade(mqs).to_string(),
        status,
        verdict,
        gateways,
        categories,
        crashes,
        timeouts,
        penalty,
        raw,
        planned,
        covered,
        coverage,
        min_coverage: rules.min_coverage,
        scope: Vec::new(),
        not_covered: BTreeMap::new(),
        lacks: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::engine::Sampling;
    use crate::journal::{Host, Metrics, SCHEMA_VERSION};

    fn record(i: usize, gate: &str, category: Category, outcome: Outcome) -> EvidenceRecord {
        EvidenceRecord {
            schema: SCHEMA_VERSION,
            run_id: "r".into(),
            trial: format!("f::mvp::m::safetensors::cpu::run::s{i}"),
            family: "f".into(),
            tier: "mvp".into(),
            model: "m".into(),
            model_id: "o/m".into(),
            format: "safetensors".into(),
            backend: "cpu".into(),
            modality: "run".into(),
            scenario: format!("s{i}"),
            outcome,
            category: Some(category),
            gate: gate.parse().expect("a decider"),
            reason: String::new(),
            prompt: None,
            output: None,
            max_tokens: 8,
            sampling: Sampling::Greedy,
            metrics: Metrics::default(),
            model_files: Vec::new(),
            engine: None,
            device: None,
            playbook: "p.yaml".into(),
            harness_version: "0".into(),
            host: Host { hostname: "h".into(), os: "linux".into(), arch: "x86_64".into(), cpus: 2 },
            timestamp: "2026-01-01T00:00:00Z".into(),
        }
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
        for (mqs, g) in
            [(1000, "A+"), (950, "A+"), (949, "A"), (850, "B+"), (800, "B"), (700, "C"), (699, "F")]
        {
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
        assert!(
            s.verdict.ends_with("; the playbook plans nothing for PERF, COMP, EDGE, REGR"),
            "{}",
            s.verdict
        );
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
}
