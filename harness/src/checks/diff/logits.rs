//! Next-token distributions of a derived format against the ground truth's: mean KL divergence
//! and top-1 agreement, judged by a [`LogitTolerance`] per format.

use crate::checks::Verdict;
use crate::matrix::{Format, Quantization};
use crate::stats::{self, MeanInterval, RateGate};

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

/// How many standard errors of a reference margin make a position decisive for top-1: a
/// position whose top two reference logits are closer than this many standard errors of the
/// format's own logit error (measured on the same positions) is a near-tie, where either token is
/// within the format's expected error, and is left out of top-1 agreement.
const TIE_SIGMAS: f64 = 3.0;

/// Resamples of the prompts for the interval of the mean KL divergence, and their seed: the
/// same evidence gives the same interval.
const BOOTSTRAP: usize = 2_000;
const BOOTSTRAP_SEED: u64 = 0x6b6c_2d62_6f6f_7473;

/// Mean KL(reference ‖ candidate) and top-1 agreement over every position of every prompt,
/// judged against their noise: a gate fails only when the evidence puts the format beyond its
/// threshold with 95% confidence.
///
/// - The format's logit error σ is measured on the same positions (the spread of candidate minus
///   reference logits, each position centred, since logits are shift-invariant; the median over
///   positions of the mean absolute deviation, scaled to a standard deviation).
/// - Top-1 agreement counts decisive positions only: those whose reference margin (top logit
///   less the second) exceeds [`TIE_SIGMAS`] standard errors of a margin (√2·σ). Near-ties are
///   counted and named, never scored. The gate fails when the exact one-sided binomial test
///   puts the agreement below its threshold at α = 2.5% ([`RateGate`]).
/// - Mean KL is a mean over prompts, with a bootstrap 95% interval over prompts ([`BOOTSTRAP`]
///   resamples, a fixed seed); the gate fails when the interval's lower end exceeds its
///   threshold.
pub fn logits(
    reference: &[Vec<Vec<f32>>],
    candidate: &[Vec<Vec<f32>>],
    tolerance: LogitTolerance,
) -> Verdict {
    match LogitEvidence::measure(reference, candidate) {
        Ok(evidence) => evidence.judge(tolerance),
        Err(why) => Verdict::fail(why),
    }
}

/// What the logit gate reads from a comparison: each prompt's mean KL divergence, and each
/// position's reference margin and top-1 agreement, with the format's logit error σ measured on
/// the same positions. Kept apart from the judgement so that `cargo xtask bench gates` can
/// resample prompts and plant defects of the size each part claims to detect.
#[derive(Debug, Clone)]
pub struct LogitEvidence {
    /// Mean KL(reference ‖ candidate) over each prompt's positions.
    pub prompt_kl: Vec<f64>,
    /// (reference margin, whether the top-1 agrees) per position.
    pub positions: Vec<(f64, bool)>,
    /// The format's logit error, a standard deviation.
    pub sigma: f64,
}

impl LogitEvidence {
    /// Reads the evidence of two sets of logits, prompt by prompt and position by position; the
    /// error names a shape mismatch or a non-finite logit.
    pub fn measure(
        reference: &[Vec<Vec<f32>>],
        candidate: &[Vec<Vec<f32>>],
    ) -> Result<LogitEvidence, String> {
        let mut prompt_kl: Vec<f64> = Vec::new();
        let mut spreads: Vec<f64> = Vec::new();
        let mut positions: Vec<(f64, bool)> = Vec::new();
        for (r, c) in reference.iter().zip(candidate) {
            if r.len() != c.len() {
                return Err(format!("{} reference positions, {} from the artifact", r.len(), c.len()));
            }
            let mut kl_sum = 0.0;
            for (rl, cl) in r.iter().zip(c) {
                if rl.len() != cl.len() {
                    return Err(format!(
                        "vocabulary {} in the reference, {} in the artifact",
                        rl.len(),
                        cl.len()
                    ));
                }
                if cl.iter().any(|v| !v.is_finite()) {
                    return Err("the artifact produced a non-finite logit".to_string());
                }
                kl_sum += kl_divergence(rl, cl);
                spreads.push(spread(rl, cl));
                positions.push((margin(rl), argmax(rl) == argmax(cl)));
            }
            if !r.is_empty() {
                prompt_kl.push(kl_sum / r.len() as f64);
            }
        }
        // The mean absolute deviation of a normal variable is σ·√(2/π).
        let sigma = median(&mut spreads) * (std::f64::consts::PI / 2.0).sqrt();
        Ok(LogitEvidence { prompt_kl, positions, sigma })
    }

    /// The reference margin below which a position is a near-tie.
    pub fn tie_margin(&self) -> f64 {
        TIE_SIGMAS * std::f64::consts::SQRT_2 * self.sigma
    }

