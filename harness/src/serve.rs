//! An OpenAI-compatible HTTP server over one loaded session: `GET /health`, `GET /v1/models`,
//! `POST /v1/completions`, `POST /v1/chat/completions`, with server-sent-event streaming ending
//! in `data: [DONE]`. It binds 127.0.0.1 unless told otherwise. Bad requests (malformed JSON,
//! missing fields, an empty conversation, an absurd `max_tokens`, an oversized body) get a 4xx
//! with an OpenAI-style error object; concurrent requests queue on the session.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::ChatTemplate;
use crate::engine::{EngineError, Finish, GenerateRequest, Generation, Sampling, SharedSession};
use crate::playbook::MessageSpec;
use crate::playbook::spec::Role;

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
    /// Longest one request may generate for.
    pub request_timeout: Duration,
}

impl ServerConfig {
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            model: model.into(),
            max_body_bytes: 1 << 20,
            max_tokens_limit: 4096,
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct AppState {
    session: SharedSession,
    template: Option<ChatTemplate>,
    config: ServerConfig,
    next_id: AtomicU64,
}

impl Server {
    /// Binds (so the address is known and in use when this returns) and serves on a thread of
    /// its own.
    pub fn start(session: SharedSession, config: ServerConfig) -> std::io::Result<Server> {
        let listener = std::net::TcpListener::bind(config.bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let template = session.lock().unwrap_or_else(|p| p.into_inner()).info().chat_template.clone();
        let state = Arc::new(AppState { session, template, config, next_id: AtomicU64::new(1) });
        let app = Router::new()
            .route("/health", get(health))
            .route("/v1/models", get(models))
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(chat_completions))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), refuse_declared_oversize))
            .with_state(state);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("modelqa-serve")
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("modelqa-serve".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        })?;
        Ok(Server { addr, shutdown: Some(tx), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets requests in flight finish, and joins the server thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// An OpenAI-style error response.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "param": null, "code": null}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// A request the server refuses, turned into its response only at the handler.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, "invalid_request_error", self.message)
    }
}

fn ok_json(v: Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// A body whose declared length is over the limit is refused before a byte of it is read, so
/// the client gets its 413 even while it is still sending.
async fn refuse_declared_oversize(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.config.max_body_bytes;
    match declared {
        Some(n) if n > limit as u64 => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is too large: {n} bytes declared, at most {limit}"),
        ),
        _ => next.run(request).await,
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    ok_json(json!({"status": "ok", "model": state.config.model}))
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    ok_json(
        json!({"object": "list", "data": [{"id": state.config.model, "object": "model", "owned_by": "modelqa"}]}),
    )
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "no such endpoint; this server has /health, /v1/models, /v1/completions and /v1/chat/completions",
    )
}

/// The request fields both endpoints share.
#[derive(Debug, Deserialize)]
struct Common {
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: Option<Value>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Option<Vec<ChatMessage>>,
    #[serde(flatten)]
    common: Common,
}

fn body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, Refusal> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal { status: StatusCode::PAYLOAD_TOO_LARGE, message: "the request body is too large".into() }
        } else {
            Refusal::bad(format!("failed to read the request body: {r}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Refusal::bad(format!("invalid JSON body: {e}")))
}

/// Sampling and limits from the shared fields, or why they are unacceptable.
fn settings(common: &Common, state: &AppState) -> Result<(u32, Sampling), Refusal> {
    let limit = state.config.max_tokens_limit;
    let max_tokens = common.max_tokens.unwrap_or(16);
    if max_tokens == 0 || max_tokens > limit {
        return Err(Refusal::bad(format!("max_tokens must be between 1 and {limit}, got {max_tokens}")));
    }
    let temperature = common.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(Refusal::bad(format!("temperature must be between 0 and 2, got {temperature}")));
    }
    if let Some(p) = common.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(Refusal::bad(format!("top_p must be in (0, 1], got {p}")));
    }
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Seeded { temperature, top_p: common.top_p, top_k: None, seed: common.seed.unwrap_or(0) }
    };
    Ok((max_tokens, sampling))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos => "stop",
        Finish::Length => "length",
    }
}

fn usage(g: &Generation) -> Value {
    let completion = g.token_count.unwrap_or(0);
    json!({"prompt_tokens": g.prompt_tokens, "completion_tokens": completion, "total_tokens": g.prompt_tokens + completion})
}

fn engine_error(e: &EngineError) -> Response {
    match e {
        EngineError::Timeout { .. } => error(StatusCode::GATEWAY_TIMEOUT, "timeout_error", e.to_string()),
        EngineError::PromptTooLong { .. } | EngineError::OutsideContext { .. } => bad_request(e.to_string()),
        EngineError::Inference(m) if m.contains("context") => bad_request(e.to_string()),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()),
    }
}

/// What a finished generation becomes in each API shape.
#[derive(Clone, Copy)]
enum Shape {
    Completion,
    Chat,
}

