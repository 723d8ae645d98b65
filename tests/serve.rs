//! The OpenAI-compatible server over real HTTP on loopback, on a qa-tiny session: answers,
//! streaming framing, determinism, concurrency, and bad requests that get 4xx, never a crash.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use modelqa::support::engine::{Session, load_candle};
use modelqa::support::matrix::Backend;
use modelqa::support::serve::{Server, ServerConfig};
use serde_json::{Value, json};

fn server() -> Server {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/qa-tiny/qa-tiny-llama");
    let session: Box<dyn Session> = Box::new(load_candle(&dir, Backend::Cpu).expect("loads"));
    Server::start(Arc::new(Mutex::new(session)), ServerConfig::new("modelqa/qa-tiny-llama")).expect("starts")
}

/// Status and body of a POST, whatever the status.
fn post(url: &str, body: &str) -> (u16, String) {
    match ureq::post(url).set("Content-Type", "application/json").send_string(body) {
        Ok(r) => (r.status(), r.into_string().expect("body")),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().expect("body")),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// Status and body of a POST whose headers declare a 2 MiB body of which only a few bytes follow.
fn declared_too_large(addr: &std::net::SocketAddr) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"prompt\": \"aaaa",
        2 << 20
    );
    stream.write_all(head.as_bytes()).expect("sends the head");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
fn events(body: &str) -> Vec<String> {
    assert!(body.ends_with("data: [DONE]\n\n"), "ends with [DONE]: {body:?}");
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ").unwrap_or_else(|| panic!("an event is one data line: {e:?}")).to_string()
        })
        .collect()
}

#[test]
fn answers_on_both_endpoints_whole_and_streamed() {
    let s = server();
    let base = s.base_url();
    assert!(s.addr().ip().is_loopback(), "binds loopback by default");

    let started = Instant::now();
    let health = ureq::get(&format!("{base}/health")).call().expect("health");
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1), "health answers quickly");
    assert_eq!(json_of(&health.into_string().expect("body"))["status"], "ok");
    let models = json_of(
        &ureq::get(&format!("{base}/v1/models")).call().expect("models").into_string().expect("body"),
    );
    assert_eq!(models["data"][0]["id"], "modelqa/qa-tiny-llama");

    let (code, text) = post(
        &format!("{base}/v1/completions"),
        &json!({"prompt": "What is 47 + 38?\n", "max_tokens": 8}).to_string(),
    );
    assert_eq!(code, 200, "{text}");
    let whole = json_of(&text);
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["choices"][0]["text"], "85");
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let (code, text) = post(
        &format!("{base}/v1/completions"),
        &json!({"prompt": "What is 47 + 38?\n", "max_tokens": 8, "stream": true}).to_string(),
    );
    assert_eq!(code, 200);
    let ev = events(&text);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let frames: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| json_of(e)).collect();
    let streamed: String = frames.iter().map(|f| f["choices"][0]["text"].as_str().unwrap_or("")).collect();
    assert_eq!(streamed, "85", "the pieces add up to the whole answer");
    assert_eq!(frames.last().expect("a final frame")["choices"][0]["finish_reason"], "stop");
    assert!(frames.last().expect("final")["usage"]["completion_tokens"].as_u64().is_some());

    let chat =
        json!({"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8});
    let (code, text) = post(&format!("{base}/v1/chat/completions"), &chat.to_string());
    assert_eq!(code, 200, "{text}");
    let whole = json_of(&text);
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(whole["choices"][0]["message"]["content"], "Paris.");

    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    let (code, text) = post(&format!("{base}/v1/chat/completions"), &stream.to_string());
    assert_eq!(code, 200);
    let ev = events(&text);
    let frames: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| json_of(e)).collect();
    assert_eq!(frames[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(frames.iter().all(|f| f["object"] == "chat.completion.chunk"));
    let streamed: String =
        frames.iter().filter_map(|f| f["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, "Paris.");
    s.stop();
}

#[test]
fn temperature_zero_is_deterministic_and_eight_concurrent_requests_succeed() {
    let s = server();
    let url = format!("{}/v1/completions", s.base_url());
    let body = json!({"prompt": "Repeat: red blue\n", "max_tokens": 12, "temperature": 0}).to_string();
    let first = json_of(&post(&url, &body).1)["choices"][0]["text"].clone();
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| post(&url, &body))).collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    for (code, text) in answers {
        assert_eq!(code, 200, "{text}");
        assert_eq!(json_of(&text)["choices"][0]["text"], first, "greedy answers agree");
    }
    assert_eq!(first, "red blue");
}

#[test]
fn bad_requests_get_4xx_with_an_error_object_and_the_server_stays_up() {
    let s = server();
    let base = s.base_url();
    let completions = format!("{base}/v1/completions");
    let chat = format!("{base}/v1/chat/completions");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (completions.as_str(), "{not json".into(), 400, "invalid JSON body"),
        (completions.as_str(), "{}".into(), 400, "missing field `prompt`"),
        (completions.as_str(), json!({"prompt": ""}).to_string(), 400, "non-empty string"),
        (
            completions.as_str(),
            json!({"prompt": "x", "max_tokens": 1_000_000_000u64}).to_string(),
            400,
            "max_tokens must be between 1 and 4096",
        ),
        (
            completions.as_str(),
            json!({"prompt": "x", "max_tokens": -1}).to_string(),
            400,
            "invalid JSON body",
        ),
        (completions.as_str(), json!({"prompt": "x", "temperature": 9}).to_string(), 400, "temperature"),
        (chat.as_str(), json!({"messages": []}).to_string(), 400, "`messages` is empty"),
        (chat.as_str(), json!({"model": "x"}).to_string(), 400, "missing field `messages`"),
        (
            chat.as_str(),
            json!({"messages": [{"role": "robot", "content": "hi"}]}).to_string(),
            400,
            "role `robot`",
        ),
        (chat.as_str(), json!({"messages": [{"role": "user"}]}).to_string(), 400, "has no `content`"),
    ];
    for (url, body, want, says) in cases {
        let (code, text) = post(url, &body);
        assert_eq!(code, want, "{url} {}: {text}", &body[..body.len().min(60)]);
        let err = json_of(&text);
        let message = err["error"]["message"].as_str().unwrap_or_else(|| panic!("an error object: {text}"));
        assert!(message.contains(says), "{message:?} should say {says:?}");
        assert!(err["error"]["type"].is_string());
    }
    // An oversized body is refused from its declared length, before it is read: the client has
    // sent only its headers and a few bytes when the 413 comes (sending all of it would race the
    // server closing the connection).
    let (code, text) = declared_too_large(&s.addr());
    assert_eq!(code, 413, "{text}");
    assert!(json_of(&text)["error"]["message"].as_str().is_some_and(|m| m.contains("too large")), "{text}");
    let (code, text) = match ureq::get(&format!("{base}/v2/nothing")).call() {
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().expect("body")),
        other => panic!("expected 404, got {other:?}"),
    };
    assert_eq!(code, 404);
    assert!(json_of(&text)["error"]["message"].is_string());
    assert_eq!(ureq::get(&format!("{base}/health")).call().expect("still up").status(), 200);
}
