//! The environment of one trial: what its body reads instead of a long argument list, and the
//! session it runs on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::chat::Guarded;
use crate::engine::{
    CommandSession, EngineError, GenerateRequest, Generation, OpenAiSession, Sampling, Session, SessionInfo,
    SessionKey, SharedSession,
};
use crate::expand::{DiffKind, TrialKind, TrialSpec};
use crate::matrix::{Backend, Format};
use crate::playbook::spec::EngineSpec;
use crate::playbook::{MessageSpec, Scenario};

use super::{Ask, RunContext};

/// Everything a trial body works with once its session is loaded.
#[derive(Clone, Copy)]
pub(crate) struct TrialEnv<'a> {
    pub ctx: &'a RunContext,
    pub spec: &'a TrialSpec,
    /// The session the trial runs on (`session_key`).
    pub key: &'a SessionKey,
    /// The model's ground-truth directory (empty for an `openai` engine).
    pub model_dir: &'a Path,
    /// The file of the trial's format: the ground truth itself, or the converted artifact.
    pub artifact: &'a Path,
    pub session: &'a SharedSession,
    pub info: &'a SessionInfo,
    pub deadline: Instant,
    /// Which run of a repeated scenario this is (0 for the first, and for everything else).
    pub repeat: u32,
    /// The trial's waits that do not count against its timeout (memory admission, another
    /// trial's batch).
    pub waits: &'a Waits,
}

impl TrialEnv<'_> {
    /// How this run samples: the scenario's sampling, a seeded one drawing a new seed per repeat
    /// (greedy decoding repeats itself).
    pub(crate) fn sampling(&self) -> Sampling {
        match sampling(self.spec) {
            Sampling::Seeded { temperature, top_p, top_k, seed } => Sampling::Seeded {
                temperature,
                top_p,
                top_k,
                seed: seed.wrapping_add(u64::from(self.repeat)),
            },
            Sampling::Greedy => Sampling::Greedy,
        }
    }

    /// The tier's timeout, for messages.
    pub(crate) fn timeout(&self) -> Duration {
        self.spec.tier.timeout
    }

    /// What checks send for each scenario of the tier (`prompt::asks`).
    pub(crate) fn asks(&self) -> Vec<Ask> {
        super::prompt::asks(self.spec, self.info)
    }

    /// The prompt of the first scenario sent as text, or a greeting where there is none.
    pub(crate) fn basic_prompt(&self) -> String {
        self.asks()
            .into_iter()
            .find(|a| a.conversation.is_none())
            .map_or_else(|| self.spec.model.layout("Hello"), |a| a.prompt)
    }

    /// Generates for every one of `prompts` as one batch, each as [`TrialEnv::generate`] would
    /// alone (the same sampling, `max_tokens` and deadline); `None` where the engine generates
    /// one at a time. The answers are the ones generated alone (the embedded engine is
    /// batch-invariant, and `diff::batch-invariance` holds it to that).
    pub(crate) fn generate_batch(&self, scenario: &Scenario, prompts: &[Guarded]) -> Option<BatchAnswers> {
        let sampling = self.sampling();
        let requests: Vec<GenerateRequest<'_>> = prompts
            .iter()
            .map(|p| GenerateRequest {
                prompt: &p.text,
                literal: &p.literal,
                max_tokens: scenario.max_tokens,
                sampling: sampling.clone(),
                deadline: self.deadline,
            })
            .collect();
        self.generate_requests(&requests)
    }

    /// Generates for every one of `requests` as one batch on the trial's session; `None` where
    /// the engine generates one at a time.
    pub(crate) fn generate_requests(&self, requests: &[GenerateRequest<'_>]) -> Option<BatchAnswers> {
        let started = Instant::now();
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let answers = match session.generate_batch(requests) {
            Ok(Some(answers)) => answers,
            Ok(None) => return None,
            Err(e) => requests.iter().map(|_| Err(EngineError::inference(e.to_string()))).collect(),
        };
        let seconds = started.elapsed().as_secs_f64();
        let tokens: usize = answers.iter().flatten().map(|g| g.tokens.len()).sum();
        let metrics = crate::journal::BatchMetrics {
            size: requests.len(),
            tokens,
            tokens_per_second: if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 },
        };
        Some(BatchAnswers { answers, metrics })
    }

    /// Generates for `prompt`, or answers `conversation` where the engine lays conversations
    /// out itself (then `prompt` is the readable transcript kept as evidence).
    pub(crate) fn generate(
        &self,
        scenario: &Scenario,
        prompt: &Guarded,
        conversation: Option<&[MessageSpec]>,
    ) -> Result<Generation, EngineError> {
        let request = GenerateRequest {
            prompt: &prompt.text,
            literal: &prompt.literal,
            max_tokens: scenario.max_tokens,
            sampling: self.sampling(),
            deadline: self.deadline,
        };
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        match conversation {
            Some(messages) => session.chat(messages, &request),
            None => session.generate(&request),
        }
    }
}

