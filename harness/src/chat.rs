//! Chat templates: the Jinja template a model ships (`tokenizer_config.json`'s `chat_template`,
//! or GGUF's `tokenizer.chat_template`), rendered with minijinja as transformers renders it.
//! Owns nothing but the template text; the engine decides where it comes from.

use std::path::Path;

use minijinja::{Environment, ErrorKind, Value, context};

use crate::playbook::MessageSpec;
use crate::playbook::spec::Role;

/// A model's chat template and the special tokens it may refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// A template that could not be read or rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error(
        "the model ships no chat template (tokenizer_config.json has no `chat_template`), so it cannot chat"
    )]
    Missing,
    #[error("failed to read {path}: {cause}")]
    Read { path: String, cause: String },
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    #[error("the chat template failed to render: {0}")]
    Render(String),
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// A special token as `tokenizer_config.json` writes it: a string or `{"content": …}`.
fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => {
            o.get("content").and_then(|c| c.as_str()).unwrap_or("").to_string()
        }
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template in `<dir>/tokenizer_config.json`, or `None` when the model ships none. A list
    /// of named templates (as some models ship) yields the one named `default`.
    pub fn from_model_dir(dir: &Path) -> Result<Option<ChatTemplate>, ChatError> {
        let path = dir.join("tokenizer_config.json");
        let text = match crate::bounded::read_side_file(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ChatError::Read { path: path.display().to_string(), cause: e.to_string() }),
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ChatError::Read { path: path.display().to_string(), cause: e.to_string() })?;
        Ok(Self::from_tokenizer_config(&json))
    }

    /// The template in a parsed `tokenizer_config.json` (as APR files embed it).
    pub fn from_tokenizer_config(json: &serde_json::Value) -> Option<ChatTemplate> {
        let source = match json.get("chat_template")? {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())?
                .to_string(),
            _ => return None,
        };
        Some(ChatTemplate {
            source,
            bos_token: token_text(json.get("bos_token")),
            eos_token: token_text(json.get("eos_token")),
        })
    }

    /// The conversation as the model reads it, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[MessageSpec]) -> Result<String, ChatError> {
        let mut env = Environment::new();
        // A template comes with the model: one that loops without end, or nests loops to
        // billions of steps, runs out of fuel instead of holding the trial. Real templates take
        // a few hundred instructions a message.
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Templates call raise_exception("…") to reject a conversation they cannot lay out.
        env.add_function("raise_exception", |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template("chat", &self.source).map_err(|e| ChatError::Syntax(detail(&e)))?;
        let template = env.get_template("chat").map_err(|e| ChatError::Syntax(detail(&e)))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(role(m.role))),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| ChatError::Render(detail(&e)))
    }
}

/// The most template instructions one rendering may run.
const RENDER_FUEL: u64 = 5_000_000;

/// An error with its cause chain on one line.
fn detail(e: &minijinja::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(list: &[(Role, &str)]) -> Vec<MessageSpec> {
        list.iter().map(|(r, c)| MessageSpec { role: *r, content: c.to_string() }).collect()
    }

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate { source: source.into(), bos_token: "<s>".into(), eos_token: "</s>".into() }
    }

    #[test]
    fn a_template_that_would_run_for_ever_runs_out_of_fuel() {
        let started = std::time::Instant::now();
        let nested = template(
            "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}x{% endfor %}{% endfor %}{% endfor %}",
        );
        let e = nested.render(&msgs(&[(Role::User, "Hi")])).expect_err("out of fuel");
        assert!(matches!(&e, ChatError::Render(m) if m.contains("fuel")), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
        // A long conversation through a real template stays far inside the budget.
        let mut long: Vec<(Role, &str)> =
            (0..500).map(|i| (if i % 2 == 0 { Role::User } else { Role::Assistant }, "a message")).collect();
        long.push((Role::User, "last"));
        template(CHATML).render(&msgs(&long)).expect("500 messages render");
    }

    const CHATML: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

    #[test]
    fn chatml_renders_system_and_turns() {
        let out = template(CHATML)
            .render(&msgs(&[(Role::System, "Be brief."), (Role::User, "What is 2 + 2?")]))
            .expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}[{{ m['content'].strip().upper() }}]{% endfor %}",
        );
        assert_eq!(t.render(&msgs(&[(Role::User, "  hi  ")])).expect("renders"), "<s>[HI]");
        let err = t.render(&msgs(&[(Role::System, "x")])).expect_err("raises");
        assert!(err.to_string().contains("System role not supported"), "{err}");
    }

    #[test]
    fn a_broken_template_is_a_syntax_error() {
        let err = template("{% for m in messages %}").render(&msgs(&[(Role::User, "x")])).expect_err("fails");
        assert!(matches!(err, ChatError::Syntax(_)), "{err:?}");
    }

    #[test]
    fn named_template_lists_and_token_objects_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}ok"}]}"#,
        )
        .expect("write");
        let t = ChatTemplate::from_model_dir(dir.path()).expect("reads").expect("has a template");
        assert_eq!(t.render(&[]).expect("renders"), "<s>ok");
        let none = tempfile::tempdir().expect("tempdir");
        assert_eq!(ChatTemplate::from_model_dir(none.path()).expect("no file is fine"), None);
    }
}
