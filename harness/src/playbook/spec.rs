//! The playbook language v1, as written in YAML: the serde types, and the JSON Schema generated
//! from them (`playbooks/playbook.schema.json`).
//!
//! Every struct denies unknown keys. A document here is one file; `extends` and tier composition
//! happen in `compose`, and nothing in this module touches the file system.
//!
//! Longer than the house's ~600 lines on purpose: it is the whole language, top to bottom in the
//! order of its documentation (`docs/playbooks.md`), so a reader checks one against the other in
//! one pass. The oracles' own types live with the oracles (`crate::oracle::spec`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de;
use serde::{Deserialize, Deserializer, Serialize};

use crate::matrix::{Backend, Modality, Quantization};
pub use crate::oracle::spec::{ArithmeticOracleSpec, CodeSyntaxSpec, GarbageSpec, Language, OracleSpec};

/// One playbook file: a model family, its models, its tiers and its scenarios. A file without
/// `family` is a template that other playbooks name in `extends`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaybookDoc {
    /// Language version; `1`.
    pub playbook: Option<u32>,
    /// The family's name, the first segment of every trial name (`qwen-coder`).
    pub family: Option<String>,
    pub description: Option<String>,
    /// Templates merged under this file, in order, paths relative to this file.
    #[serde(default)]
    pub extends: Vec<String>,
    /// What happens to the rest of the run once a trial fails.
    pub failure_policy: Option<FailurePolicy>,
    /// How often every scenario of the playbook runs, and what passes (a scenario's own `repeat`
    /// wins); once when absent.
    pub repeat: Option<RepeatSpec>,
    /// The engine under test; the embedded candle engine when absent.
    pub engine: Option<EngineSpec>,
    /// Defaults for every tier of the family (a tier's own settings win).
    pub matrix: Option<MatrixSpec>,
    /// The tiers this family is qualified at. A standard tier (smoke, mvp, quick, standard, deep)
    /// starts from its built-in definition; other names must give the whole matrix.
    pub tiers: Option<BTreeMap<String, MatrixSpec>>,
    pub models: Option<Vec<ModelSpec>>,
    pub scenarios: Option<Vec<ScenarioSpec>>,
    /// Settings of the differential trials of derived formats against safetensors.
    pub differential_tests: Option<DifferentialSpec>,
    /// Performance assertions: a `perf::decode` trial in every cell whose backend has one.
    pub performance: Option<PerformanceSpec>,
}

/// Performance assertions on the model under test, per backend. Each cell measures `runs`
/// greedy generations after `warmup` untimed ones; the medians decide.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerformanceSpec {
    /// Untimed generations first (default 2).
    pub warmup: Option<u32>,
    /// Timed generations (default 5).
    pub runs: Option<u32>,
    /// What is generated from, as sent (default: the first scenario's prompt as `run` lays it out).
    pub prompt: Option<String>,
    /// Tokens per generation (default 32).
    pub max_tokens: Option<u32>,
    /// Smallest median decode speed, tokens per second.
    #[serde(default)]
    pub min_tokens_per_second: PerBackend,
    /// Largest median time to first token, milliseconds.
    #[serde(default)]
    pub max_time_to_first_token_ms: PerBackend,
    /// Floors of particular formats (`gguf-q4_k_m`, `apr`, …), replacing the ones above where
    /// given: a quantized format is expected to decode faster than the ground truth, and a floor
    /// that fits the slowest format lets a tenfold slowdown of a fast one pass.
    #[serde(default)]
    pub formats: BTreeMap<String, FormatFloors>,
}

/// The floors of one format; a backend without a figure keeps the playbook-wide one.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FormatFloors {
    #[serde(default)]
    pub min_tokens_per_second: PerBackend,
    #[serde(default)]
    pub max_time_to_first_token_ms: PerBackend,
}

/// A figure per backend; a backend without one asserts nothing there.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerBackend {
    pub cpu: Option<f64>,
    pub gpu: Option<f64>,
}

impl PerBackend {
    pub fn get(&self, backend: Backend) -> Option<f64> {
        match backend {
            Backend::Cpu => self.cpu,
            Backend::Gpu => self.gpu,
        }
    }
}

