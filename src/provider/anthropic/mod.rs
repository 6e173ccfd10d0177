//! Anthropic's Message Batches API behind the provider seam
//! (`POST /v1/messages/batches` with inline requests, retrieve, list,
//! cancel, delete, and the `results_url` stream).
//!
//! Built on the provider's HTTP core (`provider/http`: one retry loop,
//! streamed downloads, unclear creates) with Anthropic's headers
//! (`Auth::Anthropic`); `types` are this API's wire types, `encode` turns
//! a chunk file into a create body (and one request line into the Messages
//! params direct mode sends), `reply` reads a direct `POST /v1/messages`
//! answer.
//!
//! **Crash safety without metadata.** A message batch carries no metadata,
//! so a create that may have happened (a timeout, a 5xx, a kill between
//! the recorded intent and the recorded id) cannot be found by a label.
//! Instead every `custom_id` of a create carries a tag, a hash of the
//! submit's identity (job, chunk, attempt, submit number, plan), and
//! [`BatchBackend::find`] proves ownership by results:
//!
//! 1. list the batches created since the recorded intent (less a clock
//!    slack), newest first, and keep those with exactly the chunk's number
//!    of requests (the counts always add up to it);
//! 2. an ended candidate is read: the first line of its results names a
//!    `custom_id`, whose tag says whether the batch is this submit's;
//! 3. a candidate still running cannot be told apart (the API shows no
//!    request of a running batch): `find` answers with an *unclear* error,
//!    the chunk is parked and looks again later, until the candidate has
//!    ended. A second batch of the same requests is never created while one
//!    may be live.
//!
//! Only when no candidate is left is the create made again.

pub mod encode;
pub mod reply;
pub mod types;

use std::path::Path;

use reqwest::Method;

use super::batch::{
    BatchBackend, BatchLimits, EndKind, LineError, RemoteBatch, RemoteState, ResultLine, ResultRef,
    SubmitIdentity,
};
use super::config::{ClientConfig, encode_path_segment};
use super::error::{ErrorKind, ProviderError};
use super::http::{Api, Auth, HttpClient};
use types::{BatchPage, BatchResult, MessageBatch};

/// The public endpoint (anthropic-sdk-python `_client.py`); paths start
/// with `/v1`, so a base URL has no `/v1` suffix.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Overrides the spec's base URL, as in the SDK.
pub const BASE_URL_ENV: &str = "ANTHROPIC_BASE_URL";

const BATCHES: &str = "v1/messages/batches";

/// 100,000 requests and 256 MB per batch, whichever comes first (batch
/// processing guide). A create body is smaller than the chunk file it is
/// made from (no `method` and `url` per line), so the chunk's size bounds it.
pub const LIMITS: BatchLimits = BatchLimits {
    max_requests: 100_000,
    max_bytes: 256 * 1000 * 1000,
};

/// `GET /v1/messages/batches` allows `limit` 1..=1000.
const LIST_PAGE: u32 = 100;

/// How far before the recorded intent a batch's `created_at` may lie and
/// still be ours: the server's clock is not ours. Small, because every
/// batch of the same size in the window must end before a create that may
/// have happened can be judged.
pub const CLOCK_SLACK_SECS: i64 = 600;

/// What the HTTP core's errors say of a Message Batches server.
const API: Api = Api {
    name: "Anthropic Message Batches",
    not_found_hint,
};

fn not_found_hint(base: &str) -> String {
    format!(
        "check the id and that {base} serves the Message Batches API (the base URL has no /v1 \
         suffix); batches can be read for 29 days"
    )
}

/// The Message Batches backend.
pub struct AnthropicBatches {
    client: HttpClient,
    name: String,
}

impl AnthropicBatches {
    pub fn new(
        config: ClientConfig,
        version: &str,
        name: impl Into<String>,
    ) -> Result<Self, ProviderError> {
        Ok(AnthropicBatches {
            client: HttpClient::new(config, Auth::Anthropic { version }, API)?,
            name: name.into(),
        })
    }

