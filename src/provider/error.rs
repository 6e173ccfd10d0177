//! `ProviderError`: what failed, where (HTTP status, `x-request-id`), what the
//! server said, whether trying again may help, and what the user can do.
//!
//! The message never contains the API key or the `Authorization` header: the
//! client scrubs the key out of anything the server echoes back (see
//! `redact`), and `Secret` prints as `***`.

use std::fmt;
use std::time::Duration;

use super::api_error::ApiError;
use super::bounded::{MAX_LABEL, MAX_MESSAGE, clean_text};

/// The broad class of a failure; callers branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad local configuration: missing key, bad base URL, bad argument.
    Config,
    /// 401: the key was refused.
    Auth,
    /// 403: the key may not do this.
    Permission,
    /// Out of credit or over a spend limit (`insufficient_quota`).
    Quota,
    /// 404.
    NotFound,
    /// Another status that retrying cannot change (400, 422, ...), or
    /// `x-should-retry: false`.
    Rejected,
    /// 429 after every attempt.
    RateLimited,
    /// 408, 409 or 5xx after every attempt.
    Server,
    /// The server asked to wait longer than the client will (as in
    /// openai-python `_base_client.py`, `_should_retry`).
    RetryAfterTooLong,
    /// Timeout, connection failure, broken body.
    Transport,
    /// A 2xx whose body is not what the protocol promises.
    Protocol,
    /// A local file could not be read or written.
    Io,
}

#[derive(Debug)]
struct Inner {
    operation: String,
    kind: ErrorKind,
    status: Option<u16>,
    request_id: Option<String>,
    api: Option<ApiError>,
    detail: Option<String>,
    attempts: u32,
    unclear: bool,
    hint: Option<String>,
}

/// A failed provider call. Boxed so that `Result<_, ProviderError>` stays small.
#[derive(thiserror::Error)]
#[error("{}", self.render())]
pub struct ProviderError(Box<Inner>);

impl fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Same fields as Inner; the key is never in any of them.
        fmt::Debug::fmt(&self.0, f)
    }
}

impl ProviderError {
    pub(crate) fn new(operation: impl Into<String>, kind: ErrorKind) -> Self {
        ProviderError(Box::new(Inner {
            operation: operation.into(),
            kind,
            status: None,
            request_id: None,
            api: None,
            detail: None,
            attempts: 1,
            unclear: false,
            hint: None,
        }))
    }

    /// A configuration problem found before any request.
    pub(crate) fn config(
        operation: impl Into<String>,
        detail: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        ProviderError::new(operation, ErrorKind::Config)
            .with_detail(detail)
            .with_hint(hint)
    }

    pub(crate) fn with_status(mut self, status: Option<u16>) -> Self {
        self.0.status = status;
        self
    }

    pub(crate) fn with_request_id(mut self, id: Option<String>) -> Self {
        self.0.request_id = id;
        self
    }

    pub(crate) fn with_api(mut self, api: Option<ApiError>) -> Self {
        self.0.api = api;
        self
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.0.attempts = attempts;
        self
    }

    pub(crate) fn with_hint(mut self, hint: Option<String>) -> Self {
        self.0.hint = hint;
        self
    }

    /// Reclassifies a failure, for a backend that knows better than the
    /// status code (Azure's fail-fast `token_limit_exceeded` is a 400 that
    /// passes with time).
    pub(crate) fn into_kind(mut self, kind: ErrorKind) -> Self {
        self.0.kind = kind;
        self
    }

    /// Marks a create whose outcome is unknown: the batch may exist, since no
    /// idempotency key is sent (openai-python `_base_client.py`,
    /// `_idempotency_header`).
    pub(crate) fn into_unclear(mut self) -> Self {
        self.0.unclear = true;
        self.0.hint = Some(
            "the batch may have been created anyway; look for a batch whose metadata matches \
             before creating another (`batchgrader resume` does this)"
                .into(),
        );
        self
    }

    /// What was being done, e.g. `create batch` or `retrieve batch batch_abc`.
    pub fn operation(&self) -> &str {
        &self.0.operation
    }

    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The HTTP status of the last response, if there was one.
    pub fn status(&self) -> Option<u16> {
        self.0.status
    }

