//! What `bench engine` found: one row per engine and file, the medians and ratios read from
//! them, and the Markdown table and JSON they are written as. Nothing here runs or measures.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The engines the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Modelqa,
    LlamaCpp,
    Transformers,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Modelqa => "modelqa",
            Engine::LlamaCpp => "llama.cpp",
            Engine::Transformers => "transformers",
        }
    }
}

/// Who made a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// The random-model generator (the safetensors source and its bf16 copy).
    Generator,
    /// This project's converter (`format::convert::artifact`).
    Modelqa,
    /// llama.cpp's `convert_hf_to_gguf.py`, and its quantizer for Q4_K_M.
    LlamaCpp,
}

impl Maker {
    pub fn name(self) -> &'static str {
        match self {
            Maker::Generator => "generator",
            Maker::Modelqa => "modelqa",
            Maker::LlamaCpp => "llama.cpp",
        }
    }
}

/// The llama.cpp format a row is compared with: the same one for a GGUF, the nearest for the
/// others (f32 safetensors and APR against F32, bf16 safetensors against F16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    F32,
    F16,
    Q8_0,
    Q4KM,
}

/// One file the engines run.
#[derive(Debug, Clone)]
pub struct BenchFile {
    pub maker: Maker,
    /// As the table shows it: `safetensors f32`, `GGUF Q8_0`, `APR f32`.
    pub format: String,
    pub peer: Peer,
    pub path: PathBuf,
    /// On disk (a directory: its safetensors files).
    pub size: u64,
    /// Weight bytes one decode step reads: every matrix once, the output head included, and of
    /// the embedding table only a row, unless it is the (tied) head.
    pub read_per_token: u64,
}

/// What one engine measured on one file, pooled over the rounds. Times are seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurement {
    pub version: String,
    pub load_s: Vec<f64>,
    pub prefill_s: Vec<f64>,
    pub decode_s: Vec<f64>,
    /// The greedy ids of the last repetition: the prefill's, then one per decode step.
    pub greedy: Vec<u32>,
    /// The five likeliest ids after the prefill, best first, with their logits (empty where the
    /// child did not say): what tells a near tie from a wrong first token.
    pub first_top: Vec<(u32, f32)>,
    pub peak_rss: Option<u64>,
    /// The read bandwidth probed right before each of this row's runs (bytes per second; set by
    /// `bench engine`, not the child): the row's decode ceiling is taken from their median.
    pub bandwidth: Vec<f64>,
}

