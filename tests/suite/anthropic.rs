//! `kind: anthropic` end to end: the real binary against the simulated
//! Message Batches API in its own process (`simulate-server --api
//! anthropic`), through the real HTTP client. Message batches carry no
//! metadata, so what these tests prove about duplicates they prove from
//! the server's own record of every batch and the custom ids it held.

use crate::common;

use std::collections::{HashMap, HashSet};

use common::Sandbox;
use common::sim::Server;
use serde_json::Value;

const KEY_ENV: &str = "BG_TEST_ANTHROPIC_KEY";
const KEY: &str = "sk-ant-test-not-a-real-key-4242";

fn server(sb: &Sandbox, extra: &[&str]) -> Server {
    let mut args = vec!["--api", "anthropic", "--api-key", KEY];
    args.extend_from_slice(extra);
    Server::start(sb, &args)
}

fn spec(name: &str, url: &str, chunk: u32, in_flight: u32, extra: &str) -> String {
    format!(
        "version: 1
name: {name}
provider:
  kind: anthropic
  base_url: {url}
  api_key_env: {KEY_ENV}
model: claude-haiku-4-5
input:
  path: in.csv
  id: id
prompt:
  system: Grade the answer from 0 to 10. Reply with the number only.
  user: \"{{{{ text }}}}\"
request:
  max_tokens: 4
  temperature: 0
output:
  path: out/graded.csv
  field: grade
  parse: number
chunking:
  max_requests: {chunk}
concurrency:
  max_batches_in_flight: {in_flight}
poll:
  interval: 100ms
  max_interval: 200ms
{extra}"
    )
}

/// 25 rows with cells that must survive verbatim, in chunks of 10.
fn job(sb: &Sandbox, server: &Server, extra: &str) {
    let mut csv = String::from("id,text,note\n");
    for i in 1..=25 {
        let text = match i {
            3 => "\"quoted, \"\"with\"\" comma\"".to_string(),
            7 => "\"two\nlines\"".to_string(),
            11 => "café ☕".to_string(),
            _ => format!("answer number {i}"),
        };
        csv.push_str(&format!("{i:03},{text},00{i}\n"));
    }
    sb.write("in.csv", csv);
    sb.write("job.yaml", spec("claude", &server.url, 10, 2, extra));
}

fn run(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> common::Run {
    let mut e = vec![(KEY_ENV, KEY)];
    e.extend_from_slice(env);
    sb.run_env(args, &e)
}

fn batches(stats: &Value) -> &Vec<Value> {
    stats["batches"].as_array().unwrap()
}

/// The custom id without the submit's tag, and the tag.
fn split(id: &str) -> (String, String) {
    let (row, tag) = id.rsplit_once('_').expect("a tagged custom id");
    (row.to_string(), tag.to_string())
}

/// Every batch holds one submit's requests (one tag), no two batches share
/// a tag, and no request was in two batches: one batch per chunk attempt.
fn assert_one_batch_per_submit(stats: &Value, rows: usize) {
    let mut tags = HashSet::new();
    let mut seen = HashSet::new();
    for b in batches(stats) {
        let ids = b["custom_ids"].as_array().unwrap();
        let batch_tags: HashSet<String> =
            ids.iter().map(|i| split(i.as_str().unwrap()).1).collect();
        assert_eq!(batch_tags.len(), 1, "one tag per batch: {b:#}");
        assert!(
            tags.insert(batch_tags.into_iter().next().unwrap()),
            "two batches of one submit: {stats:#}"
        );
        for i in ids {
            let row = split(i.as_str().unwrap()).0;
            assert!(seen.insert(row.clone()), "{row} sent twice: {stats:#}");
        }
    }
    assert_eq!(seen.len(), rows, "{stats:#}");
}

/// The output of an uninterrupted run, made once per test process.
fn reference_output() -> String {
    static REF: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REF.get_or_init(|| {
        let sb = Sandbox::new();
        let server = server(&sb, &[]);
        job(&sb, &server, "");
        let r = run(&sb, &["apply", "job.yaml"], &[]);
        assert_eq!(r.code, 0, "{r:?}");
        let stats = server.stats();
        assert_eq!(stats["batches_created"], 3, "{stats:#}");
        assert_one_batch_per_submit(&stats, 25);
        sb.read("out/graded.csv")
    })
    .clone()
}

/// No file under the sandbox, and nothing printed, holds the key.
fn assert_key_nowhere(sb: &Sandbox, printed: &[&common::Run]) {
    for r in printed {
        assert!(!r.stdout.contains(KEY) && !r.stderr.contains(KEY), "{r:?}");
    }
    let mut stack = vec![sb.path("state"), sb.path("out")];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&p) {
            assert!(
                !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
                "the key is in {}",
                p.display()
            );
        }
    }
}

#[test]
fn a_multi_chunk_job_is_graded_row_for_row_in_input_order() {
    let out = reference_output();
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
    let r = run(&sb, &["apply", "job.yaml", "--json"], &[]);
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
    assert_key_nowhere(&sb, &[&r, &costs]);
}