    /// Top-1 agreement over the decisive positions: (agreeing, decisive).
    pub fn decisive_agreement(&self) -> (usize, usize) {
        let tie = self.tie_margin();
        let decisive = self.positions.iter().filter(|(m, _)| *m > tie);
        let (agree, all) = decisive.fold((0, 0), |(a, n), (_, ok)| (a + usize::from(*ok), n + 1));
        (agree, all)
    }

    /// The top-1 part of the gate: its count rule and power, from n alone.
    pub fn top1_gate(&self, tolerance: LogitTolerance) -> RateGate {
        RateGate::new(self.decisive_agreement().1, tolerance.min_top1)
    }

    /// The mean over prompts of each prompt's mean KL divergence.
    pub fn mean_kl(&self) -> f64 {
        self.prompt_kl.iter().sum::<f64>() / self.prompt_kl.len().max(1) as f64
    }

    /// The KL part of the gate: the bootstrap interval of the mean over prompts.
    pub fn kl_interval(&self) -> MeanInterval {
        stats::bootstrap_mean(&self.prompt_kl, BOOTSTRAP, BOOTSTRAP_SEED)
    }

    /// Whether the top-1 part fails: the agreement below its threshold by the exact binomial test.
    pub fn top1_fails(&self, tolerance: LogitTolerance) -> bool {
        self.top1_gate(tolerance).fails(self.decisive_agreement().0)
    }

    /// Whether the KL part fails: the lower end of the interval above its threshold.
    pub fn kl_fails(&self, tolerance: LogitTolerance) -> bool {
        self.kl_interval().lo > tolerance.max_mean_kl
    }

    /// The verdict, with n, both thresholds, how each was derived and what each detects.
    pub fn judge(&self, tolerance: LogitTolerance) -> Verdict {
        let n = self.positions.len();
        if n == 0 {
            return Verdict::fail("no position to compare: the scenarios give no prompt");
        }
        let (agree, decisive) = self.decisive_agreement();
        let near_ties = n - decisive;
        let kl = self.kl_interval();
        let top1_gate = self.top1_gate(tolerance);
        let top1_text = match decisive {
            0 => "no decisive position for top-1 agreement".to_string(),
            d => format!(
                "top-1 agreement {:.1}% ({agree} of {d} decisive positions, Wilson 95% interval {:.1}–{:.1}%; ≥ {:.1}%: {})",
                agree as f64 / d as f64 * 100.0,
                stats::wilson(agree, d).0 * 100.0,
                stats::wilson(agree, d).1 * 100.0,
                tolerance.min_top1 * 100.0,
                top1_gate.describe()
            ),
        };
        let summary = format!(
            "mean KL divergence {:.2e} (95% interval {:.2e}–{:.2e} over {} prompts, bootstrap; ≤ {:.1e}: fails when \
             the interval's lower end is above it, detects a true mean of {:.2e} or more with {:.0}% power), \
             {top1_text}; {near_ties} of {n} positions are near-ties (reference margin within {TIE_SIGMAS} standard \
             errors of the format's logit error σ = {:.2e}) and are not scored",
            kl.mean,
            kl.lo,
            kl.hi,
            self.prompt_kl.len(),
            tolerance.max_mean_kl,
            kl.detectable_above(tolerance.max_mean_kl),
            (1.0 - stats::BETA) * 100.0,
            self.sigma,
        );
        if kl.lo > tolerance.max_mean_kl || top1_gate.fails(agree) {
            Verdict::fail(summary)
        } else if decisive == 0 {
            Verdict::fail(format!(
                "{summary}: the format's error is as large as every reference margin, so top-1 cannot be judged"
            ))
        } else {
            Verdict::pass(summary)
        }
    }
}

/// KL(softmax(reference) ‖ softmax(candidate)) at one position.
pub fn kl_divergence(reference: &[f32], candidate: &[f32]) -> f64 {
    let (p, q) = (softmax(reference), softmax(candidate));
    p.iter().zip(&q).filter(|(p, _)| **p > 0.0).map(|(p, q)| p * (p / q.max(1e-300)).ln()).sum()
}

/// The top logit less the second: how decisive the reference's choice is.
fn margin(logits: &[f32]) -> f64 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in logits {
        if v > first {
            second = first;
            first = v;
        } else if v > second {
            second = v;
        }
    }
    f64::from(first - second)
}

