//! Checks of a cell, each trial kind in its own room: the gateways G0–G4 ([`gate`]), golden
//! references ([`golden`]), differentials against the ground truth ([`differential`], with the
//! comparisons in [`diff`]), performance ([`perf`]) and the server checks ([`server`]). Each
//! room holds the check and the trial body that runs it on a [`crate::trial::TrialEnv`].

pub mod diff;
pub mod differential;
pub mod gate;
pub mod golden;
pub mod perf;
pub mod server;
