//! From a composed document to a [`Playbook`]: tiers get their defaults, generators their cases,
//! oracles are compiled, and everything a trial name is made of is validated.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::error::PlaybookError;
use super::generate;
use super::limits::{MAX_CASES, MAX_REPEATS, MAX_SCENARIOS};
use super::spec::{
    ArtifactSpec, CommandOutput, EngineSpec, FormatSpec, MatrixSpec, ModelSpec, PlaybookDoc, ScenarioSpec,
};
use super::{ArtifactSource, Input, Model, Playbook, Property, Scenario, TierPlan, tiers};
use crate::matrix::{Format, Quantization};
use crate::name::{SegmentError, Shown, check_segment};
use crate::oracle::Oracle;

pub(super) const DEFAULT_SEED: u64 = 42;
pub(super) const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub(super) const DEFAULT_MAX_TOKENS: u32 = 32;
/// Cases a `generate` or `property` scenario makes when `count` is absent.
pub(super) const DEFAULT_CASES: u32 = 10;

/// What is wrong with a part of a playbook (a model, a tier, the engine, the performance
/// assertions, a generator); [`resolve`] wraps it into a [`PlaybookError`] with where it is.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum ResolveError {
    #[error("model id `{id}` must be `org/name`")]
    ModelId { id: String },
    #[error(
        "model id `{id}` must be `org/name` with letters, digits, `-`, `_` and `.` in each part, each part starting and ending with a letter or digit, at most 96 characters"
    )]
    ModelIdCharacters { id: String },
    #[error("`prompt_template` must hold `{{prompt}}` exactly once, not {template:?}")]
    PromptTemplate { template: String },
    #[error("`{slug}` is not a valid model slug: {source}")]
    Slug {
        slug: String,
        #[source]
        source: SegmentError,
    },
    #[error(
        "tier `{tier}` has no `{field}`; a tier that is not a standard one ({}) must set it",
        tiers::STANDARD_TIERS.join(", ")
    )]
    MissingTierField { tier: String, field: &'static str },
    #[error("tier `{tier}` has an empty `{field}` list")]
    EmptyTierList { tier: String, field: &'static str },
    #[error("tier `{tier}`: `timeout_ms` must be above 0")]
    ZeroTimeout { tier: String },
    #[error("tier `{tier}`: `scenario_count` must be at least 1")]
    ZeroScenarioCount { tier: String },
    #[error("`base_url` must start with http:// or https://, got {base_url:?}")]
    BaseUrlScheme { base_url: String },
    #[error("`base_url` is the server's root, without `/v1`: {base_url:?}")]
    BaseUrlWithV1 { base_url: String },
    #[error("`api_key_env` names an environment variable; it is empty")]
    EmptyApiKeyEnv,
    #[error("`args` needs at least the program to run")]
    NoProgram,
    #[error("no argument holds `{{prompt}}`: the command would never see a prompt")]
    NoPromptArgument,
    #[error("argument {argument:?} holds `{placeholder}`; the placeholders are {}", COMMAND_PLACEHOLDERS.join(", "))]
    UnknownPlaceholder { argument: String, placeholder: String },
    #[error("`json_pointer` needs `output: json`")]
    PointerWithoutJson,
    #[error("`json_pointer` is a JSON pointer such as `/text`, got {pointer:?}")]
    NotAPointer { pointer: String },
    #[error("asserts nothing: give `min_tokens_per_second` or `max_time_to_first_token_ms` for a backend")]
    AssertsNothing,
    #[error("`runs` must be at least 1 and `max_tokens` at least 2 (decode speed needs two tokens)")]
    TooFewRuns,
    #[error("every figure must be a positive number")]
    NonPositiveFigure,
    #[error("`formats` names `{name}`, which is not a format (safetensors, apr, gguf-f32, gguf-q4_k_m, …)")]
    UnknownPerformanceFormat { name: String },
    #[error(
        "the smallest model context ({context} tokens) leaves no room for an input and {max_tokens} answer tokens"
    )]
    NoRoomForInput { context: u64, max_tokens: u32 },
    #[error("`max_input_chars` must be at least 1")]
    ZeroMaxInputChars,
    #[error(
        "`{key}` is not a shipped format: name `apr` or `gguf-<quantization>` (the safetensors ground truth is `path`; a GGUF names its quantization, as in `gguf-q4_k_m`)"
    )]
    ArtifactFormat { key: String },
    #[error("`{key}` names {file:?}, which is not a `.{extension}` file")]
    ArtifactExtension { key: String, file: String, extension: &'static str },
    #[error("{address:?} is not `hf://org/name/file` (or `hf://org/name@revision/file`)")]
    HubAddress { address: String },
    #[error("no tier of the playbook runs {format}, so its artifact would never be qualified")]
    ArtifactUnused { format: String },
}

