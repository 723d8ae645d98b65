//! The zoo's config variants (`fixtures/zoo-variants/`, made by `xtask/zoo/make_variants.py`):
//! tiny models of the registry's model_types with the config fields their real releases set
//! (rope scalings, sliding windows narrower than the prompts, tied and untied heads, biases, q/k
//! norms, falcon's and gpt_bigcode's layouts), each with transformers' reference. Every variant
//! loads from its safetensors, and from the project's APR conversion, and reproduces transformers
//! under the zoo's rule ([`compare`]: the top-5 logits at every prompt position within
//! [`TOLERANCE`], the greedy continuation token for token), or is listed in [`REFUSED`] with the
//! field its refusal names; the project's own F32 GGUF of each reproduces transformers too, or is
//! listed in [`OWN_GGUF_REFUSED`] with the writer's or the engine's refusal. Both lists are held
//! true both ways.

use std::path::PathBuf;

use modelqa::support::engine::load_candle;
use modelqa::support::matrix::Backend;

use super::{TOLERANCE, compare, from_apr, judged, own_gguf, reference, zoo};

/// The variants, as `fixtures/zoo-variants/` holds them.
const VARIANTS: [&str; 30] = [
    "deepseek-coder-v2-lite",
    "falcon-40b",
    "falcon-sequential",
    "falcon2-11b",
    "gemma-7b",
    "gemma2-swa",
    "gemma3-linear",
    "gpt_bigcode-mha",
    "granite-3.1",
    "granite-3b-code-128k",
    "llama-3.1",
    "llama-3.2",
    "llama-head-dim",
    "llama-linear",
    "mistral-nemo",
    "mistral-swa",
    "olmo2-tied",
    "phi-3-mini-swa",
    "phi-3.5-mini",
    "phi-4-mini",
    "qwen2-swa",
    "qwen2-tied",
    "qwen2-yarn",
    "qwen3-tied",
    "qwen3_moe-dense-last",
    "qwen3_moe-mlp-only",
    "qwen3_moe-norm",
    "stablelm-2-1.6b",
    "stablelm-2-12b",
    "starcoder2-swa",
];

/// Variants whose project's own F32 GGUF (the file a `gguf-f32` cell runs) the writer or the
/// engine refuses, with (a part of) the refusal; the others reproduce transformers from it.
const OWN_GGUF_REFUSED: &[(&str, &str)] = &[
    // What the writer's falcon, gemmas and phi3 cannot carry, refused by name: Falcon-40B's and
    // Falcon 2's grouped layout, a sequential falcon, gemma3 layer patterns llama.cpp does not
    // assume, a phi3 SentencePiece vocabulary, and a gemma or gemma 2 without
    // the `tokenizer.model` their converter reads (the variants carry tokenizer.json only).
    // (Rope scaling travels as the converter writes it: linear and YaRN in keys, llama3's and
    // LongRoPE's factors as tensors; an explicit head width as `attention.key_length`.)
    ("falcon-40b", "`new_decoder_architecture` is true"),
    ("falcon-sequential", "`parallel_attn` is false"),
    ("falcon2-11b", "`new_decoder_architecture` is true"),
    ("gemma-7b", "tokenizer.model"),
    ("gemma2-swa", "tokenizer.model"),
    ("gemma3-linear", "`layer_types` is not every 6th layer global"),
    ("phi-3-mini-swa", "`tokenizer_class` is `none`"),
    // LongRoPE's: their own GGUF with the zoo phi3's tokenizer_config.json is held to
    // transformers in `phi3s_longrope_variants_reproduce_transformers_from_their_own_gguf`.
    ("phi-3.5-mini", "`tokenizer_class` is `none`"),
    ("phi-4-mini", "`tokenizer_class` is `none`"),
    // Tensors llama.cpp's layout has no name for.
    ("granite-3b-code-128k", "mlp.gate_proj.bias` has no GGUF name"),
    ("stablelm-2-12b", "_layernorm.norms."),
    ("qwen3_moe-norm", "`decoder_sparse_step` is not 1"),
    ("qwen3_moe-mlp-only", "`decoder_sparse_step` is not 1"),
    // A sliding window llama.cpp's graph does not apply becomes the file's context, which the
    // prompts outgrow.
    ("mistral-swa", "do not fit the context of 6"),
    ("qwen2-swa", "do not fit the context of 6"),
    ("starcoder2-swa", "do not fit the context of 6"),
];

/// Variants the engine refuses, with (a part of) its error, which names the config field.
const REFUSED: &[(&str, &str)] = &[
    // candle's qwen3_moe places experts by decoder_sparse_step only: experts in the first layer
    // alone are no step's.
    ("qwen3_moe-dense-last", "`mlp_only_layers` is [1]"),
];