/// The mean absolute deviation of candidate minus reference logits at one position, centred
/// (a constant shift of every logit changes no probability).
fn spread(reference: &[f32], candidate: &[f32]) -> f64 {
    let n = reference.len().max(1) as f64;
    let mean = reference.iter().zip(candidate).map(|(r, c)| f64::from(c - r)).sum::<f64>() / n;
    reference.iter().zip(candidate).map(|(r, c)| (f64::from(c - r) - mean).abs()).sum::<f64>() / n
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Outcome;

    /// Reference logits of `prompts` prompts, `positions` each, over `vocab` tokens: a clear top
    /// token at every position unless `tied` says to put the top two `gap` apart.
    fn reference(
        prompts: usize,
        positions: usize,
        vocab: usize,
        tied: &[(usize, usize)],
        gap: f32,
    ) -> Vec<Vec<Vec<f32>>> {
        (0..prompts)
            .map(|p| {
                (0..positions)
                    .map(|i| {
                        let mut l: Vec<f32> =
                            (0..vocab).map(|v| ((v * 7 + i * 3 + p) % 11) as f32 * 0.1).collect();
                        let top = (i + p) % vocab;
                        l[top] = 5.0;
                        let second = (top + 1) % vocab;
                        l[second] = if tied.contains(&(p, i)) { 5.0 - gap } else { 2.0 };
                        l
                    })
                    .collect()
            })
            .collect()
    }

    /// `reference` with a deterministic error of about `sigma` on every logit.
    fn noisy(reference: &[Vec<Vec<f32>>], sigma: f32) -> Vec<Vec<Vec<f32>>> {
        let mut k = 0u32;
        reference
            .iter()
            .map(|p| {
                p.iter()
                    .map(|l| {
                        l.iter()
                            .map(|v| {
                                k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                                let u = (k >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                                v + u * sigma * 3.46
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn identical_logits_pass_and_clear_flips_fail() {
        let tol = LogitTolerance::for_format(Format::Apr);
        let r = reference(4, 8, 16, &[], 0.0);
        let v = logits(&r, &r, tol);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
        assert!(v.reason.contains("top-1 agreement 100.0% (32 of 32 decisive positions"), "{}", v.reason);
        // Swap the top two at a quarter of the positions, where the reference is decisive.
        let mut c = r.clone();
        for (p, prompt) in c.iter_mut().enumerate() {
            for (i, l) in prompt.iter_mut().enumerate().filter(|(i, _)| i % 4 == 0) {
                let n = l.len();
                let top = (i + p) % n;
                l.swap(top, (top + 1) % n);
            }
        }
        let v = logits(&r, &c, tol);
        assert_eq!(v.outcome, Outcome::Falsified, "{}", v.reason);
    }

    #[test]
    fn near_ties_within_the_formats_error_are_not_scored_and_said() {
        // The Q8_0 case: the disagreements sit where the reference's top two are 0.13
        // apart, within the format's error; the model is otherwise right everywhere.
        let tol = LogitTolerance::for_format(Format::Gguf(Quantization::Q8_0));
        let tied: Vec<(usize, usize)> = (0..5).map(|p| (p, 0)).collect();
        let r = reference(20, 4, 64, &tied, 0.13);
        let mut c = noisy(&r, 0.05);
        for &(p, i) in &tied {
            let top = (i + p) % 64;
            c[p][i].swap(top, (top + 1) % 64);
        }
        let v = logits(&r, &c, tol);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
        assert!(v.reason.contains("5 of 80 positions are near-ties"), "{}", v.reason);
        // The same flips at decisive positions are a defect.
        let mut c = noisy(&r, 0.05);
        for (p, prompt) in c.iter_mut().enumerate().take(8) {
            let top = (1 + p) % 64;
            prompt[1].swap(top, (top + 1) % 64);
        }
        let v = logits(&r, &c, tol);
        assert_eq!(v.outcome, Outcome::Falsified, "{}", v.reason);
    }

    #[test]
    fn the_kl_gate_fails_beyond_its_interval_only() {
        let tol = LogitTolerance { max_mean_kl: 0.01, min_top1: 0.5 };
        let r = reference(20, 4, 32, &[], 0.0);
        // Noise whose KL sits well under the threshold passes; ten times as much fails.
        let v = logits(&r, &noisy(&r, 0.02), tol);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
        let v = logits(&r, &noisy(&r, 0.6), tol);
        assert_eq!(v.outcome, Outcome::Falsified, "{}", v.reason);
        assert!(v.reason.contains("95% interval"), "{}", v.reason);
    }

    #[test]
    fn the_reason_states_n_the_threshold_and_what_the_gate_detects() {
        let tol = LogitTolerance::for_format(Format::Gguf(Quantization::Q4KM));
        let r = reference(20, 8, 32, &[], 0.0);
        let v = logits(&r, &noisy(&r, 0.02), tol);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
        for said in [
            "of 160 decisive positions",
            "fails at",
            "detects a true rate of",
            "over 20 prompts",
            "detects a true mean of",
        ] {
            assert!(v.reason.contains(said), "{said:?} not in {}", v.reason);
        }
    }
}
