//! A [`Job`] handed to the session's continuous batch and answered whole or as server-sent
//! events, cut at its stop sequences. Its sequence leaves the batch early when a stop sequence
//! appears, when the client has gone, or when a streaming client stops reading for the body
//! timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::http::AppState;
use super::logprobs::{choice_logprobs, reported};
use super::request::{Job, Refusal, Shape, error};
use super::stop::{StopScanner, truncate};
use crate::engine::{Answer, EngineError, Finish, Flow, Generation, Joining, ScoredStep};

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn finish_reason(f: Finish, stopped: bool) -> &'static str {
    match f {
        _ if stopped => "stop",
        Finish::Eos | Finish::Stopped => "stop",
        Finish::Length => "length",
    }
}

fn usage(g: &Generation) -> Value {
    let completion = g.token_count.unwrap_or(0);
    json!({"prompt_tokens": g.prompt_tokens, "completion_tokens": completion, "total_tokens": g.prompt_tokens + completion})
}

pub(super) fn engine_error(e: &EngineError) -> Response {
    match e {
        EngineError::Timeout { .. } => error(StatusCode::GATEWAY_TIMEOUT, "timeout_error", e.to_string()),
        EngineError::PromptTooLong { .. } | EngineError::OutsideContext { .. } | EngineError::EmptyPrompt => {
            Refusal::bad(e.to_string()).into_response()
        }
        EngineError::Inference(m) if m.contains("context") => Refusal::bad(e.to_string()).into_response(),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()),
    }
}

fn ok_json(v: Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
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

    fn id_prefix(self) -> &'static str {
        match self {
            Shape::Completion => "cmpl",
            Shape::Chat => "chatcmpl",
        }
    }
}

/// Set when the handler's future is dropped (its client went away), so a generation nobody will
/// read leaves the batch instead of running to its end.
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Hands a request to the session's batch ([`super::http::schedule`]); `false` when the
/// scheduler has stopped (the server is shutting down).
fn submit(state: &AppState, joining: Joining) -> bool {
    state.jobs.send(joining).is_ok()
}

fn shutting_down() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")
}

/// Runs one job, answering whole or as server-sent events.
pub(super) async fn respond(state: Arc<AppState>, job: Job) -> Response {
    let id = format!("{}-{}", job.shape.id_prefix(), state.next_id.fetch_add(1, Ordering::Relaxed));
    if job.stream {
        return stream(state, job, id);
    }
    let created = now_secs();
    let arrived = Instant::now();
    let cancelled = Arc::new(AtomicBool::new(false));
    let _abandoned = Abandoned(Arc::clone(&cancelled));
    let Job { shape, prompt, literal, max_tokens, sampling, stop, logprobs, .. } = job;
    let planted = crate::config::planted_serve_fault();
    // A planted fault needs the alternatives of the first step whether or not scores were asked.
    let top = match planted {
        Some(_) => Some(logprobs.unwrap_or(0).max(PLANTED_CANDIDATES)),
        None => logprobs,
    };
    let mut scanner = StopScanner::new(stop.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<Answer>();
    let joining = Joining {
        prompt,
        literal,
        max_tokens,
        sampling,
        deadline: arrived + state.config.request_timeout,
        arrived,
        top,
        on_text: Some(Box::new(move |piece: &str| {
            let _ = scanner.push(piece);
            if scanner.found() { Flow::Stop } else { Flow::Continue }
        })),
        cancelled,
        done: Box::new(move |answer| {
            let _ = tx.send(answer);
        }),
    };
    if !submit(&state, joining) {
        return shutting_down();
    }
    let Ok(answer) = rx.await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the generation failed before answering (see the server's stderr)",
        );
    };
    let Answer { generation, mut steps, shared, .. } = answer;
    match generation {
        Ok(mut g) => {
            if planted.is_some_and(|f| f.fires(shared)) {
                plant(&mut g, &mut steps);
            }
            let (text, stopped) = truncate(&g.text, &stop);
            let mut choice = shape.choice(&text, Some(finish_reason(g.finish, stopped)), false);
            if let Some(top) = logprobs {
                choice["logprobs"] = choice_logprobs(shape, reported(&steps, &text, stopped), top);
            }
            ok_json(json!({
                "id": id, "object": shape.object(false), "created": created, "model": state.config.model,
                "choices": [choice],
                "usage": usage(&g),
            }))
        }
        Err(e) => engine_error(&e),
    }
}

