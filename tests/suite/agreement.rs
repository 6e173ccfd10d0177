//! Gold values (`output.gold`): agreement computed from the run, checked
//! number for number against a computation of our own from the output
//! file and the gold column; gold edits that send nothing again; the
//! quality gate halting a run mid-way and failing a finished one.

use std::collections::HashMap;

use serde_json::Value;

use crate::common::Sandbox;
use crate::common::jobs::{Job, OpenAi, batches};
use crate::common::sim::Server;

/// `rows` rows (`id`, `text`, `expected`): `expected` empty for every
/// tenth row, `seven` (not a number) in row 4, otherwise `gold(i)`.
fn input(rows: usize, gold: impl Fn(usize) -> u64) -> String {
    let mut csv = String::from("id,text,expected\n");
    for i in 1..=rows {
        let g = match i {
            4 => "seven".to_string(),
            _ if i % 10 == 0 => String::new(),
            _ => gold(i).to_string(),
        };
        csv.push_str(&format!("r{i:03},answer number {i},{g}\n"));
    }
    csv
}

/// The output file's rows, by column name.
fn output_rows(sb: &Sandbox) -> Vec<HashMap<String, String>> {
    let text = sb.read("out/graded.csv");
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .cloned()
                .zip(r.iter().map(String::from))
                .collect()
        })
        .collect()
}

/// Exact agreement, within 1, MAE and bias from the output file alone.
fn recompute(rows: &[HashMap<String, String>]) -> (u64, f64, f64, f64, f64) {
    let pairs: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r["grade_status"] == "ok")
        .filter_map(|r| {
            Some((
                r["expected"].trim().parse::<f64>().ok()?,
                r["grade"].parse::<f64>().ok()?,
            ))
        })
        .collect();
    let n = pairs.len() as f64;
    let exact = pairs.iter().filter(|(g, j)| g == j).count() as f64 / n;
    let within = pairs.iter().filter(|(g, j)| (g - j).abs() <= 1.0).count() as f64 / n;
    let mae = pairs.iter().map(|(g, j)| (j - g).abs()).sum::<f64>() / n;
    let bias = pairs.iter().map(|(g, j)| j - g).sum::<f64>() / n;
    (pairs.len() as u64, exact, within, mae, bias)
}

fn close(a: &Value, b: f64, what: &str) {
    let a = a.as_f64().unwrap_or_else(|| panic!("{what}: {a}"));
    assert!((a - b).abs() < 1e-9, "{what}: {a} vs {b}");
}

fn check_against_output(sb: &Sandbox, summary: &Value) {
    let a = &summary["agreement"][0];
    assert_eq!(a["field"], "grade", "{a}");
    assert_eq!(a["gold_column"], "expected");
    assert_eq!(a["kind"], "ordinal");
    let rows = output_rows(sb);
    let (n, exact, within, mae, bias) = recompute(&rows);
    assert_eq!(a["n"], n, "{a}");
    close(&a["exact"], exact, "exact");
    close(&a["within_1"], within, "within_1");
    close(&a["mae"], mae, "mae");
    close(&a["bias"], bias, "bias");
    // Rows without gold, and the typo named, not compared.
    let empty = rows.iter().filter(|r| r["expected"].is_empty()).count();
    assert_eq!(a["missing_gold"], empty as u64);
    assert_eq!(a["unknown_gold"][0]["value"], "seven", "{a}");
    // The agrees column says the same, row by row.
    for r in &rows {
        let want = match (r["expected"].parse::<f64>(), r["grade"].parse::<f64>()) {
            (Ok(g), Ok(j)) if r["grade_status"] == "ok" => (g == j).to_string(),
            _ => String::new(),
        };
        assert_eq!(r["grade_agrees"], want, "{r:?}");
    }
}

