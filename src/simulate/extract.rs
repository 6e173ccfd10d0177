//! What the endpoint modules share: the state and result types, request
//! extractors that answer in OpenAI's error envelope, and list paging.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::api_error::{ApiError, ErrorBody};
use super::app::App;

pub(super) type AppState = State<Arc<App>>;
pub(super) type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;
pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn no_such_file(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {id}"), "id")
}

/// A path id; a malformed one is a 400 envelope instead of axum's plain text.
pub(super) struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Id(id))
            .map_err(|e| ApiError::bad_request(ErrorBody::invalid_request(e.body_text())))
    }
}

pub(super) fn json_body(
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    let body =
        body.map_err(|e| ApiError::new(e.status(), ErrorBody::invalid_request(e.body_text())))?;
    match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::unparsable_json()),
    }
}

pub(super) fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

/// `limit` from a list query: absent → `default`, else an integer in `1..=max`.
pub(super) fn limit(
    query: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(raw) = query.get("limit") else {
        return Ok(default);
    };
    match raw.parse::<i64>() {
        Ok(n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Ok(n) => Err(ApiError::bad_request(
            ErrorBody::invalid_request(format!(
                "Invalid 'limit': expected a value between 1 and {max}, but got {n} instead."
            ))
            .param("limit")
            .code("invalid_value"),
        )),
        Err(_) => Err(ApiError::bad_request(
            ErrorBody::invalid_request(format!(
                "Invalid 'limit': expected an integer, but got '{raw}' instead."
            ))
            .param("limit")
            .code("invalid_type"),
        )),
    }
}

/// One page after the `after` cursor (an unknown cursor gives an empty page).
pub(super) fn page<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, bool) {
    let start = match after {
        Some(cursor) => items
            .iter()
            .position(|item| id(item) == cursor)
            .map_or(items.len(), |i| i + 1),
        None => 0,
    };
    let has_more = items.len() > start + limit;
    let page = items.into_iter().skip(start).take(limit).collect();
    (page, has_more)
}

pub(super) fn query(query: QueryMap) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(ErrorBody::invalid_request(e.body_text())))
}
