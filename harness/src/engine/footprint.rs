//! What a session will hold in memory, estimated from its files before anything is loaded, so a
//! model that cannot fit is ignored with the reason instead of being killed by the kernel, and
//! the session cache can keep the sessions loaded at once within a budget
//! (`QUALIFY_MEMORY_BUDGET`).
//!
//! The estimate follows how the embedded engine holds weights (`engine::candle`):
//!
//! - on the project's kernels (its own models, on CPU) a matrix stays in its stored dtype —
//!   bf16/f16/f32 copied into the kernels' panels (the mapped file's pages given back as they
//!   are copied, so held once), a GGUF tensor at its quantization — and the 1-D tensors (norms,
//!   biases) are f32;
//! - on candle's models every safetensors tensor is widened to f32 (the mapped file is resident
//!   beside them while they load), and a GGUF of an architecture candle has no quantized model of
//!   is dequantized to f32;
//! - an APR file is read whole and every tensor dequantized to f32: both are held while it loads;
//! - the KV cache of one sequence at the context the engine keeps ([`KV_TOKENS`] at most), in f32.
//!
//! Derived formats are estimated from the ground truth's safetensors headers (the file is made
//! later, by the trial that first needs it); a file the model ships is read for its header. An
//! external engine's memory is its own: its footprint here is nothing.

use std::path::Path;

use candle_core::quantized::gguf_file;

use crate::format::hparams::Hyperparameters;
use crate::matrix::{Format, Quantization};

/// The tokens of KV cache a session's estimate includes: one sequence of the model's context,
/// or this many where the context is longer (qualification prompts are short; a trial that
/// fills a long context is the exception the budget's margin absorbs).
pub(crate) const KV_TOKENS: u64 = 4096;

/// A session's estimated memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// The weights as the engine will hold them, with what loading holds besides at its peak
    /// (an APR file's bytes).
    pub weights: u64,
    /// One sequence's KV cache.
    pub cache: u64,
    /// Whether the weights stay as stored (else they are widened to f32).
    pub as_stored: bool,
}

impl Footprint {
    pub const NOTHING: Footprint = Footprint { weights: 0, cache: 0, as_stored: true };

    pub fn bytes(&self) -> u64 {
        self.weights.saturating_add(self.cache)
    }
}

impl std::fmt::Display for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = if self.as_stored { "as stored" } else { "widened to f32" };
        write!(
            f,
            "{} (weights {} {held}, KV cache {})",
            gib(self.bytes()),
            gib(self.weights),
            gib(self.cache)
        )
    }
}

/// `bytes` for messages: in GiB, MiB or KiB, whichever reads best.
pub(crate) fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        b_ if b_ >= 10 << 30 => format!("{:.0} GiB", b / (1u64 << 30) as f64),
        b_ if b_ >= 1 << 30 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        b_ if b_ >= 1 << 20 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        _ => format!("{:.1} KiB", b / 1024.0),
    }
}

/// This process's peak resident set in bytes (Linux's `VmHWM`), where the system says.
pub fn peak_resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The estimated footprint of `model_dir` (its ground truth; empty when there is none here) in
/// `format`, or of `shipped`, the file the model ships for that format.
pub fn estimate(model_dir: &Path, format: Format, shipped: Option<&Path>) -> Result<Footprint, String> {
    if let Some(file) = shipped.filter(|_| matches!(format, Format::Gguf(_))) {
        return gguf_file_footprint(file);
    }
    let truth = GroundTruth::read(model_dir)?;
    if let Some(file) = shipped {
        // A shipped APR: read whole and dequantized, as one made here is.
        let size = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?.len();
        return Ok(Footprint { weights: size + truth.parameters * 4, cache: truth.cache, as_stored: false });
    }
    Ok(truth.footprint(format))
}

/// What the ground truth's files say: its architecture, tensor sizes and KV cache.
struct GroundTruth {
    model_type: String,
    /// Elements of every tensor.
    parameters: u64,
    /// Elements of 2-D tensors (what the kernels hold as stored).
    matrix_parameters: u64,
    /// Bytes of the 2-D tensors as stored.
    matrix_bytes: u64,
    cache: u64,
}