#[test]
fn agreement_matches_the_output_and_a_gold_edit_sends_nothing() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    sb.write("in.csv", input(60, |i| (i % 11) as u64));
    let job = Job::new(OpenAi, "gold", &server.url);
    let yaml = job
        .yaml("")
        .replace("  parse: number\n", "  parse: number\n  gold: expected\n");
    sb.write("job.yaml", yaml);
    let run = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let first = run.json();
    check_against_output(&sb, &first);
    assert!(run.stderr.contains("grade vs expected"), "{}", run.stderr);
    let made = batches(&server.stats()).len();

    // New gold values: nothing is sent again, the agreement follows them.
    sb.write("in.csv", input(60, |i| (i % 3) as u64));
    let again = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    let second = again.json();
    assert_eq!(
        batches(&server.stats()).len(),
        made,
        "a gold edit sent requests"
    );
    assert_eq!(second["already_graded_before"], 60, "{second}");
    check_against_output(&sb, &second);
    assert_ne!(first["agreement"][0]["mae"], second["agreement"][0]["mae"]);

    // Every disagreement, and only those, through export.
    let export = sb.run(&["export", "gold", "--disagreements", "--out", "differ.csv"]);
    assert_eq!(export.code, 0, "{export:?}");
    let text = sb.read("differ.csv");
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let listed = rdr.records().count();
    let want = output_rows(&sb)
        .iter()
        .filter(|r| r["grade_agrees"] == "false")
        .count();
    assert!(want > 0);
    assert_eq!(listed, want, "{text}");
    // Without --out it refuses: the job's output holds every row.
    let bare = sb.run(&["export", "gold", "--disagreements"]);
    assert_eq!(bare.code, 2, "{bare:?}");
    assert!(bare.stderr.contains("--out"), "{}", bare.stderr);
}

/// A gate the judge cannot pass: after the first batch's merge the run
/// halts, and nothing more is submitted.
#[test]
fn the_quality_gate_halts_a_run_mid_way() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    sb.write("in.csv", input(50, |i| (i * 7 % 11) as u64));
    let job = Job::new(OpenAi, "gate", &server.url).chunk(10).in_flight(1);
    let yaml = job
        .yaml("halt:\n  min_kappa: 0.95\n  min_gold_rows: 5\n")
        .replace("  parse: number\n", "  parse: number\n  gold: expected\n");
    sb.write("job.yaml", yaml);
    let run = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(run.code, 4, "{run:?}");
    let s = run.json();
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("quality gate") && msg.contains("halt.min_kappa 0.950"),
        "{s}"
    );
    assert_eq!(
        batches(&server.stats()).len(),
        1,
        "submitted after the gate failed"
    );
    assert_eq!(
        s["graded"].as_u64().unwrap() + s["parse_failures"].as_u64().unwrap(),
        10,
        "{s}"
    );
}

/// The same gate judged only at the end (more gold rows needed than a
/// batch holds, so no halt): the job finishes and exits 6.
#[test]
fn a_finished_job_under_the_gate_exits_6() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    sb.write("in.csv", input(30, |i| (i * 7 % 11) as u64));
    let job = Job::new(OpenAi, "gate-end", &server.url).chunk(30);
    let yaml = job
        .yaml("halt:\n  min_accuracy: 99%\n  min_gold_rows: 5\n")
        .replace("  parse: number\n", "  parse: number\n  gold: expected\n");
    sb.write("job.yaml", yaml);
    let run = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(run.code, 6, "{run:?}");
    let s = run.json();
    assert_eq!(s["ending"], "finished", "{s}");
    assert_eq!(s["gate"]["verdict"], "failed", "{s}");
    assert!(
        s["gate"]["message"]
            .as_str()
            .unwrap()
            .contains("halt.min_accuracy 99.0%"),
        "{s}"
    );
    assert!(run.stderr.contains("FAILED"), "{}", run.stderr);
    // `status` keeps the verdict, and its exit status says it too.
    let status = sb.run(&["status", "gate-end", "--exit-status"]);
    assert_eq!(status.code, 6, "{status:?}");
    assert!(
        status.stderr.contains("FAILED: grade: accuracy"),
        "{}",
        status.stderr
    );
}