impl PerformanceSpec {
    /// Whether anything is asserted on `backend`.
    pub fn asserts_on(&self, backend: Backend) -> bool {
        let floors = std::iter::once((&self.min_tokens_per_second, &self.max_time_to_first_token_ms))
            .chain(self.formats.values().map(|f| (&f.min_tokens_per_second, &f.max_time_to_first_token_ms)));
        floors.into_iter().any(|(speed, first)| speed.get(backend).is_some() || first.get(backend).is_some())
    }

    /// The smallest decode speed a cell of `format` on `backend` must reach, if any.
    pub fn min_tokens_per_second(&self, format: &str, backend: Backend) -> Option<f64> {
        self.formats
            .get(format)
            .and_then(|f| f.min_tokens_per_second.get(backend))
            .or_else(|| self.min_tokens_per_second.get(backend))
    }

    /// The largest time to first token a cell of `format` on `backend` may take, if any.
    pub fn max_time_to_first_token_ms(&self, format: &str, backend: Backend) -> Option<f64> {
        self.formats
            .get(format)
            .and_then(|f| f.max_time_to_first_token_ms.get(backend))
            .or_else(|| self.max_time_to_first_token_ms.get(backend))
    }

    /// Tokens each measured generation asks for (`max_tokens`, default 32).
    pub fn tokens_per_run(&self) -> u32 {
        self.max_tokens.unwrap_or(32)
    }
}

/// The differential trials' settings. Field names follow the original project where it had one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DifferentialSpec {
    /// Gates of `diff::logits-vs-safetensors` per format name (`gguf-q4_k_m`, `apr`, …),
    /// replacing the defaults (docs/playbooks.md lists them).
    #[serde(default)]
    pub logits: BTreeMap<String, LogitGate>,
    /// Gates of `diff::long-context` per format name, each bucket of positions judged by it;
    /// where a format has none, its `logits` gate (or the default) applies.
    #[serde(default)]
    pub long_context: BTreeMap<String, LogitGate>,
    /// Bounds of `diff::trace` per format name, replacing the defaults (docs/playbooks.md,
    /// "diff::trace").
    #[serde(default)]
    pub trace: BTreeMap<String, TraceGate>,
    /// `k` of the generated-sequence rule: at the first divergence of the greedy outputs, each
    /// format's token must be in the other's top k (default 5).
    pub top_k: Option<usize>,
    /// `diff::perplexity`: the held-out text and the bounds on the perplexity ratio.
    #[serde(default)]
    pub perplexity: PerplexitySpec,
}

/// `diff::perplexity`'s settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerplexitySpec {
    /// A UTF-8 text file, relative to the playbook, scored by every format and the ground truth
    /// (at most 4 MiB; the first 1,024 tokens on CPU). Default: a passage the harness ships.
    pub text: Option<String>,
    /// The largest ratio of a format's perplexity to the ground truth's, per format name,
    /// replacing the defaults (docs/playbooks.md lists them; `gguf-q4_k_m` 1.10).
    #[serde(default)]
    pub max_ratio: BTreeMap<String, f64>,
}

/// A bound on a traced forward pass against the ground truth, at every site.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceGate {
    /// Smallest cosine similarity of a site's activations with the ground truth's.
    pub min_cosine: f64,
    /// Largest factor, either way, between a site's L2 norm and the ground truth's.
    pub max_norm_ratio: f64,
}

/// A gate on next-token distributions against the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogitGate {
    /// Largest mean KL divergence (ground truth ‖ format), in nats.
    pub max_mean_kl: f64,
    /// Smallest share of positions whose most likely next token agrees, 0–1.
    pub min_top1: f64,
}

