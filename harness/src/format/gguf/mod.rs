//! GGUF, read and written with `candle_core::quantized::gguf_file`: a Hugging Face safetensors
//! directory as a GGUF file at a quantization people deploy, and a GGUF file (ours or one made
//! by llama.cpp's converter) back to named f32 tensors in the Hugging Face layout.
//!
//! Names follow llama.cpp (`blk.N.attn_q.weight`, …). For the llama convention (llama and
//! mistral, both written as GGUF architecture `llama`, and granite) the q and k projections are
//! permuted as llama.cpp's converter does, so interleaved rotary embeddings compute what the
//! Hugging Face model computes; the others keep their layout (their rotary embedding is the
//! NeoX one). gpt_bigcode is llama.cpp's `starcoder`, its GPT-2 names mapped by their own table
//! and its fused `c_attn` kept as `attn_qkv`; a mixture's experts are stacked, one tensor per
//! layer and projection (`ffn_gate_exps`, …), as llama.cpp stores them. deepseek2, phi3,
//! falcon and the gemmas have their own names and transforms (`layouts.rs`: deepseek2's
//! `kv_b_proj` split for absorbed MLA, gemma's norms stored as `1 + w`), written as their
//! converter writes them and undone on reading.
//!
//! Quantization mixes follow llama.cpp's `llama_tensor_get_type` (`mix.rs`, which lists the
//! rules): a tensor whose rows a block cannot tile falls back as llama.cpp falls back, and every
//! fallback is listed in the file's `modelqa.fallbacks` metadata: nothing changes type silently.
//!
//! Writing is in `write.rs` (each architecture's keys in `keys.rs`, the tokenizer's metadata in
//! `vocab.rs`, its pre-tokenizer's name from `pre.rs`, rope scaling both ways in `rope.rs`), the mixes in `mix.rs`, reading in `read.rs`, the pre-pass in `check.rs`, and
//! what a file claims against the model's own files in `agree.rs`; this file holds the metadata
//! keys, the errors and the mapping between Hugging Face and GGUF names.

use std::path::Path;

use super::convert::ConvertError;
use crate::matrix::Quantization;

mod agree;
mod check;
mod keys;
mod layouts;
mod mix;
mod pre;
mod read;
mod rope;
mod vocab;
mod write;

pub(crate) use agree::{FileFacts, against_config, against_expectations, against_quantization};
pub(crate) use check::{GgufError, beyond_candles_quantized, check_model, open, read};

pub use mix::{MixModel, fallback, type_name, wanted_type, written_type};
pub use pre::{PreTokenizerError, pre_tokenizer_names};
pub(crate) use read::dequantized_shape_problems;
pub use read::{
    Dequantized, ROPE_FACTORS, Stored, StoredMatrix, dequantize, dequantized_config, hf_files, read_stored,
    to_apr, to_safetensors, tokenizer,
};
pub use rope::{ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT, longrope};
pub use write::{from_safetensors, permute_qk};

/// Metadata key of the whole `tokenizer.json`, as llama.cpp's converter may write it.
pub const HF_TOKENIZER_JSON: &str = "tokenizer.huggingface.json";
/// Metadata keys under which a GGUF file written here keeps the Hugging Face files verbatim, so
/// a conversion back gives them unchanged (other GGUF files get them rebuilt from metadata).
pub const HF_CONFIG: &str = "modelqa.hf.config";
pub const HF_TOKENIZER_CONFIG: &str = "modelqa.hf.tokenizer_config";
pub const HF_GENERATION_CONFIG: &str = "modelqa.hf.generation_config";
/// Metadata key listing the tensors that fell back to another type, `name: wanted → written`.
pub const FALLBACKS: &str = "modelqa.fallbacks";

/// A quantization whose llama.cpp mix this project does not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {} mix is not implemented", .0.as_str())]
pub struct UnimplementedMix(pub Quantization);

