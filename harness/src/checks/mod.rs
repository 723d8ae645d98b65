//! Checks of a cell, each trial kind in its own room: the gateways G0–G4 ([`gate`]), golden
//! references ([`golden`]), differentials against the ground truth ([`differential`], with the
//! comparisons in [`diff`], the tokenizer fuzz in [`tokenizer_fuzz`], the long-context
//! comparison in [`long_context`], perplexity in [`perplexity`], and the cell's server against the cell in process in
//! [`serve_vs_run`], a prompt alone against the same prompt in batches in [`batch_invariance`]), performance ([`perf`]), the server checks ([`server`]), what hostile
//! input cannot do ([`injection`]) and a sibling's kernel class ([`kernel_class`]). Each
//! room holds the check and the trial body that runs it on a [`crate::trial::TrialEnv`]; a check
//! concludes in a [`Verdict`], which the trial body makes a finding.

pub(crate) mod batch_invariance;
pub(crate) mod diff;
pub(crate) mod differential;
pub(crate) mod gate;
pub(crate) mod golden;
pub(crate) mod injection;
pub(crate) mod kernel_class;
pub(crate) mod long_context;
pub(crate) mod perf;
pub(crate) mod perplexity;
pub(crate) mod serve_vs_run;
pub(crate) mod server;
pub(crate) mod tokenizer_fuzz;
pub(crate) mod trace;

use crate::trial::Finding;
use crate::vocab::{Decider, Outcome};

/// What a check concluded, before the trial body makes it a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: String,
    pub prompt: Option<String>,
    pub output: Option<String>,
}

impl Verdict {
    fn of(outcome: Outcome, reason: impl Into<String>) -> Self {
        Self { outcome, reason: reason.into(), prompt: None, output: None }
    }

    pub fn pass(reason: impl Into<String>) -> Self {
        Self::of(Outcome::Corroborated, reason)
    }

    pub fn fail(reason: impl Into<String>) -> Self {
        Self::of(Outcome::Falsified, reason)
    }

    pub fn timeout(reason: impl Into<String>) -> Self {
        Self::of(Outcome::Timeout, reason)
    }

    /// The finding of this verdict, decided by `decider`, with its prompt and output.
    pub(crate) fn into_finding(self, decider: Decider) -> Finding {
        let mut f = Finding::new(self.outcome, decider, self.reason);
        f.prompt = self.prompt;
        f.output = self.output;
        f
    }
}
