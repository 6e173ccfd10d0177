//! Direct mode's wire: one `POST {base}/chat/completions` per request, to
//! one of several base URLs (OpenAI's API, or any OpenAI-compatible server:
//! vLLM, SGLang, llama.cpp's server, Ollama, a LiteLLM gateway).
//!
//! This module sends one attempt and reports what came back, headers
//! included; it never sleeps and never retries. What to do with an answer
//! (record it, send it again, slow down, leave an endpoint out) is decided by
//! the direct runner with the one retry classifier (`retry::classify`) and
//! the pure pacing rules, because those decisions span every request in
//! flight, not one call.
//!
//! The client is built through the HTTP core (`provider::http`: the key as
//! `Authorization: Bearer`, TLS, the connect timeout) with one pool for all
//! endpoints, and reads answers with the core's capped `read_body` and
//! header readers. What an answer's body says is the OpenAI chat wire's
//! (`openai::lines::classify_reply`), read by the runner, not here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};

use super::bounded::{self, MAX_CHAT_BODY, MAX_LABEL, cap_text, clean_text};
use super::config::{ClientConfig, join_url, validate_base_url};
use super::error::ProviderError;
use super::http::{
    self, Auth, Body, error_chain, host_port, read_body, request_id_of, retry_headers_of,
    transport_failure,
};
use super::retry::{RetryHeaders, TransportFailure};
use super::watch::CallWatch;

/// What one attempt ended with.
// Returned once per attempt; boxing the answer would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Sent {
    /// The server answered (any status).
    Answer(Answer),
    /// No HTTP answer; `Connect` proves the request never left.
    Transport {
        failure: TransportFailure,
        detail: String,
    },
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub request_id: Option<String>,
    pub retry: RetryHeaders,
    pub limits: RateHeaders,
    pub body: Bytes,
}

/// The `x-ratelimit-*` headers of a synchronous OpenAI endpoint (OpenAI's
/// rate-limit guide). `None` where a header is missing or says nothing
/// (Azure sends `-1` or `0` limits at times: unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    /// Time until the request bucket is full again.
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl RateHeaders {
    pub fn from_map(h: &HeaderMap) -> RateHeaders {
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        let count = |n: &str| text(n).and_then(|v| v.trim().parse::<u64>().ok());
        let limit = |n: &str| count(n).filter(|v| *v > 0);
        let reset = |n: &str| text(n).and_then(parse_go_duration);
        RateHeaders {
            limit_requests: limit("x-ratelimit-limit-requests"),
            remaining_requests: count("x-ratelimit-remaining-requests"),
            reset_requests: reset("x-ratelimit-reset-requests"),
            limit_tokens: limit("x-ratelimit-limit-tokens"),
            remaining_tokens: count("x-ratelimit-remaining-tokens"),
            reset_tokens: reset("x-ratelimit-reset-tokens"),
        }
    }

    pub fn any(&self) -> bool {
        *self != RateHeaders::default()
    }
}

/// A Go-style duration as OpenAI sends in `x-ratelimit-reset-*`: `1s`,
/// `6m0s`, `12ms`, `1h2m3.5s`; a bare number is seconds.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// One HTTP client (one connection pool) for every endpoint.
pub struct DirectClient {
    http: reqwest::Client,
    urls: Vec<Url>,
    shown: Vec<String>,
    /// The keys and base-URL query values of every endpoint.
    secrets: Vec<String>,
    watch: CallWatch,
    /// `host:port: chat completion` per endpoint, for the waiting line.
    calls: Vec<Arc<str>>,
}

impl DirectClient {
    /// `configs` hold the same key and differ in base URL; `pool` is the
    /// most connections kept open per endpoint.
    pub fn new(configs: &[ClientConfig], pool: usize) -> Result<DirectClient, ProviderError> {
        const OP: &str = "configure provider";
        let first = configs
            .first()
            .ok_or_else(|| ProviderError::config(OP, "no base URL", None))?;
        let mut headers = Auth::Bearer.headers(first)?;
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut urls = Vec::new();
        let mut shown = Vec::new();
        for c in configs {
            validate_base_url(&c.base_url)?;
            urls.push(join_url(&c.base_url, "chat/completions")?);
            shown.push(display_url(&c.base_url));
        }
        let plain_http = configs.iter().all(ClientConfig::is_plain_http);
        let http = http::build(
            http::client_builder(headers, first.connect_timeout, plain_http)
                .timeout(first.request_timeout)
                .pool_max_idle_per_host(pool)
                .tcp_nodelay(true),
        )?;
        let calls = configs
            .iter()
            .map(|c| format!("{}: chat completion", host_port(&c.base_url)).into())
            .collect();
        Ok(DirectClient {
            http,
            urls,
            shown,
            secrets: configs.iter().flat_map(ClientConfig::secrets).collect(),
            watch: CallWatch::default(),
            calls,
        })
    }

