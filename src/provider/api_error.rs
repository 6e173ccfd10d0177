//! `ApiError`: the error envelope of an HTTP error body, as every backend
//! and the retry classifier read it. It lives beside the HTTP core, not in
//! one backend: OpenAI-style servers, Azure, vLLM and Anthropic all answer
//! with one of the shapes it accepts.

use serde_json::Value;

/// The error envelope of an HTTP error body, read leniently (OpenAPI spec,
/// `ErrorResponse`).
///
/// Accepts OpenAI's `{"error":{message,type,param,code}}`, vLLM's integer
/// `code` and its old flat `{object:"error",message,type,code}`, Anthropic's
/// `{"type":"error","error":{type,message}}`, a plain string `error`, and
/// FastAPI's `{"detail": ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiError {
    pub message: Option<String>,
    /// The `type` field (`invalid_request_error`, `insufficient_quota`, ...).
    pub kind: Option<String>,
    /// The `code` field; an integer code (vLLM) is kept as its decimal text.
    pub code: Option<String>,
    pub param: Option<String>,
}

/// Codes and types that mean "no money left", whatever the HTTP status.
const QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "billing_hard_limit_reached",
    "billing_not_active",
    "credit_balance_exhausted",
    "billing_error",
];

impl ApiError {
    /// Reads an error body. `None` when the text carries no error information.
    pub fn from_body(body: &str) -> Option<ApiError> {
        match serde_json::from_str::<Value>(body) {
            Ok(v) => ApiError::from_value(&v),
            Err(_) => None,
        }
    }

    /// Reads an error from a JSON value: an envelope, a bare error object or a string.
    pub fn from_value(v: &Value) -> Option<ApiError> {
        let found = match v {
            Value::String(s) if !s.trim().is_empty() => Some(ApiError {
                message: Some(s.clone()),
                ..ApiError::default()
            }),
            Value::Object(map) => match map.get("error") {
                Some(inner @ (Value::Object(_) | Value::String(_))) => ApiError::from_value(inner),
                _ => {
                    let e = ApiError {
                        message: map
                            .get("message")
                            .or_else(|| map.get("detail"))
                            .and_then(value_to_string),
                        kind: map.get("type").and_then(value_to_string),
                        code: map.get("code").and_then(value_to_string),
                        param: map.get("param").and_then(value_to_string),
                    };
                    // Anthropic's envelope has `type: "error"`, which says nothing.
                    let e = ApiError {
                        kind: e.kind.filter(|k| k != "error"),
                        ..e
                    };
                    Some(e)
                }
            },
            _ => None,
        };
        found.filter(|e| e.message.is_some() || e.kind.is_some() || e.code.is_some())
    }

    /// The most specific identifier: `code`, else `type`. A numeric `code`
    /// is the HTTP status again (vLLM and LiteLLM put it there), which says
    /// nothing beside the status: the `type` names the failure then, and
    /// without one there is no name.
    pub fn code_or_type(&self) -> Option<&str> {
        let named = self
            .code
            .as_deref()
            .filter(|_| self.numeric_code().is_none());
        named.or(self.kind.as_deref())
    }

    /// An integer `code` (vLLM puts the HTTP status there).
    pub fn numeric_code(&self) -> Option<u16> {
        self.code.as_deref()?.parse().ok()
    }

    /// True when the error says the account is out of credit or over its spend
    /// limit: retrying cannot help.
    pub fn is_quota(&self) -> bool {
        [self.code.as_deref(), self.kind.as_deref()]
            .into_iter()
            .flatten()
            .any(is_quota_code)
    }
}

/// `insufficient_quota` and its relatives (`*_spend_limit_exceeded`, ...).
pub fn is_quota_code(code: &str) -> bool {
    QUOTA_CODES.contains(&code) || code.ends_with("_spend_limit_exceeded")
}

/// A scalar as text: strings as they are, numbers and booleans printed.
pub fn value_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_shapes() {
        let cases: [(&str, Option<(&str, &str)>); 8] = [
            (
                r#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
                Some(("invalid_api_key", "Incorrect API key")),
            ),
            (
                r#"{"error":{"message":"m","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
                Some(("insufficient_quota", "m")),
            ),
            // vLLM, nested, integer code.
            (
                r#"{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}"#,
                Some(("BadRequestError", "bad")),
            ),
            // vLLM, old flat shape.
            (
                r#"{"object":"error","message":"flat","type":"NotFoundError","param":null,"code":404}"#,
                Some(("NotFoundError", "flat")),
            ),
            // Anthropic.
            (
                r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
                Some(("overloaded_error", "busy")),
            ),
            (r#"{"error":"plain text"}"#, None),
            (r#"{"detail":"Not Found"}"#, None),
            ("<html>502 Bad Gateway</html>", None),
        ];
        for (body, want) in cases {
            let e = ApiError::from_body(body);
            match want {
                Some((code, msg)) => {
                    let e = e.unwrap_or_else(|| panic!("no error in {body}"));
                    assert_eq!(e.code_or_type(), Some(code), "{body}");
                    assert_eq!(e.message.as_deref(), Some(msg), "{body}");
                }
                None if body.starts_with('<') => assert!(e.is_none()),
                None => assert!(e.unwrap().message.is_some(), "{body}"),
            }
        }
    }

    #[test]
    fn quota_codes() {
        for code in [
            "insufficient_quota",
            "billing_hard_limit_reached",
            "credit_balance_exhausted",
            "monthly_spend_limit_exceeded",
            "project_spend_limit_exceeded",
        ] {
            assert!(is_quota_code(code), "{code}");
        }
        for code in [
            "rate_limit_exceeded",
            "slow_down",
            "server_error",
            "invalid_api_key",
        ] {
            assert!(!is_quota_code(code), "{code}");
        }
    }
}
