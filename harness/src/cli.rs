//! The qualify harness's `main`: libtest's command line in, trials out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Completion, Trial};

use crate::bind::{Binder, Location};
use crate::config::{Config, NoTrials};
use crate::engine::{CandleEngine, Footprint, SessionKey, gib};
use crate::expand::{DiffKind, Filter, GoldenKind, Plan, TrialKind, TrialRef, TrialSpec};
use crate::failure::{Bug, Failure, NoTrialsFound, UserError, exit};
use crate::journal::Journal;
use crate::matrix::{Backend, Format, Quantization};
use crate::name::TrialName;
use crate::playbook::spec::EngineSpec;
use crate::reporter;
use crate::run::TrialEnd;
use crate::trial::RunContext;
use crate::vocab::{Gate, Invariant, ServerCheck};

/// Runs the qualify harness with the process's arguments and environment.
///
/// Call it first in `main`, before starting any thread: it sizes candle's thread pools through
/// the environment ([`crate::engine::size_thread_pools`]), which it can only do while the
/// process has one thread, and tunes the allocator ([`crate::engine::tune_allocator`]).
pub fn qualify_main() -> ExitCode {
    crate::engine::size_thread_pools();
    crate::engine::tune_allocator();
    match guarded(|| qualify(Arguments::from_args())) {
        Ok(code) => code,
        Err(failure) => {
            reporter::failure(&failure);
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Runs `body`; a panic that escapes it is a [`Bug`].
fn guarded(body: impl FnOnce() -> Result<ExitCode, UserError>) -> Result<ExitCode, Failure> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => Ok(result?),
        Err(payload) => Err(Bug::from_panic(payload.as_ref()).into()),
    }
}

/// The harness: settings, playbooks, selection, then the trials through libtest-mimic, whose
/// exit code (0, or 101 when a trial failed) it returns.
fn qualify(args: Arguments) -> Result<ExitCode, UserError> {
    let unknown = crate::config::unknown_variables();
    if !unknown.is_empty() {
        return Err(UserError::UnknownVariables(unknown));
    }
    let config = Config::from_env()?;
    let no_trials = NoTrials::from_env()?;
    let (playbooks, notices) = crate::playbook::load_all(&config.playbooks).map_err(UserError::Playbook)?;
    reporter::notices(&notices);
    let plan = Plan::new(playbooks);
    let total = plan.total();
    if total > crate::expand::MAX_TRIALS {
        return Err(UserError::TooManyTrials { total, scanned: config.playbooks.clone() });
    }
    let filter = Filter { filter: args.filter.clone(), exact: args.exact, skip: args.skip.clone() };

    let mut binder = Binder::new(config.roots.clone());
    let fast_exact = args.exact && args.skip.is_empty() && args.filter.is_some();
    // A shard keeps the trials of its models (`QUALIFY_SHARD`); `--exact NAME` runs its one trial
    // wherever it is asked (nextest asks each shard for the names it listed).
    let sharded = match config.shard.filter(|_| !fast_exact) {
        Some(shard) => {
            let all = plan.select(&filter);
            let times = crate::shard::Times::read(&config.shard_times);
            let assignment = crate::shard::Assignment::new(&plan, &all, &times, shard.count);
            reporter::shard(shard, &assignment, &config.shard_times);
            Some(all.into_iter().filter(|r| assignment.runs(&plan, *r, shard)).collect::<Vec<_>>())
        }
        None => None,
    };
    if args.list && !fast_exact {
        return Ok(list(&plan, &filter, sharded.as_deref(), &mut binder, args.ignored, config.memory_budget));
    }

    // nextest runs each trial as `--exact NAME`: build that one trial, not all of them.
    let selected: Vec<TrialRef> = match (&args.filter, args.exact, args.skip.is_empty()) {
        (Some(name), true, true) => match (TrialName::parse(name), args.list) {
            // Listing follows libtest: a name that matches nothing lists nothing.
            (Err(_), true) => Vec::new(),
            (Ok(parsed), true) => plan.find(&parsed).into_iter().collect(),
            (Err(source), false) => return Err(UserError::InvalidExactName { name: name.clone(), source }),
            (Ok(parsed), false) => match plan.find(&parsed) {
                Some(r) => vec![r],
                None => {
                    return Err(UserError::UnknownExactName {
                        name: name.clone(),
                        scanned: config.playbooks.clone(),
                    });
                }
            },
        },
        _ => sharded.unwrap_or_else(|| plan.select(&filter)),
    };

    if args.list {
        return Ok(list(&plan, &filter, Some(&selected), &mut binder, args.ignored, config.memory_budget));
    }
    if selected.is_empty() && no_trials != NoTrials::Pass {
        let fatal = match no_trials {
            NoTrials::Fail => true,
            NoTrials::Auto => aimed_at_trials(&filter, &plan),
            NoTrials::Warn | NoTrials::Pass => false,
        };
        let found = NoTrialsFound::new(&filter, &plan, &config.playbooks);
        if fatal {
            return Err(UserError::NoTrials(found));
        }
        reporter::no_trials(&found, false);
    }

    // A resumed run reads what its journal already holds before appending to it.
    let mut alone = BTreeSet::new();
    let finished = if config.resume {
        let path = Journal::path_of(&config.journal_dir, &config.run_id);
        let (records, _) =
            crate::journal::read(&path).map_err(|source| UserError::Resume { path: path.clone(), source })?;
        let (unfinished, finished): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.unfinished);
        let finished: BTreeSet<String> = finished.into_iter().map(|r| r.trial).collect();
        // A trial the process died in, alone or inside a cell's batch, is generated alone now.
        alone.extend(unfinished.into_iter().map(|r| r.trial).filter(|t| !finished.contains(t)));
        let done = selected.iter().filter(|r| finished.contains(&plan.spec(**r).full_name)).count();
        reporter::resuming(&config.run_id, done, selected.len());
        Some(finished)
    } else {
        None
    };
    let journal = Journal::open(&config.journal_dir, &config.run_id)
        .map_err(|source| UserError::Journal { path: config.journal_dir.clone(), source })?;
    reporter::run_header(selected.len(), plan.total(), plan.playbooks().len(), journal.path());
    let budget = config.memory_budget;
    let ctx = Arc::new(RunContext::new(config, journal, Box::new(CandleEngine)));
    let resumed = Resumed { finished: finished.as_ref(), alone: &alone };
    let (trials, ignored) = build_trials(&plan, &selected, &mut binder, &ctx, &args, resumed);
    reporter::ignored_summary(&ignored);
    let conclusion = libtest_mimic::run(&args, trials);
    reporter::memory(budget, ctx.sessions.memory_usage());
    // libtest's own code for a failed trial, said here so the README's table is this code.
    Ok(if conclusion.has_failed() { ExitCode::from(exit::TRIAL_FAILED) } else { ExitCode::SUCCESS })
}

