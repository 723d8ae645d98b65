//! `diff::long-context`: a derived format's next-token distributions along one sequence as long
//! as the model's context, against the ground truth's, judged per bucket of positions with the
//! logit gate's noise-aware rule (`diff::logits`). `diff::logits-vs-safetensors` looks at the
//! first 16 positions of each prompt, where every rotary angle is small; what only long
//! positions show — a wrong rope θ or rope scaling, a KV cache that misbehaves past some length —
//! fails a long bucket here while the short ones still pass. Where the format's session runs a
//! shorter context than the ground truth's, the sequence stops there and the reason says so.
//!
//! Both sessions run on the same token ids (the reference's encoding), so the tokenizer is
//! `diff::tokenizer-fuzz`'s business, not this trial's. The sequence is the tier's scenario
//! prompts and a fixed passage, repeated to the length: the same tokens on every run.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use crate::engine::{EngineError, Flow, SharedSession};
use crate::matrix::Backend;
use crate::trial::{Finding, TrialEnv};
use crate::vocab::{Decider, Outcome};

use super::Verdict;
use super::diff::{self, LogitTolerance};

/// The first bucket ends here, each next one four times as far: `[0,16)` is what
/// `diff::logits-vs-safetensors` compares, then `[16,64)`, `[64,256)`, `[256,1024)`…
const FIRST_EDGE: usize = 16;

/// The most positions scored in one bucket, evenly spaced over it (its first and last
/// included). Every position of the sequence is run; only these keep their logits.
const SCORED_PER_BUCKET: usize = 32;

/// The longest sequence on each backend. Both sides run every token of it within one trial's
/// timeout: 2,048 tokens of a 1.5B model are some 6 TFLOP a side, tens of seconds on a CPU. And
/// `[1024,2048)` already reaches 64 times past the 16 positions the logit trial sees.
fn position_cap(backend: Backend) -> usize {
    match backend {
        Backend::Cpu => 2_048,
        Backend::Gpu => 16_384,
    }
}

/// The passage that follows the scenario prompts: plain prose, fixed, so the sequence is the
/// same on every run.
const PASSAGE: &str = "The river rose slowly through the night, and by morning the lower road was under water. \
The miller counted the sacks he had carried upstairs: twelve of flour, four of barley, two of salt. \
He wrote the numbers in his book, as his father had, and added them twice to be sure. \
When the water fell again the road was covered in mud, and the carts could not pass until noon. \
def total(sacks):\n    return sum(sacks)\n\nprint(total([12, 4, 2]))\n\
In the afternoon the children counted again: 12 + 4 + 2 = 18. Everyone agreed the count was right.";

/// The trial body: the cell's session against the safetensors `reference` under `tolerance`.
pub(crate) fn run(env: &TrialEnv<'_>, reference: &SharedSession, tolerance: LogitTolerance) -> Finding {
    let context_of = |s: &SharedSession| s.lock().unwrap_or_else(|p| p.into_inner()).context();
    let (Some(declared), Some(candidate_context)) = (context_of(reference), context_of(env.session)) else {
        return Finding::new(Outcome::Falsified, Decider::Comp, "the engine does not say its context length");
    };
    let cap = position_cap(env.spec.name.backend);
    let length = declared.min(candidate_context).min(cap);
    let mut scope = format!("a {declared}-token context");
    if candidate_context < declared.min(cap) {
        scope.push_str(&format!(", of which this format's session runs {candidate_context}"));
    } else if cap < declared {
        scope.push_str(&format!(", capped at {cap} positions on {}", env.spec.name.backend));
    }
    let prompts: Vec<String> = env.asks().into_iter().map(|a| a.prompt).collect();
    let ids = {
        let session = reference.lock().unwrap_or_else(|p| p.into_inner());
        sequence(&prompts, length, |text| session.encode(text))
    };
    let verdict = ids.and_then(|ids| compare(reference, env.session, &ids, &scope, tolerance, env.deadline));
    match verdict {
        Ok(v) => {
            let decider = if v.outcome == Outcome::Timeout { Decider::Timeout } else { Decider::Comp };
            v.into_finding(decider)
        }
        Err(e) => Finding::from_engine_error(e, Decider::Comp, "the long sequence", env.timeout()),
    }
}

/// The text the sequence is cut from: the prompts, then the passage.
fn sequence_text(prompts: &[String]) -> String {
    let mut text = prompts.join("\n\n");
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(PASSAGE);
    text
}

