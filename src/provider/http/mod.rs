//! The one HTTP core under every backend and direct mode: reqwest with
//! rustls, the key sent as each API wants it ([`Auth`]), timeouts, bodies
//! read up to a cap, result files streamed to disk with the free-disk
//! checks, request ids, and the calls registered in a [`CallWatch`].
//!
//! `setup` builds the reqwest client (direct mode builds its own pool
//! through it too); `attempt` sends one request and reads its answer;
//! `download` streams a 2xx body to a file; `failure` turns a failed answer
//! into a [`ProviderError`]. This file holds [`HttpClient`], the client of a
//! batch backend, and its one retry loop, [`HttpClient::execute`], which
//! asks the pure classifier in `retry` what to do after each failed attempt.
//!
//! The one exception to retrying is a create ([`Replay::Create`]): the
//! providers' SDKs send no idempotency key (openai-python
//! `_base_client.py`, `_idempotency_header`), so a timeout, a broken
//! connection or a 5xx there is returned as an *unclear* error instead of
//! being retried, and the caller looks for what it made before creating
//! another (ARCHITECTURE.md, "Crash protocol", step 3).
//!
//! The backends add only their endpoints: `openai/client.rs` (Files and
//! Batches) and `anthropic/` (Message Batches).

mod attempt;
mod download;
mod failure;
mod outcome;
mod setup;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

use crate::provider::bounded::{self, MAX_CONTROL_BODY, clean_text};
use crate::provider::config::{ClientConfig, join_url, validate_base_url};
use crate::provider::error::{ErrorKind, ProviderError};
use crate::provider::retry::{self, Decision, Outcome, RetryPolicy, TransportFailure};
use crate::provider::watch::CallWatch;
pub(crate) use attempt::{Body, Held, read_body_held, request_id_of, retry_headers_of};
use outcome::{Attempt, Done};
pub(crate) use outcome::{error_chain, transport_failure};
pub(crate) use setup::{Auth, build, client_builder, host_port};

/// What the errors of a client say about the API it expects, for the hints
/// that tell a wrong server from a failing one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Api {
    /// "check that {base} is an {name} API".
    pub(crate) name: &'static str,
    /// The hint of a 404, given the base URL as it may be shown.
    pub(crate) not_found_hint: fn(&str) -> String,
}

/// Whether a failed attempt may be replayed blindly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    Safe,
    /// A create without an idempotency key (`POST /batches`, a message
    /// batch): only failures that prove nothing was created are retried.
    Create,
}

pub(crate) enum Payload<'a> {
    Empty,
    Json(String),
    /// A file as a multipart form: `fields` as text parts, then the file as
    /// part `file` of type `mime`, re-opened on every attempt and streamed
    /// with its length.
    Upload {
        path: &'a Path,
        filename: &'a str,
        mime: &'static str,
        fields: &'a [(&'static str, &'static str)],
    },
    /// A JSON body kept in a file (a Message Batches create of up to 256 MB),
    /// re-opened and streamed on every attempt.
    JsonFile(&'a Path),
}

pub(crate) enum Sink<'a> {
    Text,
    /// Streamed to `<dest>.tmp`, then fsynced and renamed.
    File(&'a Path),
    /// Only the first line of the body (at most 1 MB), then hang up.
    FirstLine,
}

/// One call, as every attempt of it is sent.
pub(crate) struct Call<'a> {
    pub(crate) op: String,
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) payload: Payload<'a>,
    pub(crate) accept: &'static str,
    pub(crate) sink: Sink<'a>,
    /// The most a `Sink::Text` answer may hold.
    pub(crate) cap: usize,
    pub(crate) replay: Replay,
}

/// A 2xx answer read as text.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) request_id: Option<String>,
    pub(crate) body: String,
}

/// The HTTP client of a batch backend: one retry loop, bounded reads,
/// streamed downloads, the unclear create. Cheap to clone (one pool).
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    http: reqwest::Client,
    config: ClientConfig,
    policy: RetryPolicy,
    api: Api,
    watch: CallWatch,
    /// `host:port` of the base URL, for the live view's waiting line.
    host: String,
}

