//! `cargo xtask diff A B`: what changed between two runs — trials whose verdict flipped, metrics
//! that moved, and which of either is beyond noise (`modelqa::certify::diff` decides).
//!
//! A and B are each a journal (`.jsonl`), a run id (its journal in the journal directory), a
//! model's certification (`certifications/<model>` or its `evidence.json`), or a directory of
//! certifications (`certifications/`, a checkout's or another's). Markdown goes to stdout, for a
//! pull-request comment, and to `--markdown FILE`. Exit status: 0 when nothing regressed beyond
//! noise, 1 when something did, 2 (anyhow's error) when a side cannot be read or paired.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use modelqa::support::certify::ModelEvidence;
use modelqa::support::certify::diff::{diff, html, markdown};
use modelqa::support::journal::EvidenceRecord;

/// `diff A B [--alpha P] [--markdown FILE]`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The earlier side: a journal, a run id, a certification directory or evidence.json
    #[arg(value_name = "A")]
    pub before: String,
    /// The later side, in the same forms
    #[arg(value_name = "B")]
    pub after: String,
    /// Significance level of "beyond noise"
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    pub alpha: f64,
    /// Also write the Markdown to this file
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Also write an HTML page with a plot per regressed metric (each cell's after/before ratio)
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

pub fn run(args: &DiffArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.alpha > 0.0 && args.alpha < 1.0,
        "--alpha must lie between 0 and 1, not {}",
        args.alpha
    );
    let started = Instant::now();
    // The two sides are read at once, one on each core: reading is most of the time.
    let (before, after) = std::thread::scope(|s| {
        let before = s.spawn(|| read_side(&args.before));
        let after = read_side(&args.after);
        (before.join().unwrap_or_else(|_| Err(anyhow::anyhow!("reading {} panicked", args.before))), after)
    });
    let (before, after) = (before?, after?);
    let d = diff(&before, &after, args.alpha).context("the two sides cannot be compared")?;
    let text = markdown(&d, &args.before, &args.after);
    print!("{text}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>modelqa diff</title><style>\
             body{{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem}}table{{border-collapse:collapse;margin:1rem 0}}\
             td,th{{border:1px solid #d1d5db;padding:.25rem .5rem;text-align:left;vertical-align:top}}\
             figure{{margin:1rem 0}}figcaption{{font-weight:600}}</style></head><body>{}</body></html>\n",
            html(&d, &args.before, &args.after)
        );
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "compared {} and {} records in {:.2} s",
        before.len(),
        after.len(),
        started.elapsed().as_secs_f64()
    );
    if d.regressions().next().is_some() || d.metric_regressions().next().is_some() {
        std::process::exit(1);
    }
    Ok(())
}

/// The records one side names.
fn read_side(side: &str) -> anyhow::Result<Vec<EvidenceRecord>> {
    let path = Path::new(side);
    if path.is_file() {
        if path.file_name().is_some_and(|n| n == "evidence.json") {
            return evidence(path);
        }
        let (records, _torn) =
            modelqa::support::journal::read(path).with_context(|| format!("reading the journal {side}"))?;
        return Ok(records);
    }
    if path.is_dir() {
        if path.join("evidence.json").is_file() {
            return evidence(&path.join("evidence.json"));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {side}"))?
            .filter_map(|e| e.ok().map(|e| e.path().join("evidence.json")))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{side} is a directory with no evidence.json in it or in its subdirectories");
        }
        let mut all = Vec::new();
        for f in files {
            all.extend(evidence(&f)?);
        }
        return Ok(all);
    }
    let journal = crate::places().journal_dir.join(format!("{side}.jsonl"));
    if journal.is_file() {
        let (records, _) = modelqa::support::journal::read(&journal)
            .with_context(|| format!("reading the journal {}", journal.display()))?;
        return Ok(records);
    }
    bail!("{side} is neither a file, a directory, nor a run id with a journal at {}", journal.display())
}

fn evidence(path: &Path) -> anyhow::Result<Vec<EvidenceRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let e: ModelEvidence = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a model's evidence", path.display()))?;
    Ok(e.records)
}
