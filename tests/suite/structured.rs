//! Structured grades end to end on the simulated provider (started by the
//! binary on 127.0.0.1): `output.schema` sent as `response_format`, answers
//! validated into `<field>.<property>` columns, parse failures named and
//! counted under the halt policy, `validate` refusing what strict mode
//! refuses, and `report` rendered in a real headless browser.

use crate::common;

use std::collections::BTreeMap;

use common::Sandbox;
use common::browser::{attr, dump_dom, screenshot};
use serde_json::{Value, json};

const SCHEMA: &str = "  schema:
    type: object
    properties:
      accuracy: { type: integer, minimum: 0, maximum: 5 }
      clarity: { type: integer, minimum: 0, maximum: 5 }
      verdict: { type: string, enum: [pass, fail] }
      reason: { type: string }
    required: [accuracy, clarity, verdict, reason]
    additionalProperties: false
";

const ROWS: usize = 200;

/// The simulated provider's batch API, with short batch timings.
const BATCH: &str = "  kind: simulated
  simulated: { validating: 10ms, in_progress: 100ms, finalizing: 10ms }
";

/// A rubric job of `ROWS` rows in chunks of 50; `extra` is appended.
fn rubric_job(sb: &Sandbox, extra: &str) {
    rubric_job_on(sb, BATCH, extra)
}

/// The rubric job on `provider` (the lines under `provider:`).
fn rubric_job_on(sb: &Sandbox, provider: &str, extra: &str) {
    let mut csv = String::from("id,text\n");
    for i in 1..=ROWS {
        csv.push_str(&format!("{i:04},answer number {i}\n"));
    }
    sb.write("in.csv", csv);
    sb.write(
        "job.yaml",
        format!(
            "version: 1
name: rubric
provider:
{provider}model: gpt-4o-mini
input:
  path: in.csv
  id: id
prompt:
  system: Grade the answer on the rubric.
  user: \"{{{{ text }}}}\"
request:
  max_tokens: 80
output:
  path: out/graded.csv
  field: grade
{SCHEMA}chunking:
  max_requests: 50
poll:
  interval: 100ms
  max_interval: 200ms
{extra}"
        ),
    );
}

