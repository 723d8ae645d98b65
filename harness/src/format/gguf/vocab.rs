//! A model's tokenizer as GGUF metadata, as llama.cpp's converter (`convert_hf_to_gguf.py` and
//! gguf-py's `SpecialVocab`) writes it from `tokenizer.json`, `tokenizer_config.json` and
//! `config.json`: a byte-level BPE as `gpt2` with its pre-tokenizer named
//! (`tokenizer.ggml.pre`, see `pre.rs`), or a SentencePiece-style BPE (byte fallback) of a
//! llama as `llama`; the special tokens and whether BOS/EOS are added; the whole
//! `tokenizer.json` under [`HF_TOKENIZER_JSON`] and the chat template.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use super::{HF_TOKENIZER_JSON, err};
use crate::format::convert::ConvertError;

/// gguf-py's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// Gemma3Model cuts the embedding to the tokenizer's tokens; a model with more embedding rows
/// than tokens is refused rather than given other logits.
pub(super) fn gemma3_vocabulary(dir: &std::path::Path, config: &Json) -> Result<(), ConvertError> {
    let rows = config.get("vocab_size").and_then(Json::as_u64).unwrap_or(0);
    let count = if dir.join("tokenizer.model").is_file() {
        None
    } else {
        let path = dir.join("tokenizer.json");
        let text = crate::format::files::read_bounded(&path, crate::format::tokenizer_json::MAX_BYTES)
            .map_err(|e| err(&path, e))?;
        let tok: Json = serde_json::from_str(&text).map_err(|e| err(&path, e))?;
        let n = |v: &Json| v.as_object().map(|o| o.len()).or_else(|| v.as_array().map(Vec::len)).unwrap_or(0);
        Some((n(&tok["model"]["vocab"]) + n(&tok["added_tokens"])) as u64)
    };
    match count {
        Some(tokens) if tokens < rows => Err(ConvertError::Unsupported(format!(
            "GGUF of a gemma3_text whose `vocab_size` {rows} exceeds its tokenizer's {tokens} tokens (the converter cuts the embedding to the tokens, which changes the logits)"
        ))),
        _ => Ok(()),
    }
}

/// SentencePiece's unknown piece's type (the others share gguf-py's numbers).
const UNKNOWN: i32 = 2;
/// The end-of-turn id GemmaModel states for every Gemma.
const GEMMA_EOT: u32 = 107;

