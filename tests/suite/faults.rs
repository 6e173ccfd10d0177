//! The fault model and the halt policy, end to end: the real binary against
//! the simulated provider in its own process, through the real HTTP client.

use crate::common;

use std::collections::HashMap;

use common::sim::Server;
use common::{Job, OpenAi, Sandbox};

const KEY_ENV: &str = OpenAi.key_env();
const KEY: &str = OpenAi.key();

/// `rows` rows of `text`, in chunks of `chunk` requests, `in_flight` at once.
fn job(sb: &Sandbox, url: &str, rows: usize, text: &str, chunk: u32, in_flight: u32, extra: &str) {
    let mut csv = String::from("id,text\n");
    for i in 1..=rows {
        csv.push_str(&format!("{i},{text} {i}\n"));
    }
    sb.write("in.csv", csv);
    sb.write(
        "job.yaml",
        Job::new(OpenAi, "faults", url)
            .chunk(chunk)
            .in_flight(in_flight)
            .yaml(extra),
    );
}

fn apply(sb: &Sandbox) -> common::Run {
    OpenAi.run(sb, &["apply", "job.yaml", "--json"], &[])
}

/// The output's `grade_status` column, by row id.
fn statuses(sb: &Sandbox) -> HashMap<String, String> {
    common::statuses(sb)
        .into_iter()
        .map(|(id, (status, _))| (id, status))
        .collect()
}

#[test]
fn failure_rate_passed_in_the_first_chunk_creates_no_second_batch() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--request-failure-rate", "0.5"]);
    job(
        &sb,
        &server.url,
        30,
        "answer",
        10,
        1,
        "retry:\n  max_attempts: 1\nhalt:\n  max_failure_rate: 10%\n",
    );
    let run = apply(&sb);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("failure rate"), "{run:?}");
    let stats = server.stats();
    assert_eq!(stats["batches_created"], 1, "{stats:#}");
    // The output holds what the one chunk graded; the rest is not graded.
    let s = statuses(&sb);
    assert_eq!(s.len(), 30);
    let summary = run.json();
    let graded = s.values().filter(|v| *v == "ok").count() as u64;
    let failed = s.values().filter(|v| *v == "failed").count() as u64;
    assert_eq!(graded + failed, 10, "{s:?}");
    assert!(failed >= 2, "the sample must pass 10%: {s:?}");
    assert_eq!(summary["graded"], graded);
    assert_eq!(summary["ending"], "halted");
}

#[test]
fn budget_passed_mid_run_stops_before_the_next_batch() {
    // The simulated provider bills 1,000 prompt tokens a request more than
    // the plan counts, as a provider that counts otherwise would: the
    // estimate's upper bound passes the start check, the actual spend does
    // not, and the summary says the spend passed the plan's "at most".
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--bill-extra-prompt-tokens", "1000"]);
    let text = "a".repeat(4000);
    job(
        &sb,
        &server.url,
        30,
        &text,
        10,
        1,
        "halt:\n  max_cost_usd: 0.0013\n",
    );
    let plan = sb.run_env(&["plan", "job.yaml", "--json"], &[]);
    let high = plan.json()["estimate"]["high"].as_f64().unwrap();
    assert!(high < 0.0013, "the start check must pass: {high}");
    let run = apply(&sb);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("passed halt.max_cost_usd"), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "more than the plan's at most {}",
            batchgrader::cost::usd(high)
        )),
        "{run:?}"
    );
    let stats = server.stats();
    assert_eq!(stats["batches_created"], 2, "{stats:#}");
    let summary = run.json();
    assert!(summary["actual_cost_usd"].as_f64().unwrap() > 0.0013);
    assert_eq!(summary["graded"], 20, "{summary:#}");
    assert_eq!(statuses(&sb).len(), 30);
    // The receipt: batch prices are half the standard ones here.
    let r = &summary["receipt"];
    let (paid, standard) = (
        r["paid_usd"].as_f64().unwrap(),
        r["standard_usd"].as_f64().unwrap(),
    );
    assert!((standard - 2.0 * paid).abs() < 1e-9, "{r}");
    assert!(
        (r["saved_usd"].as_f64().unwrap() - paid).abs() < 1e-9,
        "{r}"
    );
}

