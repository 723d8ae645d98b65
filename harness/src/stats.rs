//! The statistics the gates judge with: a seeded generator, the Wilson interval of a proportion,
//! the exact binomial tail, a bootstrap interval of a mean, and the minimum detectable effect of
//! each test. A gate that knows its noise states n, its threshold and how the threshold was
//! derived; the numbers behind those sentences come from here.
//!
//! Conventions: every interval is a 95% two-sided one, so each one-sided test has a false-alarm
//! rate α of 2.5%. A gate claims the smallest defect it catches with power 1 − β = 90%: stricter
//! than TensorRT-LLM's β = 0.2, so that a planted defect of the claimed size is caught in at least
//! 80% of resampled prompt sets with room for the resampling's own noise (`cargo xtask bench
//! gates` measures it). A leaf: imports nothing from the crate.

/// The one-sided false-alarm rate of every gate (the tail of a 95% two-sided interval).
pub const ALPHA: f64 = 0.025;
/// The miss rate allowed at the minimum detectable effect.
pub const BETA: f64 = 0.1;

/// A small seeded generator (SplitMix64): the same draws on every machine, no dependency.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A draw in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A draw in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// A draw in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The standard normal quantile Φ⁻¹(p), for 0 < p < 1 (Acklam's rational approximation, relative
/// error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [7.784_695_709_041_462e-3, 3.224_671_290_700_398e-1, 2.445_134_137_142_996, 3.754_408_661_907_416];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        let q = (-2.0 * q.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail(p)
    } else if p > 1.0 - 0.02425 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The Wilson score 95% interval of a proportion of `k` in `n`; `(0, 1)` when `n` is 0.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let z = normal_quantile(1.0 - ALPHA);
    let p = k / n;
    let centre = p + z * z / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z * z / n;
    (((centre - half) / scale).max(0.0), ((centre + half) / scale).min(1.0))
}

/// P(K ≤ k) for K ~ Binomial(n, p), summed in log space so n in the hundreds of thousands is
/// exact to rounding.
pub fn binomial_cdf(k: usize, n: usize, p: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    // ln C(n, i), built up term by term.
    let mut ln_choose = 0.0;
    let mut sum = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        sum += (ln_choose + i as f64 * lp + (n - i) as f64 * lq).exp();
    }
    sum.min(1.0)
}

/// A gate on a proportion, by the exact one-sided binomial test: it fails a count of `k`
/// successes in `n` when a process exactly at `threshold` would give `k` or fewer at most α of
/// the time. What it can and cannot see follows from n and the threshold alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateGate {
    pub n: usize,
    pub threshold: f64,
    /// The largest count that fails (`None`: no count fails, n is too small to judge).
    pub failing_at_most: Option<usize>,
    /// The false-alarm rate at a true rate equal to the threshold: P(K ≤ failing_at_most).
    pub false_alarm: f64,
    /// The highest true rate failed with probability ≥ 1 − β (`None`: not even a rate of 0).
    pub detects_at_or_below: Option<f64>,
}

impl RateGate {
    pub fn new(n: usize, threshold: f64) -> RateGate {
        let failing_at_most = (0..=n).take_while(|&k| binomial_cdf(k, n, threshold) <= ALPHA).last();
        let false_alarm = failing_at_most.map_or(0.0, |k| binomial_cdf(k, n, threshold));
        let detects_at_or_below = failing_at_most.and_then(|k| {
            // P(K ≤ k | p) falls as p rises: bisect for the p where it crosses 1 − β.
            let power = |p: f64| binomial_cdf(k, n, p);
            if power(0.0) < 1.0 - BETA {
                return None;
            }
            let (mut lo, mut hi) = (0.0, threshold);
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if power(mid) >= 1.0 - BETA { lo = mid } else { hi = mid }
            }
            Some(lo)
        });
        RateGate { n, threshold, failing_at_most, false_alarm, detects_at_or_below }
    }

    /// Whether `k` successes fail the gate.
    pub fn fails(&self, k: usize) -> bool {
        self.failing_at_most.is_some_and(|most| k <= most)
    }

    /// One sentence: n, the threshold, the count it fails at, and what it detects.
    pub fn describe(&self) -> String {
        match (self.failing_at_most, self.detects_at_or_below) {
            (Some(k), Some(p)) => format!(
                "fails at {k} or fewer of {} (exact binomial test at {:.1}%: false-alarm rate {:.1}% at the threshold, α = 2.5%), \
                 detects a true rate of {:.1}% or less with {:.0}% power",
                self.n,
                self.threshold * 100.0,
                self.false_alarm * 100.0,
                p * 100.0,
                (1.0 - BETA) * 100.0
            ),
            (Some(k), None) => format!(
                "fails at {k} or fewer of {} (exact binomial test at {:.1}%, α = 2.5%); too few to detect any rate with {:.0}% power",
                self.n,
                self.threshold * 100.0,
                (1.0 - BETA) * 100.0
            ),
            (None, _) => format!(
                "n = {} is too few for any count to fall below {:.1}% at α = 2.5%",
                self.n,
                self.threshold * 100.0
            ),
        }
    }
}

/// A bootstrap 95% interval of a mean, with the resampled means' standard deviation (the mean's
/// standard error).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanInterval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub standard_error: f64,
}

