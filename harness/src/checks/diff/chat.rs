//! Whether a derived format's chat template renders every conversation as the ground truth's
//! does.

use crate::chat::ChatTemplate;
use crate::checks::Verdict;
use crate::playbook::MessageSpec;

/// Whether a derived format's chat template lays every conversation out exactly as the ground
/// truth's does: the template travels with the weights, and a conversion must not change it.
pub(crate) fn chat_prompts(
    reference: Option<&ChatTemplate>,
    derived: Option<&ChatTemplate>,
    conversations: &[(String, Vec<MessageSpec>)],
) -> Verdict {
    let (reference, derived) = match (reference, derived) {
        (None, None) => {
            return Verdict::pass("neither the ground truth nor this format has a chat template");
        }
        (Some(_), None) => {
            return Verdict::fail("the ground truth has a chat template; this format lost it");
        }
        (None, Some(_)) => {
            return Verdict::fail("this format has a chat template the ground truth lacks");
        }
        (Some(r), Some(d)) => (r, d),
    };
    for (name, messages) in conversations {
        let (want, got) = match (reference.render(messages), derived.render(messages)) {
            (Ok(w), Ok(g)) => (w, g),
            (Err(e), _) | (_, Err(e)) => return Verdict::fail(format!("scenario {name}: {e}")),
        };
        if want != got {
            let at = want.chars().zip(got.chars()).take_while(|(a, b)| a == b).count();
            return Verdict::fail(format!(
                "scenario {name}: the rendered prompts differ from character {at}: {:?} here, {:?} in safetensors",
                got.chars().skip(at).take(40).collect::<String>(),
                want.chars().skip(at).take(40).collect::<String>()
            ));
        }
    }
    Verdict::pass(format!(
        "{} conversations render to the same prompt as in safetensors",
        conversations.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Outcome;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::from_tokenizer_config(
            &serde_json::json!({"chat_template": source, "eos_token": "</s>"}),
        )
        .expect("a template")
    }

    #[test]
    fn a_chat_template_changed_in_conversion_is_found_and_located() {
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";
        let conversations = vec![(
            "hello".to_string(),
            vec![MessageSpec { role: crate::playbook::spec::Role::User, content: "hi".into() }],
        )];
        let same = chat_prompts(Some(&template(chatml)), Some(&template(chatml)), &conversations);
        assert_eq!(same.outcome, Outcome::Corroborated, "{}", same.reason);
        let stripped = chatml.replace("\n{{ m.content }}", "{{ m.content }}");
        let v = chat_prompts(Some(&template(chatml)), Some(&template(&stripped)), &conversations);
        assert_eq!(v.outcome, Outcome::Falsified);
        assert!(v.reason.contains("scenario hello") && v.reason.contains("character 16"), "{}", v.reason);
        let lost = chat_prompts(Some(&template(chatml)), None, &conversations);
        assert!(lost.reason.contains("lost it"), "{}", lost.reason);
        assert_eq!(chat_prompts(None, None, &conversations).outcome, Outcome::Corroborated);
    }
}