pub(super) fn resolve(file: &Path, doc: PlaybookDoc) -> Result<Playbook, PlaybookError> {
    let err = |msg: String| PlaybookError::new(file, msg);
    let caused = |e: ResolveError| PlaybookError::from_error(file, e);
    let family = doc.family.clone().unwrap_or_default();
    check_segment(&family)
        .map_err(|why| err(format!("`{}` is not a valid family name: {why}", Shown(&family))).at("family"))?;

    let base_dir = file.parent().unwrap_or(Path::new("."));
    let specs = doc.models.clone().unwrap_or_default();
    if specs.is_empty() {
        return Err(err("a playbook needs at least one model".into()).at("models"));
    }
    let mut models = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let model = resolve_model(spec, base_dir).map_err(|e| caused(e).at(format!("models[{i}]")))?;
        if models.iter().any(|m: &Model| m.slug == model.slug) {
            return Err(err(format!(
                "model slug `{}` appears twice; give one of them another `slug`",
                model.slug
            ))
            .at(format!("models[{i}]")));
        }
        models.push(model);
    }

    let family_matrix = doc.matrix.clone().unwrap_or_default();
    let generator_seed = family_matrix.seed.unwrap_or(DEFAULT_SEED);
    // Generated long inputs must fit every model of the playbook.
    let context = models.iter().filter_map(|m| m.expect.context_length).min();
    let scenarios = resolve_scenarios(
        file,
        doc.scenarios.as_deref().unwrap_or_default(),
        generator_seed,
        context,
        doc.repeat,
    )?;

    let tier_specs = doc.tiers.clone().unwrap_or_default();
    if tier_specs.is_empty() {
        return Err(err(format!(
            "a playbook needs at least one tier, such as `tiers: {{ smoke: {{}}, mvp: {{}} }}` (standard tiers: {})",
            tiers::STANDARD_TIERS.join(", ")
        ))
        .at("tiers"));
    }
    let mut tier_plans = Vec::new();
    for (name, spec) in &tier_specs {
        let at = format!("tiers.{name}");
        check_segment(name).map_err(|why| {
            err(format!("`{}` is not a valid tier name: {why}", Shown(name))).at(at.clone())
        })?;
        let base = tiers::builtin(name).unwrap_or_default();
        let matrix = if name == tiers::DIM_SMOKE {
            // Files alone, on the ground truth, on CPU: only the time limit can be set.
            let set = [
                ("formats", spec.formats.is_some()),
                ("quantizations", spec.quantizations.is_some()),
                ("backends", spec.backends.is_some()),
                ("modalities", spec.modalities.is_some()),
                ("scenario_count", spec.scenario_count.is_some()),
                ("seed", spec.seed.is_some()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, is_set)| *is_set) {
                return Err(err(format!(
                    "tier `{}` checks a model's files and kernel class only (safetensors, on CPU, no scenarios): `{field}` cannot be set; only `timeout_ms` can",
                    tiers::DIM_SMOKE
                ))
                .at(format!("{at}.{field}")));
            }
            let limit = MatrixSpec { timeout_ms: family_matrix.timeout_ms, ..MatrixSpec::default() };
            base.overlaid(&limit).overlaid(spec)
        } else {
            base.overlaid(&family_matrix).overlaid(spec)
        };
        tier_plans.push(resolve_tier(name, &matrix, scenarios.len()).map_err(|e| caused(e).at(at))?);
    }
    tier_plans.sort_by(|a, b| format!("{}::", a.name).cmp(&format!("{}::", b.name)));
    for (i, model) in models.iter().enumerate() {
        for (format, _) in &model.artifacts {
            if !tier_plans.iter().any(|t| t.formats.contains(format)) {
                return Err(caused(ResolveError::ArtifactUnused { format: format.name() })
                    .at(format!("models[{i}].artifacts.{format}")));
            }
        }
    }
    let engine = doc.engine.clone().unwrap_or_default();
    check_engine(&engine).map_err(|e| caused(e).at("engine"))?;
    let differential = doc.differential_tests.clone().unwrap_or_default();
    let gates = [("logits", &differential.logits), ("long_context", &differential.long_context)];
    for (format, gate, at) in gates
        .iter()
        .flat_map(|(key, map)| map.iter().map(move |(f, g)| (f, g, format!("differential_tests.{key}.{f}"))))
    {
        if Format::parse(format).is_none() {
            return Err(
                err(format!("`{format}` is not a format name (safetensors, apr, gguf-q4_k_m, …)")).at(at)
            );
        }
        if !(gate.max_mean_kl >= 0.0 && (0.0..=1.0).contains(&gate.min_top1)) {
            return Err(err("`max_mean_kl` must be ≥ 0 and `min_top1` between 0 and 1".to_string()).at(at));
        }
    }
    for (format, gate) in &differential.trace {
        let at = format!("differential_tests.trace.{format}");
        if Format::parse(format).is_none() {
            return Err(
                err(format!("`{format}` is not a format name (safetensors, apr, gguf-q4_k_m, …)")).at(at)
            );
        }
        if !((-1.0..=1.0).contains(&gate.min_cosine) && gate.max_norm_ratio >= 1.0) {
            return Err(err(
                "`min_cosine` must be between -1 and 1 and `max_norm_ratio` at least 1".to_string()
            )
            .at(at));
        }
    }
    let performance = doc.performance.clone();
    if let Some(p) = &performance {
        check_performance(p).map_err(|e| caused(e).at("performance"))?;
    }
    if differential.top_k == Some(0) {
        return Err(err("`top_k` must be at least 1".to_string()).at("differential_tests.top_k".to_string()));
    }
    for (format, ratio) in &differential.perplexity.max_ratio {
        let at = format!("differential_tests.perplexity.max_ratio.{format}");
        if Format::parse(format).is_none() {
            return Err(
                err(format!("`{format}` is not a format name (safetensors, apr, gguf-q4_k_m, …)")).at(at)
            );
        }
        if !(ratio.is_finite() && *ratio >= 1.0) {
            return Err(err(format!("a perplexity ratio bound must be at least 1, not {ratio}")).at(at));
        }
    }

    Ok(Playbook {
        source: file.to_path_buf(),
        family,
        failure_policy: doc.failure_policy,
        engine,
        differential,
        performance,
        models,
        tiers: tier_plans,
        scenarios,
    })
}

