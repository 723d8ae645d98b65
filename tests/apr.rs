//! APR v2 conformance: the original project's golden fixtures rebuilt from the format notes,
//! round trips for every dtype, and corrupt files that must give precise errors, never panics.

use modelqa::support::format::apr::{self, AprDType, AprError, AprFile, AprTensor, flags};
use proptest::prelude::*;
use serde_json::{Value, json};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn golden(all_optional_as_null: bool) -> AprFile {
    let mut metadata = serde_json::Map::new();
    for (k, v) in [
        ("model_type", json!("linear_regression")),
        ("name", json!("golden-v2")),
        ("version", json!("0.0.0-golden")),
        ("created_at", json!("1700000000")),
        ("total_size", json!(0)),
        ("param_count", json!(8)),
        ("license", Value::Null),
        ("data_source", Value::Null),
        ("data_license", Value::Null),
    ] {
        metadata.insert(k.into(), v);
    }
    if all_optional_as_null {
        for k in [
            "description",
            "author",
            "source",
            "original_format",
            "quantization",
            "sharding",
            "chat_template",
            "chat_format",
            "special_tokens",
            "architecture",
            "hf_architecture",
            "hf_model_type",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "vocab_size",
            "intermediate_size",
            "max_position_embeddings",
            "rope_theta",
            "rope_type",
            "rms_norm_eps",
            "head_dim",
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
        ] {
            metadata.insert(k.into(), Value::Null);
        }
    }
    AprFile {
        flags: flags::LAYOUT_ROW_MAJOR,
        metadata,
        tensors: vec![
            AprTensor {
                name: "weights".into(),
                dtype: AprDType::F32,
                shape: vec![8],
                data: f32_bytes(&[1.0, 2.0, 0.5, -0.5, 4.0, -2.0, 0.25, 8.0]),
            },
            AprTensor {
                name: "bias".into(),
                dtype: AprDType::F32,
                shape: vec![1],
                data: f32_bytes(&[0.125]),
            },
        ],
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[test]
fn the_516_byte_golden_file_is_rebuilt() {
    let bytes = apr::write(&golden(false)).expect("writes");
    assert_eq!(bytes.len(), 516);
    assert_eq!(&bytes[..16], &[0x41, 0x50, 0x52, 0x00, 2, 0, 0x00, 0x04, 2, 0, 0, 0, 0x40, 0, 0, 0]);
    assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().expect("4")), 189, "metadata length");
    assert_eq!(u64_at(&bytes, 24), 256, "tensor index offset");
    assert_eq!(u64_at(&bytes, 32), 384, "data offset");
    assert_eq!(u32::from_le_bytes(bytes[40..44].try_into().expect("4")), 0x3bc0_8c02, "header CRC");
    // Index: `bias` first (sorted), offset 0, size 4; then `weights`, offset 64, size 32.
    assert_eq!(&bytes[256..258], &4u16.to_le_bytes());
    assert_eq!(&bytes[258..262], b"bias");
    assert_eq!((u64_at(&bytes, 256 + 16), u64_at(&bytes, 256 + 24)), (0, 4));
    assert_eq!((u64_at(&bytes, 256 + 32 + 19), u64_at(&bytes, 256 + 32 + 27)), (64, 32));
    assert_eq!(crc32fast::hash(&bytes[..512]).to_le_bytes(), bytes[512..516]);
    let back = apr::read(&bytes).expect("reads");
    assert_eq!(back.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["bias", "weights"]);
    assert_eq!(apr::dequantize(&back.tensors[1]).expect("f32"), [1.0, 2.0, 0.5, -0.5, 4.0, -2.0, 0.25, 8.0]);
}

