//! `report`: one self-contained HTML file about a job (inline CSS and SVG,
//! no scripts or fonts from the network): the plan and what it cost, the
//! distribution of each graded property, failures by class and by chunk, and
//! how long each chunk took. Pure: [`render`] turns plain data into text.

use std::fmt::Write as _;

use crate::cost::{Estimate, usd};
use crate::grades::{Bin, PropertyStats, Stats};
use crate::output::Written;
use crate::status::Receipt;

/// Everything the report shows, gathered by the command.
#[derive(Debug, Clone, Default)]
pub struct ReportData {
    pub job: String,
    pub model: String,
    pub simulated: bool,
    /// When the report was made (RFC 3339).
    pub generated_at: String,
    pub rows: u64,
    pub outstanding: u64,
    pub already_done: u64,
    pub prompt_tokens: u64,
    pub planned_chunks: usize,
    pub estimate: Option<Estimate>,
    pub prices_as_of: Option<String>,
    pub receipt: Receipt,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub written: Written,
    pub grades: Vec<PropertyStats>,
    /// For `number` and `label` parses without a schema: value counts.
    pub distribution: Vec<(String, u64)>,
    pub parse_failures_by_reason: Vec<(String, u64)>,
    pub api_failures_by_code: Vec<(String, u64)>,
    pub chunks: Vec<ChunkRow>,
    /// Agreement of each graded field that has a gold column; empty without gold.
    pub agreement: Vec<crate::agreement::FieldAgreement>,
    /// Failure classes with a few example rows each.
    pub failures: Vec<crate::grades::FailureClass>,
}