/// The special tokens `SpecialVocab` looks for, with the key each is written under.
const SPECIAL: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// The tokenizer metadata of the model in `dir` (`config` its normalised config.json, `arch`
/// its GGUF architecture).
pub(super) fn tokenizer_metadata(
    dir: &Path,
    config: &Json,
    arch: &str,
) -> Result<Vec<(String, Value)>, ConvertError> {
    let path = dir.join("tokenizer.json");
    let text = crate::format::files::read_bounded(&path, crate::format::tokenizer_json::MAX_BYTES)
        .map_err(|e| err(&path, e))?;
    let tok: Json = serde_json::from_str(&text).map_err(|e| err(&path, e))?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc: Option<Json> = match crate::format::files::read_side_file(&tc_path) {
        Ok(t) => Some(serde_json::from_str(&t).map_err(|e| err(&tc_path, e))?),
        Err(_) => None,
    };
    // LlamaModel's vocabulary rules are granite's too (GraniteModel is one).
    let llama = matches!(arch, "llama" | "granite");
    // Gemma's and Gemma 2's converters read the SentencePiece `tokenizer.model` and nothing else;
    // Gemma 3's reads it where there is one.
    let model_path = dir.join("tokenizer.model");
    let from_model = match arch {
        "gemma" | "gemma2" => true,
        "gemma3" => model_path.is_file(),
        _ => false,
    };
    // Phi3MiniModel writes a byte-level BPE only for a `GPT2Tokenizer`.
    if arch == "phi3" {
        let class = tc.as_ref().and_then(|tc| tc["tokenizer_class"].as_str()).unwrap_or("none");
        if class != "GPT2Tokenizer" {
            return Err(ConvertError::Unsupported(format!(
                "GGUF of a phi3 whose tokenizer_config.json `tokenizer_class` is `{class}`: the writer \
                 writes phi3's `GPT2Tokenizer` vocabulary only, not the SentencePiece one the converter \
                 reads from tokenizer.model"
            )));
        }
    }
    // A llama whose tokenizer.json is SentencePiece's BPE (byte fallback, a decoder sequence) is
    // written as the converter's `LlamaHfVocab` writes it; any other tokenizer must be a
    // byte-level BPE whose pre-tokenizer llama.cpp knows.
    let sentencepiece = llama
        && tok["model"]["type"] == "BPE"
        && tok["model"]["byte_fallback"].as_bool() == Some(true)
        && tok["decoder"]["type"] == "Sequence";
    let mut md = Vec::new();
    // LlamaModel states tokenizer_config.json's `add_prefix_space` where it has one.
    if llama && let Some(b) = tc.as_ref().and_then(|tc| tc["add_prefix_space"].as_bool()) {
        md.push(("tokenizer.ggml.add_space_prefix".to_string(), Value::Bool(b)));
    }
    md.extend(if from_model {
        sentencepiece_vocab(&model_path, dir, config, tc.as_ref())?
    } else if sentencepiece {
        llama_vocab(&tok)
    } else {
        gpt2_vocab(&tok, config, &path)?
    });
    if from_model {
        md.push(("tokenizer.ggml.add_space_prefix".to_string(), Value::Bool(false)));
    }
    // GemmaModel's CodeGemma end-of-turn token, whatever the vocabulary (its other infill
    // tokens have no key gguf-py writes).
    if arch == "gemma" {
        md.push(("tokenizer.ggml.eot_token_id".to_string(), Value::U32(GEMMA_EOT)));
    }
    md.push((HF_TOKENIZER_JSON.to_string(), Value::String(text)));
    md.extend(special_vocab(&tok, tc.as_ref(), config));
    if llama {
        llama_vocab_size_rules(&mut md, config["vocab_size"].as_u64());
    }
    if let Some(tc) = &tc
        && let Some(template) = crate::chat::ChatTemplate::from_tokenizer_config(tc)
    {
        md.push(("tokenizer.chat_template".to_string(), Value::String(template.source)));
    }
    Ok(md)
}

/// `_set_vocab_gpt2`: every id up to the config's `vocab_size` (`[PADn]` unused where the
/// tokenizer has none), added tokens as control or user-defined, the merges, and the
/// pre-tokenizer's llama.cpp name.
fn gpt2_vocab(tok: &Json, config: &Json, path: &Path) -> Result<Vec<(String, Value)>, ConvertError> {
    let pre = super::pre::name_of(tok).map_err(|e| err(path, e))?;
    let mut by_id: BTreeMap<u64, (String, i32)> = BTreeMap::new();
    if let Some(vocab) = tok["model"]["vocab"].as_object() {
        for (t, id) in vocab {
            if let Some(id) = id.as_u64() {
                by_id.insert(id, (t.clone(), NORMAL));
            }
        }
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            let kind = if added["special"].as_bool().unwrap_or(false) { CONTROL } else { USER_DEFINED };
            by_id.insert(id, (content.to_string(), kind));
        }
    }
    let rows = config["vocab_size"].as_u64().unwrap_or(0).max(by_id.keys().next_back().map_or(0, |m| m + 1));
    let mut tokens = Vec::with_capacity(rows as usize);
    let mut types = Vec::with_capacity(rows as usize);
    for id in 0..rows {
        let (t, kind) = by_id.remove(&id).unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
        tokens.push(Value::String(t));
        types.push(Value::I32(kind));
    }
    // Merges as `a b`; a space inside a part (transformers ≥ 4.45's pair form allows one) is
    // written as U+0120, as gguf-py writes it.
    let part = |s: &str| s.replace(' ', "\u{0120}");
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) => {
                Some(format!("{} {}", part(pair.first()?.as_str()?), part(pair.get(1)?.as_str()?)))
            }
            _ => None,
        })
        .map(Value::String)
        .collect();
    Ok(vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ])
}

