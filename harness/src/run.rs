//! Pass 4's entry: one trial from the failure policy to its evidence record. The trial's
//! artifact is made (or found in the cache), file-only checks run at once, the cell's session
//! is loaded (or shared), and [`dispatch`] hands the trial to its room in [`crate::checks`] or
//! [`crate::modality`]; whatever happens, panics included, ends as one record in the journal.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::checks;
use crate::engine::SessionKey;
use crate::expand::{DiffKind, TrialKind, TrialSpec};
use crate::format::convert;
use crate::journal::ThirdParty;
use crate::modality;
use crate::playbook::FailurePolicy;
use crate::playbook::spec::EngineSpec;
use crate::trial::{Finding, RunContext, TrialEnv, Waits, load, reference_key, session_key};
use crate::vocab::{Decider, Gate, Outcome, SecurityCheck};

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
    /// Runs one trial to its end and records it. A start line is journaled first, so a process
    /// that dies inside the trial leaves a `crashed` record behind; the body runs on a thread of
    /// its own under a watchdog, so a body that hangs past its deadline (inside a forward pass,
    /// where no deadline is checked) still ends the trial as a `timeout`. `shipped` is the file
    /// the model ships for the cell (`artifacts:`), which replaces its conversion; its records
    /// say `third_party` with the file's SHA-256. `model_dir` is empty for a model with no
    /// ground truth here.
    pub(crate) fn run(
        self: &Arc<Self>,
        spec: &TrialSpec,
        model_dir: PathBuf,
        shipped: Option<PathBuf>,
        playbook_policy: Option<FailurePolicy>,
    ) -> Result<TrialEnd, RecordError> {
        let started = Instant::now();
        let released = Arc::new(AtomicBool::new(false));
        let key = session_key(spec);
        let policy = self.config.failure_policy.or(playbook_policy).unwrap_or(FailurePolicy::CollectAll);
        let shared_journal = self.config.under_nextest.then(|| self.journal.path());
        let record_err = |source| RecordError { path: self.journal.path().to_path_buf(), source };
        let finding = match self.policy.blocked(policy, &key, spec, shared_journal) {
            Some(reason) => Finding::new(Outcome::Skipped, Decider::Policy, reason),
            None => {
                let mut provisional = Finding::new(
                    Outcome::Crashed,
                    Decider::Gateway(Gate::Stability),
                    format!(
                        "the trial started (process {}) and never finished: the process died inside it \
                         (a crash, an abort, an out-of-memory kill) or the run was interrupted",
                        std::process::id()
                    ),
                )
                .record(self, spec, Duration::ZERO);
                provisional.unfinished = true;
                self.journal.append_start(&provisional).map_err(record_err)?;
                self.watched(
                    spec,
                    &key,
                    model_dir,
                    shipped.clone(),
                    Start { policy, started, released: released.clone(), waits: Arc::default() },
                )
            }
        };
        // Released here unless the body did (before its memory admission ended).
        self.release_once(spec, &key, &released);
        self.policy.note(spec, &key, &finding);
        let end = match (finding.outcome, finding.failure_message()) {
            (Outcome::Unstable, _) => TrialEnd::Unstable(finding.reason.clone()),
            (_, None) => TrialEnd::Passed,
            (_, Some(message)) => TrialEnd::Failed(message),
        };
        let mut record = finding.record(self, spec, started.elapsed());
        record.third_party = third_party(spec, shipped.as_deref());
        // Out of its cell's batch before its record: no batch writes a start line after it.
        self.cells.forget(self, spec);
        self.journal.append(&record).map_err(record_err)?;
        Ok(end)
    }

    /// Ends the trial's use of its session and reference, once (the body or, where the body did
    /// not get to it, the trial's end): the last use drops a session and stops its server.
    fn release_once(&self, spec: &TrialSpec, key: &SessionKey, released: &AtomicBool) {
        if released.swap(true, Ordering::SeqCst) || !spec.kind.loads_session() {
            return;
        }
        if self.sessions.release(key) {
            self.servers.stop(key);
        }
        if let Some(reference) = reference_key(spec) {
            self.sessions.release(&reference);
        }
    }

    /// The trial's body on a thread of its own, waited for until its deadline and a grace; a
    /// panic in it is a `crashed` finding, a result after the deadline a `timeout`.
    fn watched(
        self: &Arc<Self>,
        spec: &TrialSpec,
        key: &SessionKey,
        model_dir: PathBuf,
        shipped: Option<PathBuf>,
        start: Start,
    ) -> Finding {
        let timeout = spec.tier.timeout;
        let deadline = start.started + timeout;
        let waits = Arc::clone(&start.waits);
        let (tx, rx) = mpsc::channel();
        let body = {
            let (ctx, spec, key) = (Arc::clone(self), spec.clone(), key.clone());
            move || {
                let finding = catch_unwind(AssertUnwindSafe(|| {
                    execute(&ctx, &spec, &key, &model_dir, shipped.as_deref(), &start)
                }))
                .unwrap_or_else(|panic| crashed(&*panic));
                // The watchdog may have given up on this trial; then nobody listens.
                let _ = tx.send((finding, Instant::now()));
            }
        };
        let name = format!("trial {}", spec.full_name);
        if let Err(e) = std::thread::Builder::new().name(name).spawn(body) {
            return Finding::new(
                Outcome::Crashed,
                Decider::Gateway(Gate::Stability),
                format!("the trial's thread could not start: {e}"),
            );
        }
        let grace = (timeout / 4).clamp(WATCHDOG_GRACE_MIN, WATCHDOG_GRACE_MAX);
        // Time spent waiting for room in the memory budget is not the trial's: its deadline moves
        // by it, and a trial still waiting is never called hung.
        let received = loop {
            let step = if waits.waiting() {
                Duration::from_millis(500)
            } else {
                (deadline + waits.waited() + grace).saturating_duration_since(Instant::now())
            };
            match rx.recv_timeout(step) {
                Err(mpsc::RecvTimeoutError::Timeout)
                    if waits.waiting() || Instant::now() < deadline + waits.waited() + grace => {}
                other => break other,
            }
        };
        match received {
            Ok((finding, ended)) => late(finding, ended, deadline + waits.waited(), timeout),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let why = format!(
                    "{} hung: it did not return within its {}s timeout and {}s of grace",
                    spec.full_name,
                    timeout.as_secs_f64(),
                    grace.as_secs_f64()
                );
                self.sessions.abandon(key, why.clone());
                // An engine stuck in a call that checks no deadline is unstable, not merely slow:
                // the record fails G3 for its model, as a crash does.
                Finding::new(
                    Outcome::Timeout,
                    Decider::Gateway(Gate::Stability),
                    format!(
                        "{why}; the engine was inside a call that checks no deadline, and its session ({key}) is abandoned"
                    ),
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Finding::new(
                Outcome::Crashed,
                Decider::Gateway(Gate::Stability),
                "the trial's thread ended without a result",
            ),
        }
    }
}

