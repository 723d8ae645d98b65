//! Scenario trials, one room per way a model is served: `run` and `chat` in process
//! ([`text`]), `serve` over real HTTP ([`serve`]), and property scenarios over generated cases
//! in any modality ([`property`]).

mod property;
mod serve;
mod text;

pub(crate) use property::run as property;
pub(crate) use serve::run as serve;
pub(crate) use text::run as text;
