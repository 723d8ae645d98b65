//! Engines we do not embed, end to end: the qualify binary qualifies qa-tiny through
//! `modelqa-engine` driven as a command line (`engine: command`) and as an OpenAI-compatible
//! server started as a separate process (`engine: openai`), with the same oracles, gates and
//! golden references as the embedded engine. A hung command becomes a timeout.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use modelqa::support::journal::EvidenceRecord;
use modelqa::vocab::Outcome;

const ENGINE: &str = env!("CARGO_BIN_EXE_modelqa-engine");

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qa-tiny/qa-tiny-llama")
}

/// Two qa-tiny scenarios, named as in the bundled playbook so the golden references apply.
const SCENARIOS: &str = r#"
models:
  - id: modelqa/qa-tiny-llama
    path: MODEL
    prompt_template: "{prompt}\n"
scenarios:
  - name: arithmetic_multiply
    prompt: "Calculate 7*8"
    max_tokens: 8
    oracles: [arithmetic, garbage]
  - name: remember_word
    messages:
      - {role: user, content: "Remember the word apple."}
      - {role: assistant, content: "OK."}
      - {role: user, content: "What word did I ask you to remember?"}
    max_tokens: 8
    oracles: [{contains: "apple"}, garbage]
"#;

fn playbook(engine: &str, formats: &str, timeout_ms: u64) -> String {
    format!(
        "playbook: 1\nfamily: qa-tiny\nfailure_policy: collect-all\nengine:\n{engine}\ntiers:\n  smoke:\n    formats: {formats}\n    backends: [cpu]\n    modalities: [run, chat, serve]\n    scenario_count: 2\n    timeout_ms: {timeout_ms}\n{}",
        SCENARIOS.replace("MODEL", &model_dir().display().to_string())
    )
}

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(playbook: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("playbook.yaml"), playbook).expect("playbook");
        Self { dir }
    }

    fn qualify(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(common::qualify_binary());
        cmd.args(args)
            .env("QUALIFY_PLAYBOOKS", self.dir.path().join("playbook.yaml"))
            .env("QUALIFY_JOURNAL_DIR", self.dir.path().join("journal"))
            .env("QUALIFY_RUN_ID", "run")
            .env("QUALIFY_CACHE_DIR", self.dir.path().join("cache"))
            // Compared with the committed references; a difference is written nowhere.
            .env("QUALIFY_GOLDEN_DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join("golden"))
            .env("CI", "true")
            .env_remove("QUALIFY_FAILURE_POLICY")
            .env_remove("QUALIFY_MODEL_DIR")
            .env_remove("NEXTEST");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("qualify runs")
    }

    fn journal(&self) -> Vec<EvidenceRecord> {
        let (records, torn) = modelqa::support::journal::read(&self.dir.path().join("journal/run.jsonl"))
            .expect("journal reads");
        assert_eq!(torn, 0);
        records
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every record corroborated, and each of `expected` among the trials.
fn assert_all_pass(records: &[EvidenceRecord], expected: &[&str], engine: &str) {
    for r in records {
        assert_eq!(r.outcome, Outcome::Corroborated, "{}: {}", r.trial, r.reason);
        // G0, the invariants and the tokenizer fuzz read files and load no engine; every other trial names the
        // engine it ran on.
        let file_only = r.trial.ends_with("gate::g0-integrity")
            || (r.modality == "diff" && (r.scenario.starts_with('i') || r.scenario == "tokenizer-fuzz"));
        let loads = !file_only;
        assert!(
            !loads || r.engine.as_deref().is_some_and(|e| e.starts_with(engine)),
            "{}: {:?}",
            r.trial,
            r.engine
        );
    }
    for tail in expected {
        assert!(records.iter().any(|r| r.trial.ends_with(tail)), "no trial ends with {tail}");
    }
}

#[test]
fn a_command_line_engine_is_qualified_like_the_embedded_one() {
    let engine = format!(
        "  kind: command\n  args: [{ENGINE}, generate, '{{model}}', --prompt, '{{prompt}}', --max-tokens, '{{max_tokens}}', --seed, '{{seed}}', --json]\n  output: json\n  json_pointer: /text"
    );
    let run = Run::new(&playbook(&engine, "[safetensors, apr]", 60000));
    let out = run.qualify(&["--test-threads", "2"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let records = run.journal();
    assert_all_pass(
        &records,
        &[
            "safetensors::cpu::run::arithmetic_multiply",
            "apr::cpu::chat::remember_word",
            "apr::cpu::serve::remember_word",
            "apr::cpu::gate::g0-integrity",
            "apr::cpu::gate::serve-concurrent",
            "apr::cpu::diff::tensors-vs-safetensors",
            "safetensors::cpu::diff::golden-text",
        ],
        "command modelqa-engine",
    );
    // The command sees the APR file itself, and the harness hashed it as the model file.
    let apr = records.iter().find(|r| r.trial.ends_with("apr::cpu::run::arithmetic_multiply")).unwrap();
    assert!(
        apr.model_files.iter().all(|f| f.path.extension().is_some_and(|e| e == "apr")),
        "{:?}",
        apr.model_files
    );
    // Logits are not shown by a command: those trials are ignored, with the reason.
    let reasons = text(&out);
    assert!(reasons.contains("the command engine returns no logits"), "{reasons}");
    assert!(reasons.contains("the command engine answers one prompt per process: there is no batch to vary"));
}

#[test]
fn a_hung_command_is_a_timeout_and_its_whole_process_group_dies() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // The engine starts a grandchild and hangs; both must be gone once the timeout passes.
    let engine = format!(
        "  kind: command\n  args: [sh, -c, 'sleep 60 & echo $! > {}; wait', sh, '{{prompt}}']",
        pid_file.display()
    );
    let run = Run::new(&playbook(&engine, "[safetensors]", 700));
    let started = Instant::now();
    let out = run.qualify(
        &["--exact", "qa-tiny::smoke::qa-tiny-llama::safetensors::cpu::run::arithmetic_multiply"],
        &[],
    );
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let records = run.journal();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Timeout, "{}", records[0].reason);
    let pid = std::fs::read_to_string(&pid_file).expect("the command started its grandchild");
    let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !proc.exists()
    });
    assert!(gone, "the grandchild {} outlived the timeout", pid.trim());
}

