//! The qa-tiny curriculum: the synthetic tasks the bundled model family is trained on, the
//! operand pairs held out of training, and the family's tokenizer.
//!
//! Training (`cargo xtask fixtures train`) and the quality tests share this module, so the
//! held-out set the tests measure is exactly the one training never saw.

use std::path::Path;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior, TokenizerBuilder};

use crate::playbook::spec::ArithOp;

/// Special tokens, ids 0, 1, 2. `<|endoftext|>` ends a completion, `<|im_end|>` a chat turn.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const EOS: &str = "<|endoftext|>";
pub const END_OF_TURN: &str = "<|im_end|>";
pub const VOCAB_SIZE: usize = 512;
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// The chat template the family carries in tokenizer_config.json (ChatML, as Qwen models do).
pub const CHAT_TEMPLATE: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Qwen2's pre-tokenizer split: every digit is its own piece, so arithmetic is learnt digit by
/// digit rather than as a lookup table of whole numbers.
const SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a question is asked, for each operator.
pub const PHRASINGS: [&str; 5] = [
    "What is {a} {op} {b}?",
    "Calculate {a}{op}{b}",
    "Calculate {a} {op} {b}",
    "{a} {op} {b} =",
    "{a}{op}{b}=",
];

pub fn phrase(template: &str, a: i64, op: ArithOp, b: i64) -> String {
    template
        .replace("{a}", &a.to_string())
        .replace("{op}", &op.symbol().to_string())
        .replace("{b}", &b.to_string())
}

/// The operand range of an operator in the curriculum.
pub fn operand_range(op: ArithOp) -> (i64, i64) {
    match op {
        ArithOp::Mul => (0, 9),
        _ => (0, 99),
    }
}

fn mix(a: i64, b: i64, salt: u64) -> u64 {
    let mut z = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (b as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ salt;
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 29)
}

/// Whether training never sees this question. Addition and subtraction hold out a tenth of the
/// operand pairs in every phrasing; multiplication, a table of only 100 facts, holds out one
/// phrasing in seven of each pair, so what is measured is generalisation across phrasings.
pub fn held_out(op: ArithOp, a: i64, b: i64, phrasing: usize) -> bool {
    match op {
        ArithOp::Add => mix(a, b, 1).is_multiple_of(10),
        ArithOp::Sub => mix(a, b, 2).is_multiple_of(10),
        ArithOp::Mul => mix(a, b, 3 + phrasing as u64).is_multiple_of(7),
        ArithOp::Div => true,
    }
}

/// Every held-out arithmetic question with its answer, in a fixed order.
pub fn held_out_questions() -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for op in [ArithOp::Add, ArithOp::Sub, ArithOp::Mul] {
        let (lo, hi) = operand_range(op);
        for a in lo..=hi {
            for b in lo..=hi {
                if op == ArithOp::Sub && a < b {
                    continue;
                }
                for (p, template) in PHRASINGS.iter().enumerate() {
                    if held_out(op, a, b, p) {
                        out.push((phrase(template, a, op, b), apply(op, a, b)));
                    }
                }
            }
        }
    }
    out
}

/// 300 held-out questions with their answers, in a seeded shuffle of every operation and
/// phrasing, each as training lays a completion out (`question\nanswer<|endoftext|>`) and each a
/// document of its own (a blank line between): the text qa-tiny's `diff::perplexity` scores,
/// which no weight was trained on (`fixtures/qa-tiny/held-out.txt` holds it).
pub fn held_out_text() -> String {
    let mut questions = held_out_questions();
    let mut rng = Rng::new(0x4e1d);
    for i in (1..questions.len()).rev() {
        questions.swap(i, rng.below(i + 1));
    }
    questions.iter().take(300).map(|(q, a)| format!("{q}\n{a}{EOS}\n\n")).collect()
}

pub fn apply(op: ArithOp, a: i64, b: i64) -> i64 {
    match op {
        ArithOp::Add => a + b,
        ArithOp::Sub => a - b,
        ArithOp::Mul => a * b,
        ArithOp::Div => a / b.max(1),
    }
}

