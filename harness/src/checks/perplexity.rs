//! `diff::perplexity`: a derived format's perplexity on a held-out text against the ground
//! truth's, as a ratio. The original project's rule — Q4_K_M within +10% of the reference — with
//! a default per format ([`default_max_ratio`]) and the playbook's `differential.perplexity` to
//! name the text and replace a bound.
//!
//! The text is a series of documents, separated by blank lines, each scored on its own from a
//! fresh context (a list of held-out examples is not one story). Both sessions score the same
//! token ids (the reference's encoding of each document), a document longer than the shorter
//! context cut into windows of it, each window's first token given and every later one
//! predicted. The ratio is exp(mean NLL of the format − mean NLL of the ground truth) over the
//! same tokens; its 95% interval comes from a paired bootstrap of the per-token differences, so
//! the reason says how sure the figure is. The judgement is on the ratio itself, as the rule is.

use std::path::Path;
use std::time::Instant;

use crate::engine::{EngineError, Flow, SharedSession};
use crate::matrix::{Backend, Format, Quantization};
use crate::stats::bootstrap_mean;
use crate::trial::{Finding, TrialEnv};
use crate::vocab::{Decider, Outcome};

use super::Verdict;

/// The text scored where the playbook names none: prose, numbers and a little code, written for
/// this project, so no model has seen it in training.
pub(crate) const DEFAULT_TEXT: &str = include_str!("perplexity.txt");

/// The largest text file a playbook may name.
const MAX_TEXT_BYTES: u64 = 4 << 20;

/// The most tokens scored on each backend, on each side.
fn token_cap(backend: Backend) -> usize {
    match backend {
        Backend::Cpu => 1_024,
        Backend::Gpu => 8_192,
    }
}

/// The largest perplexity ratio a format may show against the ground truth by default: the
/// original project's +10% for Q4_K_M, tighter for the finer formats and looser for the coarser
/// ones. docs/playbooks.md states them.
pub(crate) fn default_max_ratio(format: Format) -> f64 {
    match format {
        Format::Safetensors | Format::Apr | Format::Gguf(Quantization::F32) => 1.001,
        Format::Gguf(Quantization::F16) => 1.005,
        Format::Gguf(Quantization::Q8_0) => 1.01,
        Format::Gguf(Quantization::Q6K) => 1.03,
        Format::Gguf(Quantization::Q5KM | Quantization::Q5_0) => 1.06,
        Format::Gguf(Quantization::Q4KM | Quantization::Q4_0) => 1.10,
        Format::Gguf(Quantization::Q3KM) => 1.25,
        Format::Gguf(Quantization::Q2K) => 1.60,
    }
}

/// The trial body: the cell's session against the safetensors `reference`.
pub(crate) fn run(env: &TrialEnv<'_>, reference: &SharedSession) -> Finding {
    let spec = env.spec;
    let format = spec.name.format;
    let settings = &spec.differential.perplexity;
    let max_ratio =
        settings.max_ratio.get(&format.name()).copied().unwrap_or_else(|| default_max_ratio(format));
    let (text, source) = match &settings.text {
        None => (DEFAULT_TEXT.to_string(), "the harness's own passage".to_string()),
        Some(path) => {
            let path = lexically_normal(&spec.source.parent().unwrap_or(Path::new(".")).join(path));
            match crate::bounded::read_bounded(&path, MAX_TEXT_BYTES) {
                Ok(t) => (t, path.display().to_string()),
                Err(e) => {
                    return Finding::new(
                        Outcome::Falsified,
                        Decider::Comp,
                        format!("the perplexity text {} cannot be read: {e}", path.display()),
                    );
                }
            }
        }
    };
    let context_of = |s: &SharedSession| s.lock().unwrap_or_else(|p| p.into_inner()).context();
    let (Some(a), Some(b)) = (context_of(reference), context_of(env.session)) else {
        return Finding::new(Outcome::Falsified, Decider::Comp, "the engine does not say its context length");
    };
    let encoded = {
        let session = reference.lock().unwrap_or_else(|p| p.into_inner());
        documents(&text, token_cap(spec.name.backend), |d| session.encode(d))
    };
    let documents = match encoded {
        Ok(ids) => ids,
        Err(e) => return Finding::from_engine_error(e, Decider::Comp, "the perplexity text", env.timeout()),
    };
    let window = a.min(b);
    let scored = (|| {
        let Some(reference) = token_nll(reference, &documents, window, env.deadline)? else {
            return Ok(None);
        };
        let Some(candidate) = token_nll(env.session, &documents, window, env.deadline)? else {
            return Ok(None);
        };
        Ok::<_, EngineError>(Some((reference, candidate)))
    })();
    let (reference_nll, candidate_nll) = match scored {
        Ok(Some(both)) => both,
        Ok(None) => {
            return Finding::new(
                Outcome::Timeout,
                Decider::Timeout,
                "the trial's timeout passed before both sides scored the text",
            );
        }
        Err(e) => return Finding::from_engine_error(e, Decider::Comp, "the perplexity text", env.timeout()),
    };
    let judged = judge(&reference_nll, &candidate_nll, max_ratio, format);
    let scope = format!(
        "{} predicted tokens of {} documents of {source}, in windows of {window}",
        reference_nll.len(),
        documents.len()
    );
    let mut finding = Verdict { reason: format!("{}: {scope}", judged.verdict.reason), ..judged.verdict }
        .into_finding(Decider::Comp);
    finding.metrics.perplexity_ratio = Some(judged.ratio);
    finding
}

/// What the judgement found.
pub(crate) struct Judged {
    pub ratio: f64,
    pub verdict: Verdict,
}

