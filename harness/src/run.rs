//! The trial body (pass 4): get the session, run the modality, apply the oracles, enforce the
//! timeout and the failure policy, and record the evidence (pass 5).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError};

use crate::certify::Category;
use crate::chat::{ChatError, ChatTemplate};
use crate::config::Config;
use crate::engine::SessionInfo;
use crate::engine::{
    CommandSession, Engine, EngineError, GenerateRequest, Generation, OpenAiSession, Sampling, Session,
    SessionCache, SessionKey, SharedSession,
};
use crate::expand::{DiffKind, GoldenKind, TrialKind, TrialSpec};
use crate::format::convert;
use crate::gate::{self, Gate, GateVerdict};
use crate::journal::{EvidenceRecord, Host, Journal, Metrics, Outcome, SCHEMA_VERSION};
use crate::matrix::{Format, Modality};
use crate::oracle::Verdict;
use crate::playbook::spec::EngineSpec;
use crate::playbook::{
    FailurePolicy, Input, MessageSpec, Model, Property, Scenario, generator_strategy, seeded_runner,
};
use crate::serve::{Server, ServerConfig};
use crate::serve_client::{self, Client, Endpoint};
use crate::server_gate::{self, Probe, ServerCheck};

/// What every trial of one harness process shares.
pub struct RunContext {
    pub config: Config,
    pub journal: Journal,
    pub sessions: SessionCache,
    pub engine: Box<dyn Engine>,
    pub host: Host,
    policy: PolicyState,
    /// One server per session that `serve` trials use, stopped with the session.
    servers: Mutex<HashMap<SessionKey, Arc<Server>>>,
}

#[derive(Default)]
struct PolicyState {
    first_failure: Mutex<Option<String>>,
    failed_gates: Mutex<HashMap<SessionKey, String>>,
}

/// How one trial ended, before it is recorded.
struct Finding {
    outcome: Outcome,
    gate: String,
    reason: String,
    prompt: Option<String>,
    output: Option<String>,
    metrics: Metrics,
    info: Option<crate::engine::SessionInfo>,
}

impl Finding {
    fn new(outcome: Outcome, gate: &str, reason: impl Into<String>) -> Self {
        Self {
            outcome,
            gate: gate.into(),
            reason: reason.into(),
            prompt: None,
            output: None,
            metrics: Metrics::default(),
            info: None,
        }
    }
}

impl RunContext {
    pub fn new(config: Config, journal: Journal, engine: Box<dyn Engine>) -> Self {
        Self {
            config,
            journal,
            sessions: SessionCache::default(),
            engine,
            host: Host::current(),
            policy: PolicyState::default(),
            servers: Mutex::new(HashMap::new()),
        }
    }

    fn policy_for(&self, playbook_policy: Option<FailurePolicy>) -> FailurePolicy {
        self.config.failure_policy.or(playbook_policy).unwrap_or(FailurePolicy::CollectAll)
    }

    /// Why the policy stops this trial from running, if it does. Under nextest, other processes'
    /// failures are read back from the shared journal.
    fn blocked(&self, policy: FailurePolicy, key: &SessionKey, spec: &TrialSpec) -> Option<String> {
        match policy {
            FailurePolicy::CollectAll => None,
            FailurePolicy::StopOnFirst => {
                let local = self.policy.first_failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
                local
                    .or_else(|| self.journal_failures(|r| !r.outcome.is_pass() && r.outcome.is_verdict()))
                    .map(|first| format!("not run: the failure policy is stop-on-first and {first} failed"))
            }
            FailurePolicy::StopOnP0 => {
                let local =
                    self.policy.failed_gates.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
                local
                    .or_else(|| {
                        self.journal_failures(|r| {
                            is_gateway(&r.gate)
                                && !r.outcome.is_pass()
                                && r.outcome.is_verdict()
                                && r.model == spec.name.model
                                && r.format == spec.name.format.name()
                                && r.backend == spec.name.backend.as_str()
                        })
                        .map(|t| format!("a gateway failed in {t}"))
                    })
                    .map(|why| format!("not run: {why} (failure policy stop-on-p0, {key})"))
            }
        }
    }

    fn journal_failures(&self, pred: impl Fn(&EvidenceRecord) -> bool) -> Option<String> {
        if !self.config.under_nextest {
            return None;
        }
        let (records, _) = crate::journal::read(self.journal.path()).ok()?;
        records.into_iter().find(|r| pred(r)).map(|r| r.trial)
    }

