//! Data-driven playbook tests: every shipped playbook loads, every malformed playbook fails with
//! its snapshotted message, expansion is snapshotted, and the original project's playbooks read
//! as they are.

use std::path::Path;

use datatest_stable::Utf8Path;
use modelqa::expand::{Filter, Plan};
use modelqa::matrix::Modality;
use modelqa::playbook;

type Result = datatest_stable::Result<()>;

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
        playbook::load_text(&path.as_std_path().with_file_name("probe.yaml"), &probe)?;
        return Ok(());
    }
    let (pbs, notices) = playbook::load_text(path.as_std_path(), &text)?;
    if pbs.is_empty() || !notices.is_empty() {
        return Err(
            format!("{path}: expected playbooks without notices, got {} and {notices:?}", pbs.len()).into()
        );
    }
    Ok(())
}

/// A malformed playbook fails to load, with the message in its snapshot.
fn malformed(path: &Utf8Path, text: String) -> Result {
    let err = match playbook::load_text(path.as_std_path(), &text) {
        Ok(_) => return Err(format!("{path} loaded, but it is in the malformed corpus").into()),
        Err(e) => e.relative_to(Path::new(env!("CARGO_MANIFEST_DIR"))),
    };
    snapshot_settings("malformed").bind(|| insta::assert_snapshot!(stem(path), err.to_string()));
    Ok(())
}

/// The sorted trial names a playbook expands to.
fn expansion(path: &Utf8Path, text: String) -> Result {
    let (pbs, _) = playbook::load_text(path.as_std_path(), &text)?;
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

/// The original project's model playbooks parse as they are and expand to the sizes their
/// own documentation gives: formats × backends × modalities per scenario.
fn seed_model(path: &Utf8Path, text: String) -> Result {
    let (pbs, notices) = playbook::load_text(path.as_std_path(), &text)?;
    let [pb] = pbs.as_slice() else { return Err("one playbook per seed file".into()) };
    let tier = &pb.tiers[0];
    let per_scenario = tier.formats.len() * tier.backends.len() * tier.modalities.len();
    let cells = tier.formats.len() * tier.backends.len();
    let safetensors = usize::from(tier.formats.contains(&modelqa::matrix::Format::Safetensors));
    // Scenarios in every cell and modality, five gateways per cell, two golden comparisons per
    // safetensors cell, eight differential trials (tensors, logits, generation, invariants I-1
    // to I-5) per derived-format cell, plus the rendered chat prompt where the tier chats or
    // serves, six server-level gates per cell where it serves, and a performance trial per cell
    // whose backend `profile_ci` asserts on.
    let safetensors_cells = safetensors * tier.backends.len();
    let chats = tier.modalities.iter().any(|m| matches!(m, Modality::Chat | Modality::Serve));
    let serves = tier.modalities.contains(&Modality::Serve);
    let expected = per_scenario * tier.scenario_count
        + 5 * cells
        + 2 * safetensors_cells
        + (8 + usize::from(chats)) * (cells - safetensors_cells)
        + if serves { 6 * cells } else { 0 }
        + pb.performance
            .as_ref()
            .map_or(0, |p| tier.formats.len() * tier.backends.iter().filter(|b| p.asserts_on(**b)).count());
    let plan = Plan::new(pbs.clone());
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
            let code = modelqa::oracle::language_of(sc.input.question()).is_some();
            let parsed = sc.oracles.iter().any(|o| o.kind() == "code_syntax");
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
    // Every block the harness does not run yet is named on stderr, never dropped silently.
    for block in ["differential_tests", "profile_ci", "contract_tests", "property_tests", "trace_payload"] {
        if text.lines().any(|l| l.starts_with(&format!("{block}:")))
            && !notices.iter().any(|n| n.message.contains(&format!("`{block}`")))
        {
            return Err(format!("{path}: block `{block}` was not announced").into());
        }
    }
    Ok(())
}

/// The original project's templates parse once their `${...}` placeholders are filled in.
fn seed_template(path: &Utf8Path, text: String) -> Result {
    let filled = text
        .replace("${MODEL_ID}", "org/model-1b")
        .replace("${HF_REPO}", "org/model-1b")
        .replace("${MODEL_NAME}", "model-1b");
    let (pbs, _) = playbook::load_text(path.as_std_path(), &filled)?;
    if Plan::new(pbs).total() == 0 {
        return Err(format!("{path} expands to no trial").into());
    }
    Ok(())
}

datatest_stable::harness! {
    { test = shipped, root = "playbooks", pattern = r"\.ya?ml$" },
    { test = malformed, root = "tests/malformed", pattern = r"\.yaml$" },
    { test = expansion, root = "tests/expansion", pattern = r"\.yaml$" },
    { test = seed_model, root = "../shared/reference/seed-playbooks/models", pattern = r"\.yaml$" },
    { test = seed_template, root = "../shared/reference/seed-playbooks/templates", pattern = r"\.yaml$" },
}
