//! Wire types of the OpenAI Files and Batches APIs, deserialized leniently.
//!
//! The same client talks to OpenAI, Azure OpenAI, LiteLLM proxies and home-grown
//! servers, so every field the spec does not strictly need is optional, and a
//! field with an unexpected shape becomes `None` instead of failing the whole
//! object. Only `id` and `status` of a batch are required:
//! without them the object cannot be tracked at all.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A file object (`POST /files`, `GET /files/{id}`; OpenAPI spec, `OpenAIFile`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FileObject {
    #[serde(deserialize_with = "lenient::id")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub object: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub created_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub expires_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub filename: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub purpose: Option<String>,
    /// Deprecated upstream (`uploaded|processed|error`) but still sent.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub status_details: Option<String>,
}

/// Answer of `DELETE /files/{id}` (OpenAPI spec, `DeleteFileResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FileDeleted {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient::bool_or_false")]
    pub deleted: bool,
}

/// Lifecycle state of a batch (OpenAPI spec, `Batch.status`).
///
/// Parsed case-insensitively because Azure's REST examples show `"Validating"`
/// (Azure OpenAI batch REST docs); values this client does not know are kept,
/// not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
    Unknown(String),
}

impl BatchStatus {
    /// Parses a status leniently: case, `_`, `-` and spaces are ignored, and the
    /// American spellings (`canceled`, which Anthropic and some proxies use) are accepted.
    pub fn parse(raw: &str) -> BatchStatus {
        let norm: String = raw
            .chars()
            .filter(|c| !matches!(c, '_' | '-' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        match norm.as_str() {
            "validating" => BatchStatus::Validating,
            "failed" => BatchStatus::Failed,
            "inprogress" => BatchStatus::InProgress,
            "finalizing" => BatchStatus::Finalizing,
            "completed" => BatchStatus::Completed,
            "expired" => BatchStatus::Expired,
            "cancelling" | "canceling" => BatchStatus::Cancelling,
            "cancelled" | "canceled" => BatchStatus::Cancelled,
            _ => BatchStatus::Unknown(raw.to_string()),
        }
    }

    /// The canonical wire spelling (the original text for unknown values).
    pub fn as_str(&self) -> &str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
            BatchStatus::Unknown(s) => s,
        }
    }

    /// `completed`, `failed`, `expired` and `cancelled` end a batch.
    /// An unknown status is not terminal: the caller keeps polling and decides
    /// for itself how long to tolerate it.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            BatchStatus::Completed
                | BatchStatus::Failed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BatchStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(BatchStatus::parse(&raw))
    }
}

impl Serialize for BatchStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `request_counts` of a batch. Azure's old REST examples send nulls (Azure
/// OpenAI batch REST docs), and the counts need not add up on expired or
/// cancelled batches (warmbly/warmbly#333, BerriAI/litellm#36034).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct RequestCounts {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub total: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub completed: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub failed: Option<u64>,
}

/// One validation error of a failed batch (OpenAPI spec, `BatchError`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct BatchError {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub message: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub param: Option<String>,
    /// Line number in the input file, when the error is about one line.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub line: Option<u64>,
}

/// The `errors` list of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct BatchErrors {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub object: Option<String>,
    #[serde(default, deserialize_with = "lenient::vec_or_empty")]
    pub data: Vec<BatchError>,
}

/// Token usage of a whole batch; only filled for batches created after
/// 2025-09-07 (OpenAPI spec, `Batch.usage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct BatchUsage {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub total_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_object")]
    pub input_tokens_details: Option<InputTokensDetails>,
    #[serde(default, deserialize_with = "lenient::opt_object")]
    pub output_tokens_details: Option<OutputTokensDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct InputTokensDetails {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct OutputTokensDetails {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub reasoning_tokens: Option<u64>,
}

/// The batch object, every field of the OpenAPI spec's `Batch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Batch {
    #[serde(deserialize_with = "lenient::id")]
    pub id: String,
    pub status: BatchStatus,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub object: Option<String>,
    /// Azure may send `null` here despite the spec (Azure OpenAI batch docs).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub endpoint: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_object")]
    pub errors: Option<BatchErrors>,
    #[serde(default, deserialize_with = "lenient::opt_id")]
    pub input_file_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub completion_window: Option<String>,
    /// `""` (Azure OpenAI batch docs' example) is normalised to `None`.
    #[serde(default, deserialize_with = "lenient::opt_id")]
    pub output_file_id: Option<String>,
    /// `""` (Azure OpenAI batch docs' example) is normalised to `None`.
    #[serde(default, deserialize_with = "lenient::opt_id")]
    pub error_file_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub created_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub in_progress_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub expires_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub finalizing_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub completed_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub failed_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub expired_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub cancelling_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_timestamp")]
    pub cancelled_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_object")]
    pub request_counts: Option<RequestCounts>,
    #[serde(default, deserialize_with = "lenient::opt_object")]
    pub usage: Option<BatchUsage>,
    #[serde(default, deserialize_with = "lenient::opt_metadata")]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Batch {
    /// The validation errors, empty when there are none.
    pub fn error_list(&self) -> &[BatchError] {
        self.errors.as_ref().map_or(&[], |e| e.data.as_slice())
    }
}

