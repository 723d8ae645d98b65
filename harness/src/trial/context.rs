//! What every trial of one harness process shares.

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
}

impl RunContext {
    pub(crate) fn new(config: Config, journal: Journal, engine: Box<dyn Engine>) -> Self {
        Self {
            config,
            journal,
            sessions: SessionCache::default(),
            engine,
            host: Host::current(),
            policy: PolicyState::default(),
            servers: ServerPool::default(),
        }
    }
}