    /// Runs one trial to its end and records it. `Ok(None)` when it was corroborated,
    /// `Ok(Some(reason))` when it gave no verdict either way (unstable: libtest shows it as
    /// ignored at run time), `Err` with the failure message otherwise.
    pub fn run(
        &self,
        spec: &TrialSpec,
        model_dir: PathBuf,
        playbook_policy: Option<FailurePolicy>,
    ) -> Result<Option<String>, String> {
        let started = Instant::now();
        let key = session_key(spec);
        let policy = self.policy_for(playbook_policy);
        let finding = match self.blocked(policy, &key, spec) {
            Some(reason) => Finding::new(Outcome::Skipped, "policy", reason),
            None => {
                let work =
                    catch_unwind(AssertUnwindSafe(|| self.execute(spec, &key, model_dir, policy, started)));
                work.unwrap_or_else(|panic| {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic without a message".into());
                    Finding::new(Outcome::Crashed, "G3", format!("the trial crashed: {msg}"))
                })
            }
        };
        if self.sessions.release(&key) {
            // The session's last trial: its server (if any) stops as the Arc drops.
            self.servers.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
        if let Some(reference) = reference_key(spec) {
            self.sessions.release(&reference);
        }
        if !finding.outcome.is_pass() && finding.outcome.is_verdict() {
            self.policy
                .first_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| spec.full_name.clone());
            if is_gateway(&finding.gate) {
                self.policy
                    .failed_gates
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key.clone())
                    .or_insert_with(|| format!("gateway {} failed in {}", finding.gate, spec.full_name));
            }
        }
        let message = failure_message(&finding);
        let unstable = (finding.outcome == Outcome::Unstable).then(|| finding.reason.clone());
        let record = self.record(spec, finding, started.elapsed());
        if let Err(e) = self.journal.append(&record) {
            return Err(format!("failed to append evidence to {}: {e}", self.journal.path().display()));
        }
        match (unstable, message) {
            (Some(reason), _) => Ok(Some(reason)),
            (None, None) => Ok(None),
            (None, Some(m)) => Err(m),
        }
    }

    fn execute(
        &self,
        spec: &TrialSpec,
        key: &SessionKey,
        model_dir: PathBuf,
        policy: FailurePolicy,
        started: Instant,
    ) -> Finding {
        let deadline = started + spec.tier.timeout;
        // A derived format is converted from the ground truth once, then found in the cache.
        let format = spec.name.format;
        // An OpenAI-compatible server holds its own files; nothing is converted for it.
        let remote = matches!(spec.engine, EngineSpec::Openai { .. });
        let made = if remote {
            Ok(PathBuf::new())
        } else {
            convert::artifact(&model_dir, format, &crate::config::cache_dir())
        };
        let artifact = match made {
            Ok(path) => path,
            Err(e) => {
                let g = if matches!(spec.kind, TrialKind::Gate(Gate::Integrity)) { "G0" } else { "G1" };
                return Finding::new(
                    Outcome::Falsified,
                    g,
                    format!("failed to make the {format} artifact: {e}"),
                );
            }
        };
        // The invariants read files only; no session is loaded for them.
        if let TrialKind::Differential(DiffKind::Invariant(inv)) = spec.kind {
            let texts: Vec<String> = asks_without_session(spec);
            let v = crate::diff::invariant(inv, &model_dir, &artifact, format, &texts);
            return Finding::new(v.outcome, "COMP", v.reason);
        }
        if let TrialKind::Gate(Gate::Integrity) = spec.kind {
            let mut verdict = gate::integrity(&model_dir, &spec.model);
            if verdict.outcome == Outcome::Corroborated && format != Format::Safetensors {
                verdict = gate::artifact_integrity(&artifact, verdict);
            }
            return from_verdict(Gate::Integrity, verdict);
        }
        let (session, loaded_now) =
            self.sessions.get_or_load(key, policy != FailurePolicy::CollectAll, || {
                self.load(spec, &artifact, &model_dir, deadline)
            });
        let session = match session {
            Ok(s) => s,
            // An engine that hangs while loading (a server that accepts and never answers) is a
            // timeout, not a wrong answer.
            Err(e) if Instant::now() >= deadline => {
                let limit = spec.tier.timeout.as_secs_f64();
                return Finding::new(
                    Outcome::Timeout,
                    "timeout",
                    format!("the engine did not load within the {limit}s timeout: {e}"),
                );
            }
            Err(e) => {
                return Finding::new(Outcome::Falsified, "G1", format!("gateway G1 (load) failed: {e}"));
            }
        };
        let info = session.lock().unwrap_or_else(|p| p.into_inner()).info().clone();
        let mut finding = if Instant::now() >= deadline {
            let limit = spec.tier.timeout.as_secs_f64();
            Finding::new(
                Outcome::Timeout,
                "timeout",
                format!("the model took longer than the {limit}s timeout to load"),
            )
        } else {
            match &spec.kind {
                TrialKind::Gate(g) => self.run_gate(*g, spec, &session, &info, deadline),
                TrialKind::ServerGate(c) => self.run_server_gate(*c, spec, key, &session, &info, deadline),
                TrialKind::Perf => self.run_perf(spec, &session, &info, deadline),
                TrialKind::Golden(k) => self.run_golden(*k, spec, &session, &info, deadline),
                TrialKind::Differential(k) => {
                    self.run_differential(*k, spec, &model_dir, &artifact, &session, &info, deadline)
                }
                TrialKind::Scenario { modality, scenario } => match &scenario.property {
                    Some(property) => {
                        self.run_property(spec, *modality, scenario, &session, property, deadline)
                    }
                    None if *modality == Modality::Serve => {
                        self.run_serve(spec, key, scenario, &session, &info, deadline)
                    }
                    None => {
                        let template = info.chat_template.as_ref();
                        match prepare(
                            &spec.model,
                            *modality,
                            &scenario.input,
                            template,
                            info.applies_chat_template,
                        ) {
                            Ok((prompt, conversation)) => {
                                let mut f = self.generate_and_judge(
                                    spec,
                                    scenario,
                                    &session,
                                    &prompt,
                                    conversation.as_deref(),
                                    deadline,
                                );
                                f.prompt = Some(prompt);
                                f
                            }
                            Err(e) => Finding::new(Outcome::Falsified, "chat_template", e.to_string()),
                        }
                    }
                },
            }
        };
        if loaded_now {
            finding.metrics.load_ms = Some(info.load_time.as_secs_f64() * 1e3);
        }
        finding.info = Some(info);
        finding
    }

    fn run_gate(
        &self,
        g: Gate,
        spec: &TrialSpec,
        session: &SharedSession,
        info: &SessionInfo,
        deadline: Instant,
    ) -> Finding {
        let prompts = asks(spec, info);
        let basic = prompts
            .iter()
            .find(|a| a.conversation.is_none())
            .map_or_else(|| spec.model.layout("Hello"), |a| a.prompt.clone());
        let verdict = match g {
            Gate::Integrity => gate::integrity(Path::new(""), &spec.model),
            Gate::Load => GateVerdict {
                outcome: Outcome::Corroborated,
                reason: format!(
                    "loaded by {} on {} in {:.0} ms",
                    info.engine,
                    info.device,
                    info.load_time.as_secs_f64() * 1e3
                ),
                prompt: None,
                output: None,
            },
            Gate::Inference => gate::inference(session, &basic, deadline),
            Gate::Stability => gate::stability(session, &basic, deadline),
            Gate::Quality => gate::quality(session, &prompts, deadline),
        };
        from_verdict(g, verdict)
    }

    /// Compares a derived format with the safetensors ground truth: its tensors, or its
    /// next-token distributions at the first positions of every scenario prompt.
    #[expect(clippy::too_many_arguments, reason = "one trial body; every argument is a different input")]
    fn run_differential(
        &self,
        kind: DiffKind,
        spec: &TrialSpec,
        model_dir: &Path,
        artifact: &Path,
        session: &SharedSession,
        info: &SessionInfo,
        deadline: Instant,
    ) -> Finding {
        let verdict = match kind {
            DiffKind::Tensors => crate::diff::tensors(model_dir, artifact),
            DiffKind::Invariant(inv) => crate::diff::invariant(
                inv,
                model_dir,
                artifact,
                spec.name.format,
                &asks_without_session(spec),
            ),
            DiffKind::ChatPrompt => match ChatTemplate::from_model_dir(model_dir) {
                Ok(reference) => {
                    let conversations: Vec<(String, Vec<MessageSpec>)> = spec
                        .scenarios
                        .iter()
                        .filter(|s| s.property.is_none())
                        .map(|s| (s.name.clone(), messages_of(&s.input)))
                        .collect();
                    crate::diff::chat_prompts(reference.as_ref(), info.chat_template.as_ref(), &conversations)
                }
                Err(e) => crate::diff::DiffVerdict {
                    outcome: Outcome::Falsified,
                    reason: format!("the safetensors chat template: {e}"),
                },
            },
            DiffKind::Logits | DiffKind::Generation => {
                let Some(reference_key) = reference_key(spec) else {
                    return Finding::new(Outcome::Falsified, "COMP", "a safetensors cell has no reference");
                };
                let (reference, _) = self
                    .sessions
                    .get_or_load(&reference_key, false, || self.engine.load(model_dir, spec.name.backend));
                let reference = match reference {
                    Ok(r) => r,
                    Err(e) => {
                        return Finding::new(
                            Outcome::Falsified,
                            "COMP",
                            format!("the safetensors reference failed to load: {e}"),
                        );
                    }
                };
                let prompts = asks(spec, info);
                if kind == DiffKind::Generation {
                    let k = spec.differential.top_k.unwrap_or(5);
                    let v = first_divergence(&reference, session, &prompts, k, deadline);
                    return Finding::new(
                        v.outcome,
                        if v.outcome == Outcome::Timeout { "timeout" } else { "COMP" },
                        v.reason,
                    );
                }
                let mut want = Vec::new();
                let mut got = Vec::new();
                for gate::Ask { name, prompt, .. } in &prompts {
                    if Instant::now() >= deadline {
                        return Finding::new(
                            Outcome::Timeout,
                            "timeout",
                            "the logit comparison passed its timeout",
                        );
                    }
                    let r = reference
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .prompt_logits(prompt, DIFF_POSITIONS);
                    let c = session
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .prompt_logits(prompt, DIFF_POSITIONS);
                    match (r, c) {
                        (Ok(r), Ok(c)) => {
                            want.push(r);
                            got.push(c);
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            return Finding::new(Outcome::Falsified, "COMP", format!("scenario {name}: {e}"));
                        }
                    }
                }
                let format = spec.name.format;
                let tolerance = match spec.differential.logits.get(&format.name()) {
                    Some(g) => {
                        crate::diff::LogitTolerance { max_mean_kl: g.max_mean_kl, min_top1: g.min_top1 }
                    }
                    None => crate::diff::LogitTolerance::for_format(format),
                };
                crate::diff::logits(&want, &got, tolerance)
            }
        };
        Finding::new(verdict.outcome, "COMP", verdict.reason)
    }

    /// Compares greedy outputs or top-k logits with the golden references; a difference is
    /// written as a pending `.new` file beside the reference (never in CI).
    fn run_golden(
        &self,
        kind: GoldenKind,
        spec: &TrialSpec,
        session: &SharedSession,
        info: &SessionInfo,
        deadline: Instant,
    ) -> Finding {
        let dir = crate::golden::model_dir(&spec.name.family, &spec.name.model);
        let prompts = asks(spec, info);
        let mut differences = Vec::new();
        let mut pending = Vec::new();
        match kind {
            GoldenKind::Text => {
                for ask in &prompts {
                    let name = &ask.name;
                    let text = match ask.generate(session, deadline) {
                        Ok(g) => g.text,
                        Err(e) => {
                            return Finding::new(Outcome::Falsified, "REGR", format!("scenario {name}: {e}"));
                        }
                    };
                    let path = dir.join(format!("{name}.snap"));
                    match crate::golden::read_snapshot(&path) {
                        Some(want) if want == text => {}
                        want => {
                            differences.push(match want {
                                Some(w) => format!("{name}: {text:?}, golden {w:?}"),
                                None => format!("{name}: no golden reference ({})", path.display()),
                            });
                            let expr = format!("{}::{}::{name}", spec.name.family, spec.name.model);
                            pending.extend(crate::golden::write_pending(
                                &path,
                                &crate::golden::snapshot_text(&expr, &text),
                            ));
                        }
                    }
                }
            }
            GoldenKind::Logits => {
                for gate::Ask { name, prompt, .. } in &prompts {
                    let rows = session
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .prompt_logits(prompt, crate::golden::POSITIONS);
                    let rows = match rows {
                        Ok(rows) => rows,
                        Err(e) => {
                            return Finding::new(Outcome::Falsified, "REGR", format!("scenario {name}: {e}"));
                        }
                    };
                    let positions =
                        rows.iter().map(|r| crate::golden::top_k(r, crate::golden::TOP_K)).collect();
                    let actual = crate::golden::ScenarioLogits { prompt: prompt.clone(), positions };
                    let path = dir.join(format!("{name}.logits.json"));
                    let reference: Option<crate::golden::ScenarioLogits> =
                        std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok());
                    let found = match &reference {
                        Some(r) => crate::golden::compare_logits(name, r, &actual),
                        None => vec![format!("{name}: no golden reference ({})", path.display())],
                    };
                    if !found.is_empty() {
                        let json = serde_json::to_string_pretty(&actual).unwrap_or_default() + "\n";
                        pending.extend(crate::golden::write_pending(&path, &json));
                        differences.extend(found);
                    }
                }
            }
        }
        if differences.is_empty() {
            return Finding::new(
                Outcome::Corroborated,
                "REGR",
                format!("{} scenarios match their golden {}", prompts.len(), kind.slug()),
            );
        }
        let note = if pending.is_empty() {
            String::new()
        } else {
            " (pending references written; review, then `cargo xtask golden --accept --yes`)".to_string()
        };
        Finding::new(
            Outcome::Falsified,
            "REGR",
            format!(
                "{} of {} differ from golden{note}: {}",
                differences.len(),
                prompts.len().max(1),
                differences.join("; ")
            ),
        )
    }

    fn sampling(&self, spec: &TrialSpec) -> Sampling {
        let TrialKind::Scenario { scenario, .. } = &spec.kind else { return Sampling::Greedy };
        let s = &scenario.sampling;
        match s.temperature {
            Some(t) if t > 0.0 => Sampling::Seeded {
                temperature: t,
                top_p: s.top_p,
                top_k: s.top_k,
                seed: s.seed.unwrap_or(spec.tier.seed),
            },
            _ => Sampling::Greedy,
        }
    }

    /// Generates for `prompt`, or answers `conversation` where the engine lays conversations
    /// out itself (then `prompt` is the readable transcript kept as evidence).
    fn generate(
        &self,
        spec: &TrialSpec,
        scenario: &Scenario,
        session: &SharedSession,
        prompt: &str,
        conversation: Option<&[MessageSpec]>,
        deadline: Instant,
    ) -> Result<Generation, EngineError> {
        let request = GenerateRequest {
            prompt,
            max_tokens: scenario.max_tokens,
            sampling: self.sampling(spec),
            deadline,
        };
        let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
        match conversation {
            Some(messages) => session.chat(messages, &request),
            None => session.generate(&request),
        }
    }

    /// Loads the session of a trial on its engine.
    fn load(
        &self,
        spec: &TrialSpec,
        artifact: &Path,
        model_dir: &Path,
        deadline: Instant,
    ) -> Result<Box<dyn Session>, EngineError> {
        match &spec.engine {
            EngineSpec::Embedded => self.engine.load(artifact, spec.name.backend),
            EngineSpec::Openai { base_url, api_key_env, model } => {
                let api_key = match api_key_env {
                    Some(var) => Some(std::env::var(var).map_err(|_| EngineError::Load {
                        path: PathBuf::from(base_url),
                        cause: format!("the API key variable {var} is not set"),
                    })?),
                    None => None,
                };
                let served = model.as_deref().unwrap_or(&spec.model.id);
                let timeout = deadline.saturating_duration_since(Instant::now());
                Ok(Box::new(OpenAiSession::connect(base_url, api_key, served, timeout)?))
            }
            EngineSpec::Command { args, output, json_pointer } => Ok(Box::new(CommandSession::new(
                args,
                *output,
                json_pointer.as_deref(),
                artifact,
                model_dir,
                spec.name.backend,
            )?)),
        }
    }

    /// The OpenAI-compatible endpoint of a session: the external server itself for an `openai`
    /// engine, otherwise this project's server over the session, started on first use.
    fn client_for(
        &self,
        key: &SessionKey,
        spec: &TrialSpec,
        session: &SharedSession,
    ) -> Result<Client, String> {
        match &spec.engine {
            EngineSpec::Openai { base_url, api_key_env, model } => Ok(Client::new(base_url.as_str())
                .with_api_key(api_key_env.as_ref().and_then(|v| std::env::var(v).ok()))
                .with_model(Some(model.clone().unwrap_or_else(|| spec.model.id.clone())))),
            EngineSpec::Embedded | EngineSpec::Command { .. } => {
                Ok(Client::new(self.server_for(key, spec, session)?.base_url()))
            }
        }
    }

    /// The server of a session, started on an ephemeral loopback port on first use.
    fn server_for(
        &self,
        key: &SessionKey,
        spec: &TrialSpec,
        session: &SharedSession,
    ) -> Result<Arc<Server>, String> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = servers.get(key) {
            return Ok(Arc::clone(s));
        }
        let config =
            ServerConfig { request_timeout: spec.tier.timeout, ..ServerConfig::new(spec.model.id.clone()) };
        let server = Arc::new(
            Server::start(Arc::clone(session), config)
                .map_err(|e| format!("failed to start the server: {e}"))?,
        );
        servers.insert(key.clone(), Arc::clone(&server));
        Ok(server)
    }

    /// A property case in `serve`: one non-streamed completion over HTTP. The reply carries
    /// text and usage counts, not token ids or a first-token time, so its metrics say only that.
    fn generate_over_http(
        &self,
        spec: &TrialSpec,
        scenario: &Scenario,
        session: &SharedSession,
        prompt: &str,
        deadline: Instant,
    ) -> Result<(Generation, Metrics), EngineError> {
        let client = self.client_for(&session_key(spec), spec, session).map_err(EngineError::Inference)?;
        let body = serve_client::request_body(
            Endpoint::Completions,
            prompt,
            &[],
            scenario.max_tokens,
            &self.sampling(spec),
            false,
        );
        let reply = client.send(Endpoint::Completions, &body, deadline).map_err(|e| {
            if Instant::now() >= deadline {
                EngineError::Timeout { tokens: 0, partial: String::new() }
            } else {
                EngineError::Inference(e)
            }
        })?;
        let metrics = Metrics {
            prompt_tokens: reply.prompt_tokens.map(|n| n as usize),
            tokens: reply.completion_tokens.map(|n| n as usize),
            ..Metrics::default()
        };
        let generation = Generation {
            text: reply.text,
            tokens: Vec::new(),
            token_count: metrics.tokens,
            prompt_tokens: metrics.prompt_tokens.unwrap_or(0),
            finish: crate::engine::Finish::Eos,
            time_to_first_token: Duration::ZERO,
            duration: reply.latency,
            first_logits_finite: None,
            leaked_special_tokens: Vec::new(),
        };
        Ok((generation, metrics))
    }

    /// A scenario over real HTTP: the completions endpoint with the prompt as `run` lays it out
    /// and, where the model has a chat template, the chat endpoint with the conversation; each
    /// whole and streamed, each answer judged by the scenario's oracles.
    fn run_serve(
        &self,
        spec: &TrialSpec,
        key: &SessionKey,
        scenario: &Scenario,
        session: &SharedSession,
        info: &SessionInfo,
        deadline: Instant,
    ) -> Finding {
        let client = match self.client_for(key, spec, session) {
            Ok(c) => c,
            Err(e) => return Finding::new(Outcome::Falsified, "serve", e),
        };
        let template = info.chat_template.as_ref();
        let prompt = render_run(&spec.model, &scenario.input, template);
        let messages = messages_of(&scenario.input);
        // A server that lays conversations out itself gets a conversation only as one.
        let conversation_only = info.applies_chat_template && matches!(scenario.input, Input::Messages(_));
        let mut endpoints = if conversation_only { Vec::new() } else { vec![Endpoint::Completions] };
        if template.is_some() || info.applies_chat_template {
            endpoints.push(Endpoint::ChatCompletions);
        }
        let sampling = self.sampling(spec);
        let mut metrics = Metrics::default();
        let mut first_output = None;
        for endpoint in endpoints {
            for stream in [false, true] {
                let label = format!("POST {}{}", endpoint.path(), if stream { " (stream)" } else { "" });
                let body = serve_client::request_body(
                    endpoint,
                    &prompt,
                    &messages,
                    scenario.max_tokens,
                    &sampling,
                    stream,
                );
                let reply = match client.send(endpoint, &body, deadline) {
                    Ok(r) => r,
                    Err(e) => {
                        let (outcome, gate) = if Instant::now() >= deadline {
                            (Outcome::Timeout, "timeout")
                        } else {
                            (Outcome::Falsified, "serve")
                        };
                        let mut f = Finding::new(outcome, gate, format!("{label}: {e}"));
                        f.prompt = Some(prompt);
                        return f;
                    }
                };
                if endpoint == Endpoint::Completions {
                    if stream {
                        metrics.time_to_first_token_ms = reply.first_text.map(|d| d.as_secs_f64() * 1e3);
                        if let (Some(n), Some(first)) = (reply.completion_tokens, reply.first_text)
                            && n > 1
                            && reply.latency > first
                        {
                            metrics.tokens_per_second =
                                Some((n - 1) as f64 / (reply.latency - first).as_secs_f64());
                        }
                    } else {
                        metrics.prompt_tokens = reply.prompt_tokens.map(|n| n as usize);
                        metrics.tokens = reply.completion_tokens.map(|n| n as usize);
                    }
                }
                let mut f = judge(scenario, scenario.input.question(), &reply.text);
                if !f.outcome.is_pass() {
                    f.reason = format!("{label}: {}", f.reason);
                    f.output = Some(reply.text);
                    f.prompt = Some(prompt);
                    f.metrics = metrics;
                    return f;
                }
                first_output.get_or_insert(reply.text);
            }
        }
        let mut f = Finding::new(
            Outcome::Corroborated,
            "oracles",
            "both endpoints, whole and streamed, answered and the oracles accepted every answer",
        );
        f.output = first_output;
        f.prompt = Some(prompt);
        f.metrics = metrics;
        f
    }

    /// The playbook's performance assertions on this cell: `warmup` untimed greedy generations,
    /// then `runs` timed ones, each between two calibrations of the machine (`perf.rs`); the
    /// medians of the normalised decode speed and time to first token decide, and a measurement
    /// too noisy to judge is `unstable`.
    fn run_perf(
        &self,
        spec: &TrialSpec,
        session: &SharedSession,
        info: &SessionInfo,
        deadline: Instant,
    ) -> Finding {
        let Some(p) = &spec.performance else {
            return Finding::new(Outcome::Falsified, "PERF", "the playbook has no performance assertions");
        };
        let (format, backend) = (spec.name.format.name(), spec.name.backend);
        let floors = crate::perf::Floors {
            min_tokens_per_second: p.min_tokens_per_second(&format, backend),
            max_time_to_first_token_ms: p.max_time_to_first_token_ms(&format, backend),
        };
        let prompt = p.prompt.clone().unwrap_or_else(|| {
            asks(spec, info)
                .into_iter()
                .find(|a| a.conversation.is_none())
                .map_or_else(|| spec.model.layout("Hello"), |a| a.prompt)
        });
        let (warmup, runs) = (p.warmup.unwrap_or(2), p.runs.unwrap_or(5));
        let load_before = crate::perf::load_average();
        // The calibration measures this CPU: it speaks for a cpu cell of the embedded engine,
        // not for a GPU or an engine in another process.
        let calibrated =
            backend == crate::matrix::Backend::Cpu && matches!(spec.engine, EngineSpec::Embedded);
        let calibrate =
            || if calibrated { crate::perf::calibrate() } else { crate::perf::CALIBRATION_REFERENCE };
        // The session is held for the whole measurement, so no other trial's generation lands
        // between a calibration and the generation it brackets.
        let mut guard = session.lock().unwrap_or_else(|e| e.into_inner());
        let mut samples = Vec::new();
        let mut calibration_before = calibrate();
        for i in 0..warmup + runs {
            let request = GenerateRequest {
                prompt: &prompt,
                max_tokens: perf_max_tokens(p),
                sampling: Sampling::Greedy,
                deadline,
            };
            match guard.generate(&request) {
                Ok(g) if i >= warmup => {
                    let calibration_after = calibrate();
                    samples.push(crate::perf::Sample {
                        tokens_per_second: g.tokens_per_second(),
                        time_to_first_token_ms: g.time_to_first_token.as_secs_f64() * 1e3,
                        calibration: (calibration_before + calibration_after) / 2,
                        calibrated,
                    });
                    calibration_before = calibration_after;
                }
                Ok(_) => calibration_before = calibrate(),
                Err(EngineError::Timeout { .. }) => {
                    let mut f = Finding::new(
                        Outcome::Timeout,
                        "timeout",
                        format!("the measurement passed the timeout after {i} generations"),
                    );
                    f.prompt = Some(prompt);
                    return f;
                }
                Err(e) => return Finding::new(Outcome::Falsified, "PERF", format!("generation failed: {e}")),
            }
        }
        drop(guard);
        let judgement = crate::perf::judge(&samples, floors);
        let mut reason = judgement.reason;
        match (load_before, crate::perf::load_average()) {
            (Some(a), Some(b)) => {
                reason.push_str(&format!("; load average {a:.2} → {b:.2} on {} CPUs", self.host.cpus))
            }
            _ => reason.push_str("; load average unknown"),
        }
        if let Some(factor) = crate::config::planted_slowdown() {
            reason.push_str(&format!("; a {factor}× slowdown was planted (QUALIFY_FAULT_SLOWDOWN)"));
        }
        let outcome = match judgement.decision {
            crate::perf::Decision::Pass => Outcome::Corroborated,
            crate::perf::Decision::Fail => Outcome::Falsified,
            crate::perf::Decision::Unstable => Outcome::Unstable,
        };
        let mut f = Finding::new(outcome, "PERF", reason);
        // Metrics are what was measured, as in every other record; the reason gives the
        // normalised figures the verdict was drawn from.
        f.metrics.tokens_per_second = judgement.decode.map(|d| d.measured);
        f.metrics.time_to_first_token_ms = judgement.first_token.map(|d| d.measured);
        f.prompt = Some(prompt);
        f
    }

    /// A server-level check of the session's server.
    fn run_server_gate(
        &self,
        check: ServerCheck,
        spec: &TrialSpec,
        key: &SessionKey,
        session: &SharedSession,
        info: &SessionInfo,
        deadline: Instant,
    ) -> Finding {
        let client = match self.client_for(key, spec, session) {
            Ok(c) => c,
            Err(e) => return Finding::new(Outcome::Falsified, "serve", e),
        };
        let template = info.chat_template.as_ref();
        let chat = template.is_some() || info.applies_chat_template;
        let probe = match spec.scenarios.iter().find(|s| s.property.is_none()) {
            Some(s) => Probe {
                prompt: render_run(&spec.model, &s.input, template),
                messages: messages_of(&s.input),
                max_tokens: s.max_tokens,
                chat,
            },
            None => Probe {
                prompt: spec.model.layout("Hello"),
                messages: messages_of(&Input::Prompt("Hello".into())),
                max_tokens: 8,
                chat,
            },
        };
        let served = client.model().unwrap_or(&spec.model.id).to_string();
        let v = server_gate::check(check, &client, &served, &probe, deadline);
        let mut f = Finding::new(v.outcome, "serve", v.reason);
        f.prompt = v.prompt;
        f
    }

    fn generate_and_judge(
        &self,
        spec: &TrialSpec,
        scenario: &Scenario,
        session: &SharedSession,
        prompt: &str,
        conversation: Option<&[MessageSpec]>,
        deadline: Instant,
    ) -> Finding {
        match self.generate(spec, scenario, session, prompt, conversation, deadline) {
            Ok(generation) => {
                let mut finding =
                    judge_generation(scenario, scenario.input.question(), &generation, templated(spec));
                finding.metrics = metrics_of(&generation);
                finding.output = Some(generation.text);
                finding
            }
            Err(EngineError::Timeout { tokens, partial }) => {
                let limit = spec.tier.timeout.as_secs_f64();
                let mut f = Finding::new(
                    Outcome::Timeout,
                    "timeout",
                    format!("generation passed the {limit}s timeout after {tokens} tokens"),
                );
                f.output = Some(partial);
                f
            }
            Err(e @ EngineError::Crashed(_)) => Finding::new(Outcome::Crashed, "G3", e.to_string()),
            Err(e) => Finding::new(Outcome::Falsified, "G2", format!("gateway G2 (inference) failed: {e}")),
        }
    }

    /// Runs generated cases in this one trial; a failing case is shrunk to a minimal one.
    fn run_property(
        &self,
        spec: &TrialSpec,
        modality: Modality,
        scenario: &Scenario,
        session: &SharedSession,
        property: &Property,
        deadline: Instant,
    ) -> Finding {
        let (template, applies_template) = {
            let s = session.lock().unwrap_or_else(|p| p.into_inner());
            (s.info().chat_template.clone(), s.info().applies_chat_template)
        };
        let template = template.as_ref();
        let strategy = generator_strategy(&property.generator);
        let config = ProptestConfig {
            cases: property.cases,
            failure_persistence: None,
            max_shrink_iters: 256,
            ..ProptestConfig::default()
        };
        let mut runner = seeded_runner(property.seed, &scenario.name, config);
        let last: Mutex<Option<Finding>> = Mutex::new(None);
        let cases = Mutex::new(0u32);
        let result = runner.run(&strategy, |question| {
            *cases.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            let input = Input::Prompt(question.clone());
            let (prompt, conversation) =
                match prepare(&spec.model, modality, &input, template, applies_template) {
                    Ok(p) => p,
                    Err(e) => {
                        let f = Finding::new(Outcome::Falsified, "chat_template", e.to_string());
                        let reason = f.reason.clone();
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                        return Err(TestCaseError::fail(reason));
                    }
                };
            let (generated, http_metrics) = if modality == Modality::Serve {
                match self.generate_over_http(spec, scenario, session, &prompt, deadline) {
                    Ok((g, m)) => (Ok(g), Some(m)),
                    Err(e) => (Err(e), None),
                }
            } else {
                (self.generate(spec, scenario, session, &prompt, conversation.as_deref(), deadline), None)
            };
            let mut f = match generated {
                Ok(g) => {
                    let mut f = judge_generation(scenario, &question, &g, templated(spec));
                    f.metrics = http_metrics.unwrap_or_else(|| metrics_of(&g));
                    f.output = Some(g.text);
                    f
                }
                Err(EngineError::Timeout { .. }) => {
                    Finding::new(Outcome::Timeout, "timeout", "the property passed its timeout")
                }
                Err(e @ EngineError::Crashed(_)) => Finding::new(Outcome::Crashed, "G3", e.to_string()),
                Err(e) => {
                    Finding::new(Outcome::Falsified, "G2", format!("gateway G2 (inference) failed: {e}"))
                }
            };
            f.prompt = Some(prompt);
            let outcome = f.outcome;
            let reason = f.reason.clone();
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
            match outcome {
                Outcome::Corroborated => Ok(()),
                // A timeout ends the property at once: shrinking would only time out again.
                Outcome::Timeout => Err(TestCaseError::reject(reason)),
                _ => Err(TestCaseError::fail(reason)),
            }
        });
        let ran = *cases.lock().unwrap_or_else(|p| p.into_inner());
        let last = last.into_inner().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                let mut f = last.unwrap_or_else(|| Finding::new(Outcome::Corroborated, "property", ""));
                f.outcome = Outcome::Corroborated;
                f.gate = "property".into();
                f.reason = format!("{} generated cases corroborated", property.cases);
                f
            }
            Err(TestError::Fail(reason, minimal)) => {
                // Shrinking ends on the minimal case, but `last` may be a later, passing attempt:
                // run the minimal case once more so the record shows its real output.
                let input = Input::Prompt(minimal.clone());
                let mut f = match prepare(&spec.model, modality, &input, template, applies_template) {
                    Ok((prompt, conversation)) => {
                        let mut f = self.generate_and_judge(
                            spec,
                            scenario,
                            session,
                            &prompt,
                            conversation.as_deref(),
                            deadline,
                        );
                        f.prompt = Some(prompt);
                        f
                    }
                    Err(e) => Finding::new(Outcome::Falsified, "chat_template", e.to_string()),
                };
                f.outcome = Outcome::Falsified;
                f.reason = format!(
                    "property falsified after {ran} case runs; minimal failing case {minimal:?}: {reason}"
                );
                f
            }
            Err(TestError::Abort(reason)) => {
                let mut f = last.unwrap_or_else(|| Finding::new(Outcome::Timeout, "timeout", ""));
                if f.outcome != Outcome::Timeout {
                    f.outcome = Outcome::Falsified;
                }
                f.reason = format!("property aborted: {reason}");
                f
            }
        }
    }

    fn record(&self, spec: &TrialSpec, finding: Finding, elapsed: Duration) -> EvidenceRecord {
        let mut metrics = finding.metrics;
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
            run_id: self.config.run_id.clone(),
            trial: spec.full_name.clone(),
            family: spec.name.family.clone(),
            tier: spec.name.tier.clone(),
            model: spec.name.model.clone(),
            model_id: spec.model.id.clone(),
            format: spec.name.format.name(),
            backend: spec.name.backend.as_str().into(),
            modality,
            scenario,
            outcome: finding.outcome,
            category: Some(category_of(&spec.kind)),
            gate: finding.gate,
            reason: finding.reason,
            prompt: finding.prompt,
            output: finding.output,
            max_tokens: match &spec.kind {
                TrialKind::Scenario { scenario, .. } => scenario.max_tokens,
                TrialKind::Perf => spec.performance.as_ref().map_or(0, perf_max_tokens),
                TrialKind::Gate(_)
                | TrialKind::ServerGate(_)
                | TrialKind::Golden(_)
                | TrialKind::Differential(_) => 0,
            },
            sampling: self.sampling(spec),
            metrics,
            model_files: finding.info.as_ref().map(|i| i.files.clone()).unwrap_or_default(),
            engine: finding.info.as_ref().map(|i| i.engine.clone()),
            device: finding.info.as_ref().map(|i| i.device.clone()),
            playbook: spec.source.display().to_string(),
            harness_version: env!("CARGO_PKG_VERSION").into(),
            host: self.host.clone(),
            timestamp: crate::journal::timestamp(),
        }
    }
}

