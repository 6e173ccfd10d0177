//! The short form of `bench/chaos`, for each backend: a small multi-chunk
//! job against the simulated provider in its own process, with about 10% of
//! its API calls failing (and, for the batch APIs, creates that commit and
//! then fail, flaky requests, expiring and token-limited batches), SIGKILLed
//! 8 times (from outside and at protocol steps) and resumed until done. The
//! script does the killing and the checks (from the server's `/_sim/stats`
//! and the state folder); these tests run it with the debug binary and hold
//! its report to the figures.

use std::process::Command;

use crate::common;

use serde_json::Value;

fn chaos(args: &[&str]) -> (i32, String, String) {
    let script = common::repo().join("bench/chaos");
    let mut cmd = Command::new("python3");
    // The binary it runs keeps its job registry in a test home.
    common::user_home(&mut cmd, common::process_home());
    let out = cmd
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 runs bench/chaos");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_chaos_checks_see_the_defects_they_are_for() {
    let (code, _, stderr) = chaos(&["--self-test"]);
    assert_eq!(code, 0, "{stderr}");
}

/// The short form's arguments for `mode`, in a fresh work folder.
fn short_form(mode: &str, extra: &[&str]) -> (i32, Value, String) {
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().join("chaos");
    let bin = common::bin_path().to_str().unwrap();
    let mut args = vec![
        "--mode",
        mode,
        "--bin",
        bin,
        "--work",
        work_dir.to_str().unwrap(),
        "--seed",
        "11",
        "--kills",
        "8",
        "--hook-share",
        "0.4",
        "--json",
        "-v",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = chaos(&args);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}), exit {code}:\n{stdout}\n{stderr}"));
    (code, report, stderr)
}

/// What every batch mode must show: all checks passed, and they had
/// something to check.
fn assert_batch_report(code: i32, report: &Value, stderr: &str) {
    assert_eq!(
        report["findings"],
        serde_json::json!({}),
        "{report:#}\n{stderr}"
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["kills"], 8, "{report:#}");
    assert_eq!(report["completed"], true);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["output_identical"], true);
    assert_eq!(report["rows_out"], 120);
    // Every chunk made a batch, and the ledger holds batches.
    assert!(
        report["batches_created"].as_u64().unwrap() >= 12,
        "{report:#}"
    );
    assert!(
        report["ledger_batches"].as_u64().unwrap() >= 12,
        "{report:#}"
    );
    // The faults happened (which ones in a 12-chunk job is left to chance,
    // except the every-Nth batch faults).
    let faults = &report["faults"];
    let injected: u64 = faults
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(injected > 0, "{report:#}");
    assert!(
        faults["expired_batches"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert!(
        faults["token_limit_failures"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
}

const BATCH_FORM: [&str; 10] = [
    "--rows",
    "120",
    "--chunk",
    "10",
    "--in-flight",
    "3",
    "--in-progress",
    "300ms",
    "--fault-rate",
    "0.10",
];

#[test]
fn eight_kills_under_faults_lose_nothing_and_pay_nothing_twice() {
    let (code, report, stderr) = short_form("batch", &BATCH_FORM);
    assert_batch_report(code, &report, &stderr);
}

/// Message Batches: no metadata and no file, so the checks read the
/// requests and the submit identity from the tagged custom ids.
#[test]
fn anthropic_eight_kills_under_faults_lose_nothing_and_pay_nothing_twice() {
    let (code, report, stderr) = short_form("anthropic", &BATCH_FORM);
    assert_batch_report(code, &report, &stderr);
}

/// Direct mode: each request answered, at most what was in flight or
/// unflushed at a kill sent again, and the same output.
#[test]
fn direct_eight_kills_under_faults_resend_only_what_was_unrecorded() {
    let (code, report, stderr) = short_form(
        "direct",
        &[
            "--rows",
            "1000",
            "--chunk",
            "100",
            "--in-flight",
            "8",
            "--fault-rate",
            "0.10",
        ],
    );
    assert_eq!(
        report["findings"],
        serde_json::json!({}),
        "{report:#}\n{stderr}"
    );
    assert_eq!(code, 0, "{stderr}");
    // The ledger holds each request's tokens once: a killed run's usage
    // comes back from the outcome log at the next start.
    assert_eq!(report["ledger_tokens"], report["clean_bill"], "{report:#}");
    assert_eq!(report["kills"], 8, "{report:#}\n{stderr}");
    assert_eq!(report["completed"], true, "{report:#}");
    assert_eq!(report["duplicates"], 0, "{report:#}");
    assert_eq!(report["output_identical"], true);
    assert_eq!(report["rows_out"], 1000);
    assert_eq!(report["requests"], 1000);
    // Re-sent are exactly the answers lost at kills, each kill within bound.
    assert_eq!(report["resent"], report["lost_at_kills"], "{report:#}");
    assert!(
        report["most_lost_at_one_kill"].as_u64().unwrap() <= report["loss_bound"].as_u64().unwrap(),
        "{report:#}"
    );
    let faults = &report["faults"];
    assert!(faults["injected_429"].as_u64().unwrap() > 0, "{report:#}");
    assert!(faults["injected_5xx"].as_u64().unwrap() > 0, "{report:#}");
}
