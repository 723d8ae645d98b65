//! Two runs side by side: which trials flipped, which metrics moved, and whether either is beyond
//! noise. Pure: `cargo xtask diff` reads the records and prints what this decides.
//!
//! - **Pairs.** A trial of one side pairs with the same trial of the other: by its whole name
//!   when both sides hold the same models, or by everything but the family and model when each
//!   side holds one model (two models, or two versions of one under different names).
//! - **Verdicts.** Per model, format and category, McNemar's exact test on the discordant pairs
//!   (pass → fail against fail → pass): regressed beyond noise when more passed before than after
//!   and p < α.
//! - **Metrics.** Per model and metric, over the cells that measured it on both sides, the mean
//!   log ratio B / A with a seeded paired bootstrap over cells: moved beyond noise when its
//!   two-sided p < α. A ratio needs two positive values, so an exact format's KL of 0 pairs with
//!   nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::journal::EvidenceRecord;
use crate::stats;

/// Resamples of the paired bootstrap, and its seed: the same runs give the same p-values.
const BOOTSTRAP: usize = 4_000;
const BOOTSTRAP_SEED: u64 = 0x6469_6666;

/// A metric a record may carry, named as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    MeanKl,
    Top1Agreement,
    TokensPerSecond,
    TimeToFirstToken,
    PerplexityRatio,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::MeanKl,
        Metric::Top1Agreement,
        Metric::TokensPerSecond,
        Metric::TimeToFirstToken,
        Metric::PerplexityRatio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::MeanKl => "mean KL",
            Metric::Top1Agreement => "top-1 agreement",
            Metric::TokensPerSecond => "tokens/s",
            Metric::TimeToFirstToken => "time to first token",
            Metric::PerplexityRatio => "perplexity ratio",
        }
    }

    /// Whether a larger value is worse.
    pub fn higher_is_worse(self) -> bool {
        matches!(self, Metric::MeanKl | Metric::TimeToFirstToken | Metric::PerplexityRatio)
    }

    fn of(self, r: &EvidenceRecord) -> Option<f64> {
        match self {
            Metric::MeanKl => r.metrics.mean_kl,
            Metric::Top1Agreement => r.metrics.top1_agreement,
            // A sequence's speed inside a batch is its share of the batch's: not comparable with
            // a trial generated alone, so only trials generated alone are paired on timings.
            Metric::TokensPerSecond => r.metrics.tokens_per_second.filter(|_| r.metrics.batch.is_none()),
            Metric::TimeToFirstToken => {
                r.metrics.time_to_first_token_ms.filter(|_| r.metrics.batch.is_none())
            }
            Metric::PerplexityRatio => r.metrics.perplexity_ratio,
        }
    }
}

/// A trial whose verdict differs between the sides.
#[derive(Debug, Clone, PartialEq)]
pub struct Flip {
    pub trial: String,
    pub before: &'static str,
    pub after: &'static str,
    /// The after side's reason.
    pub reason: String,
    /// Passed before, fails after.
    pub regressed: bool,
}

/// McNemar's test of one model, format and category.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictShift {
    pub model: String,
    pub format: String,
    pub category: String,
    pub pairs: usize,
    pub regressed: usize,
    pub fixed: usize,
    pub p: f64,
}

/// The paired bootstrap of one model and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricShift {
    pub model: String,
    pub metric: Metric,
    pub cells: usize,
    /// exp(mean log ratio): ×2 is a doubling.
    pub ratio: f64,
    pub ratio_lo: f64,
    pub ratio_hi: f64,
    pub p: f64,
    /// The cell that moved most, and its ratio.
    pub largest: (String, f64),
    /// Every cell's ratio, the largest moves first (what the HTML section plots).
    pub per_cell: Vec<(String, f64)>,
}

impl MetricShift {
    /// Whether the move is for the worse.
    pub fn worse(&self) -> bool {
        (self.ratio > 1.0) == self.metric.higher_is_worse()
    }
}

/// What differs between two runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDiff {
    pub paired: usize,
    pub only_before: Vec<String>,
    pub only_after: Vec<String>,
    pub flips: Vec<Flip>,
    pub verdicts: Vec<VerdictShift>,
    pub metrics: Vec<MetricShift>,
    pub alpha: f64,
}

