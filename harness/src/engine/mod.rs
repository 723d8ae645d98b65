//! Engines run models: an [`Engine`] loads a [`Session`] for `(model, format, backend)`, and a
//! session generates. The embedded engine is candle, in process; `external.rs` drives engines
//! we do not embed (an OpenAI-compatible server, a command line) through the same trait.
//!
//! Nothing here knows about playbooks, trials or oracles.

mod admit;
mod arch;
mod cache;
mod candle;
mod classes;
pub(crate) mod client;
mod external;
pub(crate) mod footprint;
mod logprobs;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The architectures the embedded engine answers in batches.
pub(crate) use self::arch::BATCHED;
pub use self::cache::SharedSession;
pub(crate) use self::cache::{MemoryUsage, SessionCache, SessionKey};
pub(crate) use self::candle::CandleEngine;
pub(crate) use self::candle::load_candle_with;
pub use self::candle::{load_candle, load_candle_hashing_in};
pub(crate) use self::classes::{KernelClass, kernel_class};
pub(crate) use self::external::{CommandSession, OpenAiSession};
pub(crate) use self::footprint::gib;
pub use self::footprint::{Footprint, estimate as estimate_footprint, peak_resident};
pub(crate) use self::logprobs::MAX_TOP_LOGPROBS;
pub use self::logprobs::{ScoredStep, TokenLogprob};

use crate::format::files::{ModelFile, ModelFilesError};
use crate::matrix::Backend;

/// The safetensors files of a model directory, as an engine error when they cannot be listed.
pub fn safetensors_files(dir: &std::path::Path) -> Result<Vec<PathBuf>, EngineError> {
    crate::format::files::safetensors_files(dir).map_err(EngineError::from_files)
}