/// Tokens a prompt template and special tokens may add around an input.
const TEMPLATE_ALLOWANCE: u64 = 8;

/// The longest edge-case input when nothing says how long a model's context is.
const DEFAULT_MAX_INPUT_CHARS: u32 = 1024;

/// An `edge_cases` generator with its longest input set: as given, else what fits `context`
/// tokens with `max_tokens` left for the answer (a character is at least a token's worth of
/// text for the ASCII long inputs), else [`DEFAULT_MAX_INPUT_CHARS`]. Other generators as given.
fn fit_to_context(
    g: &super::spec::GeneratorSpec,
    context: Option<u64>,
    max_tokens: u32,
) -> Result<super::spec::GeneratorSpec, ResolveError> {
    let super::spec::GeneratorSpec::EdgeCases(e) = g else { return Ok(g.clone()) };
    let room = context.map(|c| c.saturating_sub(u64::from(max_tokens) + TEMPLATE_ALLOWANCE));
    if room == Some(0) {
        return Err(ResolveError::NoRoomForInput { context: context.unwrap_or_default(), max_tokens });
    }
    let room = room.map(|r| u32::try_from(r).unwrap_or(u32::MAX));
    let max_input_chars = match e.max_input_chars {
        Some(0) => return Err(ResolveError::ZeroMaxInputChars),
        Some(given) => room.map_or(given, |r| given.min(r)),
        None => room.unwrap_or(DEFAULT_MAX_INPUT_CHARS),
    };
    Ok(super::spec::GeneratorSpec::EdgeCases(super::spec::EdgeCaseGen {
        max_input_chars: Some(max_input_chars),
    }))
}

