//! Server-level gates: checks of an OpenAI-compatible server as a server, one trial each per
//! `(model, format, backend)` whose tier has the `serve` modality. They talk to any base URL, so
//! the same checks qualify this project's server and an external one (`engine: openai`).
//!
//! They score in STAB; they are not gateways (a slow health check does not zero the MQS).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::checks::Verdict;
use crate::engine::Sampling;
use crate::engine::client::{Client, ClientError, Endpoint, RawResponse, request_body};
use crate::playbook::Input;
use crate::playbook::MessageSpec;
use crate::trial::{Finding, ServerPool, TrialEnv, messages_of, render_run};
use crate::vocab::Decider;
use crate::vocab::ServerCheck;

/// `GET /health` must answer within this.
pub(crate) const HEALTH_LIMIT: Duration = Duration::from_millis(1000);
/// How many requests `serve-concurrent` sends at once.
pub(crate) const CONCURRENT_CLIENTS: usize = 8;
/// The body `serve-bad-requests` sends as oversized: larger than any sane prompt limit.
const OVERSIZED_BYTES: usize = 8 << 20;
/// A body at least this large may be refused by closing the connection before it is read, as
/// servers with a body limit do (this project's is 1 MiB by default).
const MAY_CLOSE_BYTES: usize = 1 << 20;

/// What the checks send: the first scenario as a prompt and as a conversation.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub prompt: String,
    pub messages: Vec<MessageSpec>,
    pub max_tokens: u32,
    /// Whether the chat endpoint is exercised too (the model has a chat template, or the
    /// server applies its own).
    pub chat: bool,
    /// The model's context in tokens, where the session shows it.
    pub context: Option<usize>,
    /// A prompt whose tokens just pass the context (as the session encodes it), where the
    /// session shows its tokens.
    pub past_context: Option<String>,
}

impl Probe {
    fn endpoints(&self) -> Vec<Endpoint> {
        let mut e = vec![Endpoint::Completions];
        if self.chat {
            e.push(Endpoint::ChatCompletions);
        }
        e
    }

    fn body(&self, endpoint: Endpoint, stream: bool) -> Value {
        request_body(endpoint, &self.prompt, &self.messages, self.max_tokens, &Sampling::Greedy, stream)
    }
}

