//! `OpenAiClient`: the Files and Batches calls of OpenAI's API (OpenAPI spec,
//! `/files` and `/batches` paths; and a plain chat completion for direct
//! mode) over reqwest with rustls.
//!
//! Every call goes through one loop, `OpenAiClient::execute`, which asks the
//! pure classifier in `retry` what to do after each failed attempt. The one
//! exception is `create batch`: the SDKs send no idempotency key
//! (openai-python `_base_client.py`, `_idempotency_header`), so a
//! timeout, a broken connection or a 5xx there is returned as an *unclear*
//! error instead of being retried, and the caller looks for the batch by its
//! metadata before creating another (ARCHITECTURE.md, "Crash protocol",
//! step 3).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, Response, Url};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use super::types::{ApiError, Batch, BatchList, FileDeleted, FileObject};
use crate::provider::bounded::{
    self, MAX_CHAT_BODY, MAX_CONTROL_BODY, MAX_ERROR_BODY, cap_text, clean_text,
};
use crate::provider::config::{
    ClientConfig, MIN_FREE_DISK_ENV, ORG_ENV, PROJECT_ENV, encode_path_segment, join_url,
    validate_base_url,
};
use crate::provider::error::{ErrorKind, ProviderError, human_wait};
use crate::provider::retry::{
    self, Decision, Outcome, Reason, RetryHeaders, RetryPolicy, TransportFailure,
};
use crate::provider::watch::CallWatch;
use crate::spec::units::human_bytes;

/// Uploads get `request_timeout` plus the time this slow a link would need.
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 128 * 1024;
/// Downloads have no total deadline (a result file may be gigabytes), but
/// after the first `request_timeout` they must average at least this, so a
/// server that trickles a byte a second cannot hold a run for ever.
const MIN_DOWNLOAD_BYTES_PER_SEC: u64 = 16 * 1024;
/// `GET /batches` allows 1..=100 (OpenAPI spec, `limit` of `/batches`).
const LIST_LIMIT_MAX: u32 = 100;
/// Metadata limits (OpenAPI spec, `Metadata`).
const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY: usize = 64;
const METADATA_MAX_VALUE: usize = 512;

/// Whether a failed attempt may be replayed blindly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    Safe,
    /// `POST /batches`: only failures that prove nothing was created are retried.
    CreateBatch,
}

enum Payload<'a> {
    Empty,
    Json(String),
    /// Re-opened on every attempt, streamed with its length.
    Upload {
        path: &'a Path,
        filename: &'a str,
    },
    /// A JSON body kept in a file (a Message Batches create of up to 256 MB),
    /// re-opened and streamed on every attempt.
    JsonFile(&'a Path),
}

enum Sink<'a> {
    Text,
    /// Streamed to `<dest>.tmp`, then fsynced and renamed.
    File(&'a Path),
    /// Only the first line of the body (at most 1 MB), then hang up.
    FirstLine,
}

struct Call<'a> {
    op: String,
    method: Method,
    url: Url,
    payload: Payload<'a>,
    accept: &'static str,
    sink: Sink<'a>,
    /// The most a `Sink::Text` answer may hold.
    cap: usize,
    replay: Replay,
    /// Direct mode: a final non-2xx answer is returned as data, because it
    /// belongs to one row, not to the run.
    final_status_is_data: bool,
}

struct Reply {
    status: u16,
    request_id: Option<String>,
    body: String,
}

enum Done {
    Text(Reply),
    File(u64),
}

enum Attempt {
    Done(Done),
    /// A local problem (file unreadable, disk full): retrying cannot help.
    Fatal(ProviderError),
    Transport {
        failure: TransportFailure,
        detail: String,
        request_id: Option<String>,
    },
    Http {
        status: u16,
        headers: RetryHeaders,
        request_id: Option<String>,
        body: String,
    },
}

/// Which wire family the client speaks; it sets the auth headers and the
/// hints of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    /// Anthropic's API: `x-api-key` and `anthropic-version` headers
    /// (anthropic-sdk-python `_client.py`).
    Anthropic,
}

/// An OpenAI-compatible Files + Batches client. The same HTTP core (one
/// retry loop, streamed downloads, the unclear create) also serves the
/// Anthropic backend, through `OpenAiClient::anthropic` and the
/// `pub(crate)` calls at the end of this impl.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    config: ClientConfig,
    policy: RetryPolicy,
    flavor: Flavor,
    watch: CallWatch,
    /// `host:port` of the base URL, for the live view's waiting line.
    host: String,
}

