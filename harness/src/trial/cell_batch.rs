//! A cell's scenario trials generated together: the first `run` or `chat` scenario trial of a
//! `(model, format, backend)` cell to run generates, in one batch, the answers of the cell's
//! selected scenario trials that have not run yet (at most `QUALIFY_CELL_BATCH` sequences, every
//! repeat of a trial its own, and no more cached positions in all than the one sequence a
//! session's memory estimate counts); each of them then finds its answer waiting and judges it.
//!
//! The weights are read once per step for the whole batch instead of once per trial, and the
//! verdicts cannot move: the embedded engine's batch is bit for bit what each prompt gets alone
//! (`diff::batch-invariance` holds it to that in every cell). A trial whose answer was not
//! generated ahead (an engine that does not batch, a prompt the engine lays out itself, an
//! answer that ended in an error or a timeout inside the batch, a prompt that differs from the
//! one generated for it) generates alone, as it would without batching. Under nextest every
//! trial is a process of its own, so a cell's batch there is the trial alone.
//!
//! A process that dies inside a batch leaves every trial of the batch crashed: before the batch
//! runs, each of the others gets a start line in the journal whose provisional record says so.
//! A resumed run (`QUALIFY_RESUME`) generates each trial that has such a record alone, so the one
//! whose prompt crashes the engine is found, and the others pass.
//!
//! The timings a batched trial reports are its own sequence's inside the batch (its first token
//! after the batch's prefill, its tokens over its own time), and `metrics.batch` says the batch's
//! size and aggregate rate.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chat::Guarded;
use crate::engine::{GenerateRequest, Generation, SessionKey};
use crate::expand::{TrialKind, TrialSpec};
use crate::journal::BatchMetrics;
use crate::matrix::Modality;
use crate::playbook::spec::EngineSpec;

use crate::vocab::{Decider, Gate, Outcome};

use super::{Finding, RunContext, TrialEnv, prepare, session_key};

/// Every cell's batch state, shared by a run's trials ([`super::RunContext::cells`]).
pub(crate) struct CellBatches {
    /// The most sequences one batch generates (`QUALIFY_CELL_BATCH`); 1 generates each alone.
    limit: usize,
    cells: Mutex<HashMap<SessionKey, Arc<Mutex<Cell>>>>,
}

#[derive(Default)]
struct Cell {
    /// The selected scenario trials whose answers are not generated yet, in the order they run.
    pending: Vec<TrialSpec>,
    /// Answers generated ahead of their trials, by trial name and repeat.
    answers: HashMap<(String, u32), Ahead>,
}

/// What a trial of a cell generates from: its answer from the cell's batch, or itself alone, with
/// its deadline moved by the uncounted time it spent on the batch.
pub(crate) enum Batched {
    Answer(Generation, BatchMetrics),
    Alone { later: Duration },
}

/// One answer generated inside a batch, with the prompt it answers.
struct Ahead {
    prompt: String,
    generation: Generation,
    batch: BatchMetrics,
}

/// One sequence of a batch being put together: which trial and repeat, and its request's parts.
struct Planned {
    trial: String,
    /// The trial, for the first of its sequences.
    spec: Option<TrialSpec>,
    repeat: u32,
    prompt: Guarded,
    max_tokens: u32,
    sampling: crate::engine::Sampling,
    deadline: Instant,
}

