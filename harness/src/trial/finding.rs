//! How a trial ended before it is recorded ([`Finding`]), the one mapping of an engine error to
//! an outcome, the libtest failure message, and the evidence record made of a finding.

use std::time::Duration;

use crate::engine::{EngineError, Generation, SessionInfo};
use crate::expand::{TrialKind, TrialSpec};
use crate::format::files::ModelFile;
use crate::journal::{EvidenceRecord, Metrics, SCHEMA_VERSION};
use crate::vocab::{Decider, Gate, Outcome};

use super::RunContext;

/// How one trial ended, before it is recorded.
pub(crate) struct Finding {
    pub outcome: Outcome,
    pub decider: Decider,
    pub reason: String,
    pub prompt: Option<String>,
    pub output: Option<String>,
    pub metrics: Metrics,
    pub info: Option<SessionInfo>,
    /// The files a check read without loading a session (G0, the invariants, the tokenizer
    /// fuzz), hashed as a session's are; a loaded session's own list wins.
    pub files: Vec<ModelFile>,
}

impl Finding {
    pub(crate) fn new(outcome: Outcome, decider: Decider, reason: impl Into<String>) -> Self {
        Self {
            outcome,
            decider,
            reason: reason.into(),
            prompt: None,
            output: None,
            metrics: Metrics::default(),
            info: None,
            files: Vec::new(),
        }
    }

    pub(crate) fn with_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.prompt = Some(prompt.into());
        self
    }

    /// How an engine error ends a trial — the one place this is decided: a timeout is a
    /// `timeout`, a crash of the engine fails G3, and any other error fails the check the work
    /// was for (`charged_to`). `what` names the work (`generation`, `scenario add`).
    pub(crate) fn from_engine_error(
        e: EngineError,
        charged_to: Decider,
        what: &str,
        limit: Duration,
    ) -> Self {
        match e {
            EngineError::Timeout { tokens, partial } => {
                let mut f = Finding::new(
                    Outcome::Timeout,
                    Decider::Timeout,
                    format!("{what} passed the {}s timeout after {tokens} tokens", limit.as_secs_f64()),
                );
                f.output = (!partial.is_empty()).then_some(partial);
                f
            }
            e @ EngineError::Crashed(_) => {
                Finding::new(Outcome::Crashed, Decider::Gateway(Gate::Stability), format!("{what}: {e}"))
            }
            e => Finding::new(Outcome::Falsified, charged_to, format!("{what} failed: {e}")),
        }
    }

    /// The libtest failure message, or `None` when the trial passed.
    pub(crate) fn failure_message(&self) -> Option<String> {
        if self.outcome.is_pass() {
            return None;
        }
        let mut m = format!("{} [{}]: {}", self.outcome.as_str(), self.decider, self.reason);
        if let Some(p) = &self.prompt {
            m.push_str(&format!("\n  prompt: {}", excerpt(p)));
        }
        if let Some(o) = &self.output {
            m.push_str(&format!("\n  output: {}", excerpt(o)));
        }
        Some(m)
    }

    /// The evidence record of this finding.
    pub(crate) fn record(self, ctx: &RunContext, spec: &TrialSpec, elapsed: Duration) -> EvidenceRecord {
        let mut metrics = self.metrics;
        metrics.duration_ms = elapsed.as_secs_f64() * 1e3;
        let (scenario, modality) = match &spec.name.tail {
            crate::name::Tail::Scenario { modality, scenario } => {
                (scenario.clone(), modality.as_str().to_string())
            }
            crate::name::Tail::Gate(g) => (g.clone(), "gate".to_string()),
            crate::name::Tail::Diff(d) => (d.clone(), "diff".to_string()),
            crate::name::Tail::Perf(p) => (p.clone(), "perf".to_string()),
        };
        EvidenceRecord {
            schema: SCHEMA_VERSION,
            run_id: ctx.config.run_id.clone(),
            trial: spec.full_name.clone(),
            family: spec.name.family.clone(),
            tier: spec.name.tier.clone(),
            model: spec.name.model.clone(),
            model_id: spec.model.id.clone(),
            format: spec.name.format.name(),
            backend: spec.name.backend.as_str().into(),
            modality,
            scenario,
            outcome: self.outcome,
            category: Some(spec.kind.category()),
            gate: self.decider,
            reason: self.reason,
            prompt: self.prompt,
            output: self.output,
            max_tokens: match &spec.kind {
                TrialKind::Scenario { scenario, .. } => scenario.max_tokens,
                TrialKind::Perf => spec.performance.as_ref().map_or(0, |p| p.tokens_per_run()),
                TrialKind::Gate(_)
                | TrialKind::ServerGate(_)
                | TrialKind::Security(_)
                | TrialKind::Golden(_)
                | TrialKind::Differential(_)
                | TrialKind::Numerics
                | TrialKind::KernelClass => 0,
            },
            sampling: super::sampling(spec),
            metrics,
            model_files: self.info.as_ref().map_or(self.files, |i| i.files.clone()),
            engine: self.info.as_ref().map(|i| i.engine.clone()),
            device: self.info.as_ref().map(|i| i.device.clone()),
            playbook: spec.source.display().to_string(),
            harness_version: env!("CARGO_PKG_VERSION").into(),
            host: ctx.host.clone(),
            timestamp: crate::journal::timestamp(),
            harness_fingerprint: env!("MODELQA_HARNESS_FINGERPRINT").into(),
            playbook_sha256: ctx.playbook_sha256(&spec.source),
            unfinished: false,
            third_party: None,
        }
    }
}

/// The timings and counts of a generation.
pub(crate) fn metrics_of(g: &Generation) -> Metrics {
    Metrics {
        load_ms: None,
        time_to_first_token_ms: Some(g.time_to_first_token.as_secs_f64() * 1e3),
        prompt_tokens: Some(g.prompt_tokens),
        tokens: Some(g.tokens.len()),
        tokens_per_second: g.tokens_per_second(),
        duration_ms: 0.0,
        ..Metrics::default()
    }
}

fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(300).collect();
    if e.len() < s.len() {
        e.push('…');
    }
    format!("{e:?}")
}
