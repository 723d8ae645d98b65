//! Judging an answer: control tokens first where a template defines the turns, then every
//! oracle of the scenario.

use crate::engine::Generation;
use crate::oracle::Verdict;
use crate::playbook::Scenario;
use crate::vocab::{Decider, Outcome};

use super::Finding;

/// A generation judged. In `chat` and `serve` the template defines the turns, so a control token
/// inside an answer (a turn the model opened or a marker it emitted) falsifies it before any
/// oracle looks; `run` decodes past special tokens as transformers does.
pub(crate) fn judge_generation(
    scenario: &Scenario,
    question: &str,
    g: &Generation,
    templated: bool,
) -> Finding {
    if let Some(token) = g.leaked_special_tokens.first().filter(|_| templated) {
        return Finding::new(
            Outcome::Falsified,
            Decider::ControlTokens,
            format!("control token `{token}` leaked into the answer (special tokens are never output)"),
        );
    }
    judge(scenario, question, &g.text)
}

/// Every oracle judges; the first that falsifies decides.
pub(crate) fn judge(scenario: &Scenario, question: &str, output: &str) -> Finding {
    let mut passed = Vec::new();
    for oracle in &scenario.oracles {
        match oracle.judge(question, output) {
            Verdict::Corroborated(why) => passed.push(format!("{}: {why}", oracle.kind())),
            Verdict::Falsified(why) => {
                return Finding::new(Outcome::Falsified, Decider::Oracle(oracle.kind()), why);
            }
        }
    }
    Finding::new(Outcome::Corroborated, Decider::Oracles, passed.join("; "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::Finish;
    use crate::oracle::Oracle;
    use crate::playbook::Input;

    fn generation(text: &str, leaked: &[&str]) -> Generation {
        Generation {
            text: text.into(),
            tokens: vec![1, 2],
            token_count: Some(2),
            prompt_tokens: 3,
            finish: Finish::Eos,
            time_to_first_token: Duration::from_millis(1),
            duration: Duration::from_millis(2),
            first_logits_finite: Some(true),
            leaked_special_tokens: leaked.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_leaked_control_token_falsifies_before_any_oracle() {
        let scenario = Scenario {
            name: "s".into(),
            input: Input::Prompt("What is 2 + 2?".into()),
            property: None,
            oracles: vec![Oracle::Arithmetic { tolerance: None }],
            max_tokens: 8,
            sampling: crate::playbook::SamplingSpec::default(),
            edge_case: false,
            modalities: None,
            repeat: crate::playbook::Repeat::ONCE,
        };
        let leaked = generation("4", &["<|im_start|>"]);
        let f = judge_generation(&scenario, "What is 2 + 2?", &leaked, true);
        assert_eq!((f.outcome, f.decider), (Outcome::Falsified, Decider::ControlTokens));
        assert!(f.reason.contains("`<|im_start|>` leaked"), "{}", f.reason);
        let f = judge_generation(&scenario, "What is 2 + 2?", &generation("4", &[]), true);
        assert_eq!(f.outcome, Outcome::Corroborated, "{}", f.reason);
        let f = judge_generation(&scenario, "What is 2 + 2?", &leaked, false);
        assert_eq!(f.outcome, Outcome::Corroborated, "run decodes past special tokens: {}", f.reason);
    }
}
