//! Reading playbook files: discovery under a root, YAML parsing with locations, the choice
//! between our language and the original project's, and `extends` composition.
//!
//! This is the only part of the harness that reads playbooks from disk; it never looks at models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::PlaybookError;
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
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| PlaybookError::from_yaml(file, e))
}

/// Loads one playbook file, in either language, into resolved playbooks.
pub(super) fn load_file(file: &Path, notices: &mut Vec<Notice>) -> Result<Vec<Playbook>, PlaybookError> {
    let text = read(file)?;
    load_text(file, &text, notices)
}

/// Loads playbook text as the file `file` (templates it extends are read relative to `file`).
pub(super) fn load_text(
    file: &Path,
    text: &str,
    notices: &mut Vec<Notice>,
) -> Result<Vec<Playbook>, PlaybookError> {
    let text = text.to_string();
    if seed::is_seed_document(&text) {
        return seed::load(file, &text, notices).map(|p| vec![p]);
    }
    let doc = load_doc(file, &text, &mut Vec::new())?;
    if doc.family.is_none() {
        return Err(PlaybookError::new(
            file,
            "a playbook needs `family`; a file without it is a template, which belongs under templates/ and is named by a playbook's `extends`",
        ));
    }
    resolve::resolve(file, doc).map(|p| vec![p])
}

fn read(file: &Path) -> Result<String, PlaybookError> {
    std::fs::read_to_string(file)
        .map_err(|e| PlaybookError::new(file, format!("failed to read the playbook: {e}")))
}

/// Parses a document and merges its `extends` chain under it.
fn load_doc(file: &Path, text: &str, chain: &mut Vec<PathBuf>) -> Result<PlaybookDoc, PlaybookError> {
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
        let parent = file.parent().unwrap_or(Path::new(".")).join(rel);
        let key = std::fs::canonicalize(&parent).unwrap_or(parent.clone());
        if chain.iter().any(|c| std::fs::canonicalize(c).unwrap_or(c.clone()) == key) {
            return Err(PlaybookError::new(
                file,
                format!("`extends` forms a cycle through {}", parent.display()),
            )
            .at(format!("extends[{i}]")));
        }
        let parent_text = std::fs::read_to_string(&parent).map_err(|e| {
            PlaybookError::new(file, format!("failed to read template {}: {e}", parent.display()))
                .at(format!("extends[{i}]"))
        })?;
        let template = load_doc(&parent, &parent_text, chain)?;
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
