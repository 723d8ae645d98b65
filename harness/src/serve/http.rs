//! The server's connections and routes: a hyper HTTP/1 loop on a runtime of its own, with a
//! header timeout that also closes idle keep-alive connections, a cap on open connections, a
//! body timeout, the optional bearer key, and the handlers that turn bodies into jobs. Every check
//! a request can fail without the model is made here or in `request`, before the session is
//! waited for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio_stream::StreamExt;

use super::config::{ServerConfig, exposed};
use super::request::{Refusal, Rules, Shape, error, parse, refuse_long_tokens};
use super::respond::respond;
use crate::chat::ChatTemplate;
use crate::engine::{Joining, PromptGauge, SharedSession};

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub(super) struct AppState {
    pub(super) config: ServerConfig,
    pub(super) next_id: AtomicU64,
    /// Requests for the session's continuous batch ([`schedule`]).
    pub(super) jobs: std::sync::mpsc::Sender<Joining>,
    template: Option<ChatTemplate>,
    gauge: Option<PromptGauge>,
    control: Vec<String>,
}

impl AppState {
    fn rules(&self) -> Rules<'_> {
        Rules {
            max_tokens_limit: self.config.max_tokens_limit,
            template: self.template.as_ref(),
            gauge: self.gauge.as_ref(),
            control: &self.control,
        }
    }
}

impl Server {
    /// Binds (so the address is known and in use when this returns) and serves on a thread of
    /// its own. Binding anything but loopback is said on stderr.
    pub fn start(session: SharedSession, config: ServerConfig) -> std::io::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("modelqa-serve")
            .build()?;
        let listener = bind(&runtime, config.bind)?;
        let addr = listener.local_addr()?;
        if exposed(&addr) {
            crate::reporter::exposed_server(&addr, config.api_key.is_some());
        }
        let (template, gauge, control) = {
            let session = session.lock().unwrap_or_else(|p| p.into_inner());
            let info = session.info();
            (info.chat_template.clone(), session.prompt_gauge(), info.control_tokens.clone())
        };
        let next_id = AtomicU64::new(1);
        let (jobs, queue) = std::sync::mpsc::channel::<Joining>();
        let slots = config.max_batch;
        // Detached: it ends once the server's state (the sender) is gone and its batch has
        // finished, which a hung model would otherwise make `stop` wait for.
        std::thread::Builder::new()
            .name("modelqa-batch".into())
            .spawn(move || schedule(&session, &queue, slots))?;
        let state = Arc::new(AppState { config, next_id, jobs, template, gauge, control });
        let app = router(Arc::clone(&state));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("modelqa-serve".into()).spawn(move || {
            runtime.block_on(serve(listener, app, &state.config, rx));
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

    /// Stops accepting, lets requests in flight finish (for at most the request timeout), and
    /// joins the server thread.
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

/// The session's scheduler: waits for a request, then holds the session while it answers that
/// one and every request arriving meanwhile as one continuous batch
/// ([`crate::engine::Session::serve_continuously`], at most `slots` sequences at once), and lets
/// the session go (to the harness's own trials on it) as soon as the batch is empty. A panic in
/// the model drops the live requests' answers (their handlers say so) and the scheduler goes on.
fn schedule(session: &SharedSession, queue: &std::sync::mpsc::Receiver<Joining>, slots: usize) {
    while let Ok(first) = queue.recv() {
        let mut first = Some(first);
        let mut intake = || first.take().or_else(|| queue.try_recv().ok());
        let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            session.serve_continuously(&mut intake, slots);
        }));
        if run.is_err() {
            eprintln!(
                "modelqa serve: the model panicked in a batch; its requests were answered with an error"
            );
        }
    }
}

/// Listens on `addr` with a backlog of 1024: the standard library's 128 drops the connections
/// of a burst past it, and their clients retry only a second later.
fn bind(runtime: &tokio::runtime::Runtime, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let _in_runtime = runtime.enter();
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As the standard library does on Unix: a restarted server can bind its port at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), refuse_declared_oversize))
        // Outermost: a client without the key learns nothing else about a request.
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), authenticate))
        .with_state(state)
}