    /// The requests out now.
    pub fn watch(&self) -> &CallWatch {
        &self.watch
    }

    pub fn endpoints(&self) -> usize {
        self.urls.len()
    }

    /// An endpoint's base URL as people may see it (no user or password).
    pub fn shown(&self, endpoint: usize) -> &str {
        &self.shown[endpoint]
    }

    /// Text from a server may carry anything, the key too.
    pub fn redact(&self, text: &str) -> String {
        crate::provider::config::redact_all(text, &self.secrets)
    }

    /// One attempt of one request to one endpoint.
    pub async fn send(&self, endpoint: usize, body: Bytes) -> Sent {
        let _pending = self.watch.start(self.calls[endpoint].clone());
        let sent = self
            .http
            .post(self.urls[endpoint].clone())
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return self.transport(&e),
        };
        let status = response.status().as_u16();
        let headers = response.headers();
        let request_id = request_id_of(headers).map(|r| clean_text(&self.redact(&r), MAX_LABEL));
        let retry = retry_headers_of(headers);
        let limits = RateHeaders::from_map(headers);
        // The client's total timeout bounds the time; the cap the memory.
        match read_body(&mut response, MAX_CHAT_BODY).await {
            Ok(Body::Whole(body)) => Sent::Answer(Answer {
                status,
                request_id,
                retry,
                limits,
                body: body.into(),
            }),
            Ok(Body::TooLarge { head, declared }) => Sent::Transport {
                failure: TransportFailure::Other,
                detail: format!(
                    "HTTP {status}{}: the answer is {}, above the {} a chat completion may be \
                     (stopped reading); it begins: {}",
                    request_id
                        .map(|r| format!(" (request {r})"))
                        .unwrap_or_default(),
                    declared.map_or_else(
                        || format!("more than {}", cap_text(MAX_CHAT_BODY)),
                        |n| format!("{n} bytes")
                    ),
                    cap_text(MAX_CHAT_BODY),
                    bounded::describe_body(&self.redact(&String::from_utf8_lossy(&head)))
                ),
            },
            Err(e) => self.transport(&e),
        }
    }

    fn transport(&self, e: &reqwest::Error) -> Sent {
        Sent::Transport {
            failure: transport_failure(e),
            detail: self.redact(&error_chain(e)),
        }
    }
}

fn display_url(base: &str) -> String {
    crate::provider::config::shown_url(base)
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderName;

    #[test]
    fn go_durations() {
        let ms = |v: u64| Some(Duration::from_millis(v));
        for (text, want) in [
            ("1s", ms(1000)),
            ("6m0s", ms(360_000)),
            ("12ms", ms(12)),
            ("1h2m3.5s", ms(3_723_500)),
            ("0.5", ms(500)),
            ("20", ms(20_000)),
            ("", None),
            ("5d", None),
            ("abc", None),
            ("-1s", None),
        ] {
            assert_eq!(parse_go_duration(text), want, "{text:?}");
        }
    }

    #[test]
    fn rate_headers_read_leniently() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-ratelimit-limit-requests", "5000"),
            ("x-ratelimit-remaining-requests", "4999"),
            ("x-ratelimit-reset-requests", "12ms"),
            // Azure's "unknown".
            ("x-ratelimit-limit-tokens", "-1"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let r = RateHeaders::from_map(&h);
        assert_eq!(r.limit_requests, Some(5000));
        assert_eq!(r.remaining_requests, Some(4999));
        assert_eq!(r.reset_requests, Some(Duration::from_millis(12)));
        assert_eq!(r.limit_tokens, None);
        assert_eq!(r.remaining_tokens, Some(0));
        assert_eq!(r.reset_tokens, Some(Duration::from_secs(360)));
        assert!(!RateHeaders::from_map(&HeaderMap::new()).any());
    }
}
