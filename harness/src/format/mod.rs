//! Model files: the safetensors files of a model as stored and their hashes ([`files`]), the
//! containers beyond safetensors that this project reads and writes, and the checks that stand
//! between a file and anything that trusts it: the bounds on every size a file declares
//! ([`limits`]), config.json as transformers 4.x and 5.x write it ([`hf_config`], with the
//! fields one family has in `hf_families` and the rope scalings in `rope_scaling`), its
//! hyper-parameters against each architecture's tensor set ([`hparams`], `tensor_sets`), safetensors
//! headers ([`safetensors_header`]), the GGUF pre-pass (`gguf::check`) and tokenizer.json
//! ([`tokenizer_json`]).

pub mod apr;
pub mod convert;
pub(crate) mod files;
pub mod gguf;
pub(crate) mod hf_config;
mod hf_families;
pub(crate) mod hparams;
pub(crate) mod limits;
mod rope_scaling;
pub(crate) mod safetensors_header;
mod tensor_sets;
pub(crate) mod tokenizer_json;
