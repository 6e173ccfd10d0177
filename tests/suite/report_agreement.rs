//! The report's agreement and failure sections in a real headless browser:
//! a `ReportData` with gold for a three-class field, a binary one and a
//! numeric one, and two failure classes, rendered through the library,
//! laid out by chromium (the page's own check counts what has a size) and
//! painted into a screenshot.

use crate::common;

use batchgrader::agreement::{
    Binary, Categorical, ClassStats, Confusion, Disagreement, FieldAgreement, Kind, Ordinal,
    UnknownGold,
};
use batchgrader::grades::{FailureClass, FailureExample, Tally};
use batchgrader::htmlreport::{ChunkRow, ReportData, render};
use batchgrader::output::Written;
use common::Sandbox;
use common::browser::{attr, dump_dom, png_size, screenshot};
use serde_json::json;

/// A long class name: its matrix heading wraps, its row heading is cut.
const FEATURE: &str = "feature request or product suggestion";

const CATEGORY: [[u64; 3]; 3] = [[14, 2, 1], [1, 12, 3], [2, 1, 8]];
const SEVERITY: [[u64; 5]; 5] = [
    [4, 1, 0, 0, 0],
    [1, 7, 2, 0, 0],
    [0, 2, 6, 1, 0],
    [0, 0, 2, 6, 2],
    [0, 0, 0, 3, 3],
];

fn class(label: &str, support: u64, p: f64, r: f64, f1: f64) -> ClassStats {
    ClassStats {
        label: label.into(),
        support,
        precision: Some(p),
        recall: Some(r),
        f1: Some(f1),
    }
}

fn confusion<const N: usize>(labels: [&str; N], matrix: [[u64; N]; N]) -> Confusion {
    Confusion {
        labels: labels.iter().map(|l| l.to_string()).collect(),
        matrix: matrix.iter().map(|r| r.to_vec()).collect(),
    }
}

fn disagreement(row: u64, gold: &str, judge: &str, raw: &str) -> Disagreement {
    Disagreement {
        row,
        key: format!("T-{row:04}"),
        gold: gold.into(),
        judge: judge.into(),
        raw: raw.into(),
    }
}

fn field(name: &str, kind: Kind) -> FieldAgreement {
    FieldAgreement {
        field: name.into(),
        gold_column: format!("gold_{}", name.trim_start_matches("answer.")),
        kind,
        missing_gold: 8,
        no_grade: 2,
        unknown_gold: vec![],
        categorical: None,
        binary: None,
        ordinal: None,
        notes: vec![],
        disagreements: vec![],
    }
}

fn category() -> FieldAgreement {
    let mut f = field("answer.category", Kind::Categorical);
    f.unknown_gold = vec![UnknownGold {
        value: "biling".into(),
        rows: 2,
    }];
    f.categorical = Some(Categorical {
        n: 44,
        accuracy: 0.7727,
        kappa: Some(0.6531),
        kappa_ci: Some([0.4612, 0.8104]),
        baseline: 0.3864,
        baseline_label: "billing".into(),
        classes: vec![
            class("billing", 17, 0.8235, 0.8235, 0.8235),
            class("bug", 16, 0.8, 0.75, 0.7742),
            class(FEATURE, 11, 0.6667, 0.7273, 0.6957),
        ],
        confusion: confusion(["billing", "bug", FEATURE], CATEGORY),
    });
    f.disagreements = vec![
        disagreement(
            3,
            "billing",
            "bug",
            r#"{"category": "bug", "urgent": false}"#,
        ),
        disagreement(
            11,
            "bug",
            FEATURE,
            &format!(
                "{{\"category\": \"{FEATURE}\", \"why\": \"{}\"}}",
                "the user asks for ".repeat(8)
            ),
        ),
        disagreement(19, FEATURE, "billing", "<b>billing</b>"),
        disagreement(27, "bug", "billing", "billing"),
    ];
    f
}

