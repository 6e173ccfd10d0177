//! The simulated provider speaking Anthropic's Message Batches API
//! (`simulated.api: anthropic`, `simulate-server --api anthropic`), and
//! `POST /v1/messages` for direct mode: the message a batch result would
//! hold for the same params, behind the same fault flags (429
//! `rate_limit_error` with `retry-after`, 529 `overloaded_error`, 500
//! `api_error`), with the `anthropic-ratelimit-*` headers.
//!
//! An implementation of the documented protocol of its own: it shares no
//! wire type with the client in `provider/anthropic/`. Batches move on the
//! wall clock (`in_progress` for the configured times, then `ended`);
//! results are made when asked for, as deterministic functions of each
//! request (the same answers as the OpenAI simulation gives), so a batch
//! needs no background worker and a restarted server on the same data
//! folder carries on. A request with structured outputs
//! (`output_config.format`, `json_schema`) is answered with a JSON document
//! built from its schema, as the OpenAI simulation answers
//! `response_format`; decoding under the schema never breaks it, so the
//! answers that break it there are refusals here (`stop_reason:
//! "refusal"`). The fault flags are the OpenAI simulation's, mapped
//! onto this API: injected 429 `rate_limit_error` and 500/529 errors,
//! creates that make the batch and then answer 500, every Nth create
//! refused with 429 (a full queue), every Nth batch ending with half its
//! requests `expired`, `errored` lines that fail every time
//! (`api_error`) or once (`overloaded_error`), and `invalid_request_error`
//! lines for params the Messages API refuses.

mod state;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::SimConfig;
use state::{Sim, SimBatch};

/// 256 MB per batch, plus room for the envelope.
const BODY_LIMIT: usize = 256 * 1000 * 1000 + (1 << 20);

/// An Anthropic-style error answer.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Failure {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn not_found(id: &str) -> Self {
        Failure::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("No message batch found with id {id} (simulated)"),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert("retry-after", v);
        }
        r
    }
}

type Reply = Result<Response, Failure>;

fn ok(v: Value) -> Reply {
    Ok(axum::Json(v).into_response())
}

pub fn router(sim: Arc<Sim>) -> Router {
    let v1 = Router::new()
        .route("/messages", post(messages))
        .route("/messages/batches", post(create).get(list))
        .route("/messages/batches/{id}", get(retrieve).delete(delete))
        .route("/messages/batches/{id}/cancel", post(cancel))
        .route("/messages/batches/{id}/results", get(results))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(sim.clone(), inject))
        .layer(middleware::from_fn_with_state(sim.clone(), rate_headers))
        .layer(middleware::from_fn_with_state(sim.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .route("/_sim/stats", get(stats))
        .fallback(|r: Request| async move {
            Failure::new(
                StatusCode::NOT_FOUND,
                "not_found_error",
                format!("Not found: {} {}", r.method(), r.uri().path()),
            )
        })
        .layer(middleware::from_fn_with_state(sim.clone(), request_id))
        .with_state(sim)
}

async fn request_id(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let id = sim.next_request_id();
    let mut response = next.run(request).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("request-id", v);
    }
    response
}

/// `x-api-key` (or an OAuth-style bearer token) and `anthropic-version`
/// are required on every call.
async fn authenticate(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let h = request.headers();
    let key = h
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            h.get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let unauthorized =
        |m: &str| Failure::new(StatusCode::UNAUTHORIZED, "authentication_error", m).into_response();
    match (key, &sim.config.api_key) {
        (None, _) => return unauthorized("x-api-key header is required"),
        (Some(k), Some(want)) if k != want => return unauthorized("invalid x-api-key"),
        _ => {}
    }
    if h.get("anthropic-version").is_none() {
        return Failure::invalid("anthropic-version: header is required").into_response();
    }
    next.run(request).await
}

async fn inject(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    match sim.injected_error() {
        Some(f) => f.into_response(),
        None => next.run(request).await,
    }
}