/// The engine a family is qualified on. Formats and backends in trial names keep their meaning:
/// an external engine is asked for the cell's format (the `command` engine gets the converted
/// file as `{model}`) and reports what it ran.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EngineSpec {
    /// candle, in process.
    #[default]
    Embedded,
    /// An OpenAI-compatible server that is already running (vLLM, llama.cpp's server, this
    /// project's `cargo xtask serve`): `run` goes to `/v1/completions`, `chat` to
    /// `/v1/chat/completions`, `serve` to both and to the server-level gates.
    Openai {
        /// `http://host:port`, without `/v1`.
        base_url: String,
        /// The environment variable holding the API key sent as a bearer token, if any.
        #[serde(default)]
        api_key_env: Option<String>,
        /// The model name the server knows; the model's `id` when absent.
        #[serde(default)]
        model: Option<String>,
    },
    /// A command line run once per generation. Each argument may hold `{model}` (the model file
    /// or directory in the cell's format), `{prompt}`, `{max_tokens}`, `{seed}` and `{backend}`.
    /// It runs in a process group of its own, killed whole at the trial's timeout.
    Command {
        args: Vec<String>,
        /// How its standard output is read.
        #[serde(default)]
        output: CommandOutput,
        /// With `output: json`, the JSON pointer of the answer text (default `/text`).
        #[serde(default)]
        json_pointer: Option<String>,
    },
}

/// How a `command` engine's standard output carries the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutput {
    /// The whole output is the answer (trailing whitespace removed).
    #[default]
    Text,
    /// One JSON document; the answer is at `json_pointer`.
    Json,
}

/// Run-level behaviour after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Run every trial whatever fails.
    CollectAll,
    /// Once a gateway fails for a `(model, format, backend)`, the rest of that group is not run.
    StopOnP0,
    /// Once any trial fails, no further trial is run.
    StopOnFirst,
}

impl FailurePolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s.replace('_', "-").as_str() {
            "collect-all" => Some(Self::CollectAll),
            "stop-on-p0" => Some(Self::StopOnP0),
            "stop-on-first" => Some(Self::StopOnFirst),
            _ => None,
        }
    }
}

/// The shape of a tier: which cells of the matrix it covers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatrixSpec {
    /// `safetensors`, `apr`, `gguf` (one trial format per entry of `quantizations`) or `gguf-<quantization>`.
    pub formats: Option<Vec<FormatSpec>>,
    /// The quantizations a bare `gguf` format stands for (default `[q4_k_m]`).
    pub quantizations: Option<Vec<Quantization>>,
    pub backends: Option<Vec<Backend>>,
    pub modalities: Option<Vec<Modality>>,
    /// How many scenarios (in declared order, generated cases counted one by one) each cell runs;
    /// absent means all of them.
    pub scenario_count: Option<u32>,
    /// Seed of sampled generation and of scenario generators.
    pub seed: Option<u64>,
    /// Wall-clock limit of one trial, model load included.
    pub timeout_ms: Option<u64>,
}

impl MatrixSpec {
    /// `self` with every field `over` sets replaced.
    pub fn overlaid(&self, over: &MatrixSpec) -> MatrixSpec {
        MatrixSpec {
            formats: over.formats.clone().or_else(|| self.formats.clone()),
            quantizations: over.quantizations.clone().or_else(|| self.quantizations.clone()),
            backends: over.backends.clone().or_else(|| self.backends.clone()),
            modalities: over.modalities.clone().or_else(|| self.modalities.clone()),
            scenario_count: over.scenario_count.or(self.scenario_count),
            seed: over.seed.or(self.seed),
            timeout_ms: over.timeout_ms.or(self.timeout_ms),
        }
    }
}

/// A format entry of a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
#[schemars(description = "`safetensors`, `apr`, `gguf`, or `gguf-<quantization>` such as `gguf-q8_0`")]
pub enum FormatSpec {
    Safetensors,
    Apr,
    /// Every quantization of the matrix.
    Gguf,
    GgufAt(Quantization),
}

impl<'de> Deserialize<'de> for FormatSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "safetensors" => Ok(Self::Safetensors),
            "apr" => Ok(Self::Apr),
            "gguf" => Ok(Self::Gguf),
            other => other
                .strip_prefix("gguf-")
                .and_then(Quantization::parse)
                .map(Self::GgufAt)
                .ok_or_else(|| {
                    de::Error::custom(format!(
                        "unknown format `{other}`, expected `safetensors`, `apr`, `gguf` or `gguf-<quantization>` with one of {}",
                        Quantization::ALL.map(|q| q.as_str()).join(", ")
                    ))
                }),
        }
    }
}

