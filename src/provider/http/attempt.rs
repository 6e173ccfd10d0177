//! One request, start to finish: the body sent (JSON, a file streamed, a
//! multipart upload), the answer read up to its cap, what went wrong said
//! as an [`Attempt`] for the retry loop. Also the pieces direct mode reads
//! its answers with: [`read_body`], [`request_id_of`], [`retry_headers_of`],
//! [`transport_failure`].

use std::time::Duration;

use reqwest::Response;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use reqwest::multipart::{Form, Part};

use super::download::stream_to_file;
use super::outcome::{Attempt, Done, io_error, transport_attempt};
use super::{Call, HttpClient, Payload, Replay, Reply, Sink};
use crate::provider::bounded::MAX_ERROR_BODY;
use crate::provider::error::{ErrorKind, ProviderError, human_wait};
use crate::provider::retry::{RetryHeaders, TransportFailure};

/// Uploads get `request_timeout` plus the time this slow a link would need.
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 128 * 1024;

/// The most of a body read for its first line.
const MAX_LINE: usize = 1 << 20;

impl HttpClient {
    /// One request, start to finish.
    pub(super) async fn attempt(&self, call: &Call<'_>) -> Attempt {
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
                let (file, len) = match open_sized(&call.op, path).await {
                    Ok(f) => f,
                    Err(e) => return Attempt::Fatal(e),
                };
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .header(CONTENT_LENGTH, len)
                    .body(file_body(file));
                total = Some(upload_timeout(timeout, len));
            }
            Payload::Upload {
                path,
                filename,
                mime,
                fields,
            } => {
                let (file, len) = match open_sized(&call.op, path).await {
                    Ok(f) => f,
                    Err(e) => return Attempt::Fatal(e),
                };
                let part = match Part::stream_with_length(file_body(file), len)
                    .file_name(filename.to_string())
                    .mime_str(mime)
                {
                    Ok(p) => p,
                    Err(e) => {
                        return Attempt::Fatal(
                            ProviderError::new(call.op.clone(), ErrorKind::Protocol)
                                .with_detail(e.to_string()),
                        );
                    }
                };
                let form = fields
                    .iter()
                    .fold(Form::new(), |form, (name, value)| form.text(*name, *value));
                req = req.multipart(form.part("file", part));
                total = Some(upload_timeout(timeout, len));
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
                    Attempt::Fatal(if call.replay == Replay::Create {
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
            Sink::FirstLine => first_line(response, status, request_id, timeout).await,
        }
    }
}

/// Reads up to the first newline (at most `MAX_LINE` bytes), then hangs up.
async fn first_line(
    mut response: Response,
    status: u16,
    request_id: Option<String>,
    timeout: Duration,
) -> Attempt {
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

/// A request body's file, opened, and its length.
async fn open_sized(
    op: &str,
    path: &std::path::Path,
) -> Result<(tokio::fs::File, u64), ProviderError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_error(op, "open", path, &e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| io_error(op, "read", path, &e))?
        .len();
    Ok((file, len))
}

/// The total time an upload of `len` bytes may take.
fn upload_timeout(timeout: Duration, len: u64) -> Duration {
    timeout + Duration::from_secs(len / MIN_UPLOAD_BYTES_PER_SEC)
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
    match read_body_held(response, cap, &mut |_| true).await? {
        Held::Read(body) => Ok(body),
        // Not reached: the room asked of above is never refused.
        Held::NoRoom { .. } => Ok(Body::TooLarge {
            head: Vec::new(),
            declared: None,
        }),
    }
}

/// A body read against a shared byte budget.
pub(crate) enum Held {
    Read(Body),
    /// The budget had no room for the next part: `read` bytes had come.
    NoRoom {
        read: usize,
    },
}

/// [`read_body`], asking `room(n)` before the buffer grows by `n` bytes
/// (its capacity, not its length: the memory is what is counted). The
/// buffer is sized to a declared length at once, else doubled, so at most
/// twice the bytes read are asked for.
pub(crate) async fn read_body_held(
    response: &mut Response,
    cap: usize,
    room: &mut (dyn FnMut(usize) -> bool + Send),
) -> reqwest::Result<Held> {
    const HEAD: usize = 4096;
    const FIRST: usize = 16 << 10;
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
        return Ok(Held::Read(Body::TooLarge { head, declared }));
    }
    let mut buf: Vec<u8> = Vec::new();
    if let Some(n) = declared.map(|n| n as usize).filter(|n| *n > 0) {
        if !room(n) {
            return Ok(Held::NoRoom { read: 0 });
        }
        buf.reserve_exact(n);
    }
    while let Some(chunk) = response.chunk().await? {
        let len = buf.len() + chunk.len();
        if len > cap {
            buf.extend_from_slice(&chunk[..HEAD.saturating_sub(buf.len()).min(chunk.len())]);
            buf.truncate(HEAD);
            return Ok(Held::Read(Body::TooLarge {
                head: buf,
                declared,
            }));
        }
        if len > buf.capacity() {
            let want = len.max(buf.capacity() * 2).max(FIRST).min(cap);
            if !room(want - buf.capacity()) {
                return Ok(Held::NoRoom { read: len });
            }
            buf.reserve_exact(want - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Held::Read(Body::Whole(buf)))
}
