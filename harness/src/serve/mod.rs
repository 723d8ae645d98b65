//! An OpenAI-compatible HTTP server over one loaded session: `GET /health`, `GET /v1/models`,
//! `POST /v1/completions`, `POST /v1/chat/completions`, with server-sent-event streaming ending
//! in `data: [DONE]`. It binds 127.0.0.1 unless told otherwise (and says so on stderr when told).
//! Everything that can refuse a request without the model (timeouts, size, the key, the JSON,
//! unsupported fields, a prompt too long for the context) does so before the session is waited
//! for; concurrent requests queue on the session.

mod config;
mod http;
mod logprobs;
mod request;
mod respond;
mod stop;

pub use self::config::{ApiKey, EmptyApiKey, ServerConfig};
pub use self::http::Server;
pub(crate) use self::request::{Rules, Shape, parse, refuse_long_tokens};
pub(crate) use self::stop::StopScanner;