/// Whether a filter means trials of these playbooks: it has no filter (everything, yet nothing),
/// or its first segment is a family's name or within a typo of one (`qa-tine::mvp`). A filter
/// meant for other tests (`perf::tests`, handed to every binary by `cargo test --workspace --`)
/// is not.
fn aimed_at_trials(filter: &Filter, plan: &Plan) -> bool {
    let Some(f) = filter.filter.as_deref() else { return true };
    let first = f.split("::").next().unwrap_or(f);
    plan.playbooks().iter().any(|pb| {
        let family = pb.family.as_str();
        f.starts_with(family) || strsim::levenshtein(first, family) <= 1 + family.len() / 6
    })
}

/// Prints the selected trials as libtest does (`name: test`), quickly, and without panicking
/// when the reader goes away (`| head`).
fn list(
    plan: &Plan,
    filter: &Filter,
    exact: Option<&[TrialRef]>,
    binder: &mut Binder,
    only_ignored: bool,
    budget: crate::config::MemoryBudget,
) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut footprints = Footprints::default();
    let mut write = |r: TrialRef, name: &str| -> bool {
        if only_ignored {
            let spec = plan.spec(r);
            let uses = footprints.uses(binder, &spec);
            if ignore_reason(binder, &spec).or_else(|| footprints.past_budget(&spec, &uses, budget)).is_none()
            {
                return true;
            }
        }
        writeln!(out, "{name}: test").is_ok()
    };
    match exact {
        Some(refs) => {
            for r in refs {
                if !write(*r, &plan.spec(*r).full_name) {
                    return ExitCode::from(exit::OK);
                }
            }
        }
        None => {
            let mut open = true;
            plan.for_each_selected(filter, |r, name| {
                if open {
                    open = write(r, name);
                }
            });
        }
    }
    let _ = out.flush();
    ExitCode::from(exit::OK)
}

