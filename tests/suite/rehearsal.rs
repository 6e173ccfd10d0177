//! `apply SPEC --sample N`: a rehearsal grades N rows of a batch job in the
//! direct lane (gold rows first), writes the sample file with the agreement,
//! and the full `apply` afterwards puts every other row, and only those,
//! into batches. Counted at the simulated provider, in its own process.

use std::collections::HashSet;

use serde_json::Value;

use crate::common::jobs::{Anthropic, Backend, Job, OpenAi};
use crate::common::{self, Sandbox};

/// `rows` rows, a gold grade on every third one.
fn input(rows: usize) -> String {
    let mut s = String::from("id,text,gold\n");
    for i in 1..=rows {
        let gold = if i % 3 == 0 {
            (i * 7 % 11).to_string()
        } else {
            String::new()
        };
        s.push_str(&format!(
            "{i:05},answer number {i} says {},{gold}\n",
            i * 31 % 97
        ));
    }
    s
}

fn job(backend: Backend, url: &str) -> String {
    Job::new(backend, "rehearse", url)
        .chunk(500)
        .yaml("")
        .replace("  parse: number\n", "  parse: number\n  gold: gold\n")
}

/// The custom ids the server's batches carried, and how many lines in all.
fn batch_ids(stats: &Value) -> (HashSet<String>, usize) {
    let mut ids = HashSet::new();
    let mut lines = 0;
    for b in common::jobs::batches(stats) {
        for id in b["custom_ids"].as_array().into_iter().flatten() {
            lines += 1;
            let id = id.as_str().unwrap();
            // Message Batches ids carry the submit's tag after the row's.
            let row = match id.rsplit_once('_') {
                Some((row, _)) => row,
                None => id,
            };
            ids.insert(row.to_string());
        }
    }
    (ids, lines)
}

/// Requests the server answered one by one (chat completions or messages).
fn direct_answers(stats: &Value) -> u64 {
    stats["chat_completions"]
        .as_u64()
        .or_else(|| stats["messages"].as_u64())
        .unwrap_or(0)
}

/// The ids of a CSV's rows, in file order.
fn ids_of(csv: &str) -> Vec<String> {
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    r.records().map(|rec| rec.unwrap()[0].to_string()).collect()
}