impl GroundTruth {
    fn read(dir: &Path) -> Result<GroundTruth, String> {
        if dir.as_os_str().is_empty() {
            return Err("no ground truth here to estimate from".into());
        }
        let config_path = dir.join("config.json");
        let text = crate::format::files::read_side_file(&config_path).map_err(|e| e.to_string())?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let hyper = Hyperparameters::from_config(&config_path, &config).map_err(|e| e.to_string())?;
        let files = crate::format::files::safetensors_files(dir).map_err(|e| e.to_string())?;
        let (mut parameters, mut matrix_parameters, mut matrix_bytes) = (0u64, 0u64, 0u64);
        for file in &files {
            for entry in
                crate::format::safetensors_header::read_header(file).map_err(|e| e.to_string())?.values()
            {
                let elements = entry.shape.iter().map(|&d| d as u64).product::<u64>();
                parameters += elements;
                if entry.shape.len() == 2 {
                    matrix_parameters += elements;
                    matrix_bytes += elements * entry.dtype.bitsize() as u64 / 8;
                }
            }
        }
        let cache = kv_bytes(hyper.layers, hyper.kv_heads, hyper.head_dim, hyper.context);
        Ok(GroundTruth { model_type: hyper.model_type, parameters, matrix_parameters, matrix_bytes, cache })
    }

    fn own_kernels(&self) -> bool {
        super::arch::OWN_KERNELS.contains(&self.model_type.as_str())
    }

    fn footprint(&self, format: Format) -> Footprint {
        let vectors = (self.parameters - self.matrix_parameters) * 4;
        let widened = Footprint { weights: self.parameters * 4, cache: self.cache, as_stored: false };
        match format {
            Format::Safetensors if self.own_kernels() => {
                Footprint { weights: self.matrix_bytes + vectors, cache: self.cache, as_stored: true }
            }
            Format::Safetensors => Footprint { weights: self.parameters * 4 + self.matrix_bytes, ..widened },
            // Read whole (as f32, the APR writer keeps the ground truth's values) and dequantized.
            Format::Apr => Footprint { weights: self.parameters * 8, ..widened },
            Format::Gguf(q) if self.own_kernels() || candle_quantized(&self.model_type) => {
                let matrices = (self.matrix_parameters as f64 * bits_per_weight(q) / 8.0).ceil() as u64;
                Footprint { weights: matrices + vectors, cache: self.cache, as_stored: true }
            }
            Format::Gguf(_) => widened,
        }
    }
}

/// The architectures whose GGUF candle runs quantized when the project's kernels do not.
fn candle_quantized(model_type: &str) -> bool {
    matches!(model_type, "llama" | "mistral" | "qwen2")
}

/// The average bits a weight of a matrix takes at `q`: each block type's size over its block,
/// and for the `_m` mixes the share of tensors llama.cpp gives more bits (an estimate).
fn bits_per_weight(q: Quantization) -> f64 {
    match q {
        Quantization::F32 => 32.0,
        Quantization::F16 => 16.0,
        Quantization::Q8_0 => 8.5,
        Quantization::Q6K => 6.5625,
        Quantization::Q5KM => 5.75,
        Quantization::Q5_0 => 5.5,
        Quantization::Q4KM => 4.9,
        Quantization::Q4_0 => 4.5,
        Quantization::Q3KM => 3.9,
        Quantization::Q2K => 3.35,
    }
}

/// One sequence's KV cache in f32: keys and values of every layer.
fn kv_bytes(layers: usize, kv_heads: usize, head_dim: usize, context: Option<usize>) -> u64 {
    let tokens = context.map_or(KV_TOKENS, |c| (c as u64).min(KV_TOKENS));
    2 * layers as u64 * kv_heads as u64 * head_dim as u64 * tokens * 4
}

