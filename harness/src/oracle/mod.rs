//! Oracles: each decides, from the question and the model's real output, whether the output is
//! right. An oracle never sees anything but text; it never runs a model.

mod arithmetic;
mod code;
mod code_tests;
mod garbage;
pub(crate) mod spec;

pub(crate) use arithmetic::Expression;
pub use code::language_of;
pub use code_tests::CodeTests;
pub(crate) use garbage::{GarbageConfig, garbage_reason};

use self::spec::{Language, OracleSpec};
use crate::vocab::OracleKind;

/// What an oracle concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The output passed, and why.
    Corroborated(String),
    /// The output failed, and why.
    Falsified(String),
}

impl Verdict {
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Corroborated(_))
    }
}

/// Why a playbook's oracle cannot be compiled, or cannot judge the answers to its prompt.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OracleError {
    #[error("arithmetic tolerance must be a finite number ≥ 0, not {0}")]
    Tolerance(f64),
    #[error("`contains` needs a non-empty text")]
    EmptyContains,
    #[error("`exact` needs a non-empty text")]
    EmptyExact,
    #[error("invalid regular expression `{pattern}`: {source}")]
    Regex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("`max_repetition_ratio` must lie in 0..=1, not {0}")]
    RepetitionRatio(f64),
    #[error("the arithmetic oracle needs a prompt with an arithmetic expression, and `{question}` has none")]
    NoArithmetic { question: String },
    #[error(
        "the code_syntax oracle cannot tell the language of `{question}`: set `code_syntax: {{language: python}}`"
    )]
    UnknownLanguage { question: String },
    #[error("`code_tests` needs at least one test")]
    NoTests,
    #[error("test {index} of `code_tests` is not valid {language}: {error}")]
    TestSyntax { index: usize, language: &'static str, error: String },
}

/// A compiled oracle.
#[derive(Debug, Clone)]
pub enum Oracle {
    Arithmetic { tolerance: Option<f64> },
    Contains(String),
    Exact(String),
    Regex(regex::Regex),
    Garbage(GarbageConfig),
    CodeSyntax { language: Option<Language> },
    CodeTests(CodeTests),
}

impl PartialEq for Oracle {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Oracle::Regex(a), Oracle::Regex(b)) => a.as_str() == b.as_str(),
            (Oracle::Arithmetic { tolerance: a }, Oracle::Arithmetic { tolerance: b }) => a == b,
            (Oracle::Contains(a), Oracle::Contains(b)) | (Oracle::Exact(a), Oracle::Exact(b)) => a == b,
            (Oracle::Garbage(a), Oracle::Garbage(b)) => a == b,
            (Oracle::CodeSyntax { language: a }, Oracle::CodeSyntax { language: b }) => a == b,
            (Oracle::CodeTests(a), Oracle::CodeTests(b)) => a == b,
            _ => false,
        }
    }
}

impl Oracle {
    /// Compiles a playbook oracle; the error says what is wrong with its parameters.
    pub fn from_spec(spec: &OracleSpec) -> Result<Self, OracleError> {
        Ok(match spec {
            OracleSpec::Arithmetic(a) => {
                if let Some(t) = a.tolerance
                    && !(t >= 0.0 && t.is_finite())
                {
                    return Err(OracleError::Tolerance(t));
                }
                Oracle::Arithmetic { tolerance: a.tolerance }
            }
            OracleSpec::Contains(s) if s.is_empty() => return Err(OracleError::EmptyContains),
            OracleSpec::Contains(s) => Oracle::Contains(s.clone()),
            OracleSpec::Exact(s) if s.trim().is_empty() => return Err(OracleError::EmptyExact),
            OracleSpec::Exact(s) => Oracle::Exact(s.clone()),
            OracleSpec::Regex(r) => Oracle::Regex(
                regex::Regex::new(r).map_err(|source| OracleError::Regex { pattern: r.clone(), source })?,
            ),
            OracleSpec::Garbage(g) => Oracle::Garbage(GarbageConfig::from_spec(g)?),
            OracleSpec::CodeSyntax(c) => Oracle::CodeSyntax { language: c.language },
            OracleSpec::CodeTests(c) => {
                if c.tests.is_empty() {
                    return Err(OracleError::NoTests);
                }
                for (i, test) in c.tests.iter().enumerate() {
                    if let Some(error) = code::test_syntax_error(c.language, test) {
                        return Err(OracleError::TestSyntax {
                            index: i + 1,
                            language: code::language_name(c.language),
                            error,
                        });
                    }
                }
                Oracle::CodeTests(CodeTests {
                    language: c.language,
                    tests: c.tests.clone(),
                    limits: Default::default(),
                })
            }
        })
    }

