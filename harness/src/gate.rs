//! Gateways G0–G4 as trials: one of each per `(model, format, backend)`. Any gateway failure
//! zeroes a model's score; under `stop-on-p0` it also stops the rest of its group.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;

use crate::engine::{EngineError, GenerateRequest, Generation, Sampling, SharedSession};
use crate::journal::Outcome;
use crate::oracle::{GarbageConfig, garbage_reason};
use crate::playbook::{MessageSpec, Model, Scenario};

/// A gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Gate {
    Integrity,
    Load,
    Inference,
    Stability,
    Quality,
}

impl Gate {
    pub const ALL: [Gate; 5] = [Gate::Integrity, Gate::Load, Gate::Inference, Gate::Stability, Gate::Quality];

    /// The trial-name segment: `g0-integrity`.
    pub fn slug(self) -> &'static str {
        match self {
            Gate::Integrity => "g0-integrity",
            Gate::Load => "g1-load",
            Gate::Inference => "g2-inference",
            Gate::Stability => "g3-stability",
            Gate::Quality => "g4-quality",
        }
    }

    /// The short id used in evidence: `G0`.
    pub fn id(self) -> &'static str {
        match self {
            Gate::Integrity => "G0",
            Gate::Load => "G1",
            Gate::Inference => "G2",
            Gate::Stability => "G3",
            Gate::Quality => "G4",
        }
    }

    pub fn parse(slug: &str) -> Option<Gate> {
        Gate::ALL.into_iter().find(|g| g.slug() == slug)
    }

    /// Whether the gate needs a loaded session (G0 reads files only).
    pub fn needs_session(self) -> bool {
        self != Gate::Integrity
    }
}

/// A gate's verdict.
#[derive(Debug, Clone)]
pub struct GateVerdict {
    pub outcome: Outcome,
    pub reason: String,
    pub prompt: Option<String>,
    pub output: Option<String>,
}

impl GateVerdict {
    pub fn pass(reason: impl Into<String>) -> Self {
        Self { outcome: Outcome::Corroborated, reason: reason.into(), prompt: None, output: None }
    }
    pub fn fail(reason: impl Into<String>) -> Self {
        Self { outcome: Outcome::Falsified, reason: reason.into(), prompt: None, output: None }
    }
}

/// G0: the model directory against itself and the playbook.
pub fn integrity(dir: &Path, model: &Model) -> GateVerdict {
    let report = crate::integrity::check(dir, &model.expect, model.architecture.as_deref());
    if report.problems.is_empty() {
        GateVerdict::pass(format!(
            "{} tensors, {} parameters, consistent with config.json and the tokenizer",
            report.tensors, report.parameters
        ))
    } else {
        GateVerdict::fail(format!("integrity: {}", report.problems.join("; ")))
    }
}

/// G0 for a derived artifact (after the source passed): the container reads back with its
/// checksums, and every tensor dequantizes to finite values.
pub fn artifact_integrity(artifact: &Path, source: GateVerdict) -> GateVerdict {
    let bytes = match std::fs::read(artifact) {
        Ok(b) => b,
        Err(e) => return GateVerdict::fail(format!("integrity: failed to read {}: {e}", artifact.display())),
    };
    if artifact.extension().is_some_and(|e| e == "apr") {
        let file = match crate::format::apr::read(&bytes) {
            Ok(f) => f,
            Err(e) => return GateVerdict::fail(format!("integrity: {}: {e}", artifact.display())),
        };
        for t in &file.tensors {
            match crate::format::apr::dequantize(t) {
                Ok(v) if v.iter().all(|x| x.is_finite()) => {}
                Ok(_) => {
                    return GateVerdict::fail(format!(
                        "integrity: tensor `{}` of the APR file holds NaN or Inf",
                        t.name
                    ));
                }
                Err(e) => return GateVerdict::fail(format!("integrity: {e}")),
            }
        }
        return GateVerdict::pass(format!(
            "{}; the APR file ({} tensors) reads back with valid checksums",
            source.reason,
            file.tensors.len()
        ));
    }
    source
}

fn greedy<'a>(prompt: &'a str, max_tokens: u32, deadline: Instant) -> GenerateRequest<'a> {
    GenerateRequest { prompt, max_tokens, sampling: Sampling::Greedy, deadline }
}

/// G2: a basic prompt yields at least one token, with finite logits.
pub fn inference(session: &SharedSession, prompt: &str, deadline: Instant) -> GateVerdict {
    let result = session.lock().unwrap_or_else(|p| p.into_inner()).generate(&greedy(prompt, 8, deadline));
    let mut v = match result {
        Err(EngineError::Timeout { tokens, .. }) => GateVerdict {
            outcome: Outcome::Timeout,
            reason: format!("basic inference passed the timeout after {tokens} tokens"),
            prompt: None,
            output: None,
        },
        Err(e) => GateVerdict::fail(format!("basic inference failed: {e}")),
        Ok(g) if g.first_logits_finite == Some(false) => {
            GateVerdict::fail("the first step's logits hold NaN or infinite values")
        }
        Ok(g) if g.token_count == Some(0) || (g.token_count.is_none() && g.text.is_empty()) => {
            GateVerdict::fail("the model ended the sequence before producing any token")
        }
        Ok(g) => {
            let produced = match g.token_count {
                Some(n) => format!("{n} tokens"),
                None => format!("{} characters", g.text.chars().count()),
            };
            let logits = match g.first_logits_finite {
                Some(_) => "with finite logits",
                None => "(the engine shows no logits)",
            };
            let mut v = GateVerdict::pass(format!("{produced} {logits}"));
            v.output = Some(g.text);
            v
        }
    };
    v.prompt = Some(prompt.to_string());
    v
}

