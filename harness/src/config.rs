//! Harness settings from `QUALIFY_*` environment variables (nextest forwards no custom flags).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::bind::SearchRoots;
use crate::playbook::FailurePolicy;

/// Every setting of one harness run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `QUALIFY_PLAYBOOKS`: a playbook file or a directory of them; default `playbooks/`.
    pub playbooks: PathBuf,
    pub roots: SearchRoots,
    /// `QUALIFY_FAILURE_POLICY`: overrides every playbook's `failure_policy`.
    pub failure_policy: Option<FailurePolicy>,
    /// `QUALIFY_RUN_ID`, else `NEXTEST_RUN_ID`, else generated.
    pub run_id: String,
    /// `QUALIFY_JOURNAL_DIR`; default `$CARGO_TARGET_DIR/qualify/journal` (`target/…`).
    pub journal_dir: PathBuf,
    /// Running as one of nextest's processes, which share the journal.
    pub under_nextest: bool,
    /// `QUALIFY_RESUME`: the run to resume. Its journal is appended to, and the trials that
    /// already have a final record in it are not run again.
    pub resume: bool,
    /// `QUALIFY_SHARD=k/n`: run only the models this shard of `n` takes (`shard`).
    pub shard: Option<Shard>,
    /// `QUALIFY_SHARD_TIMES`: the journals or certification evidence the shards balance by;
    /// default `certifications` (the committed evidence, the same on every machine).
    pub shard_times: PathBuf,
    /// `QUALIFY_MEMORY_BUDGET`: what the sessions loaded at once may hold.
    pub memory_budget: MemoryBudget,
    /// `QUALIFY_CERTIFICATIONS`: the certifications the `dim-smoke` tier's representatives are
    /// found in; default `certifications` (the checkout's).
    pub certifications: PathBuf,
    /// `QUALIFY_CELL_BATCH`: the most answers a cell's scenario trials generate as one batch
    /// (`trial::CellBatches`); 1 generates each alone. Default 32.
    pub cell_batch: std::num::NonZeroUsize,
}

/// What the sessions a run holds at once may hold, by their estimated footprints
/// (`QUALIFY_MEMORY_BUDGET`): bytes with a unit (`12GiB`, `800M`, `16GB`), a share of the
/// machine's memory (`60%`), or `unlimited`. The default is three quarters of the machine's
/// memory — the smaller of its physical memory and its cgroup's limit — so a model that cannot
/// fit is ignored with the reason instead of being killed by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryBudget {
    /// `None`: unlimited (set so, or the machine's memory is unknown).
    pub(crate) bytes: Option<u64>,
    /// Whether the user set it (else it is the default).
    pub(crate) set: bool,
}

/// The default budget's share of the machine's memory, in percent.
pub(crate) const DEFAULT_MEMORY_SHARE: u64 = 75;

impl MemoryBudget {
    /// Parses the variable's value; `machine` is the machine's memory, where known.
    pub(crate) fn parse(text: &str, machine: Option<u64>) -> Result<MemoryBudget, String> {
        let t = text.trim();
        if matches!(t.to_ascii_lowercase().as_str(), "unlimited" | "off" | "none") {
            return Ok(MemoryBudget { bytes: None, set: true });
        }
        if let Some(percent) = t.strip_suffix('%') {
            let p: f64 =
                percent.trim().parse().map_err(|_| format!("`{t}` is not a percentage (e.g. 60%)"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("`{t}`: a share of the machine's memory is above 0% and at most 100%"));
            }
            let machine = machine.ok_or("the machine's memory is unknown here: give bytes (e.g. 12GiB)")?;
            return Ok(MemoryBudget { bytes: Some((machine as f64 * p / 100.0) as u64), set: true });
        }
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{t}` is not a size (e.g. 12GiB, 800M, 60% or unlimited)"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => return Err(format!("`{other}` is not a unit of size (B, K, M, G, T, KiB…, KB…)")),
        };
        let bytes = number * scale as f64;
        if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
            return Err(format!("`{t}` is not a size of at least one byte"));
        }
        Ok(MemoryBudget { bytes: Some(bytes as u64), set: true })
    }

    /// The budget from the environment, or the default.
    fn from_env() -> Result<MemoryBudget, ConfigError> {
        let machine = machine_memory();
        match var("QUALIFY_MEMORY_BUDGET") {
            Some(v) => MemoryBudget::parse(&v, machine).map_err(|expected| ConfigError {
                var: "QUALIFY_MEMORY_BUDGET",
                value: v.clone(),
                expected,
            }),
            None => Ok(MemoryBudget { bytes: machine.map(|m| m / 100 * DEFAULT_MEMORY_SHARE), set: false }),
        }
    }
}

/// The memory this process may use: the machine's physical memory (`/proc/meminfo`), or its
/// cgroup's limit where that is smaller (a CI container); `None` where neither can be read.
pub(crate) fn machine_memory() -> Option<u64> {
    let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

/// One shard of `count`, numbered from 1 (`QUALIFY_SHARD=2/4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) index: usize,
    pub(crate) count: usize,
}