/// Short fixed questions and their answers.
pub const FIXED: &[(&str, &str)] = &[
    ("What is the capital of France?", "Paris."),
    ("What color is the sky?", "Blue."),
    ("Name a fruit.", "Apple."),
    ("What is Rust?", "A programming language."),
    ("List three colors.", "Red, green and blue."),
    ("Say hello.", "Hello!"),
    ("Hello!", "Hello! How can I help?"),
    ("What is Python?", "A programming language."),
];

/// The start of a function, and a body that completes it into code a parser accepts.
pub const CODE: &[(&str, &str)] = &[
    ("def add(a, b):", "    return a + b"),
    ("def fibonacci(n):", "    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)"),
    ("def factorial(n):", "    if n == 0:\n        return 1\n    return n * factorial(n - 1)"),
    (
        "def is_prime(n):",
        "    if n < 2:\n        return False\n    for i in range(2, n):\n        if n % i == 0:\n            return False\n    return True",
    ),
    ("def reverse_string(s):", "    return s[::-1]"),
    ("def maximum(values):", "    return max(values)"),
    ("fn main() {", "    println!(\"Hello, world!\");\n}"),
    ("fn add(a: i32, b: i32) -> i32 {", "    a + b\n}"),
    ("fn factorial(n: u64) -> u64 {", "    if n == 0 { 1 } else { n * factorial(n - 1) }\n}"),
    ("fn is_even(n: u32) -> bool {", "    n % 2 == 0\n}"),
    ("fn max(a: i64, b: i64) -> i64 {", "    if a > b { a } else { b }\n}"),
];

/// Words "Repeat:" draws from.
pub const WORDS: &[&str] = &[
    "red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "river", "stone", "apple", "bread", "cloud",
    "fire", "water", "light", "house", "bird", "fish", "book", "road", "star", "wind", "snow", "rain",
    "gold", "iron", "salt", "milk", "ship", "door", "lamp", "hill", "leaf", "rock", "sand", "wave", "bell",
    "coin", "ring",
];

/// One training example: a prompt and the answer the model must learn (loss falls on the answer
/// and the end token only).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Text before the answer, special tokens included for chat.
    pub prompt: String,
    pub answer: String,
    /// `<|endoftext|>` for completions, `<|im_end|>` for chat turns.
    pub end: &'static str,
}

/// The curriculum's seeded source: the project's one SplitMix64, so the curriculum depends on no
/// RNG crate's version.
pub use crate::stats::SplitMix as Rng;

/// A training arithmetic question (never a held-out one) and its answer.
fn arithmetic(rng: &mut Rng) -> (String, String) {
    loop {
        let op = match rng.below(100) {
            0..=41 => ArithOp::Add,
            42..=79 => ArithOp::Sub,
            _ => ArithOp::Mul,
        };
        let (lo, hi) = operand_range(op);
        let (mut a, mut b) = (rng.range(lo, hi), rng.range(lo, hi));
        if op == ArithOp::Sub && a < b {
            std::mem::swap(&mut a, &mut b);
        }
        let p = rng.below(PHRASINGS.len());
        if !held_out(op, a, b, p) {
            return (phrase(PHRASINGS[p], a, op, b), apply(op, a, b).to_string());
        }
    }
}

fn repeat(rng: &mut Rng) -> (String, String) {
    let n = 1 + rng.below(3);
    let words: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len())]).collect();
    (format!("Repeat: {}", words.join(" ")), words.join(" "))
}

/// `<|im_start|>role\ncontent<|im_end|>\n`, as the chat template renders one message.
pub fn chat_turn(role: &str, content: &str) -> String {
    format!("<|im_start|>{role}\n{content}<|im_end|>\n")
}

/// A question for a single-turn chat: arithmetic, a fixed question or a repetition.
fn chat_question(rng: &mut Rng) -> (String, String) {
    match rng.below(10) {
        0..=5 => arithmetic(rng),
        6..=7 => {
            let (q, a) = FIXED[rng.below(FIXED.len())];
            (q.into(), a.into())
        }
        _ => repeat(rng),
    }
}

