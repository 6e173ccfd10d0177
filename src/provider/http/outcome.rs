//! What one HTTP attempt came to, shared by the attempt itself and the
//! download that streams a body to disk: the retry loop reads it.

use std::path::Path;

use super::Reply;
use crate::provider::error::{ErrorKind, ProviderError};
use crate::provider::retry::{RetryHeaders, TransportFailure};

/// What a 2xx answer became.
pub(super) enum Done {
    Text(Reply),
    File(u64),
}

pub(super) enum Attempt {
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

/// What kind of failure a reqwest error is, for the retry classifier.
pub(crate) fn transport_failure(e: &reqwest::Error) -> TransportFailure {
    // A connect timeout is both; it still proves the request was not sent.
    if e.is_connect() {
        TransportFailure::Connect
    } else if e.is_timeout() {
        TransportFailure::Timeout
    } else {
        TransportFailure::Other
    }
}

pub(super) fn transport_attempt(e: &reqwest::Error, request_id: Option<String>) -> Attempt {
    Attempt::Transport {
        failure: transport_failure(e),
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

pub(super) fn io_error(op: &str, action: &str, path: &Path, e: &std::io::Error) -> ProviderError {
    ProviderError::new(op, ErrorKind::Io)
        .with_detail(format!("cannot {action} {}: {e}", path.display()))
}