impl Shard {
    /// `k/n` with 1 ≤ k ≤ n.
    pub(crate) fn parse(text: &str) -> Result<Shard, String> {
        let (k, n) = text.trim().split_once('/').ok_or_else(|| format!("`{text}` is not k/n (e.g. 2/4)"))?;
        let number =
            |s: &str| s.trim().parse::<usize>().map_err(|_| format!("`{text}` is not k/n (e.g. 2/4)"));
        let (index, count) = (number(k)?, number(n)?);
        if count == 0 || index == 0 || index > count {
            return Err(format!("`{text}`: the shard must be 1 to {count}, of at least one"));
        }
        Ok(Shard { index, count })
    }
}

/// A setting the user got wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {expected}")]
pub(crate) struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        let failure_policy = match var("QUALIFY_FAILURE_POLICY") {
            None => None,
            Some(v) => Some(FailurePolicy::parse(&v).ok_or_else(|| ConfigError {
                var: "QUALIFY_FAILURE_POLICY",
                value: v.clone(),
                expected: "expected collect-all, stop-on-p0 or stop-on-first".into(),
            })?),
        };
        let resume = var("QUALIFY_RESUME");
        let named = var("QUALIFY_RUN_ID");
        if let (Some(resumed), Some(named)) = (&resume, &named)
            && resumed != named
        {
            return Err(ConfigError {
                var: "QUALIFY_RESUME",
                value: resumed.clone(),
                expected: format!("a resumed run keeps its id, and QUALIFY_RUN_ID names another ({named})"),
            });
        }
        let (var_name, run_id) = match (&resume, named) {
            (Some(r), _) => ("QUALIFY_RESUME", r.clone()),
            (None, Some(n)) => ("QUALIFY_RUN_ID", n),
            (None, None) => ("QUALIFY_RUN_ID", var("NEXTEST_RUN_ID").unwrap_or_else(new_run_id)),
        };
        if run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return Err(ConfigError {
                var: var_name,
                value: run_id,
                expected: "a run id is a file name: no `/`, `\\` or leading `.`".into(),
            });
        }
        let shard = match var("QUALIFY_SHARD") {
            None => None,
            Some(v) => Some(Shard::parse(&v).map_err(|why| ConfigError {
                var: "QUALIFY_SHARD",
                value: v.clone(),
                expected: why,
            })?),
        };
        let cell_batch = match var("QUALIFY_CELL_BATCH") {
            None => std::num::NonZeroUsize::new(32).expect("32 is not zero"),
            Some(v) => v.trim().parse().map_err(|_| ConfigError {
                var: "QUALIFY_CELL_BATCH",
                value: v.clone(),
                expected: "expected a whole number of sequences, at least 1 (1 generates each trial alone)"
                    .into(),
            })?,
        };
        let places = Places::from_env();
        Ok(Self {
            playbooks: places.playbooks,
            roots: places.roots,
            failure_policy,
            run_id,
            journal_dir: places.journal_dir,
            under_nextest: var("NEXTEST").as_deref() == Some("1"),
            resume: resume.is_some(),
            shard,
            shard_times: var("QUALIFY_SHARD_TIMES")
                .map_or_else(|| PathBuf::from("certifications"), PathBuf::from),
            memory_budget: MemoryBudget::from_env()?,
            certifications: var("QUALIFY_CERTIFICATIONS")
                .map_or_else(|| PathBuf::from("certifications"), PathBuf::from),
            cell_batch,
        })
    }
}

/// Where the harness keeps what it can remake: `QUALIFY_CACHE_DIR`, default
/// `$CARGO_TARGET_DIR/qualify/cache` (`target/…`). File hashes and converted artifacts live here.
pub(crate) fn cache_dir() -> PathBuf {
    Places::from_env().cache_dir
}