/// The two sides cannot be paired.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DiffError {
    #[error("the {0} side holds no record")]
    Empty(&'static str),
    #[error(
        "the sides hold different sets of models ({before} against {after}): compare one model with one model, or the same models"
    )]
    Models { before: String, after: String },
}

impl RunDiff {
    /// Verdict shifts beyond noise, for the worse.
    pub fn regressions(&self) -> impl Iterator<Item = &VerdictShift> {
        self.verdicts.iter().filter(|v| v.regressed > v.fixed && v.p < self.alpha)
    }

    /// Metric shifts beyond noise, for the worse.
    pub fn metric_regressions(&self) -> impl Iterator<Item = &MetricShift> {
        self.metrics.iter().filter(|m| m.p < self.alpha && m.worse())
    }

    /// Nothing flipped and no metric moved beyond noise.
    pub fn is_empty(&self) -> bool {
        self.flips.is_empty()
            && self.only_before.is_empty()
            && self.only_after.is_empty()
            && !self.metrics.iter().any(|m| m.p < self.alpha)
    }
}

/// The key a record pairs by, and the model label its groups use.
fn keyed(records: &[EvidenceRecord], by_name: bool) -> BTreeMap<String, &EvidenceRecord> {
    records
        .iter()
        .map(|r| {
            let key = if by_name {
                r.trial.clone()
            } else {
                format!("{}::{}::{}::{}::{}", r.tier, r.format, r.backend, r.modality, r.scenario)
            };
            (key, r)
        })
        .collect()
}

/// Compares `before` with `after` at significance `alpha`.
pub fn diff(before: &[EvidenceRecord], after: &[EvidenceRecord], alpha: f64) -> Result<RunDiff, DiffError> {
    if before.is_empty() {
        return Err(DiffError::Empty("first"));
    }
    if after.is_empty() {
        return Err(DiffError::Empty("second"));
    }
    let models = |rs: &[EvidenceRecord]| rs.iter().map(|r| r.model.clone()).collect::<BTreeSet<_>>();
    let (mb, ma) = (models(before), models(after));
    let by_name = mb == ma;
    if !by_name && (mb.len() != 1 || ma.len() != 1) {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        return Err(DiffError::Models { before: join(&mb), after: join(&ma) });
    }
    let label = |r: &EvidenceRecord| {
        if by_name {
            r.model.clone()
        } else {
            format!(
                "{} → {}",
                mb.iter().next().cloned().unwrap_or_default(),
                ma.iter().next().cloned().unwrap_or_default()
            )
        }
    };
    let (kb, ka) = (keyed(before, by_name), keyed(after, by_name));
    let only_before: Vec<String> = kb.keys().filter(|k| !ka.contains_key(*k)).cloned().collect();
    let only_after: Vec<String> = ka.keys().filter(|k| !kb.contains_key(*k)).cloned().collect();

    let mut flips = Vec::new();
    // (model, format, category) → (pairs, regressed, fixed)
    let mut groups: BTreeMap<(String, String, String), (usize, usize, usize)> = BTreeMap::new();
    // (model, metric) → [(cell, log ratio)]
    let mut moves: BTreeMap<(String, Metric), Vec<(String, f64)>> = BTreeMap::new();
    let mut paired = 0;
    for (key, b) in &kb {
        let Some(a) = ka.get(key) else { continue };
        paired += 1;
        for m in Metric::ALL {
            if let (Some(x), Some(y)) = (m.of(b), m.of(a))
                && x > 0.0
                && y > 0.0
                && x.is_finite()
                && y.is_finite()
            {
                moves.entry((label(b), m)).or_default().push((key.clone(), (y / x).ln()));
            }
        }
        if !(b.outcome.is_verdict() && a.outcome.is_verdict()) {
            continue;
        }
        let g = groups.entry((label(b), b.format.clone(), b.category().as_str().to_string())).or_default();
        g.0 += 1;
        let (was, is) = (b.outcome.is_pass(), a.outcome.is_pass());
        if was != is || b.outcome != a.outcome {
            flips.push(Flip {
                trial: key.clone(),
                before: b.outcome.as_str(),
                after: a.outcome.as_str(),
                reason: a.reason.clone(),
                regressed: was && !is,
            });
        }
        match (was, is) {
            (true, false) => g.1 += 1,
            (false, true) => g.2 += 1,
            _ => {}
        }
    }
    let verdicts = groups
        .into_iter()
        .filter(|(_, (_, r, f))| r + f > 0)
        .map(|((model, format, category), (pairs, regressed, fixed))| VerdictShift {
            model,
            format,
            category,
            pairs,
            regressed,
            fixed,
            p: mcnemar(regressed, fixed),
        })
        .collect();
    let metrics = moves
        .into_iter()
        .filter_map(|((model, metric), cells)| {
            let logs: Vec<f64> = cells.iter().map(|(_, l)| *l).collect();
            if logs.iter().all(|l| l.abs() < 1e-12) {
                return None;
            }
            let ci = stats::bootstrap_mean(
                &logs,
                if logs.len() >= NORMAL_FROM { 200 } else { BOOTSTRAP },
                BOOTSTRAP_SEED,
            );
            let largest = cells
                .iter()
                .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
                .map(|(c, l)| (c.clone(), l.exp()))
                .unwrap_or_default();
            let mut per_cell: Vec<(String, f64)> = cells.iter().map(|(c, l)| (c.clone(), l.exp())).collect();
            per_cell.sort_by(|x, y| y.1.ln().abs().total_cmp(&x.1.ln().abs()));
            Some(MetricShift {
                model,
                metric,
                cells: logs.len(),
                ratio: ci.mean.exp(),
                ratio_lo: ci.lo.exp(),
                ratio_hi: ci.hi.exp(),
                p: bootstrap_p(&logs),
                largest,
                per_cell,
            })
        })
        .collect();
    Ok(RunDiff { paired, only_before, only_after, flips, verdicts, metrics, alpha })
}

