//! Direct mode's wire: one request per row, to one of several base URLs.
//! [`Protocol`] says which: `POST {base}/chat/completions` (OpenAI's API, or
//! any OpenAI-compatible server: vLLM, SGLang, llama.cpp's server, Ollama,
//! a LiteLLM gateway) or Anthropic's `POST {base}/v1/messages`. The command
//! edge picks it from the spec's one wire decision (`spec::Wire`).
//!
//! This module sends one attempt and reports what came back, headers
//! included; it never sleeps and never retries. What to do with an answer
//! (record it, send it again, slow down, leave an endpoint out) is decided by
//! the direct runner with the one retry classifier (`retry::classify`) and
//! the pure pacing rules, because those decisions span every request in
//! flight, not one call.
//!
//! The client is built through the HTTP core (`provider::http`: the key as
//! `Authorization: Bearer`, or as Anthropic's `x-api-key` with
//! `anthropic-version`; TLS, the connect timeout) with one pool for all
//! endpoints, and reads answers with the core's capped `read_body` and
//! header readers. What an answer's body says is read by the protocol's
//! classifier ([`Protocol::classify`]: `openai::lines::classify_reply`, or
//! `anthropic::reply::classify_message_reply`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};

use super::bounded::{
    self, ByteBudget, MAX_ANSWERS_HELD, MAX_CHAT_BODY, MAX_LABEL, cap_text, clean_text,
};
use super::config::{ClientConfig, join_url, validate_base_url};
use super::error::ProviderError;
use super::http::{
    self, Auth, Body, Held, error_chain, host_port, read_body_held, request_id_of,
    retry_headers_of, transport_failure,
};
use super::openai::lines::{LineOutcome, classify_reply};
use super::retry::{RetryHeaders, TransportFailure};
use super::watch::CallWatch;

/// The request protocol of a direct run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// `POST {base}/chat/completions`, the key as a bearer token, the
    /// `x-ratelimit-*` headers (OpenAI's rate-limit guide).
    ChatCompletions,
    /// `POST {base}/v1/messages` with `x-api-key` and `anthropic-version`,
    /// the `anthropic-ratelimit-*` headers (Anthropic's rate-limits page,
    /// "Response headers").
    Messages { version: String },
}

impl Protocol {
    /// The path joined to each base URL.
    fn path(&self) -> &'static str {
        match self {
            Protocol::ChatCompletions => "chat/completions",
            Protocol::Messages { .. } => "v1/messages",
        }
    }

    fn auth(&self) -> Auth<'_> {
        match self {
            Protocol::ChatCompletions => Auth::Bearer,
            Protocol::Messages { version } => Auth::Anthropic { version },
        }
    }

    /// What one request is called in messages (`waiting for ...`, errors).
    pub fn call(&self) -> &'static str {
        match self {
            Protocol::ChatCompletions => "chat completion",
            Protocol::Messages { .. } => "message",
        }
    }

    /// The body to send for a request line's chat body (the plan's one
    /// request format): as it is, or as the Messages params a Message
    /// Batches request of the line carries (`anthropic::encode`).
    pub fn encode(&self, chat_body: &str) -> Result<Bytes, String> {
        match self {
            Protocol::ChatCompletions => Ok(Bytes::copy_from_slice(chat_body.as_bytes())),
            Protocol::Messages { .. } => {
                super::anthropic::encode::message_body(chat_body).map(Bytes::from)
            }
        }
    }

    /// What an answer says, in the batch lines' terms.
    pub fn classify(&self, status: u16, body: &str) -> LineOutcome {
        match self {
            Protocol::ChatCompletions => classify_reply("", status, body),
            Protocol::Messages { .. } => {
                super::anthropic::reply::classify_message_reply(status, body)
            }
        }
    }

    /// The rate-limit headers of an answer, at `now`.
    pub fn rate_headers(&self, h: &HeaderMap, now: SystemTime) -> RateHeaders {
        match self {
            Protocol::ChatCompletions => RateHeaders::from_map(h),
            Protocol::Messages { .. } => RateHeaders::from_anthropic(h, now),
        }
    }
}

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
    pub body: Vec<u8>,
    /// The body's share of the client's byte budget, given back when this
    /// is dropped: keep it as long as the body (or text made from it).
    pub held: bounded::Held,
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

    /// Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`
    /// (rate-limits page, "Response headers"): limits per minute as
    /// OpenAI's, but `reset` is an RFC 3339 time at which the bucket is
    /// full again, turned here into the time left from `now` (a time
    /// already past is no wait). `tokens-*` is the most restrictive of the
    /// input and output token limits, which is the one to pace by.
    pub fn from_anthropic(h: &HeaderMap, now: SystemTime) -> RateHeaders {
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        let count = |n: &str| text(n).and_then(|v| v.trim().parse::<u64>().ok());
        let limit = |n: &str| count(n).filter(|v| *v > 0);
        let reset = |n: &str| {
            let at = humantime::parse_rfc3339_weak(&zulu(text(n)?)).ok()?;
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        };
        RateHeaders {
            limit_requests: limit("anthropic-ratelimit-requests-limit"),
            remaining_requests: count("anthropic-ratelimit-requests-remaining"),
            reset_requests: reset("anthropic-ratelimit-requests-reset"),
            limit_tokens: limit("anthropic-ratelimit-tokens-limit"),
            remaining_tokens: count("anthropic-ratelimit-tokens-remaining"),
            reset_tokens: reset("anthropic-ratelimit-tokens-reset"),
        }
    }

    pub fn any(&self) -> bool {
        *self != RateHeaders::default()
    }
}

