//! A request body turned into a [`Job`] the model can run, or a [`Refusal`] that names the field
//! at fault: JSON shape, the fields this server does not implement, the prompt or conversation,
//! sampling, `stop`, and a prompt that cannot fit the model's context. Nothing here waits, locks
//! the session or touches the network, so the `server-request` fuzz target drives it whole.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::chat::{ChatTemplate, Guarded};
use crate::engine::{PromptGauge, Sampling};
use crate::playbook::MessageSpec;
use crate::playbook::spec::Role;

/// The most stop sequences a request may give, as OpenAI allows.
pub(crate) const MAX_STOP_SEQUENCES: usize = 4;

/// An OpenAI-style error response.
pub(crate) fn error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Response {
    Refusal { status, kind, message: message.into(), param: None, code: None }.into_response()
}

/// A request the server refuses, turned into its response only at the edge.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    /// The request field at fault, as OpenAI's `param`.
    pub(crate) param: Option<String>,
    /// OpenAI's machine-readable `code` (`context_length_exceeded`, `invalid_api_key`).
    pub(crate) code: Option<&'static str>,
}

impl Refusal {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    fn of(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    fn coded(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

/// Which endpoint a request came to, and so the shape of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Completion,
    Chat,
}

/// What a request may ask for on this server, and what its prompt is measured against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub(crate) max_tokens_limit: u32,
    pub(crate) template: Option<&'a ChatTemplate>,
    pub(crate) gauge: Option<&'a PromptGauge>,
    /// The model's control-token spellings, kept as text in chat messages ([`Guarded`]).
    pub(crate) control: &'a [String],
}

/// A request that passed every check the model is not needed for.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) shape: Shape,
    pub(crate) prompt: String,
    /// Where a message's text spells a control token: encoded as text. A completion prompt is
    /// the client's own layout and has none.
    pub(crate) literal: Vec<std::ops::Range<usize>>,
    pub(crate) max_tokens: u32,
    pub(crate) sampling: Sampling,
    /// Output ends before the first of these (none: it runs to its own end).
    pub(crate) stop: Vec<String>,
    pub(crate) stream: bool,
    /// Log probabilities asked for: each token's, and this many alternatives per token.
    pub(crate) logprobs: Option<usize>,
}

/// The request fields both endpoints share; any other field lands in `rest`, where the ones this
/// server does not implement are looked for.
#[derive(Debug, Deserialize)]
struct Common {
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stop: Value,
    #[serde(flatten)]
    rest: Map<String, Value>,
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

/// An OpenAI field this server does not implement: the values that ask for nothing more than it
/// does (clients send defaults, and those pass), and what the server does instead.
struct Unsupported {
    field: &'static str,
    harmless: fn(&Value) -> bool,
    instead: &'static str,
}

fn absent_or_false(v: &Value) -> bool {
    v.is_null() || v == &Value::Bool(false)
}

fn absent_or_zero(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(0.0)
}

fn absent_or_one(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(1.0)
}

fn absent_or_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn absent_or_none(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("none")
}

const UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        field: "n",
        harmless: absent_or_one,
        instead: "answers one choice per request, so `n` must be 1",
    },
    Unsupported {
        field: "best_of",
        harmless: absent_or_one,
        instead: "generates one candidate per request, so `best_of` must be 1",
    },
    Unsupported { field: "echo", harmless: absent_or_false, instead: "never echoes the prompt" },
    Unsupported { field: "suffix", harmless: absent_or_empty, instead: "does not insert text (no `suffix`)" },
    Unsupported { field: "logit_bias", harmless: absent_or_empty, instead: "applies no logit bias" },
    Unsupported {
        field: "response_format",
        harmless: |v| v.is_null() || v.get("type").and_then(Value::as_str) == Some("text"),
        instead: "answers in plain text only (`{\"type\": \"text\"}`): no JSON mode or schema",
    },
    Unsupported { field: "tools", harmless: absent_or_empty, instead: "calls no tools" },
    Unsupported { field: "tool_choice", harmless: absent_or_none, instead: "calls no tools" },
    Unsupported { field: "functions", harmless: absent_or_empty, instead: "calls no functions" },
    Unsupported { field: "function_call", harmless: absent_or_none, instead: "calls no functions" },
    Unsupported {
        field: "presence_penalty",
        harmless: absent_or_zero,
        instead: "applies no presence or frequency penalty",
    },
    Unsupported {
        field: "frequency_penalty",
        harmless: absent_or_zero,
        instead: "applies no presence or frequency penalty",
    },
    Unsupported {
        field: "modalities",
        harmless: |v| v.is_null() || v == &json!(["text"]),
        instead: "answers in text only",
    },
    Unsupported { field: "audio", harmless: Value::is_null, instead: "answers in text only" },
    Unsupported { field: "prediction", harmless: Value::is_null, instead: "takes no predicted output" },
];

