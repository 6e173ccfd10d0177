//! HTTP handlers: the OpenAI Files, Batches and Chat Completions endpoints,
//! plus `/_sim/stats` for tests.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Multipart, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::answers::{check_request, complete, completion_json};
use super::api_error::{ApiError, ErrorBody};
use super::app::{App, now_ms};
use super::hash::hash64;
use super::state::{BatchRecord, FILE_LIFETIME_SECS, FileRecord, Timing, view};
use super::store::Staging;
use super::wire::{batch_object, file_object, list};

/// OpenAI's cap on a batch input file.
pub const MAX_BATCH_FILE_BYTES: u64 = 200_000_000;
/// Room for the multipart framing around the largest allowed file.
const BODY_LIMIT: usize = MAX_BATCH_FILE_BYTES as usize + (1 << 20);

const SUPPORTED_ENDPOINT: &str = "/v1/chat/completions";
const OPENAI_BATCH_ENDPOINTS: [&str; 8] = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
];
const FILE_PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];
const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY: usize = 64;
const METADATA_MAX_VALUE: usize = 512;

type AppState = State<Arc<App>>;
type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;
type ApiResult = Result<Response, ApiError>;

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
        // Layers run outside-in from the last one: auth, then error injection.
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

/// A path id; a malformed one is a 400 envelope instead of axum's plain text.
struct Id(String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Id(id))
            .map_err(|e| ApiError::bad_request(ErrorBody::invalid_request(e.body_text())))
    }
}

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body =
        body.map_err(|e| ApiError::new(e.status(), ErrorBody::invalid_request(e.body_text())))?;
    match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::unparsable_json()),
    }
}

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

fn no_such_file(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {id}"), "id")
}

fn no_such_batch(id: &str) -> ApiError {
    ApiError::not_found(format!("No such Batch object: {id}"), "batch_id")
}

/// `limit` from a list query: absent → `default`, else an integer in `1..=max`.
fn limit(query: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(raw) = query.get("limit") else {
        return Ok(default);
    };
    match raw.parse::<i64>() {
        Ok(n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Ok(n) => Err(ApiError::bad_request(
            ErrorBody::invalid_request(format!(
                "Invalid 'limit': expected a value between 1 and {max}, but got {n} instead."
            ))
            .param("limit")
            .code("invalid_value"),
        )),
        Err(_) => Err(ApiError::bad_request(
            ErrorBody::invalid_request(format!(
                "Invalid 'limit': expected an integer, but got '{raw}' instead."
            ))
            .param("limit")
            .code("invalid_type"),
        )),
    }
}

/// One page after the `after` cursor (an unknown cursor gives an empty page).
fn page<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, bool) {
    let start = match after {
        Some(cursor) => items
            .iter()
            .position(|item| id(item) == cursor)
            .map_or(items.len(), |i| i + 1),
        None => 0,
    };
    let has_more = items.len() > start + limit;
    let page = items.into_iter().skip(start).take(limit).collect();
    (page, has_more)
}

fn query(query: QueryMap) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(ErrorBody::invalid_request(e.body_text())))
}

// ---------------------------------------------------------------- files

async fn upload_file(
    State(app): AppState,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult {
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(ErrorBody::invalid_request(format!(
            "Invalid multipart/form-data request: {}",
            e.body_text()
        )))
    })?;
    let (id, seq) = app.new_id(&mut app.db(), "file-sim-");
    let mut form = UploadForm::default();
    let checked = read_upload(&app, &id, &mut multipart, &mut form)
        .await
        .and_then(|()| form.check());
    let (filename, staging, expires_after) = match (checked, form.staged.take()) {
        (Ok(expires_after), Some((filename, staging))) => (filename, staging, expires_after),
        (result, staged) => {
            if let Some((_, staging)) = staged {
                app.blobs.discard(staging).await;
            }
            return Err(result.err().unwrap_or_else(|| ApiError::missing("file")));
        }
    };
    let bytes = staging.bytes;
    app.blobs.commit(&id, staging).await?;
    let created_at = now_ms() / 1000;
    let record = FileRecord {
        id: id.clone(),
        seq,
        bytes,
        created_at,
        expires_at: Some(created_at + expires_after.unwrap_or(FILE_LIFETIME_SECS)),
        filename,
        purpose: "batch".into(),
    };
    let object = file_object(&record);
    {
        let mut db = app.db();
        db.files.insert(id, record);
        db.counters.files_uploaded += 1;
    }
    app.commit(None).await?;
    ok(object)
}

#[derive(Default)]
struct UploadForm {
    staged: Option<(String, Staging)>,
    purpose: Option<String>,
    anchor: Option<String>,
    seconds: Option<String>,
}

