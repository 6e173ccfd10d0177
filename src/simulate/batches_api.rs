//! The Batches endpoints. Creating and cancelling only record facts; the
//! batch's driver does the work and `state::view` tells the status.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::api_error::{ApiError, ErrorBody};
use super::app::{App, now_ms};
use super::extract::{
    ApiResult, AppState, Id, QueryMap, json_body, limit, no_such_file, ok, page, query,
};
use super::faults::server_error;
use super::state::{BatchRecord, Timing, batch_fault, view};
use super::wire::{batch_object, list};

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
const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY: usize = 64;
const METADATA_MAX_VALUE: usize = 512;

fn no_such_batch(id: &str) -> ApiError {
    ApiError::not_found(format!("No such Batch object: {id}"), "batch_id")
}

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

pub(super) async fn create_batch(
    State(app): AppState,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
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
    let (id, object, commit_fails, twin) = {
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
        db.counters.batches_created += 1;
        let fault = batch_fault(
            db.counters.batches_created,
            config.token_limit_every,
            config.expire_every,
        );
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
            reject_rate: config.reject_rate,
            request_flake_rate: config.request_flake_rate,
            seed: config.seed,
            validated: None,
            cancel_ms: None,
            outcome: None,
            fault,
            answers: config.answers.clone(),
        };
        let mut object = shown(&app, batch_object(&record, &view(&record, now)));
        let mut twin = None;
        if app.create_twins(seq) {
            // A gateway (LiteLLM) met a 500 from a backend that had made
            // the batch, and retried the create on its own: the backend
            // runs both, with the same file and metadata, and the client
            // is told only of the second.
            let (twin_id, twin_seq) = app.new_id(&mut db, "batch_sim_");
            db.counters.batches_created += 1;
            db.counters.twin_creates += 1;
            let second = BatchRecord {
                id: twin_id.clone(),
                seq: twin_seq,
                ..record.clone()
            };
            object = shown(&app, batch_object(&second, &view(&second, now)));
            db.batches.insert(twin_id.clone(), second);
            twin = Some(twin_id);
        }
        db.batches.insert(id.clone(), record);
        let commit_fails = app.create_commit_fails(seq);
        db.counters.create_commit_errors += u64::from(commit_fails);
        (id, object, commit_fails, twin)
    };
    app.commit(Some(id)).await?;
    if let Some(twin) = twin {
        app.commit(Some(twin)).await?;
    }
    if commit_fails {
        // The batch is saved and its driver runs; only the answer is lost,
        // as when a create times out or meets a 5xx on the way back. The
        // SDKs send no idempotency key on this call (openai-python
        // `_base_client.py`: `_idempotency_header` stays unset for the OpenAI
        // client), so only a client that looks before retrying stays clear
        // of a duplicate.
        return Err(server_error(StatusCode::INTERNAL_SERVER_ERROR));
    }
    ok(object)
}

pub(super) async fn retrieve_batch(State(app): AppState, Id(id): Id) -> ApiResult {
    let db = app.db();
    let batch = db.batches.get(&id).ok_or_else(|| no_such_batch(&id))?;
    ok(shown(&app, batch_object(batch, &view(batch, now_ms()))))
}

/// A Batch object as this server shows it: some OpenAI-compatible servers
/// do not echo `metadata`, and `drop_metadata` plays one.
fn shown(app: &App, mut object: Value) -> Value {
    if app.config.drop_metadata {
        object["metadata"] = Value::Null;
    }
    object
}

fn newest_first(app: &App) -> Vec<BatchRecord> {
    let mut batches: Vec<BatchRecord> = app.db().batches.values().cloned().collect();
    batches.sort_by_key(|b| std::cmp::Reverse(b.seq));
    batches
}

pub(super) async fn list_batches(State(app): AppState, q: QueryMap) -> ApiResult {
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
            .map(|b| shown(&app, batch_object(b, &view(b, now))))
            .collect(),
        has_more,
    ))
}

pub(super) async fn cancel_batch(State(app): AppState, Id(id): Id) -> ApiResult {
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
        let object = shown(&app, batch_object(batch, &view(batch, now)));
        if first {
            db.counters.batches_cancelled += 1;
        }
        object
    };
    app.commit(Some(id)).await?;
    ok(object)
}
