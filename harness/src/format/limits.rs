//! The bounds on every size and count a model file declares, in one place. A number a file
//! states is a claim about memory the harness will allocate or loops it will run; each is
//! checked against its limit here before anything trusts it, and the error names the field, the
//! file and the limit.
//!
//! Each limit admits every released model of the architectures the harness runs (llama,
//! mistral, qwen2) with room to spare, and stops a corrupt or hostile file long before it could
//! exhaust memory. None of these is a statement about what a model may be; they are the most
//! this harness agrees to load.

/// A context length (`max_position_embeddings`, `{arch}.context_length`, `sliding_window`):
/// 4,194,304 tokens. The longest contexts of released models are about 1M tokens
/// (Qwen2.5-*-1M declares 1,010,000); 2^31 or 10^12 are corruption.
pub(crate) const MAX_CONTEXT: u64 = 1 << 22;

/// The longest context a session builds its rotary tables for: 131,072 tokens.
///
/// candle precomputes cos and sin for every position up to the declared context when a model
/// loads (and, for llama, for every generation): `context × head_dim × 4` bytes, 512 MiB for a
/// 1M-token model with heads of 128. Trials never send prompts that long on the machines the
/// harness runs on, so a session clamps the table to this many positions and reports this as
/// its context: prompts beyond it are a clean `PromptTooLong`, positions below it compute
/// exactly what the unclamped table would. 128K admits every 128K model (Llama 3.1, Qwen2.5) in
/// full, so only the 1M-token models run with a shorter context than they declare.
pub(crate) const SESSION_CONTEXT: u64 = 1 << 17;

/// Transformer layers (`num_hidden_layers`, `{arch}.block_count`): the largest released dense
/// models have 126 (Llama 3.1 405B).
pub(crate) const MAX_LAYERS: u64 = 1 << 10;

/// Attention heads, query or key/value: released models have at most 128.
pub(crate) const MAX_HEADS: u64 = 1 << 10;

/// The width of one head: released models use 64 to 256.
pub(crate) const MAX_HEAD_DIM: u64 = 1 << 10;

/// The hidden size: 16,384 at 405B parameters.
pub(crate) const MAX_HIDDEN: u64 = 1 << 16;

/// The MLP's inner size: 53,248 at 405B parameters.
pub(crate) const MAX_INTERMEDIATE: u64 = 1 << 18;

/// Vocabulary entries (embedding rows): the largest released vocabularies have 262,144.
pub(crate) const MAX_VOCAB: u64 = 1 << 20;

/// Tensors in one file: a 405B model has about 1,100.
pub(crate) const MAX_TENSORS: u64 = 1 << 16;

/// Elements of one tensor: the largest embedding matrices hold about 2^32. The bytes must also
/// lie inside the file, which is the tighter bound for every real file.
pub(crate) const MAX_TENSOR_ELEMENTS: u64 = 1 << 34;

/// One bounded count or size, named for its error message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    /// The limit itself, inclusive.
    pub(crate) max: u64,
    /// What is counted, plural: "layers", "tokens of context".
    pub(crate) unit: &'static str,
}

pub(crate) const CONTEXT: Limit = Limit { max: MAX_CONTEXT, unit: "tokens of context" };
pub(crate) const LAYERS: Limit = Limit { max: MAX_LAYERS, unit: "layers" };
pub(crate) const HEADS: Limit = Limit { max: MAX_HEADS, unit: "heads" };
pub(crate) const HEAD_DIM: Limit = Limit { max: MAX_HEAD_DIM, unit: "values per head" };
pub(crate) const HIDDEN: Limit = Limit { max: MAX_HIDDEN, unit: "hidden units" };
pub(crate) const INTERMEDIATE: Limit = Limit { max: MAX_INTERMEDIATE, unit: "intermediate units" };
pub(crate) const VOCAB: Limit = Limit { max: MAX_VOCAB, unit: "vocabulary entries" };

impl Limit {
    /// `value` if it is between 1 and the limit, else why not (for "`field` {why}").
    pub(crate) fn check(self, value: u64) -> Result<u64, String> {
        if value == 0 {
            Err("is 0; it must be at least 1".to_string())
        } else if value > self.max {
            Err(format!("is {value}, more than the {} {} this harness loads", self.max, self.unit))
        } else {
            Ok(value)
        }
    }
}

/// The product of `dims`, or `None` when it overflows or passes [`MAX_TENSOR_ELEMENTS`].
pub(crate) fn elements(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_TENSOR_ELEMENTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_admit_real_models_and_refuse_corruption() {
        assert_eq!(CONTEXT.check(1_010_000), Ok(1_010_000));
        assert_eq!(
            CONTEXT.check(1 << 31).unwrap_err(),
            "is 2147483648, more than the 4194304 tokens of context this harness loads"
        );
        assert!(CONTEXT.check(1_000_000_000_000).is_err());
        assert_eq!(LAYERS.check(0).unwrap_err(), "is 0; it must be at least 1");
        assert_eq!(LAYERS.check(126), Ok(126));
        assert_eq!(elements(&[262_144, 16_384]), Some(1 << 32));
        assert_eq!(elements(&[1 << 32, 1 << 32]), None);
        assert_eq!(elements(&[1 << 20, 1 << 20, 1 << 20]), None);
    }
}
