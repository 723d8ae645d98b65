//! `cargo xtask certify | report | tickets | lock`: journals → evidence → MQS → registry, README
//! table, reports and tickets. The rules live in `modelqa::support::certify`; this module picks the files
//! and runs the harness.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use modelqa::support::certify::workspace::{self, Freshness, Layout};
use modelqa::support::certify::{ModelEvidence, evidence, lock, report, tickets};

/// The checkout, with the places the harness reads and writes under this environment.
fn layout() -> Layout {
    Layout::from_env(crate::root())
}

/// `certify [--family F --tier T [--rerun]] [--journal PATH]... [RUN_ID]... | --check`.
#[derive(Debug, clap::Args)]
pub struct CertifyArgs {
    /// Score the journals of these runs (RUN_ID.jsonl in the journal directory) [default: the last run]
    #[arg(value_name = "RUN_ID")]
    pub run_ids: Vec<String>,
    /// Score this journal file (repeatable)
    #[arg(long, value_name = "PATH")]
    pub journal: Vec<PathBuf>,
    /// Run this family's tier first (with --tier), then score its evidence
    #[arg(long, value_name = "F", requires = "tier", conflicts_with_all = ["run_ids", "journal"])]
    pub family: Option<String>,
    /// The tier to run (with --family)
    #[arg(long, value_name = "T", requires = "family")]
    pub tier: Option<String>,
    /// With --family/--tier: measure again even when the evidence is up to date
    #[arg(long, requires = "family")]
    pub rerun: bool,
    /// With --family/--tier: finish the interrupted run RUN_ID (the trials without a final
    /// record in its journal), appending to it, then score it
    #[arg(long, value_name = "RUN_ID", requires = "family", conflicts_with = "rerun")]
    pub resume: Option<String>,
    /// Let evidence with fewer records than the committed evidence of its tier replace it (an
    /// interrupted run's, say); refused otherwise, naming the run to resume
    #[arg(long)]
    pub accept_partial: bool,
    /// Certify records that different builds of the harness measured; refused otherwise
    #[arg(long)]
    pub allow_mixed_harness: bool,
    /// Write nothing; fail when certifications/, the registry or the README table is stale
    #[arg(long, conflicts_with_all = ["run_ids", "journal", "family", "tier", "rerun", "resume"])]
    pub check: bool,
}

