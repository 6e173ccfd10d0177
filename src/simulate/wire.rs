//! The JSON objects the API returns, field for field as in the OpenAI spec.

use serde_json::{Value, json};

use super::state::{BatchRecord, COMPLETION_WINDOW_MS, FileRecord, View};

fn secs(ms: u64) -> u64 {
    ms / 1000
}

pub fn file_object(file: &FileRecord) -> Value {
    json!({
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "expires_at": file.expires_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": null,
    })
}

pub fn batch_object(batch: &BatchRecord, view: &View) -> Value {
    let errors = view.errors.as_ref().map(|errors| {
        let data: Vec<Value> = errors
            .iter()
            .map(|e| json!({"code": e.code, "message": e.message, "param": null, "line": e.line}))
            .collect();
        json!({ "object": "list", "data": data })
    });
    json!({
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": view.model,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": view.status.as_str(),
        "output_file_id": view.output_file_id,
        "error_file_id": view.error_file_id,
        "created_at": secs(batch.created_ms),
        "in_progress_at": view.in_progress_at.map(secs),
        "expires_at": secs(batch.created_ms + COMPLETION_WINDOW_MS),
        "finalizing_at": view.finalizing_at.map(secs),
        "completed_at": view.completed_at.map(secs),
        "failed_at": view.failed_at.map(secs),
        "expired_at": view.expired_at.map(secs),
        "cancelling_at": view.cancelling_at.map(secs),
        "cancelled_at": view.cancelled_at.map(secs),
        "request_counts": {
            "total": view.counts.total,
            "completed": view.counts.completed,
            "failed": view.counts.failed,
        },
        "usage": {
            "input_tokens": view.usage.input_tokens,
            "input_tokens_details": { "cached_tokens": view.usage.cached_tokens },
            "output_tokens": view.usage.output_tokens,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": view.usage.input_tokens + view.usage.output_tokens,
        },
        "metadata": batch.metadata,
    })
}

/// `{object:"list", data, first_id, last_id, has_more}`.
pub fn list(data: Vec<Value>, has_more: bool) -> Value {
    let id_of = |v: Option<&Value>| v.and_then(|v| v.get("id")).cloned();
    let (first_id, last_id) = (id_of(data.first()), id_of(data.last()));
    json!({
        "object": "list",
        "data": data,
        "first_id": first_id,
        "last_id": last_id,
        "has_more": has_more,
    })
}
