//! The peers of `bench engine`: the virtualenv under `target/bench/venv` (made once, pip's
//! output shown), the Python driver `xtask/bench/peers.py` run in it, llama.cpp's converter and
//! quantizer, and the child processes every engine is measured in. A peer that cannot be had is
//! a reason the table prints, never an error that ends the run.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::table::Measurement;

/// The Python the peers run in, and whether each of their stacks imports there (its version) or
/// why not.
pub struct Peers {
    python: PathBuf,
    pub transformers: Result<String, String>,
    pub llama: Result<String, String>,
}

/// A peer stack: its name, the import that proves it is there (printing its version), and what
/// pip installs for it. The converter needs the transformers stack too.
struct Stack {
    name: &'static str,
    check: &'static str,
    packages: &'static [&'static str],
}

const TRANSFORMERS: Stack = Stack {
    name: "transformers",
    check: "import torch, transformers, safetensors, gguf, numpy, sentencepiece; \
            print(f'transformers {transformers.__version__}, torch {torch.__version__}')",
    packages: &["transformers", "torch", "safetensors", "gguf", "numpy", "sentencepiece"],
};

const LLAMA: Stack = Stack {
    name: "llama-cpp-python",
    check: "import llama_cpp; print(f'llama-cpp-python {llama_cpp.__version__}')",
    packages: &["llama-cpp-python"],
};

/// The driver script, committed beside the xtask.
fn script() -> PathBuf {
    crate::root().join("xtask").join("bench").join("peers.py")
}

impl Peers {
    /// The peers in `python` where given, else in the virtualenv `venv`, made and filled on
    /// first use. A stack whose install failed once is not retried until its marker file
    /// (`venv/.failed-<stack>`, which holds why) is removed: a failed llama.cpp build costs many
    /// minutes.
    pub fn prepare(venv: &Path, python: Option<&Path>) -> Peers {
        let given = python.is_some();
        let python = python.map_or_else(|| venv.join("bin").join("python"), Path::to_path_buf);
        if !given && !python.is_file() {
            eprintln!("making the peers' virtualenv {} (once; later runs reuse it)…", venv.display());
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(venv)
                .stdout(std::io::stderr())
                .status()
                .map_err(|e| format!("failed to run python3: {e}"))
                .and_then(|s| s.success().then_some(()).ok_or(format!("`python3 -m venv` ended with {s}")));
            if let Err(why) = made {
                let why = format!("no virtualenv: {why}");
                return Peers { python, transformers: Err(why.clone()), llama: Err(why) };
            }
        }
        let transformers = Self::stack(&python, venv, &TRANSFORMERS, given);
        let llama = Self::stack(&python, venv, &LLAMA, given);
        Peers { python, transformers, llama }
    }

    fn stack(python: &Path, venv: &Path, stack: &Stack, given: bool) -> Result<String, String> {
        if let Ok(version) = Self::import(python, stack) {
            return Ok(version);
        }
        if given {
            return Err(format!("{} does not import in {}", stack.name, python.display()));
        }
        let marker = venv.join(format!(".failed-{}", stack.name));
        if let Ok(why) = std::fs::read_to_string(&marker) {
            return Err(format!(
                "{} (an earlier install failed; remove {} to retry)",
                why.trim(),
                marker.display()
            ));
        }
        eprintln!(
            "installing {} into {} (once; llama-cpp-python compiles llama.cpp, many minutes on few cores)…",
            stack.packages.join(" "),
            venv.display()
        );
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
        let installed = Command::new(python)
            .args(["-m", "pip", "install"])
            .args(stack.packages)
            .env("CMAKE_BUILD_PARALLEL_LEVEL", jobs)
            .stdout(std::io::stderr())
            .status();
        let outcome = match installed {
            Ok(s) if s.success() => Self::import(python, stack),
            Ok(s) => Err(format!("`pip install {}` ended with {s}", stack.packages.join(" "))),
            Err(e) => Err(format!("failed to run pip: {e}")),
        };
        if let Err(why) = &outcome {
            let _ = std::fs::write(&marker, why);
        }
        outcome
    }

    fn import(python: &Path, stack: &Stack) -> Result<String, String> {
        let out = Command::new(python)
            .args(["-c", stack.check])
            .output()
            .map_err(|e| format!("failed to run {}: {e}", python.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(last_line(&String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// A command running the driver with `args`.
    pub fn driver(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.python);
        command.arg(script()).args(args);
        command
    }

    /// llama.cpp's tree from the sdist of the installed llama-cpp-python, under `dest`.
    pub fn converter_tree(&self, dest: &Path) -> Result<PathBuf, String> {
        self.transformers.as_ref().map_err(|why| format!("no converter without transformers: {why}"))?;
        self.llama.as_ref().map_err(|why| format!("no converter without llama-cpp-python: {why}"))?;
        let out = quiet(self.driver(&["converter", &dest.to_string_lossy()]))?;
        Ok(PathBuf::from(last_line(&out)))
    }

    /// llama.cpp's converter: `model` to `out` as `outtype` (f32, f16, q8_0).
    pub fn convert(&self, tree: &Path, model: &Path, outtype: &str, out: &Path) -> Result<(), String> {
        let (tree, model, out) = (tree.to_string_lossy(), model.to_string_lossy(), out.to_string_lossy());
        quiet(self.driver(&["convert", &tree, &model, outtype, &out])).map(drop)
    }

    /// llama.cpp's quantizer: `input` to `out` as `ftype` (q4_k_m).
    pub fn quantize(&self, input: &Path, out: &Path, ftype: &str, threads: usize) -> Result<(), String> {
        let (input, out) = (input.to_string_lossy(), out.to_string_lossy());
        quiet(self.driver(&["quantize", &input, &out, ftype, &threads.to_string()])).map(drop)
    }
}

/// Runs a converting command with its output held back (the converter names every tensor),
/// showing its last lines only if it fails; its stdout if it succeeds.
fn quiet(mut command: Command) -> Result<String, String> {
    let out = command.output().map_err(|e| format!("failed to run {command:?}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in &tail[tail.len().saturating_sub(8)..] {
        eprintln!("    {line}");
    }
    Err(format!("{} ({})", last_line(&text), out.status))
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

/// Runs one measuring child: its stderr (one line per repetition) passes through, indented; its
/// stdout's last JSON line is the measurement. A failure is its last words, for the table.
pub fn measure(mut command: Command) -> Result<Measurement, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("failed to start {command:?}: {e}"))?;
    let stderr = child.stderr.take();
    let relay = std::thread::spawn(move || {
        let mut last = String::new();
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  {line}");
                if !line.trim().is_empty() {
                    last = line;
                }
            }
        }
        last
    });
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let status = child.wait().map_err(|e| format!("failed to wait for the child: {e}"))?;
    let last = relay.join().unwrap_or_default();
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{'));
    match line {
        Some(line) if status.success() => {
            Measurement::from_json(line).map_err(|e| format!("unreadable result: {e}"))
        }
        _ => Err(format!("{} ({status})", if last.is_empty() { "no result" } else { last.trim() })),
    }
}
