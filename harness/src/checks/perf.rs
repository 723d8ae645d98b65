//! The performance verdict of `perf::decode` trials: speed judged against the machine it was
//! measured on, so a busy runner cannot fail a model and a real slowdown cannot hide.
//!
//! Wall-clock speed on a shared machine measures the machine as much as the model (on the
//! project's 2-core runners two CPU-bound neighbours slowed decoding 3–300×). So every timed
//! generation is bracketed by a **calibration**: a fixed amount of candle work of the kind decoding
//! does (single-row matrix products), run on the same thread just before and just after. The
//! calibration's duration against [`CALIBRATION_REFERENCE`] (its duration on the project's
//! reference machine, idle) gives the machine's speed at that moment, and the trial judges the
//! **normalised** figures — decode speed ÷ machine speed, first-token time × machine speed — which
//! are what the model would have done on the reference machine. Contention slows the calibration
//! and the generation alike and cancels out; a model that got slower does not.
//!
//! Where the normalised figures still spread so widely that their median cannot be placed on one
//! side of its floor ([`CONFIDENCE`] standard errors), the outcome is `unstable`: recorded and
//! shown, never a pass and never a falsification. This module is pure apart from [`calibrate`] and [`load_average`]; it knows
//! nothing about trials, sessions or playbooks.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::engine::GenerateRequest;
use crate::matrix::Backend;
use crate::playbook::spec::EngineSpec;
use crate::trial::{Finding, TrialEnv};
use crate::vocab::{Decider, Outcome};

/// The calibration's duration on the reference machine (the project's 2-core x86_64 runner,
/// AVX2, idle, one trial at a time): 15 ms, measured by the `perf::decode` trials of qa-tiny.
pub(crate) const CALIBRATION_REFERENCE: Duration = Duration::from_micros(15_000);

/// How many standard errors of the median must separate it from a floor for a verdict. Within
/// that band the measurement cannot tell a pass from a failure and is `unstable`.
pub(crate) const CONFIDENCE: f64 = 3.0;

/// Rows × columns of the calibration's matrix (1 MiB of f32: in cache on any current CPU, as a
/// small model's layers are) and how many single-row products one calibration runs.
const CALIBRATION_SHAPE: (usize, usize) = (512, 512);
const CALIBRATION_PRODUCTS: usize = 192;

/// Runs the fixed calibration workload once and returns how long it took on this thread.
pub(crate) fn calibrate() -> Duration {
    static OPERANDS: OnceLock<Option<(Tensor, Tensor)>> = OnceLock::new();
    let operands = OPERANDS.get_or_init(|| {
        let (k, n) = CALIBRATION_SHAPE;
        // Deterministic values: the same work on every machine, no RNG.
        let w: Vec<f32> = (0..k * n).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
        let x: Vec<f32> = (0..k).map(|i| ((i % 13) as f32 - 6.0) / 13.0).collect();
        let w = Tensor::from_vec(w, (k, n), &Device::Cpu).ok()?;
        let x = Tensor::from_vec(x, (1, k), &Device::Cpu).ok()?;
        Some((x, w))
    });
    let started = Instant::now();
    if let Some((x, w)) = operands {
        for _ in 0..CALIBRATION_PRODUCTS {
            // The result is read back so the work cannot be skipped.
            let _ = x.matmul(w).and_then(|y| y.sum_all()).and_then(|s| s.to_scalar::<f32>());
        }
    }
    started.elapsed()
}

/// The 1-minute load average, where the system reports one (Linux).
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// One timed generation with the calibrations around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// Decode speed as measured, when the generation had a second token.
    pub tokens_per_second: Option<f64>,
    /// Time to first token as measured, milliseconds.
    pub time_to_first_token_ms: f64,
    /// The mean of the calibrations just before and just after the generation.
    pub calibration: Duration,
    /// Whether the calibration says anything about this generation: it measures this CPU, so a
    /// gpu cell or an engine in another process is judged as measured.
    pub calibrated: bool,
}

