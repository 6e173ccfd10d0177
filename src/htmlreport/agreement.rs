//! The report's "Agreement with gold" section: per graded field, the
//! headline numbers, the confusion matrix (or the ordinal heat table), the
//! per-class chart and the disagreeing rows. Every number cell carries
//! `data-field` and `data-key` (and `data-value`, rounded to 4 places) so a
//! test finds it without parsing the shown text.

use std::fmt::Write as _;

use super::{esc, num};
use crate::agreement::{
    Binary, Categorical, ClassStats, Confusion, Disagreement, FieldAgreement, Interval, Kind,
    Ordinal,
};

/// Why each metric can be undefined, in general, for the title of its "—";
/// the field's notes, shown below its numbers, say why for the job at hand.
const WHY_KAPPA: &str = "undefined: gold and judge use one and the same class only";
const WHY_TPR: &str = "undefined: no gold row is positive";
const WHY_TNR: &str = "undefined: no gold row is negative";
const WHY_JUDGE_RATE: &str = "undefined: no graded row without gold";
const WHY_CORRECTED: &str =
    "undefined: no graded row without gold, or the judge is no better than chance (TPR + TNR ≤ 1)";
const WHY_WEIGHTED: &str = "undefined: a value is not an integer, the scale is too wide, \
                            or there is one value only";
const WHY_SPEARMAN: &str = "undefined: gold or judge is constant, or fewer than 2 rows";
const WHY_PRECISION: &str = "undefined: the judge never answered this class";
const WHY_RECALL: &str = "undefined: no gold row is of this class";
const WHY_F1: &str = "undefined: precision or recall is undefined, or both are 0";

/// How a number is shown.
#[derive(Clone, Copy)]
enum Fmt {
    /// A share of rows, as a percentage.
    Share,
    /// A coefficient (κ, ρ) or an error in the field's units.
    Coef,
    /// A mean signed difference: the sign is the point.
    Signed,
}

impl Fmt {
    fn show(self, x: f64) -> String {
        match self {
            Fmt::Share => format!("{:.1}%", x * 100.0),
            Fmt::Coef => format!("{x:.2}"),
            Fmt::Signed => format!("{x:+.2}"),
        }
    }
}

/// The section, when any field has a gold column.
pub(super) fn section(h: &mut String, fields: &[FieldAgreement]) {
    if fields.is_empty() {
        return;
    }
    h.push_str("<h2 id=\"agreement\">Agreement with gold</h2>\n");
    for f in fields {
        field(h, f);
    }
}

fn field(h: &mut String, f: &FieldAgreement) {
    let name = esc(&f.field);
    let _ = writeln!(
        h,
        "<section class=\"agree\" data-field=\"{name}\" data-kind=\"{}\">\
         <h3>{name} <span class=\"sub\">against gold column {}</span></h3>",
        kind_name(f.kind),
        esc(&f.gold_column)
    );
    h.push_str("<div class=\"grid\">");
    headline(h, f);
    if let Some(c) = &f.categorical {
        matrix(h, &f.field, &c.confusion, "confusion");
    }
    if let Some(c) = f.ordinal.as_ref().and_then(|o| o.confusion.as_ref()) {
        matrix(h, &f.field, c, "heat");
    }
    h.push_str("</div>\n");
    notes(h, f);
    if let Some(c) = &f.categorical {
        class_chart(h, &f.field, &c.classes);
    }
    disagreements(h, &f.field, &f.disagreements);
    h.push_str("</section>\n");
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Categorical => "categorical",
        Kind::Ordinal => "ordinal",
    }
}

/// The headline numbers of one field, one row each.
fn headline(h: &mut String, f: &FieldAgreement) {
    h.push_str("<table class=\"headline\">");
    let mut t = Rows { h, field: &f.field };
    t.count("n", "rows compared", f.n());
    if let Some(c) = &f.categorical {
        categorical_rows(&mut t, c);
    }
    if let Some(b) = &f.binary {
        binary_rows(&mut t, b);
    }
    if let Some(o) = &f.ordinal {
        ordinal_rows(&mut t, o);
    }
    t.count("missing_gold", "rows without gold", f.missing_gold);
    t.count("no_grade", "gold without a grade", f.no_grade);
    h.push_str("</table>");
}

