//! `OpenAiClient`: the Files and Batches calls of OpenAI's API (OpenAPI
//! spec, `/files` and `/batches` paths), built on the provider's HTTP core
//! (`provider/http`), which sends them, retries them and reads their answers.
//!
//! `create batch` is a `Replay::Create`: the SDKs send no idempotency key
//! (openai-python `_base_client.py`, `_idempotency_header`), so a timeout, a
//! broken connection or a 5xx there is returned as an *unclear* error, and
//! the caller looks for the batch by its metadata before creating another
//! (ARCHITECTURE.md, "Crash protocol", step 3).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use reqwest::Method;

use super::types::{Batch, BatchList, FileDeleted, FileObject};
use crate::provider::config::{ClientConfig, encode_path_segment};
use crate::provider::error::ProviderError;
use crate::provider::http::{Api, Auth, Call, HttpClient, Payload, Replay};
use crate::provider::watch::CallWatch;

/// `GET /batches` allows 1..=100 (OpenAPI spec, `limit` of `/batches`).
const LIST_LIMIT_MAX: u32 = 100;
/// Metadata limits (OpenAPI spec, `Metadata`).
const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY: usize = 64;
const METADATA_MAX_VALUE: usize = 512;

/// What the core's errors say of an OpenAI-compatible server.
const API: Api = Api {
    name: "OpenAI-compatible",
    not_found_hint,
};

fn not_found_hint(base: &str) -> String {
    format!(
        "check the id (files expire after 30 days); a server without the Files and Batches API, \
         such as plain vLLM, also answers 404: use `mode: direct` for it ({base})"
    )
}

/// An OpenAI-compatible Files + Batches client.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    core: HttpClient,
}

