//! The certification registry (`certifications/models.csv`) and the README table, both derived
//! from the committed evidence and the original project's model list; nothing here reads the
//! clock, so the same evidence always gives the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

use super::evidence::ModelEvidence;
use super::mqs::{GATEWAYS, GatewayState, Score, Status};

/// The original registry's 20 columns, with `g0` added before `g1` (the original dropped G0 and
/// wrote every other gateway one column off), and `coverage` and `scope` (the backends the status
/// speaks for, `cpu` or `cpu gpu`, then `; gpu not covered` for planned backends without
/// evidence) and `flaky` (trials whose repeats disagreed) at the end.
pub const COLUMNS: [&str; 24] = [
    "model_id",
    "family",
    "parameters",
    "size_category",
    "status",
    "mqs_score",
    "grade",
    "certified_tier",
    "last_certified",
    "g0",
    "g1",
    "g2",
    "g3",
    "g4",
    "tps_gguf_cpu",
    "tps_gguf_gpu",
    "tps_apr_cpu",
    "tps_apr_gpu",
    "tps_st_cpu",
    "tps_st_gpu",
    "provenance_verified",
    "coverage",
    "scope",
    "flaky",
];

/// The format families and backends of the throughput columns, in column order.
pub const TPS_COLUMNS: [(&str, &str); 6] = [
    ("gguf", "cpu"),
    ("gguf", "gpu"),
    ("apr", "cpu"),
    ("apr", "gpu"),
    ("safetensors", "cpu"),
    ("safetensors", "gpu"),
];

/// A model the registry lists before any evidence exists (a row of the original's registry).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SeedModel {
    pub model_id: String,
    pub family: String,
    pub parameters: String,
    pub size_category: String,
}

/// Reading or writing the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("failed to read the model list: {0}")]
    Csv(#[from] csv::Error),
    #[error("README has no `{0}` marker: add both certification table markers")]
    MarkerNotFound(&'static str),
}

pub fn read_seed(text: &str) -> Result<Vec<SeedModel>, RegistryError> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut out = Vec::new();
    for row in reader.deserialize() {
        out.push(row?);
    }
    Ok(out)
}

/// One registry row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub model_id: String,
    pub family: String,
    pub parameters: String,
    pub size_category: String,
    pub status: Status,
    pub mqs_score: Option<u32>,
    pub grade: String,
    pub certified_tier: String,
    pub last_certified: String,
    /// `None`: no evidence for that gateway.
    pub gateways: [Option<bool>; 5],
    pub tps: [Option<f64>; 6],
    pub provenance_verified: Option<bool>,
    pub coverage: Option<f64>,
    /// The backends the status speaks for (those with evidence); empty for a model without any.
    pub scope: Vec<String>,
    /// Planned backends without evidence.
    pub not_covered: Vec<String>,
    /// Trials whose repeats disagreed; `None` without evidence.
    pub flaky: Option<usize>,
    /// The MQS against the certification before at the same tier (`history.json`).
    pub trend: Option<super::history::Trend>,
}

impl Row {
    fn pending(seed: &SeedModel) -> Row {
        Row {
            model_id: seed.model_id.clone(),
            family: seed.family.clone(),
            parameters: seed.parameters.clone(),
            size_category: seed.size_category.clone(),
            status: Status::Pending,
            mqs_score: None,
            grade: "-".into(),
            certified_tier: "none".into(),
            last_certified: String::new(),
            gateways: [None; 5],
            tps: [None; 6],
            provenance_verified: None,
            coverage: None,
            scope: Vec::new(),
            not_covered: Vec::new(),
            flaky: None,
            trend: None,
        }
    }

