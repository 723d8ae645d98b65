//! The files `bench engine` runs that this project makes: the random Qwen2.5-0.5B-shaped model
//! (tied embeddings, as the real one), its bf16 copy, and this project's conversions of it; and
//! how many weight bytes a decode step reads from any of them, llama.cpp's included.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use modelqa::support::matrix::{Format, Quantization};
use modelqa::support::testmodel::{TestArchitecture, TestModelShape, write_test_model};

use super::table::{BenchFile, Maker, Peer};

/// Qwen2.5-0.5B's shape with `layers` decoder layers: 494 M parameters at 24.
pub fn shape(layers: usize) -> TestModelShape {
    TestModelShape {
        hidden: 896,
        intermediate: 4864,
        layers,
        heads: 14,
        kv_heads: 2,
        vocab: 151_936,
        context: 4096,
        tied: true,
    }
}

/// The model directory of `layers` layers under `root`, written on first use and kept.
pub fn model(root: &Path, layers: usize) -> anyhow::Result<PathBuf> {
    let dir = root.join(format!("qwen2.5-0.5b-tied-{layers}"));
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "writing a random qwen2 model shaped like Qwen2.5-0.5B ({layers} layers, tied) to {}…",
            dir.display()
        );
        let started = Instant::now();
        // Written aside and renamed, so an interrupted write is never taken for the model.
        let partial = root.join(format!("qwen2.5-0.5b-tied-{layers}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        write_test_model(&partial, TestArchitecture::Qwen2, shape(layers), 7)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir)
            .with_context(|| format!("failed to move the model to {}", dir.display()))?;
        eprintln!("  written in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(dir)
}

/// The bf16 copy of `model` beside it, made on first use and kept.
pub fn bf16_copy(model: &Path) -> anyhow::Result<PathBuf> {
    let dir = model.with_file_name(format!(
        "{}-bf16",
        model.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    eprintln!("writing its bf16 copy to {}…", dir.display());
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let tensors = candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu)?;
    let bf16 = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(candle_core::DType::BF16)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    candle_core::safetensors::save(&bf16, partial.join("model.safetensors"))?;
    let config = std::fs::read_to_string(model.join("config.json"))?;
    std::fs::write(partial.join("config.json"), config.replace("\"float32\"", "\"bfloat16\""))?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model.join(f), partial.join(f))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir)?;
    Ok(dir)
}

/// A file of the benchmark, its size and weight bytes read from it.
pub fn bench_file(maker: Maker, format: &str, peer: Peer, path: PathBuf) -> anyhow::Result<BenchFile> {
    let (size, read_per_token) = if path.is_dir() {
        let files = modelqa::support::engine::safetensors_files(&path)?;
        let size = files.iter().map(|f| f.metadata().map_or(0, |m| m.len())).sum();
        let mut tensors = Vec::new();
        for f in &files {
            tensors.extend(safetensors_tensors(f)?);
        }
        (size, read_per_token(&tensors, "model.embed_tokens.weight", "lm_head.weight"))
    } else if path.extension().is_some_and(|e| e == "gguf") {
        (path.metadata()?.len(), read_per_token(&gguf_tensors(&path)?, "token_embd.weight", "output.weight"))
    } else {
        // APR holds the safetensors' tensors as they are, after a small header.
        let size = path.metadata()?.len();
        (size, size)
    };
    Ok(BenchFile { maker, format: format.into(), peer, path, size, read_per_token })
}

/// Every tensor's bytes, except the embedding table's where a separate head is read instead.
fn read_per_token(tensors: &[(String, u64)], embedding: &str, head: &str) -> u64 {
    let untied = tensors.iter().any(|(n, _)| n == head);
    tensors.iter().filter(|(n, _)| !(untied && n == embedding)).map(|(_, b)| b).sum()
}

/// Names and byte sizes of a safetensors file's tensors, from its header.
fn safetensors_tensors(path: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let mut header = vec![0u8; usize::try_from(u64::from_le_bytes(len))?];
    f.read_exact(&mut header)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)?;
    Ok(header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            let (start, end) = (v["data_offsets"][0].as_u64(), v["data_offsets"][1].as_u64());
            let span = end.unwrap_or(0).saturating_sub(start.unwrap_or(0));
            (name, span)
        })
        .collect())
}

/// Names and byte sizes of a GGUF file's tensors, from its header.
fn gguf_tensors(path: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut f = std::fs::File::open(path)?;
    let content =
        gguf_file::Content::read(&mut f).with_context(|| format!("failed to read {}", path.display()))?;
    Ok(content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let elements = info.shape.elem_count();
            let bytes = elements / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            (name.clone(), bytes as u64)
        })
        .collect())
}

/// This project's conversion of `model` to `format` under `cache` (made once, by content).
pub fn ours(model: &Path, format: Format, cache: &Path) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let path = modelqa::support::format::convert::artifact(model, format, cache)
        .with_context(|| format!("failed to convert to {format}"))?;
    eprintln!("  {format}: {} ({:.1} s)", path.display(), started.elapsed().as_secs_f64());
    Ok(path)
}

/// The table's name of one of this project's GGUF types, and the llama.cpp format it faces.
pub fn gguf_label(q: Quantization) -> (&'static str, Peer) {
    match q {
        Quantization::F16 => ("GGUF F16", Peer::F16),
        Quantization::Q8_0 => ("GGUF Q8_0", Peer::Q8_0),
        Quantization::Q4KM => ("GGUF Q4_K_M", Peer::Q4KM),
        _ => ("GGUF F32", Peer::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tied_table_is_read_once_as_the_head_and_an_untied_one_not_at_all() {
        let tied = [("emb".to_string(), 100), ("layer".to_string(), 10)];
        assert_eq!(read_per_token(&tied, "emb", "head"), 110);
        let untied = [("emb".to_string(), 100), ("layer".to_string(), 10), ("head".to_string(), 100)];
        assert_eq!(read_per_token(&untied, "emb", "head"), 110);
    }
}
