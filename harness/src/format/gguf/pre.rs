//! llama.cpp's BPE pre-tokenizers (`tokenizer.ggml.pre`): each name's split, as the chain of
//! regexes a `tokenizer.json` spells it. The writer names a tokenizer's pre-tokenizer by
//! matching its `tokenizer.json` against this table (llama.cpp's converter names it by a hash
//! of how the tokenizer encodes a check text, which knows only published vocabularies); the
//! reader rebuilds the split from the name. A pre-tokenizer the table does not hold is an
//! error naming what was found, never a default in its place.
//!
//! The regexes are those `tokenizer.json` files carry, which llama.cpp's `llm_tokenizer_bpe`
//! quotes as its source for each name (it rewrites some, e.g. `(?i:'s|…)` as `'[sS]|…`, for its
//! own regex engine). Several llama.cpp names share one split: the hash told their vocabularies
//! apart, and llama.cpp sets a few flags by name (whether BOS is added, which the writer states in
//! `tokenizer.ggml.add_bos_token`; `ignore_merges`, which changes nothing for a vocabulary whose
//! every token its merges reach; `clean_spaces` in decoding). The writer writes the first name of
//! an entry, the one llama.cpp's converter writes for the best-known model of that split (Llama 3,
//! Qwen2, GPT-2, StarCoder, …); the reader accepts every name.
//!
//! Not here: chameleon, bloom and poro, viking, and the rest of llama.cpp's rarer names; the
//! writer refuses a tokenizer with such a split, naming the split, and the reader the name.
//! Falcon's own tokenizer.json spells its first step as `Punctuation`, which the writer does not
//! map, so Falcon's tokenizer is refused; `falcon` is written only for a tokenizer.json that
//! spells the same chain as `Split` steps.

use serde_json::Value;

/// GPT-2's split, which `ByteLevel` applies itself when its `use_regex` is on.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// One llama.cpp pre-tokenizer: its names (the first is written) and its split regexes, each
/// applied in turn to what the ones before left (Hugging Face's `Split` with `Isolated`), before
/// the byte-level mapping.
pub(super) struct PreTokenizer {
    pub names: &'static [&'static str],
    pub splits: &'static [&'static str],
}

