//! The built-in definitions of the standard tiers. A playbook lists the tiers its family is
//! qualified at and may override any field; `docs/playbooks.md` shows this table.

use super::spec::{FormatSpec, MatrixSpec};
use crate::matrix::{Backend, Modality, Quantization};

/// The matrix of a standard tier, or `None` for another name.
pub fn builtin(name: &str) -> Option<MatrixSpec> {
    use Backend::*;
    use FormatSpec::*;
    use Modality::*;
    let all_modalities = Some(vec![Run, Chat, Serve]);
    let spec = match name {
        // A sibling of a qualified model, by its files alone: G0 on the ground truth and its
        // kernel class's certified representative (`gate::kernel-class`); the modalities and
        // scenario count are placeholders the tier's layout does not use.
        DIM_SMOKE => MatrixSpec {
            formats: Some(vec![Safetensors]),
            backends: Some(vec![Cpu]),
            modalities: Some(vec![Run]),
            scenario_count: Some(1),
            ..Default::default()
        },
        // Seconds: does the ground truth load and answer at all?
        "smoke" => MatrixSpec {
            formats: Some(vec![Safetensors]),
            backends: Some(vec![Cpu]),
            modalities: Some(vec![Run]),
            scenario_count: Some(3),
            ..Default::default()
        },
        // Every format, backend and modality once: does the model work everywhere it ships?
        "mvp" => MatrixSpec {
            formats: Some(vec![Safetensors, Apr, Gguf]),
            quantizations: Some(vec![Quantization::Q4KM]),
            backends: Some(vec![Cpu, Gpu]),
            modalities: all_modalities,
            scenario_count: Some(3),
            ..Default::default()
        },
        // More scenarios on the ground truth, on CPU.
        "quick" => MatrixSpec {
            formats: Some(vec![Safetensors]),
            backends: Some(vec![Cpu]),
            modalities: Some(vec![Run, Chat]),
            scenario_count: Some(10),
            ..Default::default()
        },
        "standard" => MatrixSpec {
            formats: Some(vec![Safetensors, Apr, Gguf]),
            quantizations: Some(vec![Quantization::Q8_0, Quantization::Q4KM]),
            backends: Some(vec![Cpu, Gpu]),
            modalities: all_modalities,
            scenario_count: Some(25),
            ..Default::default()
        },
        // Every quantization people deploy and every scenario.
        "deep" => MatrixSpec {
            formats: Some(vec![Safetensors, Apr, Gguf]),
            quantizations: Some(vec![
                Quantization::F16,
                Quantization::Q8_0,
                Quantization::Q6K,
                Quantization::Q5KM,
                Quantization::Q4KM,
            ]),
            backends: Some(vec![Cpu, Gpu]),
            modalities: all_modalities,
            scenario_count: None,
            ..Default::default()
        },
        _ => return None,
    };
    Some(spec)
}

/// The tier that checks a model by its files and its kernel class's certified representative.
pub const DIM_SMOKE: &str = "dim-smoke";

/// The names [`builtin`] knows, in the order of increasing cost.
pub(super) const STANDARD_TIERS: [&str; 6] = [DIM_SMOKE, "smoke", "mvp", "quick", "standard", "deep"];