/// Where the harness reads and writes, as the environment sets it. The one rule for these
/// defaults: the xtask reads the same places, so a journal, playbook or golden reference outside
/// the repository is found where the harness put it.
///
/// The harness takes a relative path as given, relative to its working directory: the repository
/// root under `cargo test`. [`Places::resolved_against`] makes them absolute the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Places {
    /// `CARGO_TARGET_DIR`, default `target`.
    pub target_dir: PathBuf,
    /// `QUALIFY_PLAYBOOKS`: a playbook file or a directory of them; default `playbooks`.
    pub playbooks: PathBuf,
    /// `QUALIFY_JOURNAL_DIR`, default `<target_dir>/qualify/journal`.
    pub journal_dir: PathBuf,
    /// `QUALIFY_CACHE_DIR`, default `<target_dir>/qualify/cache`.
    pub cache_dir: PathBuf,
    /// `QUALIFY_GOLDEN_DIR`, default `golden`.
    pub golden_dir: PathBuf,
    /// `QUALIFY_MODEL_DIR` and the Hugging Face cache.
    pub roots: SearchRoots,
}

impl Places {
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// The places a lookup of variables gives; an empty or blank value counts as unset. Tools
    /// and tests pass their own lookup rather than change the process environment.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<OsString>) -> Self {
        let var = |k: &str| lookup(k).filter(|v| !v.to_string_lossy().trim().is_empty()).map(PathBuf::from);
        let target_dir = var("CARGO_TARGET_DIR").unwrap_or_else(|| PathBuf::from("target"));
        Self {
            playbooks: var("QUALIFY_PLAYBOOKS").unwrap_or_else(|| PathBuf::from("playbooks")),
            journal_dir: var("QUALIFY_JOURNAL_DIR")
                .unwrap_or_else(|| target_dir.join("qualify").join("journal")),
            cache_dir: var("QUALIFY_CACHE_DIR").unwrap_or_else(|| target_dir.join("qualify").join("cache")),
            golden_dir: var("QUALIFY_GOLDEN_DIR").unwrap_or_else(|| PathBuf::from("golden")),
            roots: SearchRoots::from_vars(var),
            target_dir,
        }
    }

    /// Every relative place joined to `root`: where a harness started in `root` finds it.
    pub fn resolved_against(self, root: &Path) -> Self {
        let at = |p: PathBuf| root.join(p);
        Self {
            target_dir: at(self.target_dir),
            playbooks: at(self.playbooks),
            journal_dir: at(self.journal_dir),
            cache_dir: at(self.cache_dir),
            golden_dir: at(self.golden_dir),
            roots: SearchRoots {
                model_dir: self.roots.model_dir.map(at),
                hf_cache: self.roots.hf_cache.map(at),
            },
        }
    }

    /// The variables that make a harness process use these places. `CARGO_TARGET_DIR` is left to
    /// cargo, which builds there, and the Hugging Face variables to hf-hub, which shares them.
    pub fn vars(&self) -> Vec<(&'static str, &Path)> {
        let mut out = vec![
            ("QUALIFY_PLAYBOOKS", self.playbooks.as_path()),
            ("QUALIFY_JOURNAL_DIR", self.journal_dir.as_path()),
            ("QUALIFY_CACHE_DIR", self.cache_dir.as_path()),
            ("QUALIFY_GOLDEN_DIR", self.golden_dir.as_path()),
        ];
        if let Some(dir) = &self.roots.model_dir {
            out.push(("QUALIFY_MODEL_DIR", dir.as_path()));
        }
        out
    }
}

/// Every `QUALIFY_*` variable modelqa reads (the harness, the xtask and the benches); any other
/// is named on stderr as a likely typo, with the nearest of these.
pub(crate) const VARIABLES: &[&str] = &[
    "QUALIFY_PLAYBOOKS",
    "QUALIFY_MODEL_DIR",
    "QUALIFY_FAILURE_POLICY",
    "QUALIFY_RUN_ID",
    "QUALIFY_JOURNAL_DIR",
    "QUALIFY_CACHE_DIR",
    "QUALIFY_GOLDEN_DIR",
    "QUALIFY_NO_TRIALS",
    "QUALIFY_FAULT_SLOWDOWN",
    "QUALIFY_FAULT_CRASH",
    "QUALIFY_FAULT_SERVE",
    "QUALIFY_FAULT_INJECTION",
    "QUALIFY_FAULT_KV_EARLY",
    "QUALIFY_FAULT_BATCH_REDUCTION",
    "QUALIFY_RESUME",
    "QUALIFY_SHARD",
    "QUALIFY_SHARD_TIMES",
    "QUALIFY_MEMORY_BUDGET",
    "QUALIFY_CERTIFICATIONS",
    "QUALIFY_CELL_BATCH",
];