impl Shape {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Shape::Completion, _) => "text_completion",
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
        }
    }

    fn choice(self, text: &str, finish: Option<&str>, chunk: bool) -> Value {
        match (self, chunk) {
            (Shape::Completion, _) => {
                json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null})
            }
            (Shape::Chat, false) => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
            }
            (Shape::Chat, true) => json!({"index": 0, "delta": {"content": text}, "finish_reason": finish}),
        }
    }
}

/// Runs one generation, answering whole or as server-sent events.
async fn respond(
    state: Arc<AppState>,
    prompt: String,
    max_tokens: u32,
    sampling: Sampling,
    stream: bool,
    shape: Shape,
) -> Response {
    let id = format!(
        "{}-{}",
        match shape {
            Shape::Completion => "cmpl",
            Shape::Chat => "chatcmpl",
        },
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = now_secs();
    let model = state.config.model.clone();
    let deadline = Instant::now() + state.config.request_timeout;
    let session = Arc::clone(&state.session);
    if !stream {
        let result = tokio::task::spawn_blocking(move || {
            let request = GenerateRequest { prompt: &prompt, max_tokens, sampling, deadline };
            session.lock().unwrap_or_else(|p| p.into_inner()).generate(&request)
        })
        .await;
        return match result {
            Ok(Ok(g)) => ok_json(json!({
                "id": id, "object": shape.object(false), "created": created, "model": model,
                "choices": [shape.choice(&g.text, Some(finish_reason(g.finish)), false)],
                "usage": usage(&g),
            })),
            Ok(Err(e)) => engine_error(&e),
            Err(e) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("generation panicked: {e}"))
            }
        };
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let event = |v: Value| Ok::<_, Infallible>(Bytes::from(format!("data: {v}\n\n")));
    let frame = move |text: &str, finish: Option<&str>| {
        json!({"id": id, "object": shape.object(true), "created": created, "model": model,
               "choices": [shape.choice(text, finish, true)]})
    };
    tokio::task::spawn_blocking(move || {
        if matches!(shape, Shape::Chat) {
            let mut first = frame("", None);
            first["choices"][0]["delta"] = json!({"role": "assistant"});
            let _ = tx.blocking_send(event(first));
        }
        let request = GenerateRequest { prompt: &prompt, max_tokens, sampling, deadline };
        let result =
            session.lock().unwrap_or_else(|p| p.into_inner()).generate_streaming(&request, &mut |piece| {
                let _ = tx.blocking_send(event(frame(piece, None)));
            });
        match result {
            Ok(g) => {
                let mut last = frame("", Some(finish_reason(g.finish)));
                if matches!(shape, Shape::Chat) {
                    last["choices"][0]["delta"] = json!({});
                }
                last["usage"] = usage(&g);
                let _ = tx.blocking_send(event(last));
            }
            Err(e) => {
                let _ = tx.blocking_send(event(
                    json!({"error": {"message": e.to_string(), "type": "server_error"}}),
                ));
            }
        }
        let _ = tx.blocking_send(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))
}

async fn completions(State(state): State<Arc<AppState>>, raw: Result<Bytes, BytesRejection>) -> Response {
    let req: CompletionRequest = match body(raw) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let prompt = match req.prompt {
        Some(Value::String(p)) if !p.is_empty() => p,
        Some(Value::Array(a)) if a.len() == 1 && a[0].as_str().is_some_and(|p| !p.is_empty()) => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(a)) if a.len() > 1 => return bad_request("one prompt per request"),
        Some(_) => return bad_request("`prompt` must be a non-empty string"),
        None => return bad_request("missing field `prompt`"),
    };
    let (max_tokens, sampling) = match settings(&req.common, &state) {
        Ok(s) => s,
        Err(refusal) => return refusal.into_response(),
    };
    let stream = req.common.stream;
    respond(state, prompt, max_tokens, sampling, stream, Shape::Completion).await
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let req: ChatRequest = match body(raw) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(messages) = req.messages else { return bad_request("missing field `messages`") };
    if messages.is_empty() {
        return bad_request("`messages` is empty: a conversation needs at least one message");
    }
    let mut turns = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return bad_request(format!("messages[{i}].role `{other}` is not system, user or assistant"));
            }
        };
        let Some(content) = &m.content else { return bad_request(format!("messages[{i}] has no `content`")) };
        turns.push(MessageSpec { role, content: content.clone() });
    }
    let Some(template) = &state.template else {
        return bad_request("this model ships no chat template, so it cannot serve chat completions");
    };
    let prompt = match template.render(&turns) {
        Ok(p) => p,
        Err(e) => return bad_request(e.to_string()),
    };
    let (max_tokens, sampling) = match settings(&req.common, &state) {
        Ok(s) => s,
        Err(refusal) => return refusal.into_response(),
    };
    let stream = req.common.stream;
    respond(state, prompt, max_tokens, sampling, stream, Shape::Chat).await
}
