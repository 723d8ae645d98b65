//! Reports of scored evidence: JUnit XML for CI systems, a self-contained HTML page with plots,
//! and a Markdown summary for a pull-request comment. Each takes the same `(evidence, score)`
//! pairs and writes nothing itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::evidence::ModelEvidence;
use super::mqs::{GATEWAYS, GatewayState, Score};
use super::registry::TPS_COLUMNS;
use crate::vocab::Outcome;

/// JUnit XML: one suite per model, one case per trial. A falsified oracle or gate is a failure;
/// a timeout or a crash is an error; a trial a policy stopped is skipped. The MQS, grade, status
/// and coverage are suite properties.
pub fn junit(scored: &[(ModelEvidence, Score)]) -> Result<String, quick_junit::SerializeError> {
    let mut report = Report::new("modelqa");
    for (e, s) in scored {
        let mut suite = TestSuite::new(format!("{}::{}::{}", e.family, e.tier, e.model));
        suite.add_properties([
            ("model_id".to_string(), e.model_id.clone()),
            ("mqs".to_string(), s.mqs.to_string()),
            ("grade".to_string(), s.grade.clone()),
            ("status".to_string(), s.status.to_string()),
            ("coverage".to_string(), format!("{:.3}", s.coverage)),
        ]);
        for r in &e.records {
            let status = match r.outcome {
                Outcome::Corroborated => TestCaseStatus::success(),
                Outcome::Skipped | Outcome::Unstable => {
                    let mut st = TestCaseStatus::skipped();
                    st.set_message(r.reason.clone());
                    st
                }
                // A flaky trial is a failure whose type says so (nextest's flaky tests pass; ours
                // never do).
                Outcome::Falsified | Outcome::Flaky | Outcome::Timeout | Outcome::Crashed => {
                    let kind = if matches!(r.outcome, Outcome::Falsified | Outcome::Flaky) {
                        NonSuccessKind::Failure
                    } else {
                        NonSuccessKind::Error
                    };
                    let mut st = TestCaseStatus::non_success(kind);
                    st.set_message(r.reason.clone()).set_type(r.outcome.as_str());
                    if let Some(out) = &r.output {
                        st.set_description(format!("gate: {}\noutput: {out}", r.gate));
                    }
                    st
                }
            };
            let mut case = TestCase::new(r.trial.clone(), status);
            case.set_classname(format!("{}::{}::{}", r.family, r.tier, r.model))
                .set_time(std::time::Duration::from_secs_f64(r.metrics.duration_ms.max(0.0) / 1e3));
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report.to_string()
}

fn gate_mark(s: GatewayState) -> &'static str {
    match s {
        GatewayState::Passed => "pass",
        GatewayState::Failed => "FAIL",
        GatewayState::Unmeasured => "unmeasured",
    }
}

/// A Markdown summary: one line per model, then the first falsifications.
pub fn markdown(scored: &[(ModelEvidence, Score)]) -> String {
    let mut out = String::from("## modelqa qualification\n\n");
    out.push_str(
        "| Model | Tier | Status | MQS | Grade | Passed | Flaky | Coverage | Gateways | Unmeasured |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for (e, s) in scored {
        let passed = e.records.iter().filter(|r| r.outcome.is_pass()).count();
        let gates: Vec<String> =
            GATEWAYS.iter().map(|g| format!("{g} {}", gate_mark(s.gateways[*g]))).collect();
        let unmeasured: Vec<&str> =
            s.categories.iter().filter(|c| c.points.is_none()).map(|c| c.category.as_str()).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {passed}/{} | {} | {:.1}% | {} | {} |",
            super::safe_text::code_span(&e.model_id).replace('|', "\\|"),
            e.tier,
            s.status,
            s.mqs,
            s.grade,
            e.records.len(),
            s.flaky,
            s.coverage * 100.0,
            gates.join(", "),
            if unmeasured.is_empty() { "-".into() } else { unmeasured.join(", ") },
        );
    }
    let failures: Vec<_> =
        scored.iter().flat_map(|(e, _)| &e.records).filter(|r| !r.outcome.is_pass()).collect();
    if failures.is_empty() {
        out.push_str("\nNo falsifications.\n");
    } else {
        let _ = writeln!(out, "\n### Falsifications ({})\n", failures.len());
        for r in failures.iter().take(20) {
            let _ = writeln!(
                out,
                "- {} ({}, {}): {}",
                super::safe_text::code_span(&r.trial),
                r.outcome.as_str(),
                r.gate,
                super::safe_text::text(&r.reason)
            );
        }
        if failures.len() > 20 {
            let _ = writeln!(out, "- … and {} more (see the HTML report)", failures.len() - 20);
        }
    }
    for (e, s) in scored {
        let _ = writeln!(
            out,
            "\n{}: {}",
            super::safe_text::code_span(&e.model_id),
            super::safe_text::text(&s.verdict)
        );
    }
    out
}

pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A horizontal bar chart as inline SVG.
fn bars(title: &str, items: &[(String, f64, f64)], unit: &str) -> String {
    let max = items.iter().map(|(_, v, cap)| v.max(*cap)).fold(0.0_f64, f64::max).max(1e-9);
    let row = 22.0;
    let height = 30.0 + row * items.len() as f64;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{height}\" role=\"img\">",
        esc(title)
    );
    for (i, (label, value, cap)) in items.iter().enumerate() {
        let y = 20.0 + row * i as f64;
        let w = 380.0 * value / max;
        let _ = write!(svg, "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>", y + 13.0, esc(label));
        if *cap > 0.0 {
            let _ = write!(
                svg,
                "<rect x=\"180\" y=\"{y}\" width=\"{:.1}\" height=\"16\" fill=\"#e5e7eb\"/>",
                380.0 * cap / max
            );
        }
        let _ = write!(svg, "<rect x=\"180\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"#2563eb\"/>");
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{value:.1}{unit}</text>",
            185.0 + w.max(380.0 * cap / max),
            y + 13.0
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// A `diff::trace` record's per-layer plot as inline SVG: for every site in the forward pass's
/// order, the ground truth's L2 norm (grey) beside this format's (blue) on a shared scale, and
/// the cosine between them as a bar from 0 to 1 with its value, red below 0.99. `None` for a
/// record without a trace beside a ground truth.
fn trace_plot(r: &crate::journal::EvidenceRecord) -> Option<String> {
    let trace = r.metrics.trace.as_ref().filter(|t| t.iter().any(|p| p.cosine.is_some()))?;
    let max = trace.iter().map(|p| p.l2.max(p.reference_l2.unwrap_or(0.0))).fold(0.0_f64, f64::max).max(1e-9);
    let row = 30.0;
    let height = 40.0 + row * trace.len() as f64;
    let mut svg = format!(
        "<figure><figcaption>{} — L2 norm by site (grey: ground truth, blue: {}) and cosine with the ground truth</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"{height}\" role=\"img\">\
         <text x=\"90\" y=\"12\" font-size=\"11\">norm</text><text x=\"480\" y=\"12\" font-size=\"11\">cosine (0–1)</text>",
        esc(&r.trial),
        esc(&r.format)
    );
    for (i, p) in trace.iter().enumerate() {
        let y = 20.0 + row * i as f64;
        let _ = write!(svg, "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>", y + 16.0, esc(&p.site));
        let reference = p.reference_l2.unwrap_or(0.0);
        let _ = write!(
            svg,
            "<rect x=\"90\" y=\"{y}\" width=\"{:.1}\" height=\"11\" fill=\"#9ca3af\"/><rect x=\"90\" y=\"{}\" width=\"{:.1}\" height=\"11\" fill=\"#2563eb\"/>",
            300.0 * reference / max,
            y + 12.0,
            300.0 * p.l2 / max
        );
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\">{reference:.3} / {:.3}</text>",
            95.0 + 300.0 * p.l2.max(reference) / max,
            y + 20.0,
            p.l2
        );
        if let Some(c) = p.cosine {
            let fill = if c >= 0.99 { "#16a34a" } else { "#dc2626" };
            let _ = write!(
                svg,
                "<rect x=\"480\" y=\"{}\" width=\"{:.1}\" height=\"14\" fill=\"{fill}\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{c:.4}</text>",
                y + 4.0,
                160.0 * c.clamp(0.0, 1.0),
                485.0 + 160.0 * c.clamp(0.0, 1.0),
                y + 16.0
            );
        }
    }
    svg.push_str("</svg></figure>");
    Some(svg)
}

/// A self-contained HTML page: no script, no external resource.
/// The HTML report: `histories` holds each model's certifications by its slug, drawn as a small
/// plot of its MQS over time.
pub fn html(
    scored: &[(ModelEvidence, Score)],
    histories: &BTreeMap<String, Vec<super::history::Entry>>,
) -> String {
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>modelqa report</title><style>\
         body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}table{border-collapse:collapse;margin:1rem 0}\
         td,th{border:1px solid #d1d5db;padding:.25rem .5rem;text-align:left;vertical-align:top}\
         .pass{background:#dcfce7}.fail{background:#fee2e2}.none{background:#f3f4f6}pre{white-space:pre-wrap;margin:0}\
         figure{margin:1rem 0}figcaption{font-weight:600}</style></head><body><h1>modelqa qualification report</h1>",
    );
    out.push_str("<table><tr><th>Model</th><th>Tier</th><th>Status</th><th>MQS</th><th>Grade</th><th>Coverage</th><th>Evidence recorded</th><th>Verdict</th></tr>");
    for (e, s) in scored {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{} ({:.1}%)</td><td>{}</td><td>{}</td></tr>",
            esc(&e.model_id),
            esc(&e.tier),
            s.status,
            s.mqs,
            esc(&s.grade),
            s.covered,
            s.planned,
            s.coverage * 100.0,
            esc(&e.recorded),
            esc(&s.verdict)
        );
    }
    out.push_str("</table><h2>History</h2><table><tr><th>Model</th><th>MQS by certification</th><th>Certifications</th></tr>");
    for (e, _) in scored {
        let history = histories.get(&e.model).map(Vec::as_slice).unwrap_or(&[]);
        let said: Vec<String> = history
            .iter()
            .map(|h| {
                format!("{} {} {}", esc(h.recorded.get(..10).unwrap_or(&h.recorded)), esc(&h.tier), h.mqs)
            })
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.model_id),
            super::history::plot(history),
            if said.is_empty() { "none recorded yet".to_string() } else { said.join("<br>") }
        );
    }
    out.push_str("</table><h2>Gateways</h2><table><tr><th>Model</th>");
    for g in GATEWAYS {
        let _ = write!(out, "<th>{g}</th>");
    }
    out.push_str("</tr>");
    for (e, s) in scored {
        let _ = write!(out, "<tr><td>{}</td>", esc(&e.model_id));
        for g in GATEWAYS {
            let state = s.gateways[g];
            let class = match state {
                GatewayState::Passed => "pass",
                GatewayState::Failed => "fail",
                GatewayState::Unmeasured => "none",
            };
            let _ = write!(out, "<td class=\"{class}\">{}</td>", gate_mark(state));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    for (e, s) in scored {
        let _ = write!(out, "<h2>{}</h2>", esc(&e.model_id));
        let cats: Vec<(String, f64, f64)> = s
            .categories
            .iter()
            .map(|c| {
                let label = match c.points {
                    Some(_) => format!("{} ({}/{})", c.category, c.passed, c.total),
                    None => format!("{} (unmeasured)", c.category),
                };
                (label, c.points.unwrap_or(0.0), f64::from(c.weight))
            })
            .collect();
        out.push_str(&bars("Category points (grey: the category's weight)", &cats, ""));
        let tps: Vec<(String, f64, f64)> = TPS_COLUMNS
            .iter()
            .filter_map(|(f, b)| e.tokens_per_second(f, b).map(|t| (format!("{f} {b}"), t, 0.0)))
            .collect();
        if tps.is_empty() {
            out.push_str("<p>No passing generation recorded a decode speed.</p>");
        } else {
            out.push_str(&bars(
                "Decode tokens/s by format and backend (median of passing trials)",
                &tps,
                " tok/s",
            ));
        }
        let plots: Vec<String> = e.records.iter().filter_map(trace_plot).collect();
        if !plots.is_empty() {
            out.push_str("<h3>Traces</h3>");
            for p in plots {
                out.push_str(&p);
            }
        }
        let failures: Vec<_> = e.records.iter().filter(|r| !r.outcome.is_pass()).collect();
        if failures.is_empty() {
            out.push_str("<p>No falsifications.</p>");
        } else {
            out.push_str("<h3>Falsifications</h3><table><tr><th>Trial</th><th>Outcome</th><th>Gate</th><th>Reason</th><th>Prompt</th><th>Output</th></tr>");
            for r in failures {
                let _ = write!(
                    out,
                    "<tr class=\"fail\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td></tr>",
                    esc(&r.trial),
                    r.outcome.as_str(),
                    esc(r.gate.as_str()),
                    esc(&r.reason),
                    esc(r.prompt.as_deref().unwrap_or("")),
                    esc(r.output.as_deref().unwrap_or(""))
                );
            }
            out.push_str("</table>");
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{TracePoint, test_record};
    use crate::vocab::Category;

    #[test]
    fn a_trace_is_drawn_site_by_site_with_the_ground_truth_beside_it() {
        let point = |site: &str, l2: f64, reference: f64, cosine: f64| TracePoint {
            site: site.into(),
            mean: 0.0,
            std: 1.0,
            l2,
            min: -1.0,
            max: 1.0,
            nonfinite: 0,
            cosine: Some(cosine),
            reference_l2: Some(reference),
        };
        let mut r = test_record("m", "apr", "trace", "COMP", Category::Comp, Outcome::Falsified);
        r.metrics.trace = Some(vec![point("embed", 3.0, 3.0, 1.0), point("L0.attn", 9.0, 12.0, 0.41)]);
        let svg = trace_plot(&r).expect("a plot");
        assert!(svg.contains(">embed</text>") && svg.contains(">L0.attn</text>"), "{svg}");
        assert!(svg.contains("12.000 / 9.000"), "both norms are labelled: {svg}");
        assert!(
            svg.contains("fill=\"#dc2626\"/><text x=\"550.6\" y=\"66\" font-size=\"11\">0.4100</text>"),
            "{svg}"
        );
        r.metrics.trace = None;
        assert!(trace_plot(&r).is_none());
    }
}
