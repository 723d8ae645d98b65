//! Engines we do not embed, driven from outside through the [`Session`] trait: an
//! OpenAI-compatible server that is already running ([`OpenAiSession`]) and a command line run
//! once per generation ([`CommandSession`]). Neither shows logits or token ids; both are judged
//! by the same oracles and gates as the embedded engine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{EngineError, Finish, GenerateRequest, Generation, Sampling, Session, SessionInfo};
use crate::chat::ChatTemplate;
use crate::engine::client::{Client, Endpoint, Reply, request_body};
use crate::format::files::{ModelFile, hash_file};
use crate::matrix::Backend;
use crate::playbook::MessageSpec;
use crate::playbook::spec::CommandOutput;
use crate::process::{Confinement, find_program, run_until};
/// How much of a failed command's standard error a message quotes.
const STDERR_TAIL: usize = 400;

/// The most a command engine may print on stdout for one answer. An answer is at most a few
/// thousand tokens; past this the engine is broken (100 MB once drove the harness past 16 GB),
/// so the rest is read and dropped and the trial fails with the size.
pub(crate) const MAX_OUTPUT_BYTES: usize = 8 << 20;

/// A load that failed on what the engine answered (no underlying error).
fn load_error(place: &str, cause: impl Into<String>) -> EngineError {
    EngineError::Load { path: PathBuf::from(place), cause: cause.into() }
}

/// A session on an OpenAI-compatible server: `generate` streams `/v1/completions`, `chat`
/// streams `/v1/chat/completions` (the server applies its own template).
pub(crate) struct OpenAiSession {
    client: Client,
    info: SessionInfo,
}

impl OpenAiSession {
    /// Connects: `GET /v1/models` must answer within `timeout` and list `model`.
    pub(crate) fn connect(
        base_url: &str,
        api_key: Option<String>,
        model: &str,
        timeout: Duration,
    ) -> Result<Self, EngineError> {
        let started = Instant::now();
        let client = Client::new(base_url).with_api_key(api_key).with_model(Some(model.to_string()));
        let r = client
            .raw("GET", "/v1/models", "", None, timeout)
            .map_err(|e| EngineError::load_failed(Path::new(base_url), e))?;
        if r.status != 200 {
            return Err(load_error(base_url, format!("GET /v1/models answered {}: {}", r.status, r.body)));
        }
        let v: Value = serde_json::from_str(&r.body)
            .map_err(|e| load_error(base_url, format!("GET /v1/models is not JSON ({e})")))?;
        let ids: Vec<&str> = v["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        if !ids.contains(&model) {
            return Err(load_error(base_url, format!("the server serves {ids:?}, not {model:?}")));
        }
        let info = SessionInfo {
            engine: format!("openai {}", client.base_url()),
            device: "remote".into(),
            architecture: "unknown (remote)".into(),
            files: Vec::new(),
            load_time: started.elapsed(),
            chat_template: None,
            applies_chat_template: true,
            control_tokens: Vec::new(),
            control_ids: Vec::new(),
        };
        Ok(Self { client, info })
    }

    /// Whether the server is sent conversations to lay out with the model's template (the
    /// default) or, for a model that ships none, only prompts the harness laid out.
    pub(crate) fn lays_out_conversations(&mut self, applies: bool) {
        self.info.applies_chat_template = applies;
    }

    fn ask(
        &self,
        endpoint: Endpoint,
        prompt: &str,
        messages: &[MessageSpec],
        request: &GenerateRequest<'_>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let body = request_body(endpoint, prompt, messages, request.max_tokens, &request.sampling, true);
        let reply = self.client.request(endpoint, &body, request.deadline).map_err(|e| {
            if Instant::now() >= request.deadline {
                EngineError::Timeout { tokens: 0, partial: String::new() }
            } else {
                EngineError::inference(e)
            }
        })?;
        on_text(&reply.text);
        Ok(generation_of(reply))
    }
}

