//! Next-token distributions of a derived format against the ground truth's: mean KL divergence
//! and top-1 agreement, judged by a [`LogitTolerance`] per format.

use crate::checks::Verdict;
use crate::matrix::{Format, Quantization};

/// Default gates of a derived format against safetensors (`shared/reference/
/// peers-and-accuracy-anchors.md` §4.4, loosened twofold for models of 3B and below).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitTolerance {
    pub max_mean_kl: f64,
    pub min_top1: f64,
}

impl LogitTolerance {
    pub fn for_format(format: Format) -> LogitTolerance {
        let (kl, top1) = match format {
            Format::Safetensors | Format::Apr => (0.0005, 0.995),
            Format::Gguf(q) => match q {
                Quantization::F32 | Quantization::F16 => (0.0005, 0.995),
                Quantization::Q8_0 => (0.003, 0.97),
                Quantization::Q6K => (0.008, 0.955),
                Quantization::Q5KM | Quantization::Q5_0 => (0.015, 0.94),
                _ => (0.04, 0.91),
            },
        };
        LogitTolerance { max_mean_kl: kl * 2.0, min_top1: 1.0 - (1.0 - top1) * 2.0 }
    }
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best })
        .0
}

/// Mean KL(reference ‖ candidate) and top-1 agreement over every position of every prompt.
pub fn logits(
    reference: &[Vec<Vec<f32>>],
    candidate: &[Vec<Vec<f32>>],
    tolerance: LogitTolerance,
) -> Verdict {
    let mut kl_sum = 0.0;
    let mut agree = 0usize;
    let mut n = 0usize;
    for (r, c) in reference.iter().zip(candidate) {
        if r.len() != c.len() {
            return Verdict::fail(format!("{} reference positions, {} from the artifact", r.len(), c.len()));
        }
        for (rl, cl) in r.iter().zip(c) {
            if rl.len() != cl.len() {
                return Verdict::fail(format!(
                    "vocabulary {} in the reference, {} in the artifact",
                    rl.len(),
                    cl.len()
                ));
            }
            if cl.iter().any(|v| !v.is_finite()) {
                return Verdict::fail("the artifact produced a non-finite logit");
            }
            let (p, q) = (softmax(rl), softmax(cl));
            kl_sum += p
                .iter()
                .zip(&q)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, q)| p * (p / q.max(1e-300)).ln())
                .sum::<f64>();
            agree += usize::from(argmax(rl) == argmax(cl));
            n += 1;
        }
    }
    if n == 0 {
        return Verdict::fail("no position to compare: the scenarios give no prompt");
    }
    let mean_kl = kl_sum / n as f64;
    let top1 = agree as f64 / n as f64;
    let summary = format!(
        "mean KL divergence {mean_kl:.2e} (≤ {:.1e}), top-1 agreement {:.1}% (≥ {:.1}%) over {n} positions",
        tolerance.max_mean_kl,
        top1 * 100.0,
        tolerance.min_top1 * 100.0
    );
    if mean_kl <= tolerance.max_mean_kl && top1 >= tolerance.min_top1 {
        Verdict::pass(summary)
    } else {
        Verdict::fail(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Outcome;

    #[test]
    fn identical_logits_pass_and_a_flipped_argmax_is_counted() {
        let tol = LogitTolerance::for_format(Format::Apr);
        let r = vec![vec![vec![1.0, 2.0, 3.0], vec![0.0, 5.0, 1.0]]];
        let v = logits(&r, &r, tol);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
        assert!(v.reason.contains("top-1 agreement 100.0%"), "{}", v.reason);
        let c = vec![vec![vec![3.0, 2.0, 1.0], vec![0.0, 5.0, 1.0]]];
        let v = logits(&r, &c, tol);
        assert_eq!(v.outcome, Outcome::Falsified);
        assert!(v.reason.contains("top-1 agreement 50.0%"), "{}", v.reason);
    }
}
