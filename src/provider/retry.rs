//! The one retry classifier for every HTTP call.
//!
//! Pure: the attempt outcome, the attempt number, a jitter value and "now" come
//! in as values; a [`Decision`] comes out. Sleeping, the clock and randomness
//! stay in the client. The rules follow openai-python's `_should_retry` and
//! `_calculate_retry_timeout` (`src/openai/_base_client.py`) with two
//! deliberate differences: `insufficient_quota` is never retried (more
//! attempts cannot add credit), and the attempt budget is larger because
//! batchgrader runs for hours.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::api_error::ApiError;

/// Attempts in all (first try included) for the long-running CLI.
/// The SDK makes 3 (`DEFAULT_MAX_RETRIES = 2`, openai-python `_constants.py`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Tunables of the classifier. The defaults are the SDK's constants
/// (openai-python `_constants.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// `INITIAL_RETRY_DELAY`.
    pub initial_backoff: Duration,
    /// `MAX_RETRY_DELAY`.
    pub max_backoff: Duration,
    /// `MAX_RETRY_AFTER_DELAY`: a longer server-requested wait ends the call.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// A failure below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    Timeout,
    /// Could not connect; the request was certainly not sent.
    Connect,
    /// The connection broke some other way (reset, truncated body, ...).
    Other,
}

/// The headers that steer retries, as raw text (openai-python
/// `_parse_retry_after_header`, `_should_retry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryHeaders {
    /// `retry-after-ms`: non-standard, milliseconds, takes precedence.
    pub retry_after_ms: Option<String>,
    /// `retry-after`: seconds or an HTTP date.
    pub retry_after: Option<String>,
    /// `x-should-retry`: `true`/`false`, the server's override.
    pub should_retry: Option<String>,
}

/// What one attempt ended with, when it did not succeed.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Transport(TransportFailure),
    Http {
        status: u16,
        headers: &'a RetryHeaders,
        /// The error body as text (may be anything, even HTML).
        body: &'a str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry { after: Duration },
    GiveUp(Reason),
}

/// Why the classifier stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Retryable, but every attempt of the budget is spent.
    Exhausted { attempts: u32 },
    /// The server asked for a wait longer than the policy allows (openai-python
    /// `_should_retry`).
    RetryAfterTooLong { wait: Duration },
    /// `x-should-retry: false`.
    ServerSaidNo,
    /// Out of credit or over a spend limit (`insufficient_quota`).
    Quota,
    /// 401: the key was refused.
    Unauthorized,
    /// 403: the key may not do this (permission, project, organization).
    Forbidden,
    /// 404: wrong id, expired file, or a server without this API (a stock vLLM
    /// server has no `/v1/files`, BerriAI/litellm#17996).
    NotFound,
    /// Any other status that retrying cannot change (400, 422, 3xx, ...).
    Rejected,
}

impl Reason {
    /// True when a later run may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Reason::Exhausted { .. } | Reason::RetryAfterTooLong { .. }
        )
    }
}

/// Statuses retried by default: 408 (request timeout), 409 (the SDK treats it
/// as a lock timeout), 429 and every 5xx (openai-python `_should_retry`).
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500..=599)
}

/// Decides what to do after attempt number `attempt` (1-based) failed.
///
/// `jitter` is a value in `[0, 1)`; it only shortens the back-off, by up to 25 %.
/// `now` is used only for a `retry-after` given as an HTTP date.
pub fn classify(
    outcome: &Outcome<'_>,
    attempt: u32,
    policy: &RetryPolicy,
    jitter: f64,
    now: SystemTime,
) -> Decision {
    let server_wait = match outcome {
        // The SDK retries every connection-level failure, POST included
        // (openai-python `_base_client.py`, `request`).
        Outcome::Transport(_) => None,
        Outcome::Http {
            status,
            headers,
            body,
        } => {
            if let Some(reason) = final_reason(*status, headers, body) {
                return Decision::GiveUp(reason);
            }
            retry_after(headers, now)
        }
    };
    if attempt >= policy.max_attempts {
        return Decision::GiveUp(Reason::Exhausted { attempts: attempt });
    }
    match server_wait {
        Some(wait) if wait > policy.max_retry_after => {
            Decision::GiveUp(Reason::RetryAfterTooLong { wait })
        }
        Some(wait) if !wait.is_zero() => Decision::Retry { after: wait },
        _ => Decision::Retry {
            after: backoff(policy, attempt.saturating_sub(1), jitter),
        },
    }
}

