//! Golden references: the greedy output text of every scenario, as insta-style
//! `<scenario>.snap` files, and the top-k logits at its first prompt positions, as
//! `<scenario>.logits.json`, under `golden/<family>/<model>/`. One file per scenario, so tiers
//! that share a scenario share its reference. The `diff::golden-*` trials ([`run`]) compare a model
//! against them.
//!
//! A reference is never rewritten implicitly: a difference is written beside it as a pending
//! `.new` file (never in CI), and `cargo xtask golden --accept --yes` accepts it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::expand::GoldenKind;
use crate::trial::{Finding, TrialEnv};
use crate::vocab::{Decider, Outcome};

/// How many prompt positions and top logits the numeric reference keeps.
pub(crate) const POSITIONS: usize = 4;
pub(crate) const TOP_K: usize = 5;
/// Largest accepted difference of a reference logit.
pub(crate) const LOGIT_TOLERANCE: f32 = 1e-4;

/// Where references live: `QUALIFY_GOLDEN_DIR`, default `golden/`.
pub(crate) fn root() -> PathBuf {
    crate::config::Places::from_env().golden_dir
}

pub(crate) fn model_dir(family: &str, model: &str) -> PathBuf {
    root().join(family).join(model)
}

/// Pending files are written only outside CI.
pub(crate) fn may_write_pending() -> bool {
    std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "false" || v == "0")
}

/// The text of a `.snap` file: what follows its second `---` line, without the final newline.
pub(crate) fn read_snapshot(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.splitn(3, "---\n");
    let (_, _, body) = (parts.next()?, parts.next()?, parts.next()?);
    Some(body.strip_suffix('\n').unwrap_or(body).to_string())
}

/// A `.snap` file in insta's layout, so `cargo insta review` can show it.
pub(crate) fn snapshot_text(expression: &str, body: &str) -> String {
    format!("---\nsource: modelqa golden\nexpression: {expression:?}\n---\n{body}\n")
}

/// Writes `<path>.new` beside a reference, if allowed; returns its path.
pub(crate) fn write_pending(path: &Path, content: &str) -> Option<PathBuf> {
    if !may_write_pending() {
        return None;
    }
    let mut pending = path.as_os_str().to_owned();
    pending.push(".new");
    let pending = PathBuf::from(pending);
    std::fs::create_dir_all(pending.parent()?).ok()?;
    std::fs::write(&pending, content).ok()?;
    Some(pending)
}

/// Top-k logits of one prompt position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TopK {
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
}

pub(crate) fn top_k(logits: &[f32], k: usize) -> TopK {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
    idx.truncate(k);
    TopK { ids: idx.iter().map(|i| *i as u32).collect(), logits: idx.iter().map(|i| logits[*i]).collect() }
}

/// The numeric reference of one scenario: the prompt as sent, and top-k per position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScenarioLogits {
    pub prompt: String,
    pub positions: Vec<TopK>,
}

/// Differences between a scenario's reference and what was computed, in words.
pub(crate) fn compare_logits(scenario: &str, want: &ScenarioLogits, got: &ScenarioLogits) -> Vec<String> {
    if want.prompt != got.prompt {
        return vec![format!("{scenario}: prompt {:?}, reference {:?}", got.prompt, want.prompt)];
    }
    let mut out = Vec::new();
    for (pos, (w, g)) in want.positions.iter().zip(&got.positions).enumerate() {
        if w.ids != g.ids {
            out.push(format!("{scenario} position {pos}: top ids {:?}, reference {:?}", g.ids, w.ids));
            continue;
        }
        let worst = w.logits.iter().zip(&g.logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        if worst > LOGIT_TOLERANCE {
            out.push(format!(
                "{scenario} position {pos}: logits differ by {worst:.2e} (tolerance {LOGIT_TOLERANCE:.0e})"
            ));
        }
    }
    if want.positions.len() != got.positions.len() {
        out.push(format!(
            "{scenario}: {} positions, reference {}",
            got.positions.len(),
            want.positions.len()
        ));
    }
    out
}

/// Every pending file under `dir`.
pub fn pending_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "new") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A golden trial: greedy outputs or top-k logits of every scenario against the references; a
/// difference is written as a pending `.new` file beside the reference (never in CI).
pub(crate) fn run(env: &TrialEnv<'_>, kind: GoldenKind) -> Finding {
    let spec = env.spec;
    let dir = model_dir(&spec.name.family, &spec.name.model);
    let asks = env.asks();
    let mut differences = Vec::new();
    let mut pending = Vec::new();
    for ask in &asks {
        let name = &ask.name;
        match kind {
            GoldenKind::Text => {
                let text = match ask.generate(env.session, env.deadline) {
                    Ok(g) => g.text,
                    Err(e) => {
                        let what = format!("scenario {name}");
                        return Finding::from_engine_error(e, Decider::Regr, &what, env.timeout());
                    }
                };
                let path = dir.join(format!("{name}.snap"));
                match read_snapshot(&path) {
                    Some(want) if want == text => {}
                    want => {
                        differences.push(match want {
                            Some(w) => format!("{name}: {text:?}, golden {w:?}"),
                            None => format!("{name}: no golden reference ({})", path.display()),
                        });
                        let expr = format!("{}::{}::{name}", spec.name.family, spec.name.model);
                        pending.extend(write_pending(&path, &snapshot_text(&expr, &text)));
                    }
                }
            }
            GoldenKind::Logits => {
                let rows = env
                    .session
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .prompt_logits(&ask.prompt, POSITIONS);
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => {
                        let what = format!("scenario {name}");
                        return Finding::from_engine_error(e, Decider::Regr, &what, env.timeout());
                    }
                };
                let positions = rows.iter().map(|r| top_k(r, TOP_K)).collect();
                let actual = ScenarioLogits { prompt: ask.prompt.clone(), positions };
                let path = dir.join(format!("{name}.logits.json"));
                let reference: Option<ScenarioLogits> =
                    std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok());
                let found = match &reference {
                    Some(r) => compare_logits(name, r, &actual),
                    None => vec![format!("{name}: no golden reference ({})", path.display())],
                };
                if !found.is_empty() {
                    let json = serde_json::to_string_pretty(&actual).unwrap_or_default() + "\n";
                    pending.extend(write_pending(&path, &json));
                    differences.extend(found);
                }
            }
        }
    }
    if differences.is_empty() {
        return Finding::new(
            Outcome::Corroborated,
            Decider::Regr,
            format!(
                "{} scenarios match their golden {} ({})",
                asks.len(),
                kind.slug(),
                match kind {
                    GoldenKind::Logits => format!(
                        "top {TOP_K} ids at the first {POSITIONS} positions equal, logits within {LOGIT_TOLERANCE:.0e}: \
                         the CPU engine is deterministic, and the tolerance covers only summation order"
                    ),
                    _ => "greedy text equal: the CPU engine is deterministic, and any difference fails"
                        .to_string(),
                }
            ),
        );
    }
    let note = if pending.is_empty() {
        String::new()
    } else {
        " (pending references written; review, then `cargo xtask golden --accept --yes`)".to_string()
    };
    Finding::new(
        Outcome::Falsified,
        Decider::Regr,
        format!(
            "{} of {} differ from golden{note}: {}",
            differences.len(),
            asks.len().max(1),
            differences.join("; ")
        ),
    )
}