/// G3: repeated and awkward inputs neither crash, hang nor change greedy output.
pub fn stability(session: &SharedSession, prompt: &str, deadline: Instant) -> GateVerdict {
    let run = |p: &str, max: u32| {
        catch_unwind(AssertUnwindSafe(|| {
            session.lock().unwrap_or_else(|e| e.into_inner()).generate(&greedy(p, max, deadline))
        }))
    };
    let first = run(prompt, 16);
    let second = run(prompt, 16);
    match (&first, &second) {
        (Ok(Ok(a)), Ok(Ok(b))) if a.tokens != b.tokens || a.text != b.text => {
            return GateVerdict::fail(format!(
                "greedy output changed between two runs: {:?} then {:?}",
                a.text, b.text
            ));
        }
        (Err(_), _) | (_, Err(_)) => return GateVerdict::fail("the engine panicked on a basic prompt"),
        _ => {}
    }
    let long = "word ".repeat(4096);
    for (label, input) in [
        ("an empty prompt", ""),
        ("whitespace", " \n\t "),
        ("mixed scripts", "你好 مرحبا 😀"),
        ("an over-long prompt", long.as_str()),
    ] {
        if Instant::now() >= deadline {
            return GateVerdict {
                outcome: Outcome::Timeout,
                reason: "stability checks passed the timeout".into(),
                prompt: None,
                output: None,
            };
        }
        match run(input, 4) {
            Err(_) => return GateVerdict::fail(format!("the engine panicked on {label}")),
            // A clean error (say, a prompt longer than the context) is stable behaviour.
            Ok(
                Ok(_)
                | Err(
                    EngineError::Inference(_)
                    | EngineError::InferenceFailed { .. }
                    | EngineError::OutputNotJson { .. }
                    | EngineError::PromptTooLong { .. }
                    | EngineError::OutsideContext { .. }
                    | EngineError::EmptyPrompt,
                ),
            ) => {}
            Ok(Err(EngineError::Timeout { .. })) => {
                return GateVerdict {
                    outcome: Outcome::Timeout,
                    reason: format!("{label} hung past the timeout"),
                    prompt: None,
                    output: None,
                };
            }
            Ok(Err(e)) => return GateVerdict::fail(format!("{label} failed: {e}")),
        }
    }
    GateVerdict::pass(
        "deterministic under greedy decoding; empty, whitespace, mixed-script and over-long prompts handled",
    )
}

/// G4: no scenario's output is garbage.
pub fn quality(session: &SharedSession, scenarios: &[Ask], deadline: Instant) -> GateVerdict {
    let cfg = GarbageConfig::default();
    for ask in scenarios {
        let (name, prompt) = (&ask.name, &ask.prompt);
        match ask.generate(session, deadline) {
            Err(EngineError::Timeout { .. }) => {
                return GateVerdict {
                    outcome: Outcome::Timeout,
                    reason: format!("scenario {name} passed the timeout"),
                    prompt: Some(prompt.clone()),
                    output: None,
                };
            }
            Err(e) => return GateVerdict::fail(format!("scenario {name}: {e}")),
            Ok(g) => {
                if let Some(why) = garbage_reason(&g.text, &cfg) {
                    return GateVerdict {
                        outcome: Outcome::Falsified,
                        reason: format!("scenario {name} produced garbage: {why}"),
                        prompt: Some(prompt.clone()),
                        output: Some(g.text),
                    };
                }
            }
        }
    }
    GateVerdict::pass(format!("{} scenario outputs are not garbage", scenarios.len()))
}

/// What a gate sends for one scenario.
#[derive(Debug, Clone)]
pub struct Ask {
    pub name: String,
    /// The text sent; for a conversation sent as such, its readable transcript.
    pub prompt: String,
    /// The conversation, where the engine lays conversations out itself.
    pub conversation: Option<Vec<MessageSpec>>,
    pub max_tokens: u32,
}

impl Ask {
    /// Greedy generation for this scenario on `session`.
    pub fn generate(&self, session: &SharedSession, deadline: Instant) -> Result<Generation, EngineError> {
        let request = greedy(&self.prompt, self.max_tokens, deadline);
        let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
        match &self.conversation {
            Some(messages) => session.chat(messages, &request),
            None => session.generate(&request),
        }
    }
}

/// What a gate sends for each scenario (`render` gives the prompt and, for an engine that lays
/// conversations out itself, the conversation); generated properties are left out.
pub fn scenario_prompts(
    scenarios: &[std::sync::Arc<Scenario>],
    render: impl Fn(&Scenario) -> (String, Option<Vec<MessageSpec>>),
) -> Vec<Ask> {
    scenarios
        .iter()
        .filter(|s| s.property.is_none())
        .map(|s| {
            let (prompt, conversation) = render(s);
            Ask { name: s.name.clone(), prompt, conversation, max_tokens: s.max_tokens }
        })
        .collect()
}