/// Why a trial cannot run here, or `None` when it can: its engine cannot run it, or an oracle
/// of its scenario cannot judge here (a `code_tests` oracle without its interpreter or compiler).
fn ignore_reason(binder: &mut Binder, spec: &TrialSpec) -> Option<String> {
    engine_reason(binder, spec)
        .or_else(|| shipped_reason(binder, spec))
        .or_else(|| untraced_reason(binder, spec))
        .or_else(|| unbatched_reason(binder, spec))
        .or_else(|| match &spec.kind {
            TrialKind::Scenario { scenario, .. } => {
                scenario.oracles.iter().find_map(|o| o.unavailable()).map(ToString::to_string)
            }
            _ => None,
        })
}

/// Each session's estimated memory ([`crate::engine::estimate_footprint`]), read once per model
/// and format from its files.
#[derive(Default)]
struct Footprints {
    known: std::collections::HashMap<(String, Format), Footprint>,
}

impl Footprints {
    /// The sessions a trial uses (its own, and the reference it is compared with), each with
    /// its footprint. One that cannot be estimated (a file missing or unreadable, which its
    /// load will report) counts as nothing.
    fn uses(&mut self, binder: &mut Binder, spec: &TrialSpec) -> Vec<(SessionKey, Footprint)> {
        if !spec.kind.loads_session() {
            return Vec::new();
        }
        let mut keys = vec![crate::trial::session_key(spec)];
        keys.extend(crate::trial::reference_key(spec));
        keys.into_iter()
            .map(|key| {
                let footprint = if matches!(spec.engine, EngineSpec::Embedded) {
                    *self.known.entry((spec.model.id.clone(), key.format)).or_insert_with(|| {
                        let dir = match binder.locate(&spec.model) {
                            Location::Found(dir) => dir.clone(),
                            _ => PathBuf::new(),
                        };
                        let shipped = match binder.artifact(&spec.model, key.format) {
                            Some(Location::Found(file)) => Some(file.clone()),
                            _ => None,
                        };
                        crate::engine::estimate_footprint(&dir, key.format, shipped.as_deref())
                            .unwrap_or(Footprint::NOTHING)
                    })
                } else {
                    // An external engine's memory is its own.
                    Footprint::NOTHING
                };
                (key, footprint)
            })
            .collect()
    }

    /// Why a trial is ignored for the memory budget: its sessions together cannot fit in it.
    fn past_budget(
        &self,
        spec: &TrialSpec,
        uses: &[(SessionKey, Footprint)],
        budget: crate::config::MemoryBudget,
    ) -> Option<String> {
        let limit = budget.bytes?;
        let total: u64 = uses.iter().map(|(_, f)| f.bytes()).sum();
        if total <= limit {
            return None;
        }
        let parts: Vec<String> = uses.iter().map(|(key, f)| format!("{} {f}", key.format)).collect();
        let whence = if budget.set {
            String::new()
        } else {
            format!(", by default {}% of this machine's memory", crate::config::DEFAULT_MEMORY_SHARE)
        };
        Some(format!(
            "{} needs an estimated {} in memory ({}), past the memory budget of {} (QUALIFY_MEMORY_BUDGET{whence})",
            spec.model.id,
            gib(total),
            parts.join(" + "),
            gib(limit)
        ))
    }
}