/// When a trial started, under which failure policy, whether its uses of sessions ended, and how
/// long it waited for room in the memory budget.
struct Start {
    policy: FailurePolicy,
    started: Instant,
    released: Arc<AtomicBool>,
    waits: Arc<Waits>,
}

/// The longest a trial waits for room in the memory budget. Some admitted trial is always
/// running (or the waiter unloads idle sessions), so a wait ends; this bounds one behind trials
/// that are slow rather than hung.
const ADMISSION_WAIT_MAX: Duration = Duration::from_secs(3600);

/// Ends a trial's uses of its sessions when dropped ([`RunContext::release_once`]).
struct Release<'a> {
    ctx: &'a RunContext,
    spec: &'a TrialSpec,
    key: &'a SessionKey,
    released: &'a AtomicBool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.ctx.release_once(self.spec, self.key, self.released);
    }
}

/// How long the watchdog waits past a trial's deadline before it calls the trial hung: a
/// quarter of the timeout, within these bounds (a forward pass in progress finishes its token).
const WATCHDOG_GRACE_MIN: Duration = Duration::from_secs(2);
const WATCHDOG_GRACE_MAX: Duration = Duration::from_secs(60);

/// A panic's payload as a `crashed` finding.
fn crashed(panic: &(dyn std::any::Any + Send)) -> Finding {
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into());
    Finding::new(Outcome::Crashed, Decider::Gateway(Gate::Stability), format!("the trial crashed: {msg}"))
}