impl Sample {
    /// How fast the machine ran at the time, against the reference machine (1.0 = as fast;
    /// 0.3 = a third as fast, e.g. shared with two busy neighbours).
    pub(crate) fn machine_speed(&self) -> f64 {
        if !self.calibrated {
            return 1.0;
        }
        CALIBRATION_REFERENCE.as_secs_f64() / self.calibration.as_secs_f64().max(1e-9)
    }

    /// Decode speed as the reference machine would have measured it.
    pub(crate) fn normalised_tokens_per_second(&self) -> Option<f64> {
        self.tokens_per_second.map(|v| v / self.machine_speed())
    }

    /// Time to first token as the reference machine would have measured it.
    pub(crate) fn normalised_time_to_first_token_ms(&self) -> f64 {
        self.time_to_first_token_ms * self.machine_speed()
    }
}

/// A figure a verdict was drawn from: the median of the normalised samples, the median as
/// measured, and the spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Figure {
    pub normalised: f64,
    pub measured: f64,
    /// Median absolute deviation of the normalised samples over their median.
    pub spread: f64,
    /// Relative standard error of the normalised median (from the spread and the sample count).
    pub uncertainty: f64,
}

impl Figure {
    /// Whether `floor` lies within [`CONFIDENCE`] standard errors of the median, where the
    /// measurement cannot say on which side of it the model is. Speeds and times vary by
    /// factors, so the band is a factor either way (a linear band would reach below zero).
    fn undecided(&self, floor: f64) -> bool {
        (self.normalised / floor).ln().abs() < CONFIDENCE * self.uncertainty
    }

    /// The band's factor either way of the median: `×2.3` means from median / 2.3 to × 2.3.
    fn band(&self) -> f64 {
        (CONFIDENCE * self.uncertainty).exp()
    }
}

/// The floors a cell's performance is held to; `None` asserts nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Floors {
    pub min_tokens_per_second: Option<f64>,
    pub max_time_to_first_token_ms: Option<f64>,
}

/// What the measurement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Pass,
    Fail,
    /// Too noisy to say: never a pass, never a falsification.
    Unstable,
}

/// The verdict on a cell, with what it was drawn from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Judgement {
    pub decision: Decision,
    /// One sentence per figure and the problems, for the trial's reason.
    pub reason: String,
    pub decode: Option<Figure>,
    pub first_token: Option<Figure>,
    /// Median machine speed over the samples (see [`Sample::machine_speed`]).
    pub machine_speed: f64,
}

/// The median and the relative median absolute deviation of `v` (`None` when empty).
fn median_and_spread(v: &[f64]) -> Option<(f64, f64)> {
    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    }
    if v.is_empty() {
        return None;
    }
    let mut sorted = v.to_vec();
    let m = median(&mut sorted);
    let mut deviations: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    let mad = median(&mut deviations);
    Some((m, if m > 0.0 { mad / m } else { 0.0 }))
}

fn figure(normalised: &[f64], measured: &[f64]) -> Option<Figure> {
    let (n, spread) = median_and_spread(normalised)?;
    let (m, _) = median_and_spread(measured)?;
    // The median's standard error for roughly normal samples: 1.2533 σ / √n, with σ estimated
    // as 1.4826 × the median absolute deviation. One sample has no spread to estimate: it can
    // decide only far from the floor, so it is given a 50% uncertainty.
    let uncertainty =
        if normalised.len() < 2 { 0.5 } else { 1.2533 * 1.4826 * spread / (normalised.len() as f64).sqrt() };
    Some(Figure { normalised: n, measured: m, spread, uncertainty })
}