/// An RFC 3339 time with its zero offset as `Z` (humantime reads `Z`
/// only); other offsets are left as they are (and refused by it).
fn zulu(s: &str) -> String {
    let s = s.trim();
    match s.strip_suffix("+00:00") {
        Some(rest) => format!("{rest}Z"),
        None => s.to_string(),
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
    protocol: Protocol,
    /// What the answers being read may hold in all (`MAX_ANSWERS_HELD`).
    budget: ByteBudget,
}

impl DirectClient {
    /// `configs` hold the same key and differ in base URL; `pool` is the
    /// most connections kept open per endpoint.
    pub fn new(
        configs: &[ClientConfig],
        pool: usize,
        protocol: Protocol,
    ) -> Result<DirectClient, ProviderError> {
        const OP: &str = "configure provider";
        let first = configs
            .first()
            .ok_or_else(|| ProviderError::config(OP, "no base URL", None))?;
        let mut headers = protocol.auth().headers(first)?;
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut urls = Vec::new();
        let mut shown = Vec::new();
        for c in configs {
            validate_base_url(&c.base_url)?;
            urls.push(join_url(&c.base_url, protocol.path())?);
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
            .map(|c| format!("{}: {}", host_port(&c.base_url), protocol.call()).into())
            .collect();
        Ok(DirectClient {
            http,
            urls,
            shown,
            secrets: configs.iter().flat_map(ClientConfig::secrets).collect(),
            watch: CallWatch::default(),
            calls,
            protocol,
            budget: ByteBudget::new(MAX_ANSWERS_HELD),
        })
    }

    /// The bytes every answer in flight draws from.
    pub fn budget(&self) -> &ByteBudget {
        &self.budget
    }

    /// The protocol its requests speak.
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
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
        let limits = self.protocol.rate_headers(headers, SystemTime::now());
        // The client's total timeout bounds the time; the cap one answer's
        // memory, the budget the sum over every answer in flight.
        let mut held = self.budget.hold();
        let read = read_body_held(&mut response, MAX_CHAT_BODY, &mut |n| held.grow(n)).await;
        match read {
            Ok(Held::Read(Body::Whole(body))) => Sent::Answer(Answer {
                status,
                request_id,
                retry,
                limits,
                body,
                held,
            }),
            Ok(Held::NoRoom { read }) => Sent::Transport {
                failure: TransportFailure::Other,
                detail: format!(
                    "HTTP {status}{}: no room for the answer after {read} bytes: the answers \
                     being read in flight already hold {:.1} MiB of the {} direct mode holds \
                     at once (stopped reading; it is sent again)",
                    request_id
                        .map(|r| format!(" (request {r})"))
                        .unwrap_or_default(),
                    self.budget.used() as f64 / f64::from(1 << 20),
                    cap_text(self.budget.total()),
                ),
            },
            Ok(Held::Read(Body::TooLarge { head, declared })) => Sent::Transport {
                failure: TransportFailure::Other,
                detail: format!(
                    "HTTP {status}{}: the answer is {}, above the {} a {} may be \
                     (stopped reading); it begins: {}",
                    request_id
                        .map(|r| format!(" (request {r})"))
                        .unwrap_or_default(),
                    declared.map_or_else(
                        || format!("more than {}", cap_text(MAX_CHAT_BODY)),
                        |n| format!("{n} bytes")
                    ),
                    cap_text(MAX_CHAT_BODY),
                    self.protocol.call(),
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

    #[test]
    fn anthropic_rate_headers_reset_at_a_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |secs: u64| {
            humantime::format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
        };
        let ahead = at(1_800_000_012);
        let ahead_offset = ahead.replace('Z', "+00:00");
        let past = at(1_799_999_000);
        // (headers, what is read)
        let full = RateHeaders {
            limit_requests: Some(4000),
            remaining_requests: Some(3999),
            reset_requests: Some(Duration::from_secs(12)),
            limit_tokens: Some(400_000),
            remaining_tokens: Some(0),
            reset_tokens: Some(Duration::ZERO),
        };
        let cases: Vec<(Vec<(&str, &str)>, RateHeaders)> = vec![
            (
                vec![
                    ("anthropic-ratelimit-requests-limit", "4000"),
                    ("anthropic-ratelimit-requests-remaining", "3999"),
                    ("anthropic-ratelimit-requests-reset", &ahead),
                    ("anthropic-ratelimit-tokens-limit", "400000"),
                    ("anthropic-ratelimit-tokens-remaining", "0"),
                    // A reset already past: no wait.
                    ("anthropic-ratelimit-tokens-reset", &past),
                ],
                full,
            ),
            // A `+00:00` offset is the same time.
            (
                vec![("anthropic-ratelimit-requests-reset", &ahead_offset)],
                RateHeaders {
                    reset_requests: Some(Duration::from_secs(12)),
                    ..RateHeaders::default()
                },
            ),
            // Not a time, not a count, a zero limit: unknown.
            (
                vec![
                    ("anthropic-ratelimit-requests-reset", "12s"),
                    ("anthropic-ratelimit-requests-remaining", "many"),
                    ("anthropic-ratelimit-tokens-limit", "0"),
                ],
                RateHeaders::default(),
            ),
            // OpenAI's names mean nothing here.
            (
                vec![("x-ratelimit-limit-requests", "5000")],
                RateHeaders::default(),
            ),
        ];
        for (pairs, want) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in &pairs {
                h.insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            assert_eq!(RateHeaders::from_anthropic(&h, now), want, "{pairs:?}");
            assert_eq!(
                Protocol::Messages {
                    version: "2023-06-01".into()
                }
                .rate_headers(&h, now),
                want
            );
        }
    }

    #[test]
    fn each_protocol_sends_its_path_and_body() {
        let chat = r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"u"}],"max_tokens":4}"#;
        assert_eq!(Protocol::ChatCompletions.path(), "chat/completions");
        assert_eq!(
            Protocol::ChatCompletions.encode(chat).unwrap().as_ref(),
            chat.as_bytes()
        );
        let messages = Protocol::Messages {
            version: "2023-06-01".into(),
        };
        assert_eq!(messages.path(), "v1/messages");
        let sent: serde_json::Value =
            serde_json::from_slice(&messages.encode(chat).unwrap()).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"model":"m","system":"S","messages":[{"role":"user","content":"u"}],"max_tokens":4})
        );
    }
}
