//! The simulated provider over real HTTP: Files, Batches, Chat Completions,
//! auth, error injection and persistence across a restart.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use batchgrader::simulate::{SimConfig, SimServer};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const KEY: &str = "sk-sim-test";
const ENDPOINT: &str = "/v1/chat/completions";

fn fast() -> SimConfig {
    SimConfig {
        validating: Duration::from_millis(20),
        in_progress: Duration::from_millis(100),
        finalizing: Duration::from_millis(20),
        ..SimConfig::default()
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    root: String,
}

impl Api {
    fn new(server: &SimServer) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: server.base_url(),
            root: format!("http://{}", server.addr),
        }
    }

    /// A server this test did not start in-process (`http://…/v1`).
    fn at(base: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base.to_string(),
            root: base.trim_end_matches("/v1").to_string(),
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
    }

    async fn upload_raw(&self, filename: &str, purpose: &str, content: &str) -> reqwest::Response {
        let form = Form::new().text("purpose", purpose.to_string()).part(
            "file",
            Part::bytes(content.as_bytes().to_vec()).file_name(filename.to_string()),
        );
        self.post("/files").multipart(form).send().await.unwrap()
    }

    async fn upload(&self, content: &str) -> Value {
        ok_json(self.upload_raw("chunk-0.jsonl", "batch", content).await).await
    }

    async fn create(&self, file_id: &str, metadata: Value) -> Value {
        let body = json!({"input_file_id": file_id, "endpoint": ENDPOINT,
            "completion_window": "24h", "metadata": metadata});
        ok_json(self.post("/batches").json(&body).send().await.unwrap()).await
    }

    async fn batch(&self, id: &str) -> Value {
        ok_json(self.get(&format!("/batches/{id}")).send().await.unwrap()).await
    }

    /// Polls until the batch reaches `status` (or any terminal one).
    async fn wait_for(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let batch = self.batch(id).await;
            let now = batch["status"].as_str().unwrap().to_string();
            let terminal = ["completed", "failed", "expired", "cancelled"].contains(&now.as_str());
            if now == status || terminal {
                assert_eq!(now, status, "{batch:#}");
                return batch;
            }
            assert!(Instant::now() < deadline, "stuck in {now}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn content(&self, file_id: &Value) -> Vec<Value> {
        let response = self
            .get(&format!("/files/{}/content", file_id.as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn stats(&self) -> Value {
        ok_json(
            self.http
                .get(format!("{}/_sim/stats", self.root))
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:#}");
    body
}

/// The error envelope, after checking its status and shape.
async fn error(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let request_id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(request_id.starts_with("req_sim_"), "{request_id}");
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "{body}: no {field}");
    }
    error.clone()
}

fn request_body(i: usize) -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [
        {"role": "system", "content": "Grade the answer from 0 to 10. Reply with the number only."},
        {"role": "user", "content": format!("Answer number {i}.")}
    ]})
}

fn jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"custom_id": format!("r{i}"), "method": "POST", "url": ENDPOINT,
                "body": request_body(i)})
            .to_string()
                + "\n"
        })
        .collect()
}

fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every input custom id appears exactly once across both files.
async fn assert_accounted(api: &Api, batch: &Value, n: usize) -> (Vec<Value>, Vec<Value>) {
    let output = match &batch["output_file_id"] {
        Value::Null => vec![],
        id => api.content(id).await,
    };
    let errors = match &batch["error_file_id"] {
        Value::Null => vec![],
        id => api.content(id).await,
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for id in custom_ids(&output).into_iter().chain(custom_ids(&errors)) {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|&count| count == 1), "{seen:?}");
    (output, errors)
}

