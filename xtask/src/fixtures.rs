//! `cargo xtask fixtures`: writes the random-weight test models the bundled `tiny-random`
//! playbook and the project's tests use.

use modelqa::testmodel::{TestArchitecture, TestModelShape, write_test_model};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let out = match crate::flag_value(args, "--out")? {
        Some(dir) => std::path::PathBuf::from(dir),
        None => crate::root().join("target").join("fixtures"),
    };
    for (name, arch, seed) in
        [("tiny-random-llama", TestArchitecture::Llama, 1), ("tiny-random-qwen2", TestArchitecture::Qwen2, 2)]
    {
        let dir = out.join(name);
        eprintln!("writing {}", dir.display());
        write_test_model(&dir, arch, TestModelShape::default(), seed)?;
    }
    Ok(())
}
