//! The process-wide session cache: each `(model, format, backend)` is loaded once, shared by the
//! trials that need it, and dropped when the last of them ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct SessionCache {
    slots: Mutex<HashMap<SessionKey, Arc<Slot>>>,
    /// Sessions a trial hung in, with why: their later trials fail at once instead of waiting.
    abandoned: Mutex<HashMap<SessionKey, String>>,
}

impl SessionCache {
    /// Declares that `trials` trials will use `key`, so it is released after the last of them.
    pub(crate) fn expect_uses(&self, key: &SessionKey, trials: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Slot { state: Mutex::new(None), remaining: AtomicUsize::new(0) }));
        slot.remaining.fetch_add(trials, Ordering::SeqCst);
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
            slots
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Slot { state: Mutex::new(None), remaining: AtomicUsize::new(0) }))
                .clone()
        };
        let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = state.as_ref() {
            return (done.clone(), false);
        }
        let loaded = load().map(|s| Arc::new(Mutex::new(s)));
        if loaded.is_ok() || keep_failure {
            *state = Some(loaded.clone());
        }
        (loaded, true)
    }

    /// Gives up on `key`: a trial hung inside it past its deadline and still holds it.
    pub(crate) fn abandon(&self, key: &SessionKey, why: String) {
        self.abandoned.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_insert(why);
    }

    /// Why `key` was abandoned, if it was.
    pub(crate) fn abandoned(&self, key: &SessionKey) -> Option<String> {
        self.abandoned.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// One trial using `key` has ended; the last one drops the session (and gets `true`).
    pub(crate) fn release(&self, key: &SessionKey) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(key) {
            let before = slot.remaining.fetch_sub(1, Ordering::SeqCst);
            if before <= 1 {
                slots.remove(key);
                return true;
            }
        }
        false
    }
}
