//! The `code_tests` oracle: the question's start of a function and the model's answer make a
//! program, and the program must pass the scenario's tests when it really runs: Python through
//! the `python3` on `PATH`, Rust through `rustc` and the test binary it builds.
//!
//! The program runs in a child process (`crate::process`) in a temporary directory that is also
//! its `HOME` and `TMPDIR`, with an environment of `PATH`, `HOME` and `TMPDIR` only, stdin closed,
//! a wall-clock limit for compiling and one for running (the whole process group is killed at
//! it), an address-space limit, a file-size limit, no core files, 64 KiB of kept output, and,
//! where this machine lets an unprivileged process have one, a network namespace of its own
//! (nothing to connect to, not even a loopback that is up). It runs as the harness's own user
//! and sees the file system the harness sees: the oracle checks what code does, it is not a
//! sandbox for hostile code.
//!
//! Where the interpreter or compiler is missing, the oracle cannot judge: binding ignores the
//! scenario's trials with [`unavailable`]'s reason, found once per process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Verdict;
use super::code::program_of;
use super::spec::Language;
use crate::process::{Confinement, Ended, find_program, run_until};

/// What the code may spend. The defaults are the oracle's; tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Limits {
    /// Wall-clock time for `rustc` to build the test binary.
    pub(crate) compile: Duration,
    /// Wall-clock time for the tests to run (Python: compiling included).
    pub(crate) run: Duration,
    /// Address space of the running code.
    pub(crate) memory_bytes: u64,
    /// Address space of `rustc` (more than the code's: the compiler maps its own libraries).
    pub(crate) compile_memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            compile: Duration::from_secs(10),
            run: Duration::from_secs(5),
            memory_bytes: 512 << 20,
            compile_memory_bytes: 2 << 30,
        }
    }
}

/// Output kept of each stream; a program that writes more fails.
const OUTPUT_BYTES: usize = 64 << 10;
/// The largest file the code (or `rustc`) may write.
const FILE_BYTES: u64 = 256 << 20;
/// How every timeout verdict says it (and how one is told from the others).
const DID_NOT_FINISH: &str = "did not finish in";
/// The module the tests live in, in a Rust program; named so no answer has it by chance.
const RUST_TESTS: &str = "__modelqa_tests";

/// A compiled `code_tests` oracle.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeTests {
    pub(crate) language: Language,
    pub(crate) tests: Vec<String>,
    pub(crate) limits: Limits,
}

/// The interpreter or compiler a language runs with.
#[derive(Debug)]
struct Toolchain {
    /// The real program, not a version manager's shim that needs the environment we clear.
    program: PathBuf,
}

/// Why code in `language` cannot be run here (the trial's ignore reason), or `None` when it can.
pub(crate) fn unavailable(language: Language) -> Option<&'static NoToolchain> {
    toolchain(language).err()
}

/// Why a language's interpreter or compiler cannot run tests here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoToolchain {
    #[error("no {tool} on PATH to {purpose}")]
    NotOnPath { tool: &'static str, purpose: &'static str },
    #[error("{tool} on PATH ({}) does not start: {source}", path.display())]
    DoesNotStart {
        tool: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} on PATH ({}) cannot {purpose} here: {why}", path.display())]
    CannotRunATest { tool: &'static str, path: PathBuf, purpose: &'static str, why: String },
}

fn toolchain(language: Language) -> Result<&'static Toolchain, &'static NoToolchain> {
    static PYTHON: OnceLock<Result<Toolchain, NoToolchain>> = OnceLock::new();
    static RUST: OnceLock<Result<Toolchain, NoToolchain>> = OnceLock::new();
    let found = match language {
        Language::Python => PYTHON.get_or_init(find_python),
        Language::Rust => RUST.get_or_init(find_rustc),
    };
    found.as_ref()
}

/// How long finding a toolchain may take (a cold interpreter on a busy machine is slow).
const PROBE: Duration = Duration::from_secs(30);

fn find_python() -> Result<Toolchain, NoToolchain> {
    let shim = find_program("python3")
        .ok_or(NoToolchain::NotOnPath { tool: "python3", purpose: "run the Python tests with" })?;
    // Asked in our own environment, the interpreter names itself (pyenv's shim needs it).
    let mut ask = Command::new(&shim);
    ask.args(["-I", "-S", "-c", "import sys; print(sys.executable)"]);
    let ended = run_until(&mut ask, Instant::now() + PROBE, Confinement::default())
        .map_err(|source| NoToolchain::DoesNotStart { tool: "python3", path: shim.clone(), source })?;
    let named = String::from_utf8_lossy(&ended.stdout).trim().to_string();
    let program = if ended.status.is_some_and(|s| s.success()) && Path::new(&named).is_file() {
        PathBuf::from(named)
    } else {
        shim.clone()
    };
    let python = Toolchain { program };
    // Then it must run a test confined, as every answer will.
    let verdict =
        python.run_python("def one():\n    return 1", &["assert one() == 1".into()], &Limits::default());
    match verdict {
        Verdict::Corroborated(_) => Ok(python),
        Verdict::Falsified(why) => Err(NoToolchain::CannotRunATest {
            tool: "python3",
            path: python.program.clone(),
            purpose: "run a test",
            why,
        }),
    }
}

