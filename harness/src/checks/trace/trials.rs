//! The trial bodies of `diff::trace` (a derived cell against the ground truth, layer by layer)
//! and `gate::trace` (the numerics of one cell), the judgements they make over files and token
//! ids ([`diff_trace`], [`gate_trace`]), and the compact trace their records carry.

use std::path::Path;
use std::time::Instant;

use crate::checks::Verdict;
use crate::engine::SharedSession;
use crate::journal::TracePoint;
use crate::matrix::Format;
use crate::trial::{Finding, TrialEnv};
use crate::vocab::{Decider, Outcome};

use super::compare::{SiteComparison, TraceBound, compare, first_breach};
use super::decoder::Decoder;
use super::forward::{Trace, trace};
use super::numerics::numerics;

/// A prompt is traced over at most its first this many tokens: the layers' damage shows in a
/// few dozen positions, and the trace keeps every activation of every site.
pub const TRACE_TOKENS: usize = 64;

/// The logits the tracer computes for `ids` through the model at `path`, `[position][vocab]`:
/// the cross-check of the tracer against the engine.
pub fn traced_logits(path: &Path, ids: &[u32]) -> Result<Vec<Vec<f32>>, String> {
    let (_, traces) = trace_model(path, &[ids.to_vec()])?;
    Ok(traces.first().map(Trace::logits).unwrap_or_default())
}

/// The model at `path` traced over each token sequence.
pub(crate) fn trace_model(path: &Path, prompts: &[Vec<u32>]) -> Result<(Decoder, Vec<Trace>), String> {
    let decoder = Decoder::open(path).map_err(|e| e.to_string())?;
    let traces = prompts
        .iter()
        .filter(|ids| !ids.is_empty())
        .map(|ids| trace(&decoder, &ids[..ids.len().min(TRACE_TOKENS)]).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((decoder, traces))
}

/// `diff::trace`'s judgement: the candidate at `candidate` (its own ids) against the ground
/// truth at `truth`, the first site past `bound` named; and the compact trace.
pub fn diff_trace(
    truth: &Path,
    truth_ids: &[Vec<u32>],
    candidate: &Path,
    candidate_ids: &[Vec<u32>],
    bound: TraceBound,
    format: Format,
) -> (Verdict, Vec<TracePoint>) {
    let (truth, want) = match trace_model(truth, truth_ids) {
        Ok(t) => t,
        Err(e) => return (Verdict::fail(format!("the ground truth's trace: {e}")), Vec::new()),
    };
    let (this, got) = match trace_model(candidate, candidate_ids) {
        Ok(t) => t,
        Err(e) => return (Verdict::fail(format!("this format's trace: {e}")), Vec::new()),
    };
    let sites = match compare(&want, &got) {
        Ok(s) => s,
        Err(m) => {
            return (Verdict::fail(format!("the traces cannot be compared: {}", m.0)), compact(&got, None));
        }
    };
    let stated = this.arch.differences(&truth.arch);
    if !this.conflicts.is_empty() {
        let why = format!(
            "this file disagrees with itself, so an engine may run other numbers than it states: {}",
            this.conflicts.join(", ")
        );
        return (Verdict::fail(why), compact(&got, Some((&want, &sites))));
    }
    let verdict = match first_breach(&sites, bound) {
        Some(breach) => {
            let mut reason = format!("{breach}, the first of {} sites past the {format} bound", sites.len());
            if !stated.is_empty() {
                reason.push_str(&format!("; this file states {}", stated.join(", ")));
            }
            Verdict::fail(reason)
        }
        None => {
            let worst = sites.iter().map(|s| s.cosine).fold(1f64, f64::min);
            let ratio = sites
                .iter()
                .map(|s| s.norm_ratio)
                .fold(1f64, |a, r| if r.ln().abs() > a.ln().abs() { r } else { a });
            Verdict::pass(format!(
                "{} sites over {} prompts: lowest cosine {worst:.5} (bound {}), norms within {ratio:.4}× (bound {}×)",
                sites.len(),
                got.len(),
                bound.min_cosine,
                bound.max_norm_ratio
            ))
        }
    };
    (verdict, compact(&got, Some((&want, &sites))))
}

/// `gate::trace`'s judgement: the numerics of the model at `cell`; the activation range learned
/// from the ground truth at `truth` where the cell is not the ground truth itself.
pub fn gate_trace(
    cell: &Path,
    ids: &[Vec<u32>],
    truth: Option<(&Path, &[Vec<u32>])>,
) -> (Verdict, Vec<TracePoint>) {
    let (_, got) = match trace_model(cell, ids) {
        Ok(t) => t,
        Err(e) => return (Verdict::fail(format!("the trace: {e}")), Vec::new()),
    };
    let want = match truth.map(|(path, ids)| trace_model(path, ids)) {
        None => None,
        Some(Ok((_, t))) => Some(t),
        Some(Err(e)) => {
            return (Verdict::fail(format!("the ground truth's trace: {e}")), compact(&got, None));
        }
    };
    let parts = numerics(&got, want.as_deref());
    let failures: Vec<String> =
        parts.iter().filter_map(|p| p.failure.as_ref().map(|f| format!("{}: {f}", p.name))).collect();
    let verdict = if failures.is_empty() {
        let summary: Vec<String> = parts.iter().map(|p| format!("{}: {}", p.name, p.summary)).collect();
        Verdict::pass(summary.join("; "))
    } else {
        Verdict::fail(failures.join("; "))
    };
    (verdict, compact(&got, None))
}

/// The compact trace of the first prompt: a few numbers per site, with the ground truth's norm
/// on the same prompt and the lowest cosine over every prompt where there is a comparison.
fn compact(traces: &[Trace], against: Option<(&[Trace], &[SiteComparison])>) -> Vec<TracePoint> {
    let Some(first) = traces.first() else { return Vec::new() };
    let truth = against.and_then(|(t, _)| t.first());
    first
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| TracePoint {
            site: s.site.key(),
            mean: s.stats.mean,
            std: s.stats.std,
            l2: s.stats.l2,
            min: s.stats.min,
            max: s.stats.max,
            nonfinite: s.stats.nan + s.stats.inf,
            cosine: against.and_then(|(_, c)| c.get(i)).map(|c| c.cosine),
            reference_l2: truth.and_then(|t| t.sites.get(i)).map(|r| r.stats.l2),
        })
        .collect()
}