fn generation_of(reply: Reply) -> Generation {
    Generation {
        token_count: reply.completion_tokens.map(|n| n as usize),
        prompt_tokens: reply.prompt_tokens.map_or(0, |n| n as usize),
        finish: if reply.finish_reason.as_deref() == Some("length") { Finish::Length } else { Finish::Eos },
        time_to_first_token: reply.first_text.unwrap_or(reply.latency),
        duration: reply.latency,
        text: reply.text,
        tokens: Vec::new(),
        first_logits_finite: None,
        leaked_special_tokens: Vec::new(),
    }
}

impl Session for OpenAiSession {
    fn generate_streaming(
        &mut self,
        request: &GenerateRequest<'_>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        self.ask(Endpoint::Completions, request.prompt, &[], request, on_text)
    }

    fn chat(
        &mut self,
        messages: &[MessageSpec],
        request: &GenerateRequest<'_>,
    ) -> Result<Generation, EngineError> {
        self.ask(Endpoint::ChatCompletions, "", messages, request, &mut |_| {})
    }

    fn prompt_logits(&mut self, _prompt: &str, _positions: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        Err(EngineError::Unsupported("an OpenAI-compatible server returns no prompt logits".into()))
    }

    fn info(&self) -> &SessionInfo {
        &self.info
    }
}

/// A session that runs a command line per generation. The harness lays prompts out (the chat
/// template comes from the model's files); token counts come from the model's tokenizer.
pub(crate) struct CommandSession {
    args: Vec<String>,
    output: CommandOutput,
    pointer: String,
    model: PathBuf,
    backend: Backend,
    tokenizer: Option<tokenizers::Tokenizer>,
    info: SessionInfo,
}

impl CommandSession {
    /// `model` is what `{model}` stands for (the cell's format: a directory or a file);
    /// `model_dir` the ground-truth directory the tokenizer and chat template come from.
    pub(crate) fn new(
        args: &[String],
        output: CommandOutput,
        json_pointer: Option<&str>,
        model: &Path,
        model_dir: &Path,
        backend: Backend,
    ) -> Result<Self, EngineError> {
        let started = Instant::now();
        let program = args.first().ok_or_else(|| load_error("", "the command is empty"))?;
        if find_program(program).is_none() {
            return Err(load_error(program, "the program does not exist or is not on PATH"));
        }
        let tokenizer_path = model_dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() {
            Some(
                crate::format::tokenizer_json::read(&tokenizer_path)
                    .map_err(|e| EngineError::load_failed(&tokenizer_path, e))?,
            )
        } else {
            None
        };
        let chat_template =
            ChatTemplate::from_model_dir(model_dir).map_err(|e| EngineError::load_failed(model_dir, e))?;
        let files = model_files(model).map_err(|e| EngineError::load_failed(model, e))?;
        let info = SessionInfo {
            engine: format!(
                "command {}",
                Path::new(program).file_name().map_or(program.clone(), |n| n.to_string_lossy().into_owned())
            ),
            device: backend.as_str().to_string(),
            architecture: "unknown (command)".into(),
            files,
            load_time: started.elapsed(),
            chat_template,
            applies_chat_template: false,
            // The program is handed text: it encodes the prompt itself, so no range of it can be
            // marked as plain text.
            control_tokens: Vec::new(),
            control_ids: Vec::new(),
        };
        Ok(Self {
            args: args.to_vec(),
            output,
            pointer: json_pointer.filter(|p| !p.is_empty()).unwrap_or("/text").to_string(),
            model: model.to_path_buf(),
            backend,
            tokenizer,
            info,
        })
    }

    fn argv(&self, request: &GenerateRequest<'_>) -> Vec<String> {
        let seed = match request.sampling {
            Sampling::Greedy => 0,
            Sampling::Seeded { seed, .. } => seed,
        };
        self.args
            .iter()
            .map(|a| {
                a.replace("{model}", &self.model.display().to_string())
                    .replace("{max_tokens}", &request.max_tokens.to_string())
                    .replace("{seed}", &seed.to_string())
                    .replace("{backend}", self.backend.as_str())
                    // Last, so a prompt that contains a placeholder's text is passed as it is.
                    .replace("{prompt}", request.prompt)
            })
            .collect()
    }