/// `length` token ids of the prompts and the passage, repeated as often as it takes (fewer only
/// where the text encodes to nothing).
fn sequence(
    prompts: &[String],
    length: usize,
    encode: impl Fn(&str) -> Result<Vec<u32>, EngineError>,
) -> Result<Vec<u32>, EngineError> {
    let text = sequence_text(prompts);
    let mut ids = encode(&text)?;
    if ids.len() < length && !ids.is_empty() {
        // One more copy than the count suggests: a copy may encode shorter where it starts.
        let copies = length.div_ceil(ids.len()) + 1;
        ids = encode(&vec![text.as_str(); copies].join("\n\n"))?;
    }
    ids.truncate(length);
    Ok(ids)
}

/// The buckets of a sequence of `length` positions: `[0,16)`, then each four times as far, the
/// last ending at `length`; a last bucket under half as long as the one before joins it.
pub(crate) fn buckets(length: usize) -> Vec<Range<usize>> {
    let mut edges = vec![0];
    let mut edge = FIRST_EDGE;
    while edge < length {
        edges.push(edge);
        edge *= 4;
    }
    edges.push(length);
    let mut buckets: Vec<Range<usize>> =
        edges.windows(2).map(|w| w[0]..w[1]).filter(|r| !r.is_empty()).collect();
    if let [.., before, last] = buckets.as_slice()
        && last.len() * 2 < before.len()
    {
        let merged = before.start..last.end;
        buckets.truncate(buckets.len() - 2);
        buckets.push(merged);
    }
    buckets
}

/// The positions of `bucket` that are scored: all, or [`SCORED_PER_BUCKET`] evenly spaced.
pub(crate) fn scored(bucket: &Range<usize>) -> Vec<usize> {
    let n = bucket.len();
    if n <= SCORED_PER_BUCKET {
        return bucket.clone().collect();
    }
    (0..SCORED_PER_BUCKET).map(|i| bucket.start + i * (n - 1) / (SCORED_PER_BUCKET - 1)).collect()
}

/// One bucket judged.
struct Judged {
    range: Range<usize>,
    scored: usize,
    mean_kl: f64,
    agree: usize,
    verdict: Verdict,
}

impl Judged {
    fn line(&self) -> String {
        let of = if self.scored < self.range.len() {
            format!("{} of {} positions", self.scored, self.range.len())
        } else {
            format!("{} positions", self.scored)
        };
        let outcome = if self.verdict.outcome == Outcome::Corroborated { "pass" } else { "FAIL" };
        format!(
            "[{},{}) {of}: mean KL {:.2e}, top-1 {}/{} ({:.1}%), {outcome}",
            self.range.start,
            self.range.end,
            self.mean_kl,
            self.agree,
            self.scored,
            self.agree as f64 * 100.0 / self.scored.max(1) as f64
        )
    }
}

