//! Request checks, one line a case: what passes, and what is refused with which field named.

use serde_json::json;

use super::*;

fn template() -> ChatTemplate {
    ChatTemplate {
        source: "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>".into(),
        bos_token: String::new(),
        eos_token: String::new(),
    }
}

/// One token per byte, a context of 64.
fn gauge() -> PromptGauge {
    PromptGauge::new(64, 1, |p: &str| Ok(p.len()))
}

fn run(shape: Shape, body: &Value) -> Result<Job, Refusal> {
    let (template, gauge) = (template(), gauge());
    let rules =
        Rules { max_tokens_limit: 4096, template: Some(&template), gauge: Some(&gauge), control: &[] };
    let job = parse(shape, body.to_string().as_bytes(), &rules)?;
    refuse_long_tokens(&job, &gauge)?;
    Ok(job)
}

/// `body` to `shape` is refused with a 400 naming `param`, its message saying `says`.
fn refused(shape: Shape, body: Value, param: Option<&str>, says: &str) {
    match run(shape, &body) {
        Ok(job) => panic!("{body} was accepted: {job:?}"),
        Err(r) => {
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(r.param.as_deref(), param, "{body}: {}", r.message);
            assert!(r.message.contains(says), "{body}: {:?} should say {says:?}", r.message);
        }
    }
}

fn accepted(shape: Shape, body: Value) -> Job {
    run(shape, &body).unwrap_or_else(|r| panic!("{body} was refused: {}", r.message))
}

#[test]
fn every_unsupported_field_is_refused_by_name_and_its_default_passes() {
    let cases = [
        ("n", json!(2), json!(1)),
        ("best_of", json!(3), json!(1)),
        ("echo", json!(true), json!(false)),
        ("suffix", json!("tail"), json!("")),
        ("logit_bias", json!({"50256": -100}), json!({})),
        ("response_format", json!({"type": "json_object"}), json!({"type": "text"})),
        ("tools", json!([{"type": "function", "function": {"name": "f"}}]), json!([])),
        ("tool_choice", json!("auto"), json!("none")),
        ("functions", json!([{"name": "f"}]), json!(null)),
        ("function_call", json!("auto"), json!("none")),
        ("presence_penalty", json!(0.5), json!(0)),
        ("frequency_penalty", json!(-1), json!(0.0)),
        ("modalities", json!(["text", "audio"]), json!(["text"])),
        ("audio", json!({"voice": "x"}), json!(null)),
        ("prediction", json!({"type": "content"}), json!(null)),
    ];
    for (field, asks, default) in cases {
        for (shape, mut body) in [
            (Shape::Completion, json!({"prompt": "hi"})),
            (Shape::Chat, json!({"messages": [{"role": "user", "content": "hi"}]})),
        ] {
            body[field] = default.clone();
            accepted(shape, body.clone());
            body[field] = asks.clone();
            refused(shape, body, Some(field), &format!("`{field}` is not supported"));
        }
    }
    // Fields this server has no use for but that ask for nothing pass (clients send them).
    accepted(
        Shape::Completion,
        json!({"prompt": "hi", "model": "x", "user": "u", "stream_options": {"include_usage": true}}),
    );
}

