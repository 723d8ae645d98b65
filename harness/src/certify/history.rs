//! A model's certification history (`certifications/<model>/history.json`): one entry per
//! certification — its date, tier, status, MQS, each category's points and the speed of each
//! cell — appended when `cargo xtask certify` writes new evidence, never rewritten. The README
//! table shows the trend of the latest MQS against the one before at the same tier, and the HTML
//! report a small plot of the MQS over the history.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::evidence::ModelEvidence;
use super::mqs::Score;

/// One certification of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The newest record's timestamp: the certification date.
    pub recorded: String,
    pub tier: String,
    pub status: String,
    pub mqs: u32,
    pub grade: String,
    /// Points each category earned (`QUAL`, `PERF`, …); absent where it had no evidence.
    pub categories: BTreeMap<String, f64>,
    /// Median decode speed per measured cell (`safetensors::cpu`, …), tokens per second.
    pub tokens_per_second: BTreeMap<String, f64>,
    /// The harness build that made the evidence (its fingerprint's first 12 characters).
    pub harness: String,
}

impl Entry {
    /// The entry of a certification.
    pub fn of(e: &ModelEvidence, s: &Score) -> Entry {
        let categories = s
            .categories
            .iter()
            .filter_map(|c| c.points.map(|p| (c.category.as_str().to_string(), (p * 10.0).round() / 10.0)))
            .collect();
        let mut cells: Vec<(String, String)> =
            e.records.iter().map(|r| (r.format.clone(), r.backend.clone())).collect();
        cells.sort();
        cells.dedup();
        let tokens_per_second = cells
            .into_iter()
            .filter_map(|(f, b)| {
                e.tokens_per_second(&f, &b).map(|t| (format!("{f}::{b}"), (t * 10.0).round() / 10.0))
            })
            .collect();
        Entry {
            recorded: e.recorded.clone(),
            tier: e.tier.clone(),
            status: s.status.to_string(),
            mqs: s.mqs,
            grade: s.grade.clone(),
            categories,
            tokens_per_second,
            harness: e.harness_fingerprint.chars().take(12).collect(),
        }
    }
}

/// `history` with `entry` appended, unless the last entry is the same certification (the same
/// date and tier: certify run again over the same evidence).
pub fn appended(mut history: Vec<Entry>, entry: Entry) -> Vec<Entry> {
    let same = history.last().is_some_and(|last| last.recorded == entry.recorded && last.tier == entry.tier);
    if same {
        if let Some(last) = history.last_mut() {
            *last = entry;
        }
    } else {
        history.push(entry);
    }
    history
}

/// How the latest MQS compares with the one before it at the same tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// The first certification at this tier.
    First,
    Up {
        from: u32,
    },
    Down {
        from: u32,
    },
    Same,
}

impl Trend {
    pub fn of(history: &[Entry]) -> Option<Trend> {
        let (last, earlier) = history.split_last()?;
        let Some(before) = earlier.iter().rev().find(|e| e.tier == last.tier) else {
            return Some(Trend::First);
        };
        Some(match last.mqs.cmp(&before.mqs) {
            std::cmp::Ordering::Greater => Trend::Up { from: before.mqs },
            std::cmp::Ordering::Less => Trend::Down { from: before.mqs },
            std::cmp::Ordering::Equal => Trend::Same,
        })
    }

    /// The arrow the README table shows beside the MQS, with the score it moved from.
    pub fn mark(self) -> String {
        match self {
            Trend::First => String::new(),
            Trend::Up { from } => format!(" ↑ from {from}"),
            Trend::Down { from } => format!(" ↓ from {from}"),
            Trend::Same => " →".to_string(),
        }
    }
}

/// An inline SVG of the MQS over the history (0–1000 on the vertical axis), each certification a
/// dot with its date and score as a tooltip; empty for fewer than one entry.
pub fn plot(history: &[Entry]) -> String {
    if history.is_empty() {
        return String::new();
    }
    const W: f64 = 240.0;
    const H: f64 = 60.0;
    let step = if history.len() > 1 { (W - 20.0) / (history.len() - 1) as f64 } else { 0.0 };
    let point = |i: usize, e: &Entry| {
        (10.0 + step * i as f64, H - 5.0 - f64::from(e.mqs.min(1000)) / 1000.0 * (H - 10.0))
    };
    let mut svg = format!(
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"MQS over {} certifications\">\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#f9fafb\"/>",
        history.len()
    );
    let line: Vec<String> = history
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (x, y) = point(i, e);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"1.5\" points=\"{}\"/>",
        line.join(" ")
    );
    for (i, e) in history.iter().enumerate() {
        let (x, y) = point(i, e);
        let _ = write!(
            svg,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#2563eb\"><title>{} {} MQS {} ({})</title></circle>",
            super::report::esc(e.recorded.get(..10).unwrap_or(&e.recorded)),
            super::report::esc(&e.tier),
            e.mqs,
            super::report::esc(&e.status)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(recorded: &str, tier: &str, mqs: u32) -> Entry {
        Entry {
            recorded: recorded.into(),
            tier: tier.into(),
            status: "PROVISIONAL".into(),
            mqs,
            grade: "B".into(),
            categories: BTreeMap::new(),
            tokens_per_second: BTreeMap::new(),
            harness: "0123456789ab".into(),
        }
    }

    #[test]
    fn a_new_certification_is_appended_and_the_same_one_replaces_itself() {
        let h = appended(Vec::new(), entry("2026-12-01T10:00:00Z", "mvp", 780));
        let h = appended(h, entry("2026-12-02T10:00:00Z", "mvp", 800));
        assert_eq!(h.len(), 2);
        let h = appended(h, entry("2026-12-02T10:00:00Z", "mvp", 800));
        assert_eq!(h.len(), 2, "certify again over the same evidence adds nothing");
    }

    #[test]
    fn the_trend_compares_with_the_last_certification_at_the_same_tier() {
        assert_eq!(Trend::of(&[]), None);
        assert_eq!(Trend::of(&[entry("a", "mvp", 800)]), Some(Trend::First));
        let h = [entry("a", "mvp", 780), entry("b", "smoke", 100), entry("c", "mvp", 800)];
        assert_eq!(Trend::of(&h), Some(Trend::Up { from: 780 }));
        assert_eq!(Trend::of(&h).unwrap().mark(), " ↑ from 780");
        let h = [entry("a", "mvp", 800), entry("b", "mvp", 650)];
        assert_eq!(Trend::of(&h).unwrap().mark(), " ↓ from 800");
        let h = [entry("a", "mvp", 800), entry("b", "mvp", 800)];
        assert_eq!(Trend::of(&h).unwrap().mark(), " →");
    }

    #[test]
    fn the_plot_has_a_dot_per_certification_with_its_score() {
        let svg =
            plot(&[entry("2026-12-01T10:00:00Z", "mvp", 780), entry("2026-12-02T10:00:00Z", "mvp", 800)]);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("<title>2026-12-02 mvp MQS 800 (PROVISIONAL)</title>"), "{svg}");
        assert!(plot(&[]).is_empty());
    }
}
