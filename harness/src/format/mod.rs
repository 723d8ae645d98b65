//! Model file formats beyond safetensors: containers read and written by this project.

pub mod apr;
pub mod convert;
pub mod gguf;
