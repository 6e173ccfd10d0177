//! What to do with one attempt's result: record it, send it again (now or
//! after a wait, counting against the retry budget or not), or stop the run.
//! Pure: the retry classifier (`provider::retry::classify`, the one for
//! every call) decides retries and waits; this adds what only direct mode
//! knows.

use std::time::{Duration, SystemTime};

use crate::provider::LineOutcome;
use crate::provider::retry::{
    self, Decision, Outcome, Reason, RetryHeaders, RetryPolicy, TransportFailure,
};

/// 429s one request may meet in a pass before it is recorded as a
/// (retryable) failure: rate limiting is pacing, not failure, but a server
/// that never lets a request through must not keep a run alive for ever.
pub const MAX_RATE_LIMITED: u32 = 30;

/// What came back from one attempt.
#[derive(Debug, Clone, Copy)]
pub enum Got<'a> {
    Transport {
        failure: TransportFailure,
        detail: &'a str,
    },
    Answer {
        status: u16,
        retry: &'a RetryHeaders,
        /// The raw body (the classifier reads `insufficient_quota` from it).
        body: &'a str,
        /// The body classified as a batch line's response would be.
        line: &'a LineOutcome,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Record the classified answer (a success, or a final failure).
    Record,
    /// Record a retryable failure: the retry budget of this pass is spent.
    Fail { code: String, message: String },
    /// Send it again after `after`; `counts`: the attempt used up one of
    /// the retry budget (a refused connection or a 429 does not).
    Again {
        after: Duration,
        counts: bool,
        class: &'static str,
    },
    /// The whole run cannot go on (refused key, no credit, a wait longer
    /// than a client should make).
    Stop(Reason),
}

/// The class an attempt's failure is counted under in the live view.
pub fn failure_class(status: u16) -> &'static str {
    match status {
        429 => "rate_limited",
        408 | 409 | 500..=599 => "server_error",
        _ => "rejected",
    }
}

