//! Continuous batching on the embedded engine: sequences join a running batch between steps,
//! each in a slot of its own (its own KV cache, sampler, stopping and deadline), are prefilled in
//! the step they join while the others decode, and leave at their own end. One forward pass per
//! step reads the weights once for every live sequence.
//!
//! Every answer is the one the sequence gets alone ([`CandleSession::generate_inner`]): the
//! kernels are batch-invariant (an output row's reduction never depends on the other rows) and
//! attention runs one sequence at a time, with the shapes it has alone; the per-step rules below
//! are `generate_inner`'s, in its order. `diff::batch-invariance` and `tests/qa_tiny/batch.rs`
//! hold the engine to that.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use candle_transformers::generation::LogitsProcessor;

use super::{BATCH_PREFILL_TOKENS, CandleSession, processor};
use crate::engine::arch::Segment;
use crate::engine::logprobs::Scorer;
use crate::engine::{Answer, EngineError, Finish, Flow, GenerateRequest, Generation, Joining, ScoredStep};

/// One sequence of a running batch.
struct Seq {
    slot: usize,
    joining: Joining,
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    sampler: LogitsProcessor,
    /// The text handed to `on_text` so far.
    sent: String,
    steps: Vec<ScoredStep>,
    first_token: Option<Duration>,
    first_logits_finite: Option<bool>,
    /// Another sequence was live or waiting beside it at some step.
    shared: bool,
    /// Whether its prompt has gone through the model (its next segment is one token).
    prefilled: bool,
    /// The slot whose cache holds the first tokens of its prompt, and how many: they are taken
    /// from there instead of computed ([`SHARED_PREFIX_MIN`]).
    prefix: Option<(usize, usize)>,
}

/// The fewest prompt tokens shared with another sequence that are taken from its cache rather
/// than computed again. The answers are the same bits either way (attention and the matrix
/// kernels compute each row alone), so this only weighs the copy against the rows saved.
const SHARED_PREFIX_MIN: usize = 2;

impl Seq {
    /// Its segment of the next forward pass and the tokens in it.
    fn segment(&self) -> (Segment, &[u32]) {
        let slot = Some(self.slot);
        if self.prefilled {
            let pos = self.prompt.len() + self.tokens.len() - 1;
            (Segment { slot, pos, len: 1, from: None }, &self.tokens[self.tokens.len() - 1..])
        } else if let Some((from, pos)) = self.prefix {
            (Segment { slot, pos, len: self.prompt.len() - pos, from: Some(from) }, &self.prompt[pos..])
        } else {
            (Segment { slot, pos: 0, len: self.prompt.len(), from: None }, &self.prompt)
        }
    }
}

/// The live sequence whose cache holds the longest prefix of `prompt` (its own prompt's first
/// tokens: cached already, or computed by its segment earlier in this step), and that length;
/// at least [`SHARED_PREFIX_MIN`] tokens, and never the whole prompt (its last token is computed
/// for its logits).
fn shared_prefix(prompt: &[u32], live: &[Seq]) -> Option<(usize, usize)> {
    live.iter()
        .map(|seq| {
            let common = seq.prompt.iter().zip(prompt).take_while(|(a, b)| a == b).count();
            (seq.slot, common.min(prompt.len().saturating_sub(1)))
        })
        .filter(|&(_, len)| len >= SHARED_PREFIX_MIN)
        .max_by_key(|&(slot, len)| (len, std::cmp::Reverse(slot)))
}

/// How a sequence's step ended it, if it did.
enum Step {
    Going,
    Ended(Finish),
    Failed(EngineError),
}

