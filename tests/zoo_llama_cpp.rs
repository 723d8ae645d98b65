//! What the project's GGUF writer writes against what llama.cpp writes, on the architecture zoo
//! (`fixtures/zoo/`) and on generated models:
//! - metadata: the keys llama.cpp's converter wrote into `converter-f32.gguf`, key by key and
//!   value by value, for every zoo architecture the writer converts ([`ALLOWED_EXTRA`],
//!   [`ALLOWED_DIFFERENT`] list and justify what may differ, [`CONVERTER_CONTRADICTS`] where
//!   the converter's value is not its own tensors');
//! - tensors: the same names, shapes and types at F32 and Q8_0 (`converter-q8_0.gguf`), the same
//!   values at F32;
//! - pre-tokenizers: every `tokenizer.ggml.pre` name the reader accepts splits as llama.cpp
//!   splits under that name (`fixtures/zoo/PRE_TOKENIZERS.json`, llama.cpp's own tokens);
//! - tokenization: the reader (`gguf::tokenizer`, as the engine encodes text and prompts)
//!   tokenizes 2,336 generated strings (`xtask/zoo/tokenizer_strings.py`: many scripts, emoji,
//!   digit runs, contractions in every case, whitespace and punctuation runs, code, URLs,
//!   special-token spellings, byte-fallback characters, long words, mixtures) as llama.cpp
//!   tokenizes them from each zoo converter file it loads, on that file and on the writer's file
//!   of the same model ([`LLAMA_CPP_REFUSES`], [`RENAMED_FOR_LLAMA_CPP`], [`LLAMA_CPP_ABORTS`],
//!   [`WRITER_EMBEDS_ANOTHER_TOKENIZER`] list what cannot hold, and why), and under every
//!   `tokenizer.ggml.pre` name on a vocabulary trained on the strings, whose merges cross every
//!   split ([`LLAMA_CPP_SPLITS_OTHERWISE`] lists where llama.cpp rewrites a split's regex)
//!   (`fixtures/zoo/TOKENIZATION.json`, by `xtask/zoo/tokenization_reference.py`, which
//!   also fails where llama.cpp tokenizes the writer's file otherwise than the converter's);
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

/// Values where the converter's file contradicts its own tensors, each with the tensor (and
/// its dimension, in candle's order) whose width the writer states instead, and why.
const CONVERTER_CONTRADICTS: &[(&str, &str, usize, &str)] = &[(
    "starcoder.feed_forward_length",
    "blk.0.ffn_up.weight",
    0,
    "the converter writes 4 × n_embd (256) whatever n_inner says; the zoo's n_inner is 128, the \
     width its ffn tensors have, so llama.cpp (and the engine, tests/zoo.rs's GGUF_REFUSED) refuse \
     the converter's file. Every released gpt_bigcode has n_inner null or 4 × n_embd, where the two agree",
)];

/// The model types whose zoo model the writer converts: all of them (qwen3_moe as
/// [`writer_input`]'s renormalising copy). Gemma's and Gemma 2's converters write the SentencePiece
/// vocabulary of the zoo's `tokenizer.model` (make_zoo.py's SENTENCEPIECE), not tokenizer.json's
/// BPE; the writer reads that file as they do, so their `tokenizer.ggml.*` keys need no allowance
/// (the embedded `tokenizer.huggingface.json` keeps the engine's reading exact).
const WRITTEN: [&str; 16] = [
    "deepseek_v2",
    "falcon",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt_bigcode",
    "granite",
    "llama",
    "mistral",
    "olmo2",
    "phi3",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "stablelm",
    "starcoder2",
];