/// `tries`: attempts of this request that failed so far in this pass and
/// counted; `limited`: its 429s so far.
pub fn judge(
    got: Got<'_>,
    tries: u32,
    limited: u32,
    policy: &RetryPolicy,
    jitter: f64,
    now: SystemTime,
) -> Verdict {
    let again = |decision: Decision, counts, class, code: &str, message: &str| match decision {
        Decision::Retry { after } => Verdict::Again {
            after,
            counts,
            class,
        },
        Decision::GiveUp(_) => Verdict::Fail {
            code: code.to_string(),
            message: message.to_string(),
        },
    };
    match got {
        // Nothing was sent: try again at once (elsewhere, if the endpoint is
        // left out); the endpoint's cool-down paces it.
        Got::Transport {
            failure: TransportFailure::Connect,
            ..
        } => Verdict::Again {
            after: Duration::ZERO,
            counts: false,
            class: "refused",
        },
        Got::Transport { failure, detail } => {
            let d = retry::classify(&Outcome::Transport(failure), tries + 1, policy, jitter, now);
            again(d, true, "network", "network_error", detail)
        }
        Got::Answer {
            line: LineOutcome::Success(_),
            ..
        } => Verdict::Record,
        Got::Answer {
            status: 200..=299,
            line: LineOutcome::Failure(f),
            ..
        } => {
            // A 2xx that is not a completion: as a broken connection.
            let d = retry::classify(
                &Outcome::Transport(TransportFailure::Other),
                tries + 1,
                policy,
                jitter,
                now,
            );
            again(d, true, "bad_response", &f.code, &f.message)
        }
        Got::Answer {
            status,
            retry: headers,
            body,
            ..
        } => {
            let outcome = Outcome::Http {
                status,
                headers,
                body,
            };
            let (decision, counts) = if status == 429 {
                let p = RetryPolicy {
                    max_attempts: MAX_RATE_LIMITED,
                    ..*policy
                };
                (
                    retry::classify(&outcome, limited + 1, &p, jitter, now),
                    false,
                )
            } else {
                (
                    retry::classify(&outcome, tries + 1, policy, jitter, now),
                    true,
                )
            };
            match decision {
                Decision::GiveUp(
                    r @ (Reason::Quota
                    | Reason::Unauthorized
                    | Reason::Forbidden
                    | Reason::RetryAfterTooLong { .. }),
                ) => Verdict::Stop(r),
                // Final, or retryable and out of attempts: the line says
                // which, so a later pass or run may send it again.
                Decision::GiveUp(_) => Verdict::Record,
                Decision::Retry { after } => Verdict::Again {
                    after,
                    counts,
                    class: failure_class(status),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::openai::lines::classify_reply;

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn verdicts() {
        let policy = RetryPolicy::default();
        let none = RetryHeaders::default();
        let after_ms = RetryHeaders {
            retry_after_ms: Some("50".into()),
            retry_after: Some("1".into()),
            should_retry: None,
        };
        let long = RetryHeaders {
            retry_after: Some("600".into()),
            ..RetryHeaders::default()
        };
        let ok_body = r#"{"choices":[{"message":{"content":"7"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let limit =
            r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#;
        let quota = r#"{"error":{"message":"no credit","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let bad = r#"{"error":{"message":"context too long","type":"invalid_request_error","code":null}}"#;
        let vllm = r#"{"object":"error","message":"boom","type":"InternalServerError","code":500}"#;
        let ms = Duration::from_millis;
        let again = |after, counts, class| Verdict::Again {
            after,
            counts,
            class,
        };
        // (status or transport, headers, body, tries, limited) → verdict
        type Case<'a> = (Option<u16>, &'a RetryHeaders, &'a str, u32, u32, Verdict);
        let cases: Vec<Case<'_>> = vec![
            (Some(200), &none, ok_body, 0, 0, Verdict::Record),
            // A 2xx that is not a completion is retried like a broken body.
            (
                Some(200),
                &none,
                "<html>",
                0,
                0,
                again(ms(500), true, "bad_response"),
            ),
            (
                Some(200),
                &none,
                "<html>",
                4,
                0,
                Verdict::Fail {
                    code: "bad_response".into(),
                    message: "HTTP 200, but not a chat completion: the body is not JSON".into(),
                },
            ),
            // 429: the server's wait (retry-after-ms first), not counted.
            (
                Some(429),
                &after_ms,
                limit,
                4,
                0,
                again(ms(50), false, "rate_limited"),
            ),
            (
                Some(429),
                &none,
                limit,
                0,
                3,
                again(ms(4000), false, "rate_limited"),
            ),
            (
                Some(429),
                &none,
                limit,
                0,
                MAX_RATE_LIMITED - 1,
                Verdict::Record,
            ),
            (Some(429), &none, quota, 0, 0, Verdict::Stop(Reason::Quota)),
            (
                Some(429),
                &long,
                limit,
                0,
                0,
                Verdict::Stop(Reason::RetryAfterTooLong {
                    wait: Duration::from_secs(600),
                }),
            ),
            (
                Some(503),
                &none,
                vllm,
                0,
                0,
                again(ms(500), true, "server_error"),
            ),
            (
                Some(500),
                &none,
                vllm,
                1,
                0,
                again(ms(1000), true, "server_error"),
            ),
            (Some(500), &none, vllm, 4, 0, Verdict::Record),
            (Some(400), &none, bad, 0, 0, Verdict::Record),
            (
                Some(401),
                &none,
                bad,
                0,
                0,
                Verdict::Stop(Reason::Unauthorized),
            ),
            (
                Some(403),
                &none,
                bad,
                0,
                0,
                Verdict::Stop(Reason::Forbidden),
            ),
            (Some(404), &none, bad, 0, 0, Verdict::Record),
        ];
        for (i, (status, headers, body, tries, limited, want)) in cases.into_iter().enumerate() {
            let line = classify_reply("r1", status.unwrap_or(0), body);
            let got = Got::Answer {
                status: status.unwrap(),
                retry: headers,
                body,
                line: &line,
            };
            assert_eq!(
                judge(got, tries, limited, &policy, 0.0, at()),
                want,
                "case {i}"
            );
        }
        let t = |failure, tries| {
            judge(
                Got::Transport {
                    failure,
                    detail: "reset",
                },
                tries,
                0,
                &policy,
                0.0,
                at(),
            )
        };
        assert_eq!(
            t(TransportFailure::Connect, 99),
            again(Duration::ZERO, false, "refused")
        );
        assert_eq!(
            t(TransportFailure::Timeout, 0),
            again(ms(500), true, "network")
        );
        assert_eq!(
            t(TransportFailure::Other, 4),
            Verdict::Fail {
                code: "network_error".into(),
                message: "reset".into()
            }
        );
    }

    #[test]
    fn replies_classify_like_batch_lines() {
        let ok = classify_reply(
            "r3",
            200,
            r#"{"id":"c1","choices":[{"message":{"content":"8"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1}}"#,
        );
        match ok {
            LineOutcome::Success(s) => {
                assert_eq!((s.content.as_str(), s.usage.prompt_tokens), ("8", 12));
                assert_eq!(s.custom_id, "r3");
            }
            other => panic!("{other:?}"),
        }
        // (status, body) → (code, retryable)
        for (status, body, code, retryable) in [
            (
                400,
                r#"{"error":{"message":"m","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
                "context_length_exceeded",
                false,
            ),
            // vLLM: integer code, its type names it.
            (
                400,
                r#"{"object":"error","message":"m","type":"BadRequestError","code":400}"#,
                "BadRequestError",
                false,
            ),
            (503, "upstream connect error", "http_503", true),
            (500, "", "http_500", true),
            (
                429,
                r#"{"error":{"message":"m","type":"insufficient_quota","code":"insufficient_quota"}}"#,
                "insufficient_quota",
                false,
            ),
        ] {
            match classify_reply("r1", status, body) {
                LineOutcome::Failure(f) => {
                    assert_eq!((f.code.as_str(), f.retryable), (code, retryable), "{body}");
                    assert!(!f.message.is_empty());
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