/// Why a trace trial cannot run: the ground truth's `model_type` is not one the tracer runs. (A
/// shipped file without a ground truth here is found out when it is traced.)
fn untraced_reason(binder: &mut Binder, spec: &TrialSpec) -> Option<String> {
    if !matches!(spec.kind, TrialKind::Numerics | TrialKind::Differential(DiffKind::Trace)) {
        return None;
    }
    let model_type = model_type(binder, spec)?;
    let Location::Found(dir) = binder.locate(&spec.model) else { return None };
    let traced = crate::format::hf_config::TRACED;
    if !traced.contains(&model_type.as_str()) {
        return Some(format!(
            "the tracer runs the llama convention ({}); {} is {model_type}",
            traced.join(", "),
            spec.model.id
        ));
    }
    let config_path = dir.join("config.json");
    if let Some(why) = crate::bounded::read_side_file(&config_path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| crate::format::hf_config::untraced(&config_path, &config))
    {
        return Some(format!("the tracer cannot run {}: {why}", spec.model.id));
    }
    let files = crate::format::files::safetensors_files(dir).ok()?;
    let shapes = crate::format::safetensors_header::weight_shapes(&files).ok()?;
    let parameters: u64 = shapes.values().map(|s| s.iter().map(|&d| d as u64).product::<u64>()).sum();
    let limit = crate::format::hf_config::TRACE_MAX_PARAMETERS;
    (parameters > limit).then(|| {
        format!(
            "the tracer holds a model as dense f32, and {} has {:.1}B parameters ({:.0} GB), past its {}B",
            spec.model.id,
            parameters as f64 / 1e9,
            parameters as f64 * 4.0 / 1e9,
            limit / 1_000_000_000
        )
    })
}