/// A pass that came after the deadline is a `timeout`: an answer is only as good as its time.
fn late(mut finding: Finding, ended: Instant, deadline: Instant, timeout: Duration) -> Finding {
    if finding.outcome.is_pass() && ended > deadline {
        finding.outcome = Outcome::Timeout;
        finding.decider = Decider::Timeout;
        finding.reason = format!(
            "the trial passed, but {:.1}s after its {}s timeout: {}",
            (ended - deadline).as_secs_f64(),
            timeout.as_secs_f64(),
            finding.reason
        );
    }
    finding
}

/// Provenance of a cell qualified from a file the model ships: the file as the playbook names
/// it and its SHA-256; `None` for the ground truth and modelqa's own conversions.
fn third_party(spec: &TrialSpec, shipped: Option<&Path>) -> Option<ThirdParty> {
    let source = spec.model.artifact(spec.name.format)?;
    let sha256 = shipped.and_then(|f| crate::format::files::hash_file(f).ok()).map(|h| h.sha256);
    Some(ThirdParty { file: source.name(), sha256: sha256.unwrap_or_default() })
}

/// The trial's artifact, file-only checks, the session, then the trial's body.
fn execute(
    ctx: &RunContext,
    spec: &TrialSpec,
    key: &SessionKey,
    model_dir: &Path,
    shipped: Option<&Path>,
    start: &Start,
) -> Finding {
    let Start { policy, started, .. } = *start;
    let deadline = started + spec.tier.timeout;
    // A derived format is the file the model ships, or converted from the ground truth once,
    // then found in the cache. An OpenAI-compatible server holds its own files; nothing is
    // converted for it.
    let format = spec.name.format;
    let made = if matches!(spec.engine, EngineSpec::Openai { .. }) {
        Ok(PathBuf::new())
    } else if let Some(file) = shipped {
        Ok(file.to_path_buf())
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
    // Checks that read files only load no session; what they read (a whole APR or GGUF file and
    // its copies, the ground truth beside it) is admitted within the memory budget as a
    // session is, for as long as they run. Their records name the files they read.
    let _reading = if spec.kind.loads_session() {
        None
    } else {
        let bytes = reading_bytes(model_dir, &artifact, spec.name.format);
        let admitted = start.waits.uncounted(|| {
            ctx.sessions.admit_reading(&spec.full_name, bytes, Instant::now() + ADMISSION_WAIT_MAX)
        });
        match admitted {
            Ok(admission) => Some(admission),
            Err(no_room) => {
                return Finding::new(Outcome::Skipped, Decider::Policy, format!("not run: {no_room}"));
            }
        }
    };
    let file_only = match spec.kind {
        TrialKind::Differential(DiffKind::Invariant(inv)) => {
            Some(checks::differential::run_invariant(spec, model_dir, &artifact, inv))
        }
        TrialKind::Gate(Gate::Integrity) => Some(checks::gate::run_integrity(spec, model_dir, &artifact)),
        TrialKind::Differential(DiffKind::TokenizerFuzz) => {
            Some(checks::tokenizer_fuzz::run(spec, model_dir, &artifact))
        }
        TrialKind::KernelClass => Some(checks::kernel_class::run(model_dir, &ctx.config.certifications)),
        _ => None,
    };
    if let Some(mut finding) = file_only {
        finding.files = files_read(model_dir, &artifact);
        return finding;
    }
    if let Some(why) = ctx.sessions.abandoned(key) {
        return Finding::new(
            Outcome::Timeout,
            Decider::Timeout,
            format!("not run: the session was abandoned: {why}"),
        );
    }
    // The sessions it uses (its own, and the reference it is compared with) are admitted within
    // the memory budget before either loads; the admission holds them until the trial ends.
    let mut uses = vec![key.clone()];
    uses.extend(reference_key(spec));
    let admission =
        match start.waits.uncounted(|| ctx.sessions.admit(&uses, Instant::now() + ADMISSION_WAIT_MAX)) {
            Ok(admission) => admission,
            Err(no_room) => {
                return Finding::new(Outcome::Skipped, Decider::Policy, format!("not run: {no_room}"));
            }
        };
    // Its timeout counts from its start, less what it waited for room.
    let deadline = deadline + start.waits.waited();
    for evicted in &admission.evicted {
        ctx.servers.stop(evicted);
    }
    // Dropped before the admission: the trial's uses end, then its hold on the memory, so a
    // session whose last trial this is leaves the ledger at once (never counted as unloaded early).
    let _release = Release { ctx, spec, key, released: &start.released };
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
            repeat: 0,
            waits: &start.waits,
        };
        dispatch(&env)
    };
    if loaded_now {
        finding.metrics.load_ms = Some(info.load_time.as_secs_f64() * 1e3);
    }
    finding.info = Some(info);
    finding
}

