//! `cargo xtask schema [--check]`: the playbook JSON Schema, generated from the Rust types.

use anyhow::bail;

/// `schema [--check]`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// Write nothing; fail when playbooks/playbook.schema.json differs from the Rust types
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &SchemaArgs) -> anyhow::Result<()> {
    let path = crate::root().join("playbooks").join("playbook.schema.json");
    let fresh = modelqa::support::playbook::spec::json_schema();
    if args.check {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != fresh {
            bail!("{} is stale: run `cargo xtask schema` and commit the result", path.display());
        }
        eprintln!("{} is up to date", path.display());
        return Ok(());
    }
    std::fs::write(&path, fresh)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
