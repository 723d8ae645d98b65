//! What a trial sends: scenario inputs laid out for a modality (a prompt template, the model's
//! chat template, or a conversation for engines that lay conversations out themselves).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use crate::chat::{ChatError, ChatTemplate, Guarded};
use crate::engine::{EngineError, GenerateRequest, Generation, SessionInfo, SharedSession};
use crate::expand::TrialSpec;
use crate::matrix::Modality;
use crate::playbook::spec::Role;
use crate::playbook::{Input, MessageSpec, Model, Scenario};

/// What a check sends for one scenario.
#[derive(Debug, Clone)]
pub struct Ask {
    pub name: String,
    /// The text sent; for a conversation sent as such, its readable transcript.
    pub prompt: String,
    /// The ranges of `prompt` where user text spells a control token ([`Guarded`]).
    pub literal: Vec<Range<usize>>,
    /// The conversation, where the engine lays conversations out itself.
    pub conversation: Option<Vec<MessageSpec>>,
    pub max_tokens: u32,
}

impl Ask {
    /// Greedy generation for this scenario on `session`.
    pub fn generate(&self, session: &SharedSession, deadline: Instant) -> Result<Generation, EngineError> {
        let request =
            GenerateRequest::greedy(&self.prompt, self.max_tokens, deadline).with_literal(&self.literal);
        let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
        match &self.conversation {
            Some(messages) => session.chat(messages, &request),
            None => session.generate(&request),
        }
    }
}

/// The text `run` sends: a prompt laid out with the model's `prompt_template`; a conversation
/// through the model's chat template, or as a plain transcript ending with the assistant's turn
/// when the model ships none. User text that spells one of the `control` tokens stays text
/// ([`Guarded`]); the prompt template's own control tokens are read as such.
pub(crate) fn render_run(
    model: &Model,
    input: &Input,
    template: Option<&ChatTemplate>,
    control: &[String],
) -> Guarded {
    match input {
        Input::Prompt(p) => {
            let laid_out = Guarded::lay_out(control, &[p.as_str()], |masked| {
                Ok::<_, std::convert::Infallible>(model.layout(&masked[0]))
            });
            laid_out.unwrap_or_else(|never| match never {})
        }
        Input::Messages(messages) => template
            .and_then(|t| t.render_guarded(messages, control).ok())
            .unwrap_or_else(|| guarded_transcript(messages, control)),
    }
}

/// The text sent to the engine in a modality. `chat` always goes through the model's own chat
/// template (a plain prompt is one user message); a model without one cannot chat.
pub(super) fn render(
    model: &Model,
    modality: Modality,
    input: &Input,
    template: Option<&ChatTemplate>,
    control: &[String],
) -> Result<Guarded, ChatError> {
    match modality {
        Modality::Chat => template.ok_or(ChatError::Missing)?.render_guarded(&messages_of(input), control),
        Modality::Run | Modality::Serve => Ok(render_run(model, input, template, control)),
    }
}

/// What a trial sends: the prompt text and, where the engine lays conversations out itself
/// (an OpenAI-compatible server: every `chat` input and every conversation), the conversation,
/// with its readable transcript as the prompt kept in evidence.
pub(crate) fn prepare(
    model: &Model,
    modality: Modality,
    input: &Input,
    template: Option<&ChatTemplate>,
    applies_template: bool,
    control: &[String],
) -> Result<(Guarded, Option<Vec<MessageSpec>>), ChatError> {
    if applies_template && (modality == Modality::Chat || matches!(input, Input::Messages(_))) {
        let messages = messages_of(input);
        return Ok((Guarded::plain(transcript(&messages)), Some(messages)));
    }
    render(model, modality, input, template, control).map(|p| (p, None))
}

/// What gates, golden and differential trials send for each scenario of the tier: its prompt
/// as `run` lays it out or, on an engine that lays conversations out itself, a conversation
/// as such. Generated properties are left out.
pub(crate) fn asks(spec: &TrialSpec, info: &SessionInfo) -> Vec<Ask> {
    let template = info.chat_template.as_ref();
    scenario_asks(&spec.scenarios, |s| match &s.input {
        Input::Messages(m) if info.applies_chat_template => (Guarded::plain(transcript(m)), Some(m.clone())),
        input => (render_run(&spec.model, input, template, &info.control_tokens), None),
    })
}

fn scenario_asks(
    scenarios: &[Arc<Scenario>],
    render: impl Fn(&Scenario) -> (Guarded, Option<Vec<MessageSpec>>),
) -> Vec<Ask> {
    scenarios
        .iter()
        .filter(|s| s.property.is_none())
        .map(|s| {
            let (Guarded { text: prompt, literal }, conversation) = render(s);
            Ask { name: s.name.clone(), prompt, literal, conversation, max_tokens: s.max_tokens }
        })
        .collect()
}

/// The scenario prompts as `run` lays them out without a template (what a file-only check can
/// know of them).
pub(crate) fn asks_without_session(spec: &TrialSpec) -> Vec<String> {
    spec.scenarios
        .iter()
        .filter(|s| s.property.is_none())
        .map(|s| render_run(&spec.model, &s.input, None, &[]).text)
        .collect()
}

/// A scenario's input as a conversation: a bare prompt is one user turn.
pub(crate) fn messages_of(input: &Input) -> Vec<MessageSpec> {
    match input {
        Input::Prompt(p) => vec![MessageSpec { role: Role::User, content: p.clone() }],
        Input::Messages(m) => m.clone(),
    }
}

/// [`transcript`], each message's spellings of `control` tokens kept as text.
fn guarded_transcript(messages: &[MessageSpec], control: &[String]) -> Guarded {
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    let laid_out = Guarded::lay_out(control, &contents, |masked| {
        let masked: Vec<MessageSpec> = messages
            .iter()
            .zip(masked)
            .map(|(m, content)| MessageSpec { role: m.role, content: content.clone() })
            .collect();
        Ok::<_, std::convert::Infallible>(transcript(&masked))
    });
    laid_out.unwrap_or_else(|never| match never {})
}

fn transcript(messages: &[MessageSpec]) -> String {
    let mut out = String::new();
    for m in messages {
        let role = match m.role {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        };
        out.push_str(&format!("{role}: {}\n", m.content));
    }
    out.push_str("Assistant:");
    out
}
