//! `kind: anthropic` end to end: the real binary against the simulated
//! Message Batches API in its own process (`simulate-server --api
//! anthropic`), through the real HTTP client. Message batches carry no
//! metadata, so what these tests prove about duplicates they prove from
//! the server's own record of every batch and the custom ids it held.

use crate::common;

use common::sim::Server;
use common::{Anthropic, Job, Sandbox};
use std::collections::{HashMap, HashSet};

use serde_json::Value;

const KEY_ENV: &str = Anthropic.key_env();
const KEY: &str = Anthropic.key();

fn server(sb: &Sandbox, extra: &[&str]) -> Server {
    Anthropic.server(sb, extra)
}

fn spec(name: &str, url: &str, chunk: u32, in_flight: u32, extra: &str) -> String {
    Job::new(Anthropic, name, url)
        .chunk(chunk)
        .in_flight(in_flight)
        .yaml(extra)
}

/// The standard Anthropic job: 25 rows with cells that must survive
/// verbatim, in chunks of 10.
fn job(sb: &Sandbox, server: &Server, extra: &str) {
    common::standard_job(sb, Anthropic, &server.url, 25, extra);
}

#[test]
fn a_multi_chunk_job_is_graded_row_for_row_in_input_order() {
    let out = common::reference_output(Anthropic, 25);
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 25);
    for (i, r) in rows.iter().enumerate() {
        let n = i + 1;
        assert_eq!(&r[0], format!("{n:03}"), "row {n} in order");
        assert_eq!(&r[4], "ok", "row {n}: {r:?}");
        assert!(r[3].parse::<u32>().unwrap() <= 10);
    }
    assert_eq!(&rows[2][1], "quoted, \"with\" comma");
    assert_eq!(&rows[6][1], "two\nlines");
    assert_eq!(&rows[10][1], "café ☕");
    assert_eq!(&rows[0][2], "001");
}