    fn count(&self, text: &str) -> Option<usize> {
        self.tokenizer.as_ref().and_then(|t| t.encode(text, false).ok()).map(|e| e.len())
    }

    fn answer(&self, stdout: &str) -> Result<String, EngineError> {
        match self.output {
            CommandOutput::Text => Ok(stdout.trim_end().to_string()),
            CommandOutput::Json => {
                let v: Value = serde_json::from_str(stdout).map_err(|e| EngineError::OutputNotJson {
                    output: tail(stdout, STDERR_TAIL),
                    source: super::cause(e),
                })?;
                v.pointer(&self.pointer).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                    EngineError::Inference(format!(
                        "the output has no text at {}: {}",
                        self.pointer,
                        tail(stdout, STDERR_TAIL)
                    ))
                })
            }
        }
    }
}

impl Session for CommandSession {
    fn generate_streaming(
        &mut self,
        request: &GenerateRequest<'_>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        let argv = self.argv(request);
        let program = &argv[0];
        let confinement = Confinement { output_bytes: MAX_OUTPUT_BYTES, ..Confinement::default() };
        let done = run_until(Command::new(program).args(&argv[1..]), request.deadline, confinement)
            .map_err(|e| EngineError::inference_in(format!("failed to run {program}"), e))?;
        let Some(status) = done.status else {
            let partial = String::from_utf8_lossy(&done.stdout).into_owned();
            return Err(EngineError::Timeout { tokens: 0, partial });
        };
        if done.stdout_truncated {
            return Err(EngineError::Inference(format!(
                "{program} printed output over {MAX_OUTPUT_BYTES} bytes; an answer is far smaller"
            )));
        }
        let stderr = String::from_utf8_lossy(&done.stderr);
        if let Some(signal) = done.signal() {
            return Err(EngineError::Crashed(format!(
                "{program} was killed by signal {signal}; stderr: {}",
                tail(&stderr, STDERR_TAIL)
            )));
        }
        if !status.success() {
            return Err(EngineError::Inference(format!(
                "{program} exited with code {}; stderr: {}",
                status.code().map_or("?".into(), |c| c.to_string()),
                tail(&stderr, STDERR_TAIL)
            )));
        }
        let stdout = String::from_utf8(done.stdout)
            .map_err(|e| EngineError::inference_in(format!("{program} wrote output that is not UTF-8"), e))?;
        let text = self.answer(&stdout)?;
        on_text(&text);
        let duration = started.elapsed();
        Ok(Generation {
            token_count: self.count(&text),
            prompt_tokens: self.count(request.prompt).unwrap_or(0),
            finish: Finish::Eos,
            time_to_first_token: duration,
            duration,
            text,
            tokens: Vec::new(),
            first_logits_finite: None,
            leaked_special_tokens: Vec::new(),
        })
    }

    fn prompt_logits(&mut self, _prompt: &str, _positions: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        Err(EngineError::Unsupported("a command-line engine returns no prompt logits".into()))
    }

    fn info(&self) -> &SessionInfo {
        &self.info
    }
}

