//! Unit tests of `server.rs`, kept apart so the module reads as its rules.
//! Each check against a server with one planted fault: the check names it, and a server
//! without faults passes every check (no false alarm). The real server's checks run in
//! `tests/serve.rs` and in every qa-tiny `serve` cell.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::*;
use crate::playbook::spec::Role;
use crate::vocab::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    SlowHealth,
    OtherModel,
    NoUsage,
    NoDone,
    StreamDiffers,
    Nondeterministic,
    BusyWhenConcurrent,
    AcceptsAnything,
    /// Not a fault: SSE comments and `event:` fields, which the framing allows.
    SseComments,
    /// Lines that are not SSE at all inside the stream.
    SseGarbage,
    /// Events ended by one newline instead of a blank line: two events read as one.
    SseOneNewline,
    /// Every endpoint wants `Authorization: Bearer sk-test`, as a hosted API does.
    RequiresKey,
    /// Answers a prompt however far past the context (it truncates, or reads past its end).
    NoContextLimit,
}

/// The fake's context, in words (its tokens).
const FAKE_CONTEXT: usize = 64;

struct Fake {
    fault: Fault,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // A body over axum's limit gets the 413 a real server sends, with an error object. (Left
    // to axum, the 413's body is plain text: the check fails it whenever the client, slowed
    // by a busy machine, finishes sending before the server closes the connection.)
    let body = match body {
        Ok(b) => b,
        Err(e) => return json_response(e.status(), json!({"error": {"message": e.body_text()}})),
    };
    let call = fake.calls.fetch_add(1, Ordering::SeqCst);
    if fake.fault == Fault::RequiresKey
        && headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Bearer sk-test")
    {
        return json_response(StatusCode::UNAUTHORIZED, json!({"error": {"message": "no API key"}}));
    }
    let chat = uri.path() == "/v1/chat/completions";
    match uri.path() {
        "/health" => {
            if fake.fault == Fault::SlowHealth {
                tokio::time::sleep(HEALTH_LIMIT + Duration::from_millis(300)).await;
            }
            return json_response(StatusCode::OK, json!({"status": "ok"}));
        }
        "/v1/models" => {
            let id = if fake.fault == Fault::OtherModel { "someone-else" } else { "m" };
            return json_response(StatusCode::OK, json!({"object": "list", "data": [{"id": id}]}));
        }
        _ => {}
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) if fake.fault != Fault::AcceptsAnything => {
            return json_response(StatusCode::BAD_REQUEST, json!({"error": {"message": "bad JSON"}}));
        }
        Err(_) => json!({}),
    };
    let well_formed = if chat {
        request["messages"]
            .as_array()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|m| m["role"].is_string()))
    } else {
        request["prompt"].is_string()
    } && request["max_tokens"].as_u64().is_some_and(|n| n <= 4096)
        && request["temperature"].as_f64().is_none_or(|t| t <= 2.0);
    if !well_formed && fake.fault != Fault::AcceptsAnything {
        return json_response(StatusCode::BAD_REQUEST, json!({"error": {"message": "bad request"}}));
    }
    let words = if chat {
        request["messages"].as_array().into_iter().flatten().filter_map(|m| m["content"].as_str()).collect()
    } else {
        vec![request["prompt"].as_str().unwrap_or_default()]
    }
    .iter()
    .map(|t| t.split_whitespace().count())
    .sum::<usize>();
    if words > FAKE_CONTEXT && fake.fault != Fault::NoContextLimit {
        let message = format!("{words} tokens do not fit the context of {FAKE_CONTEXT}");
        return json_response(StatusCode::BAD_REQUEST, json!({"error": {"message": message}}));
    }
    if fake.fault == Fault::BusyWhenConcurrent {
        let before = fake.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        fake.in_flight.fetch_sub(1, Ordering::SeqCst);
        if before > 0 {
            return json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": {"message": "busy"}}));
        }
    }
    let text = if fake.fault == Fault::Nondeterministic { format!("4 ({call})") } else { "4".to_string() };
    if request["stream"] == json!(true) {
        let piece = |t: &str| {
            if chat {
                json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]})
            } else {
                json!({"object": "text_completion", "choices": [{"index": 0, "text": t}]})
            }
        };
        let streamed = if fake.fault == Fault::StreamDiffers { "5" } else { text.as_str() };
        let mut events = match fake.fault {
            Fault::SseComments => {
                format!(": keep-alive\n\nevent: message\nid: 1\ndata:{}\n\n", piece(streamed))
            }
            Fault::SseGarbage => format!("hello\ndata: {}\n\n", piece(streamed)),
            Fault::SseOneNewline => format!("data: {}\n", piece(streamed)),
            _ => format!("data: {}\n\n", piece(streamed)),
        };
        match fake.fault {
            Fault::NoDone => {}
            Fault::SseOneNewline => events.push_str("data: [DONE]\n"),
            _ => events.push_str("data: [DONE]\n\n"),
        }
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/event-stream")], events).into_response();
    }
    let (object, choice) = if chat {
        (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}),
        )
    } else {
        ("text_completion", json!({"index": 0, "text": text, "finish_reason": "stop"}))
    };
    let mut v = json!({"id": "x", "object": object, "choices": [choice],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}});
    if fake.fault == Fault::NoUsage {
        v.as_object_mut().map(|o| o.remove("usage"));
    }
    json_response(StatusCode::OK, v)
}