impl OpenAiClient {
    pub fn new(config: ClientConfig) -> Result<OpenAiClient, ProviderError> {
        const OP: &str = "configure provider";
        validate_base_url(&config.base_url)?;
        let mut headers = HeaderMap::new();
        let auth = secret_header(&config, &format!("Bearer {}", config.api_key.expose()))?;
        headers.insert(AUTHORIZATION, auth);
        for (name, value, var) in [
            ("openai-organization", &config.organization, ORG_ENV),
            ("openai-project", &config.project, PROJECT_ENV),
        ] {
            if let Some(v) = value {
                let v = HeaderValue::from_str(v).map_err(|_| {
                    ProviderError::config(OP, format!("{var} is not a valid header value"), None)
                })?;
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        OpenAiClient::build(config, headers, Flavor::OpenAi)
    }

    /// A client for Anthropic's API: the key goes in `x-api-key`, and
    /// `anthropic-version` on every call (anthropic-sdk-python `_client.py`).
    pub(crate) fn anthropic(
        config: ClientConfig,
        version: &str,
    ) -> Result<OpenAiClient, ProviderError> {
        validate_base_url(&config.base_url)?;
        let mut headers = HeaderMap::new();
        let key = secret_header(&config, config.api_key.expose())?;
        headers.insert(HeaderName::from_static("x-api-key"), key);
        let v = HeaderValue::from_str(version).map_err(|_| {
            ProviderError::config(
                "configure provider",
                format!("`provider.anthropic_version` {version:?} is not a valid header value"),
                None,
            )
        })?;
        headers.insert(HeaderName::from_static("anthropic-version"), v);
        OpenAiClient::build(config, headers, Flavor::Anthropic)
    }

    fn build(
        config: ClientConfig,
        headers: HeaderMap,
        flavor: Flavor,
    ) -> Result<OpenAiClient, ProviderError> {
        const OP: &str = "configure provider";
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("batchgrader/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout);
        if config.is_plain_http() {
            // Plain http needs no roots; with the platform's, reqwest fails to
            // build a client on a machine without CA certificates, even for
            // http.
            builder = builder.tls_certs_only(Vec::<reqwest::Certificate>::new());
        }
        let http = builder.build().map_err(|e| {
            ProviderError::config(
                OP,
                format!("cannot set up the HTTP client: {}", error_chain(&e)),
                Some(
                    "https needs the system's CA certificates; install them (e.g. the \
                     ca-certificates package)"
                        .into(),
                ),
            )
        })?;
        let policy = RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            ..RetryPolicy::default()
        };
        let host = host_port(&config.base_url);
        Ok(OpenAiClient {
            http,
            config,
            policy,
            flavor,
            watch: CallWatch::default(),
            host,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The calls this client (and its clones) has out.
    pub fn watch(&self) -> &CallWatch {
        &self.watch
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
            payload: Payload::Upload { path, filename },
            ..self.call(op, Method::POST, "files")?
        };
        let reply = self.execute_text(&call).await?;
        self.parse(&call.op, &reply)
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
            replay: Replay::CreateBatch,
            ..self.call(op, Method::POST, "batches")?
        };
        let reply = self.execute_text(&call).await?;
        // The server answered 2xx: the batch exists even if we cannot read it.
        self.parse(&call.op, &reply)
            .map_err(ProviderError::into_unclear)
    }

    /// `GET /batches/{id}`.
    pub async fn retrieve_batch(&self, id: &str) -> Result<Batch, ProviderError> {
        let call = self.call(
            format!("retrieve batch {id}"),
            Method::GET,
            &format!("batches/{}", encode_path_segment(id)),
        )?;
        let reply = self.execute_text(&call).await?;
        self.parse(&call.op, &reply)
    }

    /// `GET /batches?after=&limit=` (limit clamped to 1..=100, as the OpenAPI
    /// spec allows).
    pub async fn list_batches(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<BatchList, ProviderError> {
        let mut call = self.call("list batches".to_string(), Method::GET, "batches")?;
        {
            let mut q = call.url.query_pairs_mut();
            if let Some(a) = after {
                q.append_pair("after", a);
            }
            q.append_pair("limit", &limit.clamp(1, LIST_LIMIT_MAX).to_string());
        }
        let reply = self.execute_text(&call).await?;
        self.parse(&call.op, &reply)
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

    /// `POST /batches/{id}/cancel` (OpenAPI spec, `/batches/{batch_id}/cancel`).
    /// Idempotent, so retried normally.
    pub async fn cancel_batch(&self, id: &str) -> Result<Batch, ProviderError> {
        let call = self.call(
            format!("cancel batch {id}"),
            Method::POST,
            &format!("batches/{}/cancel", encode_path_segment(id)),
        )?;
        let reply = self.execute_text(&call).await?;
        self.parse(&call.op, &reply)
    }

    /// `GET /files/{id}/content` streamed to `<dest>.tmp`, fsynced, then
    /// renamed to `dest`. Returns the number of bytes written. A stall
    /// longer than `request_timeout` counts as a timeout and is retried.
    pub async fn download_file(&self, id: &str, dest: &Path) -> Result<u64, ProviderError> {
        let call = Call {
            accept: "application/binary",
            sink: Sink::File(dest),
            ..self.call(
                format!("download file {id}"),
                Method::GET,
                &format!("files/{}/content", encode_path_segment(id)),
            )?
        };
        match self.execute(&call).await? {
            Done::File(n) => Ok(n),
            Done::Text(_) => Err(ProviderError::new(call.op, ErrorKind::Protocol)),
        }
    }

    /// `DELETE /files/{id}` (OpenAPI spec, `DeleteFileResponse`). An empty 2xx
    /// body counts as deleted.
    pub async fn delete_file(&self, id: &str) -> Result<FileDeleted, ProviderError> {
        let call = self.call(
            format!("delete file {id}"),
            Method::DELETE,
            &format!("files/{}", encode_path_segment(id)),
        )?;
        let reply = self.execute_text(&call).await?;
        if reply.body.trim().is_empty() {
            return Ok(FileDeleted {
                id: Some(id.to_string()),
                deleted: true,
            });
        }
        self.parse(&call.op, &reply)
    }

    /// `POST /chat/completions` for direct mode: returns the status and
    /// body of the last answer. Retryable failures are retried first; a final
    /// or exhausted non-2xx answer is returned as data for the row. Refused
    /// keys, quota, overlong Retry-After and network failures are errors,
    /// because they concern the whole run.
    pub async fn chat_completion(&self, body: &str) -> Result<(u16, String), ProviderError> {
        let call = Call {
            payload: Payload::Json(body.to_string()),
            cap: MAX_CHAT_BODY,
            final_status_is_data: true,
            ..self.call(
                "chat completion".to_string(),
                Method::POST,
                "chat/completions",
            )?
        };
        let reply = self.execute_text(&call).await?;
        Ok((reply.status, reply.body))
    }

    /// `GET path` (relative to the base URL), parsed as JSON.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        op: String,
        path: &str,
    ) -> Result<T, ProviderError> {
        let call = self.call(op, Method::GET, path)?;
        let reply = self.execute_text(&call).await?;
        self.parse(&call.op, &reply)
    }

    /// `method path` with no body (a cancel, a delete), parsed as JSON.
    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        op: String,
        method: Method,
        path: &str,
    ) -> Result<T, ProviderError> {
        let call = self.call(op, method, path)?;
        let reply = self.execute_text(&call).await?;
        self.parse(&call.op, &reply)
    }

    /// `POST path` with the JSON body in `body_file`, for a create that is
    /// not safe to replay: a failure that may have come after the server
    /// made the object is returned unclear, as for `create_batch`.
    pub(crate) async fn create_from_file<T: DeserializeOwned>(
        &self,
        op: String,
        path: &str,
        body_file: &Path,
    ) -> Result<T, ProviderError> {
        let call = Call {
            payload: Payload::JsonFile(body_file),
            replay: Replay::CreateBatch,
            ..self.call(op, Method::POST, path)?
        };
        let reply = self.execute_text(&call).await?;
        self.parse(&call.op, &reply)
            .map_err(ProviderError::into_unclear)
    }

    /// `GET url` (absolute, e.g. a `results_url`) streamed to `dest` like
    /// `download_file`. The URL must be on the base URL's host: the key is
    /// sent with it.
    pub(crate) async fn download_url(
        &self,
        op: String,
        url: &str,
        dest: &Path,
    ) -> Result<u64, ProviderError> {
        let call = Call {
            accept: "application/binary",
            sink: Sink::File(dest),
            ..self.call_url(op, Method::GET, url)?
        };
        match self.execute(&call).await? {
            Done::File(n) => Ok(n),
            Done::Text(_) => Err(ProviderError::new(call.op, ErrorKind::Protocol)),
        }
    }

    /// The first line of `GET url` (absolute), without reading the rest.
    pub(crate) async fn first_line(&self, op: String, url: &str) -> Result<String, ProviderError> {
        let call = Call {
            accept: "application/binary",
            sink: Sink::FirstLine,
            ..self.call_url(op, Method::GET, url)?
        };
        Ok(self.execute_text(&call).await?.body)
    }

    /// A call to an absolute URL the server handed out. Refused unless it
    /// is on the base URL's scheme, host and port, so a URL from a server's
    /// answer never takes the key elsewhere.
    fn call_url<'a>(
        &self,
        op: String,
        method: Method,
        url: &str,
    ) -> Result<Call<'a>, ProviderError> {
        let parsed = Url::parse(url).map_err(|e| {
            ProviderError::new(op.clone(), ErrorKind::Protocol).with_detail(format!(
                "the server gave a URL that does not parse ({e}): {url}"
            ))
        })?;
        let base = Url::parse(&self.config.base_url)
            .map_err(|e| ProviderError::config(op.clone(), format!("bad base URL: {e}"), None))?;
        let origin = |u: &Url| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_string),
                u.port_or_known_default(),
            )
        };
        if origin(&parsed) != origin(&base) {
            return Err(ProviderError::config(
                op,
                format!(
                    "the server gave a URL on another host ({}); the API key is only sent to {}",
                    parsed.host_str().unwrap_or("?"),
                    self.display_base_url()
                ),
                Some(
                    "check `provider.base_url`: it must be the host that serves the results".into(),
                ),
            ));
        }
        Ok(Call {
            url: parsed,
            ..self.call(op, method, "")?
        })
    }

    /// A call with the defaults: JSON in and out, safe to replay.
    fn call<'a>(&self, op: String, method: Method, path: &str) -> Result<Call<'a>, ProviderError> {
        Ok(Call {
            op,
            method,
            url: join_url(&self.config.base_url, path)?,
            payload: Payload::Empty,
            accept: "application/json",
            sink: Sink::Text,
            cap: MAX_CONTROL_BODY,
            replay: Replay::Safe,
            final_status_is_data: false,
        })
    }

    fn parse<T: DeserializeOwned>(&self, op: &str, reply: &Reply) -> Result<T, ProviderError> {
        serde_json::from_str(&reply.body).map_err(|e| {
            let body = self.redact(&reply.body);
            let what = bounded::describe_body(&body);
            let detail = if bounded::is_page(&body) {
                format!("the answer is {what}, not the JSON this API sends")
            } else {
                format!("the answer is not the JSON this API sends ({e}); it begins: {what}")
            };
            ProviderError::new(op, ErrorKind::Protocol)
                .with_status(Some(reply.status))
                .with_request_id(reply.request_id.clone())
                .with_detail(detail)
                .with_hint(Some(self.api_hint()))
        })
    }

    /// The hint of an answer that is not this API's.
    fn api_hint(&self) -> String {
        format!(
            "check that {} is an {} API (a wrong base URL, a proxy or a captive portal answers \
             with pages of its own); the call is tried again later",
            self.display_base_url(),
            match self.flavor {
                Flavor::OpenAi => "OpenAI-compatible",
                Flavor::Anthropic => "Anthropic Message Batches",
            }
        )
    }

    async fn execute_text(&self, call: &Call<'_>) -> Result<Reply, ProviderError> {
        match self.execute(call).await? {
            Done::Text(r) => Ok(r),
            Done::File(_) => Err(ProviderError::new(call.op.clone(), ErrorKind::Protocol)),
        }
    }

    /// A server may put anything in a header or a message, the key too: it
    /// must not reach an error, a log or the state.
    fn scrub(&self, a: Attempt) -> Attempt {
        let id = |r: Option<String>| r.map(|r| self.redact(&r));
        match a {
            Attempt::Done(Done::Text(r)) => Attempt::Done(Done::Text(Reply {
                request_id: id(r.request_id),
                ..r
            })),
            Attempt::Transport {
                failure,
                detail,
                request_id,
            } => Attempt::Transport {
                failure,
                detail: self.redact(&detail),
                request_id: id(request_id),
            },
            Attempt::Http {
                status,
                headers,
                request_id,
                body,
            } => Attempt::Http {
                status,
                headers,
                request_id: id(request_id),
                body,
            },
            other => other,
        }
    }

    /// The retry loop. Sleeping and reading the clock happen here, nowhere else.
    async fn execute(&self, call: &Call<'_>) -> Result<Done, ProviderError> {
        // Out from the first attempt to the last answer, retry waits included.
        let _pending = self
            .watch
            .start(format!("{}: {}", self.host, clean_text(&call.op, 200)).into());
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (decision, error) = match self.scrub(self.attempt(call).await) {
                Attempt::Done(done) => return Ok(done),
                Attempt::Fatal(e) => return Err(e.with_attempts(attempt)),
                Attempt::Transport {
                    failure,
                    detail,
                    request_id,
                } => {
                    let err = ProviderError::new(call.op.clone(), ErrorKind::Transport)
                        .with_request_id(request_id)
                        .with_detail(detail)
                        .with_attempts(attempt)
                        .with_hint(Some(format!(
                            "check the network and that {} is reachable",
                            self.display_base_url()
                        )));
                    // Only a refused connection proves the request never left.
                    if call.replay == Replay::CreateBatch && failure != TransportFailure::Connect {
                        return Err(err.into_unclear());
                    }
                    let outcome = Outcome::Transport(failure);
                    (self.decide(&outcome, attempt), err)
                }
                Attempt::Http {
                    status,
                    headers,
                    request_id,
                    body,
                } => {
                    // 408 and 409 may come after the batch was made, like a
                    // 5xx; a 429 is a refusal before any work (the SDKs
                    // retry all four, and send no idempotency key).
                    if call.replay == Replay::CreateBatch
                        && (status >= 500 || status == 408 || status == 409)
                    {
                        let err = self.http_error(call, None, status, request_id, &body, attempt);
                        return Err(err.into_unclear());
                    }
                    let outcome = Outcome::Http {
                        status,
                        headers: &headers,
                        body: &body,
                    };
                    let decision = self.decide(&outcome, attempt);
                    if let Decision::GiveUp(reason) = &decision {
                        let row_level = !matches!(
                            reason,
                            Reason::Quota
                                | Reason::Unauthorized
                                | Reason::Forbidden
                                | Reason::RetryAfterTooLong { .. }
                        );
                        if call.final_status_is_data && row_level {
                            return Ok(Done::Text(Reply {
                                status,
                                request_id,
                                body,
                            }));
                        }
                    }
                    let reason = match &decision {
                        Decision::GiveUp(r) => Some(r),
                        Decision::Retry { .. } => None,
                    };
                    let err = self.http_error(call, reason, status, request_id, &body, attempt);
                    (decision, err)
                }
            };
            match decision {
                Decision::Retry { after } => tokio::time::sleep(after).await,
                Decision::GiveUp(_) => return Err(error),
            }
        }
    }

    fn decide(&self, outcome: &Outcome<'_>, attempt: u32) -> Decision {
        retry::classify(
            outcome,
            attempt,
            &self.policy,
            clock_jitter(),
            SystemTime::now(),
        )
    }

    /// One request, start to finish.
    async fn attempt(&self, call: &Call<'_>) -> Attempt {
        let timeout = self.config.request_timeout;
        let mut req = self
            .http
            .request(call.method.clone(), call.url.clone())
            .header(ACCEPT, call.accept);
        let mut total = Some(timeout);
        match &call.payload {
            Payload::Empty => {}
            Payload::Json(body) => {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            Payload::JsonFile(path) => {
                let file = match tokio::fs::File::open(path).await {
                    Ok(f) => f,
                    Err(e) => return Attempt::Fatal(io_error(&call.op, "open", path, &e)),
                };
                let len = match file.metadata().await {
                    Ok(m) => m.len(),
                    Err(e) => return Attempt::Fatal(io_error(&call.op, "read", path, &e)),
                };
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(file_body(file));
                total = Some(timeout + Duration::from_secs(len / MIN_UPLOAD_BYTES_PER_SEC));
            }
            Payload::Upload { path, filename } => {
                let file = match tokio::fs::File::open(path).await {
                    Ok(f) => f,
                    Err(e) => return Attempt::Fatal(io_error(&call.op, "open", path, &e)),
                };
                let len = match file.metadata().await {
                    Ok(m) => m.len(),
                    Err(e) => return Attempt::Fatal(io_error(&call.op, "read", path, &e)),
                };
                let part = match Part::stream_with_length(file_body(file), len)
                    .file_name(filename.to_string())
                    .mime_str("application/jsonl")
                {
                    Ok(p) => p,
                    Err(e) => {
                        return Attempt::Fatal(
                            ProviderError::new(call.op.clone(), ErrorKind::Protocol)
                                .with_detail(e.to_string()),
                        );
                    }
                };
                req = req.multipart(Form::new().text("purpose", "batch").part("file", part));
                total = Some(timeout + Duration::from_secs(len / MIN_UPLOAD_BYTES_PER_SEC));
            }
        }
        let downloading = matches!(call.sink, Sink::File(_));
        if downloading {
            // No total deadline for a body of hundreds of MB; stalls are timed instead.
            total = None;
        }
        if let Some(t) = total {
            req = req.timeout(t);
        }
        let sent = if downloading {
            match tokio::time::timeout(timeout, req.send()).await {
                Ok(r) => r,
                Err(_) => {
                    return Attempt::Transport {
                        failure: TransportFailure::Timeout,
                        detail: format!("no response within {}", human_wait(timeout)),
                        request_id: None,
                    };
                }
            }
        } else {
            req.send().await
        };
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return transport_attempt(&e, None),
        };
        let status = response.status().as_u16();
        let request_id = request_id_of(response.headers());
        if !(200..300).contains(&status) {
            let headers = retry_headers_of(response.headers());
            let body = read_capped(&mut response, MAX_ERROR_BODY, timeout).await;
            return Attempt::Http {
                status,
                headers,
                request_id,
                body,
            };
        }
        match call.sink {
            Sink::Text => match read_body(&mut response, call.cap).await {
                Ok(Body::Whole(bytes)) => Attempt::Done(Done::Text(Reply {
                    status,
                    request_id,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                })),
                Ok(Body::TooLarge { head, declared }) => {
                    let e = self.too_large(call, status, request_id, &head, declared);
                    Attempt::Fatal(if call.replay == Replay::CreateBatch {
                        // A 2xx: the batch exists even if its answer is unreadable.
                        e.into_unclear()
                    } else {
                        e
                    })
                }
                Err(e) => transport_attempt(&e, request_id),
            },
            Sink::File(dest) => {
                let floor = self.config.min_free_disk;
                stream_to_file(&call.op, response, dest, request_id, timeout, floor).await
            }
            Sink::FirstLine => {
                const MAX_LINE: usize = 1 << 20;
                let mut buf: Vec<u8> = Vec::new();
                loop {
                    if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        buf.truncate(i);
                        break;
                    }
                    if buf.len() >= MAX_LINE {
                        break;
                    }
                    match tokio::time::timeout(timeout, response.chunk()).await {
                        Ok(Ok(Some(c))) => buf.extend_from_slice(&c),
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => return transport_attempt(&e, request_id),
                        Err(_) => {
                            return Attempt::Transport {
                                failure: TransportFailure::Timeout,
                                detail: format!("no line within {}", human_wait(timeout)),
                                request_id,
                            };
                        }
                    }
                }
                Attempt::Done(Done::Text(Reply {
                    status,
                    request_id,
                    body: String::from_utf8_lossy(&buf).into_owned(),
                }))
            }
        }
    }

    /// A 2xx answer larger than any answer of this call can be: reading
    /// stopped at the cap.
    fn too_large(
        &self,
        call: &Call<'_>,
        status: u16,
        request_id: Option<String>,
        head: &[u8],
        declared: Option<u64>,
    ) -> ProviderError {
        let size = match declared {
            Some(n) => format!("{n} bytes"),
            None => format!("more than {}", cap_text(call.cap)),
        };
        let what = bounded::describe_body(&self.redact(&String::from_utf8_lossy(head)));
        ProviderError::new(call.op.clone(), ErrorKind::Protocol)
            .with_status(Some(status))
            .with_request_id(request_id)
            .with_detail(format!(
                "the answer is {size}, above the {} this call accepts (stopped reading); it begins: {what}",
                cap_text(call.cap)
            ))
            .with_hint(Some(self.api_hint()))
    }

    /// Builds the error for a non-2xx answer; `reason` is `None` for an
    /// unclear create.
    fn http_error(
        &self,
        call: &Call<'_>,
        reason: Option<&Reason>,
        status: u16,
        request_id: Option<String>,
        body: &str,
        attempts: u32,
    ) -> ProviderError {
        let api = ApiError::from_body(body).map(|a| ApiError {
            message: a.message.map(|m| self.redact(&m)),
            ..a
        });
        let kind = match reason {
            Some(Reason::Quota) => ErrorKind::Quota,
            Some(Reason::Unauthorized) => ErrorKind::Auth,
            Some(Reason::Forbidden) => ErrorKind::Permission,
            Some(Reason::NotFound) => ErrorKind::NotFound,
            Some(Reason::Rejected | Reason::ServerSaidNo) => ErrorKind::Rejected,
            Some(Reason::RetryAfterTooLong { .. }) => ErrorKind::RetryAfterTooLong,
            Some(Reason::Exhausted { .. }) | None if status == 429 => ErrorKind::RateLimited,
            Some(Reason::Exhausted { .. }) | None => ErrorKind::Server,
        };
        let env = &self.config.api_key_env;
        let base = self.display_base_url();
        let detail = match reason {
            Some(Reason::Unauthorized) => Some(format!("the API key in {env} was refused")),
            Some(Reason::RetryAfterTooLong { wait }) => Some(format!(
                "the server asked to wait {} before retrying",
                human_wait(*wait)
            )),
            _ if api.as_ref().is_some_and(|a| a.message.is_some()) => None,
            _ if body.trim().is_empty() => None,
            _ => Some(bounded::describe_body(&self.redact(body))),
        };
        let hint = match (kind, reason) {
            (ErrorKind::Auth, _) => Some(format!(
                "check that {env} holds a valid, active key for {base}"
            )),
            (ErrorKind::Permission, _) => Some(format!(
                "the key in {env} may not do this; check its permissions and the project and \
                 organization it belongs to ({PROJECT_ENV}, {ORG_ENV})"
            )),
            (ErrorKind::Quota, _) => Some(self.quota_hint()),
            (ErrorKind::NotFound, _) if self.flavor == Flavor::Anthropic => Some(format!(
                "check the id and that {base} serves the Message Batches API (the base URL has \
                 no /v1 suffix); batches can be read for 29 days"
            )),
            (ErrorKind::NotFound, _) => Some(format!(
                "check the id (files expire after 30 days); a server without the Files and \
                 Batches API, such as plain vLLM, also answers 404: use `mode: direct` for it \
                 ({base})"
            )),
            (ErrorKind::RetryAfterTooLong, Some(Reason::RetryAfterTooLong { wait })) => {
                Some(format!("run the command again in {}", human_wait(*wait)))
            }
            (ErrorKind::RateLimited, _) => {
                Some("the provider is rate limiting; run the command again later".into())
            }
            (ErrorKind::Server, _) => {
                Some("the provider is having trouble; run the command again later".into())
            }
            _ => None,
        };
        let mut err = ProviderError::new(call.op.clone(), kind)
            .with_status(Some(status))
            .with_request_id(request_id)
            .with_api(api)
            .with_attempts(attempts)
            .with_hint(hint);
        if let Some(d) = detail {
            err = err.with_detail(d);
        }
        err
    }

    fn quota_hint(&self) -> String {
        let openai = Url::parse(&self.config.base_url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.ends_with("openai.com")))
            .unwrap_or(false);
        if openai {
            "the account is out of credit or over its spend limit: add credit or raise the limit \
             on your billing page (https://platform.openai.com/settings/organization/billing), \
             then run the command again"
                .into()
        } else {
            "the account is out of credit or over its spend limit: add credit or raise the limit \
             on your provider's billing page, then run the command again"
                .into()
        }
    }

    fn redact(&self, text: &str) -> String {
        crate::provider::config::redact_all(text, &self.config.secrets())
    }

    /// The base URL without any user, password or query value in it.
    fn display_base_url(&self) -> String {
        crate::provider::config::shown_url(&self.config.base_url)
    }
}