/// McNemar's exact two-sided test: under no change, each discordant pair is equally likely to go
/// either way.
pub fn mcnemar(regressed: usize, fixed: usize) -> f64 {
    let n = regressed + fixed;
    if n == 0 {
        return 1.0;
    }
    (2.0 * stats::binomial_cdf(regressed.min(fixed), n, 0.5)).min(1.0)
}

/// Cells past which the mean's sampling distribution is taken as normal (the central limit
/// theorem) instead of resampled: the bootstrap costs cells × resamples draws.
const NORMAL_FROM: usize = 200;

/// The paired bootstrap's two-sided p-value for a mean of zero: twice the share of resampled
/// means on the far side of zero (at least one resample's worth, so never 0). One cell cannot
/// be resampled: p = 1. From [`NORMAL_FROM`] cells on, the normal approximation of the same test.
fn bootstrap_p(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 1.0;
    }
    if n >= NORMAL_FROM {
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se = (var / n as f64).sqrt();
        if se == 0.0 {
            return if mean == 0.0 { 1.0 } else { 0.0 };
        }
        // Two-sided: 2·Φ(−|z|), by bisection on the quantile function.
        let z = (mean / se).abs();
        let (mut lo, mut hi) = (1e-300f64, 0.5f64);
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if stats::normal_quantile(mid) < -z { lo = mid } else { hi = mid }
        }
        return (2.0 * hi).min(1.0);
    }
    let mut rng = stats::SplitMix::new(BOOTSTRAP_SEED);
    let (mut below, mut above) = (0usize, 0usize);
    for _ in 0..BOOTSTRAP {
        let m = (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64;
        if m <= 0.0 {
            below += 1;
        }
        if m >= 0.0 {
            above += 1;
        }
    }
    let tail = below.min(above).max(1);
    (2.0 * tail as f64 / BOOTSTRAP as f64).min(1.0)
}

