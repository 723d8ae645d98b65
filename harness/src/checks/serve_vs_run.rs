//! `diff::serve-vs-run`: every scenario the tier serves is answered in process and by the cell's
//! own server over HTTP, first one request at a time, then eight in flight at once; each served
//! answer must equal the in-process one token for token or, at the first token where they part,
//! each side's token must be in the other's top 5 there. MLPerf's TEST01 checks a served answer
//! against the offline one per sample; this does it per cell, at two concurrency levels.
//!
//! Both sides report each step's token and top 5 as the server's `logprobs` do: the in-process
//! side through [`crate::engine::Session::generate_scored`], the served side through the very
//! same engine behind HTTP, so a token has one name on both. Greedy, the request the `serve`
//! modality sends (`max_tokens` of the scenario, temperature 0): a prompt to
//! `/v1/completions` laid out as `run` lays it out, a conversation to `/v1/chat/completions`
//! where the model has a chat template that renders it.
//!
//! Never judges the text against an oracle: the scenario trials do that. Streamed answers are
//! not compared (the server reports log probabilities on whole answers only).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::engine::client::{self, ClientError, Endpoint, Reply};
use crate::engine::{Finish, Flow, GenerateRequest, Generation, Sampling, ScoredStep};
use crate::matrix::Modality;
use crate::playbook::Input;
use crate::trial::{Finding, TrialEnv, render_run};
use crate::vocab::{Decider, Outcome};

/// How many most likely tokens the rule looks in, at the first divergence.
pub(crate) const TOP_K: usize = 5;
/// Requests in flight at once in the second round.
pub(crate) const CONCURRENCY: usize = 8;

/// An answer token by token, with how it ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub text: String,
    /// One per generated token.
    pub steps: Vec<ScoredStep>,
    pub end: End,
}

/// How an answer ended after its last step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum End {
    /// At an end-of-sequence token; its step where the side reports it (the in-process side
    /// does, a server reports no step for a token that adds no text).
    Eos(Option<ScoredStep>),
    /// At `max_tokens` (or the context).
    Length,
}

/// What comparing a served answer with the in-process one found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Agreement {
    Identical,
    /// They part at token `at`, where each side's token is in the other's top k; `unseen` says
    /// what the served side did not show there (a server reports no distribution at its end).
    Parted {
        at: usize,
        unseen: Option<&'static str>,
    },
    /// They part at token `at` and the rule does not hold, or the texts differ.
    Apart {
        at: usize,
        why: String,
    },
}