/// Why a server failed a check: what it answered that breaks the check, or a request that got
/// no usable answer. Response bodies are kept as excerpts.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerCheckError {
    /// A request got no usable reply.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// As [`ServerCheckError::Client`], in a named step of the check.
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: ClientError,
    },
    #[error("{what} answered {status}: {body}")]
    Status { what: String, status: u16, body: String },
    #[error("GET /health took {:.0} ms (limit {} ms)", .took.as_secs_f64() * 1e3, HEALTH_LIMIT.as_millis())]
    SlowHealth { took: Duration },
    #[error("GET /v1/models lists {ids:?}, not {model:?}")]
    ModelNotListed { ids: Vec<String>, model: String },
    #[error("{what}: Content-Type is {content_type:?}, not application/json")]
    ContentType { what: String, content_type: String },
    #[error("{what}: not JSON ({source}): {body}")]
    NotJson {
        what: String,
        body: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: not a JSON object: {body}")]
    NotObject { what: String, body: String },
    /// A whole response that is not of the OpenAI shape: every problem found.
    #[error("{what}: {}", .problems.join("; "))]
    Shape { what: String, problems: Vec<String> },
    #[error("POST {path}: the streamed pieces add up to {streamed:?}, the whole response says {whole:?}")]
    StreamDiffers { path: &'static str, streamed: String, whole: String },
    #[error("POST {path} at temperature 0: request {request} answered {again:?}, request 1 {first:?}")]
    Nondeterministic { path: &'static str, request: usize, again: String, first: String },
    #[error("request {request} of {CONCURRENT_CLIENTS} at once failed: the client thread panicked")]
    ClientPanicked { request: usize },
    #[error("request {request} of {CONCURRENT_CLIENTS} at once answered {text:?}, alone {expected:?}")]
    ConcurrentDiffers { request: usize, text: String, expected: String },
    #[error("{label}: the server closed the connection without answering")]
    ClosedWithoutAnswer { label: String },
    #[error("{label} answered {status}, not {accepted:?}: {body}")]
    Accepted { label: String, status: u16, accepted: &'static [u16], body: String },
    #[error("{label}: the {status} body is not JSON ({source}): {body}")]
    ErrorNotJson {
        label: String,
        status: u16,
        body: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{label}: no OpenAI error object (`error.message`): {body}")]
    NoErrorObject { label: String, body: String },
    #[error("after the malformed requests GET /health answered {status}")]
    DownAfterBadRequests { status: u16 },
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Runs one check against the server at `client`.
pub(crate) fn check(
    check: ServerCheck,
    client: &Client,
    model: &str,
    probe: &Probe,
    deadline: Instant,
) -> Verdict {
    let result = match check {
        ServerCheck::Health => health(client, model, deadline),
        ServerCheck::Json => json_shape(client, probe, deadline),
        ServerCheck::Sse => sse(client, probe, deadline),
        ServerCheck::Deterministic => deterministic(client, probe, deadline),
        ServerCheck::Concurrent => concurrent(client, probe, deadline),
        ServerCheck::BadRequests => bad_requests(client, deadline),
        ServerCheck::Limits => limits(client, probe, deadline),
    };
    match result {
        Ok(reason) => Verdict::pass(reason),
        Err(reason) if Instant::now() >= deadline => {
            Verdict::timeout(format!("{}: the trial's timeout passed: {reason}", check.slug()))
        }
        Err(reason) => {
            let mut v = Verdict::fail(format!("{}: {reason}", check.slug()));
            v.prompt = Some(probe.prompt.clone());
            v
        }
    }
}

fn health(client: &Client, model: &str, deadline: Instant) -> Result<String, ServerCheckError> {
    let r = client.raw("GET", "/health", "", None, remaining(deadline).min(HEALTH_LIMIT * 5))?;
    if r.status != 200 {
        return Err(ServerCheckError::Status {
            what: "GET /health".into(),
            status: r.status,
            body: excerpt(&r.body),
        });
    }
    if r.latency > HEALTH_LIMIT {
        return Err(ServerCheckError::SlowHealth { took: r.latency });
    }
    let m = client.raw("GET", "/v1/models", "", None, remaining(deadline))?;
    let v = json_object(&m, "GET /v1/models")?;
    let ids: Vec<&str> =
        v["data"].as_array().map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect()).unwrap_or_default();
    if !ids.contains(&model) {
        return Err(ServerCheckError::ModelNotListed {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            model: model.to_string(),
        });
    }
    Ok(format!(
        "GET /health answered 200 in {:.1} ms; GET /v1/models lists {model}",
        r.latency.as_secs_f64() * 1e3
    ))
}

fn json_object(r: &RawResponse, what: &str) -> Result<Value, ServerCheckError> {
    if r.status != 200 {
        return Err(ServerCheckError::Status { what: what.into(), status: r.status, body: excerpt(&r.body) });
    }
    if !r.content_type.starts_with("application/json") {
        return Err(ServerCheckError::ContentType {
            what: what.into(),
            content_type: r.content_type.clone(),
        });
    }
    let v: Value = serde_json::from_str(&r.body).map_err(|source| ServerCheckError::NotJson {
        what: what.into(),
        body: excerpt(&r.body),
        source,
    })?;
    if !v.is_object() {
        return Err(ServerCheckError::NotObject { what: what.into(), body: excerpt(&r.body) });
    }
    Ok(v)
}

fn post(
    client: &Client,
    endpoint: Endpoint,
    body: &Value,
    deadline: Instant,
) -> Result<RawResponse, ClientError> {
    let mut body = body.clone();
    if let Some(m) = client.model() {
        body["model"] = json!(m);
    }
    client.raw(
        "POST",
        endpoint.path(),
        "application/json",
        Some(body.to_string().as_bytes()),
        remaining(deadline),
    )
}

fn json_shape(client: &Client, probe: &Probe, deadline: Instant) -> Result<String, ServerCheckError> {
    let mut seen = Vec::new();
    for endpoint in probe.endpoints() {
        let what = format!("POST {}", endpoint.path());
        let v = json_object(&post(client, endpoint, &probe.body(endpoint, false), deadline)?, &what)?;
        let (object, text) = match endpoint {
            Endpoint::Completions => ("text_completion", &v["choices"][0]["text"]),
            Endpoint::ChatCompletions => ("chat.completion", &v["choices"][0]["message"]["content"]),
        };
        let mut problems = Vec::new();
        if v["object"] != object {
            problems.push(format!("`object` is {}, not {object:?}", v["object"]));
        }
        if !v["id"].is_string() {
            problems.push("no string `id`".to_string());
        }
        if !text.is_string() {
            problems.push("no answer text in choices[0]".to_string());
        }
        if !v["choices"][0]["finish_reason"].is_string() {
            problems.push("no `finish_reason` in choices[0]".to_string());
        }
        let u = &v["usage"];
        match (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64(), u["total_tokens"].as_u64()) {
            (Some(p), Some(c), Some(t)) => {
                if p + c != t {
                    problems.push(format!("usage does not add up: {p} + {c} != {t}"));
                }
                if c > u64::from(probe.max_tokens) {
                    problems.push(format!("{c} completion tokens for max_tokens {}", probe.max_tokens));
                }
            }
            _ => problems.push(format!("usage lacks token counts: {u}")),
        }
        if !problems.is_empty() {
            return Err(ServerCheckError::Shape { what, problems });
        }
        seen.push(what);
    }
    Ok(format!("{}: JSON objects of the OpenAI shape, usage adding up", seen.join(" and ")))
}

fn sse(client: &Client, probe: &Probe, deadline: Instant) -> Result<String, ServerCheckError> {
    let mut events = Vec::new();
    for endpoint in probe.endpoints() {
        let whole = client.request(endpoint, &probe.body(endpoint, false), deadline)?;
        let streamed = client.request(endpoint, &probe.body(endpoint, true), deadline).map_err(|source| {
            ServerCheckError::Step { step: format!("POST {} (stream)", endpoint.path()), source }
        })?;
        if streamed.text != whole.text {
            return Err(ServerCheckError::StreamDiffers {
                path: endpoint.path(),
                streamed: streamed.text,
                whole: whole.text,
            });
        }
        events.push(endpoint.path());
    }
    Ok(format!(
        "{}: event streams well framed, ending in [DONE], adding up to the whole response",
        events.join(" and ")
    ))
}

fn deterministic(client: &Client, probe: &Probe, deadline: Instant) -> Result<String, ServerCheckError> {
    const REPEATS: usize = 3;
    for endpoint in probe.endpoints() {
        let body = probe.body(endpoint, false);
        let first = client.request(endpoint, &body, deadline)?.text;
        for i in 1..REPEATS {
            let again = client.request(endpoint, &body, deadline)?.text;
            if again != first {
                return Err(ServerCheckError::Nondeterministic {
                    path: endpoint.path(),
                    request: i + 1,
                    again,
                    first,
                });
            }
        }
    }
    Ok(format!("{REPEATS} identical answers at temperature 0 on each endpoint"))
}

fn concurrent(client: &Client, probe: &Probe, deadline: Instant) -> Result<String, ServerCheckError> {
    let body = probe.body(Endpoint::Completions, false);
    let expected = client.request(Endpoint::Completions, &body, deadline)?.text;
    let started = Instant::now();
    // `None` where the client thread panicked.
    let replies: Vec<Option<Result<String, ClientError>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONCURRENT_CLIENTS)
            .map(|_| s.spawn(|| client.request(Endpoint::Completions, &body, deadline).map(|r| r.text)))
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    let wall = started.elapsed();
    for (i, r) in replies.into_iter().enumerate() {
        let request = i + 1;
        match r {
            None => return Err(ServerCheckError::ClientPanicked { request }),
            Some(Err(source)) => {
                return Err(ServerCheckError::Step {
                    step: format!("request {request} of {CONCURRENT_CLIENTS} at once failed"),
                    source,
                });
            }
            Some(Ok(text)) if text != expected => {
                return Err(ServerCheckError::ConcurrentDiffers { request, text, expected });
            }
            Some(Ok(_)) => {}
        }
    }
    Ok(format!(
        "{CONCURRENT_CLIENTS} requests at once all answered as one alone, in {:.0} ms",
        wall.as_secs_f64() * 1e3
    ))
}

/// `(what, endpoint, body, statuses accepted)`.
fn malformed() -> Vec<(&'static str, Endpoint, Vec<u8>, &'static [u16])> {
    let c = Endpoint::Completions;
    let chat = Endpoint::ChatCompletions;
    let mut oversized = br#"{"prompt": ""#.to_vec();
    oversized.resize(OVERSIZED_BYTES, b'a');
    oversized.extend_from_slice(br#"", "max_tokens": 1}"#);
    vec![
        ("malformed JSON", c, br#"{"prompt": "2 + 2 =", "max_tokens": "#.to_vec(), &[400]),
        ("a JSON array", c, b"[1, 2, 3]".to_vec(), &[400]),
        ("no prompt", c, br#"{"max_tokens": 4}"#.to_vec(), &[400]),
        ("a prompt that is a number", c, br#"{"prompt": 42, "max_tokens": 4}"#.to_vec(), &[400]),
        ("max_tokens of a billion", c, br#"{"prompt": "hi", "max_tokens": 1000000000}"#.to_vec(), &[400]),
        ("negative max_tokens", c, br#"{"prompt": "hi", "max_tokens": -5}"#.to_vec(), &[400]),
        ("temperature 1e9", c, br#"{"prompt": "hi", "max_tokens": 2, "temperature": 1e9}"#.to_vec(), &[400]),
        ("no messages", chat, br#"{"max_tokens": 4}"#.to_vec(), &[400]),
        ("an empty message list", chat, br#"{"messages": [], "max_tokens": 4}"#.to_vec(), &[400]),
        ("a message without a role", chat, br#"{"messages": [{"content": "hi"}]}"#.to_vec(), &[400]),
        ("an 8 MiB body", c, oversized, &[400, 413]),
    ]
}

fn bad_requests(client: &Client, deadline: Instant) -> Result<String, ServerCheckError> {
    let cases = malformed();
    let closed = expect_refusals(client, &cases, deadline)?;
    let r = client.raw("GET", "/health", "", None, remaining(deadline))?;
    if r.status != 200 {
        return Err(ServerCheckError::DownAfterBadRequests { status: r.status });
    }
    let mut reason = format!(
        "{} malformed requests were refused with a 4xx and an error object",
        cases.len() - closed.len()
    );
    if !closed.is_empty() {
        reason.push_str(&format!(", {} by closing the connection ({})", closed.len(), closed.join(", ")));
    }
    reason.push_str("; the server stayed up");
    Ok(reason)
}

/// A request the server must refuse: what it is, where it goes, its body, the statuses that
/// refuse it.
type Refused = (&'static str, Endpoint, Vec<u8>, &'static [u16]);

/// Sends each case and checks it was refused with one of its statuses and an OpenAI error
/// object. A case of at least [`MAY_CLOSE_BYTES`] may be refused by closing the connection
/// before the body is read; the labels of those are returned.
fn expect_refusals(
    client: &Client,
    cases: &[Refused],
    deadline: Instant,
) -> Result<Vec<String>, ServerCheckError> {
    let mut closed = Vec::new();
    for (what, endpoint, body, accepted) in cases {
        let label = format!("{what} to {}", endpoint.path());
        let sent = client.raw_or_closed(
            "POST",
            endpoint.path(),
            "application/json",
            Some(body),
            remaining(deadline),
        )?;
        let r = match sent {
            Some(r) => r,
            // Refusing an oversized body by closing the connection before reading it is fair;
            // the server must still be up afterwards (checked by the caller).
            None if body.len() >= MAY_CLOSE_BYTES => {
                closed.push(label);
                continue;
            }
            None => return Err(ServerCheckError::ClosedWithoutAnswer { label }),
        };
        if !accepted.contains(&r.status) {
            return Err(ServerCheckError::Accepted {
                label,
                status: r.status,
                accepted,
                body: excerpt(&r.body),
            });
        }
        let v: Value = match serde_json::from_str(&r.body) {
            Ok(v) => v,
            Err(source) => {
                return Err(ServerCheckError::ErrorNotJson {
                    label,
                    status: r.status,
                    body: excerpt(&r.body),
                    source,
                });
            }
        };
        if !v["error"]["message"].is_string() {
            return Err(ServerCheckError::NoErrorObject { label, body: excerpt(&r.body) });
        }
    }
    Ok(closed)
}

/// The context assumed for a server that does not say its own: past any context served today,
/// so a prompt this long must be refused anywhere.
const UNKNOWN_CONTEXT: usize = 1 << 20;

/// `serve-limits`: a prompt past the model's context is refused with a 4xx and an error object
/// on both endpoints — one just past it (counted in tokens by the server) and one far past it
/// (refused from its size) — and the server then answers a request that fits.
fn limits(client: &Client, probe: &Probe, deadline: Instant) -> Result<String, ServerCheckError> {
    let context = probe.context.unwrap_or(UNKNOWN_CONTEXT);
    let mut cases: Vec<Refused> = Vec::new();
    let completion = |prompt: &str| json!({"prompt": prompt, "max_tokens": 1}).to_string().into_bytes();
    let chat = |content: &str| {
        json!({"messages": [{"role": "user", "content": content}], "max_tokens": 1}).to_string().into_bytes()
    };
    if let Some(just_past) = &probe.past_context {
        cases.push((
            "a prompt just past the context",
            Endpoint::Completions,
            completion(just_past),
            &[400, 413],
        ));
        if probe.chat {
            cases.push((
                "a message just past the context",
                Endpoint::ChatCompletions,
                chat(just_past),
                &[400, 413],
            ));
        }
    }
    // Eight bytes a token is more than any tokenizer's average: this prompt is far past.
    let far = "lorem ".repeat((context * 8 / 6).min(OVERSIZED_BYTES / 8));
    cases.push(("a prompt far past the context", Endpoint::Completions, completion(&far), &[400, 413]));
    if probe.chat {
        cases.push(("a message far past the context", Endpoint::ChatCompletions, chat(&far), &[400, 413]));
    }
    let closed = expect_refusals(client, &cases, deadline)?;
    let after = client
        .request(Endpoint::Completions, &probe.body(Endpoint::Completions, false), deadline)
        .map_err(|source| ServerCheckError::Step { step: "a prompt that fits, afterwards".into(), source })?;
    let mut reason = format!(
        "{} prompts past the {}context were refused with a 4xx and an error object",
        cases.len() - closed.len(),
        probe.context.map_or("assumed ".to_string(), |c| format!("{c}-token ")),
    );
    if !closed.is_empty() {
        reason.push_str(&format!(", {} by closing the connection", closed.len()));
    }
    if probe.past_context.is_none() {
        reason.push_str(" (none just past it: the session shows no tokens)");
    }
    reason.push_str(&format!("; a prompt that fits was answered after them ({} chars)", after.text.len()));
    Ok(reason)
}

fn excerpt(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A server check of the cell's session: this project's server over it, or the external one.
pub(crate) fn run(env: &TrialEnv<'_>, check: ServerCheck) -> Finding {
    let client = match env.ctx.servers.client_for(env) {
        Ok(c) => c,
        Err(e) => return ServerPool::unavailable(&e),
    };
    let template = env.info.chat_template.as_ref();
    let chat = template.is_some() || env.info.applies_chat_template;
    let spec = env.spec;
    let (context, past_context) = if check == ServerCheck::Limits {
        let session = env.session.lock().unwrap_or_else(|p| p.into_inner());
        let context = session.context();
        (context, context.and_then(|c| past_context(&**session, c)))
    } else {
        (None, None)
    };
    let probe = match spec.scenarios.iter().find(|s| s.property.is_none()) {
        Some(s) => Probe {
            prompt: render_run(&spec.model, &s.input, template, &[]).text,
            messages: messages_of(&s.input),
            max_tokens: s.max_tokens,
            chat,
            context,
            past_context,
        },
        None => Probe {
            prompt: spec.model.layout("Hello"),
            messages: messages_of(&Input::Prompt("Hello".into())),
            max_tokens: 8,
            chat,
            context,
            past_context,
        },
    };
    let served = client.model().unwrap_or(&spec.model.id).to_string();
    self::check(check, &client, &served, &probe, env.deadline).into_finding(Decider::Serve)
}

/// Text whose tokens, as `session` encodes a prompt, pass `context` by less than a fifth: past
/// it, yet short enough in bytes that only counting its tokens shows it; `None` where the
/// session shows no tokens.
fn past_context(session: &dyn crate::engine::Session, context: usize) -> Option<String> {
    const WORDS: [&str; 8] = ["river", "stone", "seven", "blue", "quietly", "under", "the", "lamp"];
    let text = |words: usize| (0..words).map(|i| WORDS[i % WORDS.len()]).collect::<Vec<_>>().join(" ");
    let aim = context + context / 20 + 2;
    let mut words = context;
    for _ in 0..6 {
        let candidate = text(words);
        let tokens = session.encode(&candidate).ok()?.len().max(1);
        if tokens > context && tokens <= context + context / 5 + 2 {
            return Some(candidate);
        }
        // Scale by the words a token takes.
        words = (words * aim).div_ceil(tokens).max(1);
    }
    None
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