/// A GGUF file's footprint from its header: its tensors as stored where the engine keeps them
/// quantized, else dequantized to f32.
fn gguf_file_footprint(path: &Path) -> Result<Footprint, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut parameters, mut stored) = (0u64, 0u64);
    for info in content.tensor_infos.values() {
        let elements = info.shape.elem_count() as u64;
        parameters += elements;
        let block = info.ggml_dtype.block_size() as u64;
        stored += elements.div_ceil(block) * info.ggml_dtype.type_size() as u64;
    }
    let md = &content.metadata;
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let number =
        |key: &str| md.get(&format!("{arch}.{key}")).and_then(|v| v.to_u64().ok()).map(|n| n as usize);
    let layers = number("block_count").unwrap_or(0);
    let heads = number("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = number("attention.head_count_kv").unwrap_or(heads);
    let head_dim =
        number("attention.key_length").or_else(|| number("embedding_length").map(|e| e / heads)).unwrap_or(0);
    // A deepseek2 file states absorbed MLA (one latent KV head); the float model it runs as
    // caches every head's keys and values.
    let (kv_heads, head_dim) = match number("attention.key_length_mla") {
        Some(key) => (heads, key.max(number("attention.value_length_mla").unwrap_or(key))),
        None => (kv_heads, head_dim),
    };
    let cache = kv_bytes(layers, kv_heads, head_dim, number("context_length"));
    let quantized_here = matches!(arch.as_str(), "llama" | "qwen2")
        || crate::format::gguf::dequantized_model_type(&arch)
            .is_some_and(|m| super::arch::OWN_KERNELS.contains(&m));
    Ok(if quantized_here {
        Footprint { weights: stored, cache, as_stored: true }
    } else {
        Footprint { weights: parameters * 4, cache, as_stored: false }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantized_format_is_estimated_smaller_than_its_ground_truth_and_apr_larger() {
        let truth = GroundTruth {
            model_type: "llama".into(),
            parameters: 1_000_000 + 1_000,
            matrix_parameters: 1_000_000,
            matrix_bytes: 2_000_000,
            cache: 10,
        };
        let bytes = |f| truth.footprint(f).bytes();
        assert_eq!(bytes(Format::Safetensors), 2_000_000 + 4_000 + 10, "bf16 matrices as stored");
        assert_eq!(bytes(Format::Gguf(Quantization::Q8_0)), 1_062_500 + 4_000 + 10);
        assert!(bytes(Format::Gguf(Quantization::Q4KM)) < bytes(Format::Gguf(Quantization::Q8_0)));
        assert_eq!(bytes(Format::Apr), 1_001_000 * 8 + 10, "the file and its f32 tensors");
        let candle = GroundTruth { model_type: "gemma".into(), ..truth };
        assert_eq!(
            candle.footprint(Format::Safetensors).bytes(),
            1_001_000 * 4 + 2_000_000 + 10,
            "widened to f32 beside the mapped file"
        );
        assert!(!candle.footprint(Format::Safetensors).as_stored);
    }

    #[test]
    fn a_shipped_gguf_is_estimated_from_its_header_as_stored_or_dequantized() {
        let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo");
        let q8 = Format::Gguf(Quantization::Q8_0);
        let file = |arch: &str| zoo.join(arch).join("converter-q8_0.gguf");
        let size = |arch: &str| std::fs::metadata(file(arch)).unwrap().len();
        // llama runs its Q8_0 blocks as stored: the weights are the file's tensors, within its size.
        let llama = estimate(Path::new(""), q8, Some(&file("llama"))).unwrap();
        assert!(llama.as_stored && llama.weights > 0 && llama.weights < size("llama"), "{llama:?}");
        assert!(llama.cache > 0);
        // qwen3 is dequantized to f32 on load: four bytes a weight, far past the Q8_0 file.
        let qwen3 = estimate(Path::new(""), q8, Some(&file("qwen3"))).unwrap();
        assert!(
            !qwen3.as_stored && qwen3.weights > 3 * size("qwen3"),
            "{qwen3:?} of a {}-byte file",
            size("qwen3")
        );
        // Without a ground truth, only a shipped GGUF can be estimated.
        assert!(estimate(Path::new(""), Format::Apr, None).is_err());
    }

    #[test]
    fn the_kv_cache_is_one_sequence_at_the_context_or_the_cap() {
        assert_eq!(kv_bytes(2, 4, 8, Some(100)), 2 * 2 * 4 * 8 * 100 * 4);
        assert_eq!(kv_bytes(2, 4, 8, Some(1 << 20)), 2 * 2 * 4 * 8 * KV_TOKENS * 4);
        assert_eq!(kv_bytes(2, 4, 8, None), 2 * 2 * 4 * 8 * KV_TOKENS * 4);
    }
}