/// `_set_vocab_llama_hf`: the base vocabulary in id order (`<0xXX>` pieces as bytes, special
/// tokens as control), then the added tokens beyond it, every score -1000, and `default` as the
/// pre-tokenizer (llama.cpp's `llama` model does not split by regex).
fn llama_vocab(tok: &Json) -> Vec<(String, Value)> {
    let special: std::collections::HashSet<u64> = tok["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["special"].as_bool() == Some(true))
        .filter_map(|a| a["id"].as_u64())
        .collect();
    let mut base: BTreeMap<u64, String> = BTreeMap::new();
    if let Some(vocab) = tok["model"]["vocab"].as_object() {
        for (t, id) in vocab {
            if let Some(id) = id.as_u64() {
                base.insert(id, t.clone());
            }
        }
    }
    let base_size = base.keys().next_back().map_or(0, |m| m + 1);
    let is_byte = |t: &str| {
        t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
    };
    let mut entries: Vec<(String, i32)> = base
        .into_iter()
        .map(|(id, t)| {
            let kind = if is_byte(&t) {
                BYTE
            } else if special.contains(&id) {
                CONTROL
            } else {
                NORMAL
            };
            (t, kind)
        })
        .collect();
    let mut added: Vec<(u64, String, bool)> = tok["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["id"].as_u64()?,
                a["content"].as_str()?.to_string(),
                a["special"].as_bool() == Some(true),
            ))
        })
        .filter(|(id, _, _)| *id >= base_size)
        .collect();
    added.sort();
    entries.extend(added.into_iter().map(|(_, t, s)| (t, if s { CONTROL } else { USER_DEFINED })));
    vec![
        ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(entries.iter().map(|(t, _)| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.scores".to_string(),
            Value::Array(entries.iter().map(|_| Value::F32(-1000.0)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(entries.iter().map(|(_, k)| Value::I32(*k)).collect()),
        ),
    ]
}

/// The pieces of a SentencePiece `tokenizer.model` (its `ModelProto`), in id order: each piece's
/// text, score and type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
fn sentencepiece_pieces(bytes: &[u8]) -> Result<Vec<(String, f32, i32)>, String> {
    /// One protobuf field: its number, and its varint value or its bytes.
    enum Field<'a> {
        Int(u64),
        Bytes(&'a [u8]),
    }
    fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at).ok_or("a varint runs past the end")?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }
    fn fields(b: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < b.len() {
            let tag = varint(b, &mut at)?;
            let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
                let end = at.checked_add(n).filter(|e| *e <= b.len()).ok_or("a field runs past the end")?;
                let s = &b[*at..end];
                *at = end;
                Ok(s)
            };
            let field = match tag & 7 {
                0 => Field::Int(varint(b, &mut at)?),
                1 => Field::Bytes(take(&mut at, 8)?),
                2 => {
                    let n = varint(b, &mut at)?;
                    Field::Bytes(take(&mut at, usize::try_from(n).map_err(|_| "a length beyond memory")?)?)
                }
                5 => Field::Bytes(take(&mut at, 4)?),
                w => return Err(format!("wire type {w}, which no tokenizer.model holds")),
            };
            out.push((tag >> 3, field));
        }
        Ok(out)
    }
    let mut pieces = Vec::new();
    for (number, field) in fields(bytes)? {
        let (1, Field::Bytes(piece)) = (number, field) else { continue };
        let (mut text, mut score, mut kind) = (String::new(), 0f32, 1i32);
        for (number, field) in fields(piece)? {
            match (number, field) {
                (1, Field::Bytes(t)) => {
                    text = String::from_utf8(t.to_vec()).map_err(|_| "a piece that is not UTF-8")?;
                }
                (2, Field::Bytes(s)) if s.len() == 4 => score = f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                (3, Field::Int(k)) => kind = i32::try_from(k).map_err(|_| "a piece type out of range")?,
                _ => {}
            }
        }
        pieces.push((text, score, kind));
    }
    if pieces.is_empty() {
        return Err("no pieces".into());
    }
    Ok(pieces)
}

