//! Re-planning: a no-op when nothing changed, incremental when inputs change,
//! and bad input never damages a saved plan.

use crate::common;

use std::path::Path;

use batchgrader::state::{JobStore, ResultRecord};
use common::{Sandbox, chunk_lines, spec, user_text, wait_for_store_release};

fn rows_csv(rows: &[&str]) -> String {
    let mut s = String::from("id,text\n");
    for (i, r) in rows.iter().enumerate() {
        s.push_str(&format!("k{},{r}\n", i + 1));
    }
    s
}

fn setup(sb: &Sandbox, rows: &[&str]) {
    sb.write("in.csv", rows_csv(rows));
    sb.write(
        "s.yaml",
        spec(
            "job",
            "in.csv",
            "Grade: {{ text }}",
            "halt:\n  max_cost_usd: 5\n",
        )
        .replace("  path: in.csv\n", "  path: in.csv\n  id: id\n"),
    );
}

fn mtimes(dir: &Path) -> Vec<(String, std::time::SystemTime)> {
    let mut out = Vec::new();
    for gen_dir in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(gen_dir.unwrap().path()).unwrap() {
            let f = f.unwrap();
            out.push((
                f.path().display().to_string(),
                f.metadata().unwrap().modified().unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn planning_again_with_nothing_changed_rewrites_nothing() {
    let sb = Sandbox::new();
    setup(&sb, &["alpha", "beta", "gamma"]);
    let first = sb.run(&["plan", "s.yaml", "--json"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.json()["changed"], true);
    let before = mtimes(&sb.path("state/job/chunks"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = sb.run(&["plan", "s.yaml", "--json"]);
    assert_eq!(second.code, 0, "{second:?}");
    let v = second.json();
    assert_eq!(v["changed"], false);
    assert_eq!(v["plan_hash"], first.json()["plan_hash"]);
    assert!(second.stderr.contains("No changes."), "{second:?}");
    assert_eq!(mtimes(&sb.path("state/job/chunks")), before);
    // --detailed-exitcode: work to do is exit 2.
    let third = sb.run(&["plan", "s.yaml", "--detailed-exitcode"]);
    assert_eq!(third.code, 2, "{third:?}");
}

/// A first plan takes its hash from the bytes as the rows are read; a later
/// plan hashes the files before reading them. The two must agree on every
/// format and every way a file can end, or a job would be planned again
/// (or refused while batches are out) with nothing changed.
#[test]
fn the_hash_taken_while_reading_is_the_hash_of_the_files() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "CSV with a BOM, CRLF and no final newline",
            &[(
                "a.csv",
                "\u{feff}id,text\r\nk1,alpha\r\nk2,\"two\r\nlines\"",
            )],
        ),
        (
            "JSONL with blank lines at the end",
            &[(
                "a.jsonl",
                "{\"id\":\"k1\",\"text\":\"alpha\"}\n\n{\"id\":\"k2\",\"text\":\"b\"}\n\n\n",
            )],
        ),
        (
            "a JSON array with white space after it",
            &[(
                "a.json",
                "[{\"id\":\"k1\",\"text\":\"alpha\"},\n {\"id\":\"k2\",\"text\":\"b\"}]\n\n   \n",
            )],
        ),
        (
            "JSONL with a BOM, CRLF and no final newline",
            &[(
                "a.jsonl",
                "\u{feff}{\"id\":\"k1\",\"text\":\"alpha\"}\r\n{\"id\":\"k2\",\"text\":\"b\"}",
            )],
        ),
        (
            "two JSON files, one with a BOM",
            &[
                ("a.json", "\u{feff}[{\"id\":\"k1\",\"text\":\"alpha\"}]  "),
                ("b.json", "[{\"id\":\"k2\",\"text\":\"b\"}]\n"),
            ],
        ),
        (
            "two CSV files",
            &[
                ("a.csv", "id,text\nk1,alpha\n"),
                ("b.csv", "id,text\nk2,beta\nk3,gamma\n"),
            ],
        ),
    ];
    for (what, files) in cases {
        let sb = Sandbox::new();
        for (name, text) in *files {
            sb.write(name, text);
        }
        let paths: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        sb.write(
            "s.yaml",
            spec("job", &format!("{paths:?}"), "Grade: {{ text }}", "")
                .replace("\n  path: [", "\n  id: id\n  path: ["),
        );
        let first = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(first.code, 0, "{what}: {first:?}");
        assert_eq!(first.json()["changed"], true, "{what}");
        let again = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(again.code, 0, "{what}: {again:?}");
        assert_eq!(again.json()["changed"], false, "{what}: {again:?}");
        assert_eq!(
            again.json()["plan_hash"],
            first.json()["plan_hash"],
            "{what}"
        );
        // One more line end at the end of the last file is a change, though
        // not to any row: the hash is of the bytes.
        let (name, text) = files.last().unwrap();
        sb.write(name, format!("{text}\n"));
        let edited = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(edited.code, 0, "{what}: {edited:?}");
        assert_ne!(
            edited.json()["plan_hash"],
            first.json()["plan_hash"],
            "{what}"
        );
        let settled = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(settled.code, 0, "{what}: {settled:?}");
        assert_eq!(settled.json()["changed"], false, "{what}: {settled:?}");
    }
}

#[test]
fn changed_input_replans_only_requests_without_a_result() {
    let sb = Sandbox::new();
    setup(&sb, &["alpha", "beta", "gamma", "delta"]);
    assert_eq!(sb.run(&["plan", "s.yaml"]).code, 0);
    // Pretend apply graded every row: results are kept by fingerprint.
    {
        let store = JobStore::open(&sb.path("state"), "job").unwrap();
        let plan = store.plan().unwrap().unwrap();
        let records: Vec<_> = store
            .requests(plan.generation)
            .map(Result::unwrap)
            .collect();
        assert_eq!(records.len(), 4);
        for r in &records {
            store
                .record_result(
                    &r.fingerprint,
                    &ResultRecord {
                        answer: "7".into(),
                        input_tokens: r.tokens,
                        output_tokens: 1,
                        cache_write_tokens: 0,
                        cache_read_tokens: 0,
                        reasoning_tokens: 0,
                    },
                )
                .unwrap();
        }
    }
    wait_for_store_release(&sb, "job");
    // One row edited, one added, the rest unchanged.
    setup(&sb, &["alpha", "BETA", "gamma", "delta", "epsilon"]);
    let run = sb.run(&["plan", "s.yaml", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = run.json();
    assert_eq!(v["rows"], 5);
    assert_eq!(v["outstanding"], 2);
    assert_eq!(v["already_done"], 3);
    assert!(
        run.stderr.contains("2 to grade, 3 already graded"),
        "{run:?}"
    );
    let lines = chunk_lines(&sb, "job");
    let users: Vec<String> = lines.iter().map(user_text).collect();
    assert_eq!(users, ["Grade: BETA", "Grade: epsilon"]);
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r2", "r5"]);
    // The request records still cover every row, with their keys.
    let store = JobStore::open(&sb.path("state"), "job").unwrap();
    let plan = store.plan().unwrap().unwrap();
    let keys: Vec<(u64, String, bool)> = store
        .requests(plan.generation)
        .map(|r| {
            let r = r.unwrap();
            (r.row, r.key, r.seq.is_some())
        })
        .collect();
    assert_eq!(
        keys,
        [
            (1, "k1".into(), false),
            (2, "k2".into(), true),
            (3, "k3".into(), false),
            (4, "k4".into(), false),
            (5, "k5".into(), true)
        ]
    );
    // The old generation's records are gone.
    assert_eq!(store.requests(plan.generation - 1).count(), 0);
}

#[test]
fn changing_the_prompt_changes_every_fingerprint() {
    let sb = Sandbox::new();
    setup(&sb, &["alpha", "beta"]);
    let a = sb.run(&["plan", "s.yaml", "--json"]).json();
    let text = sb
        .read("s.yaml")
        .replace("Grade: {{ text }}", "Score: {{ text }}");
    sb.write("s.yaml", text);
    let b = sb.run(&["plan", "s.yaml", "--json"]).json();
    assert_eq!(b["changed"], true);
    assert_ne!(a["plan_hash"], b["plan_hash"]);
    let store = JobStore::open(&sb.path("state"), "job").unwrap();
    let gen_b = b["generation"].as_u64().unwrap();
    assert_eq!(gen_b, a["generation"].as_u64().unwrap() + 1);
    assert_eq!(store.requests(gen_b).count(), 2);
}

/// Each bad input exits 2 naming the place, and the saved plan is untouched.
#[test]
fn bad_input_never_damages_the_saved_plan() {
    let sb = Sandbox::new();
    setup(&sb, &["alpha", "beta"]);
    let good = sb.run(&["plan", "s.yaml", "--json"]);
    assert_eq!(good.code, 0, "{good:?}");
    let good_hash = good.json()["plan_hash"].clone();
    let good_chunks = mtimes(&sb.path("state/job/chunks"));
    let good_spec = sb.read("s.yaml");
    let good_csv = sb.read("in.csv");

    // (what to break, file, contents, text the message must contain)
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "malformed YAML",
            "s.yaml",
            b"version: 1\nname: [job\n".to_vec(),
            "s.yaml:",
        ),
        (
            "unknown key",
            "s.yaml",
            good_spec
                .replace("output:", "outptu: 1\noutput:")
                .into_bytes(),
            "unknown key `outptu`",
        ),
        (
            "missing column",
            "s.yaml",
            good_spec.replace("{{ text }}", "{{ body }}").into_bytes(),
            "{{ body }}",
        ),
        (
            "model without a price while a budget is set",
            "s.yaml",
            good_spec
                .replace("gpt-4o-mini", "mystery-model-9")
                .into_bytes(),
            "mystery-model-9",
        ),
        (
            "non-UTF-8 file",
            "in.csv",
            b"id,text\nk1,caf\xe9\n".to_vec(),
            "in.csv:2: not valid UTF-8",
        ),
        (
            "ragged CSV row",
            "in.csv",
            b"id,text\nk1,a\nk2,b,extra\n".to_vec(),
            "in.csv:3: row has 3 fields, the header has 2",
        ),
        ("empty input", "in.csv", b"".to_vec(), "in.csv"),
        ("header only", "in.csv", b"id,text\n".to_vec(), "no rows"),
        (
            "duplicate ids",
            "in.csv",
            b"id,text\nk1,a\nk1,b\n".to_vec(),
            "duplicate id `k1`",
        ),
        ("empty id", "in.csv", b"id,text\n,a\n".to_vec(), "empty id"),
        (
            "output path is a folder",
            "s.yaml",
            good_spec
                .replace("path: out/job.csv", "path: state")
                .into_bytes(),
            "output.path",
        ),
        (
            "output path under a file",
            "s.yaml",
            good_spec
                .replace("path: out/job.csv", "path: in.csv/x.csv")
                .into_bytes(),
            "is not a folder",
        ),
    ];
    for (what, file, contents, needle) in cases {
        sb.write(file, &contents);
        let run = sb.run(&["plan", "s.yaml"]);
        assert_eq!(run.code, 2, "{what}: {run:?}");
        assert!(
            run.stderr.contains(needle),
            "{what}: wanted {needle:?} in {run:?}"
        );
        assert!(!run.stderr.contains("panicked"), "{what}: {run:?}");
        // Put the good file back; the saved plan must be exactly as before.
        sb.write("s.yaml", &good_spec);
        sb.write("in.csv", &good_csv);
        assert_eq!(mtimes(&sb.path("state/job/chunks")), good_chunks, "{what}");
        let again = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(again.json()["changed"], false, "{what}: {again:?}");
        assert_eq!(again.json()["plan_hash"], good_hash, "{what}");
    }
}

#[test]
fn json_inputs_that_are_not_objects_are_refused() {
    let sb = Sandbox::new();
    let cases: [(&str, &str, &str); 4] = [
        ("a.json", "[1, 2]", "every row must be a JSON object"),
        ("b.json", "{\"t\": 1}", "array of objects"),
        ("c.jsonl", "{\"t\": \"x\"}\n[1]\n", "c.jsonl:2:"),
        ("d.json", "[{\"t\": \"x\"}, {\"t\": ", "element 2"),
    ];
    for (file, contents, needle) in cases {
        sb.write(file, contents);
        let job = file.replace('.', "-");
        sb.write(&format!("{job}.yaml"), spec(&job, file, "{{ t }}", ""));
        let run = sb.run(&["plan", &format!("{job}.yaml")]);
        assert_eq!(run.code, 2, "{file}: {run:?}");
        assert!(
            run.stderr.contains(needle),
            "{file}: wanted {needle:?} in {run:?}"
        );
    }
}

#[test]
fn a_second_process_is_refused_while_the_job_is_locked() {
    let sb = Sandbox::new();
    setup(&sb, &["alpha"]);
    assert_eq!(sb.run(&["plan", "s.yaml"]).code, 0);
    let held = JobStore::open(&sb.path("state"), "job").unwrap();
    let run = sb.run(&["plan", "s.yaml"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("job `job` is in use by another batchgrader process (pid"),
        "{run:?}"
    );
    drop(held);
    wait_for_store_release(&sb, "job");
    assert_eq!(sb.run(&["plan", "s.yaml"]).code, 0);
}

/// A plan killed with SIGKILL leaves its scratch folder (hundreds of MB at
/// a million rows) and its progress marker; the next command that takes
/// the job (here `export`) clears them.
#[test]
fn what_a_killed_plan_left_is_cleared_by_the_next_command() {
    let sb = Sandbox::new();
    setup(&sb, &["a", "b", "c"]);
    let plan = sb.run(&["plan", "s.yaml"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let scratch = sb.path("state/job/tmp-plan-9");
    std::fs::create_dir_all(&scratch).unwrap();
    sb.write("state/job/tmp-plan-9/spool.jsonl", "x".repeat(100_000));
    sb.write(
        "state/job/planning.json",
        r#"{"pid": 999999, "started_at": 1, "read_bytes": 5, "total_bytes": 10}"#,
    );
    let export = sb.run(&["export", "job", "--out", "again.csv"]);
    assert_eq!(export.code, 0, "{export:?}");
    assert!(!scratch.exists(), "the scratch folder is still there");
    assert!(!sb.path("state/job/planning.json").exists());
}

/// `status.json` is derived from the database: missing or emptied, `status`
/// says what the database says (the job finished), as every other command.
#[test]
fn status_follows_the_database_when_its_derived_file_is_gone() {
    let sb = Sandbox::new();
    setup(&sb, &["a", "b", "c"]);
    let simulated = sb.read("s.yaml").replace(
        "name: job\n",
        "name: job\nprovider:\n  kind: simulated\n  simulated: {validating: 10ms, in_progress: 50ms, finalizing: 10ms}\npoll: {interval: 100ms, max_interval: 200ms}\n",
    );
    sb.write("s.yaml", simulated);
    let run = sb.run(&["apply", "s.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    for damage in ["remove", "empty"] {
        let file = sb.path("state/job/status.json");
        match damage {
            "remove" => std::fs::remove_file(&file).unwrap(),
            _ => std::fs::write(&file, "").unwrap(),
        }
        let status = sb.run(&["status", "job", "--json", "--exit-status"]);
        assert_eq!(status.code, 0, "{damage}: {status:?}");
        let s = status.json();
        assert_eq!(s["state"], "finished", "{damage}: {s}");
        assert_eq!(s["totals"]["pending"], 0, "{damage}: {s}");
        assert_eq!(
            s["totals"]["succeeded"].as_u64().unwrap()
                + s["totals"]["already_done"].as_u64().unwrap(),
            3,
            "{damage}: {s}"
        );
    }
}

/// Prompt caching changes what a request line carries, never which request
/// it is: a job graded without caching and planned again with it (under
/// `auto`, its rubric long enough; then `true`) has nothing to send, and
/// its lines are the same bytes in every plan that asks for caching.
#[test]
fn turning_caching_on_sends_no_answered_row_again() {
    let sb = Sandbox::new();
    setup(&sb, &["alpha", "beta", "gamma"]);
    // About 2,000 tokens of rubric: over OpenAI's 1,024-token minimum.
    let rubric = "Grade the essay for clarity and evidence. ".repeat(250);
    let yaml = sb
        .read("s.yaml")
        .replace(
            "name: job\n",
            "name: job\nprovider:\n  kind: simulated\n  simulated: {validating: 10ms, in_progress: 50ms, finalizing: 10ms}\npoll: {interval: 100ms, max_interval: 200ms}\n",
        )
        .replace(
            "  system: Grade it.\n",
            &format!("  system: {rubric:?}\n  cache: false\n"),
        );
    sb.write("s.yaml", &yaml);
    let run = sb.run(&["apply", "s.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    let uncached = chunk_lines(&sb, "job");
    assert_eq!(uncached.len(), 3);
    assert!(
        uncached
            .iter()
            .all(|l| l["body"].get("prompt_cache_key").is_none()),
        "caching is off: {uncached:?}"
    );

    let mut lines_of = Vec::new();
    for setting in ["", "  cache: true\n"] {
        sb.write("s.yaml", yaml.replace("  cache: false\n", setting));
        let plan = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(plan.code, 0, "{setting:?}: {plan:?}");
        assert_eq!(plan.json()["outstanding"], 0, "{setting:?}: {plan:?}");
        let lines = chunk_lines(&sb, "job");
        let keys: Vec<&str> = lines
            .iter()
            .map(|l| l["body"]["prompt_cache_key"].as_str().unwrap_or(""))
            .collect();
        assert!(
            keys.iter()
                .all(|k| k.starts_with("batchgrader-") && k.len() <= 64 && *k == keys[0]),
            "{setting:?}: one key for the job's rows: {keys:?}"
        );
        // The rest of each line is what was graded.
        for (cached, plain) in lines.iter().zip(&uncached) {
            let mut body = cached["body"].clone();
            body.as_object_mut().unwrap().remove("prompt_cache_key");
            assert_eq!(&body, &plain["body"]);
        }
        lines_of.push(lines);
    }
    assert_eq!(
        lines_of[0], lines_of[1],
        "the same caching fields in every plan"
    );
    let run = sb.run(&["apply", "s.yaml", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
}