/// Markdown for a pull-request comment: the summary, what regressed beyond noise, every flipped
/// trial and every metric that moved.
pub fn markdown(d: &RunDiff, before: &str, after: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "## modelqa diff: {before} → {after}\n");
    if d.is_empty() {
        let _ = writeln!(
            s,
            "No difference: {} paired trials, none flipped, no metric moved beyond noise.",
            d.paired
        );
        return s;
    }
    let regressed = d.flips.iter().filter(|f| f.regressed).count();
    let _ = writeln!(
        s,
        "{} paired trials; {} flipped ({regressed} passed before and fail now); {} only before, {} only after.\n",
        d.paired,
        d.flips.len(),
        d.only_before.len(),
        d.only_after.len()
    );
    let verdicts: Vec<&VerdictShift> = d.regressions().collect();
    let metrics: Vec<&MetricShift> = d.metric_regressions().collect();
    let _ = writeln!(s, "### Regressed beyond noise (p < {})\n", d.alpha);
    if verdicts.is_empty() && metrics.is_empty() {
        let _ = writeln!(s, "Nothing.\n");
    }
    if !verdicts.is_empty() {
        let _ = writeln!(s, "| model | format | category | pass → fail | fail → pass | paired | McNemar p |");
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|");
        for v in verdicts {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                v.model,
                v.format,
                v.category,
                v.regressed,
                v.fixed,
                v.pairs,
                p_text(v.p)
            );
        }
        let _ = writeln!(s);
    }
    if !metrics.is_empty() {
        let _ = writeln!(s, "| model | metric | cells | after / before | 95% interval | p | moved most |");
        let _ = writeln!(s, "|---|---|---:|---:|---|---:|---|");
        for m in metrics {
            let _ = writeln!(s, "{}", metric_row(m));
        }
        let _ = writeln!(s);
    }
    if !d.flips.is_empty() {
        let _ = writeln!(s, "### Flipped trials\n");
        let _ = writeln!(s, "| trial | before | after | why, after |");
        let _ = writeln!(s, "|---|---|---|---|");
        for f in &d.flips {
            let reason: String =
                f.reason.chars().take(160).collect::<String>().replace('|', "\\|").replace('\n', " ");
            let _ = writeln!(s, "| `{}` | {} | {} | {reason} |", f.trial, f.before, f.after);
        }
        let _ = writeln!(s);
    }
    if !d.metrics.is_empty() {
        let _ = writeln!(s, "### Every metric that moved\n");
        let _ = writeln!(s, "| model | metric | cells | after / before | 95% interval | p | moved most |");
        let _ = writeln!(s, "|---|---|---:|---:|---|---:|---|");
        for m in &d.metrics {
            let _ = writeln!(s, "{}", metric_row(m));
        }
        let _ = writeln!(s);
    }
    for (what, keys) in [("Only before", &d.only_before), ("Only after", &d.only_after)] {
        if !keys.is_empty() {
            let _ = writeln!(s, "### {what} ({})\n", keys.len());
            for k in keys.iter().take(50) {
                let _ = writeln!(s, "- `{k}`");
            }
            if keys.len() > 50 {
                let _ = writeln!(s, "- … and {} more", keys.len() - 50);
            }
            let _ = writeln!(s);
        }
    }
    s
}

/// The most cells one metric's plot shows (the largest moves).
const PLOTTED_CELLS: usize = 40;

