//! `diff::tokenizer-fuzz`: thousands of generated strings — Unicode of many scripts, emoji with
//! joiners and modifiers, combining marks, whitespace runs, digit runs, code, and the model's
//! own special tokens spliced into text — must encode to the same ids and decode to the same text
//! with the tokenizer a derived format carries as with the ground truth's `tokenizer.json`.
//! Invariant I-5 checks a handful of texts; this finds the rare one a conversion broke (a lost
//! merge, a changed normaliser, a pre-tokenizer that splits contractions differently).
//!
//! File-only: no session is loaded. The strings are drawn from a fixed seed, so a failure names
//! a string that fails again on every machine.

use std::path::Path;

use crate::expand::TrialSpec;
use crate::stats::SplitMix;
use crate::trial::Finding;
use crate::vocab::{Decider, Outcome};

use super::diff::{InvariantError, same_tokens, tokenizers};

/// Strings a trial tries.
pub(crate) const CASES: usize = 10_000;

/// The fuzz trial of a derived cell.
pub(crate) fn run(spec: &TrialSpec, model_dir: &Path, artifact: &Path) -> Finding {
    let (want, got) = match tokenizers(model_dir, artifact) {
        Ok(pair) => pair,
        Err(e) => return Finding::new(Outcome::Falsified, Decider::Comp, e.to_string()),
    };
    let verdict = fuzz(&want, &got, spec.tier.seed, CASES);
    Finding::new(verdict.outcome, Decider::Comp, verdict.reason)
}

/// What the fuzz found: the outcome and, on a difference, how many strings and the first.
pub(crate) struct Fuzzed {
    pub outcome: Outcome,
    pub reason: String,
}

/// Tries `cases` strings drawn from `seed` (the ground truth's special tokens among the pieces).
pub(crate) fn fuzz(
    want: &tokenizers::Tokenizer,
    got: &tokenizers::Tokenizer,
    seed: u64,
    cases: usize,
) -> Fuzzed {
    let specials: Vec<String> = want.get_added_tokens_decoder().values().map(|t| t.content.clone()).collect();
    let mut rng = SplitMix::new(seed ^ 0x746f_6b65_6e69_7a65);
    let mut failed = 0usize;
    let mut first: Option<InvariantError> = None;
    for _ in 0..cases {
        let text = draw(&mut rng, &specials);
        if let Err(e) = same_tokens(want, got, &text) {
            failed += 1;
            first.get_or_insert(e);
        }
    }
    match first {
        None => Fuzzed {
            outcome: Outcome::Corroborated,
            reason: format!(
                "{cases} generated strings (seed {seed}; scripts, emoji, whitespace and digit runs, code, \
                 {} special tokens) encode to the same ids and decode to the same text; a tokenizer is exact, so \
                 one difference fails",
                specials.len()
            ),
        },
        Some(e) => Fuzzed {
            outcome: Outcome::Falsified,
            reason: format!("{failed} of {cases} generated strings (seed {seed}) differ; the first: {e}"),
        },
    }
}

/// Pieces strings are made of, by kind.
const SCRIPTS: &[&str] = &[
    "hello",
    "World",
    "the",
    " quick",
    "naïve",
    "café",
    "Straße",
    "ÆØÅ",
    "İstanbul",
    "ﬁ",
    "你好",
    "世界",
    "こんにちは",
    "カタカナ",
    "한국어",
    "مرحبا",
    "שלום",
    "Привет",
    "ελληνικά",
    "हिन्दी",
    "ไทย",
    "ᚠᚢᚦ",
    "e\u{301}",
    "a\u{308}\u{304}",
    "\u{200b}",
    "\u{feff}",
    "\u{00a0}",
];
const EMOJI: &[&str] =
    &["😀", "👍🏽", "👨\u{200d}👩\u{200d}👧", "🏳\u{fe0f}\u{200d}🌈", "🇫🇷", "❤\u{fe0f}", "🤖"];
const WHITESPACE: &[&str] = &[" ", "  ", "    ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t ", "        "];
const CODE: &[&str] = &[
    "def ", "fn ", "(a, b)", "{", "}", "->", "::", "=>", "==", "!=", "+=", "//", "/*", "*/", "#", "'s",
    "n't", "'re", "'ll", "\"", "\\", "`", "<", ">", "&&", "||", "[]", "0x", "1e-9",
];

fn draw(rng: &mut SplitMix, specials: &[String]) -> String {
    let pieces = rng.below(12);
    let mut s = String::new();
    for _ in 0..pieces {
        match rng.below(10) {
            0..=2 => s.push_str(SCRIPTS[rng.below(SCRIPTS.len())]),
            3 => s.push_str(EMOJI[rng.below(EMOJI.len())]),
            4 | 5 => s.push_str(WHITESPACE[rng.below(WHITESPACE.len())]),
            6 => s.push_str(CODE[rng.below(CODE.len())]),
            7 => {
                // A run of digits, as long numbers split by digit-grouping rules.
                for _ in 0..1 + rng.below(12) {
                    s.push(char::from(b'0' + rng.below(10) as u8));
                }
            }
            8 if !specials.is_empty() => s.push_str(&specials[rng.below(specials.len())]),
            _ => {
                // Any printable character of the Basic Multilingual Plane or an astral one.
                let c = if rng.below(4) == 0 {
                    0x1_0000 + rng.below(0x1_0000)
                } else {
                    0x20 + rng.below(0xd7ff - 0x20)
                };
                s.push(char::from_u32(c as u32).unwrap_or('?'));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qa_tiny_tokenizer() -> tokenizers::Tokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qa-tiny/qa-tiny-llama/tokenizer.json");
        tokenizers::Tokenizer::from_file(path).expect("the fixture's tokenizer")
    }

    #[test]
    fn the_same_tokenizer_passes_and_a_broken_one_is_named() {
        let want = qa_tiny_tokenizer();
        let same = fuzz(&want, &qa_tiny_tokenizer(), 42, 2_000);
        assert_eq!(same.outcome, Outcome::Corroborated, "{}", same.reason);

        // Planted: the converted tokenizer lost its special tokens (a conversion that dropped
        // `added_tokens`), so a special token inside text splits into pieces.
        let mut json: serde_json::Value =
            serde_json::from_str(&want.to_string(false).expect("serialises")).expect("json");
        json["added_tokens"] = serde_json::json!([]);
        let broken = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).expect("loads");
        let found = fuzz(&want, &broken, 42, 2_000);
        assert_eq!(found.outcome, Outcome::Falsified, "{}", found.reason);
        assert!(found.reason.contains("of 2000 generated strings (seed 42) differ"), "{}", found.reason);
    }

    #[test]
    fn the_strings_are_the_same_on_every_run_and_varied() {
        let specials = vec!["<|im_end|>".to_string()];
        let draw_all = |seed| {
            let mut rng = SplitMix::new(seed);
            (0..500).map(|_| draw(&mut rng, &specials)).collect::<Vec<_>>()
        };
        assert_eq!(draw_all(7), draw_all(7));
        let strings = draw_all(7);
        assert!(strings.iter().any(|s| s.contains("<|im_end|>")));
        assert!(strings.iter().any(|s| s.contains('\n')));
        assert!(strings.iter().any(|s| s.chars().any(|c| c as u32 >= 0x1_0000)));
        assert!(strings.iter().any(String::is_empty));
    }
}