/// The reference and the candidate along `ids`, each on a thread of its own, so both advance
/// together: a bucket is judged as soon as both sides have its positions, and at the deadline
/// the buckets judged so far still count (a failed one fails the trial; otherwise it is a
/// timeout). Memory stays bounded whatever the context: only scored positions keep their logits
/// (at most [`SCORED_PER_BUCKET`] per bucket, a handful of buckets), and each bucket's are dropped
/// once judged.
pub(crate) fn compare(
    reference: &SharedSession,
    candidate: &SharedSession,
    ids: &[u32],
    scope: &str,
    tolerance: LogitTolerance,
    deadline: Instant,
) -> Result<Verdict, EngineError> {
    let buckets = buckets(ids.len());
    let scored: Vec<Vec<usize>> = buckets.iter().map(scored).collect();
    let positions: Vec<usize> = scored.iter().flatten().copied().collect();
    let (late, failed) = (AtomicBool::new(false), AtomicBool::new(false));
    let (sent, received) = mpsc::channel::<(usize, Vec<f32>)>();
    let mut judged: Vec<Judged> = Vec::with_capacity(buckets.len());
    let ended = std::thread::scope(|threads| {
        let sides: Vec<_> = [reference, candidate]
            .into_iter()
            .enumerate()
            .map(|(index, session)| {
                let (sent, late, failed, positions) = (sent.clone(), &late, &failed, &positions);
                // Named as the trial's thread is, so what is planted in a trial's forward passes
                // (QUALIFY_FAULT_CRASH) reaches these too.
                let name = std::thread::current().name().unwrap_or("long-context").to_string();
                std::thread::Builder::new().name(name).spawn_scoped(threads, move || {
                    let ended = session.lock().unwrap_or_else(|p| p.into_inner()).sequence_logits(
                        ids,
                        positions,
                        &mut |_, logits| {
                            let stop = late.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed);
                            if stop || sent.send((index, logits)).is_err() {
                                return Flow::Stop;
                            }
                            if Instant::now() >= deadline {
                                late.store(true, Ordering::Relaxed);
                                return Flow::Stop;
                            }
                            Flow::Continue
                        },
                    );
                    // The other side's work is wasted once this one fails.
                    failed.fetch_or(ended.is_err(), Ordering::Relaxed);
                    ended
                })
            })
            .collect();
        drop(sent);
        let mut pending: [VecDeque<Vec<f32>>; 2] = [VecDeque::new(), VecDeque::new()];
        for (index, logits) in received {
            pending[index].push_back(logits);
            while let Some(want) = scored.get(judged.len()).map(Vec::len)
                && pending.iter().all(|p| p.len() >= want)
            {
                let [r, c] = pending.each_mut().map(|p| p.drain(..want).collect::<Vec<_>>());
                judged.push(judge(buckets[judged.len()].clone(), r, c, tolerance));
            }
        }
        sides
            .into_iter()
            .map(|side| match side.map(|handle| handle.join()) {
                Ok(Ok(ended)) => ended,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(e) => Err(EngineError::inference_in("failed to start a thread", e)),
            })
            .collect::<Vec<_>>()
    });
    for side in ended {
        side?;
    }

    let lines: Vec<String> = judged.iter().map(Judged::line).collect();
    let head = format!("{} positions of {scope}, by bucket: {}", ids.len(), lines.join("; "));
    let unjudged = |j: &[Judged]| {
        let rest: Vec<String> =
            buckets[j.len()..].iter().map(|r| format!("[{},{})", r.start, r.end)).collect();
        rest.join(", ")
    };
    let first_failed = judged.iter().find(|j| j.verdict.outcome != Outcome::Corroborated);
    Ok(match first_failed {
        Some(first) => {
            let mut reason = head.clone();
            if judged.len() < buckets.len() {
                reason.push_str(&format!(" (the timeout came before {})", unjudged(&judged)));
            }
            Verdict::fail(format!(
                "{reason}. The first failing bucket, positions [{},{}), each position a sample: {}",
                first.range.start, first.range.end, first.verdict.reason
            ))
        }
        None if judged.len() < buckets.len() && late.load(Ordering::Relaxed) => Verdict::timeout(format!(
            "the long-context comparison passed its timeout before {}; {}",
            unjudged(&judged),
            if judged.is_empty() { format!("{} positions of {scope}", ids.len()) } else { head }
        )),
        None if judged.len() < buckets.len() => Verdict::fail(format!(
            "the sessions gave logits for {} of {} buckets; {head}",
            judged.len(),
            buckets.len()
        )),
        None => Verdict::pass(format!(
            "{head}; every bucket within the gate (mean KL ≤ {:.1e}, top-1 ≥ {:.1}% over its decisive \
             positions, each judged at its 95% bound as diff::logits-vs-safetensors judges, each position a \
             sample)",
            tolerance.max_mean_kl,
            tolerance.min_top1 * 100.0
        )),
    })
}

/// One bucket through the logit gate, each position a sample of its own, with the figures its
/// line shows: mean KL(reference ‖ candidate) and top-1 agreement over every scored position.
fn judge(
    range: Range<usize>,
    reference: Vec<Vec<f32>>,
    candidate: Vec<Vec<f32>>,
    tolerance: LogitTolerance,
) -> Judged {
    let (mut kl, mut agree) = (0.0, 0);
    for (r, c) in reference.iter().zip(&candidate) {
        let (k, same) = divergence(r, c);
        kl += k;
        agree += usize::from(same);
    }
    let scored = candidate.len();
    let as_samples = |v: Vec<Vec<f32>>| v.into_iter().map(|l| vec![l]).collect::<Vec<_>>();
    let verdict = diff::logits(&as_samples(reference), &as_samples(candidate), tolerance);
    Judged { range, scored, mean_kl: kl / scored.max(1) as f64, agree, verdict }
}

/// KL(p ‖ q) of the two softmaxes, and whether their top tokens agree (a non-finite or
/// mismatched candidate is infinitely far, and `diff::logits` says why).
fn divergence(reference: &[f32], candidate: &[f32]) -> (f64, bool) {
    if reference.len() != candidate.len() || candidate.iter().any(|v| !v.is_finite()) {
        return (f64::INFINITY, false);
    }
    let log_softmax = |l: &[f32]| {
        let max = l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = l.iter().map(|&v| (v as f64 - max).exp()).sum();
        let norm = max + sum.ln();
        l.iter().map(|&v| v as f64 - norm).collect::<Vec<f64>>()
    };
    let (lp, lq) = (log_softmax(reference), log_softmax(candidate));
    let kl = lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum::<f64>().max(0.0);
    let argmax = |l: &[f64]| {
        l.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
    };
    (kl, argmax(&lp) == argmax(&lq))
}

#[cfg(test)]
#[path = "long_context_tests.rs"]
mod tests;