#[test]
fn what_is_sent_is_a_message_batches_create_and_the_ledger_records_anthropic() {
    let sb = Sandbox::new();
    let server = server(&sb, &[]);
    job(&sb, &server, "");
    let r = Anthropic.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let stats = server.stats();
    // Merged batches are deleted from the provider.
    assert_eq!(stats["batches_deleted"], 3, "{stats:#}");
    let ledger: Vec<Value> = sb
        .read("state/usage.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ledger.len(), 3);
    let (mut i, mut o) = (0, 0);
    for e in &ledger {
        assert_eq!(e["provider"], "anthropic");
        assert_eq!(e["model"], "claude-haiku-4-5");
        assert!(e["batch_id"].as_str().unwrap().starts_with("msgbatch_"));
        i += e["input_tokens"].as_u64().unwrap();
        o += e["output_tokens"].as_u64().unwrap();
    }
    assert_eq!(
        (i, o),
        (
            stats["usage"]["input_tokens"].as_u64().unwrap(),
            stats["usage"]["output_tokens"].as_u64().unwrap()
        ),
        "the ledger holds what the results billed"
    );
    let costs = sb.run(&["costs", "--json"]);
    assert_eq!(costs.code, 0, "{costs:?}");
    assert!(costs.stdout.contains("claude-haiku-4-5"), "{costs:?}");
    common::assert_key_nowhere(&sb, KEY, &[&r, &costs]);
}

#[test]
fn kill_after_staging() {
    common::crash_then_resume(Anthropic, "upload");
}

#[test]
fn kill_after_create_intent() {
    common::crash_then_resume(Anthropic, "create-intent");
}

#[test]
fn kill_after_create_before_recording_it() {
    common::crash_then_resume(Anthropic, "create-sent");
}

#[test]
fn kill_after_create() {
    common::crash_then_resume(Anthropic, "create");
}

#[test]
fn kill_while_polling() {
    common::crash_then_resume(Anthropic, "poll");
}

#[test]
fn kill_while_downloading() {
    common::crash_then_resume(Anthropic, "download");
}

#[test]
fn kill_after_merging_a_chunk() {
    common::crash_then_resume(Anthropic, "ingest");
}

#[test]
fn kill_while_writing_the_output() {
    common::crash_then_resume(Anthropic, "output");
}

#[test]
fn creates_that_commit_and_then_fail_make_no_duplicate_batch() {
    let sb = Sandbox::new();
    let server = server(&sb, &["--create-commit-error-rate", "100%"]);
    job(&sb, &server, "");
    let r = Anthropic.run(&sb, &["apply", "job.yaml"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let stats = server.stats();
    assert!(
        stats["create_commit_errors"].as_u64().unwrap() > 0,
        "the fault happened: {stats:#}"
    );
    assert_eq!(stats["batches_created"], 3, "{stats:#}");
    common::assert_one_batch_per_submit(&stats, 25);
    assert!(r.stderr.contains("adopted batch"), "{r:?}");
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(Anthropic, 25)
    );
}

#[test]
fn acceptance_a_storm_grades_every_row_that_can_be_graded_and_exits_3() {
    let sb = Sandbox::new();
    let server = server(
        &sb,
        &[
            "--rate-limit-rate",
            "10%",
            "--server-error-rate",
            "15%",
            "--request-flake-rate",
            "10%",
            "--request-failure-rate",
            "5%",
            "--create-commit-error-rate",
            "15%",
            "--expire-every",
            "3",
            "--token-limit-every",
            "4",
        ],
    );
    // Rows 5, 10, ... have a blank answer (a different number of spaces
    // each, so that every row is its own request): the Messages API
    // refuses a text block of whitespace, a final `invalid_request_error`.
    let mut csv = String::from("id,text\n");
    for i in 1..=36usize {
        let text = if i.is_multiple_of(5) {
            " ".repeat(i)
        } else {
            format!("answer {i}")
        };
        csv.push_str(&format!("{i},{text}\n"));
    }
    sb.write("in.csv", csv);
    sb.write(
        "job.yaml",
        spec("storm", &server.url, 6, 3, "retry:\n  max_attempts: 4\n"),
    );
    let r = Anthropic.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(r.code, 3, "{r:?}");
    let stats = server.stats();
    for counter in [
        "injected_429",
        "injected_5xx",
        "expired_batches",
        "queue_full_refusals",
        "flaked_requests",
    ] {
        assert!(stats[counter].as_u64().unwrap() > 0, "{counter}: {stats:#}");
    }
    common::assert_never_live_twice(Anthropic, &stats);
    let s = common::statuses(&sb);
    assert_eq!(s.len(), 36);
    for (id, (status, error)) in &s {
        let n: u32 = id.parse().unwrap();
        if n.is_multiple_of(5) {
            assert_eq!(status, "failed", "row {id}: {error}");
            assert!(error.contains("invalid_request_error"), "row {id}: {error}");
        } else {
            assert_eq!(status, "ok", "row {id}: {error}");
        }
    }
    let summary = r.json();
    assert_eq!(summary["graded"], 29, "{summary:#}");
    assert_eq!(summary["failed"], 7, "{summary:#}");
    common::assert_key_nowhere(&sb, KEY, &[&r]);
}

#[test]
fn cancelled_lines_are_sent_again_by_the_next_apply() {
    let sb = Sandbox::new();
    let server = server(&sb, &["--in-progress", "3s"]);
    job(&sb, &server, "");
    let detached = Anthropic.run(&sb, &["apply", "job.yaml", "--detach"], &[]);
    assert_eq!(detached.code, 5, "{detached:?}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let cancelled = Anthropic.run(&sb, &["cancel"], &[]);
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    assert_eq!(server.stats()["batches_cancelled"], 2);
    // Resume collects what the cancelled batches did (their `canceled`
    // lines never ran) and submits nothing new.
    let resumed = Anthropic.run(&sb, &["resume", "--json"], &[]);
    assert_eq!(resumed.code, 4, "{resumed:?}");
    assert_eq!(server.stats()["batches_created"], 2);
    let s = resumed.json();
    assert!(s["not_graded"].as_u64().unwrap() >= 5, "{s:#}");
    // `apply` starts again and sends the cancelled requests once more.
    let again = Anthropic.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["graded"], 25);
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(Anthropic, 25)
    );
    common::assert_never_live_twice(Anthropic, &server.stats());
}

#[test]
fn a_spec_without_max_tokens_or_with_openai_keys_is_refused() {
    let sb = Sandbox::new();
    sb.write("in.csv", "id,text\n1,a\n");
    let s = spec("bad", "http://127.0.0.1:9", 10, 1, "").replace(
        "  max_tokens: 4\n",
        "  response_format: {type: json_object}\n  seed: 3\n",
    );
    sb.write("job.yaml", &s);
    let r = sb.run(&["validate", "job.yaml"]);
    assert_eq!(r.code, 2, "{r:?}");
    for want in [
        "request.max_tokens` is required",
        "request.response_format",
        "output_config",
        "request.seed",
    ] {
        assert!(r.stderr.contains(want), "{want}: {r:?}");
    }
    let p = sb.run(&["plan", "job.yaml"]);
    assert_eq!(p.code, 2, "{p:?}");
    assert!(p.stderr.contains("max_tokens"), "{p:?}");
}

#[test]
fn a_wrong_key_stops_before_anything_is_submitted_and_is_never_printed() {
    let sb = Sandbox::new();
    let server = server(&sb, &[]);
    job(&sb, &server, "");
    let wrong = "sk-ant-wrong-key-0000-9999";
    let r = sb.run_env(&["apply", "job.yaml"], &[(KEY_ENV, wrong)]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(KEY_ENV), "{r:?}");
    // The error names the provider's request id (its `request-id` header).
    assert!(r.stderr.contains("request req_sim_"), "{r:?}");
    assert!(
        !r.stderr.contains(wrong) && !r.stdout.contains(wrong),
        "{r:?}"
    );
    assert_eq!(server.stats()["batches_created"], 0);
}

/// A batch someone else made (same workspace, same size, untagged ids).
fn foreign_batch(server: &Server, requests: usize) {
    let body = serde_json::json!({
        "requests": (0..requests).map(|i| serde_json::json!({
            "custom_id": format!("someone-else-{i}"),
            "params": {"model": "claude-haiku-4-5", "max_tokens": 5,
                       "messages": [{"role": "user", "content": format!("hello {i}")}]},
        })).collect::<Vec<_>>(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/messages/batches", server.url))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "{status}");
}

#[test]
fn a_batch_of_the_same_size_made_by_someone_else_is_waited_for_and_never_adopted() {
    let sb = Sandbox::new();
    let server = server(&sb, &["--in-progress", "1500ms"]);
    job(&sb, &server, "");
    // Killed after recording the intent of chunk 1, before its create.
    let killed = Anthropic.run(
        &sb,
        &["apply", "job.yaml"],
        &[("BATCHGRADER_TEST_KILL_AT", "create-intent")],
    );
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    foreign_batch(&server, 10);
    let resumed = Anthropic.run(&sb, &["resume"], &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    // It could not be told apart while it ran: the chunk waited, then read
    // its results, found it was not its own, and created its batch.
    assert!(resumed.stderr.contains("may be that create"), "{resumed:?}");
    assert!(!resumed.stderr.contains("adopted batch"), "{resumed:?}");
    let stats = server.stats();
    assert_eq!(stats["batches_created"], 4, "{stats:#}");
    let mut ours = stats.clone();
    ours["batches"] = Value::Array(
        common::batches(&stats)
            .iter()
            .filter(|b| {
                !b["custom_ids"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("someone-else")
            })
            .cloned()
            .collect(),
    );
    common::assert_one_batch_per_submit(&ours, 25);
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(Anthropic, 25)
    );
}

#[test]
fn the_in_process_simulated_message_batches_api_survives_a_kill_too() {
    // `kind: simulated` with `api: anthropic`: the server lives in the
    // killed process and keeps its batches in the job's state folder.
    let sb = Sandbox::new();
    let mut csv = String::from("id,text\n");
    for i in 1..=12 {
        csv.push_str(&format!("{i},answer {i}\n"));
    }
    sb.write("in.csv", &csv);
    let spec = spec("insim", "http://unused", 5, 2, "")
        .replace(
            "  kind: anthropic\n  base_url: http://unused\n",
            "  kind: simulated\n  simulated:\n    api: anthropic\n    in_progress: 500ms\n",
        )
        .replace(&format!("  api_key_env: {KEY_ENV}\n"), "");
    sb.write("job.yaml", &spec);
    let whole = sb.run(&["apply", "job.yaml", "--json"]);
    assert_eq!(whole.code, 0, "{whole:?}");
    let reference = sb.read("out/graded.csv");
    assert_eq!(whole.json()["graded"], 12);
    std::fs::remove_dir_all(sb.path("state")).unwrap();
    std::fs::remove_dir_all(sb.path("out")).unwrap();
    let killed = sb.run_env(
        &["apply", "job.yaml"],
        &[("BATCHGRADER_TEST_KILL_AT", "create-sent")],
    );
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    let resumed = sb.run(&["resume"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(resumed.stderr.contains("adopted batch"), "{resumed:?}");
    assert_eq!(sb.read("out/graded.csv"), reference);
}

/// One call to the Message Batches API of `server`: the status and the
/// body (JSON, or the JSONL text as a string).
fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01");
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    })
}

/// Creates a batch of `requests` (custom id, params), waits until it has
/// ended, and gives its result lines by custom id.
fn run_batch(server: &Server, requests: &[(String, Value)]) -> HashMap<String, Value> {
    let body = serde_json::json!({
        "requests": requests.iter().map(|(id, p)| serde_json::json!({"custom_id": id, "params": p}))
            .collect::<Vec<_>>(),
    });
    let (status, batch) = call(
        server,
        reqwest::Method::POST,
        "/v1/messages/batches",
        Some(&body),
    );
    assert_eq!(status, 200, "{batch:#}");
    let id = batch["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ended = loop {
        let (_, b) = call(
            server,
            reqwest::Method::GET,
            &format!("/v1/messages/batches/{id}"),
            None,
        );
        if b["processing_status"] == "ended" {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "{b:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let url = ended["results_url"].as_str().unwrap();
    let path = url
        .strip_prefix(&server.url)
        .expect("results on the same server");
    let (status, text) = call(server, reqwest::Method::GET, path, None);
    assert_eq!(status, 200, "{text}");
    let lines: HashMap<String, Value> = text
        .as_str()
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["custom_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(lines.len(), requests.len());
    lines
}

/// A rubric schema of the kind structured outputs compile: an integer, an
/// enum and a boolean, every object closed.
fn rubric_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "score": {"type": "integer", "description": "from 0 to 10"},
            "verdict": {"type": "string", "enum": ["pass", "fail", "unsure"]},
            "confident": {"type": "boolean"}
        },
        "required": ["score", "verdict", "confident"],
        "additionalProperties": false
    })
}

fn schema_params(text: &str, output_config: Value) -> Value {
    serde_json::json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 200,
        "system": "Grade the answer on the rubric.",
        "messages": [{"role": "user", "content": text}],
        "output_config": output_config,
    })
}

#[test]
fn structured_output_answers_are_json_that_fits_the_schema() {
    let sb = Sandbox::new();
    let server = server(&sb, &[]);
    let schema = rubric_schema();
    let config = serde_json::json!({"format": {"type": "json_schema", "schema": schema}});
    let requests: Vec<(String, Value)> = (0..150)
        .map(|i| {
            (
                format!("r{i}"),
                schema_params(&format!("answer number {i}"), config.clone()),
            )
        })
        .collect();
    let lines = run_batch(&server, &requests);
    // Checked as a client would, against the schema sent, with every
    // keyword it has; and against bounds on the score it did not carry,
    // which the simulated model keeps to (its 0-10 scale).
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut bounded = schema.clone();
    bounded["properties"]["score"]["minimum"] = 0.into();
    bounded["properties"]["score"]["maximum"] = 10.into();
    let bounded = jsonschema::validator_for(&bounded).unwrap();
    let (mut fits, mut refused) = (0, 0);
    let mut verdicts = HashSet::new();
    let mut confident = HashSet::new();
    for (id, line) in &lines {
        let result = &line["result"];
        assert_eq!(result["type"], "succeeded", "{line}");
        let m = &result["message"];
        assert_eq!(m["type"], "message");
        assert_eq!(m["role"], "assistant");
        let content = m["content"].as_array().unwrap();
        assert_eq!(content.len(), 1, "{m}");
        assert_eq!(content[0]["type"], "text");
        let text = content[0]["text"].as_str().unwrap();
        match m["stop_reason"].as_str().unwrap() {
            "end_turn" => {
                let v: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{id}: {text:?} is not JSON: {e}"));
                assert!(validator.is_valid(&v), "{id}: {v} breaks the schema");
                assert!(bounded.is_valid(&v), "{id}: {v}");
                verdicts.insert(v["verdict"].as_str().unwrap().to_string());
                confident.insert(v["confident"].as_bool().unwrap());
                assert!(m["usage"]["output_tokens"].as_u64().unwrap() > 1);
                fits += 1;
            }
            // A refusal is the documented way such an answer may miss the
            // schema: prose, with `stop_reason: "refusal"`.
            "refusal" => {
                assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
                refused += 1;
            }
            other => panic!("{id}: stop_reason {other}: {m}"),
        }
    }
    assert_eq!(fits + refused, 150);
    assert!((1..=20).contains(&refused), "{refused} refusals");
    assert_eq!(verdicts.len(), 3, "{verdicts:?}");
    assert_eq!(confident.len(), 2);

    // Deterministic: the same request gets the same answer in a new batch.
    let again = run_batch(&server, &requests[..5]);
    for (id, line) in &again {
        assert_eq!(
            line["result"]["message"]["content"],
            lines[id]["result"]["message"]["content"]
        );
    }
}

#[test]
fn malformed_output_config_is_an_invalid_request_naming_the_field() {
    let sb = Sandbox::new();
    let server = server(&sb, &[]);
    let schema = rubric_schema();
    let mut bounded = schema.clone();
    bounded["properties"]["score"]["minimum"] = 1.into();
    bounded["properties"]["score"]["maximum"] = 5.into();
    let mut long = schema.clone();
    long["properties"]["verdict"] = serde_json::json!({"type": "string", "maxLength": 10});
    let mut open = schema.clone();
    open["additionalProperties"] = true.into();
    let cases: Vec<(Value, &str)> = vec![
        (
            serde_json::json!({"format": {"type": "json_object", "schema": schema}}),
            "output_config.format.type: Input should be 'json_schema'",
        ),
        (
            serde_json::json!({"format": {"schema": schema}}),
            "output_config.format.type: Field required",
        ),
        (
            serde_json::json!({"format": {"type": "json_schema"}}),
            "output_config.format.schema: Field required",
        ),
        (
            serde_json::json!({"format": {"type": "json_schema", "schema": "{}"}}),
            "output_config.format.schema: Input should be a valid dictionary",
        ),
        (
            serde_json::json!({"format": "json"}),
            "output_config.format: Input should be a valid dictionary",
        ),
        (
            serde_json::json!([1]),
            "output_config: Input should be a valid dictionary",
        ),
        (
            serde_json::json!({"format": {"type": "json_schema", "schema": schema, "strict": true}}),
            "output_config.format.strict: Extra inputs are not permitted",
        ),
        (
            serde_json::json!({"format": {"type": "json_schema", "schema": bounded}}),
            "output_config.format.schema: For 'integer' type, property 'minimum' is not supported",
        ),
        (
            serde_json::json!({"format": {"type": "json_schema", "schema": long}}),
            "output_config.format.schema: For 'string' type, property 'maxLength' is not supported",
        ),
        (
            serde_json::json!({"format": {"type": "json_schema", "schema": open}}),
            "output_config.format.schema: For 'object' type, 'additionalProperties' must be explicitly set to false",
        ),
    ];
    let mut requests: Vec<(String, Value)> = cases
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (format!("bad{i}"), schema_params("an answer", c.clone())))
        .collect();
    // Beside them, output_config without a format (only `effort`) is a
    // plain-text request, and a good one is answered.
    requests.push((
        "effort".into(),
        schema_params("an answer", serde_json::json!({"effort": "low"})),
    ));
    requests.push((
        "good".into(),
        schema_params(
            "an answer",
            serde_json::json!({"format": {"type": "json_schema", "schema": schema}}),
        ),
    ));
    let lines = run_batch(&server, &requests);
    for (i, (_, want)) in cases.iter().enumerate() {
        let line = &lines[&format!("bad{i}")];
        let r = &line["result"];
        // Params are checked while the batch runs: the line carries the
        // error body a synchronous Messages call answers with a 400.
        assert_eq!(r["type"], "errored", "{line}");
        assert_eq!(r["error"]["type"], "error", "{line}");
        assert_eq!(
            r["error"]["error"]["type"], "invalid_request_error",
            "{line}"
        );
        assert_eq!(r["error"]["error"]["message"], *want, "{line}");
        assert!(
            r["error"]["request_id"]
                .as_str()
                .unwrap()
                .starts_with("req_")
        );
    }
    let effort = &lines["effort"]["result"];
    assert_eq!(effort["type"], "succeeded", "{effort}");
    let text = effort["message"]["content"][0]["text"].as_str().unwrap();
    assert!(text.parse::<u64>().unwrap() <= 10, "{text}");
    assert_eq!(lines["good"]["result"]["type"], "succeeded");
    let (_, batches) = call(&server, reqwest::Method::GET, "/v1/messages/batches", None);
    let counts = &batches["data"][0]["request_counts"];
    assert_eq!(counts["errored"], cases.len(), "{counts}");
    assert_eq!(counts["succeeded"], 2, "{counts}");
}

