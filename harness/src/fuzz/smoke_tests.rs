//! A quick in-test smoke of the model-file targets: each committed seed, then deterministic
//! mutations of it (bit flips; 0, 2^31, 2^32 − 1, u64::MAX and kin written over 32- and 64-bit
//! fields; for config.json, each field set to an awkward value), all under `catch_unwind`. The
//! driver (`cargo xtask fuzz`) goes further; this keeps the targets honest in `cargo test`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::models::seeds;
use crate::stats::SplitMix;

/// Integers that break unchecked arithmetic: zero, one, the signed and unsigned edges.
const INTERESTING: [u64; 8] = [0, 1, 0x7fff_ffff, 1 << 31, 0xffff_ffff, 1 << 32, 1 << 62, u64::MAX];

/// JSON values a config.json field may be set to.
fn awkward_json() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!(0),
        json!(-1),
        json!(1u64 << 31),
        json!(0xffff_ffffu64),
        json!(1_000_000_000_000u64),
        json!(u64::MAX),
        json!(1e12),
        json!(0.5),
        json!(3),
        json!("x"),
        json!(null),
        json!(true),
        json!([]),
    ]
}

/// `n` byte-level mutations of `seed`: half aimed at the first 512 bytes, where headers are.
fn byte_mutations(seed: &[u8], n: usize, rng: &mut SplitMix) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut m = seed.to_vec();
            let span = if i % 2 == 0 { m.len().min(512) } else { m.len() };
            let at = rng.below(span);
            let value = INTERESTING[rng.below(INTERESTING.len())];
            match i % 3 {
                0 => m[at] ^= 1 << rng.below(8),
                1 => {
                    let b = (value as u32).to_le_bytes();
                    let end = (at + 4).min(m.len());
                    m[at..end].copy_from_slice(&b[..end - at]);
                }
                _ => {
                    let b = value.to_le_bytes();
                    let end = (at + 8).min(m.len());
                    m[at..end].copy_from_slice(&b[..end - at]);
                }
            }
            m
        })
        .collect()
}

/// `n` config.json mutations: a field set to an awkward value, one at a time.
fn json_mutations(seed: &[u8], n: usize, rng: &mut SplitMix) -> Vec<Vec<u8>> {
    let Ok(serde_json::Value::Object(config)) = serde_json::from_slice::<serde_json::Value>(seed) else {
        return Vec::new();
    };
    let keys: Vec<String> = config.keys().cloned().collect();
    let values = awkward_json();
    (0..n)
        .map(|_| {
            let mut c = config.clone();
            c.insert(keys[rng.below(keys.len())].clone(), values[rng.below(values.len())].clone());
            serde_json::Value::Object(c).to_string().into_bytes()
        })
        .collect()
}

#[test]
fn model_targets_survive_their_corpus_and_mutations() {
    let mut rng = SplitMix::new(0x006d_6f64_656c_7161);
    let mut runs = 0usize;
    let started = std::time::Instant::now();
    for (target, per_seed) in [("gguf", 60), ("safetensors", 150), ("apr", 150), ("model-config", 40)] {
        let t = super::target(target).expect("the target exists");
        let dir = seeds::corpus_dir().join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        for file in files {
            let seed = std::fs::read(&file).unwrap();
            let mut inputs = vec![seed.clone()];
            let mutated = byte_mutations(&seed, per_seed, &mut rng);
            if target == "apr" {
                // Most mutations with their checksums made good: the reader behind them is
                // what is fuzzed; the rest show the checksums refuse.
                inputs.extend(
                    mutated
                        .into_iter()
                        .enumerate()
                        .map(|(i, m)| if i % 4 == 0 { m } else { crate::format::apr::reseal(m) }),
                );
            } else {
                inputs.extend(mutated);
            }
            if target == "model-config" {
                inputs.extend(json_mutations(&seed, per_seed, &mut rng));
            }
            for (i, input) in inputs.iter().enumerate() {
                if catch_unwind(AssertUnwindSafe(|| (t.run)(input))).is_err() {
                    let keep = std::env::temp_dir().join(format!("modelqa-fuzz-{target}-{i}.bin"));
                    let _ = std::fs::write(&keep, input);
                    panic!(
                        "{target}: input {i} from {} panicked (kept as {})",
                        file.display(),
                        keep.display()
                    );
                }
                runs += 1;
            }
        }
    }
    eprintln!("{runs} inputs through the model targets in {:.1} s", started.elapsed().as_secs_f64());
    assert!(runs >= 2000, "{runs} inputs");
}

#[test]
fn the_committed_seeds_are_the_ones_the_code_writes() {
    for (target, name, bytes) in seeds::all() {
        let path = seeds::corpus_dir().join(target).join(&name);
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is stale: run `cargo test -p modelqa-harness --lib write_corpus -- --ignored`",
            path.display()
        );
    }
}
