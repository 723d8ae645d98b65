//! `cargo xtask serve PATH [--host ADDR] [--port N] [--model NAME] [--backend cpu|gpu]`: the
//! OpenAI-compatible server on any model directory or APR file the harness can load, until
//! interrupted. It is `modelqa-engine serve`, built in release.

use std::process::Command;

use anyhow::{Context, bail};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.is_empty() {
        bail!("usage: cargo xtask serve PATH [--host ADDR] [--port N] [--model NAME] [--backend cpu|gpu]");
    }
    crate::build_release("modelqa-engine", "20 minutes or more on 2 cores", &["--bin", "modelqa-engine"])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::root())
        .args(["run", "--quiet", "--release", "--bin", "modelqa-engine", "--", "serve"])
        .args(args)
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("modelqa-engine serve ended with {status}");
    }
    Ok(())
}
