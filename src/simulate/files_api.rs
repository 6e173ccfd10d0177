//! The Files endpoints. Uploads stream into the store as they arrive.

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::api_error::{ApiError, ErrorBody};
use super::app::{App, now_ms};
use super::extract::{ApiResult, AppState, Id, QueryMap, limit, no_such_file, ok, page, query};
use super::state::{FILE_LIFETIME_SECS, FileRecord};
use super::store::Staging;
use super::wire::{file_object, list};

/// OpenAI's cap on a batch input file.
pub const MAX_BATCH_FILE_BYTES: u64 = 200_000_000;

const FILE_PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

pub(super) async fn upload_file(
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

fn bad_multipart(e: MultipartError) -> ApiError {
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

pub(super) async fn list_files(State(app): AppState, q: QueryMap) -> ApiResult {
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

pub(super) async fn retrieve_file(State(app): AppState, Id(id): Id) -> ApiResult {
    let db = app.db();
    let file = db.files.get(&id).ok_or_else(|| no_such_file(&id))?;
    ok(file_object(file))
}

pub(super) async fn file_content(State(app): AppState, Id(id): Id) -> ApiResult {
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

pub(super) async fn delete_file(State(app): AppState, Id(id): Id) -> ApiResult {
    {
        let mut db = app.db();
        db.files.remove(&id).ok_or_else(|| no_such_file(&id))?;
        db.counters.files_deleted += 1;
    }
    app.commit(None).await?;
    app.blobs.remove(&id).await?;
    ok(json!({ "id": id, "object": "file", "deleted": true }))
}