/// Judges `samples` against `floors`: the normalised medians decide, unless a floor lies within
/// [`CONFIDENCE`] standard errors of its median, when the verdict is [`Decision::Unstable`]. A
/// failure of one figure stands even when the other is undecided.
pub(crate) fn judge(samples: &[Sample], floors: Floors) -> Judgement {
    let speeds: Vec<f64> = samples.iter().map(Sample::machine_speed).collect();
    let machine_speed = median_and_spread(&speeds).map_or(1.0, |(m, _)| m);
    let decode_normalised: Vec<f64> =
        samples.iter().filter_map(Sample::normalised_tokens_per_second).collect();
    let decode_measured: Vec<f64> = samples.iter().filter_map(|s| s.tokens_per_second).collect();
    let first_normalised: Vec<f64> = samples.iter().map(Sample::normalised_time_to_first_token_ms).collect();
    let first_measured: Vec<f64> = samples.iter().map(|s| s.time_to_first_token_ms).collect();
    let decode = figure(&decode_normalised, &decode_measured);
    let first_token = figure(&first_normalised, &first_measured);

    let calibrated = !samples.is_empty() && samples.iter().all(|s| s.calibrated);
    let at = if calibrated { " at reference speed" } else { "" };
    let mut said = vec![if calibrated {
        format!("{} timed generations, machine at {machine_speed:.2}× the reference speed", samples.len())
    } else {
        format!(
            "{} timed generations, judged as measured (the calibration measures this CPU, not a gpu or another process's engine)",
            samples.len()
        )
    }];
    let mut problems = Vec::new();
    let mut noisy = Vec::new();
    if let Some(min) = floors.min_tokens_per_second {
        match decode {
            None => problems.push(
                "no decode speed: every generation ended before its second token (give a prompt answered at length)"
                    .to_string(),
            ),
            Some(f) => {
                said.push(format!(
                    "decode {:.1} tokens/s{at} (at least {min}; measured {:.1}, spread {:.0}%)",
                    f.normalised,
                    f.measured,
                    f.spread * 100.0
                ));
                if f.undecided(min) {
                    noisy.push(format!(
                        "decode speed {:.1} (×{:.1} either way) is too close to its floor {min}",
                        f.normalised,
                        f.band()
                    ));
                } else if f.normalised < min {
                    problems.push(format!(
                        "decode speed {:.1} tokens/s{at} is below {min}",
                        f.normalised
                    ));
                }
            }
        }
    }
    if let (Some(max), Some(f)) = (floors.max_time_to_first_token_ms, first_token) {
        said.push(format!(
            "first token {:.2} ms{at} (at most {max}; measured {:.2}, spread {:.0}%)",
            f.normalised,
            f.measured,
            f.spread * 100.0
        ));
        if f.undecided(max) {
            noisy.push(format!(
                "time to first token {:.2} ms (×{:.1} either way) is too close to its ceiling {max}",
                f.normalised,
                f.band()
            ));
        } else if f.normalised > max {
            problems.push(format!("time to first token {:.2} ms{at} is above {max}", f.normalised));
        }
    }
    let said = said.join("; ");
    let (decision, reason) = if !problems.is_empty() {
        (Decision::Fail, format!("{} ({said})", problems.join("; ")))
    } else if !noisy.is_empty() {
        (
            Decision::Unstable,
            format!("unstable: {}: the measurement is too noisy to judge ({said})", noisy.join("; ")),
        )
    } else {
        (Decision::Pass, said)
    };
    Judgement { decision, reason, decode, first_token, machine_speed }
}

