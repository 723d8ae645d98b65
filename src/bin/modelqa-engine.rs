//! `modelqa-engine`: the embedded candle engine on its own, as a command line and as an
//! OpenAI-compatible server, on any model directory or APR file the harness can load.
//!
//! ```text
//! modelqa-engine generate MODEL --prompt TEXT [--max-tokens N] [--temperature T] [--seed N]
//!                               [--backend cpu|gpu] [--json]
//! modelqa-engine serve MODEL [--host ADDR] [--port N] [--model NAME] [--backend cpu|gpu]
//!                            [--api-key-env VAR] [--max-batch N]
//! ```
//!
//! `generate` prints the answer (or, with `--json`, `{"text", "completion_tokens",
//! "prompt_tokens", "finish_reason"}`); `serve` prints its base URL on the first line of standard
//! output, then serves until killed. Exit codes: 0 done, 1 the model failed, 2 bad usage.
//! A playbook's `engine: {kind: command}` and `engine: {kind: openai}` drive exactly these.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use modelqa::support::engine::{Finish, GenerateRequest, Sampling, Session, load_candle_hashing_in};
use modelqa::support::matrix::Backend;
use modelqa::support::serve::{ApiKey, Server, ServerConfig};

/// The embedded candle engine on its own: one generation, or an OpenAI-compatible server.
// A repeated flag keeps its last value, as the playbook `args` that drive this have always relied on.
#[derive(Debug, Parser)]
#[command(name = "modelqa-engine", args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate once and print the answer (or, with --json, the answer and its counts)
    Generate(GenerateArgs),
    /// Serve the model over HTTP; prints the base URL on the first line, then serves until killed
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// A model directory or an APR file
    model: PathBuf,
    /// The prompt text, as the model is to continue it
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    prompt: String,
    /// The most tokens to generate
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_tokens: u32,
    /// Sampling temperature; 0 is greedy
    #[arg(long, value_name = "T", default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    /// The sampling seed (with a temperature above 0)
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// The backend the model runs on
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// Print {"text", "completion_tokens", "prompt_tokens", "finish_reason"} as one JSON line
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A model directory or an APR file
    model: PathBuf,
    /// The address to bind
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// The port to bind; 0 picks a free one
    #[arg(long, value_name = "N", default_value_t = 8080)]
    port: u16,
    /// The model name the server reports [default: the file stem of MODEL]
    #[arg(long = "model", value_name = "NAME")]
    name: Option<String>,
    /// The backend the model runs on
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// Ask every request but /health for `Authorization: Bearer <key>`, the key read from the
    /// environment variable VAR (never from the command line, where `ps` would show it)
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Most requests generated at once as one continuous batch (1: one at a time)
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_batch: u16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Cpu,
    Gpu,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => Backend::Cpu,
            BackendArg::Gpu => Backend::Gpu,
        }
    }
}

enum Failure {
    Usage(clap::Error),
    Model(String),
}

/// Where the engine remembers its model files' hashes (by path, size and modification time):
/// `$QUALIFY_CACHE_DIR/hashes`, else `$CARGO_TARGET_DIR/qualify/cache/hashes` as the harness
/// keeps them, else the user's cache (`$XDG_CACHE_HOME/modelqa/hashes`, `~/.cache/modelqa/hashes`),
/// and never a `target/` made in whatever directory the engine is run from.
fn hashes_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(cache) = var("QUALIFY_CACHE_DIR") {
        return cache.join("hashes");
    }
    if let Some(target) = var("CARGO_TARGET_DIR") {
        return target.join("qualify").join("cache").join("hashes");
    }
    let user = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")));
    user.unwrap_or_else(std::env::temp_dir).join("modelqa").join("hashes")
}

fn load(model: &std::path::Path, backend: BackendArg) -> Result<Box<dyn Session>, Failure> {
    load_candle_hashing_in(model, backend.into(), &hashes_dir())
        .map(|s| Box::new(s) as Box<dyn Session>)
        .map_err(|e| Failure::Model(e.to_string()))
}

fn generate(args: &GenerateArgs) -> Result<(), Failure> {
    let GenerateArgs { max_tokens, temperature, seed, .. } = *args;
    let sampling = if temperature > 0.0 {
        Sampling::Seeded { temperature, top_p: None, top_k: None, seed }
    } else {
        Sampling::Greedy
    };
    let mut session = load(&args.model, args.backend)?;
    let request = GenerateRequest {
        prompt: &args.prompt,
        literal: &[],
        max_tokens,
        sampling,
        deadline: Instant::now() + Duration::from_secs(24 * 3600),
    };
    let g = session.generate(&request).map_err(|e| Failure::Model(e.to_string()))?;
    if args.json {
        let finish = match g.finish {
            Finish::Eos => "stop",
            Finish::Length => "length",
            Finish::Stopped => "stop",
        };
        let v = serde_json::json!({
            "text": g.text,
            "completion_tokens": g.token_count,
            "prompt_tokens": g.prompt_tokens,
            "finish_reason": finish,
        });
        println!("{v}");
    } else {
        print!("{}", g.text);
    }
    Ok(())
}

