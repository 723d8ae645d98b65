//! A whole answer's log probabilities in OpenAI's two shapes: chat's `logprobs.content` (each
//! token with its bytes and `top_logprobs`) and the completions' parallel lists (`tokens`,
//! `token_logprobs`, `top_logprobs` as objects, `text_offset`). What the engine scored is
//! reported as it was: the step that chose end-of-sequence adds no text and is not reported,
//! and an answer cut at a stop sequence reports the tokens whose text begins before the cut.

use serde_json::{Map, Value, json};

use super::request::Shape;
use crate::engine::{ScoredStep, TokenLogprob};

/// The steps an answer of `text` reports: those that added to it.
pub(super) fn reported<'a>(steps: &'a [ScoredStep], text: &str, stopped: bool) -> &'a [ScoredStep] {
    let generated = steps.iter().take_while(|s| !s.chosen.ends).count();
    if !stopped {
        return &steps[..generated];
    }
    let mut offset = 0;
    let kept = steps[..generated]
        .iter()
        .take_while(|s| {
            let begins = offset;
            offset += s.chosen.token.len();
            begins < text.len()
        })
        .count();
    &steps[..kept]
}

/// The `logprobs` of a choice, with `top` alternatives per token.
pub(super) fn choice_logprobs(shape: Shape, steps: &[ScoredStep], top: usize) -> Value {
    let alternatives = |s: &ScoredStep| s.top.iter().take(top).cloned().collect::<Vec<TokenLogprob>>();
    match shape {
        Shape::Chat => {
            let entry = |t: &TokenLogprob| json!({"token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes()});
            let content: Vec<Value> = steps
                .iter()
                .map(|s| {
                    let mut e = entry(&s.chosen);
                    e["top_logprobs"] = alternatives(s).iter().map(entry).collect();
                    e
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Shape::Completion => {
            let mut offset = 0;
            let text_offset: Vec<usize> = steps
                .iter()
                .map(|s| {
                    let at = offset;
                    offset += s.chosen.token.chars().count();
                    at
                })
                .collect();
            let tops: Vec<Value> = steps
                .iter()
                .map(|s| {
                    // An object keeps one entry per text; the likelier one stands.
                    let mut m = Map::new();
                    for t in alternatives(s) {
                        m.entry(t.token).or_insert(json!(t.logprob));
                    }
                    Value::Object(m)
                })
                .collect();
            json!({
                "tokens": steps.iter().map(|s| s.chosen.token.as_str()).collect::<Vec<_>>(),
                "token_logprobs": steps.iter().map(|s| s.chosen.logprob).collect::<Vec<_>>(),
                "top_logprobs": tops,
                "text_offset": text_offset,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str, logprob: f32) -> TokenLogprob {
        TokenLogprob { token: text.into(), logprob, ends: false }
    }

    fn step(chosen: &str, others: &[&str]) -> ScoredStep {
        let mut top = vec![token(chosen, -0.1)];
        top.extend(others.iter().map(|o| token(o, -3.0)));
        ScoredStep { chosen: token(chosen, -0.1), top }
    }

    fn answer() -> Vec<ScoredStep> {
        let end = ScoredStep {
            chosen: TokenLogprob { token: "<|im_end|>".into(), logprob: -0.2, ends: true },
            top: vec![],
        };
        vec![step("Par", &["Lon"]), step("is", &["don"]), step(".", &["!"]), end]
    }

    #[test]
    fn the_end_step_is_not_reported_and_a_stop_keeps_the_tokens_before_the_cut() {
        let steps = answer();
        assert_eq!(reported(&steps, "Paris.", false).len(), 3);
        // Cut at "is": "Par" is kept, "is" begins at the cut.
        assert_eq!(reported(&steps, "Par", true).len(), 1);
        // Cut inside "is": it began before the cut.
        assert_eq!(reported(&steps, "Pari", true).len(), 2);
    }

    #[test]
    fn chat_and_completions_shapes_carry_the_same_tokens() {
        let steps = answer();
        let steps = reported(&steps, "Paris.", false);
        let chat = choice_logprobs(Shape::Chat, steps, 1);
        assert_eq!(chat["content"][1]["token"], "is");
        assert_eq!(chat["content"][1]["bytes"], json!([105, 115]));
        assert_eq!(chat["content"][0]["top_logprobs"].as_array().map(Vec::len), Some(1));
        assert_eq!(chat["content"][0]["top_logprobs"][0]["token"], "Par");
        let completion = choice_logprobs(Shape::Completion, steps, 2);
        assert_eq!(completion["tokens"], json!(["Par", "is", "."]));
        assert_eq!(completion["text_offset"], json!([0, 3, 5]));
        assert_eq!(completion["top_logprobs"][2].as_object().map(Map::len), Some(2));
        assert!(completion["top_logprobs"][2]["!"].is_number());
    }
}