/// One page of `GET /batches` (OpenAPI spec, `ListBatchesResponse`).
///
/// An entry that is not a usable batch is skipped (and counted) rather than
/// failing the page: one odd batch must not hide the one `find_batch_by_metadata`
/// is looking for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchList {
    pub data: Vec<Batch>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    /// Entries of `data` that could not be read as batches.
    pub skipped: usize,
    /// The `after` cursor for the next page: the id of the last raw entry,
    /// as openai-python's `SyncCursorPage` pages, falling back to `last_id`.
    pub next_after: Option<String>,
}

impl<'de> Deserialize<'de> for BatchList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default, deserialize_with = "lenient::vec_value")]
            data: Vec<Value>,
            #[serde(default, deserialize_with = "lenient::bool_or_false")]
            has_more: bool,
            #[serde(default, deserialize_with = "lenient::opt_id")]
            first_id: Option<String>,
            #[serde(default, deserialize_with = "lenient::opt_id")]
            last_id: Option<String>,
        }
        let raw = Raw::deserialize(d)?;
        let next_after = raw
            .data
            .last()
            .and_then(|v| v.get("id"))
            .and_then(lenient::value_to_id)
            .or_else(|| raw.last_id.clone());
        let total = raw.data.len();
        let data: Vec<Batch> = raw
            .data
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        Ok(BatchList {
            skipped: total - data.len(),
            data,
            has_more: raw.has_more,
            first_id: raw.first_id,
            last_id: raw.last_id,
            next_after,
        })
    }
}

/// Deserializers that never fail on a surprising shape; they return `None` instead.
pub(crate) mod lenient {
    use std::collections::BTreeMap;

    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    pub use crate::provider::api_error::value_to_string;

    fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        Ok(Option::<Value>::deserialize(d)?.unwrap_or(Value::Null))
    }

    /// An id: like `value_to_string` but `""` means "no id" (Azure OpenAI
    /// batch docs' example output).
    pub fn value_to_id(v: &Value) -> Option<String> {
        value_to_string(v).filter(|s| !s.is_empty())
    }

    pub fn value_to_u64(v: &Value) -> Option<u64> {
        match v {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .map(|f| f as u64)
            }),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Unix seconds from an int, a float, a numeric string or an RFC 3339
    /// string (Azure OpenAI batch REST docs, old preview examples).
    pub fn value_to_timestamp(v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
            Value::String(s) => {
                let s = s.trim();
                if let Ok(n) = s.parse::<i64>() {
                    return Some(n);
                }
                if let Ok(f) = s.parse::<f64>() {
                    return f.is_finite().then_some(f as i64);
                }
                rfc3339_to_unix(s)
            }
            _ => None,
        }
    }

    /// RFC 3339 with `Z` or a numeric offset, and any number of fraction digits.
    fn rfc3339_to_unix(s: &str) -> Option<i64> {
        // humantime accepts only `Z`; turn `+hh:mm` into an offset applied by hand.
        let (base, offset_secs) = match s.rfind(['+', '-']) {
            Some(i) if i > 10 => {
                let (b, off) = s.split_at(i);
                let sign = if off.starts_with('-') { -1 } else { 1 };
                let mut parts = off[1..].split(':');
                let h: i64 = parts.next()?.parse().ok()?;
                let m: i64 = parts.next().unwrap_or("0").parse().ok()?;
                (b.to_string(), sign * (h * 3600 + m * 60))
            }
            _ => (s.trim_end_matches(['Z', 'z']).to_string(), 0),
        };
        let base = base.replace(' ', "T");
        // Trim the fraction to at most 9 digits; humantime rejects more.
        let base = match base.split_once('.') {
            Some((head, frac)) => format!("{head}.{}", &frac[..frac.len().min(9)]),
            None => base,
        };
        let t = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
        let secs = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).ok()?,
            Err(e) => -i64::try_from(e.duration().as_secs()).ok()?,
        };
        Some(secs - offset_secs)
    }

    pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let v = value(d)?;
        value_to_id(&v).ok_or_else(|| serde::de::Error::custom("missing or empty `id`"))
    }

    pub fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(value_to_id(&value(d)?))
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(value_to_string(&value(d)?))
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Ok(value_to_u64(&value(d)?))
    }

    pub fn opt_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(value_to_timestamp(&value(d)?))
    }

    pub fn bool_or_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(match value(d)? {
            Value::Bool(b) => b,
            Value::String(s) => s.eq_ignore_ascii_case("true"),
            _ => false,
        })
    }

    /// A nested object; a wrong shape becomes `None`.
    pub fn opt_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        Ok(match value(d)? {
            v @ Value::Object(_) => serde_json::from_value(v).ok(),
            _ => None,
        })
    }

    pub fn vec_value<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
        Ok(match value(d)? {
            Value::Array(a) => a,
            _ => Vec::new(),
        })
    }

    /// A list whose unreadable entries are dropped.
    pub fn vec_or_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        Ok(vec_value(d)?
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect())
    }

    /// String→string map; other scalar values are kept as text, nulls dropped.
    pub fn opt_metadata<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<BTreeMap<String, String>>, D::Error> {
        Ok(match value(d)? {
            Value::Object(map) => Some(
                map.into_iter()
                    .filter_map(|(k, v)| value_to_string(&v).map(|s| (k, s)))
                    .collect(),
            ),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_parses_leniently() {
        let cases = [
            ("validating", BatchStatus::Validating),
            ("Validating", BatchStatus::Validating),
            ("IN_PROGRESS", BatchStatus::InProgress),
            ("InProgress", BatchStatus::InProgress),
            ("in-progress", BatchStatus::InProgress),
            ("finalizing", BatchStatus::Finalizing),
            ("Completed", BatchStatus::Completed),
            ("failed", BatchStatus::Failed),
            ("expired", BatchStatus::Expired),
            ("cancelling", BatchStatus::Cancelling),
            ("canceling", BatchStatus::Cancelling),
            ("cancelled", BatchStatus::Cancelled),
            ("canceled", BatchStatus::Cancelled),
            ("paused", BatchStatus::Unknown("paused".into())),
        ];
        for (raw, want) in cases {
            assert_eq!(BatchStatus::parse(raw), want, "{raw}");
        }
    }

    #[test]
    fn terminal_states_are_the_four_of_section_3_4() {
        let terminal: Vec<&str> = [
            "validating",
            "failed",
            "in_progress",
            "finalizing",
            "completed",
            "expired",
            "cancelling",
            "cancelled",
            "weird",
        ]
        .into_iter()
        .filter(|s| BatchStatus::parse(s).is_terminal())
        .collect();
        assert_eq!(terminal, ["failed", "completed", "expired", "cancelled"]);
    }

    #[test]
    fn openai_batch_from_spec_example() {
        let b: Batch = serde_json::from_value(json!({
            "id": "batch_abc123", "object": "batch", "endpoint": "/v1/completions",
            "model": "gpt-5-2025-08-07", "errors": null, "input_file_id": "file-abc123",
            "completion_window": "24h", "status": "completed",
            "output_file_id": "file-cvaTdG", "error_file_id": "file-HOWS94",
            "created_at": 1711471533, "in_progress_at": 1711471538, "expires_at": 1711557933,
            "finalizing_at": 1711493133, "completed_at": 1711493163, "failed_at": null,
            "expired_at": null, "cancelling_at": null, "cancelled_at": null,
            "request_counts": {"total": 100, "completed": 95, "failed": 5},
            "usage": {"input_tokens": 1500, "input_tokens_details": {"cached_tokens": 1024},
                      "output_tokens": 500, "output_tokens_details": {"reasoning_tokens": 300},
                      "total_tokens": 2000},
            "metadata": {"customer_id": "user_123456789"}
        }))
        .unwrap();
        assert_eq!(b.status, BatchStatus::Completed);
        assert_eq!(b.endpoint.as_deref(), Some("/v1/completions"));
        assert_eq!(b.output_file_id.as_deref(), Some("file-cvaTdG"));
        assert_eq!(b.created_at, Some(1711471533));
        assert_eq!(b.failed_at, None);
        let counts = b.request_counts.unwrap();
        assert_eq!(
            (counts.total, counts.completed, counts.failed),
            (Some(100), Some(95), Some(5))
        );
        let usage = b.usage.unwrap();
        assert_eq!(
            usage.input_tokens_details.unwrap().cached_tokens,
            Some(1024)
        );
        assert_eq!(b.metadata.unwrap()["customer_id"], "user_123456789");
    }

    #[test]
    fn azure_quirks_are_tolerated() {
        // Azure OpenAI batch docs' examples: endpoint null, "" file ids,
        // capitalised status, ISO created_at, null counts.
        let b: Batch = serde_json::from_value(json!({
            "id": "batch_6287c8a4-5e38-4d5f-8a6c-2b3a1c0c1e0b",
            "endpoint": null,
            "status": "Validating",
            "output_file_id": "",
            "error_file_id": "",
            "input_file_id": "file-0123456789abcdef0123456789abcdef",
            "created_at": "2024-07-19T17:13:57.2491382+00:00",
            "request_counts": {"total": null, "completed": null, "failed": null},
            "errors": {"data": null},
            "metadata": null
        }))
        .unwrap();
        assert_eq!(b.status, BatchStatus::Validating);
        assert_eq!(b.endpoint, None);
        assert_eq!(b.output_file_id, None);
        assert_eq!(b.error_file_id, None);
        assert_eq!(b.created_at, Some(1721409237));
        assert_eq!(b.request_counts, Some(RequestCounts::default()));
        assert!(b.error_list().is_empty());
        assert_eq!(b.metadata, None);
    }

    #[test]
    fn odd_shapes_become_none_not_errors() {
        let b: Batch = serde_json::from_value(json!({
            "id": "b1", "status": "failed",
            "created_at": 1.5e9,
            "expires_at": "1711557933",
            "completed_at": "not a time",
            "request_counts": "n/a",
            "usage": [1, 2],
            "errors": {"object": "list", "data": [
                {"code": "invalid_json_line", "message": "bad", "line": 3, "param": null},
                "garbage",
                {"code": "too_many_tasks", "line": "7"}
            ]},
            "metadata": {"job": "j", "chunk": 3, "nothing": null}
        }))
        .unwrap();
        assert_eq!(b.created_at, Some(1_500_000_000));
        assert_eq!(b.expires_at, Some(1711557933));
        assert_eq!(b.completed_at, None);
        assert_eq!(b.request_counts, None);
        assert_eq!(b.usage, None);
        let errs = b.error_list();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].line, Some(3));
        assert_eq!(errs[1].line, Some(7));
        let meta = b.metadata.unwrap();
        assert_eq!(meta["chunk"], "3");
        assert!(!meta.contains_key("nothing"));
    }

    #[test]
    fn batch_requires_id_and_status() {
        assert!(serde_json::from_value::<Batch>(json!({"status": "completed"})).is_err());
        assert!(serde_json::from_value::<Batch>(json!({"id": "", "status": "completed"})).is_err());
        assert!(serde_json::from_value::<Batch>(json!({"id": "b"})).is_err());
    }

    #[test]
    fn batch_list_skips_bad_entries_and_keeps_the_cursor() {
        let l: BatchList = serde_json::from_value(json!({
            "object": "list",
            "data": [{"id": "b1", "status": "completed"}, {"id": "b2"}],
            "first_id": "b1", "last_id": "b2", "has_more": true
        }))
        .unwrap();
        assert_eq!(l.data.len(), 1);
        assert_eq!(l.skipped, 1);
        assert!(l.has_more);
        assert_eq!(l.next_after.as_deref(), Some("b2"));

        let empty: BatchList = serde_json::from_value(json!({"data": []})).unwrap();
        assert!(!empty.has_more);
        assert_eq!(empty.next_after, None);
    }

    #[test]
    fn file_object_and_delete() {
        let f: FileObject = serde_json::from_value(json!({
            "id": "file-abc", "object": "file", "bytes": 120000, "created_at": 1677610602,
            "expires_at": null, "filename": "chunk.jsonl", "purpose": "batch",
            "status": "processed", "status_details": null
        }))
        .unwrap();
        assert_eq!(f.bytes, Some(120000));
        assert_eq!(f.purpose.as_deref(), Some("batch"));
        let d: FileDeleted =
            serde_json::from_value(json!({"id": "file-abc", "deleted": true})).unwrap();
        assert!(d.deleted);
    }
}
