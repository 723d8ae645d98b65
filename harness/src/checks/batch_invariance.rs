//! `diff::batch-invariance`: batching must not change a verdict. Each scenario prompt of the tier
//! is answered alone and again inside batches of 2, 8 and 32, at seeded random slots, among
//! other prompts of the tier (cycled where the tier has fewer than a batch holds, so a prompt
//! may share a batch with itself):
//!
//! - on the embedded engine, the prompt's next-token logits through the one-sequence path
//!   ([`crate::engine::Session::sequence_logits`], what generation runs) and through a ragged
//!   batch ([`crate::engine::Session::batch_logits`]) must be the same bits — the kernels are
//!   batch-invariant by construction, so any difference is a defect, however small;
//! - on an OpenAI-compatible engine, whose batching happens on its server, the greedy answer
//!   asked alone and the one asked with the rest of its batch in flight at once must agree token
//!   for token or, where they part, each side's token must be in the other's top 5 (the rule of
//!   [`super::serve_vs_run`]), over the first [`HTTP_TOKENS`] tokens.
//!
//! vLLM and SGLang test batch invariance of their own kernels; this checks it for any engine, per
//! cell. A command engine runs one prompt per process and has no batch to vary (ignored at bind).

use std::time::Instant;

use crate::engine::client::{self, Endpoint, Reply};
use crate::engine::{EngineError, Flow, GenerateRequest, Sampling};
use crate::stats::SplitMix;
use crate::trial::{Ask, Finding, TrialEnv};
use crate::vocab::{Decider, Outcome};

use super::serve_vs_run::{self, Agreement, Answer};

/// The batch sizes each prompt is answered in, besides alone.
pub(crate) const BATCH_SIZES: [usize; 3] = [2, 8, 32];
/// How many greedy tokens an answer over HTTP is compared on.
pub(crate) const HTTP_TOKENS: u32 = 16;
/// The most likely tokens the HTTP rule looks in where two answers part.
const TOP_K: usize = serve_vs_run::TOP_K;

/// The batches of one size: the indices of `n` prompts, cycled to fill whole batches of `size`,
/// shuffled by `rng`, so every prompt sits in at least one batch at a random slot.
pub(crate) fn batches(n: usize, size: usize, rng: &mut SplitMix) -> Vec<Vec<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let total = n.max(size).div_ceil(size) * size;
    let mut slots: Vec<usize> = (0..total).map(|i| i % n).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.below(i + 1));
    }
    slots.chunks(size).map(<[usize]>::to_vec).collect()
}