/// The text `run` sends: a prompt laid out with the model's `prompt_template`; a conversation
/// through the model's chat template, or as a plain transcript ending with the assistant's turn
/// when the model ships none.
pub fn render_run(model: &Model, input: &Input, template: Option<&ChatTemplate>) -> String {
    match input {
        Input::Prompt(p) => model.layout(p),
        Input::Messages(messages) => {
            template.and_then(|t| t.render(messages).ok()).unwrap_or_else(|| transcript(messages))
        }
    }
}

/// The text sent to the engine in a modality. `chat` always goes through the model's own chat
/// template (a plain prompt is one user message); a model without one cannot chat.
pub fn render(
    model: &Model,
    modality: Modality,
    input: &Input,
    template: Option<&ChatTemplate>,
) -> Result<String, ChatError> {
    match modality {
        Modality::Chat => {
            let template = template.ok_or(ChatError::Missing)?;
            match input {
                Input::Prompt(p) => template
                    .render(&[MessageSpec { role: crate::playbook::spec::Role::User, content: p.clone() }]),
                Input::Messages(messages) => template.render(messages),
            }
        }
        Modality::Run | Modality::Serve => Ok(render_run(model, input, template)),
    }
}

/// What a trial sends: the prompt text and, where the engine lays conversations out itself
/// (an OpenAI-compatible server: every `chat` input and every conversation), the conversation,
/// with its readable transcript as the prompt kept in evidence.
fn prepare(
    model: &Model,
    modality: Modality,
    input: &Input,
    template: Option<&ChatTemplate>,
    applies_template: bool,
) -> Result<(String, Option<Vec<MessageSpec>>), ChatError> {
    if applies_template && (modality == Modality::Chat || matches!(input, Input::Messages(_))) {
        let messages = messages_of(input);
        return Ok((transcript(&messages), Some(messages)));
    }
    render(model, modality, input, template).map(|p| (p, None))
}

