//! Reading files whose size someone else decides (a model's side files, a tokenizer, a
//! template's config): only regular files, and only up to a limit, checked before a byte is
//! read, so a device, a FIFO or a file of gigabytes can neither hold nor flood the harness.
//! This module imports nothing from the crate; the format readers and the chat templates both
//! read through it.

use std::path::Path;

/// The largest JSON side file of a model read (config.json, tokenizer_config.json,
/// generation_config.json, the safetensors index): real ones are kilobytes, the largest
/// tokenizer configs a few megabytes.
pub(crate) const MAX_SIDE_FILE_BYTES: u64 = 64 << 20;

/// Reads a model's JSON side file as text: a regular file of at most [`MAX_SIDE_FILE_BYTES`],
/// refused unread otherwise (a device, a FIFO or a file of gigabytes cannot hold or flood a
/// trial). A missing file is the usual `NotFound` error.
pub(crate) fn read_side_file(path: &Path) -> std::io::Result<String> {
    read_bounded(path, MAX_SIDE_FILE_BYTES)
}

/// Reads a regular file of at most `limit` bytes as text, refusing anything else unread.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    check(path, limit)?;
    std::fs::read_to_string(path)
}

/// Reads a regular file of at most `limit` bytes as bytes (a SentencePiece `tokenizer.model`),
/// refusing anything else unread.
pub(crate) fn read_bounded_bytes(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    check(path, limit)?;
    std::fs::read(path)
}

fn check(path: &Path, limit: u64) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    if meta.len() > limit {
        return Err(std::io::Error::other(format!("it is {} bytes; at most {limit} are read", meta.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_the_limit_are_read() {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let small = dir.path().join("config.json");
        std::fs::write(&small, "{}").expect("written");
        assert_eq!(read_bounded(&small, 2).expect("read"), "{}");
        let e = read_bounded(&small, 1).expect_err("over the limit");
        assert_eq!(e.to_string(), "it is 2 bytes; at most 1 are read");
        assert_eq!(
            read_side_file(&dir.path().join("none.json")).expect_err("missing").kind(),
            std::io::ErrorKind::NotFound
        );
        assert_eq!(
            read_bounded(dir.path(), 1 << 20).expect_err("a directory").to_string(),
            "it is not a regular file"
        );
        #[cfg(unix)]
        {
            // A device linked in as a side file is refused, not read for ever.
            let zero = dir.path().join("generation_config.json");
            std::os::unix::fs::symlink("/dev/zero", &zero).expect("a link");
            assert_eq!(read_side_file(&zero).expect_err("a device").to_string(), "it is not a regular file");
        }
    }
}