fn variants() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/zoo-variants")
}

/// One variant's own GGUF: a line for the table, or its failure.
fn check_gguf(variant: &str, cache: &std::path::Path) -> Result<String, String> {
    let dir = variants().join(variant);
    let reference = reference(&dir);
    let refused = OWN_GGUF_REFUSED.iter().find(|(v, _)| *v == variant).map(|(_, why)| *why);
    judged(own_gguf(&dir, &reference, cache), refused, |w| format!("pass {w:.1e}"))
}

/// One variant's line for the table, or its failure.
fn check(variant: &str) -> Result<String, String> {
    let dir = variants().join(variant);
    let reference = reference(&dir);
    let refused = REFUSED.iter().find(|(v, _)| *v == variant).map(|(_, why)| *why);
    match (load_candle(&dir, Backend::Cpu), refused) {
        (Ok(_), Some(_)) => {
            Err("loads, but is listed in REFUSED: take it off the list so the test checks it".into())
        }
        (Err(e), Some(why)) if e.to_string().contains(why) => Ok(format!("refused: {e}")),
        (Err(e), Some(why)) => Err(format!("refused with `{e}`, REFUSED says `{why}`")),
        (Err(e), None) => Err(format!("does not load: {e}")),
        (Ok(mut session), None) => {
            let worst = compare(&mut session, &reference)?;
            let apr = from_apr(&dir, &reference).map_err(|why| format!("from APR: {why}"))?;
            Ok(format!("pass (max logit diff {worst:.1e}; APR {apr:.1e})"))
        }
    }
}

#[test]
fn every_variant_reproduces_transformers_or_is_listed_refused() {
    let mut present: Vec<String> = std::fs::read_dir(variants())
        .expect("fixtures/zoo-variants")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    let mut failures = Vec::new();
    if present != VARIANTS {
        failures.push(format!("fixtures/zoo-variants holds {present:?}, the list is {VARIANTS:?}"));
    }
    let mut table = format!("variant                | safetensors; APR (tolerance {TOLERANCE:.0e})\n");
    for variant in VARIANTS.into_iter().filter(|v| present.iter().any(|p| p == v)) {
        let line = check(variant).unwrap_or_else(|why| {
            failures.push(format!("{variant}: {why}"));
            format!("FAIL: {why}")
        });
        table.push_str(&format!("{variant:22} | {line}\n"));
    }
    println!("{table}");
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n"));
}

#[test]
fn every_variants_own_gguf_reproduces_transformers_or_is_listed_refused() {
    let cache = tempfile::tempdir().expect("tempdir");
    let mut table = String::from("variant                | own GGUF F32\n");
    let mut failures = Vec::new();
    for variant in VARIANTS.into_iter().filter(|v| !REFUSED.iter().any(|(r, _)| r == v)) {
        let line = check_gguf(variant, cache.path()).unwrap_or_else(|why| {
            failures.push(format!("{variant}: {why}"));
            format!("FAIL: {why}")
        });
        table.push_str(&format!("{variant:22} | {line}\n"));
    }
    println!("{table}");
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n"));
}

/// phi3's LongRoPE variants state no `tokenizer_class`, so the writer refuses their vocabulary
/// (it writes phi3's `GPT2Tokenizer` one). With the zoo phi3's tokenizer_config.json (their
/// tokenizer.json is the zoo phi3's), their own GGUF (LongRoPE as `rope_factors_long.weight`
/// and `rope_factors_short.weight` with `phi3.rope.scaling.attn_factor`, as llama.cpp's
/// converter writes it) reproduces transformers.
#[test]
fn phi3s_longrope_variants_reproduce_transformers_from_their_own_gguf() {
    let cache = tempfile::tempdir().expect("tempdir");
    let phi3 = zoo().join("phi3");
    let mut table = String::new();
    let mut failures = Vec::new();
    for variant in ["phi-3.5-mini", "phi-4-mini"] {
        let source = variants().join(variant);
        let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(read(source.join("tokenizer.json")), read(phi3.join("tokenizer.json")), "{variant}");
        let dir = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(&source).expect("the variant").filter_map(|e| e.ok()) {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copies");
        }
        std::fs::copy(phi3.join("tokenizer_config.json"), dir.path().join("tokenizer_config.json"))
            .expect("copies");
        let line = match own_gguf(dir.path(), &reference(&source), cache.path()) {
            Ok(worst) => format!("pass {worst:.1e}"),
            Err(why) => {
                failures.push(format!("{variant}: {why}"));
                format!("FAIL: {why}")
            }
        };
        table.push_str(&format!("{variant:22} | {line}\n"));
    }
    println!("{table}");
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n"));
}