fn bad_multipart(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    ApiError::new(
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            status
        } else {
            StatusCode::BAD_REQUEST
        },
        ErrorBody::invalid_request(format!(
            "Invalid multipart/form-data body: {}",
            e.body_text()
        )),
    )
}

fn too_large() -> ApiError {
    ApiError::bad_request(
        ErrorBody::invalid_request(format!(
            "File is too large: a batch input file can be at most {} MB.",
            MAX_BATCH_FILE_BYTES / 1_000_000
        ))
        .param("file"),
    )
}

/// Reads the form; the file goes straight to the store as it arrives. The
/// fields may come in any order, so the checks wait for the end.
async fn read_upload(
    app: &App,
    id: &str,
    multipart: &mut Multipart,
    form: &mut UploadForm,
) -> Result<(), ApiError> {
    while let Some(mut field) = multipart.next_field().await.map_err(bad_multipart)? {
        match field.name().unwrap_or_default() {
            "file" => {
                if form.staged.is_some() {
                    return Err(ApiError::bad_request(
                        ErrorBody::invalid_request("Only one 'file' may be uploaded per request.")
                            .param("file"),
                    ));
                }
                let filename = field.file_name().unwrap_or_default().to_string();
                let staging = app.blobs.stage(id).await?;
                let staged = form.staged.insert((filename, staging));
                while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
                    staged.1.write(&chunk).await?;
                    if staged.1.bytes > MAX_BATCH_FILE_BYTES {
                        return Err(too_large());
                    }
                }
            }
            "purpose" => form.purpose = Some(field.text().await.map_err(bad_multipart)?),
            // The SDK sends nested fields in bracket form; Azure's docs use dots.
            "expires_after[anchor]" | "expires_after.anchor" => {
                form.anchor = Some(field.text().await.map_err(bad_multipart)?)
            }
            "expires_after[seconds]" | "expires_after.seconds" => {
                form.seconds = Some(field.text().await.map_err(bad_multipart)?)
            }
            _ => {}
        }
    }
    Ok(())
}

impl UploadForm {
    /// The checks OpenAI makes on an upload; returns the requested lifetime.
    fn check(&self) -> Result<Option<u64>, ApiError> {
        let Some((filename, _)) = &self.staged else {
            return Err(ApiError::missing("file"));
        };
        let Some(purpose) = self.purpose.as_deref() else {
            return Err(ApiError::missing("purpose"));
        };
        if !FILE_PURPOSES.contains(&purpose) {
            return Err(ApiError::bad_request(
                ErrorBody::invalid_request(format!(
                    "'{purpose}' is not one of {FILE_PURPOSES:?} - 'purpose'"
                ))
                .param("purpose")
                .code("invalid_value"),
            ));
        }
        if purpose != "batch" {
            return Err(ApiError::bad_request(
                ErrorBody::invalid_request(format!(
                    "The simulated provider only accepts purpose 'batch', not '{purpose}'."
                ))
                .param("purpose")
                .code("invalid_value"),
            ));
        }
        if !filename.ends_with(".jsonl") {
            return Err(ApiError::bad_request(
                ErrorBody::invalid_request(format!(
                    "Invalid file format for Batch API. Must be .jsonl (got filename '{filename}')."
                ))
                .param("file"),
            ));
        }
        match (&self.anchor, &self.seconds) {
            (None, None) => Ok(None),
            (anchor, Some(seconds)) if anchor.as_deref().is_none_or(|a| a == "created_at") => {
                match seconds.trim().parse::<u64>() {
                    Ok(s) if (3600..=2_592_000).contains(&s) => Ok(Some(s)),
                    _ => Err(ApiError::bad_request(
                        ErrorBody::invalid_request(format!(
                            "Invalid 'expires_after.seconds': expected an integer between 3600 \
                             and 2592000, but got '{seconds}' instead."
                        ))
                        .param("expires_after.seconds")
                        .code("invalid_value"),
                    )),
                }
            }
            (Some(anchor), _) if anchor != "created_at" => Err(ApiError::bad_request(
                ErrorBody::invalid_request(format!(
                    "Invalid 'expires_after.anchor': expected 'created_at', but got '{anchor}'."
                ))
                .param("expires_after.anchor")
                .code("invalid_value"),
            )),
            _ => Err(ApiError::missing("expires_after.seconds")),
        }
    }
}

async fn list_files(State(app): AppState, q: QueryMap) -> ApiResult {
    let q = query(q)?;
    let limit = limit(&q, 10_000, 10_000)?;
    let ascending = match q.get("order").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                ErrorBody::invalid_request(format!(
                    "Invalid 'order': expected 'asc' or 'desc', but got '{other}'."
                ))
                .param("order")
                .code("invalid_value"),
            ));
        }
    };
    let mut files: Vec<FileRecord> = app
        .db()
        .files
        .values()
        .filter(|f| q.get("purpose").is_none_or(|p| *p == f.purpose))
        .cloned()
        .collect();
    files.sort_by_key(|f| f.seq);
    if !ascending {
        files.reverse();
    }
    let (page, has_more) = page(files, |f| &f.id, q.get("after").map(String::as_str), limit);
    ok(list(page.iter().map(file_object).collect(), has_more))
}