fn sample_then_apply(backend: Backend) {
    let rows = 2000;
    let sb = Sandbox::new();
    let server = backend.server(&sb, &[]);
    sb.write("in.csv", input(rows));
    sb.write("job.yaml", job(backend, &server.url));

    let r = backend.run(
        &sb,
        &["apply", "job.yaml", "--sample", "100", "--json"],
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let stats = server.stats();
    assert_eq!(
        stats["batches_created"], 0,
        "a rehearsal makes no batch: {stats:#}"
    );
    assert_eq!(direct_answers(&stats), 100, "{stats:#}");
    let out = r.json();
    assert_eq!(out["rehearsal"]["sampled"], 100, "{out:#}");
    assert_eq!(out["rehearsal"]["sent"], 100, "{out:#}");
    // Every sampled row has a gold value (a third of 2,000 rows do).
    assert_eq!(out["rehearsal"]["gold_rows"], 100, "{out:#}");
    assert!(
        out["agreement"][0]["n"].as_u64().unwrap_or(0) >= 90,
        "{out:#}"
    );
    assert!(
        out["rehearsal"]["rest_estimated_usd"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{out:#}"
    );
    assert_eq!(out["rehearsal"]["rest_requests"], 1900, "{out:#}");

    // The sample file: 100 rows in input order, each graded, with gold.
    let sample = sb.read("out/graded.sample.csv");
    let ids = ids_of(&sample);
    assert_eq!(ids.len(), 100);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "input order");
    assert!(
        !sb.path("out/graded.csv").exists(),
        "the job's output is not written"
    );
    let mut reader = csv::Reader::from_reader(sample.as_bytes());
    let head = reader.headers().unwrap().clone();
    let col = |n: &str| head.iter().position(|h| h == n).unwrap();
    for rec in reader.records() {
        let rec = rec.unwrap();
        assert_eq!(&rec[col("grade_status")], "ok", "{rec:?}");
        assert!(!rec[col("gold")].is_empty(), "{rec:?}");
        assert!(!rec[col("grade_agrees")].is_empty(), "{rec:?}");
    }

    // The full apply: every other row in batches, the sample's in none.
    let full = backend.run(&sb, &["apply", "job.yaml"], &[]);
    assert_eq!(full.code, 0, "{full:?}");
    let stats = server.stats();
    let (in_batches, lines) = batch_ids(&stats);
    assert_eq!(lines, 1900, "{stats:#}");
    assert_eq!(in_batches.len(), 1900);
    let sampled: HashSet<String> = ids
        .iter()
        .map(|id| format!("r{}", id.trim_start_matches('0')))
        .collect();
    let twice: Vec<_> = sampled.intersection(&in_batches).collect();
    assert!(twice.is_empty(), "rows sent in both lanes: {twice:?}");
    assert_eq!(direct_answers(&stats), 100, "nothing more sent directly");
    // The output holds every row, and the sample's answers are the job's.
    let output = sb.read("out/graded.csv");
    assert_eq!(ids_of(&output).len(), rows);
    let statuses = common::jobs::statuses(&sb);
    assert!(statuses.values().all(|(s, _)| s == "ok"), "{statuses:?}");

    // A job graded already rehearses nothing.
    let again = backend.run(&sb, &["apply", "job.yaml", "--sample", "10"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("nothing to rehearse"), "{again:?}");
    assert_eq!(direct_answers(&server.stats()), 100);
    assert_eq!(batch_ids(&server.stats()).1, 1900);
}

#[test]
fn a_sample_of_an_openai_batch_job_is_graded_directly_and_never_batched() {
    sample_then_apply(OpenAi);
}

#[test]
fn a_sample_of_an_anthropic_batch_job_is_graded_directly_and_never_batched() {
    sample_then_apply(Anthropic);
}

/// A rehearsal killed after some answers were durable, then `resume`: the
/// plan is made again first, so no batch carries a row answered directly,
/// and every row is answered once.
#[test]
fn a_killed_rehearsal_then_resume_never_batches_an_answered_row() {
    let rows = 300;
    let sb = Sandbox::new();
    let server = OpenAi.server(&sb, &[]);
    sb.write("in.csv", input(rows));
    sb.write(
        "job.yaml",
        job(OpenAi, &server.url).replace("max_requests: 500", "max_requests: 50"),
    );
    let killed = OpenAi.run(
        &sb,
        &["apply", "job.yaml", "--sample", "120"],
        &[("BATCHGRADER_TEST_KILL_AT", "direct-commit:40")],
    );
    assert_ne!(killed.code, 0, "{killed:?}");
    common::wait_for_store_release(&sb, "rehearse");
    let answered = direct_answers(&server.stats());
    assert!(answered >= 40, "{answered}");
    // The answers the killed rehearsal made durable.
    let durable = sb.read("state/rehearse/outcomes.jsonl").lines().count();
    assert!(durable >= 40, "{durable}");
    let resumed = OpenAi.run(&sb, &["resume"], &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(
        resumed.stderr.contains("planned again first"),
        "{resumed:?}"
    );
    let stats = server.stats();
    let (in_batches, lines) = batch_ids(&stats);
    assert_eq!(lines, in_batches.len(), "a row in two batches: {stats:#}");
    // Every row not answered durably went into a batch, and no other: the
    // rows the rehearsal recorded are in no batch.
    assert_eq!(lines, rows - durable, "{stats:#}");
    assert_eq!(
        direct_answers(&stats),
        answered,
        "nothing more sent directly"
    );
    let output = sb.read("out/graded.csv");
    assert_eq!(ids_of(&output).len(), rows);
    let statuses = common::jobs::statuses(&sb);
    assert!(statuses.values().all(|(s, _)| s == "ok"), "{statuses:?}");
}

/// The same seed picks the same rows; `--sample` needs the spec and a
/// positive count.
#[test]
fn the_same_seed_rehearses_the_same_rows() {
    let rows = 200;
    let sample_ids = |seed: &str| {
        let sb = Sandbox::new();
        let server = OpenAi.server(&sb, &[]);
        sb.write("in.csv", input(rows));
        sb.write("job.yaml", job(OpenAi, &server.url));
        let r = OpenAi.run(
            &sb,
            &["apply", "job.yaml", "--sample", "30", "--seed", seed],
            &[],
        );
        assert_eq!(r.code, 0, "{r:?}");
        ids_of(&sb.read("out/graded.sample.csv"))
    };
    let a = sample_ids("7");
    assert_eq!(a.len(), 30);
    assert_eq!(a, sample_ids("7"));
    assert_ne!(a, sample_ids("8"));

    let sb = Sandbox::new();
    let zero = sb.run(&["apply", "job.yaml", "--sample", "0"]);
    assert_eq!(zero.code, 2, "{zero:?}");
    let resume = sb.run(&["resume", "--sample", "5"]);
    assert_eq!(resume.code, 2, "{resume:?}");
}
