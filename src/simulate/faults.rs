//! Which fault a call meets: the pure decisions behind the failure-injection
//! settings, and the error bodies the real API answers with.

use axum::http::StatusCode;

use super::api_error::{ApiError, ErrorBody};
use super::state::LineError;

/// The wait an injected 429 asks for. OpenAI sends `retry-after` in seconds;
/// openai-python reads the non-standard `retry-after-ms` first
/// (`src/openai/_base_client.py`, `_parse_retry_after_header`), and so does
/// our client, which keeps tests that meet many 429s fast.
pub const RETRY_AFTER_MS: u64 = 50;

/// The 5xx statuses OpenAI's API is seen to answer: 500 (internal error), 502
/// (bad gateway) and 503 (overloaded); openai-python retries all of them
/// (`_base_client.py`, `_should_retry`: any status >= 500).
const SERVER_ERRORS: [StatusCode; 3] = [
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
];

/// The shares of `/v1` calls answered with an error before anything is done.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CallRates {
    pub rate_limit: f64,
    pub server_error: f64,
    /// `http_error_rate`: half 429, half 500.
    pub either: f64,
}

impl CallRates {
    pub fn any(&self) -> bool {
        self.rate_limit + self.server_error + self.either > 0.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallFault {
    RateLimit,
    ServerError(StatusCode),
}

/// The fault for a call whose draws are `roll` (uniform in `[0, 1)`) and
/// `pick` (any 64 bits). The rates are consecutive slices of `[0, 1)`, so
/// each is the exact share of calls it names (together they cap at every
/// call); `pick` chooses the status within a slice.
pub fn call_fault(rates: &CallRates, roll: f64, pick: u64) -> Option<CallFault> {
    let mut edge = rates.rate_limit;
    if roll < edge {
        return Some(CallFault::RateLimit);
    }
    edge += rates.server_error;
    if roll < edge {
        let status = SERVER_ERRORS[(pick % SERVER_ERRORS.len() as u64) as usize];
        return Some(CallFault::ServerError(status));
    }
    edge += rates.either;
    if roll < edge {
        return Some(if pick.is_multiple_of(2) {
            CallFault::ServerError(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            CallFault::RateLimit
        });
    }
    None
}

impl CallFault {
    pub fn error(self) -> ApiError {
        match self {
            CallFault::RateLimit => rate_limited(),
            CallFault::ServerError(status) => server_error(status),
        }
    }
}

/// A 429 shaped like OpenAI's request-rate one (`type: "requests"`,
/// `code: "rate_limit_exceeded"`), which is worth retrying, unlike
/// `insufficient_quota`.
pub fn rate_limited() -> ApiError {
    ApiError {
        retry_after_ms: Some(RETRY_AFTER_MS),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorBody {
                message: "Rate limit reached for requests per min (RPM). Please try again \
                          in 50ms. (simulated)"
                    .into(),
                kind: "requests".into(),
                param: None,
                code: Some("rate_limit_exceeded".into()),
            },
        )
    }
}

/// A 5xx in the OpenAI error envelope.
pub fn server_error(status: StatusCode) -> ApiError {
    let message = match status {
        StatusCode::BAD_GATEWAY => "Bad gateway. (simulated)",
        StatusCode::SERVICE_UNAVAILABLE => "The server is overloaded or not ready yet. (simulated)",
        _ => {
            "The server had an error while processing your request. Sorry about that! \
              (simulated)"
        }
    };
    ApiError::new(
        status,
        ErrorBody {
            message: message.into(),
            kind: "server_error".into(),
            param: None,
            code: None,
        },
    )
}

/// Is this request refused (`reject_rate`)? One draw per request within
/// its `scope` (a batch, a chat call): the same batch refuses the same
/// requests when its files are written again, and at rate 1 every request.
pub fn rejected(rate: f64, seed: u64, scope: &str, key: &str) -> bool {
    rate > 0.0
        && super::hash::unit(super::hash::hash64(&[
            b"reject",
            &seed.to_le_bytes(),
            scope.as_bytes(),
            key.as_bytes(),
        ])) < rate
}

/// The 400 a refused request gets: `invalid_request_error`, which no
/// client retries (a gateway without its database answers LiteLLM's
/// `no_db_connection` this way; llama.cpp's server a grammar it cannot use).
pub fn rejected_request() -> ErrorBody {
    ErrorBody {
        message: "The request was refused (simulated: --reject-requests). Sending it again \
                  will not help until the server is fixed."
            .into(),
        kind: "invalid_request_error".into(),
        param: None,
        code: Some("request_refused".into()),
    }
}

/// What a batch over the enqueued-token quota shows in `errors.data`. OpenAI
/// reports it this way, after the create was accepted (openai/openai-python
/// issues #1643 and #2084 quote the message, with a 2,000,000-token limit for
/// gpt-4o-mini).
pub fn token_limit_error(model: Option<&str>) -> LineError {
    LineError {
        code: "token_limit_exceeded".into(),
        message: format!(
            "Enqueued token limit reached for {} in organization org-simulated. Limit: \
             2,000,000 enqueued tokens. Please try again once some in_progress batches have \
             been completed. (simulated)",
            model.unwrap_or("this model")
        ),
        line: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(rate_limit: f64, server_error: f64, either: f64) -> CallRates {
        CallRates {
            rate_limit,
            server_error,
            either,
        }
    }

    #[test]
    fn rejected_requests() {
        let keys: Vec<String> = (0..1000).map(|i| format!("r{i}")).collect();
        let share =
            |rate: f64, scope: &str| keys.iter().filter(|k| rejected(rate, 7, scope, k)).count();
        // (rate, requests of 1,000 refused: at least, at most)
        let cases = [
            (0.0, 0, 0),
            (1.0, 1000, 1000),
            (0.5, 430, 570),
            (0.1, 60, 140),
        ];
        for (rate, low, high) in cases {
            let n = share(rate, "batch_1");
            assert!((low..=high).contains(&n), "{rate}: {n}");
        }
        // The same request of the same batch: the same answer every time.
        assert_eq!(
            rejected(0.5, 7, "batch_1", "r3"),
            rejected(0.5, 7, "batch_1", "r3")
        );
        assert_eq!(rejected_request().kind, "invalid_request_error");
    }

    #[test]
    fn slices_of_the_roll() {
        let r = rates(0.1, 0.2, 0.2);
        assert_eq!(call_fault(&r, 0.0, 0), Some(CallFault::RateLimit));
        assert_eq!(call_fault(&r, 0.099, 0), Some(CallFault::RateLimit));
        assert_eq!(
            call_fault(&r, 0.1, 0),
            Some(CallFault::ServerError(StatusCode::INTERNAL_SERVER_ERROR))
        );
        assert_eq!(
            call_fault(&r, 0.2, 1),
            Some(CallFault::ServerError(StatusCode::BAD_GATEWAY))
        );
        assert_eq!(
            call_fault(&r, 0.29, 2),
            Some(CallFault::ServerError(StatusCode::SERVICE_UNAVAILABLE))
        );
        assert_eq!(
            call_fault(&r, 0.31, 4),
            Some(CallFault::ServerError(StatusCode::INTERNAL_SERVER_ERROR))
        );
        assert_eq!(call_fault(&r, 0.49, 3), Some(CallFault::RateLimit));
        assert_eq!(call_fault(&r, 0.51, 0), None);
        assert_eq!(call_fault(&rates(0.0, 0.0, 0.0), 0.0, 0), None);
        assert!(!rates(0.0, 0.0, 0.0).any());
        assert_eq!(
            call_fault(&rates(1.0, 0.0, 0.0), 0.999, 0),
            Some(CallFault::RateLimit)
        );
    }

    #[test]
    fn shares_come_out_as_configured() {
        let r = rates(0.25, 0.25, 0.0);
        let (mut limited, mut failed) = (0, 0);
        let n = 10_000u64;
        for i in 0..n {
            let roll = super::super::hash::unit(super::super::hash::hash64(&[&i.to_le_bytes()]));
            match call_fault(&r, roll, i) {
                Some(CallFault::RateLimit) => limited += 1,
                Some(CallFault::ServerError(_)) => failed += 1,
                None => {}
            }
        }
        for count in [limited, failed] {
            assert!((2_200..2_800).contains(&count), "{limited} {failed}");
        }
    }

    #[test]
    fn error_bodies() {
        let e = rate_limited();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after_ms, Some(RETRY_AFTER_MS));
        assert_eq!(e.body.code.as_deref(), Some("rate_limit_exceeded"));
        for status in SERVER_ERRORS {
            let e = server_error(status);
            assert_eq!(e.status, status);
            assert_eq!(e.body.kind, "server_error");
            assert_eq!(e.retry_after_ms, None);
        }
    }
}
