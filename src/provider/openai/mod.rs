//! OpenAI's Files + Batches protocol behind the provider seam. The same wire
//! protocol serves Azure OpenAI, LiteLLM proxies, llm-d's batch gateway and
//! the simulated provider.
//!
//! `client` holds the Files and Batches calls (built on the provider's HTTP
//! core, `provider::http`), `types` the lenient wire types, `lines` the
//! result-line and chat-reply classifier; this file maps them onto [`BatchBackend`] with
//! pure functions ([`remote_state`], [`batch_is_ours`]) that are
//! table-tested below.

pub mod client;
pub mod lines;
pub mod types;

use std::collections::BTreeMap;
use std::path::Path;

use super::batch::{
    BatchBackend, BatchLimits, BilledUsage, EndKind, LineError, OwnBatch, RemoteBatch, RemoteState,
    ResultLine, ResultRef, SubmitIdentity,
};
use super::error::{ErrorKind, ProviderError};
pub use client::OpenAiClient;
use lines::{LineOutcome, classify_line};
use types::{Batch, BatchStatus};

/// The endpoint every request line of a chunk names (`url`) and the batch is
/// created for; they must be equal or the batch fails with `url_mismatch`.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";

/// 50,000 requests and 200 MB per input file (OpenAPI spec,
/// `CreateBatchRequest`). Azure allows 100,000 requests (Azure OpenAI batch
/// limits); the lower bound serves both.
pub const LIMITS: BatchLimits = BatchLimits {
    max_requests: 50_000,
    max_bytes: 200 * 1000 * 1000,
};

/// The error code of a batch refused because the enqueued-token quota is
/// full; it arrives as a `failed` batch, not as an HTTP error (openai-python
/// issues #1643 and #2084), except on Azure's fail-fast regions, where the
/// create answers 400 with it (Azure OpenAI batch docs).
const TOKEN_LIMIT: &str = "token_limit_exceeded";

/// How far before the recorded intent a server's `created_at` may lie and
/// still be ours: servers' clocks are not ours.
const CLOCK_SLACK_SECS: i64 = 24 * 3600;

/// The OpenAI batch backend.
pub struct OpenAiBatches {
    client: OpenAiClient,
    name: String,
}

impl OpenAiBatches {
    pub fn new(client: OpenAiClient, name: impl Into<String>) -> Self {
        OpenAiBatches {
            client,
            name: name.into(),
        }
    }

    pub fn client(&self) -> &OpenAiClient {
        &self.client
    }
}

/// The metadata a create carries (≤ 16 pairs, OpenAPI spec `Metadata`):
/// enough to recognise the
/// batch after a crash or an unclear answer.
pub fn metadata(id: &SubmitIdentity) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("batchgrader_job".to_string(), id.job.clone()),
        ("batchgrader_chunk".to_string(), id.chunk.to_string()),
        ("batchgrader_attempt".to_string(), id.attempt.to_string()),
        ("batchgrader_submit".to_string(), id.submit.to_string()),
        ("batchgrader_plan".to_string(), id.plan.clone()),
    ])
}

/// The (chunk, attempt, submit) of a create of this job's plan, read back
/// from the metadata `metadata` wrote; `None` for anyone else's batch.
pub fn own_identity(
    m: &BTreeMap<String, String>,
    job: &str,
    plan: &str,
) -> Option<(u32, u32, u32)> {
    if m.get("batchgrader_job").map(String::as_str) != Some(job)
        || m.get("batchgrader_plan").map(String::as_str) != Some(plan)
    {
        return None;
    }
    let n = |k: &str| m.get(k)?.parse::<u32>().ok();
    Some((
        n("batchgrader_chunk")?,
        n("batchgrader_attempt")?,
        n("batchgrader_submit")?,
    ))
}

/// Did the submit with this identity make `b`? By metadata when the server
/// echoes it; otherwise by the uploaded file, which only this chunk's
/// submits use (a file is uploaded per chunk attempt), skipping batches of
/// that file that were refused (after `token_limit_exceeded` the old batch
/// of the same file has failed).
pub fn batch_is_ours(b: &Batch, staged: Option<&str>, id: &SubmitIdentity) -> bool {
    match &b.metadata {
        Some(m) if !m.is_empty() => metadata(id).iter().all(|(k, v)| m.get(k) == Some(v)),
        _ => {
            staged.is_some()
                && b.input_file_id.as_deref() == staged
                && b.status != BatchStatus::Failed
        }
    }
}

