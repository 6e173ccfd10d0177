//! The graded jobs the end-to-end tests share, per backend (OpenAI's batch
//! API, Anthropic's Message Batches, direct chat completions, direct
//! Anthropic messages), against the
//! simulated provider in its own process: the job file, its input, the
//! output of an uninterrupted run, the kill-then-resume test, and the checks
//! on what the server saw and what the ledger holds.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::sim::Server;
use super::{Run, Sandbox, files_under};

/// Which API a job talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `kind: openai`, batch mode: Files + Batches.
    OpenAi,
    /// `kind: anthropic`: Message Batches.
    Anthropic,
    /// `kind: openai`, `mode: direct`: one chat completion per row.
    Direct,
    /// `kind: anthropic`, `mode: direct`: one `POST /v1/messages` per row.
    DirectAnthropic,
}

pub use Backend::{Anthropic, Direct, DirectAnthropic, OpenAi};

impl Backend {
    /// Whether it sends one request per row (`mode: direct`).
    pub const fn is_direct(self) -> bool {
        matches!(self, Direct | DirectAnthropic)
    }

    /// The variable the job names for its key.
    pub const fn key_env(self) -> &'static str {
        match self {
            OpenAi => "BG_TEST_KEY",
            Anthropic => "BG_TEST_ANTHROPIC_KEY",
            Direct => "DIRECT_TEST_KEY",
            DirectAnthropic => "DIRECT_TEST_ANTHROPIC_KEY",
        }
    }

    /// The key the tests give it (the Anthropic server checks it).
    pub const fn key(self) -> &'static str {
        match self {
            OpenAi => "sk-test-not-a-real-key-4242",
            Anthropic | DirectAnthropic => "sk-ant-test-not-a-real-key-4242",
            Direct => "sk-test-direct-0001",
        }
    }

    /// The simulated provider for this backend in its own process, with
    /// `extra` flags.
    pub fn server(self, sb: &Sandbox, extra: &[&str]) -> Server {
        match self {
            Anthropic | DirectAnthropic => {
                let mut args = vec!["--api", "anthropic", "--api-key", self.key()];
                args.extend_from_slice(extra);
                Server::start(sb, &args)
            }
            OpenAi | Direct => Server::start(sb, extra),
        }
    }

    /// Runs the binary in `sb` with this backend's key set; `env` after it.
    pub fn run(self, sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = vec![(self.key_env(), self.key())];
        all.extend_from_slice(env);
        sb.run_env(args, &all)
    }
}

/// A number-grading job file on `in.csv` (columns `id`, `text`), written to
/// `out/graded.csv`: batch jobs in chunks of `chunk` requests, `in_flight`
/// batches at once, with short polls for tests; direct jobs with
/// `in_flight` requests at once.
#[derive(Clone, Debug)]
pub struct Job<'a> {
    backend: Backend,
    name: &'a str,
    base_url: &'a str,
    key_env: &'a str,
    chunk: u32,
    in_flight: u32,
}

