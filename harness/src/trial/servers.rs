//! The OpenAI-compatible endpoint of a session: the external server itself for an `openai`
//! engine, otherwise this project's server over the session, started on first use on an
//! ephemeral loopback port and stopped with the session's last trial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::SessionKey;
use crate::engine::client::Client;
use crate::playbook::spec::EngineSpec;
use crate::serve::{Server, ServerConfig};

use super::{Finding, TrialEnv};
use crate::vocab::{Decider, Outcome};

/// One server per session that `serve` trials use.
#[derive(Default)]
pub(crate) struct ServerPool {
    servers: Mutex<HashMap<SessionKey, Arc<Server>>>,
}

impl ServerPool {
    /// The client a `serve` trial talks to.
    pub(crate) fn client_for(&self, env: &TrialEnv<'_>) -> std::io::Result<Client> {
        let spec = env.spec;
        match &spec.engine {
            EngineSpec::Openai { base_url, api_key_env, model } => Ok(Client::new(base_url.as_str())
                .with_api_key(api_key_env.as_ref().and_then(|v| std::env::var(v).ok()))
                .with_model(Some(model.clone().unwrap_or_else(|| spec.model.id.clone())))),
            EngineSpec::Embedded | EngineSpec::Command { .. } => {
                Ok(Client::new(self.server_for(env)?.base_url()))
            }
        }
    }

    fn server_for(&self, env: &TrialEnv<'_>) -> std::io::Result<Arc<Server>> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = servers.get(env.key) {
            return Ok(Arc::clone(s));
        }
        let config = ServerConfig {
            request_timeout: env.spec.tier.timeout,
            ..ServerConfig::new(env.spec.model.id.clone())
        };
        let server = Arc::new(Server::start(Arc::clone(env.session), config)?);
        servers.insert(env.key.clone(), Arc::clone(&server));
        Ok(server)
    }

    /// The finding of a `serve` trial whose server could not start.
    pub(crate) fn unavailable(e: &std::io::Error) -> Finding {
        Finding::new(Outcome::Falsified, Decider::Serve, format!("failed to start the server: {e}"))
    }

    /// Stops the session's server (if any) as its last handle drops.
    pub(crate) fn stop(&self, key: &SessionKey) {
        self.servers.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}