/// A batch object in the runner's terms.
pub fn remote_state(b: &Batch) -> RemoteState {
    let label = b.status.as_str().to_string();
    if !b.status.is_terminal() {
        let c = b.request_counts.clone().unwrap_or_default();
        return RemoteState::Running {
            label,
            done: c.completed.unwrap_or(0),
            failed: c.failed.unwrap_or(0),
        };
    }
    let errors = b.error_list();
    if b.status == BatchStatus::Failed {
        if let Some(e) = errors
            .iter()
            .find(|e| e.code.as_deref() == Some(TOKEN_LIMIT))
        {
            return RemoteState::Requeue {
                label,
                reason: format!(
                    "{TOKEN_LIMIT}: {}",
                    e.message
                        .as_deref()
                        .unwrap_or("the enqueued-token limit is reached")
                ),
            };
        }
        let text: Vec<String> = errors
            .iter()
            .take(5)
            .map(|e| {
                format!(
                    "{}{}: {}",
                    e.code.as_deref().unwrap_or("error"),
                    e.line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                    e.message.as_deref().unwrap_or("")
                )
            })
            .collect();
        let reason = if text.is_empty() {
            "the batch failed without saying why".to_string()
        } else {
            text.join("; ")
        };
        return RemoteState::Ended {
            label,
            end: EndKind::Failed { reason },
            results: vec![],
            usage: None,
        };
    }
    let end = match b.status {
        BatchStatus::Expired => EndKind::Expired,
        BatchStatus::Cancelled => EndKind::Cancelled,
        _ => EndKind::Completed,
    };
    // Either id may be null (or "" on Azure), and a completed batch whose
    // every request failed has only an error file
    // (ProjectTech4DevAI/kaapi-backend#723).
    let results = [("output", &b.output_file_id), ("errors", &b.error_file_id)]
        .into_iter()
        .filter_map(|(name, id)| {
            id.as_ref().filter(|i| !i.is_empty()).map(|id| ResultRef {
                name: name.to_string(),
                id: id.clone(),
            })
        })
        .collect();
    let usage = b.usage.as_ref().and_then(|u| {
        // The batch's input counts its cached tokens, as a line's does: the
        // same reading moves them out (`TokenUsage::openai`).
        let t = crate::provider::TokenUsage::openai(
            u.input_tokens?,
            u.output_tokens?,
            u.input_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            u.output_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        );
        Some(BilledUsage {
            input_tokens: t.prompt_tokens,
            output_tokens: t.completion_tokens,
            cache_read_tokens: t.cache_read_tokens,
            reasoning_tokens: t.reasoning_tokens,
        })
    });
    RemoteState::Ended {
        label,
        end,
        results,
        usage,
    }
}

/// Error-file codes of requests that never ran: the batch expired or was
/// cancelled before them (warmbly/warmbly#333, llm-d/llm-d-batch-gateway#221).
pub fn never_ran(code: &str) -> bool {
    matches!(code, "batch_expired" | "batch_cancelled")
}

fn remote(b: &Batch) -> RemoteBatch {
    RemoteBatch {
        id: b.id.clone(),
        state: remote_state(b),
    }
}

impl BatchBackend for OpenAiBatches {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> BatchLimits {
        LIMITS
    }

    async fn stage(&self, chunk: &Path, name: &str) -> Result<Option<String>, ProviderError> {
        let file = self.client.upload_batch_file(chunk, name).await?;
        Ok(Some(file.id))
    }

    async fn submit(
        &self,
        staged: Option<&str>,
        _chunk: &Path,
        identity: &SubmitIdentity,
    ) -> Result<RemoteBatch, ProviderError> {
        let Some(file_id) = staged else {
            return Err(ProviderError::config(
                "create batch",
                "no uploaded file to create the batch from",
                None,
            ));
        };
        match self
            .client
            .create_batch(file_id, CHAT_ENDPOINT, &metadata(identity))
            .await
        {
            Ok(b) => Ok(remote(&b)),
            // Azure's fail-fast queueing answers the create itself with a 400
            // naming the quota; its docs advise retrying with back-off.
            Err(e)
                if e.status() == Some(400)
                    && (e.api_error().and_then(|a| a.code.as_deref()) == Some(TOKEN_LIMIT)
                        || e.to_string().contains(TOKEN_LIMIT)) =>
            {
                Err(e.into_kind(ErrorKind::RateLimited))
            }
            Err(e) => Err(e),
        }
    }

    async fn find(
        &self,
        staged: Option<&str>,
        identity: &SubmitIdentity,
    ) -> Result<Option<RemoteBatch>, ProviderError> {
        let cutoff = i64::try_from(identity.intent_at).unwrap_or(i64::MAX) - CLOCK_SLACK_SECS;
        let found = self
            .client
            .find_batch(|b| batch_is_ours(b, staged, identity), Some(cutoff))
            .await?;
        Ok(found.as_ref().map(remote))
    }