    pub fn kind(&self) -> OracleKind {
        match self {
            Oracle::Arithmetic { .. } => OracleKind::Arithmetic,
            Oracle::Contains(_) => OracleKind::Contains,
            Oracle::Exact(_) => OracleKind::Exact,
            Oracle::Regex(_) => OracleKind::Regex,
            Oracle::Garbage(_) => OracleKind::Garbage,
            Oracle::CodeSyntax { .. } => OracleKind::CodeSyntax,
            Oracle::CodeTests(_) => OracleKind::CodeTests,
        }
    }

    /// Why this oracle cannot judge on this machine (its interpreter or compiler is missing), so
    /// the trials it judges are ignored with that reason; `None` when it can. Found once per
    /// process.
    pub(crate) fn unavailable(&self) -> Option<&'static code_tests::NoToolchain> {
        match self {
            Oracle::CodeTests(c) => code_tests::unavailable(c.language),
            _ => None,
        }
    }

    /// Whether this oracle can judge answers to `question` at all (checked when playbooks load,
    /// so an arithmetic oracle on a prompt without arithmetic is a playbook error, not a pass).
    pub fn check_applicable(&self, question: &str) -> Result<(), OracleError> {
        match self {
            Oracle::Arithmetic { .. } => Expression::find(question)
                .map(|_| ())
                .ok_or_else(|| OracleError::NoArithmetic { question: question.to_string() }),
            Oracle::CodeSyntax { language: None } => code::language_of(question)
                .map(|_| ())
                .ok_or_else(|| OracleError::UnknownLanguage { question: question.to_string() }),
            _ => Ok(()),
        }
    }

    /// Judges `output`, the model's answer to `question`. Empty output never passes.
    pub fn judge(&self, question: &str, output: &str) -> Verdict {
        if output.trim().is_empty() {
            return Verdict::Falsified("the output is empty".into());
        }
        match self {
            Oracle::Arithmetic { tolerance } => arithmetic::judge(question, output, *tolerance),
            Oracle::Contains(needle) => {
                if output.contains(needle.as_str()) {
                    Verdict::Corroborated(format!("the output contains {needle:?}"))
                } else {
                    Verdict::Falsified(format!("the output does not contain {needle:?}"))
                }
            }
            Oracle::Exact(expected) => {
                if output.trim() == expected.trim() {
                    Verdict::Corroborated(format!("the output is exactly {expected:?}"))
                } else {
                    Verdict::Falsified(format!(
                        "expected exactly {:?}, got {:?}",
                        expected.trim(),
                        output.trim()
                    ))
                }
            }
            Oracle::Regex(re) => {
                if re.is_match(output) {
                    Verdict::Corroborated(format!("the output matches /{}/", re.as_str()))
                } else {
                    Verdict::Falsified(format!("the output does not match /{}/", re.as_str()))
                }
            }
            Oracle::CodeSyntax { language } => code::judge(question, output, *language),
            Oracle::CodeTests(c) => c.judge(question, output),
            Oracle::Garbage(cfg) => match garbage_reason(output, cfg) {
                Some(why) => Verdict::Falsified(format!("garbage output: {why}")),
                None => Verdict::Corroborated("the output is not garbage".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(oracle: &Oracle, question: &str, output: &str, pass: bool) {
        let v = oracle.judge(question, output);
        assert_eq!(v.is_pass(), pass, "{} on {question:?} → {output:?}: {v:?}", oracle.kind());
    }

    #[test]
    fn empty_output_never_passes() {
        for o in [
            Oracle::Arithmetic { tolerance: None },
            Oracle::Contains("x".into()),
            Oracle::Exact("x".into()),
            Oracle::Regex(regex::Regex::new(".*").unwrap()),
            Oracle::Garbage(GarbageConfig::default()),
        ] {
            check(&o, "What is 2+2?", "", false);
            check(&o, "What is 2+2?", "  \n ", false);
        }
    }

    #[test]
    fn text_oracles() {
        check(&Oracle::Contains("Paris".into()), "q", "It is Paris.", true);
        check(&Oracle::Contains("Paris".into()), "q", "It is paris.", false);
        check(&Oracle::Exact("4".into()), "q", " 4\n", true);
        check(&Oracle::Exact("4".into()), "q", "44", false);
        let re = Oracle::Regex(regex::Regex::new(r"^\s*-?\d+\s*$").unwrap());
        check(&re, "q", "42", true);
        check(&re, "q", "forty-two", false);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(
            Oracle::from_spec(&OracleSpec::Regex("(".into()))
                .unwrap_err()
                .to_string()
                .starts_with("invalid regular expression `(`: ")
        );
        assert!(Oracle::from_spec(&OracleSpec::Contains(String::new())).is_err());
        let a = Oracle::Arithmetic { tolerance: None };
        assert_eq!(
            a.check_applicable("Hello there").unwrap_err().to_string(),
            "the arithmetic oracle needs a prompt with an arithmetic expression, and `Hello there` has none"
        );
        assert!(a.check_applicable("What is 2+2?").is_ok());
    }
}