/// What gates, golden and differential trials send for each scenario of the tier: its prompt
/// as `run` lays it out or, on an engine that lays conversations out itself, a conversation
/// as such.
fn asks(spec: &TrialSpec, info: &SessionInfo) -> Vec<gate::Ask> {
    let template = info.chat_template.as_ref();
    gate::scenario_prompts(&spec.scenarios, |s| match &s.input {
        Input::Messages(m) if info.applies_chat_template => (transcript(m), Some(m.clone())),
        input => (render_run(&spec.model, input, template), None),
    })
}

/// The scenario prompts as `run` lays them out without a template (what a file-only check can
/// know of them).
fn asks_without_session(spec: &TrialSpec) -> Vec<String> {
    spec.scenarios
        .iter()
        .filter(|s| s.property.is_none())
        .map(|s| render_run(&spec.model, &s.input, None))
        .collect()
}

/// A scenario's input as a conversation: a bare prompt is one user turn.
fn messages_of(input: &Input) -> Vec<MessageSpec> {
    match input {
        Input::Prompt(p) => vec![MessageSpec { role: crate::playbook::spec::Role::User, content: p.clone() }],
        Input::Messages(m) => m.clone(),
    }
}

fn transcript(messages: &[MessageSpec]) -> String {
    let mut out = String::new();
    for m in messages {
        let role = match m.role {
            crate::playbook::spec::Role::System => "System",
            crate::playbook::spec::Role::User => "User",
            crate::playbook::spec::Role::Assistant => "Assistant",
        };
        out.push_str(&format!("{role}: {}\n", m.content));
    }
    out.push_str("Assistant:");
    out
}

