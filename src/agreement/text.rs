//! Agreement, the quality gate and failure examples as terminal lines: the
//! end-of-run summary and `status` print the same words.

use super::{FieldAgreement, GateCheck};
use crate::grades::FailureClass;
use crate::ui::num;

/// Disagreement examples shown per field (`export --disagreements` has all).
const SHOWN_DISAGREEMENTS: usize = 5;
/// Failure classes shown, each with its examples.
const SHOWN_FAILURE_CLASSES: usize = 4;

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn val(x: Option<f64>) -> String {
    x.map_or_else(|| "undefined".to_string(), |v| format!("{v:.3}"))
}

fn interval(i: Option<[f64; 2]>) -> String {
    i.map(|[lo, hi]| format!(" [{lo:.3}, {hi:.3}]"))
        .unwrap_or_default()
}

fn pct_interval(i: Option<[f64; 2]>) -> String {
    i.map(|[lo, hi]| format!(" [{}, {}]", pct(lo), pct(hi)))
        .unwrap_or_default()
}

/// `row 17` or `row 17 (id t-17)`.
pub fn row_name(row: u64, key: &str) -> String {
    if key == row.to_string() {
        format!("row {row}")
    } else {
        format!("row {row} (id {key})")
    }
}

/// A raw answer on one line, quoted.
fn quoted(raw: &str) -> String {
    let one_line: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{:?}", one_line.trim())
}

/// `(head, body)` lines for one field's agreement (`job`: for the hint
/// that lists every disagreement).
pub fn field_lines(job: &str, a: &FieldAgreement) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let n = a.n();
    if let Some(c) = &a.categorical {
        let mut head = format!(
            "{} vs {}: {} compared, accuracy {} (always `{}`: {}), κ {}{}",
            a.field,
            a.gold_column,
            num(n),
            pct(c.accuracy),
            c.baseline_label,
            pct(c.baseline),
            val(c.kappa),
            interval(c.kappa_ci)
        );
        if n == 0 {
            head = format!("{} vs {}: nothing compared", a.field, a.gold_column);
        }
        out.push(("agreement", head));
        if n > 0 {
            let classes: Vec<String> = c
                .classes
                .iter()
                .filter(|k| k.support > 0 || k.precision.is_some())
                .take(8)
                .map(|k| {
                    format!(
                        "{} P {} R {} F1 {} n {}",
                        k.label,
                        short(k.precision),
                        short(k.recall),
                        short(k.f1),
                        num(k.support)
                    )
                })
                .collect();
            out.push(("", format!("classes  {}", classes.join(" · "))));
        }
    }
    if let Some(b) = &a.binary {
        let mut line = format!(
            "binary   positive `{}`: TPR {}{}, TNR {}{}",
            b.positive,
            b.tpr.map_or("undefined".into(), pct),
            pct_interval(b.tpr_ci),
            b.tnr.map_or("undefined".into(), pct),
            pct_interval(b.tnr_ci),
        );
        if let Some(rate) = b.judge_positive_rate {
            line.push_str(&format!(
                "; over {} rows without gold the judge says {} positive, corrected {}{}",
                num(b.unlabelled),
                pct(rate),
                b.corrected_positive_rate
                    .map_or("undefined (TPR + TNR ≤ 1)".into(), pct),
                pct_interval(b.corrected_ci)
            ));
        }
        out.push(("", line));
    }
    if let Some(o) = &a.ordinal {
        if n == 0 {
            out.push((
                "agreement",
                format!("{} vs {}: nothing compared", a.field, a.gold_column),
            ));
        } else {
            out.push((
                "agreement",
                format!(
                    "{} vs {}: {} compared, exact {}, within ±1 {}, MAE {:.3}, bias {:+.3}, weighted κ {}, Spearman ρ {}",
                    a.field,
                    a.gold_column,
                    num(n),
                    pct(o.exact),
                    pct(o.within_1),
                    o.mae,
                    o.bias,
                    val(o.weighted_kappa),
                    val(o.spearman)
                ),
            ));
        }
    }
    let mut also = Vec::new();
    if a.missing_gold > 0 {
        also.push(format!(
            "{} row{} without gold",
            num(a.missing_gold),
            if a.missing_gold == 1 { "" } else { "s" }
        ));
    }
    if a.no_grade > 0 {
        also.push(format!(
            "{} gold row{} without a usable grade",
            num(a.no_grade),
            if a.no_grade == 1 { "" } else { "s" }
        ));
    }
    if !also.is_empty() {
        out.push(("", format!("also     {}", also.join(", "))));
    }
    for note in &a.notes {
        out.push(("", format!("note     {note}")));
    }
    let differ = disagreements(a);
    for d in a.disagreements.iter().take(SHOWN_DISAGREEMENTS) {
        out.push((
            "",
            format!(
                "differ   {}: gold {}, judge {}: {}",
                row_name(d.row, &d.key),
                d.gold,
                d.judge,
                quoted(&d.raw)
            ),
        ));
    }
    if differ > 0 {
        out.push((
            "",
            format!(
                "         {} disagreement{} in all: `batchgrader export {job} --disagreements --out FILE` lists them",
                num(differ),
                if differ == 1 { "" } else { "s" }
            ),
        ));
    }
    out
}

