//! Scenario trials, one room per way a model is served: `run` and `chat` in process
//! ([`text`]), `serve` over real HTTP ([`serve`]), and property scenarios over generated cases
//! in any modality ([`property`]).

mod property;
mod serve;
mod text;

pub(crate) use property::run as property;

use crate::matrix::Modality;
use crate::playbook::Scenario;
use crate::trial::{Finding, TrialEnv};
use crate::vocab::Outcome;

/// A scenario in `run`, `chat` or `serve`, as many times as its `repeat` says.
pub(crate) fn scenario(env: &TrialEnv<'_>, modality: Modality, scenario: &Scenario) -> Finding {
    repeated(env, scenario, |env| match modality {
        Modality::Serve => serve::run(env, scenario),
        Modality::Run | Modality::Chat => text::run(env, modality, scenario),
    })
}

/// Runs `once` for each of the scenario's repeats and judges them together: all passing is a
/// pass; fewer than the policy needs is a falsification; enough but not all is `flaky`. A
/// timeout or a crash ends the trial at once (the repeats share one deadline).
fn repeated(env: &TrialEnv<'_>, scenario: &Scenario, once: impl Fn(&TrialEnv<'_>) -> Finding) -> Finding {
    let repeat = scenario.repeat;
    if repeat.times <= 1 {
        return once(env);
    }
    let mut passed = 0;
    let mut first_pass = None;
    let mut first_failure: Option<(u32, Finding)> = None;
    for i in 0..repeat.times {
        let f = once(&TrialEnv { repeat: i, ..*env });
        match f.outcome {
            Outcome::Corroborated => {
                passed += 1;
                first_pass.get_or_insert(f);
            }
            Outcome::Timeout | Outcome::Crashed => {
                let mut f = f;
                f.reason = format!("run {} of {}: {}", i + 1, repeat.times, f.reason);
                return f;
            }
            _ => {
                first_failure.get_or_insert((i, f));
            }
        }
    }
    let (times, needed) = (repeat.times, repeat.needed);
    let tally = format!("{passed} of {times} runs passed (the policy needs {needed})");
    match (first_failure, first_pass) {
        (None, Some(mut f)) => {
            f.reason = format!("{tally}: {}", f.reason);
            f
        }
        (Some((i, mut f)), _) => {
            let (outcome, verdict) = if passed >= needed {
                (Outcome::Flaky, "the runs disagree: the same request gets different verdicts")
            } else if passed > 0 {
                (Outcome::Falsified, "too few passed, and the runs disagree")
            } else {
                (Outcome::Falsified, "none passed")
            };
            f.outcome = outcome;
            f.reason = format!("{tally}; {verdict}; run {} failed: {}", i + 1, f.reason);
            f
        }
        (None, None) => Finding::new(Outcome::Falsified, crate::vocab::Decider::Oracles, "no run was made"),
    }
}
