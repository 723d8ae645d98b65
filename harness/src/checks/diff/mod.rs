//! Differential checks of a derived format against the safetensors ground truth: the tensors
//! themselves, and the next-token distributions they produce. Pure comparisons plus the reading
//! of the two files, and the rendered chat prompts; the trial bodies in `run.rs` supply sessions
//! and prompts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::chat::ChatTemplate;
use crate::engine::EngineError;
use crate::format::apr;
use crate::format::convert::ConvertError;
use crate::format::gguf::{GgufTokenizerError, UnimplementedMix};
use crate::matrix::{Format, Quantization};
use crate::playbook::MessageSpec;
use crate::vocab::{Invariant, Outcome};

/// Why a tensor comparison or an invariant ([`invariant`]) does not pass: the artifact breaks
/// it (what differs), or what it compares cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InvariantError {
    // What the artifact breaks.
    #[error("safetensors is the ground truth, not a derived format")]
    NotDerived,
    #[error("converted back, these tensors differ from the source: {0:?}")]
    TensorsDiffer(Vec<String>),
    #[error("tensor `{name}` is {dtype}")]
    Quantized { name: String, dtype: String },
    #[error("converting the source again gives different bytes")]
    NotReproducible,
    #[error("`{name}` has no GGUF name")]
    NoGgufName { name: String },
    #[error("`{name}` → `{gguf}` does not map back")]
    NameNotInverse { name: String, gguf: String },
    #[error("missing from the artifact {missing:?}, not in the source {extra:?}")]
    NamesDiffer { missing: Vec<String>, extra: Vec<String> },
    #[error(
        "`{name}` is stored as {stored} where {quantization:?} asks for {wanted}, and the file lists no fallback"
    )]
    SilentFallback {
        name: String,
        stored: String,
        quantization: crate::matrix::Quantization,
        wanted: &'static str,
    },
    #[error("`{name}` was {was} and is stored as {stored}")]
    DtypeChanged { name: String, was: String, stored: String },
    #[error("`{name}` is missing")]
    Missing { name: String },
    #[error("`{name}` keeps its dtype {dtype} but its checksum changed")]
    ChecksumChanged { name: String, dtype: String },
    #[error("`{name}` ({from} → {to}): {statistic} {was:.6} became {now:.6}, beyond {bound:.3e}")]
    StatisticMoved {
        name: String,
        from: String,
        to: String,
        statistic: &'static str,
        was: f64,
        now: f64,
        bound: f64,
    },
    #[error("{text:?} encodes to {got:?}, the ground truth's tokenizer gives {want:?}")]
    EncodesDifferently { text: String, got: Vec<u32>, want: Vec<u32> },
    #[error("{ids:?} decodes to {got:?}, the ground truth's tokenizer gives {want:?}")]
    DecodesDifferently { ids: Vec<u32>, got: String, want: String },
    #[error("the artifact carries no tokenizer")]
    NoTokenizer,
    #[error("tensor `{name}`: dtype {dtype} is not compared")]
    UncomparedDtype { name: String, dtype: String },

    // What cannot be read or made.
    #[error("no temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Open(std::io::Error),
    #[error("{path}: {source}")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: {source}")]
    AprFile {
        path: PathBuf,
        #[source]
        source: apr::AprError,
    },
    #[error(transparent)]
    Apr(#[from] apr::AprError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("converting back failed: {0}")]
    ConvertBack(#[source] ConvertError),
    #[error(transparent)]
    Mix(#[from] UnimplementedMix),
    #[error(transparent)]
    Gguf(candle_core::Error),
    #[error("tensor `{name}`: {source}")]
    Tensor {
        name: String,
        #[source]
        source: candle_core::Error,
    },
    #[error(transparent)]
    GgufTokenizer(#[from] GgufTokenizerError),
    #[error("{path}: {source}")]
    TokenizerFile {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    #[error("{0}")]
    Tokenizer(#[source] tokenizers::Error),
}

fn read(path: &Path) -> impl FnOnce(std::io::Error) -> InvariantError + '_ {
    move |source| InvariantError::Read { path: path.to_path_buf(), source }
}

fn deserialize(path: &Path) -> impl FnOnce(safetensors::SafeTensorError) -> InvariantError + '_ {
    move |source| InvariantError::Safetensors { path: path.to_path_buf(), source }
}

/// A differential verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffVerdict {
    pub outcome: Outcome,
    pub reason: String,
}

impl DiffVerdict {
    fn pass(reason: String) -> Self {
        Self { outcome: Outcome::Corroborated, reason }
    }
    fn fail(reason: String) -> Self {
        Self { outcome: Outcome::Falsified, reason }
    }
}

/// Whether a derived format's chat template lays every conversation out exactly as the ground
/// truth's does: the template travels with the weights, and a conversion must not change it.
pub fn chat_prompts(
    reference: Option<&ChatTemplate>,
    derived: Option<&ChatTemplate>,
    conversations: &[(String, Vec<MessageSpec>)],
) -> DiffVerdict {
    let (reference, derived) = match (reference, derived) {
        (None, None) => {
            return DiffVerdict::pass("neither the ground truth nor this format has a chat template".into());
        }
        (Some(_), None) => {
            return DiffVerdict::fail("the ground truth has a chat template; this format lost it".into());
        }
        (None, Some(_)) => {
            return DiffVerdict::fail("this format has a chat template the ground truth lacks".into());
        }
        (Some(r), Some(d)) => (r, d),
    };
    for (name, messages) in conversations {
        let (want, got) = match (reference.render(messages), derived.render(messages)) {
            (Ok(w), Ok(g)) => (w, g),
            (Err(e), _) | (_, Err(e)) => return DiffVerdict::fail(format!("scenario {name}: {e}")),
        };
        if want != got {
            let at = want.chars().zip(got.chars()).take_while(|(a, b)| a == b).count();
            return DiffVerdict::fail(format!(
                "scenario {name}: the rendered prompts differ from character {at}: {:?} here, {:?} in safetensors",
                got.chars().skip(at).take(40).collect::<String>(),
                want.chars().skip(at).take(40).collect::<String>()
            ));
        }
    }
    DiffVerdict::pass(format!(
        "{} conversations render to the same prompt as in safetensors",
        conversations.len()
    ))
}

/// Default gates of a derived format against safetensors (`shared/reference/
/// peers-and-accuracy-anchors.md` §4.4, loosened twofold for models of 3B and below).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitTolerance {
    pub max_mean_kl: f64,
    pub min_top1: f64,
}

impl LogitTolerance {
    pub fn for_format(format: Format) -> LogitTolerance {
        let (kl, top1) = match format {
            Format::Safetensors | Format::Apr => (0.0005, 0.995),
            Format::Gguf(q) => match q {
                Quantization::F32 | Quantization::F16 => (0.0005, 0.995),
                Quantization::Q8_0 => (0.003, 0.97),
                Quantization::Q6K => (0.008, 0.955),
                Quantization::Q5KM | Quantization::Q5_0 => (0.015, 0.94),
                _ => (0.04, 0.91),
            },
        };
        LogitTolerance { max_mean_kl: kl * 2.0, min_top1: 1.0 - (1.0 - top1) * 2.0 }
    }
}

/// One tensor's values as f32 with its shape and stored dtype.
struct Values {
    dtype: String,
    shape: Vec<u64>,
    values: Vec<f32>,
}

fn safetensors_values(dir: &Path) -> Result<BTreeMap<String, Values>, InvariantError> {
    let files = crate::engine::safetensors_files(dir)?;
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

fn artifact_values(artifact: &Path) -> Result<ArtifactValues, InvariantError> {
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

fn ggml_name(t: candle_core::quantized::GgmlDType) -> &'static str {
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
fn relative_bound(dtype: &str, source_dtype: &str) -> f32 {
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
        "Q5_0" | "Q5_1" | "Q5_K" => 0.04,
        "APR Q4" | "Q4_K" => 0.08,
        "Q4_0" | "Q4_1" => 0.08,
        _ => 0.0,
    }
}
/// Tensors of the derived artifact against the safetensors directory: the embedded tokenizer
/// equals `tokenizer.json`; every name on both sides
/// (a tied `lm_head.weight` equal to the embedding may be added), equal shapes (a reversed 2-D
/// shape holding the transposed matrix is named as a transposition), an identical or a lossless
/// dtype unless the format quantizes, and values within the dtype's bound.
pub fn tensors(source: &Path, artifact: &Path) -> DiffVerdict {
    let (src, (dst, tokenizer)) = match (safetensors_values(source), artifact_values(artifact)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return DiffVerdict::fail(e.to_string()),
    };
    // The tokenizer travels with the weights and must come back unchanged.
    let source_tokenizer: Option<serde_json::Value> = std::fs::read_to_string(source.join("tokenizer.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if tokenizer != source_tokenizer {
        return DiffVerdict::fail("the embedded tokenizer differs from the source's tokenizer.json".into());
    }
    let missing: Vec<&String> = src.keys().filter(|k| !dst.contains_key(*k)).collect();
    let extra: Vec<&String> = dst
        .keys()
        .filter(|k| !src.contains_key(*k))
        .filter(|k| !(k.as_str() == "lm_head.weight" && src.contains_key("model.embed_tokens.weight")))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return DiffVerdict::fail(format!(
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
                return DiffVerdict::fail(format!(
                    "tensor `{name}` is transposed: {:?} became {:?}",
                    a.shape, b.shape
                ));
            }
            return DiffVerdict::fail(format!("tensor `{name}`: shape {:?} became {:?}", a.shape, b.shape));
        }
        let max = a.values.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
        let err = a.values.iter().zip(&b.values).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let bound = relative_bound(&b.dtype, &a.dtype) * max;
        if err.is_nan() || err > bound {
            return DiffVerdict::fail(format!(
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
    DiffVerdict::pass(format!(
        "tokenizer identical; {} tensors correspond by name, shape and dtype; {exact} identical; largest relative error {:.2e} (`{}`)",
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

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best })
        .0
}

/// Mean KL(reference ‖ candidate) and top-1 agreement over every position of every prompt.
pub fn logits(
    reference: &[Vec<Vec<f32>>],
    candidate: &[Vec<Vec<f32>>],
    tolerance: LogitTolerance,
) -> DiffVerdict {
    let mut kl_sum = 0.0;
    let mut agree = 0usize;
    let mut n = 0usize;
    for (r, c) in reference.iter().zip(candidate) {
        if r.len() != c.len() {
            return DiffVerdict::fail(format!(
                "{} reference positions, {} from the artifact",
                r.len(),
                c.len()
            ));
        }
        for (rl, cl) in r.iter().zip(c) {
            if rl.len() != cl.len() {
                return DiffVerdict::fail(format!(
                    "vocabulary {} in the reference, {} in the artifact",
                    rl.len(),
                    cl.len()
                ));
            }
            if cl.iter().any(|v| !v.is_finite()) {
                return DiffVerdict::fail("the artifact produced a non-finite logit".into());
            }
            let (p, q) = (softmax(rl), softmax(cl));
            kl_sum += p
                .iter()
                .zip(&q)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, q)| p * (p / q.max(1e-300)).ln())
                .sum::<f64>();
            agree += usize::from(argmax(rl) == argmax(cl));
            n += 1;
        }
    }
    if n == 0 {
        return DiffVerdict::fail("no position to compare: the scenarios give no prompt".into());
    }
    let mean_kl = kl_sum / n as f64;
    let top1 = agree as f64 / n as f64;
    let summary = format!(
        "mean KL divergence {mean_kl:.2e} (≤ {:.1e}), top-1 agreement {:.1}% (≥ {:.1}%) over {n} positions",
        tolerance.max_mean_kl,
        top1 * 100.0,
        tolerance.min_top1 * 100.0
    );
    if mean_kl <= tolerance.max_mean_kl && top1 >= tolerance.min_top1 {
        DiffVerdict::pass(summary)
    } else {
        DiffVerdict::fail(summary)
    }
}

/// Checks one invariant of `artifact` (the `format` made from the safetensors directory
/// `source`); `texts` are what the tokenizer round trip encodes besides its own cases.
pub fn invariant(
    inv: Invariant,
    source: &Path,
    artifact: &Path,
    format: Format,
    texts: &[String],
) -> DiffVerdict {
    let result = match inv {
        Invariant::RoundTrip => round_trip(source, artifact, format),
        Invariant::NameBijection => name_bijection(source, artifact, format),
        Invariant::NoSilentDtypeFallback => no_silent_fallback(source, artifact, format),
        Invariant::StatisticsPreserved => statistics(source, artifact),
        Invariant::TokenizerRoundTrip => tokenizer_round_trip(source, artifact, texts),
    };
    match result {
        Ok(reason) => DiffVerdict::pass(reason),
        Err(why) => DiffVerdict::fail(format!("{}: {why}", inv.slug())),
    }
}

/// A tensor as a safetensors file stores it: dtype, shape, bytes.
type Stored = (String, Vec<usize>, Vec<u8>);

/// Every tensor of a safetensors directory as stored.
fn safetensors_raw(dir: &Path) -> Result<BTreeMap<String, Stored>, InvariantError> {
    let mut out = BTreeMap::new();
    for file in crate::engine::safetensors_files(dir)? {
        let bytes = std::fs::read(&file).map_err(read(&file))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(deserialize(&file))?;
        for (name, view) in st.tensors() {
            out.insert(name, (format!("{:?}", view.dtype()), view.shape().to_vec(), view.data().to_vec()));
        }
    }
    Ok(out)
}

fn round_trip(source: &Path, artifact: &Path, format: Format) -> Result<String, InvariantError> {
    let back = tempfile::tempdir().map_err(InvariantError::TempDir)?;
    let converted = match format {
        Format::Apr => {
            let bytes = std::fs::read(artifact).map_err(read(artifact))?;
            let file = apr::read(&bytes)?;
            crate::format::convert::apr_to_safetensors(&file, back.path())
        }
        Format::Gguf(_) => crate::format::gguf::to_safetensors(artifact, back.path()),
        Format::Safetensors => return Err(InvariantError::NotDerived),
    };
    match converted {
        Ok(()) => {
            let (want, got) = (safetensors_raw(source)?, safetensors_raw(back.path())?);
            if want != got {
                let differ: Vec<String> = want
                    .keys()
                    .chain(got.keys())
                    .filter(|k| want.get(*k) != got.get(*k))
                    .take(5)
                    .cloned()
                    .collect();
                return Err(InvariantError::TensorsDiffer(differ));
            }
            Ok(format!("{format} → safetensors gives all {} tensors back bit for bit", want.len()))
        }
        Err(ConvertError::Dtype { name, dtype, .. }) => {
            // A quantizing format: no silent way back; the conversion itself must be a function.
            let Format::Gguf(q) = format else { return Err(InvariantError::Quantized { name, dtype }) };
            let again = crate::format::gguf::from_safetensors(source, q)?;
            let made = std::fs::read(artifact).map_err(read(artifact))?;
            if again != made {
                return Err(InvariantError::NotReproducible);
            }
            Ok(format!(
                "{format} quantizes (`{name}` is {dtype}), so converting back is refused rather than done silently; converting again gives identical bytes"
            ))
        }
        Err(e) => Err(InvariantError::ConvertBack(e)),
    }
}

fn name_bijection(source: &Path, artifact: &Path, format: Format) -> Result<String, InvariantError> {
    let src = safetensors_raw(source)?;
    if let Format::Gguf(_) = format {
        for name in src.keys() {
            let g = crate::format::gguf::gguf_name(name)
                .ok_or_else(|| InvariantError::NoGgufName { name: name.clone() })?;
            if crate::format::gguf::hf_name(&g).as_deref() != Some(name) {
                return Err(InvariantError::NameNotInverse { name: name.clone(), gguf: g });
            }
        }
    }
    let (dst, _) = artifact_values(artifact)?;
    let tied = |k: &String| k == "lm_head.weight" && src.contains_key("model.embed_tokens.weight");
    let missing: Vec<String> = src.keys().filter(|k| !dst.contains_key(*k)).cloned().collect();
    let extra: Vec<String> = dst.keys().filter(|k| !src.contains_key(*k) && !tied(k)).cloned().collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(InvariantError::NamesDiffer { missing, extra });
    }
    Ok(format!("{} tensor names correspond one to one", src.len()))
}

fn no_silent_fallback(source: &Path, artifact: &Path, format: Format) -> Result<String, InvariantError> {
    let src = safetensors_values(source)?;
    let (dst, _) = artifact_values(artifact)?;
    match format {
        Format::Gguf(q) => {
            let file = crate::format::gguf::dequantize(artifact)?;
            let listed: Vec<String> = file
                .metadata
                .get(crate::format::gguf::FALLBACKS)
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.iter().filter_map(|s| s.to_string().ok().cloned()).collect())
                .unwrap_or_default();
            let layers = dst.keys().filter(|k| k.ends_with("input_layernorm.weight")).count();
            let mut fallbacks = 0;
            for (name, v) in &dst {
                let g = crate::format::gguf::gguf_name(name).unwrap_or_default();
                let dims: Vec<usize> = v.shape.iter().map(|&d| d as usize).collect();
                let wanted = crate::format::gguf::wanted_type(q, &g, &dims, layers)?;
                if ggml_name(wanted) != v.dtype {
                    if !listed.iter().any(|l| l.starts_with(&format!("{g}:"))) {
                        return Err(InvariantError::SilentFallback {
                            name: name.clone(),
                            stored: v.dtype.clone(),
                            quantization: q,
                            wanted: ggml_name(wanted),
                        });
                    }
                    fallbacks += 1;
                }
            }
            Ok(format!(
                "{} tensors in the types {} asks for; {fallbacks} listed fallbacks",
                dst.len(),
                format
            ))
        }
        _ => {
            for (name, v) in &dst {
                if let Some(s) = src.get(name)
                    && s.dtype != v.dtype
                {
                    return Err(InvariantError::DtypeChanged {
                        name: name.clone(),
                        was: s.dtype.clone(),
                        stored: v.dtype.clone(),
                    });
                }
            }
            Ok(format!("{} tensors keep their source dtypes", dst.len()))
        }
    }
}

/// Mean, standard deviation, minimum and maximum.
fn stats(v: &[f32]) -> [f64; 4] {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let min = v.iter().fold(f32::INFINITY, |m, &x| m.min(x)) as f64;
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    [mean, var.sqrt(), min, max]
}

fn statistics(source: &Path, artifact: &Path) -> Result<String, InvariantError> {
    let src = safetensors_values(source)?;
    let (dst, _) = artifact_values(artifact)?;
    let mut checksums = 0;
    for (name, a) in &src {
        let Some(b) = dst.get(name) else { return Err(InvariantError::Missing { name: name.clone() }) };
        if a.dtype == b.dtype {
            let sum = |v: &[f32]| Sha256::digest(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
            if sum(&a.values) != sum(&b.values) {
                return Err(InvariantError::ChecksumChanged { name: name.clone(), dtype: a.dtype.clone() });
            }
            checksums += 1;
            continue;
        }
        let scale = a.values.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE) as f64;
        let bound = relative_bound(&b.dtype, &a.dtype) as f64 * scale;
        let (sa, sb) = (stats(&a.values), stats(&b.values));
        for (what, x, y) in
            [("mean", sa[0], sb[0]), ("std", sa[1], sb[1]), ("min", sa[2], sb[2]), ("max", sa[3], sb[3])]
        {
            if (x - y).abs() > bound || y.is_nan() {
                return Err(InvariantError::StatisticMoved {
                    name: name.clone(),
                    from: a.dtype.clone(),
                    to: b.dtype.clone(),
                    statistic: what,
                    was: x,
                    now: y,
                    bound,
                });
            }
        }
    }
    Ok(format!(
        "{} tensors: {checksums} identical checksums; the others' mean, std, min and max within their dtype's bound",
        src.len()
    ))
}

fn tokenizer_round_trip(source: &Path, artifact: &Path, texts: &[String]) -> Result<String, InvariantError> {
    let path = source.join("tokenizer.json");
    let want = match tokenizers::Tokenizer::from_file(&path) {
        Ok(t) => t,
        Err(source) => return Err(InvariantError::TokenizerFile { path, source }),
    };
    let got = if artifact.extension().is_some_and(|e| e == "gguf") {
        let mut file = std::fs::File::open(artifact).map_err(InvariantError::Open)?;
        let content =
            candle_core::quantized::gguf_file::Content::read(&mut file).map_err(InvariantError::Gguf)?;
        crate::format::gguf::tokenizer(&content.metadata)?
    } else {
        let (_, json) = artifact_values(artifact)?;
        let json = json.ok_or(InvariantError::NoTokenizer)?;
        tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).map_err(InvariantError::Tokenizer)?
    };
    let mut cases: Vec<String> = [
        "",
        " ",
        "Hello, world!",
        "What is 47 + 38?\n",
        "naïve café — 你好 😀",
        "<|im_start|>user\nhi<|im_end|>\n",
        "def add(a, b):\n    return a + b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cases.extend(texts.iter().cloned());
    for text in &cases {
        let ids = |t: &tokenizers::Tokenizer| {
            t.encode(text.as_str(), true).map(|e| e.get_ids().to_vec()).map_err(InvariantError::Tokenizer)
        };
        let (a, b) = (ids(&want)?, ids(&got)?);
        if a != b {
            return Err(InvariantError::EncodesDifferently { text: text.clone(), got: b, want: a });
        }
        let (da, db) = (
            want.decode(&a, false).map_err(InvariantError::Tokenizer)?,
            got.decode(&b, false).map_err(InvariantError::Tokenizer)?,
        );
        if da != db {
            return Err(InvariantError::DecodesDifferently { ids: a, got: db, want: da });
        }
    }
    Ok(format!("{} texts encode to the same ids and decode to the same text", cases.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::from_tokenizer_config(
            &serde_json::json!({"chat_template": source, "eos_token": "</s>"}),
        )
        .expect("a template")
    }

    #[test]
    fn a_chat_template_changed_in_conversion_is_found_and_located() {
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";
        let conversations = vec![(
            "hello".to_string(),
            vec![MessageSpec { role: crate::playbook::spec::Role::User, content: "hi".into() }],
        )];
        let same = chat_prompts(Some(&template(chatml)), Some(&template(chatml)), &conversations);
        assert_eq!(same.outcome, Outcome::Corroborated, "{}", same.reason);
        let stripped = chatml.replace("\n{{ m.content }}", "{{ m.content }}");
        let v = chat_prompts(Some(&template(chatml)), Some(&template(&stripped)), &conversations);
        assert_eq!(v.outcome, Outcome::Falsified);
        assert!(v.reason.contains("scenario hello") && v.reason.contains("character 16"), "{}", v.reason);
        let lost = chat_prompts(Some(&template(chatml)), None, &conversations);
        assert!(lost.reason.contains("lost it"), "{}", lost.reason);
        assert_eq!(chat_prompts(None, None, &conversations).outcome, Outcome::Corroborated);
    }

    #[test]
    fn identical_logits_pass_and_a_flipped_argmax_is_counted() {
        let tol = LogitTolerance::for_format(Format::Apr);
        let r = vec![vec![vec![1.0, 2.0, 3.0], vec![0.0, 5.0, 1.0]]];
        let v = logits(&r, &r, tol);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
        assert!(v.reason.contains("top-1 agreement 100.0%"), "{}", v.reason);
        let c = vec![vec![vec![3.0, 2.0, 1.0], vec![0.0, 5.0, 1.0]]];
        let v = logits(&r, &c, tol);
        assert_eq!(v.outcome, Outcome::Falsified);
        assert!(v.reason.contains("top-1 agreement 50.0%"), "{}", v.reason);
    }

    #[test]
    fn transposition_is_recognised() {
        assert!(is_transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0], 2, 3));
        assert!(!is_transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3));
    }
}
