//! `apply`, `resume`, `status`, `export` against the simulated provider run
//! as a separate process (`batchgrader simulate-server`), through the real
//! HTTP client. The server outlives the `apply` processes these tests kill.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sim::Server;
use common::{OpenAi, Sandbox};
use serde_json::Value;

const KEY_ENV: &str = OpenAi.key_env();
const KEY: &str = OpenAi.key();

/// The standard OpenAI job: 25 rows with cells that must survive verbatim,
/// in chunks of 10.
fn job(sb: &Sandbox, server: &Server, extra: &str) {
    common::standard_job(sb, OpenAi, &server.url, 25, extra);
}

#[test]
fn several_chunks_with_shuffled_results_come_out_in_input_order() {
    let out = common::reference_output(OpenAi, 25);
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let headers: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        headers,
        [
            "id",
            "text",
            "note",
            "grade",
            "grade_status",
            "grade_raw",
            "grade_error"
        ]
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 25);
    for (i, r) in rows.iter().enumerate() {
        let n = i + 1;
        assert_eq!(&r[0], format!("{n:03}"), "row {n} id verbatim, in order");
        assert_eq!(&r[4], "ok", "row {n}");
        let grade: u32 = r[3]
            .parse()
            .unwrap_or_else(|_| panic!("row {n}: grade {:?}", &r[3]));
        assert!(grade <= 10);
    }
    assert_eq!(&rows[2][1], "quoted, \"with\" comma");
    assert_eq!(&rows[6][1], "two\nlines");
    assert_eq!(&rows[10][1], "café ☕");
    assert_eq!(&rows[4][2], "", "empty cell stays empty");
    assert_eq!(&rows[0][2], "001", "leading zeros stay");
    // The CSV input's own bytes are kept: the quoted field is written as it was.
    assert!(
        out.contains("003,\"quoted, \"\"with\"\" comma\",003,"),
        "{out}"
    );
}

#[test]
fn a_plan_killed_between_its_files_and_its_record_is_made_again() {
    // Killed after the chunk files are moved in and before the plan is
    // recorded: the folder holds a plan the database does not know. The
    // next `apply` plans again over it, for a first plan and a later one.
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    job(&sb, &server, "");
    let kill = [("BATCHGRADER_TEST_KILL_AT", "plan-installed")];
    let killed = OpenAi.run(&sb, &["apply", "job.yaml"], &kill);
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    assert!(sb.path("state/crash/chunks/plan-1").is_dir());
    let again = OpenAi.run(&sb, &["apply", "job.yaml"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(OpenAi, 25)
    );
    common::assert_one_batch_per_chunk_attempt(&server.stats(), 3);

    // A second plan (one row's text changed), killed the same way.
    let input = sb
        .read("in.csv")
        .replace("answer number 2,", "answer number two,");
    sb.write("in.csv", input);
    let killed = OpenAi.run(&sb, &["apply", "job.yaml"], &kill);
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    assert!(sb.path("state/crash/chunks/plan-2").is_dir());
    let again = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    let s = again.json();
    assert_eq!(s["graded"], 25, "{s:#}");
    assert_eq!(s["already_graded_before"], 24, "{s:#}");
    let out = sb.read("out/graded.csv");
    assert!(out.contains("002,answer number two,002,"), "{out}");
}

/// Killed after the first of the plan's three units is written: the
/// resume makes the other two (it used to go on with one, leaving two
/// chunks never submitted and their rows not graded).
#[test]
fn kill_while_making_the_units() {
    common::crash_then_resume(OpenAi, "units");
}

#[test]
fn kill_after_upload() {
    common::crash_then_resume(OpenAi, "upload");
}

#[test]
fn kill_after_create_intent() {
    common::crash_then_resume(OpenAi, "create-intent");
}

#[test]
fn kill_after_create_before_recording_it() {
    common::crash_then_resume(OpenAi, "create-sent");
}

#[test]
fn kill_after_create() {
    common::crash_then_resume(OpenAi, "create");
}

#[test]
fn kill_while_polling() {
    common::crash_then_resume(OpenAi, "poll");
}

#[test]
fn kill_while_downloading() {
    common::crash_then_resume(OpenAi, "download");
}

#[test]
fn kill_after_merging_a_chunk() {
    common::crash_then_resume(OpenAi, "ingest");
}

#[test]
fn kill_while_writing_the_output() {
    common::crash_then_resume(OpenAi, "output");
}

/// `apply job.yaml` in the background; stderr piped when asked for.
fn spawn_apply(sb: &Sandbox, stderr: Stdio) -> Child {
    sb.command(&["apply", "job.yaml"])
        .env(KEY_ENV, KEY)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

#[test]
fn status_answers_while_apply_runs_and_a_second_apply_is_refused() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--in-progress", "3s"]);
    job(&sb, &server, "");
    let mut child = spawn_apply(&sb, Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        assert!(Instant::now() < deadline, "apply never reported running");
        std::thread::sleep(Duration::from_millis(100));
        let s = sb.run(&["status", "--json"]);
        if s.code == 0
            && s.json()["state"] == "running"
            && s.json()["units"].as_array().is_some_and(|u| !u.is_empty())
        {
            break s;
        }
    };
    let v = status.json();
    assert_eq!(v["job"], "crash");
    assert_eq!(v["pid"], child.id());
    assert_eq!(v["totals"]["rows"], 25);
    let human = sb.run(&["status"]);
    assert!(human.stderr.contains("running (pid"), "{human:?}");
    let second = OpenAi.run(&sb, &["apply", "job.yaml"], &[]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second
            .stderr
            .contains("in use by another batchgrader process (pid"),
        "{second:?}"
    );
    let unfinished = sb.run(&["status", "--exit-status"]);
    assert_eq!(unfinished.code, 5, "{unfinished:?}");
    assert!(child.wait().unwrap().success());
    let done = sb.run(&["status", "--json", "--exit-status"]);
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(done.json()["state"], "finished");
    assert_eq!(done.json()["totals"]["succeeded"], 25);
}

#[test]
fn detach_then_resume_collects() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    job(&sb, &server, "");
    let detached = OpenAi.run(&sb, &["apply", "job.yaml", "--detach"], &[]);
    assert_eq!(detached.code, 5, "{detached:?}");
    assert!(!sb.path("out/graded.csv").exists());
    let s = sb.run(&["status", "--json"]);
    assert_eq!(s.json()["state"], "detached", "{s:?}");
    let resumed = OpenAi.run(&sb, &["resume", "--json"], &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let summary = resumed.json();
    assert_eq!(summary["ending"], "finished");
    assert_eq!(summary["graded"], 25);
    common::assert_one_batch_per_chunk_attempt(&server.stats(), 3);
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(OpenAi, 25)
    );
}

