//! `diff::trace` and `gate::trace` through the library: the tracer's logits are the engine's,
//! clean conversions pass every site's bound again and again, and planted defects (swapped
//! layers, a transposed `o_proj`, a weight scaled by 1.05, a wrong `rms_norm_eps`, a wrong rope
//! θ) fail naming the layer or the quantity, on qa-tiny and on models of the architecture zoo;
//! each part of the numerics gate fails on a defect planted for it.

use std::path::{Path, PathBuf};

use modelqa::support::checks::Verdict;
use modelqa::support::checks::trace::{TraceBound, diff_trace, gate_trace, traced_logits};
use modelqa::support::engine::{Session, load_candle};
use modelqa::support::format::{apr, convert};
use modelqa::support::matrix::{Backend, Format, Quantization};
use modelqa::vocab::Outcome;

use super::{PROMPTS, model_dir};

fn zoo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/zoo").join(name)
}

/// Each prompt as the model at `path` tokenizes it.
fn ids(path: &Path) -> Vec<Vec<u32>> {
    let s = load_candle(path, Backend::Cpu).expect("loads");
    PROMPTS.iter().map(|p| s.encode(p).expect("encodes")).collect()
}

const Q8: Format = Format::Gguf(Quantization::Q8_0);
const Q4: Format = Format::Gguf(Quantization::Q4KM);

/// `diff::trace` of `candidate` against the ground truth `truth`, at `format`'s default bound.
fn diff(truth: &Path, candidate: &Path, format: Format) -> Verdict {
    diff_trace(truth, &ids(truth), candidate, &ids(candidate), TraceBound::for_format(format), format).0
}

/// `gate::trace` of a derived `cell` whose ground truth is `truth`.
fn gate(truth: &Path, cell: &Path) -> Verdict {
    let truth_ids = ids(truth);
    gate_trace(cell, &ids(cell), Some((truth, truth_ids.as_slice()))).0
}

#[test]
fn the_tracer_computes_the_engines_logits_in_every_format() {
    let cache = tempfile::tempdir().unwrap();
    let models = [
        model_dir("llama"),
        model_dir("qwen2"),
        model_dir("mistral"),
        zoo("llama"),
        zoo("qwen2"),
        zoo("mistral"),
        zoo("qwen3"),
    ];
    for src in models {
        let qwen3 = src.ends_with("qwen3");
        let mut cells = vec![src.clone(), convert::artifact(&src, Format::Apr, cache.path()).unwrap()];
        // The engine multiplies quantized GGUF blocks with quantized activations, which the
        // dense tracer does not copy; an F16 file runs dense in both and keeps the GGUF path (its
        // KV keys, q/k un-permuted for the tracer's rope, interleaved in the engine's).
        if !qwen3 {
            cells.push(convert::artifact(&src, Format::Gguf(Quantization::F16), cache.path()).unwrap());
        }
        for cell in cells {
            let mut engine = load_candle(&cell, Backend::Cpu).expect("loads");
            for prompt in PROMPTS {
                let want = engine.prompt_logits(prompt, 16).expect("engine logits");
                let ids = engine.encode(prompt).expect("encodes");
                let got = traced_logits(&cell, &ids).expect("traced");
                let worst = want
                    .iter()
                    .zip(&got)
                    .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
                    .fold(0f32, f32::max);
                assert!(got.len() >= want.len(), "{}: {} traced positions", cell.display(), got.len());
                assert!(
                    worst <= 1e-3,
                    "{} {prompt:?}: the tracer's logits differ from the engine's by {worst}",
                    cell.display()
                );
            }
        }
    }
}

