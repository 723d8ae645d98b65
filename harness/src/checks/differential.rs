//! Differential trials: a derived format against the safetensors ground truth — its tensors,
//! its next-token distributions, its greedy generations, its chat prompts, and the contract
//! invariants of the conversion. The comparisons themselves are in [`super::diff`]; the
//! tokenizer fuzz and a cell served against itself in process have rooms of their own.

use std::path::Path;
use std::time::Instant;

use crate::chat::ChatTemplate;
use crate::engine::{EngineError, SharedSession};
use crate::expand::{DiffKind, TrialSpec};
use crate::matrix::{Backend, Format, Quantization};
use crate::playbook::MessageSpec;
use crate::trial::{Ask, Finding, TrialEnv, asks_without_session, messages_of, reference_key};
use crate::vocab::{Decider, Invariant, Outcome};

use super::Verdict;
use super::diff::{self, LogitTolerance};
use super::golden;

/// Prompt positions whose next-token distributions a logit differential compares.
const DIFF_POSITIONS: usize = 16;

/// An invariant reads files only; no session is loaded for it.
pub(crate) fn run_invariant(spec: &TrialSpec, model_dir: &Path, artifact: &Path, inv: Invariant) -> Finding {
    let texts = asks_without_session(spec);
    diff::invariant(inv, model_dir, artifact, spec.name.format, &texts).into_finding(Decider::Comp)
}

/// A differential trial on the cell's loaded session.
pub(crate) fn run(env: &TrialEnv<'_>, kind: DiffKind) -> Finding {
    let spec = env.spec;
    let verdict = match kind {
        DiffKind::Tensors => diff::tensors(env.model_dir, env.artifact),
        DiffKind::Invariant(inv) => return run_invariant(spec, env.model_dir, env.artifact, inv),
        DiffKind::TokenizerFuzz => return super::tokenizer_fuzz::run(spec, env.model_dir, env.artifact),
        DiffKind::ServeVsRun => return super::serve_vs_run::run(env),
        DiffKind::Trace => return super::trace::run_diff(env),
        DiffKind::BatchInvariance => return super::batch_invariance::run(env),
        DiffKind::ChatPrompt => match ChatTemplate::from_model_dir(env.model_dir) {
            Ok(reference) => {
                let conversations: Vec<(String, Vec<MessageSpec>)> = spec
                    .scenarios
                    .iter()
                    .filter(|s| s.property.is_none())
                    .map(|s| (s.name.clone(), messages_of(&s.input)))
                    .collect();
                diff::chat_prompts(reference.as_ref(), env.info.chat_template.as_ref(), &conversations)
            }
            Err(e) => Verdict::fail(format!("the safetensors chat template: {e}")),
        },
        DiffKind::Logits
        | DiffKind::Generation
        | DiffKind::LongContext
        | DiffKind::Perplexity
        | DiffKind::BackendParity => {
            let reference = match reference(env) {
                Ok(r) => r,
                Err(finding) => return *finding,
            };
            match kind {
                DiffKind::Generation => {
                    let k = spec.differential.top_k.unwrap_or(5);
                    first_divergence(&reference, env.session, &env.asks(), k, env.deadline)
                }
                DiffKind::LongContext => {
                    return super::long_context::run(env, &reference, long_context_tolerance(spec));
                }
                DiffKind::Perplexity => return super::perplexity::run(env, &reference),
                DiffKind::BackendParity => return backend_parity(env, &reference),
                _ => return logits(env, &reference),
            }
        }
    };
    let decider = if verdict.outcome == Outcome::Timeout { Decider::Timeout } else { Decider::Comp };
    verdict.into_finding(decider)
}

/// The cell's safetensors reference session, loaded (or found) as the trial's own is; a failure
/// is the trial's finding.
pub(crate) fn reference(env: &TrialEnv<'_>) -> Result<SharedSession, Box<Finding>> {
    let spec = env.spec;
    let Some(reference_key) = reference_key(spec) else {
        return Err(Box::new(Finding::new(
            Outcome::Falsified,
            Decider::Comp,
            "a safetensors cell has no reference",
        )));
    };
    // A GPU cell's reference is its own file on CPU; every other one, the safetensors on its
    // own backend.
    let (path, backend, what) = match spec.kind {
        crate::expand::TrialKind::Differential(DiffKind::BackendParity) => {
            (env.artifact, Backend::Cpu, "CPU")
        }
        _ => (env.model_dir, spec.name.backend, "safetensors"),
    };
    let (reference, _) =
        env.ctx.sessions.get_or_load(&reference_key, false, || env.ctx.engine.load(path, backend));
    reference.map_err(|e| {
        Box::new(Finding::new(
            Outcome::Falsified,
            Decider::Comp,
            format!("the {what} reference failed to load: {e}"),
        ))
    })
}

