//! What every trial body of pass 4 works with: the context one harness process shares
//! ([`RunContext`]), the environment of one trial ([`TrialEnv`]), the [`Finding`] it ends with
//! and the evidence record made of it, the prompts it sends and how answers are judged.
//!
//! The bodies live beside this room: checks of a cell (gateways, golden references,
//! differentials, performance, server checks) in [`crate::checks`], scenarios in each modality
//! in [`crate::modality`]. [`crate::run`] runs one trial: the failure policy, the dispatch to
//! its body and the record. Nothing here names a trial kind's body.

mod cell_batch;
mod context;
mod env;
mod finding;
mod judge;
mod policy;
mod prompt;
mod servers;

pub(crate) use cell_batch::{Batched, CellBatches};
pub(crate) use context::RunContext;
pub(crate) use env::{TrialEnv, Waits, load, reference_key, sampling, session_key};
pub(crate) use finding::{Finding, metrics_of};
pub(crate) use judge::{judge, judge_generation};
pub(crate) use policy::PolicyState;
pub use prompt::Ask;
pub(crate) use prompt::render_run;
pub(crate) use prompt::{asks_without_session, messages_of, prepare};
pub(crate) use servers::ServerPool;