#[test]
fn logprobs_are_asked_as_each_endpoint_spells_them_on_whole_answers_only() {
    let chat = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        body
    };
    let completion = |extra: Value| {
        let mut body = json!({"prompt": "hi"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        body
    };
    for (body, want) in [
        (chat(json!({})), None),
        (chat(json!({"logprobs": false, "top_logprobs": 0})), None),
        (chat(json!({"logprobs": true})), Some(0)),
        (chat(json!({"logprobs": true, "top_logprobs": 20})), Some(20)),
        (chat(json!({"logprobs": null, "top_logprobs": null})), None),
    ] {
        assert_eq!(accepted(Shape::Chat, body.clone()).logprobs, want, "{body}");
    }
    for (body, want) in [
        (completion(json!({})), None),
        (completion(json!({"logprobs": null})), None),
        (completion(json!({"logprobs": 0})), Some(0)),
        (completion(json!({"logprobs": 5})), Some(5)),
    ] {
        assert_eq!(accepted(Shape::Completion, body.clone()).logprobs, want, "{body}");
    }
    let top = Some("top_logprobs");
    refused(Shape::Chat, chat(json!({"top_logprobs": 3})), top, "needs `logprobs: true`");
    refused(Shape::Chat, chat(json!({"logprobs": true, "top_logprobs": 21})), top, "from 0 to 20");
    refused(Shape::Chat, chat(json!({"logprobs": 5})), Some("logprobs"), "true or false");
    refused(Shape::Completion, completion(json!({"logprobs": 6})), Some("logprobs"), "from 0 to 5");
    refused(Shape::Completion, completion(json!({"logprobs": -1})), Some("logprobs"), "from 0 to 5");
    refused(
        Shape::Completion,
        completion(json!({"top_logprobs": 2})),
        top,
        "completions ask with `logprobs: N`",
    );
    refused(
        Shape::Completion,
        completion(json!({"logprobs": 1, "stream": true})),
        Some("logprobs"),
        "whole answers",
    );
    refused(Shape::Chat, chat(json!({"logprobs": true, "stream": true})), Some("logprobs"), "whole answers");
    // Streaming without them is unchanged.
    assert!(accepted(Shape::Chat, chat(json!({"logprobs": false, "stream": true}))).stream);
}

#[test]
fn stop_is_a_string_or_up_to_four_non_empty_strings() {
    let completion = |stop: Value| json!({"prompt": "hi", "stop": stop});
    assert_eq!(accepted(Shape::Completion, completion(json!("\n"))).stop, ["\n"]);
    assert_eq!(accepted(Shape::Completion, completion(json!(["a", "b", "c", "d"]))).stop.len(), 4);
    assert!(accepted(Shape::Completion, completion(json!(null))).stop.is_empty());
    assert!(accepted(Shape::Completion, json!({"prompt": "hi"})).stop.is_empty());
    refused(Shape::Completion, completion(json!(["a", "b", "c", "d", "e"])), Some("stop"), "at most 4");
    refused(Shape::Completion, completion(json!("")), Some("stop"), "empty string");
    refused(Shape::Completion, completion(json!(["a", 7])), Some("stop"), "stop[1] must be a string");
    refused(
        Shape::Chat,
        json!({"messages": [{"role": "user", "content": "hi"}], "stop": 3}),
        Some("stop"),
        "a string",
    );
}

#[test]
fn seed_and_temperature_make_the_sampling() {
    let job = accepted(Shape::Completion, json!({"prompt": "hi", "temperature": 0.8, "seed": 7}));
    assert_eq!(job.sampling, Sampling::Seeded { temperature: 0.8, top_p: None, top_k: None, seed: 7 });
    let job = accepted(Shape::Completion, json!({"prompt": "hi", "temperature": 0.8}));
    assert!(matches!(job.sampling, Sampling::Seeded { seed: 0, .. }), "no seed is seed 0: replayable");
    assert_eq!(accepted(Shape::Completion, json!({"prompt": "hi", "seed": 7})).sampling, Sampling::Greedy);
    refused(Shape::Completion, json!({"prompt": "hi", "seed": -1}), None, "invalid JSON body");
}

#[test]
fn a_prompt_that_cannot_fit_the_context_is_refused_by_bytes_or_tokens() {
    // 63 tokens fit a context of 64 (one is left to answer); 64 do not.
    accepted(Shape::Completion, json!({"prompt": "a".repeat(63)}));
    refused(Shape::Completion, json!({"prompt": "a".repeat(64)}), Some("prompt"), "64 tokens");
    // Far past what the context can hold, the length alone refuses it (no tokenizer runs).
    refused(Shape::Completion, json!({"prompt": "a".repeat(1 << 20)}), Some("prompt"), "1048576 bytes");
    let long = json!({"messages": [{"role": "user", "content": "a".repeat(100)}]});
    refused(Shape::Chat, long, Some("messages"), "bytes");
    let r = run(Shape::Completion, &json!({"prompt": "a".repeat(64)})).expect_err("refused");
    assert_eq!(r.code, Some("context_length_exceeded"));
}

#[test]
fn malformed_requests_name_what_is_wrong() {
    refused(Shape::Completion, json!({}), Some("prompt"), "missing field `prompt`");
    refused(Shape::Completion, json!({"prompt": ["a", "b"]}), Some("prompt"), "one prompt");
    refused(Shape::Completion, json!({"prompt": [7]}), Some("prompt"), "non-empty string");
    refused(Shape::Completion, json!({"prompt": "x", "max_tokens": 0}), Some("max_tokens"), "between 1");
    refused(Shape::Completion, json!({"prompt": "x", "top_p": 0}), Some("top_p"), "(0, 1]");
    refused(Shape::Chat, json!({"messages": []}), Some("messages"), "is empty");
    refused(
        Shape::Chat,
        json!({"messages": [{"role": "bot", "content": "x"}]}),
        Some("messages"),
        "role `bot`",
    );
    assert_eq!(accepted(Shape::Completion, json!({"prompt": ["one"]})).prompt, "one");
    let chat = accepted(Shape::Chat, json!({"messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(chat.prompt, "<user>hi<assistant>");
}