#[tokio::test]
async fn three_line_batch_completes() {
    let server = SimServer::start(fast(), 0).await.unwrap();
    let api = Api::new(&server);
    assert!(api.base.starts_with("http://127.0.0.1:") && api.base.ends_with("/v1"));

    let file = api.upload(&jsonl(3)).await;
    assert!(file["id"].as_str().unwrap().starts_with("file-sim-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"].as_u64().unwrap() as usize, jsonl(3).len());
    assert_eq!(file["filename"], "chunk-0.jsonl");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["status"], "processed");
    assert!(file["expires_at"].as_u64().unwrap() > file["created_at"].as_u64().unwrap());

    let metadata = json!({"job": "demo", "chunk": "0", "attempt": "1"});
    let created = api
        .create(file["id"].as_str().unwrap(), metadata.clone())
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("batch_sim_"));
    assert_eq!(created["object"], "batch");
    assert_eq!(created["status"], "validating");
    assert_eq!(created["metadata"], metadata);
    assert_eq!(
        created["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert_eq!(
        created["expires_at"].as_u64().unwrap(),
        created["created_at"].as_u64().unwrap() + 24 * 3600
    );

    let batch = api.wait_for(&id, "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0})
    );
    assert_eq!(batch["model"], "gpt-4o-mini");
    assert_eq!(batch["metadata"], metadata);
    assert_eq!(batch["error_file_id"], Value::Null);
    assert_eq!(batch["errors"], Value::Null);
    for field in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(batch[field].is_u64(), "{field}");
    }
    for field in ["failed_at", "expired_at", "cancelling_at", "cancelled_at"] {
        assert!(batch[field].is_null(), "{field}");
    }
    let usage = &batch["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
    );

    let (output, _) = assert_accounted(&api, &batch, 3).await;
    for line in &output {
        assert!(line["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(line["error"], Value::Null);
        assert_eq!(line["response"]["status_code"], 200);
        let body = &line["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["system_fingerprint"], "batchgrader-simulated");
        let grade: u32 = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(grade <= 10);
    }
    let out_file = ok_json(
        api.get(&format!(
            "/files/{}",
            batch["output_file_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(out_file["purpose"], "batch_output");

    let stats = api.stats().await;
    assert_eq!(stats["files_uploaded"], 1);
    assert_eq!(stats["batches_created"], 1);
    assert_eq!(stats["batches"][0]["id"], id.as_str());
    assert_eq!(stats["batches"][0]["status"], "completed");
    assert_eq!(stats["batches"][0]["metadata"], metadata);
    server.shutdown().await;
}

#[tokio::test]
async fn big_batch_is_shuffled_and_failures_go_to_the_error_file() {
    let server = SimServer::start(
        SimConfig {
            request_failure_rate: 0.2,
            seed: 3,
            in_progress: Duration::from_millis(300),
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let n = 300;
    let file = api.upload(&jsonl(n)).await;
    let id = api.create(file["id"].as_str().unwrap(), json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Progress is visible while the batch runs.
    let mut saw_progress = false;
    let batch = loop {
        let batch = api.batch(&id).await;
        let done = batch["request_counts"]["completed"].as_u64().unwrap();
        saw_progress |= batch["status"] == "in_progress" && done > 0 && done < n as u64;
        if batch["status"] == "completed" {
            break batch;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(saw_progress);

    let (output, errors) = assert_accounted(&api, &batch, n).await;
    let in_order: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    assert_ne!(custom_ids(&output), in_order[..output.len()]);
    assert!(
        !errors.is_empty() && errors.len() < n / 2,
        "{}",
        errors.len()
    );
    for line in &errors {
        assert_eq!(line["error"], Value::Null);
        assert_eq!(line["response"]["status_code"], 500);
        assert_eq!(line["response"]["body"]["error"]["type"], "server_error");
    }
    assert_eq!(
        batch["request_counts"],
        json!({"total": n, "completed": output.len(), "failed": errors.len()})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn every_request_failing_leaves_no_output_file() {
    let server = SimServer::start(
        SimConfig {
            request_failure_rate: 1.0,
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let file = api.upload(&jsonl(4)).await;
    let id = api.create(file["id"].as_str().unwrap(), json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let batch = api.wait_for(&id, "completed").await;
    assert_eq!(batch["output_file_id"], Value::Null);
    assert_eq!(batch["usage"]["total_tokens"], 0);
    let (_, errors) = assert_accounted(&api, &batch, 4).await;
    assert_eq!(errors.len(), 4);
    server.shutdown().await;
}

#[tokio::test]
async fn list_is_newest_first_with_cursor_pagination() {
    let server = SimServer::start(fast(), 0).await.unwrap();
    let api = Api::new(&server);
    let file = api.upload(&jsonl(1)).await;
    let file_id = file["id"].as_str().unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            api.create(file_id, json!({"chunk": i.to_string()})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids.reverse();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = api.get("/batches").query(&[("limit", "2")]);
        if let Some(cursor) = &after {
            request = request.query(&[("after", cursor)]);
        }
        let page = ok_json(request.send().await.unwrap()).await;
        pages += 1;
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().unwrap();
        seen.extend(data.iter().map(|b| b["id"].as_str().unwrap().to_string()));
        assert_eq!(page["first_id"], data[0]["id"]);
        assert_eq!(page["last_id"], data[data.len() - 1]["id"]);
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = page["last_id"].as_str().map(String::from);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let all = ok_json(api.get("/batches").send().await.unwrap()).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 5);
    assert_eq!(all["has_more"], false);
    for bad in ["0", "101", "x"] {
        let response = api
            .get("/batches")
            .query(&[("limit", bad)])
            .send()
            .await
            .unwrap();
        error(response, StatusCode::BAD_REQUEST).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_keeps_finished_work_and_cancels_the_rest() {
    let server = SimServer::start(
        SimConfig {
            validating: Duration::from_millis(10),
            in_progress: Duration::from_millis(600),
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let n = 100;
    let file = api.upload(&jsonl(n)).await;
    let id = api.create(file["id"].as_str().unwrap(), json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let batch = api.batch(&id).await;
        if batch["request_counts"]["completed"].as_u64().unwrap() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let cancelling = ok_json(
        api.post(&format!("/batches/{id}/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cancelling["status"], "cancelling");
    assert!(cancelling["cancelling_at"].is_u64());
    // Cancelling twice is harmless while it is still cancelling.
    let again = api
        .post(&format!("/batches/{id}/cancel"))
        .send()
        .await
        .unwrap();
    if again.status() == StatusCode::OK {
        assert_eq!(ok_json(again).await["status"], "cancelling");
    }

    let batch = api.wait_for(&id, "cancelled").await;
    assert!(batch["cancelled_at"].is_u64());
    assert_eq!(batch["completed_at"], Value::Null);
    let (output, errors) = assert_accounted(&api, &batch, n).await;
    assert!(!output.is_empty() && output.len() < n, "{}", output.len());
    assert!(
        errors
            .iter()
            .all(|l| l["error"]["code"] == "batch_cancelled" && l["response"].is_null())
    );
    assert_eq!(batch["request_counts"]["completed"], output.len());

    let refused = api
        .post(&format!("/batches/{id}/cancel"))
        .send()
        .await
        .unwrap();
    let e = error(refused, StatusCode::BAD_REQUEST).await;
    assert!(e["message"].as_str().unwrap().contains("cancelled"));
    assert_eq!(api.stats().await["batches_cancelled"], 1);

    let missing = api.post("/batches/batch_nope/cancel").send().await.unwrap();
    error(missing, StatusCode::NOT_FOUND).await;
    server.shutdown().await;
}

#[tokio::test]
async fn auth_with_a_configured_key() {
    let server = SimServer::start(
        SimConfig {
            api_key: Some(KEY.into()),
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let url = format!("{}/files", api.base);

    let missing = api.http.get(&url).send().await.unwrap();
    error(missing, StatusCode::UNAUTHORIZED).await;
    let wrong = api
        .http
        .get(&url)
        .bearer_auth("sk-wrong-key-123")
        .send()
        .await
        .unwrap();
    let e = error(wrong, StatusCode::UNAUTHORIZED).await;
    assert_eq!(e["code"], "invalid_api_key");
    assert_eq!(e["type"], "invalid_request_error");
    assert!(!e["message"].as_str().unwrap().contains("sk-wrong-key-123"));
    ok_json(api.get("/files").send().await.unwrap()).await;
    // The stats endpoint is for tests and needs no key.
    api.stats().await;
    server.shutdown().await;
}

#[tokio::test]
async fn auth_without_a_configured_key() {
    let server = SimServer::start(fast(), 0).await.unwrap();
    let api = Api::new(&server);
    let url = format!("{}/files", api.base);
    let missing = api.http.get(&url).send().await.unwrap();
    error(missing, StatusCode::UNAUTHORIZED).await;
    let empty = api
        .http
        .get(&url)
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    error(empty, StatusCode::UNAUTHORIZED).await;
    let any = api
        .http
        .get(&url)
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    ok_json(any).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_line_fails_the_batch_during_validation() {
    let server = SimServer::start(fast(), 0).await.unwrap();
    let api = Api::new(&server);
    let content = format!("{}{{not json\n{}", jsonl(1), jsonl(1));
    let file = api.upload(&content).await;
    let created = api.create(file["id"].as_str().unwrap(), json!({})).await;
    assert_eq!(created["status"], "validating");
    let batch = api
        .wait_for(created["id"].as_str().unwrap(), "failed")
        .await;
    assert!(batch["failed_at"].is_u64());
    assert_eq!(batch["output_file_id"], Value::Null);
    assert_eq!(batch["error_file_id"], Value::Null);
    let errors = &batch["errors"];
    assert_eq!(errors["object"], "list");
    let codes: Vec<(&str, u64)> = errors["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        codes,
        vec![("invalid_json_line", 2), ("duplicate_custom_id", 3)]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn request_validation_errors() {
    let server = SimServer::start(fast(), 0).await.unwrap();
    let api = Api::new(&server);

    let not_jsonl = api.upload_raw("rows.json", "batch", &jsonl(1)).await;
    let e = error(not_jsonl, StatusCode::BAD_REQUEST).await;
    assert!(e["message"].as_str().unwrap().contains(".jsonl"));
    let bad_purpose = api.upload_raw("rows.jsonl", "fine-tune", &jsonl(1)).await;
    error(bad_purpose, StatusCode::BAD_REQUEST).await;
    let no_purpose = api
        .post("/files")
        .multipart(Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("a.jsonl")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error(no_purpose, StatusCode::BAD_REQUEST).await["param"],
        "purpose"
    );
    let not_multipart = api.post("/files").json(&json!({})).send().await.unwrap();
    error(not_multipart, StatusCode::BAD_REQUEST).await;

    let file = api.upload(&jsonl(1)).await;
    let file_id = file["id"].as_str().unwrap();
    let base = json!({"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let too_many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (
            with("input_file_id", json!("file-nope")),
            StatusCode::NOT_FOUND,
        ),
        (
            with("completion_window", json!("48h")),
            StatusCode::BAD_REQUEST,
        ),
        (with("endpoint", json!("/v1/nope")), StatusCode::BAD_REQUEST),
        (
            with("endpoint", json!("/v1/embeddings")),
            StatusCode::BAD_REQUEST,
        ),
        (
            with("metadata", Value::Object(too_many)),
            StatusCode::BAD_REQUEST,
        ),
        (
            with("metadata", json!({"k": "v".repeat(513)})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with("metadata", json!({"k".repeat(65): "v"})),
            StatusCode::BAD_REQUEST,
        ),
        (with("metadata", json!({"k": 1})), StatusCode::BAD_REQUEST),
        (with("surprise", json!(1)), StatusCode::BAD_REQUEST),
        (
            json!({"endpoint": ENDPOINT, "completion_window": "24h"}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, status) in cases {
        let response = api.post("/batches").json(&body).send().await.unwrap();
        error(response, status).await;
    }
    let garbage = api.post("/batches").body("{nope").send().await.unwrap();
    error(garbage, StatusCode::BAD_REQUEST).await;
    let unknown = api.get("/batches/batch_nope").send().await.unwrap();
    error(unknown, StatusCode::NOT_FOUND).await;
    let route = api.get("/nothing/here").send().await.unwrap();
    error(route, StatusCode::NOT_FOUND).await;

    let deleted = ok_json(
        api.http
            .delete(format!("{}/files/{file_id}", api.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        deleted,
        json!({"id": file_id, "object": "file", "deleted": true})
    );
    for path in [
        format!("/files/{file_id}"),
        format!("/files/{file_id}/content"),
    ] {
        error(api.get(&path).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    }
    let stats = api.stats().await;
    assert_eq!(
        (
            stats["files_uploaded"].as_u64(),
            stats["files_deleted"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(stats["batches_created"], 0);
    server.shutdown().await;
}

#[tokio::test]
async fn direct_chat_completion_matches_the_batch_answer() {
    let server = SimServer::start(fast(), 0).await.unwrap();
    let api = Api::new(&server);
    let file = api.upload(&jsonl(2)).await;
    let id = api.create(file["id"].as_str().unwrap(), json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let batch = api.wait_for(&id, "completed").await;
    let output = api.content(&batch["output_file_id"]).await;
    let line = output.iter().find(|l| l["custom_id"] == "r1").unwrap();
    let batch_body = &line["response"]["body"];

    let direct = ok_json(
        api.post("/chat/completions")
            .json(&request_body(1))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(direct["object"], "chat.completion");
    assert_eq!(
        direct["choices"][0]["message"],
        batch_body["choices"][0]["message"]
    );
    assert_eq!(direct["usage"], batch_body["usage"]);

    let mut bad = request_body(1);
    bad["max_tokens"] = json!(0);
    let rejected = api
        .post("/chat/completions")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error(rejected, StatusCode::BAD_REQUEST).await["param"],
        "max_tokens"
    );
    let stats = api.stats().await;
    assert_eq!(stats["chat_completions"], 1);
    // What direct mode is billed: the answered completion's usage, the
    // refused one's nothing.
    assert_eq!(
        stats["chat_usage"]["input_tokens"],
        direct["usage"]["prompt_tokens"]
    );
    assert_eq!(
        stats["chat_usage"]["output_tokens"],
        direct["usage"]["completion_tokens"]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn injected_http_errors_spare_the_stats_endpoint() {
    let server = SimServer::start(
        SimConfig {
            http_error_rate: 0.5,
            seed: 11,
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let mut statuses = HashSet::new();
    for _ in 0..40 {
        let response = api.get("/files").send().await.unwrap();
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.headers()["retry-after-ms"], "50");
        }
        if status != StatusCode::OK {
            error(response, status).await;
        }
        statuses.insert(status);
    }
    let expected: HashSet<StatusCode> = [
        StatusCode::OK,
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::TOO_MANY_REQUESTS,
    ]
    .into();
    assert_eq!(statuses, expected);
    for _ in 0..20 {
        api.stats().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_restarted_server_continues_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        data_dir: Some(dir.path().to_path_buf()),
        in_progress: Duration::from_millis(400),
        ..fast()
    };

    let first = SimServer::start(config.clone(), 0).await.unwrap();
    let api = Api::new(&first);
    let file = api.upload(&jsonl(20)).await;
    let done_id = api
        .create(file["id"].as_str().unwrap(), json!({"n": "1"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = api.wait_for(&done_id, "completed").await;
    let output_before = api.content(&done["output_file_id"]).await;
    // Stopped while this one is still validating or running.
    let running_id = api
        .create(file["id"].as_str().unwrap(), json!({"n": "2"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    first.shutdown().await;

    let second = SimServer::start(config, 0).await.unwrap();
    let api = Api::new(&second);
    assert_ne!(api.batch(&running_id).await["status"], "completed");
    let done_again = api.batch(&done_id).await;
    assert_eq!(done_again, done);
    assert_eq!(
        api.content(&done_again["output_file_id"]).await,
        output_before
    );
    let running = api.wait_for(&running_id, "completed").await;
    assert_eq!(running["metadata"], json!({"n": "2"}));
    assert_accounted(&api, &running, 20).await;
    ok_json(
        api.get(&format!("/files/{}", file["id"].as_str().unwrap()))
            .send()
            .await
            .unwrap(),
    )
    .await;

    let stats = api.stats().await;
    assert_eq!(stats["batches_created"], 2);
    assert_eq!(stats["files_uploaded"], 1);
    let listed: Vec<&str> = stats["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![done_id.as_str(), running_id.as_str()]);
    second.shutdown().await;
}

/// One call to every `/v1` route, with ids that need not exist: an injected
/// error comes before the lookup.
async fn call_every_route(api: &Api) -> Vec<(String, reqwest::Response)> {
    let form = Form::new().text("purpose", "batch").part(
        "file",
        Part::bytes(jsonl(1).into_bytes()).file_name("chunk-0.jsonl"),
    );
    let create =
        json!({"input_file_id": "file-x", "endpoint": ENDPOINT, "completion_window": "24h"});
    let calls = vec![
        ("upload", api.post("/files").multipart(form)),
        ("list files", api.get("/files")),
        ("retrieve file", api.get("/files/file-x")),
        ("file content", api.get("/files/file-x/content")),
        (
            "delete file",
            api.http
                .delete(format!("{}/files/file-x", api.base))
                .bearer_auth(KEY),
        ),
        ("create batch", api.post("/batches").json(&create)),
        ("list batches", api.get("/batches")),
        ("retrieve batch", api.get("/batches/batch_x")),
        ("cancel batch", api.post("/batches/batch_x/cancel")),
        ("chat", api.post("/chat/completions").json(&request_body(0))),
    ];
    let mut responses = Vec::new();
    for (name, call) in calls {
        responses.push((name.to_string(), call.send().await.unwrap()));
    }
    responses
}

#[tokio::test]
async fn rate_limited_calls_carry_retry_after_headers_on_every_route() {
    let server = SimServer::start(
        SimConfig {
            rate_limit_rate: 1.0,
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let responses = call_every_route(&api).await;
    let calls = responses.len();
    for (name, response) in responses {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{name}");
        let headers = response.headers().clone();
        assert_eq!(headers["retry-after"], "1", "{name}");
        assert_eq!(headers["retry-after-ms"], "50", "{name}");
        let e = error(response, StatusCode::TOO_MANY_REQUESTS).await;
        assert_eq!(e["code"], "rate_limit_exceeded", "{name}");
    }
    // Nothing was done, and the stats endpoint is never limited.
    let stats = api.stats().await;
    assert_eq!(stats["injected_429"], calls);
    assert_eq!(stats["injected_5xx"], 0);
    for counter in ["files_uploaded", "batches_created", "chat_completions"] {
        assert_eq!(stats[counter], 0, "{counter}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn server_errors_are_500_502_and_503_before_anything_is_done() {
    let server = SimServer::start(
        SimConfig {
            server_error_rate: 1.0,
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let mut statuses = HashSet::new();
    for (name, response) in call_every_route(&api).await {
        assert!(response.status().is_server_error(), "{name}");
        statuses.insert(response.status());
        assert!(!response.headers().contains_key("retry-after"), "{name}");
        let status = response.status();
        assert_eq!(error(response, status).await["type"], "server_error");
    }
    for _ in 0..50 {
        let response = api.get("/batches").send().await.unwrap();
        statuses.insert(response.status());
    }
    let expected: HashSet<StatusCode> = [
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
    ]
    .into();
    assert_eq!(statuses, expected);
    let stats = api.stats().await;
    assert_eq!(stats["injected_5xx"], 60);
    assert_eq!(stats["injected_429"], 0);
    assert_eq!(stats["files_uploaded"], 0);
    server.shutdown().await;
}

/// Which of 40 calls to `GET /files` got through.
async fn pass_fail_pattern(api: &Api) -> Vec<bool> {
    let mut pattern = Vec::new();
    for _ in 0..40 {
        let response = api.get("/files").send().await.unwrap();
        pattern.push(response.status() == StatusCode::OK);
    }
    pattern
}

#[tokio::test]
async fn a_restarted_server_injects_errors_into_other_calls() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        data_dir: Some(dir.path().to_path_buf()),
        server_error_rate: 0.25,
        rate_limit_rate: 0.25,
        seed: 5,
        ..fast()
    };
    let first = SimServer::start(config.clone(), 0).await.unwrap();
    let before = pass_fail_pattern(&Api::new(&first)).await;
    first.shutdown().await;
    let second = SimServer::start(config, 0).await.unwrap();
    let api = Api::new(&second);
    let after = pass_fail_pattern(&api).await;
    for pattern in [&before, &after] {
        assert!(
            pattern.contains(&true) && pattern.contains(&false),
            "{pattern:?}"
        );
    }
    // Identical by chance once in 2^40 runs.
    assert_ne!(before, after);
    // The counts of both servers add up, kept in the data directory.
    let stats = api.stats().await;
    let failed = before.iter().chain(&after).filter(|ok| !**ok).count() as u64;
    let injected =
        stats["injected_429"].as_u64().unwrap() + stats["injected_5xx"].as_u64().unwrap();
    assert_eq!(injected, failed);
    second.shutdown().await;
}

#[tokio::test]
async fn a_create_that_answers_500_still_made_its_batch() {
    let server = SimServer::start(
        SimConfig {
            create_commit_error_rate: 1.0,
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let file = api.upload(&jsonl(3)).await;
    let metadata = json!({"job": "dup", "chunk": "0"});
    let body = json!({"input_file_id": file["id"], "endpoint": ENDPOINT,
        "completion_window": "24h", "metadata": metadata});
    let response = api.post("/batches").json(&body).send().await.unwrap();
    let e = error(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(e["type"], "server_error");

    // The batch exists: listed with its metadata, and it runs to the end.
    let listed = ok_json(api.get("/batches").send().await.unwrap()).await;
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{listed:#}");
    assert_eq!(data[0]["metadata"], metadata);
    assert_eq!(data[0]["input_file_id"], file["id"]);
    let id = data[0]["id"].as_str().unwrap();
    let batch = api.wait_for(id, "completed").await;
    assert_accounted(&api, &batch, 3).await;

    let stats = api.stats().await;
    assert_eq!(stats["batches_created"], 1);
    assert_eq!(stats["create_commit_errors"], 1);
    assert_eq!(stats["injected_5xx"], 0);
    server.shutdown().await;
}

async fn create_id(api: &Api, file: &Value, metadata: Value) -> String {
    let created = api.create(file["id"].as_str().unwrap(), metadata).await;
    assert_eq!(created["status"], "validating", "{created:#}");
    created["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_nth_batch_fails_with_token_limit_exceeded_counting_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        data_dir: Some(dir.path().to_path_buf()),
        token_limit_every: 2,
        ..fast()
    };
    let first = SimServer::start(config.clone(), 0).await.unwrap();
    let api = Api::new(&first);
    let file = api.upload(&jsonl(4)).await;
    let one = create_id(&api, &file, json!({"n": "1"})).await;
    api.wait_for(&one, "completed").await;
    first.shutdown().await;

    // The second create over the server's life, though the first of this process.
    let second = SimServer::start(config, 0).await.unwrap();
    let api = Api::new(&second);
    let two = create_id(&api, &file, json!({"n": "2"})).await;
    let three = create_id(&api, &file, json!({"n": "3"})).await;
    let failed = api.wait_for(&two, "failed").await;
    assert!(failed["failed_at"].is_u64());
    assert_eq!(failed["output_file_id"], Value::Null);
    assert_eq!(failed["error_file_id"], Value::Null);
    assert_eq!(
        failed["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert_eq!(failed["usage"]["total_tokens"], 0);
    let errors = failed["errors"]["data"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "token_limit_exceeded");
    assert_eq!(errors[0]["line"], Value::Null);
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        message.contains("Enqueued token limit reached for gpt-4o-mini"),
        "{message}"
    );
    assert!(message.contains("2,000,000 enqueued tokens"), "{message}");
    api.wait_for(&three, "completed").await;

    let stats = api.stats().await;
    assert_eq!(stats["batches_created"], 3);
    assert_eq!(stats["token_limit_failures"], 1);
    let statuses: Vec<&str> = stats["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["completed", "failed", "completed"]);
    second.shutdown().await;
}

#[tokio::test]
async fn every_nth_batch_expires_with_half_its_output() {
    let server = SimServer::start(
        SimConfig {
            expire_every: 1,
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let n = 20;
    let file = api.upload(&jsonl(n)).await;
    let id = create_id(&api, &file, json!({})).await;
    let batch = api.wait_for(&id, "expired").await;
    assert!(batch["expired_at"].is_u64());
    for field in ["completed_at", "failed_at", "cancelled_at", "finalizing_at"] {
        assert!(batch[field].is_null(), "{field}");
    }
    let (output, errors) = assert_accounted(&api, &batch, n).await;
    assert_eq!((output.len(), errors.len()), (n / 2, n / 2));
    for line in &output {
        assert_eq!(line["response"]["status_code"], 200);
    }
    for line in &errors {
        assert_eq!(line["error"]["code"], "batch_expired");
        assert!(line["error"]["message"].is_string());
        assert_eq!(line["response"], Value::Null);
    }
    // Expired requests are neither completed nor failed (as OpenAI counts).
    assert_eq!(
        batch["request_counts"],
        json!({"total": n, "completed": n / 2, "failed": 0})
    );
    // Billed for the work that was done, and only that.
    let billed: u64 = output
        .iter()
        .map(|l| {
            l["response"]["body"]["usage"]["prompt_tokens"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(batch["usage"]["input_tokens"], billed);
    assert_eq!(api.stats().await["expired_batches"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn token_limit_and_expiry_share_the_create_count() {
    let server = SimServer::start(
        SimConfig {
            token_limit_every: 3,
            expire_every: 2,
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let file = api.upload(&jsonl(2)).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(create_id(&api, &file, json!({"i": i.to_string()})).await);
    }
    // 6 is due for both: the token limit wins.
    let expected = [
        "completed",
        "expired",
        "failed",
        "expired",
        "completed",
        "failed",
    ];
    for (id, status) in ids.iter().zip(expected) {
        api.wait_for(id, status).await;
    }
    let stats = api.stats().await;
    assert_eq!(
        (
            stats["token_limit_failures"].as_u64(),
            stats["expired_batches"].as_u64()
        ),
        (Some(2), Some(2))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_flaked_request_fails_once_and_succeeds_when_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        data_dir: Some(dir.path().to_path_buf()),
        request_flake_rate: 1.0,
        ..fast()
    };
    let first = SimServer::start(config.clone(), 0).await.unwrap();
    let api = Api::new(&first);
    let file = api.upload(&jsonl(4)).await;
    let id = create_id(&api, &file, json!({})).await;
    let batch = api.wait_for(&id, "completed").await;
    assert_eq!(batch["output_file_id"], Value::Null);
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 0, "failed": 4})
    );
    let (_, errors) = assert_accounted(&api, &batch, 4).await;
    for line in &errors {
        let status = line["response"]["status_code"].as_u64().unwrap();
        assert!(status == 500 || status == 503, "{line}");
        assert_eq!(line["response"]["body"]["error"]["type"], "server_error");
        assert_eq!(line["error"], Value::Null);
    }
    assert_eq!(api.stats().await["flaked_requests"], 4);
    first.shutdown().await;

    // The same four lines (and a new one) in a new batch, on a restarted server.
    let second = SimServer::start(config, 0).await.unwrap();
    let api = Api::new(&second);
    let file = api.upload(&jsonl(5)).await;
    let id = create_id(&api, &file, json!({})).await;
    let batch = api.wait_for(&id, "completed").await;
    let (output, errors) = assert_accounted(&api, &batch, 5).await;
    let mut succeeded = custom_ids(&output);
    succeeded.sort();
    assert_eq!(succeeded, ["r0", "r1", "r2", "r3"]);
    assert_eq!(custom_ids(&errors), ["r4"]);

    // The same custom_id with another body is another request: it flakes.
    let edited = json!({"custom_id": "r1", "method": "POST", "url": ENDPOINT,
        "body": request_body(99)})
    .to_string()
        + "\n";
    let file = api.upload(&edited).await;
    let id = create_id(&api, &file, json!({})).await;
    let batch = api.wait_for(&id, "completed").await;
    let (_, errors) = assert_accounted(&api, &batch, 1).await;
    assert_eq!(custom_ids(&errors), ["r1"]);
    assert_eq!(api.stats().await["flaked_requests"], 6);
    second.shutdown().await;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn stats_describe_each_batch_and_the_totals() {
    let server = SimServer::start(
        SimConfig {
            in_progress: Duration::from_millis(400),
            token_limit_every: 2,
            ..fast()
        },
        0,
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let file = api.upload(&jsonl(3)).await;
    let metadata = json!({"job": "stats", "chunk": "0"});
    let before = unix_ms();
    let id = create_id(&api, &file, metadata.clone()).await;
    let after = unix_ms();
    let other_file = api.upload(&jsonl(5)).await;
    let limited = create_id(&api, &other_file, json!({"job": "stats", "chunk": "1"})).await;

    let stats = api.stats().await;
    let running = &stats["batches"][0];
    assert_eq!(running["id"], id.as_str());
    assert_ne!(running["status"], "completed");
    assert_eq!(running["ended_at_ms"], Value::Null);
    let created = running["created_at_ms"].as_u64().unwrap();
    assert!(
        (before..=after).contains(&created),
        "{before} {created} {after}"
    );
    assert_eq!(running["created_at"], created / 1000);

    let batch = api.wait_for(&id, "completed").await;
    api.wait_for(&limited, "failed").await;
    let stats = api.stats().await;
    let done = &stats["batches"][0];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["metadata"], metadata);
    assert_eq!(done["input_file_id"], file["id"]);
    assert_eq!(done["fault"], Value::Null);
    let ended = done["ended_at_ms"].as_u64().unwrap();
    assert!(ended >= created + 400, "{created} {ended}");
    assert_eq!(batch["completed_at"], ended / 1000);
    let mut ids: Vec<&str> = done["custom_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["r0", "r1", "r2"]);
    let billed = json!({
        "input_tokens": batch["usage"]["input_tokens"],
        "output_tokens": batch["usage"]["output_tokens"],
    });
    assert!(billed["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(done["usage"], billed);

    let failed = &stats["batches"][1];
    assert_eq!(failed["fault"], "token_limit");
    assert_eq!(failed["custom_ids"].as_array().unwrap().len(), 5);
    assert_eq!(
        failed["usage"],
        json!({"input_tokens": 0, "output_tokens": 0})
    );
    assert!(failed["ended_at_ms"].is_u64());
    // Only the completed batch was billed.
    assert_eq!(stats["usage"], billed);
    for (counter, value) in [
        ("batches_created", 2),
        ("token_limit_failures", 1),
        ("expired_batches", 0),
        ("injected_429", 0),
        ("injected_5xx", 0),
        ("create_commit_errors", 0),
        ("flaked_requests", 0),
    ] {
        assert_eq!(stats[counter], value, "{counter}");
    }
    server.shutdown().await;
}

/// `batchgrader simulate-server` in its own process, stopped when dropped.
struct ServerProcess {
    child: std::process::Child,
    api: Api,
}

impl ServerProcess {
    fn start(flags: &[&str]) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        let mut child = crate::common::bin()
            .args(["simulate-server", "--port", "0", "--validating", "10ms"])
            .args(["--in-progress", "100ms", "--finalizing", "10ms"])
            .args(flags)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("simulate-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let api = Api::at(base);
        ServerProcess { child, api }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn simulate_server_flags_play_the_faults() {
    let limited = ServerProcess::start(&["--rate-limit-rate", "100%"]);
    let response = limited.api.get("/files").send().await.unwrap();
    assert_eq!(response.headers()["retry-after-ms"], "50");
    error(response, StatusCode::TOO_MANY_REQUESTS).await;
    drop(limited);

    let failing = ServerProcess::start(&["--server-error-rate", "1"]);
    let response = failing.api.get("/files").send().await.unwrap();
    assert!(response.status().is_server_error());
    drop(failing);

    let creates = ServerProcess::start(&[
        "--create-commit-error-rate",
        "100%",
        "--token-limit-every",
        "1",
    ]);
    let api = &creates.api;
    let file = api.upload(&jsonl(2)).await;
    let body = json!({"input_file_id": file["id"], "endpoint": ENDPOINT,
        "completion_window": "24h"});
    let response = api.post("/batches").json(&body).send().await.unwrap();
    error(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    let listed = ok_json(api.get("/batches").send().await.unwrap()).await;
    let id = listed["data"][0]["id"].as_str().unwrap();
    let batch = api.wait_for(id, "failed").await;
    assert_eq!(batch["errors"]["data"][0]["code"], "token_limit_exceeded");
    drop(creates);

    let expiring = ServerProcess::start(&["--expire-every", "1", "--request-flake-rate", "1"]);
    let api = &expiring.api;
    let file = api.upload(&jsonl(4)).await;
    let id = create_id(api, &file, json!({})).await;
    let batch = api.wait_for(&id, "expired").await;
    // Two ran and flaked, two did not run.
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 0, "failed": 2})
    );
    let (_, errors) = assert_accounted(api, &batch, 4).await;
    let expired = errors
        .iter()
        .filter(|l| l["error"]["code"] == "batch_expired")
        .count();
    assert_eq!(expired, 2);
    assert_eq!(api.stats().await["flaked_requests"], 2);
}
