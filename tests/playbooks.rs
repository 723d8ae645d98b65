//! Data-driven playbook tests: every shipped playbook loads, every malformed playbook fails with
//! its snapshotted message, expansion is snapshotted, and playbooks in the original project's
//! format read as they are: the project's own corpus under `tests/seed-playbooks/` always, and the
//! original project's files in `../shared/reference/seed-playbooks` as well where a checkout has
//! that directory beside it (CI does; a user's clone does not).

use std::path::Path;

use datatest_stable::Utf8Path;
use modelqa::support::expand::{Filter, Plan};
use modelqa::support::matrix::Modality;
use modelqa::support::playbook;

type Result = datatest_stable::Result<()>;

/// The playbook root of every fixture here: the repository, so a fixture may extend the
/// shipped templates.
fn repo() -> &'static std::path::Path {
    std::path::Path::new(".")
}

fn snapshot_settings(dir: &str) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(dir));
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s
}

fn stem(path: &Utf8Path) -> String {
    path.file_stem().unwrap_or("playbook").to_string()
}

/// A shipped playbook (or template) loads without error.
fn shipped(path: &Utf8Path, text: String) -> Result {
    if path.components().any(|c| c.as_str() == "templates") {
        // A template is loaded through a playbook that extends it.
        let probe = format!(
            "playbook: 1\nfamily: probe\nextends: [{}]\ntiers: {{smoke: {{}}}}\nmodels: [{{id: org/probe}}]\n",
            path.file_name().unwrap_or_default()
        );
        playbook::load_text(&path.as_std_path().with_file_name("probe.yaml"), repo(), &probe)?;
        return Ok(());
    }
    let (pbs, notices) = playbook::load_text(path.as_std_path(), repo(), &text)?;
    if pbs.is_empty() || !notices.is_empty() {
        return Err(
            format!("{path}: expected playbooks without notices, got {} and {notices:?}", pbs.len()).into()
        );
    }
    Ok(())
}

/// A malformed playbook fails to load, with the message in its snapshot.
fn malformed(path: &Utf8Path, text: String) -> Result {
    let err = match playbook::load_text(path.as_std_path(), repo(), &text) {
        Ok(_) => return Err(format!("{path} loaded, but it is in the malformed corpus").into()),
        Err(e) => e.relative_to(Path::new(env!("CARGO_MANIFEST_DIR"))),
    };
    snapshot_settings("malformed").bind(|| insta::assert_snapshot!(stem(path), err.to_string()));
    Ok(())
}

/// The sorted trial names a playbook expands to.
fn expansion(path: &Utf8Path, text: String) -> Result {
    let (pbs, _) = playbook::load_text(path.as_std_path(), repo(), &text)?;
    let plan = Plan::new(pbs);
    let mut names = Vec::new();
    plan.for_each_selected(&Filter::default(), |_, n| names.push(n.to_string()));
    let mut sorted = names.clone();
    sorted.sort();
    if sorted != names {
        return Err("expansion is not in name order".into());
    }
    snapshot_settings("expansion").bind(|| insta::assert_snapshot!(stem(path), names.join("\n")));
    Ok(())
}

/// Where the original project's playbooks sit beside this repository, when they do.
macro_rules! original_corpus {
    ($sub:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/seed-playbooks", $sub)
    };
}

/// A seed-format model playbook of the project's own corpus: the checks of [`check_seed`], and
/// a summary of what it maps to, snapshotted.
fn seed_model(path: &Utf8Path, text: String) -> Result {
    let (pbs, notices) = playbook::load_text(path.as_std_path(), repo(), &text)?;
    check_seed(path, &text, &pbs, &notices)?;
    snapshot_settings("seed-corpus/models")
        .bind(|| insta::assert_snapshot!(seed_stem(path), seed_summary(&pbs, &notices)));
    Ok(())
}

/// A seed-format template of the project's own corpus: it loads once its `${...}` placeholders
/// are filled in, passes [`check_seed`], and its summary is snapshotted.
fn seed_template(path: &Utf8Path, text: String) -> Result {
    let filled = fill_placeholders(path, &text)?;
    let (pbs, notices) = playbook::load_text(path.as_std_path(), repo(), &filled)?;
    check_seed(path, &filled, &pbs, &notices)?;
    snapshot_settings("seed-corpus/templates")
        .bind(|| insta::assert_snapshot!(seed_stem(path), seed_summary(&pbs, &notices)));
    Ok(())
}

/// The original project's model playbooks parse as they are and pass [`check_seed`].
fn original_seed_model(path: &Utf8Path, text: String) -> Result {
    let (pbs, notices) = playbook::load_text(path.as_std_path(), repo(), &text)?;
    check_seed(path, &text, &pbs, &notices)
}

/// The original project's templates parse once their placeholders are filled in, and pass
/// [`check_seed`].
fn original_seed_template(path: &Utf8Path, text: String) -> Result {
    let filled = fill_placeholders(path, &text)?;
    let (pbs, notices) = playbook::load_text(path.as_std_path(), repo(), &filled)?;
    check_seed(path, &filled, &pbs, &notices)
}

