//! A [`Job`] run on the session and answered whole or as server-sent events, cut at its stop
//! sequences. Generation ends early, releasing the session, when a stop sequence appears, when the
//! client has gone, or when a streaming client stops reading for the body timeout.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, TryLockError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::http::AppState;
use super::logprobs::{choice_logprobs, reported};
use super::request::{Job, Refusal, Shape, error};
use super::stop::{StopScanner, truncate};
use crate::engine::{EngineError, Finish, Flow, GenerateRequest, Generation, ScoredStep};

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
/// read stops instead of holding the session to its end.
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs one job, answering whole or as server-sent events.
pub(super) async fn respond(state: Arc<AppState>, job: Job) -> Response {
    let id = format!("{}-{}", job.shape.id_prefix(), state.next_id.fetch_add(1, Ordering::Relaxed));
    if job.stream {
        return stream(state, job, id);
    }
    let created = now_secs();
    let gone = Arc::new(AtomicBool::new(false));
    let _abandoned = Abandoned(Arc::clone(&gone));
    let Job { shape, prompt, literal, max_tokens, sampling, stop, logprobs, .. } = job;
    let deadline = Instant::now() + state.config.request_timeout;
    let session = Arc::clone(&state.session);
    let stops = stop.clone();
    let planted = crate::config::planted_serve_fault();
    let result = tokio::task::spawn_blocking(move || {
        let (mut session, queued) = match session.try_lock() {
            Ok(s) => (s, false),
            Err(TryLockError::Poisoned(p)) => (p.into_inner(), false),
            Err(TryLockError::WouldBlock) => (session.lock().unwrap_or_else(|p| p.into_inner()), true),
        };
        if gone.load(Ordering::Relaxed) {
            return None;
        }
        let request = GenerateRequest { prompt: &prompt, literal: &literal, max_tokens, sampling, deadline };
        let mut scanner = StopScanner::new(stops);
        let mut on_text = |piece: &str| {
            let _ = scanner.push(piece);
            if scanner.found() || gone.load(Ordering::Relaxed) { Flow::Stop } else { Flow::Continue }
        };
        let planted = planted.filter(|f| f.fires(queued));
        if logprobs.is_none() && planted.is_none() {
            return Some(session.generate_until(&request, &mut on_text).map(|g| (g, Vec::new())));
        }
        let top = logprobs.unwrap_or(0).max(if planted.is_some() { PLANTED_CANDIDATES } else { 0 });
        let scored = session.generate_scored(&request, top, &mut on_text);
        Some(scored.map(|(mut g, mut steps)| {
            if planted.is_some() {
                plant(&mut g, &mut steps);
            }
            (g, steps)
        }))
    })
    .await;
    match result {
        Ok(Some(Ok((g, steps)))) => {
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
        Ok(Some(Err(e))) => engine_error(&e),
        Ok(None) => error(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", "the client went away"),
        Err(e) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("generation panicked: {e}"))
        }
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

fn stream(state: Arc<AppState>, job: Job, id: String) -> Response {
    let Job { shape, prompt, literal, max_tokens, sampling, stop, .. } = job;
    let created = now_secs();
    let model = state.config.model.clone();
    let deadline = Instant::now() + state.config.request_timeout;
    let stall = state.config.body_timeout;
    let session = Arc::clone(&state.session);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let frame = move |text: &str, finish: Option<&str>| {
        json!({"id": id, "object": shape.object(true), "created": created, "model": model,
               "choices": [shape.choice(text, finish, true)]})
    };
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // A send fails when the client has gone, and gives up when it has not read for `stall`:
        // either way the generation stops, so no client can hold the session by not reading.
        let send = |v: Value| -> bool {
            let event = Ok(Bytes::from(format!("data: {v}\n\n")));
            runtime
                .block_on(async { matches!(tokio::time::timeout(stall, tx.send(event)).await, Ok(Ok(()))) })
        };
        if shape == Shape::Chat {
            let mut first = frame("", None);
            first["choices"][0]["delta"] = json!({"role": "assistant"});
            if !send(first) {
                return;
            }
        }
        let mut scanner = StopScanner::new(stop);
        let mut client_left = false;
        let result = {
            let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
            if tx.is_closed() {
                return;
            }
            let request =
                GenerateRequest { prompt: &prompt, literal: &literal, max_tokens, sampling, deadline };
            session.generate_until(&request, &mut |piece| {
                let text = scanner.push(piece);
                if !text.is_empty() && !send(frame(&text, None)) {
                    client_left = true;
                }
                if scanner.found() || client_left { Flow::Stop } else { Flow::Continue }
            })
        };
        if client_left {
            return;
        }
        match result {
            Ok(g) => {
                let stopped = scanner.found();
                let rest = scanner.finish();
                if !rest.is_empty() && !send(frame(&rest, None)) {
                    return;
                }
                let mut last = frame("", Some(finish_reason(g.finish, stopped)));
                if shape == Shape::Chat {
                    last["choices"][0]["delta"] = json!({});
                }
                last["usage"] = usage(&g);
                if !send(last) {
                    return;
                }
            }
            Err(e) => {
                let _ = send(json!({"error": {"message": e.to_string(), "type": "server_error"}}));
            }
        }
        let _ = runtime
            .block_on(tokio::time::timeout(stall, tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))));
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))
}
