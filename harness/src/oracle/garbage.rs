//! The garbage detector behind the `garbage` oracle and gateway G4: empty or degenerate output,
//! replacement and control characters, leaked special tokens, byte-level BPE artefacts and raw
//! token ids. Ordinary text, code and numbers never trip it.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

use super::OracleError;
use super::spec::GarbageSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct GarbageConfig {
    /// Largest share of repeated word 3-grams in an output of 12 words or more.
    pub max_repetition_ratio: f64,
    /// Fewest distinct characters an output of four times that length may have.
    pub min_unique_chars: usize,
}

impl Default for GarbageConfig {
    fn default() -> Self {
        Self { max_repetition_ratio: 0.5, min_unique_chars: 4 }
    }
}

impl GarbageConfig {
    pub fn from_spec(spec: &GarbageSpec) -> Result<Self, OracleError> {
        let d = Self::default();
        let ratio = spec.max_repetition_ratio.unwrap_or(d.max_repetition_ratio);
        if !(0.0..=1.0).contains(&ratio) {
            return Err(OracleError::RepetitionRatio(ratio));
        }
        Ok(Self {
            max_repetition_ratio: ratio,
            min_unique_chars: spec.min_unique_chars.unwrap_or(d.min_unique_chars),
        })
    }
}

static SPECIAL_TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"<\|[A-Za-z0-9_]+\|>|</?s>|<unk>|<pad>|<mask>|\[(?:PAD|UNK|CLS|SEP|MASK)\]|<0x[0-9A-Fa-f]{2}>",
    )
    .expect("a valid pattern")
});
static BPE_ARTEFACT: LazyLock<Regex> =
    // Byte-level BPE writes a space as Ġ and a newline as Ċ; glued between ASCII words they are
    // undecoded tokens, while a Maltese word may start with either letter.
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9.,;:!?][ĠĊ][A-Za-z0-9]|[ĠĊ]{2}").expect("a valid pattern"));
static ID_LIST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[\[\(]?\s*\d+(?:\s*[,\s]\s*\d+){3,}\s*[\]\)]?$").expect("a valid pattern")
});

/// Why `output` is garbage, or `None` when it is not.
pub(crate) fn garbage_reason(output: &str, cfg: &GarbageConfig) -> Option<String> {
    let text = output.trim();
    if text.is_empty() {
        return Some("the output is empty".into());
    }
    if text.contains('\u{FFFD}') {
        return Some("it contains the replacement character U+FFFD (broken UTF-8 decoding)".into());
    }
    if let Some(c) = text.chars().find(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')) {
        return Some(format!("it contains the control character U+{:04X}", c as u32));
    }
    if let Some(m) = SPECIAL_TOKEN.find(text) {
        return Some(format!("it contains the special token `{}`", m.as_str()));
    }
    if let Some(m) = BPE_ARTEFACT.find(text) {
        return Some(format!(
            "it contains the byte-level BPE artefact `{}` (tokens were not decoded)",
            m.as_str()
        ));
    }
    if ID_LIST.is_match(text) {
        let numbers: Vec<u64> =
            text.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
        let repeated = numbers.windows(3).any(|w| w[0] == w[1] && w[1] == w[2]);
        if numbers.iter().any(|n| *n >= 1000) || repeated {
            return Some("it is a list of raw token ids".into());
        }
    }
    if let Some(why) = repetition(text, cfg) {
        return Some(why);
    }
    let len = text.chars().count();
    let distinct = text.chars().collect::<HashSet<_>>().len();
    if len >= 4 * cfg.min_unique_chars && distinct < cfg.min_unique_chars {
        return Some(format!("{len} characters use only {distinct} distinct ones"));
    }
    None
}

fn repetition(text: &str, cfg: &GarbageConfig) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() >= 12 {
        let grams: Vec<_> = words.windows(3).collect();
        let unique = grams.iter().collect::<HashSet<_>>().len();
        let ratio = 1.0 - unique as f64 / grams.len() as f64;
        if ratio > cfg.max_repetition_ratio {
            return Some(format!(
                "degenerate repetition: {:.0}% of its word 3-grams repeat (limit {:.0}%)",
                ratio * 100.0,
                cfg.max_repetition_ratio * 100.0
            ));
        }
    }
    if words.len() >= 5 && words.windows(5).any(|w| w.iter().all(|x| *x == w[0])) {
        return Some(format!(
            "degenerate repetition: `{}` five times in a row",
            words.iter().find(|_| true)?
        ));
    }
    // A short unit repeated over most of the text: "abababab…", "!!!!!!!!…", "4444…".
    let chars: Vec<char> = text.chars().collect();
    let threshold = 24.max(chars.len() * 3 / 5);
    for period in 1..=16.min(chars.len() / 3) {
        let mut run = 0;
        for i in period..chars.len() {
            if chars[i] == chars[i - period] {
                run += 1;
                if run + period >= threshold {
                    let unit: String = chars[i + 1 - period..=i].iter().collect();
                    return Some(format!(
                        "degenerate repetition: {unit:?} repeated over {} characters",
                        run + period
                    ));
                }
            } else {
                run = 0;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn garbage(text: &str, expected: &str) {
        let why =
            garbage_reason(text, &GarbageConfig::default()).unwrap_or_else(|| panic!("{text:?} passed"));
        assert!(why.contains(expected), "{text:?}: `{why}` lacks `{expected}`");
    }

    #[track_caller]
    fn clean(text: &str) {
        assert_eq!(garbage_reason(text, &GarbageConfig::default()), None, "{text:?}");
    }

    #[test]
    fn normal_text_code_and_numbers_are_clean() {
        clean("inference");
        clean("Inference on CPU is slower than inference on GPU; info: NaN handling is fine.");
        clean("4");
        clean("-7");
        clean("The answer is 56.");
        clean("1, 2, 3, 4, 5");
        clean(
            "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
        );
        clean("fn main() {\n    println!(\"hello\");\n}");
        clean("你好！我是一个助手。");
        clean("Ġrammatika tal-Malti");
        clean("Red, green and blue are three colors. Yellow is another one, and so is purple.");
    }

    #[test]
    fn garbage_is_caught_and_named() {
        garbage("", "empty");
        garbage("   ", "empty");
        garbage("abc\u{FFFD}def", "U+FFFD");
        garbage("abc\u{0007}", "U+0007");
        garbage("The answer<|im_end|>", "special token `<|im_end|>`");
        garbage("Hello</s>", "`</s>`");
        garbage("ĠtheĠcatĠsat", "BPE artefact");
        garbage("helloĊĊworld", "BPE artefact");
        garbage("151935, 151935, 151935, 151935", "raw token ids");
        garbage("49,49,49,49,49", "raw token ids");
        garbage("the the the the the the", "five times in a row");
        garbage("I am. I am. I am. I am. I am. I am. I am. I am. I am. I am.", "repetition");
        garbage("abababababababababababababababab", "repeated over");
        garbage("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "repeated over");
        garbage(&"x y z ".repeat(10), "3-grams");
    }

    #[test]
    fn unique_chars_apply_only_to_long_output() {
        let cfg = GarbageConfig { max_repetition_ratio: 1.0, min_unique_chars: 10 };
        assert_eq!(garbage_reason("4", &cfg), None);
        assert!(garbage_reason("ab ba ab ba ba ab ab ab ba ba ab ba ab ab ba ab ba", &cfg).is_some());
    }
}