fn categorical_rows(t: &mut Rows, c: &Categorical) {
    t.value(
        "accuracy",
        "accuracy",
        Some(c.accuracy),
        Fmt::Share,
        None,
        "",
    );
    t.value(
        "kappa",
        "Cohen's κ",
        c.kappa,
        Fmt::Coef,
        c.kappa_ci,
        WHY_KAPPA,
    );
    let label = format!("majority baseline (always “{}”)", esc(&c.baseline_label));
    t.value("baseline", &label, Some(c.baseline), Fmt::Share, None, "");
}

fn binary_rows(t: &mut Rows, b: &Binary) {
    let pos = esc(&b.positive);
    let label = format!("sensitivity (TPR, positive “{pos}”)");
    t.value("tpr", &label, b.tpr, Fmt::Share, b.tpr_ci, WHY_TPR);
    t.value(
        "tnr",
        "specificity (TNR)",
        b.tnr,
        Fmt::Share,
        b.tnr_ci,
        WHY_TNR,
    );
    t.count("unlabelled", "graded rows without gold", b.unlabelled);
    let label = format!("judge's “{pos}” rate there");
    t.value(
        "judge_positive_rate",
        &label,
        b.judge_positive_rate,
        Fmt::Share,
        None,
        WHY_JUDGE_RATE,
    );
    t.value(
        "corrected_positive_rate",
        "corrected for TPR and TNR",
        b.corrected_positive_rate,
        Fmt::Share,
        b.corrected_ci,
        WHY_CORRECTED,
    );
}

fn ordinal_rows(t: &mut Rows, o: &Ordinal) {
    t.value("exact", "exact", Some(o.exact), Fmt::Share, None, "");
    t.value(
        "within_1",
        "within ±1",
        Some(o.within_1),
        Fmt::Share,
        None,
        "",
    );
    t.value(
        "mae",
        "mean absolute error",
        Some(o.mae),
        Fmt::Coef,
        None,
        "",
    );
    t.value(
        "bias",
        "bias (judge − gold)",
        Some(o.bias),
        Fmt::Signed,
        None,
        "",
    );
    t.value(
        "weighted_kappa",
        "weighted κ (quadratic)",
        o.weighted_kappa,
        Fmt::Coef,
        None,
        WHY_WEIGHTED,
    );
    t.value(
        "spearman",
        "Spearman's ρ",
        o.spearman,
        Fmt::Coef,
        None,
        WHY_SPEARMAN,
    );
}

/// Rows of the headline table of one field. Labels are already escaped.
struct Rows<'a> {
    h: &'a mut String,
    field: &'a str,
}

impl Rows<'_> {
    fn count(&mut self, key: &str, label: &str, n: u64) {
        let _ = write!(
            self.h,
            "<tr><th>{label}</th><td class=\"n\" data-field=\"{}\" data-key=\"{key}\" \
             data-value=\"{n}\">{}</td></tr>",
            esc(self.field),
            num(n)
        );
    }

    /// A number with its 95% interval; "—" with `why` as its title when it
    /// is undefined (or, from a careless caller, not finite).
    fn value(
        &mut self,
        key: &str,
        label: &str,
        x: Option<f64>,
        fmt: Fmt,
        ci: Option<Interval>,
        why: &str,
    ) {
        let field = esc(self.field);
        let _ = write!(self.h, "<tr><th>{label}</th>");
        match x.filter(|x| x.is_finite()) {
            Some(x) => {
                let _ = write!(
                    self.h,
                    "<td class=\"n\" data-field=\"{field}\" data-key=\"{key}\" data-value=\"{}\"{}>{}{}</td></tr>",
                    four(x),
                    ci_attrs(ci),
                    fmt.show(x),
                    ci_text(ci, fmt)
                );
            }
            None => {
                let _ = write!(
                    self.h,
                    "<td class=\"n undef\" data-field=\"{field}\" data-key=\"{key}\" \
                     data-undefined=\"true\" title=\"{}\">—</td></tr>",
                    esc(why)
                );
            }
        }
    }
}

fn finite(ci: Option<Interval>) -> Option<Interval> {
    ci.filter(|[lo, hi]| lo.is_finite() && hi.is_finite())
}