/// The ground truth's `model_type`, where its config.json is here and says it.
fn model_type(binder: &mut Binder, spec: &TrialSpec) -> Option<String> {
    let Location::Found(dir) = binder.locate(&spec.model) else { return None };
    let text = crate::bounded::read_side_file(&dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(config.get("model_type")?.as_str()?.to_string())
}

/// Why `diff::batch-invariance` cannot run on the embedded engine: on a GPU it answers every
/// sequence alone (cuBLAS's reduction order follows a product's rows, so it does not batch
/// there), and on the CPU its model of the architecture answers one sequence at a time, so there
/// is no batch to vary. (A GGUF whose rope is scaled runs on candle's quantized model, which does
/// not batch either; that is found out when the file is loaded.)
fn unbatched_reason(binder: &mut Binder, spec: &TrialSpec) -> Option<String> {
    if !matches!(spec.kind, TrialKind::Differential(DiffKind::BatchInvariance))
        || !matches!(spec.engine, EngineSpec::Embedded)
    {
        return None;
    }
    if spec.name.backend == Backend::Gpu {
        return Some(
            "on a GPU the embedded engine answers every sequence alone (cuBLAS's reduction order follows the rows of a product, so a batch would not keep each sequence's logits bit for bit), so no batch can change its logits"
                .into(),
        );
    }
    let model_type = model_type(binder, spec)?;
    let batched = crate::engine::BATCHED;
    (!batched.contains(&model_type.as_str())).then(|| {
        format!(
            "the embedded engine answers {model_type} one sequence at a time, so no batch can change its logits (it batches {})",
            batched.join(", ")
        )
    })
}

/// Why a trial of a shipped file's cell (`artifacts:`) cannot run: a comparison with a ground
/// truth the model does not have here, or I-1, which repeats a conversion modelqa did not make.
fn shipped_reason(binder: &mut Binder, spec: &TrialSpec) -> Option<String> {
    let (model, format) = (&spec.model, spec.name.format);
    model.artifact(format)?;
    let TrialKind::Differential(kind) = spec.kind else { return None };
    if matches!(kind, DiffKind::ServeVsRun | DiffKind::BatchInvariance) {
        return None;
    }
    if !binder.has_ground_truth(model) {
        return Some(format!(
            "nothing to compare against: {} ships no safetensors ground truth here, so its {format} file is qualified on its own (G0–G4, scenarios)",
            model.id
        ));
    }
    let quantized = !matches!(format, Format::Gguf(Quantization::F32 | Quantization::F16) | Format::Apr);
    (kind == DiffKind::Invariant(Invariant::RoundTrip) && quantized).then(|| {
        format!(
            "a third-party {format} file quantizes, so it converts back to nothing to compare, and repeating its conversion would test modelqa's converter, not the file"
        )
    })
}

/// Why a trial cannot run here on its engine, or `None` when it can. External engines show no
/// logits; an OpenAI-compatible server shows no files either; both bring their own backends.
fn engine_reason(binder: &mut Binder, spec: &TrialSpec) -> Option<String> {
    let (model, format) = (&spec.model, spec.name.format);
    let kind = &spec.kind;
    let no_logits = match kind {
        TrialKind::Golden(k) => *k == GoldenKind::Logits,
        TrialKind::Differential(k) => k.compares_logits(),
        _ => false,
    };
    // The trace runs the format's own files through the project's decoder: an engine that
    // shows its files shows them to the trace, one that does not cannot be traced.
    let traced = matches!(kind, TrialKind::Numerics | TrialKind::Differential(DiffKind::Trace));
    let own_prompts = matches!(kind, TrialKind::Differential(DiffKind::ChatPrompt));
    let serve_vs_run = matches!(kind, TrialKind::Differential(DiffKind::ServeVsRun));
    let unseen_tokens = matches!(kind, TrialKind::Security(_));
    match &spec.engine {
        EngineSpec::Embedded => binder.ignore_reason(model, format, spec.name.backend),
        EngineSpec::Openai { .. } => {
            if serve_vs_run {
                Some("the openai engine runs on its server: run and serve are the same endpoint".into())
            } else if no_logits {
                Some("the openai engine returns no logits".into())
            } else if unseen_tokens {
                Some("the openai engine encodes prompts on its server and shows no tokens, so whether user text stays text cannot be seen".into())
            } else if own_prompts {
                Some("the openai engine lays conversations out itself; its prompts are not shown".into())
            } else if traced {
                Some("the openai engine's model files are on its server; the trace reads them".into())
            } else if matches!(
                kind,
                TrialKind::Gate(Gate::Integrity)
                    | TrialKind::Differential(
                        DiffKind::Tensors | DiffKind::Invariant(_) | DiffKind::TokenizerFuzz
                    )
            ) {
                Some("the openai engine's model files are on its server".into())
            } else {
                None
            }
        }
        EngineSpec::Command { .. } => {
            if matches!(kind, TrialKind::Perf) {
                Some("the command engine reports no per-token timing".into())
            } else if serve_vs_run {
                Some("the command engine shows no log probabilities to judge where run and serve part".into())
            } else if matches!(kind, TrialKind::Differential(DiffKind::BatchInvariance)) {
                Some("the command engine answers one prompt per process: there is no batch to vary".into())
            } else if no_logits {
                Some("the command engine returns no logits".into())
            } else if unseen_tokens {
                Some("the command engine is handed text and shows no tokens, so whether user text stays text cannot be seen".into())
            } else if matches!(kind, TrialKind::ServerGate(ServerCheck::Limits)) {
                Some("the command engine shows no context, so the server in front of it cannot refuse a prompt for its length".into())
            } else if own_prompts {
                Some("the command engine is handed prompts the harness lays out".into())
            } else if traced {
                Some("the command engine shows no tokenizer to lay the traced prompts out with".into())
            } else {
                binder.files_reason(model, format)
            }
        }
    }
}

/// What a resumed run (`QUALIFY_RESUME`) read from its journal.
#[derive(Clone, Copy)]
struct Resumed<'a> {
    /// The trials with a final record: not run again.
    finished: Option<&'a BTreeSet<String>>,
    /// The trials the process died in: generated alone, outside their cell's batch.
    alone: &'a BTreeSet<String>,
}