/// `_set_vocab_sentencepiece` (`_create_vocab_sentencepiece`): `tokenizer.model`'s pieces, each
/// with its score and type (a user-defined piece is written as normal), up to the config's
/// `vocab_size` (`[PADn]`, unused, score -10000, where it has no piece); then added_tokens.json's
/// tokens as user-defined and tokenizer_config.json's `added_tokens_decoder` as control (special,
/// or looking special) or user-defined, each scored -1000; `llama` with the `default` split.
fn sentencepiece_vocab(
    model: &Path,
    dir: &Path,
    config: &Json,
    tc: Option<&Json>,
) -> Result<Vec<(String, Value)>, ConvertError> {
    let bytes = crate::format::files::read_bounded_bytes(model, crate::format::tokenizer_json::MAX_BYTES)
        .map_err(|e| err(model, e))?;
    let pieces = sentencepiece_pieces(&bytes).map_err(|e| err(model, e))?;
    let size = config["vocab_size"].as_u64().map_or(pieces.len(), |v| v as usize);
    let mut tokens: Vec<String> = (0..size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000f32; size];
    let mut types = vec![UNUSED; size];
    for (id, (text, score, kind)) in pieces.into_iter().enumerate().take(size) {
        tokens[id] = text;
        scores[id] = score;
        types[id] = match kind {
            UNKNOWN | CONTROL | UNUSED | BYTE => kind,
            _ => NORMAL,
        };
    }
    let added_path = dir.join("added_tokens.json");
    if let Ok(text) = crate::format::files::read_side_file(&added_path) {
        let added: BTreeMap<String, u64> = serde_json::from_str(&text).map_err(|e| err(&added_path, e))?;
        for (t, id) in added {
            if let Some(i) = usize::try_from(id).ok().filter(|i| *i < size) {
                (tokens[i], scores[i], types[i]) = (t, -1000.0, USER_DEFINED);
            }
        }
    }
    let decoder = tc.and_then(|tc| tc["added_tokens_decoder"].as_object());
    for (id, data) in decoder.into_iter().flatten() {
        let (Some(i), Some(t)) = (id.parse::<usize>().ok().filter(|i| *i < size), data["content"].as_str())
        else {
            continue;
        };
        (tokens[i], types[i]) = if data["special"].as_bool() == Some(true) || looks_special(t) {
            (t.to_string(), CONTROL)
        } else {
            (t.replace('\u{2581}', " "), USER_DEFINED)
        };
        scores[i] = -1000.0;
    }
    Ok(vec![
        ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.scores".to_string(), Value::Array(scores.into_iter().map(Value::F32).collect())),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types.into_iter().map(Value::I32).collect())),
    ])
}

