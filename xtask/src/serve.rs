//! `cargo xtask serve PATH [--host ADDR] [--port N] [--model NAME]`: the OpenAI-compatible
//! server on any model directory or APR file the harness can load, until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use modelqa::engine::{Session, load_candle};
use modelqa::matrix::Backend;
use modelqa::serve::{Server, ServerConfig};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let path = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with('-') && (*i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| PathBuf::from(a))
        .context("usage: cargo xtask serve PATH [--host ADDR] [--port N] [--model NAME]")?;
    let host = crate::flag_value(args, "--host")?.unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = crate::flag_value(args, "--port")?.map_or(Ok(8080), |p| p.parse()).context("--port")?;
    let bind: SocketAddr =
        format!("{host}:{port}").parse().with_context(|| format!("`{host}:{port}` is not an address"))?;
    let model = crate::flag_value(args, "--model")?.unwrap_or_else(|| {
        path.file_stem().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
    });
    eprintln!("loading {}", path.display());
    let session: Box<dyn Session> = Box::new(load_candle(&path, Backend::Cpu)?);
    let config = ServerConfig { bind, ..ServerConfig::new(model.clone()) };
    let server = Server::start(Arc::new(Mutex::new(session)), config)
        .with_context(|| format!("failed to listen on {bind}"))?;
    eprintln!("serving `{model}` at {} (Ctrl-C stops it)", server.base_url());
    eprintln!(
        "  curl {}/v1/completions -d '{{\"prompt\": \"What is 47 + 38?\\n\", \"max_tokens\": 8}}'",
        server.base_url()
    );
    loop {
        std::thread::park();
    }
}
