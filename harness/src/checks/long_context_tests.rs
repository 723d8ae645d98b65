//! Unit tests of `long_context.rs`: the buckets, and the trial's comparison on qa-tiny, whose
//! GGUF with a wrong rope θ fails its long bucket while its short one passes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::engine::{Session, load_candle};
use crate::matrix::{Format, Quantization};

#[test]
fn buckets_grow_fourfold_and_a_short_tail_joins_the_last() {
    let check = |length: usize, want: &[(usize, usize)]| {
        let want: Vec<Range<usize>> = want.iter().map(|&(a, b)| a..b).collect();
        assert_eq!(buckets(length), want, "length {length}");
    };
    check(1, &[(0, 1)]);
    check(16, &[(0, 16)]);
    check(17, &[(0, 17)]);
    check(40, &[(0, 16), (16, 40)]);
    check(70, &[(0, 16), (16, 70)]);
    check(128, &[(0, 16), (16, 64), (64, 128)]);
    check(2048, &[(0, 16), (16, 64), (64, 256), (256, 1024), (1024, 2048)]);
    check(4096, &[(0, 16), (16, 64), (64, 256), (256, 1024), (1024, 4096)]);
}

#[test]
fn long_buckets_score_evenly_spaced_positions_from_first_to_last() {
    assert_eq!(scored(&(16..48)), (16..48).collect::<Vec<_>>());
    assert_eq!(scored(&(16..64)).len(), SCORED_PER_BUCKET);
    let s = scored(&(1024..4096));
    assert_eq!(s.len(), SCORED_PER_BUCKET);
    assert_eq!((s[0], s[s.len() - 1]), (1024, 4095));
    assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
}

#[test]
fn the_sequence_is_the_prompts_then_the_passage_repeated_to_the_length() {
    // One token per byte: the length is reached by repeating the text.
    let encode = |t: &str| Ok::<_, EngineError>(t.bytes().map(u32::from).collect::<Vec<u32>>());
    let prompts = vec!["What is 2 + 2?\n".to_string()];
    let ids = sequence(&prompts, 2_000, encode).unwrap();
    assert_eq!(ids.len(), 2_000);
    assert!(ids.starts_with(&encode("What is 2 + 2?\n\n\nThe river").unwrap()));
    assert_eq!(ids, sequence(&prompts, 2_000, encode).unwrap(), "the same on every run");
    let nothing = |_: &str| Ok::<_, EngineError>(Vec::new());
    assert!(sequence(&prompts, 100, nothing).unwrap().is_empty());
}

fn qa_tiny(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qa-tiny").join(format!("qa-tiny-{arch}"))
}

/// The qa-tiny playbook's kind of prompts, laid out as its template does.
const PROMPTS: &[&str] = &[
    "What is 47 + 38?\n",
    "Calculate 7*8\n",
    "Repeat: red green blue\n",
    "def fibonacci(n):\n",
    "What is 12 + 9?\n",
];

fn shared(session: impl Session + 'static) -> SharedSession {
    Arc::new(Mutex::new(Box::new(session) as Box<dyn Session>))
}

/// `gguf` with the f32 value of metadata `key` set to `value`, in place.
fn with_f32(gguf: &[u8], key: &str, value: f32) -> Vec<u8> {
    let mut stored = (key.len() as u64).to_le_bytes().to_vec();
    stored.extend_from_slice(key.as_bytes());
    let at = gguf.windows(stored.len()).position(|w| w == stored.as_slice()).expect("the key is in the file");
    // The key, then the value's type (u32, 6 for f32), then the value.
    let ty = at + stored.len();
    assert_eq!(gguf[ty..ty + 4], 6u32.to_le_bytes(), "{key} is an f32");
    let mut out = gguf.to_vec();
    out[ty + 4..ty + 8].copy_from_slice(&value.to_le_bytes());
    out
}

/// The gate of `q` as qa-tiny's playbook sets it: the default, but Q4_K_M's mean KL loosened to
/// 1.5, since qa-tiny's Q4_K_M drifts past position 16 without any defect (the playbook says why).
fn gate(q: Quantization) -> LogitTolerance {
    match q {
        Quantization::Q4KM => LogitTolerance { max_mean_kl: 1.5, min_top1: 0.82 },
        _ => LogitTolerance::for_format(Format::Gguf(q)),
    }
}

/// The comparison of qa-tiny-`arch` as `q` against its safetensors, with `plant` applied to the
/// GGUF bytes first.
fn compared(arch: &str, q: Quantization, plant: impl Fn(&[u8]) -> Vec<u8>) -> Verdict {
    let dir = qa_tiny(arch);
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("model.gguf");
    std::fs::write(&path, plant(&crate::format::gguf::from_safetensors(&dir, q).unwrap())).unwrap();
    let reference = load_candle(&dir, Backend::Cpu).unwrap();
    let candidate = load_candle(&path, Backend::Cpu).unwrap();
    let length = reference.context().unwrap().min(candidate.context().unwrap());
    let prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let ids = sequence(&prompts, length, |t| reference.encode(t)).unwrap();
    let (reference, candidate) = (shared(reference), shared(candidate));
    let deadline = Instant::now() + Duration::from_secs(60);
    compare(&reference, &candidate, &ids, "qa-tiny's context", gate(q), deadline).unwrap()
}