/// Cohen's κ from (gold, judge) pairs, written out here from its
/// definition (Cohen 1960), as a check independent of the binary's code.
fn kappa(pairs: &[(String, String)]) -> f64 {
    let n = pairs.len() as f64;
    let mut labels: Vec<&String> = pairs.iter().flat_map(|(g, j)| [g, j]).collect();
    labels.sort();
    labels.dedup();
    let po = pairs.iter().filter(|(g, j)| g == j).count() as f64 / n;
    let pe: f64 = labels
        .iter()
        .map(|l| {
            let g = pairs.iter().filter(|(g, _)| g == *l).count() as f64 / n;
            let j = pairs.iter().filter(|(_, j)| j == *l).count() as f64 / n;
            g * j
        })
        .sum();
    (po - pe) / (1.0 - pe)
}

const LABELS: [&str; 3] = ["billing", "bug", "feature"];

/// A label job with gold labels against the standalone server answering
/// labels: κ and accuracy as the output file says, the report's confusion
/// matrix and disagreements drawn in a headless browser, `status` showing
/// the same numbers.
#[test]
fn a_label_job_agrees_as_its_output_says_and_the_report_draws_it() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--labels", "billing,bug,feature"]);
    let mut csv = String::from("id,text,expected\n");
    for i in 1..=90 {
        // Two thirds of the rows name their label (the simulator answers
        // it), the rest name none; gold is the named label, or a guess.
        let named = LABELS[i % 3];
        let text = if i % 3 == 0 {
            format!("ticket {i} with no keyword")
        } else {
            format!("ticket {i} about {named}")
        };
        let gold = if i % 9 == 0 { "" } else { named };
        csv.push_str(&format!("t{i},{text},{gold}\n"));
    }
    sb.write("in.csv", csv);
    let yaml = Job::new(OpenAi, "labels", &server.url)
        .chunk(30)
        .yaml("")
        .replace(
            "  parse: number\n",
            "  parse: label\n  labels: [billing, bug, feature]\n  gold: expected\n",
        );
    sb.write("job.yaml", yaml);
    let run = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert!(run.code == 0 || run.code == 3, "{run:?}");
    let s = run.json();
    let a = &s["agreement"][0];
    assert_eq!(a["kind"], "categorical", "{a}");
    let rows = output_rows(&sb);
    let pairs: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["grade_status"] == "ok" && !r["expected"].is_empty())
        .map(|r| (r["expected"].clone(), r["grade"].clone()))
        .collect();
    assert_eq!(a["n"], pairs.len() as u64);
    let same = pairs.iter().filter(|(g, j)| g == j).count() as f64 / pairs.len() as f64;
    close(&a["accuracy"], same, "accuracy");
    close(&a["kappa"], kappa(&pairs), "kappa");
    let ci = a["kappa_ci"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(lo <= kappa(&pairs) && kappa(&pairs) <= hi, "{a}");
    // The confusion matrix adds up to n, its diagonal to the agreements.
    let m = a["confusion"]["matrix"].as_array().unwrap();
    let total: u64 = m
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(total, pairs.len() as u64);
    assert!(!a["disagreements"].as_array().unwrap().is_empty(), "{a}");

    // `status` says the same after the run.
    let status = sb.run(&["status", "labels", "--json"]);
    assert_eq!(
        status.json()["quality"]["agreement"][0]["kappa"],
        a["kappa"]
    );
    let text = sb.run(&["status", "labels"]);
    assert!(text.stderr.contains("grade vs expected"), "{}", text.stderr);

    // The report draws the matrix (3 × 3 cells) and the disagreements.
    let report = sb.run(&["report", "labels", "--out", "site/r.html"]);
    assert_eq!(report.code, 0, "{report:?}");
    let page = sb.path("site/r.html");
    let dom = crate::common::browser::dump_dom(&sb.path("profile"), &page);
    assert_eq!(dom.matches("data-judge=").count(), 9, "confusion cells");
    let first = &a["disagreements"][0];
    assert!(
        dom.contains(&format!(">{}<", first["key"].as_str().unwrap())),
        "{dom}"
    );
    // `--out FOLDER` puts the report in it, under the job's name.
    let into = sb.run(&["report", "labels", "--out", "site"]);
    assert_eq!(into.code, 0, "{into:?}");
    assert!(sb.path("site/labels.report.html").is_file(), "{into:?}");
    assert!(
        into.stderr.contains("agreement with gold for 1 field"),
        "{}",
        into.stderr
    );
    let shot = sb.path("site/r.png");
    let png = crate::common::browser::screenshot(&sb.path("profile"), &page, &shot, (1100, 2400));
    assert!(png.len() > 20_000, "a painted page");
    if let Ok(dir) = std::env::var("BG_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, std::path::Path::new(&dir).join("gold-report.png")).unwrap();
    }
}

