//! `gate::kernel-class` (the `dim-smoke` tier): a model is checked by its files alone when a
//! model of its kernel class ([`crate::engine::kernel_class`]) has a current certification and
//! the two differ by dimensions only.
//!
//! A representative is a model under the certifications directory (`QUALIFY_CERTIFICATIONS`)
//! whose `mqs.json` says CERTIFIED or PROVISIONAL at a tier that runs every format (`mvp`,
//! `standard`, `deep`), whose evidence was recorded by this very harness build (its fingerprint),
//! and whose `config.json` — the file its safetensors trials read, found by the path and SHA-256
//! its evidence records — is here unchanged. Its config and the model's, both normalised, may
//! differ only in numbers (sizes, counts, constants: the same code runs with other numbers);
//! anything else that differs — an activation, a dtype, a rope scaling, a sliding window where
//! the other has none — runs other code, and the sibling needs a qualification of its own.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Verdict;
use crate::engine::{KernelClass, kernel_class};
use crate::trial::Finding;
use crate::vocab::Decider;

/// The tiers whose certification can vouch for a sibling: those that run every format.
pub(crate) const VOUCHING_TIERS: [&str; 3] = ["mvp", "standard", "deep"];

/// Config keys that say nothing about the computation.
const NOT_COMPUTATION: &[&str] = &[
    "_name_or_path",
    "architectures",
    "auto_map",
    "model_type",
    "transformers_version",
    "use_cache",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "torchscript",
    "id2label",
    "label2id",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
];

/// The trial: the model's class, its representatives, and how it differs from the nearest.
pub(crate) fn run(model_dir: &Path, certifications: &Path) -> Finding {
    check(model_dir, certifications).into_finding(Decider::KernelClass)
}

fn check(model_dir: &Path, certifications: &Path) -> Verdict {
    let config = match normalised_config(&model_dir.join("config.json")) {
        Ok(c) => c,
        Err(e) => return Verdict::fail(e),
    };
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or_default().to_string();
    let Some(class) = kernel_class(&model_type) else {
        return Verdict::fail(format!(
            "model_type `{model_type}` is in no kernel class: the embedded engine does not run it"
        ));
    };
    let (representatives, passed_over) = representatives(certifications, class);
    let mut nearest: Option<(Representative, Vec<String>)> = None;
    for rep in representatives {
        let (numbers, code) = differences(&config, &rep.config);
        if code.is_empty() {
            let dims = if numbers.is_empty() {
                "the same config".to_string()
            } else {
                format!("numbers only: {}", numbers.join(", "))
            };
            return Verdict::pass(format!(
                "kernel class `{}` ({}): proven by {} ({} at {}, MQS {}, this harness build); this model differs from it by {dims}",
                class.name, class.runs, rep.model_id, rep.status, rep.tier, rep.mqs
            ));
        }
        if nearest.as_ref().is_none_or(|(_, c)| code.len() < c.len()) {
            nearest = Some((rep, code));
        }
    }
    let mut reason = match nearest {
        Some((rep, code)) => format!(
            "kernel class `{}`: {} is certified, but this model's config differs from its in what runs, not only in numbers: {}",
            class.name,
            rep.model_id,
            code.join("; ")
        ),
        None => format!(
            "kernel class `{}` ({}) has no current certification at {} under {} to vouch for this model: qualify one of its models ({}) at mvp first",
            class.name,
            class.architectures.join(", "),
            VOUCHING_TIERS.join(", "),
            certifications.display(),
            class.architectures.join(", ")
        ),
    };
    if !passed_over.is_empty() {
        reason.push_str(&format!(" (passed over: {})", passed_over.join("; ")));
    }
    Verdict::fail(reason)
}

/// A certified model of the class, with its config as certified.
struct Representative {
    model_id: String,
    status: String,
    tier: String,
    mqs: u64,
    config: Map<String, Value>,
}

#[derive(Deserialize)]
struct Mqs {
    tier: String,
    mqs: u64,
    status: String,
}

#[derive(Deserialize)]
struct Evidence {
    model_id: String,
    harness_fingerprint: String,
    records: Vec<EvidenceRecord>,
}

#[derive(Deserialize)]
struct EvidenceRecord {
    format: String,
    #[serde(default)]
    model_files: Vec<FileRecord>,
}

#[derive(Deserialize)]
struct FileRecord {
    path: String,
    sha256: String,
}

