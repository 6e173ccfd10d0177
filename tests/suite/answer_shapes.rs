//! The simulated provider answers in the job's shape: a `parse: label` job
//! gets labels (a keyword classifier, now and then untidy or no label), a
//! `parse: regex` job text its pattern matches, on every simulated wire and
//! on `simulate-server --labels`; a pattern it cannot answer is said at
//! `plan`.

use crate::common;

use std::collections::BTreeMap;

use common::{OpenAi, Sandbox};

const ROWS: usize = 200;
const LABELS: [&str; 3] = ["billing", "bug", "feature"];

/// Ticket `i`'s text: three in four name a label (in varying case), the
/// fourth none.
fn ticket(i: usize) -> String {
    match i % 4 {
        0 => format!("I was charged twice: a Billing mistake (ticket {i})"),
        1 => format!("The export crashes: looks like a BUG (ticket {i})"),
        2 => format!("Please add a dark mode feature (ticket {i})"),
        _ => format!("How do I change my password? (ticket {i})"),
    }
}

/// The label ticket `i` names, if it names one.
fn named(i: usize) -> Option<&'static str> {
    LABELS.get(i % 4).copied()
}

fn input(sb: &Sandbox) {
    let mut csv = String::from("id,text\n");
    for i in 0..ROWS {
        csv.push_str(&format!("{i:04},{}\n", ticket(i)));
    }
    sb.write("in.csv", csv);
}

/// A ticket job on `provider` (the lines under `provider:`) with `model`,
/// parsing as `output` says (the lines after `field:`).
fn ticket_job(sb: &Sandbox, provider: &str, model: &str, output: &str) {
    input(sb);
    sb.write(
        "job.yaml",
        format!(
            "version: 1
name: tickets
provider:
{provider}model: {model}
input:
  path: in.csv
  id: id
prompt:
  system: Classify the support ticket as billing, bug or feature. Reply with the label only.
  user: \"{{{{ text }}}}\"
request:
  max_tokens: 8
output:
  path: out/labels.csv
  field: label
{output}chunking:
  max_requests: 50
concurrency:
  max_requests_in_flight: 4
poll:
  interval: 100ms
  max_interval: 200ms
"
        ),
    );
}

const LABEL_OUTPUT: &str = "  parse: label\n  labels: [billing, bug, feature]\n";

