//! `gate::trace`: the numerics of one cell's forward pass, each a named part of the verdict.
//! `non-finite` (no NaN or Inf at any site), `softmax` (every attention row sums to 1 and every
//! probability is in [0, 1]), `entropy` (each layer's mean attention entropy within bounds:
//! neither collapsed onto one key nor spread uniformly; a derived cell's near the ground truth's), `norm` (every RMSNorm's output before
//! its gain has a root mean square of 1, as its epsilon allows) and `range` (each site's largest
//! activation within a factor of the ground truth's on the same prompts).

use super::forward::Trace;

/// Largest |row sum − 1| of an attention row (f32 softmax over ≤ a context of keys).
pub(crate) const SOFTMAX_SUM_TOLERANCE: f64 = 1e-4;
/// A layer's mean attention entropy, as a share of the uniform row's, must lie in this range:
/// below it attention has collapsed onto single keys; above it attention no longer selects.
pub(crate) const ENTROPY_BOUNDS: (f64, f64) = (0.02, 0.95);
/// A derived cell's mean attention entropy per layer within this much of the ground truth's on
/// the same prompts (clean: within 0.015 at Q4_K_M, qa-tiny and the zoo alike).
pub(crate) const ENTROPY_DRIFT: f64 = 0.1;
/// Each RMSNorm row's root mean square before the gain: 1 − ε/(2·ms) for a right epsilon.
pub(crate) const NORM_RMS_BOUNDS: (f64, f64) = (0.95, 1.001);
/// A site's largest activation within this factor of the ground truth's, either way.
pub(crate) const RANGE_FACTOR: f64 = 4.0;

/// One part's conclusion: its name, and a failure or a summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Part {
    pub(crate) name: &'static str,
    pub(crate) failure: Option<String>,
    pub(crate) summary: String,
}

fn part(name: &'static str, failure: Option<String>, summary: String) -> Part {
    Part { name, failure, summary }
}

/// Every part of the gate over `traces` (one per prompt); `reference`, the ground truth's traces
/// of the same prompts, where this cell is not the ground truth itself.
pub(crate) fn numerics(traces: &[Trace], reference: Option<&[Trace]>) -> Vec<Part> {
    vec![
        non_finite(traces),
        softmax(traces),
        entropy(traces, reference),
        norm(traces),
        range(traces, reference),
    ]
}

fn non_finite(traces: &[Trace]) -> Part {
    for (p, t) in traces.iter().enumerate() {
        if let Some(s) = t.sites.iter().find(|s| s.stats.nan + s.stats.inf > 0) {
            return part(
                "non-finite",
                Some(format!(
                    "{}: {} NaN and {} Inf of {} values (prompt {p})",
                    s.site,
                    s.stats.nan,
                    s.stats.inf,
                    s.values.len()
                )),
                String::new(),
            );
        }
    }
    let sites = traces.first().map_or(0, |t| t.sites.len());
    part("non-finite", None, format!("no NaN or Inf at {sites} sites"))
}

fn softmax(traces: &[Trace]) -> Part {
    let mut worst = 0f64;
    for (p, t) in traces.iter().enumerate() {
        for a in &t.attention {
            let l = a.layer;
            if a.nonfinite > 0 {
                return part(
                    "softmax",
                    Some(format!(
                        "layer {l} attention: {} probabilities are not finite (prompt {p})",
                        a.nonfinite
                    )),
                    String::new(),
                );
            }
            if a.min_p < -1e-6 || a.max_p > 1.0 + 1e-6 {
                return part(
                    "softmax",
                    Some(format!(
                        "layer {l} attention: probabilities in [{:.4}, {:.4}], outside [0, 1] (prompt {p})",
                        a.min_p, a.max_p
                    )),
                    String::new(),
                );
            }
            if a.max_row_error > SOFTMAX_SUM_TOLERANCE {
                return part(
                    "softmax",
                    Some(format!(
                        "layer {l} attention: a row sums to 1 {:+.2e} (tolerance {SOFTMAX_SUM_TOLERANCE:e}, prompt {p})",
                        a.max_row_error
                    )),
                    String::new(),
                );
            }
            worst = worst.max(a.max_row_error);
        }
    }
    part("softmax", None, format!("rows sum to 1 within {worst:.1e}, probabilities in [0, 1]"))
}

