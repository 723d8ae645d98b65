//! Reading playbook files: discovery under a root, YAML parsing with locations, the choice
//! between our language and the original project's, and `extends` composition.
//!
//! This is the only part of the harness that reads playbooks from disk; it never looks at models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::PlaybookError;
use super::limits::{MAX_FILE_BYTES, MAX_FLOW_DEPTH};
use super::spec::PlaybookDoc;
use super::{Notice, Playbook, resolve, seed};

/// Folders whose files are templates, loaded only when a playbook names them in `extends`.
const TEMPLATE_DIR: &str = "templates";

/// The playbook files under `root` (a file or a directory), sorted. Finding none is an error
/// that names what was scanned.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>, PlaybookError> {
    let meta = std::fs::metadata(root)
        .map_err(|e| PlaybookError::new(root, format!("failed to read the playbook path: {e}")))?;
    if meta.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| PlaybookError::new(&dir, format!("failed to list the directory: {e}")))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| PlaybookError::new(&dir, format!("failed to list the directory: {e}")))?;
            let path = entry.path();
            let file_type = entry
                .file_type()
                .map_err(|e| PlaybookError::new(&path, format!("failed to read the file type: {e}")))?;
            if file_type.is_dir() {
                if path.file_name().is_some_and(|n| n != TEMPLATE_DIR) {
                    stack.push(path);
                }
            } else if is_yaml(&path) {
                found.push(path);
            }
        }
    }
    if found.is_empty() {
        return Err(PlaybookError::new(
            root,
            "no playbooks found: the directory and its subdirectories (except templates/) hold no *.yaml or *.yml file",
        ));
    }
    found.sort();
    Ok(found)
}

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Parses `text` as `T`, with the file, line, column and YAML path of any error.
pub(crate) fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, PlaybookError> {
    check_flow_depth(file, text)?;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| PlaybookError::from_yaml(file, e))
}

/// Loads one playbook file, in either language, into resolved playbooks. Templates it extends
/// must lie inside `root` (the directory the playbooks were found in).
pub(super) fn load_file(
    file: &Path,
    root: &Path,
    notices: &mut Vec<Notice>,
) -> Result<Vec<Playbook>, PlaybookError> {
    let text = read(file)?;
    load_text(file, root, &text, notices)
}

/// The directory `extends` may read from when the playbooks are `root` (a directory, or a
/// file's own directory).
pub(super) fn root_dir(root: &Path) -> PathBuf {
    if root.is_dir() { root.to_path_buf() } else { root.parent().unwrap_or(Path::new(".")).to_path_buf() }
}

/// Loads playbook text as the file `file` (templates it extends are read relative to `file`,
/// and only from inside `root`).
pub(super) fn load_text(
    file: &Path,
    root: &Path,
    text: &str,
    notices: &mut Vec<Notice>,
) -> Result<Vec<Playbook>, PlaybookError> {
    let text = text.to_string();
    if seed::is_seed_document(&text) {
        return seed::load(file, &text, notices).map(|p| vec![p]);
    }
    let doc = load_doc(file, root, &text, &mut Vec::new())?;
    if doc.family.is_none() {
        return Err(PlaybookError::new(
            file,
            "a playbook needs `family`; a file without it is a template, which belongs under templates/ and is named by a playbook's `extends`",
        ));
    }
    resolve::resolve(file, doc).map(|p| vec![p])
}

fn read(file: &Path) -> Result<String, PlaybookError> {
    read_bounded(file).map_err(|e| PlaybookError::new(file, format!("failed to read the playbook: {e}")))
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`]; anything else (a device, a FIFO, a
/// directory, a larger file) is refused without reading it, so nothing can block or flood.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "it is {} bytes; a playbook may be at most {MAX_FILE_BYTES} bytes",
            meta.len()
        )));
    }
    let mut text = String::new();
    // The file may grow between the look and the read: read one byte past the limit at most.
    std::fs::File::open(path)?.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!("it grew past {MAX_FILE_BYTES} bytes while being read")));
    }
    Ok(text)
}

/// Refuses a document whose flow collections nest deeper than [`MAX_FLOW_DEPTH`]. Counts the
/// brackets that can open a collection (at a line start or after `:`, `-` or `?`, and any inside
/// a collection), skipping quoted scalars and comments, so `a[0]` in a prompt is text.
fn check_flow_depth(file: &Path, text: &str) -> Result<(), PlaybookError> {
    let bytes = text.as_bytes();
    // `prev`: the last byte that was not a blank; `after_blank`: whether a blank came since.
    let (mut depth, mut line, mut prev, mut after_blank) = (0usize, 1usize, b'\n', true);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' => {
                after_blank = true;
                i += 1;
                continue;
            }
            b'\n' => line += 1,
            b'#' if after_blank => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' if after_blank || depth > 0 || prev == b'\n' => {
                // A quoted scalar: skip to its closing quote (`\"` escapes in double quotes).
                i += 1;
                while i < bytes.len() && bytes[i] != b {
                    if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += if b == b'"' && bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' if depth > 0 || matches!(prev, b'\n' | b':' | b'-' | b'?') => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    let mut e = PlaybookError::new(
                        file,
                        format!(
                            "collections nest more than {MAX_FLOW_DEPTH} levels deep; a playbook needs a handful"
                        ),
                    );
                    e.location = Some((line, 1));
                    return Err(e);
                }
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            _ => {}
        }
        prev = b;
        after_blank = b == b'\n';
        i += 1;
    }
    Ok(())
}