/// The writer's files of the zoo models that `QUANTIZER.json` holds llama.cpp's answers for as
/// `generated/writer-zoo-<model_type>` (the others are held to the converter's file's answers):
/// llama.cpp loads each (`quantizer_reference.py` also tokenizes it with llama.cpp against its
/// embedded tokenizer.json). Not gemma and gemma2: their files carry the SentencePiece vocabulary
/// their converters read from `tokenizer.model`, which llama.cpp splits otherwise than the zoo's
/// tokenizer.json (tests/zoo.rs' CONVERTER_TOKENIZES_OTHERWISE), so that check cannot hold. Not
/// phi3: for a `general.name` containing `phi3` llama.cpp's vocabulary load looks up `</s>`,
/// `<unk>` and `<s>` by text, which the zoo's tokenizer lacks, so it loads neither the writer's
/// file nor the converter's as named (`unordered_map::at`; [`RENAMED_FOR_LLAMA_CPP`]).
const QUANTIZED_BY_LLAMA_CPP: [&str; 6] =
    ["deepseek_v2", "falcon", "gemma3_text", "llama", "mistral", "qwen2"];

fn content(bytes: &[u8]) -> Content {
    Content::read(&mut Cursor::new(bytes)).expect("a GGUF file")
}

/// The model directory the writer converts for a zoo `model_type`, beside the converter's: the
/// zoo's own, but for qwen3_moe a copy with `norm_topk_prob` true. The zoo's is false, which
/// llama.cpp's qwen3moe cannot run (it always renormalises), so the writer refuses it; the
/// converter reads no `norm_topk_prob`, so its file is the one it writes for either.
fn writer_input(model_type: &str, tmp: &Path) -> PathBuf {
    let dir = zoo().join(model_type);
    if model_type != "qwen3_moe" {
        return dir;
    }
    let copy = tmp.join(model_type);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.extension().is_some_and(|e| e == "gguf") {
            continue;
        }
        std::fs::copy(&path, copy.join(name)).unwrap();
    }
    let config_path = copy.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["norm_topk_prob"] = serde_json::json!(true);
    std::fs::write(&config_path, config.to_string()).unwrap();
    copy
}

/// The writer's file and the converter's of one zoo model at `q` (`f32` or `q8_0`), as bytes.
fn both(model_type: &str, q: &str, tmp: &Path) -> (Vec<u8>, Vec<u8>) {
    let dir = writer_input(model_type, tmp);
    let ours = gguf::from_safetensors(&dir, mix(q)).unwrap_or_else(|e| panic!("{model_type}: {e}"));
    let path = zoo().join(model_type).join(format!("converter-{q}.gguf"));
    (ours, std::fs::read(path).expect("the converter's file"))
}

