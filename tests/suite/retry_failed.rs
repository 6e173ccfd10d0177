//! `--retry-failed` and `--retry-parse-failures`: rows that ended for good
//! (a 400 on every request, answers that did not parse) are sent again once
//! the cause is fixed, in the batch lane and in direct mode; without the
//! flag nothing is sent and the summary says how; a kill right after the
//! grant is recorded sends no row twice.

use serde_json::Value;

use crate::common::jobs::{
    Anthropic, Backend, Direct, Job, OpenAi, reference_output, standard_job, statuses,
};
use crate::common::sim::Server;
use crate::common::{self, Sandbox};

const ROWS: usize = 12;

/// The requests the server ran (batch lines, or chat completions answered).
fn requests_seen(backend: Backend, stats: &Value) -> u64 {
    match backend {
        Direct => stats["chat_completions"].as_u64().unwrap(),
        _ => common::jobs::batches(stats)
            .iter()
            .map(|b| b["custom_ids"].as_array().map_or(0, Vec::len) as u64)
            .sum(),
    }
}

/// The tokens the server billed.
fn billed(backend: Backend, stats: &Value) -> (u64, u64) {
    let usage = match backend {
        Direct => &stats["chat_usage"],
        _ => &stats["usage"],
    };
    (
        usage["input_tokens"].as_u64().unwrap(),
        usage["output_tokens"].as_u64().unwrap(),
    )
}

/// Every row of the output has this status.
fn assert_all(sb: &Sandbox, status: &str) {
    let s = statuses(sb);
    assert_eq!(s.len(), ROWS);
    assert!(s.values().all(|(st, _)| st == status), "{s:?}");
}

/// The standard job run against a server that refuses every request with a
/// 400: every row failed for good, and the summary names the way out. The
/// server is then replaced by a good one on the same port, returned.
fn all_refused(sb: &Sandbox, backend: Backend) -> Server {
    let bad = backend.server(sb, &["--reject-requests", "1"]);
    standard_job(sb, backend, &bad.url, ROWS, "");
    let first = backend.run(sb, &["apply", "job.yaml", "--yes"], &[]);
    assert_eq!(first.code, 3, "{first:?}");
    assert_all(sb, "failed");
    assert!(
        statuses(sb).values().all(|(_, e)| e.contains("refused")),
        "{:?}",
        statuses(sb)
    );
    assert!(
        first
            .stderr
            .contains("`batchgrader apply job.yaml --retry-failed` sends them again"),
        "{first:?}"
    );
    let port = bad.port();
    drop(bad);
    let api: &[&str] = match backend {
        Anthropic | Backend::DirectAnthropic => &["--api", "anthropic", "--api-key", backend.key()],
        OpenAi | Direct => &[],
    };
    Server::start_at(sb, port, "fixed", api)
}

fn retry_failed_after_the_server_is_fixed(backend: Backend) {
    let sb = Sandbox::new();
    let job = common::jobs::standard_name(backend);
    let good = all_refused(&sb, backend);
    // Without the flag: nothing is sent, and the summary says what to run.
    let again = backend.run(&sb, &["resume", "--json"], &[]);
    assert_eq!(again.code, 3, "{again:?}");
    assert_eq!(requests_seen(backend, &good.stats()), 0);
    let hint = format!("batchgrader resume {job} --retry-failed");
    assert!(again.stderr.contains(&hint), "{again:?}");
    assert_eq!(again.json()["retry_hint"], hint.as_str());
    let before = common::jobs::ledger_tokens(&sb, job);
    // With it: every row graded, each sent once, the spend in the ledger.
    let fixed = backend.run(&sb, &["apply", "job.yaml", "--retry-failed", "--yes"], &[]);
    assert_eq!(fixed.code, 0, "{fixed:?}");
    assert!(!fixed.stderr.contains("--retry-failed` sends"), "{fixed:?}");
    assert_all(&sb, "ok");
    let stats = good.stats();
    assert_eq!(requests_seen(backend, &stats), ROWS as u64, "{stats:#}");
    let after = common::jobs::ledger_tokens(&sb, job);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        billed(backend, &stats),
        "the ledger holds the new spend"
    );
    assert_eq!(sb.read("out/graded.csv"), reference_output(backend, ROWS));
    // The flag again: nothing failed, so nothing is sent.
    let twice = backend.run(&sb, &["resume", "--retry-failed"], &[]);
    assert_eq!(twice.code, 0, "{twice:?}");
    assert_eq!(requests_seen(backend, &good.stats()), ROWS as u64);
}

