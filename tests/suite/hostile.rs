//! Hostile and hung servers, end to end: the real binary against a tiny
//! HTTP server in the test (a `TcpListener` on a thread, answering with
//! hand-written HTTP) that accepts and never answers, trickles, sends
//! garbage JSON, a proxy's HTML page, text full of terminal escapes, or a
//! 200 with an endless body. Each run must end in time with the documented
//! exit code and a message naming the call, the status, the request id and
//! an excerpt, without holding the body in memory or writing it to a log.

use crate::common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Direct, DirectAnthropic, Job, OpenAi, Run, Sandbox};

const KEY_ENV: &str = "BG_HOSTILE_KEY";
const KEY: &str = "sk-hostile-test-key-0042";
/// Short timeouts keep each test to seconds: every call gets this long.
const TIMEOUT: &str = "500ms";

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Read the request, never answer, keep the connection open.
    Hang,
    /// A 200 that declares 100,000 bytes and sends one every 100 ms.
    Trickle,
    /// A 200 whose body is cut-off JSON.
    Garbage,
    /// A proxy's HTML page with this status.
    Html(u16),
    /// A 200 whose body never ends (no length; 200 MB before giving up),
    /// produced as it is sent.
    Endless,
    /// A 400 whose message is 100 KB of text with terminal escapes.
    Escapes,
    /// A working Files + Batches API whose one result file starts with a
    /// line of 200 MB, produced as it is sent.
    LongResultLine,
    /// Chat completions and batch result lines that are 2xx answers of
    /// the wrong shape (`WRONG_SHAPES`, one after another).
    WrongShape,
    /// A Files + Batches API whose result file holds every request twice:
    /// first answered `7`, then `3`, and lines for requests never sent.
    Duplicates,
    /// A working Files + Batches API but for one route (a request line's
    /// start), which answers 200 with this body.
    WrongAt(&'static str, &'static str),
    /// Just enough of Anthropic's Message Batches API, but for one route
    /// (a request line's start), which answers 200 with this body.
    ClaudeWrongAt(&'static str, &'static str),
    /// Message Batches whose results hold every request twice (first `7`,
    /// then `3`), a line of another create's tag and one never sent.
    ClaudeForeignLines,
}

/// 2xx bodies that are not a chat completion: none may become an answer.
const WRONG_SHAPES: [&str; 5] = [
    "{}",
    r#"{"choices":"nope"}"#,
    r#"{"choices":[]}"#,
    r#"{"choices":[{"message":{"content":null,"refusal":null}}]}"#,
    r#"{"choices":[{"message":{"role":"assistant","content":7}}]}"#,
];

/// 2xx bodies that are not a Messages response (Messages API reference:
/// a `Message` has a `content` list and `usage`): none may become an answer.
const WRONG_MESSAGES: [&str; 5] = [
    "{}",
    r#"{"content":"nope","usage":{"input_tokens":3,"output_tokens":1}}"#,
    r#"{"content":[{"type":"text","text":"7"}]}"#,
    r#"{"choices":[{"message":{"content":"7"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
    "[]",
];

/// A hostile HTTP server on 127.0.0.1; counts the bytes of body it got out.
struct Hostile {
    port: u16,
    sent: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Hostile {
    fn start(b: Behaviour) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (s, r) = (sent.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (s, r) = (s.clone(), r.clone());
                std::thread::spawn(move || serve(stream, b, &s, &r));
            }
        });
        Hostile {
            port,
            sent,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

/// Reads one request: its head, then whatever body follows within a
/// moment (enough for the small requests of these jobs). Returns its
/// request line (`POST /v1/files HTTP/1.1`), or `None` when the client
/// hung up.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let started = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if got.windows(4).any(|w| w == b"\r\n\r\n") => {
                return Some(String::from_utf8_lossy(&got).into_owned());
            }
            Err(_) if started.elapsed() > Duration::from_secs(5) => return None,
            Err(_) => {}
        }
    }
}