impl<'a> Job<'a> {
    /// The job `name` against `base_url` (for direct jobs, one URL or a
    /// YAML list, see [`url_list`]), naming the backend's key variable, in
    /// chunks of 10 with 2 in flight.
    pub fn new(backend: Backend, name: &'a str, base_url: &'a str) -> Job<'a> {
        Job {
            backend,
            name,
            base_url,
            key_env: backend.key_env(),
            chunk: 10,
            in_flight: 2,
        }
    }

    pub fn key_env(mut self, key_env: &'a str) -> Job<'a> {
        self.key_env = key_env;
        self
    }

    pub fn chunk(mut self, requests: u32) -> Job<'a> {
        assert!(!self.backend.is_direct(), "direct jobs have no chunks");
        self.chunk = requests;
        self
    }

    pub fn in_flight(mut self, n: u32) -> Job<'a> {
        self.in_flight = n;
        self
    }

    /// The YAML, `extra` appended.
    pub fn yaml(&self, extra: &str) -> String {
        let Job {
            backend,
            name,
            base_url,
            key_env,
            chunk,
            in_flight,
        } = *self;
        let (kind, model, request) = match backend {
            OpenAi => ("openai", "gpt-4o-mini", "  max_tokens: 4\n"),
            Direct => ("openai\n  mode: direct", "gpt-4o-mini", "  max_tokens: 4\n"),
            Anthropic => (
                "anthropic",
                "claude-haiku-4-5",
                "  max_tokens: 4\n  temperature: 0\n",
            ),
            DirectAnthropic => (
                "anthropic\n  mode: direct",
                "claude-haiku-4-5",
                "  max_tokens: 4\n  temperature: 0\n",
            ),
        };
        let pace = match backend {
            Direct | DirectAnthropic => format!(
                "concurrency:
  max_requests_in_flight: {in_flight}
"
            ),
            OpenAi | Anthropic => format!(
                "chunking:
  max_requests: {chunk}
concurrency:
  max_batches_in_flight: {in_flight}
poll:
  interval: 100ms
  max_interval: 200ms
"
            ),
        };
        format!(
            "version: 1
name: {name}
provider:
  kind: {kind}
  base_url: {base_url}
  api_key_env: {key_env}
model: {model}
input:
  path: in.csv
  id: id
prompt:
  system: Grade the answer from 0 to 10. Reply with the number only.
  user: \"{{{{ text }}}}\"
request:
{request}output:
  path: out/graded.csv
  field: grade
  parse: number
{pace}{extra}"
        )
    }
}

/// Several base URLs as one YAML list (one URL as itself).
pub fn url_list(urls: &[&str]) -> String {
    if urls.len() == 1 {
        urls[0].to_string()
    } else {
        format!("[{}]", urls.join(", "))
    }
}

/// `rows` rows of the backend's standard input. Batch backends: `id`,
/// `text`, `note`, with cells that must survive verbatim (a quoted comma,
/// a line break, non-ASCII text, leading zeros; for OpenAI every fifth note
/// empty; direct Anthropic jobs the Message Batches job's, so both lanes
/// answer the same requests). Direct: `id`, `text`, the texts all different.
pub fn standard_input(backend: Backend, rows: usize) -> String {
    if backend == Direct {
        let mut s = String::from("id,text\n");
        for i in 1..=rows {
            s.push_str(&format!(
                "id{i:04},answer number {i} says {}\n",
                i * 7919 % 1000
            ));
        }
        return s;
    }
    let mut csv = String::from("id,text,note\n");
    for i in 1..=rows {
        let text = match i {
            3 => "\"quoted, \"\"with\"\" comma\"".to_string(),
            7 => "\"two\nlines\"".to_string(),
            11 => "café ☕".to_string(),
            _ => format!("answer number {i}"),
        };
        let note = if backend == OpenAi && i % 5 == 0 {
            String::new()
        } else {
            format!("00{i}")
        };
        csv.push_str(&format!("{i:03},{text},{note}\n"));
    }
    csv
}

/// The name of the backend's standard job.
pub fn standard_name(backend: Backend) -> &'static str {
    match backend {
        OpenAi => "crash",
        Anthropic => "claude",
        Direct => "ref",
        DirectAnthropic => "claude-direct",
    }
}

/// Writes the backend's standard job against `url`: [`standard_input`] of
/// `rows` rows, in chunks of 10 with 2 batches in flight (direct: 8
/// requests in flight); `extra` appended to the job file.
pub fn standard_job(sb: &Sandbox, backend: Backend, url: &str, rows: usize, extra: &str) {
    sb.write("in.csv", standard_input(backend, rows));
    let job = Job::new(backend, standard_name(backend), url);
    let job = if backend.is_direct() {
        job.in_flight(8)
    } else {
        job
    };
    sb.write("job.yaml", job.yaml(extra));
}

/// Applies the job in `sb` (direct jobs with `--yes`).
fn apply_args(backend: Backend) -> &'static [&'static str] {
    match backend {
        Direct | DirectAnthropic => &["apply", "job.yaml", "--yes"],
        OpenAi | Anthropic => &["apply", "job.yaml"],
    }
}