impl Measurement {
    /// The JSON line a measuring child prints (`peers.py measure`, `bench engine-child`).
    pub fn from_json(line: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let times = |key: &str| -> anyhow::Result<Vec<f64>> {
            v[key]
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("no `{key}` list"))?
                .iter()
                .map(|t| t.as_f64().ok_or_else(|| anyhow::anyhow!("`{key}` holds {t}, not a number")))
                .collect()
        };
        let greedy = v["greedy"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("no `greedy` list"))?
            .iter()
            .map(|t| {
                t.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| anyhow::anyhow!("bad id {t}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let first_top = match v["first_top"].as_array() {
            None => Vec::new(),
            Some(pairs) => pairs
                .iter()
                .map(|p| {
                    let id = p[0].as_u64().and_then(|t| u32::try_from(t).ok());
                    id.zip(p[1].as_f64())
                        .map(|(id, logit)| (id, logit as f32))
                        .ok_or_else(|| anyhow::anyhow!("`first_top` holds {p}, not an [id, logit] pair"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Measurement {
            version: v["version"].as_str().unwrap_or_default().to_string(),
            load_s: vec![v["load_s"].as_f64().ok_or_else(|| anyhow::anyhow!("no `load_s`"))?],
            prefill_s: times("prefill_s")?,
            decode_s: times("decode_s")?,
            greedy,
            first_top,
            peak_rss: v["peak_rss_bytes"].as_u64(),
            bandwidth: Vec::new(),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version,
            "load_s": self.load_s.last(),
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "greedy": self.greedy,
            "first_top": self.first_top,
            "peak_rss_bytes": self.peak_rss,
        })
    }

    /// Another round of the same engine on the same file.
    pub fn absorb(&mut self, round: Measurement) {
        self.version = round.version;
        self.load_s.extend(round.load_s);
        self.prefill_s.extend(round.prefill_s);
        self.decode_s.extend(round.decode_s);
        self.greedy = round.greedy;
        if !round.first_top.is_empty() {
            self.first_top = round.first_top;
        }
        self.bandwidth.extend(round.bandwidth);
        self.peak_rss = self.peak_rss.max(round.peak_rss);
    }
}

/// One engine on one file: its measurement, or why there is none.
#[derive(Debug, Clone)]
pub struct Row {
    pub engine: Engine,
    /// Index into [`Report::files`].
    pub file: usize,
    pub outcome: Result<Measurement, String>,
}

/// Everything the table shows.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `key: value` lines above the table (CPU, threads, load average, date, commands, …).
    pub header: Vec<(String, String)>,
    /// Files the benchmark could not make, and why: printed under the table.
    pub notes: Vec<String>,
    pub files: Vec<BenchFile>,
    pub rows: Vec<Row>,
    /// Tokens in the prompt and decoded per repetition.
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    /// The read bandwidth, bytes per second: the median of every probe of the run (a row
    /// without probes of its own, a failed one, is held to it).
    pub bandwidth: f64,
}

/// The median, `None` for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// How many leading ids two greedy sequences share.
pub fn agreement(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The `match` cell: how many leading greedy ids `m` shares with the reference's, and, where
/// even the first differs but the reference's first id is among `m`'s five likeliest after the
/// prefill, its rank there and how far below `m`'s first it lies (a near tie that a quantized
/// format or another summation order can flip, told apart from a wrong answer).
pub fn matched(m: &Measurement, reference: &[u32]) -> String {
    let n = agreement(&m.greedy, reference);
    let (Some(&want), Some(&(_, best))) = (reference.first(), m.first_top.first()) else {
        return n.to_string();
    };
    match m.first_top.iter().position(|&(id, _)| id == want) {
        Some(rank) if n == 0 && rank > 0 => {
            format!("0 (its #{}, {:.3} below)", rank + 1, best - m.first_top[rank].1)
        }
        _ => n.to_string(),
    }
}

/// Tokens per second of `tokens` in the median of `times`.
fn rate(tokens: usize, times: &[f64]) -> Option<f64> {
    median(times).filter(|t| *t > 0.0).map(|t| tokens as f64 / t)
}

/// A row's figures, read from its measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub load: Option<f64>,
    pub prefill: Option<f64>,
    pub decode: Option<f64>,
}

impl Report {
    pub fn figures(&self, m: &Measurement) -> Figures {
        Figures {
            load: median(&m.load_s),
            prefill: rate(self.prompt_tokens, &m.prefill_s),
            decode: rate(self.decode_tokens, &m.decode_s),
        }
    }

    /// llama.cpp on llama.cpp's own file of `peer`'s format, else (its converter could not run)
    /// on this project's file of that format: what every row of that format is compared with.
    fn reference(&self, peer: Peer) -> Option<Figures> {
        let on = |maker: Maker| {
            self.rows.iter().find_map(|r| {
                let f = &self.files[r.file];
                let m = r.outcome.as_ref().ok()?;
                (r.engine == Engine::LlamaCpp && f.maker == maker && f.peer == peer).then(|| self.figures(m))
            })
        };
        on(Maker::LlamaCpp).or_else(|| on(Maker::Modelqa))
    }

    /// The greedy ids every row is held to, and what they are: transformers on the f32
    /// safetensors, else (peers skipped or failed) modelqa on them.
    fn greedy_reference(&self) -> Option<(&'static str, &[u32])> {
        for engine in [Engine::Transformers, Engine::Modelqa] {
            let found = self.rows.iter().find_map(|r| {
                let f = &self.files[r.file];
                let m = r.outcome.as_ref().ok()?;
                (r.engine == engine && f.maker == Maker::Generator && f.peer == Peer::F32)
                    .then_some(m.greedy.as_slice())
            });
            if let Some(ids) = found {
                return Some((
                    if engine == Engine::Transformers { "transformers f32" } else { "modelqa f32" },
                    ids,
                ));
            }
        }
        None
    }

    /// The decode ceiling a file's weight bytes allow, tokens/s: at the bandwidth probed before
    /// the row's own runs where it has probes, else at the run's.
    pub fn bound(&self, file: &BenchFile, m: Option<&Measurement>) -> Option<f64> {
        let bandwidth = m.and_then(|m| median(&m.bandwidth)).unwrap_or(self.bandwidth);
        (file.read_per_token > 0 && bandwidth > 0.0).then(|| bandwidth / file.read_per_token as f64)
    }

    /// The Markdown: header lines, the table, then the notes.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.header {
            let _ = writeln!(out, "- {key}: {value}");
        }
        let reference = self.greedy_reference();
        let _ = writeln!(
            out,
            "- columns: medians; `vs llama.cpp` = prefill / decode ÷ llama.cpp's on its own file of the same format, \
             or on modelqa's where llama.cpp's was not made (f32 safetensors and APR: F32; bf16: F16); `bound` = the read bandwidth probed right before the row's runs (the run's median: {:.1} GB/s) ÷ weight bytes per decoded token; \
             `match` = leading greedy ids equal to {}'s, of {} (where even the first differs: that first id's rank among this engine's five likeliest after the prefill, and its logit's distance below the top one)",
            self.bandwidth / 1e9,
            reference.map_or("(no reference)", |(name, _)| name),
            self.decode_tokens + 1,
        );
        out.push('\n');
        out.push_str(
            "| engine | file by | format | load s | prefill tok/s | decode tok/s | peak RSS GB | file | vs llama.cpp pp / tg | bound tok/s | decode % of bound | match |\n",
        );
        out.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for row in &self.rows {
            let file = &self.files[row.file];
            let bound = self.bound(file, row.outcome.as_ref().ok());
            let size = format!("{:.0} MB", file.size as f64 / 1e6);
            let lead = format!("| {} | {} | {} |", row.engine.name(), file.maker.name(), file.format);
            let m = match &row.outcome {
                Ok(m) => m,
                Err(why) => {
                    let why = why.replace('|', "\\|");
                    let _ = writeln!(out, "{lead} failed: {why} | | | | {size} | | {} | | |", num(bound, 1));
                    continue;
                }
            };
            let f = self.figures(m);
            let vs = self.reference(file.peer).map_or_else(
                || "–".to_string(),
                |r| format!("{} / {}", ratio(f.prefill, r.prefill), ratio(f.decode, r.decode)),
            );
            let share =
                f.decode.zip(bound).map_or_else(|| "–".into(), |(d, b)| format!("{:.0} %", 100.0 * d / b));
            let matched = reference.map_or_else(|| "–".into(), |(_, ids)| matched(m, ids));
            let _ = writeln!(
                out,
                "{lead} {} | {} | {} | {} | {size} | {vs} | {} | {share} | {matched} |",
                num(f.load, 2),
                num(f.prefill, 1),
                num(f.decode, 1),
                m.peak_rss.map_or_else(|| "–".into(), |b| format!("{:.2}", b as f64 / 1e9)),
                num(bound, 1),
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let reference = self.greedy_reference();
        serde_json::json!({
            "header": self.header.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>(),
            "prompt_tokens": self.prompt_tokens,
            "decode_tokens": self.decode_tokens,
            "read_bandwidth_bytes_per_s": self.bandwidth,
            "notes": self.notes,
            "rows": self.rows.iter().map(|r| {
                let file = &self.files[r.file];
                let mut row = serde_json::json!({
                    "engine": r.engine.name(),
                    "file_by": file.maker.name(),
                    "format": file.format,
                    "path": file.path,
                    "file_bytes": file.size,
                    "read_bytes_per_token": file.read_per_token,
                    "bound_tokens_per_s": self.bound(file, r.outcome.as_ref().ok()),
                });
                match &r.outcome {
                    Ok(m) => {
                        let f = self.figures(m);
                        row["load_s"] = f.load.into();
                        row["prefill_tokens_per_s"] = f.prefill.into();
                        row["decode_tokens_per_s"] = f.decode.into();
                        row["match"] = reference.map(|(_, ids)| agreement(&m.greedy, ids)).into();
                        row["read_bandwidth_bytes_per_s"] = median(&m.bandwidth).into();
                        row["raw"] = m.to_json();
                    }
                    Err(why) => row["error"] = why.clone().into(),
                }
                row
            }).collect::<Vec<_>>(),
        })
    }
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    a.zip(b).filter(|(_, b)| *b > 0.0).map_or_else(|| "–".into(), |(a, b)| format!("{:.2}", a / b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty_lists() {
        for (values, expected) in [
            (&[3.0, 1.0, 2.0][..], Some(2.0)),
            (&[4.0, 1.0, 3.0, 2.0][..], Some(2.5)),
            (&[5.0][..], Some(5.0)),
            (&[][..], None),
            (&[f64::NAN, 1.0, 3.0][..], Some(2.0)),
        ] {
            assert_eq!(median(values), expected, "{values:?}");
        }
    }

    #[test]
    fn agreement_counts_the_shared_prefix() {
        assert_eq!(agreement(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(agreement(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(agreement(&[9], &[1]), 0);
    }

    fn file(maker: Maker, format: &str, peer: Peer) -> BenchFile {
        BenchFile {
            maker,
            format: format.into(),
            peer,
            path: PathBuf::from(format),
            size: 1_000_000_000,
            read_per_token: 1_000_000_000,
        }
    }

    fn measured(prefill: f64, decode: f64, greedy: &[u32]) -> Result<Measurement, String> {
        Ok(Measurement {
            version: "v".into(),
            load_s: vec![1.0, 3.0],
            prefill_s: vec![prefill, prefill * 2.0, prefill / 2.0],
            decode_s: vec![decode; 3],
            greedy: greedy.to_vec(),
            first_top: Vec::new(),
            peak_rss: Some(2_500_000_000),
            bandwidth: Vec::new(),
        })
    }

    /// Where even the first greedy id differs, the cell says where the reference's first id
    /// ranks among the engine's five likeliest and how far below the top it lies; a first id
    /// outside them, or a later divergence, is the plain count.
    #[test]
    fn a_first_token_that_differs_is_shown_with_the_references_rank_and_gap() {
        let with_top = |greedy: &[u32], top: &[(u32, f32)]| Measurement {
            first_top: top.to_vec(),
            ..measured(1.0, 1.0, greedy).unwrap()
        };
        let reference = [137910, 137910, 137910];
        let near = with_top(&[79109, 79109, 79109], &[(79109, 4.75), (1561, 4.74), (137910, 4.7)]);
        assert_eq!(matched(&near, &reference), "0 (its #3, 0.050 below)");
        let wrong = with_top(&[5, 5, 5], &[(5, 9.0), (6, 1.0)]);
        assert_eq!(matched(&wrong, &reference), "0");
        let later = with_top(&[137910, 137910, 4], &[(137910, 5.0), (4, 4.0)]);
        assert_eq!(matched(&later, &reference), "2");
        let unsaid = measured(1.0, 1.0, &[4, 4, 4]).unwrap();
        assert_eq!(matched(&unsaid, &reference), "0");

        let line = r#"{"version": "x", "load_s": 1.5, "prefill_s": [0.1], "decode_s": [1.0], "greedy": [3], "first_top": [[3, 2.5], [9, 2.25]]}"#;
        assert_eq!(Measurement::from_json(line).unwrap().first_top, vec![(3, 2.5), (9, 2.25)]);
        let bad = line.replace("[9, 2.25]", r#"[9, "high"]"#);
        let e = Measurement::from_json(&bad).unwrap_err().to_string();
        assert!(e.contains("not an [id, logit] pair"), "{e}");
    }

    /// The ratios, the bound and the agreement of a small report, cell by cell.
    #[test]
    fn the_table_reads_ratios_bounds_and_agreement_from_the_rows() {
        let report = Report {
            header: vec![("threads".into(), "2".into())],
            notes: vec!["Q4_K_M by llama.cpp: not made".into()],
            files: vec![
                file(Maker::Generator, "safetensors f32", Peer::F32),
                file(Maker::LlamaCpp, "GGUF F32", Peer::F32),
                file(Maker::Modelqa, "GGUF Q8_0", Peer::Q8_0),
            ],
            rows: vec![
                Row { engine: Engine::Transformers, file: 0, outcome: measured(1.0, 8.0, &[5, 6, 7]) },
                Row { engine: Engine::Modelqa, file: 0, outcome: measured(0.5, 4.0, &[5, 6, 8]) },
                Row { engine: Engine::LlamaCpp, file: 1, outcome: measured(0.25, 2.0, &[5, 6, 7]) },
                Row { engine: Engine::Modelqa, file: 2, outcome: Err("refused | badly".into()) },
            ],
            prompt_tokens: 64,
            decode_tokens: 64,
            bandwidth: 40e9,
        };
        let table = report.markdown();
        let lines: Vec<&str> = table.lines().collect();
        let row = |engine: &str, by: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("| {engine} | {by} |")))
                .unwrap_or_else(|| panic!("no {engine}/{by} row in\n{table}"))
                .to_string()
        };
        // 64 tokens in a median 0.5 s prefill and 4 s decode; llama.cpp: 0.25 s and 2 s.
        assert_eq!(
            row("modelqa", "generator"),
            "| modelqa | generator | safetensors f32 | 2.00 | 128.0 | 16.0 | 2.50 | 1000 MB | 0.50 / 0.50 | 40.0 | 40 % | 2 |"
        );
        assert_eq!(
            row("transformers", "generator"),
            "| transformers | generator | safetensors f32 | 2.00 | 64.0 | 8.0 | 2.50 | 1000 MB | 0.25 / 0.25 | 40.0 | 20 % | 3 |"
        );
        assert!(row("llama.cpp", "llama.cpp").contains("| 1.00 / 1.00 | 40.0 | 80 % | 3 |"));
        // A row probed at 20 and 30 GB/s right before its runs is held to their median, 25 GB/s.
        let mut probed = report.clone();
        if let Ok(m) = &mut probed.rows[2].outcome {
            m.bandwidth = vec![20e9, 30e9];
        }
        let table = probed.markdown();
        assert!(table.contains("| 1.00 / 1.00 | 25.0 | 128 % | 3 |"), "{table}");
        assert_eq!(probed.to_json()["rows"][2]["read_bandwidth_bytes_per_s"], 25e9);
        assert!(row("modelqa", "modelqa").contains("failed: refused \\| badly"));
        assert!(table.starts_with("- threads: 2\n"));
        assert!(table.contains("equal to transformers f32's, of 65"));
        assert!(table.trim_end().ends_with("- Q4_K_M by llama.cpp: not made"));
        let json = report.to_json();
        assert_eq!(json["rows"][1]["decode_tokens_per_s"], 16.0);
        assert_eq!(json["rows"][1]["match"], 2);
        assert_eq!(json["rows"][3]["error"], "refused | badly");
    }

    /// Without llama.cpp's own file of a format, rows are held to llama.cpp on modelqa's file;
    /// with it, to llama.cpp on its own.
    #[test]
    fn without_llama_cpps_own_file_the_ratio_is_to_llama_cpp_on_modelqas() {
        let mut report = Report {
            header: vec![],
            notes: vec![],
            files: vec![
                file(Maker::Modelqa, "GGUF Q8_0", Peer::Q8_0),
                file(Maker::LlamaCpp, "GGUF Q8_0", Peer::Q8_0),
            ],
            rows: vec![
                Row { engine: Engine::Modelqa, file: 0, outcome: measured(0.5, 4.0, &[1]) },
                Row { engine: Engine::LlamaCpp, file: 0, outcome: measured(0.25, 1.0, &[1]) },
            ],
            prompt_tokens: 64,
            decode_tokens: 64,
            bandwidth: 40e9,
        };
        assert!(report.markdown().contains(
            "| modelqa | modelqa | GGUF Q8_0 | 2.00 | 128.0 | 16.0 | 2.50 | 1000 MB | 0.50 / 0.25 |"
        ));
        report.rows.push(Row { engine: Engine::LlamaCpp, file: 1, outcome: measured(1.0, 2.0, &[1]) });
        let table = report.markdown();
        assert!(
            table.contains(
                "| modelqa | modelqa | GGUF Q8_0 | 2.00 | 128.0 | 16.0 | 2.50 | 1000 MB | 2.00 / 0.50 |"
            ),
            "{table}"
        );
    }

    #[test]
    fn a_measurement_reads_the_childs_json_line_and_pools_rounds() {
        let line = r#"{"version": "x", "load_s": 1.5, "prefill_s": [0.1, 0.2], "decode_s": [1.0, 2.0], "greedy": [3, 4], "peak_rss_bytes": 100}"#;
        let mut m = Measurement::from_json(line).unwrap();
        assert_eq!((m.load_s.clone(), m.greedy.clone(), m.peak_rss), (vec![1.5], vec![3, 4], Some(100)));
        m.absorb(Measurement { load_s: vec![2.5], peak_rss: Some(50), ..m.clone() });
        assert_eq!((m.load_s.len(), m.prefill_s.len(), m.peak_rss), (2, 4, Some(100)));
        assert!(Measurement::from_json(r#"{"load_s": 1}"#).is_err());
    }
}
