//! The type llama.cpp's quantizer gives each tensor of a model in a quantization mix
//! (`llama_tensor_get_type` in its `src/llama-quant.cpp`), so a file this project writes at a
//! mix holds what `llama-quantize` would have written. The writer quantizes every tensor to
//! [`written_type`]; invariant I-3 holds every tensor of a GGUF file to [`wanted_type`] or a
//! listed fallback. This module decides types; it never quantizes.
//!
//! The rules, for the mixes the project writes (`fixtures/zoo/QUANTIZER.json` holds llama.cpp's
//! own answers, and tests/zoo.rs holds these rules to them):
//! - Only tensors of two or more dimensions whose names end in `weight` are quantized, and not
//!   norms, a mixture's router (`ffn_gate_inp`) or learned positions (`position_embd`): they
//!   keep f32.
//! - `output.weight`, and `token_embd.weight` when there is no `output.weight` (tied
//!   embeddings: the table is the head), get Q6_K in every quantized mix but Q8_0 (which stays),
//!   and Q8_0 outright when the mix's own block cannot tile their rows (or for falcon).
//! - `_M` mixes: attn_v (and the fused attn_qkv and latent attn_kv_b, which llama.cpp files
//!   with attn_v) and ffn_down get Q6_K in the layers `use_more_bits` picks: a model's first and
//!   last eighth and every third layer between. attn_v's layer is its rank among such tensors
//!   in llama.cpp's tensor order; ffn_down's is that rank too unless the model has experts, when
//!   it is the layer its name says.
//! - An 80-layer llama or qwen2 with grouped-query attention (llama.cpp's "70B") gives attn_v
//!   Q5_K where the mix would give Q3_K or Q4_K; with exactly 8 experts, attn_v and attn_k get
//!   Q8_0 and, in Q4_K_M, attn_output Q5_K.
//! - A type whose block does not tile a tensor's rows falls back: Q2_K/Q3_K → Q4_0,
//!   Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and to F16 when that does not tile either.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;

use super::UnimplementedMix;
use crate::matrix::Quantization;

/// What llama.cpp's quantizer knows of a model when it picks a tensor's type.
#[derive(Debug, Clone)]
pub struct MixModel {
    arch: String,
    layers: usize,
    experts: usize,
    /// llama.cpp's `LLM_TYPE_70B`: an 80-layer llama (with grouped-query attention) or qwen2.
    seventy_b: bool,
    /// No `output.weight`: the token embedding is the output head too.
    tied: bool,
    /// The attn_v-like tensors and the ffn_down tensors, each in llama.cpp's order.
    attn_v: Vec<String>,
    ffn_down: Vec<String>,
}

/// llama.cpp's broad kinds of tensor, tested in its order (`tensor_get_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    /// attn_v, and what llama.cpp treats as attn_v: the fused attn_qkv and attn_kv_b.
    AttnV,
    AttnK,
    AttnOutput,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if ["attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"].iter().any(|k| name.contains(k)) {
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::Other
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") || name.contains("ffn_gate") {
        Category::Other
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// llama.cpp's tensor order: by the layer a `blk.N.` name states (others first), then by name.
fn llama_cpp_order(a: &str, b: &str) -> std::cmp::Ordering {
    let layer = |n: &str| super::layer_of(n).map_or(-1, |l| l as i64);
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

impl MixModel {
    /// A model of GGUF architecture `arch` whose tensors are `names`.
    pub fn new<'a>(
        arch: &str,
        layers: usize,
        experts: usize,
        heads: usize,
        kv_heads: usize,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut names: Vec<&str> = names.into_iter().collect();
        names.sort_by(|a, b| llama_cpp_order(a, b));
        let of = |c: Category| -> Vec<String> {
            names
                .iter()
                .filter(|n| category(n) == c && allows_quantization(n, 2))
                .map(|n| n.to_string())
                .collect()
        };
        let seventy_b = layers == 80
            && match arch {
                "llama" => heads != kv_heads,
                "qwen2" => true,
                _ => false,
            };
        Self {
            arch: arch.to_string(),
            layers,
            experts,
            seventy_b,
            tied: !names.contains(&"output.weight"),
            attn_v: of(Category::AttnV),
            ffn_down: of(Category::FfnDown),
        }
    }

    /// The model a GGUF file's metadata and tensor names describe.
    pub fn from_metadata<'a>(md: &HashMap<String, Value>, names: impl IntoIterator<Item = &'a str>) -> Self {
        let arch =
            md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let n =
            |key: &str| md.get(&format!("{arch}.{key}")).and_then(|v| v.to_u32().ok()).unwrap_or(0) as usize;
        Self::new(
            &arch,
            n("block_count"),
            n("expert_count"),
            n("attention.head_count"),
            n("attention.head_count_kv"),
            names,
        )
    }

    fn rank(list: &[String], name: &str) -> Option<usize> {
        list.iter().position(|n| n == name)
    }
}

