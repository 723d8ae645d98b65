//! Failure tickets: falsifications grouped by gate and root cause, one Markdown ticket each,
//! with the evidence and the exact command that reproduces the first of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::evidence::ModelEvidence;
use crate::journal::EvidenceRecord;
use crate::vocab::Decider;

use super::safe_text::{code_span, fenced, shell_word, text};

/// One ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    /// `NNN-<gate>-<model>.md`
    pub file_name: String,
    pub title: String,
    pub body: String,
}

/// The root cause of a failure reason: numbers, quoted text and hex digests replaced, so that
/// "expected 4, got 5" and "expected 9, got 7" are one cause.
pub fn root_cause(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut chars = reason.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                out.push('…');
            }
            c if c.is_ascii_digit() || (c == '-' && chars.peek().is_some_and(char::is_ascii_digit)) => {
                while chars.peek().is_some_and(|d| d.is_ascii_hexdigit() || *d == '.' || *d == 'e') {
                    chars.next();
                }
                out.push('N');
            }
            c => out.push(c),
        }
    }
    out
}

fn slug(s: &str) -> String {
    let s: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

/// Tickets for every falsification (any outcome but a pass or a policy skip), in a stable order.
pub fn tickets(evidence: &[ModelEvidence]) -> Vec<Ticket> {
    let mut groups: BTreeMap<(String, &str, String), Vec<&EvidenceRecord>> = BTreeMap::new();
    for e in evidence {
        for r in e.records.iter().filter(|r| !r.outcome.is_pass() && r.gate != Decider::Policy) {
            groups.entry((r.model_id.clone(), r.gate.as_str(), root_cause(&r.reason))).or_default().push(r);
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((model_id, gate, cause), records))| {
            let first = records[0];
            let title = format!(
                "{model_id}: {gate} falsified ({} trial{}): {cause}",
                records.len(),
                plural(records.len())
            );
            let mut body = format!("# {}\n\n", text(&title));
            let _ = writeln!(
                body,
                "**What failed.** The {} check of {} rejected {} trial{}:\n",
                code_span(gate),
                code_span(&model_id),
                records.len(),
                plural(records.len())
            );
            for r in records.iter().take(25) {
                let _ = writeln!(body, "- {} ({:?}): {}", code_span(&r.trial), r.outcome, text(&r.reason));
            }
            if records.len() > 25 {
                let _ = writeln!(body, "- … and {} more", records.len() - 25);
            }
            let _ = writeln!(
                body,
                "\n**Evidence** (the first trial, run {} at {}):\n",
                code_span(&first.run_id),
                text(&first.timestamp)
            );
            if let Some(p) = &first.prompt {
                let _ = writeln!(body, "Prompt:\n\n{}\n", fenced("text", p));
            }
            if let Some(o) = &first.output {
                let _ = writeln!(body, "Output:\n\n{}\n", fenced("text", o));
            }
            let _ = writeln!(
                body,
                "Engine {} on {}, {} on {} ({} CPUs); playbook {}.\n",
                code_span(first.engine.as_deref().unwrap_or("-")),
                code_span(first.device.as_deref().unwrap_or("-")),
                text(&first.host.os),
                text(&first.host.arch),
                first.host.cpus,
                code_span(&first.playbook)
            );
            for f in &first.model_files {
                let _ = writeln!(
                    body,
                    "- {}: {} bytes, sha256 {}",
                    code_span(&f.path.display().to_string()),
                    f.bytes,
                    code_span(&f.sha256)
                );
            }
            let command = format!("cargo test --test qualify -- --exact {}", shell_word(&first.trial));
            let _ = writeln!(body, "\n**Reproduce.**\n\n{}", fenced("sh", &command));
            Ticket {
                file_name: format!("{:03}-{}-{}.md", i + 1, slug(gate), slug(&first.model)),
                title,
                body,
            }
        })
        .collect()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
