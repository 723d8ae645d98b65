//! `cargo xtask schema [--check]`: the playbook JSON Schema, generated from the Rust types.

use anyhow::bail;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let path = crate::root().join("playbooks").join("playbook.schema.json");
    let fresh = modelqa::playbook::spec::json_schema();
    if args.iter().any(|a| a == "--check") {
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