fn find_rustc() -> Result<Toolchain, NoToolchain> {
    let proxy = find_program("rustc")
        .ok_or(NoToolchain::NotOnPath { tool: "rustc", purpose: "build the Rust tests with" })?;
    // rustup's proxy needs the environment we clear; the compiler in the sysroot does not.
    let mut ask = Command::new(&proxy);
    ask.args(["--print", "sysroot"]);
    let ended = run_until(&mut ask, Instant::now() + PROBE, Confinement::default())
        .map_err(|source| NoToolchain::DoesNotStart { tool: "rustc", path: proxy.clone(), source })?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&ended.stdout).trim());
    let real = sysroot.join("bin").join(format!("rustc{}", std::env::consts::EXE_SUFFIX));
    let program =
        if ended.status.is_some_and(|s| s.success()) && real.is_file() { real } else { proxy.clone() };
    let rustc = Toolchain { program };
    // Building and running a test confined also proves the linker is here.
    let verdict =
        rustc.run_rust("fn one() -> i32 {\n    1\n}", &["assert_eq!(one(), 1);".into()], &Limits::default());
    match verdict {
        Verdict::Corroborated(_) => Ok(rustc),
        Verdict::Falsified(why) => Err(NoToolchain::CannotRunATest {
            tool: "rustc",
            path: rustc.program.clone(),
            purpose: "build a test",
            why,
        }),
    }
}

/// What a verdict is remembered by: the language, the limits, the program, the tests.
type Judged = (Language, Limits, String, Vec<String>);

/// Verdicts already reached: the same answer (every format of a model, both endpoints of a
/// server) is built and run once per process. A timeout depends on the machine's load and is
/// never remembered.
static JUDGED: LazyLock<Mutex<HashMap<Judged, Verdict>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

impl CodeTests {
    pub(super) fn judge(&self, question: &str, output: &str) -> Verdict {
        let program = program_of(question, output);
        let key = (self.language, self.limits, program, self.tests.clone());
        if let Some(v) = JUDGED.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return v;
        }
        let toolchain = match toolchain(self.language) {
            Ok(t) => t,
            // Binding ignores these trials; a caller that did not bind is told why.
            Err(why) => return Verdict::Falsified(format!("the tests cannot run here: {why}")),
        };
        let verdict = match self.language {
            Language::Python => toolchain.run_python(&key.2, &self.tests, &self.limits),
            Language::Rust => toolchain.run_rust(&key.2, &self.tests, &self.limits),
        };
        let timed_out = matches!(&verdict, Verdict::Falsified(why) if why.contains(DID_NOT_FINISH));
        if !timed_out && let Ok(mut m) = JUDGED.lock() {
            m.insert(key, verdict.clone());
        }
        verdict
    }
}

/// A fresh directory the code runs in, and its environment.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Result<Self, Verdict> {
        tempfile::Builder::new().prefix("modelqa-code-").tempdir().map(|dir| Self { dir }).map_err(|e| {
            Verdict::Falsified(format!("the tests cannot run here: failed to make a directory: {e}"))
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, Verdict> {
        let path = self.path().join(name);
        std::fs::write(&path, text).map_err(|e| {
            Verdict::Falsified(format!("the tests cannot run here: failed to write {}: {e}", path.display()))
        })?;
        Ok(path)
    }

    /// A command with nothing of the harness's environment but `PATH` (a compiler finds its
    /// linker there); home and temporary files are the workspace.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env_clear().current_dir(self.path()).env("HOME", self.path()).env("TMPDIR", self.path());
        if let Some(path) = std::env::var_os("PATH") {
            c.env("PATH", path);
        }
        c
    }

    fn run(&self, command: &mut Command, limit: Duration, memory_bytes: u64) -> Result<Ended, Verdict> {
        let confinement = Confinement {
            memory_bytes: Some(memory_bytes),
            file_bytes: Some(FILE_BYTES),
            output_bytes: OUTPUT_BYTES,
            isolate_network: true,
        };
        run_until(command, Instant::now() + limit, confinement).map_err(|e| {
            Verdict::Falsified(format!(
                "the tests cannot run here: failed to start {}: {e}",
                command.get_program().to_string_lossy()
            ))
        })
    }
}