/// Tunes glibc's allocator for a process that runs models (glibc only; elsewhere nothing changes):
///
/// - **Blocks below 4 MiB come from the heap, and up to 32 MiB free at the top of a heap stays
///   with the process.** A forward pass allocates and frees tensors of a few megabytes per
///   operation (a 64-token prefill of a 0.5 B model: 1.2 MB per MLP activation). As mappings
///   (glibc's threshold once raised, or the 1 MiB the harness set before), each was mapped,
///   faulted in page by page, zeroed by the kernel and unmapped again: 7–9 % of a bf16 prefill's
///   time went to page faults and page clearing (`perf`). Against a 1 MiB threshold these settings
///   ran bf16 prefill ×1.1–1.4 as fast (`bench engine-child`, 4 interleaved rounds). Larger blocks
///   (weight buffers) stay mappings of their own, unmapped when freed.
/// - **What dropped sessions leave behind goes back before the next loads**:
///   [`give_back_freed_memory`] runs before every session load.
///
/// The cost is memory kept for reuse: `cargo xtask bench memory --models 4 --reps 2` peaked at
/// 1.19–1.20 GiB unlimited and 599–661 MiB under a 695 MiB budget, against 1.13–1.18 GiB and
/// 497–499 MiB with the 1 MiB threshold (every verdict the same). 32 MiB and 128 MiB, as fast in
/// their own interleaved rounds, peaked at 755–812 MiB under that budget.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables, under the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Returns the free memory of every heap arena to the system (`malloc_trim`, which also releases
/// free pages inside a heap). glibc only; elsewhere nothing happens.
pub(crate) fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory, under the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sizes candle's CPU thread pools for a process that runs several trials at once, where the user
/// has not sized them: `CANDLE_NUM_THREADS=1` and `RAYON_NUM_THREADS` = the available cores.
///
/// candle's quantized matmuls hand each product to a barrier pool whose threads spin, without
/// yielding, until every worker has finished its share. When the cores are shared (the harness's
/// own parallel trials, or any neighbour on a CI runner) a descheduled worker leaves the others
/// spinning through whole time slices: GGUF cells of a 1.4 M-parameter model decoded 50–300×
/// slower with two busy neighbours, f32 cells only 2–3×. With one thread per product the pool
/// runs inline and trials are the unit of parallelism. candle reads both variables once, at first
/// use, and has no other setting. Setting `RAYON_NUM_THREADS` also spares candle a parse of
/// `/proc/cpuinfo` on every f32 matmul.
///
/// Changing the environment is sound only while no other thread can read it, so this acts only
/// when the process has exactly one thread (Linux's `/proc/self/status`); otherwise, or where that
/// cannot be known, it changes nothing and says so. Returns whether it sized the pools.
pub fn size_thread_pools() -> bool {
    let unset = |k: &str| std::env::var_os(k).is_none_or(|v| v.is_empty());
    if !unset("CANDLE_NUM_THREADS") && !unset("RAYON_NUM_THREADS") {
        return true;
    }
    if process_threads() != Some(1) {
        eprintln!(
            "note: candle's thread pools were not sized (other threads already run); set CANDLE_NUM_THREADS=1 \
             and RAYON_NUM_THREADS to the core count before starting, or call qualify_main first in main"
        );
        return false;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: this process has one thread, this one (checked just above, and no other thread
    // can have started since: only this thread could start one), so nothing reads or writes the
    // environment concurrently.
    unsafe {
        if unset("CANDLE_NUM_THREADS") {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        if unset("RAYON_NUM_THREADS") {
            std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
        }
    }
    true
}

/// How many threads this process has, where the system says (Linux).
fn process_threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

/// How the next token is chosen. Every run can be replayed: sampling always carries its seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sampling {
    Greedy,
    Seeded { temperature: f64, top_p: Option<f64>, top_k: Option<usize>, seed: u64 },
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest<'a> {
    pub prompt: &'a str,
    /// Byte ranges of `prompt` that hold a user's text spelled like a control token (a user who
    /// typed `<|im_end|>`): the engine encodes them as plain text, never as the control token,
    /// so user text cannot close or open a turn ([`crate::chat::Guarded`] finds them). Sorted,
    /// disjoint, on character boundaries; empty for a prompt with none.
    pub literal: &'a [std::ops::Range<usize>],
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Generation stops with [`EngineError::Timeout`] once this passes.
    pub deadline: Instant,
}

impl<'a> GenerateRequest<'a> {
    /// Greedy decoding of at most `max_tokens` tokens, as every check but a sampled scenario asks.
    pub fn greedy(prompt: &'a str, max_tokens: u32, deadline: Instant) -> Self {
        GenerateRequest { prompt, literal: &[], max_tokens, sampling: Sampling::Greedy, deadline }
    }

    /// This request with `literal` ([`GenerateRequest::literal`]).
    pub fn with_literal(self, literal: &'a [std::ops::Range<usize>]) -> Self {
        GenerateRequest { literal, ..self }
    }
}

/// What a streaming caller of a continuous batch is handed each new piece of text with.
pub type OnText = Box<dyn FnMut(&str) -> Flow + Send>;

/// A request joining a continuous batch ([`Session::serve_continuously`]). It owns what it
/// carries: it outlives the call that received it.
pub struct Joining {
    pub prompt: String,
    /// As [`GenerateRequest::literal`].
    pub literal: Vec<std::ops::Range<usize>>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Generation stops with [`EngineError::Timeout`] once this passes, waiting included.
    pub deadline: Instant,
    /// When the request was received: its timings count from here, time spent waiting for the
    /// model included.
    pub arrived: Instant,
    /// Alternatives scored at every step, as [`Session::generate_scored`] scores them; `None`:
    /// no step is scored.
    pub top: Option<usize>,
    /// Each new piece of text as soon as it is whole; [`Flow::Stop`] ends this sequence alone.
    pub on_text: Option<OnText>,
    /// Set by whoever waits for the answer once nobody will read it (a client went away): the
    /// sequence leaves the batch at its next step, and a request still waiting never joins.
    pub cancelled: Arc<AtomicBool>,
    /// Receives the answer once the sequence ends; dropped unanswered for a cancelled request.
    pub done: Box<dyn FnOnce(Answer) + Send>,
}

impl Joining {
    /// The request as [`Session::generate`] takes it.
    pub fn request(&self) -> GenerateRequest<'_> {
        GenerateRequest {
            prompt: &self.prompt,
            literal: &self.literal,
            max_tokens: self.max_tokens,
            sampling: self.sampling.clone(),
            deadline: self.deadline,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// What a request of a continuous batch gets back.
#[derive(Debug)]
pub struct Answer {
    pub generation: Result<Generation, EngineError>,
    /// The scored steps where [`Joining::top`] asked for them, as [`Session::generate_scored`]
    /// returns them.
    pub steps: Vec<ScoredStep>,
    /// Another request was being answered while this one waited or generated.
    pub shared: bool,
    /// The tokens of its prompt it took from another sequence's cache (a prefix the batch
    /// computed once for both) instead of computing them.
    pub prefix_shared: usize,
}

/// [`Session::serve_continuously`] for an engine that generates one sequence at a time: each
/// request in the order received, alone.
pub(crate) fn one_at_a_time<S: Session + ?Sized>(
    session: &mut S,
    intake: &mut dyn FnMut() -> Option<Joining>,
) {
    let mut previous_end: Option<Instant> = None;
    while let Some(joining) = intake() {
        if joining.is_cancelled() {
            continue;
        }
        let shared = previous_end.is_some_and(|end| joining.arrived < end);
        let Joining { top, mut on_text, cancelled, done, .. } = joining;
        let request = GenerateRequest {
            prompt: &joining.prompt,
            literal: &joining.literal,
            max_tokens: joining.max_tokens,
            sampling: joining.sampling.clone(),
            deadline: joining.deadline,
        };
        let mut on_text = |piece: &str| {
            let flow = on_text.as_mut().map_or(Flow::Continue, |f| f(piece));
            if cancelled.load(Ordering::Relaxed) { Flow::Stop } else { flow }
        };
        let (generation, steps) = match top {
            Some(top) => match session.generate_scored(&request, top, &mut on_text) {
                Ok((g, steps)) => (Ok(g), steps),
                Err(e) => (Err(e), Vec::new()),
            },
            None => (session.generate_until(&request, &mut on_text), Vec::new()),
        };
        previous_end = Some(Instant::now());
        if !cancelled.load(Ordering::Relaxed) {
            done(Answer { generation, steps, shared, prefix_shared: 0 });
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_tokens` were generated.
    Length,
    /// The caller ended generation ([`Flow::Stop`]): a stop sequence appeared, or its client left.
    Stopped,
}

/// What a streaming caller answers each piece of text with ([`Session::generate_until`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A prompt measured against a session's context without the session: a server refuses an
/// over-long prompt with it before queueing on the model, instead of after.
#[derive(Clone)]
pub struct PromptGauge {
    context: usize,
    longest_token_bytes: usize,
    count: std::sync::Arc<CountTokens>,
}

/// A prompt's tokens, as `generate` encodes it.
type CountTokens = dyn Fn(&str) -> Result<usize, EngineError> + Send + Sync;

impl std::fmt::Debug for PromptGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptGauge")
            .field("context", &self.context)
            .field("longest_token_bytes", &self.longest_token_bytes)
            .finish_non_exhaustive()
    }
}

impl PromptGauge {
    /// `count` gives a prompt's tokens as `generate` encodes it; `longest_token_bytes` is the
    /// longest text one token stands for (a floor of 1).
    pub fn new(
        context: usize,
        longest_token_bytes: usize,
        count: impl Fn(&str) -> Result<usize, EngineError> + Send + Sync + 'static,
    ) -> Self {
        PromptGauge {
            context,
            longest_token_bytes: longest_token_bytes.max(1),
            count: std::sync::Arc::new(count),
        }
    }

    /// The gauge of a session that encodes prompts with `tokenizer` (special tokens added) and
    /// generates an empty encoding from its start token where it has one (`has_bos`).
    pub(crate) fn of_tokenizer(context: usize, tokenizer: &tokenizers::Tokenizer, has_bos: bool) -> Self {
        // Added tokens count too: a special token's text can be longer than any merge.
        let longest = tokenizer.get_vocab(true).keys().map(String::len).max().unwrap_or(1);
        // A normalizer may shrink text before it is split (stripping, replacing), so the byte
        // bound is loosened by a margin where there is one.
        let longest = if tokenizer.get_normalizer().is_some() { longest * 4 } else { longest };
        let tokenizer = tokenizer.clone();
        PromptGauge::new(context, longest, move |prompt: &str| {
            let ids = tokenizer
                .encode(prompt, true)
                .map_err(|e| EngineError::inference_in("failed to tokenize the prompt", e))?
                .len();
            Ok(if ids == 0 && has_bos { 1 } else { ids })
        })
    }

    /// The model's context, in tokens; a prompt of this many tokens or more leaves no room.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The longest prompt, in bytes, that could still fit the context: every token stands for at
    /// most `longest_token_bytes`, so a longer prompt needs `context` tokens or more. Comparing
    /// lengths costs nothing, where tokenizing a megabyte takes seconds.
    pub fn max_prompt_bytes(&self) -> usize {
        self.context.saturating_sub(1).saturating_mul(self.longest_token_bytes)
    }

    /// The prompt's tokens, as `generate` counts them.
    pub fn count(&self, prompt: &str) -> Result<usize, EngineError> {
        (self.count)(prompt)
    }
}

/// What a generation produced, with its timings.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    /// Token ids, where the engine shows them (an external engine shows none).
    pub tokens: Vec<u32>,
    /// How many tokens were generated, where known.
    pub token_count: Option<usize>,
    pub prompt_tokens: usize,
    pub finish: Finish,
    pub time_to_first_token: Duration,
    pub duration: Duration,
    /// Whether every logit of the first step was finite; `None` where the engine shows no logits.
    pub first_logits_finite: Option<bool>,
    /// Special (control) tokens the model generated before it stopped; `text` never shows them.
    pub leaked_special_tokens: Vec<String>,
}

impl Generation {
    /// Decode speed: tokens after the first, over the time after the first.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let decode = self.duration.checked_sub(self.time_to_first_token)?;
        let n = self.token_count?.checked_sub(1)?;
        (n > 0 && !decode.is_zero()).then(|| n as f64 / decode.as_secs_f64())
    }
}

/// What a loaded session is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Engine and version, as `candle 0.11.1`.
    pub engine: String,
    /// `cpu` or `cuda:0`.
    pub device: String,
    pub architecture: String,
    pub files: Vec<ModelFile>,
    pub load_time: Duration,
    /// The chat template the model ships, if any.
    #[serde(skip)]
    pub chat_template: Option<crate::chat::ChatTemplate>,
    /// Whether the engine lays conversations out itself ([`Session::chat`]); otherwise the
    /// harness renders `chat_template` and calls `generate`.
    #[serde(skip)]
    pub applies_chat_template: bool,
    /// The spellings of the model's control tokens (its tokenizer's special added tokens): text
    /// a user writes in one of them is sent as [`GenerateRequest::literal`]. Empty where the
    /// engine shows no tokenizer.
    #[serde(skip)]
    pub control_tokens: Vec<String>,
    /// The ids of [`SessionInfo::control_tokens`], in the same order.
    #[serde(skip)]
    pub control_ids: Vec<u32>,
}

/// A loaded model, ready to generate. One generation at a time (`&mut self`).
pub trait Session: Send {
    fn generate(&mut self, request: &GenerateRequest<'_>) -> Result<Generation, EngineError> {
        self.generate_streaming(request, &mut |_| {})
    }
    /// As `generate`, handing each new piece of decoded text to `on_text` as soon as it is
    /// whole (never half a UTF-8 character); the pieces add up to `Generation::text`.
    fn generate_streaming(
        &mut self,
        request: &GenerateRequest<'_>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError>;
    /// As `generate_streaming`, where `on_text` may end generation early by answering
    /// [`Flow::Stop`]; the generation then ends with [`Finish::Stopped`]. An engine that cannot
    /// stop early (the default) generates to its own end, and the caller cuts the text.
    fn generate_until(
        &mut self,
        request: &GenerateRequest<'_>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Generation, EngineError> {
        self.generate_streaming(request, &mut |piece| {
            let _ = on_text(piece);
        })
    }
    /// As `generate_until`, scoring every step: the chosen token's log probability and the `top`
    /// most likely tokens there ([`ScoredStep`]). The steps follow [`Generation::tokens`], with
    /// one more where generation ended at an end-of-sequence token (its `chosen.ends` is set).
    /// An engine that shows no logits (the default) cannot.
    fn generate_scored(
        &mut self,
        _request: &GenerateRequest<'_>,
        _top: usize,
        _on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<(Generation, Vec<ScoredStep>), EngineError> {
        Err(EngineError::Unsupported("this engine shows no log probabilities".into()))
    }
    /// Measures prompts against this session's context without locking it; `None` where the
    /// engine cannot tell (an external engine counts its own tokens).
    fn prompt_gauge(&self) -> Option<PromptGauge> {
        None
    }
    /// The logits after each of the prompt's first `positions` tokens (position i predicts
    /// token i+1), for numeric comparisons between formats, engines and references.
    fn prompt_logits(&mut self, prompt: &str, positions: usize) -> Result<Vec<Vec<f32>>, EngineError>;
    /// The next-token logits after `prompt` (encoded as `generate` encodes it) followed by the
    /// token ids `continuation`: where two formats' greedy outputs part, what each would say.
    fn logits_after(&mut self, _prompt: &str, _continuation: &[u32]) -> Result<Vec<f32>, EngineError> {
        Err(EngineError::Unsupported("this engine shows no logits".into()))
    }
    /// The token ids `text` encodes to, as `generate` encodes a prompt: so another session can
    /// be run on exactly the same tokens ([`Session::sequence_logits`]).
    fn encode(&self, _text: &str) -> Result<Vec<u32>, EngineError> {
        Err(EngineError::Unsupported("this engine shows no tokens".into()))
    }
    /// The token ids `generate` feeds the model for `request`: its prompt, with the
    /// [`GenerateRequest::literal`] ranges encoded as plain text.
    fn prompt_ids(&self, _request: &GenerateRequest<'_>) -> Result<Vec<u32>, EngineError> {
        Err(EngineError::Unsupported("this engine shows no tokens".into()))
    }
    /// The next-token logits at each of `positions` of the token sequence `ids` (position i
    /// predicts token i+1), in one pass over the sequence, each handed to `on_logits` as soon as
    /// it is computed: the caller keeps what it needs, where thousands of positions' whole
    /// distributions would not fit in memory. `positions` ascend and lie below `ids.len()`,
    /// which must fit the context. [`Flow::Stop`] from `on_logits` ends the pass (a deadline).
    fn sequence_logits(
        &mut self,
        _ids: &[u32],
        _positions: &[usize],
        _on_logits: &mut dyn FnMut(usize, Vec<f32>) -> Flow,
    ) -> Result<(), EngineError> {
        Err(EngineError::Unsupported("this engine shows no logits".into()))
    }
    /// The next-token logits after the last token of each of `sequences`, computed as one
    /// batch (each from an empty cache, seeing only itself): what [`Session::sequence_logits`]
    /// gives for each alone, as the batch's kernels compute it. `None`: the engine runs one
    /// sequence at a time.
    fn batch_logits(&mut self, _sequences: &[Vec<u32>]) -> Result<Option<Vec<Vec<f32>>>, EngineError> {
        Ok(None)
    }
    /// Generates for every request at once, as one batch: each sequence with its own KV cache,
    /// sampler and stopping, the weights read once per step for all of them. Each answer is the
    /// one [`Session::generate`] gives for its request alone (the embedded engine's kernels are
    /// batch-invariant), with its own timings within the batch (its first token and its end, from
    /// the batch's start). A request's own failure (a prompt past the context, its deadline) is
    /// its entry; a failure of the batch is the error. `None`: the engine generates one at a time.
    fn generate_batch(
        &mut self,
        _requests: &[GenerateRequest<'_>],
    ) -> Result<Option<Vec<Result<Generation, EngineError>>>, EngineError> {
        Ok(None)
    }
    /// Answers requests as they come, as one continuous batch: `intake` is asked for new
    /// requests before every step (it never blocks); each joins in a free slot (at most `slots`
    /// at once; the others wait their turn in the order received), is prefilled in the step it
    /// joins while the others decode, and leaves at its own end, handing its [`Answer`] to its
    /// `done`. Returns once no sequence is live and `intake` has nothing more. Every answer is the
    /// one [`Session::generate_scored`] (or `generate_until`) gives for its request alone. The
    /// default answers one request at a time.
    fn serve_continuously(&mut self, intake: &mut dyn FnMut() -> Option<Joining>, slots: usize) {
        let _ = slots;
        one_at_a_time(self, intake);
    }
    /// Feeds `ids` to the model at `position` of its KV cache and returns the next-token logits
    /// after the last of them: the bare prefill and decode steps, so a benchmark times them as
    /// other engines' benchmarks do (`cargo xtask bench engine`). Position 0 empties the cache
    /// first; any other must be the number of tokens fed since then, by this method alone.
    fn feed(&mut self, _ids: &[u32], _position: usize) -> Result<Vec<f32>, EngineError> {
        Err(EngineError::Unsupported("this engine shows no logits".into()))
    }
    /// The context this session runs, in tokens, where the engine knows it.
    fn context(&self) -> Option<usize> {
        self.prompt_gauge().map(|g| g.context())
    }
    /// Answers a conversation, for engines that apply their own chat template
    /// ([`SessionInfo::applies_chat_template`]); `request.prompt` is the harness's readable
    /// transcript, for the record only.
    fn chat(
        &mut self,
        _messages: &[crate::playbook::MessageSpec],
        _request: &GenerateRequest<'_>,
    ) -> Result<Generation, EngineError> {
        Err(EngineError::Unsupported(
            "this engine takes prompts; the harness applies the chat template".into(),
        ))
    }
    fn info(&self) -> &SessionInfo;
}

/// Loads sessions.
pub(crate) trait Engine: Send + Sync {
    fn load(&self, model_dir: &std::path::Path, backend: Backend) -> Result<Box<dyn Session>, EngineError>;
}

/// An underlying error an [`EngineError`] keeps as its source: shared, so the error stays
/// `Clone` (one failed load is handed to every trial of its session). It dereferences to the
/// error itself, which is what [`std::error::Error::source`] returns (so it downcasts).
#[derive(Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl std::ops::Deref for Cause {
    type Target = dyn std::error::Error + Send + Sync;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

/// Keeps `e` (an error, or a library's boxed one) as a [`Cause`].
pub(crate) fn cause(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Cause {
    Cause(e.into().into())
}

/// `what: source`, or the source alone.
fn caused<'a>(what: &'a Option<String>, source: &'a Cause) -> impl std::fmt::Display + 'a {
    struct Caused<'a>(&'a Option<String>, &'a Cause);
    impl std::fmt::Display for Caused<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if let Some(what) = self.0 {
                write!(f, "{what}: ")?;
            }
            write!(f, "{}", self.1)
        }
    }
    Caused(what, source)
}

/// Why an engine failed; every variant says what to look at.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The model's files are not what the engine needs, said in words (a file or a field is
    /// missing, an architecture is not supported).
    #[error("failed to load the model from {path}: {cause}")]
    Load { path: PathBuf, cause: String },
    /// Reading or building the model failed on an underlying error; `what` names the part
    /// ("invalid JSON", "tensor `x`") where the error alone would not.
    #[error("failed to load the model from {path}: {}", caused(.what, .source))]
    LoadFailed { path: PathBuf, what: Option<String>, source: Cause },
    #[error("the {backend} backend is not available: {why}")]
    Backend { backend: Backend, why: String },
    #[error("the {backend} backend is not available: no CUDA device: {source}")]
    NoDevice { backend: Backend, source: Cause },
    /// Inference failed, said in words (an engine's exit code, an answer without text).
    #[error("failed to run inference: {0}")]
    Inference(String),
    /// Inference failed on an underlying error (candle, the tokenizer, the process, the
    /// server); `what` names the step where the error alone would not.
    #[error("failed to run inference: {}", caused(.what, .source))]
    InferenceFailed { what: Option<String>, source: Cause },
    /// A command engine's JSON output does not parse; `output` is its end.
    #[error("failed to run inference: the output is not JSON ({source}): {output}")]
    OutputNotJson { output: String, source: Cause },
    /// The prompt fills the model's context, leaving no room to generate.
    #[error("failed to run inference: the prompt is {tokens} tokens, the model's context is {context}")]
    PromptTooLong { tokens: usize, context: usize },
    /// A prompt and continuation that are empty, or longer than the context.
    #[error("failed to run inference: {tokens} tokens do not fit the context of {context}")]
    OutsideContext { tokens: usize, context: usize },
    #[error("the prompt encodes to no tokens and the model declares no start token")]
    EmptyPrompt,
    #[error("generation passed its deadline after {tokens} tokens")]
    Timeout { tokens: usize, partial: String },
    /// The engine process died (a signal): a crash, not a wrong answer.
    #[error("the engine crashed: {0}")]
    Crashed(String),
    #[error("the engine cannot do this: {0}")]
    Unsupported(String),
}

impl EngineError {
    /// A failed load of `path` on `source`.
    pub fn load_failed(
        path: &std::path::Path,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        EngineError::LoadFailed { path: path.to_path_buf(), what: None, source: cause(source) }
    }

    /// A failed load of `path`'s `what` on `source`.
    pub fn load_failed_in(
        path: &std::path::Path,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        EngineError::LoadFailed { path: path.to_path_buf(), what: Some(what.into()), source: cause(source) }
    }

    /// The model's safetensors files could not be listed.
    pub fn from_files(e: ModelFilesError) -> Self {
        match e {
            ModelFilesError::Read { path, source } => EngineError::load_failed(&path, source),
            ModelFilesError::Json { path, source } => {
                EngineError::load_failed_in(&path, "invalid JSON", source)
            }
            ModelFilesError::Layout { path, what } => EngineError::Load { path, cause: what.into() },
        }
    }

    /// Inference failed on `source`.
    pub fn inference(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        EngineError::InferenceFailed { what: None, source: cause(source) }
    }

    /// Inference failed in step `what` on `source`.
    pub fn inference_in(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        EngineError::InferenceFailed { what: Some(what.into()), source: cause(source) }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// With the allocator tuned, a block of a megabyte and a half freed and allocated again
    /// reuses its pages; as a mapping of its own (a 1 MiB threshold, as before) each allocation
    /// faulted in its 384 pages afresh.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_tuned_allocator_reuses_a_freed_megabyte_block_instead_of_faulting_in_fresh_pages() {
        fn faults() -> i64 {
            // SAFETY: rusage is plain integers, for which zeros are valid.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: getrusage fills the struct it is given.
            assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
            usage.ru_minflt
        }
        // A tensor-sized block, written whole (as an operation's output is).
        let touch = || std::hint::black_box(vec![1u8; 3 << 19]).len();
        tune_allocator();
        touch();
        let before = faults();
        let rounds = 40;
        for _ in 0..rounds {
            touch();
        }
        let per_round = (faults() - before) / rounds;
        assert!(per_round < 32, "{per_round} page faults per allocation of 1.5 MiB");
    }

    #[test]
    fn an_underlying_error_is_the_source_and_the_message_is_as_before() {
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e =
            EngineError::load_failed_in(std::path::Path::new("/m/config.json"), "invalid JSON", missing());
        assert_eq!(e.to_string(), "failed to load the model from /m/config.json: invalid JSON: no such file");
        let source = e.source().expect("a source");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
        // A failed load is shared by every trial of its session.
        assert_eq!(e.clone().to_string(), e.to_string());

        let e = EngineError::inference(missing());
        assert_eq!(e.to_string(), "failed to run inference: no such file");
        assert!(e.source().is_some_and(|s| s.is::<std::io::Error>()));
        let e = EngineError::inference_in("failed to start engine", missing());
        assert_eq!(e.to_string(), "failed to run inference: failed to start engine: no such file");

        let said = EngineError::Load { path: "/m".into(), cause: "the tokenizer is missing".into() };
        assert!(said.source().is_none(), "words alone have no source");
    }
}
