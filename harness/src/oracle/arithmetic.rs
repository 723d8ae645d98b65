//! The arithmetic oracle: finds the expression in the question ("What is 2 + 2?", "Calculate 7*8",
//! "15-7=", "What is -3 * 12?"), computes it, and checks the number the answer gives.

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

/// The number the output gives as its answer: the first number after the output restates the
/// expression (if it does), else the first number in the output, else a number word.
pub(super) fn answer_number(output: &str, expr: &Expression) -> Option<f64> {
    let rest = after_restatement(output, &expr.source).unwrap_or(output);
    if let Some(m) = NUMBER.find(rest) {
        return m.as_str().replace(',', "").parse().ok();
    }
    let lower = rest.to_lowercase();
    lower
        .split(|c: char| !c.is_alphabetic())
        .find_map(|w| NUMBER_WORDS.iter().position(|n| *n == w))
        .map(|n| n as f64)
}

/// The text after the first place where `output` restates `source`, ignoring whitespace.
fn after_restatement<'a>(output: &'a str, source: &str) -> Option<&'a str> {
    let wanted: Vec<char> = source.chars().filter(|c| !c.is_whitespace()).collect();
    let compact: Vec<(usize, char)> = output.char_indices().filter(|(_, c)| !c.is_whitespace()).collect();
    if wanted.is_empty() || compact.len() < wanted.len() {
        return None;
    }
    (0..=compact.len() - wanted.len()).find_map(|start| {
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
        Some(&output[end..])
    })
}

pub(super) fn judge(question: &str, output: &str, tolerance: Option<f64>) -> Verdict {
    let Some(expr) = Expression::find(question) else {
        return Verdict::Falsified(format!(
            "the question {question:?} holds no arithmetic expression to check against"
        ));
    };
    let expected = expr.value;
    let Some(got) = answer_number(output, &expr) else {
        return Verdict::Falsified(format!(
            "expected {} = {}, the output gives no number",
            expr.source,
            fmt(expected)
        ));
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
mod tests {
    use super::*;

    #[track_caller]
    fn value(question: &str, expected: Option<f64>) {
        assert_eq!(Expression::find(question).map(|e| e.value), expected, "{question}");
    }

    #[test]
    fn finds_expressions_in_the_ways_people_ask() {
        value("What is 2+2?", Some(4.0));
        value("What is 2 + 2?", Some(4.0));
        value("Calculate 7*8", Some(56.0));
        value("15-7=", Some(8.0));
        value("What is 100/4?", Some(25.0));
        value("What is 3 - 10?", Some(-7.0));
        value("What is -5 + 3?", Some(-2.0));
        value("What is 123 * 456? Show all intermediate multiplication steps.", Some(56088.0));
        value("Calculate 999 + 1.", Some(1000.0));
        value("What is 1000000 - 999999?", Some(1.0));
        value("What is 2 + 3 * 4?", Some(14.0));
        value("What is (2 + 3) * 4?", Some(20.0));
        value("What is 7 × 6?", Some(42.0));
        value("What is 0.1 + 0.2? Give a precise answer.", Some(0.30000000000000004));
        // Not arithmetic a machine can check.
        value("Given x=5 and y=3, what is x*y?", None);
        value("List the numbers from 1 to 20, then sum them all.", None);
        value("Define a function add(a,b) that returns a+b. What does add(3,4) return?", None);
        value("What is 5/0?", None);
        value("Hello!", None);
        value("Qwen2.5-Coder", None);
    }

    #[track_caller]
    fn check(question: &str, output: &str, pass: bool) {
        let v = judge(question, output, None);
        assert_eq!(v.is_pass(), pass, "{question:?} → {output:?}: {v:?}");
    }

    #[test]
    fn accepts_right_answers() {
        check("What is 2+2?", "4", true);
        check("What is 2+2?", " 4\n", true);
        check("What is 2+2?", "The answer is 4.", true);
        check("What is 2+2?", "2 + 2 = 4", true);
        check("What is 2+2?", "2+2 is 4, of course.", true);
        check("What is 2+2?", "four", true);
        check("Calculate 7*8", "56", true);
        check("Calculate 7*8", "7 * 8 = 56", true);
        check("15-7=", "8", true);
        check("What is 3 - 10?", "-7", true);
        check("What is 3 - 10?", "3 - 10 = -7", true);
        check("What is 1000000 - 999999?", "1", true);
        check("What is 123 * 456?", "56,088", true);
        check("What is 100/4?", "25.0", true);
        check("What is 0.1 + 0.2?", "0.3", true);
    }

    #[test]
    fn rejects_wrong_answers() {
        check("What is 2+2?", "5", false);
        check("What is 2+2?", "24", false);
        check("What is 2+2?", "44", false);
        check("What is 2+2?", "2 + 2", false);
        check("What is 2+2?", "2+23", false);
        check("What is 2+2?", "I cannot say.", false);
        check("What is 2+2?", "", false);
        check("Calculate 7*8", "54", false);
        check("What is 3 - 10?", "7", false);
        check("What is 3 - 10?", "3 - 10 = 7", false);
        check("What is 0.1 + 0.2?", "0.4", false);
        check("Hello", "4", false);
    }

    #[test]
    fn tolerance_widens_the_match() {
        assert!(judge("What is 10/3?", "3.33", Some(0.01)).is_pass());
        assert!(!judge("What is 10/3?", "3.3", Some(0.01)).is_pass());
    }
}
