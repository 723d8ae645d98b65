//! A property scenario: generated cases in one trial, in any modality; a failing case is shrunk
//! to a minimal one, which is run once more so the record shows its real output.

use std::collections::HashMap;
use std::sync::Mutex;

use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError};

use crate::chat::{ChatError, Guarded};
use crate::engine::{EngineError, Generation};
use crate::journal::{BatchMetrics, Metrics};
use crate::matrix::Modality;
use crate::playbook::{
    Input, MessageSpec, Property, Scenario, generated_cases, generator_strategy, seeded_runner,
};
use crate::stats::RateGate;
use crate::trial::{Finding, TrialEnv, judge_generation, metrics_of, prepare};
use crate::vocab::{Decider, Gate, Outcome};

use super::serve::generate_over_http;
use super::text::{generate_and_judge, templated};

/// Runs the generated cases of `property` in `modality`.
pub(crate) fn run(
    env: &TrialEnv<'_>,
    modality: Modality,
    scenario: &Scenario,
    property: &Property,
) -> Finding {
    let (template, applies_template) = (env.info.chat_template.as_ref(), env.info.applies_chat_template);
    if let Some(rate) = property.pass_rate {
        return run_at_rate(env, modality, scenario, property, rate);
    }
    let model = &env.spec.model;
    let strategy = generator_strategy(&property.generator);
    let config = ProptestConfig {
        cases: property.cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    };
    // The runner's stream is seeded, so a dry run draws the cases the real run will draw while
    // they pass: those are generated ahead, in one batch where the engine batches. A failing
    // case's shrinking draws others, which are generated as they come.
    let drawn: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let _ = seeded_runner(property.seed, &scenario.name, config.clone()).run(&strategy, |question| {
        drawn.lock().unwrap_or_else(|p| p.into_inner()).push(question);
        Ok(())
    });
    let drawn = drawn.into_inner().unwrap_or_else(|p| p.into_inner());
    let prepared: Vec<_> = drawn
        .iter()
        .map(|q| {
            prepare(
                model,
                modality,
                &Input::Prompt(q.clone()),
                template,
                applies_template,
                &env.info.control_tokens,
            )
        })
        .collect();
    let (answers, batch_metrics) = generate_ahead(env, modality, scenario, &prepared);
    let ahead: Mutex<HashMap<String, Result<Generation, EngineError>>> =
        Mutex::new(drawn.into_iter().zip(answers).filter_map(|(q, a)| Some((q, a?))).collect());
    let mut runner = seeded_runner(property.seed, &scenario.name, config);
    let last: Mutex<Option<Finding>> = Mutex::new(None);
    let cases = Mutex::new(0u32);
    let result = runner.run(&strategy, |question| {
        *cases.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let input = Input::Prompt(question.clone());
        let (prompt, conversation) =
            match prepare(model, modality, &input, template, applies_template, &env.info.control_tokens) {
                Ok(p) => p,
                Err(e) => {
                    let f = Finding::new(Outcome::Falsified, Decider::ChatTemplate, e.to_string());
                    let reason = f.reason.clone();
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                    return Err(TestCaseError::fail(reason));
                }
            };
        let early = ahead.lock().unwrap_or_else(|p| p.into_inner()).remove(&question);
        let f = match early {
            Some(answer) => {
                let mut f = judge_answer(env, scenario, &question, answer.map(|g| (g, None)))
                    .with_prompt(prompt.text);
                f.metrics.batch.clone_from(&batch_metrics);
                f
            }
            None => judge_case(env, modality, scenario, &question, prompt, conversation.as_deref()),
        };
        let outcome = f.outcome;
        let reason = f.reason.clone();
        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        match outcome {
            Outcome::Corroborated => Ok(()),
            // A timeout ends the property at once: shrinking would only time out again.
            Outcome::Timeout => Err(TestCaseError::reject(reason)),
            _ => Err(TestCaseError::fail(reason)),
        }
    });
    let ran = *cases.lock().unwrap_or_else(|p| p.into_inner());
    let last = last.into_inner().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(()) => {
            let mut f = last.unwrap_or_else(|| Finding::new(Outcome::Corroborated, Decider::Property, ""));
            f.outcome = Outcome::Corroborated;
            f.decider = Decider::Property;
            f.reason = format!("{} generated cases corroborated", property.cases);
            f
        }
        Err(TestError::Fail(reason, minimal)) => {
            // Shrinking ends on the minimal case, but `last` may be a later, passing attempt:
            // run the minimal case once more so the record shows its real output.
            let input = Input::Prompt(minimal.clone());
            let mut f = match prepare(
                model,
                modality,
                &input,
                template,
                applies_template,
                &env.info.control_tokens,
            ) {
                Ok((prompt, conversation)) => {
                    generate_and_judge(env, scenario, &prompt, conversation.as_deref())
                        .with_prompt(prompt.text)
                }
                Err(e) => Finding::new(Outcome::Falsified, Decider::ChatTemplate, e.to_string()),
            };
            f.outcome = Outcome::Falsified;
            f.reason = format!(
                "property falsified after {ran} case runs; minimal failing case {minimal:?}: {reason}"
            );
            f
        }
        Err(TestError::Abort(reason)) => {
            let mut f = last.unwrap_or_else(|| Finding::new(Outcome::Timeout, Decider::Timeout, ""));
            if f.outcome != Outcome::Timeout {
                f.outcome = Outcome::Falsified;
            }
            f.reason = format!("property aborted: {reason}");
            f
        }
    }
}

