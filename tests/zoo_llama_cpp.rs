//! What the project's GGUF writer writes against what llama.cpp writes, on the architecture zoo
//! (`fixtures/zoo/`) and on generated models:
//! - metadata: the keys llama.cpp's converter wrote into `converter-f32.gguf`, key by key and
//!   value by value, for every zoo architecture the writer converts ([`ALLOWED_EXTRA`],
//!   [`ALLOWED_DIFFERENT`] list and justify what may differ);
//! - pre-tokenizers: every `tokenizer.ggml.pre` name the reader accepts splits as llama.cpp
//!   splits under that name (`fixtures/zoo/PRE_TOKENIZERS.json`, llama.cpp's own tokens);
//! - quantization mixes: the type of every tensor at every mix the project writes, against the
//!   types llama.cpp's own quantizer (`llama_model_quantize`) gave the same tensors, recorded in
//!   `fixtures/zoo/QUANTIZER.json` by `xtask/zoo/quantizer_reference.py`: the zoo's converter
//!   files (through the rules), two of them patched to reach the 70B and 8-expert rules, and
//!   generated models with rows K-quant blocks tile (through the writer itself).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use modelqa::support::format::gguf::{self, MixModel};
use modelqa::support::matrix::Quantization;
use modelqa::support::testmodel::{TestArchitecture, TestModelShape, write_test_model};

fn zoo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/zoo")
}

/// Keys only the project's file has, each with why it may.
const ALLOWED_EXTRA: &[(&str, &str)] = &[
    (
        "modelqa.",
        "the Hugging Face files verbatim and the fallbacks list: provenance, read by no llama.cpp code",
    ),
    (
        "tokenizer.huggingface.json",
        "the whole tokenizer.json (a key llama.cpp's converter may write too), so reading back is exact",
    ),
    (
        "qwen2.rope.dimension_count",
        "the head width, llama.cpp's own default for qwen2, stated for readers that need it",
    ),
];

/// Keys whose values may differ, each with why.
const ALLOWED_DIFFERENT: &[(&str, &str)] = &[(
    "general.name",
    "provenance: the converter titles the directory name (`Llama`), the writer keeps it (`llama`)",
)];

/// The model types whose zoo model the writer converts (others it refuses; tests/zoo.rs holds
/// that list).
const WRITTEN: [&str; 3] = ["llama", "mistral", "qwen2"];

fn content(bytes: &[u8]) -> Content {
    Content::read(&mut Cursor::new(bytes)).expect("a GGUF file")
}

