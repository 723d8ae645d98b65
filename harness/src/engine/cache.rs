//! The process-wide session cache: each `(model, format, backend)` is loaded once, shared by the
//! trials that need it, and dropped when the last of them ends.
//!
//! With a memory budget (`QUALIFY_MEMORY_BUDGET`) a trial is admitted before it loads: the
//! estimated footprints ([`super::footprint`]) of the sessions loaded or being loaded, with the
//! ones it needs, stay within the budget. A trial that does not fit waits while another trial
//! is running (its end may free a session); when none is, the least recently used idle sessions
//! are unloaded (to be loaded again by a later trial that needs them). A trial never waits on a
//! trial that waits, so the run cannot deadlock: some admitted trial is always running, or the
//! waiting one unloads what it needs to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::{EngineError, Session};
use crate::matrix::{Backend, Format};

/// The identity of a loaded session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    pub model: String,
    pub format: Format,
    pub backend: Backend,
    /// Which engine runs it: empty for the embedded one, else the external engine's address or
    /// command, so two playbooks on one model with different engines never share a session.
    pub engine: String,
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} as {} on {}", self.model, self.format, self.backend)
    }
}

/// A session shared between trials; generation locks it.
pub type SharedSession = Arc<Mutex<Box<dyn Session>>>;

struct Slot {
    /// `None` until loaded; a failure is kept only when the caller asks for it.
    state: Mutex<Option<Result<SharedSession, EngineError>>>,
    /// Trials still to use this session.
    remaining: AtomicUsize,
    /// Its estimated footprint in bytes.
    bytes: AtomicU64,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot { state: Mutex::new(None), remaining: AtomicUsize::new(0), bytes: AtomicU64::new(0) })
    }
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct SessionCache {
    slots: Mutex<HashMap<SessionKey, Arc<Slot>>>,
    /// Sessions a trial hung in, with why: their later trials fail at once instead of waiting.
    abandoned: Mutex<HashMap<SessionKey, String>>,
    ledger: Mutex<Ledger>,
    /// Signalled whenever an admission ends or a session is released.
    freed: Condvar,
}

/// The sessions loaded or being loaded, their estimated bytes and who uses them.
#[derive(Debug, Default)]
struct Ledger {
    /// `None`: no budget (the estimates are still summed, for the run's summary).
    limit: Option<u64>,
    entries: HashMap<SessionKey, Entry>,
    /// Advances at each admission's end: the least recently used idle session goes first.
    clock: u64,
    usage: MemoryUsage,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    /// Admitted trials using it now.
    users: usize,
    last_used: u64,
    /// Its last trial has ended: it goes as soon as no admitted trial holds it.
    released: bool,
    /// A trial hung in it past its deadline and still holds it: its bytes stay, and its user
    /// is not a trial whose end can be waited for.
    stuck: bool,
}

impl Ledger {
    fn held(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }
}

/// What the budget did over a run, for its summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemoryUsage {
    pub(crate) limit: Option<u64>,
    /// The most the sessions loaded at once were estimated to hold.
    pub(crate) peak: u64,
    /// Sessions unloaded to make room while trials of theirs were still to run.
    pub(crate) evicted: usize,
    /// Trials that waited for room, at least once.
    pub(crate) waited: usize,
}

/// Why a trial was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// What it needs exceeds the budget even with nothing else loaded.
    TooLarge { needs: u64, limit: u64 },
    /// What holds the memory is held by trials that hung.
    HeldByHungTrials { needs: u64, limit: u64, stuck: Vec<String> },
    /// Its deadline passed while it waited for a running trial to free memory.
    Deadline { needs: u64, limit: u64 },
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::footprint::gib;
        match self {
            NoRoom::TooLarge { needs, limit } => write!(
                f,
                "its sessions need an estimated {}, past the memory budget of {} (QUALIFY_MEMORY_BUDGET)",
                gib(*needs),
                gib(*limit)
            ),
            NoRoom::HeldByHungTrials { needs, limit, stuck } => write!(
                f,
                "its sessions need an estimated {} and the memory budget of {} (QUALIFY_MEMORY_BUDGET) is \
                 held by sessions that hung trials still hold: {}",
                gib(*needs),
                gib(*limit),
                stuck.join(", ")
            ),
            NoRoom::Deadline { needs, limit } => write!(
                f,
                "no room came in time for the {} it needs of the memory budget of {} \
                 (QUALIFY_MEMORY_BUDGET), held by other trials' sessions",
                gib(*needs),
                gib(*limit)
            ),
        }
    }
}