/// The logit gate of the trial's format: the playbook's, else the format's default.
fn tolerance(spec: &TrialSpec) -> LogitTolerance {
    let format = spec.name.format;
    match spec.differential.logits.get(&format.name()) {
        Some(g) => LogitTolerance { max_mean_kl: g.max_mean_kl, min_top1: g.min_top1 },
        None => LogitTolerance::for_format(format),
    }
}

/// The gate of each bucket of `diff::long-context`: the playbook's for the trial's format, else
/// the format's logit gate.
fn long_context_tolerance(spec: &TrialSpec) -> LogitTolerance {
    match spec.differential.long_context.get(&spec.name.format.name()) {
        Some(g) => LogitTolerance { max_mean_kl: g.max_mean_kl, min_top1: g.min_top1 },
        None => tolerance(spec),
    }
}

/// The logits at the first [`DIFF_POSITIONS`] positions of every scenario prompt, from the
/// reference and from the cell's session; a failure (or the deadline) is the trial's finding.
type PromptLogits = Vec<Vec<Vec<f32>>>;

fn both_logits(
    env: &TrialEnv<'_>,
    reference: &SharedSession,
) -> Result<(PromptLogits, PromptLogits), Box<Finding>> {
    let mut want = Vec::new();
    let mut got = Vec::new();
    for Ask { name, prompt, .. } in &env.asks() {
        if Instant::now() >= env.deadline {
            return Err(Box::new(Finding::new(
                Outcome::Timeout,
                Decider::Timeout,
                "the logit comparison passed its timeout",
            )));
        }
        let r = reference.lock().unwrap_or_else(|p| p.into_inner()).prompt_logits(prompt, DIFF_POSITIONS);
        let c = env.session.lock().unwrap_or_else(|p| p.into_inner()).prompt_logits(prompt, DIFF_POSITIONS);
        match (r, c) {
            (Ok(r), Ok(c)) => {
                want.push(r);
                got.push(c);
            }
            (Err(e), _) | (_, Err(e)) => {
                let what = format!("scenario {name}");
                return Err(Box::new(Finding::from_engine_error(e, Decider::Comp, &what, env.timeout())));
            }
        }
    }
    Ok((want, got))
}

/// Next-token distributions at the first prompt positions of every scenario, reference and
/// candidate, judged by the format's tolerance.
fn logits(env: &TrialEnv<'_>, reference: &SharedSession) -> Finding {
    let (want, got) = match both_logits(env, reference) {
        Ok(both) => both,
        Err(finding) => return *finding,
    };
    let evidence = match diff::LogitEvidence::measure(&want, &got) {
        Ok(e) => e,
        Err(why) => return Verdict::fail(why).into_finding(Decider::Comp),
    };
    let mut finding = evidence.judge(tolerance(env.spec)).into_finding(Decider::Comp);
    // The figures `cargo xtask diff` compares between runs.
    let (agree, decisive) = evidence.decisive_agreement();
    finding.metrics.mean_kl = Some(evidence.mean_kl());
    finding.metrics.top1_agreement = (decisive > 0).then(|| agree as f64 / decisive as f64);
    finding
}

/// The largest difference a GPU logit may show from the CPU's for a format whose weights are
/// f32 (safetensors as the engine loads it, APR, GGUF F32), relative to the position's largest
/// logit magnitude (at least 1): the same arithmetic in another order.
pub(crate) const BACKEND_PARITY_F32: f64 = 1e-5;

/// `diff::backend-parity`: a GPU cell's logits on every scenario prompt against the same file on
/// CPU. f32 weights: every logit within [`BACKEND_PARITY_F32`] of the CPU's, scaled by the
/// position's largest logit; quantized and f16 files, whose GPU kernels dequantize and
/// accumulate otherwise, the format's logit gate against the CPU.
fn backend_parity(env: &TrialEnv<'_>, reference: &SharedSession) -> Finding {
    let (cpu, gpu) = match both_logits(env, reference) {
        Ok(both) => both,
        Err(finding) => return *finding,
    };
    let format = env.spec.name.format;
    let f32_weights = matches!(format, Format::Safetensors | Format::Apr | Format::Gguf(Quantization::F32));
    if !f32_weights {
        let evidence = match diff::LogitEvidence::measure(&cpu, &gpu) {
            Ok(e) => e,
            Err(why) => return Verdict::fail(why).into_finding(Decider::Comp),
        };
        return evidence.judge(LogitTolerance::for_format(format)).into_finding(Decider::Comp);
    }
    parity(&cpu, &gpu).into_finding(Decider::Comp)
}