/// `host:port` of a base URL, without user or password: what the live
/// view names when it waits for a call.
pub(crate) fn host_port(base: &str) -> String {
    match Url::parse(base) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => "the provider".into(),
        },
        Err(_) => "the provider".into(),
    }
}

/// The key as a header value, marked sensitive so that it stays out of
/// reqwest's and hyper's Debug output.
fn secret_header(config: &ClientConfig, value: &str) -> Result<HeaderValue, ProviderError> {
    let env = &config.api_key_env;
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        ProviderError::config(
            "configure provider",
            format!("the value of {env} cannot be sent in an HTTP header"),
            Some(format!("check that {env} holds only the key")),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// OpenAI's `x-request-id`; Anthropic-style `request-id` and Azure's
/// `apim-request-id` as fallbacks.
pub(crate) fn request_id_of(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "request-id", "apim-request-id"]
        .iter()
        .find_map(|n| headers.get(*n)?.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

pub(crate) fn retry_headers_of(headers: &HeaderMap) -> RetryHeaders {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    RetryHeaders {
        retry_after_ms: get("retry-after-ms"),
        retry_after: get("retry-after"),
        should_retry: get("x-should-retry"),
    }
}

fn transport_attempt(e: &reqwest::Error, request_id: Option<String>) -> Attempt {
    // A connect timeout is both; it still proves the request was not sent.
    let failure = if e.is_connect() {
        TransportFailure::Connect
    } else if e.is_timeout() {
        TransportFailure::Timeout
    } else {
        TransportFailure::Other
    };
    Attempt::Transport {
        failure,
        detail: error_chain(e),
        request_id,
    }
}

/// `Display` of an error and its sources, joined, without repeats.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Reads at most `cap` bytes of an error body within `deadline` in all; a
/// failure or the deadline keeps what was read.
async fn read_capped(response: &mut Response, cap: usize, deadline: Duration) -> String {
    let end = tokio::time::Instant::now() + deadline;
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < cap {
        match tokio::time::timeout_at(end, response.chunk()).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(cap);
    String::from_utf8_lossy(&buf).into_owned()
}

/// A file as a request body, read 1 MB at a time: reqwest's own `From<File>`
/// reads 4 KB per hop to a blocking thread, which made uploading a chunk
/// of hundreds of MB cost more CPU than building it.
fn file_body(file: tokio::fs::File) -> reqwest::Body {
    reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20))
}

/// A body read with a cap.
pub(crate) enum Body {
    Whole(Vec<u8>),
    /// Over the cap: its first bytes (for an excerpt) and the length the
    /// server declared, if it did.
    TooLarge {
        head: Vec<u8>,
        declared: Option<u64>,
    },
}

/// Reads a whole body of at most `cap` bytes, and stops reading (the
/// connection is dropped) as soon as it is known to be larger: a declared
/// `content-length` over the cap reads only an excerpt. The request's own
/// timeout bounds the time.
pub(crate) async fn read_body(response: &mut Response, cap: usize) -> reqwest::Result<Body> {
    const HEAD: usize = 4096;
    let declared = response.content_length();
    if declared.is_some_and(|n| n > cap as u64) {
        let mut head = Vec::new();
        while head.len() < HEAD {
            match response.chunk().await {
                Ok(Some(c)) => head.extend_from_slice(&c),
                _ => break,
            }
        }
        head.truncate(HEAD);
        return Ok(Body::TooLarge { head, declared });
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if buf.len() + chunk.len() > cap {
            buf.extend_from_slice(&chunk[..HEAD.saturating_sub(buf.len()).min(chunk.len())]);
            buf.truncate(HEAD);
            return Ok(Body::TooLarge {
                head: buf,
                declared,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(buf))
}

/// How long the next piece of a download may take: a stall is cut at
/// `stall`, and the whole download at `stall` plus the time `written` bytes
/// need at `min_rate` bytes a second. Zero: too slow, give up.
fn download_time_left(elapsed: Duration, written: u64, stall: Duration, min_rate: u64) -> Duration {
    let allowed = stall + Duration::from_secs_f64(written as f64 / min_rate.max(1) as f64);
    allowed.saturating_sub(elapsed).min(stall)
}

/// Streams a 2xx body to `<dest>.tmp`, then fsync + rename, so `dest` is
/// either absent or complete after a crash.
async fn stream_to_file(
    op: &str,
    mut response: Response,
    dest: &Path,
    request_id: Option<String>,
    stall: Duration,
    min_free: u64,
) -> Attempt {
    let tmp = tmp_path(dest);
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut checked_at: Option<u64> = None;
    // Buffered: each write to a tokio file is a hop to a blocking thread,
    // and a body arrives in pieces of a few KB.
    let mut file = match tokio::fs::File::create(&tmp).await {
        Ok(f) => tokio::io::BufWriter::with_capacity(1 << 20, f),
        Err(e) => return Attempt::Fatal(io_error(op, "create", &tmp, &e)),
    };
    let mut written = 0u64;
    let started = tokio::time::Instant::now();
    loop {
        let left = download_time_left(
            started.elapsed(),
            written,
            stall,
            MIN_DOWNLOAD_BYTES_PER_SEC,
        );
        let slow = left < stall;
        let chunk = match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                return transport_attempt(&e, request_id);
            }
            Err(_) => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                let detail = if slow {
                    format!(
                        "download too slow: {written} bytes in {}, under {} a second",
                        human_wait(started.elapsed()),
                        cap_text(MIN_DOWNLOAD_BYTES_PER_SEC as usize)
                    )
                } else {
                    format!(
                        "download stalled for {} after {written} bytes",
                        human_wait(stall)
                    )
                };
                return Attempt::Transport {
                    failure: TransportFailure::Timeout,
                    detail,
                    request_id,
                };
            }
        };
        if disk_check_due(checked_at, written)
            && let Some(free) = free_disk_bytes(dir)
        {
            checked_at = Some(written);
            if free < min_free {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                return Attempt::Fatal(ProviderError::new(op, ErrorKind::Io).with_detail(format!(
                    "stopped after {written} bytes: the disk of {} has {} free, under the {} a download leaves free \
                     (free some space and run `batchgrader resume`, or set {MIN_FREE_DISK_ENV})",
                    dir.display(),
                    human_bytes(free),
                    human_bytes(min_free)
                )));
            }
        }
        if let Err(e) = file.write_all(&chunk).await {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Attempt::Fatal(io_error(op, "write", &tmp, &e));
        }
        written += chunk.len() as u64;
    }
    let synced = match file.flush().await {
        Ok(()) => file.get_mut().sync_all().await,
        Err(e) => Err(e),
    };
    drop(file);
    if let Err(e) = synced {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Attempt::Fatal(io_error(op, "write", &tmp, &e));
    }
    if let Err(e) = tokio::fs::rename(&tmp, dest).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Attempt::Fatal(io_error(op, "rename into", dest, &e));
    }
    sync_parent(dest).await;
    Attempt::Done(Done::File(written))
}

/// Makes the rename durable. Best effort: not every platform can open a directory.
async fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(dir) = tokio::fs::File::open(&parent).await {
        let _ = dir.sync_all().await;
    }
}

