//! The dimensions of the qualification matrix: formats, backends, modalities and tiers.
//!
//! These are the words that appear in playbooks and in trial names. Each type owns its spelling
//! (`as_str`) and its parser, so a name printed by the harness always parses back.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A GGUF quantization, spelled as llama.cpp spells it in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Quantization {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q6_k")]
    Q6K,
    #[serde(rename = "q5_k_m")]
    Q5KM,
    #[serde(rename = "q5_0")]
    Q5_0,
    #[serde(rename = "q4_k_m")]
    Q4KM,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q3_k_m")]
    Q3KM,
    #[serde(rename = "q2_k")]
    Q2K,
}

impl Quantization {
    pub const ALL: [Quantization; 10] = [
        Self::F32,
        Self::F16,
        Self::Q8_0,
        Self::Q6K,
        Self::Q5KM,
        Self::Q5_0,
        Self::Q4KM,
        Self::Q4_0,
        Self::Q3KM,
        Self::Q2K,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q6K => "q6_k",
            Self::Q5KM => "q5_k_m",
            Self::Q5_0 => "q5_0",
            Self::Q4KM => "q4_k_m",
            Self::Q4_0 => "q4_0",
            Self::Q3KM => "q3_k_m",
            Self::Q2K => "q2_k",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

/// A model file format as it appears in a trial name: `safetensors`, `apr` or `gguf-<quantization>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// The model as published: the ground truth every other format is compared with.
    Safetensors,
    Apr,
    Gguf(Quantization),
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "safetensors" => Some(Self::Safetensors),
            "apr" => Some(Self::Apr),
            _ => s.strip_prefix("gguf-").and_then(Quantization::parse).map(Self::Gguf),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::Safetensors => "safetensors".into(),
            Self::Apr => "apr".into(),
            Self::Gguf(q) => format!("gguf-{}", q.as_str()),
        }
    }

    /// Why trials in this format cannot run with this build, if they cannot.
    pub fn unsupported_reason(self) -> Option<&'static str> {
        match self {
            Self::Safetensors | Self::Apr => None,
            Self::Gguf(Quantization::Q3KM | Quantization::Q2K) => {
                Some("the gguf q3_k_m and q2_k mixes are not implemented yet")
            }
            Self::Gguf(_) => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    /// A CUDA device; needs the `cuda` cargo feature and a device at run time.
    Gpu,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Self::Cpu, Self::Gpu];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// How the model is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Plain completion of the prompt.
    Run,
    /// The model's own chat template.
    Chat,
    /// An OpenAI-compatible server over HTTP.
    Serve,
}

impl Modality {
    pub const ALL: [Modality; 3] = [Self::Run, Self::Chat, Self::Serve];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Chat => "chat",
            Self::Serve => "serve",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Quantization, Backend, Modality);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_back() {
        for q in Quantization::ALL {
            let f = Format::Gguf(q);
            assert_eq!(Format::parse(&f.name()), Some(f));
        }
        for f in [Format::Safetensors, Format::Apr] {
            assert_eq!(Format::parse(&f.name()), Some(f));
        }
        for b in Backend::ALL {
            assert_eq!(Backend::parse(b.as_str()), Some(b));
        }
        for m in Modality::ALL {
            assert_eq!(Modality::parse(m.as_str()), Some(m));
        }
        assert_eq!(Format::parse("gguf"), None);
        assert_eq!(Format::parse("gguf-q9"), None);
    }
}