/// The placeholders a `command` engine's arguments may hold.
pub(super) const COMMAND_PLACEHOLDERS: [&str; 5] =
    ["{model}", "{prompt}", "{max_tokens}", "{seed}", "{backend}"];

fn check_performance(p: &super::spec::PerformanceSpec) -> Result<(), ResolveError> {
    if !p.asserts_on(crate::matrix::Backend::Cpu) && !p.asserts_on(crate::matrix::Backend::Gpu) {
        return Err(ResolveError::AssertsNothing);
    }
    if p.runs == Some(0) || p.max_tokens.is_some_and(|n| n < 2) {
        return Err(ResolveError::TooFewRuns);
    }
    let floors = std::iter::once((&p.min_tokens_per_second, &p.max_time_to_first_token_ms))
        .chain(p.formats.values().map(|f| (&f.min_tokens_per_second, &f.max_time_to_first_token_ms)));
    let figures = floors.flat_map(|(speed, first)| [speed.cpu, speed.gpu, first.cpu, first.gpu]);
    if figures.flatten().any(|v| !(v.is_finite() && v > 0.0)) {
        return Err(ResolveError::NonPositiveFigure);
    }
    if let Some(bad) = p.formats.keys().find(|f| crate::matrix::Format::parse(f).is_none()) {
        return Err(ResolveError::UnknownPerformanceFormat { name: bad.clone() });
    }
    Ok(())
}

fn check_engine(engine: &EngineSpec) -> Result<(), ResolveError> {
    match engine {
        EngineSpec::Embedded => Ok(()),
        EngineSpec::Openai { base_url, api_key_env, .. } => {
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                return Err(ResolveError::BaseUrlScheme { base_url: base_url.clone() });
            }
            if base_url.trim_end_matches('/').ends_with("/v1") {
                return Err(ResolveError::BaseUrlWithV1 { base_url: base_url.clone() });
            }
            if api_key_env.as_deref().is_some_and(str::is_empty) {
                return Err(ResolveError::EmptyApiKeyEnv);
            }
            Ok(())
        }
        EngineSpec::Command { args, output, json_pointer } => {
            if args.first().is_none_or(|a| a.trim().is_empty()) {
                return Err(ResolveError::NoProgram);
            }
            if !args.iter().any(|a| a.contains("{prompt}")) {
                return Err(ResolveError::NoPromptArgument);
            }
            for a in args {
                let mut rest = a.as_str();
                while let Some(open) = rest.find('{') {
                    let close = rest[open..].find('}').map(|c| open + c + 1).unwrap_or(rest.len());
                    let placeholder = &rest[open..close];
                    if !COMMAND_PLACEHOLDERS.contains(&placeholder) {
                        return Err(ResolveError::UnknownPlaceholder {
                            argument: a.clone(),
                            placeholder: placeholder.to_string(),
                        });
                    }
                    rest = &rest[close..];
                }
            }
            match (output, json_pointer) {
                (CommandOutput::Text, Some(_)) => Err(ResolveError::PointerWithoutJson),
                (_, Some(p)) if !p.is_empty() && !p.starts_with('/') => {
                    Err(ResolveError::NotAPointer { pointer: p.clone() })
                }
                _ => Ok(()),
            }
        }
    }
}

