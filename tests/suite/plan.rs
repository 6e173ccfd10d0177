//! `plan`, `validate` and `schema` through the real binary.

use crate::common;

use common::{Sandbox, chunk_lines, repo, spec, user_text};

#[test]
fn schema_file_matches_the_binary() {
    let sb = Sandbox::new();
    let run = sb.run(&["schema"]);
    assert_eq!(run.code, 0, "{run:?}");
    let committed = std::fs::read_to_string(repo().join("schemas/job-spec.schema.json")).unwrap();
    assert!(
        run.stdout == committed,
        "schemas/job-spec.schema.json drifted from the Rust types; regenerate it with `cargo run -- schema > schemas/job-spec.schema.json`"
    );
}

#[test]
fn validate_reports_every_problem_with_its_place() {
    let sb = Sandbox::new();
    sb.write(
        "bad.yaml",
        "version: 1\nname: Not Valid\nmodel: gpt-4o-mini\ninput:\n  path: x.csv\n  colour: red\nprompt:\n  user: hi\noutput:\n  path: o.csv\npoll:\n  interval: soon\n",
    );
    let run = sb.run(&["validate", "bad.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    for expected in [
        "bad.yaml:2:1: name:",
        "bad.yaml:6:3: input.colour: unknown key `colour`",
    ] {
        assert!(
            run.stderr.contains(expected),
            "missing {expected:?} in {run:?}"
        );
    }
    // Semantic checks run once the schema passes.
    sb.write(
        "bad2.yaml",
        "version: 1\nname: ok\nmodel: m\ninput:\n  path: x.csv\nprompt:\n  user: hi\noutput:\n  path: o.csv\npoll:\n  interval: soon\n",
    );
    let run = sb.run(&["validate", "bad2.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("bad2.yaml:11:3: poll.interval:"),
        "{run:?}"
    );

    let run = sb.run(&[
        "validate",
        &repo().join("specs/demo.yaml").display().to_string(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_spec_error_under_detailed_exitcode_exits_1() {
    let sb = Sandbox::new();
    sb.write("bad.yaml", "version: 1\nname: x\n");
    let run = sb.run(&["plan", "bad.yaml", "--detailed-exitcode"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: bad.yaml:"), "{run:?}");
    let run = sb.run(&["plan", "bad.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn the_exit_code_table_is_in_help() {
    let run = Sandbox::new().run(&["--help"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Exit codes:\n  0  success"), "{run:?}");
    assert!(run.stdout.contains("\n  5  still running"), "{run:?}");
    let run = Sandbox::new().run(&["plan"]);
    assert_eq!(run.code, 2, "a missing argument is a usage error: {run:?}");
}

#[test]
fn csv_cells_reach_the_prompt_verbatim() {
    let sb = Sandbox::new();
    sb.write(
        "in.csv",
        "id,a,b\n007,,\"say \"\"hi\"\", then\nnewline\"\n0.50,héllo 世界 🎉,plain\n",
    );
    sb.write(
        "s.yaml",
        spec("cells", "in.csv", "[{{ id }}][{{ a }}][{{ b }}]", ""),
    );
    let run = sb.run(&["plan", "s.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines = chunk_lines(&sb, "cells");
    let users: Vec<String> = lines.iter().map(user_text).collect();
    assert_eq!(
        users,
        vec![
            "[007][][say \"hi\", then\nnewline]",
            "[0.50][héllo 世界 🎉][plain]"
        ]
    );
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r1", "r2"]);
}

#[test]
fn json_and_jsonl_cells_keep_their_text() {
    let sb = Sandbox::new();
    let rows = [
        r#"{"n": 1.50, "s": "007", "nested": {"k": [1, 2.0, "x"]}, "z": null, "t": true}"#,
        r#"{"n": -0, "s": "", "nested": [], "z": "é", "t": false}"#,
    ];
    sb.write("in.jsonl", format!("{}\n\n{}\r\n", rows[0], rows[1]));
    sb.write("in.json", format!("[\n  {},\n  {}\n]\n", rows[0], rows[1]));
    let want = vec![
        r#"1.50|007|{"k":[1,2.0,"x"]}||true"#.to_string(),
        r#"-0||[]|é|false"#.to_string(),
    ];
    for file in ["in.jsonl", "in.json"] {
        let job = file.replace('.', "-");
        sb.write(
            &format!("{job}.yaml"),
            spec(
                &job,
                file,
                "{{ n }}|{{ s }}|{{ nested }}|{{ z }}|{{ t }}",
                "",
            ),
        );
        let run = sb.run(&["plan", &format!("{job}.yaml")]);
        assert_eq!(run.code, 0, "{file}: {run:?}");
        let users: Vec<String> = chunk_lines(&sb, &job).iter().map(user_text).collect();
        assert_eq!(users, want, "{file}");
    }
}

#[test]
fn several_inputs_are_read_in_order() {
    let sb = Sandbox::new();
    sb.write("a.csv", "t\none\ntwo\n");
    sb.write("b.jsonl", "{\"t\": \"three\"}\n");
    sb.write("s.yaml", spec("multi", "[a.csv, b.jsonl]", "{{ t }}", ""));
    let run = sb.run(&["plan", "s.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    let users: Vec<String> = chunk_lines(&sb, "multi").iter().map(user_text).collect();
    assert_eq!(users, ["one", "two", "three"]);
}

#[test]
fn missing_placeholder_column_is_named_with_the_columns() {
    let sb = Sandbox::new();
    sb.write("in.csv", "id,essay\n1,x\n");
    sb.write("s.yaml", spec("tpl", "in.csv", "Grade {{ esay }}", ""));
    let run = sb.run(&["plan", "s.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("{{ esay }}"), "{run:?}");
    assert!(run.stderr.contains("the columns are: id, essay"), "{run:?}");
    assert!(run.stderr.contains("in.csv"), "{run:?}");

    sb.write("s2.yaml", spec("tpl2", "in.csv", "Grade {{ essay", ""));
    let run = sb.run(&["plan", "s2.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("never closed"), "{run:?}");
}

#[test]
fn duplicate_ids_name_the_value_and_both_rows() {
    let sb = Sandbox::new();
    sb.write("in.csv", "key,t\na,1\nb,2\na,3\n");
    sb.write(
        "s.yaml",
        spec("dup", "in.csv", "{{ t }}", "").replace(
            "input:\n  path: in.csv\n",
            "input:\n  path: in.csv\n  id: key\n",
        ),
    );
    let run = sb.run(&["plan", "s.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("duplicate id `a`"), "{run:?}");
    assert!(run.stderr.contains("row 3"), "{run:?}");
    assert!(run.stderr.contains("row 1"), "{run:?}");
    assert!(run.stderr.contains("in.csv:4"), "{run:?}");
}

#[test]
fn forced_chunk_count_and_limits() {
    let sb = Sandbox::new();
    let mut csv = String::from("t\n");
    for i in 0..10 {
        csv.push_str(&format!("row {i}\n"));
    }
    sb.write("in.csv", &csv);
    sb.write(
        "s.yaml",
        spec("forced", "in.csv", "{{ t }}", "chunking:\n  chunks: 3\n"),
    );
    let run = sb.run(&["plan", "s.yaml", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = run.json();
    let sizes: Vec<u64> = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [4, 3, 3]);
    // A byte limit smaller than one request names the row.
    sb.write(
        "s2.yaml",
        spec("tiny", "in.csv", "{{ t }}", "chunking:\n  max_bytes: 50\n"),
    );
    let run = sb.run(&["plan", "s2.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("in.csv:2 (row 1)"), "{run:?}");
    // Limits over the provider ceiling are lowered, with a warning.
    sb.write(
        "s3.yaml",
        spec(
            "ceiling",
            "in.csv",
            "{{ t }}",
            "chunking:\n  max_requests: 90000\n",
        ),
    );
    let run = sb.run(&["plan", "s3.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("above the provider limit; using 50000"),
        "{run:?}"
    );
}

#[test]
fn demo_spec_plans_out_of_the_box() {
    let sb = Sandbox::new();
    let spec = repo().join("specs/demo.yaml");
    let run = sb.run(&["plan", &spec.display().to_string(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = run.json();
    assert_eq!(v["rows"], 300);
    assert_eq!(v["outstanding"], 300);
    assert_eq!(v["chunks"].as_array().unwrap().len(), 3);
    assert!(v["estimate"]["low"].as_f64().unwrap() > 0.0);
    assert!(
        run.stderr.contains("300 to grade, 0 already graded"),
        "{run:?}"
    );
}

/// A spec for the built-in simulated provider with quick batches.
fn simulated_spec(name: &str, model: &str) -> String {
    spec(
        name,
        "in.csv",
        "{{ t }}",
        "provider:\n  kind: simulated\n  simulated:\n    validating: 10ms\n    in_progress: 50ms\n    finalizing: 10ms\npoll:\n  interval: 50ms\n  max_interval: 100ms\n",
    )
    .replace("model: gpt-4o-mini", &format!("model: {model}"))
}

#[test]
fn plan_warnings_are_in_the_json_and_on_stderr() {
    let sb = Sandbox::new();
    sb.write("in.csv", "t\none\ntwo\n");
    sb.write("s.yaml", simulated_spec("local", "my-local-model"));
    let want = [
        "model `my-local-model` has no price",
        "no known tokenizer for model `my-local-model`",
    ];
    for round in ["new plan", "unchanged plan"] {
        let run = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(run.code, 0, "{round}: {run:?}");
        let warnings = run.json()["warnings"].clone();
        let warnings: Vec<&str> = warnings
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        for w in want {
            assert!(
                warnings.iter().any(|x| x.starts_with(w)),
                "{round}: {w:?} not in {warnings:?}"
            );
            assert!(
                run.stderr.contains(&format!("warning: {w}")),
                "{round}: {run:?}"
            );
        }
    }
}

#[test]
fn apply_plans_and_applies_with_one_store_and_reports_the_plan_warnings() {
    let sb = Sandbox::new();
    sb.write("in.csv", "t\none\ntwo\nthree\n");
    sb.write("s.yaml", simulated_spec("local", "my-local-model"));
    let run = sb.run(&["apply", "s.yaml", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("planned first"), "{run:?}");
    assert!(
        run.stderr
            .contains("warning: model `my-local-model` has no price"),
        "{run:?}"
    );
    let v = run.json();
    assert_eq!(v["ending"], "finished", "{v:#}");
    assert_eq!(v["graded"], 3, "{v:#}");
    let warnings = v["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("has no price")),
        "{v:#}"
    );
    // A job without warnings says so with an empty list.
    sb.write("s2.yaml", simulated_spec("priced", "gpt-4o-mini"));
    let run = sb.run(&["apply", "s2.yaml", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["warnings"], serde_json::json!([]), "{run:?}");
}

/// Full chunk files are synced on a thread of their own; the files waiting
/// for it are few, so a plan of many small chunks fits in a small budget of
/// open files (an unbounded queue ran out of them at ~1,200 chunks under
/// the usual limit of 1,024).
#[test]
fn a_plan_of_many_chunks_keeps_few_files_open() {
    let sb = Sandbox::new();
    let mut csv = String::from("id,text\n");
    for i in 1..=400 {
        csv.push_str(&format!("k{i},text {i}\n"));
    }
    sb.write("in.csv", csv);
    sb.write(
        "s.yaml",
        spec(
            "many",
            "in.csv",
            "{{ text }}",
            "chunking:\n  max_requests: 1\n",
        ),
    );
    let out = sb
        .command_under(
            &["sh", "-c", "ulimit -n 48 && exec \"$0\" \"$@\""],
            &["plan", "s.yaml", "--json"],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chunks = v["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 400);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["index"], i as u64 + 1);
        assert_eq!(c["requests"], 1);
    }
    // The records name each file with its own bytes, in order.
    let third = sb.read(&format!(
        "state/many/{}",
        chunks[2]["file"].as_str().unwrap()
    ));
    assert!(third.contains("\"custom_id\":\"r3\""), "{third}");
}

#[test]
fn an_input_that_is_a_pipe_is_refused_before_it_is_opened() {
    // An input is read twice (plan, then the output): a pipe would be
    // drained by the first reader. Opening a pipe with no writer waits
    // for one, so the refusal must come before any open.
    let sb = Sandbox::new();
    sb.write("job.yaml", spec("piped", "in.csv", "{{ text }}", ""));
    let fifo = std::ffi::CString::new(sb.path("in.csv").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let mut child = sb
        .command(&["plan", "job.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("plan waited on the pipe");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("in.csv: a pipe or a device, not a file: an input is read more than once"),
        "{stderr}"
    );
    assert!(
        !sb.path("state").exists(),
        "no job folder for a refused plan"
    );
}