/// Serves the fake on an ephemeral port for as long as the returned runtime lives.
fn start(fault: Fault) -> (tokio::runtime::Runtime, Client) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fake = Arc::new(Fake { fault, calls: AtomicUsize::new(0), in_flight: AtomicUsize::new(0) });
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(handle).with_state(fake);
    runtime.spawn(async move { axum::serve(listener, app).await });
    (runtime, Client::new(format!("http://{addr}")))
}

fn probe() -> Probe {
    Probe {
        prompt: "What is 2 + 2?".into(),
        messages: vec![MessageSpec { role: Role::User, content: "What is 2 + 2?".into() }],
        max_tokens: 4,
        chat: true,
        context: Some(FAKE_CONTEXT),
        past_context: Some(vec!["word"; FAKE_CONTEXT + 3].join(" ")),
    }
}

fn verdict(fault: Fault, c: ServerCheck) -> Verdict {
    let (_runtime, client) = start(fault);
    check(c, &client, "m", &probe(), Instant::now() + Duration::from_secs(30))
}

#[test]
fn a_server_without_faults_passes_every_check() {
    for c in ServerCheck::ALL {
        let v = verdict(Fault::None, c);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}: {}", c.slug(), v.reason);
    }
}

#[test]
fn the_api_key_goes_as_a_bearer_token() {
    let (_runtime, client) = start(Fault::RequiresKey);
    let deadline = Instant::now() + Duration::from_secs(30);
    let without = check(ServerCheck::Json, &client, "m", &probe(), deadline);
    assert!(without.reason.contains("401"), "{}", without.reason);
    let client = client.with_api_key(Some("sk-test".into()));
    for c in [ServerCheck::Health, ServerCheck::Json, ServerCheck::Sse] {
        let v = check(c, &client, "m", &probe(), deadline);
        assert_eq!(v.outcome, Outcome::Corroborated, "{}: {}", c.slug(), v.reason);
    }
}

#[test]
fn sse_comments_and_event_fields_are_valid_framing() {
    let v = verdict(Fault::SseComments, ServerCheck::Sse);
    assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
}

#[test]
fn each_planted_fault_fails_its_check_and_says_what() {
    let cases = [
        (Fault::SlowHealth, ServerCheck::Health, "GET /health took"),
        (Fault::OtherModel, ServerCheck::Health, "not \"m\""),
        (Fault::NoUsage, ServerCheck::Json, "usage lacks token counts"),
        (Fault::NoDone, ServerCheck::Sse, "without `data: [DONE]`"),
        (Fault::SseGarbage, ServerCheck::Sse, "not an SSE line"),
        (Fault::SseOneNewline, ServerCheck::Sse, "ended inside an event"),
        (Fault::StreamDiffers, ServerCheck::Sse, "the streamed pieces add up to \"5\""),
        (Fault::Nondeterministic, ServerCheck::Deterministic, "at temperature 0"),
        (Fault::BusyWhenConcurrent, ServerCheck::Concurrent, "503"),
        (Fault::AcceptsAnything, ServerCheck::BadRequests, "malformed JSON to /v1/completions answered 200"),
        (
            Fault::NoContextLimit,
            ServerCheck::Limits,
            "a prompt just past the context to /v1/completions answered 200",
        ),
    ];
    for (fault, c, says) in cases {
        let v = verdict(fault, c);
        assert_eq!(v.outcome, Outcome::Falsified, "{fault:?} passed {}: {}", c.slug(), v.reason);
        assert!(v.reason.starts_with(c.slug()) && v.reason.contains(says), "{fault:?}: {}", v.reason);
    }
}

#[test]
fn a_server_that_is_not_there_fails_without_hanging() {
    let client = Client::new("http://127.0.0.1:9");
    let started = Instant::now();
    let v = check(ServerCheck::Health, &client, "m", &probe(), Instant::now() + Duration::from_secs(5));
    assert_eq!(v.outcome, Outcome::Falsified, "{}", v.reason);
    assert!(started.elapsed() < Duration::from_secs(5));
}
