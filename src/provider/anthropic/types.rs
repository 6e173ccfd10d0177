//! Wire types of Anthropic's Message Batches API, read leniently: unknown
//! fields are ignored and missing ones take defaults, so that a server that
//! adds a field (or an implementation that leaves one out) still works.
//! Field names follow anthropic-sdk-python `types/messages/message_batch.py`,
//! `message_batch_request_counts.py`, `message_batch_individual_response.py`
//! and `message_batch_*_result.py`.

use serde::Deserialize;
use serde_json::Value;

/// `MessageBatch`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct MessageBatch {
    pub id: String,
    /// `in_progress`, `canceling` or `ended`; `ended` is the only final one.
    pub processing_status: String,
    pub request_counts: RequestCounts,
    /// RFC 3339.
    pub created_at: Option<String>,
    pub ended_at: Option<String>,
    pub expires_at: Option<String>,
    pub cancel_initiated_at: Option<String>,
    pub archived_at: Option<String>,
    /// Absolute; set once the batch has ended.
    pub results_url: Option<String>,
}

/// `MessageBatchRequestCounts`: every count but `processing` stays 0 until
/// the batch has ended.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RequestCounts {
    pub processing: u64,
    pub succeeded: u64,
    pub errored: u64,
    pub canceled: u64,
    pub expired: u64,
}

impl RequestCounts {
    /// The counts always add up to the batch's requests.
    pub fn total(&self) -> u64 {
        self.processing + self.succeeded + self.errored + self.canceled + self.expired
    }
}

/// One page of `GET /v1/messages/batches`, newest first.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct BatchPage {
    pub data: Vec<MessageBatch>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// One line of the results stream.
#[derive(Debug, Clone, Deserialize)]
pub struct ResultLine {
    pub custom_id: String,
    pub result: BatchResult,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchResult {
    Succeeded {
        message: Message,
    },
    Errored {
        #[serde(default)]
        error: Value,
    },
    Canceled,
    Expired,
}

/// A `Message`: the API documents `content` (a list of blocks) and `usage`
/// on every one; a line without them is not an answer (`classify_line`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Message {
    pub content: Option<Vec<Value>>,
    pub usage: Option<Usage>,
    pub stop_reason: Option<String>,
}

/// `Usage` of one message; cache counts are billed apart from input.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
}

/// `MessageBatchErroredResult.error`, an `ErrorResponse`
/// (`{"type":"error","error":{"type","message"},"request_id"}`); a bare
/// error object is read too.
pub fn error_parts(error: &Value) -> (String, String, Option<String>) {
    let inner = match error.get("error") {
        Some(e @ Value::Object(_)) => e,
        _ => error,
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let kind = text(inner.get("type"))
        .filter(|t| t != "error")
        .unwrap_or_else(|| "api_error".to_string());
    let message = text(inner.get("message")).unwrap_or_default();
    let request_id = text(error.get("request_id"));
    (kind, message, request_id)
}