/// A template with its placeholders filled in; one this test does not know is an error.
fn fill_placeholders(path: &Utf8Path, text: &str) -> datatest_stable::Result<String> {
    let filled = text
        .replace("${MODEL_ID}", "org/model-1b")
        .replace("${HF_REPO}", "org/model-1b")
        .replace("${MODEL_NAME}", "model-1b");
    if let Some(at) = filled.find("${") {
        let placeholder = filled[at..].split_inclusive('}').next().unwrap_or(&filled[at..]);
        return Err(format!("{path}: placeholder `{placeholder}` is not one this test fills in").into());
    }
    Ok(filled)
}

/// `quill-coder-0.6b-mvp.playbook.yaml` → `quill-coder-0.6b-mvp`.
fn seed_stem(path: &Utf8Path) -> String {
    let name = path.file_name().unwrap_or("playbook");
    name.strip_suffix(".playbook.yaml").or_else(|| name.strip_suffix(".yaml")).unwrap_or(name).to_string()
}

/// What a seed-format file maps to: family, tier, model, matrix, the oracles of each distinct
/// prompt, the trial count and the notices.
fn seed_summary(pbs: &[playbook::Playbook], notices: &[playbook::Notice]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for pb in pbs {
        let join = |items: Vec<String>| if items.is_empty() { "none".to_string() } else { items.join(", ") };
        for tier in &pb.tiers {
            let _ = writeln!(out, "family: {}\ntier: {}", pb.family, tier.name);
            for m in &pb.models {
                let _ = writeln!(out, "model: {} ({})", m.slug, m.id);
            }
            let _ = writeln!(out, "formats: {}", join(tier.formats.iter().map(|f| f.name()).collect()));
            let _ = writeln!(
                out,
                "backends: {}",
                join(tier.backends.iter().map(|b| b.as_str().to_string()).collect())
            );
            let _ = writeln!(
                out,
                "modalities: {}",
                join(tier.modalities.iter().map(|m| m.as_str().to_string()).collect())
            );
            let _ = writeln!(out, "scenarios per cell: {}", tier.scenario_count);
            let performance = pb.performance.as_ref().map_or_else(Vec::new, |p| {
                tier.backends.iter().filter(|b| p.asserts_on(**b)).map(|b| b.as_str().to_string()).collect()
            });
            let _ = writeln!(out, "performance asserted on: {}", join(performance));
        }
        let _ = writeln!(out, "trials: {}", Plan::new(vec![pb.clone()]).total());
        let _ = writeln!(out, "prompts:");
        let mut seen = std::collections::BTreeSet::new();
        for sc in &pb.scenarios {
            if seen.insert(sc.input.question()) {
                let oracles: Vec<&str> = sc.oracles.iter().map(|o| o.kind().as_str()).collect();
                let _ = writeln!(out, "  {:?}: {}", sc.input.question(), oracles.join(", "));
            }
        }
    }
    let _ = writeln!(out, "notices:{}", if notices.is_empty() { " none" } else { "" });
    for n in notices {
        let _ = writeln!(out, "  {}", n.message);
    }
    out
}

