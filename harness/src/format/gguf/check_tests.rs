//! The GGUF pre-pass against each crash measured on main, and a clean file through all of it.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;
use crate::fuzz::models::config as tiny_config;
use crate::fuzz::models::seeds::{gguf_dim, gguf_of, gguf_u32, patched, tiny_gguf, with_alignment};

/// Writes `bytes` as a GGUF file, then asserts that the pre-pass, `open` and the engine's load
/// all refuse it with an error containing `want`, none of them panicking.
fn refused(bytes: &[u8], want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    let opened = catch_unwind(|| open(&path).map(|_| ())).expect("open does not panic");
    let e = opened.expect_err("open refuses the file").to_string();
    assert!(e.contains(want) && e.contains("m.gguf"), "open: `{e}` lacks `{want}` or the file");
    let hashes = dir.path().join("hashes");
    let hash = |p: &Path| crate::format::files::hash_file_in(p, &hashes);
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        crate::engine::load_candle_with(&path, crate::matrix::Backend::Cpu, &hash).map(|_| ())
    }))
    .expect("the load does not panic");
    let e = loaded.expect_err("the load refuses the file").to_string();
    assert!(e.contains(want), "load: `{e}` lacks `{want}`");
}

#[test]
fn a_clean_tiny_file_passes_every_check_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let bytes = tiny_gguf(dir.path(), arch);
        let layout = layout_of(bytes.as_slice(), bytes.len() as u64).unwrap();
        assert_eq!((layout.version, layout.alignment), (2, 32));
        assert!(layout.tensors.iter().any(|t| t.name == "token_embd.weight" && t.dims == [16, 8]));
        let path = dir.path().join(format!("{arch}.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        let (_, _, model) = open(&path).unwrap();
        assert_eq!(model, GgufModel { architecture: arch.into(), context: 16, vocab: 16 });
        crate::engine::load_candle(&path, crate::matrix::Backend::Cpu).expect("the tiny file loads");
    }
}

#[test]
fn alignment_zero_or_not_a_power_of_two_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path(), "llama");
    refused(&with_alignment(&gguf, 0), "`general.alignment` is 0; it must be a nonzero power of two");
    refused(&with_alignment(&gguf, 24), "`general.alignment` is 24; it must be a nonzero power of two");
    // The default, written out, is read as candle reads it.
    let aligned = with_alignment(&gguf, 32);
    assert_eq!(layout_of(aligned.as_slice(), aligned.len() as u64).unwrap().alignment, 32);
}

#[test]
fn dimension_products_that_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path(), "llama");
    refused(
        &gguf_dim(&gguf, "output.weight", 1 << 62),
        "tensor `output.weight` has dimensions [4611686018427387904, 16]: a zero, or over 17179869184 elements or overflowing",
    );
    refused(&gguf_dim(&gguf, "output.weight", 0), "tensor `output.weight` has dimensions [0, 16]: a zero");
}

#[test]
fn counts_of_two_to_the_31_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path(), "llama");
    refused(
        &patched(&gguf, b"GGUF", 4, &(1u64 << 31).to_le_bytes()),
        "tensor_count is 2147483648, more than the 65536 tensors a file may hold (at byte 8)",
    );
    refused(
        &patched(&gguf, b"GGUF", 12, &(1u64 << 31).to_le_bytes()),
        "metadata_kv_count is 2147483648, more than the 4096 entries a file may hold (at byte 16)",
    );
    refused(
        &gguf_u32(&gguf, "llama.block_count", 1 << 31),
        "`llama.block_count` is 2147483648, more than the 1024 layers this harness loads",
    );
    refused(
        &gguf_u32(&gguf, "llama.rope.dimension_count", 1 << 31),
        "`llama.rope.dimension_count` is 2147483648, more than the 1024 values per head",
    );
    refused(
        &gguf_u32(&gguf, "llama.context_length", 1 << 31),
        "`llama.context_length` is 2147483648, more than the 4194304 tokens of context",
    );
    // A string length of 2^31 in the first key.
    refused(
        &patched(&gguf, b"GGUF", 20, &(1u64 << 31).to_le_bytes()),
        "the key of metadata entry 0 is 2147483648 bytes long",
    );
}

