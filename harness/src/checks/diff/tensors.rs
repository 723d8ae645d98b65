//! The derived artifact's tensors against the safetensors ground truth: reading both sides as
//! f32 values, the error bound each dtype may add, and the comparison by name, shape and value.

use std::collections::BTreeMap;
use std::path::Path;

use crate::checks::Verdict;
use crate::format::apr;

use super::{InvariantError, deserialize, read};

/// One tensor's values as f32 with its shape and stored dtype.
pub(super) struct Values {
    pub(super) dtype: String,
    pub(super) shape: Vec<u64>,
    pub(super) values: Vec<f32>,
}

pub(super) fn safetensors_values(dir: &Path) -> Result<BTreeMap<String, Values>, InvariantError> {
    let files = crate::format::files::safetensors_files(dir)?;
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(read(&file))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(deserialize(&file))?;
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => {
                    data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                }
                safetensors::Dtype::F16 => {
                    data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                }
                safetensors::Dtype::BF16 => {
                    data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                }
                other => {
                    return Err(InvariantError::UncomparedDtype { name, dtype: format!("{other:?}") });
                }
            };
            let dtype = format!("{:?}", view.dtype()).to_uppercase();
            out.insert(
                name,
                Values { dtype, shape: view.shape().iter().map(|&d| d as u64).collect(), values },
            );
        }
    }
    Ok(out)
}

/// The artifact's tensors, and the tokenizer it embeds.
/// An artifact's tensors by name, and the tokenizer it embeds.
type ArtifactValues = (BTreeMap<String, Values>, Option<serde_json::Value>);

pub(super) fn artifact_values(artifact: &Path) -> Result<ArtifactValues, InvariantError> {
    if artifact.extension().is_some_and(|e| e == "gguf") {
        return gguf_values(artifact);
    }
    let bytes = std::fs::read(artifact).map_err(read(artifact))?;
    let file = apr::read(&bytes)
        .map_err(|source| InvariantError::AprFile { path: artifact.to_path_buf(), source })?;
    let mut out = BTreeMap::new();
    for t in &file.tensors {
        let values = apr::dequantize(t)?;
        out.insert(
            t.name.clone(),
            Values { dtype: t.dtype.name().to_string(), shape: t.shape.clone(), values },
        );
    }
    Ok((out, file.metadata.get(crate::format::convert::HF_TOKENIZER).cloned()))
}

/// A GGUF file's tensors under their Hugging Face names, dequantized and un-permuted.
fn gguf_values(artifact: &Path) -> Result<ArtifactValues, InvariantError> {
    let file = crate::format::gguf::dequantize(artifact)?;
    let mut out = BTreeMap::new();
    for (name, (t, dtype)) in file.tensors {
        let shape = t.dims().iter().map(|&d| d as u64).collect();
        let values = match t.flatten_all().and_then(|t| t.to_vec1::<f32>()) {
            Ok(v) => v,
            Err(source) => return Err(InvariantError::Tensor { name, source }),
        };
        out.insert(name, Values { dtype: ggml_name(dtype).to_string(), shape, values });
    }
    let tokenizer = file
        .metadata
        .get(crate::format::gguf::HF_TOKENIZER_JSON)
        .and_then(|v| v.to_string().ok())
        .and_then(|t| serde_json::from_str(t).ok());
    Ok((out, tokenizer))
}

pub(super) fn ggml_name(t: candle_core::quantized::GgmlDType) -> &'static str {
    use candle_core::quantized::GgmlDType as G;
    match t {
        G::F32 => "F32",
        G::F16 => "F16",
        G::BF16 => "BF16",
        G::Q4_0 => "Q4_0",
        G::Q4_1 => "Q4_1",
        G::Q5_0 => "Q5_0",
        G::Q5_1 => "Q5_1",
        G::Q8_0 => "Q8_0",
        G::Q8_1 => "Q8_1",
        G::Q2K => "Q2_K",
        G::Q3K => "Q3_K",
        G::Q4K => "Q4_K",
        G::Q5K => "Q5_K",
        G::Q6K => "Q6_K",
        G::Q8K => "Q8_K",
    }
}