#[test]
fn a_schema_job_is_graded_into_typed_columns_through_structured_outputs() {
    let sb = Sandbox::new();
    let server = server(&sb, &[]);
    let mut csv = String::from("id,text\n");
    for i in 1..=12 {
        csv.push_str(&format!("{i:02},answer number {i}\n"));
    }
    sb.write("in.csv", csv);
    // The score's bounds are not sent (structured outputs refuse them) but
    // are checked on every answer; the simulated model grades 0 to 10.
    let s = spec("typed", &server.url, 5, 2, "")
        .replace("  max_tokens: 4\n", "  max_tokens: 200\n")
        .replace(
            "  parse: number\n",
            "  schema:
    type: object
    properties:
      score: { type: integer, minimum: 0, maximum: 10 }
      verdict: { type: string, enum: [pass, fail, unsure] }
      confident: { type: boolean }
    required: [score, verdict, confident]
    additionalProperties: false
",
        );
    sb.write("job.yaml", &s);
    let r = Anthropic.run(&sb, &["apply", "job.yaml", "--yes", "--json"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["graded"], 12, "{r:?}");
    // Every request carried the schema as structured outputs, the bounds
    // out of the grammar and in the description.
    let lines = common::chunk_lines(&sb, "typed");
    assert_eq!(lines.len(), 12);
    for l in &lines {
        let format = &l["body"]["output_config"]["format"];
        assert_eq!(format["type"], "json_schema", "{l}");
        assert_eq!(
            format["schema"]["properties"]["score"],
            serde_json::json!({"type": "integer", "description": "{\"minimum\":0,\"maximum\":10}"})
        );
    }
    let text = sb.read("out/graded.csv");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    for c in [
        "grade.score",
        "grade.verdict",
        "grade.confident",
        "grade_status",
    ] {
        assert!(header.iter().any(|h| h == c), "{c} in {header:?}");
    }
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 12);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(&row[0], format!("{:02}", i + 1), "input order");
        assert_eq!(&row[col("grade_status")], "ok", "{row:?}");
        let score: u64 = row[col("grade.score")].parse().unwrap();
        assert!(score <= 10, "{row:?}");
        assert!(
            ["pass", "fail", "unsure"].contains(&&row[col("grade.verdict")]),
            "{row:?}"
        );
        assert!(
            ["true", "false"].contains(&&row[col("grade.confident")]),
            "{row:?}"
        );
    }
    common::assert_key_nowhere(&sb, KEY, &[&r]);
}