/// A model of the family.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Hugging Face id, `org/name`.
    pub id: String,
    /// The model's segment in trial names; default: the lower-cased `name` part of `id`.
    pub slug: Option<String>,
    /// Hub revision (branch, tag or commit) to look for in the Hugging Face cache; default `main`.
    pub revision: Option<String>,
    /// A local directory (or `.safetensors` file) holding the model; relative to the playbook.
    pub path: Option<PathBuf>,
    /// The `model_type` config.json must declare (`llama`, `qwen2`, ...).
    pub architecture: Option<String>,
    pub size: Option<SizeCategory>,
    /// Architecture numbers config.json and the tensors must agree with.
    pub expect: Option<ExpectedShape>,
    /// How the `run` modality lays out a plain prompt for this model, with `{prompt}` where the
    /// prompt goes (a base model's completion format, such as `"{prompt}\n"`); default `{prompt}`.
    pub prompt_template: Option<String>,
    /// Files the model ships in a derived format, qualified as they are instead of converted:
    /// `{gguf-q4_k_m: path/to/model-Q4_K_M.gguf, apr: hf://org/repo/model.apr}`. Keys are
    /// `apr` or `gguf-<quantization>`; a path is relative to the playbook.
    #[serde(default)]
    pub artifacts: BTreeMap<String, ArtifactSpec>,
}

/// Where a shipped artifact is: a local path (relative to the playbook), `hf://org/name/file`
/// (`hf://org/name@revision/file` for another revision than `main`) in the Hugging Face cache,
/// or the same as a map.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ArtifactSpec {
    Path(String),
    Hub(HubFileSpec),
}

/// A file of a Hugging Face repository, looked for in the local cache (nothing is downloaded).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubFileSpec {
    /// `org/name` of the repository.
    pub repo: String,
    /// The file's path in the repository.
    pub file: String,
    /// Branch, tag or commit; default `main`.
    pub revision: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SizeCategory {
    Tiny,
    Small,
    Medium,
    Large,
    Xlarge,
    Huge,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedShape {
    pub hidden_size: Option<u64>,
    pub num_layers: Option<u64>,
    pub num_heads: Option<u64>,
    pub num_kv_heads: Option<u64>,
    pub vocab_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    /// The longest sequence the model takes, in tokens (`max_position_embeddings`). Edge-case
    /// generators size their long inputs to fit it.
    pub context_length: Option<u64>,
    /// The rotary base (config.json `rope_theta` or `rope_parameters.rope_theta`; GGUF
    /// `<arch>.rope.freq_base`), compared to a relative 1e-6.
    pub rope_theta: Option<f64>,
    /// The RMSNorm epsilon (config.json `rms_norm_eps`; GGUF
    /// `<arch>.attention.layer_norm_rms_epsilon`), compared to a relative 1e-6 (GGUF stores f32).
    pub rms_norm_eps: Option<f64>,
    /// The start-of-sequence token id (config.json `bos_token_id`; GGUF
    /// `tokenizer.ggml.bos_token_id`).
    pub bos_token_id: Option<u64>,
    /// An end-of-sequence token id: one of config.json's `eos_token_id` (a number or a list);
    /// GGUF's `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u64>,
}

/// One scenario: what is asked, and how the answer is judged. Exactly one of `prompt`,
/// `messages`, `generate` and `property` is given.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// The scenario's segment in trial names.
    pub name: String,
    /// A plain prompt (sent as is by `run`, as one user turn by `chat`).
    pub prompt: Option<String>,
    /// A conversation (`chat`, `serve`); the last turn is the user's.
    pub messages: Option<Vec<MessageSpec>>,
    /// Generated cases, each its own trial named `<name>-<index>`.
    #[serde(default, deserialize_with = "serde_yaml_ng::with::singleton_map::deserialize")]
    #[schemars(with = "Option<GeneratorSpec>")]
    pub generate: Option<GeneratorSpec>,
    /// Generated cases run inside one trial; a failure is shrunk to a minimal case.
    #[serde(default, deserialize_with = "serde_yaml_ng::with::singleton_map::deserialize")]
    #[schemars(with = "Option<GeneratorSpec>")]
    pub property: Option<GeneratorSpec>,
    /// How many cases `generate` or `property` makes.
    pub count: Option<u32>,
    /// For a `property`: the share of its generated cases that must pass, above 0 and at most 1
    /// (default 1, every case). Below 1 every case runs, none is shrunk, and the trial fails only
    /// when an exact binomial test puts the model's rate below this one (α = 2.5%); its reason
    /// states n, the count that fails and the rate it detects with 90% power.
    pub pass_rate: Option<f64>,
    /// Every oracle must accept the output. At least one.
    #[serde(default)]
    pub oracles: Vec<OracleSpec>,
    /// Most tokens to generate; default 32.
    pub max_tokens: Option<u32>,
    /// Default greedy.
    pub sampling: Option<SamplingSpec>,
    /// The modalities this scenario runs in, of those its tier has; default all of them. A
    /// completion-style prompt (`def f(x):`) can keep to `run`, a conversation to `chat`.
    pub modalities: Option<Vec<crate::matrix::Modality>>,
    /// Scores in the EDGE category: an awkward input with a right answer (odd case, spacing,
    /// another script, the ends of a range). Scenarios of the `edge_cases` generator always do.
    pub edge: Option<bool>,
    /// Runs the scenario this many times in its trial, and says what passes; repeats that
    /// disagree make the trial `flaky`, never a pass.
    pub repeat: Option<RepeatSpec>,
}