/// `dest` with `.tmp` appended to its file name.
fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dest.with_file_name(name)
}

/// Bytes written between two looks at the free space of a download's disk.
const DISK_CHECK_EVERY: u64 = 64 << 20;

/// Whether a download that has written `written` bytes, and last looked at
/// its disk's free space at `checked_at`, looks again: before the first
/// byte, then every `DISK_CHECK_EVERY` bytes.
fn disk_check_due(checked_at: Option<u64>, written: u64) -> bool {
    checked_at.is_none_or(|at| written.saturating_sub(at) >= DISK_CHECK_EVERY)
}

/// Bytes free for this user on the file system of `dir` (statvfs(3)), or
/// None when it cannot be told.
fn free_disk_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn io_error(op: &str, action: &str, path: &Path, e: &std::io::Error) -> ProviderError {
    ProviderError::new(op, ErrorKind::Io)
        .with_detail(format!("cannot {action} {}: {e}", path.display()))
}

/// A jitter value in [0, 1) from the clock; the classifier itself stays pure.
fn clock_jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
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
    fn tmp_path_appends() {
        assert_eq!(
            tmp_path(Path::new("/a/b/out.jsonl")),
            PathBuf::from("/a/b/out.jsonl.tmp")
        );
        assert_eq!(tmp_path(Path::new("x")), PathBuf::from("x.tmp"));
    }

    #[test]
    fn the_disk_is_looked_at_first_then_every_64_mib() {
        let m = DISK_CHECK_EVERY;
        let cases = [
            // (last look at, written, look now)
            (None, 0, true),
            (None, 5 * m, true),
            (Some(0), 1, false),
            (Some(0), m - 1, false),
            (Some(0), m, true),
            (Some(m), 2 * m - 1, false),
            (Some(m), 3 * m, true),
            (Some(u64::MAX), 0, false),
        ];
        for (at, written, want) in cases {
            assert_eq!(disk_check_due(at, written), want, "{at:?} {written}");
        }
        // This machine's temp folder has some free space, and a path that
        // is not there has none to tell.
        assert!(free_disk_bytes(&std::env::temp_dir()).is_some_and(|b| b > 0));
        assert_eq!(free_disk_bytes(Path::new("/no/such/folder/here")), None);
    }

    #[test]
    fn downloads_must_keep_a_minimum_pace() {
        let s = Duration::from_secs;
        let stall = s(10);
        let rate = 1000;
        let cases = [
            // At the start: the stall limit.
            (s(0), 0, s(10)),
            // No bytes after 4 s: 6 s left.
            (s(4), 0, s(6)),
            // A fast download is limited by stalls only.
            (s(100), 1_000_000, s(10)),
            // 20 KB in 25 s at 1 KB/s allows 30 s: 5 s left.
            (s(25), 20_000, s(5)),
            // A trickle: 30 bytes in 30 s is too slow.
            (s(30), 30, s(0)),
        ];
        for (elapsed, written, want) in cases {
            assert_eq!(
                download_time_left(elapsed, written, stall, rate),
                want,
                "{elapsed:?} {written}"
            );
        }
    }

    #[test]
    fn jitter_in_range() {
        let j = clock_jitter();
        assert!((0.0..1.0).contains(&j));
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
