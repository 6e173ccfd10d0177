//! The OpenAI client over real HTTP: against the simulated provider for the
//! whole Files + Batches cycle, and against a scripted server for the answers
//! the simulator never gives (quota, Azure shapes, hangs, dropped bodies).
//! Chat completions go through direct mode's client, judged by the one
//! retry classifier (`chat_completion` below).

mod scripted;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use batchgrader::provider::direct::{DirectClient, Sent};
use batchgrader::provider::retry;
use batchgrader::provider::{
    Batch, BatchStatus, ClientConfig, Decision, ErrorKind, LineOutcome, LineParseError,
    OpenAiClient, Outcome, ProviderError, Reason, RetryPolicy, Secret, classify_line,
};
use batchgrader::simulate::{SimConfig, SimServer};
use scripted::{Reply, Scripted};

const KEY: &str = "sk-test-0123456789abcdef";
const KEY_ENV: &str = "BG_TEST_OPENAI_KEY";

fn config(base_url: &str, key: &str, max_attempts: u32) -> ClientConfig {
    let mut config = ClientConfig::new(base_url, Secret::new(key), KEY_ENV);
    config.max_attempts = max_attempts;
    config.request_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(2);
    config
}

fn client(base_url: &str, key: &str, max_attempts: u32) -> OpenAiClient {
    OpenAiClient::new(config(base_url, key, max_attempts)).unwrap()
}

/// `POST /chat/completions` as direct mode treats one row's request, with
/// up to 3 attempts: retryable failures are sent again; a final or
/// exhausted non-2xx answer belongs to the row and is returned as data; a
/// refused key, no credit or an overlong Retry-After concern the whole run
/// and are returned as the classifier's reason.
async fn chat_completion(base_url: &str, body: &str) -> Result<(u16, String), Reason> {
    let config = config(base_url, KEY, 3);
    let policy = RetryPolicy {
        max_attempts: config.max_attempts,
        ..RetryPolicy::default()
    };
    let c = DirectClient::new(
        &[config],
        1,
        batchgrader::provider::direct::Protocol::ChatCompletions,
    )
    .unwrap();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let answer = match c.send(0, body.to_string().into()).await {
            Sent::Answer(a) => a,
            Sent::Transport { detail, .. } => panic!("no answer: {detail}"),
        };
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        if (200..300).contains(&answer.status) {
            return Ok((answer.status, text));
        }
        let outcome = Outcome::Http {
            status: answer.status,
            headers: &answer.retry,
            body: &text,
        };
        match retry::classify(&outcome, attempt, &policy, 0.0, SystemTime::now()) {
            Decision::Retry { after } => tokio::time::sleep(after).await,
            Decision::GiveUp(
                reason @ (Reason::Quota
                | Reason::Unauthorized
                | Reason::Forbidden
                | Reason::RetryAfterTooLong { .. }),
            ) => return Err(reason),
            Decision::GiveUp(_) => return Ok((answer.status, text)),
        }
    }
}

fn fast_sim(config: SimConfig) -> SimConfig {
    SimConfig {
        api_key: Some(KEY.into()),
        validating: Duration::from_millis(50),
        in_progress: Duration::from_millis(200),
        finalizing: Duration::from_millis(50),
        ..config
    }
}

/// Writes `n` chat requests as a batch input file and returns their custom ids.
fn write_input(path: &Path, n: usize) -> BTreeSet<String> {
    let mut text = String::new();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let id = format!("r{i}");
        let line = serde_json::json!({
            "custom_id": id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "max_tokens": 4,
                     "messages": [{"role": "user", "content": format!("Grade answer {i} from 1 to 10.")}]}
        });
        text.push_str(&line.to_string());
        text.push('\n');
        ids.insert(id);
    }
    std::fs::write(path, text).unwrap();
    ids
}

fn meta(job: &str, chunk: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("bg_job".to_string(), job.to_string()),
        ("bg_chunk".to_string(), chunk.to_string()),
    ])
}