/// `repeat: 5`, or `repeat: {times: 5, pass: all | majority | 4}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "RepeatSchema")]
pub enum RepeatSpec {
    /// Runs; every one must pass.
    Times(u32),
    Policy {
        times: u32,
        pass: PassPolicy,
    },
}

/// Which repeats must pass: `all`, a `majority` (more than half), or at least this many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassPolicy {
    #[default]
    All,
    Majority,
    AtLeast(u32),
}

/// The schema shape of [`RepeatSpec`] (its `Deserialize` is hand-written for clear errors).
#[derive(JsonSchema)]
#[expect(dead_code, reason = "only its JSON Schema is used")]
#[serde(untagged)]
enum RepeatSchema {
    Times(u32),
    Policy {
        times: u32,
        /// `all` (default), `majority`, or how many runs must pass.
        pass: Option<PassSchema>,
    },
}

#[derive(JsonSchema)]
#[expect(dead_code, reason = "only its JSON Schema is used")]
#[serde(untagged)]
enum PassSchema {
    Word(PassWord),
    AtLeast(u32),
}

#[derive(JsonSchema)]
#[expect(dead_code, reason = "only its JSON Schema is used")]
#[serde(rename_all = "lowercase")]
enum PassWord {
    All,
    Majority,
}

impl<'de> Deserialize<'de> for RepeatSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RepeatVisitor;
        impl<'de> de::Visitor<'de> for RepeatVisitor {
            type Value = RepeatSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of runs (`repeat: 5`) or `{times: 5, pass: all | majority | 4}`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RepeatSpec, E> {
                Ok(RepeatSpec::Times(
                    u32::try_from(v).map_err(|_| E::custom(format!("{v} runs is too many")))?,
                ))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RepeatSpec, E> {
                Err(E::custom(format!("a number of runs is at least 1, not {v}")))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RepeatSpec, A::Error> {
                let (mut times, mut pass) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "times" => times = Some(map.next_value::<u32>()?),
                        "pass" => pass = Some(map.next_value::<PassPolicy>()?),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in `repeat` (it has `times` and `pass`)"
                            )));
                        }
                    }
                }
                let times =
                    times.ok_or_else(|| de::Error::custom("`repeat` needs `times`: how many runs"))?;
                Ok(RepeatSpec::Policy { times, pass: pass.unwrap_or_default() })
            }
        }
        d.deserialize_any(RepeatVisitor)
    }
}