/// `apply` under `timeout`, with the backend's key: a hang becomes exit 124.
fn apply_within(sb: &Sandbox, secs: u32, args: &[&str]) -> common::Run {
    let limit = secs.to_string();
    sb.command_under(&["timeout", "-s", "KILL", &limit], args)
        .env(KEY_ENV, KEY)
        .output()
        .unwrap()
        .into()
}

#[test]
fn results_whose_lines_are_all_unreadable_end_the_run_and_resume_too() {
    // Every line of every results stream is cut in the middle. Each file is
    // fetched a bounded number of times, then its requests count as not
    // executed, are sent again within their rounds, and end failed: the
    // run ends (it used to wait for good on the retry chunk).
    let sb = Sandbox::new();
    let server = server(&sb, &["--malformed-results"]);
    job(&sb, &server, "retry:\n  max_attempts: 1\n");
    let r = apply_within(&sb, 120, &["apply", "job.yaml", "--json"]);
    assert_eq!(r.code, 3, "{r:?}");
    let s = common::statuses(&sb);
    assert_eq!(s.len(), 25);
    for (id, (status, error)) in &s {
        assert_eq!(status, "failed", "row {id}: {error}");
        assert!(error.contains("not_executed"), "row {id}: {error}");
    }
    assert!(r.stderr.contains("never held a result line"), "{r:?}");
    // Rounds are bounded: one request is in at most three batches.
    let stats = server.stats();
    let mut rounds: HashMap<String, usize> = HashMap::new();
    for b in common::batches(&stats) {
        for id in b["custom_ids"].as_array().unwrap() {
            let (id, _) = common::split_tag(id.as_str().unwrap());
            *rounds.entry(id).or_default() += 1;
        }
    }
    assert_eq!(rounds.len(), 25, "{stats:#}");
    assert!(rounds.values().all(|n| *n == 3), "{rounds:?}");
    common::assert_never_live_twice(Anthropic, &stats);
    // Nothing is left to send: `resume` ends at once, sending nothing.
    let again = apply_within(&sb, 60, &["resume", "--json"]);
    assert_eq!(again.code, 3, "{again:?}");
    assert_eq!(server.stats()["batches_created"], stats["batches_created"]);
}