async fn retrieve_file(State(app): AppState, Id(id): Id) -> ApiResult {
    let db = app.db();
    let file = db.files.get(&id).ok_or_else(|| no_such_file(&id))?;
    ok(file_object(file))
}

async fn file_content(State(app): AppState, Id(id): Id) -> ApiResult {
    let bytes = app
        .db()
        .files
        .get(&id)
        .map(|f| f.bytes)
        .ok_or_else(|| no_such_file(&id))?;
    let body = match app.blobs.body(&id).await {
        Ok(body) => body,
        // Deleted between the lookup and the read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_such_file(&id)),
        Err(e) => return Err(e.into()),
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(bytes)),
        ],
        body,
    )
        .into_response())
}

async fn delete_file(State(app): AppState, Id(id): Id) -> ApiResult {
    {
        let mut db = app.db();
        db.files.remove(&id).ok_or_else(|| no_such_file(&id))?;
        db.counters.files_deleted += 1;
    }
    app.commit(None).await?;
    app.blobs.remove(&id).await?;
    ok(json!({ "id": id, "object": "file", "deleted": true }))
}

// -------------------------------------------------------------- batches

fn invalid_value(param: &str, message: String) -> ApiError {
    ApiError::bad_request(
        ErrorBody::invalid_request(message)
            .param(param)
            .code("invalid_value"),
    )
}

fn required_string(body: &Map<String, Value>, param: &str) -> Result<String, ApiError> {
    match body.get(param) {
        None | Some(Value::Null) => Err(ApiError::missing(param)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad_request(
            ErrorBody::invalid_request(format!("Invalid type for '{param}': expected a string."))
                .param(param)
                .code("invalid_type"),
        )),
    }
}

fn check_metadata(value: Option<&Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::bad_request(
                ErrorBody::invalid_request("Invalid type for 'metadata': expected an object.")
                    .param("metadata")
                    .code("invalid_type"),
            ));
        }
    };
    if map.len() > METADATA_MAX_PAIRS {
        return Err(invalid_value(
            "metadata",
            format!(
                "Invalid 'metadata': too many properties. Expected an object with at most \
                 {METADATA_MAX_PAIRS} properties, but got an object with {} properties instead.",
                map.len()
            ),
        ));
    }
    for (key, value) in map {
        if key.chars().count() > METADATA_MAX_KEY {
            return Err(invalid_value(
                "metadata",
                format!(
                    "Invalid 'metadata': key '{key}' is longer than {METADATA_MAX_KEY} characters."
                ),
            ));
        }
        let Value::String(value) = value else {
            return Err(ApiError::bad_request(
                ErrorBody::invalid_request(format!(
                    "Invalid type for 'metadata.{key}': expected a string."
                ))
                .param(&format!("metadata.{key}"))
                .code("invalid_type"),
            ));
        };
        if value.chars().count() > METADATA_MAX_VALUE {
            return Err(invalid_value(
                &format!("metadata.{key}"),
                format!(
                    "Invalid 'metadata.{key}': string too long. Expected a string with maximum \
                     length {METADATA_MAX_VALUE}, but got a string with length {} instead.",
                    value.chars().count()
                ),
            ));
        }
    }
    Ok(Some(map.clone()))
}

