//! Where a job's state lives, whatever folder a command is typed in: the
//! per-user job registry stops a second plan (and bill) of a job that has
//! state elsewhere, and lets `status`/`resume` find it without --state.

use std::path::{Path, PathBuf};

use crate::common::{Run, Sandbox};

const SPEC: &str = "version: 1
name: tickets
provider:
  kind: simulated
  simulated: { validating: 10ms, in_progress: 50ms, finalizing: 10ms }
model: gpt-4o-mini
input:
  path: ../in.csv
  id: id
prompt:
  user: \"{{ text }}\"
request:
  max_tokens: 4
output:
  path: ../out/graded.csv
  field: grade
  parse: number
poll:
  interval: 50ms
  max_interval: 100ms
";

/// A project folder `work/` (spec in `work/specs/`), applied from inside it.
fn applied_project() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("work/in.csv", "id,text\na,one\nb,two\nc,three\n");
    sb.write("work/specs/x.yaml", SPEC);
    let first = run_in(&sb, "work", &["apply", "specs/x.yaml", "--yes"]);
    assert_eq!(first.code, 0, "{first:?}");
    sb
}

fn run_in(sb: &Sandbox, folder: &str, args: &[&str]) -> Run {
    let mut cmd = sb.command(args);
    cmd.current_dir(sb.path(folder));
    cmd.output().expect("run batchgrader").into()
}

fn canonical(p: PathBuf) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

#[test]
fn a_job_with_state_in_its_project_is_not_planned_again_from_the_parent_folder() {
    let sb = applied_project();
    let home = canonical(sb.path("work/state"));
    for args in [
        &["plan", "work/specs/x.yaml"][..],
        &["apply", "work/specs/x.yaml", "--yes"],
    ] {
        let again = sb.run(args);
        assert_eq!(again.code, 2, "{args:?}: {again:?}");
        assert!(
            again
                .stderr
                .contains(&format!("job `tickets` already has state in {home}")),
            "{again:?}"
        );
        // The way on is the same command in the job's folder.
        let way = format!("batchgrader --state {home} {}", args.join(" "));
        assert!(again.stderr.contains(&way), "{way}\n{again:?}");
        assert!(again.stderr.contains("--new-state"), "{again:?}");
        // Nothing was planned (or sent) here.
        assert!(!sb.path("state").exists(), "{again:?}");
    }
    // The command the refusal gives works.
    let there = sb.run(&["--state", &home, "plan", "work/specs/x.yaml"]);
    assert_eq!(there.code, 0, "{there:?}");
    assert!(
        there.stderr.contains("0 to grade, 3 already graded"),
        "{there:?}"
    );
}

#[test]
fn status_and_resume_from_the_parent_folder_find_the_job_where_it_lives() {
    let sb = applied_project();
    let home = canonical(sb.path("work/state"));
    for args in [&["status"][..], &["status", "tickets"], &["resume"]] {
        let found = sb.run(args);
        assert_eq!(found.code, 0, "{args:?}: {found:?}");
        assert!(
            found
                .stderr
                .contains(&format!("Using the state folder {home}")),
            "{args:?}: {found:?}"
        );
    }
    let status = sb.run(&["--json", "status"]);
    assert_eq!(status.json()["job"], "tickets", "{status:?}");
    // A folder that is neither the project nor above it knows nothing of it.
    sb.write("elsewhere/.keep", "");
    let lost = run_in(&sb, "elsewhere", &["status"]);
    assert_eq!(lost.code, 2, "{lost:?}");
    // The refusal names the folder it looked in, whole.
    let looked = std::path::absolute(sb.path("elsewhere/state")).unwrap();
    assert!(
        lost.stderr
            .contains(&format!("no job in {}", canonical_parent(&looked))),
        "{lost:?}"
    );
    // Named, the job is found from anywhere.
    let named = run_in(&sb, "elsewhere", &["status", "tickets"]);
    assert_eq!(named.code, 0, "{named:?}");
}

/// A path that does not exist, with its existing parent made canonical.
fn canonical_parent(p: &Path) -> String {
    canonical(p.parent().unwrap().to_path_buf()) + "/" + p.file_name().unwrap().to_str().unwrap()
}

#[test]
fn new_state_starts_the_job_over_on_purpose_and_an_explicit_state_is_obeyed() {
    let sb = applied_project();
    let fresh = sb.run(&["plan", "work/specs/x.yaml", "--new-state"]);
    assert_eq!(fresh.code, 0, "{fresh:?}");
    assert!(
        fresh.stderr.contains("3 to grade, 0 already graded"),
        "{fresh:?}"
    );
    assert!(sb.path("state/tickets/db").is_dir(), "{fresh:?}");
    // Now both folders hold it; this one is the folder's own, and is used.
    let status = sb.run(&["--json", "status", "tickets"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        !status.stderr.contains("Using the state folder"),
        "{status:?}"
    );
    // An explicit --state that holds no job is never replaced.
    let explicit = sb.run(&["--state", "empty", "status", "tickets"]);
    assert_eq!(explicit.code, 2, "{explicit:?}");
}

#[test]
fn the_registry_holds_where_jobs_live_and_nothing_else() {
    let sb = applied_project();
    let text = std::fs::read_to_string(sb.registry()).expect("the registry was written");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The apply planned, then applied.
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["plan", "apply"], "{text}");
    for l in &lines {
        let mut keys: Vec<&String> = l.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["at", "event", "job", "spec", "state"], "{text}");
        assert_eq!(l["job"], "tickets");
        assert_eq!(
            l["spec"].as_str().unwrap(),
            canonical(sb.path("work/specs/x.yaml"))
        );
        assert_eq!(
            l["state"].as_str().unwrap(),
            canonical(sb.path("work/state"))
        );
    }
}

#[test]
fn apply_and_resume_name_the_output_file_the_same_way() {
    let sb = Sandbox::new();
    sb.write("work/in.csv", "id,text\na,one\nb,two\nc,three\n");
    sb.write("work/specs/x.yaml", SPEC);
    let applied = sb.run(&["--json", "apply", "work/specs/x.yaml", "--yes"]);
    assert_eq!(applied.code, 0, "{applied:?}");
    let resumed = sb.run(&["--json", "resume", "tickets"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let want = canonical(sb.path("work/out/graded.csv"));
    assert_eq!(applied.json()["output_path"], want.as_str(), "{applied:?}");
    assert_eq!(resumed.json()["output_path"], want.as_str(), "{resumed:?}");
}
