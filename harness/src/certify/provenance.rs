//! How committed evidence names the files it was measured on, so that it reads the same on every
//! clone and names no machine:
//!
//! - a file of the repository by its path from the root, `/`-separated:
//!   `fixtures/qa-tiny/qa-tiny-llama/model.safetensors`;
//! - a converted artifact by its name in the harness's cache, `cache:converted/<key>.gguf`. The
//!   key is a hash of the converter version, the format and the name and hash of every source
//!   file ([`crate::format::convert::artifact_name`]): the name is the artifact's recipe, so
//!   whether evidence still holds is decided from the sources, with or without a cache here;
//! - a model file outside the repository (under `QUALIFY_MODEL_DIR`, in the Hugging Face cache)
//!   by `model:<file name>`, looked for again where the model is found;
//! - a playbook outside the repository by `playbooks:<path under QUALIFY_PLAYBOOKS>`.
//!
//! A name always sits beside the file's SHA-256. Journals keep paths as the harness saw them;
//! only evidence is named this way, and evidence written before names existed (paths from the
//! harness's working directory, `target/qualify/cache/converted/…`) reads as the same names.

use std::path::{Component, Path, PathBuf};

use super::workspace::Layout;
use crate::format::convert;
use crate::journal::EvidenceRecord;

pub const CACHE: &str = "cache:";
pub const MODEL: &str = "model:";
pub const PLAYBOOKS: &str = "playbooks:";

/// What a name in evidence stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A file of the repository, relative to its root.
    Repository(PathBuf),
    /// A converted artifact, relative to the harness's cache.
    Cache(PathBuf),
    /// A file of the model's directory, wherever the model is found.
    Model(PathBuf),
    /// A playbook, relative to the playbook folder.
    Playbooks(PathBuf),
}

impl Named {
    pub fn parse(name: &str) -> Self {
        let marked = |marker: &str| name.strip_prefix(marker).map(PathBuf::from);
        if let Some(p) = marked(CACHE) {
            Named::Cache(p)
        } else if let Some(p) = marked(MODEL) {
            Named::Model(p)
        } else if let Some(p) = marked(PLAYBOOKS) {
            Named::Playbooks(p)
        } else {
            Named::Repository(PathBuf::from(name))
        }
    }
}

fn is_name(text: &str) -> bool {
    [CACHE, MODEL, PLAYBOOKS].iter().any(|m| text.starts_with(m))
}

/// `path` without `.` and with each `..` taken back, without asking the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` relative to `base`, when it lies under it.
fn under(path: &Path, base: &Path) -> Option<PathBuf> {
    if let Ok(rel) = lexical(path).strip_prefix(lexical(base)) {
        return Some(rel.to_path_buf());
    }
    // A root reached through a symbolic link (macOS's /var is /private/var) differs only once
    // both are resolved.
    let (path, base) = (std::fs::canonicalize(path).ok()?, std::fs::canonicalize(base).ok()?);
    path.strip_prefix(base).ok().map(Path::to_path_buf)
}

fn slashed(path: &Path) -> String {
    path.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| slashed(path), |n| n.to_string_lossy().into_owned())
}

/// Names the paths of one checkout, as its harness recorded them.
#[derive(Debug, Clone)]
pub struct Namer {
    root: PathBuf,
    playbook_dir: PathBuf,
    /// Prefixes of this machine's places and what a reason says instead, longest first.
    scrubs: Vec<(String, String)>,
}

impl Namer {
    pub fn new(layout: &Layout) -> Self {
        let places = &layout.places;
        let root = lexical(&layout.root);
        let mut scrubs: Vec<(String, String)> = Vec::new();
        let mut scrub = |place: &Path, instead: &str| {
            let text = place.to_string_lossy();
            let text = text.trim_end_matches('/');
            // A place at `/` would take every slash.
            if !text.is_empty() {
                scrubs.push((format!("{text}/"), instead.to_string()));
            }
        };
        let cache_dir = lexical(&places.cache_dir);
        scrub(&cache_dir, CACHE);
        scrub(&places.cache_dir, CACHE);
        // The harness quotes its cache as it was given, relative to the root by default.
        if let Some(rel) = under(&cache_dir, &root) {
            scrub(&rel, CACHE);
        }
        scrub(&root, "");
        scrub(&layout.root, "");
        if let Some(dir) = &places.roots.model_dir {
            scrub(dir, "$QUALIFY_MODEL_DIR/");
        }
        if let Some(dir) = &places.roots.hf_cache {
            scrub(dir, "$HF_HUB_CACHE/");
        }
        scrubs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        scrubs.dedup();
        Self { root, playbook_dir: lexical(&layout.playbook_dir()), scrubs }
    }

    /// The name of a model file that a record gives as the harness saw it: absolute, or relative
    /// to the repository root where the harness ran. A name passes through unchanged.
    pub fn model_file(&self, recorded: &Path) -> String {
        let text = recorded.to_string_lossy();
        if is_name(&text) {
            return text.into_owned();
        }
        // An artifact is named by its content key wherever this machine's cache put it.
        if let Some(name) = convert::artifact_name_of(recorded) {
            return format!("{CACHE}{}", slashed(&name));
        }
        match under(&self.root.join(recorded), &self.root) {
            Some(rel) => slashed(&rel),
            None => format!("{MODEL}{}", file_name(recorded)),
        }
    }