/// A value as a message quotes it: short, on one line.
fn quoted(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn refuse_unsupported(rest: &Map<String, Value>) -> Result<(), Refusal> {
    for u in UNSUPPORTED {
        if let Some(v) = rest.get(u.field)
            && !(u.harmless)(v)
        {
            return Err(Refusal::bad(format!(
                "`{}` is not supported: this server {} (got {})",
                u.field,
                u.instead,
                quoted(v)
            ))
            .of(u.field));
        }
    }
    Ok(())
}

/// `stop` as a list: absent, a string, or an array of up to four non-empty strings.
fn stop_sequences(stop: &Value) -> Result<Vec<String>, Refusal> {
    let list = match stop {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => {
            if items.len() > MAX_STOP_SEQUENCES {
                return Err(Refusal::bad(format!(
                    "`stop` has {} sequences, at most {MAX_STOP_SEQUENCES} are allowed",
                    items.len()
                ))
                .of("stop"));
            }
            let mut list = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Some(s) = item.as_str() else {
                    return Err(
                        Refusal::bad(format!("stop[{i}] must be a string, got {}", quoted(item))).of("stop")
                    );
                };
                list.push(s.to_string());
            }
            list
        }
        other => {
            return Err(Refusal::bad(format!(
                "`stop` must be a string or an array of strings, got {}",
                quoted(other)
            ))
            .of("stop"));
        }
    };
    if list.iter().any(String::is_empty) {
        return Err(
            Refusal::bad("`stop` holds an empty string, which would stop before any output").of("stop")
        );
    }
    Ok(list)
}

/// Sampling and limits from the shared fields, or why they are unacceptable.
fn settings(common: &Common, rules: &Rules<'_>) -> Result<(u32, Sampling), Refusal> {
    let limit = rules.max_tokens_limit;
    let max_tokens = common.max_tokens.unwrap_or(16);
    if max_tokens == 0 || max_tokens > limit {
        return Err(Refusal::bad(format!("max_tokens must be between 1 and {limit}, got {max_tokens}"))
            .of("max_tokens"));
    }
    let temperature = common.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(
            Refusal::bad(format!("temperature must be between 0 and 2, got {temperature}")).of("temperature")
        );
    }
    if let Some(p) = common.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(Refusal::bad(format!("top_p must be in (0, 1], got {p}")).of("top_p"));
    }
    // Without a seed, sampling still has one (0): every answer of this server can be replayed.
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Seeded { temperature, top_p: common.top_p, top_k: None, seed: common.seed.unwrap_or(0) }
    };
    Ok((max_tokens, sampling))
}

/// Refuses, from its length alone, a prompt that cannot fit the context: no tokenizer runs and
/// the session is not waited for.
fn refuse_long_bytes(prompt: &str, gauge: Option<&PromptGauge>, param: &str) -> Result<(), Refusal> {
    let Some(gauge) = gauge else { return Ok(()) };
    let (bytes, max) = (prompt.len(), gauge.max_prompt_bytes());
    if bytes > max {
        return Err(Refusal::bad(format!(
            "the prompt is {bytes} bytes, more than the model's context of {} tokens can hold \
             (at most {max} bytes); shorten it",
            gauge.context()
        ))
        .of(param)
        .coded("context_length_exceeded"));
    }
    Ok(())
}

/// Refuses a prompt whose tokens fill the model's context. Tokenizing costs time in proportion to
/// the prompt, so the server runs this off its event loop, before it queues on the session.
pub(crate) fn refuse_long_tokens(job: &Job, gauge: &PromptGauge) -> Result<(), Refusal> {
    let param = match job.shape {
        Shape::Completion => "prompt",
        Shape::Chat => "messages",
    };
    let tokens = gauge.count(&job.prompt).map_err(|e| Refusal::bad(e.to_string()).of(param))?;
    let context = gauge.context();
    if tokens >= context {
        return Err(Refusal::bad(format!(
            "the prompt is {tokens} tokens, the model's context is {context}, which leaves no room to \
             answer; shorten it"
        ))
        .of(param)
        .coded("context_length_exceeded"));
    }
    Ok(())
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| Refusal::bad(format!("invalid JSON body: {e}")))
}

