//! Gateways G0–G4 as trials: one of each per `(model, format, backend)`. Any gateway failure
//! zeroes a model's score; under `stop-on-p0` it also stops the rest of its group. G0 reads
//! files only ([`run_integrity`]); the others run on the cell's loaded session ([`run`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;

use crate::engine::{EngineError, GenerateRequest, SharedSession};
use crate::expand::TrialSpec;
use crate::matrix::Format;
use crate::oracle::{GarbageConfig, garbage_reason};
use crate::playbook::Model;
use crate::trial::{Ask, Finding, TrialEnv};
use crate::vocab::{Decider, Gate, Outcome};

use super::Verdict;

/// G0: the model directory against itself and the playbook.
pub(crate) fn integrity(dir: &Path, model: &Model) -> Verdict {
    let report = crate::integrity::check(dir, &model.expect, model.architecture.as_deref());
    if report.problems.is_empty() {
        Verdict::pass(format!(
            "{} tensors, {} parameters, consistent with config.json and the tokenizer",
            report.tensors, report.parameters
        ))
    } else {
        Verdict::fail(format!("integrity: {}", report.problems.join("; ")))
    }
}

/// G0 for a derived artifact of `format` (after the source passed, when there is one):
/// `integrity::check_artifact`, against the ground truth in `source`, or against the playbook's
/// expectations alone where the model has none.
pub(crate) fn artifact_integrity(
    artifact: &Path,
    format: Format,
    source: Option<&Path>,
    model: &Model,
    before: Verdict,
) -> Verdict {
    match crate::integrity::check_artifact(
        artifact,
        format,
        source,
        &model.expect,
        model.architecture.as_deref(),
    ) {
        Ok(what) if what.is_empty() => before,
        Ok(what) => Verdict::pass(format!("{}; {what}", before.reason)),
        Err(problem) => Verdict::fail(format!("integrity: {problem}")),
    }
}

/// G2: a basic prompt yields at least one token, with finite logits.
pub(crate) fn inference(session: &SharedSession, prompt: &str, deadline: Instant) -> Verdict {
    let result = session
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .generate(&GenerateRequest::greedy(prompt, 8, deadline));
    let mut v = match result {
        Err(EngineError::Timeout { tokens, .. }) => {
            Verdict::timeout(format!("basic inference passed the timeout after {tokens} tokens"))
        }
        Err(e) => Verdict::fail(format!("basic inference failed: {e}")),
        Ok(g) if g.first_logits_finite == Some(false) => {
            Verdict::fail("the first step's logits hold NaN or infinite values")
        }
        Ok(g) if g.token_count == Some(0) || (g.token_count.is_none() && g.text.is_empty()) => {
            Verdict::fail("the model ended the sequence before producing any token")
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
            let mut v = Verdict::pass(format!("{produced} {logits}"));
            v.output = Some(g.text);
            v
        }
    };
    v.prompt = Some(prompt.to_string());
    v
}