/// `QUALIFY_*` variables set in the environment that modelqa does not read, each with the
/// nearest name it does read (when one is close).
pub(crate) fn unknown_variables() -> Vec<(String, Option<&'static str>)> {
    let mut unknown: Vec<(String, Option<&'static str>)> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("QUALIFY_") && !VARIABLES.contains(&k.as_str()))
        .map(|k| {
            let nearest = VARIABLES
                .iter()
                .map(|v| (strsim::levenshtein(&k, v), *v))
                .min()
                .filter(|(d, _)| *d <= 3)
                .map(|(_, v)| v);
            (k, nearest)
        })
        .collect();
    unknown.sort();
    unknown
}

/// What a run whose filter selects no trial does (`QUALIFY_NO_TRIALS`), as nextest's
/// `--no-tests`: a typo in a filter must not read as a green run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoTrials {
    /// The default: fail when the filter is aimed at trials (it names, or nearly names, a family
    /// of the playbooks), warn otherwise — `cargo test --workspace -- FILTER` hands a filter meant
    /// for other tests to this harness too, and libtest passes a binary that selects nothing.
    Auto,
    Fail,
    Warn,
    Pass,
}

impl NoTrials {
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        match var("QUALIFY_NO_TRIALS").as_deref() {
            None | Some("auto") => Ok(Self::Auto),
            Some("fail") => Ok(Self::Fail),
            Some("warn") => Ok(Self::Warn),
            Some("pass") => Ok(Self::Pass),
            Some(other) => Err(ConfigError {
                var: "QUALIFY_NO_TRIALS",
                value: other.to_string(),
                expected: "expected auto, fail, warn or pass".into(),
            }),
        }
    }
}

/// `QUALIFY_FAULT_SLOWDOWN`: a fault the harness's own tests plant to prove the performance
/// verdict catches a slower model. Every forward pass of the embedded engine then takes this many
/// times as long. Read once; absent, malformed or ≤ 1 means no fault.
pub(crate) fn planted_slowdown() -> Option<f64> {
    static FACTOR: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *FACTOR.get_or_init(|| {
        var("QUALIFY_FAULT_SLOWDOWN")?.parse::<f64>().ok().filter(|f| *f > 1.0 && f.is_finite())
    })
}

/// `QUALIFY_FAULT_CRASH=KIND[:TRIAL]`: a fault the harness's own tests plant to prove that a
/// crash or a hang inside the engine still ends its trial with a record that fails G3 or times
/// out. `KIND` is `abort` (the process aborts), `segfault` (it takes SIGSEGV), `hang` (the forward
/// pass never returns) or `panic`; the fault fires in the forward passes of trials whose name
/// contains `TRIAL` (every trial when it is absent). Read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlantedCrash {
    pub kind: CrashKind,
    pub trial: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashKind {
    Abort,
    Segfault,
    Hang,
    Panic,
}

pub(crate) fn planted_crash() -> Option<&'static PlantedCrash> {
    static CRASH: std::sync::OnceLock<Option<PlantedCrash>> = std::sync::OnceLock::new();
    CRASH
        .get_or_init(|| {
            let value = var("QUALIFY_FAULT_CRASH")?;
            let (kind, trial) = match value.split_once(':') {
                Some((k, t)) => (k.to_string(), Some(t.to_string())),
                None => (value, None),
            };
            let kind = match kind.as_str() {
                "abort" => CrashKind::Abort,
                "segfault" => CrashKind::Segfault,
                "hang" => CrashKind::Hang,
                "panic" => CrashKind::Panic,
                _ => return None,
            };
            Some(PlantedCrash { kind, trial })
        })
        .as_ref()
}

thread_local! {
    /// The trials whose answers this thread generates ahead in a cell's batch
    /// (`trial::CellBatches`), for the planted crash, which names a trial.
    static GENERATING_FOR: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// While it lives, this thread generates the answers of these trials in one batch: a planted
/// crash naming any of them fires here. Dropped when the batch ends, by a panic too.
pub(crate) struct GeneratingFor;

impl GeneratingFor {
    pub(crate) fn new(trials: Vec<String>) -> Self {
        GENERATING_FOR.set(trials);
        GeneratingFor
    }
}

impl Drop for GeneratingFor {
    fn drop(&mut self) {
        GENERATING_FOR.set(Vec::new());
    }
}

/// Whether this thread generates, in a batch, the answer of a trial whose name contains `part`.
pub(crate) fn generating_for(part: &str) -> bool {
    GENERATING_FOR.with_borrow(|names| names.iter().any(|n| n.contains(part)))
}

/// `QUALIFY_FAULT_SERVE=always|queued`: a fault the harness's own tests plant to prove that
/// `diff::serve-vs-run` catches a server whose answers are not the model's. The server then
/// answers a whole (not streamed) request's first token with the model's sixth most likely token
/// there (or the next that does not end generation), as a served path with a broken token
/// selection would: on every such request
/// (`always`), or only on one that shared the model with another request — waited behind it or
/// ran in a batch beside it (`queued`) —, a fault only concurrency shows. Read once; absent or anything else means no fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlantedServeFault {
    Always,
    Queued,
}