fn serve(mut stream: TcpStream, b: Behaviour, sent: &AtomicU64, requests: &AtomicU64) {
    // Keep-alive: answer every request on the connection the same way.
    // The custom ids of the last message batch created (with their tags).
    let mut ids: Vec<String> = Vec::new();
    while let Some(request) = read_request(&mut stream) {
        let line = request.lines().next().unwrap_or("").to_string();
        requests.fetch_add(1, Ordering::SeqCst);
        let ok = match b {
            Behaviour::LongResultLine => batch_api(&mut stream, &line, sent),
            Behaviour::WrongShape => wrong_shapes(&mut stream, &line, requests),
            Behaviour::Duplicates => duplicates(&mut stream, &line),
            Behaviour::ClaudeWrongAt(route, body) if line.starts_with(route) => {
                respond(&mut stream, 200, &[("content-type", "application/json")], body.as_bytes())
            }
            Behaviour::ClaudeWrongAt(..) => claude_api(&mut stream, &request, &mut ids, false),
            Behaviour::ClaudeForeignLines => claude_api(&mut stream, &request, &mut ids, true),
            Behaviour::WrongAt(route, body) => {
                if line.starts_with(route) {
                    respond(&mut stream, 200, &[("content-type", "application/json")], body.as_bytes())
                } else if line.starts_with("GET /v1/batches?") || line.starts_with("GET /v1/batches ") {
                    // A create that may have happened is looked for: none.
                    respond(
                        &mut stream,
                        200,
                        &[("content-type", "application/json")],
                        br#"{"object":"list","data":[],"has_more":false}"#,
                    )
                } else if line.starts_with("GET /v1/files/file-out/content ") {
                    // The good lines alone: no 200 MB line to wait for.
                    let good: String = (0..=7).map(|row| result_line(row, &answer_body("7"))).collect();
                    respond(&mut stream, 200, &[], good.as_bytes())
                } else {
                    batch_api(&mut stream, &line, &AtomicU64::new(0))
                }
            }
            Behaviour::Hang => {
                // Hold the connection (and drain anything sent) for longer
                // than any test runs.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            Behaviour::Trickle => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n";
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for _ in 0..100_000 {
                    std::thread::sleep(Duration::from_millis(100));
                    if stream.write_all(b" ").is_err() {
                        return;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                true
            }
            Behaviour::Garbage => respond(
                &mut stream,
                200,
                &[("x-request-id", "req_hostile_1")],
                br#"{"id": "file-1", "object": tru"#,
            ),
            Behaviour::Html(status) => respond(
                &mut stream,
                status,
                &[("content-type", "text/html")],
                format!(
                    "<html><head><title>{status} Bad Gateway</title></head>\
                     <body><center><h1>{status} Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
                )
                .as_bytes(),
            ),
            Behaviour::Endless => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let mut chunk = br#"{"id":"file-1","filler":""#.to_vec();
                chunk.resize(64 * 1024, b'x');
                let mut total = 0u64;
                while total < 200_000_000 {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                    total += chunk.len() as u64;
                    sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    chunk.fill(b'x');
                }
                return;
            }
            Behaviour::Escapes => {
                let message = format!(
                    "\u{1b}[2J\u{1b}[H\u{1b}]0;pwned\u{7}bad request\r\n\u{1b}[31m{}",
                    "A".repeat(100_000)
                );
                let body = serde_json::json!({
                    "error": {"message": message, "type": "invalid_request_error", "code": "\u{1b}[5mbad"}
                });
                respond(
                    &mut stream,
                    400,
                    &[("x-request-id", &format!("req_{}", "9".repeat(5000)))],
                    body.to_string().as_bytes(),
                )
            }
        };
        if !ok {
            return;
        }
    }
}

/// Just enough of the Files + Batches API for one job: every batch is
/// completed at once, and its output file begins with a 200 MB line (then
/// a good line for each of the job's rows).
fn batch_api(stream: &mut TcpStream, request_line: &str, sent: &AtomicU64) -> bool {
    let batch = r#"{"id":"batch_1","object":"batch","status":"completed","endpoint":"/v1/chat/completions",
        "input_file_id":"file-in","output_file_id":"file-out","completion_window":"24h",
        "request_counts":{"total":6,"completed":6,"failed":0}}"#;
    let json = [("content-type", "application/json")];
    match request_line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["POST", "/v1/files"] => respond(
            stream,
            200,
            &json,
            br#"{"id":"file-in","object":"file","purpose":"batch","bytes":1}"#,
        ),
        ["POST", "/v1/batches"] | ["GET", "/v1/batches/batch_1"] => {
            respond(stream, 200, &json, batch.as_bytes())
        }
        ["GET", "/v1/files/file-out/content"] => {
            let mut good = String::new();
            for row in 0..=7 {
                good.push_str(&result_line(row, &answer_body("7")));
            }
            const LONG: usize = 200_000_000;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                LONG + 1 + good.len()
            );
            if stream.write_all(head.as_bytes()).is_err() {
                return false;
            }
            let chunk = vec![b'x'; 1 << 20];
            let mut n = 0;
            while n < LONG {
                let k = chunk.len().min(LONG - n);
                if stream.write_all(&chunk[..k]).is_err() {
                    return false;
                }
                n += k;
                sent.fetch_add(k as u64, Ordering::SeqCst);
            }
            stream.write_all(b"\n").is_ok() && stream.write_all(good.as_bytes()).is_ok()
        }
        ["DELETE", path] => respond(
            stream,
            200,
            &json,
            format!(
                "{{\"id\":\"{}\",\"deleted\":true}}",
                path.rsplit('/').next().unwrap_or("")
            )
            .as_bytes(),
        ),
        _ => respond(
            stream,
            404,
            &json,
            br#"{"error":{"message":"no such route"}}"#,
        ),
    }
}