fn ci_attrs(ci: Option<Interval>) -> String {
    finite(ci).map_or_else(String::new, |[lo, hi]| {
        format!(" data-lo=\"{}\" data-hi=\"{}\"", four(lo), four(hi))
    })
}

fn ci_text(ci: Option<Interval>, fmt: Fmt) -> String {
    finite(ci).map_or_else(String::new, |[lo, hi]| {
        // A signed format would print "+0.52 – +0.86"; intervals read plainer.
        let fmt = if matches!(fmt, Fmt::Signed) {
            Fmt::Coef
        } else {
            fmt
        };
        format!(
            " <span class=\"ci\">95% CI {} – {}</span>",
            fmt.show(lo),
            fmt.show(hi)
        )
    })
}

/// A value for `data-value`: 4 places, trailing zeros dropped.
fn four(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// Unknown gold values and the notes, as sentences under the numbers.
fn notes(h: &mut String, f: &FieldAgreement) {
    if !f.unknown_gold.is_empty() {
        let named: Vec<String> = f
            .unknown_gold
            .iter()
            .map(|u| {
                format!(
                    "<span class=\"unknown\" data-field=\"{}\" data-unknown-gold=\"{}\" \
                     data-rows=\"{}\">“{}” ({} {})</span>",
                    esc(&f.field),
                    esc(&u.value),
                    u.rows,
                    esc(&u.value),
                    num(u.rows),
                    if u.rows == 1 { "row" } else { "rows" }
                )
            })
            .collect();
        let _ = writeln!(
            h,
            "<p class=\"note\">Gold values that are not among the field's classes, left out: {}.</p>",
            named.join(", ")
        );
    }
    for n in &f.notes {
        let _ = writeln!(
            h,
            "<p class=\"note\" data-note=\"{}\">{}</p>",
            esc(&f.field),
            esc(&sentence(n))
        );
    }
}

/// A note as a sentence: a capital first letter and a full stop. Only a
/// Latin letter is raised: a note may start with a symbol (κ), and Κ is
/// another one.
pub(super) fn sentence(note: &str) -> String {
    let note = note.trim();
    let mut s = String::with_capacity(note.len() + 1);
    let mut chars = note.chars();
    s.extend(chars.next().map(|c| c.to_ascii_uppercase()));
    s.extend(chars);
    if !s.is_empty() && !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    s
}

/// Gold × judge counts, each cell shaded by its share of the gold row
/// (a class with few rows is as legible as a big one), the diagonal
/// outlined. `what`: `confusion` (categorical) or `heat` (ordinal).
fn matrix(h: &mut String, field: &str, c: &Confusion, what: &str) {
    let field = esc(field);
    let upright = upright_heads(&c.labels);
    let _ = write!(
        h,
        "<figure class=\"matrix\"><figcaption>{}</figcaption><div class=\"scroll\">\
         <table class=\"matrix{}\" data-field=\"{field}\" data-matrix=\"{what}\">\
         <tr><th class=\"corner\">gold ↓ judge →</th>",
        if what == "heat" {
            "gold × judge"
        } else {
            "confusion matrix"
        },
        if upright { "" } else { " tall" }
    );
    for l in &c.labels {
        let _ = write!(
            h,
            "<th class=\"lab col\" title=\"{}\"><span>{}</span></th>",
            esc(l),
            esc(&clip_middle(l, if upright { 40 } else { 24 }))
        );
    }
    h.push_str("<th class=\"n\">gold rows</th></tr>");
    for (i, (gold, row)) in c.labels.iter().zip(&c.matrix).enumerate() {
        let total: u64 = row.iter().sum();
        let _ = write!(
            h,
            "<tr><th class=\"lab row\" title=\"{}\">{}</th>",
            esc(gold),
            esc(&clip_middle(gold, 28))
        );
        for (j, (judge, n)) in c.labels.iter().zip(row).enumerate() {
            matrix_cell(h, &field, (gold, judge), *n, total, i == j);
        }
        let _ = write!(
            h,
            "<td class=\"n total\" data-field=\"{field}\" data-gold=\"{}\" data-key=\"gold_rows\" \
             data-value=\"{total}\">{}</td></tr>",
            esc(gold),
            num(total)
        );
    }
    h.push_str("</table></div></figure>");
}

/// Whether the column headings fit side by side (each wraps within about
/// 14 characters); otherwise they are set on their side, so fifteen long
/// class names still make a table about as wide as it is tall rather than
/// one wider than the page.
pub(super) fn upright_heads(labels: &[String]) -> bool {
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    labels.len() * (longest.clamp(4, 14) + 2) <= 90
}

/// `label` cut to `max` characters by taking out its middle: class names
/// often share a beginning ("category 1", "category 2") and differ at the end.
pub(super) fn clip_middle(label: &str, max: usize) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= max {
        return label.to_string();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let mut s: String = chars[..head].iter().collect();
    s.push('…');
    s.extend(&chars[chars.len() - tail..]);
    s
}

fn matrix_cell(
    h: &mut String,
    field: &str,
    (gold, judge): (&str, &str),
    n: u64,
    total: u64,
    diag: bool,
) {
    let share = if total == 0 {
        0.0
    } else {
        n as f64 / total as f64
    };
    let (gold, judge) = (esc(gold), esc(judge));
    let _ = write!(
        h,
        "<td class=\"n cell{}{}\" data-field=\"{field}\" data-gold=\"{gold}\" data-judge=\"{judge}\" \
         data-count=\"{n}\" data-share=\"{}\" style=\"{}\" \
         title=\"gold {gold}, judge {judge}: {} of {} ({:.0}%)\">{}</td>",
        if diag { " diag" } else { "" },
        if n == 0 { " zero" } else { "" },
        four(share),
        shade(share),
        num(n),
        num(total),
        share * 100.0,
        num(n)
    );
}

/// The cell's background: the chart blue at an opacity of its share, with
/// white text once the blue is dark enough that grey would not read.
fn shade(share: f64) -> String {
    if share <= 0.0 {
        return String::new();
    }
    let alpha = 0.08 + 0.84 * share;
    let ink = if alpha > 0.55 { "color:#fff;" } else { "" };
    format!("background:rgba(48,110,190,{alpha:.2});{ink}")
}

/// Precision, recall and F1 of each class as grouped horizontal bars on a
/// 0..1 scale, with each class's support beside its name.
fn class_chart(h: &mut String, field: &str, classes: &[ClassStats]) {
    if classes.is_empty() {
        return;
    }
    let (left, bar_w, bar_h, group) = (200.0, 300.0, 10.0, 50.0);
    let (top, width) = (22.0, left + bar_w + 110.0);
    let height = top + group * classes.len() as f64 + 20.0;
    let field = esc(field);
    let _ = write!(
        h,
        "<figure data-chart=\"classes\" data-field=\"{field}\"><figcaption>per class</figcaption>\
         <svg class=\"chart\" data-chart=\"classes\" data-field=\"{field}\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"{field} precision, recall and F1 per class\">"
    );
    legend(h, left);
    for (i, c) in classes.iter().enumerate() {
        let y = top + group * i as f64;
        class_rows(h, &field, c, (left, bar_w, bar_h), y);
    }
    let axis_y = top + group * classes.len() as f64;
    let _ = writeln!(
        h,
        "<line class=\"axis\" x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{axis_y}\"/>\
         <text x=\"{left}\" y=\"{0}\" text-anchor=\"middle\">0</text>\
         <text x=\"{1}\" y=\"{0}\" text-anchor=\"middle\">0.5</text>\
         <text x=\"{2}\" y=\"{0}\" text-anchor=\"middle\">1</text></svg></figure>",
        axis_y + 14.0,
        left + bar_w / 2.0,
        left + bar_w
    );
}

/// Which colour is which metric, above the bars. Its swatches are not
/// `.bar`s: the page's check counts bars, and these are no data.
fn legend(h: &mut String, left: f64) {
    for (k, (class, name)) in [("p", "precision"), ("r", "recall"), ("f1", "F1")]
        .iter()
        .enumerate()
    {
        let x = left + k as f64 * 90.0;
        let _ = write!(
            h,
            "<rect class=\"swatch {class}\" x=\"{x}\" y=\"4\" width=\"10\" height=\"10\"/>\
             <text x=\"{}\" y=\"13\">{name}</text>",
            x + 14.0
        );
    }
}

/// One class: its name and support on the left, three bars on the right.
fn class_rows(h: &mut String, field: &str, c: &ClassStats, geom: (f64, f64, f64), y: f64) {
    let (left, bar_w, bar_h) = geom;
    let shown = clip_middle(&c.label, 30);
    let _ = write!(
        h,
        "<text x=\"{0}\" y=\"{1}\" text-anchor=\"end\"><title>{2}</title>{3}</text>\
         <text x=\"{0}\" y=\"{4}\" text-anchor=\"end\" data-field=\"{field}\" data-class=\"{2}\" \
         data-key=\"support\" data-value=\"{5}\">{6} gold</text>",
        left - 8.0,
        y + 18.0,
        esc(&c.label),
        esc(&shown),
        y + 32.0,
        c.support,
        num(c.support)
    );
    let metrics = [
        ("precision", "p", "precision", c.precision, WHY_PRECISION),
        ("recall", "r", "recall", c.recall, WHY_RECALL),
        ("f1", "f1", "F1", c.f1, WHY_F1),
    ];
    for (k, (key, class, name, x, why)) in metrics.into_iter().enumerate() {
        let by = y + 4.0 + k as f64 * (bar_h + 3.0);
        let at = Bar {
            field,
            label: &c.label,
            key,
            class,
            name,
            left,
            bar_w,
            y: by,
            h: bar_h,
        };
        at.draw(h, x, why);
    }
}

/// One metric bar of one class.
struct Bar<'a> {
    field: &'a str,
    label: &'a str,
    key: &'a str,
    class: &'a str,
    /// The metric's name, written where there is no bar to show its colour.
    name: &'a str,
    left: f64,
    bar_w: f64,
    y: f64,
    h: f64,
}