#[test]
fn a_storm_of_429_and_5xx_does_not_abort_the_job() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--http-error-rate", "0.4"]);
    job(&sb, &server.url, 40, "answer", 5, 3, "");
    let run = apply(&sb);
    assert_eq!(run.code, 0, "{run:?}");
    let s = statuses(&sb);
    assert!(s.values().all(|v| v == "ok"), "{s:?}");
    assert_eq!(s.len(), 40);
    // One batch per chunk: every unclear create was looked for first.
    let stats = server.stats();
    let mut per_chunk: HashMap<String, u32> = HashMap::new();
    for b in common::batches(&stats) {
        *per_chunk
            .entry(
                b["metadata"]["batchgrader_chunk"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default() += 1;
    }
    assert_eq!(per_chunk.len(), 8, "{stats:#}");
    assert!(per_chunk.values().all(|n| *n == 1), "{per_chunk:?}");
}

fn fault_storm(server_errors: &str, rows: usize) {
    let sb = Sandbox::new();
    let server = Server::start(
        &sb,
        &[
            "--rate-limit-rate",
            "15%",
            "--server-error-rate",
            server_errors,
            "--request-flake-rate",
            "5%",
            "--create-commit-error-rate",
            "10%",
            "--expire-every",
            "3",
            "--token-limit-every",
            "4",
        ],
    );
    job(&sb, &server.url, rows, "answer", 6, 3, "");
    let run = apply(&sb);
    assert_eq!(run.code, 0, "{run:?}");
    let s = statuses(&sb);
    assert_eq!(s.len(), rows);
    assert!(s.values().all(|v| v == "ok"), "{s:?}");
    let stats = server.stats();
    // The faults happened.
    for counter in [
        "injected_429",
        "injected_5xx",
        "expired_batches",
        "token_limit_failures",
    ] {
        assert!(stats[counter].as_u64().unwrap() > 0, "{counter}: {stats:#}");
    }
    common::assert_never_live_twice(OpenAi, &stats);
    let usage = &stats["usage"];
    assert_eq!(
        common::ledger_tokens(&sb, "faults"),
        (
            usage["input_tokens"].as_u64().unwrap(),
            usage["output_tokens"].as_u64().unwrap()
        ),
        "the ledger records what the provider billed"
    );
    // What the user saw in CI: a create that answered 500 after making its
    // batch parked the chunk, and the batch was found and adopted.
    if stats["create_commit_errors"].as_u64().unwrap() > 0 {
        assert!(run.stderr.contains("create failed"), "{run:?}");
        assert!(run.stderr.contains("retrying in"), "{run:?}");
        assert!(run.stderr.contains("adopted batch"), "{run:?}");
    }
}

#[test]
fn acceptance_fault_storm_finishes_with_every_row_graded() {
    fault_storm("10%", 60);
}

#[test]
fn acceptance_fault_storm_with_half_the_calls_failing_finishes_too() {
    fault_storm("50%", 12);
}

#[test]
fn chunk_failure_halts_with_on_chunk_failure() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--expire-every", "2"]);
    job(
        &sb,
        &server.url,
        30,
        "answer",
        10,
        1,
        "halt:\n  on_chunk_failure: true\n",
    );
    let run = apply(&sb);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("halt.on_chunk_failure"), "{run:?}");
    assert!(run.stderr.contains("chunk 2"), "{run:?}");
    // Chunk 1 graded, chunk 2 expired half done, chunk 3 never created.
    let stats = server.stats();
    assert_eq!(stats["batches_created"], 2, "{stats:#}");
    let s = statuses(&sb);
    let graded = s.values().filter(|v| *v == "ok").count();
    assert_eq!(graded, 15, "{s:?}");
}

