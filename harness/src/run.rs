//! Pass 4's entry: one trial from the failure policy to its evidence record. The trial's
//! artifact is made (or found in the cache), file-only checks run at once, the cell's session
//! is loaded (or shared), and [`dispatch`] hands the trial to its room in [`crate::checks`] or
//! [`crate::modality`]; whatever happens, panics included, ends as one record in the journal.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checks;
use crate::engine::SessionKey;
use crate::expand::{DiffKind, TrialKind, TrialSpec};
use crate::format::convert;
use crate::modality;
use crate::playbook::FailurePolicy;
use crate::playbook::spec::EngineSpec;
use crate::trial::{Finding, RunContext, TrialEnv, load, reference_key, session_key};
use crate::vocab::{Decider, Gate, Outcome};

/// How a trial ended, as libtest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TrialEnd {
    Passed,
    /// No verdict either way (an unstable measurement); libtest shows it ignored at run time.
    Unstable(String),
    /// Anything but a pass; the message names the outcome, the decider and the evidence.
    Failed(String),
}

/// The journal refused the trial's record: the run cannot keep its evidence.
#[derive(Debug, thiserror::Error)]
#[error("failed to append evidence to {}: {source}", path.display())]
pub(crate) struct RecordError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl RunContext {
    /// Runs one trial to its end and records it.
    pub(crate) fn run(
        &self,
        spec: &TrialSpec,
        model_dir: PathBuf,
        playbook_policy: Option<FailurePolicy>,
    ) -> Result<TrialEnd, RecordError> {
        let started = Instant::now();
        let key = session_key(spec);
        let policy = self.config.failure_policy.or(playbook_policy).unwrap_or(FailurePolicy::CollectAll);
        let shared_journal = self.config.under_nextest.then(|| self.journal.path());
        let finding = match self.policy.blocked(policy, &key, spec, shared_journal) {
            Some(reason) => Finding::new(Outcome::Skipped, Decider::Policy, reason),
            None => catch_unwind(AssertUnwindSafe(|| execute(self, spec, &key, &model_dir, policy, started)))
                .unwrap_or_else(|panic| {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic without a message".into());
                    Finding::new(
                        Outcome::Crashed,
                        Decider::Gateway(Gate::Stability),
                        format!("the trial crashed: {msg}"),
                    )
                }),
        };
        if self.sessions.release(&key) {
            // The session's last trial: its server (if any) stops with it.
            self.servers.stop(&key);
        }
        if let Some(reference) = reference_key(spec) {
            self.sessions.release(&reference);
        }
        self.policy.note(spec, &key, &finding);
        let end = match (finding.outcome, finding.failure_message()) {
            (Outcome::Unstable, _) => TrialEnd::Unstable(finding.reason.clone()),
            (_, None) => TrialEnd::Passed,
            (_, Some(message)) => TrialEnd::Failed(message),
        };
        let record = finding.record(self, spec, started.elapsed());
        self.journal
            .append(&record)
            .map_err(|source| RecordError { path: self.journal.path().to_path_buf(), source })?;
        Ok(end)
    }
}

/// The trial's artifact, file-only checks, the session, then the trial's body.
fn execute(
    ctx: &RunContext,
    spec: &TrialSpec,
    key: &SessionKey,
    model_dir: &Path,
    policy: FailurePolicy,
    started: Instant,
) -> Finding {
    let deadline = started + spec.tier.timeout;
    // A derived format is converted from the ground truth once, then found in the cache. An
    // OpenAI-compatible server holds its own files; nothing is converted for it.
    let format = spec.name.format;
    let made = if matches!(spec.engine, EngineSpec::Openai { .. }) {
        Ok(PathBuf::new())
    } else {
        convert::artifact(model_dir, format, &crate::config::cache_dir())
    };
    let artifact = match made {
        Ok(path) => path,
        Err(e) => {
            let g = if matches!(spec.kind, TrialKind::Gate(Gate::Integrity)) {
                Gate::Integrity
            } else {
                Gate::Load
            };
            return Finding::new(
                Outcome::Falsified,
                Decider::Gateway(g),
                format!("failed to make the {format} artifact: {e}"),
            );
        }
    };
    // Checks that read files only load no session.
    match spec.kind {
        TrialKind::Differential(DiffKind::Invariant(inv)) => {
            return checks::differential::run_invariant(spec, model_dir, &artifact, inv);
        }
        TrialKind::Gate(Gate::Integrity) => return checks::gate::run_integrity(spec, model_dir, &artifact),
        _ => {}
    }
    let (session, loaded_now) = ctx.sessions.get_or_load(key, policy != FailurePolicy::CollectAll, || {
        load(ctx, spec, &artifact, model_dir, deadline)
    });
    let limit = spec.tier.timeout.as_secs_f64();
    let session = match session {
        Ok(s) => s,
        // An engine that hangs while loading (a server that accepts and never answers) is a
        // timeout, not a wrong answer.
        Err(e) if Instant::now() >= deadline => {
            return Finding::new(
                Outcome::Timeout,
                Decider::Timeout,
                format!("the engine did not load within the {limit}s timeout: {e}"),
            );
        }
        Err(e) => {
            return Finding::new(
                Outcome::Falsified,
                Decider::Gateway(Gate::Load),
                format!("gateway G1 (load) failed: {e}"),
            );
        }
    };
    let info = session.lock().unwrap_or_else(|p| p.into_inner()).info().clone();
    let mut finding = if Instant::now() >= deadline {
        Finding::new(
            Outcome::Timeout,
            Decider::Timeout,
            format!("the model took longer than the {limit}s timeout to load"),
        )
    } else {
        let env = TrialEnv {
            ctx,
            spec,
            key,
            model_dir,
            artifact: &artifact,
            session: &session,
            info: &info,
            deadline,
        };
        dispatch(&env)
    };
    if loaded_now {
        finding.metrics.load_ms = Some(info.load_time.as_secs_f64() * 1e3);
    }
    finding.info = Some(info);
    finding
}

/// Every trial kind and the room that runs it.
fn dispatch(env: &TrialEnv<'_>) -> Finding {
    match &env.spec.kind {
        TrialKind::Gate(g) => checks::gate::run(env, *g),
        TrialKind::ServerGate(c) => checks::server::run(env, *c),
        TrialKind::Perf => checks::perf::run(env),
        TrialKind::Golden(k) => checks::golden::run(env, *k),
        TrialKind::Differential(k) => checks::differential::run(env, *k),
        TrialKind::Scenario { modality, scenario } => match &scenario.property {
            Some(property) => modality::property(env, *modality, scenario, property),
            None if *modality == crate::matrix::Modality::Serve => modality::serve(env, scenario),
            None => modality::text(env, *modality, scenario),
        },
    }
}
