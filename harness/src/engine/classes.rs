//! Kernel classes: the architectures the embedded engine runs, grouped by the code their forward
//! pass executes — the same model module, blocks and matrix kernels, told apart only by their
//! configs (an architecture whose `model_type` alone implies other code, as qwen2's biases do,
//! is a class of its own). A model of a class whose representative is qualified differs from
//! it by dimensions only when their configs also agree on everything that is not a number (see
//! `checks::kernel_class`); the `dim-smoke` tier checks such a sibling by its files alone.

/// One class: its name, what its forward pass runs, and its architectures (`model_type`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelClass {
    pub(crate) name: &'static str,
    pub(crate) runs: &'static str,
    pub(crate) architectures: &'static [&'static str],
}

/// Every class; each architecture of [`super::arch::ARCHITECTURES`] is in exactly one.
pub(crate) const KERNEL_CLASSES: &[KernelClass] = &[
    KernelClass {
        name: "llama",
        runs: "the shared decoder: RMSNorm, half-split rotary, grouped-query attention, SwiGLU, the project's matrix kernels",
        architectures: &["llama", "mistral"],
    },
    // qwen2's attention biases are implied by its model_type, not stated in its config.
    KernelClass {
        name: "qwen2",
        runs: "the shared decoder with attention biases",
        architectures: &["qwen2"],
    },
    KernelClass {
        name: "granite",
        runs: "the shared decoder with granite's embedding, residual, attention and logit multipliers",
        architectures: &["granite"],
    },
    KernelClass {
        name: "phi3",
        runs: "the shared decoder with fused QKV and gate-up projections",
        architectures: &["phi3"],
    },
    KernelClass {
        name: "stablelm",
        runs: "the shared decoder with LayerNorm and partial rotary",
        architectures: &["stablelm"],
    },
    KernelClass {
        name: "starcoder2",
        runs: "the shared decoder with LayerNorm, biases and a GELU MLP",
        architectures: &["starcoder2"],
    },
    KernelClass {
        name: "gemma2",
        runs: "gemma2's decoder: (1 + w) RMSNorm around each block, GeGLU, logit soft-capping, sliding windows",
        architectures: &["gemma2"],
    },
    KernelClass {
        name: "gemma3_text",
        runs: "gemma2's decoder with query/key norms and local and global rotary bases",
        architectures: &["gemma3_text"],
    },
    KernelClass {
        name: "falcon",
        runs: "falcon's parallel attention and MLP with multi-query attention",
        architectures: &["falcon"],
    },
    KernelClass {
        name: "gpt_bigcode",
        runs: "GPT-BigCode: learned positions, multi-query attention, LayerNorm, GELU",
        architectures: &["gpt_bigcode"],
    },
    KernelClass { name: "gemma", runs: "candle's gemma model (f32)", architectures: &["gemma"] },
    KernelClass { name: "olmo2", runs: "candle's olmo2 model (f32)", architectures: &["olmo2"] },
    KernelClass { name: "qwen3", runs: "candle's qwen3 model (f32)", architectures: &["qwen3"] },
    KernelClass {
        name: "qwen3_moe",
        runs: "candle's qwen3 mixture-of-experts model (f32)",
        architectures: &["qwen3_moe"],
    },
    KernelClass {
        name: "deepseek_v2",
        runs: "candle's deepseek-v2 model: multi-head latent attention, mixture of experts (f32)",
        architectures: &["deepseek_v2"],
    },
];

/// The class of `model_type`, if the engine runs it.
pub(crate) fn kernel_class(model_type: &str) -> Option<&'static KernelClass> {
    KERNEL_CLASSES.iter().find(|c| c.architectures.contains(&model_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_the_engine_runs_is_in_exactly_one_class() {
        for (architecture, _) in super::super::arch::ARCHITECTURES {
            let n = KERNEL_CLASSES.iter().filter(|c| c.architectures.contains(architecture)).count();
            assert_eq!(n, 1, "{architecture} is in {n} kernel classes");
        }
        for class in KERNEL_CLASSES {
            for a in class.architectures {
                assert!(
                    super::super::arch::ARCHITECTURES.iter().any(|(name, _)| name == a),
                    "class {} lists {a}, which the engine does not run",
                    class.name
                );
            }
        }
        assert_eq!(kernel_class("mistral").map(|c| c.name), Some("llama"));
        assert_eq!(kernel_class("bert"), None);
    }
}