/// The apply protocol for create (ARCHITECTURE.md, "Crash protocol", step
/// 3): on an unclear failure,
/// adopt a batch with our metadata before creating again. Also returns how
/// many unclear failures it met.
async fn create_or_adopt(
    c: &OpenAiClient,
    file_id: &str,
    metadata: &BTreeMap<String, String>,
) -> (Batch, usize) {
    let mut unclear = 0;
    for _ in 0..10 {
        match c
            .create_batch(file_id, "/v1/chat/completions", metadata)
            .await
        {
            Ok(b) => return (b, unclear),
            Err(e) if e.is_unclear() => {
                unclear += 1;
                let found = c
                    .find_batch_by_metadata(|m| m == metadata, None)
                    .await
                    .unwrap();
                if let Some(b) = found {
                    return (b, unclear);
                }
            }
            Err(e) => panic!("create failed: {e}"),
        }
    }
    panic!("create kept failing");
}

async fn wait_terminal(c: &OpenAiClient, id: &str) -> Batch {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = c.retrieve_batch(id).await.unwrap();
        if b.status.is_terminal() {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "batch {id} stuck in {}",
            b.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sim_stats(sim: &SimServer) -> serde_json::Value {
    let http = reqwest::Client::builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .unwrap();
    http.get(format!("http://{}/_sim/stats", sim.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Upload → create → poll → download both files → classify every line; every
/// custom id is accounted for exactly once.
async fn run_cycle(sim: &SimServer, c: &OpenAiClient, n: usize, job: &str) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let ids = write_input(&input, n);

    let file = c
        .upload_batch_file(&input, &format!("{job}-chunk-00001.jsonl"))
        .await
        .unwrap();
    assert_eq!(file.purpose.as_deref(), Some("batch"));
    assert_eq!(file.bytes, Some(std::fs::metadata(&input).unwrap().len()));

    let metadata = meta(job, 1);
    let (created, _) = create_or_adopt(c, &file.id, &metadata).await;
    assert_eq!(created.metadata.as_ref(), Some(&metadata));
    let done = wait_terminal(c, &created.id).await;
    assert_eq!(done.status, BatchStatus::Completed, "{done:?}");

    let mut seen = BTreeSet::new();
    let (mut ok, mut failed) = (0, 0);
    for (name, id) in [("out", &done.output_file_id), ("err", &done.error_file_id)] {
        let Some(id) = id else { continue };
        let dest = dir.path().join(format!("{name}.jsonl"));
        let bytes = c.download_file(id, &dest).await.unwrap();
        let text = std::fs::read_to_string(&dest).unwrap();
        assert_eq!(bytes as usize, text.len());
        assert!(!dir.path().join(format!("{name}.jsonl.tmp")).exists());
        for line in text.split('\n') {
            match classify_line(line) {
                Ok(LineOutcome::Success(s)) => {
                    assert!(!s.content.is_empty(), "{line}");
                    assert!(s.usage.prompt_tokens > 0, "{line}");
                    ok += 1;
                    assert!(seen.insert(s.custom_id));
                }
                Ok(LineOutcome::Failure(f)) => {
                    assert!(f.retryable, "{f:?}");
                    failed += 1;
                    assert!(seen.insert(f.custom_id));
                }
                Err(LineParseError::Blank) => {}
                Err(e) => panic!("{e}: {line}"),
            }
        }
    }
    assert_eq!(seen, ids);

    let deleted = c.delete_file(&file.id).await.unwrap();
    assert!(deleted.deleted);
    let _ = sim;
    (ok, failed)
}

#[tokio::test]
async fn full_cycle_against_the_simulator() {
    let sim = SimServer::start(
        fast_sim(SimConfig {
            request_failure_rate: 0.3,
            ..SimConfig::default()
        }),
        0,
    )
    .await
    .unwrap();
    let c = client(&sim.base_url(), KEY, 5);
    let (ok, failed) = run_cycle(&sim, &c, 40, "cycle").await;
    assert_eq!(ok + failed, 40);
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    let stats = sim_stats(&sim).await;
    assert_eq!(stats["batches_created"], 1);
    assert_eq!(stats["files_deleted"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_http_errors_are_retried_and_create_is_never_duplicated() {
    let sim = SimServer::start(
        fast_sim(SimConfig {
            http_error_rate: 0.3,
            seed: 11,
            ..SimConfig::default()
        }),
        0,
    )
    .await
    .unwrap();
    let c = client(&sim.base_url(), KEY, 8);
    for round in 0..2 {
        let (ok, failed) = run_cycle(&sim, &c, 5, &format!("flaky{round}")).await;
        assert_eq!((ok, failed), (5, 0));
    }
    // More creates, until a few met an injected 500 (unclear): each of those
    // was looked up by metadata before being created again.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 1);
    let file = c.upload_batch_file(&input, "more.jsonl").await.unwrap();
    let (mut created, mut unclear) = (2, 0);
    while unclear < 3 && created < 100 {
        let metadata = meta("more", created);
        let (b, u) = create_or_adopt(&c, &file.id, &metadata).await;
        assert_eq!(b.metadata.as_ref(), Some(&metadata));
        unclear += u;
        created += 1;
    }
    assert!(unclear >= 3, "only {unclear} unclear creates in {created}");
    // Exactly one batch per metadata tag: no create was duplicated.
    let stats = sim_stats(&sim).await;
    assert_eq!(stats["batches_created"], created, "{stats}");
    sim.shutdown().await;
}

#[tokio::test]
async fn find_batch_by_metadata_walks_pages() {
    let sim = SimServer::start(fast_sim(SimConfig::default()), 0)
        .await
        .unwrap();
    let c = client(&sim.base_url(), KEY, 3);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 1);
    let file = c.upload_batch_file(&input, "pages.jsonl").await.unwrap();
    // More than one page of 100 (the walk's page size), newest first.
    let mut ids = Vec::new();
    for chunk in 0..105 {
        let b = c
            .create_batch(&file.id, "/v1/chat/completions", &meta("pages", chunk))
            .await
            .unwrap();
        ids.push(b.id);
    }

    // Pages of 10 with `after = last id` see every batch exactly once.
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = c.list_batches(after.as_deref(), 10).await.unwrap();
        assert!(page.data.len() <= 10);
        listed.extend(page.data.iter().map(|b| b.id.clone()));
        if !page.has_more {
            break;
        }
        after = page.next_after;
    }
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 105);
    assert_eq!(listed.len(), 105);

    let want = meta("pages", 0);
    let oldest = c
        .find_batch_by_metadata(|m| m == &want, None)
        .await
        .unwrap()
        .expect("the oldest batch is on the second page");
    assert_eq!(oldest.id, ids[0]);

    let none = c
        .find_batch_by_metadata(
            |m| m.get("bg_job").map(String::as_str) == Some("other"),
            None,
        )
        .await
        .unwrap();
    assert!(none.is_none());

    // A cutoff after every batch's creation ends the walk after one page.
    let future = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
        + 3600;
    let early = c
        .find_batch_by_metadata(|m| m == &want, Some(future))
        .await
        .unwrap();
    assert!(early.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_key_names_the_variable_and_the_request() {
    let sim = SimServer::start(fast_sim(SimConfig::default()), 0)
        .await
        .unwrap();
    let wrong = "sk-wrong-key-9999999999";
    let c = client(&sim.base_url(), wrong, 5);
    let e = c.list_batches(None, 20).await.unwrap_err();
    assert!(e.is_auth() && !e.is_retryable(), "{e:?}");
    assert_eq!(e.status(), Some(401));
    assert_eq!(e.attempts(), 1);
    let text = e.to_string();
    let request_id = e.request_id().expect("x-request-id").to_string();
    assert!(text.contains(KEY_ENV), "{text}");
    assert!(text.contains(&format!("(request {request_id})")), "{text}");
    assert!(text.contains("invalid_api_key"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!format!("{e:?}").contains(wrong));
    assert!(e.hint().unwrap().contains(KEY_ENV));
    sim.shutdown().await;
}

#[tokio::test]
async fn chat_completion_against_the_simulator() {
    let sim = SimServer::start(fast_sim(SimConfig::default()), 0)
        .await
        .unwrap();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, text) = chat_completion(&sim.base_url(), body).await.unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["choices"][0]["message"]["content"].is_string());
    // A bad request belongs to the row: returned as data, not retried.
    let (status, text) = chat_completion(&sim.base_url(), r#"{"model":"m"}"#)
        .await
        .unwrap();
    assert_eq!(status, 400, "{text}");
    sim.shutdown().await;
}

// ------------------------------------------------------------ scripted server

const BATCH_OK: &str = r#"{"id":"batch_1","object":"batch","endpoint":"/v1/chat/completions","input_file_id":"file-1","completion_window":"24h","status":"validating","created_at":1711471533,"metadata":{"bg_job":"j"}}"#;

fn err_body(kind: &str, code: &str, message: &str) -> String {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string()
}

fn assert_no_key(e: &ProviderError) {
    assert!(!e.to_string().contains(KEY));
    assert!(!format!("{e:?}").contains(KEY));
}

#[tokio::test]
async fn insufficient_quota_is_final_with_a_billing_hint() {
    let s = Scripted::start(vec![
        Reply::json(
            429,
            &err_body(
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details.",
            ),
        )
        .with_header("x-request-id", "req_q1"),
    ])
    .await;
    let e = client(&s.base_url(), KEY, 5)
        .retrieve_batch("batch_1")
        .await
        .unwrap_err();
    assert!(e.is_quota() && !e.is_retryable(), "{e:?}");
    assert_eq!(s.requests().len(), 1, "never retried");
    assert!(e.hint().unwrap().contains("billing page"), "{:?}", e.hint());
    assert_eq!(
        e.to_string(),
        "retrieve batch batch_1 failed: HTTP 429 insufficient_quota (request req_q1): You exceeded your current quota, please check your plan and billing details."
    );
}

#[tokio::test]
async fn create_batch_401_message() {
    let s = Scripted::start(vec![
        Reply::json(
            401,
            &err_body(
                "invalid_request_error",
                "invalid_api_key",
                "Incorrect API key provided: sk-tes*************cdef.",
            ),
        )
        .with_header("x-request-id", "req_123"),
    ])
    .await;
    let e = client(&s.base_url(), KEY, 5)
        .create_batch("file-1", "/v1/chat/completions", &BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(!e.is_unclear());
    assert_eq!(
        e.to_string(),
        format!(
            "create batch from file-1 failed: HTTP 401 invalid_api_key (request req_123): Incorrect API key provided: sk-tes*************cdef.; the API key in {KEY_ENV} was refused"
        )
    );
    assert!(
        e.is_setup_fault(),
        "a refused key is the setup's fault (exit 2)"
    );
    assert_no_key(&e);
}

#[tokio::test]
async fn create_batch_5xx_is_unclear_and_not_retried() {
    let s = Scripted::start(vec![
        Reply::json(500, &err_body("server_error", "server_error", "oops")),
        Reply::json(200, BATCH_OK),
    ])
    .await;
    let e = client(&s.base_url(), KEY, 5)
        .create_batch("file-1", "/v1/chat/completions", &meta("j", 1))
        .await
        .unwrap_err();
    assert!(e.is_unclear(), "{e:?}");
    assert_eq!(e.status(), Some(500));
    assert!(e.hint().unwrap().contains("metadata"));
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn create_batch_timeout_is_unclear() {
    let s = Scripted::start(vec![Reply::Hang, Reply::json(200, BATCH_OK)]).await;
    let mut config = ClientConfig::new(s.base_url(), Secret::new(KEY), KEY_ENV);
    config.request_timeout = Duration::from_millis(300);
    let c = OpenAiClient::new(config).unwrap();
    let e = c
        .create_batch("file-1", "/v1/chat/completions", &meta("j", 1))
        .await
        .unwrap_err();
    assert!(e.is_unclear() && e.kind() == ErrorKind::Transport, "{e:?}");
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn create_batch_429_is_retried_after_retry_after_ms() {
    let s = Scripted::start(vec![
        Reply::json(
            429,
            &err_body("requests", "rate_limit_exceeded", "slow down"),
        )
        .with_header("retry-after-ms", "150"),
        Reply::json(200, BATCH_OK),
    ])
    .await;
    let start = Instant::now();
    let b = client(&s.base_url(), KEY, 5)
        .create_batch("file-1", "/v1/chat/completions", &meta("j", 1))
        .await
        .unwrap();
    assert_eq!(b.id, "batch_1");
    assert!(start.elapsed() >= Duration::from_millis(150));
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2);
    let body: serde_json::Value = serde_json::from_slice(&reqs[1].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                           "completion_window": "24h", "metadata": {"bg_chunk": "1", "bg_job": "j"}})
    );
    assert_eq!(reqs[1].header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn overlong_retry_after_gives_up_naming_the_wait() {
    let s = Scripted::start(vec![
        Reply::json(503, "").with_header("retry-after", "3600"),
    ])
    .await;
    let e = client(&s.base_url(), KEY, 5)
        .retrieve_batch("batch_1")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RetryAfterTooLong);
    assert!(e.to_string().contains("wait 1h"), "{e}");
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn server_errors_on_reads_are_retried() {
    let s = Scripted::start(vec![
        Reply::json(503, "<html>busy</html>").with_header("retry-after-ms", "10"),
        Reply::json(500, &err_body("server_error", "", "oops")).with_header("retry-after", "0.01"),
        Reply::json(200, BATCH_OK),
    ])
    .await;
    let b = client(&s.base_url(), KEY, 5)
        .retrieve_batch("batch_1")
        .await
        .unwrap();
    assert_eq!(b.status, BatchStatus::Validating);
    assert_eq!(s.requests().len(), 3);
}

#[tokio::test]
async fn x_should_retry_false_stops_at_once() {
    let s = Scripted::start(vec![
        Reply::json(503, "").with_header("x-should-retry", "false"),
    ])
    .await;
    let e = client(&s.base_url(), KEY, 5)
        .retrieve_batch("b")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn exhausted_retries_report_the_attempts() {
    let s = Scripted::start(vec![
        Reply::json(502, "bad gateway").with_header("retry-after-ms", "5"),
        Reply::json(502, "bad gateway").with_header("retry-after-ms", "5"),
        Reply::json(502, "bad gateway").with_header("retry-after-ms", "5"),
    ])
    .await;
    let e = client(&s.base_url(), KEY, 3)
        .list_batches(None, 5)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Server);
    assert!(e.is_retryable());
    assert_eq!(e.attempts(), 3);
    assert_eq!(
        e.to_string(),
        "list batches failed after 3 attempts: HTTP 502: bad gateway"
    );
    assert_eq!(s.requests().len(), 3);
}

#[tokio::test]
async fn azure_shaped_batch_is_read() {
    let azure = r#"{"cancelled_at":null,"cancelling_at":null,"completed_at":"2024-07-19T21:01:51.0000000+00:00","completion_window":"24h","created_at":"2024-07-19T17:13:57.2491382+00:00","error_file_id":"","errors":null,"expired_at":null,"expires_at":1721500437,"failed_at":null,"finalizing_at":1721415000,"id":"batch_6287c8a4-5e38-4d5f-8a6c-2b3a1c0c1e0b","in_progress_at":null,"input_file_id":"file-9f3a81d899b4442f98b640e4bc3535dd","metadata":null,"object":"batch","output_file_id":"file-136a37e8-a33b-4e64-8c08-5b1f7f2e1a47","request_counts":{"completed":null,"failed":null,"total":null},"status":"Completed","endpoint":null}"#;
    let s = Scripted::start(vec![
        Reply::json(200, azure).with_header("apim-request-id", "az-1"),
    ])
    .await;
    let b = client(&s.base_url(), KEY, 1)
        .retrieve_batch("batch_6287c8a4-5e38-4d5f-8a6c-2b3a1c0c1e0b")
        .await
        .unwrap();
    assert_eq!(b.status, BatchStatus::Completed);
    assert!(b.status.is_terminal());
    assert_eq!(b.endpoint, None);
    assert_eq!(b.error_file_id, None);
    assert_eq!(
        b.output_file_id.as_deref(),
        Some("file-136a37e8-a33b-4e64-8c08-5b1f7f2e1a47")
    );
    assert_eq!(b.created_at, Some(1721409237));
    assert_eq!(b.metadata, None);
}

#[tokio::test]
async fn ids_are_percent_encoded_and_headers_sent() {
    let s = Scripted::start(vec![
        Reply::json(200, BATCH_OK),
        Reply::json(200, BATCH_OK),
        Reply::json(200, r#"{"id":"x","deleted":true}"#),
    ])
    .await;
    let mut config = ClientConfig::new(
        format!("{}/?api-version=2024-10-21", s.base_url()),
        Secret::new(KEY),
        KEY_ENV,
    );
    config.organization = Some("org-9".into());
    config.project = Some("proj_7".into());
    let c = OpenAiClient::new(config).unwrap();
    let odd = "bGl0ZWxsbTpjdXN0b20=/a+b c";
    c.retrieve_batch(odd).await.unwrap();
    c.cancel_batch(odd).await.unwrap();
    c.delete_file(odd).await.unwrap();
    let reqs = s.requests();
    let targets: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        targets,
        [
            (
                "GET",
                "/v1/batches/bGl0ZWxsbTpjdXN0b20%3D%2Fa%2Bb%20c?api-version=2024-10-21"
            ),
            (
                "POST",
                "/v1/batches/bGl0ZWxsbTpjdXN0b20%3D%2Fa%2Bb%20c/cancel?api-version=2024-10-21"
            ),
            (
                "DELETE",
                "/v1/files/bGl0ZWxsbTpjdXN0b20%3D%2Fa%2Bb%20c?api-version=2024-10-21"
            ),
        ]
    );
    let r = &reqs[0];
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("openai-organization"), Some("org-9"));
    assert_eq!(r.header("openai-project"), Some("proj_7"));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert!(r.header("user-agent").unwrap().starts_with("batchgrader/"));
}

#[tokio::test]
async fn upload_is_multipart_with_purpose_and_jsonl_name() {
    let s = Scripted::start(vec![Reply::json(
        200,
        r#"{"id":"file-abc","object":"file","bytes":12,"created_at":1,"filename":"job-1.jsonl","purpose":"batch"}"#,
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local name.jsonl");
    std::fs::write(&path, "{\"a\":1}\n{}\n").unwrap();
    let c = client(&s.base_url(), KEY, 2);

    let e = c.upload_batch_file(&path, "job-1.json").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(s.requests().is_empty());
    let e = c
        .upload_batch_file(&dir.path().join("missing.jsonl"), "x.jsonl")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);

    let f = c.upload_batch_file(&path, "job-1.jsonl").await.unwrap();
    assert_eq!(f.id, "file-abc");
    let req = &s.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("POST", "/v1/files")
    );
    assert!(
        req.header("content-type")
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );
    assert!(
        req.header("content-length").is_some(),
        "streamed with its length"
    );
    let body = String::from_utf8_lossy(&req.body);
    assert!(body.contains("name=\"purpose\"\r\n\r\nbatch\r\n"), "{body}");
    assert!(
        body.contains("name=\"file\"; filename=\"job-1.jsonl\""),
        "{body}"
    );
    assert!(body.contains("{\"a\":1}\n{}\n"), "{body}");
}

#[tokio::test]
async fn download_retries_a_truncated_body_and_writes_atomically() {
    let content =
        b"{\"custom_id\":\"r1\",\"response\":{\"status_code\":200,\"body\":{}}}\r\n".repeat(50);
    let s = Scripted::start(vec![
        Reply::Truncate {
            declared: content.len(),
            body: content[..100].to_vec(),
        },
        Reply::Respond {
            status: 200,
            headers: vec![],
            body: content.clone(),
        },
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.jsonl");
    let n = client(&s.base_url(), KEY, 3)
        .download_file("file-out", &dest)
        .await
        .unwrap();
    assert_eq!(n as usize, content.len());
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    assert!(!dir.path().join("out.jsonl.tmp").exists());
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].target, "/v1/files/file-out/content");
    assert_eq!(reqs[0].header("accept"), Some("application/binary"));
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    // Bind and drop: nothing listens on the port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = client(&format!("http://127.0.0.1:{port}/v1"), KEY, 2);
    let e = c
        .create_batch("file-1", "/v1/chat/completions", &BTreeMap::new())
        .await
        .unwrap_err();
    // Connect failures prove nothing was sent, so even create retries them.
    assert_eq!(e.kind(), ErrorKind::Transport);
    assert!(!e.is_unclear());
    assert_eq!(e.attempts(), 2);
}

#[tokio::test]
async fn chat_completion_final_statuses() {
    let s = Scripted::start(vec![
        Reply::json(400, &err_body("invalid_request_error", "", "bad")),
        Reply::json(
            401,
            &err_body("invalid_request_error", "invalid_api_key", "no"),
        ),
    ])
    .await;
    let (status, body) = chat_completion(&s.base_url(), "{}").await.unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("bad"));
    let e = chat_completion(&s.base_url(), "{}").await.unwrap_err();
    assert!(
        matches!(e, Reason::Unauthorized | Reason::Forbidden),
        "{e:?}"
    );
    assert_eq!(s.unused_replies(), 0);
}

#[tokio::test]
async fn a_declared_body_over_the_cap_is_refused_without_reading_it() {
    // 9 MB of a page list, declared: above the 8 MiB of a control-plane answer.
    let mut body = br#"{"object":"list","data":["#.to_vec();
    body.resize(9_000_000, b' ');
    let s = Scripted::start(vec![Reply::Respond {
        status: 200,
        headers: vec![("x-request-id".into(), "req_big".into())],
        body,
    }])
    .await;
    let e = client(&s.base_url(), KEY, 3)
        .list_batches(None, 5)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert_eq!(
        e.to_string(),
        "list batches failed: HTTP 200 (request req_big): the answer is 9000000 bytes, above the \
         8 MiB this call accepts (stopped reading); it begins: {\"object\":\"list\",\"data\":["
    );
    // Not retried: the next answer would be as large.
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn a_create_whose_answer_is_too_large_is_unclear() {
    let mut body = BATCH_OK.as_bytes().to_vec();
    body.resize(9_000_000, b' ');
    let s = Scripted::start(vec![Reply::Respond {
        status: 200,
        headers: vec![],
        body,
    }])
    .await;
    let e = client(&s.base_url(), KEY, 3)
        .create_batch("file-1", "/v1/chat/completions", &meta("j", 1))
        .await
        .unwrap_err();
    // The server said 2xx: the batch may exist, so look before creating again.
    assert!(e.is_unclear(), "{e:?}");
    assert!(e.to_string().contains("above the 8 MiB"), "{e}");
}

#[tokio::test]
async fn a_trickling_download_is_given_up_for_its_pace() {
    // One byte every 50 ms never stalls for the 1 s timeout, but is far
    // under the minimum pace: the download is cut soon after the timeout.
    let s = Scripted::start(vec![Reply::Trickle {
        declared: 10_000,
        every: Duration::from_millis(50),
    }])
    .await;
    let mut config = ClientConfig::new(s.base_url(), Secret::new(KEY), KEY_ENV);
    config.request_timeout = Duration::from_secs(1);
    config.max_attempts = 1;
    let c = OpenAiClient::new(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.jsonl");
    let start = Instant::now();
    let e = c.download_file("file-out", &dest).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Transport);
    assert!(e.to_string().contains("download too slow"), "{e}");
    assert!(!dest.exists());
    assert!(!dir.path().join("out.jsonl.tmp").exists());
}

#[tokio::test]
async fn the_watch_names_the_call_that_is_out() {
    let s = Scripted::start(vec![Reply::Hang]).await;
    let mut config = ClientConfig::new(s.base_url(), Secret::new(KEY), KEY_ENV);
    config.request_timeout = Duration::from_millis(600);
    config.max_attempts = 1;
    let c = OpenAiClient::new(config).unwrap();
    let watch = c.watch().clone();
    let call = tokio::spawn(async move { c.retrieve_batch("batch_9").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w = watch.oldest().expect("the call is out");
    assert_eq!(w.what, format!("{}: retrieve batch batch_9", s.addr));
    assert!(w.for_ >= Duration::from_millis(200), "{w:?}");
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport);
    assert_eq!(watch.oldest(), None);
}

#[tokio::test]
async fn direct_mode_answers_over_the_cap_are_not_held() {
    use batchgrader::provider::direct::{DirectClient, Sent};
    let mut body = br#"{"choices":[{"message":{"content":""#.to_vec();
    body.resize(17 << 20, b'x');
    let s = Scripted::start(vec![Reply::Respond {
        status: 200,
        headers: vec![],
        body,
    }])
    .await;
    let config = ClientConfig::new(s.base_url(), Secret::new(KEY), KEY_ENV);
    let c = DirectClient::new(
        &[config],
        1,
        batchgrader::provider::direct::Protocol::ChatCompletions,
    )
    .unwrap();
    match c.send(0, bytes::Bytes::from_static(b"{}")).await {
        Sent::Transport { detail, .. } => {
            assert!(
                detail.starts_with(
                    "HTTP 200: the answer is 17825792 bytes, above the 16 MiB a chat completion may be"
                ),
                "{detail}"
            );
        }
        Sent::Answer(a) => panic!("held an answer of {} bytes", a.body.len()),
    }
}
