//! `deadline:`: a batch job whose batches cannot all finish in time gives
//! way to the direct lane at the margin. The batches out are cancelled, what
//! they finished is collected, the rows left are answered directly, and
//! every row is answered once, counted at the simulated provider (batch
//! lines answered plus chat completions). Killed during the switch and
//! resumed, still no row in both lanes.

use serde_json::Value;

use crate::common::jobs::{Anthropic, Backend, Job, OpenAi};
use crate::common::{self, Sandbox};

/// Lines the server's batches answered (a cancelled batch: those it
/// finished before the cancel).
fn batch_answers(stats: &Value) -> u64 {
    common::jobs::batches(stats)
        .iter()
        .map(|b| {
            let c = &b["request_counts"];
            c["completed"]
                .as_u64()
                .or_else(|| c["succeeded"].as_u64())
                .unwrap_or(0)
        })
        .sum()
}

fn direct_answers(stats: &Value) -> u64 {
    stats["chat_completions"]
        .as_u64()
        .or_else(|| stats["messages"].as_u64())
        .unwrap_or(0)
}

/// `rows` rows in chunks of 10, one batch in flight at a time, each batch
/// taking `in_progress` at the server: the deadline comes long before the
/// last chunk could.
fn job(sb: &Sandbox, backend: Backend, url: &str, rows: usize, extra: &str) {
    sb.write("in.csv", common::jobs::standard_input(backend, rows));
    let yaml = Job::new(backend, "late", url)
        .in_flight(1)
        .yaml(&format!("deadline: 20s\ndeadline_margin: 15s\n{extra}"))
        .replace(
            "max_batches_in_flight: 1\n",
            "max_batches_in_flight: 1\n  max_requests_in_flight: 2\n",
        );
    sb.write("job.yaml", yaml);
}

fn every_row_answered_once(backend: Backend) {
    let rows = 60;
    let sb = Sandbox::new();
    let server = backend.server(&sb, &["--in-progress", "1500ms"]);
    job(&sb, backend, &server.url, rows, "");
    let plan = backend.run(&sb, &["plan", "job.yaml"], &[]);
    assert!(plan.stderr.contains("deadline"), "{plan:?}");
    assert!(
        plan.stderr
            .contains("20s after the first apply; margin 15s"),
        "{plan:?}"
    );
    let started = std::time::Instant::now();
    let r = backend.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "ended after the deadline: {:?}",
        started.elapsed()
    );
    let stats = server.stats();
    let in_batches = batch_answers(&stats);
    let direct = direct_answers(&stats);
    assert!(
        direct > 0,
        "the direct lane answered the rows left: {stats:#}"
    );
    assert!(in_batches > 0, "some batches finished in time: {stats:#}");
    assert_eq!(
        in_batches + direct,
        rows as u64,
        "each row answered once: {stats:#}"
    );
    // Every row graded, in the output.
    let statuses = common::jobs::statuses(&sb);
    assert_eq!(statuses.len(), rows);
    assert!(statuses.values().all(|(s, _)| s == "ok"), "{statuses:?}");
    // The receipt says how many went each way and what each lane cost.
    let out = r.json();
    assert_eq!(out["lanes"]["batch_requests"], in_batches, "{out:#}");
    assert_eq!(out["lanes"]["direct_requests"], direct, "{out:#}");
    assert!(
        out["lanes"]["direct_usd"].as_f64().unwrap() > 0.0,
        "{out:#}"
    );
    assert!(r.stderr.contains("lanes       batch:"), "{r:?}");
    // The ledger holds both lanes.
    let ledger = sb.read("state/usage.jsonl");
    assert!(ledger.contains("\"batch_id\":\"direct-"), "{ledger}");
    assert!(
        ledger
            .lines()
            .any(|l| !l.contains("\"batch_id\":\"direct-")),
        "{ledger}"
    );
    // A later apply sends nothing more.
    let again = backend.run(&sb, &["apply", "job.yaml"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    let later = server.stats();
    assert_eq!(batch_answers(&later) + direct_answers(&later), rows as u64);
}

#[test]
fn past_the_margin_the_rest_goes_direct_and_every_row_is_answered_once() {
    every_row_answered_once(OpenAi);
}

#[test]
fn past_the_margin_a_claude_job_goes_to_the_messages_api() {
    every_row_answered_once(Anthropic);
}

/// Killed right after the cancels (the switch half done), and again in the
/// direct lane; `resume` each time. No row is in a batch and answered
/// directly beyond the direct lane's unrecorded window, and the job ends
/// with every row graded.
#[test]
fn killed_during_the_switch_then_resumed_no_row_goes_both_ways() {
    let rows = 60;
    let sb = Sandbox::new();
    let server = OpenAi.server(&sb, &["--in-progress", "1500ms"]);
    job(&sb, OpenAi, &server.url, rows, "");
    let killed = OpenAi.run(
        &sb,
        &["apply", "job.yaml"],
        &[("BATCHGRADER_TEST_KILL_AT", "deadline-cancelled")],
    );
    assert_ne!(killed.code, 0, "{killed:?}");
    common::wait_for_store_release(&sb, "late");
    let killed_again = OpenAi.run(
        &sb,
        &["resume"],
        &[("BATCHGRADER_TEST_KILL_AT", "direct-commit:5")],
    );
    assert_ne!(killed_again.code, 0, "{killed_again:?}");
    common::wait_for_store_release(&sb, "late");
    let resumed = OpenAi.run(&sb, &["resume"], &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let stats = server.stats();
    let in_batches = batch_answers(&stats);
    let direct = direct_answers(&stats);
    // The kill in the direct lane may lose what was in flight and not yet
    // recorded (at most 4 × max_requests_in_flight = 8, README); nothing
    // else is answered twice, and no row both in a batch and directly.
    assert!(in_batches > 0, "{stats:#}");
    assert!(in_batches + direct >= rows as u64, "{stats:#}");
    assert!(in_batches + direct <= rows as u64 + 8, "{stats:#}");
    let statuses = common::jobs::statuses(&sb);
    assert!(statuses.values().all(|(s, _)| s == "ok"), "{statuses:?}");
}
