//! The arithmetic oracle: finds the expression in the question ("What is 2 + 2?", "Calculate 7*8",
//! "15-7=", "What is -3 * 12?"), computes it, and checks the number the answer commits to ([`committed_number`]).

use std::sync::LazyLock;

use regex::Regex;

use super::Verdict;

/// An arithmetic expression found in a question, and its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expression {
    /// The expression as written, trimmed.
    pub source: String,
    pub value: f64,
}

static CANDIDATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9\s.+\-*/()×÷]+").expect("a valid pattern"));
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"-?\d+(?:,\d{3})*(?:\.\d+)?").expect("a valid pattern"));

impl Expression {
    /// The first run of the text that is a whole arithmetic expression with at least one
    /// binary operator, evaluated with the usual precedence.
    pub(crate) fn find(text: &str) -> Option<Expression> {
        CANDIDATE.find_iter(text).find_map(|m| {
            let raw = m.as_str().trim();
            // A sentence's full stop or a dangling sign is not part of the expression.
            let raw = raw.trim_end_matches(|c: char| !(c.is_ascii_digit() || c == ')'));
            let raw = raw.trim_start_matches(|c: char| !(c.is_ascii_digit() || c == '(' || c == '-'));
            let mut parser =
                Parser { chars: raw.chars().filter(|c| !c.is_whitespace()).collect(), pos: 0, binary_ops: 0 };
            let value = parser.expr()?;
            (parser.pos == parser.chars.len() && parser.binary_ops > 0 && value.is_finite())
                .then(|| Expression { source: raw.to_string(), value })
        })
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    binary_ops: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn expr(&mut self) -> Option<f64> {
        let mut v = self.term()?;
        while let Some(c @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            self.binary_ops += 1;
            let r = self.term()?;
            v = if c == '+' { v + r } else { v - r };
        }
        Some(v)
    }

    fn term(&mut self) -> Option<f64> {
        let mut v = self.factor()?;
        while let Some(c @ ('*' | '/' | '×' | '÷')) = self.peek() {
            self.pos += 1;
            self.binary_ops += 1;
            let r = self.factor()?;
            v = if matches!(c, '*' | '×') {
                v * r
            } else if r == 0.0 {
                return None;
            } else {
                v / r
            };
        }
        Some(v)
    }

    fn factor(&mut self) -> Option<f64> {
        match self.peek()? {
            '-' => {
                self.pos += 1;
                Some(-self.factor()?)
            }
            '(' => {
                self.pos += 1;
                let v = self.expr()?;
                (self.peek()? == ')').then(|| self.pos += 1)?;
                Some(v)
            }
            _ => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_digit() || c == '.') {
                    self.pos += 1;
                }
                let s: String = self.chars[start..self.pos].iter().collect();
                s.parse().ok()
            }
        }
    }
}

const NUMBER_WORDS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

/// Words that take an answer back: a model that corrects itself has given two answers.
static CORRECTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:wait|actually|correction|i\s+mean|sorry|oops|scratch\s+that|let\s+me\s+re\w*|is\s+(?:wrong|incorrect)|not\s+(?:right|correct)|mistake|instead)\b|\bno\s*[,.!;:]",
    )
    .expect("a valid pattern")
});
/// Words and signs that hedge an answer instead of giving it.
static HEDGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:maybe|perhaps|probably|possibly|likely|approx(?:imately)?|roughly|about|around|nearly|almost|close\s+to|or\s+so|i\s+think|i\s+believe|i\s+guess|not\s+sure|could\s+be|might\s+be|between|either|estimated?|somewhere)\b|[~≈±]|\d\W{0,3}\bor\b|\bor\W{0,3}[-+]?\d",
    )
    .expect("a valid pattern")
});
/// A final answer marked as one, ending the output: `= 85`, `is 85.`, `Answer: 85`, `\boxed{85}`.
static FINAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:=|:|\bis|\bequals|\bgives|\bget|\bmakes|\\boxed\{)\s*(-?\d+(?:,\d{3})*(?:\.\d+)?)\s*\}?\s*[.!]?\s*$",
    )
    .expect("a valid pattern")
});
static OPERAND: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+(?:\.\d+)?").expect("a valid pattern"));