/// The largest scaled logit difference between `cpu` and `gpu`, judged against
/// [`BACKEND_PARITY_F32`], with where it is.
pub(crate) fn parity(cpu: &PromptLogits, gpu: &PromptLogits) -> Verdict {
    let mut worst = (0.0f64, 0, 0, 0);
    let mut positions = 0;
    for (p, (a, b)) in cpu.iter().zip(gpu).enumerate() {
        if a.len() != b.len() {
            return Verdict::fail(format!("prompt {p}: {} positions on CPU, {} on GPU", a.len(), b.len()));
        }
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if x.len() != y.len() {
                return Verdict::fail(format!(
                    "prompt {p} position {i}: {} logits on CPU, {} on GPU",
                    x.len(),
                    y.len()
                ));
            }
            positions += 1;
            let scale = x.iter().fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
            for (t, (u, v)) in x.iter().zip(y).enumerate() {
                let d = (f64::from(*u) - f64::from(*v)).abs() / scale;
                if d > worst.0 || d.is_nan() {
                    worst = (if d.is_nan() { f64::INFINITY } else { d }, p, i, t);
                }
            }
        }
    }
    let (d, p, i, t) = worst;
    let said = format!(
        "largest logit difference {d:.2e} of the position's largest logit (prompt {p}, position {i}, token {t}) over {positions} positions, at most {BACKEND_PARITY_F32:.0e}"
    );
    if d <= BACKEND_PARITY_F32 { Verdict::pass(said) } else { Verdict::fail(said) }
}

/// The generated-sequence rule (vLLM's): greedy outputs of the ground truth and the format are
/// compared token by token; at the first divergence each side's token must be in the other's
/// top `k` after the common prefix, and comparison of that scenario stops there.
pub fn first_divergence(
    reference: &SharedSession,
    candidate: &SharedSession,
    asks: &[Ask],
    k: usize,
    deadline: Instant,
) -> Verdict {
    let top_k = |logits: &[f32], token: u32| golden::top_k(logits, k).ids.contains(&token);
    let (mut identical, mut parted) = (0, Vec::new());
    for ask in asks {
        let (r, c) = match (ask.generate(reference, deadline), ask.generate(candidate, deadline)) {
            (Ok(r), Ok(c)) => (r, c),
            (Err(EngineError::Timeout { .. }), _) | (_, Err(EngineError::Timeout { .. })) => {
                return Verdict::timeout("the greedy comparison passed its timeout");
            }
            (Err(e), _) | (_, Err(e)) => return Verdict::fail(format!("scenario {}: {e}", ask.name)),
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
            (Err(e), _) | (_, Err(e)) => return Verdict::fail(format!("scenario {}: {e}", ask.name)),
        };
        // A side that ended there chose end-of-sequence; the other side's token is still checked.
        if let Some(&t) = c.tokens.get(d)
            && !top_k(&rl, t)
        {
            return Verdict::fail(format!(
                "scenario {}: the outputs part at token {d} ({:?} vs {:?}) and this format's token {t} is not in the ground truth's top {k}",
                ask.name, r.text, c.text
            ));
        }
        if let Some(&t) = r.tokens.get(d)
            && !top_k(&cl, t)
        {
            return Verdict::fail(format!(
                "scenario {}: the outputs part at token {d} ({:?} vs {:?}) and the ground truth's token {t} is not in this format's top {k}",
                ask.name, r.text, c.text
            ));
        }
        parted.push(format!("{} at token {d}", ask.name));
    }
    let mut reason = format!(
        "{identical} of {} greedy outputs identical (rule: where the two part, each side's token must be in the \
         other's top {k} after the common prefix, vLLM's check of a quantized model; one exception fails)",
        asks.len()
    );
    if !parted.is_empty() {
        reason.push_str(&format!(
            "; where they part each token is in the other's top {k} ({})",
            parted.join(", ")
        ));
    }
    Verdict::pass(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_passes_the_same_logits_and_names_where_a_gpu_logit_drifts() {
        let cpu: PromptLogits = vec![vec![vec![10.0, -3.0, 0.5], vec![2.0, 1.0, 0.0]]];
        let same = parity(&cpu, &cpu.clone());
        assert_eq!(same.outcome, Outcome::Corroborated, "{}", same.reason);
        // 5e-5 on a position whose largest logit is 10: 5e-6 relative, within the bound.
        let mut close = cpu.clone();
        close[0][0][1] += 5e-5;
        assert_eq!(parity(&cpu, &close).outcome, Outcome::Corroborated);
        let mut drifted = cpu.clone();
        drifted[0][1][2] += 1e-3;
        let v = parity(&cpu, &drifted);
        assert_eq!(v.outcome, Outcome::Falsified);
        assert!(v.reason.contains("prompt 0, position 1, token 2"), "{}", v.reason);
        let mut nan = cpu.clone();
        nan[0][0][0] = f32::NAN;
        assert_eq!(parity(&cpu, &nan).outcome, Outcome::Falsified);
    }
}
