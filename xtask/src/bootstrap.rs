//! `cargo xtask bootstrap MODEL --tier T`: a playbook for a model, written from its own files —
//! the architecture and every `expect` field from config.json, the formats its size suits, the
//! modalities its chat template allows, the scenarios of the project's template — for the user
//! to review and lock. The playbook is loaded back before the command ends, so what it writes
//! always passes the schema and the resolver.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use modelqa::support::bind::{SearchRoots, hf_repo_dir, hf_snapshot_dir};
use modelqa::support::certify::registry::{format_parameters, size_category};
use modelqa::support::certify::workspace::Layout;
use serde_json::Value;

/// The template every bootstrapped playbook extends, relative to the playbooks folder.
const TEMPLATE: &str = "templates/core-scenarios.yaml";

/// The largest safetensors header read (the JSON before the weights).
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// A model directory (with config.json), or a Hugging Face repository id (`org/name`) found in
    /// QUALIFY_MODEL_DIR or the Hugging Face cache
    model: String,
    /// The tier the playbook qualifies at: dim-smoke, smoke, mvp, quick, standard or deep
    #[arg(long, default_value = "mvp")]
    tier: String,
    /// The family (default: the model's name, lower case)
    #[arg(long)]
    family: Option<String>,
    /// The model's id in the playbook (default: the repository id, or `local/<directory name>`)
    #[arg(long)]
    id: Option<String>,
    /// Replace an existing playbook of the family
    #[arg(long)]
    force: bool,
}

/// What the playbook is written from.
struct Source {
    dir: PathBuf,
    /// The repository id, where the model was found by one.
    repo: Option<String>,
}

pub fn bootstrap(args: &BootstrapArgs) -> anyhow::Result<()> {
    const TIERS: [&str; 6] =
        [modelqa::support::playbook::DIM_SMOKE, "smoke", "mvp", "quick", "standard", "deep"];
    if !TIERS.contains(&args.tier.as_str()) {
        bail!("unknown tier `{}`: one of {}", args.tier, TIERS.join(", "));
    }
    let layout = Layout::from_env(crate::root());
    let source = find(&args.model)?;
    let config_path = source.dir.join("config.json");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("failed to read {}", config_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", config_path.display()))?;
    let tokenizer_config: Option<Value> = std::fs::read_to_string(source.dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let parameters = parameters(&source.dir)?;
    let name = source
        .repo
        .as_deref()
        .and_then(|r| r.rsplit('/').next())
        .or_else(|| source.dir.file_name().and_then(|n| n.to_str()))
        .unwrap_or("model")
        .to_string();
    let id = args.id.clone().or_else(|| source.repo.clone()).unwrap_or_else(|| format!("local/{name}"));
    let family = args.family.clone().unwrap_or_else(|| slug(&name));
    let folder = layout.playbook_dir().join("families");
    let out = folder.join(format!("{family}.yaml"));
    if out.exists() && !args.force {
        bail!("{} exists: pass --force to replace it, or --family to name another", out.display());
    }
    let text = playbook(&Facts {
        family: &family,
        id: &id,
        tier: &args.tier,
        dir: &source.dir,
        path: source.repo.is_none().then(|| relative(&folder, &source.dir)),
        config: &config,
        tokenizer_config: tokenizer_config.as_ref(),
        parameters,
    })?;
    std::fs::create_dir_all(&folder).with_context(|| format!("failed to create {}", folder.display()))?;
    let previous = std::fs::read(&out).ok();
    std::fs::write(&out, &text).with_context(|| format!("failed to write {}", out.display()))?;
    // Loaded back as the harness loads every playbook: what is written passes or is taken back.
    if let Err(e) = modelqa::support::playbook::load_all(&layout.playbooks()) {
        match previous {
            Some(bytes) => std::fs::write(&out, bytes)?,
            None => std::fs::remove_file(&out)?,
        }
        bail!("the written playbook does not load ({e}); nothing was kept");
    }
    println!("wrote {}", out.display());
    println!(
        "review it (formats, scenarios, prompt_template for a base model), then `cargo xtask lock` and \
         `cargo test --test qualify -- {family}::{}`",
        args.tier
    );
    Ok(())
}

/// The model directory for a path or a repository id.
fn find(model: &str) -> anyhow::Result<Source> {
    let path = Path::new(model);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!("{} has no config.json: not a Hugging Face model directory", path.display());
        }
        return Ok(Source { dir: path.canonicalize()?, repo: None });
    }
    if path.exists() {
        bail!("{model} is not a directory: name a model directory with config.json, or a repository id");
    }
    let Some((org, name)) = model.split_once('/') else {
        bail!("{model} is neither a directory nor a repository id (`org/name`)");
    };
    let roots = SearchRoots::from_env();
    let mut looked = Vec::new();
    if let Some(root) = &roots.model_dir {
        for dir in [root.join(org).join(name), root.join(name)] {
            if dir.join("config.json").is_file() {
                return Ok(Source { dir, repo: Some(model.to_string()) });
            }
            looked.push(dir);
        }
    }
    if let Some(cache) = &roots.hf_cache {
        let dir = hf_snapshot_dir(&hf_repo_dir(cache, model), "main");
        if dir.join("config.json").is_file() {
            return Ok(Source { dir, repo: Some(model.to_string()) });
        }
        looked.push(dir);
    }
    let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "{model} is not here (looked in {}); `cargo xtask fetch {model}` downloads it",
        if looked.is_empty() {
            "nowhere: no QUALIFY_MODEL_DIR and no Hugging Face cache".into()
        } else {
            looked.join(", ")
        }
    )
}

