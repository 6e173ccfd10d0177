//! The router and the middleware every call goes through; also Chat
//! Completions and `/_sim/stats`. The helpers the endpoint modules share
//! are in `extract`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::answers::{check_request, complete, completion_json};
use super::api_error::{ApiError, ErrorBody};
use super::app::{App, now_ms, read_custom_ids};
use super::batches_api::{cancel_batch, create_batch, list_batches, retrieve_batch};
use super::extract::{ApiResult, AppState, json_body, ok};
use super::files_api::{
    MAX_BATCH_FILE_BYTES, delete_file, file_content, list_files, retrieve_file, upload_file,
};
use super::hash::hash64;
use super::state::{BatchRecord, Status, Usage, view};

/// Room for the multipart framing around the largest allowed file.
const BODY_LIMIT: usize = MAX_BATCH_FILE_BYTES as usize + (1 << 20);

pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/files", post(upload_file).get(list_files))
        .route("/files/{id}", get(retrieve_file).delete(delete_file))
        .route("/files/{id}/content", get(file_content))
        .route("/batches", post(create_batch).get(list_batches))
        .route("/batches/{id}", get(retrieve_batch))
        .route("/batches/{id}/cancel", post(cancel_batch))
        .route("/chat/completions", post(chat_completions))
        .method_not_allowed_fallback(wrong_method_v1)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // The last layer added runs first: auth, then error injection.
        .layer(middleware::from_fn_with_state(app.clone(), inject_errors))
        .layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .route("/_sim/stats", get(stats))
        .fallback(unknown_url)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(app.clone(), request_id))
        .with_state(app)
}

async fn request_id(State(app): AppState, request: Request, next: Next) -> Response {
    let id = app.next_request_id();
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn authenticate(State(app): AppState, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let unauthorized = |body| ApiError::new(StatusCode::UNAUTHORIZED, body).into_response();
    match (token, &app.config.api_key) {
        (None, _) => unauthorized(ErrorBody::invalid_request(
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )),
        (Some(token), Some(key)) if token != key => unauthorized(
            ErrorBody::invalid_request(format!(
                "Incorrect API key provided: {}. (simulated provider)",
                mask(token)
            ))
            .code("invalid_api_key"),
        ),
        _ => next.run(request).await,
    }
}

/// Like OpenAI, never echo a whole key.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

async fn inject_errors(State(app): AppState, request: Request, next: Next) -> Response {
    match app.injected_error() {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

async fn unknown_url(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorBody::invalid_request(format!(
            "Invalid URL ({} {})",
            request.method(),
            request.uri().path()
        )),
    )
}

fn method_error(request: &Request, prefix: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorBody::invalid_request(format!(
            "Invalid method for URL ({} {prefix}{})",
            request.method(),
            request.uri().path()
        )),
    )
}

async fn wrong_method(request: Request) -> ApiError {
    method_error(&request, "")
}

/// Nesting strips `/v1` from the path this handler sees.
async fn wrong_method_v1(request: Request) -> ApiError {
    method_error(&request, "/v1")
}

// ---------------------------------------------------------------- chat

async fn chat_completions(State(app): AppState, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = Value::Object(json_body(body)?);
    check_request(&body).map_err(ApiError::bad_request)?;
    // One draw per call: a request sent again may be lucky (at rate 1, never).
    let call = format!(
        "{:016x}",
        hash64(&[
            &now_ms().to_le_bytes(),
            &super::hash::hash_json(b"body", &body).to_le_bytes()
        ])
    );
    if super::faults::rejected(app.config.reject_rate, app.config.seed, "chat", &call) {
        app.db().counters.rejected_chats += 1;
        return Err(ApiError::bad_request(super::faults::rejected_request()));
    }
    let completion = complete(&body, &app.answers);
    let n = {
        let mut db = app.db();
        db.counters.chat_completions += 1;
        db.counters.chat_input_tokens += completion.prompt_tokens;
        db.counters.chat_output_tokens += completion.completion_tokens;
        db.counters.chat_completions
    };
    let id = format!(
        "chatcmpl-sim-{:016x}",
        hash64(&[b"direct", &now_ms().to_le_bytes(), &n.to_le_bytes()])
    );
    ok(completion_json(&body, &completion, &id, now_ms() / 1000))
}

// ---------------------------------------------------------------- stats

/// What a test needs to prove a client behaved: every batch with its
/// contents, timing and billed usage, and the count of every injected fault.
async fn stats(State(app): AppState) -> ApiResult {
    let now = now_ms();
    let (mut batches, mut body) = {
        let db = app.db();
        let mut records: Vec<&BatchRecord> = db.batches.values().collect();
        records.sort_by_key(|b| b.seq);
        let (mut token_limit_failures, mut expired_batches) = (0u64, 0u64);
        let mut total = Usage::default();
        let batches: Vec<(String, Value)> = records
            .into_iter()
            .map(|b| {
                let view = view(b, now);
                let token_limited = view
                    .errors
                    .iter()
                    .flatten()
                    .any(|e| e.code == "token_limit_exceeded");
                token_limit_failures += u64::from(token_limited);
                expired_batches += u64::from(view.status == Status::Expired);
                // What the API bills: the succeeded lines of an ended batch.
                total.add(view.usage.input_tokens, view.usage.output_tokens);
                let entry = json!({
                    "id": b.id,
                    "status": view.status.as_str(),
                    "metadata": b.metadata,
                    "input_file_id": b.input_file_id,
                    "created_at": b.created_ms / 1000,
                    "created_at_ms": b.created_ms,
                    "ended_at_ms": view.ended_at(),
                    "fault": b.fault,
                    "custom_ids": null,
                    "usage": usage_json(view.usage),
                    // Lines answered (in the output file) and failed.
                    "request_counts": {
                        "total": view.counts.total,
                        "completed": view.counts.completed,
                        "failed": view.counts.failed,
                    },
                });
                (b.id.clone(), entry)
            })
            .collect();
        let counters = db.counters;
        let body = json!({
            "files_uploaded": counters.files_uploaded,
            "files_deleted": counters.files_deleted,
            "batches_created": counters.batches_created,
            "batches_cancelled": counters.batches_cancelled,
            "chat_completions": counters.chat_completions,
            "chat_usage": usage_json(Usage {
                input_tokens: counters.chat_input_tokens,
                output_tokens: counters.chat_output_tokens,
                cached_tokens: 0,
            }),
            "usage": usage_json(total),
            "injected_429": counters.injected_429,
            "injected_5xx": counters.injected_5xx,
            "rejected_chats": counters.rejected_chats,
            "create_commit_errors": counters.create_commit_errors,
            "twin_creates": counters.twin_creates,
            "token_limit_failures": token_limit_failures,
            "expired_batches": expired_batches,
            "flaked_requests": counters.flaked_requests,
        });
        (batches, body)
    };
    let reader = app.clone();
    let ids = batches.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    let custom_ids = tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|id| read_custom_ids(&reader, id))
            .collect::<std::io::Result<Vec<_>>>()
    })
    .await
    .map_err(ApiError::internal)??;
    for ((_, entry), ids) in batches.iter_mut().zip(custom_ids) {
        entry["custom_ids"] = json!(ids);
    }
    body["batches"] = Value::Array(batches.into_iter().map(|(_, entry)| entry).collect());
    ok(body)
}

fn usage_json(usage: Usage) -> Value {
    json!({"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens})
}