/// One batch attempt of a chunk.
#[derive(Debug, Clone, Default)]
pub struct ChunkRow {
    pub id: u32,
    pub attempt: u32,
    pub requests: u64,
    pub completed: u64,
    pub failed: u64,
    pub batch_id: Option<String>,
    /// `completed`, `expired`, `failed: ...`, or the phase it is in.
    pub state: String,
    pub submitted_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub cost_usd: f64,
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:980px;color:#1d232a;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d8dee4;padding-bottom:.2em}
.sub{color:#57606a}.sim{background:#fff8c5;border:1px solid #d4a72c;padding:.4em .8em;border-radius:6px}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:.25em .8em;border-bottom:1px solid #eaeef2;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:1.5em}figure{margin:0}figcaption{font-weight:600;margin-bottom:.3em}
svg text{font:11px system-ui,sans-serif;fill:#57606a}.bar{fill:#4c8bd6}.bar.bad{fill:#d1553f}.bar.ok{fill:#3f9d5c}
.axis{stroke:#8c959f;stroke-width:1}.none{color:#57606a;font-style:italic}
";

/// Checks, once the page is laid out, that every chart has a size and its
/// bars have heights, and writes what it found on `<body>`; a browser test
/// reads it. Inline, so the page still needs no network.
const SELF_CHECK: &str = "
window.addEventListener('load',function(){var c=0,b=0;
document.querySelectorAll('svg.chart').forEach(function(s){var r=s.getBoundingClientRect();if(r.width>0&&r.height>0)c++;});
document.querySelectorAll('svg.chart rect.bar').forEach(function(x){if(x.getBBox().height>0&&x.getBBox().width>0)b++;});
document.body.setAttribute('data-rendered-charts',c);document.body.setAttribute('data-rendered-bars',b);});
";

/// The whole report.
pub fn render(d: &ReportData) -> String {
    let mut h = String::with_capacity(32 << 10);
    let title = format!("batchgrader report: {}", d.job);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head>\n<body>\n",
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<h1>Job {}</h1><p class=\"sub\">model {} · report made {}</p>",
        esc(&d.job),
        esc(&d.model),
        esc(&d.generated_at)
    );
    if d.simulated {
        h.push_str(
            "<p class=\"sim\">Simulated provider: the answers are made up, not from a model.</p>\n",
        );
    }
    receipt(&mut h, d);
    grades(&mut h, d);
    failures(&mut h, d);
    timing(&mut h, d);
    let _ = write!(h, "<script>{SELF_CHECK}</script>\n</body></html>\n");
    h
}

fn receipt(h: &mut String, d: &ReportData) {
    h.push_str("<h2 id=\"receipt\">Plan and cost</h2>\n<table class=\"receipt\">\n");
    let row = |h: &mut String, k: &str, v: String, key: &str| {
        let _ = writeln!(
            h,
            "<tr><th>{k}</th><td class=\"n\" data-key=\"{key}\">{}</td></tr>",
            esc(&v)
        );
    };
    row(h, "rows", num(d.rows), "rows");
    row(
        h,
        "planned",
        format!(
            "{} to grade, {} already graded, {} chunks",
            num(d.outstanding),
            num(d.already_done),
            d.planned_chunks
        ),
        "planned",
    );
    row(
        h,
        "prompt tokens (plan)",
        num(d.prompt_tokens),
        "prompt_tokens",
    );
    if let Some(e) = &d.estimate {
        let mut s = format!("{} prompt", usd(e.low));
        if let Some(x) = e.expected {
            let _ = write!(s, ", expected {}", usd(x));
        }
        if let Some(x) = e.high {
            let _ = write!(s, ", at most {}", usd(x));
        }
        if let Some(asof) = &d.prices_as_of {
            let _ = write!(s, " (prices of {asof})");
        }
        row(h, "estimate", s, "estimate");
    } else {
        row(h, "estimate", "no price for this model".into(), "estimate");
    }
    row(
        h,
        "tokens billed",
        format!("{} in, {} out", num(d.input_tokens), num(d.output_tokens)),
        "tokens",
    );
    row(h, "paid (batch prices)", usd(d.receipt.paid_usd), "paid");
    row(
        h,
        "at standard prices",
        usd(d.receipt.standard_usd),
        "standard",
    );
    row(h, "saved", usd(d.receipt.saved_usd), "saved");
    let w = &d.written;
    row(
        h,
        "outcome",
        format!(
            "{} graded, {} parse failures, {} failed, {} not graded",
            num(w.ok),
            num(w.parse_errors),
            num(w.failed),
            num(w.not_graded)
        ),
        "outcome",
    );
    h.push_str("</table>\n");
}

fn grades(h: &mut String, d: &ReportData) {
    h.push_str("<h2 id=\"grades\">Grades</h2>\n");
    if d.grades.is_empty() && d.distribution.is_empty() {
        h.push_str("<p class=\"none\">No numeric, enum or boolean grades to chart.</p>\n");
        return;
    }
    h.push_str("<div class=\"grid\">\n");
    for p in &d.grades {
        match &p.stats {
            Stats::Numeric(n) => {
                let _ = write!(
                    h,
                    "<figure data-property=\"{0}\"><figcaption>{0}</figcaption>",
                    esc(&p.name)
                );
                histogram(h, &p.name, &n.histogram);
                let _ = writeln!(
                    h,
                    "<table class=\"five\"><tr><th>n</th><th>min</th><th>q1</th><th>median</th>\
                     <th>q3</th><th>max</th><th>mean</th></tr><tr><td class=\"n\">{}</td>{}</tr></table></figure>",
                    num(n.count),
                    [n.min, n.q1, n.median, n.q3, n.max, n.mean]
                        .iter()
                        .zip(["min", "q1", "median", "q3", "max", "mean"])
                        .map(|(x, k)| format!(
                            "<td class=\"n\" data-stat=\"{k}\">{}</td>",
                            short(*x)
                        ))
                        .collect::<String>()
                );
            }
            Stats::Counts { counts } => {
                let _ = write!(
                    h,
                    "<figure data-property=\"{0}\"><figcaption>{0}</figcaption>",
                    esc(&p.name)
                );
                bars(h, &p.name, counts, "bar");
                h.push_str("</figure>\n");
            }
        }
    }
    if !d.distribution.is_empty() {
        h.push_str("<figure data-property=\"value\"><figcaption>values</figcaption>");
        bars(h, "value", &d.distribution, "bar");
        h.push_str("</figure>\n");
    }
    h.push_str("</div>\n");
}

fn failures(h: &mut String, d: &ReportData) {
    h.push_str("<h2 id=\"failures\">Failures</h2>\n");
    let mut classes: Vec<(String, u64)> = Vec::new();
    classes.extend(
        d.api_failures_by_code
            .iter()
            .map(|(c, n)| (format!("API: {c}"), *n)),
    );
    classes.extend(
        d.parse_failures_by_reason
            .iter()
            .map(|(c, n)| (format!("parse: {c}"), *n)),
    );
    if d.written.not_graded > 0 {
        classes.push(("not graded".into(), d.written.not_graded));
    }
    if classes.is_empty() {
        h.push_str("<p class=\"none\" data-failures=\"0\">No failures.</p>\n");
    } else {
        h.push_str("<figure data-chart=\"failures\"><figcaption>by class</figcaption>");
        bars(h, "failures", &classes, "bar bad");
        h.push_str("</figure>\n");
    }
    h.push_str(
        "<table class=\"chunks\"><tr><th>chunk</th><th class=\"n\">attempt</th><th>batch</th>\
         <th>ended</th><th class=\"n\">requests</th><th class=\"n\">completed</th>\
         <th class=\"n\">failed</th><th class=\"n\">cost</th></tr>\n",
    );
    for c in &d.chunks {
        let _ = writeln!(
            h,
            "<tr data-chunk=\"{}\"><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\" data-failed=\"{}\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            c.id,
            c.id,
            c.attempt,
            esc(c.batch_id.as_deref().unwrap_or("-")),
            esc(&c.state),
            num(c.requests),
            num(c.completed),
            c.failed,
            num(c.failed),
            usd(c.cost_usd)
        );
    }
    h.push_str("</table>\n");
}

fn timing(h: &mut String, d: &ReportData) {
    h.push_str("<h2 id=\"timing\">Time per chunk</h2>\n");
    let timed: Vec<&ChunkRow> = d
        .chunks
        .iter()
        .filter(|c| c.submitted_at.is_some())
        .collect();
    let Some(start) = timed.iter().filter_map(|c| c.submitted_at).min() else {
        h.push_str("<p class=\"none\">No chunk was submitted yet.</p>\n");
        return;
    };
    let end = timed
        .iter()
        .map(|c| c.ended_at.or(c.submitted_at).unwrap_or(start))
        .max()
        .unwrap_or(start);
    let span = (end - start).max(1) as f64;
    let (left, width, row) = (150.0, 560.0, 22.0);
    let height = row * timed.len() as f64 + 30.0;
    let _ = write!(
        h,
        "<svg class=\"chart\" data-chart=\"timing\" width=\"{}\" height=\"{height}\" \
         viewBox=\"0 0 {} {height}\" role=\"img\" aria-label=\"time per chunk\">",
        left + width + 80.0,
        left + width + 80.0
    );
    for (i, c) in timed.iter().enumerate() {
        let s = c.submitted_at.unwrap_or(start);
        let e = c.ended_at.unwrap_or(s);
        let x = left + (s - start) as f64 / span * width;
        let w = ((e.saturating_sub(s)) as f64 / span * width).max(2.0);
        let y = i as f64 * row + 4.0;
        let secs = e.saturating_sub(s);
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{}\">chunk {} (attempt {})</text>\
             <rect class=\"bar\" data-chunk=\"{}\" data-seconds=\"{secs}\" x=\"{x:.1}\" y=\"{y}\" \
             width=\"{w:.1}\" height=\"{}\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\">{}</text>",
            y + 13.0,
            c.id,
            c.attempt,
            c.id,
            row - 6.0,
            if c.ended_at.is_some() {
                format!("{} s", secs)
            } else {
                "not ended".into()
            },
            x + w + 4.0,
            y + 13.0,
            duration(secs, c.ended_at.is_some())
        );
    }
    let axis_y = row * timed.len() as f64 + 8.0;
    let _ = writeln!(
        h,
        "<line class=\"axis\" x1=\"{left}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\"/>\
         <text x=\"{left}\" y=\"{}\">0 s</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>",
        left + width,
        axis_y + 14.0,
        left + width,
        axis_y + 14.0,
        duration(end - start, true)
    );
}

fn duration(secs: u64, ended: bool) -> String {
    if !ended {
        return "not ended".into();
    }
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Vertical bars of a histogram, labelled with each bar's lower bound.
fn histogram(h: &mut String, name: &str, bins: &[Bin]) {
    let (bw, gap, top, chart_h) = (34.0, 6.0, 18.0, 120.0);
    let max = bins.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let width = bins.len() as f64 * (bw + gap) + 10.0;
    let height = top + chart_h + 20.0;
    let unit_bins = bins
        .iter()
        .all(|b| b.hi - b.lo == 1.0 && b.lo.fract() == 0.0);
    let _ = write!(
        h,
        "<svg class=\"chart\" data-chart=\"histogram\" data-property=\"{}\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{} histogram\">",
        esc(name),
        esc(name)
    );
    for (i, b) in bins.iter().enumerate() {
        let bh = (b.count as f64 / max * chart_h).max(if b.count > 0 { 1.0 } else { 0.0 });
        let x = 5.0 + i as f64 * (bw + gap);
        let y = top + chart_h - bh;
        let label = if unit_bins {
            short(b.lo)
        } else {
            format!("{}–{}", short(b.lo), short(b.hi))
        };
        let _ = write!(
            h,
            "<rect class=\"bar\" data-label=\"{l}\" data-count=\"{c}\" x=\"{x}\" y=\"{y:.1}\" \
             width=\"{bw}\" height=\"{bh:.1}\"><title>{l}: {c}</title></rect>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"middle\">{c}</text>\
             <text x=\"{tx}\" y=\"{ly}\" text-anchor=\"middle\">{l}</text>",
            l = esc(&label),
            c = b.count,
            tx = x + bw / 2.0,
            ty = y - 3.0,
            ly = top + chart_h + 14.0
        );
    }
    let _ = write!(
        h,
        "<line class=\"axis\" x1=\"0\" y1=\"{0}\" x2=\"{width}\" y2=\"{0}\"/></svg>",
        top + chart_h
    );
}

/// Horizontal bars, one per (label, count).
fn bars(h: &mut String, name: &str, counts: &[(String, u64)], class: &str) {
    let (left, bar_w, row) = (250.0, 300.0, 22.0);
    let max = counts.iter().map(|c| c.1).max().unwrap_or(0).max(1) as f64;
    let width = left + bar_w + 70.0;
    let height = row * counts.len() as f64 + 4.0;
    let _ = write!(
        h,
        "<svg class=\"chart\" data-chart=\"bars\" data-property=\"{}\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{} counts\">",
        esc(name),
        esc(name)
    );
    for (i, (label, n)) in counts.iter().enumerate() {
        let w = (*n as f64 / max * bar_w).max(if *n > 0 { 1.0 } else { 0.0 });
        let y = i as f64 * row + 2.0;
        let shown: String = label.chars().take(40).collect();
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect class=\"{class}\" data-label=\"{}\" data-count=\"{n}\" x=\"{left}\" y=\"{y}\" \
             width=\"{w:.1}\" height=\"{}\"><title>{}: {n}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\">{}</text>",
            left - 6.0,
            y + 13.0,
            esc(&shown),
            esc(label),
            row - 6.0,
            esc(label),
            left + w + 4.0,
            y + 13.0,
            num(*n)
        );
    }
    h.push_str("</svg>");
}

fn short(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

fn num(n: u64) -> String {
    crate::ui::num(n)
}

/// Text for HTML content and attribute values.
/// Text for the page. Besides HTML's own characters, Unicode's
/// bidirectional controls (U+202A..U+202E embeddings and overrides,
/// U+2066..U+2069 isolates, U+200E/U+200F/U+061C marks) are shown as what
/// they are, `[U+202E]`: written as they came, a label or cell could reorder
/// itself and its neighbours on screen and display as another.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{061c}' => {
                out.push_str(&format!("[U+{:04X}]", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidirectional_controls_are_shown_not_obeyed() {
        let cases = [
            ("pass", "pass"),
            ("\u{202e}liaf", "[U+202E]liaf"),
            ("a\u{2066}b\u{2069}", "a[U+2066]b[U+2069]"),
            ("\u{200f}<x>", "[U+200F]&lt;x&gt;"),
            ("\u{061c}\u{202a}", "[U+061C][U+202A]"),
            ("arabic \u{0627}", "arabic \u{0627}"),
        ];
        for (text, want) in cases {
            assert_eq!(esc(text), want, "{text:?}");
        }
    }
    use crate::grades::Tally;
    use serde_json::json;

    fn data() -> ReportData {
        let mut t = Tally::new(Some(&json!({"properties": {
            "accuracy": {"type": "integer"}, "verdict": {"enum": ["pass", "fail"]}}})));
        for i in 0..10 {
            t.add(&json!({"accuracy": i % 4, "verdict": if i < 7 { "pass" } else { "fail" }}));
        }
        t.fail("not JSON");
        ReportData {
            job: "essays <&>".into(),
            model: "gpt-4o-mini".into(),
            rows: 12,
            grades: t.properties(),
            parse_failures_by_reason: t.failures(),
            api_failures_by_code: vec![("server_error".into(), 1)],
            written: Written {
                rows: 12,
                ok: 10,
                parse_errors: 1,
                failed: 1,
                not_graded: 0,
            },
            chunks: vec![
                ChunkRow {
                    id: 1,
                    attempt: 1,
                    requests: 12,
                    completed: 11,
                    failed: 1,
                    state: "completed".into(),
                    submitted_at: Some(100),
                    ended_at: Some(190),
                    ..ChunkRow::default()
                },
                ChunkRow {
                    id: 2,
                    attempt: 2,
                    requests: 1,
                    state: "in_progress".into(),
                    submitted_at: Some(150),
                    ..ChunkRow::default()
                },
            ],
            ..ReportData::default()
        }
    }

    #[test]
    fn charts_numbers_and_escaping() {
        let h = render(&data());
        assert!(h.contains("<title>batchgrader report: essays &lt;&amp;&gt;</title>"));
        assert!(!h.contains("essays <&>"));
        // One histogram bar per score 0..=3, counts 3, 3, 2, 2.
        for (label, count) in [(0, 3), (1, 3), (2, 2), (3, 2)] {
            assert!(
                h.contains(&format!("data-label=\"{label}\" data-count=\"{count}\"")),
                "{label}"
            );
        }
        assert!(h.contains("data-label=\"pass\" data-count=\"7\""));
        assert!(h.contains("data-label=\"parse: not JSON\" data-count=\"1\""));
        assert!(h.contains("data-label=\"API: server_error\" data-count=\"1\""));
        assert!(h.contains("data-chunk=\"1\" data-seconds=\"90\""));
        assert!(h.contains("not ended"));
        // Self-contained: nothing is fetched.
        for needle in ["http://", "https://", "src=", "<link"] {
            assert!(!h.contains(needle), "{needle}");
        }
    }

    #[test]
    fn a_job_without_a_schema_charts_its_values_and_says_when_nothing_failed() {
        let d = ReportData {
            job: "numbers".into(),
            distribution: vec![("7".into(), 4), ("8".into(), 2)],
            written: Written {
                rows: 6,
                ok: 6,
                ..Written::default()
            },
            ..ReportData::default()
        };
        let h = render(&d);
        assert!(h.contains("data-property=\"value\""));
        assert!(h.contains("data-label=\"7\" data-count=\"4\""));
        assert!(h.contains("data-failures=\"0\""));
        assert!(h.contains("No chunk was submitted yet."));
        assert_eq!(h.matches("<svg class=\"chart\"").count(), 1);
    }
}