/// The rate-limit headers on every answer of `POST /v1/messages`, the
/// injected 429s and 529s included (Anthropic sends them on each).
async fn rate_headers(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let counted = request.method() == axum::http::Method::POST
        && request
            .uri()
            .path()
            .trim_end_matches('/')
            .ends_with("/messages");
    let mut response = next.run(request).await;
    if counted {
        for (name, value) in sim.rate_headers() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, v);
            }
        }
    }
    response
}

/// `POST /v1/messages`: one message, not streamed.
async fn messages(State(sim): State<Arc<Sim>>, body: Bytes) -> Reply {
    let params: Value = serde_json::from_slice(&body)
        .map_err(|e| Failure::invalid(format!("the request body is not JSON: {e}")))?;
    ok(sim.message(&params)?)
}

async fn create(State(sim): State<Arc<Sim>>, body: Bytes) -> Reply {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| Failure::invalid(format!("the request body is not JSON: {e}")))?;
    let requests = v
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::invalid("requests: Field required"))?;
    if requests.is_empty() || requests.len() > 100_000 {
        return Err(Failure::invalid(format!(
            "requests: must hold 1 to 100000 items, got {}",
            requests.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, r) in requests.iter().enumerate() {
        let id = r.get("custom_id").and_then(Value::as_str).unwrap_or("");
        let good = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !good {
            return Err(Failure::invalid(format!(
                "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )));
        }
        if !seen.insert(id) {
            return Err(Failure::invalid(format!(
                "requests.{i}.custom_id: duplicate custom_id {id}"
            )));
        }
        if !r.get("params").is_some_and(Value::is_object) {
            return Err(Failure::invalid(format!(
                "requests.{i}.params: Field required"
            )));
        }
    }
    let (batch, commit_fails) = sim.create(requests)?;
    if commit_fails {
        return Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "Internal server error (simulated, after the batch was made)",
        ));
    }
    ok(sim.object(&batch))
}

async fn retrieve(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let b = sim.get(&id).ok_or_else(|| Failure::not_found(&id))?;
    ok(sim.object(&b))
}

async fn list(
    State(sim): State<Arc<Sim>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Reply {
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => return Err(Failure::invalid("limit: must be between 1 and 1000")),
        },
    };
    // Newest first.
    let mut all = sim.all();
    all.sort_by_key(|b| std::cmp::Reverse(b.seq));
    let start = match q.get("after_id") {
        Some(a) => match all.iter().position(|b| &b.id == a) {
            Some(p) => p + 1,
            None => return Err(Failure::invalid(format!("after_id: unknown id {a}"))),
        },
        None => 0,
    };
    let end = match q.get("before_id") {
        Some(b) => all.iter().position(|x| &x.id == b).unwrap_or(all.len()),
        None => all.len(),
    };
    let page: Vec<&SimBatch> = all
        .get(start..end.max(start))
        .unwrap_or_default()
        .iter()
        .take(limit)
        .collect();
    let has_more = start + page.len() < end;
    ok(json!({
        "data": page.iter().map(|b| sim.object(b)).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": page.first().map(|b| b.id.clone()),
        "last_id": page.last().map(|b| b.id.clone()),
    }))
}

async fn cancel(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let b = sim.cancel(&id)?;
    ok(sim.object(&b))
}

async fn delete(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    sim.delete(&id)?;
    ok(json!({"id": id, "type": "message_batch_deleted"}))
}

async fn results(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let text = sim.results(&id)?;
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/binary"),
    );
    Ok(r)
}

async fn stats(State(sim): State<Arc<Sim>>) -> Reply {
    ok(sim.stats())
}

/// The base URL clients use: no `/v1` suffix, as for the real API.
pub fn base_url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

pub fn open(config: SimConfig) -> std::io::Result<Arc<Sim>> {
    Sim::open(config)
}