/// The largest error a dtype may add, as a share of the tensor's largest magnitude.
pub(super) fn relative_bound(dtype: &str, source_dtype: &str) -> f32 {
    if dtype == source_dtype {
        return 0.0;
    }
    // Names as `AprDType::name` spells them; widening to F32 must be exact.
    match dtype {
        "F16" => 1e-3,
        "BF16" => 8e-3,
        "APR Q8" => 0.5 / 127.0 * 1.01,
        // Block scales are f16, hence the margin over half a step.
        "Q8_0" => 0.5 / 127.0 * 1.05,
        "Q6_K" => 0.02,
        "Q5_1" | "Q5_K" => 0.04,
        "APR Q4" | "Q4_K" => 0.08,
        "Q4_1" => 0.08,
        // The symmetric types scale a block by its signed extreme over the lowest step (−8,
        // −16), so a value of the other sign at the extreme's magnitude rounds to the step past
        // the highest and is clipped: a whole step of error, 1/8 (1/16) of the block's largest
        // magnitude, with the f16 scale's margin. Measured on qa-tiny's lm_head: Q4_0 0.085,
        // Q5_0 0.042 of the tensor's largest magnitude.
        "Q4_0" => 1.0 / 8.0 * 1.01,
        "Q5_0" => 1.0 / 16.0 * 1.01,
        _ => 0.0,
    }
}
/// Tensors of the derived artifact against the safetensors directory: the embedded tokenizer
/// equals `tokenizer.json`; every name on both sides
/// (a tied `lm_head.weight` equal to the embedding may be added), equal shapes (a reversed 2-D
/// shape holding the transposed matrix is named as a transposition), an identical or a lossless
/// dtype unless the format quantizes, and values within the dtype's bound.
pub fn tensors(source: &Path, artifact: &Path) -> Verdict {
    let (src, (dst, tokenizer)) = match (safetensors_values(source), artifact_values(artifact)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Verdict::fail(e.to_string()),
    };
    // The tokenizer travels with the weights and must come back unchanged.
    let source_tokenizer: Option<serde_json::Value> = std::fs::read_to_string(source.join("tokenizer.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if tokenizer != source_tokenizer {
        return Verdict::fail("the embedded tokenizer differs from the source's tokenizer.json");
    }
    let missing: Vec<&String> = src.keys().filter(|k| !dst.contains_key(*k)).collect();
    let extra: Vec<&String> = dst
        .keys()
        .filter(|k| !src.contains_key(*k))
        .filter(|k| !(k.as_str() == "lm_head.weight" && src.contains_key("model.embed_tokens.weight")))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Verdict::fail(format!(
            "tensor names differ: missing from the artifact {missing:?}, not in the source {extra:?}"
        ));
    }
    let mut worst = (0f32, String::new());
    let mut exact = 0;
    for (name, a) in &src {
        let b = &dst[name];
        if a.shape != b.shape {
            let reversed: Vec<u64> = a.shape.iter().rev().copied().collect();
            if a.shape.len() == 2
                && b.shape == reversed
                && is_transpose(&a.values, &b.values, a.shape[0], a.shape[1])
            {
                return Verdict::fail(format!(
                    "tensor `{name}` is transposed: {:?} became {:?}",
                    a.shape, b.shape
                ));
            }
            return Verdict::fail(format!("tensor `{name}`: shape {:?} became {:?}", a.shape, b.shape));
        }
        let max = a.values.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
        let err = a.values.iter().zip(&b.values).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let bound = relative_bound(&b.dtype, &a.dtype) * max;
        if err.is_nan() || err > bound {
            return Verdict::fail(format!(
                "tensor `{name}` ({} → {}): largest error {err:.3e} exceeds the bound {bound:.3e}",
                a.dtype, b.dtype
            ));
        }
        if err == 0.0 {
            exact += 1;
        }
        if err / max >= worst.0 {
            worst = (err / max, name.clone());
        }
    }
    Verdict::pass(format!(
        "tokenizer identical; {} tensors correspond by name, shape and dtype; {exact} identical; largest relative error {:.2e} (`{}`); \
         each tensor's bound is its stored type's rounding error times its largest magnitude, and one tensor past it fails",
        src.len(),
        worst.0,
        worst.1
    ))
}

fn is_transpose(a: &[f32], b: &[f32], rows: u64, cols: u64) -> bool {
    let (rows, cols) = (rows as usize, cols as usize);
    a.len() == rows * cols
        && b.len() == a.len()
        && (0..rows).all(|r| (0..cols).all(|c| a[r * cols + c] == b[c * rows + r]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposition_is_recognised() {
        assert!(is_transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0], 2, 3));
        assert!(!is_transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3));
    }
}
