//! `modelqa-engine`: the embedded candle engine on its own, as a command line and as an
//! OpenAI-compatible server, on any model directory or APR file the harness can load.
//!
//! ```text
//! modelqa-engine generate MODEL --prompt TEXT [--max-tokens N] [--temperature T] [--seed N]
//!                               [--backend cpu|gpu] [--json]
//! modelqa-engine serve MODEL [--host ADDR] [--port N] [--model NAME] [--backend cpu|gpu]
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

use modelqa::engine::{Finish, GenerateRequest, Sampling, Session, load_candle};
use modelqa::matrix::Backend;
use modelqa::serve::{Server, ServerConfig};

const USAGE: &str = "usage:
  modelqa-engine generate MODEL --prompt TEXT [--max-tokens N] [--temperature T] [--seed N] [--backend cpu|gpu] [--json]
  modelqa-engine serve MODEL [--host ADDR] [--port N] [--model NAME] [--backend cpu|gpu]";

/// Parsed `--flag value` pairs, `--switch`es and the one positional argument.
struct Args {
    model: PathBuf,
    flags: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Args {
    fn parse(args: &[String], switches: &[&str]) -> Result<Args, String> {
        let mut model = None;
        let mut flags = Vec::new();
        let mut on = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if switches.contains(&a.as_str()) {
                on.push(a.clone());
            } else if let Some(name) = a.strip_prefix("--") {
                let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                flags.push((name.to_string(), value.clone()));
            } else if model.replace(PathBuf::from(a)).is_some() {
                return Err(format!("one MODEL only; `{a}` is a second"));
            }
        }
        Ok(Args {
            model: model.ok_or("MODEL (a model directory or an APR file) is missing")?,
            flags,
            switches: on,
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: `{v}` is not valid")),
        }
    }

    fn check_known(&self, known: &[&str]) -> Result<(), String> {
        match self.flags.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            Some((n, _)) => Err(format!("unknown flag --{n}")),
            None => Ok(()),
        }
    }

    fn backend(&self) -> Result<Backend, String> {
        match self.get("backend").unwrap_or("cpu") {
            "cpu" => Ok(Backend::Cpu),
            "gpu" => Ok(Backend::Gpu),
            other => Err(format!("--backend: `{other}` is not cpu or gpu")),
        }
    }
}

enum Failure {
    Usage(String),
    Model(String),
}

fn load(args: &Args) -> Result<Box<dyn Session>, Failure> {
    let backend = args.backend().map_err(Failure::Usage)?;
    load_candle(&args.model, backend)
        .map(|s| Box::new(s) as Box<dyn Session>)
        .map_err(|e| Failure::Model(e.to_string()))
}

fn generate(raw: &[String]) -> Result<(), Failure> {
    let args = Args::parse(raw, &["--json"]).map_err(Failure::Usage)?;
    args.check_known(&["prompt", "max-tokens", "temperature", "seed", "backend"]).map_err(Failure::Usage)?;
    let prompt = args.get("prompt").ok_or_else(|| Failure::Usage("--prompt is missing".into()))?;
    let max_tokens: u32 = args.parsed("max-tokens", 64).map_err(Failure::Usage)?;
    let temperature: f64 = args.parsed("temperature", 0.0).map_err(Failure::Usage)?;
    let seed: u64 = args.parsed("seed", 0).map_err(Failure::Usage)?;
    let sampling = if temperature > 0.0 {
        Sampling::Seeded { temperature, top_p: None, top_k: None, seed }
    } else {
        Sampling::Greedy
    };
    let mut session = load(&args)?;
    let request = GenerateRequest {
        prompt,
        max_tokens,
        sampling,
        deadline: Instant::now() + Duration::from_secs(24 * 3600),
    };
    let g = session.generate(&request).map_err(|e| Failure::Model(e.to_string()))?;
    if args.switches.iter().any(|s| s == "--json") {
        let finish = match g.finish {
            Finish::Eos => "stop",
            Finish::Length => "length",
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

fn serve(raw: &[String]) -> Result<(), Failure> {
    let args = Args::parse(raw, &[]).map_err(Failure::Usage)?;
    args.check_known(&["host", "port", "model", "backend"]).map_err(Failure::Usage)?;
    let host = args.get("host").unwrap_or("127.0.0.1");
    let port: u16 = args.parsed("port", 8080).map_err(Failure::Usage)?;
    let bind: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|_| Failure::Usage(format!("`{host}:{port}` is not an address")))?;
    let name = args.get("model").map(str::to_string).unwrap_or_else(|| {
        args.model.file_stem().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
    });
    eprintln!("loading {}", args.model.display());
    let session = load(&args)?;
    let config = ServerConfig { bind, ..ServerConfig::new(name.clone()) };
    let server = Server::start(Arc::new(Mutex::new(session)), config)
        .map_err(|e| Failure::Model(format!("failed to listen on {bind}: {e}")))?;
    println!("{}", server.base_url());
    eprintln!("serving `{name}` at {} until stopped", server.base_url());
    eprintln!(
        "  curl {}/v1/completions -d '{{\"prompt\": \"What is 47 + 38?\\n\", \"max_tokens\": 8}}'",
        server.base_url()
    );
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("generate") => generate(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(Failure::Usage("the first argument is `generate` or `serve`".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("modelqa-engine: {m}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Model(m)) => {
            eprintln!("modelqa-engine: {m}");
            ExitCode::from(1)
        }
    }
}
