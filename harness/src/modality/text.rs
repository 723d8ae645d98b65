//! A scenario in `run` or `chat`: lay the input out, generate in process, judge the answer.

use crate::chat::Guarded;
use crate::matrix::Modality;
use crate::playbook::{MessageSpec, Scenario};
use std::time::Duration;

use crate::trial::{Batched, Finding, TrialEnv, judge_generation, metrics_of, prepare};
use crate::vocab::{Decider, Gate, Outcome};

/// One scenario in `modality`.
pub(crate) fn run(env: &TrialEnv<'_>, modality: Modality, scenario: &Scenario) -> Finding {
    let template = env.info.chat_template.as_ref();
    let (model, control) = (&env.spec.model, &env.info.control_tokens);
    match prepare(model, modality, &scenario.input, template, env.info.applies_chat_template, control) {
        Ok((prompt, conversation)) => {
            generate_and_judge(env, scenario, &prompt, conversation.as_deref()).with_prompt(prompt.text)
        }
        Err(e) => Finding::new(Outcome::Falsified, Decider::ChatTemplate, e.to_string()),
    }
}

/// Generates the answer to `prompt` (or `conversation`) and judges it.
pub(crate) fn generate_and_judge(
    env: &TrialEnv<'_>,
    scenario: &Scenario,
    prompt: &Guarded,
    conversation: Option<&[MessageSpec]>,
) -> Finding {
    // Generated in the cell's batch, or alone.
    let batched = match conversation {
        None => env.ctx.cells.answer(env, prompt),
        Some(_) => Batched::Alone { later: Duration::ZERO },
    };
    let (answer, batch) = match batched {
        Batched::Answer(generation, batch) => (Ok(generation), Some(batch)),
        Batched::Alone { later } => {
            let env = TrialEnv { deadline: env.deadline + later, ..*env };
            (env.generate(scenario, prompt, conversation), None)
        }
    };
    match answer {
        Ok(generation) => {
            let mut finding =
                judge_generation(scenario, scenario.input.question(), &generation, templated(env));
            finding.metrics = metrics_of(&generation);
            finding.metrics.batch = batch;
            finding.output = Some(generation.text);
            finding
        }
        Err(e) => {
            Finding::from_engine_error(e, Decider::Gateway(Gate::Inference), "generation", env.timeout())
        }
    }
}

/// Whether a trial's prompt comes from the chat template.
pub(crate) fn templated(env: &TrialEnv<'_>) -> bool {
    matches!(env.spec.modality(), Some(Modality::Chat | Modality::Serve))
}