impl CellBatches {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, cells: Mutex::new(HashMap::new()) }
    }

    /// Notes a selected trial that will run: a `run` or `chat` scenario without a property on the
    /// embedded engine joins its cell's batch; any other trial is not batched here (a property
    /// batches its own cases, `serve` goes through the server, which batches its requests).
    pub(crate) fn expect(&self, spec: &TrialSpec) {
        if self.limit <= 1 || !batchable(spec) {
            return;
        }
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(cells.entry(session_key(spec)).or_default())
        };
        cell.lock().unwrap_or_else(|p| p.into_inner()).pending.push(spec.clone());
    }

    /// The answer generated for this trial (run `env.repeat`) to `prompt` in its cell's batch,
    /// generating the batch first when the trial's answer is not there yet, or that the trial is
    /// to generate alone. Time spent waiting for another trial's batch, or generating other
    /// trials' answers, is the trial's uncounted wait (`env.waits`), and moves the deadline of
    /// a generation alone by as much.
    pub(crate) fn answer(&self, env: &TrialEnv<'_>, prompt: &Guarded) -> Batched {
        let alone = Batched::Alone { later: Duration::ZERO };
        if self.limit <= 1 {
            return alone;
        }
        let Some(cell) = self.cells.lock().unwrap_or_else(|p| p.into_inner()).get(env.key).cloned() else {
            return alone;
        };
        let waited = Instant::now();
        // Another trial may be generating the cell's batch: waiting for it is not this trial's
        // time, and a session abandoned meanwhile (that trial hung) ends the wait.
        let cell = env.waits.uncounted(|| lock_unless_abandoned(&cell, env.ctx, env.key));
        let mut later = waited.elapsed();
        let Some(mut cell) = cell else { return Batched::Alone { later } };
        let mine = (env.spec.full_name.clone(), env.repeat);
        if !cell.answers.contains_key(&mine) && cell.pending.iter().any(|s| s.full_name == mine.0) {
            let batch = Instant::now();
            self.generate_ahead(env, &mut cell);
            // What the batch took beyond this trial's own sequence was spent on the others.
            let own = cell.answers.get(&mine).map_or(Duration::ZERO, |a| a.generation.duration);
            let others = batch.elapsed().saturating_sub(own);
            env.waits.add(others);
            later += others;
        }
        match cell.answers.remove(&mine) {
            Some(ahead) if ahead.prompt == prompt.text => Batched::Answer(ahead.generation, ahead.batch),
            _ => Batched::Alone { later },
        }
    }

    /// Forgets a trial that has ended (its final record is next): it is no longer generated
    /// ahead, so no batch can write a start line for it after its record. A batch running now
    /// is waited for, unless its session was abandoned (it hung, and wrote its start lines first).
    pub(crate) fn forget(&self, ctx: &RunContext, spec: &TrialSpec) {
        let key = session_key(spec);
        let Some(cell) = self.cells.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned() else {
            return;
        };
        let Some(mut cell) = lock_unless_abandoned(&cell, ctx, &key) else { return };
        cell.pending.retain(|s| s.full_name != spec.full_name);
        cell.answers.retain(|(trial, _), _| *trial != spec.full_name);
    }

    /// Generates, as one batch, the answers of this trial and of the cell's next pending trials,
    /// up to the limit, and keeps those that ended as they would alone.
    fn generate_ahead(&self, env: &TrialEnv<'_>, cell: &mut Cell) {
        // This trial first, then the others in the order they run.
        let mut order: Vec<TrialSpec> = std::mem::take(&mut cell.pending);
        if let Some(i) = order.iter().position(|s| s.full_name == env.spec.full_name) {
            let mine = order.remove(i);
            order.insert(0, mine);
        }
        let (planned, pending) = select(self.limit, order, |spec| plan(env, spec));
        cell.pending.extend(pending);
        if planned.len() < 2 {
            return;
        }
        // Every other trial of the batch is said to start: should the process die inside the
        // batch, each reads as crashed, and a resumed run generates it alone.
        let leader = &env.spec.full_name;
        let mut members: Vec<&TrialSpec> = Vec::new();
        for p in &planned {
            if p.trial != *leader && !members.iter().any(|s| s.full_name == p.trial) {
                members.extend(p.spec.iter());
            }
        }
        let size = planned.len();
        for spec in &members {
            let why = format!(
                "the process died while trial {leader} generated a batch of {size} sequences that held this \
                 trial's (a crash, an abort or an out-of-memory kill in that batch), or the run was \
                 interrupted before this trial ran; a resumed run (QUALIFY_RESUME) generates it alone"
            );
            let mut provisional = Finding::new(Outcome::Crashed, Decider::Gateway(Gate::Stability), why)
                .record(env.ctx, spec, Duration::ZERO);
            provisional.unfinished = true;
            if env.ctx.journal.append_start(&provisional).is_err() {
                // Without their start lines a crash would leave no trace of them: each generates
                // alone (and meets the journal's error itself).
                return;
            }
        }
        let requests: Vec<GenerateRequest<'_>> = planned
            .iter()
            .map(|p| GenerateRequest {
                prompt: &p.prompt.text,
                literal: &p.prompt.literal,
                max_tokens: p.max_tokens,
                sampling: p.sampling.clone(),
                deadline: p.deadline,
            })
            .collect();
        // A panic inside the batch (the engine failing on one sequence) is not the leader's:
        // every trial of the batch then generates alone, where a failure lands on its own trial.
        let batch = catch_unwind(AssertUnwindSafe(|| {
            let _generating =
                crate::config::GeneratingFor::new(planned.iter().map(|p| p.trial.clone()).collect());
            env.generate_requests(&requests)
        }));
        let Ok(batch) = batch else { return };
        let Some(batch) = batch else {
            // The engine generates one at a time: every trial of the cell does so alone.
            cell.pending.clear();
            return;
        };
        for (p, answer) in planned.into_iter().zip(batch.answers) {
            // An error or a timeout inside the batch is not kept: the trial generates alone and
            // meets its own, on its own deadline.
            if let Ok(generation) = answer {
                let ahead = Ahead { prompt: p.prompt.text, generation, batch: batch.metrics.clone() };
                cell.answers.insert((p.trial, p.repeat), ahead);
            }
        }
    }
}