/// One generated case, asked in `modality` and judged by the scenario's oracles.
fn judge_case(
    env: &TrialEnv<'_>,
    modality: Modality,
    scenario: &Scenario,
    question: &str,
    prompt: Guarded,
    conversation: Option<&[MessageSpec]>,
) -> Finding {
    let generated = if modality == Modality::Serve {
        generate_over_http(env, scenario, &prompt.text).map(|(g, m)| (g, Some(m)))
    } else {
        env.generate(scenario, &prompt, conversation).map(|g| (g, None))
    };
    judge_answer(env, scenario, question, generated).with_prompt(prompt.text)
}

/// A case's answer (with the metrics it was measured by over HTTP), judged.
fn judge_answer(
    env: &TrialEnv<'_>,
    scenario: &Scenario,
    question: &str,
    generated: Result<(Generation, Option<Metrics>), EngineError>,
) -> Finding {
    match generated {
        Ok((g, http_metrics)) => {
            let mut f = judge_generation(scenario, question, &g, templated(env));
            f.metrics = http_metrics.unwrap_or_else(|| metrics_of(&g));
            f.output = Some(g.text);
            f
        }
        Err(e) => {
            Finding::from_engine_error(e, Decider::Gateway(Gate::Inference), "generation", env.timeout())
        }
    }
}

/// A case laid out for its modality: the prompt, and the conversation where the engine applies
/// the chat template itself.
type Prepared = Result<(Guarded, Option<Vec<MessageSpec>>), ChatError>;

/// In process, the `prepared` cases laid out as text (not a conversation, not over HTTP)
/// generated as one batch: each answer is the one it gets alone, at a fraction of the time. Each
/// case's answer where it was in the batch (`None` elsewhere, and for every case where the
/// engine generates one at a time), and the batch's metrics.
fn generate_ahead(
    env: &TrialEnv<'_>,
    modality: Modality,
    scenario: &Scenario,
    prepared: &[Prepared],
) -> (Vec<Option<Result<Generation, EngineError>>>, Option<BatchMetrics>) {
    let mut answers: Vec<Option<Result<Generation, EngineError>>> = prepared.iter().map(|_| None).collect();
    let texts: Vec<(usize, Guarded)> = prepared
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Ok((prompt, None)) if modality != Modality::Serve => Some((i, prompt.clone())),
            _ => None,
        })
        .collect();
    if texts.len() < 2 {
        return (answers, None);
    }
    let prompts: Vec<Guarded> = texts.iter().map(|(_, p)| p.clone()).collect();
    let Some(batch) = env.generate_batch(scenario, &prompts) else { return (answers, None) };
    for ((i, _), answer) in texts.iter().zip(batch.answers) {
        answers[*i] = Some(answer);
    }
    (answers, Some(batch.metrics))
}

/// A property with a pass rate: every distinct generated case runs once, none is shrunk, and the
/// count of passes is judged by the exact binomial test of [`RateGate`]. The finding shown is the
/// first failing case's, or the last case's when every case passed.
fn run_at_rate(
    env: &TrialEnv<'_>,
    modality: Modality,
    scenario: &Scenario,
    property: &Property,
    rate: f64,
) -> Finding {
    let (template, applies_template) = (env.info.chat_template.as_ref(), env.info.applies_chat_template);
    let cases = generated_cases(&property.generator, property.cases, property.seed, &scenario.name);
    let prepared: Vec<_> = cases
        .iter()
        .map(|case| {
            let input = Input::Prompt(case.prompt.clone());
            prepare(&env.spec.model, modality, &input, template, applies_template, &env.info.control_tokens)
        })
        .collect();
    let (batched, batch_metrics) = generate_ahead(env, modality, scenario, &prepared);
    let (mut passed, mut ran) = (0usize, 0usize);
    let mut first_failure: Option<(String, Finding)> = None;
    let mut last: Option<Finding> = None;
    for ((case, prepared), answer) in cases.iter().zip(prepared).zip(batched) {
        let mut f = match (prepared, answer) {
            (Ok((prompt, _)), Some(answer)) => {
                judge_answer(env, scenario, &case.prompt, answer.map(|g| (g, None))).with_prompt(prompt.text)
            }
            (Ok((prompt, conversation)), None) => {
                judge_case(env, modality, scenario, &case.prompt, prompt, conversation.as_deref())
            }
            (Err(e), _) => Finding::new(Outcome::Falsified, Decider::ChatTemplate, e.to_string()),
        };
        f.metrics.batch.clone_from(&batch_metrics);
        ran += 1;
        if f.outcome == Outcome::Timeout {
            f.reason =
                format!("{} after {ran} of {} generated cases ({passed} passed)", f.reason, cases.len());
            return f;
        }
        if f.outcome == Outcome::Corroborated {
            passed += 1;
            last = Some(f);
        } else if first_failure.is_none() {
            first_failure = Some((case.prompt.clone(), f));
        }
    }
    let gate = RateGate::new(ran, rate);
    let failing = gate.fails(passed);
    let (mut f, missed) = match (first_failure, last) {
        (Some((q, f)), _) => {
            let missed = format!("; first miss {q:?}: {}", f.reason);
            (f, missed)
        }
        (None, Some(f)) => (f, String::new()),
        (None, None) => (Finding::new(Outcome::Falsified, Decider::Property, ""), String::new()),
    };
    f.outcome = if ran == 0 || failing { Outcome::Falsified } else { Outcome::Corroborated };
    f.decider = Decider::Property;
    f.reason = format!(
        "{passed} of {ran} generated cases passed ({:.1}%; pass rate ≥ {:.1}%: {}){missed}",
        passed as f64 / ran.max(1) as f64 * 100.0,
        rate * 100.0,
        gate.describe()
    );
    f
}
