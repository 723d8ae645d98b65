//! Binding (pass 3): where each model's files are on this machine, and whether each backend
//! exists here. What cannot run here becomes an ignored trial with a reason, never a pass.
//!
//! Binding reads the file system (a few `stat`s per model) and never loads a model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::matrix::{Backend, Format};
use crate::playbook::{ArtifactSource, Model};

/// Where models are searched, from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchRoots {
    /// `QUALIFY_MODEL_DIR`: holds `<org>/<name>/` or `<name>/` model directories.
    pub model_dir: Option<PathBuf>,
    /// The Hugging Face hub cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`).
    pub hf_cache: Option<PathBuf>,
}

impl SearchRoots {
    /// Reads `QUALIFY_MODEL_DIR`, `HF_HUB_CACHE`, `HF_HOME` and `HOME`.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from))
    }

    /// As [`SearchRoots::from_env`], from a lookup that gives only set, non-empty variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<PathBuf>) -> Self {
        let hf_cache = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")));
        Self { model_dir: var("QUALIFY_MODEL_DIR"), hf_cache }
    }
}

/// The result of looking for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A model directory with a config.json.
    Found(PathBuf),
    /// Not found; every place looked at, in order.
    Missing(Vec<PathBuf>),
}

/// The Hugging Face cache directory of a repository: `models--{org}--{name}`.
pub fn hf_repo_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// The snapshot directory of `revision` in a repository's cache directory: a branch or tag is
/// resolved through `refs/<revision>`, anything else is taken as a commit.
pub fn hf_snapshot_dir(repo_dir: &Path, revision: &str) -> PathBuf {
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    repo_dir.join("snapshots").join(commit)
}

fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

fn is_weights_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "safetensors" | "gguf" | "apr"))
}

fn holds_safetensors(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let p = e.path();
            p.is_file() && p.extension().is_some_and(|x| x == "safetensors")
        })
    })
}

/// Looks for a model: its explicit path, then under `QUALIFY_MODEL_DIR`, then the HF cache.
pub fn locate(model: &Model, roots: &SearchRoots) -> Location {
    let mut looked = Vec::new();
    let mut candidates = Vec::new();
    if let Some(path) = &model.path {
        // A path to a weights file stands for its directory; any other file (`/etc/passwd`) is
        // not a model, and nothing beside it is looked for.
        let dir = if path.is_file() && is_weights_file(path) {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.clone()
        };
        // The directory the playbook names holds weights but no config.json: found, so its
        // trials fail naming the missing file instead of the model being ignored as absent.
        if !is_model_dir(&dir) && holds_safetensors(&dir) {
            return Location::Found(dir);
        }
        candidates.push(dir);
    }
    if let Some(root) = &roots.model_dir {
        candidates.push(root.join(&model.id));
        if let Some((_, name)) = model.id.split_once('/') {
            candidates.push(root.join(name));
        }
        candidates.push(root.join(&model.slug));
    }
    if let Some(cache) = &roots.hf_cache {
        candidates.push(hf_snapshot_dir(&hf_repo_dir(cache, &model.id), &model.revision));
    }
    for c in candidates {
        if is_model_dir(&c) {
            return Location::Found(c);
        }
        if !looked.contains(&c) {
            looked.push(c);
        }
    }
    Location::Missing(looked)
}

/// Looks for a file a model ships (`artifacts:`): a local path as it is, a repository file in
/// the Hugging Face cache's snapshot of its revision. Nothing is downloaded.
pub fn locate_artifact(source: &ArtifactSource, roots: &SearchRoots) -> Location {
    let candidate = match source {
        ArtifactSource::Local(path) => path.clone(),
        ArtifactSource::Hub { repo, file, revision } => match &roots.hf_cache {
            Some(cache) => hf_snapshot_dir(&hf_repo_dir(cache, repo), revision).join(file),
            None => return Location::Missing(Vec::new()),
        },
    };
    if candidate.is_file() { Location::Found(candidate) } else { Location::Missing(vec![candidate]) }
}

/// Why trials on `backend` cannot run in this process, if they cannot.
pub(crate) fn backend_unavailable(backend: Backend) -> Option<String> {
    match backend {
        Backend::Cpu => None,
        Backend::Gpu if !cfg!(feature = "cuda") => {
            Some("built without cuda (enable the `cuda` feature)".into())
        }
        Backend::Gpu if !candle_core::utils::cuda_is_available() => Some("no CUDA device".into()),
        Backend::Gpu => None,
    }
}

/// Memoised binding for one harness run.
#[derive(Debug, Default)]
pub(crate) struct Binder {
    roots: SearchRoots,
    locations: HashMap<(String, Option<PathBuf>, String), Location>,
    artifacts: HashMap<ArtifactSource, Location>,
    backends: HashMap<Backend, Option<String>>,
}

impl Binder {
    pub(crate) fn new(roots: SearchRoots) -> Self {
        Self { roots, ..Default::default() }
    }

    pub(crate) fn locate(&mut self, model: &Model) -> &Location {
        let key = (model.id.clone(), model.path.clone(), model.revision.clone());
        let roots = &self.roots;
        self.locations.entry(key).or_insert_with(|| locate(model, roots))
    }

