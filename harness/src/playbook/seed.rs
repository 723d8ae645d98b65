//! The original project's playbook format (`name`, `model.hf_repo`, `test_matrix`, ...), read as
//! it is and mapped onto ours. Its blocks that this build does not run are announced by name.
//!
//! The mapping: the family is the playbook name without its size and tier suffix
//! (`qwen2.5-coder-1.5b-mvp` → `qwen2.5-coder`), the tier is the suffix (none → `standard`),
//! `gguf` means GGUF at the first listed quantization, and `scenario_count` scenarios cycle
//! through `test_matrix.prompts` (or the original default prompts), at least one per prompt.
//! Oracles apply by prompt as the original chose them: `arithmetic` where the prompt holds an
//! arithmetic expression, `garbage` always.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::error::PlaybookError;
use super::limits::MAX_SCENARIOS;
use super::load::parse_yaml;
use super::resolve::{DEFAULT_MAX_TOKENS, resolve_tier};
use super::spec::{
    ArithmeticOracleSpec, FailurePolicy, FormatSpec, GarbageSpec, MatrixSpec, OracleSpec, SamplingSpec,
    SizeCategory,
};
use super::{Input, Model, Notice, Playbook, Scenario, spec};
use crate::matrix::{Backend, Modality, Quantization};
use crate::name::{Shown, check_segment};
use crate::oracle::Oracle;

/// The prompts the original project's generator cycled through when a playbook gave none.
pub const DEFAULT_PROMPTS: [&str; 18] = [
    "What is 2+2?",
    "Calculate 7*8",
    "What is 15-7?",
    "What is 100/4?",
    "2+2=",
    "def fibonacci(n):",
    "fn main() {",
    "async function fetch() {",
    "class Person:",
    "Write a haiku about programming.",
    "List three colors.",
    "Explain what a variable is in one sentence.",
    "Say hello in three languages.",
    "",
    " ",
    "Hello!",
    "你好",
    "こんにちは",
];