/// The cell's lock, waited for while another trial's batch holds it; `None` once the session is
/// abandoned (that trial hung inside the engine, and holds the lock for good).
fn lock_unless_abandoned<'a>(
    cell: &'a Mutex<Cell>,
    ctx: &RunContext,
    key: &SessionKey,
) -> Option<std::sync::MutexGuard<'a, Cell>> {
    loop {
        match cell.try_lock() {
            Ok(cell) => return Some(cell),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if ctx.sessions.abandoned(key).is_some() => return None,
            Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The sequences of one batch, from trials in the order they run (`plan` gives a trial's, one
/// per repeat), and the trials left for a later batch: whole trials while they fit `limit`
/// sequences and [`KV_BUDGET`] cached positions; of the first, its first `limit` repeats (the
/// rest generate alone).
fn select<T>(limit: usize, order: Vec<T>, plan: impl Fn(&T) -> Vec<Planned>) -> (Vec<Planned>, Vec<T>) {
    let (mut planned, mut pending) = (Vec::new(), Vec::new());
    let mut rest = order.into_iter();
    for trial in rest.by_ref() {
        let mut sequences = plan(&trial);
        if planned.is_empty() {
            sequences.truncate(limit);
        } else if planned.len() + sequences.len() > limit
            || cache_tokens(&planned) + cache_tokens(&sequences) > KV_BUDGET
        {
            pending.push(trial);
            break;
        }
        planned.extend(sequences);
    }
    pending.extend(rest);
    (planned, pending)
}

/// The KV cache positions one batch may hold in all: the one sequence at the model's context
/// that a session's memory estimate counts (`engine::footprint`), so that a batch of many short
/// sequences stays inside what the session was admitted with.
const KV_BUDGET: u64 = crate::engine::footprint::KV_TOKENS;

/// At most how many positions `sequences` keep in their KV caches: each prompt's bytes (a
/// tokenizer's token covers at least one byte), a beginning and an end token, and the most
/// tokens it may generate.
fn cache_tokens(sequences: &[Planned]) -> u64 {
    sequences.iter().map(|p| p.prompt.text.len() as u64 + 2 + u64::from(p.max_tokens)).sum()
}

/// Whether a trial's answers may be generated in its cell's batch.
fn batchable(spec: &TrialSpec) -> bool {
    matches!(
        &spec.kind,
        TrialKind::Scenario { modality: Modality::Run | Modality::Chat, scenario } if scenario.property.is_none()
    ) && matches!(spec.engine, EngineSpec::Embedded)
}

/// The sequences a trial generates, one per repeat, laid out as its own body lays them out
/// (`modality::text`); none where its prompt is not plain text for the engine.
fn plan(env: &TrialEnv<'_>, spec: &TrialSpec) -> Vec<Planned> {
    let TrialKind::Scenario { modality, scenario } = &spec.kind else { return Vec::new() };
    let (template, applies) = (env.info.chat_template.as_ref(), env.info.applies_chat_template);
    let Ok((prompt, None)) =
        prepare(&spec.model, *modality, &scenario.input, template, applies, &env.info.control_tokens)
    else {
        return Vec::new();
    };
    // The others stop by this trial's deadline too, so the batch ends when this trial would
    // (an answer cut short there is not kept: its trial generates alone, on its own deadline).
    let deadline = if spec.full_name == env.spec.full_name {
        env.deadline
    } else {
        (Instant::now() + spec.tier.timeout).min(env.deadline)
    };
    (0..scenario.repeat.times.max(1))
        .map(|repeat| Planned {
            trial: spec.full_name.clone(),
            spec: (repeat == 0).then(|| spec.clone()),
            repeat,
            prompt: prompt.clone(),
            max_tokens: scenario.max_tokens,
            sampling: TrialEnv { spec, repeat, ..*env }.sampling(),
            deadline,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` sequences of trial `name`, each with a prompt of `bytes` bytes and `max_tokens`.
    fn sequences(name: &str, n: u32, bytes: usize, max_tokens: u32) -> Vec<Planned> {
        (0..n)
            .map(|repeat| Planned {
                trial: name.to_string(),
                spec: None,
                repeat,
                prompt: Guarded::plain("x".repeat(bytes)),
                max_tokens,
                sampling: crate::engine::Sampling::Greedy,
                deadline: Instant::now(),
            })
            .collect()
    }

    fn names(planned: &[Planned]) -> Vec<(String, u32)> {
        planned.iter().map(|p| (p.trial.clone(), p.repeat)).collect()
    }

    #[test]
    fn a_batch_holds_whole_trials_up_to_the_limit_and_the_first_trials_repeats_are_cut_to_it() {
        let repeats = |t: &&str| match *t {
            "ten" => sequences(t, 10, 20, 8),
            "three" => sequences(t, 3, 20, 8),
            _ => sequences(t, 1, 20, 8),
        };
        // The first trial's 10 repeats under a limit of 4: its first 4, nothing else.
        let (planned, pending) = select(4, vec!["ten", "one", "three"], repeats);
        assert_eq!(names(&planned), [0, 1, 2, 3].map(|r| ("ten".to_string(), r)));
        assert_eq!(pending, ["one", "three"]);
        // Whole trials only: "three" does not fit beside "one" and 1 more under 4, and waits
        // with those after it.
        let (planned, pending) = select(4, vec!["one", "two", "three", "four"], repeats);
        assert_eq!(names(&planned), [("one".to_string(), 0), ("two".to_string(), 0)]);
        assert_eq!(pending, ["three", "four"]);
        let (planned, pending) = select(32, vec!["one", "three", "ten"], repeats);
        assert_eq!(planned.len(), 14);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_batch_holds_no_more_cached_positions_than_the_sessions_estimate_counts() {
        // Each sequence keeps at most 1,000 + 2 + 998 = 2,000 positions: two fit the 4,096.
        let long = |t: &&str| sequences(t, 1, 1000, 998);
        let (planned, pending) = select(32, vec!["a", "b", "c", "d"], long);
        assert_eq!(names(&planned), [("a".to_string(), 0), ("b".to_string(), 0)]);
        assert_eq!(pending, ["c", "d"]);
        assert!(cache_tokens(&planned) <= KV_BUDGET);
        // A first trial past the budget on its own still runs, alone (a batch of one).
        let huge = |t: &&str| sequences(t, 1, 10_000, 64);
        let (planned, pending) = select(32, vec!["a", "b"], huge);
        assert_eq!(planned.len(), 1);
        assert_eq!(pending, ["b"]);
    }
}