/// Why the tokenizer (or the Hugging Face files) of a GGUF file cannot be built from its metadata.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    #[error("the embedded {HF_TOKENIZER_JSON}: {0}")]
    Embedded(#[source] tokenizers::Error),
    #[error(
        "tokenizer model `{0}` in the GGUF metadata is not supported (gpt2 BPE, llama SentencePiece, or an embedded {HF_TOKENIZER_JSON})"
    )]
    UnsupportedModel(String),
    #[error("no {0}")]
    MissingKey(String),
    /// A `tokenizer.ggml.pre` whose split regex this reader does not know.
    #[error(
        "pre-tokenizer `{0}` (tokenizer.ggml.pre) is not supported (known: {known})",
        known = pre::known_names()
    )]
    UnsupportedPre(String),
    /// The BOS/EOS template does not build.
    #[error("the BOS/EOS template: {0}")]
    Template(String),
    /// A value of a string list is not a string.
    #[error("{key}: {source}")]
    NotAString {
        key: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("the GGUF BPE vocabulary: {0}")]
    Vocabulary(#[source] tokenizers::Error),
    #[error("the GGUF control tokens: {0}")]
    ControlTokens(#[source] tokenizers::Error),
    /// The tokenizer does not serialise as `tokenizer.json`.
    #[error("the tokenizer: {0}")]
    Serialize(#[source] tokenizers::Error),
    /// The serialised tokenizer does not parse back as JSON.
    #[error("the tokenizer: {0}")]
    Json(#[source] serde_json::Error),
}

fn err(path: &Path, cause: impl std::fmt::Display) -> ConvertError {
    ConvertError::Read { path: path.to_path_buf(), cause: cause.to_string() }
}

/// The GGUF architectures the engine runs and how, as an error refusing another one says it.
pub(crate) const SUPPORTED_ARCHITECTURES: &str = "llama, qwen2, granite, stablelm, starcoder2, phi3, gemma2, gemma3, falcon (multi-query) with their matrices as stored; qwen3, qwen3moe, olmo2, starcoder, deepseek2, gemma dequantized to f32";

/// The Hugging Face `model_type` of a GGUF architecture that the engine runs by dequantizing
/// the file into its float model (candle has no quantized model of it), with what the model's
/// config needs beyond the common keys. Only architectures whose every tensor name maps back
/// ([`hf_name`], or `layouts`' for deepseek2, phi3 and the gemmas, whose converter's transforms
/// reading undoes) and whose q/k rows llama.cpp does not permute are here.
pub fn dequantized_model_type(arch: &str) -> Option<&'static str> {
    match arch {
        "qwen3" => Some("qwen3"),
        "olmo2" => Some("olmo2"),
        "granite" => Some("granite"),
        "stablelm" => Some("stablelm"),
        "starcoder2" => Some("starcoder2"),
        "qwen3moe" => Some("qwen3_moe"),
        "starcoder" => Some("gpt_bigcode"),
        "deepseek2" => Some("deepseek_v2"),
        "phi3" => Some("phi3"),
        "falcon" => Some("falcon"),
        "gemma" => Some("gemma"),
        "gemma2" => Some("gemma2"),
        "gemma3" => Some("gemma3_text"),
        _ => None,
    }
}

/// Whether llama.cpp's converter permutes q/k rows of a GGUF architecture (the llama
/// convention: interleaved rotary), which reading back undoes.
pub fn permutes_qk(arch: &str) -> bool {
    matches!(arch, "llama" | "granite")
}

/// The Hugging Face `model_type`s the writer converts, as an error refusing another one says it.
pub(crate) const WRITTEN_MODEL_TYPES: &str = "llama, mistral, qwen2, qwen3, qwen3_moe, olmo2, granite, stablelm, starcoder2, gpt_bigcode, deepseek_v2, falcon, gemma, gemma2, gemma3_text and phi3";

/// The GGUF architecture of a Hugging Face `model_type` the writer converts, and whether q/k
/// are permuted.
pub fn architecture(model_type: &str) -> Option<(&'static str, bool)> {
    match model_type {
        "llama" | "mistral" => Some(("llama", true)),
        "granite" => Some(("granite", true)),
        "qwen2" => Some(("qwen2", false)),
        "qwen3" => Some(("qwen3", false)),
        "qwen3_moe" => Some(("qwen3moe", false)),
        "olmo2" => Some(("olmo2", false)),
        "stablelm" => Some(("stablelm", false)),
        "starcoder2" => Some(("starcoder2", false)),
        "gpt_bigcode" => Some(("starcoder", false)),
        "deepseek_v2" => Some(("deepseek2", false)),
        "falcon" => Some(("falcon", false)),
        "gemma" => Some(("gemma", false)),
        "gemma2" => Some(("gemma2", false)),
        "gemma3_text" => Some(("gemma3", false)),
        "phi3" => Some(("phi3", false)),
        _ => None,
    }
}

const LAYER_NAMES: [(&str, &str); 22] = [
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    // olmo2's norms after attention and after the MLP (its only ones): after the pairs above, so
    // `gguf_name` keeps `ffn_norm` for the llama convention's post_attention_layernorm.
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
    // Layer norms' biases and MLP biases (stablelm, starcoder2).
    ("input_layernorm.bias", "attn_norm.bias"),
    ("post_attention_layernorm.bias", "ffn_norm.bias"),
    ("mlp.up_proj.bias", "ffn_up.bias"),
    ("mlp.down_proj.bias", "ffn_down.bias"),
    // A mixture of experts' router (qwen3_moe).
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
];

const GLOBAL_NAMES: [(&str, &str); 4] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("model.norm.bias", "output_norm.bias"),
    ("lm_head.weight", "output.weight"),
];

/// The GGUF name the writer gives a Hugging Face tensor of GGUF architecture `arch` (experts
/// aside: they are stacked first). Where an architecture's names part from the shared table:
/// olmo2's norm after attention is its own (it has no pre-norms), starcoder2's MLP keeps GPT-2's
/// names, and `starcoder` (gpt_bigcode) is GPT-2 throughout; `layouts`' architectures
/// (deepseek2, phi3, the gemmas, falcon) have their own names first.
pub fn written_name(arch: &str, hf: &str) -> Option<String> {
    if let Some(name) = layouts::written_name(arch, hf) {
        return Some(name);
    }
    match arch {
        "falcon" => None,
        "starcoder" => starcoder_name(hf),
        "olmo2" if hf.ends_with(".post_attention_layernorm.weight") => {
            gguf_name(hf).map(|g| g.replace(".ffn_norm.", ".post_attention_norm."))
        }
        "starcoder2" => {
            gguf_name(&hf.replace(".mlp.c_fc.", ".mlp.up_proj.").replace(".mlp.c_proj.", ".mlp.down_proj."))
        }
        _ => gguf_name(hf),
    }
}

/// gpt_bigcode's GPT-2 names and llama.cpp's `starcoder` names: the model's own, then each
/// layer's (without `transformer.h.N.` and `.weight`/`.bias`).
const GPT2_GLOBAL_NAMES: [(&str, &str); 5] = [
    ("transformer.wte.weight", "token_embd.weight"),
    ("transformer.wpe.weight", "position_embd.weight"),
    ("transformer.ln_f.weight", "output_norm.weight"),
    ("transformer.ln_f.bias", "output_norm.bias"),
    ("lm_head.weight", "output.weight"),
];
const GPT2_LAYER_NAMES: [(&str, &str); 6] = [
    ("attn.c_attn", "attn_qkv"),
    ("attn.c_proj", "attn_output"),
    ("ln_1", "attn_norm"),
    ("ln_2", "ffn_norm"),
    ("mlp.c_fc", "ffn_up"),
    ("mlp.c_proj", "ffn_down"),
];

/// The llama.cpp `starcoder` name of a gpt_bigcode tensor.
fn starcoder_name(hf: &str) -> Option<String> {
    through_tables(hf, &GPT2_GLOBAL_NAMES, &GPT2_LAYER_NAMES, ("transformer.h.", "blk."), true)
}

/// The Hugging Face (GPT-2 style) name of a tensor of llama.cpp's `starcoder` architecture,
/// which its converter writes for `gpt_bigcode`.
fn gpt_bigcode_name(gguf: &str) -> Option<String> {
    through_tables(gguf, &GPT2_GLOBAL_NAMES, &GPT2_LAYER_NAMES, ("blk.", "transformer.h."), false)
}

/// `name` through a table of whole names and one of layer stems, each of pairs: a layer's
/// `<from>{layer}.{stem}.{kind}` becomes `<to>{layer}.{stem'}.{kind}` (`prefixes` is `(from,
/// to)`). `forward` reads each pair left to right, else right to left.
pub(super) fn through_tables<'a>(
    name: &str,
    whole: &[(&'a str, &'a str)],
    stems: &[(&'a str, &'a str)],
    (from, to): (&str, &str),
    forward: bool,
) -> Option<String> {
    let oriented = |&(a, b): &(&'a str, &'a str)| if forward { (a, b) } else { (b, a) };
    if let Some((_, out)) = whole.iter().map(oriented).find(|(key, _)| *key == name) {
        return Some(out.to_string());
    }
    let (layer, rest) = name.strip_prefix(from)?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (stem, kind) = rest.rsplit_once('.')?;
    let (_, out) = stems.iter().map(oriented).find(|(key, _)| *key == stem)?;
    Some(format!("{to}{layer}.{out}.{kind}"))
}

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (_, g) = LAYER_NAMES.iter().find(|(h, _)| *h == rest)?;
    Some(format!("blk.{layer}.{g}"))
}