/// The verdict a Python runner wrote.
#[derive(Deserialize)]
#[serde(tag = "stage", rename_all = "lowercase")]
enum PythonResult {
    Compile { line: Option<u64>, error: String },
    Load { line: Option<u64>, error: String },
    Test { index: usize, error: String },
    Passed { count: usize },
}

impl Toolchain {
    fn run_python(&self, program: &str, tests: &[String], limits: &Limits) -> Verdict {
        self.try_python(program, tests, limits).unwrap_or_else(|v| v)
    }

    fn try_python(&self, program: &str, tests: &[String], limits: &Limits) -> Result<Verdict, Verdict> {
        let ws = Workspace::new()?;
        let mark = format!("modelqa-result-{:016x}", nonce());
        let case = serde_json::json!({"mark": mark, "program": program, "tests": tests});
        ws.write("case.json", &case.to_string())?;
        let runner = ws.write("code_tests.py", include_str!("code_tests.py"))?;
        let mut command = ws.command(&self.program);
        command.args(["-I", "-S", "-B"]).arg(runner).arg("case.json");
        let ended = ws.run(&mut command, limits.run, limits.memory_bytes)?;
        if let Some(v) = limit_verdict(&ended, "the tests", limits.run) {
            return Ok(v);
        }
        let stdout = String::from_utf8_lossy(&ended.stdout);
        let result = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(mark.as_str()))
            .and_then(|json| serde_json::from_str::<PythonResult>(json.trim()).ok());
        let Some(result) = result else {
            return Ok(no_result(&ended, limits));
        };
        let at = |line: Option<u64>| line.map_or(String::new(), |l| format!("line {l}: "));
        Ok(match result {
            PythonResult::Passed { count } if count == tests.len() => passed(count),
            PythonResult::Passed { count } => {
                Verdict::Falsified(format!("only {count} of {} tests ran", tests.len()))
            }
            PythonResult::Compile { line, error } => {
                Verdict::Falsified(format!("the code does not compile: {}{error}", at(line)))
            }
            PythonResult::Load { line, error } => Verdict::Falsified(format!(
                "the code raised {}{}, before any test ran",
                memory_note(&error, limits),
                line.map_or(String::new(), |l| format!(" at line {l}"))
            )),
            PythonResult::Test { index, error } => failed(tests, index, &memory_note(&error, limits)),
        })
    }

    fn run_rust(&self, program: &str, tests: &[String], limits: &Limits) -> Verdict {
        self.try_rust(program, tests, limits).unwrap_or_else(|v| v)
    }

    fn try_rust(&self, program: &str, tests: &[String], limits: &Limits) -> Result<Verdict, Verdict> {
        let ws = Workspace::new()?;
        let source = ws.write("solution.rs", &rust_source(program, tests))?;
        let binary = ws.path().join(format!("solution{}", std::env::consts::EXE_SUFFIX));
        let mut rustc = ws.command(&self.program);
        rustc
            .args(["--edition", "2021", "--test", "--cap-lints", "allow", "--error-format", "short"])
            .args(["-C", "debuginfo=0", "-o"])
            .arg(&binary)
            .arg(&source);
        let built = ws.run(&mut rustc, limits.compile, limits.compile_memory_bytes)?;
        // A broken answer can make rustc say a lot: its first error is what counts.
        if built.timed_out() {
            return Ok(Verdict::Falsified(format!(
                "the compiler {DID_NOT_FINISH} {} s",
                seconds(limits.compile)
            )));
        }
        if !built.status.is_some_and(|s| s.success()) {
            let stderr = String::from_utf8_lossy(&built.stderr);
            let first = stderr
                .lines()
                .find(|l| l.contains("error"))
                .map_or_else(|| tail(&stderr), |l| short_error(l, &source));
            return Ok(Verdict::Falsified(format!("the code does not compile: {first}")));
        }
        let mut run = ws.command(&binary);
        run.arg(format!("{RUST_TESTS}::")).arg("--test-threads=1");
        let ended = ws.run(&mut run, limits.run, limits.memory_bytes)?;
        if let Some(v) = limit_verdict(&ended, "the tests", limits.run) {
            return Ok(v);
        }
        let stdout = String::from_utf8_lossy(&ended.stdout);
        if ended.status.is_some_and(|s| s.success()) {
            let ran = stdout
                .lines()
                .find_map(|l| l.strip_prefix("test result: ok. "))
                .and_then(|l| l.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok());
            return Ok(match ran {
                Some(n) if n == tests.len() => passed(n),
                Some(n) => Verdict::Falsified(format!("only {n} of {} tests ran", tests.len())),
                None => no_result(&ended, limits),
            });
        }
        Ok(match rust_failure(&stdout) {
            Some((index, message)) => failed(tests, index, &message),
            None => no_result(&ended, limits),
        })
    }
}

