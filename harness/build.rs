//! Stamps the build with the harness fingerprint: SHA-256 over the harness's and its kernels'
//! sources (`harness/src`, `kernels/src`), their manifests and the workspace's `Cargo.lock`
//! (the kernels decide the engine's numbers and speed as much as the harness), by sorted path from the
//! workspace root. Every evidence record carries it, so certify knows which harness measured
//! what (`certify::workspace::harness_fingerprint` computes the same from a checkout).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.parent().expect("the harness lives in the workspace").to_path_buf();
    let kernels = root.join("kernels");
    let mut files = vec![root.join("Cargo.lock"), manifest.join("Cargo.toml"), kernels.join("Cargo.toml")];
    let mut stack = vec![manifest.join("src"), kernels.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f);
        hasher.update(rel.to_string_lossy().replace('\\', "/").as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(f).unwrap_or_default());
        hasher.update([0]);
    }
    println!("cargo:rustc-env=MODELQA_HARNESS_FINGERPRINT={}", hex::encode(hasher.finalize()));
    for watched in [
        root.join("Cargo.lock"),
        manifest.join("Cargo.toml"),
        manifest.join("src"),
        kernels.join("Cargo.toml"),
        kernels.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", display(&watched));
    }
}

fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