    fn measured(
        e: &ModelEvidence,
        score: &Score,
        seed: Option<&SeedModel>,
        trend: Option<super::history::Trend>,
    ) -> Row {
        let parameters = e
            .parameters
            .map(format_parameters)
            .or_else(|| seed.map(|s| s.parameters.clone()))
            .unwrap_or_else(|| "-".into());
        let size_category = e
            .parameters
            .map(|p| size_category(p).to_string())
            .or_else(|| seed.map(|s| s.size_category.clone()))
            .unwrap_or_else(|| "-".into());
        let gateways = GATEWAYS.map(|g| match score.gateways.get(g) {
            Some(GatewayState::Passed) => Some(true),
            Some(GatewayState::Failed) => Some(false),
            Some(GatewayState::Unmeasured) | None => None,
        });
        let certified = matches!(score.status, Status::Certified | Status::Provisional);
        Row {
            model_id: e.model_id.clone(),
            family: e.family.clone(),
            parameters,
            size_category,
            status: score.status,
            mqs_score: Some(score.mqs),
            grade: score.grade.clone(),
            certified_tier: if certified { e.tier.clone() } else { "none".into() },
            last_certified: e.recorded.clone(),
            gateways,
            tps: TPS_COLUMNS.map(|(f, b)| e.tokens_per_second(f, b)),
            provenance_verified: Some(e.provenance_verified()),
            coverage: Some(score.coverage),
            scope: score.scope.clone(),
            not_covered: score.not_covered.keys().cloned().collect(),
            flaky: Some(score.flaky),
            trend,
        }
    }

    fn fields(&self) -> Vec<String> {
        let opt_bool = |b: Option<bool>| b.map_or(String::new(), |b| b.to_string());
        let mut f = vec![
            self.model_id.clone(),
            self.family.clone(),
            self.parameters.clone(),
            self.size_category.clone(),
            self.status.to_string(),
            self.mqs_score.map_or(String::new(), |s| s.to_string()),
            self.grade.clone(),
            self.certified_tier.clone(),
            self.last_certified.clone(),
        ];
        f.extend(self.gateways.iter().map(|g| opt_bool(*g)));
        f.extend(self.tps.iter().map(|t| t.map_or(String::new(), |t| format!("{t:.1}"))));
        f.push(opt_bool(self.provenance_verified));
        f.push(self.coverage.map_or(String::new(), |c| format!("{c:.3}")));
        // `cpu`, or `cpu; gpu not covered` where a planned backend has no evidence.
        f.push(match self.not_covered.is_empty() {
            true => self.scope.join(" "),
            false => format!("{}; {} not covered", self.scope.join(" "), self.not_covered.join(" ")),
        });
        f.push(self.flaky.map_or(String::new(), |n| n.to_string()));
        f
    }
}

/// Parameter count as the registry writes it: `135M`, `0.5B`, `1.4M`.
pub fn format_parameters(n: u64) -> String {
    let n = n as f64;
    let (v, unit) = if n >= 1e9 {
        (n / 1e9, "B")
    } else if n >= 1e6 {
        (n / 1e6, "M")
    } else {
        (n / 1e3, "K")
    };
    let text = if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") };
    format!("{}{unit}", text.trim_end_matches(".0"))
}

/// `135M`, `0.5B`, `70B` back to a count, for sorting.
pub fn parse_parameters(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1e3),
        'M' | 'm' => (&s[..s.len() - 1], 1e6),
        'B' | 'b' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// The original's size classes by parameter count.
pub fn size_category(parameters: u64) -> &'static str {
    match parameters {
        p if p < 1_000_000_000 => "tiny",
        p if p < 3_000_000_000 => "small",
        p if p < 7_000_000_000 => "medium",
        p if p < 13_000_000_000 => "large",
        p if p < 30_000_000_000 => "xlarge",
        _ => "huge",
    }
}

