//! Model files: the safetensors files of a model as stored and their hashes ([`files`]), and the
//! containers beyond safetensors that this project reads and writes.

pub mod apr;
pub mod convert;
pub(crate) mod files;
pub mod gguf;
