//! `diff::trace` and `gate::trace`: a project-owned forward pass of the llama convention that
//! records every layer ([`forward`]), over weights and numbers read from each format's own files
//! ([`decoder`]); the per-layer comparison with the ground truth ([`compare`]), the numerics
//! gate ([`numerics`]) and the trial bodies ([`trials`]).

mod compare;
mod decoder;
mod forward;
mod numerics;
mod trials;

pub use compare::TraceBound;
pub use trials::{TRACE_TOKENS, diff_trace, gate_trace, traced_logits};
pub(crate) use trials::{run_diff, run_gate};
