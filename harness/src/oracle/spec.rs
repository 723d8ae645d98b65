//! The oracles as a playbook writes them: the serde types of `oracles:` entries and their JSON
//! Schema shape. The playbook language (`crate::playbook::spec`) embeds them; the oracles compile
//! from them, so this module needs nothing of the playbook.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A language the code oracles read: `code_syntax` parses it, `code_tests` runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Rust,
}

/// An oracle: either its bare name (`garbage`) or a one-key map with its parameters
/// (`regex: '^\d+$'`, `garbage: {max_repetition_ratio: 0.3}`).
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(with = "OracleSchema")]
pub enum OracleSpec {
    /// The number the answer gives equals the value of the prompt's arithmetic expression.
    Arithmetic(ArithmeticOracleSpec),
    /// The output contains this text.
    Contains(String),
    /// The output, trimmed, is exactly this text.
    Exact(String),
    /// The output matches this regular expression.
    Regex(String),
    /// The output is not garbage (gateway G4's detector).
    Garbage(GarbageSpec),
    /// The code (the question's start of a function and the answer) parses.
    CodeSyntax(CodeSyntaxSpec),
    /// The code (the question's start of a function and the answer) passes these tests when it
    /// runs.
    CodeTests(CodeTestsSpec),
}

impl OracleSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Arithmetic(_) => "arithmetic",
            Self::Contains(_) => "contains",
            Self::Exact(_) => "exact",
            Self::Regex(_) => "regex",
            Self::Garbage(_) => "garbage",
            Self::CodeSyntax(_) => "code_syntax",
            Self::CodeTests(_) => "code_tests",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArithmeticOracleSpec {
    /// Largest accepted absolute difference; default 0 (1e-6 for non-integer results).
    pub tolerance: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GarbageSpec {
    /// Largest share of repeated word 3-grams; default 0.5.
    pub max_repetition_ratio: Option<f64>,
    /// Fewest distinct characters an output of four times that length may have; default 4.
    pub min_unique_chars: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeSyntaxSpec {
    /// The language to parse; default: told by the question (`def …` Python, `fn …` Rust).
    pub language: Option<Language>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeTestsSpec {
    /// The language of the code and of its tests: `python` (run by the `python3` on PATH) or
    /// `rust` (built by `rustc` as a test crate).
    pub language: Language,
    /// The tests, at least one, each in the code's language and run in order until one fails:
    /// Python statements (`assert fibonacci(10) == 55`), or the bodies of Rust test functions
    /// (`assert_eq!(add(2, 3), 5);`).
    #[schemars(length(min = 1))]
    pub tests: Vec<String>,
}

/// The schema shape of [`OracleSpec`] (its `Deserialize` is hand-written for the bare-name form).
#[derive(JsonSchema)]
#[expect(dead_code, reason = "only its JSON Schema is used")]
#[serde(untagged)]
enum OracleSchema {
    Bare(BareOracle),
    Arithmetic { arithmetic: ArithmeticOracleSpec },
    Contains { contains: String },
    Exact { exact: String },
    Regex { regex: String },
    Garbage { garbage: GarbageSpec },
    CodeSyntax { code_syntax: CodeSyntaxSpec },
    CodeTests { code_tests: CodeTestsSpec },
}

#[derive(JsonSchema)]
#[expect(dead_code, reason = "only its JSON Schema is used")]
#[serde(rename_all = "lowercase")]
enum BareOracle {
    Arithmetic,
    Garbage,
    #[serde(rename = "code_syntax")]
    CodeSyntax,
}

const ORACLE_KINDS: &[&str] =
    &["arithmetic", "contains", "exact", "regex", "garbage", "code_syntax", "code_tests"];

impl<'de> Deserialize<'de> for OracleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OracleVisitor;
        impl<'de> Visitor<'de> for OracleVisitor {
            type Value = OracleSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an oracle name (`arithmetic`, `garbage`) or a one-key map such as `contains: \"4\"`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OracleSpec, E> {
                match v {
                    "arithmetic" => Ok(OracleSpec::Arithmetic(Default::default())),
                    "garbage" => Ok(OracleSpec::Garbage(Default::default())),
                    "code_syntax" => Ok(OracleSpec::CodeSyntax(Default::default())),
                    "contains" | "exact" | "regex" => {
                        Err(E::custom(format!("oracle `{v}` needs its text: write `{v}: \"...\"`")))
                    }
                    "code_tests" => Err(E::custom(
                        "oracle `code_tests` needs its language and tests: write `code_tests: {language: python, tests: [\"assert f(1) == 2\"]}`",
                    )),
                    other => Err(E::unknown_variant(other, ORACLE_KINDS)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OracleSpec, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("an oracle map needs one key, the oracle's name"));
                };
                let oracle = match kind.as_str() {
                    "arithmetic" => OracleSpec::Arithmetic(
                        map.next_value::<Option<ArithmeticOracleSpec>>()?.unwrap_or_default(),
                    ),
                    "garbage" => {
                        OracleSpec::Garbage(map.next_value::<Option<GarbageSpec>>()?.unwrap_or_default())
                    }
                    "code_syntax" => OracleSpec::CodeSyntax(
                        map.next_value::<Option<CodeSyntaxSpec>>()?.unwrap_or_default(),
                    ),
                    "code_tests" => OracleSpec::CodeTests(map.next_value()?),
                    "contains" => OracleSpec::Contains(map.next_value()?),
                    "exact" => OracleSpec::Exact(map.next_value()?),
                    "regex" => OracleSpec::Regex(map.next_value()?),
                    other => return Err(de::Error::unknown_variant(other, ORACLE_KINDS)),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "an oracle map has exactly one key; `{extra}` is a second one (write each oracle as its own list item)"
                    )));
                }
                Ok(oracle)
            }
        }
        d.deserialize_any(OracleVisitor)
    }
}