/// The tier's prompts tokenized by `session`, or why not.
fn tokenize(env: &TrialEnv<'_>, session: &SharedSession) -> Result<Vec<Vec<u32>>, Box<Finding>> {
    let mut out = Vec::new();
    for ask in env.asks() {
        if Instant::now() >= env.deadline {
            return Err(Box::new(Finding::new(
                Outcome::Timeout,
                Decider::Timeout,
                "the trace passed its timeout",
            )));
        }
        match session.lock().unwrap_or_else(|p| p.into_inner()).encode(&ask.prompt) {
            Ok(ids) => out.push(ids),
            Err(e) => {
                return Err(Box::new(Finding::from_engine_error(
                    e,
                    Decider::Comp,
                    &format!("scenario {}", ask.name),
                    env.timeout(),
                )));
            }
        }
    }
    Ok(out)
}

/// The bound of the trial's format: the playbook's, else the format's default.
fn bound(env: &TrialEnv<'_>) -> TraceBound {
    let format = env.spec.name.format;
    match env.spec.differential.trace.get(&format.name()) {
        Some(b) => TraceBound { min_cosine: b.min_cosine, max_norm_ratio: b.max_norm_ratio },
        None => TraceBound::for_format(format),
    }
}

fn finding(verdict: Verdict, trace: Vec<TracePoint>, decider: Decider, env: &TrialEnv<'_>) -> Finding {
    let late = Instant::now() >= env.deadline && !verdict.outcome.is_pass();
    let mut f = if late {
        Finding::new(
            Outcome::Timeout,
            Decider::Timeout,
            format!("the trace passed its timeout: {}", verdict.reason),
        )
    } else {
        verdict.into_finding(decider)
    };
    f.metrics.trace = (!trace.is_empty()).then_some(trace);
    f
}

/// `diff::trace`: the cell's forward pass against the ground truth's on the tier's prompts.
pub(crate) fn run_diff(env: &TrialEnv<'_>) -> Finding {
    let reference = match crate::checks::differential::reference(env) {
        Ok(r) => r,
        Err(f) => return *f,
    };
    let (want, got) = match (tokenize(env, &reference), tokenize(env, env.session)) {
        (Ok(w), Ok(g)) => (w, g),
        (Err(f), _) | (_, Err(f)) => return *f,
    };
    let (verdict, trace) =
        diff_trace(env.model_dir, &want, env.artifact, &got, bound(env), env.spec.name.format);
    finding(verdict, trace, Decider::Comp, env)
}

/// `gate::trace`: the numerics of the cell's own forward pass.
pub(crate) fn run_gate(env: &TrialEnv<'_>) -> Finding {
    let ids = match tokenize(env, env.session) {
        Ok(ids) => ids,
        Err(f) => return *f,
    };
    let ground_truth = env.spec.name.format == Format::Safetensors;
    let cell = if ground_truth { env.model_dir } else { env.artifact };
    let has_truth = !ground_truth && !env.model_dir.as_os_str().is_empty();
    let truth_ids = if has_truth {
        let reference = match crate::checks::differential::reference(env) {
            Ok(r) => r,
            Err(f) => return *f,
        };
        match tokenize(env, &reference) {
            Ok(ids) => Some(ids),
            Err(f) => return *f,
        }
    } else {
        None
    };
    let truth = truth_ids.as_ref().map(|ids| (env.model_dir, ids.as_slice()));
    let (verdict, trace) = gate_trace(cell, &ids, truth);
    finding(verdict, trace, Decider::Numerics, env)
}