/// The playbook's performance assertions on a cell: `warmup` untimed greedy generations, then
/// `runs` timed ones, each between two calibrations of the machine; the medians of the
/// normalised decode speed and time to first token decide, and a measurement too noisy to judge
/// is `unstable`.
pub(crate) fn run(env: &TrialEnv<'_>) -> Finding {
    let spec = env.spec;
    let Some(p) = &spec.performance else {
        return Finding::new(Outcome::Falsified, Decider::Perf, "the playbook has no performance assertions");
    };
    let (format, backend) = (spec.name.format.name(), spec.name.backend);
    let floors = Floors {
        min_tokens_per_second: p.min_tokens_per_second(&format, backend),
        max_time_to_first_token_ms: p.max_time_to_first_token_ms(&format, backend),
    };
    let prompt = p.prompt.clone().unwrap_or_else(|| env.basic_prompt());
    let (warmup, runs) = (p.warmup.unwrap_or(2), p.runs.unwrap_or(5));
    let load_before = load_average();
    // The calibration measures this CPU: it speaks for a cpu cell of the embedded engine, not for
    // a GPU or an engine in another process.
    let calibrated = backend == Backend::Cpu && matches!(spec.engine, EngineSpec::Embedded);
    let calibrate = || if calibrated { calibrate() } else { CALIBRATION_REFERENCE };
    // The session is held for the whole measurement, so no other trial's generation lands
    // between a calibration and the generation it brackets.
    let mut guard = env.session.lock().unwrap_or_else(|e| e.into_inner());
    let mut samples = Vec::new();
    let mut calibration_before = calibrate();
    for i in 0..warmup + runs {
        match guard.generate(&GenerateRequest::greedy(&prompt, p.tokens_per_run(), env.deadline)) {
            Ok(g) if i >= warmup => {
                let calibration_after = calibrate();
                samples.push(Sample {
                    tokens_per_second: g.tokens_per_second(),
                    time_to_first_token_ms: g.time_to_first_token.as_secs_f64() * 1e3,
                    calibration: (calibration_before + calibration_after) / 2,
                    calibrated,
                });
                calibration_before = calibration_after;
            }
            Ok(_) => calibration_before = calibrate(),
            Err(e) => {
                let what = format!("the measurement (generation {} of {})", i + 1, warmup + runs);
                return Finding::from_engine_error(e, Decider::Perf, &what, env.timeout())
                    .with_prompt(prompt);
            }
        }
    }
    drop(guard);
    let judgement = judge(&samples, floors);
    let mut reason = judgement.reason;
    match (load_before, load_average()) {
        (Some(a), Some(b)) => {
            reason.push_str(&format!("; load average {a:.2} → {b:.2} on {} CPUs", env.ctx.host.cpus))
        }
        _ => reason.push_str("; load average unknown"),
    }
    if let Some(factor) = crate::config::planted_slowdown() {
        reason.push_str(&format!("; a {factor}× slowdown was planted (QUALIFY_FAULT_SLOWDOWN)"));
    }
    let outcome = match judgement.decision {
        Decision::Pass => Outcome::Corroborated,
        Decision::Fail => Outcome::Falsified,
        Decision::Unstable => Outcome::Unstable,
    };
    let mut f = Finding::new(outcome, Decider::Perf, reason);
    // Metrics are what was measured, as in every other record; the reason gives the normalised
    // figures the verdict was drawn from.
    f.metrics.tokens_per_second = judgement.decode.map(|d| d.measured);
    f.metrics.time_to_first_token_ms = judgement.first_token.map(|d| d.measured);
    f.with_prompt(prompt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOORS: Floors =
        Floors { min_tokens_per_second: Some(100.0), max_time_to_first_token_ms: Some(10.0) };

    /// A sample of a model that decodes `tps` and answers first in `ttft` ms on the reference
    /// machine, measured on a machine running at `speed` of it.
    fn sample(tps: f64, ttft: f64, speed: f64) -> Sample {
        Sample {
            tokens_per_second: Some(tps * speed),
            time_to_first_token_ms: ttft / speed,
            calibration: CALIBRATION_REFERENCE.div_f64(speed),
            calibrated: true,
        }
    }

    #[test]
    fn a_busy_machine_does_not_fail_a_fast_model() {
        // Two neighbours take two thirds of the machine: measured 134 tok/s against a floor of
        // 100 would pass, 67 would fail; normalised it is 400 either way.
        for speed in [1.0, 0.33, 0.1] {
            let samples: Vec<Sample> = (0..5).map(|_| sample(400.0, 2.0, speed)).collect();
            let j = judge(&samples, FLOORS);
            assert_eq!(j.decision, Decision::Pass, "{speed}: {}", j.reason);
            assert!((j.decode.unwrap().normalised / 400.0 - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn a_tenfold_slowdown_fails_on_any_machine() {
        for speed in [1.0, 0.33, 2.0] {
            let samples: Vec<Sample> = (0..5).map(|_| sample(40.0, 20.0, speed)).collect();
            let j = judge(&samples, FLOORS);
            assert_eq!(j.decision, Decision::Fail, "{speed}: {}", j.reason);
            assert!(
                j.reason.contains("decode speed 40.0 tokens/s at reference speed is below 100"),
                "{}",
                j.reason
            );
            assert!(j.reason.contains("above 10"), "{}", j.reason);
        }
    }

    #[test]
    fn noise_near_the_floor_is_unstable_not_a_verdict() {
        // The calibrations saw an idle machine, the generations a busy one, by turns, around a
        // median just above the floor.
        let samples: Vec<Sample> = [1.0, 0.6, 1.3, 0.8, 1.1]
            .iter()
            .map(|&slow| Sample { tokens_per_second: Some(120.0 * slow), ..sample(120.0, 2.0, 1.0) })
            .collect();
        let j = judge(&samples, FLOORS);
        assert_eq!(j.decision, Decision::Unstable, "{}", j.reason);
        assert!(j.reason.starts_with("unstable: decode speed 120.0 (×1.6 either way)"), "{}", j.reason);
        assert!(j.reason.contains("too close to its floor 100"), "{}", j.reason);
    }

    #[test]
    fn the_same_noise_far_from_the_floor_still_decides() {
        for (tps, want) in [(1200.0, Decision::Pass), (12.0, Decision::Fail)] {
            let samples: Vec<Sample> = [1.0, 0.6, 1.3, 0.8, 1.1]
                .iter()
                .map(|&slow| Sample { tokens_per_second: Some(tps * slow), ..sample(tps, 2.0, 1.0) })
                .collect();
            let j = judge(&samples, Floors { max_time_to_first_token_ms: None, ..FLOORS });
            assert_eq!(j.decision, want, "{tps}: {}", j.reason);
        }
    }

    #[test]
    fn a_clear_failure_is_not_hidden_by_noise_elsewhere() {
        // Decode is steady and far too slow; the first token is noisy: the failure stands.
        let samples: Vec<Sample> = [1.0, 0.2, 1.0, 0.2, 1.0]
            .iter()
            .map(|&slow| Sample { time_to_first_token_ms: 2.0 / slow, ..sample(10.0, 2.0, 1.0) })
            .collect();
        assert_eq!(judge(&samples, FLOORS).decision, Decision::Fail);
    }

    #[test]
    fn no_second_token_is_a_failure_that_says_why() {
        let samples = vec![Sample { tokens_per_second: None, ..sample(1.0, 1.0, 1.0) }];
        let j = judge(&samples, FLOORS);
        assert_eq!(j.decision, Decision::Fail);
        assert!(j.reason.contains("no decode speed"), "{}", j.reason);
    }

    #[test]
    fn a_wide_spread_far_above_the_floor_still_passes() {
        // Measured beside two busy neighbours: spread near 50%, the median four times the floor.
        let samples: Vec<Sample> = [1.0, 0.5, 1.5, 0.7, 1.2, 0.6, 1.4, 0.9, 1.1]
            .iter()
            .map(|&v| Sample { tokens_per_second: Some(400.0 * v), ..sample(400.0, 2.0, 1.0) })
            .collect();
        let j = judge(&samples, Floors { max_time_to_first_token_ms: None, ..FLOORS });
        assert!(j.decode.unwrap().spread > 0.25, "{:?}", j.decode);
        assert_eq!(j.decision, Decision::Pass, "{}", j.reason);
    }

    #[test]
    fn an_uncalibrated_cell_is_judged_as_measured() {
        // A gpu cell on a host whose CPU is busy: the CPU calibration must not flatter it.
        let samples: Vec<Sample> =
            (0..5).map(|_| Sample { calibrated: false, ..sample(40.0, 2.0, 0.3) }).collect();
        let j = judge(&samples, Floors { max_time_to_first_token_ms: None, ..FLOORS });
        assert_eq!(j.decision, Decision::Fail, "{}", j.reason);
        assert!(j.reason.contains("decode speed 12.0 tokens/s is below 100"), "{}", j.reason);
        assert!(j.reason.contains("judged as measured"), "{}", j.reason);
    }

    #[test]
    fn spread_is_robust_to_one_outlier() {
        let (m, spread) = median_and_spread(&[100.0, 101.0, 99.0, 100.0, 10.0]).unwrap();
        assert_eq!(m, 100.0);
        assert!(spread < 0.02, "{spread}");
    }

    #[test]
    fn calibration_does_real_work() {
        let d = calibrate();
        assert!(d > Duration::ZERO);
    }
}
