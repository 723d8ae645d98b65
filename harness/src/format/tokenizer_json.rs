//! `tokenizer.json` read without trusting it: the one way the crate makes a `Tokenizer` from a
//! file or bytes a model brought. It never tokenizes; it only refuses what would crash.
//!
//! tokenizers 0.23 panics (`expect("Helper")` in its decoder deserializer) when the value of
//! `decoder` is not well-formed JSON, which a fuzzed GGUF's embedded tokenizer found: the
//! document is checked as JSON first (a decoder that is neither an object nor null is refused
//! too), and the parse runs under `catch_unwind`, so any other panic of the library on a file
//! becomes an error naming it, never a crashed trial.

use std::path::Path;

use tokenizers::Tokenizer;

/// The largest tokenizer.json read: the largest published ones (vocabularies of 256k with
/// merges) are about 35 MB.
pub(crate) const MAX_BYTES: u64 = 256 << 20;

/// Reads and parses `path`, refusing a file over [`MAX_BYTES`] before reading it.
pub(crate) fn read(path: &Path) -> tokenizers::Result<Tokenizer> {
    parse(crate::format::files::read_bounded(path, MAX_BYTES)?.as_bytes())
}

/// Parses tokenizer.json bytes.
pub(crate) fn parse(bytes: &[u8]) -> tokenizers::Result<Tokenizer> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        decoder: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)?;
    if let Some(decoder) = probe.decoder
        && !(decoder.is_object() || decoder.is_null())
    {
        return Err(format!("`decoder` must be an object or null, not {decoder}").into());
    }
    match std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("the tokenizers library cannot read it (it panicked: {message})").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoder_the_library_would_panic_on_is_refused_and_a_clean_one_parses() {
        let clean = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#;
        parse(clean.as_bytes()).expect("a clean tokenizer parses");
        for decoder in ["5", "\"x\"", "[1]", "true"] {
            let bad = clean.replace(r#""decoder":null"#, &format!(r#""decoder":{decoder}"#));
            let e = parse(bad.as_bytes()).expect_err("refused");
            assert!(e.to_string().contains("`decoder` must be an object or null"), "{e}");
        }
        // The fuzzed case: a decoder that is not JSON at all. The library panics on it; the
        // guard refuses it as JSON.
        let bad = clean.replace(r#""decoder":null"#, r#""decoder":full"#);
        assert!(std::panic::catch_unwind(|| Tokenizer::from_bytes(bad.as_bytes())).is_err());
        let e = parse(bad.as_bytes()).expect_err("refused");
        assert!(e.to_string().contains("expected ident at line 1"), "{e}");
        assert!(parse(b"not json").is_err());
    }
}
