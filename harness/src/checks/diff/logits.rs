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

/// How many standard errors of a reference margin make a position decisive for top-1: a
/// position whose top two reference logits are closer than this many standard errors of the
/// format's own logit error (measured on the same positions) is a near-tie, where either token is
/// within the format's expected error, and is left out of top-1 agreement.
const TIE_SIGMAS: f64 = 3.0;

/// Resamples of the prompts for the interval of the mean KL divergence.
const BOOTSTRAP: usize = 2_000;

/// Mean KL(reference ‖ candidate) and top-1 agreement over every position of every prompt,
/// judged against their noise: a gate fails only when the evidence puts the format beyond its
/// threshold with 95% confidence.
///
/// - The format's logit error σ is measured on the same positions (the spread of candidate minus
///   reference logits, each position centred, since logits are shift-invariant; the median over
///   positions of the mean absolute deviation, scaled to a standard deviation).
/// - Top-1 agreement counts decisive positions only: those whose reference margin (top logit
///   less the second) exceeds [`TIE_SIGMAS`] standard errors of a margin (√2·σ). Near-ties are
///   counted and named, never scored. The gate fails when the Wilson 95% upper bound of the
///   agreement lies below its threshold.
/// - Mean KL is a mean over prompts, with a bootstrap 95% interval over prompts ([`BOOTSTRAP`]
///   resamples, a fixed seed); the gate fails when the interval's lower end exceeds its
///   threshold.
pub fn logits(
    reference: &[Vec<Vec<f32>>],
    candidate: &[Vec<Vec<f32>>],
    tolerance: LogitTolerance,
) -> Verdict {
    let mut prompt_kl: Vec<f64> = Vec::new();
    let mut spreads: Vec<f64> = Vec::new();
    // (reference margin, whether the top-1 agrees) per position.
    let mut positions: Vec<(f64, bool)> = Vec::new();
    for (r, c) in reference.iter().zip(candidate) {
        if r.len() != c.len() {
            return Verdict::fail(format!("{} reference positions, {} from the artifact", r.len(), c.len()));
        }
        let mut kl_sum = 0.0;
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
            spreads.push(spread(rl, cl));
            positions.push((margin(rl), argmax(rl) == argmax(cl)));
        }
        if !r.is_empty() {
            prompt_kl.push(kl_sum / r.len() as f64);
        }
    }
    let n = positions.len();
    if n == 0 {
        return Verdict::fail("no position to compare: the scenarios give no prompt");
    }
    // The mean absolute deviation of a normal variable is σ·√(2/π).
    let sigma = median(&mut spreads) * (std::f64::consts::PI / 2.0).sqrt();
    let tie = TIE_SIGMAS * std::f64::consts::SQRT_2 * sigma;
    let decisive: Vec<bool> = positions.iter().filter(|(m, _)| *m > tie).map(|(_, a)| *a).collect();
    let near_ties = n - decisive.len();
    let agree = decisive.iter().filter(|a| **a).count();
    let mean_kl = prompt_kl.iter().sum::<f64>() / prompt_kl.len() as f64;
    let (kl_lo, kl_hi) = bootstrap_interval(&prompt_kl);

    let top1 = match decisive.len() {
        0 => None,
        d => Some((agree as f64 / d as f64, wilson_upper(agree, d))),
    };
    let kl_beyond = kl_lo > tolerance.max_mean_kl;
    let top1_beyond = top1.is_some_and(|(_, upper)| upper < tolerance.min_top1);
    let all_ties = top1.is_none();
    let top1_text = match top1 {
        Some((rate, upper)) => format!(
            "top-1 agreement {:.1}% ({agree} of {} decisive positions, 95% upper bound {:.1}%; ≥ {:.1}%)",
            rate * 100.0,
            decisive.len(),
            upper * 100.0,
            tolerance.min_top1 * 100.0
        ),
        None => "no decisive position for top-1 agreement".to_string(),
    };
    let summary = format!(
        "mean KL divergence {mean_kl:.2e} (95% interval {kl_lo:.2e}–{kl_hi:.2e} over {} prompts; ≤ {:.1e}), \
         {top1_text}; {near_ties} of {n} positions are near-ties (reference margin within {TIE_SIGMAS} standard \
         errors of the format's logit error σ = {sigma:.2e}) and are not scored; fails only beyond the 95% bound",
        prompt_kl.len(),
        tolerance.max_mean_kl,
    );
    if kl_beyond || top1_beyond {
        Verdict::fail(summary)
    } else if all_ties {
        Verdict::fail(format!(
            "{summary}: the format's error is as large as every reference margin, so top-1 cannot be judged"
        ))
    } else {
        Verdict::pass(summary)
    }
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

/// The Wilson score 95% upper bound of a proportion of `k` in `n`.
fn wilson_upper(k: usize, n: usize) -> f64 {
    let (k, n) = (k as f64, n as f64);
    let z = 1.959_964;
    let p = k / n;
    let centre = p + z * z / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre + half) / (1.0 + z * z / n)).min(1.0)
}

/// The 2.5% and 97.5% percentiles of the mean of `values` resampled with replacement, from a
/// fixed seed: the same evidence gives the same interval.
fn bootstrap_interval(values: &[f64]) -> (f64, f64) {
    if values.len() < 2 {
        let v = values.first().copied().unwrap_or(0.0);
        return (v, v);
    }
    let mut state: u64 = 0x6b6c_2d62_6f6f_7473;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let n = values.len();
    let mut means: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| (0..n).map(|_| values[(next() % n as u64) as usize]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (BOOTSTRAP - 1) as f64).round() as usize).min(BOOTSTRAP - 1)];
    (at(0.025), at(0.975))
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
    fn the_bounds_are_right_on_known_cases() {
        assert!((wilson_upper(95, 100) - 0.9785).abs() < 1e-3, "{}", wilson_upper(95, 100));
        assert!((wilson_upper(10, 10) - 1.0).abs() < 1e-12);
        let (lo, hi) = bootstrap_interval(&[1.0; 10]);
        assert!((lo - 1.0).abs() < 1e-12 && (hi - 1.0).abs() < 1e-12, "{lo} {hi}");
        let (lo, hi) = bootstrap_interval(&[0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        assert!(lo < 0.5 && hi > 0.5 && lo > 0.0 && hi < 1.0, "{lo} {hi}");
    }
}
