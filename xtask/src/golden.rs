//! `cargo xtask golden [--accept [--yes]]`: refreshes the golden references.
//!
//! Without `--accept` it runs every `diff::golden-*` trial; each difference is written beside its
//! reference as a pending `.new` file and listed for review. `--accept` lists the pending files,
//! and `--accept --yes` makes them the references. Nothing here runs in CI, and CI never writes
//! pending files.

use anyhow::{Context, bail};

/// `golden [--accept [--yes]]`.
#[derive(Debug, clap::Args)]
pub struct GoldenArgs {
    /// List the pending `.new` references that would replace the current ones
    #[arg(long)]
    pub accept: bool,
    /// With --accept: make the pending references the references, after reviewing the list
    #[arg(long, requires = "accept")]
    pub yes: bool,
}

pub fn run(args: &GoldenArgs) -> anyhow::Result<()> {
    // `QUALIFY_GOLDEN_DIR`, as the harness that writes the pending files reads it.
    let places = crate::places();
    let golden = places.golden_dir.clone();
    if args.accept {
        let pending = modelqa::support::checks::golden::pending_files(&golden);
        if pending.is_empty() {
            eprintln!("no pending golden references under {}", golden.display());
            return Ok(());
        }
        if !args.yes {
            eprintln!("`--accept` would make these pending files the golden references:");
            for p in &pending {
                eprintln!("  {} → {}", p.display(), p.with_extension("").display());
            }
            bail!(
                "nothing accepted: review the list, then add `--yes` (`cargo xtask golden --accept --yes`)"
            );
        }
        for p in pending {
            let target = p.with_extension("");
            std::fs::rename(&p, &target).with_context(|| format!("failed to accept {}", p.display()))?;
            eprintln!("accepted {}", target.display());
        }
        return Ok(());
    }
    let status = crate::qualify_command(&places)
        .args(["--", "::diff::golden"])
        .env_remove("CI")
        .status()
        .context("failed to run the golden trials")?;
    let pending = modelqa::support::checks::golden::pending_files(&golden);
    if pending.is_empty() {
        if !status.success() {
            bail!("golden trials failed without writing pending references; see the output above");
        }
        eprintln!("every golden reference matches");
        return Ok(());
    }
    eprintln!("pending golden references (review them, then `cargo xtask golden --accept --yes`):");
    for p in pending {
        eprintln!("  {}", p.display());
    }
    Ok(())
}