/// Compares a served answer with the in-process one: identical token for token (and in text),
/// or at the first divergence each side's token in the other's top `k`.
pub(crate) fn compare(local: &Answer, served: &Answer, k: usize) -> Agreement {
    let names = |s: &ScoredStep| s.top.iter().take(k).map(|t| t.token.clone()).collect::<Vec<_>>();
    let at = (0..)
        .find(|&i| match (local.steps.get(i), served.steps.get(i)) {
            (Some(a), Some(b)) => a.chosen.token != b.chosen.token,
            _ => true,
        })
        .unwrap_or_default();
    let apart = |why: String| Agreement::Apart { at, why };
    match (local.steps.get(at), served.steps.get(at)) {
        (None, None) if local.text == served.text => Agreement::Identical,
        (None, None) => apart(format!(
            "the same {at} tokens, but the served text {:?} is not the in-process text {:?}",
            served.text, local.text
        )),
        (Some(l), Some(s)) => {
            if !names(l).contains(&s.chosen.token) {
                return apart(format!(
                    "the served token {:?} is not in the in-process top {k} {:?}",
                    s.chosen.token,
                    names(l)
                ));
            }
            if !names(s).contains(&l.chosen.token) {
                return apart(format!(
                    "the in-process token {:?} is not in the served top {k} {:?}",
                    l.chosen.token,
                    names(s)
                ));
            }
            Agreement::Parted { at, unseen: None }
        }
        // The in-process answer ended here and the served one went on.
        (None, Some(s)) => match &local.end {
            End::Eos(Some(e)) if !names(e).contains(&s.chosen.token) => apart(format!(
                "the in-process answer ends here; the served token {:?} is not in its top {k} {:?}",
                s.chosen.token,
                names(e)
            )),
            End::Eos(Some(e)) if !names(s).contains(&e.chosen.token) => apart(format!(
                "the in-process answer ends here ({:?}), which is not in the served top {k} {:?}",
                e.chosen.token,
                names(s)
            )),
            End::Eos(Some(_)) => Agreement::Parted { at, unseen: None },
            End::Eos(None) => apart("the in-process answer ends here with no scores to judge by".into()),
            End::Length => {
                apart(format!("the served answer goes on past the {at} tokens the request allows"))
            }
        },
        // The served answer ended here and the in-process one went on.
        (Some(l), None) => match &served.end {
            End::Eos(_) if !l.top.iter().take(k).any(|t| t.ends) => apart(format!(
                "the served answer ends here, and no end-of-sequence token is in the in-process top {k} {:?}",
                names(l)
            )),
            End::Eos(Some(e)) if !names(e).contains(&l.chosen.token) => apart(format!(
                "the served answer ends here; the in-process token {:?} is not in its top {k} {:?}",
                l.chosen.token,
                names(e)
            )),
            End::Eos(Some(_)) => Agreement::Parted { at, unseen: None },
            End::Eos(None) => Agreement::Parted {
                at,
                unseen: Some("the server reports no distribution at its end of sequence"),
            },
            End::Length => apart(format!("the served answer stops at its length limit after {at} tokens")),
        },
    }
}

/// The in-process answer of a scored generation.
fn local_answer(g: Generation, mut steps: Vec<ScoredStep>) -> Answer {
    let eos = steps.last().filter(|s| s.chosen.ends).cloned();
    steps.retain(|s| !s.chosen.ends);
    let end = match g.finish {
        Finish::Eos => End::Eos(eos),
        Finish::Length | Finish::Stopped => End::Length,
    };
    Answer { text: g.text, steps, end }
}

/// The served answer of a reply that carried its log probabilities.
pub(crate) fn served_answer(reply: Reply) -> Option<Answer> {
    let end = match reply.finish_reason.as_deref() {
        Some("length") => End::Length,
        _ => End::Eos(None),
    };
    Some(Answer { steps: reply.logprobs?, text: reply.text, end })
}

/// One scenario, as sent both ways.
struct Sample {
    name: String,
    /// The prompt the in-process side generates from (and the server lays out alike).
    prompt: String,
    /// Its user text spelled like control tokens, which both sides read as text.
    literal: Vec<std::ops::Range<usize>>,
    max_tokens: u32,
    endpoint: Endpoint,
    body: Value,
}

/// The scenarios the tier serves, each with its request.
fn samples(env: &TrialEnv<'_>) -> Vec<Sample> {
    let template = env.info.chat_template.as_ref();
    env.spec
        .scenarios
        .iter()
        .filter(|s| s.property.is_none() && s.runs_in(Modality::Serve))
        .map(|s| {
            let guarded = render_run(&env.spec.model, &s.input, template, &env.info.control_tokens);
            let (endpoint, messages) = match &s.input {
                Input::Messages(m) if template.is_some_and(|t| t.render(m).is_ok()) => {
                    (Endpoint::ChatCompletions, m.clone())
                }
                _ => (Endpoint::Completions, Vec::new()),
            };
            // The server guards message text as run does; a completion prompt is the client's
            // layout, read as it is, so run reads it the same way.
            let (prompt, literal) = match endpoint {
                Endpoint::ChatCompletions => (guarded.text, guarded.literal),
                Endpoint::Completions => {
                    (render_run(&env.spec.model, &s.input, template, &[]).text, Vec::new())
                }
            };
            let mut body =
                client::request_body(endpoint, &prompt, &messages, s.max_tokens, &Sampling::Greedy, false);
            client::ask_logprobs(endpoint, &mut body, TOP_K);
            Sample { name: s.name.clone(), prompt, literal, max_tokens: s.max_tokens, endpoint, body }
        })
        .collect()
}