impl MeanInterval {
    /// The smallest true mean above `threshold` that a test failing when `lo > threshold` catches
    /// with power 1 − β: threshold + (z₁₋α + z₁₋β)·se, se as this evidence spreads.
    pub fn detectable_above(&self, threshold: f64) -> f64 {
        threshold + (normal_quantile(1.0 - ALPHA) + normal_quantile(1.0 - BETA)) * self.standard_error
    }
}

/// The 2.5% and 97.5% percentiles of the mean of `values` resampled with replacement
/// `resamples` times from `seed`: the same evidence gives the same interval.
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> MeanInterval {
    let n = values.len();
    let mean = if n == 0 { 0.0 } else { values.iter().sum::<f64>() / n as f64 };
    if n < 2 || resamples == 0 {
        return MeanInterval { mean, lo: mean, hi: mean, standard_error: 0.0 };
    }
    let mut rng = SplitMix::new(seed);
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64).collect();
    let centre = means.iter().sum::<f64>() / resamples as f64;
    let var = means.iter().map(|m| (m - centre).powi(2)).sum::<f64>() / (resamples - 1).max(1) as f64;
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    MeanInterval { mean, lo: at(ALPHA), hi: at(1.0 - ALPHA), standard_error: var.sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_are_the_tabled_ones() {
        for (p, z) in
            [(0.5, 0.0), (0.975, 1.959_964), (0.8, 0.841_621), (0.01, -2.326_348), (0.999, 3.090_232)]
        {
            assert!((normal_quantile(p) - z).abs() < 1e-5, "Φ⁻¹({p}) = {}", normal_quantile(p));
        }
    }

    #[test]
    fn wilson_bounds_match_the_textbook() {
        let (lo, hi) = wilson(95, 100);
        assert!((hi - 0.9785).abs() < 1e-3 && (lo - 0.8882).abs() < 1e-3, "{lo} {hi}");
        assert_eq!(wilson(10, 10).1, 1.0);
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn the_binomial_tail_is_exact() {
        // P(K ≤ 2 | n = 5, p = 0.5) = (1 + 5 + 10) / 32.
        assert!((binomial_cdf(2, 5, 0.5) - 0.5).abs() < 1e-12);
        assert!((binomial_cdf(0, 10, 0.1) - 0.9f64.powi(10)).abs() < 1e-12);
        assert_eq!(binomial_cdf(10, 10, 0.3), 1.0);
        // Large n stays finite and sums to about one.
        let c = binomial_cdf(5_000, 10_000, 0.5);
        assert!((c - 0.504).abs() < 0.01, "{c}");
    }

    #[test]
    fn a_rate_gate_holds_its_false_alarm_rate_and_states_its_power() {
        let g = RateGate::new(200, 0.9);
        let k = g.failing_at_most.expect("200 cases can fail");
        assert!(g.fails(k) && !g.fails(k + 1));
        assert!(g.false_alarm <= ALPHA, "{g:?}");
        let p = g.detects_at_or_below.expect("200 cases detect something");
        assert!(p < 0.9 && p > 0.75, "{g:?}");
        assert!(binomial_cdf(k, 200, p) >= 1.0 - BETA - 1e-9);
        // Simulated: at the detectable rate, the gate fails about 1 − β of the time; at the
        // threshold, about α of the time or less.
        let mut rng = SplitMix::new(3);
        let mut fail_rate = |rate: f64| {
            let runs = 4_000;
            let failed =
                (0..runs).filter(|_| g.fails((0..200).filter(|_| rng.unit() < rate).count())).count();
            failed as f64 / runs as f64
        };
        assert!(fail_rate(0.9) <= 0.035);
        let at_p = fail_rate(p);
        assert!((0.86..=0.94).contains(&at_p), "{at_p}");
        // Too few cases: no count fails, and the sentence says so.
        let few = RateGate::new(3, 0.5);
        assert_eq!(few.failing_at_most, None);
        assert!(few.describe().contains("too few"), "{}", few.describe());
    }

    #[test]
    fn the_bootstrap_interval_covers_the_mean_and_is_seeded() {
        let values: Vec<f64> = (0..50).map(|i| f64::from(i % 7)).collect();
        let a = bootstrap_mean(&values, 2_000, 1);
        assert_eq!(a, bootstrap_mean(&values, 2_000, 1));
        assert!(a.lo < a.mean && a.mean < a.hi, "{a:?}");
        // The standard error of a mean of 50 values with sd ≈ 2: about 0.28.
        assert!((a.standard_error - 0.28).abs() < 0.06, "{a:?}");
        assert!(a.detectable_above(1.0) > 1.0 + 2.5 * a.standard_error);
        let one = bootstrap_mean(&[0.3], 100, 1);
        assert_eq!((one.lo, one.hi), (0.3, 0.3));
    }

    #[test]
    fn draws_are_seeded_and_spread() {
        let mut a = SplitMix::new(9);
        let mut b = SplitMix::new(9);
        assert_eq!(a.next_u64(), b.next_u64());
        let mean = (0..10_000).map(|_| a.unit()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02);
        let normal: Vec<f64> = (0..10_000).map(|_| a.normal()).collect();
        let m = normal.iter().sum::<f64>() / 1e4;
        let v = normal.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 1e4;
        assert!(m.abs() < 0.05 && (v - 1.0).abs() < 0.05, "{m} {v}");
        assert_eq!(a.below(0), 0);
    }
}