/// The certified models of `class` under `dir`, and why each other certified model of the class
/// cannot vouch (stale, its config missing or changed).
fn representatives(dir: &Path, class: &KernelClass) -> (Vec<Representative>, Vec<String>) {
    let mut found = Vec::new();
    let mut passed_over = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return (found, passed_over) };
    let mut dirs: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for model in dirs {
        let read = |name: &str| std::fs::read_to_string(model.join(name)).ok();
        let (Some(mqs), Some(evidence)) = (read("mqs.json"), read("evidence.json")) else { continue };
        let (Ok(mqs), Ok(evidence)) =
            (serde_json::from_str::<Mqs>(&mqs), serde_json::from_str::<Evidence>(&evidence))
        else {
            continue;
        };
        if !matches!(mqs.status.as_str(), "CERTIFIED" | "PROVISIONAL")
            || !VOUCHING_TIERS.contains(&mqs.tier.as_str())
        {
            continue;
        }
        let config_file = evidence
            .records
            .iter()
            .filter(|r| r.format == "safetensors")
            .flat_map(|r| &r.model_files)
            .find(|f| f.path.ends_with("config.json"));
        let Some(file) = config_file else { continue };
        let path = PathBuf::from(&file.path);
        let config = match crate::format::files::hash_file(&path) {
            Ok(h) if h.sha256 == file.sha256 => match normalised_config(&path) {
                Ok(c) => c,
                Err(_) => continue,
            },
            Ok(_) => {
                passed_over
                    .push(format!("{}: {} changed since it was certified", evidence.model_id, file.path));
                continue;
            }
            Err(_) => {
                passed_over.push(format!("{}: its config {} is not here", evidence.model_id, file.path));
                continue;
            }
        };
        let its_type = config.get("model_type").and_then(Value::as_str).unwrap_or_default();
        if !class.architectures.contains(&its_type) {
            continue;
        }
        if evidence.harness_fingerprint != env!("MODELQA_HARNESS_FINGERPRINT") {
            passed_over.push(format!(
                "{}: certified by another harness build ({}…)",
                evidence.model_id,
                evidence.harness_fingerprint.get(..12).unwrap_or_default()
            ));
            continue;
        }
        found.push(Representative {
            model_id: evidence.model_id,
            status: mqs.status,
            tier: mqs.tier,
            mqs: mqs.mqs,
            config,
        });
    }
    (found, passed_over)
}

/// A config.json as the engine reads it: either of transformers' spellings made one.
fn normalised_config(path: &Path) -> Result<Map<String, Value>, String> {
    let text = crate::format::files::read_side_file(path).map_err(|e| e.to_string())?;
    let config: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = crate::format::hf_config::normalise(path, &config).map_err(|e| e.to_string())?;
    match config {
        Value::Object(map) => Ok(map),
        _ => Err(format!("{} is not a JSON object", path.display())),
    }
}

/// How `here` differs from `there`: in numbers (`key a (b there)`), and in anything else (a
/// string, a flag, a structure, a key one of them lacks that is not null or false in the other).
fn differences(here: &Map<String, Value>, there: &Map<String, Value>) -> (Vec<String>, Vec<String>) {
    let dtype = |m: &Map<String, Value>| m.get("dtype").or_else(|| m.get("torch_dtype")).cloned();
    let mut keys: Vec<String> = here.keys().chain(there.keys()).cloned().collect();
    keys.push("dtype".into());
    keys.sort();
    keys.dedup();
    let (mut numbers, mut code) = (Vec::new(), Vec::new());
    for key in keys {
        if NOT_COMPUTATION.contains(&key.as_str()) || key == "torch_dtype" {
            continue;
        }
        let (a, b) = if key == "dtype" {
            (dtype(here), dtype(there))
        } else {
            (here.get(&key).cloned(), there.get(&key).cloned())
        };
        let absent = |v: &Option<Value>| matches!(v, None | Some(Value::Null) | Some(Value::Bool(false)));
        if a == b || (absent(&a) && absent(&b)) {
            continue;
        }
        let show = |v: &Option<Value>| v.as_ref().map_or("absent".to_string(), Value::to_string);
        let line = format!("{key} {} ({} there)", show(&a), show(&b));
        if numeric(a.as_ref()) && numeric(b.as_ref()) {
            numbers.push(line);
        } else {
            code.push(line);
        }
    }
    (numbers, code)
}