/// The output of the backend's standard job of `rows` rows, run once
/// without faults on its own server; made once per test process (per
/// backend and rows). A batch run is checked to have made one batch per
/// chunk.
pub fn reference_output(backend: Backend, rows: usize) -> String {
    type Outputs = std::sync::Mutex<HashMap<(Backend, usize), String>>;
    static REF: std::sync::OnceLock<Outputs> = std::sync::OnceLock::new();
    let mut made = REF.get_or_init(Default::default).lock().unwrap();
    made.entry((backend, rows))
        .or_insert_with(|| {
            let sb = Sandbox::new();
            let server = backend.server(&sb, &[]);
            standard_job(&sb, backend, &server.url, rows, "");
            let r = backend.run(&sb, apply_args(backend), &[]);
            assert_eq!(r.code, 0, "{r:?}");
            if !backend.is_direct() {
                assert_one_batch_per_chunk(backend, &server.stats(), rows.div_ceil(10), rows);
            }
            sb.read("out/graded.csv")
        })
        .clone()
}

/// The batch backend's standard job of 25 rows (three chunks), killed by
/// its own hook at `point` and resumed: one batch per chunk, each batch
/// once in the ledger, the same output as a run never killed, and the key
/// in no file and nothing printed.
pub fn crash_then_resume(backend: Backend, point: &str) {
    assert!(!backend.is_direct(), "a batch backend");
    let sb = Sandbox::new();
    let server = backend.server(&sb, &[]);
    standard_job(&sb, backend, &server.url, 25, "");
    let killed = backend.run(
        &sb,
        &["apply", "job.yaml"],
        &[("BATCHGRADER_TEST_KILL_AT", point)],
    );
    assert_eq!(
        killed.signal,
        Some(9),
        "the process was not killed at {point}: {killed:?}"
    );
    let resumed = backend.run(&sb, &["resume"], &[]);
    assert_eq!(
        resumed.code, 0,
        "resume after a kill at {point}: {resumed:?}"
    );
    if point == "create-sent" {
        // The batch made before the kill was found and adopted.
        assert!(resumed.stderr.contains("adopted batch"), "{resumed:?}");
    }
    assert_one_batch_per_chunk(backend, &server.stats(), 3, 25);
    assert_eq!(
        sb.read("out/graded.csv"),
        reference_output(backend, 25),
        "output after a kill at {point}"
    );
    // The usage ledger has each batch once.
    let ledger = sb.read("state/usage.jsonl");
    let ids: Vec<String> = ledger
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["batch_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 3, "{ledger}");
    assert_eq!(unique.len(), 3, "{ledger}");
    assert_key_nowhere(&sb, backend.key(), &[&killed, &resumed]);
}

/// The batches the simulated provider made, from its `/_sim/stats`.
pub fn batches(stats: &Value) -> &Vec<Value> {
    stats["batches"].as_array().unwrap()
}

/// One batch per chunk attempt, `chunks` batches in all, and (Anthropic)
/// each of the `rows` requests in one batch.
pub fn assert_one_batch_per_chunk(backend: Backend, stats: &Value, chunks: usize, rows: usize) {
    match backend {
        OpenAi => assert_one_batch_per_chunk_attempt(stats, chunks),
        Anthropic => {
            assert_eq!(stats["batches_created"], chunks as u64, "{stats:#}");
            assert_one_batch_per_submit(stats, rows);
        }
        Direct | DirectAnthropic => panic!("direct mode makes no batches"),
    }
}

/// Batches per (chunk, attempt, submit) in their metadata: each must be 1,
/// and `chunks` batches were made.
pub fn assert_one_batch_per_chunk_attempt(stats: &Value, chunks: usize) {
    let batches = batches(stats);
    let mut seen = HashSet::new();
    for b in batches {
        let m = &b["metadata"];
        let key = (
            m["batchgrader_chunk"].as_str().unwrap().to_string(),
            m["batchgrader_attempt"].as_str().unwrap().to_string(),
            m["batchgrader_submit"].as_str().unwrap().to_string(),
        );
        assert!(
            seen.insert(key.clone()),
            "two batches for {key:?}: {stats:#}"
        );
    }
    assert_eq!(batches.len(), chunks, "{stats:#}");
    assert_eq!(stats["batches_created"], chunks as u64);
}

/// A Message Batches custom id without the submit's tag, and the tag.
pub fn split_tag(id: &str) -> (String, String) {
    let (row, tag) = id.rsplit_once('_').expect("a tagged custom id");
    (row.to_string(), tag.to_string())
}

/// Message Batches carry no metadata: every batch holds one submit's
/// requests (one tag), no two batches share a tag, and no request was in
/// two batches; `rows` requests in all.
pub fn assert_one_batch_per_submit(stats: &Value, rows: usize) {
    let mut tags = HashSet::new();
    let mut seen = HashSet::new();
    for b in batches(stats) {
        let ids = b["custom_ids"].as_array().unwrap();
        let batch_tags: HashSet<String> = ids
            .iter()
            .map(|i| split_tag(i.as_str().unwrap()).1)
            .collect();
        assert_eq!(batch_tags.len(), 1, "one tag per batch: {b:#}");
        assert!(
            tags.insert(batch_tags.into_iter().next().unwrap()),
            "two batches of one submit: {stats:#}"
        );
        for i in ids {
            let row = split_tag(i.as_str().unwrap()).0;
            assert!(seen.insert(row.clone()), "{row} sent twice: {stats:#}");
        }
    }
    assert_eq!(seen.len(), rows, "{stats:#}");
}

/// Every (request → batches) interval must be disjoint: no request is live
/// in two batches at once. A request is its custom id (Anthropic: without
/// the submit's tag).
pub fn assert_never_live_twice(backend: Backend, stats: &Value) {
    let mut live: HashMap<String, Vec<(u64, u64, String)>> = HashMap::new();
    for b in batches(stats) {
        let start = b["created_at_ms"].as_u64().unwrap();
        let end = b["ended_at_ms"].as_u64().unwrap_or(u64::MAX);
        for id in b["custom_ids"].as_array().into_iter().flatten() {
            let id = id.as_str().unwrap();
            let request = match backend {
                Anthropic => split_tag(id).0,
                OpenAi | Direct | DirectAnthropic => id.to_string(),
            };
            live.entry(request).or_default().push((
                start,
                end,
                b["id"].as_str().unwrap().to_string(),
            ));
        }
    }
    for (id, mut spans) in live {
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "request {id} was live in {} and {} at once",
                w[0].2,
                w[1].2
            );
        }
    }
}