/// Just enough of Anthropic's Message Batches API for one job: a create
/// ends at once, and its results answer each request it carried `7`;
/// `foreign`: then each again with `3`, one under another create's tag,
/// and one for a request never sent.
fn claude_api(stream: &mut TcpStream, request: &str, ids: &mut Vec<String>, foreign: bool) -> bool {
    let json = [("content-type", "application/json")];
    let line = request.lines().next().unwrap_or("");
    let port = stream.local_addr().unwrap().port();
    let batch = format!(
        r#"{{"id":"msgbatch_1","type":"message_batch","processing_status":"ended",
        "request_counts":{{"processing":0,"succeeded":{n},"errored":0,"canceled":0,"expired":0}},
        "created_at":"2026-01-01T00:00:00Z","ended_at":"2026-01-01T00:00:01Z",
        "expires_at":"2026-01-02T00:00:00Z",
        "results_url":"http://127.0.0.1:{port}/v1/messages/batches/msgbatch_1/results"}}"#,
        n = ids.len()
    );
    let result = |custom_id: &str, grade: &str| {
        format!(
            "{{\"custom_id\":\"{custom_id}\",\"result\":{{\"type\":\"succeeded\",\"message\":             {{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-haiku-4-5\",             \"content\":[{{\"type\":\"text\",\"text\":\"{grade}\"}}],\"stop_reason\":\"end_turn\",             \"usage\":{{\"input_tokens\":5,\"output_tokens\":1}}}}}}}}\n"
        )
    };
    match line.split_whitespace().nth(1).unwrap_or("") {
        "/v1/messages/batches" if line.starts_with("POST") => {
            let body = request.split("\r\n\r\n").nth(1).unwrap_or("");
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            *ids = v["requests"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|q| q["custom_id"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let batch = batch.replace(r#""succeeded":0"#, &format!(r#""succeeded":{}"#, ids.len()));
            respond(stream, 200, &json, batch.as_bytes())
        }
        "/v1/messages/batches/msgbatch_1" => respond(stream, 200, &json, batch.as_bytes()),
        "/v1/messages/batches/msgbatch_1/results" => {
            let mut lines: String = ids.iter().map(|id| result(id, "7")).collect();
            if foreign {
                // The runner names the first five lines it does not merge.
                if let Some(first) = ids.first() {
                    let (id, _) = first.rsplit_once('_').unwrap_or((first, ""));
                    lines.push_str(&result(&format!("{id}_00000abcde"), "3"));
                }
                lines.push_str(&result("zz-never-sent", "3"));
                lines.extend(ids.iter().map(|id| result(id, "3")));
            }
            respond(stream, 200, &[], lines.as_bytes())
        }
        p if p.starts_with("/v1/messages/batches?") || p == "/v1/messages/batches" => respond(
            stream,
            200,
            &json,
            br#"{"data":[],"has_more":false,"first_id":null,"last_id":null}"#,
        ),
        _ => respond(
            stream,
            404,
            &json,
            br#"{"type":"error","error":{"type":"not_found_error","message":"no such route"}}"#,
        ),
    }
}

/// Direct mode's chat completions and the Files + Batches API, every
/// answer a 2xx of the wrong shape.
fn wrong_shapes(stream: &mut TcpStream, request_line: &str, requests: &AtomicU64) -> bool {
    let json = [("content-type", "application/json")];
    let n = requests.load(Ordering::SeqCst) as usize;
    match request_line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["POST", "/v1/chat/completions"] => respond(
            stream,
            200,
            &json,
            WRONG_SHAPES[n % WRONG_SHAPES.len()].as_bytes(),
        ),
        ["POST", "/v1/messages"] => respond(
            stream,
            200,
            &json,
            WRONG_MESSAGES[n % WRONG_MESSAGES.len()].as_bytes(),
        ),
        ["GET", "/v1/files/file-out/content"] => {
            let mut lines = String::new();
            for row in 0..=7 {
                lines.push_str(&result_line(
                    row,
                    WRONG_SHAPES[(n + row) % WRONG_SHAPES.len()],
                ));
            }
            respond(stream, 200, &[], lines.as_bytes())
        }
        _ => batch_api(stream, request_line, &AtomicU64::new(0)),
    }
}

/// The Files + Batches API with every result line there twice, the second
/// with another answer.
fn duplicates(stream: &mut TcpStream, request_line: &str) -> bool {
    match request_line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["GET", "/v1/files/file-out/content"] => {
            let mut lines = String::new();
            for answer in ["7", "3"] {
                for row in 0..=7 {
                    lines.push_str(&result_line(row, &answer_body(answer)));
                }
                // Requests this batch never had.
                lines.push_str(&result_line(999, &answer_body(answer)));
                lines.push_str(&answer_line("zz-foreign", &answer_body(answer)));
            }
            respond(stream, 200, &[], lines.as_bytes())
        }
        _ => batch_api(stream, request_line, &AtomicU64::new(0)),
    }
}

/// One line of a batch output file: the 200 answer `body` to request `r{row}`.
fn result_line(row: usize, body: &str) -> String {
    answer_line(&format!("r{row}"), body)
}

/// One line of a batch output file: the 200 answer `body` to `custom_id`.
fn answer_line(custom_id: &str, body: &str) -> String {
    format!(
        "{{\"custom_id\":\"{custom_id}\",\"response\":{{\"status_code\":200,\"body\":{body}}},\"error\":null}}\n"
    )
}