    async fn status(&self, batch_id: &str) -> Result<RemoteBatch, ProviderError> {
        Ok(remote(&self.client.retrieve_batch(batch_id).await?))
    }

    /// By the metadata every create carries (`metadata`). A server that
    /// answers no metadata at all tells nothing: `None`.
    async fn list_own(
        &self,
        job: &str,
        plan: &str,
        since: u64,
    ) -> Result<Option<Vec<OwnBatch>>, ProviderError> {
        let cutoff = i64::try_from(since).unwrap_or(i64::MAX) - CLOCK_SLACK_SECS;
        let mut any_metadata = false;
        let listed = self
            .client
            .find_batches(
                |b| {
                    let m = b.metadata.as_ref().filter(|m| !m.is_empty());
                    any_metadata |= m.is_some();
                    m.is_some_and(|m| own_identity(m, job, plan).is_some())
                },
                Some(cutoff),
            )
            .await?;
        if !any_metadata {
            return Ok(None);
        }
        Ok(Some(
            listed
                .iter()
                .filter_map(|b| {
                    let (chunk, attempt, submit) = own_identity(b.metadata.as_ref()?, job, plan)?;
                    Some(OwnBatch {
                        chunk,
                        attempt,
                        submit,
                        batch: remote(b),
                    })
                })
                .collect(),
        ))
    }

    async fn fetch(&self, result: &ResultRef, dest: &Path) -> Result<u64, ProviderError> {
        self.client.download_file(&result.id, dest).await
    }

    /// OpenAI's ids carry no tag: a result file is the batch's own, found
    /// by its id, so every line of it is.
    fn classify(&self, line: &str, _submit: &SubmitIdentity) -> Result<ResultLine, LineError> {
        Ok(
            match classify_line(line).map_err(|e| LineError::Unreadable(e.to_string()))? {
                LineOutcome::Success(s) => ResultLine::Success {
                    custom_id: s.custom_id,
                    answer: s.content,
                    input_tokens: s.usage.prompt_tokens,
                    output_tokens: s.usage.completion_tokens,
                    cache_write_tokens: s.usage.cache_write_tokens,
                    cache_read_tokens: s.usage.cache_read_tokens,
                    reasoning_tokens: s.usage.reasoning_tokens,
                },
                LineOutcome::Failure(f) => ResultLine::Failure {
                    ran: !never_ran(&f.code),
                    custom_id: f.custom_id,
                    code: f.code,
                    message: f.message,
                    retryable: f.retryable,
                },
            },
        )
    }

    async fn cancel(&self, batch_id: &str) -> Result<(), ProviderError> {
        self.client.cancel_batch(batch_id).await.map(|_| ())
    }

