//! The qualify harness's `main`: libtest's command line in, trials out.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Completion, Trial};

use crate::bind::{Binder, Location};
use crate::config::{Config, NoTrials};
use crate::engine::CandleEngine;
use crate::expand::{DiffKind, Filter, GoldenKind, Plan, TrialKind, TrialRef, TrialSpec};
use crate::journal::Journal;
use crate::name::TrialName;
use crate::playbook::spec::EngineSpec;
use crate::reporter::{self, exit};
use crate::run::TrialEnd;
use crate::trial::RunContext;
use crate::vocab::Gate;

/// Runs the qualify harness with the process's arguments and environment.
///
/// Call it first in `main`, before starting any thread: it sizes candle's thread pools through
/// the environment ([`crate::engine::size_thread_pools`]), which it can only do while the
/// process has one thread.
pub fn qualify_main() -> ExitCode {
    crate::engine::size_thread_pools();
    let args = Arguments::from_args();
    let unknown = crate::config::unknown_variables();
    if !unknown.is_empty() {
        reporter::unknown_variables(&unknown);
        return ExitCode::from(exit::ENVIRONMENT_ERROR);
    }
    let (config, no_trials) = match Config::from_env().and_then(|c| Ok((c, NoTrials::from_env()?))) {
        Ok(c) => c,
        Err(e) => {
            reporter::config_error(&e);
            return ExitCode::from(exit::ENVIRONMENT_ERROR);
        }
    };
    let (playbooks, notices) = match crate::playbook::load_all(&config.playbooks) {
        Ok(p) => p,
        Err(e) => {
            reporter::playbook_error(&e);
            return ExitCode::from(exit::PLAYBOOK_ERROR);
        }
    };
    reporter::notices(&notices);
    let plan = Plan::new(playbooks);
    let filter = Filter { filter: args.filter.clone(), exact: args.exact, skip: args.skip.clone() };

    let mut binder = Binder::new(config.roots.clone());
    let fast_exact = args.exact && args.skip.is_empty() && args.filter.is_some();
    if args.list && !fast_exact {
        return list(&plan, &filter, None, &mut binder, args.ignored);
    }

    // nextest runs each trial as `--exact NAME`: build that one trial, not all of them.
    let selected: Vec<TrialRef> = match (&args.filter, args.exact, args.skip.is_empty()) {
        (Some(name), true, true) => match (TrialName::parse(name), args.list) {
            // Listing follows libtest: a name that matches nothing lists nothing.
            (Err(_), true) => Vec::new(),
            (Ok(parsed), true) => plan.find(&parsed).into_iter().collect(),
            (Err(e), false) => {
                reporter::invalid_exact_name(name, &e);
                return ExitCode::from(exit::PLAYBOOK_ERROR);
            }
            (Ok(parsed), false) => match plan.find(&parsed) {
                Some(r) => vec![r],
                None => {
                    reporter::unknown_exact_name(name, &config.playbooks);
                    return ExitCode::from(exit::PLAYBOOK_ERROR);
                }
            },
        },
        _ => plan.select(&filter),
    };

    if args.list {
        return list(&plan, &filter, Some(&selected), &mut binder, args.ignored);
    }
    if selected.is_empty() && no_trials != NoTrials::Pass {
        let fatal = match no_trials {
            NoTrials::Fail => true,
            NoTrials::Auto => aimed_at_trials(&filter, &plan),
            NoTrials::Warn | NoTrials::Pass => false,
        };
        reporter::no_trials(&filter, &plan, &config.playbooks, fatal);
        if fatal {
            return ExitCode::from(exit::NO_TRIALS);
        }
    }

    let journal = match Journal::open(&config.journal_dir, &config.run_id) {
        Ok(j) => j,
        Err(e) => {
            reporter::journal_error(&config.journal_dir, &e);
            return ExitCode::from(exit::ENVIRONMENT_ERROR);
        }
    };
    reporter::run_header(selected.len(), plan.total(), plan.playbooks().len(), journal.path());
    let ctx = Arc::new(RunContext::new(config, journal, Box::new(CandleEngine)));
    let (trials, ignored) = build_trials(&plan, &selected, &mut binder, &ctx, &args);
    reporter::ignored_summary(&ignored);
    let conclusion = libtest_mimic::run(&args, trials);
    conclusion.exit_code()
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
) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut write = |r: TrialRef, name: &str| -> bool {
        if only_ignored && ignore_reason(binder, &plan.spec(r)).is_none() {
            return true;
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

/// Why a trial cannot run here on its engine, or `None` when it can. External engines show no
/// logits; an OpenAI-compatible server shows no files either; both bring their own backends.
fn ignore_reason(binder: &mut Binder, spec: &TrialSpec) -> Option<String> {
    let (model, format) = (&spec.model, spec.name.format);
    let kind = &spec.kind;
    let no_logits = matches!(
        kind,
        TrialKind::Golden(GoldenKind::Logits)
            | TrialKind::Differential(DiffKind::Logits | DiffKind::Generation)
    );
    let own_prompts = matches!(kind, TrialKind::Differential(DiffKind::ChatPrompt));
    match &spec.engine {
        EngineSpec::Embedded => binder.ignore_reason(model, format, spec.name.backend),
        EngineSpec::Openai { .. } => {
            if no_logits {
                Some("the openai engine returns no logits".into())
            } else if own_prompts {
                Some("the openai engine lays conversations out itself; its prompts are not shown".into())
            } else if matches!(
                kind,
                TrialKind::Gate(Gate::Integrity)
                    | TrialKind::Differential(DiffKind::Tensors | DiffKind::Invariant(_))
            ) {
                Some("the openai engine's model files are on its server".into())
            } else {
                None
            }
        }
        EngineSpec::Command { .. } => {
            if matches!(kind, TrialKind::Perf) {
                Some("the command engine reports no per-token timing".into())
            } else if no_logits {
                Some("the command engine returns no logits".into())
            } else if own_prompts {
                Some("the command engine is handed prompts the harness lays out".into())
            } else {
                binder.files_reason(model, format)
            }
        }
    }
}

fn build_trials(
    plan: &Plan,
    selected: &[TrialRef],
    binder: &mut Binder,
    ctx: &Arc<RunContext>,
    args: &Arguments,
) -> (Vec<Trial>, BTreeMap<String, usize>) {
    let mut trials = Vec::with_capacity(selected.len());
    let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
    let runs_ignored = args.ignored || args.include_ignored;
    for r in selected {
        let spec = plan.spec(*r);
        let reason = ignore_reason(binder, &spec);
        let model_dir: Option<PathBuf> = match (&spec.engine, binder.locate(&spec.model)) {
            // An OpenAI-compatible server holds the model; nothing is read here.
            (EngineSpec::Openai { .. }, _) => Some(PathBuf::new()),
            (_, Location::Found(dir)) => Some(dir.clone()),
            (_, Location::Missing(_)) => None,
        };
        let name = spec.full_name.clone();
        let policy = plan.playbooks()[spec.playbook].failure_policy;
        if let Some(why) = &reason {
            if !runs_ignored {
                *ignored.entry(why.clone()).or_default() += 1;
            }
        } else {
            let key = crate::trial::session_key(&spec);
            ctx.sessions.expect_uses(&key, 1);
            if let Some(reference) = crate::trial::reference_key(&spec) {
                ctx.sessions.expect_uses(&reference, 1);
            }
        }
        let ctx = Arc::clone(ctx);
        let is_ignored = reason.is_some();
        let trial = Trial::ignorable_test(name, move || match (reason, model_dir) {
            (Some(why), _) => Ok(Completion::ignored_with(why)),
            (None, None) => Ok(Completion::ignored_with("model not found")),
            (None, Some(dir)) => match ctx.run(&spec, dir, policy) {
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