/// G3: repeated and awkward inputs neither crash, hang nor change greedy output.
pub(crate) fn stability(session: &SharedSession, prompt: &str, deadline: Instant) -> Verdict {
    let run = |p: &str, max: u32| {
        catch_unwind(AssertUnwindSafe(|| {
            session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .generate(&GenerateRequest::greedy(p, max, deadline))
        }))
    };
    let first = run(prompt, 16);
    let second = run(prompt, 16);
    match (&first, &second) {
        (Ok(Ok(a)), Ok(Ok(b))) if a.tokens != b.tokens || a.text != b.text => {
            return Verdict::fail(format!(
                "greedy output changed between two runs: {:?} then {:?}",
                a.text, b.text
            ));
        }
        (Err(_), _) | (_, Err(_)) => return Verdict::fail("the engine panicked on a basic prompt"),
        (Ok(Err(EngineError::Timeout { .. })), _) | (_, Ok(Err(EngineError::Timeout { .. }))) => {
            return Verdict::timeout("the basic prompt passed the timeout");
        }
        // Stability is judged on a model that runs: one that cannot answer the basic prompt, or
        // answers it with nothing, is not stable, whatever the awkward inputs do after it.
        (Ok(Err(e)), _) | (_, Ok(Err(e))) => return Verdict::fail(format!("the basic prompt failed: {e}")),
        (Ok(Ok(a)), _) if a.token_count == Some(0) || (a.token_count.is_none() && a.text.is_empty()) => {
            return Verdict::fail("the basic prompt produced no token");
        }
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
            return Verdict::timeout("stability checks passed the timeout");
        }
        match run(input, 4) {
            Err(_) => return Verdict::fail(format!("the engine panicked on {label}")),
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
                return Verdict::timeout(format!("{label} hung past the timeout"));
            }
            Ok(Err(e)) => return Verdict::fail(format!("{label} failed: {e}")),
        }
    }
    Verdict::pass(
        "deterministic under greedy decoding; empty, whitespace, mixed-script and over-long prompts handled",
    )
}

/// G4: no scenario's output is garbage.
pub(crate) fn quality(session: &SharedSession, scenarios: &[Ask], deadline: Instant) -> Verdict {
    let cfg = GarbageConfig::default();
    for ask in scenarios {
        let (name, prompt) = (&ask.name, &ask.prompt);
        match ask.generate(session, deadline) {
            Err(EngineError::Timeout { .. }) => {
                return Verdict {
                    prompt: Some(prompt.clone()),
                    ..Verdict::timeout(format!("scenario {name} passed the timeout"))
                };
            }
            Err(e) => return Verdict::fail(format!("scenario {name}: {e}")),
            Ok(g) => {
                if let Some(why) = garbage_reason(&g.text, &cfg) {
                    return Verdict {
                        outcome: Outcome::Falsified,
                        reason: format!("scenario {name} produced garbage: {why}"),
                        prompt: Some(prompt.clone()),
                        output: Some(g.text),
                    };
                }
            }
        }
    }
    Verdict::pass(format!("{} scenario outputs are not garbage", scenarios.len()))
}

/// A gateway trial on the cell's loaded session.
pub(crate) fn run(env: &TrialEnv<'_>, g: Gate) -> Finding {
    let verdict = match g {
        Gate::Integrity => return run_integrity(env.spec, env.model_dir, env.artifact),
        Gate::Load => Verdict::pass(format!(
            "loaded by {} on {} in {:.0} ms",
            env.info.engine,
            env.info.device,
            env.info.load_time.as_secs_f64() * 1e3
        )),
        Gate::Inference => inference(env.session, &env.basic_prompt(), env.deadline),
        Gate::Stability => stability(env.session, &env.basic_prompt(), env.deadline),
        Gate::Quality => quality(env.session, &env.asks(), env.deadline),
    };
    verdict.into_finding(Decider::Gateway(g))
}

/// G0 of a cell: the ground truth's files and, for a derived format, its artifact: the one
/// modelqa converted, or the one the model ships (`artifacts:`), checked alike. A model with no
/// ground truth (`model_dir` empty) has its shipped file checked on its own.
pub(crate) fn run_integrity(spec: &TrialSpec, model_dir: &Path, artifact: &Path) -> Finding {
    let format = spec.name.format;
    let source = (!model_dir.as_os_str().is_empty()).then_some(model_dir);
    let mut verdict = match source {
        Some(dir) => integrity(dir, &spec.model),
        None => Verdict::pass("no safetensors ground truth: the file is checked on its own"),
    };
    if verdict.outcome == Outcome::Corroborated && format != Format::Safetensors {
        verdict = artifact_integrity(artifact, format, source, &spec.model, verdict);
    }
    if let Some(shipped) = spec.model.artifact(format) {
        verdict.reason = format!("third-party {format} file {}: {}", shipped.name(), verdict.reason);
    }
    verdict.into_finding(Decider::Gateway(Gate::Integrity))
}
