//! Certification: what the xtask needs from the library to turn journals into scores, the
//! registry, reports, tickets and the playbook lock. Everything here is pure or reads only the
//! files it is given; `xtask/src/certify.rs` decides which files.

pub mod diff;
pub mod evidence;
pub mod history;
pub mod lock;
pub mod mqs;
pub mod provenance;
pub mod registry;
pub mod report;
mod safe_text;
pub mod tickets;
pub mod workspace;

pub use evidence::ModelEvidence;
pub use mqs::{Score, Status, score};