fn build_trials(
    plan: &Plan,
    selected: &[TrialRef],
    binder: &mut Binder,
    ctx: &Arc<RunContext>,
    args: &Arguments,
    resumed: Resumed<'_>,
) -> (Vec<Trial>, BTreeMap<String, usize>) {
    let mut trials = Vec::with_capacity(selected.len());
    let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
    let mut footprints = Footprints::default();
    let runs_ignored = args.ignored || args.include_ignored;
    for r in selected {
        let spec = plan.spec(*r);
        let reason = match resumed.finished {
            Some(done) if done.contains(&spec.full_name) => {
                Some(format!("finished in run {} before it stopped (QUALIFY_RESUME)", ctx.config.run_id))
            }
            _ => ignore_reason(binder, &spec),
        };
        // The file the model ships for this cell, found here, replaces its conversion.
        let shipped = match binder.artifact(&spec.model, spec.name.format) {
            Some(Location::Found(file)) => Some(file.clone()),
            _ => None,
        };
        let model_dir: Option<PathBuf> = match (&spec.engine, binder.locate(&spec.model)) {
            // An OpenAI-compatible server holds the model; nothing is loaded or hashed here. Where
            // the model's files are here too, its chat template decides how conversations are
            // sent (`trial::env::load`).
            (EngineSpec::Openai { .. }, Location::Found(dir)) => Some(dir.clone()),
            (EngineSpec::Openai { .. }, _) => Some(PathBuf::new()),
            (_, Location::Found(dir)) => Some(dir.clone()),
            // No ground truth here: a shipped file is qualified on its own (an empty directory).
            (_, Location::Missing(_)) if shipped.is_some() => Some(PathBuf::new()),
            (_, Location::Missing(_)) => None,
        };
        let name = spec.full_name.clone();
        let policy = plan.playbooks()[spec.playbook].failure_policy;
        let uses = footprints.uses(binder, &spec);
        let reason = reason.or_else(|| footprints.past_budget(&spec, &uses, ctx.config.memory_budget));
        if let Some(why) = &reason {
            if !runs_ignored {
                *ignored.entry(why.clone()).or_default() += 1;
            }
        } else if spec.kind.loads_session() {
            // Each trial that loads sessions releases them when it ends.
            let bytes = |k: &SessionKey| uses.iter().find(|(u, _)| u == k).map_or(0, |(_, f)| f.bytes());
            let key = crate::trial::session_key(&spec);
            ctx.sessions.expect_uses(&key, 1, bytes(&key));
            if let Some(reference) = crate::trial::reference_key(&spec) {
                ctx.sessions.expect_uses(&reference, 1, bytes(&reference));
            }
            if !resumed.alone.contains(&spec.full_name) {
                ctx.cells.expect(&spec);
            }
        }
        let ctx = Arc::clone(ctx);
        let is_ignored = reason.is_some();
        let trial = Trial::ignorable_test(name, move || match (reason, model_dir) {
            (Some(why), _) => Ok(Completion::ignored_with(why)),
            (None, None) => Ok(Completion::ignored_with("model not found")),
            (None, Some(dir)) => match ctx.run(&spec, dir, shipped, policy) {
                Ok(TrialEnd::Passed) => Ok(Completion::Completed),
                // nextest shows a trial ignored at run time as passed; this line says it was not.
                Ok(TrialEnd::Unstable(reason)) => {
                    reporter::unstable(&spec.full_name, &reason);
                    Ok(Completion::ignored_with(reason))
                }
                Ok(TrialEnd::Failed(message)) => Err(message.into()),
                Err(e) => Err(e.to_string().into()),
            },
        });
        trials.push(trial.with_ignored_flag(is_ignored));
    }
    (trials, ignored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;
    use crate::playbook::PlaybookError;

    fn user_errors() -> Vec<(UserError, u8)> {
        let io = || std::io::Error::other("denied");
        let config =
            || ConfigError { var: "QUALIFY_NO_TRIALS", value: "never".into(), expected: "auto".into() };
        let plan = Plan::new(Vec::new());
        let filter = Filter { filter: Some("qa-tine::mvp".into()), exact: false, skip: Vec::new() };
        vec![
            (UserError::UnknownVariables(vec![("QUALIFY_PLAYBOOK".into(), Some("QUALIFY_PLAYBOOKS"))]), 4),
            (UserError::Config(config()), 4),
            (UserError::Journal { path: "/j".into(), source: io() }, 4),
            (UserError::Playbook(PlaybookError::new("p.yaml".as_ref(), "bad")), 3),
            (UserError::InvalidExactName { name: "x".into(), source: TrialName::parse("x").unwrap_err() }, 3),
            (UserError::UnknownExactName { name: "a::b".into(), scanned: "playbooks".into() }, 3),
            (UserError::NoTrials(NoTrialsFound::new(&filter, &plan, "playbooks".as_ref())), 5),
        ]
    }

    #[test]
    fn each_user_error_has_its_documented_exit_code() {
        for (e, code) in user_errors() {
            assert_eq!(e.exit_code(), code, "{e}");
            assert_eq!(Failure::from(e).exit_code(), code);
        }
    }

    #[test]
    fn a_bug_has_its_own_exit_code_apart_from_every_other() {
        let bug = Failure::Bug(Bug { message: "oops".into() });
        assert_eq!(bug.exit_code(), exit::INTERNAL_ERROR);
        let taken =
            [exit::OK, exit::TRIAL_FAILED, 2, exit::PLAYBOOK_ERROR, exit::ENVIRONMENT_ERROR, exit::NO_TRIALS];
        assert!(!taken.contains(&exit::INTERNAL_ERROR));
        assert!(user_errors().iter().all(|(e, _)| e.exit_code() != exit::INTERNAL_ERROR));
    }

    #[test]
    fn a_panic_outside_a_trial_is_a_bug_and_a_user_error_stays_one() {
        let panicked = guarded(|| panic!("the plan is empty"));
        match panicked {
            Err(Failure::Bug(bug)) => assert_eq!(bug.message, "the plan is empty"),
            other => panic!("{other:?}"),
        }
        let formatted = guarded(|| panic!("trial {} of {}", 3, 7));
        assert!(matches!(&formatted, Err(Failure::Bug(b)) if b.message == "trial 3 of 7"), "{formatted:?}");
        let user = guarded(|| Err(UserError::UnknownExactName { name: "a".into(), scanned: "p".into() }));
        assert_eq!(user.map(|_| ()).unwrap_err().exit_code(), exit::PLAYBOOK_ERROR);
        assert!(guarded(|| Ok(ExitCode::SUCCESS)).is_ok());
    }

    #[test]
    fn the_readme_documents_every_exit_code() {
        let readme = include_str!("../../README.md");
        let table = &readme[readme.find("## Exit codes").expect("an Exit codes section")..];
        for code in [
            exit::OK,
            exit::TRIAL_FAILED,
            exit::PLAYBOOK_ERROR,
            exit::ENVIRONMENT_ERROR,
            exit::NO_TRIALS,
            exit::INTERNAL_ERROR,
        ] {
            assert!(
                table.contains(&format!("\n| {code} | ")),
                "exit code {code} is not in the README's table"
            );
        }
    }

    #[test]
    fn user_errors_say_what_the_harness_always_said() {
        let said: Vec<String> = user_errors().into_iter().map(|(e, _)| e.to_string()).collect();
        assert_eq!(said[1], "invalid QUALIFY_NO_TRIALS=\"never\": auto");
        assert_eq!(said[2], "failed to open the evidence journal /j: denied");
        assert_eq!(said[3], "failed to load playbooks: p.yaml: bad");
        assert!(said[4].starts_with("`x` is not a trial name: expected 7 segments"), "{}", said[4]);
        assert_eq!(said[5], "no trial is named `a::b` in the playbooks under playbooks");
        assert_eq!(
            said[6],
            "the filter `qa-tine::mvp` selects none of the 0 trials of 0 playbooks under playbooks"
        );
    }
}
