//! The client side of `serve` trials: OpenAI-style requests over real HTTP, whole or streamed,
//! with the response's framing checked (valid JSON, SSE events ending in `data: [DONE]`, pieces
//! that add up) and its timings measured. Talks to any OpenAI-compatible base URL.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::engine::Sampling;
use crate::playbook::MessageSpec;
use crate::playbook::spec::Role;

/// What one request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Request sent to response complete.
    pub latency: Duration,
    /// Request sent to the first piece of text (streamed requests).
    pub first_text: Option<Duration>,
    /// `stop`, `length`, … as the server said.
    pub finish_reason: Option<String>,
}

/// Which endpoint a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::ChatCompletions => "/v1/chat/completions",
        }
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The request body for a prompt (completions) or a conversation (chat completions).
pub fn request_body(
    endpoint: Endpoint,
    prompt: &str,
    messages: &[MessageSpec],
    max_tokens: u32,
    sampling: &Sampling,
    stream: bool,
) -> Value {
    let mut body = match endpoint {
        Endpoint::Completions => json!({"prompt": prompt}),
        Endpoint::ChatCompletions => json!({
            "messages": messages.iter().map(|m| json!({"role": role(m.role), "content": m.content})).collect::<Vec<_>>()
        }),
    };
    body["max_tokens"] = json!(max_tokens);
    body["stream"] = json!(stream);
    if stream {
        // Usage in the last chunk; OpenAI and vLLM send none without it.
        body["stream_options"] = json!({"include_usage": true});
    }
    match sampling {
        Sampling::Greedy => body["temperature"] = json!(0),
        Sampling::Seeded { temperature, top_p, seed, .. } => {
            body["temperature"] = json!(temperature);
            body["seed"] = json!(seed);
            if let Some(p) = top_p {
                body["top_p"] = json!(p);
            }
        }
    }
    body
}

/// Whether a transport error is the peer closing the connection under us.
fn closed(t: &ureq::Transport) -> bool {
    use std::error::Error as _;
    t.source().and_then(|e| e.downcast_ref::<std::io::Error>()).is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
        )
    })
}

fn text_of(endpoint: Endpoint, choice: &Value, chunk: bool) -> Option<String> {
    let v = match (endpoint, chunk) {
        (Endpoint::Completions, _) => &choice["text"],
        (Endpoint::ChatCompletions, false) => &choice["message"]["content"],
        (Endpoint::ChatCompletions, true) => &choice["delta"]["content"],
    };
    v.as_str().map(str::to_string)
}