/// The files behind `{model}`: the file itself, or a directory's safetensors weights.
fn model_files(model: &Path) -> Result<Vec<ModelFile>, EngineError> {
    let paths = if model.is_dir() { super::safetensors_files(model)? } else { vec![model.to_path_buf()] };
    paths.iter().map(|p| hash_file(p).map_err(|e| EngineError::load_failed(p, e))).collect()
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().rev().nth(max) {
        Some((i, _)) => format!("…{}", &s[i..]),
        None if s.is_empty() => "(empty)".into(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(
        args: &[&str],
        output: CommandOutput,
        pointer: Option<&str>,
    ) -> (tempfile::TempDir, CommandSession) {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.apr");
        std::fs::write(&model, b"weights").unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let s = CommandSession::new(&args, output, pointer, &model, dir.path(), Backend::Cpu).unwrap();
        (dir, s)
    }

    fn ask(s: &mut CommandSession, prompt: &str, secs: u64) -> Result<Generation, EngineError> {
        let request = GenerateRequest {
            prompt,
            literal: &[],
            max_tokens: 7,
            sampling: Sampling::Seeded { temperature: 0.5, top_p: None, top_k: None, seed: 99 },
            deadline: Instant::now() + Duration::from_secs(secs),
        };
        s.generate(&request)
    }

    #[test]
    fn placeholders_are_filled_and_a_prompt_is_passed_verbatim() {
        let (_d, mut s) = session(
            &[
                "sh",
                "-c",
                "printf '%s|%s|%s|%s' \"$1\" \"$2\" \"$3\" \"$4\"",
                "sh",
                "{prompt}",
                "{max_tokens}",
                "{seed}",
                "{backend}",
            ],
            CommandOutput::Text,
            None,
        );
        let g = ask(&mut s, "What is {seed}? $HOME 'quoted'", 10).unwrap();
        assert_eq!(g.text, "What is {seed}? $HOME 'quoted'|7|99|cpu");
        assert_eq!(s.info().files.len(), 1);
        assert!(s.info().engine.starts_with("command sh"));
    }

    #[test]
    fn json_output_is_read_at_its_pointer_and_bad_json_is_named() {
        let (_d, mut s) = session(
            &["sh", "-c", "echo '{\"out\": {\"text\": \"85\"}}'", "{prompt}"],
            CommandOutput::Json,
            Some("/out/text"),
        );
        assert_eq!(ask(&mut s, "x", 10).unwrap().text, "85");
        let (_d, mut s) = session(&["sh", "-c", "echo not json", "{prompt}"], CommandOutput::Json, None);
        let e = ask(&mut s, "x", 10).unwrap_err().to_string();
        assert!(e.contains("not JSON") && e.contains("not json"), "{e}");
        let (_d, mut s) =
            session(&["sh", "-c", "echo '{\"answer\": 1}'", "{prompt}"], CommandOutput::Json, None);
        let e = ask(&mut s, "x", 10).unwrap_err().to_string();
        assert!(e.contains("no text at /text"), "{e}");
    }

    #[test]
    fn an_exit_code_is_an_error_and_a_signal_is_a_crash() {
        let (_d, mut s) =
            session(&["sh", "-c", "echo out of memory >&2; exit 3", "{prompt}"], CommandOutput::Text, None);
        let e = ask(&mut s, "x", 10).unwrap_err();
        assert!(matches!(e, EngineError::Inference(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("exited with code 3") && e.contains("out of memory"), "{e}");
        let (_d, mut s) = session(&["sh", "-c", "kill -SEGV $$", "{prompt}"], CommandOutput::Text, None);
        let e = ask(&mut s, "x", 10).unwrap_err();
        assert!(matches!(&e, EngineError::Crashed(m) if m.contains("signal 11")), "{e:?}");
    }

    #[test]
    fn a_hung_command_times_out_at_its_deadline() {
        let (_d, mut s) =
            session(&["sh", "-c", "echo partial; sleep 30", "{prompt}"], CommandOutput::Text, None);
        let started = Instant::now();
        let e = ask(&mut s, "x", 1).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(matches!(&e, EngineError::Timeout { partial, .. } if partial.contains("partial")), "{e:?}");
    }

    #[test]
    fn a_missing_program_fails_to_load_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let args = vec!["/no/such/engine".to_string(), "{prompt}".to_string()];
        let e = CommandSession::new(&args, CommandOutput::Text, None, dir.path(), dir.path(), Backend::Cpu)
            .err()
            .expect("no program");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