/// A number, or a list of numbers.
fn numeric(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Number(_)) => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_number),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::vocab::Outcome;

    fn llama(hidden: u64, tied: bool) -> Value {
        json!({
            "model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": tied,
            "torch_dtype": "float32"
        })
    }

    /// A certification of the model whose config is `config`, as `cargo xtask certify` writes
    /// the parts the check reads, by harness build `fingerprint`.
    fn certify(certifications: &Path, config: &Path, fingerprint: &str) {
        let dir = certifications.join("org-rep");
        std::fs::create_dir_all(&dir).unwrap();
        let mqs = json!({"tier": "mvp", "mqs": 800, "status": "PROVISIONAL", "grade": "B"});
        std::fs::write(dir.join("mqs.json"), mqs.to_string()).unwrap();
        let sha256 = crate::format::files::hash_file(config).unwrap().sha256;
        let evidence = json!({
            "model_id": "org/rep", "harness_fingerprint": fingerprint,
            "records": [
                {"format": "apr", "model_files": []},
                {"format": "safetensors", "model_files": [
                    {"path": config.join("..").join("model.safetensors"), "sha256": "00"},
                    {"path": config, "sha256": sha256}
                ]}
            ]
        });
        std::fs::write(dir.join("evidence.json"), evidence.to_string()).unwrap();
    }

    #[test]
    fn a_sibling_by_numbers_passes_on_a_current_representative_and_nothing_else_does() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |dir: &str, config: Value| {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
            std::fs::write(tmp.path().join(dir).join("config.json"), config.to_string()).unwrap();
            tmp.path().join(dir)
        };
        let rep = write("rep", llama(64, false));
        let sibling = write("sibling", llama(256, false));
        let other = write("other", llama(256, true));
        let certs = tmp.path().join("certifications");

        let none = check(&sibling, &certs);
        assert_eq!(none.outcome, Outcome::Falsified);
        assert!(none.reason.contains("has no current certification"), "{}", none.reason);

        certify(&certs, &rep.join("config.json"), env!("MODELQA_HARNESS_FINGERPRINT"));
        let proven = check(&sibling, &certs);
        assert_eq!(proven.outcome, Outcome::Corroborated, "{}", proven.reason);
        assert!(
            proven.reason.contains("proven by org/rep (PROVISIONAL at mvp, MQS 800"),
            "{}",
            proven.reason
        );
        assert!(proven.reason.contains("hidden_size 256 (64 there)"), "{}", proven.reason);

        let code = check(&other, &certs);
        assert_eq!(code.outcome, Outcome::Falsified);
        assert!(code.reason.contains("tie_word_embeddings true (false there)"), "{}", code.reason);

        // Certified by another build of the harness: not current.
        certify(&certs, &rep.join("config.json"), "0123456789abcdef");
        let stale = check(&sibling, &certs);
        assert_eq!(stale.outcome, Outcome::Falsified);
        assert!(
            stale.reason.contains("certified by another harness build (0123456789ab…)"),
            "{}",
            stale.reason
        );

        // The representative's config changed after it was certified.
        certify(&certs, &rep.join("config.json"), env!("MODELQA_HARNESS_FINGERPRINT"));
        write("rep", llama(64, true));
        let changed = check(&sibling, &certs);
        assert_eq!(changed.outcome, Outcome::Falsified);
        assert!(changed.reason.contains("changed since it was certified"), "{}", changed.reason);

        let unknown = write("bert", json!({"model_type": "bert"}));
        assert!(check(&unknown, &certs).reason.contains("`bert` is in no kernel class"));
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn numbers_are_dimensions_and_everything_else_is_code() {
        let there = map(json!({
            "model_type": "llama", "hidden_size": 64, "hidden_act": "silu", "rope_theta": 10000.0,
            "sliding_window": null, "torch_dtype": "float32", "transformers_version": "4.57",
            "eos_token_id": 2
        }));
        let sibling = map(json!({
            "model_type": "mistral", "hidden_size": 896, "hidden_act": "silu", "rope_theta": 1e6,
            "dtype": "float32", "transformers_version": "5.2", "eos_token_id": [2, 3]
        }));
        let (numbers, code) = differences(&sibling, &there);
        assert_eq!(numbers, ["hidden_size 896 (64 there)", "rope_theta 1000000.0 (10000.0 there)"]);
        assert!(code.is_empty(), "{code:?}");
        let other = map(json!({
            "model_type": "llama", "hidden_size": 64, "hidden_act": "gelu", "rope_theta": 10000.0,
            "sliding_window": 4096, "torch_dtype": "bfloat16"
        }));
        let (_, code) = differences(&other, &there);
        assert_eq!(
            code,
            [
                "dtype \"bfloat16\" (\"float32\" there)",
                "hidden_act \"gelu\" (\"silu\" there)",
                "sliding_window 4096 (null there)"
            ]
        );
    }
}
