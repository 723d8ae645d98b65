//! Trial names: `{family}::{tier}::{model}::{format}::{backend}::{modality}::{scenario}`.
//!
//! A name is the key of a trial everywhere: the libtest filter, the journal, JUnit and the registry.
//! This module owns its grammar; it never looks at playbooks.

use std::fmt;

use crate::matrix::{Backend, Format, Modality};

/// The separator between name segments.
pub(crate) const SEP: &str = "::";

/// The last two segments of a name: what the trial does inside its `(model, format, backend)` group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tail {
    /// A scenario in a modality: `run::arithmetic_basic`.
    Scenario { modality: Modality, scenario: String },
    /// A gateway check: `gate::g1-load`.
    Gate(String),
    /// A differential check against the ground truth: `diff::logits-vs-safetensors`.
    Diff(String),
    /// A performance assertion: `perf::decode`.
    Perf(String),
}

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tail::Scenario { modality, scenario } => write!(f, "{modality}{SEP}{scenario}"),
            Tail::Gate(g) => write!(f, "gate{SEP}{g}"),
            Tail::Diff(d) => write!(f, "diff{SEP}{d}"),
            Tail::Perf(p) => write!(f, "perf{SEP}{p}"),
        }
    }
}

/// A parsed trial name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrialName {
    pub family: String,
    pub tier: String,
    pub model: String,
    pub format: Format,
    pub backend: Backend,
    pub tail: Tail,
}

/// Why a string is not a trial name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("expected 7 segments `family::tier::model::format::backend::modality::scenario`, found {0}")]
    SegmentCount(usize),
    /// A segment breaks the segment grammar ([`check_segment`]).
    #[error("segment {index} (`{segment}`) is not a valid {what}: {source}")]
    Segment {
        index: usize,
        segment: String,
        what: &'static str,
        #[source]
        source: SegmentError,
    },
    /// A format, backend or modality segment names none there is.
    #[error("segment {index} (`{segment}`) is not a valid {what}: expected {expected}")]
    Unknown { index: usize, segment: String, what: &'static str, expected: &'static str },
}

/// Why a string is not a name segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} characters long; a segment may be at most {MAX_SEGMENT_CHARS}")]
    TooLong(usize),
    #[error("it must start with a lower-case letter or digit, not `{0}`")]
    Start(char),
    #[error("`{0}` is not allowed (use lower-case letters, digits, `.`, `_` and `-`)")]
    Character(char),
}

/// The longest segment. Names are typed on command lines and printed once per trial by
/// `--list`; a model id part may be 96 characters, and a generated scenario adds a case number.
pub(crate) const MAX_SEGMENT_CHARS: usize = 128;

/// Checks one segment: lower-case ASCII letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit, at most [`MAX_SEGMENT_CHARS`] long.
pub(crate) fn check_segment(s: &str) -> Result<(), SegmentError> {
    if s.len() > MAX_SEGMENT_CHARS {
        return Err(SegmentError::TooLong(s.chars().count()));
    }
    let Some(first) = s.chars().next() else {
        return Err(SegmentError::Empty);
    };
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(SegmentError::Start(first));
    }
    if let Some(bad) =
        s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(SegmentError::Character(bad));
    }
    Ok(())
}

/// A segment as an error message shows it: whole when short, else its head and its length, so
/// a 100,000-character name makes a one-line error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEAD: usize = 60;
        if self.0.chars().count() <= HEAD + 20 {
            return f.write_str(self.0);
        }
        let head: String = self.0.chars().take(HEAD).collect();
        write!(f, "{head}… ({} characters)", self.0.chars().count())
    }
}

impl TrialName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let parts: Vec<&str> = s.split(SEP).collect();
        if parts.len() != 7 {
            return Err(NameError::SegmentCount(parts.len()));
        }
        let seg = |index: usize, what: &'static str| -> Result<String, NameError> {
            check_segment(parts[index]).map_err(|source| NameError::Segment {
                index: index + 1,
                segment: parts[index].to_string(),
                what,
                source,
            })?;
            Ok(parts[index].to_string())
        };
        let bad = |index: usize, what: &'static str, expected: &'static str| NameError::Unknown {
            index: index + 1,
            segment: parts[index].to_string(),
            what,
            expected,
        };
        let family = seg(0, "family")?;
        let tier = seg(1, "tier")?;
        let model = seg(2, "model")?;
        let format = Format::parse(parts[3])
            .ok_or_else(|| bad(3, "format", "`safetensors`, `apr` or `gguf-<quantization>`"))?;
        let backend = Backend::parse(parts[4]).ok_or_else(|| bad(4, "backend", "`cpu` or `gpu`"))?;
        let last = seg(6, "scenario")?;
        let tail = match parts[5] {
            "gate" => Tail::Gate(last),
            "diff" => Tail::Diff(last),
            "perf" => Tail::Perf(last),
            m => match Modality::parse(m) {
                Some(modality) => Tail::Scenario { modality, scenario: last },
                None => {
                    return Err(bad(5, "modality", "`run`, `chat`, `serve`, `gate`, `diff` or `perf`"));
                }
            },
        };
        Ok(Self { family, tier, model, format, backend, tail })
    }
}

impl fmt::Display for TrialName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
            self.family, self.tier, self.model, self.format, self.backend, self.tail
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_ok(s: &str) {
        let name = TrialName::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(name.to_string(), s);
    }

    #[track_caller]
    fn check_err(s: &str, expected: &str) {
        let err = TrialName::parse(s).expect_err(s).to_string();
        assert!(err.contains(expected), "{s}: `{err}` lacks `{expected}`");
    }

    #[test]
    fn names_round_trip() {
        check_ok("qwen-coder::mvp::qwen2.5-coder-1.5b-instruct::gguf-q4_k_m::cpu::chat::arithmetic_basic");
        check_ok("qa-tiny::smoke::qa-tiny-llama::safetensors::gpu::run::add-007");
        check_ok("qa-tiny::smoke::qa-tiny-llama::apr::cpu::gate::g0-integrity");
        check_ok("qa-tiny::smoke::qa-tiny-llama::gguf-f16::cpu::diff::logits-vs-safetensors");
    }

    #[test]
    fn bad_names_say_why() {
        check_err("qwen-coder::mvp", "expected 7 segments");
        check_err("a::b::c::d::e::f::g::h", "found 8");
        check_err("Qwen::mvp::m::safetensors::cpu::run::s", "lower-case");
        check_err("q::mvp::m::gguf::cpu::run::s", "format");
        check_err("q::mvp::m::safetensors::tpu::run::s", "backend");
        check_err("q::mvp::m::safetensors::cpu::walk::s", "modality");
        check_err("q::mvp::m::safetensors::cpu::run::", "empty");
        check_err("q::mvp::m::safetensors::cpu::run::a b", "` ` is not allowed");
    }
}