#[test]
fn clean_conversions_pass_diff_trace_and_gate_trace_in_20_reruns() {
    let cache = tempfile::tempdir().unwrap();
    for src in [model_dir("llama"), model_dir("qwen2"), zoo("llama"), zoo("mistral")] {
        for format in [Format::Apr, Q8, Q4] {
            let art = convert::artifact(&src, format, cache.path()).unwrap();
            let runs = if src == model_dir("llama") { 20 } else { 2 };
            for _ in 0..runs {
                let v = diff(&src, &art, format);
                assert_eq!(v.outcome, Outcome::Corroborated, "{} {format}: {}", src.display(), v.reason);
                let g = gate(&src, &art);
                assert_eq!(g.outcome, Outcome::Corroborated, "{} {format}: {}", src.display(), g.reason);
            }
        }
        let g = gate_trace(&src, &ids(&src), None).0;
        assert_eq!(g.outcome, Outcome::Corroborated, "{}: {}", src.display(), g.reason);
    }
    // Zoo qwen3 has no GGUF architecture here; its APR cell is traced.
    let art = convert::artifact(&zoo("qwen3"), Format::Apr, cache.path()).unwrap();
    assert_eq!(diff(&zoo("qwen3"), &art, Format::Apr).outcome, Outcome::Corroborated);
}

/// An APR conversion of `src` with `edit` applied, written under `dir`.
fn planted_apr(src: &Path, dir: &Path, name: &str, edit: impl FnOnce(&mut apr::AprFile)) -> PathBuf {
    let mut file = convert::safetensors_to_apr(src).expect("converts");
    edit(&mut file);
    let path = dir.join(format!("{name}.apr"));
    std::fs::write(&path, apr::write(&file).expect("writes")).expect("write");
    path
}

fn values(f: &apr::AprFile, name: &str) -> Vec<f32> {
    apr::dequantize(f.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}"))).unwrap()
}

fn set(f: &mut apr::AprFile, name: &str, values: &[f32]) {
    let t = f.tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(t.dtype, apr::AprDType::F32);
    t.data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
}

fn scale(f: &mut apr::AprFile, name: &str, by: f32) {
    let v: Vec<f32> = values(f, name).iter().map(|x| x * by).collect();
    set(f, name, &v);
}

/// Swaps every tensor of layers 0 and 1.
fn swap_layers(f: &mut apr::AprFile) {
    for t in &mut f.tensors {
        if let Some(rest) = t.name.strip_prefix("model.layers.0.") {
            t.name = format!("model.layers.1.{rest}");
        } else if let Some(rest) = t.name.strip_prefix("model.layers.1.") {
            t.name = format!("model.layers.0.{rest}");
        }
    }
    f.tensors.sort_by(|a, b| a.name.cmp(&b.name));
}

fn transpose(f: &mut apr::AprFile, name: &str) {
    let shape = f.tensors.iter().find(|t| t.name == name).unwrap().shape.clone();
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    assert_eq!(rows, cols, "a square matrix transposes without a shape error");
    let v = values(f, name);
    let t: Vec<f32> = (0..rows * cols).map(|i| v[(i % cols) * cols + i / cols]).collect();
    set(f, name, &t);
}

/// The number `key` set to `value` in APR's typed metadata and in the config it embeds.
fn state(f: &mut apr::AprFile, key: &str, value: f64) {
    f.metadata.insert(key.into(), serde_json::json!(value));
    let config = f.metadata.get_mut(convert::HF_CONFIG).expect("the embedded config");
    if key == "rope_theta" && config.get("rope_parameters").is_some() {
        config["rope_parameters"]["rope_theta"] = serde_json::json!(value);
    } else {
        config[key] = serde_json::json!(value);
    }
}

fn fails_with(v: &Verdict, what: &str, needles: &[&str]) {
    assert_eq!(v.outcome, Outcome::Falsified, "{what}: {}", v.reason);
    for n in needles {
        assert!(v.reason.contains(n), "{what}: `{n}` not in: {}", v.reason);
    }
    eprintln!("{what}: {}", v.reason);
}

