//! `report`: one self-contained HTML file about a job (inline CSS and SVG,
//! no scripts or fonts from the network): the plan and what it cost, the
//! distribution of each graded property, agreement with the gold column
//! (`agreement`), failures by class (with example rows) and by chunk, and
//! how long each chunk took. Pure: [`render`] turns plain data into text.

mod agreement;

use std::fmt::Write as _;

use crate::cost::{Estimate, usd};
use crate::grades::{Bin, FailureClass, PropertyStats, Stats};
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
    /// The job's lane is direct requests: spend at standard prices, from the
    /// ledger, and no chunks to time.
    pub direct: bool,
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
h3{font-size:1.05em;margin:1.4em 0 .4em}section.agree+section.agree{border-top:1px dashed #d8dee4;margin-top:1.6em}.scroll{overflow-x:auto;max-width:100%}
.ci{color:#57606a;font-size:.9em}.undef{color:#57606a;cursor:help}.note{color:#57606a;margin:.3em 0}
figure.matrix{min-width:0;max-width:100%}.matrix td.cell{text-align:center;min-width:2em;padding:.25em .4em}
.matrix td.diag{box-shadow:inset 0 0 0 2px #1d232a;font-weight:600}.matrix td.zero{color:#8c959f}
.matrix th.row{white-space:nowrap}.matrix th.col{text-align:center;max-width:8em;overflow-wrap:anywhere}td[data-key=key]{white-space:nowrap}.matrix .corner{color:#57606a;font-weight:400;white-space:nowrap}
.matrix.tall tr:first-child th{vertical-align:bottom}.matrix.tall th.col{padding:.4em .2em}.matrix.tall th.col span{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
.matrix td.total{color:#57606a}.raw{max-width:36em;overflow-wrap:anywhere;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.9em}
.bar.p,.swatch.p{fill:#4c8bd6}.bar.r,.swatch.r{fill:#8a63d2}.bar.f1,.swatch.f1{fill:#3f9d5c}svg text.undef{font-style:italic}
";

/// Checks, once the page is laid out, that every chart has a size, its
/// bars have heights and every matrix cell a box, and by how many pixels
/// the page is wider than the window (a table that does not fit must
/// scroll in its own box); writes what it found on `<body>`, where a
/// browser test reads it. Inline, so the page still needs no network.
const SELF_CHECK: &str = "
window.addEventListener('load',function(){var c=0,b=0,m=0,e=document.documentElement;
document.querySelectorAll('svg.chart').forEach(function(s){var r=s.getBoundingClientRect();if(r.width>0&&r.height>0)c++;});
document.querySelectorAll('svg.chart rect.bar').forEach(function(x){if(x.getBBox().height>0&&x.getBBox().width>0)b++;});
document.querySelectorAll('table.matrix td.cell').forEach(function(t){var r=t.getBoundingClientRect();if(r.width>0&&r.height>0)m++;});
document.body.setAttribute('data-rendered-charts',c);document.body.setAttribute('data-rendered-bars',b);
document.body.setAttribute('data-rendered-cells',m);document.body.setAttribute('data-overflow-x',Math.max(0,e.scrollWidth-e.clientWidth));});
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
    agreement::section(&mut h, &d.agreement);
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
    if d.direct {
        // Direct requests pay standard prices: there is no discount to show.
        row(
            h,
            "paid (direct, standard prices)",
            usd(d.receipt.paid_usd),
            "paid",
        );
    } else {
        row(h, "paid (batch prices)", usd(d.receipt.paid_usd), "paid");
        row(
            h,
            "at standard prices",
            usd(d.receipt.standard_usd),
            "standard",
        );
        row(h, "saved", usd(d.receipt.saved_usd), "saved");
    }
    if let Some(c) = d.receipt.cache_saved_usd {
        let (label, v) = if c < 0.0 {
            ("the prompt cache cost more", -c)
        } else {
            ("the prompt cache saved", c)
        };
        row(h, label, usd(v), "cache");
    }
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
    failure_examples(h, &d.failures);
    h.push_str(
        "<h3>by chunk</h3><table class=\"chunks\"><tr><th>chunk</th><th class=\"n\">attempt</th><th>batch</th>\
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

/// Each failure class with its first rows: what such a failure looks like.
fn failure_examples(h: &mut String, classes: &[FailureClass]) {
    for c in classes {
        let (kind, class) = (esc(&c.kind), esc(&c.class));
        let _ = write!(
            h,
            "<div class=\"fclass\" data-kind=\"{kind}\" data-class=\"{class}\">\
             <h3>{kind}: {class} <span class=\"sub\" data-key=\"rows\" data-value=\"{}\">{} {}</span></h3>",
            c.rows,
            num(c.rows),
            if c.rows == 1 { "row" } else { "rows" }
        );
        if !c.examples.is_empty() {
            h.push_str(
                "<div class=\"scroll\"><table class=\"examples\"><tr><th>row</th>\
                 <th>raw answer</th><th>error</th></tr>",
            );
            for e in &c.examples {
                let raw = if e.raw.is_empty() {
                    "<span class=\"none\">no answer</span>".to_string()
                } else {
                    esc(&e.raw)
                };
                let _ = write!(
                    h,
                    "<tr data-kind=\"{kind}\" data-class=\"{class}\" data-row=\"{}\">\
                     <td data-key=\"key\">{}</td><td class=\"raw\">{raw}</td><td>{}</td></tr>",
                    e.row,
                    esc(&e.key),
                    esc(&e.error)
                );
            }
            h.push_str("</table></div>");
        }
        h.push_str("</div>\n");
    }
}

fn timing(h: &mut String, d: &ReportData) {
    h.push_str("<h2 id=\"timing\">Time per chunk</h2>\n");
    if d.direct {
        h.push_str(
            "<p class=\"none\">Direct mode: requests were sent one by one, not in chunks.</p>\n",
        );
        return;
    }
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
        let shown = cut_label(label, 40);
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect class=\"{class}\" data-label=\"{}\" data-count=\"{n}\" x=\"{left}\" y=\"{y}\" \
             width=\"{w:.1}\" height=\"{}\"><title>{}: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\">{}</text>",
            left - 6.0,
            y + 13.0,
            esc(&shown),
            esc(label),
            row - 6.0,
            esc(label),
            num(*n),
            left + w + 4.0,
            y + 13.0,
            num(*n)
        );
    }
    h.push_str("</svg>");
}

/// A chart label of at most `max` characters: a longer one is cut with
/// an ellipsis, so a cut label never passes for a whole one (the bar's
/// tooltip keeps it whole).
fn cut_label(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        return label.to_string();
    }
    let mut shown: String = label.chars().take(max.saturating_sub(1)).collect();
    shown.push('…');
    shown
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
    #[test]
    fn cut_labels_end_in_an_ellipsis() {
        let table = [
            ("short", 40, "short"),
            ("exactly", 7, "exactly"),
            ("one too long", 11, "one too lo…"),
            ("日本語のラベルです", 5, "日本語の…"),
        ];
        for (label, max, want) in table {
            assert_eq!(cut_label(label, max), want, "{label}");
        }
    }

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

    #[test]
    fn a_direct_job_shows_its_spend_at_standard_prices() {
        let d = ReportData {
            direct: true,
            receipt: Receipt {
                paid_usd: 0.0621,
                standard_usd: 0.0621,
                saved_usd: 0.0,
                cache_saved_usd: None,
            },
            input_tokens: 1_200,
            output_tokens: 300,
            ..ReportData::default()
        };
        let h = render(&d);
        assert!(h.contains("paid (direct, standard prices)"), "{h}");
        assert!(h.contains("$0.0621"));
        assert!(h.contains("1,200 in, 300 out"));
        assert!(!h.contains("batch prices"));
        assert!(!h.contains("No chunk was submitted yet."));
        // An empty receipt is $0.0000, never $-0.0000.
        let h = render(&ReportData::default());
        assert!(!h.contains("$-0"), "{h}");
    }

    mod agreement_fixture {
        //! A job with gold for three fields and two failure classes, built
        //! by hand: what the agreement module would hand the report.
        use crate::agreement::{
            Binary, Categorical, ClassStats, Confusion, Disagreement, FieldAgreement, Kind,
            Ordinal, UnknownGold,
        };
        use crate::grades::{FailureClass, FailureExample};

        fn class(
            label: &str,
            support: u64,
            p: Option<f64>,
            r: Option<f64>,
            f1: Option<f64>,
        ) -> ClassStats {
            ClassStats {
                label: label.into(),
                support,
                precision: p,
                recall: r,
                f1,
            }
        }

        fn confusion(labels: &[&str], matrix: &[&[u64]]) -> Confusion {
            Confusion {
                labels: labels.iter().map(|l| l.to_string()).collect(),
                matrix: matrix.iter().map(|r| r.to_vec()).collect(),
            }
        }

        fn field(name: &str, kind: Kind) -> FieldAgreement {
            FieldAgreement {
                field: name.into(),
                gold_column: format!("gold_{name}"),
                kind,
                missing_gold: 0,
                no_grade: 0,
                unknown_gold: vec![],
                categorical: None,
                binary: None,
                ordinal: None,
                notes: vec![],
                disagreements: vec![],
            }
        }

        /// Three classes; the judge never answers "opinion <i>".
        pub fn topic() -> FieldAgreement {
            let mut f = field("topic", Kind::Categorical);
            f.missing_gold = 3;
            f.no_grade = 1;
            f.unknown_gold = vec![UnknownGold {
                value: "Sprot".into(),
                rows: 2,
            }];
            f.categorical = Some(Categorical {
                n: 20,
                accuracy: 0.55,
                kappa: Some(0.3077),
                kappa_ci: Some([0.12, 0.49]),
                baseline: 0.4,
                baseline_label: "news".into(),
                classes: vec![
                    class("news", 8, Some(0.6), Some(0.75), Some(0.6667)),
                    class("sport", 6, Some(0.5), Some(0.8333), Some(0.625)),
                    class("opinion <i>", 6, None, Some(0.0), None),
                ],
                confusion: confusion(
                    &["news", "sport", "opinion <i>"],
                    &[&[6, 2, 0], &[1, 5, 0], &[3, 3, 0]],
                ),
            });
            f.disagreements = vec![
                Disagreement {
                    row: 3,
                    key: "r3".into(),
                    gold: "opinion <i>".into(),
                    judge: "news".into(),
                    raw: "{\"topic\": \"news\"}".into(),
                },
                Disagreement {
                    row: 7,
                    key: "r7".into(),
                    gold: "sport".into(),
                    judge: "news".into(),
                    raw: "\u{202e}swen".into(),
                },
            ];
            f
        }

        /// Two classes, with the corrected positive rate.
        pub fn relevant() -> FieldAgreement {
            let mut f = field("relevant", Kind::Categorical);
            f.categorical = Some(Categorical {
                n: 20,
                accuracy: 0.85,
                kappa: Some(0.7),
                kappa_ci: Some([0.38, 0.92]),
                baseline: 0.5,
                baseline_label: "true".into(),
                classes: vec![
                    class("true", 10, Some(0.8182), Some(0.9), Some(0.8571)),
                    class("false", 10, Some(0.8889), Some(0.8), Some(0.8421)),
                ],
                confusion: confusion(&["true", "false"], &[&[9, 1], &[2, 8]]),
            });
            f.binary = Some(Binary {
                positive: "true".into(),
                tpr: Some(0.9),
                tpr_ci: Some([0.5958, 0.9821]),
                tnr: Some(0.8),
                tnr_ci: Some([0.4902, 0.9433]),
                unlabelled: 40,
                judge_positive_rate: Some(0.45),
                corrected_positive_rate: Some(0.3571),
                corrected_ci: Some([0.12, 0.59]),
            });
            f
        }

        /// Numbers, one of them not an integer: no weighted κ.
        pub fn score() -> FieldAgreement {
            let mut f = field("score", Kind::Ordinal);
            f.ordinal = Some(Ordinal {
                n: 12,
                exact: 0.5,
                within_1: 0.9167,
                mae: 0.6667,
                bias: 0.25,
                weighted_kappa: None,
                spearman: Some(0.81),
                confusion: Some(confusion(
                    &["1", "2", "2.5", "3", "4"],
                    &[
                        &[1, 1, 0, 0, 0],
                        &[0, 2, 1, 1, 0],
                        &[0, 0, 1, 1, 0],
                        &[0, 0, 0, 1, 1],
                        &[0, 0, 0, 1, 1],
                    ],
                )),
            });
            f.notes = vec!["weighted κ undefined: a value is not an integer".into()];
            f
        }

        pub fn failures() -> Vec<FailureClass> {
            vec![
                FailureClass {
                    kind: "api".into(),
                    class: "400 invalid_request".into(),
                    rows: 2,
                    examples: vec![FailureExample {
                        row: 4,
                        key: "r4".into(),
                        raw: String::new(),
                        error: "max_tokens is too large".into(),
                    }],
                },
                FailureClass {
                    kind: "parse".into(),
                    class: "not JSON".into(),
                    rows: 1,
                    examples: vec![FailureExample {
                        row: 9,
                        key: "r9".into(),
                        raw: "I think <b>yes</b>".into(),
                        error: "expected value at line 1 column 1".into(),
                    }],
                },
            ]
        }
    }

    fn with_gold() -> ReportData {
        use agreement_fixture::*;
        ReportData {
            agreement: vec![topic(), relevant(), score()],
            failures: failures(),
            ..data()
        }
    }

    /// Every `needle` is in the page.
    fn has_all(h: &str, needles: &[&str]) {
        for n in needles {
            assert!(h.contains(n), "missing {n}");
        }
    }

    #[test]
    fn categorical_agreement_shows_its_numbers_matrix_classes_and_rows() {
        let h = render(&with_gold());
        has_all(
            &h,
            &[
                "<h2 id=\"agreement\">Agreement with gold</h2>",
                "data-field=\"topic\" data-kind=\"categorical\"",
                "data-field=\"topic\" data-key=\"n\" data-value=\"20\">20<",
                "data-field=\"topic\" data-key=\"accuracy\" data-value=\"0.55\">55.0%<",
                "data-key=\"kappa\" data-value=\"0.3077\" data-lo=\"0.12\" data-hi=\"0.49\">0.31 \
                 <span class=\"ci\">95% CI 0.12 – 0.49</span>",
                "majority baseline (always “news”)",
                "data-field=\"topic\" data-key=\"baseline\" data-value=\"0.4\">40.0%<",
                "data-field=\"topic\" data-key=\"missing_gold\" data-value=\"3\"",
                "data-field=\"topic\" data-key=\"no_grade\" data-value=\"1\"",
                "data-field=\"topic\" data-gold=\"news\" data-key=\"gold_rows\" data-value=\"8\">8<",
                // The matrix: gold rows, judge columns, the diagonal marked.
                "data-matrix=\"confusion\"",
                "class=\"n cell diag\" data-field=\"topic\" data-gold=\"news\" data-judge=\"news\" \
                 data-count=\"6\" data-share=\"0.75\"",
                "class=\"n cell\" data-field=\"topic\" data-gold=\"opinion &lt;i&gt;\" \
                 data-judge=\"sport\" data-count=\"3\" data-share=\"0.5\"",
                "<th class=\"lab col\" title=\"opinion &lt;i&gt;\"><span>opinion &lt;i&gt;</span></th>",
                // Per class: bars, support, and the precision nobody answered.
                "rect class=\"bar r\" data-field=\"topic\" data-class=\"news\" data-key=\"recall\" \
                 data-value=\"0.75\"",
                "data-class=\"news\" data-key=\"support\" data-value=\"8\">8 gold<",
                "data-class=\"opinion &lt;i&gt;\" data-key=\"precision\" data-undefined=\"true\">\
                 <title>undefined: the judge never answered this class</title>",
                // Gold values outside the classes, named with their counts.
                "data-unknown-gold=\"Sprot\" data-rows=\"2\">“Sprot” (2 rows)",
                // The disagreeing rows, their text escaped and bidi shown.
                "<tr data-field=\"topic\" data-row=\"3\"><td data-key=\"key\">r3</td>\
                 <td data-key=\"gold\">opinion &lt;i&gt;</td><td data-key=\"judge\">news</td>",
                "{&quot;topic&quot;: &quot;news&quot;}",
                "[U+202E]swen",
            ],
        );
        assert!(!h.contains("opinion <i>"));
        assert!(!h.contains('\u{202e}'));
    }

    #[test]
    fn binary_agreement_shows_rates_with_wilson_intervals_and_the_corrected_rate() {
        let h = render(&with_gold());
        has_all(
            &h,
            &[
                "sensitivity (TPR, positive “true”)",
                "data-field=\"relevant\" data-key=\"tpr\" data-value=\"0.9\" data-lo=\"0.5958\" \
                 data-hi=\"0.9821\">90.0% <span class=\"ci\">95% CI 59.6% – 98.2%</span>",
                "data-field=\"relevant\" data-key=\"tnr\" data-value=\"0.8\" data-lo=\"0.4902\"",
                "data-field=\"relevant\" data-key=\"unlabelled\" data-value=\"40\"",
                "data-field=\"relevant\" data-key=\"judge_positive_rate\" data-value=\"0.45\">45.0%<",
                "data-field=\"relevant\" data-key=\"corrected_positive_rate\" data-value=\"0.3571\" \
                 data-lo=\"0.12\" data-hi=\"0.59\">35.7%",
                "data-field=\"relevant\" data-gold=\"false\" data-judge=\"false\" data-count=\"8\"",
            ],
        );
        // The three-class field is no binary one.
        assert!(!h.contains("data-field=\"topic\" data-key=\"tpr\""));
    }

    #[test]
    fn ordinal_agreement_shows_errors_the_heat_table_and_why_a_number_is_missing() {
        let h = render(&with_gold());
        has_all(
            &h,
            &[
                "data-field=\"score\" data-kind=\"ordinal\"",
                "data-field=\"score\" data-key=\"exact\" data-value=\"0.5\">50.0%<",
                "data-field=\"score\" data-key=\"within_1\" data-value=\"0.9167\">91.7%<",
                "data-field=\"score\" data-key=\"mae\" data-value=\"0.6667\">0.67<",
                "data-field=\"score\" data-key=\"bias\" data-value=\"0.25\">+0.25<",
                "data-field=\"score\" data-key=\"spearman\" data-value=\"0.81\">0.81<",
                "class=\"n undef\" data-field=\"score\" data-key=\"weighted_kappa\" \
                 data-undefined=\"true\" title=\"undefined: a value is not an integer",
                ">—</td>",
                // The note, as a sentence.
                ">Weighted κ undefined: a value is not an integer.</p>",
                "data-matrix=\"heat\"",
                "data-field=\"score\" data-gold=\"2\" data-judge=\"3\" data-count=\"1\" \
                 data-share=\"0.25\"",
            ],
        );
        // No per-class chart for numbers, and no NaN anywhere.
        assert!(!h.contains("data-chart=\"classes\" data-field=\"score\""));
        assert!(!h.contains("NaN"));
    }

    #[test]
    fn a_number_that_is_not_finite_is_shown_as_undefined() {
        let mut d = with_gold();
        let o = d.agreement[2].ordinal.as_mut().unwrap();
        o.spearman = Some(f64::NAN);
        o.mae = f64::INFINITY;
        let h = render(&d);
        assert!(h.contains("data-field=\"score\" data-key=\"spearman\" data-undefined=\"true\""));
        assert!(h.contains("data-field=\"score\" data-key=\"mae\" data-undefined=\"true\""));
        assert!(!h.contains("NaN") && !h.contains("inf"));
    }

    #[test]
    fn failure_classes_list_their_example_rows() {
        let h = render(&with_gold());
        has_all(
            &h,
            &[
                "<div class=\"fclass\" data-kind=\"api\" data-class=\"400 invalid_request\">\
                 <h3>api: 400 invalid_request <span class=\"sub\" data-key=\"rows\" \
                 data-value=\"2\">2 rows</span></h3>",
                "<tr data-kind=\"api\" data-class=\"400 invalid_request\" data-row=\"4\">\
                 <td data-key=\"key\">r4</td><td class=\"raw\"><span class=\"none\">no answer</span></td>\
                 <td>max_tokens is too large</td></tr>",
                "data-value=\"1\">1 row</span>",
                "<tr data-kind=\"parse\" data-class=\"not JSON\" data-row=\"9\">",
                "I think &lt;b&gt;yes&lt;/b&gt;",
            ],
        );
        // Inside the one Failures section, before the chunks.
        assert_eq!(h.matches("id=\"failures\"").count(), 1);
        assert!(h.find("class=\"fclass\"") > h.find("id=\"failures\""));
        assert!(h.find("class=\"fclass\"") < h.find("class=\"chunks\""));
    }

    #[test]
    fn without_gold_or_failure_rows_the_sections_are_left_out() {
        let h = render(&data());
        assert!(!h.contains("Agreement with gold"));
        assert!(!h.contains("class=\"fclass\""));
        // The gold page adds one chart per categorical field.
        let gold = render(&with_gold());
        assert_eq!(
            gold.matches("<svg class=\"chart\"").count(),
            h.matches("<svg class=\"chart\"").count() + 2
        );
        for needle in ["http://", "https://", "src=", "<link"] {
            assert!(!gold.contains(needle), "{needle}");
        }
    }

    #[test]
    fn many_long_class_names_stand_on_their_side_cut_in_the_middle() {
        let labels: Vec<String> = (1..=15)
            .map(|i| format!("a rather long category name {i}"))
            .collect();
        assert!(!agreement::upright_heads(&labels));
        assert!(agreement::upright_heads(&labels[..3]));
        assert!(agreement::upright_heads(
            &["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"].map(String::from)
        ));
        let mut d = with_gold();
        let c = d.agreement[0].categorical.as_mut().unwrap();
        c.confusion.labels = labels;
        c.confusion.matrix = vec![vec![1; 15]; 15];
        let h = render(&d);
        assert!(h.contains("class=\"matrix tall\" data-field=\"topic\""));
        // The end of a name is what tells two classes apart: it is kept.
        assert!(h.contains(
            "<th class=\"lab col\" title=\"a rather long category name 12\">\
             <span>a rather lo…gory name 12</span></th>"
        ));
        assert_eq!(agreement::clip_middle("short", 24), "short");
        assert_eq!(agreement::clip_middle("abcdefghij", 5), "ab…ij");
    }

    #[test]
    fn notes_read_as_sentences() {
        for (note, want) in [
            (
                "κ undefined: one class only",
                "κ undefined: one class only.",
            ),
            ("no gold rows.", "No gold rows."),
            ("  Is it? ", "Is it?"),
            ("", ""),
        ] {
            assert_eq!(agreement::sentence(note), want, "{note:?}");
        }
    }
}