    /// The client configuration from the environment: the key from
    /// `api_key_env`, the base URL from `ANTHROPIC_BASE_URL`, else the
    /// spec's, else the public endpoint.
    pub fn config_from_env(
        base_url: Option<&str>,
        api_key_env: &str,
    ) -> Result<ClientConfig, ProviderError> {
        ClientConfig::from_lookup_for(
            base_url,
            api_key_env,
            (BASE_URL_ENV, DEFAULT_BASE_URL),
            |n| std::env::var(n).ok(),
        )
    }

    /// The calls out, for the live view's waiting line.
    pub fn watch(&self) -> &crate::provider::CallWatch {
        self.client.watch()
    }

    fn locate(&self, op: &str, results_url: &str) -> Result<String, ProviderError> {
        results_location(&self.client.config().base_url, results_url)
            .map_err(|e| ProviderError::new(op, ErrorKind::Protocol).with_detail(e))
    }

    async fn retrieve(&self, id: &str) -> Result<MessageBatch, ProviderError> {
        self.client
            .get_json(
                format!("retrieve message batch {id}"),
                &format!("{BATCHES}/{}", encode_path_segment(id)),
            )
            .await
    }

    /// Every batch created at or after `cutoff` (Unix seconds), walking
    /// the newest-first list until a page ends before it.
    async fn list_since(&self, cutoff: i64) -> Result<Vec<MessageBatch>, ProviderError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut path = format!("{BATCHES}?limit={LIST_PAGE}");
            if let Some(a) = &after {
                path.push_str(&format!("&after_id={}", encode_path_segment(a)));
            }
            let page: BatchPage = self
                .client
                .get_json("list message batches".to_string(), &path)
                .await?;
            let older = page
                .data
                .iter()
                .any(|b| created_secs(b).is_some_and(|c| c < cutoff));
            out.extend(
                page.data
                    .into_iter()
                    .filter(|b| created_secs(b).is_none_or(|c| c >= cutoff)),
            );
            match page.last_id {
                Some(last) if page.has_more && !older && seen.insert(last.clone()) => {
                    after = Some(last);
                }
                _ => return Ok(out),
            }
        }
    }
}

/// The tag that marks every `custom_id` of one submit: 10 hex digits of a
/// hash of its identity.
pub fn tag(id: &SubmitIdentity) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        id.job.as_str(),
        &id.chunk.to_string(),
        &id.attempt.to_string(),
        &id.submit.to_string(),
        id.plan.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    crate::hex::lower(&h.finalize()[..5])
}

/// `r12` with tag `0a1b2c3d4e` → `r12_0a1b2c3d4e`.
pub fn tagged(custom_id: &str, tag: &str) -> String {
    format!("{custom_id}_{tag}")
}

/// The custom id a result line names, split into the chunk's own id and
/// the tag (if it has one).
pub fn untag(custom_id: &str) -> (&str, Option<&str>) {
    match custom_id.rsplit_once('_') {
        Some((id, tag))
            if tag.len() == 10 && tag.bytes().all(|b| b.is_ascii_hexdigit()) && !id.is_empty() =>
        {
            (id, Some(tag))
        }
        _ => (custom_id, None),
    }
}

/// `created_at` in Unix seconds; RFC 3339 (`Z` or an offset).
pub fn created_secs(b: &MessageBatch) -> Option<i64> {
    rfc3339_secs(b.created_at.as_deref()?)
}

fn rfc3339_secs(s: &str) -> Option<i64> {
    let s = s.trim();
    // humantime reads `Z` only; an explicit zero offset is the same time.
    let z = match s.strip_suffix("+00:00") {
        Some(rest) => format!("{rest}Z"),
        None => s.to_string(),
    };
    let t = humantime::parse_rfc3339_weak(&z).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
}