/// `None` when the response is worth another attempt.
fn final_reason(status: u16, headers: &RetryHeaders, body: &str) -> Option<Reason> {
    // Quota is checked before `x-should-retry`: no server hint can add credit,
    // and retrying would bury the message that tells the user what to do.
    if ApiError::from_body(body).is_some_and(|e| e.is_quota()) {
        return Some(Reason::Quota);
    }
    match parse_bool(headers.should_retry.as_deref()) {
        Some(true) => return None,
        Some(false) => return Some(Reason::ServerSaidNo),
        None => {}
    }
    if status_is_retryable(status) {
        return None;
    }
    Some(match status {
        401 => Reason::Unauthorized,
        403 => Reason::Forbidden,
        404 => Reason::NotFound,
        _ => Reason::Rejected,
    })
}

fn parse_bool(v: Option<&str>) -> Option<bool> {
    match v?.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `min(initial · 2^n, max) · (1 − 0.25 · jitter)`, n = retries already made.
pub fn backoff(policy: &RetryPolicy, retries_done: u32, jitter: f64) -> Duration {
    let factor = 2f64.powi(retries_done.min(32) as i32);
    let base =
        (policy.initial_backoff.as_secs_f64() * factor).min(policy.max_backoff.as_secs_f64());
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    Duration::from_secs_f64(base * (1.0 - 0.25 * jitter))
}

/// The server-requested wait: `retry-after-ms`, then `retry-after` in seconds,
/// then `retry-after` as an HTTP date (openai-python
/// `_parse_retry_after_header`). A date in the past means 0.
///
/// A number too large for a `Duration` (`1e23`, `inf`) is the longest wait
/// there is, never no wait: a server that asks to be left alone for ever
/// must stop the run, not be asked again at once.
pub fn retry_after(headers: &RetryHeaders, now: SystemTime) -> Option<Duration> {
    // NaN and negative numbers say nothing; `>=` is false for NaN.
    let secs = |s: &str| s.trim().parse::<f64>().ok().filter(|v| *v >= 0.0);
    let wait = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX);
    if let Some(ms) = headers.retry_after_ms.as_deref().and_then(secs) {
        return Some(wait(ms / 1000.0));
    }
    let raw = headers.retry_after.as_deref()?;
    if let Some(s) = secs(raw) {
        return Some(wait(s));
    }
    let at = parse_http_date(raw)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7),