impl<'de> Deserialize<'de> for PassPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PassVisitor;
        impl<'de> de::Visitor<'de> for PassVisitor {
            type Value = PassPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`all`, `majority` or how many runs must pass")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PassPolicy, E> {
                match v {
                    "all" => Ok(PassPolicy::All),
                    "majority" => Ok(PassPolicy::Majority),
                    other => Err(E::custom(format!(
                        "`pass` is `all`, `majority` or how many runs must pass, not `{other}`"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PassPolicy, E> {
                Ok(PassPolicy::AtLeast(
                    u32::try_from(v).map_err(|_| E::custom(format!("{v} runs is too many")))?,
                ))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PassPolicy, E> {
                Err(E::custom(format!("`pass` needs at least 1 run, not {v}")))
            }
        }
        d.deserialize_any(PassVisitor)
    }
}

impl RepeatSpec {
    pub fn times(self) -> u32 {
        match self {
            RepeatSpec::Times(n) | RepeatSpec::Policy { times: n, .. } => n,
        }
    }

    pub fn pass(self) -> PassPolicy {
        match self {
            RepeatSpec::Times(_) => PassPolicy::All,
            RepeatSpec::Policy { pass, .. } => pass,
        }
    }
}

impl PassPolicy {
    /// How many of `times` runs must pass.
    pub fn needed(self, times: u32) -> u32 {
        match self {
            PassPolicy::All => times,
            PassPolicy::Majority => times / 2 + 1,
            PassPolicy::AtLeast(k) => k,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// A scenario generator, built on proptest strategies with the matrix seed.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GeneratorSpec {
    /// Integer arithmetic prompts such as "What is 7 + 5?".
    Arithmetic(ArithmeticGen),
    /// Prompts that start a function in a programming language.
    Code(CodeGen),
    /// Awkward inputs: empty, whitespace, other scripts, very long, markup.
    EdgeCases(EdgeCaseGen),
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArithmeticGen {
    /// Operators to draw from; default `["+", "-", "*"]`.
    #[serde(default = "ArithmeticGen::default_ops")]
    pub ops: Vec<ArithOp>,
    /// Inclusive operand range; default `[0, 99]`.
    #[serde(default = "ArithmeticGen::default_operands")]
    pub operands: [i64; 2],
    /// Phrasings to draw from; default all.
    #[serde(default = "ArithmeticGen::default_phrasings")]
    pub phrasings: Vec<Phrasing>,
}

impl ArithmeticGen {
    fn default_ops() -> Vec<ArithOp> {
        vec![ArithOp::Add, ArithOp::Sub, ArithOp::Mul]
    }
    fn default_operands() -> [i64; 2] {
        [0, 99]
    }
    fn default_phrasings() -> Vec<Phrasing> {
        vec![Phrasing::WhatIs, Phrasing::Calculate, Phrasing::Equation]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ArithOp {
    #[serde(rename = "+")]
    Add,
    #[serde(rename = "-")]
    Sub,
    #[serde(rename = "*")]
    Mul,
    #[serde(rename = "/")]
    Div,
}

impl ArithOp {
    pub fn symbol(self) -> char {
        match self {
            Self::Add => '+',
            Self::Sub => '-',
            Self::Mul => '*',
            Self::Div => '/',
        }
    }
}

/// How an arithmetic question is worded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phrasing {
    /// "What is 7 + 5?"
    WhatIs,
    /// "Calculate 7*5"
    Calculate,
    /// "7 + 5 ="
    Equation,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeGen {
    /// Languages to draw from; default `[python, rust]`.
    #[serde(default = "CodeGen::default_languages")]
    pub languages: Vec<Language>,
}

impl CodeGen {
    fn default_languages() -> Vec<Language> {
        vec![Language::Python, Language::Rust]
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeCaseGen {
    /// The longest input a case may be, in characters. Default: what fits the smallest
    /// `expect.context_length` of the playbook's models with room for the answer, else 1024.
    pub max_input_chars: Option<u32>,
}

/// Sampling settings; greedy unless a temperature above zero is given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingSpec {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// Overrides the matrix seed.
    pub seed: Option<u64>,
}

/// The JSON Schema of the playbook language, pretty-printed with a trailing newline.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(PlaybookDoc);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}
