//! `cargo xtask serve PATH [--host ADDR] [--port N] [--model NAME] [--backend cpu|gpu]
//! [--api-key-env VAR]`: the OpenAI-compatible server on any model directory or APR file the
//! harness can load, until interrupted. It is `modelqa-engine serve`, built in release.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// `serve PATH …`: the flags of `modelqa-engine serve`, passed on as given (its defaults apply).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A model directory or an APR file
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// The address to bind [default: 127.0.0.1]
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// The port to bind; 0 picks a free one [default: 8080]
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// The model name the server reports [default: the file stem of PATH]
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The backend the model runs on [default: cpu]
    #[arg(long, value_parser = ["cpu", "gpu"])]
    pub backend: Option<String>,
    /// Ask every request but /health for `Authorization: Bearer <key>`, the key read from the
    /// environment variable VAR [default: no key]
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Most requests generated at once as one continuous batch; 1 answers one at a time
    /// [default: 32]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_batch: Option<u16>,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    // Said before the release build, which can take twenty minutes, rather than after it.
    if let Some(var) = &args.api_key_env {
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => {}
            Ok(_) => bail!("--api-key-env {var}: the variable is empty; set it to the key to ask for"),
            Err(_) => bail!("--api-key-env {var}: the variable is not set; set it to the key to ask for"),
        }
    }
    crate::build_release("modelqa-engine", "20 minutes or more on 2 cores", &["--bin", "modelqa-engine"])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(crate::root())
        .args(["run", "--quiet", "--release", "--bin", "modelqa-engine", "--", "serve"])
        .arg(&args.path);
    let port = args.port.map(|p| p.to_string());
    let max_batch = args.max_batch.map(|n| n.to_string());
    for (flag, value) in [
        ("--host", args.host.as_deref()),
        ("--port", port.as_deref()),
        ("--model", args.model.as_deref()),
        ("--backend", args.backend.as_deref()),
        ("--api-key-env", args.api_key_env.as_deref()),
        ("--max-batch", max_batch.as_deref()),
    ] {
        if let Some(value) = value {
            command.args([flag, value]);
        }
    }
    let status = command.status().context("failed to run cargo")?;
    if !status.success() {
        bail!("modelqa-engine serve ended with {status}");
    }
    Ok(())
}