#[test]
fn the_writers_metadata_is_the_converters_key_by_key() {
    let mut problems = Vec::new();
    for model_type in WRITTEN {
        let dir = zoo().join(model_type);
        let ours = content(&gguf::from_safetensors(&dir, Quantization::F32).expect("the writer converts"));
        let theirs = content(&std::fs::read(dir.join("converter-f32.gguf")).expect("the converter's file"));
        let allowed = |key: &str, list: &[(&str, &str)]| list.iter().any(|(k, _)| key.starts_with(k));
        for key in theirs.metadata.keys().filter(|k| !ours.metadata.contains_key(*k)) {
            problems.push(format!("{model_type}: `{key}` is missing"));
        }
        for key in ours.metadata.keys().filter(|k| !theirs.metadata.contains_key(*k)) {
            if !allowed(key, ALLOWED_EXTRA) {
                problems.push(format!("{model_type}: `{key}` is not the converter's"));
            }
        }
        for (key, value) in &theirs.metadata {
            if let Some(mine) = ours.metadata.get(key)
                && !allowed(key, ALLOWED_DIFFERENT)
                && format!("{mine:?}") != format!("{value:?}")
            {
                let short = |v: &Value| format!("{v:?}").chars().take(120).collect::<String>();
                problems.push(format!(
                    "{model_type}: `{key}` is {} where the converter has {}",
                    short(mine),
                    short(value)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The generated models `QUANTIZER.json` holds llama.cpp's answers for: rows of 256 and 512
/// (K-quant blocks tile), tied and untied embeddings, grouped-query attention, and enough layers
/// for `use_more_bits` to pick some; one model with rows of 288 (blocks of 256 do not tile).
fn quantizer_models() -> Vec<(&'static str, TestArchitecture, TestModelShape)> {
    let shape = |hidden, intermediate, layers, heads, kv_heads, tied| TestModelShape {
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        vocab: 384,
        context: 256,
        tied,
    };
    vec![
        ("llama-256-tied-gqa-12l", TestArchitecture::Llama, shape(256, 512, 12, 4, 1, true)),
        ("llama-256-untied-9l", TestArchitecture::Llama, shape(256, 256, 9, 2, 2, false)),
        ("qwen2-512-untied-3l", TestArchitecture::Qwen2, shape(512, 768, 3, 8, 8, false)),
        ("llama-288-tied-2l", TestArchitecture::Llama, shape(288, 320, 2, 4, 2, true)),
    ]
}

const SEED: u64 = 13;

/// The model directory of a generated quantizer model, written afresh.
fn generated(dir: &Path, id: &str) -> PathBuf {
    let (_, arch, shape) =
        quantizer_models().into_iter().find(|(i, _, _)| *i == id).unwrap_or_else(|| panic!("no model {id}"));
    let out = dir.join(id);
    write_test_model(&out, arch, shape, SEED).expect("the generator writes the model");
    out
}

/// Writes the generated models as F32 GGUFs into `$QUANTIZER_INPUTS`, the inputs
/// `xtask/zoo/quantizer_reference.py` quantizes with llama.cpp.
#[test]
#[ignore = "run by a developer for xtask/zoo/quantizer_reference.py, with QUANTIZER_INPUTS=DIR"]
fn write_quantizer_inputs() {
    let out = PathBuf::from(std::env::var("QUANTIZER_INPUTS").expect("QUANTIZER_INPUTS names a directory"));
    std::fs::create_dir_all(&out).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (id, dir) in inputs(tmp.path()) {
        std::fs::write(
            out.join(format!("{id}.gguf")),
            gguf::from_safetensors(&dir, Quantization::F32).unwrap(),
        )
        .unwrap();
    }
}

/// The writer's inputs in `QUANTIZER.json` (`generated/<id>`), each with its model directory:
/// the generated models, written afresh under `tmp`, and the zoo models the writer converts
/// (`writer-zoo-<model_type>`).
fn inputs(tmp: &Path) -> Vec<(String, PathBuf)> {
    let generated = quantizer_models().into_iter().map(|(id, _, _)| (id.to_string(), generated(tmp, id)));
    generated.chain(WRITTEN.into_iter().map(|m| (format!("writer-zoo-{m}"), zoo().join(m)))).collect()
}

/// `QUANTIZER.json`: per input, per mix, per tensor, llama.cpp's type.
type Reference = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

fn reference() -> Reference {
    let text = std::fs::read_to_string(zoo().join("QUANTIZER.json")).expect("fixtures/zoo/QUANTIZER.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("QUANTIZER.json is JSON");
    serde_json::from_value(json["inputs"].clone()).expect("QUANTIZER.json's inputs")
}

fn mix(name: &str) -> Quantization {
    serde_json::from_value(serde_json::json!(name)).unwrap_or_else(|e| panic!("mix `{name}`: {e}"))
}

/// Where `types` (a file's tensor types) differ from llama.cpp's `want`.
fn differences(
    input: &str,
    q: &str,
    types: &HashMap<String, String>,
    want: &BTreeMap<String, String>,
) -> Vec<String> {
    let names: BTreeSet<&String> = types.keys().chain(want.keys()).collect();
    names
        .into_iter()
        .filter(|n| types.get(*n) != want.get(*n))
        .map(|n| format!("{input} {q} {n}: ours {:?}, llama.cpp {:?}", types.get(n), want.get(n)))
        .collect()
}

/// The patched inputs of `quantizer_reference.py` (its `PATCHED`): a zoo converter file with one
/// metadata value changed, so llama.cpp applies rules no tiny model's shape reaches.
const PATCHED: [(&str, &str, &str, u32); 2] = [
    ("llama-80-layers", "llama", "llama.block_count", 80),
    ("qwen3_moe-8-experts", "qwen3_moe", "qwen3moe.expert_count", 8),
];

/// Every tensor of llama.cpp's converter files (as they are, and patched), at every mix, gets
/// from the project's rules the type llama.cpp's quantizer gave it (every zoo architecture: the
/// rules, not the writer, which converts only some).
#[test]
fn the_mix_rules_give_the_zoos_tensors_llama_cpps_types() {
    let mut problems = Vec::new();
    let reference = reference();
    let inputs: Vec<_> = reference.iter().filter(|(k, _)| !k.starts_with("generated/")).collect();
    assert!(inputs.len() >= 11 + PATCHED.len(), "QUANTIZER.json holds {} zoo inputs", inputs.len());
    for (input, mixes) in inputs {
        let (model_type, patch) = match input.split_once('/') {
            Some(("zoo", model_type)) => (model_type, None),
            Some(("patched", id)) => {
                let (_, model_type, key, value) = PATCHED
                    .iter()
                    .find(|(i, ..)| *i == id)
                    .unwrap_or_else(|| panic!("{input} is not in PATCHED"));
                (*model_type, Some((*key, *value)))
            }
            _ => panic!("QUANTIZER.json input `{input}` is neither zoo/, patched/ nor generated/"),
        };
        let path = zoo().join(model_type).join("converter-f32.gguf");
        let mut file = content(&std::fs::read(&path).unwrap());
        if let Some((key, value)) = patch {
            assert!(file.metadata.contains_key(key), "{input}: no `{key}` to patch");
            file.metadata.insert(key.to_string(), Value::U32(value));
        }
        let model = MixModel::from_metadata(&file.metadata, file.tensor_infos.keys().map(String::as_str));
        for (q, want) in mixes {
            let types: HashMap<String, String> = file
                .tensor_infos
                .iter()
                .map(|(name, info)| {
                    let t = gguf::written_type(mix(q), name, info.shape.dims(), &model).unwrap();
                    (name.clone(), gguf::type_name(t))
                })
                .collect();
            problems.extend(differences(input, q, &types, want));
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
}

/// The writer's files of the generated models and of the zoo models it converts, at every mix,
/// hold each tensor in the type llama.cpp's quantizer gave the same tensor of the writer's F32
/// file.
#[test]
fn the_writer_quantizes_generated_models_as_llama_cpp() {
    let mut problems = Vec::new();
    let reference = reference();
    let tmp = tempfile::tempdir().unwrap();
    for (id, dir) in inputs(tmp.path()) {
        let mixes = reference
            .get(&format!("generated/{id}"))
            .unwrap_or_else(|| panic!("QUANTIZER.json has no generated/{id}: rerun quantizer_reference.py"));
        for (q, want) in mixes {
            let file = content(&gguf::from_safetensors(&dir, mix(q)).unwrap());
            let types: HashMap<String, String> = file
                .tensor_infos
                .iter()
                .map(|(n, info)| (n.clone(), gguf::type_name(info.ggml_dtype)))
                .collect();
            problems.extend(differences(&id, q, &types, want));
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
}

/// The reader, given a GGUF's vocabulary and merges and only a `tokenizer.ggml.pre` name (no
/// embedded tokenizer.json), tokenizes as llama.cpp tokenizes the same file under that name, for
/// every name it accepts: `PRE_TOKENIZERS.json` holds llama.cpp's tokens.
#[test]
fn every_pre_tokenizer_name_splits_as_llama_cpp_splits() {
    let text = std::fs::read_to_string(zoo().join("PRE_TOKENIZERS.json")).expect("PRE_TOKENIZERS.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("PRE_TOKENIZERS.json is JSON");
    let texts: Vec<String> = serde_json::from_value(json["texts"].clone()).expect("texts");
    let tokens: BTreeMap<String, Vec<Vec<u32>>> =
        serde_json::from_value(json["tokens"].clone()).expect("tokens");
    let names: BTreeSet<&str> = tokens.keys().map(String::as_str).collect();
    let accepted: BTreeSet<&str> = gguf::pre_tokenizer_names().into_iter().collect();
    assert_eq!(names, accepted, "PRE_TOKENIZERS.json's names are the reader's: rerun quantizer_reference.py");
    let input = json["input"].as_str().expect("input").trim_end_matches(".gguf");
    let tmp = tempfile::tempdir().unwrap();
    let file = content(&gguf::from_safetensors(&generated(tmp.path(), input), Quantization::F32).unwrap());
    let mut problems = Vec::new();
    for (name, want) in &tokens {
        let mut md = file.metadata.clone();
        md.remove(gguf::HF_TOKENIZER_JSON);
        md.insert("tokenizer.ggml.pre".into(), Value::String(name.clone()));
        let tokenizer = gguf::tokenizer(&md).unwrap_or_else(|e| panic!("`{name}`: {e}"));
        for (text, want) in texts.iter().zip(want) {
            let got = tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            if &got != want {
                problems.push(format!("`{name}` on {text:?}: ours {got:?}, llama.cpp {want:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
}