#[test]
fn the_writers_metadata_is_the_converters_key_by_key() {
    let mut problems = Vec::new();
    let tmp = tempfile::tempdir().unwrap();
    for model_type in WRITTEN {
        let (ours, theirs) = both(model_type, "f32", tmp.path());
        let (ours, theirs) = (content(&ours), content(&theirs));
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
            if let Some((_, tensor, dim, _)) = CONVERTER_CONTRADICTS.iter().find(|(k, ..)| k == key) {
                let width = ours.tensor_infos.get(*tensor).map(|t| t.shape.dims()[*dim] as u32);
                let mine = ours.metadata.get(key).and_then(|v| v.to_u32().ok());
                if mine.is_none() || mine != width {
                    problems.push(format!(
                        "{model_type}: `{key}` is {mine:?} where its tensor `{tensor}` is {width:?} wide"
                    ));
                }
                continue;
            }
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

/// The writer's files hold the converter's tensors: the same names, shapes (in llama.cpp's
/// layouts: q/k permuted for llama and granite, experts stacked, gpt_bigcode's, falcon's and
/// phi3's fused qkv, deepseek2's `kv_b_proj` split, gemma's norms plus one) and types at F32 and
/// Q8_0, and at F32 the same values bit for bit.
#[test]
fn the_writers_tensors_are_the_converters() {
    let mut problems = Vec::new();
    let tmp = tempfile::tempdir().unwrap();
    for model_type in WRITTEN {
        for q in ["f32", "q8_0"] {
            let (our_bytes, their_bytes) = both(model_type, q, tmp.path());
            let (ours, theirs) = (content(&our_bytes), content(&their_bytes));
            let names: BTreeSet<&String> =
                ours.tensor_infos.keys().chain(theirs.tensor_infos.keys()).collect();
            for name in names {
                let (Some(mine), Some(want)) = (ours.tensor_infos.get(name), theirs.tensor_infos.get(name))
                else {
                    let whose = if ours.tensor_infos.contains_key(name) {
                        "only ours"
                    } else {
                        "only the converter's"
                    };
                    problems.push(format!("{model_type} {q}: `{name}` is {whose}"));
                    continue;
                };
                if (mine.shape.dims(), mine.ggml_dtype) != (want.shape.dims(), want.ggml_dtype) {
                    problems.push(format!(
                        "{model_type} {q}: `{name}` is {:?} {:?}, the converter's {:?} {:?}",
                        mine.shape.dims(),
                        mine.ggml_dtype,
                        want.shape.dims(),
                        want.ggml_dtype
                    ));
                } else if q == "f32" && values(&ours, &our_bytes, name) != values(&theirs, &their_bytes, name)
                {
                    problems
                        .push(format!("{model_type} {q}: `{name}` holds other values than the converter's"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
}

/// Tensor `name` of a file, dequantized, as the bits of each value.
fn values(file: &Content, bytes: &[u8], name: &str) -> Vec<u32> {
    let device = candle_core::Device::Cpu;
    let t = file.tensor(&mut Cursor::new(bytes), name, &device).unwrap().dequantize(&device).unwrap();
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// The writer's files of the zoo models it converts and `QUANTIZER.json` has no writer entry
/// for, at every mix, hold each tensor in the type llama.cpp's quantizer gave the same tensor
/// of the converter's F32 file (`zoo/<model_type>`): the two files hold the same tensors and
/// the same metadata llama.cpp's rules read.
#[test]
fn the_writer_quantizes_the_zoo_as_llama_cpp_quantizes_the_converters_files() {
    let mut problems = Vec::new();
    let reference = reference();
    let tmp = tempfile::tempdir().unwrap();
    for model_type in WRITTEN.into_iter().filter(|m| !QUANTIZED_BY_LLAMA_CPP.contains(m)) {
        let mixes =
            reference.get(&format!("zoo/{model_type}")).unwrap_or_else(|| panic!("no zoo/{model_type}"));
        let dir = writer_input(model_type, tmp.path());
        for (q, want) in mixes {
            let file = content(&gguf::from_safetensors(&dir, mix(q)).unwrap());
            let types: HashMap<String, String> = file
                .tensor_infos
                .iter()
                .map(|(n, info)| (n.clone(), gguf::type_name(info.ggml_dtype)))
                .collect();
            problems.extend(differences(model_type, q, &types, want));
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
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

/// Writes the writer's F32 file of every zoo model it converts into `$TOKENIZER_INPUTS` as
/// `<model_type>.gguf`, the files `xtask/zoo/tokenization_reference.py` tokenizes with llama.cpp
/// beside the converter's.
#[test]
#[ignore = "run by a developer for xtask/zoo/tokenization_reference.py, with TOKENIZER_INPUTS=DIR"]
fn write_tokenizer_inputs() {
    let out = PathBuf::from(std::env::var("TOKENIZER_INPUTS").expect("TOKENIZER_INPUTS names a directory"));
    std::fs::create_dir_all(&out).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for model_type in WRITTEN {
        let dir = writer_input(model_type, tmp.path());
        let bytes =
            gguf::from_safetensors(&dir, Quantization::F32).unwrap_or_else(|e| panic!("{model_type}: {e}"));
        std::fs::write(out.join(format!("{model_type}.gguf")), bytes).unwrap();
    }
}

/// The writer's inputs in `QUANTIZER.json` (`generated/<id>`), each with its model directory:
/// the generated models, written afresh under `tmp`, and the zoo models the writer converts
/// (`writer-zoo-<model_type>`).
fn inputs(tmp: &Path) -> Vec<(String, PathBuf)> {
    let generated = quantizer_models().into_iter().map(|(id, _, _)| (id.to_string(), generated(tmp, id)));
    generated
        .chain(QUANTIZED_BY_LLAMA_CPP.into_iter().map(|m| (format!("writer-zoo-{m}"), zoo().join(m))))
        .collect()
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
/// from the project's rules the type llama.cpp's quantizer gave it (every zoo architecture,
/// through the rules alone).
#[test]
fn the_mix_rules_give_the_zoos_tensors_llama_cpps_types() {
    let mut problems = Vec::new();
    let reference = reference();
    let inputs: Vec<_> = reference.iter().filter(|(k, _)| !k.starts_with("generated/")).collect();
    assert!(inputs.len() >= 16 + PATCHED.len(), "QUANTIZER.json holds {} zoo inputs", inputs.len());
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

/// Zoo files llama.cpp does not load (the fixture's `refused`), each with why; the reader is
/// compared on no string of them. None: phi3's are loaded renamed ([`RENAMED_FOR_LLAMA_CPP`]).
const LLAMA_CPP_REFUSES: &[(&str, &str)] = &[];

/// Zoo files llama.cpp tokenizes with `general.name` changed (the fixture's `renamed`), each with
/// why; the reader reads the files as they are (it reads no `general.name`).
const RENAMED_FOR_LLAMA_CPP: &[(&str, &str)] = &[(
    "phi3",
    "for a `general.name` containing `phi3` or `phi-3` llama.cpp's vocabulary load sets attributes \
     of `</s>`, `<unk>` and `<s>` by text (`token_to_id.at`, llama-vocab.cpp), which throws on the \
     zoo's 512-token vocabulary, which has none of them (`unordered_map::at`): it loads neither \
     phi3 file as named. The quirk only sets right-strip attributes on special tokens",
)];

/// Zoo files on some of whose strings llama.cpp aborts (recorded as null and not compared), each
/// with why. gemma, gemma2: their SentencePiece vocabulary (make_zoo.py's SENTENCEPIECE, the
/// zoo's 512 BPE tokens under the same ids) has no `<0xNN>` byte tokens, so llama.cpp's byte
/// fallback throws (`llama_vocab::byte_to_token`) on any string with a character or a space (`▁`)
/// the vocabulary does not hold; the strings it does answer are compared.
const LLAMA_CPP_ABORTS: &[(&str, &str)] = &[
    ("gemma", "no byte tokens in the zoo's SentencePiece vocabulary: llama.cpp's byte fallback throws"),
    ("gemma2", "no byte tokens in the zoo's SentencePiece vocabulary: llama.cpp's byte fallback throws"),
];

/// Writer files whose embedded `tokenizer.huggingface.json` (what the reader reads first) is not
/// the vocabulary llama.cpp reads from `tokenizer.ggml.*`, each with why; for them the reader is
/// held to llama.cpp on the writer's file without the embedded JSON, i.e. on the keys llama.cpp reads.
const WRITER_EMBEDS_ANOTHER_TOKENIZER: &[(&str, &str)] = &[
    (
        "gemma",
        "the converter's and the writer's `tokenizer.ggml.*` are the zoo's tokenizer.model (SentencePiece); \
         the embedded JSON is the model's BPE tokenizer.json (tests/zoo.rs' CONVERTER_TOKENIZES_OTHERWISE)",
    ),
    (
        "gemma2",
        "the converter's and the writer's `tokenizer.ggml.*` are the zoo's tokenizer.model (SentencePiece); \
         the embedded JSON is the model's BPE tokenizer.json (tests/zoo.rs' CONVERTER_TOKENIZES_OTHERWISE)",
    ),
];

/// `TOKENIZATION.json` (`xtask/zoo/tokenization_reference.py`): llama.cpp's tokens of generated
/// strings from each zoo converter file.
#[derive(serde::Deserialize)]
struct Tokenization {
    strings: Vec<String>,
    refused: BTreeMap<String, String>,
    renamed: BTreeMap<String, String>,
    architectures: BTreeMap<String, usize>,
    tokenizations: Vec<LlamaCppTokens>,
    trained: Trained,
}

/// `TOKENIZATION.json`'s `trained`: a byte-level BPE trained on the strings themselves with no
/// split, so its merges cross every pre-tokenizer boundary (the zoo's 512-token vocabulary has no
/// merge of digits, apostrophes or newlines, so there many splits give the same ids), and
/// llama.cpp's tokens of the strings under it for every `tokenizer.ggml.pre` name, names with
/// the same answers sharing an entry.
#[derive(serde::Deserialize)]
struct Trained {
    control: Vec<String>,
    tokens: Vec<String>,
    merges: Vec<String>,
    pre: BTreeMap<String, usize>,
    tokenizations: Vec<LlamaCppTokens>,
}

/// llama.cpp's tokens of every string: as text (`special=False`; null where llama.cpp aborts),
/// and, by the string's index, where they differ, with control tokens parsed (`special=True`).
#[derive(serde::Deserialize)]
struct LlamaCppTokens {
    literal: Vec<Option<Vec<u32>>>,
    parsed: BTreeMap<usize, Vec<u32>>,
}

fn tokenization() -> Tokenization {
    let text =
        std::fs::read_to_string(zoo().join("TOKENIZATION.json")).expect("fixtures/zoo/TOKENIZATION.json");
    serde_json::from_str(&text)
        .expect("TOKENIZATION.json holds strings, refused, architectures, tokenizations")
}

/// Where the reader's tokenizer of `metadata` tokenizes otherwise than llama.cpp (`want`): as the
/// engine encodes text (control-token spellings as text, its `literal` tokenizer) and as it
/// encodes a prompt (control tokens parsed). Returns the differences and the strings compared.
fn tokenizes_as(
    what: &str,
    metadata: &HashMap<String, Value>,
    strings: &[String],
    want: &LlamaCppTokens,
) -> (Vec<(usize, String)>, usize) {
    let parsing = match gguf::tokenizer(metadata) {
        Ok(t) => t,
        Err(e) => return (vec![(usize::MAX, format!("{what}: the reader's tokenizer: {e}"))], 0),
    };
    let mut literal = parsing.clone();
    literal.set_encode_special_tokens(true);
    let (mut problems, mut compared) = (Vec::new(), 0);
    for (i, (s, want_literal)) in strings.iter().zip(&want.literal).enumerate() {
        let Some(want_literal) = want_literal else { continue };
        compared += 1;
        let want_parsed = want.parsed.get(&i).unwrap_or(want_literal);
        for (mode, t, want) in [("as text", &literal, want_literal), ("parsed", &parsing, want_parsed)] {
            match t.encode(s.as_str(), false).map(|e| e.get_ids().to_vec()) {
                Ok(got) if &got == want => {}
                got => problems
                    .push((i, format!("{what} {mode} string {i} {s:?}: ours {got:?}, llama.cpp {want:?}"))),
            }
        }
    }
    (problems, compared)
}

/// The reader tokenizes every generated string (`TOKENIZATION.json`, 2,336 of them) as llama.cpp
/// tokenizes it from the converter's file of each zoo architecture llama.cpp loads, both as text
/// and with control tokens parsed, on the converter's file and on the writer's file of the same
/// model (written afresh).
#[test]
fn the_reader_tokenizes_generated_strings_as_llama_cpp() {
    let reference = tokenization();
    assert!(reference.strings.len() >= 1000, "TOKENIZATION.json holds {} strings", reference.strings.len());
    let refused: BTreeSet<&str> = reference.refused.keys().map(String::as_str).collect();
    let listed: BTreeSet<&str> = LLAMA_CPP_REFUSES.iter().map(|(m, _)| *m).collect();
    assert_eq!(refused, listed, "llama.cpp's refusals (TOKENIZATION.json) are LLAMA_CPP_REFUSES");
    let renamed: BTreeSet<&str> = reference.renamed.keys().map(String::as_str).collect();
    let listed: BTreeSet<&str> = RENAMED_FOR_LLAMA_CPP.iter().map(|(m, _)| *m).collect();
    assert_eq!(renamed, listed, "the files tokenized renamed (TOKENIZATION.json) are RENAMED_FOR_LLAMA_CPP");
    let recorded: BTreeSet<&str> =
        reference.architectures.keys().chain(reference.refused.keys()).map(String::as_str).collect();
    assert_eq!(recorded, WRITTEN.into_iter().collect(), "TOKENIZATION.json covers every zoo model type");
    let listed = |list: &[(&str, &str)], m: &str| list.iter().any(|(l, _)| *l == m);
    let (mut problems, mut compared) = (Vec::new(), 0);
    let tmp = tempfile::tempdir().unwrap();
    for (model_type, &group) in &reference.architectures {
        let want =
            reference.tokenizations.get(group).unwrap_or_else(|| panic!("{model_type}: no group {group}"));
        assert_eq!(want.literal.len(), reference.strings.len(), "{model_type}: one answer per string");
        let aborted = want.literal.iter().filter(|t| t.is_none()).count();
        if (aborted > 0) != listed(LLAMA_CPP_ABORTS, model_type) {
            problems.push(format!(
                "{model_type}: llama.cpp aborts on {aborted} strings: LLAMA_CPP_ABORTS is not true"
            ));
        }
        let theirs = content(&std::fs::read(zoo().join(model_type).join("converter-f32.gguf")).unwrap());
        let dir = writer_input(model_type, tmp.path());
        let mut ours = content(&gguf::from_safetensors(&dir, Quantization::F32).unwrap());
        if listed(WRITER_EMBEDS_ANOTHER_TOKENIZER, model_type) {
            let (differ, _) = tokenizes_as(model_type, &ours.metadata, &reference.strings, want);
            if differ.is_empty() {
                problems.push(format!(
                    "{model_type}: the writer's embedded tokenizer.json tokenizes as llama.cpp: take it off WRITER_EMBEDS_ANOTHER_TOKENIZER"
                ));
            }
            ours.metadata.remove(gguf::HF_TOKENIZER_JSON);
        }
        for (whose, file) in [("converter's", &theirs), ("writer's", &ours)] {
            let (p, n) =
                tokenizes_as(&format!("{model_type} {whose}"), &file.metadata, &reference.strings, want);
            problems.extend(p.into_iter().map(|(_, m)| m));
            compared += n;
        }
    }
    eprintln!(
        "{compared} (string, file) pairs of {} architectures compared with llama.cpp, each as text and parsed",
        reference.architectures.len()
    );
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.iter().take(4000).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Pre-tokenizer names under which llama.cpp splits otherwise than the `tokenizer.json` regex
/// the reader keeps (pre.rs: the model's own split, which transformers applies), with the strings
/// on which they may differ and why; any other string must still tokenize alike, and each name
/// must differ somewhere.
#[allow(clippy::type_complexity)]
const LLAMA_CPP_SPLITS_OTHERWISE: &[(&[&str], fn(&str) -> bool, &str)] = &[
    (
        &["tekken", "gpt-4o", "llama4"],
        |s| !s.is_ascii(),
        "llama.cpp rewrites `[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]` as `(?=[\\p{L}])([^a-z])` and \
         `[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]` as `(?=[\\p{L}])([^A-Z])` for its std::regex (llama-vocab.cpp, \
         LLAMA_VOCAB_PRE_TYPE_GPT4O/TEKKEN): a non-ASCII letter is both cases and a combining mark no \
         letter, so `ÉCOLE` splits as `É` `COLE` and marks split words. Only non-ASCII strings may differ",
    ),
    (
        &["deepseek-llm"],
        |s| s.contains('\u{3000}'),
        "its split `\\s?[!-/:-~！-／：-～‘-‟　-。]+` lists the ideographic space U+3000 both as whitespace \
         and in a range; llama.cpp's std::wregex groups a run of them otherwise than the regex crate \
         (`\u{3000}\u{3000}` `\u{3000}` for one run of three). Only strings with U+3000 may differ",
    ),
];

/// The reader, given the writer's llama file with the trained vocabulary in place of its own
/// (`tokenizer.ggml.tokens`, `token_type`, `merges`; no embedded tokenizer.json) and each
/// `tokenizer.ggml.pre` name it accepts, tokenizes every generated string as llama.cpp does from
/// the same file under that name: the split of every name, where a wrong split changes the ids.
#[test]
fn every_pre_tokenizer_name_splits_generated_strings_as_llama_cpp() {
    let reference = tokenization();
    let trained = &reference.trained;
    let names: BTreeSet<&str> = trained.pre.keys().map(String::as_str).collect();
    let accepted: BTreeSet<&str> = gguf::pre_tokenizer_names().into_iter().collect();
    assert_eq!(
        names, accepted,
        "TOKENIZATION.json's names are the reader's: rerun tokenization_reference.py"
    );
    let file = content(&gguf::from_safetensors(&zoo().join("llama"), Quantization::F32).unwrap());
    let strings = |key: &str| -> Vec<String> {
        let list =
            file.metadata.get(key).and_then(|v| v.to_vec().ok()).unwrap_or_else(|| panic!("no `{key}`"));
        list.iter().map(|v| v.to_string().expect("a string").clone()).collect()
    };
    let types = file.metadata["tokenizer.ggml.token_type"].to_vec().unwrap();
    let control: BTreeSet<String> = strings("tokenizer.ggml.tokens")
        .into_iter()
        .zip(types)
        .filter(|(_, t)| t.to_i32().ok() == Some(3))
        .map(|(token, _)| token)
        .collect();
    let mut md = file.metadata.clone();
    md.remove(gguf::HF_TOKENIZER_JSON);
    let list = |items: &[String]| Value::Array(items.iter().map(|t| Value::String(t.clone())).collect());
    md.insert("tokenizer.ggml.tokens".into(), list(&trained.tokens));
    md.insert("tokenizer.ggml.merges".into(), list(&trained.merges));
    assert!(
        control.iter().all(|t| trained.control.contains(t)),
        "the trained vocabulary's control tokens include the zoo's"
    );
    let types =
        trained.tokens.iter().map(|t| Value::I32(if trained.control.contains(t) { 3 } else { 1 })).collect();
    md.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    let (mut problems, mut compared, mut allowed) = (Vec::new(), 0, 0);
    for (name, &group) in &trained.pre {
        let want = trained.tokenizations.get(group).unwrap_or_else(|| panic!("`{name}`: no group {group}"));
        md.insert("tokenizer.ggml.pre".into(), Value::String(name.clone()));
        let (p, n) = tokenizes_as(&format!("`{name}`"), &md, &reference.strings, want);
        compared += n;
        let allowance = LLAMA_CPP_SPLITS_OTHERWISE.iter().find(|(names, ..)| names.contains(&name.as_str()));
        let mut differ = 0;
        for (i, message) in p {
            match (allowance, reference.strings.get(i)) {
                (Some((_, on, _)), Some(s)) if on(s) => differ += 1,
                _ => problems.push(message),
            }
        }
        if allowance.is_some() && differ == 0 {
            problems.push(format!("`{name}` splits as llama.cpp: take it off LLAMA_CPP_SPLITS_OTHERWISE"));
        }
        allowed += differ;
    }
    eprintln!(
        "{compared} (string, name) pairs compared with llama.cpp, each as text and parsed; \
         {allowed} differences within LLAMA_CPP_SPLITS_OTHERWISE"
    );
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.iter().take(4000).cloned().collect::<Vec<_>>().join("\n")
    );
}
