//! `cargo xtask fetch ORG/NAME[@REVISION] [--cache DIR]`: downloads a model's safetensors, config and tokenizer
//! files into the Hugging Face hub cache, in the layout the harness binds from
//! (`models--org--name/{blobs,refs,snapshots}`). Where no network exists it fails at once.

use std::path::PathBuf;

use anyhow::{Context, bail};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

/// The files a model directory needs for the harness; weights are every `*.safetensors`.
fn wanted(file: &str) -> bool {
    matches!(
        file,
        "config.json"
            | "tokenizer.json"
            | "tokenizer_config.json"
            | "generation_config.json"
            | "model.safetensors.index.json"
    ) || (file.ends_with(".safetensors") && !file.contains('/'))
}

/// `fetch ORG/NAME[@REVISION] [--cache DIR]`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The model id on the Hugging Face Hub, as `Qwen/Qwen2.5-Coder-0.5B-Instruct` [revision: main]
    #[arg(value_name = "ORG/NAME[@REVISION]")]
    pub id: String,
    /// The Hugging Face cache to download into [default: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub]
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

pub fn run(args: &FetchArgs) -> anyhow::Result<()> {
    let spec = &args.id;
    let (id, revision) = spec.split_once('@').unwrap_or((spec.as_str(), "main"));
    if id.split('/').count() != 2 || id.split('/').any(str::is_empty) {
        bail!("`{id}` is not a model id: expected ORG/NAME, as `Qwen/Qwen2.5-Coder-0.5B-Instruct`");
    }
    let cache: PathBuf = match args.cache.clone() {
        Some(dir) => dir,
        None => modelqa::support::bind::SearchRoots::from_env()
            .hf_cache
            .context("no Hugging Face cache directory: set HF_HUB_CACHE or HF_HOME, or pass --cache DIR")?,
    };
    let api = ApiBuilder::new()
        .with_cache_dir(cache.clone())
        .with_token(std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()))
        .with_progress(true)
        .with_retries(0)
        .build()
        .context("failed to set up the Hugging Face Hub client")?;
    let repo = api.repo(Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string()));
    let info = repo.info().with_context(|| {
        format!(
            "failed to reach the Hugging Face Hub for {id}@{revision} (is there a network here?); \
             a model can also be placed on disk and named by a playbook `path` or QUALIFY_MODEL_DIR"
        )
    })?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).filter(|f| wanted(f)).collect();
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        bail!(
            "{id}@{revision} publishes no safetensors weights at the top level; the harness qualifies from safetensors"
        );
    }
    eprintln!(
        "fetching {} files of {id}@{revision} (commit {}) into {}",
        files.len(),
        info.sha,
        cache.display()
    );
    for f in &files {
        let path = repo.get(f).with_context(|| format!("failed to download {f} of {id}"))?;
        eprintln!("  {f} → {}", path.display());
    }
    let dir =
        modelqa::support::bind::hf_snapshot_dir(&modelqa::support::bind::hf_repo_dir(&cache, id), revision);
    println!("{}", dir.display());
    Ok(())
}