/// The planted defect: a GGUF whose `<arch>.rope.freq_base` is a quarter off (too high or too
/// low). qa-tiny's long positions part from the ground truth while its first 16 stay within the
/// gate, which is all `diff::logits-vs-safetensors` looks at. (qa-tiny is sensitive to θ: a
/// tenfold error breaks even its first 16 positions; see below.)
#[test]
fn a_wrong_rope_theta_fails_the_long_bucket_while_the_short_one_passes() {
    for (arch, q) in [("llama", Quantization::F16), ("qwen2", Quantization::Q4KM)] {
        let key = format!("{arch}.rope.freq_base");
        let clean = compared(arch, q, <[u8]>::to_vec);
        assert_eq!(clean.outcome, Outcome::Corroborated, "{arch} {q:?}: {}", clean.reason);
        for theta in [12_500.0, 8_000.0] {
            let wrong = compared(arch, q, |g| with_f32(g, &key, theta));
            let what = format!("{arch} {q:?} θ = {theta}: {}", wrong.reason);
            assert_eq!(wrong.outcome, Outcome::Falsified, "{what}");
            assert!(bucket_line(&wrong.reason, "[0,16) 16 positions").ends_with(", pass"), "{what}");
            assert!(bucket_line(&wrong.reason, "[64,128) 32 of 64 positions").ends_with(", FAIL"), "{what}");
            assert!(wrong.reason.contains("The first failing bucket, positions ["), "{what}");
        }
    }
}

/// Why the trial exists: the same wrong θ passes the 16-position logit gate on the same prompts.
#[test]
fn the_sixteen_position_logit_gate_misses_the_wrong_theta() {
    let dir = qa_tiny("llama");
    let q = Quantization::F16;
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("model.gguf");
    let gguf = crate::format::gguf::from_safetensors(&dir, q).unwrap();
    std::fs::write(&path, with_f32(&gguf, "llama.rope.freq_base", 12_500.0)).unwrap();
    let mut reference = load_candle(&dir, Backend::Cpu).unwrap();
    let mut candidate = load_candle(&path, Backend::Cpu).unwrap();
    let want: Vec<_> = PROMPTS.iter().map(|p| reference.prompt_logits(p, 16).unwrap()).collect();
    let got: Vec<_> = PROMPTS.iter().map(|p| candidate.prompt_logits(p, 16).unwrap()).collect();
    let v = diff::logits(&want, &got, LogitTolerance::for_format(Format::Gguf(q)));
    assert_eq!(v.outcome, Outcome::Corroborated, "{}", v.reason);
}

/// A tenfold θ, as a conversion that reads the wrong key might write it: every bucket of
/// qa-tiny fails, its first 16 positions too.
#[test]
fn a_tenfold_rope_theta_fails_from_the_first_bucket() {
    let wrong = compared("llama", Quantization::F16, |g| with_f32(g, "llama.rope.freq_base", 100_000.0));
    assert_eq!(wrong.outcome, Outcome::Falsified, "{}", wrong.reason);
    assert!(wrong.reason.contains("The first failing bucket, positions [0,16)"), "{}", wrong.reason);
}

/// The line of the bucket that starts with `head`.
fn bucket_line<'a>(reason: &'a str, head: &str) -> &'a str {
    let lines = reason.split_once("by bucket: ").map_or("", |(_, rest)| rest);
    let lines = lines.split(". The first failing").next().unwrap_or(lines);
    lines.split("; ").find(|l| l.starts_with(head)).unwrap_or_else(|| panic!("no bucket {head} in {reason}"))
}

/// At the deadline the buckets judged so far decide; with none judged it is a timeout.
#[test]
fn a_comparison_past_its_deadline_is_a_timeout() {
    let dir = qa_tiny("llama");
    let reference = load_candle(&dir, Backend::Cpu).unwrap();
    let ids = sequence(&[], 128, |t| reference.encode(t)).unwrap();
    let (reference, candidate) = (shared(reference), shared(load_candle(&dir, Backend::Cpu).unwrap()));
    let v =
        compare(&reference, &candidate, &ids, "qa-tiny's context", gate(Quantization::F16), Instant::now())
            .unwrap();
    assert_eq!(v.outcome, Outcome::Timeout, "{}", v.reason);
    assert!(
        v.reason.starts_with("the long-context comparison passed its timeout before [0,16)"),
        "{}",
        v.reason
    );
}
