//! The verdict vocabulary every pass speaks: how a trial ended ([`Outcome`]), what decided it
//! ([`Decider`]), which score it counts in ([`Category`]), and the names of the fixed checks
//! ([`Gate`], [`ServerCheck`], [`Invariant`], [`OracleKind`]).
//!
//! This module is a leaf: it imports nothing from the crate, so expansion can name checks, the
//! trial rooms can judge, the journal can record and certify can score without any of them
//! reaching into another. Every word here is serialised as the string the journal has always
//! written, so evidence from older runs still reads.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every oracle accepted the output.
    Corroborated,
    /// An oracle or a gate rejected it.
    Falsified,
    /// The trial passed its timeout.
    Timeout,
    /// The engine or the trial body crashed (panic, signal).
    Crashed,
    /// Not run (a failure policy stopped it); never a pass.
    Skipped,
    /// Measured, but too noisy to judge (a performance trial on a machine whose load changed
    /// under it): recorded and shown, never a pass and never a falsification.
    Unstable,
    /// The repeats of the trial disagreed: enough of them passed for its policy, yet not all.
    /// A verdict on the model (it answers differently to the same request), never a pass.
    Flaky,
}

impl Outcome {
    pub fn is_pass(self) -> bool {
        self == Outcome::Corroborated
    }

    /// Whether the trial said something about the model: a pass or a failure, not a trial that
    /// was stopped before it ran or whose measurement was too noisy to judge.
    pub fn is_verdict(self) -> bool {
        !matches!(self, Outcome::Skipped | Outcome::Unstable)
    }

    /// The word the journal writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Corroborated => "corroborated",
            Outcome::Falsified => "falsified",
            Outcome::Timeout => "timeout",
            Outcome::Crashed => "crashed",
            Outcome::Skipped => "skipped",
            Outcome::Unstable => "unstable",
            Outcome::Flaky => "flaky",
        }
    }
}

/// A scoring category of the Model Qualification Score and its weight out of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Category {
    /// Answers judged by oracles; gateways G2 and G4.
    Qual,
    /// Performance assertions.
    Perf,
    /// Gateways G0, G1 and G3: the model's files, loading, stability.
    Stab,
    /// Derived formats against the ground truth (differential trials).
    Comp,
    /// Edge-case scenarios (the `edge_cases` generator).
    Edge,
    /// Golden references.
    Regr,
}

impl Category {
    pub const ALL: [Category; 6] =
        [Category::Qual, Category::Perf, Category::Stab, Category::Comp, Category::Edge, Category::Regr];

    /// Points a category is worth when every trial in it passes; they add up to 1000.
    pub fn weight(self) -> u32 {
        match self {
            Category::Qual | Category::Stab => 200,
            Category::Perf | Category::Comp | Category::Edge | Category::Regr => 150,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Qual => "QUAL",
            Category::Perf => "PERF",
            Category::Stab => "STAB",
            Category::Comp => "COMP",
            Category::Edge => "EDGE",
            Category::Regr => "REGR",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The five gateways G0–G4, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gate {
    Integrity,
    Load,
    Inference,
    Stability,
    Quality,
}

impl Gate {
    pub const ALL: [Gate; 5] = [Gate::Integrity, Gate::Load, Gate::Inference, Gate::Stability, Gate::Quality];

    /// The trial-name segment: `g0-integrity`.
    pub fn slug(self) -> &'static str {
        match self {
            Gate::Integrity => "g0-integrity",
            Gate::Load => "g1-load",
            Gate::Inference => "g2-inference",
            Gate::Stability => "g3-stability",
            Gate::Quality => "g4-quality",
        }
    }

    /// The short id used in evidence: `G0`.
    pub fn id(self) -> &'static str {
        match self {
            Gate::Integrity => "G0",
            Gate::Load => "G1",
            Gate::Inference => "G2",
            Gate::Stability => "G3",
            Gate::Quality => "G4",
        }
    }

    pub fn parse(slug: &str) -> Option<Gate> {
        Gate::ALL.into_iter().find(|g| g.slug() == slug)
    }

    fn from_id(id: &str) -> Option<Gate> {
        Gate::ALL.into_iter().find(|g| g.id() == id)
    }
}

/// The server-level checks of a `serve` cell, each a trial of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck {
    /// `GET /health` answers 200 in time; `GET /v1/models` lists the model.
    Health,
    /// Whole responses of both endpoints are JSON objects of the OpenAI shape, usage adding up.
    Json,
    /// Streamed responses are well-framed server-sent events ending in `data: [DONE]`, and
    /// their pieces add up to the whole response.
    Sse,
    /// The same request at temperature 0 gives the same answer every time.
    Deterministic,
    /// Several requests at once all succeed with the sequential answer.
    Concurrent,
    /// Malformed requests get a 400 (an oversized body 400 or 413) with an error object, and
    /// the server stays up.
    BadRequests,
    /// A prompt past the model's context — just past it and far past it, on both endpoints —
    /// is refused with a 4xx and an error object, and the server answers a prompt that fits
    /// afterwards.
    Limits,
}