/// Answers to several prompts generated as one batch ([`TrialEnv::generate_batch`]), with the
/// batch's own figures.
pub(crate) struct BatchAnswers {
    pub answers: Vec<Result<Generation, EngineError>>,
    pub metrics: crate::journal::BatchMetrics,
}

/// How a trial's scenario samples: greedy unless it sets a temperature above zero.
pub(crate) fn sampling(spec: &TrialSpec) -> Sampling {
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

/// The session a trial runs on: one per `(model, format, backend)`.
pub(crate) fn session_key(spec: &TrialSpec) -> SessionKey {
    let engine = match &spec.engine {
        EngineSpec::Embedded => String::new(),
        EngineSpec::Openai { base_url, .. } => base_url.clone(),
        EngineSpec::Command { args, .. } => args.join(" "),
    };
    SessionKey { model: spec.model.id.clone(), format: spec.name.format, backend: spec.name.backend, engine }
}

/// The safetensors session a logit, long-context or generation differential compares against,
/// if the trial is one.
pub(crate) fn reference_key(spec: &TrialSpec) -> Option<SessionKey> {
    // `gate::trace` of a derived cell learns its activation range from the ground truth.
    let numerics_of_derived =
        matches!(spec.kind, TrialKind::Numerics) && spec.name.format != Format::Safetensors;
    match spec.kind {
        // A GPU cell is held to the same format on CPU.
        TrialKind::Differential(DiffKind::BackendParity) => {
            Some(SessionKey { backend: Backend::Cpu, ..session_key(spec) })
        }
        TrialKind::Differential(DiffKind::Trace) => {
            Some(SessionKey { format: Format::Safetensors, ..session_key(spec) })
        }
        TrialKind::Differential(k) if k.compares_logits() => {
            Some(SessionKey { format: Format::Safetensors, ..session_key(spec) })
        }
        _ if numerics_of_derived => Some(SessionKey { format: Format::Safetensors, ..session_key(spec) }),
        _ => None,
    }
}

/// Loads the session of a trial on its engine.
pub(crate) fn load(
    ctx: &RunContext,
    spec: &TrialSpec,
    artifact: &Path,
    model_dir: &Path,
    deadline: Instant,
) -> Result<Box<dyn Session>, EngineError> {
    match &spec.engine {
        EngineSpec::Embedded => ctx.engine.load(artifact, spec.name.backend),
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
            let mut session = OpenAiSession::connect(base_url, api_key, served, timeout)?;
            // Where the model's files are here and ship no chat template, the server has none
            // to apply either: conversations go through /v1/completions, laid out as `run` lays
            // them out, as they do on the embedded engine.
            if model_dir.join("tokenizer_config.json").is_file()
                && matches!(crate::chat::ChatTemplate::from_model_dir(model_dir), Ok(None))
            {
                session.lays_out_conversations(false);
            }
            Ok(Box::new(session))
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

/// The time a trial's body waited for room in the memory budget, or spent on other trials' work
/// (its cell's batch), which its timeout does not count: the body moves its deadline by it, and
/// the watchdog its own.
#[derive(Default)]
pub(crate) struct Waits {
    waiting: AtomicBool,
    waited_ns: AtomicU64,
}

impl Waits {
    /// Counts `time` the trial spent on other trials' work (generating their answers in its
    /// cell's batch) as not its own: its deadline moves by it.
    pub(crate) fn add(&self, time: Duration) {
        self.waited_ns.fetch_add(time.as_nanos() as u64, Ordering::SeqCst);
    }

    pub(crate) fn waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }

    pub(crate) fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::SeqCst))
    }

    /// Runs `admit` as a wait that does not count.
    pub(crate) fn uncounted<T>(&self, admit: impl FnOnce() -> T) -> T {
        let began = Instant::now();
        self.waiting.store(true, Ordering::SeqCst);
        let admitted = admit();
        self.waited_ns.fetch_add(began.elapsed().as_nanos() as u64, Ordering::SeqCst);
        self.waiting.store(false, Ordering::SeqCst);
        admitted
    }
}
