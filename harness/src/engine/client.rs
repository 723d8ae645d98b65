//! The client side of `serve` trials: OpenAI-style requests over real HTTP, whole or streamed,
//! with the response's framing checked (valid JSON, SSE events ending in `data: [DONE]`, pieces
//! that add up) and its timings measured. Talks to any OpenAI-compatible base URL.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::engine::{Sampling, ScoredStep, TokenLogprob};
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
    /// The answer's tokens with their log probabilities and alternatives, where the request
    /// asked for them ([`ask_logprobs`]) and a whole answer carried them in either endpoint's
    /// shape.
    pub logprobs: Option<Vec<ScoredStep>>,
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

/// Asks a whole answer's `body` for each token's log probability and its `top` alternatives,
/// as the endpoint spells it (chat: `logprobs: true`, `top_logprobs`; completions: `logprobs`).
pub fn ask_logprobs(endpoint: Endpoint, body: &mut Value, top: usize) {
    match endpoint {
        Endpoint::Completions => body["logprobs"] = json!(top),
        Endpoint::ChatCompletions => {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(top);
        }
    }
}

/// A choice's `logprobs` in either endpoint's shape, or `None` where it has none or it does not
/// parse. Tokens read back are not known to end generation (`ends` is false).
fn logprobs_of(v: &Value) -> Option<Vec<ScoredStep>> {
    let token = |text: &Value, logprob: &Value| {
        Some(TokenLogprob {
            token: text.as_str()?.to_string(),
            logprob: logprob.as_f64()? as f32,
            ends: false,
        })
    };
    if let Some(content) = v.get("content") {
        // Chat: one object per token, its alternatives as objects.
        return content
            .as_array()?
            .iter()
            .map(|t| {
                let top = t["top_logprobs"]
                    .as_array()
                    .map(|a| a.iter().map(|o| token(&o["token"], &o["logprob"])).collect::<Option<Vec<_>>>())
                    .unwrap_or(Some(Vec::new()))?;
                Some(ScoredStep { chosen: token(&t["token"], &t["logprob"])?, top })
            })
            .collect();
    }
    // Completions: parallel lists, alternatives as a token → logprob object.
    let tokens = v.get("tokens")?.as_array()?;
    let logprobs = v.get("token_logprobs")?.as_array()?;
    if tokens.len() != logprobs.len() {
        return None;
    }
    tokens
        .iter()
        .zip(logprobs)
        .enumerate()
        .map(|(i, (t, l))| {
            let mut top: Vec<TokenLogprob> = match &v["top_logprobs"][i] {
                Value::Object(m) => m.iter().map(|(k, l)| token(&json!(k), l)).collect::<Option<_>>()?,
                _ => Vec::new(),
            };
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
            Some(ScoredStep { chosen: token(t, l)?, top })
        })
        .collect()
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

/// The largest response body read (a whole JSON answer, or a whole event stream): an answer is
/// a few thousand tokens, and an endless stream once reached 823 MB in 6 s.
pub(crate) const MAX_BODY_BYTES: u64 = 16 << 20;
/// The longest line of an event stream.
pub(crate) const MAX_LINE_BYTES: u64 = 1 << 20;
/// How much of a body or line an error message quotes.
const QUOTED_CHARS: usize = 2_000;

/// `text` as an error quotes it: whole when short, else its head and its length.
fn clip(text: impl Into<String>) -> String {
    let text = text.into();
    if text.len() <= QUOTED_CHARS {
        return text;
    }
    let head: String = text.chars().take(QUOTED_CHARS).collect();
    format!("{head}… ({} bytes in all)", text.len())
}

/// Reads a whole body of at most [`MAX_BODY_BYTES`].
fn read_body(response: ureq::Response) -> Result<String, ClientError> {
    let mut bytes = Vec::new();
    response.into_reader().take(MAX_BODY_BYTES + 1).read_to_end(&mut bytes).map_err(ClientError::Read)?;
    if bytes.len() as u64 > MAX_BODY_BYTES {
        return Err(ClientError::TooLong { what: "the response body", limit: MAX_BODY_BYTES });
    }
    String::from_utf8(bytes)
        .map_err(|e| ClientError::Read(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
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
    #[error("{what} is over {limit} bytes")]
    TooLong { what: &'static str, limit: u64 },
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
        let body = read_body(response)?;
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
                    ClientError::Status { url, status, body: clip(read_body(r).unwrap_or_default()) }
                }
                ureq::Error::Transport(t) => ClientError::Request { url, source: Box::new(t) },
            })?;
        let content_type = response.header("Content-Type").unwrap_or_default().to_string();
        let expected = if stream { "text/event-stream" } else { "application/json" };
        if !content_type.starts_with(expected) {
            return Err(ClientError::ContentType { content_type, expected });
        }
        if !stream {
            let text = read_body(response)?;
            let v: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(source) => return Err(ClientError::NotJson { body: clip(text), source }),
            };
            let Some(answer) = text_of(endpoint, &v["choices"][0], false) else {
                return Err(ClientError::NoAnswer { body: clip(text) });
            };
            return Ok(Reply {
                text: answer,
                prompt_tokens: v["usage"]["prompt_tokens"].as_u64(),
                completion_tokens: v["usage"]["completion_tokens"].as_u64(),
                latency: started.elapsed(),
                first_text: None,
                finish_reason: v["choices"][0]["finish_reason"].as_str().map(str::to_string),
                logprobs: logprobs_of(&v["choices"][0]["logprobs"]),
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
        let mut read = 0u64;
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE_BYTES + 1)
                .read_line(&mut line)
                .map_err(ClientError::ReadStream)?;
            if n == 0 {
                break;
            }
            if n as u64 > MAX_LINE_BYTES {
                return Err(ClientError::TooLong {
                    what: "a line of the event stream",
                    limit: MAX_LINE_BYTES,
                });
            }
            read += n as u64;
            if read > MAX_BODY_BYTES {
                return Err(ClientError::TooLong { what: "the event stream", limit: MAX_BODY_BYTES });
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if event.is_empty() {
                    continue;
                }
                let data = event.join("\n");
                event.clear();
                if done {
                    return Err(ClientError::EventAfterDone { line: clip(data) });
                }
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(&data)
                    .map_err(|source| ClientError::EventNotJson { data: clip(data.as_str()), source })?;
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
                .ok_or_else(|| ClientError::NotSse { line: clip(l) })?;
            event.push(data.to_string());
        }
        if !event.is_empty() {
            return Err(ClientError::UnterminatedEvent { data: clip(event.join("\n")) });
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
            logprobs: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use super::*;

    /// A server that reads one request's head, then writes `head` and `chunk` over and over
    /// until the client hangs up (or `total` bytes went).
    fn hostile(head: &'static str, chunk: &'static [u8], total: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut stream = stream;
            let _ = stream.write_all(head.as_bytes());
            let mut sent = 0;
            while sent < total && stream.write_all(chunk).is_ok() {
                sent += chunk.len();
            }
            // Closing with the request body unread would reset the connection under the
            // client's last read: end the answer, then drain until the client hangs up.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        url
    }

    fn ask(url: &str, stream: bool) -> (Result<Reply, ClientError>, Duration) {
        let started = Instant::now();
        let body = json!({"prompt": "hi", "max_tokens": 4, "stream": stream});
        let reply =
            Client::new(url).request(Endpoint::Completions, &body, Instant::now() + Duration::from_secs(60));
        (reply, started.elapsed())
    }

    const SSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";

    #[test]
    fn an_endless_event_stream_line_is_refused_at_the_line_cap() {
        let (reply, took) = ask(&hostile(SSE, &[b'x'; 4096], usize::MAX), true);
        let e = reply.expect_err("an endless line is refused");
        assert_eq!(e.to_string(), "a line of the event stream is over 1048576 bytes");
        assert!(took < Duration::from_secs(20), "{took:?}");
    }

    #[test]
    fn an_endless_stream_of_events_is_refused_at_the_body_cap() {
        let event = b"data: {\"choices\":[{\"text\":\"x\"}]}\n\n";
        let (reply, took) = ask(&hostile(SSE, event, usize::MAX), true);
        assert_eq!(reply.expect_err("refused").to_string(), "the event stream is over 16777216 bytes");
        assert!(took < Duration::from_secs(30), "{took:?}");
    }

    #[test]
    fn a_json_body_past_the_cap_is_refused_and_a_bad_one_is_quoted_short() {
        const JSON: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n";
        let (reply, _) = ask(&hostile(JSON, &[b' '; 4096], 20 << 20), false);
        assert_eq!(reply.expect_err("refused").to_string(), "the response body is over 16777216 bytes");
        // Under the cap but not JSON: the error quotes the head, not 8 MB.
        let (reply, _) = ask(&hostile(JSON, &[b'x'; 4096], 8 << 20), false);
        let e = reply.expect_err("not JSON").to_string();
        assert!(e.len() < 3_000 && e.contains("bytes in all"), "{}", &e[..e.len().min(300)]);
    }

    #[test]
    fn a_clean_stream_is_read_whole() {
        let events: &'static [u8] =
            b"data: {\"choices\":[{\"text\":\"4\",\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let (reply, _) = ask(&hostile(SSE, events, 1), true);
        let reply = reply.expect("a clean stream is read");
        assert_eq!((reply.text.as_str(), reply.finish_reason.as_deref()), ("4", Some("stop")));
    }
}