/// A chat completion answering `content`.
fn answer_body(content: &str) -> String {
    format!(
        "{{\"choices\":[{{\"message\":{{\"content\":\"{content}\"}}}}],\
         \"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":1}}}}"
    )
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).is_ok() && stream.write_all(body).is_ok()
}

/// A six-row batch job against `url`; a transient failure gives its chunk
/// up after a second, so a run against a server that never works ends.
fn batch_job(sb: &Sandbox, url: &str) {
    sb.write("in.csv", "id,text\n1,a\n2,b\n3,c\n4,d\n5,e\n6,f\n");
    sb.write(
        "job.yaml",
        Job::new(OpenAi, "hostile", url)
            .key_env(KEY_ENV)
            .chunk(6)
            .in_flight(1)
            .yaml("retry:\n  give_up_after: 1s\n"),
    );
}

/// A six-row direct job against `url`, with no system prompt and the
/// answers kept as text; a failing request is given up after two seconds.
fn direct_job(sb: &Sandbox, url: &str) {
    direct_job_of(sb, Direct, url);
}

/// [`direct_job`] of `backend` (chat completions, or Anthropic messages).
fn direct_job_of(sb: &Sandbox, backend: common::Backend, url: &str) {
    sb.write("in.csv", "id,text\n1,a\n2,b\n3,c\n4,d\n5,e\n6,f\n");
    let spec = Job::new(backend, "hostile", url)
        .key_env(KEY_ENV)
        .in_flight(2)
        .yaml("retry:\n  give_up_after: 2s\n")
        .replace(
            "  system: Grade the answer from 0 to 10. Reply with the number only.\n",
            "",
        )
        .replace("  field: grade\n  parse: number\n", "");
    sb.write("job.yaml", spec);
}

fn env(timeout: &'static str) -> [(&'static str, &'static str); 2] {
    [(KEY_ENV, KEY), ("BATCHGRADER_HTTP_TIMEOUT", timeout)]
}

fn apply(sb: &Sandbox) -> (Run, Duration) {
    let t = Instant::now();
    let run = sb.run_env(&["apply", "job.yaml", "--yes"], &env(TIMEOUT));
    (run, t.elapsed())
}