    /// The file `model` ships in `format`, if the playbook names one: found here, or where it was
    /// looked for.
    pub(crate) fn artifact(&mut self, model: &Model, format: Format) -> Option<&Location> {
        let source = model.artifact(format)?;
        let roots = &self.roots;
        Some(self.artifacts.entry(source.clone()).or_insert_with(|| locate_artifact(source, roots)))
    }

    /// Whether the model's safetensors ground truth is here.
    pub(crate) fn has_ground_truth(&mut self, model: &Model) -> bool {
        matches!(self.locate(model), Location::Found(_))
    }

    /// Why a trial cannot run here, or `None` when it can.
    pub(crate) fn ignore_reason(
        &mut self,
        model: &Model,
        format: Format,
        backend: Backend,
    ) -> Option<String> {
        let backend_reason =
            self.backends.entry(backend).or_insert_with(|| backend_unavailable(backend)).clone();
        if let Some(why) = backend_reason {
            return Some(why);
        }
        self.files_reason(model, format)
    }

    /// Why the model's files in `format` are not available here (an external engine that runs
    /// on the files but brings its own backend asks only this).
    pub(crate) fn files_reason(&mut self, model: &Model, format: Format) -> Option<String> {
        if let Some(why) = format.unsupported_reason() {
            return Some(why.to_string());
        }
        // A shipped file stands for its cell whether or not the ground truth is here.
        if let Some(located) = self.artifact(model, format) {
            return match located {
                Location::Found(_) => None,
                Location::Missing(looked) => Some(artifact_missing_reason(model, format, looked)),
            };
        }
        let ships = !model.artifacts.is_empty();
        match self.locate(model) {
            Location::Found(_) => None,
            Location::Missing(looked) if ships => Some(format!(
                "{format} needs the safetensors ground truth, and {}",
                missing_reason(&model.id, looked)
            )),
            Location::Missing(looked) => Some(missing_reason(&model.id, looked)),
        }
    }
}

/// The ignore reason of a model that is not on this machine.
pub(crate) fn missing_reason(id: &str, looked: &[PathBuf]) -> String {
    let places: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    format!(
        "model {id} not found (looked in {}); set QUALIFY_MODEL_DIR, or run `cargo xtask fetch {id}` where a network is available",
        if places.is_empty() {
            "nowhere: no path, QUALIFY_MODEL_DIR or HOME is set".to_string()
        } else {
            places.join(", ")
        }
    )
}

/// The ignore reason of a shipped file that is not on this machine.
fn artifact_missing_reason(model: &Model, format: Format, looked: &[PathBuf]) -> String {
    let source = model.artifact(format).map(ArtifactSource::name).unwrap_or_default();
    match (model.artifact(format), looked.first()) {
        (Some(ArtifactSource::Hub { .. }), Some(path)) => format!(
            "the {format} file {source} is not in the Hugging Face cache (looked for {}); download it there where a network is available",
            path.display()
        ),
        (Some(ArtifactSource::Hub { .. }), None) => {
            format!(
                "the {format} file {source} cannot be looked for: no Hugging Face cache (HF_HUB_CACHE, HF_HOME or HOME)"
            )
        }
        (_, Some(path)) => format!("the {format} file the playbook names is not there: {}", path.display()),
        (_, None) => format!("the {format} file {source} is not there"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::spec::ExpectedShape;

    fn model(path: Option<PathBuf>) -> Model {
        Model {
            id: "Org/Tiny-Model".into(),
            slug: "tiny-model".into(),
            revision: "main".into(),
            path,
            architecture: None,
            size: None,
            expect: ExpectedShape::default(),
            prompt_template: "{prompt}".into(),
            artifacts: Vec::new(),
        }
    }

    #[test]
    fn finds_models_in_each_place_and_says_where_it_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = SearchRoots {
            model_dir: Some(tmp.path().join("models")),
            hf_cache: Some(tmp.path().join("hub")),
        };
        let Location::Missing(looked) = locate(&model(None), &roots) else { panic!("found nothing yet") };
        assert!(looked.contains(&tmp.path().join("models/Org/Tiny-Model")));
        assert!(looked.contains(&tmp.path().join("hub/models--Org--Tiny-Model/snapshots/main")));

        // The Hugging Face cache layout, through refs/main.
        let repo = tmp.path().join("hub/models--Org--Tiny-Model");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert_eq!(locate(&model(None), &roots), Location::Found(snap));

        // QUALIFY_MODEL_DIR wins over the cache.
        let local = tmp.path().join("models/Tiny-Model");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("config.json"), "{}").unwrap();
        assert_eq!(locate(&model(None), &roots), Location::Found(local.clone()));

        // An explicit path wins over both.
        let explicit = tmp.path().join("explicit");
        std::fs::create_dir_all(&explicit).unwrap();
        std::fs::write(explicit.join("config.json"), "{}").unwrap();
        assert_eq!(locate(&model(Some(explicit.clone())), &roots), Location::Found(explicit));
    }

    #[test]
    fn gpu_without_cuda_is_ignored_with_a_reason() {
        if !cfg!(feature = "cuda") {
            assert_eq!(
                backend_unavailable(Backend::Gpu).as_deref(),
                Some("built without cuda (enable the `cuda` feature)")
            );
        }
        assert_eq!(backend_unavailable(Backend::Cpu), None);
    }
}
