//! What the engine asks of a model: one forward pass over a chunk of tokens at a position,
//! through its own KV cache, and a way to empty that cache. Each architecture is one loader
//! (a normalised config and the weights in, a [`CausalLm`] out) and one line of
//! [`ARCHITECTURES`]. It never reads a file: the config was normalised by `format::hf_config`
//! and the weights admitted by `engine::admit` before a loader sees them.

use candle_core::Tensor;
use candle_transformers::models::{
    deepseek2, gemma, olmo2, quantized_llama, quantized_qwen2, qwen3, qwen3_moe,
};
use serde::de::DeserializeOwned;

use super::llama::Family;
use super::weights::Weights;

/// A causal language model with its KV cache.
pub(crate) trait CausalLm: Send {
    /// The logits after the last of `input`'s tokens (shape `[1, len]`), which start at
    /// position `pos`; the cache holds the `pos` tokens before them.
    fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor>;
    /// As [`CausalLm::forward`], but the logits after each of `input`'s tokens at the offsets
    /// `rows` (ascending, each below `len`), as `[rows, vocab]`: the logits of a whole stretch of
    /// a sequence in one pass (perplexity), where `forward` gives the last token's alone. Each
    /// row's logits are the bits `forward` gives when that token ends the input. `None`, with
    /// nothing computed and the cache untouched: the model gives the last token's only.
    fn forward_rows(
        &mut self,
        _input: &Tensor,
        _pos: usize,
        _rows: &[usize],
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
    /// Forgets every cached token, for a new sequence.
    fn clear_kv_cache(&mut self);
    /// The sequence after the last [`CausalLm::clear_kv_cache`] will reach `len` tokens, fed in
    /// several passes: a model whose arithmetic depends on the whole length (LongRoPE) computes
    /// every pass as transformers computes the whole sequence at once.
    fn plan(&mut self, _len: usize) {}
    /// The logits after the last token of each of several sequences' `segments`, laid end to
    /// end in `input` (`[1, Σ len]`), as one batch: `[segments, vocab]`. Each segment continues
    /// its batch slot's cache (or, without a slot, starts at position 0 and is kept nowhere); the
    /// single-sequence cache of [`CausalLm::forward`] is neither read nor written. A segment's
    /// logits are the bits [`CausalLm::forward`] gives for the same tokens at the same position
    /// after the same cached tokens. `None`: the model runs one sequence at a time.
    fn forward_batch(
        &mut self,
        _input: &Tensor,
        _segments: &[Segment],
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
    /// Whether [`CausalLm::forward_batch`] answers (the model runs several sequences at once).
    fn batches(&self) -> bool {
        false
    }
    /// Forgets every batch slot's cached tokens.
    fn clear_batch(&mut self) {}
    /// Forgets one batch slot's cached tokens (its sequence has ended).
    fn clear_slot(&mut self, _slot: usize) {}
}

/// One sequence's tokens in a batch ([`CausalLm::forward_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The batch cache that holds the sequence's `pos` earlier tokens and keeps these; `None`:
    /// the segment starts at position 0 and is cached nowhere.
    pub slot: Option<usize>,
    /// The position of the segment's first token.
    pub pos: usize,
    /// How many tokens it has.
    pub len: usize,
    /// The batch slot whose first `pos` cached positions this segment's slot starts from (a
    /// prompt prefix another sequence holds, computed once for both), replacing what its own slot
    /// held; that slot's segment, where it has one, comes earlier in the batch. `None`: its own
    /// slot holds its earlier tokens.
    pub from: Option<usize>,
}

/// Why a loader could not build its model.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The normalised config does not fit the loader's config struct.
    #[error("not a valid {architecture} config")]
    Config {
        architecture: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The weights did not load.
    #[error(transparent)]
    Weights(#[from] candle_core::Error),
}

type Loader = fn(&serde_json::Value, Weights) -> Result<Box<dyn CausalLm>, LoadError>;

/// The architectures the embedded engine runs from a model directory, an APR file or a GGUF
/// file, by config.json `model_type`, each with its loader.
pub(crate) const ARCHITECTURES: &[(&str, Loader)] = &[
    ("deepseek_v2", |c, w| Ok(Box::new(deepseek2::DeepSeekV2::new(&parse("deepseek_v2", c)?, w.into_vb())?))),
    ("falcon", |c, w| Ok(Box::new(super::falcon::Model::new(&parse("falcon", c)?, w)?))),
    ("gemma", |c, w| Ok(Box::new(gemma::Model::new(false, &parse("gemma", c)?, w.into_vb())?))),
    ("gemma2", |c, w| Ok(Box::new(super::gemma2::Model::new(&parse("gemma2", c)?, w)?))),
    ("gemma3_text", |c, w| Ok(Box::new(super::gemma2::Model::new(&parse("gemma3_text", c)?, w)?))),
    ("gpt_bigcode", |c, w| Ok(Box::new(super::bigcode::Model::new(&parse("gpt_bigcode", c)?, w)?))),
    ("granite", |c, w| Ok(Box::new(super::granite::load(&parse("granite", c)?, w)?))),
    ("llama", |c, w| Ok(Box::new(super::llama::load(Family::Llama, &parse("llama", c)?, w)?))),
    ("mistral", |c, w| Ok(Box::new(super::llama::load(Family::Mistral, &parse("mistral", c)?, w)?))),
    ("olmo2", |c, w| Ok(Box::new(olmo2::Model::new(&parse("olmo2", c)?, w.into_vb())?))),
    ("phi3", |c, w| Ok(Box::new(super::phi3::load(&parse("phi3", c)?, w)?))),
    ("qwen2", |c, w| Ok(Box::new(super::llama::load(Family::Qwen2, &parse("qwen2", c)?, w)?))),
    ("qwen3", |c, w| Ok(Box::new(qwen3::ModelForCausalLM::new(&parse("qwen3", c)?, w.into_vb())?))),
    ("qwen3_moe", |c, w| {
        Ok(Box::new(qwen3_moe::ModelForCausalLM::new(&parse("qwen3_moe", c)?, w.into_vb())?))
    }),
    ("stablelm", |c, w| Ok(Box::new(super::stablelm::load(&parse("stablelm", c)?, w)?))),
    ("starcoder2", |c, w| Ok(Box::new(super::starcoder2::load(&parse("starcoder2", c)?, w)?))),
];

/// The architectures whose models are the project's own and read their matrices through
/// [`Weights`], so that on CPU they run on the project's kernels in the file's own type; the
/// others are candle's, which take every tensor from a `VarBuilder` as f32.
pub(crate) const OWN_KERNELS: &[&str] = &[
    "falcon",
    "gemma2",
    "gemma3_text",
    "gpt_bigcode",
    "granite",
    "llama",
    "mistral",
    "phi3",
    "qwen2",
    "stablelm",
    "starcoder2",
];

/// The architectures whose model answers several sequences as one batch
/// ([`CausalLm::forward_batch`]): those on the shared decoder, save a LongRoPE phi3, whose
/// sequences are recomputed when they cross the original context (its model says so when
/// loaded: [`CausalLm::batches`]). The others run one at a time.
pub(crate) const BATCHED: &[&str] =
    &["granite", "llama", "mistral", "phi3", "qwen2", "stablelm", "starcoder2"];

/// The model of `architecture` (one of [`ARCHITECTURES`]) from its normalised config.
pub(crate) fn load(
    architecture: &str,
    config: &serde_json::Value,
    weights: Weights,
) -> Option<Result<Box<dyn CausalLm>, LoadError>> {
    ARCHITECTURES.iter().find(|(name, _)| *name == architecture).map(|(_, loader)| loader(config, weights))
}

fn parse<T: DeserializeOwned>(
    architecture: &'static str,
    config: &serde_json::Value,
) -> Result<T, LoadError> {
    serde_json::from_value(config.clone()).map_err(|source| LoadError::Config { architecture, source })
}

/// candle's models whose own `forward(input, pos)` and `clear_kv_cache` are the trait's.
macro_rules! causal_lm {
    ($($model:ty),* $(,)?) => {$(
        impl CausalLm for $model {
            fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
                <$model>::forward(self, input, pos)
            }
            fn clear_kv_cache(&mut self) {
                <$model>::clear_kv_cache(self)
            }
        }
    )*};
}

causal_lm!(
    deepseek2::DeepSeekV2,
    gemma::Model,
    olmo2::Model,
    quantized_llama::ModelWeights,
    quantized_qwen2::ModelWeights,
    qwen3::ModelForCausalLM,
    qwen3_moe::ModelForCausalLM,
);