/// Every byte under the job's state folder.
fn state_bytes(sb: &Sandbox) -> Vec<(String, Vec<u8>)> {
    common::files_under(&sb.path("state"))
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Runs `apply` in the background and reads `status.json` while it runs;
/// returns the run and every `message` the snapshot showed.
fn apply_watching_status(
    sb: &Sandbox,
    timeout: &'static str,
) -> (Run, Vec<String>, Option<String>) {
    let child = sb
        .command(&["apply", "job.yaml", "--yes"])
        .envs(env(timeout))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = sb.path("state/hostile/status.json");
    let mut messages = Vec::new();
    let mut status_text = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let pid = child.id();
    let out = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !out.is_finished() && Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(m) = v["message"].as_str()
        {
            if m.starts_with("waiting for") && status_text.is_none() {
                // What `status` shows while apply waits.
                let s = sb.run(&["status", "hostile"]);
                status_text = Some(s.stderr + &s.stdout);
            }
            messages.push(m.to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(out.is_finished(), "apply (pid {pid}) did not end in time");
    let run = Run::from(out.join().unwrap());
    (run, messages, status_text)
}

#[test]
fn batch_mode_a_server_that_never_answers_is_timed_out_and_the_wait_is_shown() {
    let server = Hostile::start(Behaviour::Hang);
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let t = Instant::now();
    let (run, messages, status) = apply_watching_status(&sb, TIMEOUT);
    // The chunk is given up after its step failed for `give_up_after`; its
    // rows are not graded (exit 3), and `resume` tries again.
    assert_eq!(run.code, 3, "{run:?}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    assert!(run.stderr.contains("upload file"), "{run:?}");
    assert!(run.stderr.contains("timed out"), "{run:?}");
    assert!(run.stderr.contains("giving up the chunk"), "{run:?}");
    let want = format!("waiting for 127.0.0.1:{}: upload file", server.port);
    assert!(
        messages.iter().any(|m| m.starts_with(&want)),
        "no waiting line in status.json: {messages:?}"
    );
    let status = status.expect("status ran while apply waited");
    assert!(status.contains(&want), "{status}");
    assert!(server.requests.load(Ordering::SeqCst) >= 2);
}

#[test]
fn direct_mode_a_server_that_never_answers_stops_the_run_in_time() {
    let server = Hostile::start(Behaviour::Hang);
    let sb = Sandbox::new();
    direct_job(&sb, &server.url());
    // Each request is out for 5 s before it times out: long enough for the
    // live view to say what it waits for.
    let t = Instant::now();
    let (run, messages, _) = apply_watching_status(&sb, "5s");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("no endpoint has answered for"),
        "{run:?}"
    );
    assert!(run.stderr.contains("(retry.give_up_after)"), "{run:?}");
    assert!(run.stderr.contains("timed out"), "{run:?}");
    let want = format!("waiting for 127.0.0.1:{}: chat completion", server.port);
    assert!(
        messages.iter().any(|m| m.starts_with(&want)),
        "no waiting line in status.json: {messages:?}"
    );
}

#[test]
fn a_trickling_answer_is_cut_by_the_timeout() {
    let server = Hostile::start(Behaviour::Trickle);
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let (run, took) = apply(&sb);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(run.stderr.contains("upload file"), "{run:?}");
    assert!(run.stderr.contains("timed out"), "{run:?}");
    // Each attempt was cut at the timeout, long before the 10,000 s the
    // whole body would take.
    let sent = server.sent.load(Ordering::SeqCst);
    let attempts = server.requests.load(Ordering::SeqCst);
    assert!(sent <= attempts * 10, "{sent} bytes in {attempts} attempts");
}

#[test]
fn garbage_json_names_the_call_the_status_the_request_and_an_excerpt() {
    let server = Hostile::start(Behaviour::Garbage);
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let (run, took) = apply(&sb);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(
        run.stderr.contains(
            "HTTP 200 (request req_hostile_1): the answer is not the JSON this API sends"
        ),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains(r#"it begins: {"id": "file-1", "object": tru"#),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("upload file hostile.chunk-1.attempt-1.jsonl failed"),
        "{run:?}"
    );
}

#[test]
fn an_html_error_page_is_named_by_its_title_and_retried() {
    let server = Hostile::start(Behaviour::Html(502));
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let (run, took) = apply(&sb);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(
        run.stderr
            .contains(r#"HTTP 502: an HTML page titled "502 Bad Gateway""#),
        "{run:?}"
    );
    // A 5xx is transient: tried again within the call and by the runner.
    assert!(server.requests.load(Ordering::SeqCst) >= 6, "{run:?}");
    assert!(!run.stderr.contains("<center>"), "{run:?}");
}

#[test]
fn an_html_page_with_200_is_not_taken_for_an_answer() {
    let server = Hostile::start(Behaviour::Html(200));
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let (run, took) = apply(&sb);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(
        run.stderr.contains(
            r#"HTTP 200: the answer is an HTML page titled "200 Bad Gateway", not the JSON this API sends"#
        ),
        "{run:?}"
    );
}

/// The largest resident set of the children this test process waited for,
/// in bytes (each nextest test is its own process, so: the binary's).
fn children_max_rss() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss as u64 * 1024
}

#[test]
fn a_200_with_an_endless_body_is_cut_at_the_cap_and_memory_stays_bounded() {
    let server = Hostile::start(Behaviour::Endless);
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let (run, took) = apply(&sb);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(
        run.stderr.contains(
            "HTTP 200: the answer is more than 8 MiB, above the 8 MiB this call accepts (stopped reading)"
        ),
        "{run:?}"
    );
    // The client hung up soon after the cap, each time: far from the 200 MB
    // on offer (socket buffers take a few MB more).
    let sent = server.sent.load(Ordering::SeqCst);
    let attempts = server.requests.load(Ordering::SeqCst);
    assert!(
        sent < attempts * 24_000_000,
        "{sent} bytes sent in {attempts} requests"
    );
    let rss = children_max_rss();
    assert!(rss < 150_000_000, "peak RSS {rss} bytes");
    // Nothing of the body reached a log or the state.
    for (path, bytes) in state_bytes(&sb) {
        assert!(bytes.len() < 1_000_000, "{path}: {} bytes", bytes.len());
    }
}

#[test]
fn endless_answers_to_many_requests_in_flight_hold_a_bounded_total() {
    // 48 requests at once, each answered 200 with a body without end: one
    // answer is cut at 16 MiB, and all of them together never hold more
    // than 64 MiB (`MAX_ANSWERS_HELD`); the rest are dropped, named, and
    // sent again.
    let server = Hostile::start(Behaviour::Endless);
    let sb = Sandbox::new();
    let rows: String = (1..=48).map(|i| format!("{i},t{i}\n")).collect();
    let spec = Job::new(Direct, "hostile", &server.url())
        .key_env(KEY_ENV)
        .in_flight(48)
        .yaml("retry:\n  max_attempts: 1\n  give_up_after: 2s\n");
    sb.write("in.csv", format!("id,text\n{rows}"));
    sb.write("job.yaml", spec);
    let run = sb.run_env(&["apply", "job.yaml", "--yes"], &env("5s"));
    // 48 answers of 16 MiB would be 768 MiB; the binary's own ~100 MB
    // plus the 64 MiB it may hold, with room for socket and parser buffers.
    let rss = children_max_rss();
    assert!(rss < 260_000_000, "peak RSS {rss} bytes: {run:?}");
    // No replica ever answered: the run stops after `give_up_after`.
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("no endpoint has answered for"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("HTTP 200: no room for the answer after")
            && run.stderr.contains(
                "of the 64 MiB direct mode holds at once (stopped reading; it is sent again)"
            ),
        "{run:?}"
    );
}

#[test]
fn a_token_in_the_base_urls_query_reaches_no_terminal_log_or_state() {
    // The base URL from OPENAI_BASE_URL, which wins over the spec's. Nothing
    // listens on port 1: every call fails, and its error names the URL it
    // tried. The query's value stays out of all of it; Azure's api-version
    // is not a secret and may show.
    const TOKEN: &str = "SECRETQ-in-the-query";
    let url = format!("http://127.0.0.1:1/v1?api-version=2024-10-21&token={TOKEN}");
    for direct in [false, true] {
        let sb = Sandbox::new();
        if direct {
            direct_job(&sb, "http://127.0.0.1:1/v1");
        } else {
            batch_job(&sb, "http://127.0.0.1:1/v1");
        }
        let [key, timeout] = env(TIMEOUT);
        let run = sb.run_env(
            &["apply", "job.yaml", "--yes"],
            &[key, timeout, ("OPENAI_BASE_URL", &url)],
        );
        assert_ne!(run.code, 0, "{run:?}");
        assert!(
            !run.stderr.contains(TOKEN) && !run.stdout.contains(TOKEN),
            "{run:?}"
        );
        assert!(
            run.stderr.contains("token=***") || run.stderr.contains("127.0.0.1"),
            "{run:?}"
        );
        for (path, bytes) in state_bytes(&sb) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(TOKEN), "{path} (direct {direct}): {text}");
        }
    }
}

#[test]
fn escapes_and_megabytes_in_a_message_reach_no_terminal_log_or_state() {
    let server = Hostile::start(Behaviour::Escapes);
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let (run, _) = apply(&sb);
    // A 400 on upload is final: the run stops with a runtime error.
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("bad request"), "{run:?}");
    // The request id is cut too.
    assert!(run.stderr.contains("(request req_999"), "{run:?}");
    assert!(!run.stderr.contains(&"9".repeat(200)), "{run:?}");
    assert!(!run.stderr.contains('\u{1b}'), "{run:?}");
    assert!(!run.stderr.contains('\u{7}'), "{run:?}");
    assert!(
        run.stderr.len() < 8_000,
        "{} bytes of stderr",
        run.stderr.len()
    );
    for (path, bytes) in state_bytes(&sb) {
        let text = String::from_utf8_lossy(&bytes);
        // The text files (sled's and the request index are binary).
        if path.ends_with(".json") || path.ends_with(".jsonl") {
            assert!(!text.contains('\u{1b}'), "{path} holds an escape");
        }
        assert!(!text.contains("\\u001b"), "{path} holds an escaped escape");
        assert!(
            !text.contains(&"A".repeat(2000)),
            "{path} holds the whole message"
        );
    }
}

/// The same job on Anthropic's Message Batches API (the base URL has no `/v1`).
fn anthropic_job(sb: &Sandbox, port: u16) {
    batch_job(sb, &format!("http://127.0.0.1:{port}"));
    let spec = sb
        .read("job.yaml")
        .replace("kind: openai", "kind: anthropic")
        .replace("model: gpt-4o-mini", "model: claude-haiku-4-5");
    sb.write("job.yaml", spec);
}

#[test]
fn anthropic_garbage_and_hung_answers_end_in_time_with_the_call_named() {
    for (behaviour, names) in [
        (
            Behaviour::Garbage,
            "HTTP 200 (request req_hostile_1): the answer is not the JSON this API sends",
        ),
        (Behaviour::Hang, "timed out"),
    ] {
        let server = Hostile::start(behaviour);
        let sb = Sandbox::new();
        anthropic_job(&sb, server.port);
        let (run, took) = apply(&sb);
        // A create that may have happened is never repeated blindly: the
        // chunk looks for it, keeps failing, and is given up for the run.
        assert_eq!(run.code, 3, "{behaviour:?}: {run:?}");
        assert!(took < Duration::from_secs(60), "{behaviour:?}: {took:?}");
        assert!(run.stderr.contains("message batch"), "{run:?}");
        assert!(run.stderr.contains(names), "{behaviour:?}: {run:?}");
        assert!(run.stderr.contains("giving up the chunk"), "{run:?}");
    }
}

#[test]
fn a_download_stops_before_the_disk_is_full_and_resume_takes_it_up() {
    // The floor set above any disk's free space: the 200 MB result file
    // stops at once, as an endless one would at the floor.
    let server = Hostile::start(Behaviour::LongResultLine);
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let [key, timeout] = env(TIMEOUT);
    let run = sb.run_env(
        &["apply", "job.yaml", "--yes"],
        &[key, timeout, ("BATCHGRADER_MIN_FREE_DISK", "1000000GB")],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("stopped after 0 bytes: the disk of")
            && run
                .stderr
                .contains("under the 1000.0 TB a download leaves free"),
        "{run:?}"
    );
    assert!(run.stderr.contains("BATCHGRADER_MIN_FREE_DISK"), "{run:?}");
    assert!(server.sent.load(Ordering::SeqCst) < 50_000_000);
    for (path, _) in state_bytes(&sb) {
        assert!(!path.ends_with(".tmp"), "{path} left behind");
    }
    // With room again, the download is made and every row graded.
    let again = sb.run_env(&["resume"], &env(TIMEOUT));
    assert_eq!(again.code, 0, "{again:?}");
    let out = sb.read("out/graded.csv");
    assert_eq!(
        out.lines().filter(|l| l.contains(",7,")).count(),
        6,
        "{out}"
    );
}

#[test]
fn a_result_line_of_200_mb_is_a_bad_line_not_a_200_mb_string() {
    let server = Hostile::start(Behaviour::LongResultLine);
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let (run, took) = apply(&sb);
    // The rows have their good lines: graded, and the long line is named.
    assert_eq!(run.code, 0, "{run:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(
        run.stderr.contains(
            ":1: the line is 200000000 bytes long, above the 32 MiB a result line may be"
        ),
        "{run:?}"
    );
    assert_eq!(server.sent.load(Ordering::SeqCst), 200_000_000);
    let out = sb.read("out/graded.csv");
    assert_eq!(
        out.lines().filter(|l| l.contains(",7,")).count(),
        6,
        "{out}"
    );
    // Read back a line at a time, never whole: the binary peaks near its
    // usual ~110 MB plus the 32 MiB cap, where holding the line would add
    // its 200 MB.
    let rss = children_max_rss();
    assert!(rss < 220_000_000, "peak RSS {rss} bytes");
}

#[test]
fn a_2xx_of_the_wrong_shape_is_never_an_answer_in_either_lane() {
    for lane in ["batch", "direct", "claude-direct"] {
        let server = Hostile::start(Behaviour::WrongShape);
        let sb = Sandbox::new();
        match lane {
            "batch" => batch_job(&sb, &server.url()),
            "direct" => direct_job(&sb, &server.url()),
            // Anthropic's base URL has no /v1 (the path carries it).
            _ => direct_job_of(&sb, DirectAnthropic, server.url().trim_end_matches("/v1")),
        }
        // One attempt per request: what is checked is how each answer is
        // taken, not how often it is asked again.
        let spec = sb
            .read("job.yaml")
            .replace("retry:\n", "retry:\n  max_attempts: 1\n");
        sb.write("job.yaml", spec);
        let run = sb.run_env(&["apply", "job.yaml", "--yes", "--json"], &env("2s"));
        assert_eq!(run.code, 3, "{lane}: {run:?}");
        let summary = run.json();
        assert_eq!(summary["graded"], 0, "{lane}: {summary}");
        assert_eq!(summary["parse_failures"], 0, "{lane}: {summary}");
        assert_eq!(summary["failed"], 6, "{lane}: {summary}");
        let out = sb.read("out/graded.csv");
        let mut rows = csv::Reader::from_reader(out.as_bytes());
        let header: Vec<String> = rows.headers().unwrap().iter().map(String::from).collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h.ends_with(name))
                .unwrap_or_else(|| panic!("{name} in {header:?}"))
        };
        let (status, error) = (col("_status"), col("_error"));
        for row in rows.records() {
            let row = row.unwrap();
            assert_eq!(&row[status], "failed", "{lane}: {row:?}");
            let shape = if lane == "claude-direct" {
                "a Messages response"
            } else {
                "a chat completion"
            };
            assert!(
                row[error].starts_with(&format!("bad_response: HTTP 200, but not {shape}: ")),
                "{lane}: {row:?}"
            );
        }
    }
}