/// Every row: each seed model (pending unless there is evidence for it) and each model with
/// evidence, sorted by family, then size, then id. `histories` holds each model's
/// certifications by its slug (`ModelEvidence::model`), for the trend of its MQS.
pub fn rows(
    seed: &[SeedModel],
    evidence: &[(ModelEvidence, Score)],
    histories: &BTreeMap<String, Vec<super::history::Entry>>,
) -> Vec<Row> {
    let by_id: BTreeMap<&str, &SeedModel> = seed.iter().map(|s| (s.model_id.as_str(), s)).collect();
    let mut rows: BTreeMap<String, Row> =
        seed.iter().map(|s| (s.model_id.clone(), Row::pending(s))).collect();
    for (e, score) in evidence {
        let trend = histories.get(&e.model).and_then(|h| super::history::Trend::of(h));
        rows.insert(
            e.model_id.clone(),
            Row::measured(e, score, by_id.get(e.model_id.as_str()).copied(), trend),
        );
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        let size = |r: &Row| parse_parameters(&r.parameters).unwrap_or(f64::MAX);
        (a.family.as_str(), size(a), a.model_id.as_str())
            .partial_cmp(&(b.family.as_str(), size(b), b.model_id.as_str()))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    rows
}

/// `models.csv`, quoted where a field needs it.
pub fn to_csv(rows: &[Row]) -> Result<String, RegistryError> {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    for row in rows {
        w.write_record(row.fields().iter().map(|f| super::safe_text::csv_cell(f)))?;
    }
    let bytes = w.into_inner().map_err(|e| csv::Error::from(e.into_error()))?;
    Ok(String::from_utf8(bytes).expect("fields are strings"))
}

pub const TABLE_START: &str = "<!-- CERTIFICATION_TABLE_START -->";
pub const TABLE_END: &str = "<!-- CERTIFICATION_TABLE_END -->";

fn badge(status: Status) -> String {
    let color = match status {
        Status::Certified => "brightgreen",
        Status::Provisional => "yellow",
        Status::Blocked => "red",
        Status::Pending => "lightgray",
    };
    format!("![{status}](https://img.shields.io/badge/-{status}-{color})")
}

/// The Markdown between the README markers: summary counts, then one row per model.
pub fn readme_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let updated = rows.iter().map(|r| r.last_certified.as_str()).max().unwrap_or("");
    let date = updated.get(..10).filter(|d| !d.is_empty()).unwrap_or("never");
    let _ = writeln!(out, "**Certification summary** (latest evidence: {date})\n");
    out.push_str("| Status | Models |\n|---|---|\n");
    for status in [Status::Certified, Status::Provisional, Status::Blocked, Status::Pending] {
        let n = rows.iter().filter(|r| r.status == status).count();
        let _ = writeln!(out, "| {status} | {n}/{} |", rows.len());
    }
    out.push_str(
        "\n| Model | Family | Size | Status | Scope | MQS | Grade | Coverage | G0–G4 | ST CPU | ST GPU | GGUF CPU | GGUF GPU | APR CPU | APR GPU |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let gates: String = if r.gateways.iter().all(Option::is_none) {
            "-".into()
        } else {
            r.gateways
                .iter()
                .map(|g| match g {
                    Some(true) => '✓',
                    Some(false) => '✗',
                    None => '·',
                })
                .collect()
        };
        let tps = |i: usize| r.tps[i].map_or("-".to_string(), |t| format!("{t:.1}"));
        let short = r.model_id.rsplit('/').next().unwrap_or(&r.model_id);
        // This project's own models are not on the hub; they live under fixtures/.
        let link = if r.model_id.starts_with("modelqa/") {
            format!("`{short}`")
        } else {
            format!("[{short}](https://huggingface.co/{})", r.model_id)
        };
        let _ = writeln!(
            out,
            "| {link} | {family} | {size} | {badge} | {scope} | {mqs} | {grade} | {coverage} | {gates} | {} | {} | {} | {} | {} | {} |",
            tps(4),
            tps(5),
            tps(0),
            tps(1),
            tps(2),
            tps(3),
            family = r.family,
            size = r.parameters,
            badge = badge(r.status),
            scope = match (r.scope.is_empty(), r.not_covered.is_empty()) {
                (true, _) => "-".to_string(),
                (false, true) => r.scope.join(", "),
                (false, false) =>
                    format!("{} ({} not covered)", r.scope.join(", "), r.not_covered.join(", ")),
            },
            mqs = r
                .mqs_score
                .map_or("-".into(), |s| format!("{s}{}", r.trend.map(|t| t.mark()).unwrap_or_default())),
            grade = r.grade,
            coverage = r.coverage.map_or("-".into(), |c| format!("{:.0}%", c * 100.0)),
        );
    }
    out
}

/// `readme` with the text between the markers replaced by `table`.
pub fn replace_table(readme: &str, table: &str) -> Result<String, RegistryError> {
    let start = readme.find(TABLE_START).ok_or(RegistryError::MarkerNotFound(TABLE_START))?;
    let end = readme.find(TABLE_END).ok_or(RegistryError::MarkerNotFound(TABLE_END))?;
    if end < start {
        return Err(RegistryError::MarkerNotFound(TABLE_START));
    }
    Ok(format!("{}{TABLE_START}\n{table}{}", &readme[..start], &readme[end..]))
}
