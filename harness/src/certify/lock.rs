//! The playbook lock (`playbooks/playbook.lock`): one SHA-256 per playbook and template file.
//! Certification refuses evidence planned by a playbook that changed since it was locked, so a
//! score always belongs to a reviewed playbook.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const LOCK_FILE: &str = "playbook.lock";

/// A playbook whose bytes differ from the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    Changed { file: String, locked: String, now: String },
    Unlocked { file: String },
    Removed { file: String },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Changed { file, locked, now } => {
                write!(
                    f,
                    "{file} changed since it was locked (locked {}…, now {}…)",
                    &locked[..12],
                    &now[..12]
                )
            }
            Drift::Unlocked { file } => write!(f, "{file} is not in the lock"),
            Drift::Removed { file } => write!(f, "{file} is locked but no longer exists"),
        }
    }
}

/// The lock could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("failed to read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: expected `<sha256>  <file>`")]
    Syntax { path: PathBuf, line: usize },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io { path: path.to_path_buf(), source }
}

/// SHA-256 (hex) by file path.
pub type Hashes = BTreeMap<String, String>;

/// SHA-256 of every `*.yaml`/`*.yml` under `root`, by path relative to it with `/` separators.
pub fn hashes(root: &Path) -> Result<Hashes, LockError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let key =
                    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.insert(key, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    Ok(out)
}

/// The lock file's text.
pub fn render(hashes: &Hashes) -> String {
    let mut out = String::from(
        "# modelqa playbook lock: the SHA-256 of every playbook and template. Certification refuses a\n\
         # playbook that differs from this file; review the change, then run `cargo xtask lock`.\n",
    );
    for (file, hash) in hashes {
        let _ = writeln!(out, "{hash}  {file}");
    }
    out
}

pub fn parse(path: &Path, text: &str) -> Result<Hashes, LockError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = || LockError::Syntax { path: path.to_path_buf(), line: i + 1 };
        let (hash, file) = line.split_once("  ").ok_or_else(syntax)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || file.trim().is_empty() {
            return Err(syntax());
        }
        out.insert(file.trim().to_string(), hash.to_ascii_lowercase());
    }
    Ok(out)
}

/// Reads `<root>/playbook.lock`; a missing lock is an empty one.
pub fn read(root: &Path) -> Result<Hashes, LockError> {
    let path = root.join(LOCK_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(LockError::Io { path, source }),
    }
}

/// Every difference between the lock and the files.
pub fn drift(locked: &Hashes, now: &Hashes) -> Vec<Drift> {
    let mut out = Vec::new();
    for (file, hash) in now {
        match locked.get(file) {
            None => out.push(Drift::Unlocked { file: file.clone() }),
            Some(l) if l != hash => {
                out.push(Drift::Changed { file: file.clone(), locked: l.clone(), now: hash.clone() })
            }
            Some(_) => {}
        }
    }
    for file in locked.keys().filter(|f| !now.contains_key(*f)) {
        out.push(Drift::Removed { file: file.clone() });
    }
    out
}
