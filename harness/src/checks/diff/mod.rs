//! Differential checks of a derived format against the safetensors ground truth: the tensors
//! themselves, and the next-token distributions they produce. Pure comparisons plus the reading
//! of the two files, and the rendered chat prompts; the trial bodies in `run.rs` supply sessions
//! and prompts. One file per idea: tensors, logits, chat prompts, and the contract invariants.

use std::path::Path;

mod chat;
mod invariants;
mod logits;
mod tensors;

pub(crate) use chat::chat_prompts;
pub use invariants::invariant;
pub(crate) use invariants::{InvariantError, same_tokens, tokenizers};
pub use logits::{LogitEvidence, LogitTolerance, kl_divergence, logits};
pub use tensors::tensors;

fn read(path: &Path) -> impl FnOnce(std::io::Error) -> InvariantError + '_ {
    move |source| InvariantError::Read { path: path.to_path_buf(), source }
}

fn deserialize(path: &Path) -> impl FnOnce(safetensors::SafeTensorError) -> InvariantError + '_ {
    move |source| InvariantError::Safetensors { path: path.to_path_buf(), source }
}
