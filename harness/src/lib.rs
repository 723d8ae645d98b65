//! modelqa: a qualification harness for large language models, as a custom cargo test harness.
//!
//! A test target needs one item: `fn main() -> ExitCode { modelqa::qualify_main() }`. The
//! verdicts the harness records are spoken in [`vocab`]; nothing else is public.
//!
//! Inside, the pipeline runs in passes (see `ARCHITECTURE.md`): playbooks are parsed
//! (`playbook`), expanded into named trials (`expand`), bound to model files and devices
//! (`bind`), run (`run`, with the trial rooms `trial`, `checks` and `modality`) against an
//! engine (`engine`), judged by oracles (`oracle`), appended to the evidence journal
//! (`journal`), and certified (`certify`).

#![warn(unreachable_pub)]

mod bind;
mod bounded;
mod certify;
mod chat;
mod checks;
mod cli;
mod config;
#[cfg(feature = "test-support")]
mod curriculum;
mod engine;
mod expand;
mod failure;
mod format;
mod fuzz;
mod integrity;
mod journal;
mod matrix;
mod modality;
mod name;
mod oracle;
mod playbook;
mod process;
mod progress;
mod reporter;
mod run;
mod serve;
mod shard;
mod stats;
#[cfg(feature = "test-support")]
mod testmodel;
mod trial;
pub mod vocab;

pub use cli::qualify_main;

#[doc(hidden)]
pub mod support;