/// True when the text is a playbook of the original format (it has `test_matrix`).
pub(super) fn is_seed_document(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("test_matrix:"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedPlaybook {
    name: String,
    #[expect(dead_code, reason = "the playbook's own version; recorded by the lock, not used to run")]
    version: Option<String>,
    #[expect(dead_code, reason = "documentation only")]
    description: Option<String>,
    model: SeedModel,
    test_matrix: SeedMatrix,
    gates: Option<SeedGates>,
    oracles: Option<Vec<SeedOracle>>,
    failure_policy: Option<SeedPolicy>,
    // Blocks read so that the file parses, and announced as not run.
    property_tests: Option<Value>,
    state_machine: Option<Value>,
    differential_tests: Option<Value>,
    profile_ci: Option<Value>,
    trace_payload: Option<Value>,
    contract_tests: Option<Value>,
    ollama_parity: Option<Value>,
    falsification_gates: Option<Value>,
    verification_gates: Option<Value>,
    verification_tests: Option<Value>,
    mvp_matrix: Option<Value>,
    acceptance: Option<Value>,
    // Documentation blocks: they describe the playbook and drive nothing.
    #[expect(dead_code, reason = "documentation only")]
    kernel_profile: Option<Value>,
    #[expect(dead_code, reason = "documentation only")]
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedModel {
    hf_repo: String,
    local_path: Option<std::path::PathBuf>,
    formats: Option<Vec<SeedFormat>>,
    quantizations: Option<Vec<Quantization>>,
    size_category: Option<SeedSize>,
    expected_hidden_dim: Option<u64>,
    expected_num_layers: Option<u64>,
    expected_num_heads: Option<u64>,
    expected_num_kv_heads: Option<u64>,
    expected_vocab_size: Option<u64>,
    expected_intermediate_dim: Option<u64>,
    family: Option<String>,
    #[expect(dead_code, reason = "the size is read from the playbook name")]
    size_variant: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SeedFormat {
    Gguf,
    Safetensors,
    Apr,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SeedSize {
    Tiny,
    Small,
    Medium,
    Large,
    Xlarge,
    Huge,
    /// Templates leave the size to be worked out.
    Auto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedMatrix {
    modalities: Vec<Modality>,
    backends: Vec<Backend>,
    scenario_count: Option<u32>,
    prompts: Option<Vec<String>>,
    seed: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedGates {
    g1_model_loads: Option<Flag>,
    g2_basic_inference: Option<Flag>,
    g3_no_crashes: Option<Flag>,
    g4_output_quality: Option<Flag>,
}

/// The original's booleans, written `true` or `"true"`.
#[derive(Debug, Clone, Copy)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(b) => Ok(Flag(b)),
            Raw::Text(t) => match t.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Flag(true)),
                "false" | "no" | "off" | "0" => Ok(Flag(false)),
                _ => Err(serde::de::Error::custom(format!("expected a boolean, found `{t}`"))),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedOracle {
    #[serde(rename = "type")]
    kind: SeedOracleKind,
    config: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SeedOracleKind {
    Arithmetic,
    Garbage,
    CodeSyntax,
    Response,
    Composite,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SeedPolicy {
    StopOnFirst,
    StopOnP0,
    CollectAll,
}

const TIER_SUFFIXES: [&str; 7] = ["mvp", "smoke", "quick", "ci", "full", "nightly", "release"];

/// Splits `qwen2.5-coder-1.5b-mvp` into family `qwen2.5-coder` and tier `mvp`.
fn family_and_tier(name: &str) -> (String, String) {
    let (stem, tier) = match name.rsplit_once('-') {
        Some((stem, t)) if TIER_SUFFIXES.contains(&t) => (stem, t.to_string()),
        _ => (name, "standard".to_string()),
    };
    // Drop a trailing size such as `-1.5b` or `-7b`.
    let family = match stem.rsplit_once('-') {
        Some((f, size))
            if size.ends_with('b')
                && size.len() > 1
                && size[..size.len() - 1].chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            f
        }
        _ => stem,
    };
    (family.to_string(), tier)
}

/// The original's `profile_ci` block as performance assertions, when it is enabled and asserts.
fn seed_performance(v: &Value) -> Option<super::spec::PerformanceSpec> {
    // Read as the gate flags are: `no`, `off` and `0` disable it too.
    let enabled = match &v["enabled"] {
        Value::Bool(b) => *b,
        Value::String(s) => !matches!(s.to_ascii_lowercase().as_str(), "false" | "no" | "off" | "0"),
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    };
    let number = |x: &Value| x.as_f64().or_else(|| x.as_str().and_then(|s| s.parse().ok()));
    let count = |x: &Value| number(x).map(|n| n as u32);
    let a = &v["assertions"];
    let spec = super::spec::PerformanceSpec {
        warmup: count(&v["warmup"]),
        runs: count(&v["measure"]).filter(|n| *n > 0),
        // The original's `min_throughput` is the floor of a backend that names none of its own.
        min_tokens_per_second: super::spec::PerBackend {
            cpu: number(&a["min_throughput_cpu"]).or_else(|| number(&a["min_throughput"])),
            gpu: number(&a["min_throughput_gpu"]).or_else(|| number(&a["min_throughput"])),
        },
        ..Default::default()
    };
    (enabled
        && (spec.asserts_on(crate::matrix::Backend::Cpu) || spec.asserts_on(crate::matrix::Backend::Gpu)))
    .then_some(spec)
}

pub(super) fn load(file: &Path, text: &str, notices: &mut Vec<Notice>) -> Result<Playbook, PlaybookError> {
    let pb: SeedPlaybook = parse_yaml(file, text)?;
    let err = |m: String| PlaybookError::new(file, m);
    let mut notice = |m: String| notices.push(Notice { file: file.to_path_buf(), message: m });

    for (block, present) in [
        ("property_tests", pb.property_tests.is_some()),
        ("state_machine", pb.state_machine.is_some()),
        ("trace_payload", pb.trace_payload.is_some()),
        ("ollama_parity", pb.ollama_parity.is_some()),
        ("falsification_gates", pb.falsification_gates.is_some()),
        ("verification_gates", pb.verification_gates.is_some()),
        ("verification_tests", pb.verification_tests.is_some()),
        ("mvp_matrix", pb.mvp_matrix.is_some()),
        ("acceptance", pb.acceptance.is_some()),
    ] {
        if present {
            notice(format!("block `{block}` is not implemented yet: it was read and will not run"));
        }
    }
    if pb.differential_tests.is_some() {
        notice(
            "block `differential_tests`: its settings are not read yet; every derived format gets the \
             default differential trials (tensors, logits and greedy generation against safetensors)"
                .to_string(),
        );
    }
    if pb.contract_tests.is_some() {
        notice(
            "block `contract_tests`: its invariant list is not read; every derived format gets all \
             five invariant trials (I-1 to I-5)"
                .to_string(),
        );
    }
    let performance = pb.profile_ci.as_ref().and_then(seed_performance);
    if pb.profile_ci.is_some() {
        notice(match &performance {
            Some(_) => "block `profile_ci`: read as performance assertions (`min_throughput_cpu`/`_gpu`, \
                        else `min_throughput`, as tokens/s, `warmup`, `measure` as runs); its formats and \
                        backends follow the matrix"
                .to_string(),
            None => "block `profile_ci` is disabled or asserts nothing: no performance trials".to_string(),
        });
        let assertions = pb.profile_ci.as_ref().map(|v| &v["assertions"]);
        let latencies: Vec<&str> = ["max_p50_ms", "max_p99_ms"]
            .into_iter()
            .filter(|k| assertions.is_some_and(|a| !a[*k].is_null()))
            .collect();
        if performance.is_some() && !latencies.is_empty() {
            notice(format!(
                "block `profile_ci`: {} not asserted (request latency percentiles are not measured by perf::decode)",
                latencies.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" and ")
            ));
        }
    }
    if let Some(g) = &pb.gates {
        for (gate, flag) in [
            ("g1_model_loads", g.g1_model_loads),
            ("g2_basic_inference", g.g2_basic_inference),
            ("g3_no_crashes", g.g3_no_crashes),
            ("g4_output_quality", g.g4_output_quality),
        ] {
            if let Some(Flag(false)) = flag {
                notice(format!("`gates.{gate}: false` is not honoured: gateways always run"));
            }
        }
    }

    let (family, tier) = family_and_tier(&pb.name);
    check_segment(&family).map_err(|why| {
        err(format!("family `{}` (from `name`) is not valid: {why}", Shown(&family))).at("name")
    })?;

    let Some((_, repo_name)) = pb.model.hf_repo.split_once('/') else {
        return Err(err(format!("`{}` is not `org/name`", pb.model.hf_repo)).at("model.hf_repo"));
    };
    super::resolve::check_model_id(&pb.model.hf_repo).map_err(|e| err(e.to_string()).at("model.hf_repo"))?;
    let slug = repo_name.to_ascii_lowercase();
    check_segment(&slug).map_err(|why| {
        err(format!("model `{}` (from `hf_repo`) is not valid: {why}", Shown(&slug))).at("model.hf_repo")
    })?;
    let m = &pb.model;
    let model = Model {
        id: m.hf_repo.clone(),
        slug,
        revision: "main".into(),
        path: m.local_path.as_ref().map(|p| file.parent().unwrap_or(Path::new(".")).join(p)),
        architecture: m.family.clone(),
        size: m.size_category.and_then(|s| match s {
            SeedSize::Tiny => Some(SizeCategory::Tiny),
            SeedSize::Small => Some(SizeCategory::Small),
            SeedSize::Medium => Some(SizeCategory::Medium),
            SeedSize::Large => Some(SizeCategory::Large),
            SeedSize::Xlarge => Some(SizeCategory::Xlarge),
            SeedSize::Huge => Some(SizeCategory::Huge),
            SeedSize::Auto => None,
        }),
        expect: spec::ExpectedShape {
            hidden_size: m.expected_hidden_dim,
            num_layers: m.expected_num_layers,
            num_heads: m.expected_num_heads,
            num_kv_heads: m.expected_num_kv_heads,
            vocab_size: m.expected_vocab_size,
            intermediate_size: m.expected_intermediate_dim,
            context_length: None,
            ..Default::default()
        },
        prompt_template: "{prompt}".into(),
        artifacts: Vec::new(),
    };

    // The original tested GGUF at its first quantization; the rest of the list did nothing.
    let quantization =
        m.quantizations.as_ref().and_then(|q| q.first().copied()).unwrap_or(Quantization::Q4KM);
    let formats = m
        .formats
        .clone()
        .unwrap_or_else(|| vec![SeedFormat::Gguf, SeedFormat::Safetensors, SeedFormat::Apr])
        .into_iter()
        .map(|f| match f {
            SeedFormat::Gguf => FormatSpec::GgufAt(quantization),
            SeedFormat::Safetensors => FormatSpec::Safetensors,
            SeedFormat::Apr => FormatSpec::Apr,
        })
        .collect();

    let prompts: Vec<String> = match &pb.test_matrix.prompts {
        Some(p) if !p.is_empty() => p.clone(),
        _ => DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect(),
    };
    let count = (pb.test_matrix.scenario_count.unwrap_or(100) as usize).max(
        // Every prompt the playbook lists runs at least once.
        pb.test_matrix.prompts.as_ref().map_or(0, Vec::len),
    );
    if count > MAX_SCENARIOS {
        return Err(err(format!(
            "`scenario_count` asks for {count} scenarios; a playbook may define at most {MAX_SCENARIOS}"
        ))
        .at("test_matrix.scenario_count"));
    }

    let declared = pb.oracles.unwrap_or_default();
    for o in &declared {
        let name = match o.kind {
            SeedOracleKind::CodeSyntax => {
                // Python and Rust are parsed; any other language the config lists is not.
                let languages =
                    o.config.as_ref().and_then(|c| c.get("languages")).and_then(Value::as_sequence);
                for lang in languages.into_iter().flatten().filter_map(Value::as_str) {
                    if !matches!(lang, "python" | "rust") {
                        notice(format!(
                            "oracle `code_syntax` for `{lang}` is not implemented yet: only Python and Rust are parsed"
                        ));
                    }
                }
                continue;
            }
            SeedOracleKind::Response => "response",
            SeedOracleKind::Composite => "composite",
            _ => continue,
        };
        notice(format!("oracle `{name}` is not implemented yet: it will not judge any trial"));
    }
    let arithmetic =
        declared.iter().find(|o| o.kind == SeedOracleKind::Arithmetic).map(|o| ArithmeticOracleSpec {
            tolerance: o.config.as_ref().and_then(|c| c.get("tolerance")).and_then(Value::as_f64),
        });
    let garbage = declared
        .iter()
        .find(|o| o.kind == SeedOracleKind::Garbage)
        .map(|o| GarbageSpec {
            max_repetition_ratio: o
                .config
                .as_ref()
                .and_then(|c| c.get("max_repetition_ratio"))
                .and_then(Value::as_f64),
            min_unique_chars: o
                .config
                .as_ref()
                .and_then(|c| c.get("min_unique_chars"))
                .and_then(Value::as_u64)
                .map(|n| n as usize),
        })
        .unwrap_or_default();

    let width = count.saturating_sub(1).to_string().len().max(3);
    let mut scenarios = Vec::with_capacity(count);
    for i in 0..count {
        let prompt = prompts[i % prompts.len()].clone();
        let mut oracles = Vec::new();
        if let Some(a) = &arithmetic {
            let oracle = Oracle::from_spec(&OracleSpec::Arithmetic(a.clone()))
                .map_err(|e| PlaybookError::from_error(file, e).at("oracles"))?;
            if oracle.check_applicable(&prompt).is_ok() {
                oracles.push(oracle);
            }
        }
        if declared.iter().any(|o| o.kind == SeedOracleKind::CodeSyntax)
            && crate::oracle::language_of(&prompt).is_some()
        {
            oracles.push(Oracle::CodeSyntax { language: None });
        }
        // The original judged every other prompt with its garbage oracle; so do we.
        oracles.push(
            Oracle::from_spec(&OracleSpec::Garbage(garbage.clone()))
                .map_err(|e| PlaybookError::from_error(file, e).at("oracles"))?,
        );
        scenarios.push(Arc::new(Scenario {
            name: format!("p{i:0width$}"),
            input: Input::Prompt(prompt),
            property: None,
            oracles,
            max_tokens: DEFAULT_MAX_TOKENS,
            sampling: SamplingSpec::default(),
            edge_case: false,
            repeat: super::Repeat::ONCE,
            modalities: None,
        }));
    }

    let matrix = MatrixSpec {
        formats: Some(formats),
        quantizations: None,
        backends: Some(pb.test_matrix.backends.clone()),
        modalities: Some(pb.test_matrix.modalities.clone()),
        scenario_count: None,
        seed: pb.test_matrix.seed,
        timeout_ms: pb.test_matrix.timeout_ms,
    };
    let tier_plan = resolve_tier(&tier, &matrix, scenarios.len())
        .map_err(|e| PlaybookError::from_error(file, e).at("test_matrix"))?;

    Ok(Playbook {
        source: file.to_path_buf(),
        family,
        failure_policy: pb.failure_policy.map(|p| match p {
            SeedPolicy::StopOnFirst => FailurePolicy::StopOnFirst,
            SeedPolicy::StopOnP0 => FailurePolicy::StopOnP0,
            SeedPolicy::CollectAll => FailurePolicy::CollectAll,
        }),
        engine: super::spec::EngineSpec::Embedded,
        performance,
        differential: super::spec::DifferentialSpec::default(),
        models: vec![model],
        tiers: vec![tier_plan],
        scenarios,
    })
}

#[cfg(test)]
mod tests {
    use super::family_and_tier;

    #[test]
    fn names_split_into_family_and_tier() {
        let check = |name: &str, family: &str, tier: &str| {
            assert_eq!(family_and_tier(name), (family.to_string(), tier.to_string()), "{name}");
        };
        check("qwen2.5-coder-1.5b-mvp", "qwen2.5-coder", "mvp");
        check("qwen2.5-coder-1.5b", "qwen2.5-coder", "standard");
        check("qwen2.5-coder-7b-full", "qwen2.5-coder", "full");
        check("deepseek-coder-1.3b-ci", "deepseek-coder", "ci");
        check("llama-3.2-1b", "llama-3.2", "standard");
        check("phi-3-mini", "phi-3-mini", "standard");
    }
}