/// The output's rows as column -> value.
fn rows(sb: &Sandbox) -> Vec<BTreeMap<String, String>> {
    let text = sb.read("out/labels.csv");
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            header
                .iter()
                .cloned()
                .zip(rec.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

/// Most rows are a label, a ticket that names one got it, and a few
/// answers (about 2%) are no label, counted as parse failures.
fn assert_classified(sb: &Sandbox, run: &common::Run) {
    let summary = run.json();
    let failures = summary["parse_failures"].as_u64().unwrap();
    assert_eq!(summary["failed"], 0, "{summary:#}");
    assert!((1..=10).contains(&failures), "{summary:#}");
    assert_eq!(run.code, 3, "parse failures: exit 3; {run:?}");
    let rows = rows(sb);
    assert_eq!(rows.len(), ROWS);
    let mut ok = 0;
    for (i, row) in rows.iter().enumerate() {
        match row["label_status"].as_str() {
            "ok" => {
                ok += 1;
                assert!(LABELS.contains(&row["label"].as_str()), "{row:?}");
                if let Some(want) = named(i) {
                    assert_eq!(row["label"], want, "{row:?}");
                }
            }
            "parse_error" => assert!(row["label_error"].contains("none of the labels"), "{row:?}"),
            other => panic!("row {i}: {other}: {row:?}"),
        }
    }
    assert_eq!(ok as u64 + failures, ROWS as u64);
    // The untidy answers were read: some raw answer is not the label as written.
    assert!(
        rows.iter()
            .any(|r| r["label_status"] == "ok" && r["label_raw"] != r["label"]),
        "no untidy answer in {ROWS} rows"
    );
}

#[test]
fn a_label_job_on_the_simulated_provider_is_classified_on_every_wire() {
    let wires = [
        (
            "batch",
            "  kind: simulated\n  simulated: { validating: 10ms, in_progress: 100ms, finalizing: 10ms }\n",
            "gpt-4o-mini",
        ),
        (
            "message batches",
            "  kind: simulated\n  simulated: { api: anthropic, validating: 10ms, in_progress: 100ms, finalizing: 10ms }\n",
            "claude-haiku-4-5",
        ),
        (
            "direct",
            "  kind: simulated\n  mode: direct\n",
            "gpt-4o-mini",
        ),
    ];
    let mut outputs = Vec::new();
    for (wire, provider, model) in wires {
        let sb = Sandbox::new();
        ticket_job(&sb, provider, model, LABEL_OUTPUT);
        let run = sb.run(&["apply", "job.yaml", "--json"]);
        assert!(
            !run.stderr.contains("cannot write answers"),
            "{wire}: {run:?}"
        );
        assert_classified(&sb, &run);
        outputs.push(rows(&sb));
    }
    // Batch and direct send the same request bodies: the same answers.
    let label = |rows: &[BTreeMap<String, String>]| -> Vec<String> {
        rows.iter().map(|r| r["label_raw"].clone()).collect()
    };
    assert_eq!(label(&outputs[0]), label(&outputs[2]));
}

#[test]
fn simulate_server_labels_answer_an_openai_job() {
    let sb = Sandbox::new();
    let server = OpenAi.server(&sb, &["--labels", "billing,bug,feature"]);
    input(&sb);
    let yaml = common::Job::new(OpenAi, "tickets", &server.url)
        .chunk(50)
        .yaml("")
        .replace("  parse: number\n", LABEL_OUTPUT)
        .replace("out/graded.csv", "out/labels.csv")
        .replace("  field: grade\n", "  field: label\n");
    assert!(yaml.contains("labels: [billing"), "{yaml}");
    sb.write("job.yaml", yaml);
    let run = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_classified(&sb, &run);
}

#[test]
fn simulate_server_refuses_a_bad_pattern_or_a_blank_label() {
    let sb = Sandbox::new();
    let bad = sb.run(&["simulate-server", "--pattern", "(unclosed"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("not a valid regular expression"),
        "{bad:?}"
    );
    let blank = sb.run(&["simulate-server", "--labels", "a,,b"]);
    assert_eq!(blank.code, 2, "{blank:?}");
    assert!(blank.stderr.contains("a label is empty"), "{blank:?}");
}

#[test]
fn a_regex_job_gets_answers_its_pattern_matches() {
    let sb = Sandbox::new();
    ticket_job(
        &sb,
        "  kind: simulated\n  mode: direct\n",
        "gpt-4o-mini",
        "  parse: regex\n  pattern: '^Score: (\\d+)$'\n",
    );
    let run = sb.run(&["apply", "job.yaml", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let summary = run.json();
    assert_eq!(summary["graded"], ROWS as u64, "{summary:#}");
    for row in rows(&sb) {
        let grade: u32 = row["label"].parse().unwrap();
        assert!(grade <= 10, "{row:?}");
        assert_eq!(row["label_raw"], format!("Score: {grade}"));
    }
}

#[test]
fn a_pattern_the_simulator_cannot_answer_is_said_at_plan() {
    let sb = Sandbox::new();
    ticket_job(
        &sb,
        "  kind: simulated\n",
        "gpt-4o-mini",
        "  parse: regex\n  pattern: '^\\d{5}$'\n",
    );
    let plan = sb.run(&["plan", "job.yaml"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        plan.stderr.contains(
            "warning: the simulated provider cannot write answers your output.pattern matches"
        ),
        "{plan:?}"
    );
    assert!(plan.stderr.contains("will fail to parse"), "{plan:?}");
    // `--json` carries it with the plan's other warnings.
    let json = sb.run(&["plan", "job.yaml", "--json"]).json();
    let warnings = json["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("cannot write answers")),
        "{json:#}"
    );
}