/// With an answer schema, gold maps properties to columns: each property
/// is compared in its own terms (an enum of two is binary, an integer is
/// ordinal) and gets its own `_agrees` column.
#[test]
fn schema_properties_have_their_own_gold_columns() {
    let sb = Sandbox::new();
    let mut csv = String::from("id,text,gold_verdict,gold_score\n");
    for i in 1..=40 {
        let verdict = if i % 3 == 0 { "fail" } else { "pass" };
        let score = if i % 7 == 0 {
            String::new()
        } else {
            (i % 6).to_string()
        };
        csv.push_str(&format!("{i},answer {i},{verdict},{score}\n"));
    }
    sb.write("in.csv", csv);
    sb.write(
        "job.yaml",
        "version: 1
name: props
provider:
  kind: simulated
  simulated: {validating: 10ms, in_progress: 50ms, finalizing: 10ms}
model: gpt-4o-mini
input: {path: in.csv, id: id}
prompt: {system: Grade it., user: \"{{ text }}\"}
request: {max_tokens: 40}
output:
  path: out/graded.csv
  field: grade
  schema:
    type: object
    properties:
      score: {type: integer, minimum: 0, maximum: 5}
      verdict: {type: string, enum: [pass, fail]}
    required: [score, verdict]
    additionalProperties: false
  gold: {verdict: gold_verdict, score: gold_score}
poll: {interval: 100ms, max_interval: 200ms}
",
    );
    let run = sb.run(&["apply", "job.yaml", "--json"]);
    assert!(run.code == 0 || run.code == 3, "{run:?}");
    let s = run.json();
    let fields: Vec<&str> = s["agreement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["field"].as_str().unwrap())
        .collect();
    // In the schema's property order.
    assert_eq!(fields, ["grade.score", "grade.verdict"], "{s}");
    let (score, verdict) = (&s["agreement"][0], &s["agreement"][1]);
    assert_eq!(score["kind"], "ordinal");
    assert_eq!(verdict["kind"], "categorical");
    assert_eq!(verdict["binary"]["positive"], "pass", "{verdict}");
    let rows = output_rows(&sb);
    let ok: Vec<_> = rows.iter().filter(|r| r["grade_status"] == "ok").collect();
    let same = ok
        .iter()
        .filter(|r| r["grade.verdict"] == r["gold_verdict"])
        .count();
    assert_eq!(verdict["n"], ok.len() as u64);
    close(
        &verdict["accuracy"],
        same as f64 / ok.len() as f64,
        "verdict accuracy",
    );
    let scored: Vec<_> = ok.iter().filter(|r| !r["gold_score"].is_empty()).collect();
    assert_eq!(score["n"], scored.len() as u64);
    assert_eq!(
        score["missing_gold"],
        rows.iter().filter(|r| r["gold_score"].is_empty()).count() as u64
    );
    for r in &ok {
        let want = (r["grade.verdict"] == r["gold_verdict"]).to_string();
        assert_eq!(r["grade.verdict_agrees"], want, "{r:?}");
        if r["gold_score"].is_empty() {
            assert_eq!(r["grade.score_agrees"], "", "{r:?}");
        }
    }
}