fn crash_then_resume(point: &str) {
    let sb = Sandbox::new();
    let server = server(&sb, &[]);
    job(&sb, &server, "");
    let killed = run(
        &sb,
        &["apply", "job.yaml"],
        &[("BATCHGRADER_TEST_KILL_AT", point)],
    );
    assert_eq!(killed.signal, Some(9), "not killed at {point}: {killed:?}");
    let resumed = run(&sb, &["resume"], &[]);
    assert_eq!(
        resumed.code, 0,
        "resume after a kill at {point}: {resumed:?}"
    );
    if point == "create-sent" {
        // The batch made before the kill was found by its results.
        assert!(resumed.stderr.contains("adopted batch"), "{resumed:?}");
    }
    let stats = server.stats();
    assert_eq!(stats["batches_created"], 3, "at {point}: {stats:#}");
    assert_one_batch_per_submit(&stats, 25);
    assert_eq!(
        sb.read("out/graded.csv"),
        reference_output(),
        "output after a kill at {point}"
    );
    let ids: Vec<String> = sb
        .read("state/usage.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["batch_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3);
    assert_key_nowhere(&sb, &[&killed, &resumed]);
}

#[test]
fn kill_after_staging() {
    crash_then_resume("upload");
}

#[test]
fn kill_after_create_intent() {
    crash_then_resume("create-intent");
}

#[test]
fn kill_after_create_before_recording_it() {
    crash_then_resume("create-sent");
}

#[test]
fn kill_after_create() {
    crash_then_resume("create");
}

#[test]
fn kill_while_polling() {
    crash_then_resume("poll");
}

#[test]
fn kill_while_downloading() {
    crash_then_resume("download");
}

#[test]
fn kill_after_merging_a_chunk() {
    crash_then_resume("ingest");
}

#[test]
fn kill_while_writing_the_output() {
    crash_then_resume("output");
}

#[test]
fn creates_that_commit_and_then_fail_make_no_duplicate_batch() {
    let sb = Sandbox::new();
    let server = server(&sb, &["--create-commit-error-rate", "100%"]);
    job(&sb, &server, "");
    let r = run(&sb, &["apply", "job.yaml"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let stats = server.stats();
    assert!(
        stats["create_commit_errors"].as_u64().unwrap() > 0,
        "the fault happened: {stats:#}"
    );
    assert_eq!(stats["batches_created"], 3, "{stats:#}");
    assert_one_batch_per_submit(&stats, 25);
    assert!(r.stderr.contains("adopted batch"), "{r:?}");
    assert_eq!(sb.read("out/graded.csv"), reference_output());
}

/// The output's `grade_status` and `grade_error` columns, by row id.
fn statuses(sb: &Sandbox) -> HashMap<String, (String, String)> {
    let out = sb.read("out/graded.csv");
    let mut r = csv::Reader::from_reader(out.as_bytes());
    let header = r.headers().unwrap().clone();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let (s, e) = (col("grade_status"), col("grade_error"));
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), (rec[s].to_string(), rec[e].to_string()))
        })
        .collect()
}

/// Every (row → batches) interval must be disjoint: no request is live in
/// two batches at once.
fn assert_never_live_twice(stats: &Value) {
    let mut live: HashMap<String, Vec<(u64, u64, String)>> = HashMap::new();
    for b in batches(stats) {
        let start = b["created_at_ms"].as_u64().unwrap();
        let end = b["ended_at_ms"].as_u64().unwrap_or(u64::MAX);
        for id in b["custom_ids"].as_array().into_iter().flatten() {
            live.entry(split(id.as_str().unwrap()).0)
                .or_default()
                .push((start, end, b["id"].as_str().unwrap().to_string()));
        }
    }
    for (id, mut spans) in live {
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "request {id} was live in {} and {} at once",
                w[0].2,
                w[1].2
            );
        }
    }
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
    let r = run(&sb, &["apply", "job.yaml", "--json"], &[]);
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
    assert_never_live_twice(&stats);
    let s = statuses(&sb);
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
    assert_key_nowhere(&sb, &[&r]);
}

#[test]
fn cancelled_lines_are_sent_again_by_the_next_apply() {
    let sb = Sandbox::new();
    let server = server(&sb, &["--in-progress", "3s"]);
    job(&sb, &server, "");
    let detached = run(&sb, &["apply", "job.yaml", "--detach"], &[]);
    assert_eq!(detached.code, 5, "{detached:?}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let cancelled = run(&sb, &["cancel"], &[]);
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    assert_eq!(server.stats()["batches_cancelled"], 2);
    // Resume collects what the cancelled batches did (their `canceled`
    // lines never ran) and submits nothing new.
    let resumed = run(&sb, &["resume", "--json"], &[]);
    assert_eq!(resumed.code, 4, "{resumed:?}");
    assert_eq!(server.stats()["batches_created"], 2);
    let s = resumed.json();
    assert!(s["not_graded"].as_u64().unwrap() >= 5, "{s:#}");
    // `apply` starts again and sends the cancelled requests once more.
    let again = run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["graded"], 25);
    assert_eq!(sb.read("out/graded.csv"), reference_output());
    assert_never_live_twice(&server.stats());
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
    let killed = run(
        &sb,
        &["apply", "job.yaml"],
        &[("BATCHGRADER_TEST_KILL_AT", "create-intent")],
    );
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    foreign_batch(&server, 10);
    let resumed = run(&sb, &["resume"], &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    // It could not be told apart while it ran: the chunk waited, then read
    // its results, found it was not its own, and created its batch.
    assert!(resumed.stderr.contains("may be that create"), "{resumed:?}");
    assert!(!resumed.stderr.contains("adopted batch"), "{resumed:?}");
    let stats = server.stats();
    assert_eq!(stats["batches_created"], 4, "{stats:#}");
    let mut ours = stats.clone();
    ours["batches"] = Value::Array(
        batches(&stats)
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
    assert_one_batch_per_submit(&ours, 25);
    assert_eq!(sb.read("out/graded.csv"), reference_output());
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