fn metrics_of(g: &Generation) -> Metrics {
    Metrics {
        load_ms: None,
        time_to_first_token_ms: Some(g.time_to_first_token.as_secs_f64() * 1e3),
        prompt_tokens: Some(g.prompt_tokens),
        tokens: Some(g.tokens.len()),
        tokens_per_second: g.tokens_per_second(),
        duration_ms: 0.0,
    }
}
/// The MQS category a trial scores in: gateways G2 and G4 judge answers (QUAL), the other
/// gateways the files, loading and stability (STAB); golden references are REGR; a derived
/// format against the ground truth is COMP.
pub(crate) fn category_of(kind: &TrialKind) -> Category {
    match kind {
        TrialKind::Gate(Gate::Inference | Gate::Quality) => Category::Qual,
        TrialKind::Gate(Gate::Integrity | Gate::Load | Gate::Stability) => Category::Stab,
        TrialKind::ServerGate(_) => Category::Stab,
        TrialKind::Perf => Category::Perf,
        TrialKind::Golden(_) => Category::Regr,
        TrialKind::Differential(_) => Category::Comp,
        TrialKind::Scenario { scenario, .. } if scenario.edge_case => Category::Edge,
        TrialKind::Scenario { .. } => Category::Qual,
    }
}

/// Whether an evidence `gate` names a gateway (G0–G4).
pub fn is_gateway(gate: &str) -> bool {
    matches!(gate, "G0" | "G1" | "G2" | "G3" | "G4")
}