#[test]
fn planted_defects_fail_diff_trace_naming_the_layer_or_the_quantity() {
    let dir = tempfile::tempdir().unwrap();
    for src in [model_dir("llama"), zoo("llama"), zoo("qwen3")] {
        let m = src.file_name().unwrap().to_string_lossy().to_string();
        let clean = planted_apr(&src, dir.path(), &format!("{m}-clean"), |_| {});
        assert_eq!(diff(&src, &clean, Format::Apr).outcome, Outcome::Corroborated);
        let swapped = planted_apr(&src, dir.path(), &format!("{m}-swapped"), swap_layers);
        fails_with(
            &diff(&src, &swapped, Format::Apr),
            &format!("{m} swapped layers"),
            &["layer 0 attention output: cosine"],
        );
        let transposed = planted_apr(&src, dir.path(), &format!("{m}-transposed"), |f| {
            transpose(f, "model.layers.0.self_attn.o_proj.weight")
        });
        fails_with(
            &diff(&src, &transposed, Format::Apr),
            &format!("{m} transposed o_proj"),
            &["layer 0 attention output: cosine"],
        );
        let scaled = planted_apr(&src, dir.path(), &format!("{m}-scaled"), |f| {
            scale(f, "model.layers.1.mlp.down_proj.weight", 1.05)
        });
        fails_with(
            &diff(&src, &scaled, Format::Apr),
            &format!("{m} scaled down_proj"),
            &["layer 1 MLP output: norm 1.05"],
        );
        let eps = planted_apr(&src, dir.path(), &format!("{m}-eps"), |f| state(f, "rms_norm_eps", 0.1));
        fails_with(
            &diff(&src, &eps, Format::Apr),
            &format!("{m} rms_norm_eps"),
            &["layer 0 attention output", "rms_norm_eps 0.1"],
        );
        fails_with(
            &gate(&src, &eps),
            &format!("{m} rms_norm_eps, numerics"),
            &["norm: layer 0 input norm output before its gain: rms"],
        );
        // Only the config the APR file embeds (which the engine runs) lies; its typed key is right.
        let embedded = planted_apr(&src, dir.path(), &format!("{m}-embedded-eps"), |f| {
            f.metadata.get_mut(convert::HF_CONFIG).expect("the embedded config")["rms_norm_eps"] =
                serde_json::json!(0.1);
        });
        fails_with(
            &diff(&src, &embedded, Format::Apr),
            &format!("{m} rms_norm_eps in the embedded config only"),
            &["this file disagrees with itself", "rms_norm_eps", "(embedded config.json 0.1)"],
        );
        let rope = planted_apr(&src, dir.path(), &format!("{m}-rope"), |f| state(f, "rope_theta", 100.0));
        fails_with(
            &diff(&src, &rope, Format::Apr),
            &format!("{m} rope θ"),
            &["layer 0 attention output", "rope θ 100"],
        );
    }
}

/// A copy of the model at `src` under `dir/name` with `key` of its config.json set to `value`.
fn planted_config(src: &Path, dir: &Path, name: &str, key: &str, value: f64) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let path = to.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if key == "rope_theta" && c.get("rope_parameters").is_some() {
        c["rope_parameters"]["rope_theta"] = serde_json::json!(value);
    } else {
        c[key] = serde_json::json!(value);
    }
    std::fs::write(&path, c.to_string()).unwrap();
    to
}

/// The GGUF path: the file's KV keys state the wrong number (written by the project's GGUF
/// writer from a config that states it), and the trace reads them as llama.cpp would.
#[test]
fn a_gguf_stating_a_wrong_rope_theta_or_rms_norm_eps_fails_diff_trace_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for src in [model_dir("qwen2"), zoo("mistral")] {
        let m = src.file_name().unwrap().to_string_lossy().to_string();
        let rope = planted_config(&src, dir.path(), &format!("{m}-rope"), "rope_theta", 100.0);
        let gguf = convert::artifact(&rope, Q8, &cache).unwrap();
        fails_with(
            &diff(&src, &gguf, Q8),
            &format!("{m} gguf rope θ"),
            &["layer 0 attention output", "rope θ 100"],
        );
        let eps = planted_config(&src, dir.path(), &format!("{m}-eps"), "rms_norm_eps", 0.1);
        let gguf = convert::artifact(&eps, Q8, &cache).unwrap();
        fails_with(&diff(&src, &gguf, Q8), &format!("{m} gguf rms_norm_eps"), &["rms_norm_eps 0.1"]);
        fails_with(
            &gate(&src, &gguf),
            &format!("{m} gguf rms_norm_eps, numerics"),
            &["norm: layer 0 input norm"],
        );
    }
}

