//! Not an API: what this project's own xtask and tests reach into (insta's
//! `_cargo_insta_support` pattern). Nothing here is stable, documented for users or versioned;
//! a user's harness needs [`crate::qualify_main`] and the words of [`crate::vocab`] only.
//!
//! Each module mirrors the crate module it re-exports from, so a test reads
//! `modelqa::support::journal::EvidenceRecord` where the code says `crate::journal::EvidenceRecord`.

pub mod bind {
    pub use crate::bind::{Location, SearchRoots, hf_repo_dir, hf_snapshot_dir, locate, locate_artifact};
}

/// The xtask's `certify`, `report`, `tickets` and `lock` tasks drive the whole module.
pub mod certify {
    pub use crate::certify::*;
}

pub mod checks {
    pub mod diff {
        pub use crate::checks::diff::{
            LogitEvidence, LogitTolerance, invariant, kl_divergence, logits, tensors,
        };
    }
    pub mod differential {
        pub use crate::checks::differential::first_divergence;
    }
    pub mod golden {
        pub use crate::checks::golden::pending_files;
    }
    pub mod trace {
        pub use crate::checks::trace::{TRACE_TOKENS, TraceBound, diff_trace, gate_trace, traced_logits};
    }
    pub use crate::checks::Verdict;
}

pub mod config {
    pub use crate::config::{Places, new_run_id};

    /// The harness fingerprint `build.rs` stamped into this build (what every record carries).
    pub const HARNESS_FINGERPRINT: &str = env!("MODELQA_HARNESS_FINGERPRINT");
}

#[cfg(feature = "test-support")]
pub mod curriculum {
    pub use crate::curriculum::*;
}

pub mod engine {
    /// candle's thread pools sized as the harness sizes them, for a tool that runs the engine
    /// in its own process (call it first, while the process has one thread).
    pub use crate::engine::size_thread_pools;
    /// The allocator tuned as the harness tunes it, for a tool that runs the engine in its own
    /// process and measures it.
    pub use crate::engine::tune_allocator;
    pub use crate::engine::{
        Answer, EngineError, Finish, Flow, GenerateRequest, Generation, Joining, OnText, PromptGauge,
        Sampling, ScoredStep, Session, SharedSession, TokenLogprob, load_candle, load_candle_hashing_in,
        safetensors_files,
    };
    /// A session's estimated memory, from its files (`QUALIFY_MEMORY_BUDGET`).
    pub use crate::engine::{Footprint, estimate_footprint, peak_resident};
    pub mod client {
        pub use crate::engine::client::{Client, ClientError, Endpoint, ask_logprobs, request_body};
    }
}

pub mod expand {
    pub use crate::expand::{Filter, Plan};
}

pub mod format {
    pub use crate::format::{apr, convert, gguf};
    pub mod files {
        pub use crate::format::files::{hash_file, hash_file_in};
    }
}

/// The xtask's `fuzz` task drives every target.
pub mod fuzz {
    pub use crate::fuzz::{TARGETS, Target, target};
}

/// The gates' statistics: `bench gates` measures what they claim.
pub mod stats {
    pub use crate::stats::*;
}

pub mod journal {
    pub use crate::journal::{BatchMetrics, EvidenceRecord, Metrics, ThirdParty, TracePoint, read};
}

pub mod matrix {
    pub use crate::matrix::{Backend, Format, Modality, Quantization};
}

pub mod oracle {
    pub use crate::oracle::{CodeTests, Oracle, language_of};
}

/// The xtask's `schema` and `lock` tasks and the playbook tests read the language whole.
pub mod playbook {
    pub use crate::playbook::*;
}

pub mod progress {
    pub use crate::progress::*;
}

pub mod serve {
    pub use crate::serve::{ApiKey, EmptyApiKey, Server, ServerConfig};
}

#[cfg(feature = "test-support")]
pub mod testmodel {
    pub use crate::testmodel::*;
}

pub mod trial {
    pub use crate::trial::Ask;
}