#[test]
fn a_command_that_floods_stdout_is_falsified_with_the_size() {
    // 100 MB on stdout: the trial fails naming the cap (the harness keeps only the cap's worth).
    let engine = "  kind: command\n  args: [sh, -c, 'yes x | head -c 100000000', sh, '{prompt}']";
    let run = Run::new(&playbook(engine, "[safetensors]", 60000));
    let out = run.qualify(
        &["--exact", "qa-tiny::smoke::qa-tiny-llama::safetensors::cpu::run::arithmetic_multiply"],
        &[],
    );
    assert!(!out.status.success());
    let records = run.journal();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Falsified, "{}", records[0].reason);
    assert!(records[0].reason.contains("printed output over 8388608 bytes"), "{}", records[0].reason);
}

#[test]
fn a_grandchild_that_leaves_the_group_holding_stdout_cannot_outlive_the_trial() {
    let Some(setsid) = ["/usr/bin/setsid", "/bin/setsid"].into_iter().find(|p| Path::new(p).exists()) else {
        eprintln!("not checked: no setsid");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    // The answer comes at once; the grandchild, in a session of its own, holds stdout for 60 s.
    let engine = format!(
        "  kind: command\n  args: [sh, -c, '{setsid} sh -c \"echo $$ > {}; exec sleep 60\" & sleep 0.5; echo 56', sh, '{{prompt}}']",
        pid_file.display()
    );
    let run = Run::new(&playbook(&engine, "[safetensors]", 30000));
    let started = Instant::now();
    let out = run.qualify(
        &["--exact", "qa-tiny::smoke::qa-tiny-llama::safetensors::cpu::run::arithmetic_multiply"],
        &[],
    );
    assert!(started.elapsed() < Duration::from_secs(15), "held for {:?}", started.elapsed());
    let records = run.journal();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Corroborated, "{}: {}", records[0].reason, text(&out));
    let pid = std::fs::read_to_string(&pid_file).expect("the grandchild started");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "the grandchild outlived the trial: {stat}");
}