#[test]
fn each_part_of_the_numerics_gate_fails_on_its_planted_defect() {
    let dir = tempfile::tempdir().unwrap();
    for src in [model_dir("llama"), zoo("qwen2")] {
        let m = src.file_name().unwrap().to_string_lossy().to_string();
        let nan = planted_apr(&src, dir.path(), &format!("{m}-nan"), |f| {
            let mut v = values(f, "model.layers.1.mlp.up_proj.weight");
            v[7] = f32::NAN;
            set(f, "model.layers.1.mlp.up_proj.weight", &v);
        });
        fails_with(&gate(&src, &nan), &format!("{m} NaN"), &["non-finite: layer 1 MLP output"]);
        let inf = planted_apr(&src, dir.path(), &format!("{m}-inf"), |f| {
            let mut v = values(f, "model.layers.0.self_attn.q_proj.weight");
            v[0] = f32::INFINITY;
            set(f, "model.layers.0.self_attn.q_proj.weight", &v);
        });
        fails_with(&gate(&src, &inf), &format!("{m} Inf in q_proj"), &["softmax: layer 0 attention"]);
        let collapsed = planted_apr(&src, dir.path(), &format!("{m}-collapsed"), |f| {
            scale(f, "model.layers.0.self_attn.q_proj.weight", 100.0)
        });
        fails_with(
            &gate(&src, &collapsed),
            &format!("{m} q_proj ×100"),
            &["entropy: layer 0 attention entropy"],
        );
        let eps = planted_apr(&src, dir.path(), &format!("{m}-eps"), |f| state(f, "rms_norm_eps", 1.0));
        fails_with(&gate(&src, &eps), &format!("{m} rms_norm_eps 1"), &["norm: layer 0 input norm"]);
        let blown = planted_apr(&src, dir.path(), &format!("{m}-blown"), |f| {
            scale(f, "model.layers.1.mlp.down_proj.weight", 10.0)
        });
        fails_with(&gate(&src, &blown), &format!("{m} down_proj ×10"), &["range: layer 1 MLP output"]);
    }
}

/// A llama of 2.1B parameters as its safetensors header states them: the data a sparse file
/// of zeros, taking no disk.
fn sparse_big_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(zoo("llama").join(f), dir.join(f)).unwrap();
    }
    let bytes: u64 = 2_100_000 * 1_000 * 2;
    let header = format!(
        "{{\"model.embed_tokens.weight\":{{\"dtype\":\"BF16\",\"shape\":[2100000,1000],\"data_offsets\":[0,{bytes}]}}}}"
    );
    let mut head = (header.len() as u64).to_le_bytes().to_vec();
    head.extend(header.as_bytes());
    let path = dir.join("model.safetensors");
    std::fs::write(&path, &head).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(head.len() as u64 + bytes).unwrap();
}

/// A family whose architecture the tracer does not run, or a model too large to hold as dense
/// f32, has its trace trials ignored with the reason, never failed; the zoo's llama beside them
/// is traced and passes.
#[test]
fn an_architecture_the_tracer_does_not_run_or_a_model_past_its_size_is_ignored_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    sparse_big_llama(&work.path().join("big"));
    let playbook = work.path().join("zoo.yaml");
    std::fs::write(
        &playbook,
        format!(
            "playbook: 1\nfamily: zoo\ntiers:\n  t: {{formats: [safetensors], backends: [cpu], modalities: [run]}}\n\
             models:\n  - {{id: zoo/gemma, path: {}}}\n  - {{id: zoo/llama, path: {}}}\n  - {{id: zoo/big, path: {}}}\n\
             scenarios:\n  - {{name: hi, prompt: \"Hello there\", max_tokens: 4, oracles: [garbage]}}\n",
            zoo("gemma").display(),
            zoo("llama").display(),
            work.path().join("big").display()
        ),
    )
    .unwrap();
    let (records, printed) = super::run_playbook(&playbook, "::gate::trace", work.path(), "zoo", &[]);
    assert!(
        printed.contains(
            "the tracer runs the llama convention (llama, mistral, qwen2, qwen3); zoo/gemma is gemma"
        ),
        "{printed}"
    );
    assert!(
        printed.contains(
            "the tracer holds a model as dense f32, and zoo/big has 2.1B parameters (8 GB), past its 2B"
        ),
        "{printed}"
    );
    let [r] = records.as_slice() else { panic!("one trial ran: {records:?}") };
    assert_eq!(
        (r.trial.as_str(), r.outcome),
        ("zoo::t::llama::safetensors::cpu::gate::trace", Outcome::Corroborated),
        "{}",
        r.reason
    );
}