#[test]
fn retry_failed_sends_the_refused_rows_again_in_batch_mode() {
    retry_failed_after_the_server_is_fixed(OpenAi);
}

#[test]
fn retry_failed_sends_the_errored_rows_again_with_message_batches() {
    retry_failed_after_the_server_is_fixed(Anthropic);
}

#[test]
fn retry_failed_sends_the_refused_rows_again_in_direct_mode() {
    retry_failed_after_the_server_is_fixed(Direct);
}

/// A kill right after the grant is recorded, before anything is sent (or at
/// a later `point` of the send): the next run sends each row once, with the
/// flag given again or not.
fn killed_after_the_grant(backend: Backend, point: &str, flag_again: bool) {
    let sb = Sandbox::new();
    let good = all_refused(&sb, backend);
    let killed = backend.run(
        &sb,
        &["resume", "--retry-failed"],
        &[("BATCHGRADER_TEST_KILL_AT", point)],
    );
    assert_eq!(killed.signal, Some(9), "not killed at {point}: {killed:?}");
    if point == "retry-granted" {
        assert_eq!(requests_seen(backend, &good.stats()), 0);
    }
    let args: &[&str] = if flag_again {
        &["resume", "--retry-failed"]
    } else {
        &["resume"]
    };
    let resumed = backend.run(&sb, args, &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_all(&sb, "ok");
    let stats = good.stats();
    assert_eq!(
        requests_seen(backend, &stats),
        ROWS as u64,
        "a row was sent twice: {stats:#}"
    );
    if backend != Direct {
        common::jobs::assert_never_live_twice(backend, &stats);
    }
    if point == "create-sent" {
        // The batch made before the kill was found and adopted.
        assert!(resumed.stderr.contains("adopted batch"), "{resumed:?}");
    }
}

#[test]
fn a_kill_after_the_grant_sends_no_row_twice_in_batch_mode() {
    killed_after_the_grant(OpenAi, "retry-granted", true);
}

#[test]
fn a_kill_after_the_retry_batch_was_created_sends_no_row_twice() {
    killed_after_the_grant(OpenAi, "create-sent", true);
}

#[test]
fn a_kill_after_the_grant_sends_no_row_twice_in_direct_mode() {
    killed_after_the_grant(Direct, "retry-granted", false);
}

/// Answers that do not parse (a server that answers numbers to a label job)
/// are sent again with `--retry-parse-failures`, and the new answers
/// replace them; without the flag nothing is sent.
fn retry_parse_failures(backend: Backend) {
    let sb = Sandbox::new();
    let first = backend.server(&sb, &[]);
    sb.write("in.csv", common::jobs::standard_input(backend, ROWS));
    let yaml = Job::new(backend, "labels", &first.url)
        .yaml("")
        .replace("parse: number", "parse: label\n  labels: [good, bad]");
    sb.write("job.yaml", yaml);
    let run = backend.run(&sb, &["apply", "job.yaml", "--yes"], &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_all(&sb, "parse_error");
    let port = first.port();
    drop(first);
    let second = Server::start_at(&sb, port, "labels", &["--labels", "good,bad"]);
    let again = backend.run(&sb, &["resume"], &[]);
    assert_eq!(again.code, 3, "{again:?}");
    assert_eq!(requests_seen(backend, &second.stats()), 0);
    let fixed = backend.run(&sb, &["resume", "--retry-parse-failures"], &[]);
    assert_eq!(requests_seen(backend, &second.stats()), ROWS as u64);
    // The server now answers with the labels, but now and then with none
    // (`unsure`): those rows did not parse again.
    let s = statuses(&sb);
    let unparsed = s.values().filter(|(st, _)| st == "parse_error").count();
    let ok = s.values().filter(|(st, _)| st == "ok").count();
    assert_eq!(ok + unparsed, ROWS, "{s:?}");
    assert!(ok >= ROWS / 2, "{s:?}");
    assert_eq!(fixed.code, if unparsed == 0 { 0 } else { 3 }, "{fixed:?}");
    // Each is sent (and paid) again; the answers that parsed are not.
    let again = backend.run(&sb, &["resume", "--retry-parse-failures"], &[]);
    assert_eq!(again.code, fixed.code, "{again:?}");
    assert_eq!(
        requests_seen(backend, &second.stats()),
        (ROWS + unparsed) as u64
    );
}

#[test]
fn retry_parse_failures_replaces_the_answers_in_batch_mode() {
    retry_parse_failures(OpenAi);
}

#[test]
fn retry_parse_failures_replaces_the_answers_in_direct_mode() {
    retry_parse_failures(Direct);
}