impl CandleSession {
    /// [`crate::engine::Session::serve_continuously`] on a model that batches; `false` (nothing
    /// taken from `intake`) on one that does not.
    pub(super) fn run_continuous(
        &mut self,
        intake: &mut dyn FnMut() -> Option<Joining>,
        slots: usize,
    ) -> bool {
        if !self.batches() {
            return false;
        }
        let _ = super::bind_device(&self.device);
        self.model.clear_batch();
        let mut free: BTreeSet<usize> = (0..slots.max(1)).collect();
        let mut waiting: VecDeque<Joining> = VecDeque::new();
        let mut live: Vec<Seq> = Vec::new();
        loop {
            while let Some(joining) = intake() {
                waiting.push_back(joining);
            }
            self.admit(&mut waiting, &mut live, &mut free);
            if live.is_empty() {
                if waiting.is_empty() {
                    return true;
                }
                continue;
            }
            let crowded = live.len() > 1 || !waiting.is_empty();
            let rows = {
                let parts: Vec<(Segment, &[u32])> = live.iter().map(Seq::segment).collect();
                self.forward_segments(&parts)
            };
            let rows = match rows {
                Ok(Some(logits)) => Ok(logits),
                Ok(None) => Err(EngineError::Inference("the model declined a batch it runs".into())),
                Err(e) => Err(EngineError::inference(e)),
            };
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    // The whole step failed: every live sequence gets the error, the slots are
                    // emptied, and the requests still waiting are tried afresh.
                    for seq in live.drain(..) {
                        free.insert(seq.slot);
                        let shared = seq.shared || crowded;
                        (seq.joining.done)(Answer {
                            generation: Err(e.clone()),
                            steps: seq.steps,
                            shared,
                            prefix_shared: 0,
                        });
                    }
                    let _ = super::bind_device(&self.device);
                    self.model.clear_batch();
                    continue;
                }
            };
            let mut going = Vec::with_capacity(live.len());
            for (r, mut seq) in live.into_iter().enumerate() {
                seq.shared |= crowded;
                seq.prefilled = true;
                let step = match rows.get(r) {
                    Ok(logits) => self.advance(&mut seq, &logits),
                    Err(e) => Step::Failed(EngineError::inference(e)),
                };
                match step {
                    Step::Going => going.push(seq),
                    Step::Ended(finish) => self.finish(seq, Ok(finish), &mut free),
                    Step::Failed(e) => self.finish(seq, Err(e), &mut free),
                }
            }
            live = going;
        }
    }

    /// Takes waiting requests into free slots, in the order received, while this step's prompt
    /// tokens stay within [`BATCH_PREFILL_TOKENS`] (a longer prompt goes in a step of its own
    /// prompts); a request past its deadline or whose prompt cannot be run is answered at once,
    /// a cancelled one dropped.
    fn admit(&self, waiting: &mut VecDeque<Joining>, live: &mut Vec<Seq>, free: &mut BTreeSet<usize>) {
        let mut prompt_tokens = 0;
        while let Some(&slot) = free.first() {
            let Some(joining) = waiting.pop_front() else { break };
            if joining.is_cancelled() {
                continue;
            }
            let shared = !live.is_empty();
            if Instant::now() >= joining.deadline {
                let timeout = EngineError::Timeout { tokens: 0, partial: String::new() };
                (joining.done)(Answer {
                    generation: Err(timeout),
                    steps: Vec::new(),
                    shared,
                    prefix_shared: 0,
                });
                continue;
            }
            let prompt = match self.prompt_for(&joining.request()) {
                Ok(prompt) => prompt,
                Err(e) => {
                    (joining.done)(Answer {
                        generation: Err(e),
                        steps: Vec::new(),
                        shared,
                        prefix_shared: 0,
                    });
                    continue;
                }
            };
            // On the CPU only: there attention computes each row alone, so the prefix another
            // sequence computed is the bits this one would compute (candle's GPU products are not).
            let prefix = if self.device.is_cpu() { shared_prefix(&prompt, live) } else { None };
            let computed = prompt.len() - prefix.map_or(0, |(_, len)| len);
            if prompt_tokens > 0 && prompt_tokens + computed > BATCH_PREFILL_TOKENS {
                waiting.push_front(joining);
                break;
            }
            prompt_tokens += computed;
            free.remove(&slot);
            live.push(Seq {
                slot,
                sampler: processor(&joining.sampling),
                joining,
                prompt,
                tokens: Vec::new(),
                sent: String::new(),
                steps: Vec::new(),
                first_token: None,
                first_logits_finite: None,
                shared,
                prefilled: false,
                prefix,
            });
        }
    }

    /// One sequence's step on its logits, with [`CandleSession::generate_inner`]'s rules in its
    /// order: sample, score, end of sequence, the new text (which may stop it), `max_tokens` and
    /// the context, the deadline; then whether its waiter has gone.
    fn advance(&self, seq: &mut Seq, logits: &Tensor) -> Step {
        let inference = |e: candle_core::Error| EngineError::inference(e);
        let values = || logits.to_vec1::<f32>().map_err(inference);
        if seq.first_logits_finite.is_none() {
            match values() {
                Ok(v) => seq.first_logits_finite = Some(v.iter().all(|x| x.is_finite())),
                Err(e) => return Step::Failed(e),
            }
        }
        let next = match seq.sampler.sample(logits) {
            Ok(next) => next,
            Err(e) => return Step::Failed(inference(e)),
        };
        seq.first_token.get_or_insert_with(|| seq.joining.arrived.elapsed());
        if let Some(top) = seq.joining.top {
            let scorer = Scorer { tokenizer: &self.tokenizer, ends: &self.eos, top };
            match values() {
                Ok(v) => seq.steps.push(scorer.step(&v, &seq.tokens, next)),
                Err(e) => return Step::Failed(e),
            }
        }
        if self.eos.contains(&next) {
            return Step::Ended(Finish::Eos);
        }
        seq.tokens.push(next);
        if let Some(on_text) = seq.joining.on_text.as_mut()
            && let Ok(text) = self.tokenizer.decode(&seq.tokens, true)
            && !text.ends_with('\u{FFFD}')
            && text.len() > seq.sent.len()
            && text.starts_with(&seq.sent)
        {
            let flow = on_text(&text[seq.sent.len()..]);
            seq.sent = text;
            if flow == Flow::Stop {
                return Step::Ended(Finish::Stopped);
            }
        }
        let pos = seq.prompt.len() + seq.tokens.len() - 1;
        if seq.tokens.len() >= seq.joining.max_tokens as usize || pos + 1 >= self.context {
            return Step::Ended(Finish::Length);
        }
        if Instant::now() >= seq.joining.deadline {
            let partial = self.tokenizer.decode(&seq.tokens, true).unwrap_or_default();
            return Step::Failed(EngineError::Timeout { tokens: seq.tokens.len(), partial });
        }
        if seq.joining.is_cancelled() {
            return Step::Ended(Finish::Stopped);
        }
        Step::Going
    }

    /// A sequence leaves the batch: its slot emptied and freed, its answer handed over (the
    /// rest of its text first, where a streaming caller has not had it), unless nobody waits.
    fn finish(&mut self, seq: Seq, end: Result<Finish, EngineError>, free: &mut BTreeSet<usize>) {
        self.model.clear_slot(seq.slot);
        free.insert(seq.slot);
        let Seq {
            mut joining,
            tokens,
            prompt,
            sent,
            steps,
            first_token,
            first_logits_finite,
            shared,
            prefix,
            ..
        } = seq;
        if joining.is_cancelled() {
            return;
        }
        let generation = end.and_then(|finish| {
            let text = self
                .tokenizer
                .decode(&tokens, true)
                .map_err(|e| EngineError::inference_in("failed to decode the output tokens", e))?;
            if let Some(on_text) = joining.on_text.as_mut()
                && let Some(rest) = text.strip_prefix(sent.as_str()).filter(|r| !r.is_empty())
            {
                let _ = on_text(rest);
            }
            let leaked_special_tokens = tokens.iter().filter_map(|t| self.special.get(t).cloned()).collect();
            Ok(Generation {
                text,
                token_count: Some(tokens.len()),
                tokens,
                prompt_tokens: prompt.len(),
                finish,
                time_to_first_token: first_token.unwrap_or_default(),
                duration: joining.arrived.elapsed(),
                first_logits_finite,
                leaked_special_tokens,
            })
        });
        let prefix_shared = prefix.map_or(0, |(_, len)| len);
        (joining.done)(Answer { generation, steps, shared, prefix_shared });
    }

    /// [`crate::engine::Session::generate_batch`]: every request joins one continuous batch at
    /// once (prefilled in groups of at most [`BATCH_PREFILL_TOKENS`] prompt tokens), with no
    /// streaming and no scoring; timings count from the batch's start. `None` on a model that
    /// does not batch.
    pub(super) fn generate_together(
        &mut self,
        requests: &[GenerateRequest<'_>],
    ) -> Option<Vec<Result<Generation, EngineError>>> {
        if !self.batches() {
            return None;
        }
        let started = Instant::now();
        type Slots = Arc<Mutex<Vec<Option<Result<Generation, EngineError>>>>>;
        let answers: Slots = Arc::new(Mutex::new(requests.iter().map(|_| None).collect()));
        let mut pending = requests.iter().enumerate().map(|(index, request)| {
            let answers = Arc::clone(&answers);
            Joining {
                prompt: request.prompt.to_string(),
                literal: request.literal.to_vec(),
                max_tokens: request.max_tokens,
                sampling: request.sampling.clone(),
                deadline: request.deadline,
                arrived: started,
                top: None,
                on_text: None,
                cancelled: Arc::new(AtomicBool::new(false)),
                done: Box::new(move |answer: Answer| {
                    answers.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(answer.generation);
                }),
            }
        });
        self.run_continuous(&mut || pending.next(), requests.len());
        let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(|p| p.into_inner()));
        Some(
            answers
                .into_iter()
                .map(|a| a.unwrap_or_else(|| Err(EngineError::Inference("no answer".into()))))
                .collect(),
        )
    }
}