/// The parameters the model's safetensors headers declare (their shapes, not their bytes).
fn parameters(dir: &Path) -> anyhow::Result<u64> {
    let files = modelqa::support::engine::safetensors_files(dir)?;
    if files.is_empty() {
        bail!("{} holds no .safetensors weights", dir.display());
    }
    let mut total: u64 = 0;
    for file in files {
        let mut f =
            std::fs::File::open(&file).with_context(|| format!("failed to open {}", file.display()))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).with_context(|| format!("{} is too short for a header", file.display()))?;
        let len = u64::from_le_bytes(len);
        if len > MAX_HEADER_BYTES {
            bail!("{} declares a {len}-byte header, more than {MAX_HEADER_BYTES}", file.display());
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header).with_context(|| format!("{}: the header is cut short", file.display()))?;
        let header: Value = serde_json::from_slice(&header)
            .with_context(|| format!("{}: the header is not JSON", file.display()))?;
        for (name, tensor) in header.as_object().into_iter().flatten() {
            if name == "__metadata__" {
                continue;
            }
            let count = tensor["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(Value::as_u64).fold(1u64, u64::saturating_mul))
                .unwrap_or(0);
            total = total.saturating_add(count);
        }
    }
    Ok(total)
}

/// What a playbook is written from.
struct Facts<'a> {
    family: &'a str,
    id: &'a str,
    tier: &'a str,
    dir: &'a Path,
    /// The model's path relative to the playbook, for a model not found by repository id.
    path: Option<String>,
    config: &'a Value,
    tokenizer_config: Option<&'a Value>,
    parameters: u64,
}