    /// The name of the playbook a record gives as the harness saw it.
    pub fn playbook(&self, recorded: &str) -> String {
        if is_name(recorded) {
            return recorded.to_string();
        }
        let path = self.root.join(recorded);
        if let Some(rel) = under(&path, &self.root) {
            return slashed(&rel);
        }
        match under(&path, &self.playbook_dir) {
            Some(rel) if !rel.as_os_str().is_empty() => format!("{PLAYBOOKS}{}", slashed(&rel)),
            _ => format!("{PLAYBOOKS}{}", file_name(&path)),
        }
    }

    /// Where a playbook's name says the playbook is on this machine.
    pub fn playbook_path(&self, name: &str) -> PathBuf {
        match Named::parse(&self.playbook(name)) {
            Named::Playbooks(rel) => self.playbook_dir.join(rel),
            Named::Repository(rel) | Named::Cache(rel) | Named::Model(rel) => self.root.join(rel),
        }
    }

    /// A path of this machine for a message: from the root when it is in the repository.
    pub fn local(&self, path: &Path) -> String {
        under(&self.root.join(path), &self.root)
            .map_or_else(|| path.display().to_string(), |rel| slashed(&rel))
    }

    /// `text` with this machine's places replaced by what names them: a reason may quote a path.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (place, instead) in &self.scrubs {
            if out.contains(place.as_str()) {
                out = out.replace(place.as_str(), instead);
            }
        }
        out
    }

    /// A record as evidence holds it: its playbook and files named, its reason scrubbed.
    pub fn name_record(&self, record: &mut EvidenceRecord) {
        record.playbook = self.playbook(&record.playbook);
        for f in &mut record.model_files {
            f.path = PathBuf::from(self.model_file(&f.path));
        }
        record.reason = self.scrub(&record.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Places;

    fn layout(root: &str, vars: &[(&str, &str)]) -> Layout {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Layout::with_places(
            root,
            Places::from_vars(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.into())),
        )
    }

    #[test]
    fn names_say_nothing_about_the_machine() {
        let key = "664c8aad015744d2443238a4c52018c2fe5151337d440734db055565a823a9ca";
        let l = layout(
            "/work/repo",
            &[("QUALIFY_CACHE_DIR", "/scratch/cache"), ("QUALIFY_PLAYBOOKS", "/home/u/pb")],
        );
        let n = Namer::new(&l);
        let cases = [
            // As the harness records them with its default places, relative to the root.
            ("playbooks/families/../../fixtures/m/model.safetensors", "fixtures/m/model.safetensors"),
            (&format!("target/qualify/cache/converted/{key}.apr"), &format!("cache:converted/{key}.apr")),
            // As a harness started by the xtask records them, absolute.
            ("/work/repo/fixtures/m/config.json", "fixtures/m/config.json"),
            (&format!("/scratch/cache/converted/{key}.gguf"), &format!("cache:converted/{key}.gguf")),
            ("/home/u/models/m/model.safetensors", "model:model.safetensors"),
            // Names stay names.
            ("model:tokenizer.json", "model:tokenizer.json"),
            (&format!("cache:converted/{key}.apr"), &format!("cache:converted/{key}.apr")),
        ];
        for (recorded, name) in cases {
            assert_eq!(n.model_file(Path::new(recorded)), name, "{recorded}");
        }
        assert_eq!(n.playbook("/work/repo/playbooks/families/x.yaml"), "playbooks/families/x.yaml");
        assert_eq!(n.playbook("playbooks/./families/x.yaml"), "playbooks/families/x.yaml");
        assert_eq!(n.playbook("/home/u/pb/mine/y.yaml"), "playbooks:mine/y.yaml");
        assert_eq!(n.playbook_path("playbooks:mine/y.yaml"), Path::new("/home/u/pb/mine/y.yaml"));
        assert_eq!(n.playbook("/elsewhere/z.yaml"), "playbooks:z.yaml");
        // A file that only looks like the repository's prefix is not in it.
        assert_eq!(n.model_file(Path::new("/work/repo2/model.safetensors")), "model:model.safetensors");

        assert_eq!(
            n.scrub(&format!("failed to read /scratch/cache/converted/{key}.apr: gone; see /work/repo/x")),
            format!("failed to read cache:converted/{key}.apr: gone; see x")
        );
        let default = Namer::new(&layout("/work/repo", &[]));
        assert_eq!(default.scrub("at target/qualify/cache/converted/a.apr"), "at cache:converted/a.apr");
        assert_eq!(default.scrub("/work/repo2/x"), "/work/repo2/x");
    }

    #[test]
    fn names_parse_back() {
        assert_eq!(Named::parse("cache:converted/a.apr"), Named::Cache("converted/a.apr".into()));
        assert_eq!(Named::parse("model:model.safetensors"), Named::Model("model.safetensors".into()));
        assert_eq!(Named::parse("playbooks:a/b.yaml"), Named::Playbooks("a/b.yaml".into()));
        assert_eq!(
            Named::parse("fixtures/m/config.json"),
            Named::Repository("fixtures/m/config.json".into())
        );
    }
}
