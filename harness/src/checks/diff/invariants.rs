//! The contract invariants I-1 to I-5 of a conversion, checked on files alone: round trip,
//! name bijection, no silent dtype fallback, statistics preserved, tokenizer round trip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::checks::Verdict;
use crate::format::apr;
use crate::format::convert::ConvertError;
use crate::format::files::ModelFilesError;
use crate::format::gguf::{GgufTokenizerError, UnimplementedMix};
use crate::matrix::Format;
use crate::vocab::Invariant;

use super::tensors::{artifact_values, ggml_name, relative_bound, safetensors_values};
use super::{deserialize, read};

/// Why a tensor comparison or an invariant ([`invariant`]) does not pass: the artifact breaks
/// it (what differs), or what it compares cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvariantError {
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
    Files(#[from] ModelFilesError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("converting back failed: {0}")]
    ConvertBack(#[source] ConvertError),
    #[error(transparent)]
    Mix(#[from] UnimplementedMix),
    #[error(transparent)]
    Gguf(#[from] crate::format::gguf::GgufError),
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

/// Checks one invariant of `artifact` (the `format` made from the safetensors directory
/// `source`); `texts` are what the tokenizer round trip encodes besides its own cases.
pub fn invariant(
    inv: Invariant,
    source: &Path,
    artifact: &Path,
    format: Format,
    texts: &[String],
) -> Verdict {
    let result = match inv {
        Invariant::RoundTrip => round_trip(source, artifact, format),
        Invariant::NameBijection => name_bijection(source, artifact, format),
        Invariant::NoSilentDtypeFallback => no_silent_fallback(source, artifact, format),
        Invariant::StatisticsPreserved => statistics(source, artifact),
        Invariant::TokenizerRoundTrip => tokenizer_round_trip(source, artifact, texts),
    };
    match result {
        Ok(reason) => Verdict::pass(reason),
        Err(why) => Verdict::fail(format!("{}: {why}", inv.slug())),
    }
}

/// A tensor as a safetensors file stores it: dtype, shape, bytes.
type Stored = (String, Vec<usize>, Vec<u8>);

/// Every tensor of a safetensors directory as stored.
fn safetensors_raw(dir: &Path) -> Result<BTreeMap<String, Stored>, InvariantError> {
    let mut out = BTreeMap::new();
    for file in crate::format::files::safetensors_files(dir)? {
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
            let (mut want, got) = (safetensors_raw(source)?, safetensors_raw(back.path())?);
            // F16 narrows f32 weights: what comes back is the source rounded to f16 (to nearest,
            // ties to even, as the converter rounds), bit for bit.
            let narrowed = format == Format::Gguf(crate::matrix::Quantization::F16)
                && want
                    .iter()
                    .any(|(k, (dtype, ..))| dtype == "F32" && got.get(k).is_some_and(|g| g.0 == "F16"));
            if narrowed {
                for (name, (dtype, _, bytes)) in want.iter_mut() {
                    if dtype == "F32" && got.get(name).is_some_and(|g| g.0 == "F16") {
                        *dtype = "F16".into();
                        *bytes = bytes
                            .chunks_exact(4)
                            .flat_map(|b| {
                                half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                                    .to_le_bytes()
                            })
                            .collect();
                    }
                }
            }
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
            if narrowed {
                return Ok(format!(
                    "{format} → safetensors gives all {} tensors back bit for bit as the source rounded to f16",
                    want.len()
                ));
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
            let names: Vec<String> =
                dst.keys().map(|name| crate::format::gguf::gguf_name(name).unwrap_or_default()).collect();
            let model = crate::format::gguf::MixModel::from_metadata(
                &file.metadata,
                names.iter().map(String::as_str),
            );
            let mut fallbacks = 0;
            for (name, v) in &dst {
                let g = crate::format::gguf::gguf_name(name).unwrap_or_default();
                let dims: Vec<usize> = v.shape.iter().map(|&d| d as usize).collect();
                let wanted = crate::format::gguf::wanted_type(q, &g, &dims, &model)?;
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

/// The ground truth's tokenizer (`tokenizer.json` of `source`) and the one `artifact` carries.
pub(crate) fn tokenizers(
    source: &Path,
    artifact: &Path,
) -> Result<(tokenizers::Tokenizer, tokenizers::Tokenizer), InvariantError> {
    let path = source.join("tokenizer.json");
    let want = match crate::format::tokenizer_json::read(&path) {
        Ok(t) => t,
        Err(source) => return Err(InvariantError::TokenizerFile { path, source }),
    };
    let got = if artifact.extension().is_some_and(|e| e == "gguf") {
        let (_, content, _) = crate::format::gguf::open(artifact)?;
        crate::format::gguf::tokenizer(&content.metadata)?
    } else {
        let (_, json) = artifact_values(artifact)?;
        let json = json.ok_or(InvariantError::NoTokenizer)?;
        crate::format::tokenizer_json::parse(json.to_string().as_bytes())
            .map_err(InvariantError::Tokenizer)?
    };
    Ok((want, got))
}

/// Whether `got` encodes `text` to `want`'s ids (special tokens added as the model adds them)
/// and decodes those ids to `want`'s text.
pub(crate) fn same_tokens(
    want: &tokenizers::Tokenizer,
    got: &tokenizers::Tokenizer,
    text: &str,
) -> Result<(), InvariantError> {
    let ids = |t: &tokenizers::Tokenizer| {
        t.encode(text, true).map(|e| e.get_ids().to_vec()).map_err(InvariantError::Tokenizer)
    };
    let (a, b) = (ids(want)?, ids(got)?);
    if a != b {
        return Err(InvariantError::EncodesDifferently { text: text.to_string(), got: b, want: a });
    }
    let (da, db) = (
        want.decode(&a, false).map_err(InvariantError::Tokenizer)?,
        got.decode(&b, false).map_err(InvariantError::Tokenizer)?,
    );
    if da != db {
        return Err(InvariantError::DecodesDifferently { ids: a, got: db, want: da });
    }
    Ok(())
}

fn tokenizer_round_trip(source: &Path, artifact: &Path, texts: &[String]) -> Result<String, InvariantError> {
    let (want, got) = tokenizers(source, artifact)?;
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
        same_tokens(&want, &got, text)?;
    }
    Ok(format!("{} texts encode to the same ids and decode to the same text", cases.len()))
}