/// The diff as an HTML section (`cargo xtask diff --html`): the summary, the verdicts that
/// regressed beyond noise with McNemar's p-values, a plot per metric that moved for the worse —
/// each cell's after/before ratio as a bar on a log scale around ×1, red where it moved for the
/// worse, the caption saying whether the move is beyond noise — and the flipped trials.
pub fn html(d: &RunDiff, before: &str, after: &str) -> String {
    use std::fmt::Write;
    let esc = super::report::esc;
    let mut s =
        format!("<section class=\"modelqa-diff\"><h2>modelqa diff: {} → {}</h2>", esc(before), esc(after));
    if d.is_empty() {
        let _ = write!(
            s,
            "<p>No difference: {} paired trials, none flipped, no metric moved beyond noise.</p></section>",
            d.paired
        );
        return s;
    }
    let regressed = d.flips.iter().filter(|f| f.regressed).count();
    let _ = write!(
        s,
        "<p>{} paired trials; {} flipped ({regressed} passed before and fail now); {} only before, {} only after.</p>",
        d.paired,
        d.flips.len(),
        d.only_before.len(),
        d.only_after.len()
    );
    let _ = write!(s, "<h3>Regressed beyond noise (p &lt; {})</h3>", d.alpha);
    let verdicts: Vec<&VerdictShift> = d.regressions().collect();
    if verdicts.is_empty() && d.metric_regressions().next().is_none() {
        s.push_str("<p>Nothing.</p>");
    }
    if !verdicts.is_empty() {
        s.push_str("<table><tr><th>model</th><th>format</th><th>category</th><th>pass → fail</th><th>fail → pass</th><th>paired</th><th>McNemar p</th></tr>");
        for v in verdicts {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&v.model),
                esc(&v.format),
                esc(&v.category),
                v.regressed,
                v.fixed,
                v.pairs,
                p_text(v.p)
            );
        }
        s.push_str("</table>");
    }
    let worse: Vec<&MetricShift> = d.metrics.iter().filter(|m| m.worse()).collect();
    if !worse.is_empty() {
        s.push_str("<h3>Metrics that moved for the worse</h3>");
    }
    for m in worse {
        let noise = if m.p < d.alpha { "beyond noise" } else { "within noise" };
        let _ = write!(
            s,
            "<figure><figcaption>{} — {}: ×{:.3} (95% ×{:.3}–×{:.3}, p {}, {noise}) over {} cells</figcaption>{}</figure>",
            esc(&m.model),
            m.metric.name(),
            m.ratio,
            m.ratio_lo,
            m.ratio_hi,
            p_text(m.p),
            m.cells,
            ratio_plot(m)
        );
    }
    if !d.flips.is_empty() {
        s.push_str("<h3>Flipped trials</h3><table><tr><th>trial</th><th>before</th><th>after</th><th>why, after</th></tr>");
        for f in d.flips.iter().take(500) {
            let reason: String = f.reason.chars().take(300).collect();
            let _ = write!(
                s,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.trial),
                f.before,
                f.after,
                esc(&reason)
            );
        }
        if d.flips.len() > 500 {
            let _ = write!(s, "<tr><td colspan=\"4\">… and {} more</td></tr>", d.flips.len() - 500);
        }
        s.push_str("</table>");
    }
    s.push_str("</section>");
    s
}

/// One metric's per-cell ratios as horizontal bars on a log scale, ×1 in the middle, the widest
/// move setting the scale; red bars moved for the worse.
fn ratio_plot(m: &MetricShift) -> String {
    use std::fmt::Write;
    let esc = super::report::esc;
    let cells = &m.per_cell[..m.per_cell.len().min(PLOTTED_CELLS)];
    let span = cells.iter().map(|(_, r)| r.ln().abs()).fold(f64::MIN_POSITIVE, f64::max);
    let (label_w, bar_w, row_h) = (360.0, 300.0, 16.0);
    let height = row_h * cells.len() as f64 + 20.0;
    let mid = label_w + bar_w / 2.0;
    let mut svg = format!(
        "<svg width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"{} after / before per cell\">",
        label_w + bar_w + 80.0,
        m.metric.name()
    );
    let _ = write!(svg, "<line x1=\"{mid}\" y1=\"0\" x2=\"{mid}\" y2=\"{height}\" stroke=\"#6b7280\"/>");
    for (i, (cell, ratio)) in cells.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let w = ratio.ln() / span * (bar_w / 2.0);
        let worse = (*ratio > 1.0) == m.metric.higher_is_worse();
        let (x, w) = if w < 0.0 { (mid + w, -w) } else { (mid, w) };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\
             <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">×{ratio:.3}</text>",
            label_w - 6.0,
            y + 11.0,
            esc(cell),
            w.max(0.5),
            row_h - 4.0,
            if worse { "#dc2626" } else { "#16a34a" },
            label_w + bar_w + 4.0,
            y + 11.0
        );
    }
    if m.per_cell.len() > cells.len() {
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"11\">… {} more cells</text>",
            height - 4.0,
            m.per_cell.len() - cells.len()
        );
    }
    svg.push_str("</svg>");
    svg
}

fn metric_row(m: &MetricShift) -> String {
    format!(
        "| {} | {} | {} | ×{:.3} | ×{:.3}–×{:.3} | {} | `{}` ×{:.3} |",
        m.model,
        m.metric.name(),
        m.cells,
        m.ratio,
        m.ratio_lo,
        m.ratio_hi,
        p_text(m.p),
        m.largest.0,
        m.largest.1
    )
}

fn p_text(p: f64) -> String {
    if p < 1e-3 { format!("{p:.1e}") } else { format!("{p:.3}") }
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
