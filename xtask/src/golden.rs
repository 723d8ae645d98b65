//! `cargo xtask golden [--accept]`: refreshes the golden references.
//!
//! Without `--accept` it runs every `diff::golden-*` trial; each difference is written beside its
//! reference as a pending `.new` file and listed for review. `--accept` makes the pending files
//! the references. Nothing here runs in CI, and CI never writes pending files.

use anyhow::{Context, bail};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    // `QUALIFY_GOLDEN_DIR`, as the harness that writes the pending files reads it.
    let places = crate::places();
    let golden = places.golden_dir.clone();
    if args.iter().any(|a| a == "--accept") {
        let pending = modelqa::golden::pending_files(&golden);
        if pending.is_empty() {
            eprintln!("no pending golden references under {}", golden.display());
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
    let pending = modelqa::golden::pending_files(&golden);
    if pending.is_empty() {
        if !status.success() {
            bail!("golden trials failed without writing pending references; see the output above");
        }
        eprintln!("every golden reference matches");
        return Ok(());
    }
    eprintln!("pending golden references (review them, then `cargo xtask golden --accept`):");
    for p in pending {
        eprintln!("  {}", p.display());
    }
    Ok(())
}