/// Whether `id` is a Hugging Face model id: `org/name`, each part of letters, digits, `-`, `_`
/// and `.`, starting and ending with a letter or digit, the whole at most 96 characters. Model ids
/// reach file names, the registry and reports: nothing else gets in (a leading `=` would be a
/// spreadsheet formula in `models.csv`).
pub(crate) fn check_model_id(id: &str) -> Result<(), ResolveError> {
    let Some((org, name)) = id.split_once('/') else {
        return Err(ResolveError::ModelId { id: id.to_string() });
    };
    let ok = |s: &str| {
        s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !ok(org) || !ok(name) || id.len() > 96 {
        return Err(ResolveError::ModelIdCharacters { id: id.to_string() });
    }
    Ok(())
}

fn resolve_model(spec: &ModelSpec, base_dir: &Path) -> Result<Model, ResolveError> {
    check_model_id(&spec.id)?;
    let name = spec.id.split_once('/').map_or("", |(_, n)| n);
    let slug = spec.slug.clone().unwrap_or_else(|| name.to_ascii_lowercase());
    let prompt_template = spec.prompt_template.clone().unwrap_or_else(|| "{prompt}".into());
    if prompt_template.matches("{prompt}").count() != 1 {
        return Err(ResolveError::PromptTemplate { template: prompt_template });
    }
    check_segment(&slug).map_err(|source| ResolveError::Slug { slug: slug.clone(), source })?;
    Ok(Model {
        id: spec.id.clone(),
        slug,
        revision: spec.revision.clone().unwrap_or_else(|| "main".into()),
        path: spec.path.as_ref().map(|p| base_dir.join(p)),
        architecture: spec.architecture.clone(),
        size: spec.size,
        expect: spec.expect.clone().unwrap_or_default(),
        prompt_template,
        artifacts: resolve_artifacts(spec, base_dir)?,
    })
}

/// A model's `artifacts`, each key a derived format and each file of that format's kind.
fn resolve_artifacts(
    spec: &ModelSpec,
    base_dir: &Path,
) -> Result<Vec<(Format, ArtifactSource)>, ResolveError> {
    let mut out = Vec::new();
    for (key, artifact) in &spec.artifacts {
        let format = match Format::parse(key) {
            Some(f @ (Format::Apr | Format::Gguf(_))) => f,
            _ => return Err(ResolveError::ArtifactFormat { key: key.clone() }),
        };
        let source = match artifact {
            ArtifactSpec::Path(text) => match text.strip_prefix("hf://") {
                Some(address) => {
                    hub_address(address).ok_or_else(|| ResolveError::HubAddress { address: text.clone() })?
                }
                None => ArtifactSource::Local(base_dir.join(text)),
            },
            ArtifactSpec::Hub(hub) => ArtifactSource::Hub {
                repo: hub.repo.clone(),
                file: hub.file.clone(),
                revision: hub.revision.clone().unwrap_or_else(|| "main".into()),
            },
        };
        if let ArtifactSource::Hub { repo, file, .. } = &source {
            check_model_id(repo)?;
            // The file is looked for inside the repository's snapshot, never beside it.
            if file.starts_with('/') || file.split('/').any(|part| part.is_empty() || part == "..") {
                return Err(ResolveError::HubAddress { address: format!("hf://{repo}/{file}") });
            }
        }
        let extension = if format == Format::Apr { "apr" } else { "gguf" };
        let file = source.file_name();
        if !file.rsplit_once('.').is_some_and(|(_, e)| e.eq_ignore_ascii_case(extension)) {
            return Err(ResolveError::ArtifactExtension {
                key: key.clone(),
                file: file.to_string(),
                extension,
            });
        }
        out.push((format, source));
    }
    out.sort_by_key(|(f, _)| *f);
    Ok(out)
}

/// `org/name/file` or `org/name@revision/file` (after `hf://`).
fn hub_address(address: &str) -> Option<ArtifactSource> {
    let (org, rest) = address.split_once('/')?;
    let (name, file) = rest.split_once('/')?;
    let (name, revision) = name.split_once('@').unwrap_or((name, "main"));
    (!org.is_empty() && !name.is_empty() && !revision.is_empty() && !file.is_empty()).then(|| {
        ArtifactSource::Hub {
            repo: format!("{org}/{name}"),
            file: file.to_string(),
            revision: revision.to_string(),
        }
    })
}

/// A tier's effective matrix; `scenarios` is how many the playbook has.
pub(super) fn resolve_tier(name: &str, m: &MatrixSpec, scenarios: usize) -> Result<TierPlan, ResolveError> {
    let missing = |field: &'static str| ResolveError::MissingTierField { tier: name.to_string(), field };
    let format_specs = m.formats.clone().ok_or_else(|| missing("formats"))?;
    let quantizations = m.quantizations.clone().unwrap_or_else(|| vec![Quantization::Q4KM]);
    let mut formats = Vec::new();
    for f in format_specs {
        match f {
            FormatSpec::Safetensors => formats.push(Format::Safetensors),
            FormatSpec::Apr => formats.push(Format::Apr),
            FormatSpec::GgufAt(q) => formats.push(Format::Gguf(q)),
            FormatSpec::Gguf => formats.extend(quantizations.iter().map(|q| Format::Gguf(*q))),
        }
    }
    sort_dedup_by_name(&mut formats, |f| f.name());
    let mut backends = m.backends.clone().ok_or_else(|| missing("backends"))?;
    sort_dedup_by_name(&mut backends, |b| b.as_str().to_string());
    let mut modalities = m.modalities.clone().ok_or_else(|| missing("modalities"))?;
    sort_dedup_by_name(&mut modalities, |m| m.as_str().to_string());
    for (field, empty) in [
        ("formats", formats.is_empty()),
        ("backends", backends.is_empty()),
        ("modalities", modalities.is_empty()),
    ] {
        if empty {
            return Err(ResolveError::EmptyTierList { tier: name.to_string(), field });
        }
    }
    let timeout_ms = m.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 {
        return Err(ResolveError::ZeroTimeout { tier: name.to_string() });
    }
    let scenario_count = match m.scenario_count {
        Some(0) => return Err(ResolveError::ZeroScenarioCount { tier: name.to_string() }),
        Some(n) => (n as usize).min(scenarios),
        None => scenarios,
    };
    Ok(TierPlan {
        name: name.to_string(),
        formats,
        backends,
        modalities,
        scenario_count,
        seed: m.seed.unwrap_or(DEFAULT_SEED),
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// Sorts by the segment followed by `::`, which is the order of the full trial names.
fn sort_dedup_by_name<T: Clone>(items: &mut Vec<T>, name: impl Fn(&T) -> String) {
    let mut keyed: Vec<(String, T)> = items.drain(..).map(|t| (format!("{}::", name(&t)), t)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    items.extend(keyed.into_iter().map(|(_, t)| t));
}

fn resolve_scenarios(
    file: &Path,
    specs: &[ScenarioSpec],
    seed: u64,
    context: Option<u64>,
    playbook_repeat: Option<super::spec::RepeatSpec>,
) -> Result<Vec<Arc<Scenario>>, PlaybookError> {
    if specs.is_empty() {
        return Err(PlaybookError::new(file, "a playbook needs at least one scenario").at("scenarios"));
    }
    let mut out: Vec<Arc<Scenario>> = Vec::new();
    let mut names = HashSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let at = format!("scenarios[{i}]");
        let err = |m: String| PlaybookError::new(file, m).at(at.clone());
        check_segment(&spec.name)
            .map_err(|why| err(format!("`{}` is not a valid scenario name: {why}", Shown(&spec.name))))?;
        if spec.oracles.is_empty() {
            return Err(err(format!(
                "scenario `{}` has no oracle; every trial needs at least one (for example `oracles: [garbage]`)",
                spec.name
            )));
        }
        let oracles = spec
            .oracles
            .iter()
            .enumerate()
            .map(|(j, o)| {
                Oracle::from_spec(o)
                    .map_err(|e| PlaybookError::from_error(file, e).at(format!("{at}.oracles[{j}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let given = [
            spec.prompt.is_some(),
            spec.messages.is_some(),
            spec.generate.is_some(),
            spec.property.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(err(format!(
                "scenario `{}` needs exactly one of `prompt`, `messages`, `generate` and `property`",
                spec.name
            )));
        }
        if spec.modalities.as_ref().is_some_and(Vec::is_empty) {
            return Err(err(format!(
                "scenario `{}`: `modalities` lists none, so it would never run",
                spec.name
            ))
            .at(format!("{at}.modalities")));
        }
        if spec.count.is_some() && spec.generate.is_none() && spec.property.is_none() {
            return Err(err(format!(
                "scenario `{}`: `count` applies only to `generate` and `property`",
                spec.name
            )));
        }
        if let Some(rate) = spec.pass_rate {
            if spec.property.is_none() {
                return Err(err(format!(
                    "scenario `{}`: `pass_rate` applies only to `property`, whose cases run in one trial",
                    spec.name
                ))
                .at(format!("{at}.pass_rate")));
            }
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(err(format!(
                    "scenario `{}`: `pass_rate` {rate} must be above 0 and at most 1",
                    spec.name
                ))
                .at(format!("{at}.pass_rate")));
            }
        }
        if let Some(s) = &spec.sampling
            && let Some(t) = s.temperature
            && !(0.0..=5.0).contains(&t)
        {
            return Err(err(format!("scenario `{}`: temperature {t} is outside 0..=5", spec.name)));
        }
        // A property runs its generated cases once each; the playbook's default skips it.
        let asked = if spec.property.is_some() { spec.repeat } else { spec.repeat.or(playbook_repeat) };
        let repeat = match asked {
            None => super::Repeat::ONCE,
            Some(r) => {
                let (times, needed) = (r.times(), r.pass().needed(r.times()));
                if times == 0 || times > MAX_REPEATS {
                    return Err(err(format!(
                        "scenario `{}`: `repeat` must be between 1 and {MAX_REPEATS} runs, not {times}",
                        spec.name
                    ))
                    .at(format!("{at}.repeat")));
                }
                if needed == 0 || needed > times {
                    return Err(err(format!(
                        "scenario `{}`: `repeat` asks {needed} of {times} runs to pass; it must be 1 to {times}",
                        spec.name
                    ))
                    .at(format!("{at}.repeat")));
                }
                if spec.property.is_some() {
                    return Err(err(format!(
                        "scenario `{}`: a property runs its generated cases once each; `repeat` applies to prompts, conversations and generated scenarios",
                        spec.name
                    ))
                    .at(format!("{at}.repeat")));
                }
                super::Repeat { times, needed }
            }
        };
        let make = |name: String, input: Input, property: Option<Property>| Scenario {
            repeat,
            name,
            input,
            property,
            oracles: oracles.clone(),
            max_tokens: spec.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            sampling: spec.sampling.clone().unwrap_or_default(),
            modalities: spec.modalities.clone(),
            edge_case: spec.edge == Some(true)
                || matches!(
                    spec.generate.as_ref().or(spec.property.as_ref()),
                    Some(super::spec::GeneratorSpec::EdgeCases(_))
                ),
        };
        let count = spec.count.unwrap_or(DEFAULT_CASES);
        if count > MAX_CASES {
            return Err(err(format!(
                "scenario `{}`: `count` asks for {count} cases; a scenario may make at most {MAX_CASES}",
                spec.name
            ))
            .at(format!("{at}.count")));
        }
        let max_tokens = spec.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let sized = |g: &super::spec::GeneratorSpec| fit_to_context(g, context, max_tokens);
        let caused = |e: ResolveError| PlaybookError::from_error(file, e).at(at.clone());
        let generate = spec.generate.as_ref().map(sized).transpose().map_err(caused)?;
        let property_gen = spec.property.as_ref().map(sized).transpose().map_err(caused)?;
        let mut made = Vec::new();
        if let Some(prompt) = &spec.prompt {
            made.push(make(spec.name.clone(), Input::Prompt(prompt.clone()), None));
        } else if let Some(messages) = &spec.messages {
            if messages.last().map(|m| m.role) != Some(super::spec::Role::User) {
                return Err(err(format!("scenario `{}`: the last message must be the user's", spec.name))
                    .at(format!("{at}.messages")));
            }
            made.push(make(spec.name.clone(), Input::Messages(messages.clone()), None));
        } else if let Some(g) = &generate {
            let cases = generate::cases(g, count, seed, &spec.name);
            let width = cases.len().saturating_sub(1).to_string().len().max(3);
            for (k, case) in cases.into_iter().enumerate() {
                made.push(make(format!("{}-{k:0width$}", spec.name), Input::Prompt(case.prompt), None));
            }
        } else if let Some(g) = &property_gen {
            let pass_rate = spec.pass_rate.filter(|r| *r < 1.0);
            let property = Property { generator: g.clone(), cases: count, seed, pass_rate };
            made.push(make(spec.name.clone(), Input::Prompt(String::new()), Some(property)));
        }
        for scenario in made {
            if scenario.property.is_none() {
                for oracle in &scenario.oracles {
                    oracle
                        .check_applicable(scenario.input.question())
                        .map_err(|e| err(format!("scenario `{}`: {e}", scenario.name)).with_source(e))?;
                }
            }
            if !names.insert(scenario.name.clone()) {
                return Err(err(format!("scenario name `{}` appears twice", scenario.name)));
            }
            if out.len() == MAX_SCENARIOS {
                return Err(err(format!(
                    "the playbook defines more than {MAX_SCENARIOS} scenarios (generated cases counted one by one)"
                )));
            }
            out.push(Arc::new(scenario));
        }
    }
    Ok(out)
}