async fn create_batch(State(app): AppState, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = json_body(body)?;
    const KNOWN: [&str; 5] = [
        "input_file_id",
        "endpoint",
        "completion_window",
        "metadata",
        "output_expires_after",
    ];
    if let Some(unknown) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            ErrorBody::invalid_request(format!(
                "Unrecognized request argument supplied: {unknown}"
            ))
            .param(unknown),
        ));
    }
    let input_file_id = required_string(&body, "input_file_id")?;
    let endpoint = required_string(&body, "endpoint")?;
    let completion_window = required_string(&body, "completion_window")?;
    if !OPENAI_BATCH_ENDPOINTS.contains(&endpoint.as_str()) {
        return Err(invalid_value(
            "endpoint",
            format!(
                "Invalid value: '{endpoint}'. Supported values are: {OPENAI_BATCH_ENDPOINTS:?}."
            ),
        ));
    }
    if endpoint != SUPPORTED_ENDPOINT {
        return Err(invalid_value(
            "endpoint",
            format!(
                "The simulated provider only runs '{SUPPORTED_ENDPOINT}' batches, not '{endpoint}'."
            ),
        ));
    }
    if completion_window != "24h" {
        return Err(invalid_value(
            "completion_window",
            format!("Invalid value: '{completion_window}'. Supported values are: '24h'."),
        ));
    }
    let metadata = check_metadata(body.get("metadata"))?;

    let now = now_ms();
    let (id, object) = {
        let mut db = app.db();
        let file = db
            .files
            .get(&input_file_id)
            .ok_or_else(|| no_such_file(&input_file_id))?;
        if file.purpose != "batch" {
            return Err(invalid_value(
                "input_file_id",
                format!(
                    "File {input_file_id} has purpose '{}'; a batch needs a file uploaded with \
                     purpose 'batch'.",
                    file.purpose
                ),
            ));
        }
        let (id, seq) = app.new_id(&mut db, "batch_sim_");
        let config = &app.config;
        let record = BatchRecord {
            id: id.clone(),
            seq,
            created_ms: now,
            endpoint,
            completion_window,
            input_file_id,
            metadata,
            timing: Timing {
                validating_ms: config.validating.as_millis() as u64,
                in_progress_ms: config.in_progress.as_millis() as u64,
                finalizing_ms: config.finalizing.as_millis() as u64,
            },
            request_failure_rate: config.request_failure_rate,
            seed: config.seed,
            validated: None,
            cancel_ms: None,
            outcome: None,
        };
        let object = batch_object(&record, &view(&record, now));
        db.batches.insert(id.clone(), record);
        db.counters.batches_created += 1;
        (id, object)
    };
    app.commit(Some(id)).await?;
    ok(object)
}

async fn retrieve_batch(State(app): AppState, Id(id): Id) -> ApiResult {
    let db = app.db();
    let batch = db.batches.get(&id).ok_or_else(|| no_such_batch(&id))?;
    ok(batch_object(batch, &view(batch, now_ms())))
}

fn newest_first(app: &App) -> Vec<BatchRecord> {
    let mut batches: Vec<BatchRecord> = app.db().batches.values().cloned().collect();
    batches.sort_by_key(|b| std::cmp::Reverse(b.seq));
    batches
}

async fn list_batches(State(app): AppState, q: QueryMap) -> ApiResult {
    let q = query(q)?;
    let limit = limit(&q, 20, 100)?;
    let (page, has_more) = page(
        newest_first(&app),
        |b| &b.id,
        q.get("after").map(String::as_str),
        limit,
    );
    let now = now_ms();
    ok(list(
        page.iter()
            .map(|b| batch_object(b, &view(b, now)))
            .collect(),
        has_more,
    ))
}

async fn cancel_batch(State(app): AppState, Id(id): Id) -> ApiResult {
    let object = {
        let mut db = app.db();
        let now = now_ms();
        let batch = db.batches.get_mut(&id).ok_or_else(|| no_such_batch(&id))?;
        let status = view(batch, now).status;
        if status.is_terminal() {
            return Err(ApiError::bad_request(ErrorBody::invalid_request(format!(
                "Cannot cancel a batch with status '{}'.",
                status.as_str()
            ))));
        }
        let first = batch.cancel_ms.is_none();
        batch.cancel_ms.get_or_insert(now);
        let object = batch_object(batch, &view(batch, now));
        if first {
            db.counters.batches_cancelled += 1;
        }
        object
    };
    app.commit(Some(id)).await?;
    ok(object)
}

// ---------------------------------------------------------------- chat

async fn chat_completions(State(app): AppState, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = Value::Object(json_body(body)?);
    check_request(&body).map_err(ApiError::bad_request)?;
    let completion = complete(&body);
    let n = {
        let mut db = app.db();
        db.counters.chat_completions += 1;
        db.counters.chat_completions
    };
    let id = format!(
        "chatcmpl-sim-{:016x}",
        hash64(&[b"direct", &now_ms().to_le_bytes(), &n.to_le_bytes()])
    );
    ok(completion_json(&body, &completion, &id, now_ms() / 1000))
}

// ---------------------------------------------------------------- stats

async fn stats(State(app): AppState) -> ApiResult {
    let now = now_ms();
    let db = app.db();
    let mut batches: Vec<&BatchRecord> = db.batches.values().collect();
    batches.sort_by_key(|b| b.seq);
    let batches: Vec<Value> = batches
        .into_iter()
        .map(|b| {
            json!({
                "id": b.id,
                "status": view(b, now).status.as_str(),
                "metadata": b.metadata,
                "input_file_id": b.input_file_id,
                "created_at": b.created_ms / 1000,
            })
        })
        .collect();
    let counters = db.counters;
    ok(json!({
        "files_uploaded": counters.files_uploaded,
        "files_deleted": counters.files_deleted,
        "batches_created": counters.batches_created,
        "batches_cancelled": counters.batches_cancelled,
        "chat_completions": counters.chat_completions,
        "batches": batches,
    }))
}