fn from_verdict(g: Gate, v: GateVerdict) -> Finding {
    Finding {
        outcome: v.outcome,
        gate: g.id().into(),
        reason: v.reason,
        prompt: v.prompt,
        output: v.output,
        metrics: Metrics::default(),
        info: None,
    }
}

/// The generated-sequence rule (vLLM's): greedy outputs of the ground truth and the format are
/// compared token by token; at the first divergence each side's token must be in the other's
/// top `k` after the common prefix, and comparison of that scenario stops there.
pub fn first_divergence(
    reference: &SharedSession,
    candidate: &SharedSession,
    asks: &[gate::Ask],
    k: usize,
    deadline: Instant,
) -> crate::diff::DiffVerdict {
    use crate::diff::DiffVerdict;
    let fail = |reason: String| DiffVerdict { outcome: Outcome::Falsified, reason };
    let top_k = |logits: &[f32], token: u32| crate::golden::top_k(logits, k).ids.contains(&token);
    let (mut identical, mut parted) = (0, Vec::new());
    for ask in asks {
        let (r, c) = match (ask.generate(reference, deadline), ask.generate(candidate, deadline)) {
            (Ok(r), Ok(c)) => (r, c),
            (Err(EngineError::Timeout { .. }), _) | (_, Err(EngineError::Timeout { .. })) => {
                return DiffVerdict {
                    outcome: Outcome::Timeout,
                    reason: "the greedy comparison passed its timeout".into(),
                };
            }
            (Err(e), _) | (_, Err(e)) => return fail(format!("scenario {}: {e}", ask.name)),
        };
        let Some(d) = (0..r.tokens.len().max(c.tokens.len())).find(|&i| r.tokens.get(i) != c.tokens.get(i))
        else {
            identical += 1;
            continue;
        };
        let prefix = &r.tokens[..d];
        let logits =
            |s: &SharedSession| s.lock().unwrap_or_else(|p| p.into_inner()).logits_after(&ask.prompt, prefix);
        let (rl, cl) = match (logits(reference), logits(candidate)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return fail(format!("scenario {}: {e}", ask.name)),
        };
        // A side that ended there chose end-of-sequence; the other side's token is still checked.
        if let Some(&t) = c.tokens.get(d)
            && !top_k(&rl, t)
        {
            return fail(format!(
                "scenario {}: the outputs part at token {d} ({:?} vs {:?}) and this format's token {t} is not in the ground truth's top {k}",
                ask.name, r.text, c.text
            ));
        }
        if let Some(&t) = r.tokens.get(d)
            && !top_k(&cl, t)
        {
            return fail(format!(
                "scenario {}: the outputs part at token {d} ({:?} vs {:?}) and the ground truth's token {t} is not in this format's top {k}",
                ask.name, r.text, c.text
            ));
        }
        parted.push(format!("{} at token {d}", ask.name));
    }
    let mut reason = format!("{identical} of {} greedy outputs identical", asks.len());
    if !parted.is_empty() {
        reason.push_str(&format!(
            "; where they part each token is in the other's top {k} ({})",
            parted.join(", ")
        ));
    }
    DiffVerdict { outcome: Outcome::Corroborated, reason }
}