/// Where the planted fault's token ranks at least among the model's choices (0 is the most
/// likely): past any top 5 a comparison looks in.
const PLANTED_RANK: usize = 5;
/// Alternatives scored for the planted fault: the first past `PLANTED_RANK` that does not end
/// generation is served.
const PLANTED_CANDIDATES: usize = PLANTED_RANK + 4;

/// The planted fault (`QUALIFY_FAULT_SERVE`): the answer's first token becomes the model's sixth
/// most likely there (or the next that does not end generation), in the text and in the scores
/// alike, as a served path that selects the wrong token would answer.
fn plant(g: &mut Generation, steps: &mut [ScoredStep]) {
    let Some(first) = steps.first_mut().filter(|s| !s.chosen.ends) else { return };
    let Some(wrong) = first.top.iter().skip(PLANTED_RANK).find(|t| !t.ends).cloned() else { return };
    let Some(rest) = g.text.strip_prefix(first.chosen.token.as_str()) else { return };
    g.text = format!("{}{rest}", wrong.token);
    first.chosen = wrong;
}

/// The frames of one streamed answer, sent without waiting: the batch never blocks on a client.
/// A forwarding task hands them to the response body, and gives up (cancelling the sequence)
/// when the client has gone or has not read for the body timeout.
#[derive(Clone)]
struct Frames {
    id: String,
    shape: Shape,
    created: u64,
    model: String,
    tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl Frames {
    fn frame(&self, text: &str, finish: Option<&str>) -> Value {
        json!({"id": self.id, "object": self.shape.object(true), "created": self.created, "model": self.model,
               "choices": [self.shape.choice(text, finish, true)]})
    }

    fn send(&self, v: Value) {
        let _ = self.tx.send(Bytes::from(format!("data: {v}\n\n")));
    }

    fn done(&self) {
        let _ = self.tx.send(Bytes::from_static(b"data: [DONE]\n\n"));
    }
}

fn stream(state: Arc<AppState>, job: Job, id: String) -> Response {
    let Job { shape, prompt, literal, max_tokens, sampling, stop, .. } = job;
    let arrived = Instant::now();
    let stall = state.config.body_timeout;
    let cancelled = Arc::new(AtomicBool::new(false));
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let gone = Arc::clone(&cancelled);
    tokio::spawn(async move {
        while let Some(bytes) = frames_rx.recv().await {
            if !matches!(tokio::time::timeout(stall, tx.send(Ok(bytes))).await, Ok(Ok(()))) {
                gone.store(true, Ordering::Relaxed);
                return;
            }
        }
    });
    let frames = Frames { id, shape, created: now_secs(), model: state.config.model.clone(), tx: frames_tx };
    if shape == Shape::Chat {
        let mut first = frames.frame("", None);
        first["choices"][0]["delta"] = json!({"role": "assistant"});
        frames.send(first);
    }
    let scanner = Arc::new(std::sync::Mutex::new(StopScanner::new(stop)));
    let (on_text_frames, on_text_scanner) = (frames.clone(), Arc::clone(&scanner));
    let joining = Joining {
        prompt,
        literal,
        max_tokens,
        sampling,
        deadline: arrived + state.config.request_timeout,
        arrived,
        top: None,
        on_text: Some(Box::new(move |piece: &str| {
            let mut scanner = on_text_scanner.lock().unwrap_or_else(|p| p.into_inner());
            let text = scanner.push(piece);
            if !text.is_empty() {
                on_text_frames.send(on_text_frames.frame(&text, None));
            }
            if scanner.found() { Flow::Stop } else { Flow::Continue }
        })),
        cancelled,
        done: Box::new(move |answer: Answer| {
            match answer.generation {
                Ok(g) => {
                    let mut scanner = scanner.lock().unwrap_or_else(|p| p.into_inner());
                    let stopped = scanner.found();
                    let rest = scanner.finish();
                    if !rest.is_empty() {
                        frames.send(frames.frame(&rest, None));
                    }
                    let mut last = frames.frame("", Some(finish_reason(g.finish, stopped)));
                    if shape == Shape::Chat {
                        last["choices"][0]["delta"] = json!({});
                    }
                    last["usage"] = usage(&g);
                    frames.send(last);
                }
                Err(e) => frames.send(json!({"error": {"message": e.to_string(), "type": "server_error"}})),
            }
            frames.done();
        }),
    };
    if !submit(&state, joining) {
        return shutting_down();
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))
}
