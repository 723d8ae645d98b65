//! modelqa: a qualification harness for large language models, as a custom cargo test harness.
//!
//! The pipeline runs in passes (see `ARCHITECTURE.md`): playbooks are parsed ([`playbook`]),
//! expanded into named trials ([`expand`]), bound to model files and devices ([`bind`]), run
//! against an engine ([`engine`]) and judged by oracles ([`oracle`]), and every result is
//! appended to the evidence journal ([`journal`]).
//!
//! A test target needs one item: `fn main() -> ExitCode { modelqa::qualify_main() }`.

pub mod bind;
pub mod certify;
pub mod chat;
pub mod checks;
pub mod cli;
pub mod config;
pub mod engine;
pub mod expand;
pub mod failure;
pub mod format;
pub mod journal;
pub mod matrix;
pub mod modality;
pub mod name;
pub mod oracle;
pub mod playbook;
pub mod progress;
pub mod reporter;
pub mod run;
pub mod serve;
#[cfg(feature = "test-support")]
pub mod testmodel;
pub mod trial;
pub mod vocab;

pub use cli::qualify_main;
#[cfg(feature = "test-support")]
pub mod curriculum;
pub mod integrity;