    /// The `x-request-id` of the last response: quote it to the provider's support.
    pub fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }

    /// The provider's error message, type and code, when the body had them.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.0.api.as_ref()
    }

    /// Attempts made before giving up.
    pub fn attempts(&self) -> u32 {
        self.0.attempts
    }

    /// True when running the command again later may succeed with no change
    /// from the user (rate limits, server errors, network trouble).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::RateLimited
                | ErrorKind::Server
                | ErrorKind::RetryAfterTooLong
                | ErrorKind::Transport
        )
    }

    /// True when the request may have taken effect although it failed: only
    /// `create batch` after a timeout, a broken connection or a 5xx. The caller
    /// must list batches and adopt a match before creating again.
    pub fn is_unclear(&self) -> bool {
        self.0.unclear
    }

    /// 401 or 403: the key is wrong or lacks permission.
    pub fn is_auth(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Auth | ErrorKind::Permission)
    }

    /// Out of credit or over a spend limit.
    pub fn is_quota(&self) -> bool {
        self.0.kind == ErrorKind::Quota
    }

    pub fn is_not_found(&self) -> bool {
        self.0.kind == ErrorKind::NotFound
    }

    /// A missing or refused key, or a bad base URL: the user's setup is at
    /// fault (exit code 2, README.md "Exit codes"), not the run.
    pub fn is_setup_fault(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::Config | ErrorKind::Auth | ErrorKind::Permission
        )
    }

    /// What the user can do next, for a line of its own under the error.
    pub fn hint(&self) -> Option<&str> {
        self.0.hint.as_deref()
    }

    /// `create batch failed: HTTP 401 invalid_api_key (request req_123): Incorrect API key provided`
    ///
    /// Every part a server may have written (code, request id, message,
    /// detail) is cleaned and cut here ([`clean_text`]), so no error can
    /// carry an escape sequence or a megabyte into a terminal, a log or the
    /// state, whoever built it.
    fn render(&self) -> String {
        let i = &self.0;
        let mut s = format!("{} failed", clean_text(&i.operation, MAX_MESSAGE));
        if i.attempts > 1 {
            s.push_str(&format!(" after {} attempts", i.attempts));
        }
        s.push(':');
        if let Some(status) = i.status {
            s.push_str(&format!(" HTTP {status}"));
            if let Some(code) = i.api.as_ref().and_then(ApiError::code_or_type) {
                s.push_str(&format!(" {}", clean_text(code, MAX_LABEL)));
            }
        }
        if let Some(id) = &i.request_id {
            s.push_str(&format!(" (request {})", clean_text(id, MAX_LABEL)));
        }
        let message = i
            .api
            .as_ref()
            .and_then(|a| a.message.as_deref())
            .or(i.detail.as_deref())
            .map(|m| clean_text(m, MAX_MESSAGE));
        match (message, i.status.is_some() || i.request_id.is_some()) {
            (Some(m), true) => s.push_str(&format!(": {m}")),
            (Some(m), false) => s.push_str(&format!(" {m}")),
            (None, _) => {}
        }
        if i.api.as_ref().and_then(|a| a.message.as_ref()).is_some()
            && let Some(d) = &i.detail
        {
            s.push_str(&format!("; {}", clean_text(d, MAX_MESSAGE)));
        }
        s
    }
}

/// Replaces every occurrence of `secret` in `text` with `***`. A server may
/// echo the key back (OpenAI masks it, others need not); it must never reach a
/// log or a terminal.
pub(crate) fn redact(text: &str, secret: &str) -> String {
    if secret.len() < 4 {
        return text.to_string();
    }
    text.replace(secret, "***")
}