impl ServerCheck {
    pub const ALL: [ServerCheck; 7] = [
        ServerCheck::Health,
        ServerCheck::Json,
        ServerCheck::Sse,
        ServerCheck::Deterministic,
        ServerCheck::Concurrent,
        ServerCheck::BadRequests,
        ServerCheck::Limits,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            ServerCheck::Health => "serve-health",
            ServerCheck::Json => "serve-json",
            ServerCheck::Sse => "serve-sse",
            ServerCheck::Deterministic => "serve-deterministic",
            ServerCheck::Concurrent => "serve-concurrent",
            ServerCheck::BadRequests => "serve-bad-requests",
            ServerCheck::Limits => "serve-limits",
        }
    }
}

/// What hostile input must not do to a cell: a trial `gate::<slug>` of every cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecurityCheck {
    /// User text that spells the model's control tokens (`<|im_end|>`, `[INST]`, `<s>`) is
    /// encoded as text in `run`, `chat` and `serve`: it cannot close a turn or open one.
    SpecialTokenInjection,
}

impl SecurityCheck {
    pub const ALL: [SecurityCheck; 1] = [SecurityCheck::SpecialTokenInjection];

    pub fn slug(self) -> &'static str {
        match self {
            SecurityCheck::SpecialTokenInjection => "special-token-injection",
        }
    }
}

/// The contract invariants of the original project, each a trial of every derived format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// I-1: a lossless format converts back to the ground truth bit for bit; a quantizing one
    /// refuses to convert back silently, and converting again gives the same bytes.
    RoundTrip,
    /// I-2: every tensor name maps to the format's name and back, one to one.
    NameBijection,
    /// I-3: every tensor is stored in the type its conversion asks for, or a fallback the file
    /// lists.
    NoSilentDtypeFallback,
    /// I-4: per-tensor mean, standard deviation, minimum and maximum within the type's bound
    /// (and an identical checksum where the type is the source's).
    StatisticsPreserved,
    /// I-5: the format's tokenizer encodes and decodes as the ground truth's.
    TokenizerRoundTrip,
}

impl Invariant {
    pub const ALL: [Invariant; 5] = [
        Invariant::RoundTrip,
        Invariant::NameBijection,
        Invariant::NoSilentDtypeFallback,
        Invariant::StatisticsPreserved,
        Invariant::TokenizerRoundTrip,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Invariant::RoundTrip => "i1-round-trip",
            Invariant::NameBijection => "i2-name-bijection",
            Invariant::NoSilentDtypeFallback => "i3-no-silent-dtype-fallback",
            Invariant::StatisticsPreserved => "i4-statistics-preserved",
            Invariant::TokenizerRoundTrip => "i5-tokenizer-round-trip",
        }
    }
}

/// The kinds of oracle a scenario can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OracleKind {
    Arithmetic,
    Contains,
    Exact,
    Regex,
    Garbage,
    CodeSyntax,
    CodeTests,
}

impl OracleKind {
    pub const ALL: [OracleKind; 7] = [
        OracleKind::Arithmetic,
        OracleKind::Contains,
        OracleKind::Exact,
        OracleKind::Regex,
        OracleKind::Garbage,
        OracleKind::CodeSyntax,
        OracleKind::CodeTests,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OracleKind::Arithmetic => "arithmetic",
            OracleKind::Contains => "contains",
            OracleKind::Exact => "exact",
            OracleKind::Regex => "regex",
            OracleKind::Garbage => "garbage",
            OracleKind::CodeSyntax => "code_syntax",
            OracleKind::CodeTests => "code_tests",
        }
    }
}