/// `i` of `n` layers gets more bits in the `_M` mixes (llama.cpp's `use_more_bits`).
fn use_more_bits(i: usize, n: usize) -> bool {
    let first = n / 8;
    // `i - first` is evaluated only when `i >= first`.
    i < first || i >= 7 * n / 8 || (i - first) % 3 == 2
}

/// Whether llama.cpp quantizes a tensor at all (`tensor_allows_quantization`); `dims` is how
/// many dimensions it has beyond those of size 1.
fn allows_quantization(name: &str, dims: usize) -> bool {
    dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !name.contains("ssm_conv1d")
        && !name.contains("attn_rel_b.weight")
}

/// The mix's own type (llama.cpp's `default_type` of the ftype).
fn default_type(q: Quantization) -> Result<GgmlDType, UnimplementedMix> {
    Ok(match q {
        Quantization::F32 => GgmlDType::F32,
        Quantization::F16 => GgmlDType::F16,
        Quantization::Q8_0 => GgmlDType::Q8_0,
        Quantization::Q6K => GgmlDType::Q6K,
        Quantization::Q5_0 => GgmlDType::Q5_0,
        Quantization::Q4_0 => GgmlDType::Q4_0,
        Quantization::Q5KM => GgmlDType::Q5K,
        Quantization::Q4KM => GgmlDType::Q4K,
        Quantization::Q3KM | Quantization::Q2K => return Err(UnimplementedMix(q)),
    })
}

