//! Playbooks: parse (pass 1 of the pipeline). YAML files in our language or the original
//! project's become resolved [`Playbook`]s; nothing here loads a model or looks at hardware.

mod error;
mod generate;
mod limits;
mod load;
mod resolve;
mod seed;
pub mod spec;
mod tiers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::PlaybookError;
pub use generate::{GeneratedCase, cases as generated_cases, seeded_runner, strategy as generator_strategy};
pub use load::discover;
pub use seed::DEFAULT_PROMPTS as SEED_DEFAULT_PROMPTS;
pub use spec::{FailurePolicy, GeneratorSpec, MessageSpec, SamplingSpec, SizeCategory};
pub use tiers::{DIM_SMOKE, builtin as builtin_tier};

use crate::matrix::{Backend, Format, Modality};
use crate::oracle::Oracle;

/// One resolved playbook: a family's models, tiers and scenarios, ready to expand.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub source: PathBuf,
    pub family: String,
    pub failure_policy: Option<FailurePolicy>,
    pub engine: spec::EngineSpec,
    pub differential: spec::DifferentialSpec,
    pub performance: Option<spec::PerformanceSpec>,
    pub models: Vec<Model>,
    /// Sorted by name.
    pub tiers: Vec<TierPlan>,
    /// In declared order, generated cases expanded.
    pub scenarios: Vec<Arc<Scenario>>,
}

/// A model to qualify, and where to find it.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// `org/name`.
    pub id: String,
    /// Its segment in trial names.
    pub slug: String,
    pub revision: String,
    /// An explicit local path, already made absolute against the playbook's folder.
    pub path: Option<PathBuf>,
    pub architecture: Option<String>,
    pub size: Option<SizeCategory>,
    pub expect: spec::ExpectedShape,
    /// `{prompt}` laid out for the `run` modality.
    pub prompt_template: String,
    /// Shipped files that replace conversion for their format's cells, sorted by format.
    pub artifacts: Vec<(Format, ArtifactSource)>,
}

/// Where a shipped artifact is (`artifacts:` in a playbook): resolved against the playbook's
/// folder, or a file of a Hugging Face repository looked for in the local cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArtifactSource {
    Local(PathBuf),
    Hub { repo: String, file: String, revision: String },
}

impl ArtifactSource {
    /// How evidence names the file: `hf://org/name@revision/file`, or a local file's name
    /// (never a path of this machine).
    pub fn name(&self) -> String {
        match self {
            ArtifactSource::Local(p) => {
                p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
            }
            ArtifactSource::Hub { repo, file, revision } => format!("hf://{repo}@{revision}/{file}"),
        }
    }

    /// The file's name in the repository or on disk, whose extension says its format.
    pub fn file_name(&self) -> &str {
        match self {
            ArtifactSource::Local(p) => p.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            ArtifactSource::Hub { file, .. } => file.rsplit('/').next().unwrap_or(file),
        }
    }
}

impl Model {
    /// A plain prompt as the `run` modality sends it to this model.
    pub fn layout(&self, prompt: &str) -> String {
        self.prompt_template.replace("{prompt}", prompt)
    }

    /// The file the model ships in `format`, if the playbook names one.
    pub fn artifact(&self, format: Format) -> Option<&ArtifactSource> {
        self.artifacts.iter().find(|(f, _)| *f == format).map(|(_, a)| a)
    }
}

/// A tier's matrix, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct TierPlan {
    pub name: String,
    /// Sorted by name, no duplicates.
    pub formats: Vec<Format>,
    pub backends: Vec<Backend>,
    pub modalities: Vec<Modality>,
    /// How many of the playbook's scenarios (from the first) each cell runs.
    pub scenario_count: usize,
    pub seed: u64,
    pub timeout: Duration,
}

/// What a scenario sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Prompt(String),
    Messages(Vec<MessageSpec>),
}

impl Input {
    /// The text oracles read as the question: the prompt, or the last user turn.
    pub fn question(&self) -> &str {
        match self {
            Input::Prompt(p) => p,
            Input::Messages(m) => {
                m.iter().rev().find(|m| m.role == spec::Role::User).map_or("", |m| m.content.as_str())
            }
        }
    }
}

/// A scenario ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub input: Input,
    /// Set for a `property` scenario: the cases are generated inside the trial.
    pub property: Option<Property>,
    pub oracles: Vec<Oracle>,
    pub max_tokens: u32,
    pub sampling: SamplingSpec,
    /// Made by the `edge_cases` generator: its trials score in the EDGE category.
    pub edge_case: bool,
    /// The modalities it runs in; `None`: every modality of the tier.
    pub modalities: Option<Vec<Modality>>,
    /// Runs per trial and how many must pass (`1`, `1`: once).
    pub repeat: Repeat,
}

/// A scenario's repeats: `times` runs in its trial, `needed` of them must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    pub times: u32,
    pub needed: u32,
}

impl Repeat {
    pub const ONCE: Repeat = Repeat { times: 1, needed: 1 };
}

impl Scenario {
    /// Whether the scenario runs in `modality`.
    pub fn runs_in(&self, modality: Modality) -> bool {
        self.modalities.as_ref().is_none_or(|m| m.contains(&modality))
    }
}

/// A property scenario's generator.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    pub generator: GeneratorSpec,
    pub cases: u32,
    pub seed: u64,
    /// The share of cases that must pass; `None` is every case (the first failure is shrunk).
    pub pass_rate: Option<f64>,
}

/// Something a playbook asks for that this build does not do yet, said on stderr by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub file: PathBuf,
    pub message: String,
}

/// Every playbook under `root`, and the notices they raised. Stops at the first error.
pub fn load_all(root: &Path) -> Result<(Vec<Playbook>, Vec<Notice>), PlaybookError> {
    let mut notices = Vec::new();
    let mut playbooks = Vec::new();
    let root_dir = load::root_dir(root);
    for file in discover(root)? {
        playbooks.extend(load::load_file(&file, &root_dir, &mut notices)?);
    }
    check_unique_groups(&playbooks)?;
    Ok((playbooks, notices))
}

/// Parses playbook text as if it were the file `file` under the playbook root `root` (for
/// tests and tools): templates it extends are read only from inside `root`.
pub fn load_text(
    file: &Path,
    root: &Path,
    text: &str,
) -> Result<(Vec<Playbook>, Vec<Notice>), PlaybookError> {
    let mut notices = Vec::new();
    let playbooks = load::load_text(file, root, text, &mut notices)?;
    Ok((playbooks, notices))
}

/// Two playbooks may share a family, but never a `(family, tier, model)`.
fn check_unique_groups(playbooks: &[Playbook]) -> Result<(), PlaybookError> {
    let mut seen = std::collections::HashMap::new();
    for pb in playbooks {
        for tier in &pb.tiers {
            for model in &pb.models {
                let key = format!("{}::{}::{}", pb.family, tier.name, model.slug);
                if let Some(first) = seen.insert(key.clone(), pb.source.clone()) {
                    return Err(PlaybookError::new(
                        &pb.source,
                        format!(
                            "trials `{key}::…` are also defined by {}; a family, tier and model may be defined once",
                            first.display()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