/// A wait as people read it: `1h 30m`, `45s`; a server's wait of a year or
/// more (or one too large to count) is said as such.
pub(crate) fn human_wait(d: Duration) -> String {
    const YEAR: u64 = 365 * 24 * 3600;
    if d.as_secs() >= YEAR {
        return "more than a year".into();
    }
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_as_people_read_them() {
        let cases = [
            (Duration::ZERO, "1s"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_secs(5400), "1h 30m"),
            (Duration::from_secs(365 * 24 * 3600), "more than a year"),
            (Duration::MAX, "more than a year"),
        ];
        for (d, want) in cases {
            assert_eq!(human_wait(d), want, "{d:?}");
        }
    }

    fn api(code: &str, message: &str) -> Option<ApiError> {
        Some(ApiError {
            message: Some(message.into()),
            kind: Some("invalid_request_error".into()),
            code: Some(code.into()),
            param: None,
        })
    }

    #[test]
    fn display_table() {
        let gateway = ApiError {
            message: Some("model not found".into()),
            kind: None,
            code: Some("400".into()),
            param: None,
        };
        let cases = [
            // A gateway's status in `code` is not printed twice.
            (
                ProviderError::new("chat completion", ErrorKind::Rejected)
                    .with_status(Some(400))
                    .with_api(Some(gateway)),
                "chat completion failed: HTTP 400: model not found",
            ),
            (
                ProviderError::new("chat completion", ErrorKind::Rejected)
                    .with_status(Some(400))
                    .with_api(api("400", "bad").map(|a| ApiError {
                        kind: Some("BadRequestError".into()),
                        ..a
                    })),
                "chat completion failed: HTTP 400 BadRequestError: bad",
            ),
            (
                ProviderError::new("create batch", ErrorKind::Auth)
                    .with_status(Some(401))
                    .with_request_id(Some("req_123".into()))
                    .with_api(api("invalid_api_key", "Incorrect API key provided"))
                    .with_detail("the API key in OPENAI_API_KEY was refused"),
                "create batch failed: HTTP 401 invalid_api_key (request req_123): Incorrect API key provided; the API key in OPENAI_API_KEY was refused",
            ),
            (
                ProviderError::new("retrieve batch", ErrorKind::Server)
                    .with_status(Some(503))
                    .with_attempts(5)
                    .with_detail("upstream connect error"),
                "retrieve batch failed after 5 attempts: HTTP 503: upstream connect error",
            ),
            (
                ProviderError::new("upload file", ErrorKind::Transport)
                    .with_attempts(3)
                    .with_detail("timed out after 120s"),
                "upload file failed after 3 attempts: timed out after 120s",
            ),
            (
                ProviderError::config(
                    "configure client",
                    "environment variable OPENAI_API_KEY is not set",
                    None,
                ),
                "configure client failed: environment variable OPENAI_API_KEY is not set",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn classes_and_exit_codes() {
        let e = ProviderError::new("x", ErrorKind::Quota);
        assert!(e.is_quota() && !e.is_auth() && !e.is_retryable());
        assert!(!e.is_setup_fault());
        let e = ProviderError::new("x", ErrorKind::Permission);
        assert!(e.is_auth());
        assert!(e.is_setup_fault());
        let e = ProviderError::new("create batch", ErrorKind::Server).into_unclear();
        assert!(e.is_unclear() && e.is_retryable());
        assert!(e.hint().unwrap().contains("metadata"));
    }

    #[test]
    fn server_text_is_cleaned_and_cut() {
        let e = ProviderError::new("retrieve batch b1", ErrorKind::Server)
            .with_status(Some(500))
            .with_request_id(Some("req\u{1b}]0;title\u{7}_1".into()))
            .with_api(Some(ApiError {
                message: Some(format!("\u{1b}[2J\u{1b}[Hboom\n{}", "x".repeat(100_000))),
                kind: None,
                code: Some("\u{9b}31mcode".into()),
                param: None,
            }));
        let text = e.to_string();
        assert!(
            text.starts_with("retrieve batch b1 failed: HTTP 500 code (request req_1): boom x"),
            "{text}"
        );
        assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
        assert!(text.chars().count() < MAX_MESSAGE + 100, "{}", text.len());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("bad key sk-secret-123 given", "sk-secret-123"),
            "bad key *** given"
        );
        assert_eq!(redact("abc", ""), "abc");
    }

    #[test]
    fn error_is_small() {
        assert_eq!(
            std::mem::size_of::<ProviderError>(),
            std::mem::size_of::<usize>()
        );
    }
}