/// A trial's hold on the sessions it was admitted with; dropping it ends the hold.
pub(crate) struct Admission<'a> {
    cache: &'a SessionCache,
    keys: Vec<SessionKey>,
    /// Sessions unloaded to admit it (their servers should stop).
    pub(crate) evicted: Vec<SessionKey>,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut ledger = self.cache.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.clock += 1;
        let now = ledger.clock;
        for key in &self.keys {
            if let Some(entry) = ledger.entries.get_mut(key) {
                entry.users = entry.users.saturating_sub(1);
                entry.last_used = now;
                if entry.users == 0 && entry.released {
                    ledger.entries.remove(key);
                }
            }
        }
        drop(ledger);
        self.cache.freed.notify_all();
    }
}

impl SessionCache {
    /// A cache whose loaded sessions stay within `limit` estimated bytes (`None`: no limit).
    pub(crate) fn with_budget(limit: Option<u64>) -> SessionCache {
        let cache = SessionCache::default();
        {
            let mut ledger = cache.ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger.limit = limit;
            ledger.usage.limit = limit;
        }
        cache
    }

    /// What the budget did so far.
    pub(crate) fn memory_usage(&self) -> MemoryUsage {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner()).usage
    }

    /// Admits a trial that will use the sessions `keys` (as [`Self::expect_uses`] estimated
    /// them), waiting until they fit (see the module docs), at most until `deadline`.
    pub(crate) fn admit(&self, keys: &[SessionKey], deadline: Instant) -> Result<Admission<'_>, NoRoom> {
        let needs: Vec<(SessionKey, u64)> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            keys.iter()
                .map(|k| (k.clone(), slots.get(k).map_or(0, |s| s.bytes.load(Ordering::SeqCst))))
                .collect()
        };
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let mut waited = false;
        let mut evicted = Vec::new();
        loop {
            let missing: u64 =
                needs.iter().filter(|(k, _)| !ledger.entries.contains_key(k)).map(|(_, b)| *b).sum();
            let held = ledger.held();
            let fits = ledger.limit.is_none_or(|limit| held + missing <= limit);
            if fits {
                for (key, bytes) in &needs {
                    let entry = ledger.entries.entry(key.clone()).or_insert(Entry {
                        bytes: *bytes,
                        users: 0,
                        last_used: 0,
                        released: false,
                        stuck: false,
                    });
                    entry.users += 1;
                }
                let held = ledger.held();
                ledger.usage.peak = ledger.usage.peak.max(held);
                ledger.usage.waited += usize::from(waited);
                ledger.usage.evicted += evicted.len();
                drop(ledger);
                self.unload(&evicted);
                return Ok(Admission {
                    cache: self,
                    keys: needs.iter().map(|(k, _)| k.clone()).collect(),
                    evicted,
                });
            }
            let limit = ledger.limit.unwrap_or(u64::MAX);
            let needs_total: u64 = needs.iter().map(|(_, b)| *b).sum();
            if needs_total > limit {
                return Err(NoRoom::TooLarge { needs: needs_total, limit });
            }
            let running = ledger.entries.values().any(|e| e.users > 0 && !e.stuck);
            if running {
                // A running trial's end may free what this one needs.
                if Instant::now() >= deadline {
                    ledger.usage.waited += usize::from(waited);
                    return Err(NoRoom::Deadline { needs: missing, limit });
                }
                waited = true;
                let wait = deadline.saturating_duration_since(Instant::now());
                ledger = self.freed.wait_timeout(ledger, wait).unwrap_or_else(|p| p.into_inner()).0;
                continue;
            }
            // Nothing running: unload the least recently used idle session this trial does not need.
            let idle = ledger
                .entries
                .iter()
                .filter(|(k, e)| e.users == 0 && !e.stuck && !needs.iter().any(|(n, _)| n == *k))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match idle {
                Some(key) => {
                    ledger.entries.remove(&key);
                    evicted.push(key);
                }
                None => {
                    let stuck =
                        ledger.entries.iter().filter(|(_, e)| e.stuck).map(|(k, _)| k.to_string()).collect();
                    return Err(NoRoom::HeldByHungTrials { needs: missing, limit, stuck });
                }
            }
        }
    }

    /// Admits a trial that loads no session but reads files holding up to `bytes` while it runs
    /// (`what` names it): within the budget as a session is, and gone from the ledger when the
    /// admission ends.
    pub(crate) fn admit_reading(
        &self,
        what: &str,
        bytes: u64,
        deadline: Instant,
    ) -> Result<Admission<'_>, NoRoom> {
        let key = SessionKey {
            model: what.to_string(),
            format: crate::matrix::Format::Safetensors,
            backend: crate::matrix::Backend::Cpu,
            engine: "reading".to_string(),
        };
        {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(key.clone()).or_insert_with(Slot::new);
            slot.bytes.store(bytes, Ordering::SeqCst);
        }
        let admitted = self.admit(std::slice::from_ref(&key), deadline);
        // Its slot served only to carry the bytes: the ledger entry goes when the admission ends.
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = ledger.entries.get_mut(&key) {
            entry.released = true;
        }
        drop(ledger);
        admitted
    }

    /// Drops the loaded sessions of `keys` (kept in the cache as not loaded, with their trial
    /// counts), so the memory they hold is freed once no trial holds them.
    fn unload(&self, keys: &[SessionKey]) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some(slot) = slots.get(key) {
                *slot.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
    }

    /// Declares that `trials` trials will use `key`, so it is released after the last of them,
    /// and that it holds an estimated `bytes` once loaded.
    pub(crate) fn expect_uses(&self, key: &SessionKey, trials: usize, bytes: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(key.clone()).or_insert_with(Slot::new);
        slot.remaining.fetch_add(trials, Ordering::SeqCst);
        slot.bytes.fetch_max(bytes, Ordering::SeqCst);
    }

    /// The session for `key`, loading it with `load` if no trial has yet. Concurrent callers wait
    /// for one load. With `keep_failure`, a failed load is remembered and returned to later
    /// callers instead of loading again. The second value is true when this call loaded.
    pub(crate) fn get_or_load(
        &self,
        key: &SessionKey,
        keep_failure: bool,
        load: impl FnOnce() -> Result<Box<dyn Session>, EngineError>,
    ) -> (Result<SharedSession, EngineError>, bool) {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(key.clone()).or_insert_with(Slot::new).clone()
        };
        let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = state.as_ref() {
            return (done.clone(), false);
        }
        // Sessions dropped before this load leave free heap memory: the system gets it back
        // before this one allocates.
        super::give_back_freed_memory();
        let loaded = load().map(|s| Arc::new(Mutex::new(s)));
        if loaded.is_ok() || keep_failure {
            *state = Some(loaded.clone());
        }
        (loaded, true)
    }

    /// Gives up on `key`: a trial hung inside it past its deadline and still holds it.
    pub(crate) fn abandon(&self, key: &SessionKey, why: String) {
        self.abandoned.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_insert(why);
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = ledger.entries.get_mut(key) {
            entry.stuck = true;
        }
        drop(ledger);
        self.freed.notify_all();
    }

    /// Why `key` was abandoned, if it was.
    pub(crate) fn abandoned(&self, key: &SessionKey) -> Option<String> {
        self.abandoned.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// One trial using `key` has ended; the last one drops the session (and gets `true`).
    pub(crate) fn release(&self, key: &SessionKey) -> bool {
        let last = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get(key) {
                Some(slot) if slot.remaining.fetch_sub(1, Ordering::SeqCst) <= 1 => {
                    slots.remove(key);
                    true
                }
                _ => false,
            }
        };
        if last {
            let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = ledger.entries.get_mut(key) {
                entry.released = true;
                if entry.users == 0 {
                    ledger.entries.remove(key);
                }
            }
            drop(ledger);
            self.freed.notify_all();
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(model: &str) -> SessionKey {
        SessionKey {
            model: model.into(),
            format: crate::matrix::Format::Safetensors,
            backend: crate::matrix::Backend::Cpu,
            engine: String::new(),
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn trials_on_many_threads_stay_within_the_budget_and_all_finish() {
        // Eight sessions of 1–3 units, a budget of 5, trials in session order as libtest hands
        // them out (each session's trials together, some compared with another session), on
        // four threads.
        let cache = Arc::new(SessionCache::with_budget(Some(5)));
        let sizes = [3u64, 1, 2, 3, 1, 2, 2, 1];
        let mut trials: Vec<Vec<SessionKey>> = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            for t in 0..12 {
                let mut uses = vec![key(&format!("m{i}"))];
                if t % 4 == 3 && i > 0 && size + sizes[i - 1] <= 5 {
                    uses.push(key(&format!("m{}", i - 1)));
                }
                trials.push(uses);
            }
        }
        for uses in &trials {
            for k in uses {
                let i: usize = k.model[1..].parse().unwrap();
                cache.expect_uses(k, 1, sizes[i]);
            }
        }
        let queue = Arc::new(Mutex::new(trials.into_iter()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (cache, queue) = (cache.clone(), queue.clone());
                std::thread::spawn(move || {
                    let mut rng = crate::stats::SplitMix::new(t as u64);
                    loop {
                        let Some(uses) = queue.lock().unwrap().next() else { break };
                        let admission = cache.admit(&uses, far()).expect("admitted");
                        std::thread::sleep(Duration::from_micros(rng.next_u64() % 400));
                        drop(admission);
                        for k in &uses {
                            cache.release(k);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a trial thread ends");
        }
        let usage = cache.memory_usage();
        assert!(usage.peak <= 5, "peak {} within the budget of 5", usage.peak);
        assert!(usage.peak >= 3, "sessions were admitted together: {usage:?}");
        assert!(cache.ledger.lock().unwrap().entries.is_empty(), "every session released at its last trial");
    }

    #[test]
    fn what_cannot_fit_is_refused_and_an_idle_session_is_unloaded_for_a_new_one() {
        let cache = SessionCache::with_budget(Some(4));
        let (a, b, big) = (key("a"), key("b"), key("big"));
        cache.expect_uses(&a, 2, 3);
        cache.expect_uses(&b, 1, 3);
        cache.expect_uses(&big, 1, 5);
        assert_eq!(
            cache.admit(std::slice::from_ref(&big), far()).err(),
            Some(NoRoom::TooLarge { needs: 5, limit: 4 })
        );
        let first = cache.admit(std::slice::from_ref(&a), far()).unwrap();
        assert!(first.evicted.is_empty());
        // While `a` is in use, `b` waits: here until its deadline.
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(cache.admit(std::slice::from_ref(&b), soon), Err(NoRoom::Deadline { .. })));
        drop(first);
        // `a` is idle, one trial of it still to come: unloaded to make room, and said so.
        let second = cache.admit(std::slice::from_ref(&b), far()).unwrap();
        assert_eq!(second.evicted, vec![a.clone()]);
        let usage = cache.memory_usage();
        assert_eq!((usage.peak, usage.evicted, usage.waited), (3, 1, 1));
    }

    #[test]
    fn a_session_a_hung_trial_holds_is_not_waited_for() {
        let cache = SessionCache::with_budget(Some(4));
        let (a, b) = (key("a"), key("b"));
        cache.expect_uses(&a, 1, 3);
        cache.expect_uses(&b, 1, 3);
        let hung = cache.admit(std::slice::from_ref(&a), far()).unwrap();
        cache.abandon(&a, "hung".into());
        let refused = cache.admit(std::slice::from_ref(&b), far()).err().expect("refused at once");
        assert!(matches!(refused, NoRoom::HeldByHungTrials { .. }), "{refused:?}");
        assert!(refused.to_string().contains("a as safetensors on cpu"), "{refused}");
        drop(hung);
    }
}