/// The playbook text.
fn playbook(f: &Facts<'_>) -> anyhow::Result<String> {
    let c = f.config;
    let model_type = c["model_type"]
        .as_str()
        .with_context(|| format!("{}/config.json has no model_type", f.dir.display()))?;
    let int = |k: &str| c.get(k).and_then(Value::as_u64);
    let first_int = |k: &str| c.get(k).and_then(|v| v.as_u64().or_else(|| v.get(0).and_then(Value::as_u64)));
    let mut expect: Vec<String> = Vec::new();
    for (field, key) in [
        ("hidden_size", "hidden_size"),
        ("num_layers", "num_hidden_layers"),
        ("num_heads", "num_attention_heads"),
        ("num_kv_heads", "num_key_value_heads"),
        ("vocab_size", "vocab_size"),
        ("intermediate_size", "intermediate_size"),
        ("context_length", "max_position_embeddings"),
    ] {
        if let Some(v) = int(key) {
            expect.push(format!("{field}: {v}"));
        }
    }
    let theta = c
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| c.pointer("/rope_parameters/rope_theta").and_then(Value::as_f64));
    if let Some(t) = theta {
        expect.push(format!("rope_theta: {t}"));
    }
    if let Some(e) = c.get("rms_norm_eps").and_then(Value::as_f64) {
        expect.push(format!("rms_norm_eps: {e:e}"));
    }
    for key in ["bos_token_id", "eos_token_id"] {
        if let Some(v) = first_int(key) {
            expect.push(format!("{key}: {v}"));
        }
    }
    let chat_template =
        f.tokenizer_config.is_some_and(|t| t.get("chat_template").is_some_and(|v| !v.is_null()));
    let size = size_category(f.parameters);
    // The embedded engine holds f32 weights: 4 bytes a parameter per session, two sessions for a
    // differential. Past a few billion parameters APR (f32) and the F16/Q8 GGUFs are left out.
    let (formats, note) = match f.parameters {
        p if p <= 4_000_000_000 => (None, "every format of the tier"),
        p if p <= 15_000_000_000 => (
            Some("[safetensors, gguf]"),
            "safetensors and GGUF only: an f32 APR of this size would not fit beside the ground truth",
        ),
        _ => (Some("[gguf]"), "GGUF only: the safetensors ground truth in f32 would not fit a CI machine"),
    };
    // dim-smoke reads files only: its matrix is fixed (safetensors, on CPU, no scenarios).
    let dim_smoke = f.tier == modelqa::support::playbook::DIM_SMOKE;
    let mut tier = Vec::new();
    if let Some(formats) = formats.filter(|_| !dim_smoke) {
        tier.push(format!("formats: {formats}"));
    }
    if !chat_template && !dim_smoke {
        tier.push("modalities: [run]".to_string());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by `cargo xtask bootstrap` from {} ({} parameters, {size}).",
        f.dir.display(),
        format_parameters(f.parameters)
    );
    let _ = writeln!(
        out,
        "# Review it: the scenarios come from {TEMPLATE}; a base model wants a prompt_template."
    );
    if dim_smoke {
        let _ = writeln!(
            out,
            "# dim-smoke: G0 and the kernel class only, vouched for by a certified model of its class."
        );
    } else {
        let _ = writeln!(out, "# Formats: {note}.");
    }
    if !chat_template && !dim_smoke {
        let _ = writeln!(out, "# The model ships no chat template, so the tier runs `run` only.");
    }
    let _ = writeln!(out, "playbook: 1");
    let _ = writeln!(out, "family: {}", yaml_str(f.family));
    let _ = writeln!(out, "extends: [../{TEMPLATE}]");
    let _ = writeln!(out, "failure_policy: stop-on-p0");
    let _ = writeln!(out, "\ntiers:\n  {}: {{{}}}", f.tier, tier.join(", "));
    let _ = writeln!(out, "\nmodels:\n  - id: {}", yaml_str(f.id));
    if let Some(path) = &f.path {
        let _ = writeln!(out, "    path: {}", yaml_str(path));
    }
    let _ = writeln!(out, "    architecture: {}", yaml_str(model_type));
    let _ = writeln!(out, "    size: {size}");
    let _ = writeln!(out, "    expect: {{{}}}", expect.join(", "));
    Ok(out)
}

/// A string as a double-quoted YAML scalar.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// A family name from a model name: lower case, `[a-z0-9-]`.
fn slug(name: &str) -> String {
    let s: String =
        name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let s = s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
    if s.is_empty() { "model".into() } else { s }
}

/// `to` relative to the directory `from` where they share a prefix, else `to` as it is.
fn relative(from: &Path, to: &Path) -> String {
    let from = from.canonicalize().unwrap_or_else(|_| from.to_path_buf());
    let common = from.components().zip(to.components()).take_while(|(a, b)| a == b).count();
    // Sharing only the root, an absolute path says more than a climb to it.
    if common <= 1 {
        return to.display().to_string();
    }
    let mut rel = PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push("..");
    }
    for c in to.components().skip(common) {
        rel.push(c);
    }
    rel.display().to_string()
}
