//! How a server is set up: where it binds, what it accepts, how long it waits for a client, and
//! the key it may ask for. Owns no sockets and no wording a person reads.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Default `127.0.0.1:0`: loopback, an ephemeral port.
    pub bind: SocketAddr,
    /// The id `/v1/models` lists and responses carry.
    pub model: String,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: u32,
    /// Longest one request may take, from when it is received: waiting for its turn and
    /// generating.
    pub request_timeout: Duration,
    /// Most requests generated at once, as one continuous batch (the model's weights read once
    /// per step for all of them); the others wait their turn in the order received. 1 answers
    /// one request at a time. Default 32.
    pub max_batch: usize,
    /// Longest a connection may take to send a request's headers, counted from when the server
    /// starts waiting for them: a client that trickles its headers (slowloris) or a keep-alive
    /// connection that sits idle is closed once it passes. Default 10 s.
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body once its headers are in; past it the
    /// request gets a 408. Default 30 s.
    pub body_timeout: Duration,
    /// Most connections open at once; one more is answered 503 and closed without being read.
    /// Default 512.
    pub max_connections: usize,
    /// When set, every endpoint but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<ApiKey>,
}

impl ServerConfig {
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            model: model.into(),
            max_body_bytes: 1 << 20,
            max_tokens_limit: 4096,
            request_timeout: Duration::from_secs(120),
            max_batch: 32,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
            api_key: None,
        }
    }
}

/// Whether binding `addr` serves beyond this machine: anything but a loopback address (the
/// unspecified `0.0.0.0`/`::` is every interface).
pub(crate) fn exposed(addr: &SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

/// The bearer key a server asks for. Only its SHA-256 is kept, so comparing a presented key costs
/// the same whatever its length or how much of it matches, and `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the API key is empty: an empty key would let any client in")]
pub struct EmptyApiKey;

impl ApiKey {
    pub fn new(key: &str) -> Result<Self, EmptyApiKey> {
        if key.trim().is_empty() {
            return Err(EmptyApiKey);
        }
        Ok(ApiKey { digest: Sha256::digest(key.as_bytes()).into() })
    }

    /// Whether `presented` is the key, in time that does not depend on where they differ.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_binds_are_private() {
        for (addr, want) in [
            ("127.0.0.1:8080", false),
            ("127.0.0.2:0", false),
            ("[::1]:8080", false),
            ("[::ffff:127.0.0.1]:8080", false),
            ("0.0.0.0:8080", true),
            ("[::]:8080", true),
            ("192.168.1.4:8080", true),
            ("[::ffff:10.0.0.1]:80", true),
        ] {
            let addr: SocketAddr = addr.parse().expect("an address");
            assert_eq!(exposed(&addr), want, "{addr}");
        }
    }

    #[test]
    fn a_key_matches_itself_only_and_never_shows() {
        let key = ApiKey::new("sk-local-123").expect("a key");
        assert!(key.matches("sk-local-123"));
        for wrong in ["", "sk-local-12", "sk-local-1234", "SK-LOCAL-123", " sk-local-123"] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
        assert!(!format!("{key:?}").contains("123"));
        assert_eq!(ApiKey::new("").err(), Some(EmptyApiKey));
        assert_eq!(ApiKey::new("  \n").err(), Some(EmptyApiKey));
    }
}