/// Rows compared where judge and gold differ.
pub fn disagreements(a: &FieldAgreement) -> u64 {
    match (&a.categorical, &a.ordinal) {
        (Some(c), _) => {
            let same: u64 = (0..c.confusion.labels.len())
                .map(|i| c.confusion.matrix[i][i])
                .sum();
            c.n - same.min(c.n)
        }
        (_, Some(o)) => o.n - ((o.exact * o.n as f64).round() as u64).min(o.n),
        _ => 0,
    }
}

fn short(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_string(), |v| format!("{v:.2}"))
}

/// The gate's verdict as one line body.
pub fn gate_line(g: &GateCheck) -> String {
    match g {
        GateCheck::Passed(m) => format!("passed: {m}"),
        GateCheck::Failed(m) => format!("FAILED: {m}"),
        GateCheck::NotJudged(m) => m.clone(),
    }
}

/// The agreement block, the gate and the failure examples, under the
/// summary's and `status`'s 12-column heads (the one writer of both).
pub fn write_quality(
    w: &mut impl std::io::Write,
    p: crate::ui::Paint,
    job: &str,
    agreement: &[FieldAgreement],
    gate: Option<&GateCheck>,
    failures: &[FailureClass],
) -> std::io::Result<()> {
    for a in agreement {
        for (head, body) in field_lines(job, a) {
            writeln!(w, "  {head:<12}{body}")?;
        }
    }
    if let Some(g) = gate {
        let line = gate_line(g);
        let line = if g.failed() { p.bold(&line) } else { line };
        writeln!(w, "  {:<12}{line}", "gate")?;
    }
    for (head, body) in failure_lines(job, failures) {
        writeln!(w, "  {head:<12}{body}")?;
    }
    Ok(())
}

/// `(head, body)` lines for the failure classes and their examples.
pub fn failure_lines(job: &str, failures: &[FailureClass]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (i, f) in failures.iter().take(SHOWN_FAILURE_CLASSES).enumerate() {
        let head = if i == 0 { "examples" } else { "" };
        let what = match f.kind.as_str() {
            "api" => "API error",
            _ => "parse failure",
        };
        out.push((
            head,
            format!(
                "{what} `{}` ({} row{})",
                f.class,
                num(f.rows),
                if f.rows == 1 { "" } else { "s" }
            ),
        ));
        for e in &f.examples {
            let raw = if e.raw.is_empty() {
                String::new()
            } else {
                format!(" answered {}", quoted(&e.raw))
            };
            out.push((
                "",
                format!("  {}{raw}: {}", row_name(e.row, &e.key), e.error),
            ));
        }
    }
    if failures.len() > SHOWN_FAILURE_CLASSES {
        out.push((
            "",
            format!(
                "{} more failure classes (`batchgrader report {job}`)",
                failures.len() - SHOWN_FAILURE_CLASSES
            ),
        ));
    }
    out
}
