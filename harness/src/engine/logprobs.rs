//! Log probabilities of a generation, step by step: the token chosen and the most likely ones,
//! each named as OpenAI's `logprobs` name tokens, by the text the token adds to the output. The
//! server reports them and `diff::serve-vs-run` compares them; both get them from here, so a
//! token has one name wherever it is seen.
//!
//! Nothing here samples: the scores describe the distribution a step chose from.

use tokenizers::Tokenizer;

/// A token and its log probability at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The text the token adds after the tokens before it; a special token by its own text
    /// (`<|im_end|>`); a token that ends inside a character by its text alone, lossily.
    pub token: String,
    pub logprob: f32,
    /// Whether the token ends generation (end-of-sequence or end-of-turn). Only the engine that
    /// generated knows; tokens read back from a server's answer say `false`.
    pub ends: bool,
}

/// One step of a generation: the token chosen and the most likely tokens there, most likely
/// first.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredStep {
    pub chosen: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

/// The most alternatives a step reports (OpenAI's chat limit).
pub(crate) const MAX_TOP_LOGPROBS: usize = 20;

/// Tokens before a step that its tokens are decoded after: enough for any character split over
/// tokens (4 bytes) and for a decoder that treats the first token of a text differently.
const NAMING_WINDOW: usize = 4;

/// Scores steps of one generation with one tokenizer.
pub(crate) struct Scorer<'a> {
    pub(crate) tokenizer: &'a Tokenizer,
    /// The tokens that end generation.
    pub(crate) ends: &'a [u32],
    /// How many alternatives each step reports (at most [`MAX_TOP_LOGPROBS`]).
    pub(crate) top: usize,
}

impl Scorer<'_> {
    /// The step that chose `chosen` from `logits`, after the output tokens `before`.
    pub(crate) fn step(&self, logits: &[f32], before: &[u32], chosen: u32) -> ScoredStep {
        let lse = log_sum_exp(logits);
        let logprob = |id: u32| logits.get(id as usize).map_or(f32::NEG_INFINITY, |l| l - lse);
        let entry = |id: u32| TokenLogprob {
            token: self.name(before, id),
            logprob: logprob(id),
            ends: self.ends.contains(&id),
        };
        ScoredStep {
            chosen: entry(chosen),
            top: top_ids(logits, self.top.min(MAX_TOP_LOGPROBS)).into_iter().map(entry).collect(),
        }
    }

    /// The text `id` adds after `before`: decoding after a few tokens of context keeps a space a
    /// decoder adds or strips by position, as the output text has it.
    fn name(&self, before: &[u32], id: u32) -> String {
        let window = &before[before.len().saturating_sub(NAMING_WINDOW)..];
        let decode = |ids: &[u32]| self.tokenizer.decode(ids, false).unwrap_or_default();
        let head = decode(window);
        let mut ids = window.to_vec();
        ids.push(id);
        let whole = decode(&ids);
        match whole.strip_prefix(head.as_str()) {
            Some(added) if !head.ends_with('\u{FFFD}') && !added.ends_with('\u{FFFD}') => added.to_string(),
            _ => decode(&[id]),
        }
    }
}

/// `ln Σ exp(l)`, computed from the largest logit so no term overflows.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    max + logits.iter().filter(|l| !l.is_nan()).map(|l| (l - max).exp()).sum::<f32>().ln()
}

/// The ids of the `k` largest logits, largest first, ties to the lower id.
fn top_ids(logits: &[f32], k: usize) -> Vec<u32> {
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (id, &l) in logits.iter().enumerate() {
        let l = if l.is_nan() { f32::NEG_INFINITY } else { l };
        if top.len() == k && top.last().is_none_or(|(worst, _)| l <= *worst) {
            continue;
        }
        let at = top.partition_point(|(v, _)| *v >= l);
        top.insert(at, (l, id as u32));
        top.truncate(k);
    }
    top.into_iter().map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_ids_are_the_largest_logits_in_order_with_ties_to_the_lower_id() {
        assert_eq!(top_ids(&[0.1, 3.0, 2.0, 3.0, f32::NAN, -1.0], 3), [1, 3, 2]);
        assert_eq!(top_ids(&[1.0, 2.0], 5), [1, 0]);
        assert!(top_ids(&[1.0, 2.0], 0).is_empty());
    }

    #[test]
    fn log_probabilities_sum_to_one_and_survive_large_logits() {
        let logits = [1000.0, 1000.0, 0.0];
        let lse = log_sum_exp(&logits);
        let total: f32 = logits.iter().map(|l| (l - lse).exp()).sum();
        // f32 near 1000 resolves 6e-5.
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        assert!(((logits[0] - lse) - 0.5f32.ln()).abs() < 1e-4);
    }
}