/// Where to read a `results_url` from. On the base URL's own host it is
/// used as given. On another host (a gateway in front of the API, a server
/// that names itself `localhost` while it is reached as `127.0.0.1`) the key
/// must not follow it there: the documented results path
/// (`/v1/messages/batches/{id}/results`) is read through the base URL
/// instead.
pub fn results_location(base_url: &str, results_url: &str) -> Result<String, String> {
    let parse = |s: &str| reqwest::Url::parse(s).map_err(|e| format!("`{s}`: {e}"));
    let (base, url) = (parse(base_url)?, parse(results_url)?);
    let origin = |u: &reqwest::Url| {
        (
            u.scheme().to_string(),
            u.host_str().map(str::to_ascii_lowercase),
            u.port_or_known_default(),
        )
    };
    if origin(&base) == origin(&url) {
        return Ok(results_url.to_string());
    }
    let path = url.path();
    let Some(i) = path.find("/v1/messages/batches/") else {
        return Err(format!(
            "the results URL {results_url} is on another host than {base_url} and is not a \
             Message Batches results path"
        ));
    };
    let mut out = format!("{}{}", base_url.trim_end_matches('/'), &path[i..]);
    if let Some(q) = url.query() {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A batch in the runner's terms. Counts are only final once the batch
/// has ended (they stay 0 before), so a running batch shows as running.
pub fn remote_state(b: &MessageBatch) -> RemoteState {
    let label = b.processing_status.clone();
    if b.processing_status != "ended" {
        return RemoteState::Running {
            label: if label.is_empty() {
                "in_progress".into()
            } else {
                label
            },
            done: b.request_counts.succeeded,
            failed: b.request_counts.errored,
        };
    }
    let c = &b.request_counts;
    let end = if b.cancel_initiated_at.is_some() || c.canceled > 0 {
        EndKind::Cancelled
    } else if c.expired > 0 {
        EndKind::Expired
    } else {
        EndKind::Completed
    };
    let results = b
        .results_url
        .iter()
        .filter(|u| !u.is_empty())
        .map(|u| ResultRef {
            name: "results".into(),
            id: u.clone(),
        })
        .collect();
    RemoteState::Ended {
        label,
        end,
        results,
        // Message batches report no usage of their own; the lines' usage is
        // summed instead.
        usage: None,
    }
}

fn remote(b: &MessageBatch) -> RemoteBatch {
    RemoteBatch {
        id: b.id.clone(),
        state: remote_state(b),
    }
}

/// Error types that retrying the same request cannot fix
/// (anthropic-sdk-python `types/shared/error_type.py`): the request itself
/// must change, or the account. Anything else (`api_error`,
/// `overloaded_error`, `rate_limit_error`, `timeout_error`, a type added
/// later) is worth sending again, up to `retry.max_attempts`.
pub fn error_is_final(kind: &str) -> bool {
    matches!(
        kind,
        "invalid_request_error"
            | "authentication_error"
            | "permission_error"
            | "not_found_error"
            | "billing_error"
            | "request_too_large"
    )
}

/// One line of a results stream in the runner's terms. The custom id is
/// given back without its tag.
pub fn classify_line(line: &str) -> Result<ResultLine, String> {
    classify_tagged(line).map(|(r, _)| r)
}

/// A line of the results of the create tagged `own`: every line must carry
/// that tag, which proves it this submit's (a line of another create, or
/// with no tag, is named and not merged).
pub fn classify_own(line: &str, own: &str) -> Result<ResultLine, LineError> {
    let (result, tag) = classify_tagged(line).map_err(LineError::Unreadable)?;
    match tag.as_deref() {
        Some(t) if t == own => Ok(result),
        Some(t) => Err(LineError::NotThisSubmit(format!(
            "the result for `{}` carries the tag {t} of another create, not this one's ({own})",
            result.custom_id()
        ))),
        None => Err(LineError::NotThisSubmit(format!(
            "the result for `{}` carries no create tag (this create's is {own})",
            result.custom_id()
        ))),
    }
}

fn classify_tagged(line: &str) -> Result<(ResultLine, Option<String>), String> {
    if !crate::provider::bounded::is_json_object(line) {
        return Err("not a result line: not a JSON object".to_string());
    }
    let parsed: types::ResultLine =
        serde_json::from_str(line.trim()).map_err(|e| format!("not a result line: {e}"))?;
    let (id, tag) = untag(&parsed.custom_id);
    let (custom_id, tag) = (id.to_string(), tag.map(str::to_string));
    let result = classify_result(custom_id, parsed.result);
    Ok((result, tag))
}

fn classify_result(custom_id: String, result: BatchResult) -> ResultLine {
    match result {
        BatchResult::Succeeded { message } => match (message.content, message.usage) {
            (Some(content), Some(u)) => ResultLine::Success {
                custom_id,
                answer: answer_text(&content),
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cache_write_tokens: u.cache_creation_input_tokens.unwrap_or(0),
                cache_read_tokens: u.cache_read_input_tokens.unwrap_or(0),
                reasoning_tokens: 0,
            },
            // `{"type":"succeeded","message":{}}` is a server fault, not an
            // empty answer to blame on the model: retried like a 5xx.
            (content, _) => ResultLine::Failure {
                custom_id,
                code: "bad_response".into(),
                message: format!(
                    "a succeeded result whose message has no {}",
                    if content.is_none() {
                        "`content` list"
                    } else {
                        "`usage`"
                    }
                ),
                retryable: true,
                ran: true,
            },
        },
        BatchResult::Errored { error } => {
            let (kind, message, request_id) = types::error_parts(&error);
            let message = match request_id {
                Some(r) => format!("{message} (request id {r})"),
                None => message,
            };
            ResultLine::Failure {
                custom_id,
                retryable: !error_is_final(&kind),
                code: kind,
                message,
                ran: true,
            }
        }
        BatchResult::Canceled => ResultLine::Failure {
            custom_id,
            code: "canceled".into(),
            message: "the batch was canceled before this request ran".into(),
            retryable: true,
            ran: false,
        },
        BatchResult::Expired => ResultLine::Failure {
            custom_id,
            code: "expired".into(),
            message: "the batch expired before this request ran".into(),
            retryable: true,
            ran: false,
        },
    }
}

/// The answer of a message: its text blocks joined; with none, the input of
/// its first tool call as JSON (a tool used for structured output).
pub fn answer_text(content: &[serde_json::Value]) -> String {
    let text: String = content
        .iter()
        .filter(|b| b.get("type").and_then(|t| t.as_str()) == Some("text"))
        .filter_map(|b| b.get("text").and_then(|t| t.as_str()))
        .collect();
    if !text.is_empty() {
        return text;
    }
    content
        .iter()
        .find(|b| b.get("type").and_then(|t| t.as_str()) == Some("tool_use"))
        .and_then(|b| b.get("input"))
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// The batches that may be the create of `id`: made at or after its
/// intent (less the clock slack), with exactly `id.requests` requests, and
/// not one this job already knows as another chunk's.
pub fn candidates<'a>(batches: &'a [MessageBatch], id: &SubmitIdentity) -> Vec<&'a MessageBatch> {
    let cutoff = i64::try_from(id.intent_at).unwrap_or(i64::MAX) - CLOCK_SLACK_SECS;
    batches
        .iter()
        .filter(|b| created_secs(b).is_none_or(|c| c >= cutoff))
        .filter(|b| b.request_counts.total() == id.requests)
        .collect()
}

/// What the first result line of an ended candidate proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Ours,
    NotOurs,
    /// No readable line: nothing is proven.
    Unknown,
}