/// Tokens per performance generation.
fn perf_max_tokens(p: &crate::playbook::spec::PerformanceSpec) -> u32 {
    p.max_tokens.unwrap_or(32)
}

/// Prompt positions whose next-token distributions a logit differential compares.
const DIFF_POSITIONS: usize = 16;

/// The safetensors session a logit differential compares against, if the trial is one.
pub fn reference_key(spec: &TrialSpec) -> Option<SessionKey> {
    matches!(spec.kind, TrialKind::Differential(DiffKind::Logits | DiffKind::Generation))
        .then(|| SessionKey { format: Format::Safetensors, ..session_key(spec) })
}

/// The session a trial runs on: one per `(model, format, backend)`.
pub fn session_key(spec: &TrialSpec) -> SessionKey {
    let engine = match &spec.engine {
        EngineSpec::Embedded => String::new(),
        EngineSpec::Openai { base_url, .. } => base_url.clone(),
        EngineSpec::Command { args, .. } => args.join(" "),
    };
    SessionKey { model: spec.model.id.clone(), format: spec.name.format, backend: spec.name.backend, engine }
}

/// Whether a trial's prompt comes from the chat template.
fn templated(spec: &TrialSpec) -> bool {
    matches!(spec.modality(), Some(Modality::Chat | Modality::Serve))
}