#[test]
fn data_past_the_end_and_changed_shapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path(), "llama");
    refused(&gguf[..gguf.len() - 40], "lies past the end of the");
    refused(&gguf_dim(&gguf, "output.weight", 16), "a shape or an offset was changed");
    // The last tensor's shape grown: nothing follows it to disagree, the file's end does.
    let last = layout_of(gguf.as_slice(), gguf.len() as u64).unwrap().tensors.last().unwrap().clone();
    let doubled = gguf_dim(&gguf, &last.name, last.dims.last().unwrap() * 4);
    refused(&doubled, &format!("tensor `{}`", last.name));
}

#[test]
fn heads_that_do_not_divide_the_width_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path(), "llama");
    refused(
        &gguf_u32(&gguf, "llama.attention.head_count", 3),
        "`llama.embedding_length` 8 is not divisible by `llama.attention.head_count` 3",
    );
    refused(
        &gguf_u32(&gguf, "llama.attention.head_count", 0),
        "`llama.attention.head_count` is 0; it must be at least 1",
    );
    refused(
        &gguf_u32(&gguf, "llama.attention.head_count_kv", 0),
        "`llama.attention.head_count_kv` is 0; it must be at least 1",
    );
}

#[test]
fn the_qwen2_context_is_bounded_and_clamped_for_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path(), "qwen2");
    refused(
        &gguf_u32(&gguf, "qwen2.context_length", 1 << 31),
        "`qwen2.context_length` is 2147483648, more than the 4194304 tokens of context",
    );
    // A million-token context loads at once: the rotary table is built for the session's context.
    let path = dir.path().join("long.gguf");
    std::fs::write(&path, gguf_u32(&gguf, "qwen2.context_length", 1_010_000)).unwrap();
    let started = std::time::Instant::now();
    crate::engine::load_candle(&path, crate::matrix::Backend::Cpu).expect("loads");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

/// A llama's explicit head width (mistral-nemo's) is read from `attention.key_length`, its
/// tensors held to it; a value width apart from it, or a rotary width apart from it, is refused
/// by key. Either file is one candle's quantized llama would run otherwise.
#[test]
fn an_explicit_head_width_is_read_and_one_apart_from_its_values_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config("mistral");
    config["head_dim"] = 8.into();
    let gguf = gguf_of(&dir.path().join("wide"), &config);
    let path = dir.path().join("wide.gguf");
    std::fs::write(&path, &gguf).unwrap();
    let (_, mut content, _) = open(&path).expect("a head width of 8 over hidden 8 and 2 heads");
    assert_eq!(beyond_candles_quantized(&content).as_deref(), Some("`llama.attention.key_length` 8"));
    // A file made elsewhere (no config.json inside) converts back to a config stating it.
    content.metadata.remove(crate::format::gguf::HF_CONFIG);
    let hf = crate::format::gguf::hf_files(&content.metadata, true).unwrap();
    assert_eq!(hf.config["head_dim"], 8);
    crate::engine::load_candle(&path, crate::matrix::Backend::Cpu).expect("the wide file loads");
    refused(&gguf_u32(&gguf, "llama.attention.value_length", 4), "`llama.attention.value_length` Some(4)");
    refused(&gguf_u32(&gguf, "llama.rope.dimension_count", 4), "`llama.rope.dimension_count` is Some(4)");
    let narrow = gguf_of(&dir.path().join("narrow"), &tiny_config("llama"));
    std::fs::write(&path, &narrow).unwrap();
    let (_, content, _) = open(&path).unwrap();
    assert_eq!(beyond_candles_quantized(&content), None);
}

/// phi3's LongRoPE factor tensors are held to one F32 factor per rotating pair, both present.
#[test]
fn longrope_factor_tensors_of_another_length_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config("phi3");
    config["original_max_position_embeddings"] = 8.into();
    config["rope_scaling"] = serde_json::json!({"type": "longrope", "long_factor": [2.0, 3.0],
        "short_factor": [1.0, 1.5], "original_max_position_embeddings": 8});
    let gguf = gguf_of(&dir.path().join("phi3"), &config);
    let path = dir.path().join("phi3.gguf");
    std::fs::write(&path, &gguf).unwrap();
    open(&path).expect("LongRoPE factors of 2 pairs");
    crate::engine::load_candle(&path, crate::matrix::Backend::Cpu).expect("the LongRoPE file loads");
    refused(
        &gguf_dim(&gguf, crate::format::gguf::ROPE_FACTORS_LONG, 3),
        "tensor `rope_factors_long.weight` is F32 [3], not F32 [2]",
    );
}