/// The program and the tests as one crate: each test a `#[test]` function of a module that sees
/// the program's items.
fn rust_source(program: &str, tests: &[String]) -> String {
    let mut s = format!(
        "{program}\n\n#[cfg(test)]\nmod {RUST_TESTS} {{\n    #[allow(unused_imports)]\n    use super::*;\n"
    );
    for (i, test) in tests.iter().enumerate() {
        s.push_str(&format!("\n    #[test]\n    fn case_{}() {{\n{test}\n    }}\n", i + 1));
    }
    s.push_str("}\n");
    s
}

/// rustc's short error line without the file name: `line 1, column 27: error[E0308]: …`.
fn short_error(line: &str, source: &Path) -> String {
    let file = source.display().to_string();
    let rest = line.strip_prefix(&file).and_then(|r| r.strip_prefix(':'));
    let Some(rest) = rest else { return line.trim().to_string() };
    let mut parts = rest.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(l), Some(c), Some(msg)) if l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok() => {
            format!("line {l}, column {c}: {}", msg.trim())
        }
        _ => rest.trim().to_string(),
    }
}

/// The first failed test of libtest's report and its panic message.
fn rust_failure(stdout: &str) -> Option<(usize, String)> {
    let header = format!("---- {RUST_TESTS}::case_");
    let start = stdout.find(&header)?;
    let block = &stdout[start + header.len()..];
    let index = block.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let mut lines = block.lines().skip(1).skip_while(|l| !l.contains("panicked at"));
    lines.next()?;
    let message: Vec<&str> = lines
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("note:") && !l.starts_with("stack backtrace"))
        .map(str::trim)
        .collect();
    Some((index, if message.is_empty() { "it panicked".into() } else { message.join(", ") }))
}

fn passed(count: usize) -> Verdict {
    Verdict::Corroborated(match count {
        1 => "the code passes its test".into(),
        n => format!("the code passes all {n} tests"),
    })
}

fn failed(tests: &[String], index: usize, why: &str) -> Verdict {
    let test = tests.get(index.wrapping_sub(1)).map_or("?", |t| t.trim());
    Verdict::Falsified(format!("test {index} of {} failed: `{test}`: {why}", tests.len()))
}

/// The verdict of a child stopped by a limit, if a limit stopped it.
fn limit_verdict(ended: &Ended, who: &str, limit: Duration) -> Option<Verdict> {
    if ended.timed_out() {
        return Some(Verdict::Falsified(format!("{who} {DID_NOT_FINISH} {} s", seconds(limit))));
    }
    (ended.stdout_truncated || ended.stderr_truncated)
        .then(|| Verdict::Falsified(format!("{who} wrote more than {} KiB of output", OUTPUT_BYTES >> 10)))
}

/// A run that ended without saying how its tests went: killed, crashed, or exited early.
fn no_result(ended: &Ended, limits: &Limits) -> Verdict {
    let stderr = String::from_utf8_lossy(&ended.stderr);
    let how = match (ended.signal(), ended.status.and_then(|s| s.code())) {
        (Some(sig), _) => format!("were killed by signal {sig}"),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => "ended".into(),
    };
    let why = if stderr.contains("memory allocation of") {
        format!("ran out of memory (the limit is {} MiB)", limits.memory_bytes >> 20)
    } else if stderr.contains("overflowed its stack") {
        "overflowed the stack".into()
    } else {
        format!("{how} without a result; stderr: {}", tail(&stderr))
    };
    Verdict::Falsified(format!("the tests {why}"))
}

/// Python's MemoryError, said with the limit that raised it.
fn memory_note(error: &str, limits: &Limits) -> String {
    if error.contains("MemoryError") {
        format!("{error} (out of memory: the limit is {} MiB)", limits.memory_bytes >> 20)
    } else {
        error.to_string()
    }
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{}", s as u64) } else { format!("{s:.1}") }
}

fn tail(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().rev().nth(300) {
        Some((i, _)) => format!("…{}", &s[i..]),
        None if s.is_empty() => "(empty)".into(),
        None => s.to_string(),
    }
}

/// A number no program writes by chance.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
#[path = "code_tests_tests.rs"]
mod tests;