/// Why a request got no usable reply: no response came, or the response breaks the framing.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the trial's timeout passed before the request")]
    NoTimeLeft,
    /// The server closed the connection without answering.
    #[error("{method} {url}: the server closed the connection")]
    Closed { method: String, url: String },
    /// No response came: refused, reset, timed out.
    #[error("{method} {url} failed: {source}")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    /// As [`ClientError::Transport`], for an answer request ([`Client::request`]).
    #[error("request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    /// An answer request got a 4xx or 5xx.
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("failed to read the response: {0}")]
    Read(#[source] std::io::Error),
    #[error("the response's Content-Type is {content_type:?}, not {expected}")]
    ContentType { content_type: String, expected: &'static str },
    #[error("the response is not JSON ({source}): {body}")]
    NotJson {
        body: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the response has no answer text: {body}")]
    NoAnswer { body: String },
    #[error("failed to read the event stream: {0}")]
    ReadStream(#[source] std::io::Error),
    #[error("an event after `data: [DONE]`: {line:?}")]
    EventAfterDone { line: String },
    #[error("not an SSE line (data, event, id, retry or a comment): {line:?}")]
    NotSse { line: String },
    #[error("an event is not JSON ({source}): {data}")]
    EventNotJson {
        data: String,
        #[source]
        source: serde_json::Error,
    },
    /// The stream carried an OpenAI error object.
    #[error("the stream reported an error: {error}")]
    StreamError { error: Value },
    #[error("the event stream ended inside an event (no blank line after it): {data:?}")]
    UnterminatedEvent { data: String },
    #[error("the event stream ended without `data: [DONE]`")]
    NoDone,
}

/// A response read whole, whatever its status.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    pub latency: Duration,
}

/// An OpenAI-compatible endpoint: its base URL, the bearer key it wants (if any) and the model
/// name requests carry (servers such as vLLM require one).
#[derive(Debug, Clone)]
pub struct Client {
    base_url: String,
    api_key: Option<String>,
    model: Option<String>,
}

impl Client {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into().trim_end_matches('/').to_string(), api_key: None, model: None }
    }

    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    pub fn with_model(mut self, model: Option<String>) -> Self {
        self.model = model;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn http(&self, method: &str, path: &str, timeout: Duration) -> ureq::Request {
        let mut r = ureq::request(method, &format!("{}{path}", self.base_url)).timeout(timeout);
        if let Some(key) = &self.api_key {
            r = r.set("Authorization", &format!("Bearer {key}"));
        }
        r
    }

    /// Sends `body` (GET when `None`) and reads the whole response, a 4xx or 5xx included;
    /// `Err` only when no response came (refused, reset, timed out).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<RawResponse, ClientError> {
        self.raw_or_closed(method, path, content_type, body, timeout)?.ok_or_else(|| ClientError::Closed {
            method: method.to_string(),
            url: format!("{}{path}", self.base_url),
        })
    }

    /// As [`Client::raw`], with `Ok(None)` when the server closed the connection before the
    /// request was sent in full (how servers refuse an oversized body without reading it).
    pub fn raw_or_closed(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Option<RawResponse>, ClientError> {
        let started = Instant::now();
        let request = self.http(method, path, timeout);
        let result = match body {
            Some(b) => request.set("Content-Type", content_type).send_bytes(b),
            None => request.call(),
        };
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) if closed(&t) => return Ok(None),
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Transport {
                    method: method.to_string(),
                    url: format!("{}{path}", self.base_url),
                    source: Box::new(t),
                });
            }
        };
        let status = response.status();
        let content_type = response.header("Content-Type").unwrap_or_default().to_string();
        let body = response.into_string().map_err(ClientError::Read)?;
        Ok(Some(RawResponse { status, content_type, body, latency: started.elapsed() }))
    }

    /// Sends one request and reads the whole answer, checking its framing: a JSON object
    /// (`application/json`), or server-sent events (`text/event-stream`) of JSON chunks ending
    /// in `data: [DONE]`.
    pub fn request(&self, endpoint: Endpoint, body: &Value, deadline: Instant) -> Result<Reply, ClientError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(ClientError::NoTimeLeft);
        }
        let mut body = body.clone();
        if let Some(model) = &self.model
            && body.get("model").is_none()
        {
            body["model"] = json!(model);
        }
        let stream = body["stream"].as_bool().unwrap_or(false);
        let url = format!("{}{}", self.base_url, endpoint.path());
        let started = Instant::now();
        let response = self
            .http("POST", endpoint.path(), timeout)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .map_err(|e| match e {
                ureq::Error::Status(status, r) => {
                    ClientError::Status { url, status, body: r.into_string().unwrap_or_default() }
                }
                ureq::Error::Transport(t) => ClientError::Request { url, source: Box::new(t) },
            })?;
        let content_type = response.header("Content-Type").unwrap_or_default().to_string();
        let expected = if stream { "text/event-stream" } else { "application/json" };
        if !content_type.starts_with(expected) {
            return Err(ClientError::ContentType { content_type, expected });
        }
        if !stream {
            let text = response.into_string().map_err(ClientError::Read)?;
            let v: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(source) => return Err(ClientError::NotJson { body: text, source }),
            };
            let Some(answer) = text_of(endpoint, &v["choices"][0], false) else {
                return Err(ClientError::NoAnswer { body: text });
            };
            return Ok(Reply {
                text: answer,
                prompt_tokens: v["usage"]["prompt_tokens"].as_u64(),
                completion_tokens: v["usage"]["completion_tokens"].as_u64(),
                latency: started.elapsed(),
                first_text: None,
                finish_reason: v["choices"][0]["finish_reason"].as_str().map(str::to_string),
            });
        }
        let mut reader = BufReader::new(response.into_reader());
        let mut text = String::new();
        let mut first_text = None;
        let mut usage = Value::Null;
        let mut finish_reason = None;
        let mut done = false;
        let mut line = String::new();
        // The data lines of the event being read: an event ends at a blank line (strict
        // framing, as the SSE specification says; two `data:` lines with no blank line between
        // are one event whose data is both lines).
        let mut event: Vec<String> = Vec::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(ClientError::ReadStream)?;
            if n == 0 {
                break;
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if event.is_empty() {
                    continue;
                }
                let data = event.join("\n");
                event.clear();
                if done {
                    return Err(ClientError::EventAfterDone { line: data });
                }
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(&data)
                    .map_err(|source| ClientError::EventNotJson { data: data.clone(), source })?;
                if let Some(error) = v.get("error") {
                    return Err(ClientError::StreamError { error: error.clone() });
                }
                if let Some(piece) = text_of(endpoint, &v["choices"][0], true).filter(|p| !p.is_empty()) {
                    first_text.get_or_insert_with(|| started.elapsed());
                    text.push_str(&piece);
                }
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish_reason = Some(f.to_string());
                }
                if v.get("usage").is_some_and(|u| !u.is_null()) {
                    usage = v["usage"].clone();
                }
                continue;
            }
            // Comment lines (`: keep-alive`) and the `event`, `id` and `retry` fields are valid
            // SSE that carry no answer text.
            if l.starts_with(':') || ["event:", "id:", "retry:"].iter().any(|f| l.starts_with(f)) {
                continue;
            }
            let data = l
                .strip_prefix("data:")
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .ok_or_else(|| ClientError::NotSse { line: l.to_string() })?;
            event.push(data.to_string());
        }
        if !event.is_empty() {
            return Err(ClientError::UnterminatedEvent { data: event.join("\n") });
        }
        if !done {
            return Err(ClientError::NoDone);
        }
        Ok(Reply {
            text,
            prompt_tokens: usage["prompt_tokens"].as_u64(),
            completion_tokens: usage["completion_tokens"].as_u64(),
            latency: started.elapsed(),
            first_text,
            finish_reason,
        })
    }
}