fn is_quantized(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The type mix `q` gives tensor `name` (`dims` in the Hugging Face order: rows last) of
/// `model`, before any block fallback; invariant I-3 checks every tensor of a GGUF file against
/// it.
pub fn wanted_type(
    q: Quantization,
    name: &str,
    dims: &[usize],
    model: &MixModel,
) -> Result<GgmlDType, UnimplementedMix> {
    let base = default_type(q)?;
    let real_dims = dims.iter().skip_while(|&&d| d == 1).count();
    if !allows_quantization(name, real_dims) || q == Quantization::F32 {
        return Ok(GgmlDType::F32);
    }
    if !is_quantized(base) {
        return Ok(base);
    }
    let row = dims.last().copied().unwrap_or(1);
    let m = matches!(q, Quantization::Q4KM | Quantization::Q5KM);
    let cat = category(name);
    Ok(match cat {
        Category::Output | Category::TokenEmbd if cat == Category::Output || model.tied => {
            if model.arch == "falcon" || !row.is_multiple_of(base.block_size()) {
                GgmlDType::Q8_0
            } else if base != GgmlDType::Q8_0 {
                GgmlDType::Q6K
            } else {
                base
            }
        }
        Category::AttnV => {
            let i = MixModel::rank(&model.attn_v, name).unwrap_or(0);
            let mut t = if m && use_more_bits(i, model.attn_v.len()) { GgmlDType::Q6K } else { base };
            if model.seventy_b && matches!(t, GgmlDType::Q3K | GgmlDType::Q4K) {
                t = GgmlDType::Q5K;
            }
            if model.experts == 8 { GgmlDType::Q8_0 } else { t }
        }
        Category::AttnK if model.experts == 8 => GgmlDType::Q8_0,
        Category::AttnOutput if model.arch != "falcon" && model.experts == 8 && q == Quantization::Q4KM => {
            GgmlDType::Q5K
        }
        Category::FfnDown if m => {
            let i = if model.experts > 1 {
                super::layer_of(name).unwrap_or(0)
            } else {
                MixModel::rank(&model.ffn_down, name).unwrap_or(0)
            };
            let n = model.layers;
            if q == Quantization::Q4KM && model.arch == "falcon" {
                if i < n / 16 {
                    GgmlDType::Q6K
                } else if use_more_bits(i, n) {
                    GgmlDType::Q5K
                } else {
                    GgmlDType::Q4K
                }
            } else if use_more_bits(i, n) {
                GgmlDType::Q6K
            } else {
                base
            }
        }
        _ => base,
    })
}

/// llama.cpp's type for a wanted type whose block cannot tile rows of `row` values
/// (`tensor_type_fallback`).
pub fn fallback(wanted: GgmlDType, row: usize) -> GgmlDType {
    if row.is_multiple_of(wanted.block_size()) {
        return wanted;
    }
    let next = match wanted {
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    };
    if row.is_multiple_of(next.block_size()) { next } else { GgmlDType::F16 }
}

/// The type a tensor is written in: [`wanted_type`], after llama.cpp's fallback.
pub fn written_type(
    q: Quantization,
    name: &str,
    dims: &[usize],
    model: &MixModel,
) -> Result<GgmlDType, UnimplementedMix> {
    let wanted = wanted_type(q, name, dims, model)?;
    Ok(if is_quantized(wanted) { fallback(wanted, dims.last().copied().unwrap_or(1)) } else { wanted })
}

/// A type's name as GGUF tools print it (`Q4_K`, `F16`).
pub fn type_name(t: GgmlDType) -> String {
    match t {
        GgmlDType::Q2K => "Q2_K".into(),
        GgmlDType::Q3K => "Q3_K".into(),
        GgmlDType::Q4K => "Q4_K".into(),
        GgmlDType::Q5K => "Q5_K".into(),
        GgmlDType::Q6K => "Q6_K".into(),
        GgmlDType::Q8K => "Q8_K".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dense llama of `layers` layers, hidden 256, tied or not.
    fn llama(layers: usize, tied: bool) -> (MixModel, Vec<String>) {
        let mut names = vec!["token_embd.weight".to_string(), "output_norm.weight".to_string()];
        if !tied {
            names.push("output.weight".into());
        }
        for l in 0..layers {
            for t in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
                names.push(format!("blk.{l}.{t}.weight"));
            }
        }
        (MixModel::new("llama", layers, 0, 8, 2, names.iter().map(String::as_str)), names)
    }

    #[test]
    fn the_m_mixes_give_more_bits_where_llama_cpp_does() {
        let (model, _) = llama(24, false);
        let t = |name: &str| written_type(Quantization::Q4KM, name, &[256, 256], &model).unwrap();
        assert_eq!(t("output.weight"), GgmlDType::Q6K);
        assert_eq!(t("token_embd.weight"), GgmlDType::Q4K);
        assert_eq!(t("blk.0.attn_v.weight"), GgmlDType::Q6K);
        assert_eq!(t("blk.4.attn_v.weight"), GgmlDType::Q4K);
        assert_eq!(t("blk.5.ffn_down.weight"), GgmlDType::Q6K); // (5 - 3) % 3 == 2
        assert_eq!(t("blk.23.ffn_down.weight"), GgmlDType::Q6K);
        assert_eq!(t("blk.4.attn_q.weight"), GgmlDType::Q4K);
        assert_eq!(
            written_type(Quantization::Q4KM, "blk.0.attn_norm.weight", &[256], &model).unwrap(),
            GgmlDType::F32
        );
        assert_eq!(fallback(GgmlDType::Q4K, 64), GgmlDType::Q5_0);
        assert_eq!(fallback(GgmlDType::Q6K, 896), GgmlDType::Q8_0);
        assert_eq!(fallback(GgmlDType::Q5K, 96), GgmlDType::Q5_1);
        assert_eq!(fallback(GgmlDType::Q3K, 96), GgmlDType::Q4_0);
        assert_eq!(fallback(GgmlDType::Q4K, 100), GgmlDType::F16);
    }

    /// Tied embeddings: the table gets the head's treatment, Q8_0 where Q6_K cannot tile its
    /// rows (Qwen2.5-0.5B's 896), Q6_K where it can, in every quantized mix but Q8_0 itself.
    #[test]
    fn a_tied_table_is_quantized_as_the_head() {
        let (tied, _) = llama(2, true);
        let (untied, _) = llama(2, false);
        let t = |q, m: &MixModel, row| written_type(q, "token_embd.weight", &[1000, row], m).unwrap();
        assert_eq!(t(Quantization::Q4KM, &tied, 896), GgmlDType::Q8_0);
        assert_eq!(
            wanted_type(Quantization::Q4KM, "token_embd.weight", &[10, 896], &tied).unwrap(),
            GgmlDType::Q8_0
        );
        assert_eq!(t(Quantization::Q4KM, &tied, 512), GgmlDType::Q6K);
        assert_eq!(t(Quantization::Q4_0, &tied, 512), GgmlDType::Q6K);
        assert_eq!(t(Quantization::Q4_0, &tied, 96), GgmlDType::Q8_0);
        assert_eq!(t(Quantization::Q8_0, &tied, 512), GgmlDType::Q8_0);
        assert_eq!(t(Quantization::F16, &tied, 512), GgmlDType::F16);
        assert_eq!(t(Quantization::Q4KM, &untied, 896), GgmlDType::Q5_0);
    }

    /// attn_v counts its own tensors in llama.cpp's order, and 8 experts or a 70B shape change
    /// the answer.
    #[test]
    fn attn_v_follows_its_rank_and_the_models_shape() {
        let names = ["blk.0.attn_qkv.weight", "blk.1.attn_qkv.weight", "output.weight"];
        let m = MixModel::new("phi2", 16, 0, 8, 8, names);
        // 2 attn_v-like tensors: n/8 = 0, 7n/8 = 1, so only the second gets more bits.
        assert_eq!(wanted_type(Quantization::Q5KM, names[0], &[256, 256], &m).unwrap(), GgmlDType::Q5K);
        assert_eq!(wanted_type(Quantization::Q5KM, names[1], &[256, 256], &m).unwrap(), GgmlDType::Q6K);
        let moe = MixModel::new("qwen3moe", 2, 8, 8, 2, ["blk.0.attn_v.weight", "blk.0.attn_k.weight"]);
        for q in [Quantization::Q4_0, Quantization::Q4KM] {
            assert_eq!(wanted_type(q, "blk.0.attn_v.weight", &[256, 256], &moe).unwrap(), GgmlDType::Q8_0);
            assert_eq!(wanted_type(q, "blk.0.attn_k.weight", &[256, 256], &moe).unwrap(), GgmlDType::Q8_0);
        }
        let (llama70, names) = llama(80, false);
        let seventy = MixModel { seventy_b: true, ..llama70 };
        assert!(names.contains(&"blk.20.attn_v.weight".to_string()));
        assert_eq!(
            wanted_type(Quantization::Q4KM, "blk.20.attn_v.weight", &[256, 256], &seventy).unwrap(),
            GgmlDType::Q5K
        );
        assert!(MixModel::new("llama", 80, 0, 64, 8, ["output.weight"]).seventy_b);
        assert!(!MixModel::new("llama", 80, 0, 64, 64, ["output.weight"]).seventy_b);
    }
}