#[test]
fn a_chunk_given_up_with_its_results_unread_holds_no_other_chunk_back() {
    // Calls keep failing past `give_up_after` on the unreadable files, so
    // the first chunk is given up while its results are unread, with one
    // batch in flight at a time: the other chunks still go, the run ends
    // without sending the given-up chunk's requests again, and `resume`
    // takes it up again.
    let sb = Sandbox::new();
    let server = server(&sb, &["--malformed-results"]);
    sb.write("in.csv", common::standard_input(Anthropic, 25));
    sb.write(
        "job.yaml",
        spec(
            common::standard_name(Anthropic),
            &server.url,
            10,
            1,
            "retry:\n  max_attempts: 1\n  give_up_after: 1s\n",
        ),
    );
    let r = apply_within(&sb, 120, &["apply", "job.yaml", "--json"]);
    assert!(r.code == 3 || r.code == 4, "{r:?}");
    assert!(r.stderr.contains("giving up the chunk"), "{r:?}");
    let stats = server.stats();
    // Every chunk was sent, none of them twice in the run.
    assert_eq!(stats["batches_created"], 3, "{stats:#}");
    common::assert_never_live_twice(Anthropic, &stats);
    let again = apply_within(&sb, 120, &["resume", "--json"]);
    assert!(again.code == 3 || again.code == 4, "{again:?}");
    common::assert_never_live_twice(Anthropic, &server.stats());
}