#[test]
fn a_repeated_result_line_is_named_and_the_first_is_kept() {
    let server = Hostile::start(Behaviour::Duplicates);
    let sb = Sandbox::new();
    batch_job(&sb, &server.url());
    let run = sb.run_env(&["apply", "job.yaml", "--yes", "--json"], &env("2s"));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["graded"], 6, "{run:?}");
    assert!(
        run.stderr
            .contains("not merged: a second result for `r1` (the first is kept)"),
        "{run:?}"
    );
    for foreign in ["r999", "zz-foreign"] {
        assert!(
            run.stderr.contains(&format!(
                "ignoring a result for `{foreign}`, which this chunk did not send"
            )),
            "{run:?}"
        );
    }
    let out = sb.read("out/graded.csv");
    let mut rows = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = rows.headers().unwrap().iter().map(String::from).collect();
    let grade = header.iter().position(|h| h == "grade").unwrap();
    for row in rows.records() {
        assert_eq!(&row.unwrap()[grade], "7");
    }
}

#[test]
fn a_2xx_of_the_wrong_shape_on_any_batch_route_is_named_and_never_an_answer() {
    // (route, what the call is named in the error, a body that is JSON but
    // not the object the route documents); `{}` and an array on each too.
    let routes = [
        (
            "POST /v1/files ",
            "upload file",
            r#"{"object":"file","bytes":1}"#,
        ),
        (
            "POST /v1/batches ",
            "create batch",
            r#"{"object":"batch","status":"validating"}"#,
        ),
        (
            "GET /v1/batches/batch_1 ",
            "batch batch_1",
            r#"{"id":"batch_1","object":"batch","status":["completed"]}"#,
        ),
        ("GET /v1/files/file-out/content ", "file-out", r#"{"id":7}"#),
    ];
    for (route, call, own) in routes {
        for body in ["{}", "[1,2]", own] {
            let server = Hostile::start(Behaviour::WrongAt(route, body));
            let sb = Sandbox::new();
            batch_job(&sb, &server.url());
            let spec = sb
                .read("job.yaml")
                .replace("retry:\n", "retry:\n  max_attempts: 1\n");
            sb.write("job.yaml", spec);
            let (run, took) = apply(&sb);
            let case = format!("{route}answering {body}");
            // Never an answer, never a panic, never a hang: the chunk's step
            // fails, is retried, and is given up (exit 3), its rows not graded.
            assert_eq!(run.code, 3, "{case}: {run:?}");
            assert!(took < Duration::from_secs(60), "{case}: {took:?}");
            assert!(!run.stderr.contains("panicked"), "{case}: {run:?}");
            assert!(run.stderr.contains(call), "{case}: {run:?}");
            let out = sb.read("out/graded.csv");
            assert!(
                out.lines().skip(1).all(|l| !l.contains(",ok")),
                "{case}: {out}"
            );
        }
    }
}

#[test]
fn claude_a_2xx_of_the_wrong_shape_on_any_batch_route_is_named_and_never_an_answer() {
    // (route, what the call is named in the error, a body that is JSON but
    // not what the Message Batches API documents); `{}` and an array too.
    let routes = [
        (
            "POST /v1/messages/batches ",
            "create",
            r#"{"type":"message_batch","processing_status":"in_progress"}"#,
        ),
        (
            "GET /v1/messages/batches/msgbatch_1 ",
            "msgbatch_1",
            r#"{"id":"msgbatch_1","type":"message_batch","processing_status":["ended"]}"#,
        ),
        (
            "GET /v1/messages/batches/msgbatch_1/results ",
            "msgbatch_1",
            r#"{"custom_id":7,"result":{"type":"succeeded","message":{}}}"#,
        ),
    ];
    for (route, call, own) in routes {
        for body in ["{}", "[1,2]", own] {
            let server = Hostile::start(Behaviour::ClaudeWrongAt(route, body));
            let sb = Sandbox::new();
            anthropic_job(&sb, server.port);
            let spec = sb
                .read("job.yaml")
                .replace("retry:\n", "retry:\n  max_attempts: 1\n");
            sb.write("job.yaml", spec);
            let (run, took) = apply(&sb);
            let case = format!("{route}answering {body}");
            assert_eq!(run.code, 3, "{case}: {run:?}");
            assert!(took < Duration::from_secs(60), "{case}: {took:?}");
            assert!(!run.stderr.contains("panicked"), "{case}: {run:?}");
            assert!(run.stderr.contains(call), "{case}: {run:?}");
            let out = sb.read("out/graded.csv");
            assert!(
                out.lines().skip(1).all(|l| !l.contains(",ok")),
                "{case}: {out}"
            );
        }
    }
}

#[test]
fn claude_foreign_and_repeated_result_lines_are_named_and_not_merged() {
    let server = Hostile::start(Behaviour::ClaudeForeignLines);
    let sb = Sandbox::new();
    anthropic_job(&sb, server.port);
    let run = sb.run_env(&["apply", "job.yaml", "--yes", "--json"], &env("2s"));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["graded"], 6, "{run:?}");
    assert!(
        run.stderr.contains("not merged: a second result for `"),
        "{run:?}"
    );
    assert!(run.stderr.contains("00000abcde"), "{run:?}");
    assert!(run.stderr.contains("zz-never-sent"), "{run:?}");
    let out = sb.read("out/graded.csv");
    let mut rows = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = rows.headers().unwrap().iter().map(String::from).collect();
    let grade = header.iter().position(|h| h == "grade").unwrap();
    for row in rows.records() {
        assert_eq!(&row.unwrap()[grade], "7");
    }
}

