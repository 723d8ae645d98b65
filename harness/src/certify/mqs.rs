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
    /// Trials whose repeats disagreed: never passes, counted against their category.
    #[serde(default)]
    pub flaky: usize,
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
        Category::Comp => "a derived format (apr, gguf-*) beside safetensors, or the `serve` modality",
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
            Outcome::Falsified | Outcome::Flaky | Outcome::Timeout | Outcome::Crashed => {
                *state = GatewayState::Failed
            }
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
    let flaky = records.iter().filter(|r| r.outcome == Outcome::Flaky).count();
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
        flaky,
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
#[path = "mqs_tests.rs"]
mod tests;