pub fn proof(first_line: &str, want_tag: &str) -> Proof {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(first_line.trim()) else {
        return Proof::Unknown;
    };
    match v.get("custom_id").and_then(|c| c.as_str()).map(untag) {
        Some((_, Some(t))) if t == want_tag => Proof::Ours,
        Some(_) => Proof::NotOurs,
        None => Proof::Unknown,
    }
}

impl BatchBackend for AnthropicBatches {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> BatchLimits {
        LIMITS
    }

    /// Requests go inline in the create: nothing to stage.
    async fn stage(&self, _chunk: &Path, _name: &str) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }

    async fn submit(
        &self,
        _staged: Option<&str>,
        chunk: &Path,
        identity: &SubmitIdentity,
    ) -> Result<RemoteBatch, ProviderError> {
        let op = format!(
            "create message batch for chunk {} (attempt {})",
            identity.chunk, identity.attempt
        );
        let body = encode::body_path(chunk, identity.submit);
        let written = encode::write_create_body(chunk, &body, &tag(identity))
            .map_err(|e| ProviderError::new(op.clone(), ErrorKind::Io).with_detail(e.to_string()));
        let result = match written {
            Ok(_) => {
                self.client
                    .create_from_file::<MessageBatch>(op, BATCHES, &body)
                    .await
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&body);
        Ok(remote(&result?))
    }

    async fn find(
        &self,
        _staged: Option<&str>,
        identity: &SubmitIdentity,
    ) -> Result<Option<RemoteBatch>, ProviderError> {
        let cutoff = i64::try_from(identity.intent_at).unwrap_or(i64::MAX) - CLOCK_SLACK_SECS;
        let listed = self.list_since(cutoff).await?;
        let want = tag(identity);
        let mut undecided = Vec::new();
        for b in candidates(&listed, identity) {
            let url = b.results_url.as_deref().filter(|u| !u.is_empty());
            match (b.processing_status.as_str(), url) {
                ("ended", Some(url)) => {
                    let op = format!("read the results of message batch {}", b.id);
                    let line = match self.locate(&op, url) {
                        Ok(url) => self.client.first_line(op, &url).await,
                        Err(e) => Err(e),
                    };
                    match line.map(|l| proof(&l, &want)) {
                        Ok(Proof::Ours) => return Ok(Some(remote(b))),
                        Ok(Proof::NotOurs) => {}
                        // Gone or unreadable: it ended, so nothing of it is
                        // live; only a proof would make it ours.
                        Err(e) if e.is_not_found() => {}
                        Ok(Proof::Unknown) => undecided.push(b.id.clone()),
                        Err(e) => return Err(e),
                    }
                }
                _ => undecided.push(b.id.clone()),
            }
        }
        if undecided.is_empty() {
            return Ok(None);
        }
        Err(ProviderError::new(
            format!(
                "look for the message batch of chunk {} (attempt {})",
                identity.chunk, identity.attempt
            ),
            ErrorKind::Protocol,
        )
        .with_detail(format!(
            "message batch{} {} of {} requests, created since this chunk's create was \
             started, may be that create; message batches carry no metadata, so it can only be \
             told by its results once it has ended",
            if undecided.len() == 1 { "" } else { "es" },
            undecided.join(", "),
            identity.requests
        ))
        .into_unclear()
        .with_hint(Some(
            "nothing to do: the chunk waits for that batch to end, adopts it if its results \
             carry this create's tag, and creates its batch otherwise"
                .into(),
        )))
    }

    async fn status(&self, batch_id: &str) -> Result<RemoteBatch, ProviderError> {
        Ok(remote(&self.retrieve(batch_id).await?))
    }

    async fn fetch(&self, result: &ResultRef, dest: &Path) -> Result<u64, ProviderError> {
        let op = format!("download results {}", result.id);
        let url = self.locate(&op, &result.id)?;
        self.client.download_url(op, &url, dest).await
    }

    fn classify(&self, line: &str, submit: &SubmitIdentity) -> Result<ResultLine, LineError> {
        classify_own(line, &tag(submit))
    }

    async fn cancel(&self, batch_id: &str) -> Result<(), ProviderError> {
        self.client
            .send_json::<serde_json::Value>(
                format!("cancel message batch {batch_id}"),
                Method::POST,
                &format!("{BATCHES}/{}/cancel", encode_path_segment(batch_id)),
            )
            .await
            .map(|_| ())
    }

    /// Deletes the merged batch (allowed once it has ended): its results
    /// would otherwise stay readable for 29 days.
    async fn clean_up(
        &self,
        _staged: Option<&str>,
        batch_id: &str,
        _results: &[ResultRef],
    ) -> Result<(), ProviderError> {
        if batch_id.is_empty() {
            return Ok(());
        }
        self.client
            .send_json::<serde_json::Value>(
                format!("delete message batch {batch_id}"),
                Method::DELETE,
                &format!("{BATCHES}/{}", encode_path_segment(batch_id)),
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch(v: serde_json::Value) -> MessageBatch {
        serde_json::from_value(v).unwrap()
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
    fn tags_follow_the_identity_and_come_off_again() {
        let id = ident();
        let t = tag(&id);
        assert_eq!(t.len(), 10);
        assert_eq!(t, tag(&id), "stable");
        for other in [
            SubmitIdentity {
                submit: 2,
                ..ident()
            },
            SubmitIdentity {
                attempt: 2,
                ..ident()
            },
            SubmitIdentity {
                chunk: 3,
                ..ident()
            },
            SubmitIdentity {
                plan: "abd".into(),
                ..ident()
            },
            SubmitIdentity {
                job: "k".into(),
                ..ident()
            },
        ] {
            assert_ne!(tag(&other), t, "{other:?}");
        }
        let cases = [
            ("r12_0a1b2c3d4e", ("r12", Some("0a1b2c3d4e"))),
            ("r12", ("r12", None)),
            ("r12_short", ("r12_short", None)),
            ("r12_0a1b2c3d4z", ("r12_0a1b2c3d4z", None)),
            ("_0a1b2c3d4e", ("_0a1b2c3d4e", None)),
            ("a_b_0a1b2c3d4e", ("a_b", Some("0a1b2c3d4e"))),
        ];
        for (raw, want) in cases {
            assert_eq!(untag(raw), want, "{raw}");
        }
        assert_eq!(untag(&tagged("r7", &t)), ("r7", Some(t.as_str())));
        // Within the API's custom id limit for any row number.
        assert!(tagged(&format!("r{}", u64::MAX), &t).len() <= 64);
    }

    #[test]
    fn remote_state_table() {
        let r = |url: &str| ResultRef {
            name: "results".into(),
            id: url.into(),
        };
        let url = "https://api.anthropic.com/v1/messages/batches/m/results";
        let cases: Vec<(&str, serde_json::Value, RemoteState)> = vec![
            (
                "in progress: counts are not final, so nothing is done yet",
                json!({"id":"m","processing_status":"in_progress","request_counts":{"processing":10}}),
                RemoteState::Running {
                    label: "in_progress".into(),
                    done: 0,
                    failed: 0,
                },
            ),
            (
                "canceling is still running",
                json!({"id":"m","processing_status":"canceling","cancel_initiated_at":"2026-01-01T00:00:00Z"}),
                RemoteState::Running {
                    label: "canceling".into(),
                    done: 0,
                    failed: 0,
                },
            ),
            (
                "ended with every request done",
                json!({"id":"m","processing_status":"ended","request_counts":{"succeeded":9,"errored":1},"results_url":url}),
                RemoteState::Ended {
                    label: "ended".into(),
                    end: EndKind::Completed,
                    results: vec![r(url)],
                    usage: None,
                },
            ),
            (
                "ended after a cancel",
                json!({"id":"m","processing_status":"ended","cancel_initiated_at":"2026-01-01T00:00:00Z","request_counts":{"succeeded":3,"canceled":7},"results_url":url}),
                RemoteState::Ended {
                    label: "ended".into(),
                    end: EndKind::Cancelled,
                    results: vec![r(url)],
                    usage: None,
                },
            ),
            (
                "ended with expired requests",
                json!({"id":"m","processing_status":"ended","request_counts":{"succeeded":3,"expired":7},"results_url":url}),
                RemoteState::Ended {
                    label: "ended".into(),
                    end: EndKind::Expired,
                    results: vec![r(url)],
                    usage: None,
                },
            ),
            (
                "ended without a results URL: every request counts as not executed",
                json!({"id":"m","processing_status":"ended","results_url":null}),
                RemoteState::Ended {
                    label: "ended".into(),
                    end: EndKind::Completed,
                    results: vec![],
                    usage: None,
                },
            ),
        ];
        for (name, v, want) in cases {
            assert_eq!(remote_state(&batch(v)), want, "{name}");
        }
    }

    #[test]
    fn a_succeeded_line_without_an_answer_is_a_bad_response() {
        let line = |message: &str| {
            format!(
                r#"{{"custom_id":"r4_0a1b2c3d4e","result":{{"type":"succeeded","message":{message}}}}}"#
            )
        };
        let usage = r#""usage":{"input_tokens":2,"output_tokens":1}"#;
        for (message, missing) in [
            ("{}".to_string(), "`content` list"),
            (format!("{{{usage}}}"), "`content` list"),
            (
                r#"{"content":[{"type":"text","text":"7"}]}"#.to_string(),
                "`usage`",
            ),
        ] {
            assert_eq!(
                classify_line(&line(&message)).unwrap(),
                ResultLine::Failure {
                    custom_id: "r4".into(),
                    code: "bad_response".into(),
                    message: format!("a succeeded result whose message has no {missing}"),
                    retryable: true,
                    ran: true,
                },
                "{message}"
            );
        }
        // An empty list of blocks is an answer (a refusal may have no text).
        let empty = line(&format!(
            r#"{{"content":[],"stop_reason":"refusal",{usage}}}"#
        ));
        assert!(matches!(
            classify_line(&empty).unwrap(),
            ResultLine::Success { .. }
        ));
    }

    #[test]
    fn every_line_must_carry_this_creates_tag() {
        let own = "0a1b2c3d4e";
        let line = |id: &str| {
            format!(
                r#"{{"custom_id":"{id}","result":{{"type":"succeeded","message":{{"content":[{{"type":"text","text":"7"}}],"usage":{{"input_tokens":2,"output_tokens":1}}}}}}}}"#
            )
        };
        assert!(matches!(
            classify_own(&line("r4_0a1b2c3d4e"), own),
            Ok(ResultLine::Success { ref custom_id, .. }) if custom_id == "r4"
        ));
        let cases = [
            (
                "r4_ffffffffff",
                "the result for `r4` carries the tag ffffffffff of another create, not this one's (0a1b2c3d4e)",
            ),
            (
                "r4",
                "the result for `r4` carries no create tag (this create's is 0a1b2c3d4e)",
            ),
        ];
        for (id, why) in cases {
            assert_eq!(
                classify_own(&line(id), own),
                Err(LineError::NotThisSubmit(why.into())),
                "{id}"
            );
        }
        assert!(matches!(
            classify_own("not json", own),
            Err(LineError::Unreadable(_))
        ));
    }

    #[test]
    fn result_lines_table() {
        let ok = r#"{"custom_id":"r4_0a1b2c3d4e","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"7"}],"stop_reason":"end_turn","usage":{"input_tokens":20,"output_tokens":1,"cache_creation_input_tokens":5,"cache_read_input_tokens":30}}}}"#;
        assert_eq!(
            classify_line(ok).unwrap(),
            ResultLine::Success {
                custom_id: "r4".into(),
                answer: "7".into(),
                input_tokens: 20,
                output_tokens: 1,
                cache_write_tokens: 5,
                cache_read_tokens: 30,
                reasoning_tokens: 0,
            }
        );
        let err = |kind: &str| {
            format!(
                r#"{{"custom_id":"r5_0a1b2c3d4e","result":{{"type":"errored","error":{{"type":"error","error":{{"type":"{kind}","message":"m"}},"request_id":"req_1"}}}}}}"#
            )
        };
        for (kind, retryable) in [
            ("invalid_request_error", false),
            ("authentication_error", false),
            ("permission_error", false),
            ("not_found_error", false),
            ("billing_error", false),
            ("api_error", true),
            ("overloaded_error", true),
            ("rate_limit_error", true),
            ("timeout_error", true),
            ("a_type_added_later", true),
        ] {
            assert_eq!(
                classify_line(&err(kind)).unwrap(),
                ResultLine::Failure {
                    custom_id: "r5".into(),
                    code: kind.into(),
                    message: "m (request id req_1)".into(),
                    retryable,
                    ran: true,
                },
                "{kind}"
            );
        }
        for (kind, code) in [("canceled", "canceled"), ("expired", "expired")] {
            let line = format!(r#"{{"custom_id":"r6_0a1b2c3d4e","result":{{"type":"{kind}"}}}}"#);
            match classify_line(&line).unwrap() {
                ResultLine::Failure {
                    custom_id,
                    code: c,
                    retryable,
                    ran,
                    ..
                } => {
                    assert_eq!(
                        (custom_id.as_str(), c.as_str(), retryable, ran),
                        ("r6", code, true, false)
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        for bad in [
            "",
            "{",
            "<html>",
            r#"{"custom_id":"r1"}"#,
            r#"{"custom_id":"r1","result":{"type":"weird"}}"#,
        ] {
            assert!(classify_line(bad).is_err(), "{bad}");
        }
        // A tool call answers when there is no text.
        assert_eq!(
            answer_text(&[json!({"type":"tool_use","input":{"grade":3}})]),
            r#"{"grade":3}"#
        );
    }

    #[test]
    fn candidates_table() {
        let id = ident();
        let at = |secs: i64| {
            humantime::format_rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64),
            )
            .to_string()
        };
        let t0 = id.intent_at as i64;
        let batches = vec![
            batch(json!({"id":"after","created_at":at(t0 + 5),"request_counts":{"processing":10}})),
            batch(
                json!({"id":"within-slack","created_at":at(t0 - CLOCK_SLACK_SECS + 1),"request_counts":{"succeeded":4,"errored":6}}),
            ),
            batch(
                json!({"id":"too-old","created_at":at(t0 - CLOCK_SLACK_SECS - 1),"request_counts":{"processing":10}}),
            ),
            batch(
                json!({"id":"other-size","created_at":at(t0 + 5),"request_counts":{"processing":9}}),
            ),
            batch(json!({"id":"no-date","request_counts":{"processing":10}})),
        ];
        let got: Vec<&str> = candidates(&batches, &id)
            .iter()
            .map(|b| b.id.as_str())
            .collect();
        assert_eq!(got, ["after", "within-slack", "no-date"]);
    }

    #[test]
    fn proofs() {
        let cases = [
            (
                r#"{"custom_id":"r1_0a1b2c3d4e","result":{"type":"expired"}}"#,
                Proof::Ours,
            ),
            (
                r#"{"custom_id":"r1_ffffffffff","result":{"type":"expired"}}"#,
                Proof::NotOurs,
            ),
            (
                r#"{"custom_id":"someone-elses","result":{"type":"expired"}}"#,
                Proof::NotOurs,
            ),
            ("", Proof::Unknown),
            ("not json", Proof::Unknown),
        ];
        for (line, want) in cases {
            assert_eq!(proof(line, "0a1b2c3d4e"), want, "{line}");
        }
    }

    #[test]
    fn results_locations() {
        let cases = [
            (
                "same host: as given",
                "https://api.anthropic.com",
                "https://api.anthropic.com/v1/messages/batches/m1/results",
                Ok("https://api.anthropic.com/v1/messages/batches/m1/results"),
            ),
            (
                "localhost for 127.0.0.1: read through the base URL",
                "http://127.0.0.1:8080",
                "http://localhost:8080/v1/messages/batches/m1/results",
                Ok("http://127.0.0.1:8080/v1/messages/batches/m1/results"),
            ),
            (
                "a gateway with a path prefix in front of the API",
                "https://gw.example.com/anthropic/",
                "https://api.anthropic.com/v1/messages/batches/m1/results?x=1",
                Ok("https://gw.example.com/anthropic/v1/messages/batches/m1/results?x=1"),
            ),
            (
                "another host and no results path: refused, the key stays home",
                "https://api.anthropic.com",
                "https://evil.example.com/steal",
                Err(()),
            ),
        ];
        for (name, base, url, want) in cases {
            let got = results_location(base, url);
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(w), "{name}"),
                Err(()) => assert!(got.is_err(), "{name}: {got:?}"),
            }
        }
    }

    #[test]
    fn timestamps() {
        for (s, want) in [
            ("2024-08-20T18:37:24.100435Z", Some(1_724_179_044)),
            ("2024-08-20T18:37:24Z", Some(1_724_179_044)),
            ("2024-08-20T18:37:24+00:00", Some(1_724_179_044)),
            ("yesterday", None),
        ] {
            assert_eq!(rfc3339_secs(s), want, "{s}");
        }
    }
}