#[test]
fn batches_the_provider_lost_are_sent_again() {
    // A proxy restarted without its state: the batches out answer 404.
    let sb = Sandbox::new();
    let first = Server::start_at(&sb, 0, "first", &["--in-progress", "30s"]);
    job(&sb, &first.url, 12, "answer", 6, 2, "");
    let detached = sb.run_env(&["apply", "job.yaml", "--detach"], &[(KEY_ENV, KEY)]);
    assert_eq!(detached.code, 5, "{detached:?}");
    let port = first.port();
    drop(first);
    let second = Server::start_at(&sb, port, "second", &[]);
    let run = sb.run_env(&["resume", "--json"], &[(KEY_ENV, KEY)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("no longer knows batch"), "{run:?}");
    let s = statuses(&sb);
    assert_eq!(s.len(), 12);
    assert!(s.values().all(|v| v == "ok"), "{s:?}");
    // The second server ran every request once more, in retry chunks.
    let stats = second.stats();
    let ids: usize = common::batches(&stats)
        .iter()
        .map(|b| b["custom_ids"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(ids, 12, "{stats:#}");
}

#[test]
fn a_halt_cancels_the_batches_still_out_and_collects_them() {
    // Chunk 2's first batch is refused for the enqueued-token limit, so its
    // second one is still running when chunk 1's failures halt the job.
    let sb = Sandbox::new();
    let server = Server::start(
        &sb,
        &[
            "--request-failure-rate",
            "0.5",
            "--token-limit-every",
            "2",
            "--in-progress",
            "2s",
        ],
    );
    job(
        &sb,
        &server.url,
        20,
        "answer",
        10,
        2,
        "retry:\n  max_attempts: 1\nhalt:\n  max_failure_rate: 10%\n",
    );
    let run = apply(&sb);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("cancelled batch"), "{run:?}");
    let stats = server.stats();
    assert_eq!(stats["batches_cancelled"], 1, "{stats:#}");
    // What the cancelled batch did was paid for: it is collected, merged
    // and in the ledger, and the halted job creates nothing more.
    assert!(
        run.stderr.contains("collecting the batches that are out"),
        "{run:?}"
    );
    let s = statuses(&sb);
    assert_eq!(s.len(), 20);
    assert_eq!(
        s.values().filter(|v| *v == "not_graded").count(),
        0,
        "{s:?}"
    );
    assert_eq!(stats["batches_created"], 3, "{stats:#}");
    let usage = &stats["usage"];
    assert_eq!(
        common::ledger_tokens(&sb, "faults"),
        (
            usage["input_tokens"].as_u64().unwrap(),
            usage["output_tokens"].as_u64().unwrap()
        )
    );
}

#[test]
fn a_chunk_given_up_in_an_outage_is_tried_again_by_resume() {
    let sb = Sandbox::new();
    // Nothing listens on this port yet: every call is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v1");
    job(
        &sb,
        &url,
        6,
        "answer",
        6,
        1,
        "retry:\n  give_up_after: 2s\n",
    );
    let run = apply(&sb);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("giving up the chunk"), "{run:?}");
    assert!(run.stderr.contains("given up for now"), "{run:?}");
    let s = statuses(&sb);
    assert!(s.values().all(|v| v == "not_graded"), "{s:?}");
    // The provider is back: the same job, not planned again, finishes.
    let server = Server::start_at(&sb, port, "server-data", &[]);
    let run = sb.run_env(&["resume", "--json"], &[(KEY_ENV, KEY)]);
    assert_eq!(run.code, 0, "{run:?}");
    let s = statuses(&sb);
    assert!(s.values().all(|v| v == "ok"), "{s:?}");
    assert_eq!(server.stats()["batches_created"], 1);
}

/// A gateway that retries a create which made its batch and answered 500
/// runs a second batch the job never hears of. Every twin is found (by
/// the job's metadata in the batch list), cancelled while it runs, its
/// usage put in the ledger as twin spend (the server's own count), named in
/// the summary and in `status`, and none of its results is merged.
#[test]
fn twin_batches_made_behind_the_jobs_back_are_found_cancelled_and_counted() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--twin-create-rate", "100%", "--in-progress", "3s"]);
    common::standard_job(&sb, OpenAi, &server.url, 25, "");
    let r = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    // The rows are the reference's: nothing of a twin was merged.
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(OpenAi, 25)
    );
    let stats = server.stats();
    assert_eq!(stats["twin_creates"], 3, "{stats:#}");
    assert_eq!(stats["batches_created"], 6, "{stats:#}");
    let ledger = std::fs::read_to_string(sb.path("state/usage.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let recorded: std::collections::HashSet<&str> = lines
        .iter()
        .filter(|l| l["kind"].is_null())
        .map(|l| l["batch_id"].as_str().unwrap())
        .collect();
    assert_eq!(recorded.len(), 3, "{ledger}");
    let summary = r.json();
    let message = summary["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("3 twin batches found"), "{summary:#}");
    for b in common::batches(&stats) {
        let id = b["id"].as_str().unwrap();
        if recorded.contains(id) {
            assert_eq!(b["status"], "completed", "{b:#}");
            continue;
        }
        // A twin: cancelled, its usage in the ledger once, as the server
        // counts it, and named in the summary.
        assert_eq!(b["status"], "cancelled", "{b:#}");
        let twin_lines: Vec<&serde_json::Value> =
            lines.iter().filter(|l| l["batch_id"] == id).collect();
        assert_eq!(twin_lines.len(), 1, "{id}: {ledger}");
        assert_eq!(twin_lines[0]["kind"], "twin", "{ledger}");
        assert_eq!(twin_lines[0]["input_tokens"], b["usage"]["input_tokens"]);
        assert_eq!(twin_lines[0]["output_tokens"], b["usage"]["output_tokens"]);
        assert!(message.contains(id), "{id}: {message}");
    }
    assert_eq!(stats["batches_cancelled"], 3, "{stats:#}");
    let status = OpenAi.run(&sb, &["status", "--json"], &[]);
    assert!(status.stdout.contains("3 twin batches found"), "{status:?}");
    // The next run finds the same twins recorded and reports nothing new.
    let again = OpenAi.run(&sb, &["resume", "--json"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(server.stats()["batches_created"], 6);
    assert_eq!(
        std::fs::read_to_string(sb.path("state/usage.jsonl")).unwrap(),
        ledger
    );
}