/// Parses a document and merges its `extends` chain under it.
fn load_doc(
    file: &Path,
    root: &Path,
    text: &str,
    chain: &mut Vec<PathBuf>,
) -> Result<PlaybookDoc, PlaybookError> {
    let doc: PlaybookDoc = parse_yaml(file, text)?;
    if let Some(v) = doc.playbook
        && v != 1
    {
        return Err(PlaybookError::new(
            file,
            format!("unsupported playbook language version {v}; this harness reads version 1"),
        )
        .at("playbook"));
    }
    chain.push(file.to_path_buf());
    let mut merged = PlaybookDoc::default();
    for (i, rel) in doc.extends.iter().enumerate() {
        let at = || format!("extends[{i}]");
        let parent =
            template_path(file, root, Path::new(rel)).map_err(|e| PlaybookError::new(file, e).at(at()))?;
        if chain.iter().any(|c| std::fs::canonicalize(c).unwrap_or(c.clone()) == parent) {
            return Err(PlaybookError::new(
                file,
                format!("`extends` forms a cycle through {}", parent.display()),
            )
            .at(at()));
        }
        let parent_text = read_bounded(&parent).map_err(|e| {
            PlaybookError::new(file, format!("failed to read template {}: {e}", parent.display())).at(at())
        })?;
        let template = load_doc(&parent, root, &parent_text, chain)?;
        if template.family.is_some() {
            return Err(PlaybookError::new(
                &parent,
                "a template cannot set `family`; only the playbook that extends it does",
            )
            .at("family"));
        }
        merged = merge(merged, template);
    }
    chain.pop();
    Ok(merge(merged, doc))
}

/// Where the template `rel`, named in `file`'s `extends`, lies: a relative path that resolves
/// (symbolic links followed) to a file inside `root`. Anything else is refused by name.
fn template_path(file: &Path, root: &Path, rel: &Path) -> Result<PathBuf, String> {
    if rel.is_absolute() {
        return Err(format!(
            "template {} is an absolute path; `extends` names a template relative to the playbook",
            rel.display()
        ));
    }
    let joined = file.parent().unwrap_or(Path::new(".")).join(rel);
    let resolved = std::fs::canonicalize(&joined)
        .map_err(|e| format!("failed to read template {}: {e}", joined.display()))?;
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    if !resolved.starts_with(&root) {
        return Err(format!(
            "template {} lies outside the playbook root {}; `extends` reads only files under it (point QUALIFY_PLAYBOOKS at a directory that holds both)",
            joined.display(),
            root.display()
        ));
    }
    Ok(resolved)
}

/// `over` composed on top of `base`: scalars and matrix fields of `over` win, lists of models
/// and scenarios are concatenated (base first), tiers merge by name.
fn merge(base: PlaybookDoc, over: PlaybookDoc) -> PlaybookDoc {
    let matrix = match (base.matrix, over.matrix) {
        (Some(b), Some(o)) => Some(b.overlaid(&o)),
        (b, o) => o.or(b),
    };
    let tiers = match (base.tiers, over.tiers) {
        (Some(mut b), Some(o)) => {
            for (name, spec) in o {
                let combined = b.get(&name).map_or_else(|| spec.clone(), |bs| bs.overlaid(&spec));
                b.insert(name, combined);
            }
            Some(b)
        }
        (b, o) => o.or(b),
    };
    PlaybookDoc {
        playbook: over.playbook.or(base.playbook),
        family: over.family.or(base.family),
        description: over.description.or(base.description),
        extends: Vec::new(),
        failure_policy: over.failure_policy.or(base.failure_policy),
        repeat: over.repeat.or(base.repeat),
        engine: over.engine.or(base.engine),
        matrix,
        tiers: tiers.map(|t: BTreeMap<_, _>| t),
        models: concat(base.models, over.models),
        scenarios: concat(base.scenarios, over.scenarios),
        differential_tests: over.differential_tests.or(base.differential_tests),
        performance: over.performance.or(base.performance),
    }
}

fn concat<T>(a: Option<Vec<T>>, b: Option<Vec<T>>) -> Option<Vec<T>> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.extend(b);
            Some(a)
        }
        (a, b) => b.or(a),
    }
}