/// The mean over prompts of layer `l`'s attention entropy, where a prompt has two tokens.
fn mean_entropy(traces: &[Trace], l: usize) -> Option<f64> {
    let values: Vec<f64> = traces
        .iter()
        .filter(|t| t.tokens > 1)
        .filter_map(|t| t.attention.get(l))
        .map(|a| a.entropy)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn entropy(traces: &[Trace], reference: Option<&[Trace]>) -> Part {
    let layers = traces.first().map_or(0, |t| t.attention.len());
    let (lo, hi) = ENTROPY_BOUNDS;
    let mut seen = (f64::INFINITY, f64::NEG_INFINITY);
    for l in 0..layers {
        let Some(mean) = mean_entropy(traces, l) else { continue };
        if let Some(want) = reference.and_then(|r| mean_entropy(r, l))
            && (mean - want).abs() > ENTROPY_DRIFT
        {
            return part(
                "entropy",
                Some(format!(
                    "layer {l} attention entropy {mean:.3} of uniform, the ground truth's {want:.3} (bound ±{ENTROPY_DRIFT})"
                )),
                String::new(),
            );
        }
        seen = (seen.0.min(mean), seen.1.max(mean));
        if !(lo..=hi).contains(&mean) {
            let why =
                if mean < lo { "collapsed onto single keys" } else { "spread uniformly, selecting nothing" };
            return part(
                "entropy",
                Some(format!(
                    "layer {l} attention entropy {mean:.3} of uniform, outside [{lo}, {hi}]: {why}"
                )),
                String::new(),
            );
        }
    }
    let summary = if seen.0.is_finite() {
        format!(
            "mean attention entropy {:.3}–{:.3} of uniform per layer, within [{lo}, {hi}]",
            seen.0, seen.1
        )
    } else {
        "no prompt long enough for attention entropy".to_string()
    };
    part("entropy", None, summary)
}

fn norm(traces: &[Trace]) -> Part {
    let (lo, hi) = NORM_RMS_BOUNDS;
    let mut seen = (f64::INFINITY, f64::NEG_INFINITY);
    for (p, t) in traces.iter().enumerate() {
        for n in &t.norms {
            if !(n.min_rms >= lo && n.max_rms <= hi) {
                return part(
                    "norm",
                    Some(format!(
                        "{} output before its gain: rms {:.4}–{:.4} per row, expected 1 (bounds [{lo}, {hi}]; a wrong rms_norm_eps, prompt {p})",
                        n.name, n.min_rms, n.max_rms
                    )),
                    String::new(),
                );
            }
            seen = (seen.0.min(n.min_rms), seen.1.max(n.max_rms));
        }
    }
    if seen.0 > seen.1 {
        return part("norm", None, "no RMSNorm traced".into());
    }
    part("norm", None, format!("every RMSNorm output has rms {:.4}–{:.4} before its gain", seen.0, seen.1))
}

fn range(traces: &[Trace], reference: Option<&[Trace]>) -> Part {
    let Some(reference) = reference else {
        return part("range", None, "this cell is the ground truth the range is learned from".into());
    };
    let peak = |ts: &[Trace], i: usize| {
        ts.iter().filter_map(|t| t.sites.get(i)).map(|s| s.stats.max_abs()).fold(0f64, f64::max)
    };
    let sites =
        traces.first().map_or(0, |t| t.sites.len()).min(reference.first().map_or(0, |t| t.sites.len()));
    for i in 0..sites {
        let (got, want) = (peak(traces, i), peak(reference, i));
        let site = traces[0].sites[i].site;
        if !(got <= want * RANGE_FACTOR && got * RANGE_FACTOR >= want) {
            return part(
                "range",
                Some(format!(
                    "{site}: largest activation {got:.4}, the ground truth's {want:.4} (bound {RANGE_FACTOR}× either way)"
                )),
                String::new(),
            );
        }
    }
    part("range", None, format!("every site's largest activation within {RANGE_FACTOR}× the ground truth's"))
}

#[cfg(test)]
mod tests {
    use super::super::forward::{Site, SiteTrace, Stats, attention_stats};
    use super::*;

    /// A trace of two sites whose attention rows are `probs` (`[heads = 1, 3, 3]`).
    fn with_attention(probs: &[f32]) -> Trace {
        let values = vec![0.5f32, -0.25, 1.0];
        let site = |s| SiteTrace { site: s, values: values.clone(), stats: Stats::of(&values) };
        Trace {
            tokens: 3,
            sites: vec![site(Site::Embedding), site(Site::Attention(0))],
            norms: Vec::new(),
            attention: vec![attention_stats(0, probs, 1, 3)],
        }
    }

    fn failure(parts: &[Part], name: &str) -> Option<String> {
        parts.iter().find(|p| p.name == name).and_then(|p| p.failure.clone())
    }

    const CLEAN: [f32; 9] = [1.0, 0.0, 0.0, 0.9, 0.1, 0.0, 0.1, 0.1, 0.8];

    #[test]
    fn a_softmax_row_that_does_not_sum_to_one_or_leaves_zero_to_one_fails_naming_the_layer() {
        let clean = numerics(&[with_attention(&CLEAN)], None);
        assert!(clean.iter().all(|p| p.failure.is_none()), "{clean:?}");
        let mut heavy = CLEAN;
        heavy[4] = 0.3; // the second row sums to 1.2
        let why = failure(&numerics(&[with_attention(&heavy)], None), "softmax").expect("fails");
        assert!(why.contains("layer 0 attention: a row sums to 1 +2.00e-1"), "{why}");
        let mut negative = CLEAN;
        negative[7] = -0.2;
        negative[8] = 1.0;
        let why = failure(&numerics(&[with_attention(&negative)], None), "softmax").expect("fails");
        assert!(why.contains("outside [0, 1]"), "{why}");
    }

    #[test]
    fn collapsed_and_uniform_attention_fail_entropy() {
        let one_hot = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let why = failure(&numerics(&[with_attention(&one_hot)], None), "entropy").expect("fails");
        assert!(why.contains("layer 0 attention entropy 0.000") && why.contains("collapsed"), "{why}");
        let third = 1.0 / 3.0;
        let uniform = [1.0, 0.0, 0.0, 0.5, 0.5, 0.0, third, third, third];
        let why = failure(&numerics(&[with_attention(&uniform)], None), "entropy").expect("fails");
        assert!(why.contains("entropy 1.000") && why.contains("uniformly"), "{why}");
    }

    #[test]
    fn attention_entropy_far_from_the_ground_truths_fails_a_derived_cell() {
        let truth = with_attention(&CLEAN);
        let flatter = [1.0, 0.0, 0.0, 0.75, 0.25, 0.0, 0.2, 0.2, 0.6];
        let why = failure(&numerics(&[with_attention(&flatter)], Some(&[truth])), "entropy").expect("fails");
        assert!(why.contains("layer 0 attention entropy") && why.contains("the ground truth's"), "{why}");
        assert!(failure(&numerics(&[with_attention(&flatter)], None), "entropy").is_none());
    }

    #[test]
    fn an_activation_far_outside_the_ground_truths_range_fails_naming_the_site() {
        let truth = with_attention(&CLEAN);
        let mut blown = truth.clone();
        blown.sites[1].values = vec![50.0, 0.0, 0.0];
        blown.sites[1].stats = Stats::of(&blown.sites[1].values);
        let why = failure(&numerics(&[blown], Some(&[truth])), "range").expect("fails");
        assert!(why.starts_with("layer 0 attention output: largest activation 50.0000"), "{why}");
    }
}