/// The ratio of the candidate's perplexity to the reference's over the same predicted tokens
/// (`reference` and `candidate` are their negative log likelihoods), against `max_ratio`.
pub(crate) fn judge(reference: &[f64], candidate: &[f64], max_ratio: f64, format: Format) -> Judged {
    let n = reference.len().min(candidate.len());
    if n == 0 {
        return Judged { ratio: f64::NAN, verdict: Verdict::fail("the text gives no token to predict") };
    }
    let mean = |v: &[f64]| v[..n].iter().sum::<f64>() / n as f64;
    let (ppl_reference, ppl_candidate) = (mean(reference).exp(), mean(candidate).exp());
    let differences: Vec<f64> = (0..n).map(|i| candidate[i] - reference[i]).collect();
    let interval = bootstrap_mean(&differences, 2_000, 0x7e51);
    let ratio = interval.mean.exp();
    let said = format!(
        "perplexity {ppl_candidate:.4} against the ground truth's {ppl_reference:.4}: ratio {ratio:.4} \
         (95% {:.4}–{:.4}), at most {max_ratio} for {format}",
        interval.lo.exp(),
        interval.hi.exp()
    );
    let verdict = if !ratio.is_finite() {
        Verdict::fail(format!("{said}: not a finite ratio"))
    } else if ratio <= max_ratio {
        Verdict::pass(said)
    } else {
        Verdict::fail(format!("{said}: {:.1}% above the ground truth", (ratio - 1.0) * 100.0))
    };
    Judged { ratio, verdict }
}

/// `path` with its `..` and `.` components resolved as text (no file system call), so a record
/// names `…/fixtures/qa-tiny/held-out.txt`, not `…/playbooks/families/../../fixtures/…`.
fn lexically_normal(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The token ids of the text's documents (split at blank lines, blank ones left out), in order,
/// until `cap` tokens are taken; the last one taken may be cut short.
fn documents(
    text: &str,
    cap: usize,
    encode: impl Fn(&str) -> Result<Vec<u32>, EngineError>,
) -> Result<Vec<Vec<u32>>, EngineError> {
    let mut out = Vec::new();
    let mut taken = 0;
    for document in text.split("\n\n").map(str::trim).filter(|d| !d.is_empty()) {
        if taken >= cap {
            break;
        }
        let mut ids = encode(document)?;
        ids.truncate(cap - taken);
        taken += ids.len();
        out.push(ids);
    }
    Ok(out)
}

/// The negative log likelihood of each predicted token of each document, a document longer than
/// `window` tokens cut into windows (each window's first token is given); `None` once
/// `deadline` passes.
fn token_nll(
    session: &SharedSession,
    documents: &[Vec<u32>],
    window: usize,
    deadline: Instant,
) -> Result<Option<Vec<f64>>, EngineError> {
    let mut out = Vec::new();
    let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
    for chunk in documents.iter().flat_map(|ids| ids.chunks(window.max(2))) {
        if chunk.len() < 2 {
            continue;
        }
        let positions: Vec<usize> = (0..chunk.len() - 1).collect();
        let mut late = false;
        session.sequence_logits(chunk, &positions, &mut |position, logits| {
            out.push(nll(&logits, chunk[position + 1] as usize));
            if Instant::now() >= deadline {
                late = true;
                return Flow::Stop;
            }
            Flow::Continue
        })?;
        if late {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

/// −log softmax(logits)[target], in f64; an id past the logits is infinitely unlikely.
fn nll(logits: &[f32], target: usize) -> f64 {
    let Some(&chosen) = logits.get(target) else { return f64::INFINITY };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - chosen as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_path_is_named_without_climbs() {
        assert_eq!(
            lexically_normal(Path::new("/r/playbooks/families/../../fixtures/./t.txt")),
            Path::new("/r/fixtures/t.txt")
        );
        assert_eq!(lexically_normal(Path::new("../x/../y")), Path::new("../y"));
    }

    #[test]
    fn nll_is_the_negative_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|l| l.exp()).sum();
        assert!((nll(&logits, 2) - (z.ln() - 3.0)).abs() < 1e-9);
        assert_eq!(nll(&logits, 7), f64::INFINITY);
    }

    #[test]
    fn a_format_ten_percent_worse_passes_q4_k_m_and_a_worse_one_fails_naming_the_ratio() {
        let reference: Vec<f64> = (0..400).map(|i| 1.0 + (i % 7) as f64 * 0.1).collect();
        let q4 = Format::Gguf(Quantization::Q4KM);
        let shifted = |by: f64| reference.iter().map(|r| r + by).collect::<Vec<f64>>();
        let same = judge(&reference, &reference, default_max_ratio(q4), q4);
        assert_eq!(same.verdict.outcome, Outcome::Corroborated, "{}", same.verdict.reason);
        assert!((same.ratio - 1.0).abs() < 1e-12);
        let within = judge(&reference, &shifted(1.09f64.ln()), default_max_ratio(q4), q4);
        assert_eq!(within.verdict.outcome, Outcome::Corroborated, "{}", within.verdict.reason);
        let worse = judge(&reference, &shifted(1.15f64.ln()), default_max_ratio(q4), q4);
        assert_eq!(worse.verdict.outcome, Outcome::Falsified);
        assert!(worse.verdict.reason.contains("ratio 1.1500"), "{}", worse.verdict.reason);
        assert!(worse.verdict.reason.contains("15.0% above the ground truth"), "{}", worse.verdict.reason);
        // The same shift fails a finer format's tighter default.
        let q8 = Format::Gguf(Quantization::Q8_0);
        let within_q4 = judge(&reference, &shifted(1.05f64.ln()), default_max_ratio(q8), q8);
        assert_eq!(within_q4.verdict.outcome, Outcome::Falsified, "{}", within_q4.verdict.reason);
    }
}