fn records(text: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn a_schema_job_grades_every_row_into_typed_columns_in_input_order() {
    let sb = Sandbox::new();
    rubric_job(&sb, "");
    let run = sb.run(&["apply", "job.yaml", "--json"]);
    let summary = run.json();

    // The schema rides in every request as OpenAI strict structured output.
    let lines = common::chunk_lines(&sb, "rubric");
    assert_eq!(lines.len(), ROWS);
    for l in &lines {
        let rf = &l["body"]["response_format"];
        assert_eq!(rf["type"], "json_schema", "{l}");
        assert_eq!(rf["json_schema"]["strict"], true);
        assert_eq!(rf["json_schema"]["name"], "grade");
        assert_eq!(
            rf["json_schema"]["schema"]["required"],
            json!(["accuracy", "clarity", "verdict", "reason"])
        );
    }

    let (header, rows) = records(&sb.read("out/graded.csv"));
    assert_eq!(
        header,
        [
            "id",
            "text",
            "grade",
            "grade.accuracy",
            "grade.clarity",
            "grade.verdict",
            "grade.reason",
            "grade_status",
            "grade_raw",
            "grade_error"
        ]
    );
    assert_eq!(rows.len(), ROWS);
    let mut ok = 0u64;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut accuracy_counts: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"], format!("{:04}", i + 1), "input order");
        match row["grade_status"].as_str() {
            "ok" => {
                ok += 1;
                let v: Value = serde_json::from_str(&row["grade"]).unwrap();
                let raw: Value = serde_json::from_str(&row["grade_raw"]).unwrap();
                assert_eq!(v, raw);
                let acc: u64 = row["grade.accuracy"].parse().unwrap();
                assert!(acc <= 5, "{row:?}");
                assert_eq!(v["accuracy"], acc);
                *accuracy_counts.entry(acc).or_default() += 1;
                assert_eq!(v["clarity"].to_string(), row["grade.clarity"]);
                assert!(["pass", "fail"].contains(&row["grade.verdict"].as_str()));
                assert_eq!(v["reason"], row["grade.reason"].as_str());
                assert!(!row["grade.reason"].is_empty());
                assert_eq!(row["grade_error"], "");
            }
            "parse_error" => {
                for c in ["grade", "grade.accuracy", "grade.verdict", "grade.reason"] {
                    assert_eq!(row[c], "", "{c} of a row that does not parse: {row:?}");
                }
                let e = &row["grade_error"];
                // The first violation, named.
                let class = if e.starts_with("the answer is not JSON") {
                    "not JSON".to_string()
                } else if e.contains("\"reason\" is a required property") {
                    "required reason missing at (root)".to_string()
                } else if e.contains("at /accuracy: 6 is greater than the maximum of 5") {
                    "maximum at /accuracy".to_string()
                } else {
                    panic!("unexpected violation: {e}");
                };
                *reasons.entry(class).or_default() += 1;
            }
            other => panic!("row {} is {other}", i + 1),
        }
    }
    let parse_failures = ROWS as u64 - ok;
    assert!(
        parse_failures > 0,
        "the simulator breaks the schema now and then"
    );
    assert!(parse_failures < 30, "{parse_failures}");
    // Parse failures make the run exit 3, and are not API failures.
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(summary["graded"], ok);
    assert_eq!(summary["parse_failures"], parse_failures);
    assert_eq!(summary["failed"], 0);
    let by_reason: BTreeMap<String, u64> = summary["parse_failures_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
        .collect();
    assert_eq!(by_reason, reasons);

    // The summary's distributions agree with the file.
    let grades = summary["grades"].as_array().unwrap();
    let names: Vec<&str> = grades.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["accuracy", "clarity", "verdict"]);
    let acc = &grades[0];
    assert_eq!(acc["kind"], "numeric");
    assert_eq!(acc["count"], ok);
    assert_eq!(acc["min"], *accuracy_counts.keys().next().unwrap() as f64);
    assert_eq!(
        acc["max"],
        *accuracy_counts.keys().next_back().unwrap() as f64
    );
    let bars: BTreeMap<u64, u64> = acc["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["count"].as_u64().unwrap() > 0)
        .map(|b| {
            (
                b["lo"].as_f64().unwrap() as u64,
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(bars, accuracy_counts);
    let verdicts: u64 = grades[2]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[1].as_u64().unwrap())
        .sum();
    assert_eq!(verdicts, ok);
    assert!(
        run.stderr.contains("  grades      accuracy"),
        "{}",
        run.stderr
    );

    // Export to JSONL nests the parsed object.
    let export = sb.run(&["export", "--out", "graded.jsonl"]);
    assert_eq!(export.code, 0, "{export:?}");
    let objs: Vec<Value> = sb
        .read("graded.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), ROWS);
    for (o, row) in objs.iter().zip(&rows) {
        assert!(o.get("grade.accuracy").is_none(), "{o}");
        if row["grade_status"] == "ok" {
            assert!(o["grade"].is_object(), "{o}");
            assert_eq!(o["grade"]["verdict"], row["grade.verdict"].as_str());
            assert_eq!(o["grade"]["accuracy"].to_string(), row["grade.accuracy"]);
        } else {
            assert!(o["grade"].is_null(), "{o}");
            assert_eq!(o["grade_error"], row["grade_error"].as_str());
        }
    }
}

#[test]
fn parse_failures_count_under_the_halt_policy() {
    let sb = Sandbox::new();
    // One batch at a time, so the rate is judged after each merge.
    rubric_job(
        &sb,
        "concurrency: { max_batches_in_flight: 1 }\nhalt: { max_failure_rate: 0.5% }\n",
    );
    let run = sb.run(&["apply", "job.yaml", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let s = run.json();
    assert_eq!(s["ending"], "halted");
    assert_eq!(
        s["failed"], 0,
        "no API failure: the parse failures halted it"
    );
    assert!(s["parse_failures"].as_u64().unwrap() > 0);
    assert!(s["not_graded"].as_u64().unwrap() > 0, "{s:#}");
}

/// The first number after `label` in `text`.
fn number_after(text: &str, label: &str) -> u64 {
    let rest = &text[text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in {text}"))
        + label.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_direct_run_counts_schema_breaking_answers_under_the_halt_policy() {
    // Answers that are JSON but break the schema are parse failures for
    // the halt policy too, as in batch mode: direct mode once judged them
    // by `output.parse` alone (text, so everything parsed) and finished.
    let sb = Sandbox::new();
    rubric_job_on(
        &sb,
        "  kind: simulated\n  mode: direct\n",
        "concurrency: { max_requests_in_flight: 2 }\nhalt: { max_failure_rate: 0.5% }\n",
    );
    let run = sb.run(&["apply", "job.yaml", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let s = run.json();
    assert_eq!(s["ending"], "halted", "{s:#}");
    assert_eq!(s["failed"], 0, "{s:#}");
    assert!(s["parse_failures"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["not_graded"].as_u64().unwrap() > 0, "{s:#}");
    assert!(
        run.stderr.contains("above halt.max_failure_rate"),
        "{run:?}"
    );
}

#[test]
fn resuming_a_job_halted_on_parse_failures_counts_the_earlier_ones() {
    let sb = Sandbox::new();
    rubric_job(
        &sb,
        "concurrency: { max_batches_in_flight: 1 }\nhalt: { max_failure_rate: 0.5% }\n",
    );
    let first = sb.run(&["apply", "job.yaml", "--json"]);
    assert_eq!(first.code, 4, "{first:?}");
    let before = first.json();
    // `status` says how many answers did not parse, as the summary does.
    let status = sb.run(&["status", "rubric"]);
    assert!(
        status.stderr.contains(&format!(
            "({} did not parse)",
            before["parse_failures"].as_u64().unwrap()
        )),
        "{status:?}\n{before:#}"
    );
    // Still above the rate, counting the answers of the first run that
    // break the schema: nothing more is sent (and paid for).
    let again = sb.run(&["resume", "rubric", "--json"]);
    assert_eq!(again.code, 4, "{again:?}");
    let after = again.json();
    for k in ["graded", "parse_failures", "not_graded"] {
        assert_eq!(after[k], before[k], "{k}: {after:#}");
    }
    assert_eq!(
        number_after(&again.stderr, "API failures, "),
        before["parse_failures"].as_u64().unwrap(),
        "{again:?}"
    );
}

#[test]
fn a_schema_strict_mode_refuses_is_a_validate_error_at_its_line() {
    let sb = Sandbox::new();
    sb.write("in.csv", "id,text\n1,a\n");
    let spec = common::spec(
        "strict",
        "in.csv",
        "{{ text }}",
        "  schema:
    type: object
    properties:
      score: { type: integer }
      detail:
        type: object
        properties:
          note: { type: string, minLength: 2 }
        required: [note]
      reason: { type: string }
    required: [score, detail]
    additionalProperties: false
",
    );
    sb.write("job.yaml", &spec);
    let run = sb.run(&["validate", "job.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    let want = [
        // `detail` is open; `reason` is not required; minLength is not supported.
        "job.yaml:17:7: output.schema.properties.detail: this object needs `additionalProperties: false`",
        "job.yaml:20:33: output.schema.properties.detail.properties.note.minLength: `minLength` is not supported",
        "job.yaml:23:5: output.schema.required: OpenAI's strict mode needs every property in `required`; missing: reason",
    ];
    for w in want {
        assert!(run.stderr.contains(w), "{w}\n{}", run.stderr);
    }
    // `plan` refuses the same spec before reading anything.
    let plan = sb.run(&["plan", "job.yaml"]);
    assert_eq!(plan.code, 2, "{plan:?}");

    // The same rules for a schema file, named at `schema_file`; a fixed
    // file plans, and its schema is what the requests carry.
    let bad = json!({"type": "object", "properties": {"x": {"type": "string"}},
        "required": ["x"]});
    sb.write("schema.json", bad.to_string());
    let with_file = common::spec(
        "strict",
        "in.csv",
        "{{ text }}",
        "  schema_file: schema.json\n",
    );
    sb.write("job.yaml", &with_file);
    let run = sb.run(&["validate", "job.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("job.yaml:13:3: output.schema_file: ")
            && run
                .stderr
                .contains("schema.json: (root): this object needs `additionalProperties: false`"),
        "{}",
        run.stderr
    );
    let mut good = bad.clone();
    good["additionalProperties"] = json!(false);
    sb.write("schema.json", good.to_string());
    let plan = sb.run(&["plan", "job.yaml"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let lines = common::chunk_lines(&sb, "strict");
    assert_eq!(
        lines[0]["body"]["response_format"]["json_schema"]["schema"],
        good
    );

    // Both, or a conflicting `parse` or `response_format`, are refused.
    let both = common::spec(
        "strict",
        "in.csv",
        "{{ text }}",
        "  parse: number\n  schema_file: schema.json\n",
    )
    .replace(
        "request:\n",
        "request:\n  response_format: { type: json_object }\n",
    );
    sb.write("job.yaml", &both);
    let run = sb.run(&["validate", "job.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    for w in [
        "output.parse: with an answer schema the answer is parsed as JSON",
        "request.response_format: `response_format` is set from output.schema",
    ] {
        assert!(run.stderr.contains(w), "{w}\n{}", run.stderr);
    }
}

#[test]
fn the_report_renders_in_a_headless_browser_with_its_charts_and_numbers() {
    let sb = Sandbox::new();
    rubric_job(&sb, "");
    let run = sb.run(&["apply", "job.yaml", "--json"]);
    assert_eq!(run.code, 3, "{run:?}");
    let s = run.json();
    let report = sb.run(&["report", "--out", "site/report.html"]);
    assert_eq!(report.code, 0, "{report:?}");
    let path = sb.path("site/report.html");
    let dom = dump_dom(&sb.path("profile"), &path);
    // The page's own check ran after layout: every chart has a size and
    // every bar an area. Charts: accuracy, clarity, verdict, failures, timing.
    let charts = dom.matches("<svg class=\"chart\"").count();
    assert_eq!(charts, 5, "{dom}");
    assert_eq!(attr(&dom, "data-rendered-charts"), charts.to_string());
    let bars = dom.matches("class=\"bar").count();
    let nonzero_bars = dom.matches("class=\"bar").count() - dom.matches("data-count=\"0\"").count();
    assert!(bars > 10, "{bars}");
    assert_eq!(attr(&dom, "data-rendered-bars"), nonzero_bars.to_string());
    // The numbers: the receipt, the histograms, the failures, the chunks.
    assert!(dom.contains(&format!("data-key=\"rows\">{ROWS}<")), "{dom}");
    let paid = format!("${:.4}", s["receipt"]["paid_usd"].as_f64().unwrap());
    assert!(
        dom.contains(&format!("data-key=\"paid\">{paid}<")),
        "{paid}"
    );
    let acc = &s["grades"][0];
    for b in acc["histogram"].as_array().unwrap() {
        let label = b["lo"].as_f64().unwrap() as u64;
        assert!(
            dom.contains(&format!(
                "data-label=\"{label}\" data-count=\"{}\"",
                b["count"]
            )),
            "accuracy {label}"
        );
    }
    for stat in ["min", "median", "max"] {
        let x = acc[stat].as_f64().unwrap();
        let shown = if x.fract() == 0.0 {
            format!("{}", x as i64)
        } else {
            format!("{x}")
        };
        assert!(
            dom.contains(&format!("data-stat=\"{stat}\">{shown}<")),
            "{stat} {shown}"
        );
    }
    for p in s["parse_failures_by_reason"].as_array().unwrap() {
        let label = format!("parse: {}", p[0].as_str().unwrap());
        assert!(
            dom.contains(&format!("data-label=\"{label}\" data-count=\"{}\"", p[1])),
            "{label}"
        );
    }
    for chunk in 1..=4 {
        assert!(
            dom.contains(&format!("<tr data-chunk=\"{chunk}\">")),
            "chunk {chunk}"
        );
        assert!(
            dom.contains(&format!("rect class=\"bar\" data-chunk=\"{chunk}\"")),
            "chunk {chunk}"
        );
    }

    // And it paints: a screenshot of the page is a real image.
    let png = screenshot(
        &sb.path("profile2"),
        &path,
        &sb.path("shot.png"),
        (1100, 2400),
    );
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 20_000, "{} bytes", png.len());
}
