//! The short form of `bench/chaos`: a small multi-chunk job against the
//! simulated provider in its own process, with about 10% of its API calls
//! failing, creates that commit and then fail, flaky requests, expiring and
//! token-limited batches, SIGKILLed 8 times (from outside and at protocol
//! steps) and resumed until done. The script does the killing and the checks
//! (from the server's `/_sim/stats` and the state folder); this test runs it
//! with the debug binary and holds its report to the figures.

use std::process::Command;

use serde_json::Value;

fn chaos(args: &[&str]) -> (i32, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/chaos");
    let out = Command::new("python3")
        .arg(script)
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

#[test]
fn eight_kills_under_faults_lose_nothing_and_pay_nothing_twice() {
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().join("chaos");
    let (code, stdout, stderr) = chaos(&[
        "--bin",
        env!("CARGO_BIN_EXE_batchgrader"),
        "--work",
        work_dir.to_str().unwrap(),
        "--seed",
        "11",
        "--kills",
        "8",
        "--rows",
        "120",
        "--chunk",
        "10",
        "--in-flight",
        "3",
        "--in-progress",
        "300ms",
        "--hook-share",
        "0.4",
        "--json",
        "-v",
    ]);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}), exit {code}:\n{stdout}\n{stderr}"));
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
    // Every chunk made a batch, and the ledger holds batches: the checks had
    // something to check.
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