/// Accepts connections until `shutdown`, each served by hyper with the header timeout armed.
/// `axum::serve` gives hyper no timer, so its header timeout never fires and a client that
/// trickles its headers holds a connection (and a task) forever; hence this loop.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    config: &ServerConfig,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors (or a connection reset before it was accepted): wait
                // a moment rather than spin, and go on serving the connections already open.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tokio::spawn(turn_away(stream, config.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(config.request_timeout, graceful.shutdown()).await;
}

/// Answers a connection over the cap with a 503 without reading its request, then closes it.
async fn turn_away(stream: tokio::net::TcpStream, cap: usize) {
    let body = json!({"error": {
        "message": format!("the server has {cap} connections open, its limit; retry shortly"),
        "type": "server_error", "param": null, "code": null,
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if stream.writable().await.is_ok() {
            let _ = stream.try_write(response.as_bytes());
        }
        // What the client already sent is read and dropped, so closing sends a FIN rather than a
        // reset that could destroy the 503 before the client reads it.
        let mut sink = [0u8; 4096];
        while stream.readable().await.is_ok() {
            match stream.try_read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
    })
    .await;
}

/// Every endpoint but `/health` needs the key when one is set: health stays open so a load
/// balancer or supervisor can probe without it, and it tells nothing but the model's name.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(key) = &state.config.api_key else { return next.run(request).await };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let message = match presented {
        Some(k) if key.matches(k) => return next.run(request).await,
        Some(_) => "incorrect API key provided",
        None => "missing API key: send it as `Authorization: Bearer <key>`",
    };
    let mut response = Refusal {
        status: StatusCode::UNAUTHORIZED,
        kind: "invalid_request_error",
        message: message.into(),
        param: None,
        code: Some("invalid_api_key"),
    }
    .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// A body whose declared length is over the limit is refused before a byte of it is read, so
/// the client gets its 413 even while it is still sending.
async fn refuse_declared_oversize(
    State(state): State<Arc<AppState>>,
    request: Request,
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

/// The whole body, read within the body timeout and the size limit.
async fn read_body(state: &AppState, request: Request) -> Result<Bytes, Response> {
    let limit = state.config.max_body_bytes;
    let timeout = state.config.body_timeout;
    let mut stream = request.into_body().into_data_stream();
    let mut body = Vec::new();
    let read = tokio::time::timeout(timeout, async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Refusal::bad(format!("failed to read the request body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(Refusal {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    ..Refusal::bad(format!("the request body is too large: more than {limit} bytes"))
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    })
    .await;
    let refusal = match read {
        Ok(Ok(())) => return Ok(Bytes::from(body)),
        Ok(Err(refusal)) => refusal,
        Err(_) => Refusal {
            status: StatusCode::REQUEST_TIMEOUT,
            ..Refusal::bad(format!(
                "the request body did not arrive within {} s ({} bytes came)",
                timeout.as_secs_f64(),
                body.len()
            ))
        },
    };
    // The rest of the body is never read, so the connection cannot carry another request.
    let mut response = refusal.into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    Err(response)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"status": "ok", "model": state.config.model})).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(
        json!({"object": "list", "data": [{"id": state.config.model, "object": "model", "owned_by": "modelqa"}]}),
    )
    .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "no such endpoint; this server has /health, /v1/models, /v1/completions and /v1/chat/completions",
    )
}

async fn completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    answer(state, Shape::Completion, request).await
}

async fn chat_completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    answer(state, Shape::Chat, request).await
}

/// Reads, checks and answers one request. Everything that can refuse it without the model runs
/// first: the prompt's tokens are counted on a blocking thread of their own, never under the
/// session's lock, so an over-long prompt is refused at once while another request generates.
async fn answer(state: Arc<AppState>, shape: Shape, request: Request) -> Response {
    let body = match read_body(&state, request).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let job = match parse(shape, &body, &state.rules()) {
        Ok(job) => job,
        Err(refusal) => return refusal.into_response(),
    };
    let job = match state.gauge.clone() {
        None => job,
        Some(gauge) => {
            let counted =
                tokio::task::spawn_blocking(move || refuse_long_tokens(&job, &gauge).map(|()| job)).await;
            match counted {
                Ok(Ok(job)) => job,
                Ok(Err(refusal)) => return refusal.into_response(),
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        format!("tokenizing panicked: {e}"),
                    );
                }
            }
        }
    };
    respond(state, job).await
}