/// What one served answer came to.
struct Judged {
    concurrency: usize,
    sample: usize,
    agreement: Result<Agreement, String>,
    served_text: Option<String>,
}

/// The trial: the in-process answers, then the served ones at each concurrency level.
pub(crate) fn run(env: &TrialEnv<'_>) -> Finding {
    let samples = samples(env);
    let mut local = Vec::with_capacity(samples.len());
    for s in &samples {
        let request = GenerateRequest::greedy(&s.prompt, s.max_tokens, env.deadline).with_literal(&s.literal);
        let scored = env.session.lock().unwrap_or_else(|p| p.into_inner()).generate_scored(
            &request,
            TOP_K,
            &mut |_| Flow::Continue,
        );
        match scored {
            Ok((g, steps)) => local.push(local_answer(g, steps)),
            Err(e) => {
                let what = format!("scenario {} in process", s.name);
                return Finding::from_engine_error(e, Decider::Comp, &what, env.timeout())
                    .with_prompt(s.prompt.clone());
            }
        }
    }
    let client = match env.ctx.servers.client_for(env) {
        Ok(c) => c,
        Err(e) => {
            return Finding::new(
                Outcome::Falsified,
                Decider::Comp,
                format!("failed to start the server: {e}"),
            );
        }
    };
    let ask = |i: usize| client.request(samples[i].endpoint, &samples[i].body, env.deadline);
    let mut judged = Vec::new();
    for level in [1, CONCURRENCY] {
        let order: Vec<usize> =
            if level == 1 { (0..samples.len()).collect() } else { cycled(samples.len(), level) };
        for (i, reply) in serve(&order, level, &ask) {
            if Instant::now() >= env.deadline {
                return Finding::new(
                    Outcome::Timeout,
                    Decider::Timeout,
                    format!("the served answers passed the {}s timeout", env.timeout().as_secs_f64()),
                );
            }
            judged.push(judge(&local[i], reply, level, i));
        }
    }
    verdict(&samples, &judged)
}

/// `n` samples cycled to at least `level` requests, so `level` are in flight even with few.
fn cycled(n: usize, level: usize) -> Vec<usize> {
    (0..n.max(level)).map(|i| i % n.max(1)).collect()
}

/// What one request came to: the sample it asked.
pub(crate) type Served = (usize, Result<Reply, ClientError>);

/// Sends the samples of `order`, `level` at a time: `level` workers start together and each
/// takes the next sample until none is left. Answers come back in `order`'s order.
pub(crate) fn serve(
    order: &[usize],
    level: usize,
    ask: &(dyn Fn(usize) -> Result<Reply, ClientError> + Sync),
) -> Vec<Served> {
    let next = AtomicUsize::new(0);
    // Each with its place in `order`.
    let replies: Mutex<Vec<(usize, Served)>> = Mutex::new(Vec::new());
    let start = Barrier::new(level);
    std::thread::scope(|scope| {
        for _ in 0..level {
            scope.spawn(|| {
                start.wait();
                loop {
                    let at = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&i) = order.get(at) else { break };
                    let reply = ask(i);
                    replies.lock().unwrap_or_else(|p| p.into_inner()).push((at, (i, reply)));
                }
            });
        }
    });
    let mut replies = replies.into_inner().unwrap_or_else(|p| p.into_inner());
    replies.sort_by_key(|(at, _)| *at);
    replies.into_iter().map(|(_, served)| served).collect()
}

fn judge(local: &Answer, reply: Result<Reply, ClientError>, concurrency: usize, sample: usize) -> Judged {
    let judged = |agreement, served_text| Judged { concurrency, sample, agreement, served_text };
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return judged(Err(format!("the request failed: {e}")), None),
    };
    let text = reply.text.clone();
    match served_answer(reply) {
        Some(served) => judged(Ok(compare(local, &served, TOP_K)), Some(text)),
        None => judged(Err("the server answered without the log probabilities asked for".into()), Some(text)),
    }
}