fn urgent() -> FieldAgreement {
    let mut f = field("answer.urgent", Kind::Categorical);
    f.categorical = Some(Categorical {
        n: 44,
        accuracy: 0.8636,
        kappa: Some(0.6612),
        kappa_ci: Some([0.4105, 0.8633]),
        baseline: 0.75,
        baseline_label: "false".into(),
        classes: vec![
            class("true", 11, 0.6923, 0.8182, 0.75),
            class("false", 33, 0.9355, 0.8788, 0.9063),
        ],
        confusion: confusion(["true", "false"], [[9, 2], [4, 29]]),
    });
    f.binary = Some(Binary {
        positive: "true".into(),
        tpr: Some(0.8182),
        tpr_ci: Some([0.523, 0.9486]),
        tnr: Some(0.8788),
        tnr_ci: Some([0.7263, 0.9518]),
        unlabelled: 8,
        judge_positive_rate: Some(0.25),
        corrected_positive_rate: Some(0.1848),
        corrected_ci: Some([0.0, 0.5214]),
    });
    f.disagreements = vec![
        disagreement(5, "true", "false", r#"{"urgent": false}"#),
        disagreement(8, "false", "true", r#"{"urgent": true}"#),
    ];
    f
}

fn severity() -> FieldAgreement {
    let mut f = field("answer.severity", Kind::Ordinal);
    f.ordinal = Some(Ordinal {
        n: 44,
        exact: 0.5909,
        within_1: 0.9318,
        mae: 0.4773,
        bias: -0.1364,
        weighted_kappa: None,
        spearman: Some(0.8612),
        confusion: Some(confusion(["1", "2", "2.5", "3", "4"], SEVERITY)),
    });
    f.notes = vec!["weighted κ undefined: gold holds 2.5, not an integer".into()];
    f.disagreements = vec![disagreement(2, "2", "1", r#"{"severity": 1}"#)];
    f
}

fn failures() -> Vec<FailureClass> {
    let example = |row: u64, raw: &str, error: &str| FailureExample {
        row,
        key: format!("T-{row:04}"),
        raw: raw.into(),
        error: error.into(),
    };
    vec![
        FailureClass {
            kind: "api".into(),
            class: "400 invalid_request_error".into(),
            rows: 2,
            examples: vec![
                example(14, "", "max_tokens is too large for this model"),
                example(40, "", "max_tokens is too large for this model"),
            ],
        },
        FailureClass {
            kind: "parse".into(),
            class: "not JSON".into(),
            rows: 1,
            examples: vec![example(
                33,
                "Sure! Here is the grade: category = bug",
                "expected value at line 1 column 1",
            )],
        },
    ]
}

fn data() -> ReportData {
    let mut t = Tally::new(Some(&json!({"properties": {
        "severity": {"type": "integer"},
        "category": {"enum": ["billing", "bug", FEATURE]}}})));
    for i in 0..57u64 {
        let category = ["billing", "bug", FEATURE][(i % 3) as usize];
        t.add(&json!({"severity": 1 + i % 4, "category": category}));
    }
    t.fail("not JSON");
    ReportData {
        job: "support-tickets".into(),
        model: "gpt-4o-mini".into(),
        generated_at: "2025-01-01T00:00:00Z".into(),
        rows: 60,
        grades: t.properties(),
        parse_failures_by_reason: t.failures(),
        api_failures_by_code: vec![("400 invalid_request_error".into(), 2)],
        written: Written {
            rows: 60,
            ok: 57,
            parse_errors: 1,
            failed: 2,
            not_graded: 0,
        },
        chunks: vec![ChunkRow {
            id: 1,
            attempt: 1,
            requests: 60,
            completed: 58,
            failed: 2,
            state: "completed".into(),
            submitted_at: Some(1000),
            ended_at: Some(1300),
            ..ChunkRow::default()
        }],
        agreement: vec![category(), urgent(), severity()],
        failures: failures(),
        ..ReportData::default()
    }
}

/// Bars with an area: every `<rect class="bar` tag less those drawn for a zero.
fn nonzero_bars(dom: &str) -> usize {
    dom.split("<rect class=\"bar")
        .skip(1)
        .map(|rest| &rest[..rest.find('>').unwrap()])
        .filter(|tag| !tag.contains("data-count=\"0\"") && !tag.contains("data-value=\"0\""))
        .count()
}

#[test]
fn agreement_and_failures_render_in_a_headless_browser() {
    let sb = Sandbox::new();
    let page = sb.write("site/report.html", render(&data()));
    let dom = dump_dom(&sb.path("profile"), &page);

    // The page's own check: every chart, bar and matrix cell has a size,
    // and nothing makes the page wider than the window.
    let charts = dom.matches("<svg class=\"chart\"").count();
    // severity, category, failures, timing, and per class for category and urgent.
    assert_eq!(charts, 6, "{dom}");
    assert_eq!(attr(&dom, "data-rendered-charts"), charts.to_string());
    assert_eq!(
        attr(&dom, "data-rendered-bars"),
        nonzero_bars(&dom).to_string()
    );
    let cells = 3 * 3 + 2 * 2 + 5 * 5;
    assert_eq!(dom.matches("class=\"n cell").count(), cells);
    assert_eq!(attr(&dom, "data-rendered-cells"), cells.to_string());
    assert_eq!(attr(&dom, "data-overflow-x"), "0");

    headline_numbers(&dom);
    confusion_cells(&dom);
    rows_shown(&dom);

    // And it paints: the whole page in one real, sizeable image.
    let size = (1100, 4400);
    let png = screenshot(&sb.path("profile2"), &page, &sb.path("shot.png"), size);
    assert_eq!(png_size(&png), size);
    assert!(png.len() > 100_000, "{} bytes", png.len());
}

fn headline_numbers(dom: &str) {
    for needle in [
        "data-field=\"answer.category\" data-key=\"accuracy\" data-value=\"0.7727\">77.3%<",
        "data-field=\"answer.category\" data-key=\"kappa\" data-value=\"0.6531\" \
         data-lo=\"0.4612\" data-hi=\"0.8104\">0.65 ",
        "data-field=\"answer.category\" data-key=\"missing_gold\" data-value=\"8\">8<",
        "data-unknown-gold=\"biling\" data-rows=\"2\"",
        "data-field=\"answer.urgent\" data-key=\"tpr\" data-value=\"0.8182\" data-lo=\"0.523\" \
         data-hi=\"0.9486\">81.8% ",
        "data-field=\"answer.urgent\" data-key=\"corrected_positive_rate\" data-value=\"0.1848\" \
         data-lo=\"0\" data-hi=\"0.5214\">18.5% ",
        "data-field=\"answer.severity\" data-key=\"bias\" data-value=\"-0.1364\">-0.14<",
        "data-field=\"answer.severity\" data-key=\"weighted_kappa\" data-undefined=\"true\"",
        ">Weighted κ undefined: gold holds 2.5, not an integer.<",
        "rect class=\"bar f1\" data-field=\"answer.category\" data-class=\"bug\" \
         data-key=\"f1\" data-value=\"0.7742\"",
    ] {
        assert!(dom.contains(needle), "missing {needle}");
    }
    assert!(!dom.contains("NaN"));
}

/// Every count of both matrices and the heat table, the diagonal marked.
fn confusion_cells(dom: &str) {
    has_matrix(
        dom,
        "answer.category",
        &["billing", "bug", FEATURE],
        &CATEGORY,
    );
    has_matrix(dom, "answer.urgent", &["true", "false"], &[[9, 2], [4, 29]]);
    has_matrix(
        dom,
        "answer.severity",
        &["1", "2", "2.5", "3", "4"],
        &SEVERITY,
    );
    // Three classes, one with a long name: the headings wrap upright.
    assert!(dom.contains("class=\"matrix\" data-field=\"answer.category\""));
}

fn has_matrix<const N: usize>(dom: &str, field: &str, labels: &[&str; N], matrix: &[[u64; N]; N]) {
    for (gold, row) in labels.iter().zip(matrix) {
        for (judge, n) in labels.iter().zip(row) {
            let class = match (gold == judge, *n == 0) {
                (true, _) => " diag",
                (false, true) => " zero",
                (false, false) => "",
            };
            let cell = format!(
                "class=\"n cell{class}\" data-field=\"{field}\" data-gold=\"{gold}\" \
                 data-judge=\"{judge}\" data-count=\"{n}\""
            );
            assert!(dom.contains(&cell), "missing {cell}");
        }
    }
}

/// The disagreeing rows and the failure examples, escaped.
fn rows_shown(dom: &str) {
    for (field, rows) in [
        ("answer.category", &[3, 11, 19, 27][..]),
        ("answer.urgent", &[5, 8]),
        ("answer.severity", &[2]),
    ] {
        assert_eq!(
            dom.matches(&format!("<tr data-field=\"{field}\" data-row="))
                .count(),
            rows.len(),
            "{field}"
        );
        for row in rows {
            let tr = format!(
                "<tr data-field=\"{field}\" data-row=\"{row}\"><td data-key=\"key\">T-{row:04}</td>"
            );
            assert!(dom.contains(&tr), "missing {tr}");
        }
    }
    assert!(dom.contains("&lt;b&gt;billing&lt;/b&gt;"));
    for (kind, class, rows) in [
        ("api", "400 invalid_request_error", &[14, 40][..]),
        ("parse", "not JSON", &[33]),
    ] {
        for row in rows {
            let tr = format!("<tr data-kind=\"{kind}\" data-class=\"{class}\" data-row=\"{row}\">");
            assert!(dom.contains(&tr), "missing {tr}");
        }
    }
}