/// the only form senders may use; the weekday is optional here.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut parts: Vec<&str> = s.split_whitespace().collect();
    if parts.first().is_some_and(|p| p.ends_with(',')) {
        parts.remove(0);
    }
    let [day, month, year, time, zone] = parts.as_slice() else {
        return None;
    };
    if !matches!(*zone, "GMT" | "UTC" | "Z") {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m.eq_ignore_ascii_case(month))? as u32
        + 1;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + sec;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn http(status: u16, headers: &RetryHeaders, body: &'static str) -> Decision {
        let outcome = Outcome::Http {
            status,
            headers,
            body,
        };
        classify(&outcome, 1, &RetryPolicy::default(), 0.0, now())
    }

    fn retry(secs: f64) -> Decision {
        Decision::Retry {
            after: Duration::from_secs_f64(secs),
        }
    }

    const QUOTA_BODY: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const RATE_BODY: &str = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

    /// Snapshot of the retried statuses, like uv's `retried_status_codes`:
    /// a change of policy shows up here in review.
    #[test]
    fn retried_status_codes() {
        let retried: Vec<u16> = (100..=599)
            .filter(|s| {
                matches!(
                    http(*s, &RetryHeaders::default(), ""),
                    Decision::Retry { .. }
                )
            })
            .collect();
        let mut ranges: Vec<String> = Vec::new();
        let mut i = 0;
        while i < retried.len() {
            let start = retried[i];
            while i + 1 < retried.len() && retried[i + 1] == retried[i] + 1 {
                i += 1;
            }
            ranges.push(if start == retried[i] {
                start.to_string()
            } else {
                format!("{start}-{}", retried[i])
            });
            i += 1;
        }
        assert_eq!(ranges.join(", "), "408-409, 429, 500-599");
    }

    #[test]
    fn http_table() {
        let none = RetryHeaders::default();
        let h = |ms: Option<&str>, ra: Option<&str>, should: Option<&str>| RetryHeaders {
            retry_after_ms: ms.map(str::to_string),
            retry_after: ra.map(str::to_string),
            should_retry: should.map(str::to_string),
        };
        let cases: Vec<(&str, u16, RetryHeaders, &'static str, Decision)> = vec![
            ("500 backs off 0.5 s", 500, none.clone(), "", retry(0.5)),
            (
                "503 html body",
                503,
                none.clone(),
                "<html>busy</html>",
                retry(0.5),
            ),
            ("429 rate limit", 429, none.clone(), RATE_BODY, retry(0.5)),
            ("408", 408, none.clone(), "", retry(0.5)),
            ("409", 409, none.clone(), "", retry(0.5)),
            (
                "429 insufficient_quota is final",
                429,
                none.clone(),
                QUOTA_BODY,
                Decision::GiveUp(Reason::Quota),
            ),
            (
                "quota beats x-should-retry: true",
                429,
                h(None, None, Some("true")),
                QUOTA_BODY,
                Decision::GiveUp(Reason::Quota),
            ),
            (
                "billing_hard_limit_reached on a 400",
                400,
                none.clone(),
                r#"{"error":{"message":"Billing hard limit has been reached","type":"invalid_request_error","code":"billing_hard_limit_reached"}}"#,
                Decision::GiveUp(Reason::Quota),
            ),
            (
                "spend limit",
                429,
                none.clone(),
                r#"{"error":{"message":"m","type":"requests","code":"project_spend_limit_exceeded"}}"#,
                Decision::GiveUp(Reason::Quota),
            ),
            (
                "401",
                401,
                none.clone(),
                "",
                Decision::GiveUp(Reason::Unauthorized),
            ),
            (
                "403",
                403,
                none.clone(),
                "",
                Decision::GiveUp(Reason::Forbidden),
            ),
            (
                "404",
                404,
                none.clone(),
                "",
                Decision::GiveUp(Reason::NotFound),
            ),
            (
                "400",
                400,
                none.clone(),
                "",
                Decision::GiveUp(Reason::Rejected),
            ),
            (
                "422",
                422,
                none.clone(),
                "",
                Decision::GiveUp(Reason::Rejected),
            ),
            (
                "x-should-retry true on 400",
                400,
                h(None, None, Some("true")),
                "",
                retry(0.5),
            ),
            (
                "x-should-retry false on 503",
                503,
                h(None, None, Some("false")),
                "",
                Decision::GiveUp(Reason::ServerSaidNo),
            ),
            (
                "x-should-retry junk is ignored",
                503,
                h(None, None, Some("maybe")),
                "",
                retry(0.5),
            ),
            (
                "retry-after-ms wins",
                429,
                h(Some("1500"), Some("30"), None),
                "",
                retry(1.5),
            ),
            (
                "retry-after seconds",
                429,
                h(None, Some("30"), None),
                "",
                retry(30.0),
            ),
            (
                "retry-after 120 s is honoured",
                503,
                h(None, Some("120"), None),
                "",
                retry(120.0),
            ),
            (
                "retry-after over 120 s gives up",
                429,
                h(None, Some("3600"), None),
                "",
                Decision::GiveUp(Reason::RetryAfterTooLong {
                    wait: Duration::from_secs(3600),
                }),
            ),
            (
                "retry-after too large for a duration stops, not retries",
                429,
                h(None, Some("100000000000000000000000"), None),
                "",
                Decision::GiveUp(Reason::RetryAfterTooLong {
                    wait: Duration::MAX,
                }),
            ),
            (
                "retry-after-ms too large, in exponent form",
                429,
                h(Some("1e400"), None, None),
                "",
                Decision::GiveUp(Reason::RetryAfterTooLong {
                    wait: Duration::MAX,
                }),
            ),
            (
                "retry-after infinite",
                503,
                h(None, Some("inf"), None),
                "",
                Decision::GiveUp(Reason::RetryAfterTooLong {
                    wait: Duration::MAX,
                }),
            ),
            (
                "retry-after NaN says nothing",
                503,
                h(None, Some("NaN"), None),
                "",
                retry(0.5),
            ),
            (
                "retry-after as an HTTP date",
                503,
                h(None, Some("Tue, 14 Nov 2023 22:13:40 GMT"), None),
                "",
                retry(20.0),
            ),
            (
                "retry-after date in the past → back-off",
                503,
                h(None, Some("Sun, 06 Nov 1994 08:49:37 GMT"), None),
                "",
                retry(0.5),
            ),
            (
                "retry-after 0 → back-off",
                503,
                h(None, Some("0"), None),
                "",
                retry(0.5),
            ),
            (
                "retry-after garbage → back-off",
                503,
                h(Some("soon"), Some("later"), None),
                "",
                retry(0.5),
            ),
            (
                "negative retry-after-ms falls to retry-after",
                503,
                h(Some("-5"), Some("2"), None),
                "",
                retry(2.0),
            ),
            (
                "retry-after ignored on a final status",
                400,
                h(None, Some("5"), None),
                "",
                Decision::GiveUp(Reason::Rejected),
            ),
        ];
        for (name, status, headers, body, want) in cases {
            assert_eq!(http(status, &headers, body), want, "{name}");
        }
    }

    #[test]
    fn transport_failures_are_retried() {
        for f in [
            TransportFailure::Timeout,
            TransportFailure::Connect,
            TransportFailure::Other,
        ] {
            let d = classify(
                &Outcome::Transport(f),
                2,
                &RetryPolicy::default(),
                0.0,
                now(),
            );
            assert_eq!(d, retry(1.0), "{f:?}");
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let o = Outcome::Transport(TransportFailure::Timeout);
        assert!(matches!(
            classify(&o, 2, &policy, 0.0, now()),
            Decision::Retry { .. }
        ));
        assert_eq!(
            classify(&o, 3, &policy, 0.0, now()),
            Decision::GiveUp(Reason::Exhausted { attempts: 3 })
        );
        // A final status is reported as such even on the last attempt.
        let none = RetryHeaders::default();
        let o = Outcome::Http {
            status: 401,
            headers: &none,
            body: "",
        };
        assert_eq!(
            classify(&o, 3, &policy, 0.0, now()),
            Decision::GiveUp(Reason::Unauthorized)
        );
    }

    #[test]
    fn backoff_schedule() {
        let p = RetryPolicy::default();
        let secs: Vec<f64> = (0..7).map(|n| backoff(&p, n, 0.0).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
        // Jitter only shortens, by at most 25 %.
        assert_eq!(backoff(&p, 3, 0.999_999).as_secs_f64().round(), 3.0);
        assert_eq!(backoff(&p, 0, 1.0), Duration::from_millis(375));
        assert_eq!(backoff(&p, 0, f64::NAN), Duration::from_millis(500));
        assert_eq!(backoff(&p, u32::MAX, 0.5), Duration::from_secs(7));
    }

    #[test]
    fn http_dates() {
        let cases = [
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(784_111_777)),
            ("06 Nov 1994 08:49:37 GMT", Some(784_111_777)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            ("Tue, 29 Feb 2000 12:00:00 GMT", Some(951_825_600)),
            ("Sun, 06 Nov 1994 08:49:37 PST", None),
            ("Sunday, 06-Nov-94 08:49:37 GMT", None),
            ("Sun, 06 Foo 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 25:49:37 GMT", None),
            ("", None),
        ];
        for (s, want) in cases {
            let got = parse_http_date(s).map(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
            assert_eq!(got, want, "{s}");
        }
    }
}