/// A usage error of `serve`, worded as clap words its own.
fn serve_usage(kind: clap::error::ErrorKind, message: String) -> Failure {
    let mut command = Cli::command();
    command.build();
    let serve = command.find_subcommand_mut("serve").expect("the serve subcommand");
    Failure::Usage(serve.error(kind, message))
}

/// The key `--api-key-env VAR` names: a variable that is unset or empty is a usage error, never
/// a server that silently asks for no key.
fn api_key(var: Option<&str>) -> Result<Option<ApiKey>, Failure> {
    let Some(var) = var else { return Ok(None) };
    let invalid = clap::error::ErrorKind::ValueValidation;
    let value = std::env::var(var).map_err(|e| {
        let why = match e {
            std::env::VarError::NotPresent => "is not set",
            std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
        };
        serve_usage(invalid, format!("--api-key-env {var}: the variable {why}; set it to the key to ask for"))
    })?;
    ApiKey::new(&value).map(Some).map_err(|e| serve_usage(invalid, format!("--api-key-env {var}: {e}")))
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    let (host, port) = (&args.host, args.port);
    let bind: SocketAddr = format!("{host}:{port}").parse().map_err(|_| {
        serve_usage(clap::error::ErrorKind::ValueValidation, format!("`{host}:{port}` is not an address"))
    })?;
    let api_key = api_key(args.api_key_env.as_deref())?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.model.file_stem().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
    });
    eprintln!("loading {}", args.model.display());
    let session = load(&args.model, args.backend)?;
    let keyed = api_key.is_some();
    let max_batch = usize::from(args.max_batch);
    let config = ServerConfig { bind, api_key, max_batch, ..ServerConfig::new(name.clone()) };
    let server = Server::start(Arc::new(Mutex::new(session)), config)
        .map_err(|e| Failure::Model(format!("failed to listen on {bind}: {e}")))?;
    println!("{}", server.base_url());
    eprintln!("serving `{name}` at {} until stopped", server.base_url());
    let auth = match &args.api_key_env {
        Some(var) if keyed => format!(" -H \"Authorization: Bearer ${var}\""),
        _ => String::new(),
    };
    eprintln!(
        "  curl {}/v1/completions{auth} -d '{{\"prompt\": \"What is 47 + 38?\\n\", \"max_tokens\": 8}}'",
        server.base_url()
    );
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    // clap's own errors exit 2 (bad usage) and `--help` exits 0.
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(args) => generate(args),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => e.exit(),
        Err(Failure::Model(m)) => {
            eprintln!("modelqa-engine: {m}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_documented_invocations_parse_and_typos_are_refused() {
        for line in [
            "modelqa-engine generate m --prompt x --max-tokens 8 --seed 3 --json",
            "modelqa-engine generate m --prompt -5+3 --temperature 0.7 --backend gpu",
            "modelqa-engine generate --prompt x m --max-tokens 8 --max-tokens 9",
            "modelqa-engine serve m --port 0 --model modelqa/qa-tiny-llama",
            "modelqa-engine serve m --host 0.0.0.0 --port 8080 --backend cpu",
            "modelqa-engine serve m --api-key-env MODELQA_API_KEY",
            "modelqa-engine serve m --max-batch 1",
            "modelqa-engine serve m --max-batch 1024",
        ] {
            if let Err(e) = Cli::try_parse_from(line.split_whitespace()) {
                panic!("`{line}` does not parse:\n{e}");
            }
        }
        for line in [
            "modelqa-engine generate m --prompt x --max-token 8",
            "modelqa-engine generate m",
            "modelqa-engine generate m n --prompt x",
            "modelqa-engine serve m --prot 8080",
            "modelqa-engine serve m --backend tpu",
            "modelqa-engine serve m --api-key-env",
            "modelqa-engine serve m --api-key sk-123",
            "modelqa-engine serve m --max-batch 0",
            "modelqa-engine serve m --max-batch 1025",
            "modelqa-engine serve",
            "modelqa-engine",
        ] {
            let e = Cli::try_parse_from(line.split_whitespace()).err();
            assert_eq!(e.map(|e| e.exit_code()), Some(2), "`{line}`");
        }
    }

    #[test]
    fn an_unset_or_empty_key_variable_is_a_usage_error_that_names_it() {
        assert!(api_key(None).is_ok_and(|k| k.is_none()));
        let unset = "MODELQA_TEST_SURELY_UNSET_KEY_VARIABLE";
        let Err(Failure::Usage(e)) = api_key(Some(unset)) else { panic!("an unset variable was accepted") };
        assert_eq!(e.exit_code(), 2);
        let said = e.to_string();
        assert!(said.contains(unset) && said.contains("is not set"), "{said}");
        // PATH is set and not empty in any test run: it makes a key.
        assert!(api_key(Some("PATH")).is_ok_and(|k| k.is_some()));
    }
}