/// The Hugging Face name of a GGUF tensor name.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (h, _) = LAYER_NAMES.iter().find(|(_, g)| *g == rest)?;
    Some(format!("model.layers.{layer}.{h}"))
}

fn layer_of(gguf: &str) -> Option<usize> {
    gguf.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.11.self_attn.k_proj.bias",
            "model.layers.0.mlp.down_proj.weight",
        ] {
            let g = gguf_name(hf).unwrap();
            assert_eq!(hf_name(&g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(gguf_name("model.layers.3.mlp.gate_proj.weight").unwrap(), "blk.3.ffn_gate.weight");
        assert!(gguf_name("model.layers.x.mlp.up_proj.weight").is_none());
        assert!(gguf_name("vision.patch_embed.weight").is_none());
    }

    /// The names that part from the shared table, written and read back.
    #[test]
    fn architecture_names_map_both_ways() {
        for (arch, hf, gguf) in [
            ("starcoder", "transformer.h.1.attn.c_attn.weight", "blk.1.attn_qkv.weight"),
            ("starcoder", "transformer.h.0.mlp.c_proj.bias", "blk.0.ffn_down.bias"),
            ("starcoder", "transformer.wpe.weight", "position_embd.weight"),
            ("starcoder", "transformer.ln_f.bias", "output_norm.bias"),
            ("olmo2", "model.layers.2.post_attention_layernorm.weight", "blk.2.post_attention_norm.weight"),
            ("olmo2", "model.layers.2.post_feedforward_layernorm.weight", "blk.2.post_ffw_norm.weight"),
            ("starcoder2", "model.layers.0.mlp.c_fc.weight", "blk.0.ffn_up.weight"),
            ("starcoder2", "model.layers.0.mlp.c_proj.bias", "blk.0.ffn_down.bias"),
            ("llama", "model.layers.2.post_attention_layernorm.weight", "blk.2.ffn_norm.weight"),
        ] {
            assert_eq!(written_name(arch, hf).as_deref(), Some(gguf), "{arch} {hf}");
        }
        assert_eq!(
            gpt_bigcode_name("blk.1.attn_qkv.weight").as_deref(),
            Some("transformer.h.1.attn.c_attn.weight")
        );
        assert!(written_name("starcoder", "model.layers.0.mlp.up_proj.weight").is_none());
    }
}
