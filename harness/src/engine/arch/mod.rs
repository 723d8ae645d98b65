//! The architectures the embedded engine runs: one [`CausalLm`] per `model_type`, either
//! candle-transformers' model where it reproduces transformers, or the project's own
//! (`granite`, `stablelm`, `phi3`, `starcoder2`, `gemma2` for gemma2 and gemma3_text, `falcon`, `bigcode`) built from the shared `blocks`.

mod bigcode;
mod blocks;
mod decoder;
mod falcon;
mod gemma2;
mod granite;
mod lm;
mod phi3;
mod stablelm;
mod starcoder2;

pub(crate) use lm::{ARCHITECTURES, CausalLm, LoadError, load};
