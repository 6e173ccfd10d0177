//! What the run frame decides alike for both lanes (batch and direct), and
//! structured output on every wire: the real binary against the simulated
//! provider it starts on 127.0.0.1.

use crate::common;

use common::Sandbox;

/// The provider block of each lane on the simulated provider.
const LANES: [(&str, &str); 2] = [
    (
        "batch",
        "  kind: simulated\n  simulated: { validating: 10ms, in_progress: 50ms, finalizing: 10ms }\n",
    ),
    ("direct", "  kind: simulated\n  mode: direct\n"),
];

fn job(provider: &str, system: &str, extra: &str) -> String {
    format!(
        "version: 1
name: frame
provider:
{provider}model: gpt-4o-mini
input:
  path: in.csv
  id: id
prompt:
  system: {system}
  user: \"{{{{ text }}}}\"
request:
  max_tokens: 4
output:
  path: out/graded.csv
  field: grade
  parse: number
poll:
  interval: 50ms
  max_interval: 100ms
{extra}"
    )
}

#[test]
fn a_start_refused_by_the_budget_leaves_the_graded_output_as_it_was_in_both_lanes() {
    for (lane, provider) in LANES {
        let sb = Sandbox::new();
        sb.write("in.csv", "id,text\na,one\nb,two\nc,three\n");
        sb.write("job.yaml", job(provider, "Grade it.", ""));
        let first = sb.run(&["apply", "job.yaml", "--yes"]);
        assert_eq!(first.code, 0, "{lane}: {first:?}");
        let graded = sb.read("out/graded.csv");
        assert_eq!(graded.lines().count(), 4, "{lane}: {graded}");

        // Every row's request changes, and the budget is below the new
        // estimate: the start is refused and nothing is sent...
        sb.write(
            "job.yaml",
            job(
                provider,
                "Grade it from 0 to 10.",
                "halt:\n  max_cost_usd: 0.0000001\n",
            ),
        );
        let refused = sb.run(&["apply", "job.yaml", "--yes", "--json"]);
        assert_eq!(refused.code, 4, "{lane}: {refused:?}");
        let summary = refused.json();
        assert_eq!(summary["ending"], "halted", "{lane}");
        assert!(
            summary["message"]
                .as_str()
                .unwrap_or_default()
                .contains("nothing was submitted"),
            "{lane}: {summary}"
        );
        assert_eq!(summary["output_path"], serde_json::Value::Null, "{lane}");
        // ...and the graded output is not replaced by rows "not graded".
        assert_eq!(sb.read("out/graded.csv"), graded, "{lane}");
        // `status` says halted, like the summary.
        let status = sb.run(&["status", "frame", "--json"]);
        assert_eq!(status.json()["state"], "halted", "{lane}: {status:?}");
    }
}

#[test]
fn both_lanes_name_the_provider_alike_in_the_ledger() {
    for (lane, provider) in LANES {
        let sb = Sandbox::new();
        sb.write("in.csv", "id,text\na,one\nb,two\n");
        sb.write("job.yaml", job(provider, "Grade it.", ""));
        let run = sb.run(&["apply", "job.yaml", "--yes"]);
        assert_eq!(run.code, 0, "{lane}: {run:?}");
        let ledger = sb.read("state/usage.jsonl");
        let lines: Vec<serde_json::Value> = ledger
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!lines.is_empty(), "{lane}: no ledger line");
        for l in &lines {
            assert_eq!(l["provider"], "simulated", "{lane}: {l}");
            assert_eq!(l["simulated"], true, "{lane}: {l}");
            assert_eq!(l["job"], "frame", "{lane}: {l}");
        }
    }
}

/// A schema job graded through the simulated Message Batches API: the
/// requests carry Anthropic's `output_config` (never OpenAI's
/// `response_format`), the simulator answers from the schema, and every
/// row comes out `ok` with its typed columns filled.
#[test]
fn a_schema_job_through_the_simulated_anthropic_api_grades_every_row() {
    let sb = Sandbox::new();
    // The simulator refuses one request in 25, chosen by a hash of the
    // request, as a model under a grammar may; these rows are none of them
    // (tests/anthropic.rs checks the refusals).
    const ROWS: usize = 9;
    let mut csv = String::from("id,text\n");
    for i in 1..=ROWS {
        csv.push_str(&format!("{i:03},answer number {i}\n"));
    }
    sb.write("in.csv", csv);
    sb.write(
        "job.yaml",
        "version: 1
name: claude
provider:
  kind: simulated
  simulated: { api: anthropic, validating: 10ms, in_progress: 50ms, finalizing: 10ms }
model: claude-haiku-4-5
input:
  path: in.csv
  id: id
prompt:
  system: Grade the answer on the rubric.
  user: \"{{ text }}\"
request:
  max_tokens: 200
output:
  path: out/graded.csv
  field: grade
  schema:
    type: object
    properties:
      accuracy: { type: integer, minimum: 0, maximum: 5 }
      verdict: { type: string, enum: [pass, fail] }
      confident: { type: boolean }
    required: [accuracy, verdict, confident]
    additionalProperties: false
chunking:
  max_requests: 10
poll:
  interval: 50ms
  max_interval: 100ms
",
    );
    let validate = sb.run(&["validate", "job.yaml"]);
    assert_eq!(validate.code, 0, "{validate:?}");
    let run = sb.run(&["apply", "job.yaml", "--yes", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let summary = run.json();
    assert_eq!(summary["graded"], ROWS, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["parse_failures"], 0, "{summary}");

    for line in common::chunk_lines(&sb, "claude") {
        let body = &line["body"];
        assert!(body.get("response_format").is_none(), "{line}");
        assert_eq!(
            body["output_config"]["format"]["type"], "json_schema",
            "{line}"
        );
    }

    let out = sb.read("out/graded.csv");
    let mut r = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (status, accuracy, verdict, confident) = (
        col("grade_status"),
        col("grade.accuracy"),
        col("grade.verdict"),
        col("grade.confident"),
    );
    let mut rows = 0;
    for rec in r.records() {
        let rec = rec.unwrap();
        rows += 1;
        assert_eq!(&rec[status], "ok", "{rec:?}");
        let a: i64 = rec[accuracy].parse().expect("an integer accuracy");
        assert!((0..=5).contains(&a), "{rec:?}");
        assert!(["pass", "fail"].contains(&&rec[verdict]), "{rec:?}");
        assert!(["true", "false"].contains(&&rec[confident]), "{rec:?}");
    }
    assert_eq!(rows, ROWS);
}