/// What a file-only check holds at most while it reads: a derived file read whole and copied
/// out (twice its size), and the ground truth's weights (mapped, read through once).
fn reading_bytes(model_dir: &Path, artifact: &Path, format: crate::matrix::Format) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let truth: u64 = if model_dir.as_os_str().is_empty() {
        0
    } else {
        crate::format::files::safetensors_files(model_dir).unwrap_or_default().iter().map(|f| size(f)).sum()
    };
    let derived = if format == crate::matrix::Format::Safetensors || artifact == model_dir {
        0
    } else {
        2 * size(artifact)
    };
    truth + derived
}

/// The files a file-only check reads: the ground truth's weights, `config.json` and
/// `tokenizer.json`, and the derived artifact; hashed as a session's files are (remembered by
/// path, size and mtime, so a multi-gigabyte file is hashed once).
fn files_read(model_dir: &Path, artifact: &Path) -> Vec<crate::format::files::ModelFile> {
    let mut paths = Vec::new();
    // An empty directory: a shipped file with no ground truth here.
    if !model_dir.as_os_str().is_empty() {
        paths = crate::format::files::safetensors_files(model_dir).unwrap_or_default();
        paths.extend(
            ["config.json", "tokenizer.json"].map(|n| model_dir.join(n)).into_iter().filter(|p| p.is_file()),
        );
    }
    if artifact != model_dir && artifact.is_file() {
        paths.push(artifact.to_path_buf());
    }
    paths.iter().filter_map(|p| crate::format::files::hash_file(p).ok()).collect()
}

/// Every trial kind and the room that runs it.
fn dispatch(env: &TrialEnv<'_>) -> Finding {
    match &env.spec.kind {
        TrialKind::Gate(g) => checks::gate::run(env, *g),
        TrialKind::ServerGate(c) => checks::server::run(env, *c),
        TrialKind::Security(SecurityCheck::SpecialTokenInjection) => checks::injection::run(env),
        TrialKind::Perf => checks::perf::run(env),
        TrialKind::Numerics => checks::trace::run_gate(env),
        TrialKind::KernelClass => unreachable!("the kernel-class check reads files only"),
        TrialKind::Golden(k) => checks::golden::run(env, *k),
        TrialKind::Differential(k) => checks::differential::run(env, *k),
        TrialKind::Scenario { modality, scenario } => match &scenario.property {
            Some(property) => modality::property(env, *modality, scenario, property),
            None => modality::scenario(env, *modality, scenario),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_after_the_deadline_is_a_timeout_and_a_failure_stays_a_failure() {
        let deadline = Instant::now();
        let timeout = Duration::from_secs(5);
        let pass = || Finding::new(Outcome::Corroborated, Decider::Oracles, "85");
        let on_time = late(pass(), deadline, deadline, timeout);
        assert_eq!((on_time.outcome, on_time.decider), (Outcome::Corroborated, Decider::Oracles));
        let after = late(pass(), deadline + Duration::from_secs(115), deadline, timeout);
        assert_eq!((after.outcome, after.decider), (Outcome::Timeout, Decider::Timeout));
        assert!(after.reason.contains("115.0s after its 5s timeout"), "{}", after.reason);
        let wrong =
            Finding::new(Outcome::Falsified, Decider::Oracle(crate::vocab::OracleKind::Arithmetic), "84");
        let wrong = late(wrong, deadline + Duration::from_secs(9), deadline, timeout);
        assert_eq!(wrong.outcome, Outcome::Falsified, "a wrong answer is wrong whenever it comes");
    }
}