/// The request `body` sent to the `shape` endpoint as a job, or why it is refused.
pub(crate) fn parse(shape: Shape, body: &[u8], rules: &Rules<'_>) -> Result<Job, Refusal> {
    let (prompt, common, param) = match shape {
        Shape::Completion => {
            let req: CompletionRequest = json_body(body)?;
            refuse_unsupported(&req.common.rest)?;
            (Guarded::plain(completion_prompt(req.prompt)?), req.common, "prompt")
        }
        Shape::Chat => {
            let req: ChatRequest = json_body(body)?;
            refuse_unsupported(&req.common.rest)?;
            (chat_prompt(req.messages, rules.template, rules.control)?, req.common, "messages")
        }
    };
    let Guarded { text: prompt, literal } = prompt;
    refuse_long_bytes(&prompt, rules.gauge, param)?;
    let (max_tokens, sampling) = settings(&common, rules)?;
    let stop = stop_sequences(&common.stop)?;
    let logprobs = logprobs(shape, &common)?;
    Ok(Job { shape, prompt, literal, max_tokens, sampling, stop, stream: common.stream, logprobs })
}

/// The most alternatives a completion's `logprobs` may ask for, as OpenAI allows.
pub(crate) const MAX_COMPLETION_LOGPROBS: u64 = 5;

/// The log probabilities asked for, as each endpoint spells them: chat `logprobs: true` with
/// `top_logprobs: N` (0–20), completions `logprobs: N` (0–5). Whole answers only: a streamed
/// answer's pieces are characters, not tokens.
fn logprobs(shape: Shape, common: &Common) -> Result<Option<usize>, Refusal> {
    let given = |field: &str| common.rest.get(field).filter(|v| !v.is_null());
    let count = |field: &str, v: &Value, max: u64| match v.as_u64() {
        Some(n) if n <= max => Ok(n as usize),
        _ => Err(Refusal::bad(format!("`{field}` must be an integer from 0 to {max}, got {}", quoted(v)))
            .of(field)),
    };
    let asked = match shape {
        Shape::Chat => {
            let top = given("top_logprobs")
                .map(|v| count("top_logprobs", v, crate::engine::MAX_TOP_LOGPROBS as u64))
                .transpose()?;
            match given("logprobs") {
                None | Some(Value::Bool(false)) if top.unwrap_or(0) > 0 => {
                    return Err(Refusal::bad("`top_logprobs` needs `logprobs: true`").of("top_logprobs"));
                }
                None | Some(Value::Bool(false)) => None,
                Some(Value::Bool(true)) => Some(top.unwrap_or(0)),
                Some(other) => {
                    return Err(Refusal::bad(format!(
                        "`logprobs` must be true or false, got {}",
                        quoted(other)
                    ))
                    .of("logprobs"));
                }
            }
        }
        Shape::Completion => {
            if given("top_logprobs").is_some_and(|v| !absent_or_zero(v)) {
                return Err(Refusal::bad(
                    "`top_logprobs` is a chat completions field; completions ask with `logprobs: N`",
                )
                .of("top_logprobs"));
            }
            match given("logprobs") {
                None | Some(Value::Bool(false)) => None,
                Some(v) => Some(count("logprobs", v, MAX_COMPLETION_LOGPROBS)?),
            }
        }
    };
    if asked.is_some() && common.stream {
        return Err(Refusal::bad(
            "`logprobs` with `stream` is not supported: this server reports log probabilities on whole answers",
        )
        .of("logprobs"));
    }
    Ok(asked)
}

fn completion_prompt(prompt: Option<Value>) -> Result<String, Refusal> {
    let bad = |m: &str| Refusal::bad(m).of("prompt");
    match prompt {
        Some(Value::String(p)) if !p.is_empty() => Ok(p),
        Some(Value::Array(a)) if a.len() > 1 => Err(bad("one prompt per request")),
        Some(Value::Array(mut a)) if a.len() == 1 => match a.pop() {
            Some(Value::String(p)) if !p.is_empty() => Ok(p),
            _ => Err(bad("`prompt` must be a non-empty string")),
        },
        Some(_) => Err(bad("`prompt` must be a non-empty string")),
        None => Err(bad("missing field `prompt`")),
    }
}

fn chat_prompt(
    messages: Option<Vec<ChatMessage>>,
    template: Option<&ChatTemplate>,
    control: &[String],
) -> Result<Guarded, Refusal> {
    let bad = |m: String| Refusal::bad(m).of("messages");
    let Some(messages) = messages else { return Err(bad("missing field `messages`".into())) };
    if messages.is_empty() {
        return Err(bad("`messages` is empty: a conversation needs at least one message".into()));
    }
    let mut turns = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(bad(format!("messages[{i}].role `{other}` is not system, user or assistant")));
            }
        };
        let Some(content) = m.content else { return Err(bad(format!("messages[{i}] has no `content`"))) };
        turns.push(MessageSpec { role, content });
    }
    let Some(template) = template else {
        return Err(bad("this model ships no chat template, so it cannot serve chat completions".into()));
    };
    if crate::config::planted_injection() == Some(crate::config::PlantedInjection::Server) {
        return template.render(&turns).map(Guarded::plain).map_err(|e| bad(e.to_string()));
    }
    template.render_guarded(&turns, control).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