#[test]
fn export_in_each_format() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    job(&sb, &server, "");
    assert_eq!(OpenAi.run(&sb, &["apply", "job.yaml"], &[]).code, 0);
    let csv_out = sb.read("out/graded.csv");
    let grades: Vec<String> = csv::Reader::from_reader(csv_out.as_bytes())
        .records()
        .map(|r| r.unwrap()[3].to_string())
        .collect();
    // The spend ledger has the job's three batches.
    let costs = sb.run(&["costs", "--json"]);
    assert_eq!(costs.code, 0, "{costs:?}");
    let c = costs.json();
    assert_eq!(c["total"]["batches"], 3, "{c:#}");
    assert_eq!(c["by_job"]["crash"]["batches"], 3);
    assert!(c["total"]["input_tokens"].as_u64().unwrap() > 0);
    let run = sb.run(&["export", "--out", "again.csv"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sb.read("again.csv"), csv_out);
    let run = sb.run(&["export", "crash", "--out", "x.jsonl"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<Value> = sb
        .read("x.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25);
    assert_eq!(lines[0]["id"], "001");
    assert_eq!(lines[6]["text"], "two\nlines");
    let run = sb.run(&["export", "--out", "x.json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let arr: Value = serde_json::from_str(&sb.read("x.json")).unwrap();
    let json_grades: Vec<String> = arr
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["grade"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(json_grades, grades);
    let jsonl_grades: Vec<String> = lines
        .iter()
        .map(|o| o["grade"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(jsonl_grades, grades);
}

#[test]
fn failed_requests_are_retried_and_reported() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--request-failure-rate", "0.4"]);
    job(&sb, &server, "retry:\n  max_attempts: 2\n");
    let run = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    let summary = run.json();
    let failed = summary["failed"].as_u64().unwrap();
    assert_eq!(summary["graded"].as_u64().unwrap() + failed, 25, "{run:?}");
    assert_eq!(run.code, if failed > 0 { 3 } else { 0 }, "{run:?}");
    // Second attempts happened, and only for failed requests.
    let stats = server.stats();
    let retries = stats["batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["metadata"]["batchgrader_attempt"] == "2")
        .count();
    assert!(retries >= 1, "{stats:#}");
    let out = sb.read("out/graded.csv");
    let statuses: Vec<String> = csv::Reader::from_reader(out.as_bytes())
        .records()
        .map(|r| r.unwrap()[4].to_string())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "failed").count() as u64,
        failed
    );
    for r in csv::Reader::from_reader(out.as_bytes()).records() {
        let r = r.unwrap();
        if &r[4] == "failed" {
            assert!(
                r[6].contains("server_error") || r[6].contains("500"),
                "{:?}",
                r
            );
        }
    }
}

#[test]
fn a_wrong_key_stops_before_anything_is_submitted() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--api-key", "the-right-key"]);
    job(&sb, &server, "");
    let run = OpenAi.run(&sb, &["apply", "job.yaml"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(KEY_ENV), "{run:?}");
    assert!(!run.stderr.contains(KEY), "the key leaked: {run:?}");
    assert_eq!(server.stats()["batches_created"], 0);
    // The key is in no state file either.
    for entry in common::files_under(&sb.path("state")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "key in {}",
            entry.display()
        );
    }
    // A missing key names the variable.
    let run = sb.run(&["apply", "job.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(KEY_ENV), "{run:?}");
}

#[test]
fn ctrl_c_stops_cleanly_and_resume_finishes() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--in-progress", "2s"]);
    job(&sb, &server, "");
    let child = spawn_apply(&sb, Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "apply never submitted a batch");
        std::thread::sleep(Duration::from_millis(100));
        if server.stats()["batches_created"].as_u64().unwrap() >= 1 {
            break;
        }
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("batchgrader resume"), "{stderr}");
    let s = sb.run(&["status", "--json"]);
    assert_eq!(s.json()["state"], "detached", "{s:?}");
    let resumed = OpenAi.run(&sb, &["resume"], &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    common::assert_one_batch_per_chunk_attempt(&server.stats(), 3);
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(OpenAi, 25)
    );
}

#[test]
fn cancel_stops_batches_and_resume_submits_nothing_new() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--in-progress", "5s"]);
    job(&sb, &server, "");
    let detached = OpenAi.run(&sb, &["apply", "job.yaml", "--detach"], &[]);
    assert_eq!(detached.code, 5, "{detached:?}");
    let cancelled = OpenAi.run(&sb, &["cancel"], &[]);
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    assert!(
        cancelled.stderr.contains("asked 2 batches to stop"),
        "{cancelled:?}"
    );
    assert_eq!(server.stats()["batches_cancelled"], 2);
    let s = sb.run(&["status", "--json"]);
    assert_eq!(s.json()["state"], "halted", "{s:?}");
    // In words: a cancel, not the halt policy, and the batches asked to stop.
    let said = sb.run(&["status"]);
    assert!(said.stderr.contains("cancelled"), "{said:?}");
    assert!(!said.stderr.contains("halted by policy"), "{said:?}");
    assert!(!said.stderr.contains("validating"), "{said:?}");
    assert!(said.stderr.contains("cancelling"), "{said:?}");
    // Resume collects what the cancelled batches finished and submits nothing.
    let resumed = OpenAi.run(&sb, &["resume", "--json"], &[]);
    assert_eq!(resumed.code, 4, "{resumed:?}");
    assert_eq!(
        server.stats()["batches_created"],
        2,
        "nothing new was submitted"
    );
    let summary = resumed.json();
    assert_eq!(summary["rows"], 25);
    assert_eq!(
        summary["graded"].as_u64().unwrap()
            + summary["failed"].as_u64().unwrap()
            + summary["not_graded"].as_u64().unwrap(),
        25
    );
    assert!(
        summary["not_graded"].as_u64().unwrap() >= 5,
        "chunk 3 was never sent: {summary}"
    );
    // `apply` starts the job again and finishes it.
    let again = OpenAi.run(&sb, &["apply", "job.yaml", "--json"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["graded"], 25);
}

#[test]
fn a_batch_created_before_a_crash_is_found_on_a_server_that_drops_metadata() {
    // Some OpenAI-compatible servers do not echo metadata; the unit's own
    // uploaded file identifies its batch instead.
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--drop-metadata"]);
    job(&sb, &server, "");
    let killed = OpenAi.run(
        &sb,
        &["apply", "job.yaml"],
        &[("BATCHGRADER_TEST_KILL_AT", "create-sent")],
    );
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    let resumed = OpenAi.run(&sb, &["resume"], &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(resumed.stderr.contains("adopted batch"), "{resumed:?}");
    common::assert_one_batch_per_chunk_attempt(&server.stats(), 3);
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(OpenAi, 25)
    );
}

/// `input.delimiter: ";"`: the rows are read by `;`, and the CSV output
/// keeps it (the input's rows spliced, the grade added after a `;`).
#[test]
fn a_semicolon_separated_input_is_read_and_written_with_its_delimiter() {
    let sb = Sandbox::new();
    sb.write(
        "in.csv",
        "id;text\n1;the sky is blue\n2;\"a; b\"\n3;water, wet\n",
    );
    let spec = |delimiter: &str| {
        format!(
            "version: 1
name: semi
provider:
  kind: simulated
  simulated: {{validating: 10ms, in_progress: 50ms, finalizing: 10ms}}
model: gpt-4o-mini
input:
  path: in.csv
  id: id
{delimiter}prompt:
  system: Grade it.
  user: \"{{{{ text }}}}\"
request:
  max_tokens: 4
output:
  path: out/graded.csv
  field: grade
poll: {{interval: 100ms, max_interval: 200ms}}
"
        )
    };
    // Without the setting, validate says what the file is separated by.
    sb.write("job.yaml", spec(""));
    let v = sb.run(&["validate", "job.yaml"]);
    assert_eq!(v.code, 2, "{v:?}");
    assert!(v.stderr.contains("input.delimiter: \";\""), "{v:?}");
    sb.write("job.yaml", spec("  delimiter: \";\"\n"));
    let v = sb.run(&["validate", "job.yaml"]);
    assert_eq!(v.code, 0, "{v:?}");
    let r = sb.run(&["apply", "job.yaml"]);
    assert_eq!(r.code, 0, "{r:?}");
    let out = sb.read("out/graded.csv");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("id;text;grade;"), "{out}");
    assert!(lines[2].starts_with("2;\"a; b\";"), "{out}");
    assert!(lines[3].starts_with("3;water, wet;"), "{out}");
    // Export writes the same file again.
    let e = sb.run(&["export", "--out", "again.csv"]);
    assert_eq!(e.code, 0, "{e:?}");
    assert_eq!(sb.read("again.csv"), out);
}

/// Answering no to the cost question on a terminal submits nothing and
/// exits 4, not 0: a script must not go on as if the job ran.
#[test]
fn answering_no_to_the_cost_question_exits_4() {
    let sb = Sandbox::new();
    sb.write("in.csv", "id,text\na,one\nb,two\nc,three\n");
    // A dollar a token: the estimate is above the $10 that asks.
    sb.write(
        "p.csv",
        "model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,prices_as_of\ngpt-4o-mini,2000000,2000000,1000000,1000000,2026-01-01\n",
    );
    sb.write(
        "s.yaml",
        "version: 1\nname: ask\nprovider:\n  kind: simulated\nmodel: gpt-4o-mini\ninput:\n  path: in.csv\n  id: id\nprompt:\n  user: \"{{ text }}\"\nrequest:\n  max_tokens: 4\noutput:\n  path: out.csv\n",
    );
    // `script` gives the binary a terminal on stdin and stderr.
    let mut cmd = sb.command_under(
        &["sh", "-c", "exec script -qec \"$0 $*\" /dev/null"],
        &["--pricing", "p.csv", "apply", "s.yaml"],
    );
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let run: common::Run = child.wait_with_output().unwrap().into();
    assert!(run.stdout.contains("[y/N]"), "{run:?}");
    assert!(run.stdout.contains("Nothing submitted"), "{run:?}");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(!sb.path("out.csv").exists());
}

/// On a terminal, a run shows no developer figures: the `throughput:`
/// line goes to events.jsonl only (and to stderr in plain output).
#[test]
fn an_interactive_run_prints_no_throughput_line() {
    let sb = Sandbox::new();
    sb.write("in.csv", "id,text\na,one\nb,two\n");
    sb.write(
        "s.yaml",
        "version: 1\nname: tty\nprovider:\n  kind: simulated\n  simulated: { validating: 10ms, in_progress: 50ms, finalizing: 10ms }\nmodel: gpt-4o-mini\ninput:\n  path: in.csv\n  id: id\nprompt:\n  user: \"{{ text }}\"\nrequest:\n  max_tokens: 4\noutput:\n  path: out.csv\npoll:\n  interval: 50ms\n  max_interval: 100ms\n",
    );
    let out = sb
        .command_under(
            &["sh", "-c", "exec script -qec \"$0 $*\" /dev/null"],
            &["apply", "s.yaml", "--yes"],
        )
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let run: common::Run = out.into();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Finished"), "{run:?}");
    assert!(!run.stdout.contains("throughput:"), "{run:?}");
    assert!(sb.read("state/tty/events.jsonl").contains("throughput:"));
    // Plain output keeps it, for logs and bench/scale.
    sb.write("in.csv", "id,text\na,one\nb,two\nc,three\n");
    let plain = sb.run(&["apply", "s.yaml", "--yes"]);
    assert_eq!(plain.code, 0, "{plain:?}");
    assert!(plain.stderr.contains("throughput:"), "{plain:?}");
}