impl OpenAiClient {
    pub fn new(config: ClientConfig) -> Result<OpenAiClient, ProviderError> {
        Ok(OpenAiClient {
            core: HttpClient::new(config, Auth::Bearer, API)?,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        self.core.config()
    }

    /// The calls this client (and its clones) has out.
    pub fn watch(&self) -> &CallWatch {
        self.core.watch()
    }

    /// `POST /files` with `purpose=batch` (OpenAPI spec, `CreateFileRequest`).
    /// Retried like any call: a duplicate upload costs nothing and expires
    /// after 30 days.
    pub async fn upload_batch_file(
        &self,
        path: &Path,
        filename: &str,
    ) -> Result<FileObject, ProviderError> {
        let op = format!("upload file {filename}");
        // OpenAI refuses a batch input whose name does not end in .jsonl (the
        // error is quoted in BerriAI/litellm#37527).
        if !filename.ends_with(".jsonl") {
            return Err(ProviderError::config(
                op,
                format!("file name `{filename}` must end in .jsonl"),
                None,
            ));
        }
        let call = Call {
            payload: Payload::Upload {
                path,
                filename,
                mime: "application/jsonl",
                fields: &[("purpose", "batch")],
            },
            ..self.core.call(op, Method::POST, "files")?
        };
        let reply = self.core.execute_text(&call).await?;
        self.core.parse(&call.op, &reply)
    }

    /// `POST /batches` with `completion_window: "24h"` (OpenAPI spec,
    /// `CreateBatchRequest`).
    ///
    /// An error with `is_unclear()` means the batch may exist: list batches
    /// and adopt the one with this metadata before creating again.
    pub async fn create_batch(
        &self,
        input_file_id: &str,
        endpoint: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Batch, ProviderError> {
        let op = format!("create batch from {input_file_id}");
        check_metadata(&op, metadata)?;
        let mut body = serde_json::json!({
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
        });
        if !metadata.is_empty() {
            body["metadata"] = serde_json::json!(metadata);
        }
        let call = Call {
            payload: Payload::Json(body.to_string()),
            replay: Replay::Create,
            ..self.core.call(op, Method::POST, "batches")?
        };
        let reply = self.core.execute_text(&call).await?;
        // The server answered 2xx: the batch exists even if we cannot read it.
        self.core
            .parse(&call.op, &reply)
            .map_err(ProviderError::into_unclear)
    }

    /// `GET /batches/{id}`.
    pub async fn retrieve_batch(&self, id: &str) -> Result<Batch, ProviderError> {
        let call = self.core.call(
            format!("retrieve batch {id}"),
            Method::GET,
            &format!("batches/{}", encode_path_segment(id)),
        )?;
        let reply = self.core.execute_text(&call).await?;
        self.core.parse(&call.op, &reply)
    }

    /// `GET /batches?after=&limit=` (limit clamped to 1..=100, as the OpenAPI
    /// spec allows).
    pub async fn list_batches(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<BatchList, ProviderError> {
        let mut call = self
            .core
            .call("list batches".to_string(), Method::GET, "batches")?;
        {
            let mut q = call.url.query_pairs_mut();
            if let Some(a) = after {
                q.append_pair("after", a);
            }
            q.append_pair("limit", &limit.clamp(1, LIST_LIMIT_MAX).to_string());
        }
        let reply = self.core.execute_text(&call).await?;
        self.core.parse(&call.op, &reply)
    }

    /// Walks `GET /batches` page by page (`after` = id of the last entry, as
    /// openai-python's `SyncCursorPage`) and returns the first batch whose
    /// metadata `matches`.
    ///
    /// Stops when `has_more` is false, a page is empty, or a cursor repeats.
    /// The spec promises no order, so `stop_before_created_at` ends the walk
    /// only after a whole page of batches created before it.
    pub async fn find_batch_by_metadata(
        &self,
        matches: impl Fn(&BTreeMap<String, String>) -> bool,
        stop_before_created_at: Option<i64>,
    ) -> Result<Option<Batch>, ProviderError> {
        self.find_batch(
            |b| b.metadata.as_ref().is_some_and(&matches),
            stop_before_created_at,
        )
        .await
    }

    /// Like `find_batch_by_metadata`, with any test on the whole batch (for
    /// servers that do not echo metadata, the input file id identifies it).
    pub async fn find_batch(
        &self,
        matches: impl Fn(&Batch) -> bool,
        stop_before_created_at: Option<i64>,
    ) -> Result<Option<Batch>, ProviderError> {
        let mut after: Option<String> = None;
        let mut cursors = HashSet::new();
        loop {
            let page = self.list_batches(after.as_deref(), LIST_LIMIT_MAX).await?;
            let found = page.data.iter().find(|b| matches(b));
            if let Some(b) = found {
                return Ok(Some(b.clone()));
            }
            let raw_empty = page.data.is_empty() && page.skipped == 0;
            let all_older = stop_before_created_at.is_some_and(|cutoff| {
                !page.data.is_empty()
                    && page
                        .data
                        .iter()
                        .all(|b| b.created_at.is_some_and(|c| c < cutoff))
            });
            if !page.has_more || raw_empty || all_older {
                return Ok(None);
            }
            match page.next_after {
                Some(c) if cursors.insert(c.clone()) => after = Some(c),
                // A server that repeats a cursor would keep us here forever.
                _ => return Ok(None),
            }
        }
    }

    /// Every listed batch that `matches`, walking `GET /batches` with
    /// `limit`/`after` as `find_batch` does, to the end or to a whole page
    /// created before `stop_before_created_at`.
    pub async fn find_batches(
        &self,
        mut matches: impl FnMut(&Batch) -> bool,
        stop_before_created_at: Option<i64>,
    ) -> Result<Vec<Batch>, ProviderError> {
        let mut after: Option<String> = None;
        let mut cursors = HashSet::new();
        let mut found = Vec::new();
        loop {
            let page = self.list_batches(after.as_deref(), LIST_LIMIT_MAX).await?;
            found.extend(page.data.iter().filter(|b| matches(b)).cloned());
            let raw_empty = page.data.is_empty() && page.skipped == 0;
            let all_older = stop_before_created_at.is_some_and(|cutoff| {
                !page.data.is_empty()
                    && page
                        .data
                        .iter()
                        .all(|b| b.created_at.is_some_and(|c| c < cutoff))
            });
            if !page.has_more || raw_empty || all_older {
                return Ok(found);
            }
            match page.next_after {
                Some(c) if cursors.insert(c.clone()) => after = Some(c),
                _ => return Ok(found),
            }
        }
    }

    /// `POST /batches/{id}/cancel` (OpenAPI spec, `/batches/{batch_id}/cancel`).
    /// Idempotent, so retried normally.
    pub async fn cancel_batch(&self, id: &str) -> Result<Batch, ProviderError> {
        let call = self.core.call(
            format!("cancel batch {id}"),
            Method::POST,
            &format!("batches/{}/cancel", encode_path_segment(id)),
        )?;
        let reply = self.core.execute_text(&call).await?;
        self.core.parse(&call.op, &reply)
    }

    /// `GET /files/{id}/content` streamed to `<dest>.tmp`, fsynced, then
    /// renamed to `dest`. Returns the number of bytes written. A stall
    /// longer than `request_timeout` counts as a timeout and is retried.
    pub async fn download_file(&self, id: &str, dest: &Path) -> Result<u64, ProviderError> {
        let call = self.core.call(
            format!("download file {id}"),
            Method::GET,
            &format!("files/{}/content", encode_path_segment(id)),
        )?;
        self.core.download(call, dest).await
    }

    /// `DELETE /files/{id}` (OpenAPI spec, `DeleteFileResponse`). An empty 2xx
    /// body counts as deleted.
    pub async fn delete_file(&self, id: &str) -> Result<FileDeleted, ProviderError> {
        let call = self.core.call(
            format!("delete file {id}"),
            Method::DELETE,
            &format!("files/{}", encode_path_segment(id)),
        )?;
        let reply = self.core.execute_text(&call).await?;
        if reply.body.trim().is_empty() {
            return Ok(FileDeleted {
                id: Some(id.to_string()),
                deleted: true,
            });
        }
        self.core.parse(&call.op, &reply)
    }
}

/// Metadata limits of the OpenAPI spec's `Metadata`, checked before spending
/// a request on them.
fn check_metadata(op: &str, metadata: &BTreeMap<String, String>) -> Result<(), ProviderError> {
    let problem = if metadata.len() > METADATA_MAX_PAIRS {
        Some(format!(
            "metadata has {} pairs; at most {METADATA_MAX_PAIRS} are allowed",
            metadata.len()
        ))
    } else if let Some(k) = metadata
        .keys()
        .find(|k| k.chars().count() > METADATA_MAX_KEY)
    {
        Some(format!(
            "metadata key `{k}` is longer than {METADATA_MAX_KEY} characters"
        ))
    } else {
        metadata
            .iter()
            .find(|(_, v)| v.chars().count() > METADATA_MAX_VALUE)
            .map(|(k, _)| {
                format!("metadata value of `{k}` is longer than {METADATA_MAX_VALUE} characters")
            })
    };
    match problem {
        Some(p) => Err(ProviderError::config(op, p, None)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::error::ErrorKind;

    #[test]
    fn metadata_limits() {
        let ok: BTreeMap<String, String> = (0..16).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_metadata("create batch", &ok).is_ok());
        let too_many: BTreeMap<String, String> =
            (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        let long_key = BTreeMap::from([("k".repeat(65), "v".to_string())]);
        let long_value = BTreeMap::from([("k".to_string(), "v".repeat(513))]);
        for m in [too_many, long_key, long_value] {
            let e = check_metadata("create batch", &m).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
        }
    }

    #[test]
    fn clients_build_for_http_and_https() {
        use crate::provider::config::Secret;
        for base in ["http://127.0.0.1:9/v1", "https://api.openai.com/v1"] {
            let c = OpenAiClient::new(ClientConfig::new(base, Secret::new("sk-x"), "K"));
            assert!(c.is_ok(), "{base}: {:?}", c.err());
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        use crate::provider::config::Secret;
        let c = OpenAiClient::new(ClientConfig::new(
            "http://127.0.0.1:9/v1",
            Secret::new("sk-very-secret"),
            "K",
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }
}