/// `modelqa-engine serve` on an ephemeral port, killed when dropped.
struct ServerProcess {
    child: Child,
    base_url: String,
}

impl ServerProcess {
    fn start() -> Self {
        Self::serving(&model_dir())
    }

    fn serving(dir: &Path) -> Self {
        Self::serving_with(dir, &[])
    }

    /// The server with `env` set (a planted fault).
    fn serving_with(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(ENGINE)
            .args(["serve", &dir.display().to_string(), "--port", "0", "--model", "modelqa/qa-tiny-llama"])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("modelqa-engine starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("it prints its address");
        assert!(line.starts_with("http://127.0.0.1:"), "{line:?}");
        Self { child, base_url: line.trim().to_string() }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_openai_compatible_server_in_another_process_is_qualified_over_http() {
    let server = ServerProcess::start();
    let engine = format!(
        "  kind: openai\n  base_url: {}\n  api_key_env: MODELQA_TEST_API_KEY\n  model: modelqa/qa-tiny-llama",
        server.base_url
    );
    let run = Run::new(&playbook(&engine, "[safetensors]", 60000));
    let out = run.qualify(&["--test-threads", "2"], &[("MODELQA_TEST_API_KEY", "sk-test")]);
    assert!(out.status.success(), "{}", text(&out));
    let records = run.journal();
    assert_all_pass(
        &records,
        &[
            "run::arithmetic_multiply",
            "chat::remember_word",
            "serve::remember_word",
            "gate::g1-load",
            "gate::g2-inference",
            "gate::serve-bad-requests",
            "gate::serve-sse",
            "diff::golden-text",
            "diff::batch-invariance",
        ],
        "openai http://127.0.0.1:",
    );
    // What the server does not show is ignored, with the reason; nothing is read from disk.
    let said = text(&out);
    assert!(said.contains("the openai engine's model files are on its server"), "{said}");
    assert!(said.contains("the openai engine returns no logits"), "{said}");
    assert!(records.iter().all(|r| r.model_files.is_empty()));

    // Without the API key the engine does not load, and says which variable is missing.
    let run = Run::new(&playbook(&engine, "[safetensors]", 60000));
    let out =
        run.qualify(&["--exact", "qa-tiny::smoke::qa-tiny-llama::safetensors::cpu::gate::g1-load"], &[]);
    assert!(!out.status.success());
    let records = run.journal();
    assert_eq!(records[0].outcome, Outcome::Falsified);
    assert!(records[0].reason.contains("MODELQA_TEST_API_KEY is not set"), "{}", records[0].reason);
}

/// A server whose answer changes when its request waits behind others (`QUALIFY_FAULT_SERVE=queued`
/// in the server's process: such a request's first token is the model's sixth most likely) fails
/// `diff::batch-invariance` over HTTP, in a batch of requests in flight; asked alone it answers
/// right, so the clean half of the rule holds (the clean server passes in the test above).
#[test]
fn a_server_whose_batched_answers_differ_fails_batch_invariance() {
    let server = ServerProcess::serving_with(&model_dir(), &[("QUALIFY_FAULT_SERVE", "queued")]);
    let engine = format!("  kind: openai\n  base_url: {}\n  model: modelqa/qa-tiny-llama", server.base_url);
    let run = Run::new(&playbook(&engine, "[safetensors]", 60000));
    let out = run.qualify(
        &["--exact", "qa-tiny::smoke::qa-tiny-llama::safetensors::cpu::diff::batch-invariance"],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let records = run.journal();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.outcome, Outcome::Falsified, "{}", r.reason);
    assert!(r.reason.contains("break the rule (token for token, or where they part"), "{}", r.reason);
    assert!(r.reason.contains("in a batch of "), "{}", r.reason);
    assert!(r.reason.contains("they part at token 0"), "{}", r.reason);
}

#[test]
fn a_model_without_a_chat_template_is_asked_through_completions_on_an_openai_server() {
    // qa-tiny-llama with its chat template taken out, on disk and on the server alike.
    let copy = tempfile::tempdir().expect("tempdir");
    let dir = copy.path().join("qa-tiny-llama");
    std::fs::create_dir(&dir).expect("dir");
    for entry in std::fs::read_dir(model_dir()).expect("the fixture") {
        let path = entry.expect("an entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("a name"))).expect("copied");
    }
    let config_path = dir.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read")).expect("JSON");
    config.as_object_mut().expect("an object").remove("chat_template");
    std::fs::write(&config_path, config.to_string()).expect("written");

    let server = ServerProcess::serving(&dir);
    let openai = format!("  kind: openai\n  base_url: {}\n  model: modelqa/qa-tiny-llama", server.base_url);
    // The conversation scenario in `run` and `serve`, on the server and in process: the server
    // has no template to lay the conversation out with, so it must be sent as the harness lays
    // it out, through /v1/completions, and answer exactly what the embedded engine answers.
    let mut answers = Vec::new();
    for engine in [openai.as_str(), "  kind: embedded"] {
        let playbook = playbook(engine, "[safetensors]", 60000)
            .replace(&model_dir().display().to_string(), &dir.display().to_string());
        let run = Run::new(&playbook);
        for trial in ["run::remember_word", "serve::remember_word"] {
            run.qualify(
                &["--exact", &format!("qa-tiny::smoke::qa-tiny-llama::safetensors::cpu::{trial}")],
                &[],
            );
        }
        let records = run.journal();
        assert_eq!(records.len(), 2, "{engine}");
        for r in &records {
            assert!(!r.reason.contains("answered 400"), "{engine}: {}: {}", r.trial, r.reason);
        }
        answers.push(records.iter().map(|r| (r.outcome, r.output.clone())).collect::<Vec<_>>());
    }
    assert_eq!(answers[0], answers[1], "the server's answers against the embedded engine's");
}

#[test]
fn a_server_that_never_answers_is_a_timeout_and_the_run_moves_on() {
    // Accepts connections and holds them without a byte of reply.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let engine = format!("  kind: openai\n  base_url: http://{addr}\n  model: modelqa/qa-tiny-llama");
    let run = Run::new(&playbook(&engine, "[safetensors]", 700));
    let started = Instant::now();
    let out = run.qualify(&["--test-threads", "2", "run::"], &[]);
    assert!(!out.status.success());
    let records = run.journal();
    assert_eq!(records.len(), 2, "both run trials were recorded");
    for r in &records {
        assert_eq!(r.outcome, Outcome::Timeout, "{}: {}", r.trial, r.reason);
    }
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

/// `modelqa-engine` run from any directory leaves nothing there: the model files' hashes are
/// remembered in the user's cache (`$XDG_CACHE_HOME/modelqa/hashes`), or in
/// `$QUALIFY_CACHE_DIR/hashes` where that is set.
#[test]
fn the_engine_keeps_its_hash_cache_out_of_the_working_directory() {
    let here = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let generate = |env: &[(&str, &Path)]| {
        let out = Command::new(ENGINE)
            .args(["generate", &model_dir().display().to_string(), "--prompt", "1+1=", "--max-tokens", "2"])
            .current_dir(here.path())
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("QUALIFY_CACHE_DIR")
            .envs(env.iter().copied())
            .output()
            .expect("modelqa-engine runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let entries = |dir: &Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    generate(&[("XDG_CACHE_HOME", cache.path())]);
    assert_eq!(
        entries(here.path()),
        0,
        "the working directory holds {:?}",
        std::fs::read_dir(here.path()).unwrap().collect::<Vec<_>>()
    );
    assert!(
        entries(&cache.path().join("modelqa/hashes")) >= 2,
        "config.json, tokenizer.json and the weights hashed"
    );
    let qualify_cache = cache.path().join("qualify");
    generate(&[("XDG_CACHE_HOME", cache.path()), ("QUALIFY_CACHE_DIR", &qualify_cache)]);
    assert_eq!(entries(here.path()), 0);
    assert!(entries(&qualify_cache.join("hashes")) >= 2);
}