#[test]
fn the_1092_byte_golden_file_of_the_old_writer_is_rebuilt() {
    let bytes = apr::write(&golden(true)).expect("writes");
    assert_eq!(bytes.len(), 1092);
    assert_eq!(apr::read(&bytes).expect("reads").metadata.get("hidden_size"), Some(&Value::Null));
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

#[test]
fn every_dtype_round_trips_within_its_bound() {
    let v = values(2 * 512, 7);
    let shape = vec![2u64, 512];
    let half_bytes = |f: fn(f32) -> [u8; 2]| v.iter().flat_map(|x| f(*x)).collect::<Vec<u8>>();
    let cases: Vec<(AprDType, Vec<u8>, f32)> = vec![
        (AprDType::F32, f32_bytes(&v), 0.0),
        (AprDType::F16, half_bytes(|x| half::f16::from_f32(x).to_le_bytes()), 1e-3),
        (AprDType::Bf16, half_bytes(|x| half::bf16::from_f32(x).to_le_bytes()), 8e-3),
        (AprDType::AprQ8, apr::quantize_q8(&v), 1.0 / 127.0 / 2.0 + 1e-6),
        (AprDType::AprQ4, apr::quantize_q4(&v), 1.0 / 7.0 / 2.0 + 1e-3),
        (AprDType::Q6K, apr::quantize_k(&v, &shape, AprDType::Q6K).expect("q6k"), 0.02),
        (AprDType::Q4K, apr::quantize_k(&v, &shape, AprDType::Q4K).expect("q4k"), 0.08),
    ];
    for (dtype, data, bound) in cases {
        let file = AprFile {
            flags: flags::LAYOUT_ROW_MAJOR,
            metadata: serde_json::Map::new(),
            tensors: vec![AprTensor { name: "t".into(), dtype, shape: shape.clone(), data }],
        };
        let bytes = apr::write(&file).expect("writes");
        assert_eq!(apr::write(&file).expect("again"), bytes, "writing is deterministic");
        let back = apr::read(&bytes).expect("reads");
        assert_eq!(back, file, "{dtype:?} round trips byte for byte");
        // The index leaves each tensor where it lies: the same bytes, 64-aligned in the file.
        let index = apr::index(&bytes).expect("indexes");
        let entry = &index.entries[0];
        assert_eq!(&bytes[entry.bytes.clone()], &back.tensors[0].data[..], "{dtype:?}: the indexed bytes");
        assert_eq!(entry.bytes.start % 64, 0, "{dtype:?}: aligned");
        let got = apr::dequantize(&back.tensors[0]).expect("dequantizes");
        let in_place =
            apr::dequantize_bytes("t", dtype, &shape, &bytes[entry.bytes.clone()]).expect("in place");
        assert_eq!(got, in_place, "{dtype:?}: the same values read in place");
        let worst = got.iter().zip(&v).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= bound, "{dtype:?}: worst error {worst} over {bound}");
    }
}

#[test]
fn corrupt_files_are_precise_errors() {
    let good = apr::write(&golden(false)).expect("writes");
    let check = |bytes: Vec<u8>, want: &str| {
        let err = apr::read(&bytes).expect_err(want);
        assert!(err.to_string().contains(want), "expected `{want}` in `{err}`");
        // Reading in place refuses the file as reading does.
        assert_eq!(apr::index(&bytes).expect_err(want), err);
    };
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGUF");
    check(b, "the magic is [47 47 55 46]");
    let mut b = good.clone();
    b[3] = b'N';
    check(b, "APR v1");
    let mut b = good.clone();
    b[8] ^= 1;
    check(b, "header checksum");
    let mut b = good.clone();
    b[400] ^= 0x80;
    check(b, "file checksum");
    check(good[..300].to_vec(), "checksum");
    check(good[..40].to_vec(), "outside the 40-byte file");
    // Behind valid checksums: an index entry pointing past the end of the data.
    let mut b = good.clone();
    b[256 + 16..256 + 24].copy_from_slice(&4096u64.to_le_bytes());
    check(apr::reseal(b), "tensor `bias` [4480, 4484) lies outside");
    let mut b = good.clone();
    b[256 + 16..256 + 24].copy_from_slice(&u64::MAX.to_le_bytes());
    check(apr::reseal(b), "not 64-aligned");
    let mut b = good.clone();
    b[256 + 24..256 + 32].copy_from_slice(&8u64.to_le_bytes());
    check(apr::reseal(b), "8 bytes for F32 [1], expected Some(4)");
    let mut b = good.clone();
    b[258..262].copy_from_slice(b"zzzz");
    check(apr::reseal(b), "the index is not sorted by name");
    let mut b = good.clone();
    b[12..20].copy_from_slice(&(1u64 << 40).to_le_bytes());
    check(apr::reseal(b), "the metadata");
    let mut b = good.clone();
    b[6..8].copy_from_slice(&flags::LAYOUT_COLUMN_MAJOR.to_le_bytes());
    check(apr::reseal(b), "column-major");
    let mut b = good.clone();
    b[8..12].copy_from_slice(&1000u32.to_le_bytes());
    check(apr::reseal(b), "invalid tensor index entry 2: the name is empty: the header counts 1000 tensors");
    let mut b = good;
    b[64] = b'[';
    check(apr::reseal(b), "invalid metadata");

    let dup = AprFile {
        flags: 0,
        metadata: serde_json::Map::new(),
        tensors: vec![
            AprTensor { name: "a".into(), dtype: AprDType::F32, shape: vec![1], data: f32_bytes(&[1.0]) },
            AprTensor { name: "a".into(), dtype: AprDType::F32, shape: vec![1], data: f32_bytes(&[2.0]) },
        ],
    };
    assert!(matches!(apr::write(&dup), Err(AprError::Tensor { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any damage — a flipped byte, a truncation — with or without valid checksums, is an error
    /// or a file that reads, never a panic.
    #[test]
    fn damaged_files_never_panic(at in 0usize..516, xor in 1u8..=255, cut in 0usize..=516, sealed in any::<bool>()) {
        let mut b = apr::write(&golden(false)).expect("writes");
        b[at] ^= xor;
        b.truncate(cut.max(68));
        let b = if sealed { apr::reseal(b) } else { b };
        let _ = apr::read(&b);
    }
}