/// Where-they-part entries a passing reason lists before it counts the rest.
const LISTED: usize = 8;

/// The finding of all served answers: the first that breaks the rule, or how they agreed.
fn verdict(samples: &[Sample], judged: &[Judged]) -> Finding {
    let at_level = |level: usize| judged.iter().filter(|j| j.concurrency == level).count();
    let counts = format!(
        "{} served answers of {} scenarios ({} one request at a time, {} with {CONCURRENCY} in flight)",
        judged.len(),
        samples.len(),
        at_level(1),
        at_level(CONCURRENCY)
    );
    let rule = format!(
        "the rule, per sample as MLPerf's TEST01 checks served against offline: the in-process greedy \
         answer token for token, or at the first divergence each side's token in the other's top {TOP_K}"
    );
    let failed: Vec<(&Judged, String)> = judged
        .iter()
        .filter_map(|j| match &j.agreement {
            Ok(Agreement::Apart { at, why }) => Some((j, format!("they part at token {at}: {why}"))),
            Err(e) => Some((j, e.clone())),
            Ok(_) => None,
        })
        .collect();
    if let Some((j, why)) = failed.first() {
        let s = &samples[j.sample];
        let mut f = Finding::new(
            Outcome::Falsified,
            Decider::Comp,
            format!(
                "{} of {counts} break {rule}; the first: scenario {} at concurrency {} ({}): {why}",
                failed.len(),
                s.name,
                j.concurrency,
                s.endpoint.path()
            ),
        );
        f.output = j.served_text.clone();
        return f.with_prompt(s.prompt.clone());
    }
    let identical = judged.iter().filter(|j| matches!(j.agreement, Ok(Agreement::Identical))).count();
    let parted: Vec<String> = judged
        .iter()
        .filter_map(|j| match &j.agreement {
            Ok(Agreement::Parted { at, unseen }) => {
                let mut p =
                    format!("{} at concurrency {}, token {at}", samples[j.sample].name, j.concurrency);
                if let Some(u) = unseen {
                    p.push_str(&format!(" ({u}: judged by the in-process top {TOP_K} alone)"));
                }
                Some(p)
            }
            _ => None,
        })
        .collect();
    let mut reason = format!("{identical} of {counts} identical to the in-process answer token for token");
    if !parted.is_empty() {
        let mut listed = parted.iter().take(LISTED).cloned().collect::<Vec<_>>().join("; ");
        if parted.len() > LISTED {
            listed.push_str(&format!("; {} more", parted.len() - LISTED));
        }
        reason.push_str(&format!(
            "; {} part where each side's token is in the other's top {TOP_K}: {listed}",
            parted.len()
        ));
    }
    reason.push_str(&format!(" ({rule})"));
    Finding::new(Outcome::Corroborated, Decider::Comp, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TokenLogprob;

    /// A step that chose `chosen` from `top` (most likely first); `<end>` ends generation.
    fn step(chosen: &str, top: &[&str]) -> ScoredStep {
        let token = |t: &str| TokenLogprob { token: t.into(), logprob: -1.0, ends: t == "<end>" };
        ScoredStep { chosen: token(chosen), top: top.iter().map(|t| token(t)).collect() }
    }

    /// An answer of `steps`, each `(chosen, top)`.
    fn answer(steps: &[(&str, &[&str])], end: End) -> Answer {
        Answer {
            text: steps.iter().map(|(t, _)| *t).collect(),
            steps: steps.iter().map(|(t, top)| step(t, top)).collect(),
            end,
        }
    }

    /// The in-process end: its end-of-sequence step and what else was likely there.
    fn ends(top: &[&str]) -> End {
        End::Eos(Some(step("<end>", top)))
    }

    fn apart(local: &Answer, served: &Answer) -> (usize, String) {
        match compare(local, served, TOP_K) {
            Agreement::Apart { at, why } => (at, why),
            other => panic!("{other:?}: {local:?}\nvs {served:?}"),
        }
    }

    #[test]
    fn identical_answers_agree() {
        let local = answer(&[("4", &["4", "1"]), ("2", &["2", "3"])], ends(&["<end>"]));
        let served = answer(&[("4", &["4", "1"]), ("2", &["2", "3"])], End::Eos(None));
        assert_eq!(compare(&local, &served, TOP_K), Agreement::Identical);
    }

    #[test]
    fn a_divergence_inside_each_others_top_k_passes() {
        let local = answer(&[("4", &["4"]), ("2", &["2", "a", "b", "c", "3"]), ("x", &["x"])], End::Length);
        let served = answer(&[("4", &["4"]), ("3", &["3", "a", "b", "c", "2"]), ("y", &["y"])], End::Length);
        assert_eq!(compare(&local, &served, TOP_K), Agreement::Parted { at: 1, unseen: None });
    }

    #[test]
    fn a_served_token_outside_the_in_process_top_k_fails() {
        // The sixth most likely token in process, "e", served first.
        let local = answer(&[("4", &["4", "a", "b", "c", "d", "e"])], ends(&["<end>"]));
        let served = answer(&[("e", &["4", "a", "b", "c", "d"])], End::Eos(None));
        let (at, why) = apart(&local, &served);
        assert_eq!(at, 0);
        assert!(why.contains("the served token \"e\" is not in the in-process top 5"), "{why}");
    }

    #[test]
    fn an_in_process_token_outside_the_served_top_k_fails() {
        let local = answer(&[("4", &["4", "e"])], End::Length);
        let served = answer(&[("e", &["e", "a", "b", "c", "d", "4"])], End::Length);
        let (at, why) = apart(&local, &served);
        assert_eq!(at, 0);
        assert!(why.contains("the in-process token \"4\" is not in the served top 5"), "{why}");
    }

    #[test]
    fn where_the_in_process_answer_ends_the_served_token_must_be_likely_there_and_the_end_served_side() {
        let local = answer(&[("4", &["4"])], ends(&["<end>", "a"]));
        let served = answer(&[("4", &["4"]), ("a", &["a", "<end>"])], End::Eos(None));
        assert_eq!(compare(&local, &served, TOP_K), Agreement::Parted { at: 1, unseen: None });
        let served = answer(&[("4", &["4"]), ("z", &["z", "<end>"])], End::Eos(None));
        assert!(apart(&local, &served).1.contains("\"z\" is not in its top 5"));
        let served = answer(&[("4", &["4"]), ("a", &["a", "b"])], End::Eos(None));
        assert!(apart(&local, &served).1.contains("\"<end>\"), which is not in the served top 5"));
    }

    #[test]
    fn where_the_served_answer_ends_an_end_must_be_likely_in_process() {
        let local = answer(&[("4", &["4"]), ("a", &["a", "<end>"])], End::Length);
        let served = answer(&[("4", &["4"])], End::Eos(None));
        let unseen = Some("the server reports no distribution at its end of sequence");
        assert_eq!(compare(&local, &served, TOP_K), Agreement::Parted { at: 1, unseen });
        let local = answer(&[("4", &["4"]), ("a", &["a", "b"])], End::Length);
        assert!(apart(&local, &served).1.contains("no end-of-sequence token is in the in-process top 5"));
    }

    #[test]
    fn the_same_tokens_with_another_text_fail_and_so_does_a_length_mismatch() {
        let local = answer(&[("4", &["4"]), ("2", &["2"])], End::Length);
        let mut served = local.clone();
        served.text = "42 and more".into();
        assert_eq!(apart(&local, &served).0, 2);
        let served = answer(&[("4", &["4"])], End::Length);
        let (at, why) = apart(&local, &served);
        assert_eq!(at, 1);
        assert!(why.contains("length limit"), "{why}");
    }

    #[test]
    fn few_samples_are_cycled_to_fill_the_concurrency() {
        assert_eq!(cycled(3, 8), [0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(cycled(10, 8).len(), 10);
    }
}