/// The converter's `does_token_look_special`: added tokens some models leave unmarked.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// LlamaModel's rules by vocabulary size: CodeLlama's (32016) infill and end-of-turn tokens, and
/// no BOS for the 49152-token vocabulary of small granite-style llamas (SmolLM's too).
fn llama_vocab_size_rules(md: &mut Vec<(String, Value)>, vocab_size: Option<u64>) {
    match vocab_size {
        Some(32016) => {
            for (key, id) in [("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010)] {
                md.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
            }
        }
        Some(49152) => {
            md.retain(|(k, _)| k != "tokenizer.ggml.add_bos_token");
            md.push(("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(false)));
        }
        _ => {}
    }
}

/// gguf-py's `SpecialVocab`: each special token's id, from tokenizer_config.json's `<kind>_token`
/// found among tokenizer.json's added tokens, else config.json's `<kind>_token_id`; whether BOS
/// and EOS are added, from tokenizer.json's post-processor, else tokenizer_config.json's
/// `add_<kind>_token`.
fn special_vocab(tok: &Json, tc: Option<&Json>, config: &Json) -> Vec<(String, Value)> {
    let added = tok["added_tokens"].as_array().cloned().unwrap_or_default();
    let content = |kind: &str| -> Option<String> {
        let entry = &tc?[format!("{kind}_token")];
        entry.as_str().or_else(|| entry["content"].as_str()).map(str::to_string)
    };
    let id_of = |text: &str| added.iter().find(|a| a["content"] == text).and_then(|a| a["id"].as_u64());
    let mut md = Vec::new();
    for (kind, key) in SPECIAL {
        let id =
            content(kind).and_then(|c| id_of(&c)).or_else(|| config[format!("{kind}_token_id")].as_u64());
        if let Some(id) = id {
            md.push((key.to_string(), Value::U32(id as u32)));
        }
    }
    let mut add: BTreeMap<&str, bool> = BTreeMap::new();
    let post = &tok["post_processor"];
    let processors = post["processors"].as_array().cloned().unwrap_or_else(|| vec![post.clone()]);
    for p in &processors {
        match p["type"].as_str() {
            Some("ByteLevel") => {
                add.entry("bos").or_insert(false);
                add.entry("eos").or_insert(false);
            }
            Some("RobertaProcessing") => {
                add.extend([("bos", true), ("eos", true), ("sep", true)]);
            }
            Some("TemplateProcessing") => {
                let single = p["single"].as_array().cloned().unwrap_or_default();
                if single.len() > 1 {
                    let special = |e: &Json| e["SpecialToken"]["id"].as_str().map(str::to_string);
                    // Without a tokenizer_config.json the template's own first and last special
                    // tokens are BOS and EOS.
                    if let Some(first) = single.first().and_then(special) {
                        let bos = tc.is_none()
                            || Some(&first) == content("bos").as_ref()
                            || Some(&first) == content("cls").as_ref();
                        add.insert("bos", bos);
                    }
                    if let Some(last) = single.last().and_then(special) {
                        add.insert("eos", tc.is_none() || Some(&last) == content("eos").as_ref());
                    }
                }
            }
            _ => {}
        }
    }
    for kind in ["bos", "eos", "sep"] {
        if let Some(b) = tc.and_then(|tc| tc[format!("add_{kind}_token")].as_bool()) {
            add.entry(kind).or_insert(b);
        }
    }
    for (kind, b) in add {
        md.push((format!("tokenizer.ggml.add_{kind}_token"), Value::Bool(b)));
    }
    md
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    /// Strings that part differently under different splits: contractions, runs of spaces,
    /// tabs and newlines, runs of digits, punctuation, letters of other scripts, emoji.
    const TEXTS: &[&str] = &[
        "Hello world",
        "I've been told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like tea? We'Ve a'lL",
        "  leading and trailing   ",
        "tabs\tand\t\tnewlines\n\n\nand \r\n crlf",
        "3 33 333 3333 33333 333333 3.3 3..3 12,345,678.90",
        "CamelCaseWords and snake_case_words and SHOUTING",
        "------======= !!!!!!?????? ......``````''''''\"\"\"\"",
        "нещо на Български, Ελληνικά, العربية, हिन्दी",
        "我想在apple工作1314151天～ こんにちは世界 안녕하세요",
        "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 🦙🦙",
        "fn main() {\n    println!(\"{}\", 42);\n}\n",
        "a\u{00A0}b\u{2003}c \u{200B}d",
    ];

    /// A byte-level BPE trained on [`TEXTS`] with no split at all, so its merges cross every
    /// boundary some split draws (digit runs, a space before punctuation, contractions, runs of
    /// whitespace) and any two splits that part a text differently tokenize it differently;
    /// then its pre-tokenizer replaced by `pre`.
    fn tokenizer_json(pre: Json) -> Json {
        use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
        use tokenizers::normalizers::NormalizerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::{AddedToken, TokenizerBuilder};
        static TRAINED: std::sync::OnceLock<Json> = std::sync::OnceLock::new();
        let trained = TRAINED.get_or_init(|| {
            let mut trainer = BpeTrainerBuilder::new()
                .show_progress(false)
                .vocab_size(1500)
                .min_frequency(0)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
                .build();
            let mut tokenizer =
                TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
                    .with_model(BPE::default())
                    .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false).use_regex(false)))
                    .with_decoder(Some(ByteLevel::default()))
                    .build()
                    .unwrap();
            let corpus: Vec<&str> = TEXTS.iter().copied().cycle().take(TEXTS.len() * 8).collect();
            tokenizer.train(&mut trainer, corpus.into_iter()).unwrap();
            serde_json::from_str(&tokenizer.to_string(false).unwrap()).unwrap()
        });
        let mut tok = trained.clone();
        tok["pre_tokenizer"] = pre;
        tok
    }

    /// The tokenizer the reader builds from the metadata the writer writes, without the embedded
    /// tokenizer.json (llama.cpp never reads it): the named pre-tokenizer, the vocabulary and
    /// merges alone.
    fn through_gguf(tok: &Json) -> (String, tokenizers::Tokenizer) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
        let md: HashMap<String, Value> = tokenizer_metadata(dir.path(), &json!({}), "qwen2")
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k != HF_TOKENIZER_JSON)
            .collect();
        let pre = md["tokenizer.ggml.pre"].to_string().unwrap().clone();
        (pre, super::super::read::tokenizer(&md).unwrap())
    }

    fn byte_level(use_regex: bool) -> Json {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
    }

    /// Every pre-tokenizer the writer can name: written, then read back from the name alone, it
    /// tokenizes every text as the original `tokenizer.json` does.
    #[test]
    fn every_written_pre_tokenizer_reads_back_to_the_same_tokens() {
        let mut cases: Vec<(Json, &str)> = super::super::pre::PRE_TOKENIZERS
            .iter()
            .filter(|p| p.names[0] != "default")
            .map(|p| {
                let mut chain: Vec<Json> = p
                    .splits
                    .iter()
                    .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
                    .collect();
                chain.push(byte_level(false));
                (json!({"type": "Sequence", "pretokenizers": chain}), p.names[0])
            })
            .collect();
        // The spellings a tokenizer.json uses for GPT-2's and StarCoder's splits.
        cases.push((byte_level(true), "gpt-2"));
        cases.push((
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "starcoder",
        ));
        let mut by_name: BTreeMap<&str, Vec<Vec<u32>>> = BTreeMap::new();
        for (pre, name) in cases {
            let tok = tokenizer_json(pre);
            let original = crate::format::tokenizer_json::parse(tok.to_string().as_bytes()).unwrap();
            let (written, read) = through_gguf(&tok);
            assert_eq!(written, name);
            for text in TEXTS {
                let want = original.encode(*text, false).unwrap().get_ids().to_vec();
                let got = read.encode(*text, false).unwrap().get_ids().to_vec();
                assert_eq!(got, want, "`{name}` on {text:?}");
            }
            by_name.insert(
                name,
                TEXTS.iter().map(|t| original.encode(*t, false).unwrap().get_ids().to_vec()).collect(),
            );
        }
        // The vocabulary tells the splits apart: a reader that took one name's split for another's
        // would fail above.
        for (a, ids_a) in &by_name {
            for (b, ids_b) in
                by_name.range::<&str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            {
                assert_ne!(ids_a, ids_b, "`{a}` and `{b}` tokenize every text alike");
            }
        }
    }

    /// A tokenizer whose split llama.cpp does not know stops the conversion, naming the split.
    #[test]
    fn an_unknown_pre_tokenizer_stops_the_conversion() {
        let tok = tokenizer_json(json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\p{N}{1,4}"}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
        let e = tokenizer_metadata(dir.path(), &json!({}), "llama").unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains(r"\\p{N}{1,4}"), "{e}");
    }

    /// A llama's SentencePiece-style tokenizer.json is written as the converter's `LlamaHfVocab`
    /// writes it: model `llama`, pre `default`, scores, byte and control pieces.
    #[test]
    fn a_sentencepiece_llama_tokenizer_is_written_as_llama() {
        let tok = json!({
            "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true},
                             {"id": 5, "content": "<extra>", "special": false}],
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}"},
            "decoder": {"type": "Sequence", "decoders": []},
            "post_processor": {"type": "TemplateProcessing", "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
            "model": {"type": "BPE", "byte_fallback": true, "merges": [],
                      "vocab": {"<unk>": 0, "<s>": 1, "<0x0A>": 2, "\u{2581}a": 3, "b": 4}},
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
        let md: HashMap<String, Value> = tokenizer_metadata(dir.path(), &json!({"bos_token_id": 1}), "llama")
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(md["tokenizer.ggml.model"].to_string().unwrap(), "llama");
        assert_eq!(md["tokenizer.ggml.pre"].to_string().unwrap(), "default");
        let types: Vec<i32> =
            md["tokenizer.ggml.token_type"].to_vec().unwrap().iter().map(|t| t.to_i32().unwrap()).collect();
        assert_eq!(types, [CONTROL, CONTROL, BYTE, NORMAL, NORMAL, USER_DEFINED]);
        assert_eq!(md["tokenizer.ggml.scores"].to_vec().unwrap().len(), 6);
        assert_eq!(md["tokenizer.ggml.bos_token_id"].to_u32().unwrap(), 1);
        assert!(!md.contains_key("tokenizer.ggml.add_space_prefix"));
        assert!(md["tokenizer.ggml.add_bos_token"].to_bool().unwrap(), "the template adds <s>");
        // A llama of 49152 tokens adds no BOS, whatever its post-processor says.
        let md: HashMap<String, Value> =
            tokenizer_metadata(dir.path(), &json!({"vocab_size": 49152}), "llama")
                .unwrap()
                .into_iter()
                .collect();
        assert!(!md["tokenizer.ggml.add_bos_token"].to_bool().unwrap());
        // qwen2's converter has no such path: the same tokenizer is refused there.
        assert!(
            tokenizer_metadata(dir.path(), &json!({}), "qwen2")
                .unwrap_err()
                .to_string()
                .contains("Metaspace")
        );
    }

    /// The zoo Gemma's `tokenizer.model` reads as SentencePiece reads it (512 pieces, scored by
    /// rank, the unknown piece 4, three control pieces); every cut of it is read or refused,
    /// never a panic, and a wire type no tokenizer.model holds is refused.
    #[test]
    fn a_sentencepiece_model_is_read_and_bad_bytes_are_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/zoo/gemma/tokenizer.model");
        let bytes = std::fs::read(path).unwrap();
        let pieces = sentencepiece_pieces(&bytes).unwrap();
        assert_eq!(pieces.len(), 512);
        assert_eq!(pieces[4].2, UNKNOWN);
        assert_eq!(pieces.iter().filter(|p| p.2 == CONTROL).count(), 3);
        assert_eq!((pieces[0].0.as_str(), pieces[5].1), ("<|endoftext|>", -5.0));
        for cut in 0..bytes.len().min(4096) {
            let _ = sentencepiece_pieces(&bytes[..cut]);
        }
        assert!(sentencepiece_pieces(&[0x0b]).unwrap_err().contains("wire type 3"));
        assert!(sentencepiece_pieces(&[0x0a, 0x05, 0x0a]).unwrap_err().contains("past the end"));
        assert_eq!(sentencepiece_pieces(&[]).unwrap_err(), "no pieces");
    }
}