/// The tokens (input, output) of the job's lines in the cost ledger; none
/// without a ledger.
pub fn ledger_tokens(sb: &Sandbox, job: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(sb.path("state/usage.jsonl")).unwrap_or_default();
    let mut t = (0, 0);
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["job"] == job {
            t.0 += v["input_tokens"].as_u64().unwrap();
            t.1 += v["output_tokens"].as_u64().unwrap();
        }
    }
    t
}

/// The output's `grade_status` and `grade_error` columns, by row id.
pub fn statuses(sb: &Sandbox) -> HashMap<String, (String, String)> {
    let out = sb.read("out/graded.csv");
    let mut r = csv::Reader::from_reader(out.as_bytes());
    let header = r.headers().unwrap().clone();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let (s, e) = (col("grade_status"), col("grade_error"));
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), (rec[s].to_string(), rec[e].to_string()))
        })
        .collect()
}

/// No file under the sandbox's `state` and `out` folders, and nothing
/// `printed`, holds `key`.
pub fn assert_key_nowhere(sb: &Sandbox, key: &str, printed: &[&Run]) {
    for r in printed {
        assert!(!r.stdout.contains(key) && !r.stderr.contains(key), "{r:?}");
    }
    for dir in [sb.path("state"), sb.path("out")] {
        if !dir.is_dir() {
            continue;
        }
        for p in files_under(&dir) {
            if let Ok(bytes) = std::fs::read(&p) {
                assert!(
                    !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                    "the key is in {}",
                    p.display()
                );
            }
        }
    }
}