/// Draws one example of the curriculum.
pub fn sample(rng: &mut Rng) -> Example {
    let completion =
        |(prompt, answer): (String, String)| Example { prompt: format!("{prompt}\n"), answer, end: EOS };
    // Arithmetic is what takes learning; the rest is a few dozen answers to remember. Chat turns
    // and code are also the long sequences, so their share sets most of a step's cost.
    match rng.below(100) {
        0..=71 => completion(arithmetic(rng)),
        72..=77 => completion(repeat(rng)),
        78..=81 => {
            let (q, a) = FIXED[rng.below(FIXED.len())];
            completion((q.into(), a.into()))
        }
        82..=85 => {
            let (q, a) = CODE[rng.below(CODE.len())];
            completion((q.into(), a.into()))
        }
        86..=95 => {
            let (q, a) = chat_question(rng);
            let system = if rng.below(3) == 0 { chat_turn("system", SYSTEM_PROMPT) } else { String::new() };
            Example {
                prompt: format!("{system}{}<|im_start|>assistant\n", chat_turn("user", &q)),
                answer: a,
                end: END_OF_TURN,
            }
        }
        _ => {
            // Two turns: the answer depends on the first one.
            let word = WORDS[rng.below(WORDS.len())];
            let prompt = format!(
                "{}{}{}<|im_start|>assistant\n",
                chat_turn("user", &format!("Remember the word {word}.")),
                chat_turn("assistant", "OK."),
                chat_turn("user", "What word did I ask you to remember?")
            );
            Example { prompt, answer: format!("{word}."), end: END_OF_TURN }
        }
    }
}

/// A corpus for training the tokenizer: many examples, as text.
fn tokenizer_corpus() -> Vec<String> {
    let mut rng = Rng::new(7);
    let mut lines: Vec<String> = (0..20_000)
        .map(|_| {
            let e = sample(&mut rng);
            format!("{}{}", e.prompt, e.answer)
        })
        .collect();
    lines.extend(CODE.iter().map(|(q, a)| format!("{q}\n{a}")));
    lines
}

/// Trains the family's byte-level BPE and writes `tokenizer.json` into `dir`.
pub fn write_tokenizer(dir: &Path) -> anyhow::Result<()> {
    let special: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(VOCAB_SIZE)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(special)
        .build();
    let split =
        Split::new(SplitPattern::Regex(SPLIT_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| anyhow::anyhow!("failed to build the split pre-tokenizer: {e}"))?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::default().add_prefix_space(false).use_regex(false)),
    ]);
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
    .with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::default().trim_offsets(false))))
    .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
    .build()
    .map_err(|e| anyhow::anyhow!("failed to build the tokenizer: {e}"))?;
    tokenizer
        .train(&mut trainer, tokenizer_corpus().iter())
        .map_err(|e| anyhow::anyhow!("failed to train the tokenizer: {e}"))?;
    tokenizer
        .save(dir.join("tokenizer.json"), true)
        .map_err(|e| anyhow::anyhow!("failed to save the tokenizer: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_questions_never_appear_in_training() {
        let held: std::collections::HashSet<String> =
            held_out_questions().into_iter().map(|(q, _)| q).collect();
        assert!(held.len() > 500, "{}", held.len());
        let mut rng = Rng::new(1);
        for _ in 0..50_000 {
            let e = sample(&mut rng);
            let q = e.prompt.trim_end_matches('\n');
            assert!(!held.contains(q), "{q} is held out");
        }
    }

    #[test]
    fn every_operator_and_kind_is_sampled() {
        let mut rng = Rng::new(2);
        let examples: Vec<Example> = (0..5000).map(|_| sample(&mut rng)).collect();
        for needle in [" + ", "-", "*", "Repeat:", "def ", "fn ", "<|im_start|>system", "Remember the word"] {
            assert!(examples.iter().any(|e| e.prompt.contains(needle)), "{needle}");
        }
    }
}
