//! A scenario over real HTTP: the completions endpoint with the prompt as `run` lays it out and,
//! where the model has a chat template, the chat endpoint with the conversation; each whole and
//! streamed, each answer judged by the scenario's oracles.

use std::time::{Duration, Instant};

use crate::engine::client::{self, Endpoint};
use crate::engine::{EngineError, Finish, Generation};
use crate::journal::Metrics;
use crate::playbook::{Input, Scenario};
use crate::trial::{Finding, ServerPool, TrialEnv, judge, messages_of, render_run};
use crate::vocab::{Decider, Outcome};

/// One scenario in `serve`.
pub(crate) fn run(env: &TrialEnv<'_>, scenario: &Scenario) -> Finding {
    let client = match env.ctx.servers.client_for(env) {
        Ok(c) => c,
        Err(e) => return ServerPool::unavailable(&e),
    };
    let template = env.info.chat_template.as_ref();
    // A completion prompt is the client's layout: the server reads control tokens in it as such.
    let prompt = render_run(&env.spec.model, &scenario.input, template, &[]).text;
    let messages = messages_of(&scenario.input);
    // A server that lays conversations out itself gets a conversation only as one.
    let conversation_only = env.info.applies_chat_template && matches!(scenario.input, Input::Messages(_));
    let mut endpoints = if conversation_only { Vec::new() } else { vec![Endpoint::Completions] };
    if template.is_some() || env.info.applies_chat_template {
        endpoints.push(Endpoint::ChatCompletions);
    }
    let sampling = env.sampling();
    let mut metrics = Metrics::default();
    let mut first_output = None;
    for endpoint in endpoints {
        for stream in [false, true] {
            let label = format!("POST {}{}", endpoint.path(), if stream { " (stream)" } else { "" });
            let body =
                client::request_body(endpoint, &prompt, &messages, scenario.max_tokens, &sampling, stream);
            let reply = match client.request(endpoint, &body, env.deadline) {
                Ok(r) => r,
                Err(e) => {
                    let (outcome, decider) = if Instant::now() >= env.deadline {
                        (Outcome::Timeout, Decider::Timeout)
                    } else {
                        (Outcome::Falsified, Decider::Serve)
                    };
                    return Finding::new(outcome, decider, format!("{label}: {e}")).with_prompt(prompt);
                }
            };
            if endpoint == Endpoint::Completions {
                if stream {
                    metrics.time_to_first_token_ms = reply.first_text.map(|d| d.as_secs_f64() * 1e3);
                    if let (Some(n), Some(first)) = (reply.completion_tokens, reply.first_text)
                        && n > 1
                        && reply.latency > first
                    {
                        metrics.tokens_per_second =
                            Some((n - 1) as f64 / (reply.latency - first).as_secs_f64());
                    }
                } else {
                    metrics.prompt_tokens = reply.prompt_tokens.map(|n| n as usize);
                    metrics.tokens = reply.completion_tokens.map(|n| n as usize);
                }
            }
            let mut f = judge(scenario, scenario.input.question(), &reply.text);
            if !f.outcome.is_pass() {
                f.reason = format!("{label}: {}", f.reason);
                f.output = Some(reply.text);
                f.metrics = metrics;
                return f.with_prompt(prompt);
            }
            first_output.get_or_insert(reply.text);
        }
    }
    let mut f = Finding::new(
        Outcome::Corroborated,
        Decider::Oracles,
        "both endpoints, whole and streamed, answered and the oracles accepted every answer",
    );
    f.output = first_output;
    f.metrics = metrics;
    f.with_prompt(prompt)
}

/// A property case in `serve`: one non-streamed completion over HTTP. The reply carries text
/// and usage counts, not token ids or a first-token time, so its metrics say only that.
pub(crate) fn generate_over_http(
    env: &TrialEnv<'_>,
    scenario: &Scenario,
    prompt: &str,
) -> Result<(Generation, Metrics), EngineError> {
    let client =
        env.ctx.servers.client_for(env).map_err(|e| EngineError::inference_in("starting the server", e))?;
    let body =
        client::request_body(Endpoint::Completions, prompt, &[], scenario.max_tokens, &env.sampling(), false);
    let reply = client.request(Endpoint::Completions, &body, env.deadline).map_err(|e| {
        if Instant::now() >= env.deadline {
            EngineError::Timeout { tokens: 0, partial: String::new() }
        } else {
            EngineError::inference(e)
        }
    })?;
    let metrics = Metrics {
        prompt_tokens: reply.prompt_tokens.map(|n| n as usize),
        tokens: reply.completion_tokens.map(|n| n as usize),
        ..Metrics::default()
    };
    let generation = Generation {
        text: reply.text,
        tokens: Vec::new(),
        token_count: metrics.tokens,
        prompt_tokens: metrics.prompt_tokens.unwrap_or(0),
        finish: Finish::Eos,
        time_to_first_token: Duration::ZERO,
        duration: reply.latency,
        first_logits_finite: None,
        leaked_special_tokens: Vec::new(),
    };
    Ok((generation, metrics))
}