impl PlantedServeFault {
    /// Whether the fault fires on a request that shared the model with another
    /// ([`crate::engine::Answer::shared`]) or did not.
    pub(crate) fn fires(self, shared: bool) -> bool {
        self == PlantedServeFault::Always || shared
    }
}

pub(crate) fn planted_serve_fault() -> Option<PlantedServeFault> {
    static FAULT: std::sync::OnceLock<Option<PlantedServeFault>> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| match var("QUALIFY_FAULT_SERVE")?.as_str() {
        "always" => Some(PlantedServeFault::Always),
        "queued" => Some(PlantedServeFault::Queued),
        _ => None,
    })
}

/// `QUALIFY_FAULT_INJECTION=engine|server`: a fault the harness's own tests plant to prove that
/// `gate::special-token-injection` catches user text read as control tokens. `engine`: the
/// embedded engine encodes a prompt's literal ranges as the rest of the prompt (`<|im_end|>`
/// typed by a user becomes the control token) in `run`, `chat` and `serve` alike; `server`: only
/// the server lays chat messages out without guarding them. Read once; anything else is no fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlantedInjection {
    Engine,
    Server,
}

pub(crate) fn planted_injection() -> Option<PlantedInjection> {
    static FAULT: std::sync::OnceLock<Option<PlantedInjection>> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| match var("QUALIFY_FAULT_INJECTION")?.as_str() {
        "engine" => Some(PlantedInjection::Engine),
        "server" => Some(PlantedInjection::Server),
        _ => None,
    })
}

/// `QUALIFY_FAULT_KV_EARLY=1`: a fault the harness's own tests plant to prove that a KV cache
/// advanced one step early (the original project's state-advancement-timing bug: the cache length
/// advanced on layer 0, before the other layers read it) is caught. Every forward pass of the
/// embedded engine that continues a cached sequence (position > 0) then runs one position past
/// where it is, as an engine that advanced its position before the step would. Read once; `1` is
/// the fault, anything else none.
pub(crate) fn planted_kv_early() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| var("QUALIFY_FAULT_KV_EARLY").as_deref() == Some("1"))
}

/// `QUALIFY_FAULT_BATCH_REDUCTION=1`: a fault the harness's own tests plant to prove that a
/// batch-dependent reduction is caught. The projections of a batch of sequences
/// (`Session::batch_logits`) in the embedded engine's own models then multiply on candle's
/// dense kernel, whose reduction order is not the project's kernels', as an engine with a
/// separate batched kernel would.
/// Read once; `1` is the fault, anything else none.
pub(crate) fn planted_batch_reduction() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| var("QUALIFY_FAULT_BATCH_REDUCTION").as_deref() == Some("1"))
}

/// A fresh run id: UTC time and process id, sortable.
pub fn new_run_id() -> String {
    let now = jiff::Timestamp::now();
    format!("{}-{}", now.strftime("%Y%m%dT%H%M%SZ"), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_budget_reads_sizes_shares_and_unlimited_and_refuses_the_rest() {
        let gib = 1u64 << 30;
        let budget = |t: &str| MemoryBudget::parse(t, Some(16 * gib)).map(|b| b.bytes);
        assert_eq!(budget("12GiB"), Ok(Some(12 * gib)));
        assert_eq!(budget("12G"), Ok(Some(12 * gib)));
        assert_eq!(budget(" 1.5 g "), Ok(Some(3 * gib / 2)));
        assert_eq!(budget("800MB"), Ok(Some(800_000_000)));
        assert_eq!(budget("4096"), Ok(Some(4096)));
        assert_eq!(budget("50%"), Ok(Some(8 * gib)));
        assert_eq!(budget("unlimited"), Ok(None));
        for bad in ["", "12 parsecs", "GiB", "0", "-3G", "0%", "150%", "1e400"] {
            assert!(budget(bad).is_err(), "{bad:?} is refused");
        }
        assert!(MemoryBudget::parse("60%", None).unwrap_err().contains("unknown"));
    }
}
