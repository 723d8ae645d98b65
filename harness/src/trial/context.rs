//! What every trial of one harness process shares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::engine::{Engine, SessionCache};
use crate::journal::{Host, Journal};

use super::{PolicyState, ServerPool};

/// The engine, the loaded sessions, the journal and the failure policy's memory: built once by
/// `qualify_main`, shared by every trial closure.
pub(crate) struct RunContext {
    pub(crate) config: Config,
    pub(crate) journal: Journal,
    pub(crate) sessions: SessionCache,
    pub(crate) engine: Box<dyn Engine>,
    pub(crate) host: Host,
    pub(crate) policy: PolicyState,
    /// One server per session that `serve` trials use, stopped with the session.
    pub(crate) servers: ServerPool,
    /// Each cell's scenario answers generated as one batch (`QUALIFY_CELL_BATCH`).
    pub(crate) cells: super::CellBatches,
    /// SHA-256 of each playbook file, read once.
    playbook_hashes: Mutex<HashMap<PathBuf, String>>,
}

impl RunContext {
    pub(crate) fn new(config: Config, journal: Journal, engine: Box<dyn Engine>) -> Self {
        Self {
            cells: super::CellBatches::new(config.cell_batch.get()),
            sessions: SessionCache::with_budget(config.memory_budget.bytes),
            config,
            journal,
            engine,
            host: Host::current(),
            policy: PolicyState::default(),
            servers: ServerPool::default(),
            playbook_hashes: Mutex::new(HashMap::new()),
        }
    }

    /// The SHA-256 of a playbook file as it is now (empty when it cannot be read).
    pub(crate) fn playbook_sha256(&self, path: &Path) -> String {
        let mut hashes = self.playbook_hashes.lock().unwrap_or_else(|p| p.into_inner());
        hashes
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                std::fs::read(path).map(|b| hex::encode(Sha256::digest(b))).unwrap_or_default()
            })
            .clone()
    }
}