impl Bar<'_> {
    fn draw(&self, h: &mut String, x: Option<f64>, why: &str) {
        let label = esc(self.label);
        let (key, ty) = (self.key, self.y + self.h - 1.0);
        let Some(x) = x.filter(|x| x.is_finite()) else {
            let _ = write!(
                h,
                "<text class=\"undef\" x=\"{:.1}\" y=\"{ty}\" data-field=\"{}\" data-class=\"{label}\" \
                 data-key=\"{key}\" data-undefined=\"true\"><title>{}</title>{}: —</text>",
                self.left + 4.0,
                self.field,
                esc(why),
                self.name
            );
            return;
        };
        let w = x.clamp(0.0, 1.0) * self.bar_w;
        let shown = if w > 0.0 {
            Fmt::Coef.show(x)
        } else {
            format!("{}: {}", self.name, Fmt::Coef.show(x))
        };
        let _ = write!(
            h,
            "<rect class=\"bar {}\" data-field=\"{}\" data-class=\"{label}\" data-key=\"{key}\" \
             data-value=\"{}\" x=\"{}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\">\
             <title>{label} {key}: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{ty}\">{}</text>",
            self.class,
            self.field,
            four(x),
            self.left,
            self.y,
            self.h,
            Fmt::Coef.show(x),
            self.left + w + 4.0,
            shown
        );
    }
}

/// The rows where judge and gold differ (the first few of each pair).
fn disagreements(h: &mut String, field: &str, rows: &[Disagreement]) {
    if rows.is_empty() {
        return;
    }
    let field = esc(field);
    let _ = write!(
        h,
        "<details class=\"rows\" open><summary>Disagreements ({} shown, the first few of each gold–judge pair)</summary>\
         <div class=\"scroll\"><table class=\"disagree\" data-field=\"{field}\">\
         <tr><th>row</th><th>gold</th><th>judge</th><th>raw answer</th></tr>",
        rows.len()
    );
    for r in rows {
        let _ = write!(
            h,
            "<tr data-field=\"{field}\" data-row=\"{}\"><td data-key=\"key\">{}</td>\
             <td data-key=\"gold\">{}</td><td data-key=\"judge\">{}</td><td class=\"raw\">{}</td></tr>",
            r.row,
            esc(&r.key),
            esc(&r.gold),
            esc(&r.judge),
            esc(&r.raw)
        );
    }
    h.push_str("</table></div></details>\n");
}
