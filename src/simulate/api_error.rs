//! The OpenAI error envelope, both as an HTTP response and as the body of a
//! failed line in a batch error file.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The inner object of `{"error": {...}}`. All four fields are always present
/// (the spec marks them required, `param` and `code` nullable).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn invalid_request(message: impl Into<String>) -> Self {
        ErrorBody {
            message: message.into(),
            kind: "invalid_request_error".into(),
            param: None,
            code: None,
        }
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn envelope(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

/// An error answered to an HTTP call.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, body: ErrorBody) -> Self {
        ApiError {
            status,
            body,
            retry_after_ms: None,
        }
    }

    pub fn bad_request(body: ErrorBody) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, body)
    }

    pub fn missing(param: &str) -> Self {
        ApiError::bad_request(
            ErrorBody::invalid_request(format!("Missing required parameter: '{param}'."))
                .param(param)
                .code("missing_required_parameter"),
        )
    }

    pub fn not_found(message: impl Into<String>, param: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorBody::invalid_request(message).param(param),
        )
    }

    /// Our own failure (disk full, state file unwritable): a 500 the client may retry.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorBody {
                message: format!("simulated provider internal error: {err}"),
                kind: "server_error".into(),
                param: None,
                code: None,
            },
        )
    }

    pub fn unparsable_json() -> Self {
        ApiError::bad_request(ErrorBody::invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON.)",
        ))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(err: std::io::Error) -> Self {
        ApiError::internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body.envelope())).into_response();
        if let Some(ms) = self.retry_after_ms {
            // Both forms, as a client may read either: the standard header in
            // whole seconds (rounded up, so it never asks for less) and the
            // `-ms` one that openai-python prefers.
            let headers = response.headers_mut();
            headers.insert("retry-after-ms", HeaderValue::from(ms));
            headers.insert("retry-after", HeaderValue::from(ms.div_ceil(1000)));
        }
        response
    }
}