impl HttpClient {
    pub(crate) fn new(
        config: ClientConfig,
        auth: Auth<'_>,
        api: Api,
    ) -> Result<HttpClient, ProviderError> {
        validate_base_url(&config.base_url)?;
        let headers = auth.headers(&config)?;
        let http = build(client_builder(
            headers,
            config.connect_timeout,
            config.is_plain_http(),
        ))?;
        let policy = RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            ..RetryPolicy::default()
        };
        let host = host_port(&config.base_url);
        Ok(HttpClient {
            http,
            config,
            policy,
            api,
            watch: CallWatch::default(),
            host,
        })
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The calls this client (and its clones) has out.
    pub(crate) fn watch(&self) -> &CallWatch {
        &self.watch
    }

    /// A call with the defaults: JSON in and out, safe to replay; `path`
    /// is relative to the base URL.
    pub(crate) fn call<'a>(
        &self,
        op: String,
        method: Method,
        path: &str,
    ) -> Result<Call<'a>, ProviderError> {
        Ok(Call {
            op,
            method,
            url: join_url(&self.config.base_url, path)?,
            payload: Payload::Empty,
            accept: "application/json",
            sink: Sink::Text,
            cap: MAX_CONTROL_BODY,
            replay: Replay::Safe,
        })
    }

    /// A call to an absolute URL the server handed out. Refused unless it
    /// is on the base URL's scheme, host and port, so a URL from a server's
    /// answer never takes the key elsewhere.
    pub(crate) fn call_url<'a>(
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

    /// `GET path` (relative to the base URL), parsed as JSON.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        op: String,
        path: &str,
    ) -> Result<T, ProviderError> {
        self.send_json(op, Method::GET, path).await
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
    /// made the object is returned unclear.
    pub(crate) async fn create_from_file<T: DeserializeOwned>(
        &self,
        op: String,
        path: &str,
        body_file: &Path,
    ) -> Result<T, ProviderError> {
        let call = Call {
            payload: Payload::JsonFile(body_file),
            replay: Replay::Create,
            ..self.call(op, Method::POST, path)?
        };
        let reply = self.execute_text(&call).await?;
        self.parse(&call.op, &reply)
            .map_err(ProviderError::into_unclear)
    }

    /// `GET url` (absolute, e.g. a `results_url`) streamed to `dest`. The
    /// URL must be on the base URL's host: the key is sent with it.
    pub(crate) async fn download_url(
        &self,
        op: String,
        url: &str,
        dest: &Path,
    ) -> Result<u64, ProviderError> {
        let call = self.call_url(op, Method::GET, url)?;
        self.download(call, dest).await
    }

    /// `call`'s answer streamed to `<dest>.tmp`, fsynced, then renamed to
    /// `dest`. Returns the number of bytes written. A stall longer than
    /// `request_timeout` counts as a timeout and is retried.
    pub(crate) async fn download(&self, call: Call<'_>, dest: &Path) -> Result<u64, ProviderError> {
        let call = Call {
            accept: "application/binary",
            sink: Sink::File(dest),
            ..call
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

    /// A 2xx answer as JSON, or a protocol error that says what came instead.
    pub(crate) fn parse<T: DeserializeOwned>(
        &self,
        op: &str,
        reply: &Reply,
    ) -> Result<T, ProviderError> {
        let parsed = if bounded::is_json_object(&reply.body) {
            serde_json::from_str(&reply.body).map_err(|e| e.to_string())
        } else {
            Err("not a JSON object".to_string())
        };
        parsed.map_err(|e| {
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

    /// [`HttpClient::execute`] of a call whose answer is text.
    pub(crate) async fn execute_text(&self, call: &Call<'_>) -> Result<Reply, ProviderError> {
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
                    if call.replay == Replay::Create && failure != TransportFailure::Connect {
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
                    if call.replay == Replay::Create
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

    fn redact(&self, text: &str) -> String {
        crate::provider::config::redact_all(text, &self.config.secrets())
    }

    /// The base URL without any user, password or query value in it.
    pub(crate) fn display_base_url(&self) -> String {
        crate::provider::config::shown_url(&self.config.base_url)
    }
}

/// A jitter value in [0, 1) from the clock; the classifier itself stays pure.
fn clock_jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_in_range() {
        let j = clock_jitter();
        assert!((0.0..1.0).contains(&j));
    }
}