/// The seed of a trial's batches: its name, so a rerun puts every prompt in the same slots and
/// two cells put them in different ones.
fn seed_of(name: &str) -> u64 {
    // FNV-1a: stable across Rust versions, unlike the standard library's hasher.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The trial on the cell's session: bitwise logits on an engine that shows them, otherwise
/// answers over HTTP.
pub(crate) fn run(env: &TrialEnv<'_>) -> Finding {
    let asks = env.asks();
    if asks.is_empty() {
        return Finding::new(Outcome::Falsified, Decider::Comp, "the tier has no scenario prompt to batch");
    }
    let mut rng = SplitMix::new(seed_of(&env.spec.full_name));
    match &env.spec.engine {
        crate::playbook::spec::EngineSpec::Openai { .. } => over_http(env, &asks, &mut rng),
        _ => in_process(env, &asks, &mut rng),
    }
}

/// What went wrong for one prompt in one batch.
struct Difference {
    prompt: usize,
    size: usize,
    slot: usize,
    why: String,
}

/// Each prompt's logits alone, then inside every batch, compared bit for bit.
fn in_process(env: &TrialEnv<'_>, asks: &[Ask], rng: &mut SplitMix) -> Finding {
    let failed =
        |e: EngineError, what: &str| Finding::from_engine_error(e, Decider::Comp, what, env.timeout());
    let mut session = env.session.lock().unwrap_or_else(|p| p.into_inner());
    let mut sequences = Vec::with_capacity(asks.len());
    for a in asks {
        let request = GenerateRequest::greedy(&a.prompt, 1, env.deadline).with_literal(&a.literal);
        match session.prompt_ids(&request) {
            Ok(ids) if ids.is_empty() => {
                return Finding::new(
                    Outcome::Falsified,
                    Decider::Comp,
                    format!("scenario {} encodes to no tokens", a.name),
                );
            }
            Ok(ids) => sequences.push(ids),
            Err(e) => {
                return failed(e, &format!("encoding scenario {}", a.name)).with_prompt(a.prompt.clone());
            }
        }
    }
    let mut alone = Vec::with_capacity(sequences.len());
    for (a, ids) in asks.iter().zip(&sequences) {
        let mut out = Vec::new();
        let last = ids.len() - 1;
        let r = session.sequence_logits(ids, &[last], &mut |_, logits| {
            out = logits;
            Flow::Continue
        });
        if let Err(e) = r {
            return failed(e, &format!("scenario {} alone", a.name)).with_prompt(a.prompt.clone());
        }
        alone.push(out);
    }
    let started = Instant::now();
    let mut compared = 0usize;
    let mut differences = Vec::new();
    for size in BATCH_SIZES {
        for batch in batches(sequences.len(), size, rng) {
            if Instant::now() >= env.deadline {
                return timed_out(env, compared);
            }
            let members: Vec<Vec<u32>> = batch.iter().map(|&i| sequences[i].clone()).collect();
            let logits = match session.batch_logits(&members) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    return Finding::new(
                        Outcome::Skipped,
                        Decider::Comp,
                        format!(
                            "not run: the engine runs this model ({}) one sequence at a time, so no batch can change its logits",
                            env.info.architecture
                        ),
                    );
                }
                Err(e) => return failed(e, &format!("a batch of {size}")),
            };
            for (slot, &i) in batch.iter().enumerate() {
                compared += 1;
                if let Some(why) = bitwise(&alone[i], logits.get(slot).map(Vec::as_slice)) {
                    differences.push(Difference { prompt: i, size, slot, why });
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let counts = format!(
        "{compared} comparisons of {} scenario prompts' next-token logits, alone and in batches of {} at seeded random slots ({seconds:.2}s batched)",
        asks.len(),
        sizes()
    );
    match differences.first() {
        Some(d) => Finding::new(
            Outcome::Falsified,
            Decider::Comp,
            format!(
                "{} of {counts} are not the same bits; the first: scenario {} at slot {} of a batch of {} differs from alone: {}",
                differences.len(),
                asks[d.prompt].name,
                d.slot,
                d.size,
                d.why
            ),
        )
        .with_prompt(asks[d.prompt].prompt.clone()),
        None => Finding::new(Outcome::Corroborated, Decider::Comp, format!("all {counts} are the same bits")),
    }
}

fn sizes() -> String {
    BATCH_SIZES.map(|s| s.to_string()).join(", ")
}

fn timed_out(env: &TrialEnv<'_>, compared: usize) -> Finding {
    Finding::new(
        Outcome::Timeout,
        Decider::Timeout,
        format!("passed the {}s timeout after {compared} comparisons", env.timeout().as_secs_f64()),
    )
}

/// Why `batched` is not bit for bit `alone`, or `None` when it is.
pub(crate) fn bitwise(alone: &[f32], batched: Option<&[f32]>) -> Option<String> {
    let Some(batched) = batched else {
        return Some("the batch returned no logits for it".into());
    };
    if batched.len() != alone.len() {
        return Some(format!("{} logits in the batch, {} alone", batched.len(), alone.len()));
    }
    let differing = alone.iter().zip(batched).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    if differing == 0 {
        return None;
    }
    let worst = alone.iter().zip(batched).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let top = |l: &[f32]| {
        l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or_default()
    };
    let (a, b) = (top(alone), top(batched));
    let flip = if a == b {
        format!("top-1 token {a} in both")
    } else {
        format!("top-1 token {a} alone, {b} batched")
    };
    Some(format!("{differing} of {} logits differ, by up to {worst:e} ({flip})", alone.len()))
}

/// One scenario as an HTTP request.
struct Request {
    endpoint: Endpoint,
    body: serde_json::Value,
}

fn request_of(a: &Ask) -> Request {
    let (endpoint, messages) = match &a.conversation {
        Some(m) => (Endpoint::ChatCompletions, m.clone()),
        None => (Endpoint::Completions, Vec::new()),
    };
    let tokens = a.max_tokens.clamp(1, HTTP_TOKENS);
    let mut body = client::request_body(endpoint, &a.prompt, &messages, tokens, &Sampling::Greedy, false);
    client::ask_logprobs(endpoint, &mut body, TOP_K);
    Request { endpoint, body }
}

/// Each prompt's answer asked alone, then inside every batch of requests in flight at once.
fn over_http(env: &TrialEnv<'_>, asks: &[Ask], rng: &mut SplitMix) -> Finding {
    let client = match env.ctx.servers.client_for(env) {
        Ok(c) => c,
        Err(e) => {
            return Finding::new(Outcome::Falsified, Decider::Comp, format!("no client for the server: {e}"));
        }
    };
    let requests: Vec<Request> = asks.iter().map(request_of).collect();
    let ask = |i: usize| client.request(requests[i].endpoint, &requests[i].body, env.deadline);
    let answer = |reply: Result<Reply, client::ClientError>| -> Result<Answer, String> {
        let reply = reply.map_err(|e| format!("the request failed: {e}"))?;
        serve_vs_run::served_answer(reply)
            .ok_or_else(|| "the server answered without the log probabilities asked for".into())
    };
    let mut alone = Vec::with_capacity(asks.len());
    for (i, a) in asks.iter().enumerate() {
        match answer(ask(i)) {
            Ok(x) => alone.push(x),
            Err(why) => {
                return Finding::new(
                    Outcome::Falsified,
                    Decider::Comp,
                    format!("scenario {} alone: {why}", a.name),
                )
                .with_prompt(a.prompt.clone());
            }
        }
    }
    let mut compared = 0usize;
    let mut parted = 0usize;
    let mut differences = Vec::new();
    for size in BATCH_SIZES {
        for batch in batches(asks.len(), size, rng) {
            if Instant::now() >= env.deadline {
                return timed_out(env, compared);
            }
            for (slot, (i, reply)) in serve_vs_run::serve(&batch, batch.len(), &ask).into_iter().enumerate() {
                compared += 1;
                match answer(reply).map(|b| serve_vs_run::compare(&alone[i], &b, TOP_K)) {
                    Ok(Agreement::Identical) => {}
                    Ok(Agreement::Parted { .. }) => parted += 1,
                    Ok(Agreement::Apart { at, why }) => differences.push(Difference {
                        prompt: i,
                        size,
                        slot,
                        why: format!("they part at token {at}: {why}"),
                    }),
                    Err(why) => differences.push(Difference { prompt: i, size, slot, why }),
                }
            }
        }
    }
    let counts = format!(
        "{compared} answers of {} scenarios asked in batches of {} requests in flight at once, each against the same prompt asked alone (greedy, {HTTP_TOKENS} tokens at most)",
        asks.len(),
        sizes()
    );
    let rule = format!("token for token, or where they part each side's token in the other's top {TOP_K}");
    match differences.first() {
        Some(d) => Finding::new(
            Outcome::Falsified,
            Decider::Comp,
            format!(
                "{} of {counts} break the rule ({rule}); the first: scenario {} in a batch of {} (sent {}th): {}",
                differences.len(),
                asks[d.prompt].name,
                d.size,
                d.slot + 1,
                d.why
            ),
        )
        .with_prompt(asks[d.prompt].prompt.clone()),
        None => Finding::new(
            Outcome::Corroborated,
            Decider::Comp,
            format!("{} of {counts} identical, {parted} part within the rule ({rule})", compared - parted),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_lands_in_every_size_and_batches_are_full() {
        for n in [1, 5, 20, 33] {
            for size in BATCH_SIZES {
                let mut rng = SplitMix::new(7);
                let all = batches(n, size, &mut rng);
                assert!(all.iter().all(|b| b.len() == size), "n {n} size {size}");
                for p in 0..n {
                    assert!(
                        all.iter().flatten().any(|&i| i == p),
                        "prompt {p} of {n} missing at size {size}"
                    );
                }
            }
        }
        assert!(batches(0, 8, &mut SplitMix::new(1)).is_empty());
    }

    #[test]
    fn slots_are_shuffled_by_seed() {
        let a = batches(32, 8, &mut SplitMix::new(seed_of("a")));
        let b = batches(32, 8, &mut SplitMix::new(seed_of("b")));
        assert_ne!(a, b);
        assert_ne!(a.concat(), (0..32).collect::<Vec<_>>());
        assert_eq!(a, batches(32, 8, &mut SplitMix::new(seed_of("a"))));
    }

    #[test]
    fn the_same_bits_pass_and_one_ulp_fails() {
        let alone = vec![1.0f32, -2.5, 3.25];
        assert_eq!(bitwise(&alone, Some(&alone)), None);
        let mut off = alone.clone();
        off[1] = f32::from_bits(off[1].to_bits() + 1);
        let why = bitwise(&alone, Some(&off)).unwrap();
        assert!(why.starts_with("1 of 3 logits differ"), "{why}");
        assert!(why.contains("top-1 token 2 in both"), "{why}");
        off[0] = 9.0;
        assert!(bitwise(&alone, Some(&off)).unwrap().contains("top-1 token 2 alone, 0 batched"));
        assert!(bitwise(&alone, Some(&off[..2])).unwrap().contains("2 logits in the batch, 3 alone"));
        assert!(bitwise(&alone, None).is_some());
        // -0.0 and 0.0 compare equal but are not the same bits.
        assert!(bitwise(&[0.0], Some(&[-0.0])).is_some());
    }
}
