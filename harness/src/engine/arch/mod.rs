//! The architectures the embedded engine runs: one [`CausalLm`] per `model_type`, either
//! candle-transformers' model where it reproduces transformers, or the project's own
//! (`llama` for llama, mistral and qwen2, `granite`, `stablelm`, `phi3`, `starcoder2`, `gemma2` for gemma2
//! and gemma3_text, `falcon`, `bigcode`) built from the shared `blocks` and reading their
//! matrices through `weights`, which on CPU hands them to the project's kernels as stored.

mod bigcode;
mod blocks;
mod decoder;
mod falcon;
mod gemma2;
mod granite;
mod llama;
mod lm;
mod phi3;
mod stablelm;
mod starcoder2;
mod weights;

pub(crate) use lm::{ARCHITECTURES, BATCHED, CausalLm, LoadError, OWN_KERNELS, Segment, load};
pub(crate) use weights::{AprMatrices, GgufMatrices, SafetensorsMatrices, Weights};