    async fn clean_up(
        &self,
        staged: Option<&str>,
        _batch_id: &str,
        results: &[ResultRef],
    ) -> Result<(), ProviderError> {
        // Batch files count against storage for 30 days unless deleted (OpenAPI
        // spec, `FileExpirationAfter`).
        let mut first_err = None;
        for id in staged
            .into_iter()
            .chain(results.iter().map(|r| r.id.as_str()))
        {
            if let Err(e) = self.client.delete_file(id).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(json: serde_json::Value) -> Batch {
        serde_json::from_value(json).unwrap()
    }

    fn ident() -> SubmitIdentity {
        SubmitIdentity {
            job: "j".into(),
            chunk: 2,
            attempt: 1,
            submit: 1,
            plan: "abc".into(),
            intent_at: 1_700_000_000,
            requests: 10,
        }
    }

    #[test]
    fn remote_state_table() {
        let r = |name: &str, id: &str| ResultRef {
            name: name.into(),
            id: id.into(),
        };
        let cases: Vec<(&str, serde_json::Value, RemoteState)> = vec![
            (
                "validating is running with zero counts",
                serde_json::json!({"id":"b","status":"validating"}),
                RemoteState::Running {
                    label: "validating".into(),
                    done: 0,
                    failed: 0,
                },
            ),
            (
                "in progress with counts",
                serde_json::json!({"id":"b","status":"in_progress","request_counts":{"total":10,"completed":4,"failed":1}}),
                RemoteState::Running {
                    label: "in_progress".into(),
                    done: 4,
                    failed: 1,
                },
            ),
            (
                "an unknown status keeps polling",
                serde_json::json!({"id":"b","status":"paused"}),
                RemoteState::Running {
                    label: "paused".into(),
                    done: 0,
                    failed: 0,
                },
            ),
            (
                "completed with both files",
                serde_json::json!({"id":"b","status":"completed","output_file_id":"f1","error_file_id":"f2","usage":{"input_tokens":10,"output_tokens":3}}),
                RemoteState::Ended {
                    label: "completed".into(),
                    end: EndKind::Completed,
                    results: vec![r("output", "f1"), r("errors", "f2")],
                    usage: Some(BilledUsage {
                        input_tokens: 10,
                        output_tokens: 3,
                        cache_read_tokens: 0,
                        reasoning_tokens: 0,
                    }),
                },
            ),
            (
                "completed with every request failed: only an error file (kaapi #723); Azure's empty string",
                serde_json::json!({"id":"b","status":"completed","output_file_id":"","error_file_id":"f2"}),
                RemoteState::Ended {
                    label: "completed".into(),
                    end: EndKind::Completed,
                    results: vec![r("errors", "f2")],
                    usage: None,
                },
            ),
            (
                "expired with partial output",
                serde_json::json!({"id":"b","status":"expired","output_file_id":"f1","error_file_id":"f2"}),
                RemoteState::Ended {
                    label: "expired".into(),
                    end: EndKind::Expired,
                    results: vec![r("output", "f1"), r("errors", "f2")],
                    usage: None,
                },
            ),
            (
                "cancelled, Anthropic spelling",
                serde_json::json!({"id":"b","status":"canceled","output_file_id":"f1"}),
                RemoteState::Ended {
                    label: "cancelled".into(),
                    end: EndKind::Cancelled,
                    results: vec![r("output", "f1")],
                    usage: None,
                },
            ),
            (
                "token_limit_exceeded is a requeue, not a failure",
                serde_json::json!({"id":"b","status":"failed","errors":{"data":[{"code":"token_limit_exceeded","message":"Enqueued token limit reached"}]}}),
                RemoteState::Requeue {
                    label: "failed".into(),
                    reason: "token_limit_exceeded: Enqueued token limit reached".into(),
                },
            ),
            (
                "validation failure names the line",
                serde_json::json!({"id":"b","status":"failed","errors":{"data":[{"code":"invalid_json_line","line":3,"message":"bad"}]}}),
                RemoteState::Ended {
                    label: "failed".into(),
                    end: EndKind::Failed {
                        reason: "invalid_json_line (line 3): bad".into(),
                    },
                    results: vec![],
                    usage: None,
                },
            ),
            (
                "failed without errors",
                serde_json::json!({"id":"b","status":"failed"}),
                RemoteState::Ended {
                    label: "failed".into(),
                    end: EndKind::Failed {
                        reason: "the batch failed without saying why".into(),
                    },
                    results: vec![],
                    usage: None,
                },
            ),
        ];
        for (name, json, want) in cases {
            assert_eq!(remote_state(&batch(json)), want, "{name}");
        }
    }

    #[test]
    fn own_identity_reads_back_what_a_create_carried() {
        let id = ident();
        let m = metadata(&id);
        assert_eq!(
            own_identity(&m, &id.job, &id.plan),
            Some((id.chunk, id.attempt, id.submit))
        );
        assert_eq!(own_identity(&m, "another-job", &id.plan), None);
        assert_eq!(own_identity(&m, &id.job, "another-plan"), None);
        let mut broken = m.clone();
        broken.insert("batchgrader_chunk".into(), "x".into());
        assert_eq!(own_identity(&broken, &id.job, &id.plan), None);
        let mut partial = m;
        partial.remove("batchgrader_submit");
        assert_eq!(own_identity(&partial, &id.job, &id.plan), None);
    }

    #[test]
    fn ownership_table() {
        let id = ident();
        let meta = serde_json::json!(metadata(&id));
        let mut other = metadata(&id);
        other.insert("batchgrader_submit".into(), "2".into());
        let cases: Vec<(&str, serde_json::Value, Option<&str>, bool)> = vec![
            (
                "metadata matches",
                serde_json::json!({"id":"b","status":"in_progress","metadata":meta}),
                Some("f"),
                true,
            ),
            (
                "another submit of the same chunk",
                serde_json::json!({"id":"b","status":"in_progress","metadata":other}),
                Some("f"),
                false,
            ),
            (
                "no metadata, same file",
                serde_json::json!({"id":"b","status":"in_progress","input_file_id":"f"}),
                Some("f"),
                true,
            ),
            (
                "no metadata, same file, refused earlier",
                serde_json::json!({"id":"b","status":"failed","input_file_id":"f"}),
                Some("f"),
                false,
            ),
            (
                "no metadata, other file",
                serde_json::json!({"id":"b","status":"in_progress","input_file_id":"g"}),
                Some("f"),
                false,
            ),
            (
                "no metadata, nothing staged",
                serde_json::json!({"id":"b","status":"in_progress","input_file_id":"f"}),
                None,
                false,
            ),
        ];
        for (name, json, staged, want) in cases {
            assert_eq!(batch_is_ours(&batch(json), staged, &id), want, "{name}");
        }
    }
}