/// A generation judged. In `chat` and `serve` the template defines the turns, so a control token
/// inside an answer (a turn the model opened or a marker it emitted) falsifies it before any
/// oracle looks; `run` decodes past special tokens as transformers does.
fn judge_generation(scenario: &Scenario, question: &str, g: &Generation, templated: bool) -> Finding {
    if let Some(token) = g.leaked_special_tokens.first().filter(|_| templated) {
        return Finding::new(
            Outcome::Falsified,
            "control_tokens",
            format!("control token `{token}` leaked into the answer (special tokens are never output)"),
        );
    }
    judge(scenario, question, &g.text)
}

/// Every oracle judges; the first that falsifies decides.
fn judge(scenario: &Scenario, question: &str, output: &str) -> Finding {
    let mut passed = Vec::new();
    for oracle in &scenario.oracles {
        match oracle.judge(question, output) {
            Verdict::Corroborated(why) => passed.push(format!("{}: {why}", oracle.kind())),
            Verdict::Falsified(why) => return Finding::new(Outcome::Falsified, oracle.kind(), why),
        }
    }
    Finding::new(Outcome::Corroborated, "oracles", passed.join("; "))
}

/// The libtest failure message of a finding, or `None` when it passed.
fn failure_message(f: &Finding) -> Option<String> {
    if f.outcome.is_pass() {
        return None;
    }
    let mut m = format!("{} [{}]: {}", f.outcome.as_str(), f.gate, f.reason);
    if let Some(p) = &f.prompt {
        m.push_str(&format!("\n  prompt: {}", excerpt(p)));
    }
    if let Some(o) = &f.output {
        m.push_str(&format!("\n  output: {}", excerpt(o)));
    }
    Some(m)
}

fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(300).collect();
    if e.len() < s.len() {
        e.push('…');
    }
    format!("{e:?}")
}

/// Shared handle for trial closures.
pub type SharedContext = Arc<RunContext>;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::Finish;
    use crate::oracle::Oracle;

    fn generation(text: &str, leaked: &[&str]) -> Generation {
        Generation {
            text: text.into(),
            tokens: vec![1, 2],
            token_count: Some(2),
            prompt_tokens: 3,
            finish: Finish::Eos,
            time_to_first_token: Duration::from_millis(1),
            duration: Duration::from_millis(2),
            first_logits_finite: Some(true),
            leaked_special_tokens: leaked.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_leaked_control_token_falsifies_before_any_oracle() {
        let scenario = Scenario {
            name: "s".into(),
            input: Input::Prompt("What is 2 + 2?".into()),
            property: None,
            oracles: vec![Oracle::Arithmetic { tolerance: None }],
            max_tokens: 8,
            sampling: crate::playbook::SamplingSpec::default(),
            edge_case: false,
            modalities: None,
        };
        let leaked = generation("4", &["<|im_start|>"]);
        let f = judge_generation(&scenario, "What is 2 + 2?", &leaked, true);
        assert_eq!((f.outcome, f.gate.as_str()), (Outcome::Falsified, "control_tokens"));
        assert!(f.reason.contains("`<|im_start|>` leaked"), "{}", f.reason);
        let f = judge_generation(&scenario, "What is 2 + 2?", &generation("4", &[]), true);
        assert_eq!(f.outcome, Outcome::Corroborated, "{}", f.reason);
        let f = judge_generation(&scenario, "What is 2 + 2?", &leaked, false);
        assert_eq!(f.outcome, Outcome::Corroborated, "run decodes past special tokens: {}", f.reason);
    }
}