/// The number `output` commits to as its answer to `expr`, or why it commits to none.
///
/// Markup (`**`, `__`, backquotes, `$`) is dropped first. An answer that corrects itself or
/// hedges commits to nothing. Restatements of the expression ("47 + 38 = 85") are not answers.
/// Of the numbers left: one value (however often written) is the answer; among several, a final
/// answer marked as one at the very end (`= 85`, `is 85`, `Answer: 85`) is, else the one that is
/// not an operand of the question, if only one is not; otherwise the output gave several answers.
/// Without a digit, one number word ("four") is the answer.
pub(super) fn committed_number(output: &str, expr: &Expression) -> Result<f64, NoAnswer> {
    let text: String = output.replace("**", "").replace("__", "").replace(['`', '$'], "");
    if let Some(m) = CORRECTION.find(&text) {
        return Err(NoAnswer::CorrectsItself(m.as_str().trim().to_string()));
    }
    if let Some(m) = HEDGE.find(&text) {
        // "85 or 86" matches with its digits; the word is what hedges.
        let word = m.as_str().trim_matches(|c: char| !(c.is_alphabetic() || "~≈±".contains(c)));
        return Err(NoAnswer::Hedges(word.to_string()));
    }
    let restated = restatements(&text, &expr.source);
    let mut values: Vec<f64> = Vec::new();
    for m in NUMBER.find_iter(&text) {
        if restated.iter().any(|r| m.start() < r.end && r.start < m.end()) {
            continue;
        }
        if let Ok(v) = m.as_str().replace(',', "").parse::<f64>()
            && !values.contains(&v)
        {
            values.push(v);
        }
    }
    match values.as_slice() {
        [one] => return Ok(*one),
        [] => return number_word(&text),
        _ => {}
    }
    if let Some(c) = FINAL.captures(text.trim_end())
        && let Some(m) = c.get(1)
        && !restated.iter().any(|r| m.start() < r.end && r.start < m.end())
        && let Ok(v) = m.as_str().replace(',', "").parse::<f64>()
    {
        return Ok(v);
    }
    let operands: Vec<f64> =
        OPERAND.find_iter(&expr.source).filter_map(|m| m.as_str().parse().ok()).collect();
    let fresh: Vec<f64> = values.iter().copied().filter(|v| !operands.contains(v)).collect();
    if let [one] = fresh.as_slice() {
        return Ok(*one);
    }
    Err(NoAnswer::Several(values.iter().map(|v| fmt(*v)).collect()))
}

/// Why an output commits to no number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum NoAnswer {
    #[error("the output corrects itself ({0:?}), so it commits to no answer")]
    CorrectsItself(String),
    #[error("the output hedges ({0:?}) instead of committing to an answer")]
    Hedges(String),
    #[error("the output gives several numbers ({}) and marks none as its answer", .0.join(", "))]
    Several(Vec<String>),
    #[error("the output gives no number")]
    NoNumber,
}

/// The one number word of an output without digits.
fn number_word(text: &str) -> Result<f64, NoAnswer> {
    let lower = text.to_lowercase();
    let mut found: Vec<usize> = Vec::new();
    for n in
        lower.split(|c: char| !c.is_alphabetic()).filter_map(|w| NUMBER_WORDS.iter().position(|n| *n == w))
    {
        if !found.contains(&n) {
            found.push(n);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one as f64),
        [] => Err(NoAnswer::NoNumber),
        several => Err(NoAnswer::Several(several.iter().map(|n| NUMBER_WORDS[*n].to_string()).collect())),
    }
}

/// Where `output` restates `source`, ignoring whitespace, as byte ranges.
fn restatements(output: &str, source: &str) -> Vec<std::ops::Range<usize>> {
    let wanted: Vec<char> = source.chars().filter(|c| !c.is_whitespace()).collect();
    let compact: Vec<(usize, char)> = output.char_indices().filter(|(_, c)| !c.is_whitespace()).collect();
    if wanted.is_empty() || compact.len() < wanted.len() {
        return Vec::new();
    }
    (0..=compact.len() - wanted.len())
        .filter_map(|start| {
            let window = &compact[start..start + wanted.len()];
            // A restatement must not be the tail of a longer number ("12+2" is not "2+2").
            let preceded_by_digit = start > 0 && compact[start - 1].1.is_ascii_digit();
            if preceded_by_digit || !window.iter().map(|(_, c)| *c).eq(wanted.iter().copied()) {
                return None;
            }
            let (idx, c) = window[window.len() - 1];
            let end = idx + c.len_utf8();
            // Nor the head of one ("2+23" is not "2+2").
            if output[end..].starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            Some(window[0].0..end)
        })
        .collect()
}

pub(super) fn judge(question: &str, output: &str, tolerance: Option<f64>) -> Verdict {
    let Some(expr) = Expression::find(question) else {
        return Verdict::Falsified(format!(
            "the question {question:?} holds no arithmetic expression to check against"
        ));
    };
    let expected = expr.value;
    let got = match committed_number(output, &expr) {
        Ok(n) => n,
        Err(why) => {
            return Verdict::Falsified(format!("expected {} = {}, {why}", expr.source, fmt(expected)));
        }
    };
    let tol = tolerance.unwrap_or(if expected.fract() == 0.0 { 0.0 } else { 1e-6 * expected.abs().max(1.0) });
    if (got - expected).abs() <= tol + f64::EPSILON * expected.abs().max(1.0) {
        Verdict::Corroborated(format!("{} = {}", expr.source, fmt(expected)))
    } else {
        Verdict::Falsified(format!(
            "expected {} = {}, the output answers {}",
            expr.source,
            fmt(expected),
            fmt(got)
        ))
    }
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

#[cfg(test)]
#[path = "arithmetic_tests.rs"]
mod tests;
