//! What the integration tests share.

use std::path::PathBuf;

/// The qualify test binary that cargo built beside the running test (`cargo test` builds every
/// test target before it runs any).
pub fn qualify_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir");
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .expect("deps dir lists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("qualify-") && p.extension().is_none()
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p).expect("the qualify test binary is built (run `cargo test --workspace`)")
}