/// The checks every seed-format file passes. It expands to the size the original's own
/// documentation gives (formats × backends × modalities per scenario, plus the trials this
/// harness adds per cell); an mvp file over three formats is the 18-cell matrix; code prompts are
/// parsed exactly where `code_syntax` is declared; and every block, oracle or gate setting the
/// harness does not honour is named in a notice, never dropped silently.
fn check_seed(
    path: &Utf8Path,
    text: &str,
    pbs: &[playbook::Playbook],
    notices: &[playbook::Notice],
) -> Result {
    let [pb] = pbs else { return Err("one playbook per seed file".into()) };
    let tier = &pb.tiers[0];
    let per_scenario = tier.formats.len() * tier.backends.len() * tier.modalities.len();
    let cells = tier.formats.len() * tier.backends.len();
    let safetensors = usize::from(tier.formats.contains(&modelqa::support::matrix::Format::Safetensors));
    // Scenarios in every cell and modality, five gateways, the special-token injection gate,
    // `gate::trace` and `diff::batch-invariance` per cell, two golden comparisons per safetensors cell, twelve differential
    // trials (tensors, logits, generation, invariants I-1 to I-5, the tokenizer fuzz, long
    // context, perplexity, trace) per derived-format cell, plus the rendered chat
    // prompt where the tier chats or serves, seven server-level gates and `diff::serve-vs-run` per
    // cell where it serves (the latter where a scenario runs in serve), and a performance trial
    // per cell whose backend `profile_ci` asserts on; each GPU cell also has `diff::backend-parity`.
    let safetensors_cells = safetensors * tier.backends.len();
    let chats = tier.modalities.iter().any(|m| matches!(m, Modality::Chat | Modality::Serve));
    let serves = tier.modalities.contains(&Modality::Serve);
    let serves_one = pb.scenarios[..tier.scenario_count]
        .iter()
        .any(|s| s.property.is_none() && s.runs_in(Modality::Serve));
    let expected = per_scenario * tier.scenario_count
        + 8 * cells
        + 2 * safetensors_cells
        + (12 + usize::from(chats)) * (cells - safetensors_cells)
        + if serves { (7 + usize::from(serves_one)) * cells } else { 0 }
        + if tier.backends.contains(&modelqa::support::matrix::Backend::Gpu) {
            tier.formats.len()
        } else {
            0
        }
        + pb.performance
            .as_ref()
            .map_or(0, |p| tier.formats.len() * tier.backends.iter().filter(|b| p.asserts_on(**b)).count());
    let plan = Plan::new(pbs.to_vec());
    if plan.total() == 0 {
        return Err(format!("{path} expands to no trial").into());
    }
    if plan.total() != expected {
        return Err(format!("{path}: {} trials, expected {expected}", plan.total()).into());
    }
    let name = path.file_name().unwrap_or_default();
    if name.ends_with("-mvp.playbook.yaml") && per_scenario != 18 && tier.formats.len() == 3 {
        return Err(format!(
            "{path}: an mvp playbook with 3 formats expands to {per_scenario} per scenario, not 18"
        )
        .into());
    }
    // Code prompts are parsed where the playbook declares `code_syntax`, as the original chose.
    if text.contains("type: code_syntax") {
        for sc in &pb.scenarios {
            let code = modelqa::support::oracle::language_of(sc.input.question()).is_some();
            let parsed = sc.oracles.iter().any(|o| o.kind().as_str() == "code_syntax");
            if code != parsed {
                return Err(format!(
                    "{path}: scenario {} ({:?}) has code_syntax: {parsed}",
                    sc.name,
                    sc.input.question()
                )
                .into());
            }
        }
    }
    // Every block, oracle and gate setting the harness does not honour is named on stderr.
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
    let announced = |needle: &str| notices.iter().any(|n| n.message.contains(needle));
    for block in [
        "property_tests",
        "state_machine",
        "differential_tests",
        "profile_ci",
        "trace_payload",
        "contract_tests",
        "ollama_parity",
        "falsification_gates",
        "verification_gates",
        "verification_tests",
        "mvp_matrix",
        "acceptance",
    ] {
        if doc.get(block).is_some() && !announced(&format!("`{block}`")) {
            return Err(format!("{path}: block `{block}` was not announced").into());
        }
    }
    for oracle in doc["oracles"].as_sequence().into_iter().flatten() {
        let kind = oracle["type"].as_str().unwrap_or_default();
        if matches!(kind, "response" | "composite") && !announced(&format!("oracle `{kind}`")) {
            return Err(format!("{path}: oracle `{kind}` was not announced").into());
        }
        let languages = oracle["config"]["languages"].as_sequence().into_iter().flatten();
        for lang in languages.filter_map(serde_yaml_ng::Value::as_str) {
            if kind == "code_syntax"
                && !matches!(lang, "python" | "rust")
                && !announced(&format!("`code_syntax` for `{lang}`"))
            {
                return Err(format!("{path}: `code_syntax` for `{lang}` was not announced").into());
            }
        }
    }
    for (gate, flag) in doc["gates"].as_mapping().into_iter().flatten() {
        let off = match flag {
            serde_yaml_ng::Value::Bool(b) => !b,
            serde_yaml_ng::Value::String(s) => {
                matches!(s.to_ascii_lowercase().as_str(), "false" | "no" | "off" | "0")
            }
            _ => false,
        };
        let gate = gate.as_str().unwrap_or_default();
        if off && !announced(&format!("`gates.{gate}: false`")) {
            return Err(format!("{path}: `gates.{gate}: false` was not announced").into());
        }
    }
    Ok(())
}

/// The data-driven trials, with `$extra` requirements after the ones that always run.
macro_rules! playbook_harness {
    ($($extra:tt)*) => {
        datatest_stable::harness! {
            { test = shipped, root = "playbooks", pattern = r"\.ya?ml$" },
            { test = malformed, root = "tests/malformed", pattern = r"\.yaml$" },
            { test = expansion, root = "tests/expansion", pattern = r"\.yaml$" },
            { test = seed_model, root = "tests/seed-playbooks/models", pattern = r"\.yaml$" },
            { test = seed_template, root = "tests/seed-playbooks/templates", pattern = r"\.yaml$" },
            $($extra)*
        }
    };
}

// datatest-stable panics on a root that is missing or holds no file, so the original project's
// corpus is added only where it exists. `harness!` expands to a `fn main`; each branch declares
// one in its own block, which shadows this one there, and calls it.
fn main() -> std::process::ExitCode {
    if Path::new(original_corpus!("")).is_dir() {
        playbook_harness! {
            { test = original_seed_model, root = original_corpus!("/models"), pattern = r"\.yaml$" },
            { test = original_seed_template, root = original_corpus!("/templates"), pattern = r"\.yaml$" },
        }
        main()
    } else {
        eprintln!(
            "note: ../shared/reference/seed-playbooks not found beside the repository: the original \
             project's own playbooks were not read (the project's corpus under tests/seed-playbooks was)"
        );
        playbook_harness! {}
        main()
    }
}