pub(super) const PRE_TOKENIZERS: &[PreTokenizer] = &[
    PreTokenizer { names: &["gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion"], splits: &[GPT2] },
    PreTokenizer {
        names: &["llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", "falcon3", "pixtral"],
        splits: &[
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
    },
    PreTokenizer {
        names: &["qwen2", "stablelm2", "deepseek-r1-qwen"],
        splits: &[
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
    },
    PreTokenizer {
        names: &["qwen35"],
        splits: &[
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
    },
    // StarCoder's tokenizer.json: single digits (`Digits`), then GPT-2's split.
    PreTokenizer {
        names: &["starcoder", "refact", "command-r", "smollm", "codeshell"],
        splits: &[r"\p{N}", GPT2],
    },
    PreTokenizer {
        names: &["tekken"],
        splits: &[
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
    },
    PreTokenizer {
        names: &["gpt-4o", "llama4"],
        splits: &[
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
    },
    // DeepSeek's and Falcon's chains, as llama.cpp splits them (its regexes are the
    // tokenizer.json's `Split` steps; `\p{N}` and `\p{N}+` are `Digits`, individual or not).
    PreTokenizer {
        names: &["deepseek-llm"],
        splits: &[
            "[\r\n]",
            "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
            "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
            "\\s+$",
            "[一-龥ࠀ-一가-퟿]+",
            "\\p{N}+",
        ],
    },
    PreTokenizer {
        names: &["deepseek-coder"],
        splits: &["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"],
    },
    PreTokenizer {
        names: &["deepseek-v3"],
        splits: &[
            "\\p{N}{1,3}",
            "[一-龥぀-ゟ゠-ヿ]+",
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
        ],
    },
    PreTokenizer {
        names: &["falcon"],
        splits: &[
            "[\\p{P}\\$\\+<=>\\^~\\|`]+",
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
            "[0-9][0-9][0-9]",
        ],
    },
    // llama.cpp's own split for a file that names none (or `default`); never written.
    PreTokenizer {
        names: &["default"],
        splits: &[
            r"[\p{P}\$\+<=>\^~\|]+",
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ],
    },
];

/// Why a `tokenizer.json`'s pre-tokenizer has no llama.cpp name.
#[derive(Debug, thiserror::Error)]
pub enum PreTokenizerError {
    #[error("pre_tokenizer: {0} has no llama.cpp equivalent")]
    Unsupported(String),
    #[error("pre_tokenizer: the split {found:?} is none of llama.cpp's pre-tokenizers ({known})")]
    Unknown { found: Vec<String>, known: String },
}

/// The split regexes of a `tokenizer.json` `pre_tokenizer`, and whether it ends in the byte-level
/// mapping (required: llama.cpp's `gpt2` model is byte-level).
fn splits(pre: &Value, out: &mut Vec<String>) -> Result<(), PreTokenizerError> {
    let unsupported = || PreTokenizerError::Unsupported(pre.to_string());
    match pre["type"].as_str() {
        Some("Sequence") => {
            for p in pre["pretokenizers"].as_array().ok_or_else(unsupported)? {
                splits(p, out)?;
            }
        }
        Some("Split") => {
            let isolated =
                pre["behavior"].as_str() == Some("Isolated") && pre["invert"].as_bool() != Some(true);
            match pre["pattern"]["Regex"].as_str() {
                Some(r) if isolated => out.push(r.to_string()),
                _ => return Err(unsupported()),
            }
        }
        Some("Digits") => out
            .push(if pre["individual_digits"].as_bool() == Some(true) { r"\p{N}" } else { r"\p{N}+" }.into()),
        Some("ByteLevel") if pre["add_prefix_space"].as_bool() != Some(true) => {
            if pre["use_regex"].as_bool() != Some(false) {
                out.push(GPT2.into());
            }
            out.push(BYTE_LEVEL.into());
        }
        _ => return Err(unsupported()),
    }
    Ok(())
}

/// Marks the byte-level mapping in a chain (never a regex: it is not valid one).
const BYTE_LEVEL: &str = "(byte-level";

/// The llama.cpp name of the pre-tokenizer of a `tokenizer.json`.
pub(super) fn name_of(tokenizer: &Value) -> Result<&'static str, PreTokenizerError> {
    let mut chain = Vec::new();
    splits(&tokenizer["pre_tokenizer"], &mut chain)?;
    if chain.last().map(String::as_str) != Some(BYTE_LEVEL)
        || chain.iter().filter(|s| *s == BYTE_LEVEL).count() != 1
    {
        return Err(PreTokenizerError::Unsupported(format!(
            "{} (llama.cpp's BPE ends in one byte-level step)",
            tokenizer["pre_tokenizer"]
        )));
    }
    chain.pop();
    PRE_TOKENIZERS
        .iter()
        .filter(|p| p.names[0] != "default")
        .find(|p| p.splits.iter().eq(chain.iter()))
        .map(|p| p.names[0])
        .ok_or_else(|| PreTokenizerError::Unknown {
            found: chain,
            known: PRE_TOKENIZERS.iter().map(|p| p.names[0]).collect::<Vec<_>>().join(", "),
        })
}

/// Every name the reader accepts, for an error that refuses another.
pub(super) fn known_names() -> String {
    pre_tokenizer_names().join(", ")
}

/// Every `tokenizer.ggml.pre` name the reader accepts.
pub fn pre_tokenizer_names() -> Vec<&'static str> {
    PRE_TOKENIZERS.iter().flat_map(|p| p.names.iter().copied()).collect()
}

/// The split regexes of a llama.cpp pre-tokenizer name.
pub(super) fn splits_of(name: &str) -> Option<&'static [&'static str]> {
    PRE_TOKENIZERS.iter().find(|p| p.names.contains(&name)).map(|p| p.splits)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn byte_level(use_regex: bool) -> Value {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
    }

    fn split(regex: &str) -> Value {
        json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
    }

    fn name(pre: Value) -> Result<&'static str, PreTokenizerError> {
        name_of(&json!({ "pre_tokenizer": pre }))
    }

    #[test]
    fn each_written_name_is_found_from_its_tokenizer_json() {
        for p in PRE_TOKENIZERS.iter().filter(|p| p.names[0] != "default") {
            let mut chain: Vec<Value> = p.splits.iter().map(|r| split(r)).collect();
            chain.push(byte_level(false));
            assert_eq!(name(json!({"type": "Sequence", "pretokenizers": chain})).unwrap(), p.names[0]);
        }
        assert_eq!(name(byte_level(true)).unwrap(), "gpt-2");
        let starcoder = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]});
        assert_eq!(name(starcoder).unwrap(), "starcoder");
    }

    #[test]
    fn an_unknown_split_is_an_error_naming_it() {
        let e = name(json!({"type": "Sequence", "pretokenizers": [split(r"\p{N}{1,5}"), byte_level(false)]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains(r"\\p{N}{1,5}") && e.contains("qwen2"), "{e}");
        let e = name(json!({"type": "Metaspace", "replacement": "▁"})).unwrap_err().to_string();
        assert!(e.contains("Metaspace"), "{e}");
        let e = name(split(GPT2)).unwrap_err().to_string();
        assert!(e.contains("byte-level"), "{e}");
    }
}