#[cfg(unix)]
#[test]
fn a_symlink_planted_in_the_state_is_never_written_through() {
    // Each file the state writes, replaced by a link to a file of the user.
    for planted in [
        "state/links/lock",
        "state/links/outcomes.idx",
        "state/links/outcomes.jsonl",
        "state/links/events.jsonl",
        "state/usage.jsonl",
    ] {
        let sb = Sandbox::new();
        sb.write("in.csv", "id,text\n1,a\n2,b\n");
        sb.write(
            "job.yaml",
            common::spec(
                "links",
                "in.csv",
                "{{ text }}",
                "provider:\n  kind: simulated\n  mode: direct\n",
            ),
        );
        let first = sb.run(&["apply", "job.yaml", "--yes"]);
        assert_eq!(first.code, 0, "{planted}: {first:?}");
        let victim = sb.write("victim.txt", "precious\n");
        let link = sb.path(planted);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        // A new row, so the next run sends, records, logs and books.
        sb.write("in.csv", "id,text\n1,a\n2,b\n3,c\n");
        let run = sb.run(&["apply", "job.yaml", "--yes"]);
        assert_eq!(sb.read("victim.txt"), "precious\n", "{planted}: {run:?}");
        if run.code != 0 {
            assert!(
                run.stderr.contains("is a symbolic link"),
                "{planted}: {run:?}"
            );
        }
    }
}