/// `report [--model M] [--out DIR]`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Only this model (its directory under certifications/, or its model id)
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Where to write the files [default: <target dir>/qualify/report]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `tickets [--model M] [--out DIR]`.
#[derive(Debug, clap::Args)]
pub struct TicketsArgs {
    /// Only this model (its directory under certifications/, or its model id)
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Where to write the tickets [default: <target dir>/qualify/tickets]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `lock`: no flags; the playbooks are `QUALIFY_PLAYBOOKS` (default `playbooks/`).
#[derive(Debug, clap::Args)]
pub struct LockArgs {}

/// `certify`: `--family`/`--tier` go together and exclude named journals (clap holds both).
pub fn certify(args: &CertifyArgs) -> anyhow::Result<()> {
    let layout = layout();
    if args.check {
        return check(&layout);
    }
    workspace::check_lock(&layout)?;
    let (family, tier, rerun) = (args.family.clone(), args.tier.clone(), args.rerun);
    if let (Some(f), Some(modelqa::support::playbook::DIM_SMOKE)) = (&family, tier.as_deref()) {
        bail!(
            "{} checks a sibling by its files and its kernel class's certified representative; it is a \
             development check, not a certification: run it with `cargo test --test qualify -- {f}::{}::`",
            modelqa::support::playbook::DIM_SMOKE,
            modelqa::support::playbook::DIM_SMOKE
        );
    }
    let dir = layout.places.journal_dir.clone();

    let mut journals: Vec<PathBuf> = args.journal.clone();
    journals.extend(args.run_ids.iter().map(|run_id| dir.join(format!("{run_id}.jsonl"))));

    let (playbooks, notices) = modelqa::support::playbook::load_all(&layout.playbooks())
        .map_err(|e| anyhow::anyhow!("failed to load playbooks: {e}"))?;
    drop(notices);
    let plan = modelqa::support::expand::Plan::new(playbooks);

    if let (Some(family), Some(tier), Some(run_id)) = (&family, &tier, &args.resume) {
        let journal = dir.join(format!("{run_id}.jsonl"));
        if !journal.is_file() {
            bail!("no journal of run {run_id} in {}: nothing to resume", dir.display());
        }
        journals.push(run_harness(&layout, family, tier, Some(run_id))?);
    } else if let (Some(family), Some(tier)) = (&family, &tier) {
        match workspace::freshness(&layout, &plan, family, tier)? {
            Freshness::Current { recorded } if !rerun => {
                eprintln!(
                    "evidence for {family}::{tier} is up to date (recorded {recorded}, same playbook, model files and harness); \
                     `--rerun` measures again"
                );
            }
            freshness => {
                say_why(family, tier, &freshness);
                journals.push(run_harness(&layout, family, tier, None)?);
            }
        }
    } else if journals.is_empty() {
        journals.push(evidence::last_journal(&dir)?);
    }

    if !journals.is_empty() {
        let (records, torn) = evidence::read_journals(&journals)?;
        for j in &journals {
            eprintln!("reading {}", j.display());
        }
        if torn > 0 {
            eprintln!("warning: skipped {torn} torn journal line(s) (a process killed mid-write)");
        }
        for (run, unfinished) in workspace::interrupted_runs(&records) {
            eprintln!(
                "warning: run {run} stopped with {unfinished} trial(s) started and never finished: each is \
                 recorded as crashed and fails G3; if the run was interrupted rather than crashed, \
                 `cargo xtask certify --family F --tier T --resume {run}` finishes it"
            );
        }
        let fingerprints = workspace::recorded_fingerprints(&records);
        if fingerprints.len() > 1 && !args.allow_mixed_harness {
            bail!(
                "the journals hold records of {} different harness builds ({}): certify one run, or \
                 pass --allow-mixed-harness to score them together",
                fingerprints.len(),
                fingerprints.iter().map(|f| &f[..12]).collect::<Vec<_>>().join(", ")
            );
        }
        let found =
            workspace::evidence_from_records(&layout, records, &plan, family.as_deref(), tier.as_deref());
        if found.is_empty() {
            bail!("the journals hold no record{}", selection(&family, &tier));
        }
        if !args.accept_partial {
            refuse_partial(&layout, &found)?;
        }
        for e in &found {
            workspace::record_history(&layout, e)?;
            let changed = workspace::write_evidence(&layout, e)?;
            eprintln!(
                "{} {}: {} records of {} planned trials",
                if changed { "wrote" } else { "unchanged" },
                layout
                    .model_dir(&e.model)
                    .join("evidence.json")
                    .strip_prefix(&layout.root)
                    .unwrap_or(Path::new(""))
                    .display(),
                e.records.len(),
                e.planned
            );
        }
    }

    let workspace::Derived { scored, files } = workspace::derived(&layout)?;
    for (path, text) in &files {
        if workspace::write_if_changed(path, text)? {
            eprintln!("wrote {}", path.strip_prefix(&layout.root).unwrap_or(path).display());
        }
    }
    for (e, s) in &scored {
        if family.as_ref().is_none_or(|f| *f == e.family) {
            println!(
                "{:<28} {:<8} {:<17} MQS {:>4} {:<2}  {}",
                e.model_id,
                e.tier,
                s.scoped_status(),
                s.mqs,
                s.grade,
                s.verdict
            );
            for lack in &s.lacks {
                println!("{:<28} lacks {lack}", "");
            }
        }
    }
    Ok(())
}

fn selection(family: &Option<String>, tier: &Option<String>) -> String {
    match (family, tier) {
        (Some(f), Some(t)) => format!(" of {f}::{t}"),
        _ => String::new(),
    }
}

/// Says why a selection is measured (again): each reason once, with the models it concerns.
fn say_why(family: &str, tier: &str, freshness: &Freshness) {
    let Freshness::Stale(stale) = freshness else {
        eprintln!("measuring {family}::{tier} again: `--rerun`");
        return;
    };
    let mut reasons: Vec<(String, Vec<&str>)> = Vec::new();
    for (model, why) in stale {
        let why = why.to_string();
        match reasons.iter_mut().find(|(r, _)| *r == why) {
            Some((_, models)) => models.push(model),
            None => reasons.push((why, vec![model])),
        }
    }
    eprintln!("measuring {family}::{tier}:");
    for (why, models) in reasons {
        eprintln!("  {why} [{}]", models.join(", "));
    }
}

/// Refuses evidence that would replace fuller committed evidence of the same tier and plan: a
/// partial run (interrupted, or filtered) must not shrink a certification without saying so.
fn refuse_partial(layout: &Layout, found: &[ModelEvidence]) -> anyhow::Result<()> {
    for e in found {
        let path = layout.model_dir(&e.model).join("evidence.json");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(old) = serde_json::from_str::<ModelEvidence>(&text) else { continue };
        // Against the same plan only: a playbook change may plan fewer trials, and that is not
        // a partial run.
        if old.tier == e.tier && old.planned == e.planned && e.records.len() < old.records.len() {
            let unfinished = e.records.iter().filter(|r| r.unfinished).count();
            bail!(
                "{}: the journals hold {} records of {}::{} where the committed evidence has {} \
                 ({} started and never finished); a partial run does not replace fuller evidence: \
                 finish it with `--resume {}`, or pass --accept-partial",
                e.model,
                e.records.len(),
                e.family,
                e.tier,
                old.records.len(),
                unfinished,
                e.runs.last().map_or("RUN_ID", String::as_str)
            );
        }
    }
    Ok(())
}

/// Runs `cargo test --test qualify -- family::tier::` with its own run id (or resuming `resume`),
/// in the places this process reads; on a terminal a bar shows trials done, failures and an ETA
/// (see [`crate::libtest`]). Failing trials are evidence; a harness that could not start is an
/// error.
fn run_harness(layout: &Layout, family: &str, tier: &str, resume: Option<&str>) -> anyhow::Result<PathBuf> {
    let run_id =
        resume.map_or_else(|| format!("certify-{}", modelqa::support::config::new_run_id()), str::to_string);
    eprintln!("{} {family}::{tier} (run {run_id})", if resume.is_some() { "resuming" } else { "running" });
    let mut command = crate::qualify_command(&layout.places);
    command.args(["--", &format!("{family}::{tier}::")]);
    if resume.is_some() {
        command.env("QUALIFY_RESUME", &run_id);
    } else {
        command.env("QUALIFY_RUN_ID", &run_id);
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("failed to start cargo test")?;
    let followed = crate::libtest::follow(&mut child, format!("{family}::{tier}"));
    let status = child.wait().context("failed to wait for cargo test")?;
    followed?;
    match status.code() {
        Some(0 | 101) => Ok(layout.places.journal_dir.join(format!("{run_id}.jsonl"))),
        Some(code) => bail!("the qualify harness stopped with exit code {code} before recording evidence"),
        None => bail!("the qualify harness was killed by a signal"),
    }
}

fn check(layout: &Layout) -> anyhow::Result<()> {
    workspace::check_lock(layout)?;
    let stale = workspace::stale(layout)?;
    if stale.is_empty() {
        eprintln!("certifications, registry and README table agree with the evidence");
        return Ok(());
    }
    let list: Vec<String> =
        stale.iter().map(|p| p.strip_prefix(&layout.root).unwrap_or(p).display().to_string()).collect();
    bail!(
        "out of date with the evidence: {}; run `cargo xtask certify` and commit the result",
        list.join(", ")
    )
}

/// The scored evidence of the checkout, optionally one model.
fn scored(model: Option<&str>) -> anyhow::Result<Vec<(ModelEvidence, modelqa::support::certify::Score)>> {
    let scored = workspace::derived(&layout())?.scored;
    let scored: Vec<_> =
        scored.into_iter().filter(|(e, _)| model.is_none_or(|m| m == e.model || m == e.model_id)).collect();
    if scored.is_empty() {
        bail!(
            "no evidence under certifications/{}; run `cargo xtask certify` first",
            model.map(|m| format!(" for {m}")).unwrap_or_default()
        );
    }
    Ok(scored)
}

/// Each scored model's certification history, by its slug.
fn histories(
    scored: &[(ModelEvidence, modelqa::support::certify::Score)],
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<modelqa::support::certify::history::Entry>>> {
    let layout = layout();
    let mut out = std::collections::BTreeMap::new();
    for (e, _) in scored {
        out.insert(e.model.clone(), workspace::load_history(&layout, &e.model)?);
    }
    Ok(out)
}

/// `--out`, else `<target dir>/qualify/<default>`.
fn out_dir(out: Option<&Path>, default: &str) -> PathBuf {
    out.map_or_else(|| layout().places.target_dir.join("qualify").join(default), Path::to_path_buf)
}

/// `report [--model M] [--out DIR]`: junit.xml, report.html and summary.md.
pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let scored = scored(args.model.as_deref())?;
    let out = out_dir(args.out.as_deref(), "report");
    let files = [
        ("junit.xml", report::junit(&scored).context("failed to write JUnit XML")?),
        ("report.html", report::html(&scored, &histories(&scored)?)),
        ("summary.md", report::markdown(&scored)),
    ];
    for (name, text) in files {
        workspace::write_if_changed(&out.join(name), &text)?;
        println!("{}", out.join(name).display());
    }
    Ok(())
}

/// `tickets [--model M] [--out DIR]`: one Markdown ticket per gate and root cause.
pub fn tickets(args: &TicketsArgs) -> anyhow::Result<()> {
    let evidence: Vec<ModelEvidence> = scored(args.model.as_deref())?.into_iter().map(|(e, _)| e).collect();
    let out = out_dir(args.out.as_deref(), "tickets");
    let tickets = tickets::tickets(&evidence);
    if tickets.is_empty() {
        eprintln!("no falsification in the evidence: no ticket");
    }
    for t in tickets {
        workspace::write_if_changed(&out.join(&t.file_name), &t.body)?;
        println!("{}  {}", out.join(&t.file_name).display(), t.title);
    }
    Ok(())
}

/// `lock`: writes `playbook.lock` beside the playbooks (`QUALIFY_PLAYBOOKS`, default `playbooks/`).
pub fn lock(_args: &LockArgs) -> anyhow::Result<()> {
    let root = layout().playbook_dir();
    let before = lock::read(&root)?;
    let now = lock::hashes(&root)?;
    for d in lock::drift(&before, &now) {
        eprintln!("{d}");
    }
    let path = root.join(lock::LOCK_FILE);
    if workspace::write_if_changed(&path, &lock::render(&now))? {
        eprintln!("wrote {}", path.display());
    } else {
        eprintln!("{} is up to date", path.display());
    }
    Ok(())
}