impl fmt::Display for OracleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What decided a trial: the check whose verdict the record carries. Written to the journal as
/// the `gate` field, in the words it has always used (`G2`, `arithmetic`, `COMP`, `timeout`…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decider {
    /// A gateway G0–G4.
    Gateway(Gate),
    /// The oracle that falsified an answer.
    Oracle(OracleKind),
    /// Every oracle of the scenario accepted the answer.
    Oracles,
    /// A property scenario over generated cases.
    Property,
    /// A control token leaked into a templated answer before any oracle looked.
    ControlTokens,
    /// The chat template could not lay the conversation out.
    ChatTemplate,
    /// A derived format against the ground truth (a differential trial).
    Comp,
    /// A golden reference.
    Regr,
    /// The numerics of a traced forward pass (`gate::trace`).
    Numerics,
    /// A performance assertion.
    Perf,
    /// The OpenAI-compatible server: a scenario over HTTP or a server check.
    Serve,
    /// The trial passed its timeout.
    Timeout,
    /// The failure policy stopped the trial before it ran.
    Policy,
    /// A sibling's kernel class and its certified representative (`gate::kernel-class`).
    KernelClass,
}

impl Decider {
    /// The word the journal writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Decider::Gateway(g) => g.id(),
            Decider::Oracle(k) => k.as_str(),
            Decider::Oracles => "oracles",
            Decider::Property => "property",
            Decider::ControlTokens => "control_tokens",
            Decider::ChatTemplate => "chat_template",
            Decider::Comp => "COMP",
            Decider::Regr => "REGR",
            Decider::Numerics => "numerics",
            Decider::Perf => "PERF",
            Decider::Serve => "serve",
            Decider::Timeout => "timeout",
            Decider::Policy => "policy",
            Decider::KernelClass => "kernel_class",
        }
    }

    /// The gateway, when a gateway decided.
    pub fn gateway(self) -> Option<Gate> {
        match self {
            Decider::Gateway(g) => Some(g),
            _ => None,
        }
    }

    /// Every decider but the oracles' own names, for parsing.
    const FIXED: [Decider; 12] = [
        Decider::Oracles,
        Decider::Property,
        Decider::ControlTokens,
        Decider::ChatTemplate,
        Decider::Comp,
        Decider::Regr,
        Decider::Numerics,
        Decider::Perf,
        Decider::Serve,
        Decider::Timeout,
        Decider::Policy,
        Decider::KernelClass,
    ];
}

impl fmt::Display for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `gate` word the vocabulary does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown decider `{0}` (expected a gateway G0–G4, an oracle name, COMP, REGR, PERF, serve, timeout, policy…)"
)]
pub struct UnknownDecider(pub String);

impl FromStr for Decider {
    type Err = UnknownDecider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(g) = Gate::from_id(s) {
            return Ok(Decider::Gateway(g));
        }
        if let Some(k) = OracleKind::ALL.into_iter().find(|k| k.as_str() == s) {
            return Ok(Decider::Oracle(k));
        }
        Decider::FIXED.into_iter().find(|d| d.as_str() == s).ok_or_else(|| UnknownDecider(s.to_string()))
    }
}

impl Serialize for Decider {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Decider {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = String::deserialize(deserializer)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

/// Tests and reports compare a decider with the word the journal writes.
impl PartialEq<&str> for Decider {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decider_reads_back_as_itself_and_a_typo_is_refused() {
        let all = Gate::ALL
            .into_iter()
            .map(Decider::Gateway)
            .chain(OracleKind::ALL.into_iter().map(Decider::Oracle))
            .chain(Decider::FIXED);
        let mut words = std::collections::HashSet::new();
        for d in all {
            assert!(words.insert(d.as_str()), "two deciders write `{d}`");
            assert_eq!(d.as_str().parse::<Decider>(), Ok(d));
            let json = serde_json::to_string(&d).expect("serialises");
            assert_eq!(serde_json::from_str::<Decider>(&json).expect("reads back"), d);
        }
        assert_eq!("G5".parse::<Decider>(), Err(UnknownDecider("G5".into())));
        assert!(serde_json::from_str::<Decider>("\"comp\"").is_err(), "deciders are case-sensitive");
    }
}
