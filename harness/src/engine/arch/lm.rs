//! What the engine asks of a model: one forward pass over a chunk of tokens at a position,
//! through its own KV cache, and a way to empty that cache. Each architecture is one loader
//! (a normalised config and the weights in, a [`CausalLm`] out) and one line of
//! [`ARCHITECTURES`]. It never reads a file: the config was normalised by `format::hf_config`
//! and the weights admitted by `engine::admit` before a loader sees them.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{
    deepseek2, gemma, llama, mistral, olmo2, quantized_llama, quantized_qwen2, qwen2, qwen3, qwen3_moe,
};
use serde::de::DeserializeOwned;

/// A causal language model with its KV cache.
pub(crate) trait CausalLm: Send {
    /// The logits after the last of `input`'s tokens (shape `[1, len]`), which start at
    /// position `pos`; the cache holds the `pos` tokens before them.
    fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor>;
    /// Forgets every cached token, for a new sequence.
    fn clear_kv_cache(&mut self);
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

type Loader = fn(&serde_json::Value, VarBuilder<'static>) -> Result<Box<dyn CausalLm>, LoadError>;

/// The architectures the embedded engine runs from a model directory or an APR file, by
/// config.json `model_type`, each with its loader.
pub(crate) const ARCHITECTURES: &[(&str, Loader)] = &[
    ("deepseek_v2", |c, vb| Ok(Box::new(deepseek2::DeepSeekV2::new(&parse("deepseek_v2", c)?, vb)?))),
    ("falcon", |c, vb| Ok(Box::new(super::falcon::Model::new(&parse("falcon", c)?, vb)?))),
    ("gemma", |c, vb| Ok(Box::new(gemma::Model::new(false, &parse("gemma", c)?, vb)?))),
    ("gemma2", |c, vb| Ok(Box::new(super::gemma2::Model::new(&parse("gemma2", c)?, vb)?))),
    ("gemma3_text", |c, vb| Ok(Box::new(super::gemma2::Model::new(&parse("gemma3_text", c)?, vb)?))),
    ("gpt_bigcode", |c, vb| Ok(Box::new(super::bigcode::Model::new(&parse("gpt_bigcode", c)?, vb)?))),
    ("granite", |c, vb| Ok(Box::new(super::granite::load(&parse("granite", c)?, vb)?))),
    ("llama", load_llama),
    ("mistral", load_mistral),
    ("olmo2", |c, vb| Ok(Box::new(olmo2::Model::new(&parse("olmo2", c)?, vb)?))),
    ("phi3", |c, vb| Ok(Box::new(super::phi3::load(&parse("phi3", c)?, vb)?))),
    ("qwen2", |c, vb| Ok(Box::new(qwen2::ModelForCausalLM::new(&parse("qwen2", c)?, vb)?))),
    ("qwen3", |c, vb| Ok(Box::new(qwen3::ModelForCausalLM::new(&parse("qwen3", c)?, vb)?))),
    ("qwen3_moe", |c, vb| Ok(Box::new(qwen3_moe::ModelForCausalLM::new(&parse("qwen3_moe", c)?, vb)?))),
    ("stablelm", |c, vb| Ok(Box::new(super::stablelm::load(&parse("stablelm", c)?, vb)?))),
    ("starcoder2", |c, vb| Ok(Box::new(super::starcoder2::load(&parse("starcoder2", c)?, vb)?))),
];

/// The model of `architecture` (one of [`ARCHITECTURES`]) from its normalised config.
pub(crate) fn load(
    architecture: &str,
    config: &serde_json::Value,
    vb: VarBuilder<'static>,
) -> Option<Result<Box<dyn CausalLm>, LoadError>> {
    ARCHITECTURES.iter().find(|(name, _)| *name == architecture).map(|(_, loader)| loader(config, vb))
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
    mistral::Model,
    olmo2::Model,
    quantized_llama::ModelWeights,
    quantized_qwen2::ModelWeights,
    qwen2::ModelForCausalLM,
    qwen3::ModelForCausalLM,
    qwen3_moe::ModelForCausalLM,
);

/// candle's llama keeps its cache outside the model: a fresh one is a clone of the empty one
/// (its rotary tables are shared, not rebuilt).
struct Llama {
    model: llama::Llama,
    cache: llama::Cache,
    empty: llama::Cache,
}

fn load_llama(config: &serde_json::Value, vb: VarBuilder<'static>) -> Result<Box<dyn CausalLm>, LoadError> {
    let config = parse::<llama::LlamaConfig>("llama", config)?.into_config(false);
    let empty = llama::Cache::new(true, DType::F32, &config, vb.device())?;
    let model = llama::Llama::load(vb, &config)?;
    Ok(Box::new(Llama { model, cache: empty.clone(), empty }))
}

impl CausalLm for Llama {
    fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        self.model.forward(input, pos, &mut self.cache)
    }
    fn clear_kv_cache(&mut self) {
        self.cache = self.empty.clone();
    }
}

fn load_mistral(config: &serde_json::Value, vb: VarBuilder<'static>) -> Result<Box<dyn CausalLm>, LoadError> {
    // candle's mistral always loads `lm_head`; tied embeddings are the embedding table.
    let vb = if config.get("tie_word_embeddings") == Some(&serde_json::Value::Bool(true)) {
        vb.rename_f(|name| match name {
            "lm_head.weight" => "model.embed_tokens.weight".to_string(),
            other => other.to_string(),
        })
    } else {
        vb
    };
    Ok(Box::new(mistral::Model::new(&parse("mistral", config)?, vb)?))
}
