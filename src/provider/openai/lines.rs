//! Classification of one line of a batch output or error file
//! (`BatchRequestOutput` of the 2025-04 OpenAPI spec; openai/openai-openapi#302).
//!
//! The order matters and is the whole point of this module: a non-null `error`
//! first (a non-HTTP failure such as `batch_expired`), then a 2xx
//! `response.status_code` (success), else an HTTP failure whose reason is in
//! `response.body.error`. A request that got an HTTP error has `error: null`,
//! so reading `error` alone would count it as a success.
//!
//! The caller splits the file into lines; this module accepts a trailing `\r`
//! (CRLF files) and reports blank lines as [`LineParseError::Blank`] so they
//! can be skipped.
//!
//! [`classify_reply`] reads a direct `POST /chat/completions` answer the
//! same way. It stays here, not at the provider level: it is the reply
//! classifier of OpenAI's chat wire, which a batch line's `response` and a
//! direct answer share. Direct mode (`apply/direct`) runs that wire, so it
//! imports it from this module. No shared provider module (`http`,
//! `direct`, `retry`, `error`) imports a backend: `provider/direct.rs`
//! sends and reads headers only, and the error body every reader shares is
//! `provider::api_error`.

use serde_json::Value;

use super::types::lenient;
use crate::provider::api_error::{ApiError, is_quota_code};

/// What one result line says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    Success(LineSuccess),
    Failure(LineFailure),
}

impl LineOutcome {
    pub fn custom_id(&self) -> &str {
        match self {
            LineOutcome::Success(s) => &s.custom_id,
            LineOutcome::Failure(f) => &f.custom_id,
        }
    }
}

/// A request that got a 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSuccess {
    pub custom_id: String,
    /// The per-line `id`; Azure omits it (Azure OpenAI batch docs).
    pub line_id: Option<String>,
    pub status: u16,
    /// `choices[0].message.content` (or the Responses API's output text).
    pub content: String,
    /// `length` or `content_filter` mean the answer may be incomplete.
    pub finish_reason: Option<String>,
    pub usage: TokenUsage,
    pub request_id: Option<String>,
    /// Why `content` is empty or odd (null content, refusal, tool call, no choices).
    pub note: Option<String>,
}

/// Token counts of one request; 0 when the server sent none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input tokens billed at the plain input price: the cache reads and
    /// writes below are not among them.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt-cache writes and reads, billed apart from `prompt_tokens`:
    /// Anthropic's `cache_creation_input_tokens` and `cache_read_input_tokens`
    /// (which its `input_tokens` leave out), and on the OpenAI wire the
    /// `cached_tokens` of `prompt_tokens_details` (Chat Completions) or
    /// `input_tokens_details` (Responses), which OpenAI counts inside the
    /// input and which are taken out of `prompt_tokens` here (OpenAPI spec,
    /// `CompletionUsage`, `ResponseUsage`). OpenAI reports no writes.
    pub cache_write_tokens: u64,
    pub cache_read_tokens: u64,
    /// Of `completion_tokens`, those a reasoning model spent thinking
    /// (`completion_tokens_details.reasoning_tokens`, or the Responses API's
    /// `output_tokens_details.reasoning_tokens`): billed as output, and
    /// inside `max_completion_tokens`.
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// OpenAI's usage: `input` counts the cached tokens; they are moved out
    /// so every wire's `prompt_tokens` means the same thing. A server that
    /// says more were cached than were sent is believed only up to the input.
    pub fn openai(input: u64, output: u64, cached: u64, reasoning: u64) -> TokenUsage {
        let cached = cached.min(input);
        TokenUsage {
            prompt_tokens: input - cached,
            completion_tokens: output,
            cache_write_tokens: 0,
            cache_read_tokens: cached,
            reasoning_tokens: reasoning.min(output),
        }
    }
}

/// A request that did not get a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFailure {
    pub custom_id: String,
    pub line_id: Option<String>,
    /// `error.code`, `response.body.error.code` or `.type`, or `http_<status>`.
    pub code: String,
    pub message: String,
    pub status: Option<u16>,
    /// Whether sending the request again may succeed; see [`failure_is_retryable`].
    pub retryable: bool,
    pub request_id: Option<String>,
}

/// A line that cannot be classified at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineParseError {
    #[error("blank line")]
    Blank,
    #[error("line is not valid JSON: {0}")]
    NotJson(String),
    #[error("line is not a JSON object")]
    NotObject,
    #[error("line has no `custom_id`")]
    MissingCustomId,
    #[error("line for `{custom_id}` has neither an `error` nor a `response.status_code`")]
    NoOutcome { custom_id: String },
}

/// Code given to a failure whose `error` is a bare string (vLLM's
/// `run_batch.py`).
pub const STRING_ERROR_CODE: &str = "request_error";

/// Failure codes and error types that a later attempt may cure.
///
/// `batch_expired`/`batch_cancelled` never ran (warmbly/warmbly#333,
/// llm-d/llm-d-batch-gateway#221); the rest are the server-side and
/// rate-limit kinds of OpenAI and, for proxies that pass them through,
/// Anthropic (anthropic-sdk-python `types/shared/error_type.py`).
const RETRYABLE_CODES: &[&str] = &[
    "batch_expired",
    "batch_cancelled",
    "rate_limit_exceeded",
    "rate_limit_error",
    "server_error",
    "api_error",
    "overloaded_error",
    "timeout",
    "timeout_error",
];

/// The pure retry rule for one failed request (README.md, "Apply: what
/// happens, and what you see").
///
/// Quota codes are final even on a 429: more attempts cannot add credit.
/// Otherwise a retryable code, or a status of 408, 409, 429 or 5xx, makes the
/// failure retryable; every other 4xx (400, 401, 403, 404, 422) is final.
pub fn failure_is_retryable(codes: &[&str], status: Option<u16>) -> bool {
    if codes.iter().any(|c| is_quota_code(c)) {
        return false;
    }
    if codes.iter().any(|c| RETRYABLE_CODES.contains(c)) {
        return true;
    }
    matches!(status, Some(408 | 409 | 429 | 500..=599))
}

/// Classifies one line of an output or error file.
pub fn classify_line(line: &str) -> Result<LineOutcome, LineParseError> {
    let line = line
        .trim_end_matches(['\r', '\n'])
        .trim_start_matches('\u{feff}');
    if line.trim().is_empty() {
        return Err(LineParseError::Blank);
    }
    if let Some(fast) = plain_success(line) {
        return Ok(LineOutcome::Success(fast));
    }
    classify_lenient(line)
}

/// Any shape of line, read as a `Value` tree.
fn classify_lenient(line: &str) -> Result<LineOutcome, LineParseError> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| LineParseError::NotJson(e.to_string()))?;
    let obj = v.as_object().ok_or(LineParseError::NotObject)?;
    let custom_id = obj
        .get("custom_id")
        .and_then(lenient::value_to_id)
        .ok_or(LineParseError::MissingCustomId)?;
    let line_id = obj.get("id").and_then(lenient::value_to_id);
    let response = obj.get("response").filter(|r| r.is_object());
    let status = response
        .and_then(|r| r.get("status_code"))
        .and_then(lenient::value_to_u64)
        .and_then(|s| u16::try_from(s).ok());
    let request_id = response
        .and_then(|r| r.get("request_id"))
        .and_then(lenient::value_to_id);

    // 1. A non-null `error` is a failure, whatever the response says.
    if let Some(err) = obj.get("error").and_then(meaningful_error) {
        let (code, message, code_status) = describe_line_error(err);
        let status = status.or(code_status);
        let retryable = failure_is_retryable(&[code.as_str()], status);
        return Ok(LineOutcome::Failure(LineFailure {
            custom_id,
            line_id,
            code,
            message,
            status,
            retryable,
            request_id,
        }));
    }

    let Some(status) = status else {
        return Err(LineParseError::NoOutcome { custom_id });
    };
    let body = response.and_then(|r| r.get("body"));

    // 2. A 2xx status is a success; the body is the endpoint's normal response.
    if (200..300).contains(&status) {
        let answer = match extract_answer(body) {
            Ok(a) => a,
            Err(why) => return Ok(bad_response(custom_id, line_id, status, why, request_id)),
        };
        return Ok(LineOutcome::Success(LineSuccess {
            custom_id,
            line_id,
            status,
            content: answer.content,
            finish_reason: answer.finish_reason,
            usage: extract_usage(body),
            request_id,
            note: answer.note,
        }));
    }

    // 3. Anything else is an HTTP failure described by `body.error`.
    let api = body.and_then(ApiError::from_value);
    let code = api
        .as_ref()
        .and_then(|e| e.code_or_type().map(str::to_string))
        .unwrap_or_else(|| format!("http_{status}"));
    let message = api
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_else(|| format!("HTTP {status}"));
    let mut codes = vec![code.as_str()];
    if let Some(kind) = api.as_ref().and_then(|e| e.kind.as_deref()) {
        codes.push(kind);
    }
    let retryable = failure_is_retryable(&codes, Some(status));
    Ok(LineOutcome::Failure(LineFailure {
        custom_id,
        line_id,
        code,
        message,
        status: Some(status),
        retryable,
        request_id,
    }))
}

/// Classifies a direct `POST /chat/completions` answer (status and body) as
/// a batch output line's `response` would be: a 2xx with its answer text and
/// usage, or a failure described by `body.error` (OpenAI's envelope, vLLM's
/// integer `code`, or no JSON at all: then the status and raw text).
pub fn classify_reply(custom_id: &str, status: u16, body: &str) -> LineOutcome {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if (200..300).contains(&status) {
        // A 2xx that is not a completion (a proxy's page, a truncated
        // body, another shape) is worth another try, like a 5xx.
        let answer = match &parsed {
            None => Err("the body is not JSON".to_string()),
            Some(_) => extract_answer(parsed.as_ref()),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(why) => return bad_response(custom_id.to_string(), None, status, why, None),
        };
        return LineOutcome::Success(LineSuccess {
            custom_id: custom_id.to_string(),
            line_id: parsed
                .as_ref()
                .and_then(|b| b.get("id"))
                .and_then(lenient::value_to_id),
            status,
            content: answer.content,
            finish_reason: answer.finish_reason,
            usage: extract_usage(parsed.as_ref()),
            request_id: None,
            note: answer.note,
        });
    }
    error_reply(custom_id, status, parsed.as_ref(), body)
}

/// A direct answer that is not a 2xx, described by its body's error
/// (OpenAI's envelope, Anthropic's `{"type":"error","error":{...}}`, vLLM's
/// integer `code`, or no JSON at all: then the status and raw text). Every
/// wire's error answers are read here.
pub fn error_reply(
    custom_id: &str,
    status: u16,
    parsed: Option<&Value>,
    body: &str,
) -> LineOutcome {
    let api = parsed.and_then(ApiError::from_value);
    // vLLM puts the HTTP status in an integer `code`; its `type` names the
    // failure better.
    let code = api
        .as_ref()
        .and_then(|e| {
            let named = e.code.as_deref().filter(|_| e.numeric_code().is_none());
            named.or(e.kind.as_deref()).map(str::to_string)
        })
        .unwrap_or_else(|| format!("http_{status}"));
    let message = api
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_else(|| {
            let text: String = body.trim().chars().take(200).collect();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }
        });
    let mut codes = vec![code.as_str()];
    if let Some(kind) = api.as_ref().and_then(|e| e.kind.as_deref()) {
        codes.push(kind);
    }
    let retryable = failure_is_retryable(&codes, Some(status));
    LineOutcome::Failure(LineFailure {
        custom_id: custom_id.to_string(),
        line_id: None,
        code,
        message,
        status: Some(status),
        retryable,
        request_id: None,
    })
}

/// `error` counts only when it says something: null, `""` and `{}` do not.
fn meaningful_error(v: &Value) -> Option<&Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::Object(m) if m.is_empty() => None,
        _ => Some(v),
    }
}

/// `(code, message, status carried in an integer code)` of a line's `error`,
/// which may be OpenAI's `{code, message}`, vLLM's string or its object with
/// an integer `code`.
fn describe_line_error(err: &Value) -> (String, String, Option<u16>) {
    if let Value::String(s) = err {
        return (STRING_ERROR_CODE.to_string(), s.clone(), None);
    }
    let Some(api) = ApiError::from_value(err) else {
        return (STRING_ERROR_CODE.to_string(), err.to_string(), None);
    };
    let numeric = api.numeric_code().filter(|c| (100..=599).contains(c));
    let code = match (&api.code, numeric) {
        // An integer code is an HTTP status; the type names the failure better.
        (_, Some(n)) => api.kind.clone().unwrap_or_else(|| format!("http_{n}")),
        (Some(c), None) => c.clone(),
        (None, None) => api
            .kind
            .clone()
            .unwrap_or_else(|| STRING_ERROR_CODE.to_string()),
    };
    let message = api.message.clone().unwrap_or_else(|| code.clone());
    (code, message, numeric)
}

/// The common line, read straight into types: a 2xx chat completion with
/// string content, no error, and ids and counts of the usual types. Reading
/// it as a `Value` tree cost dozens of allocations a line, the largest
/// share of merging a big job's results. Any other shape (or anything odd
/// about this one) returns None and takes the lenient path below, which
/// gives the same answer for the lines this one accepts (tested).
fn plain_success(line: &str) -> Option<LineSuccess> {
    use serde::Deserialize;
    use std::borrow::Cow;

    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        custom_id: Cow<'a, str>,
        #[serde(default, borrow)]
        id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        error: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        response: Response<'a>,
    }
    #[derive(Deserialize)]
    struct Response<'a> {
        status_code: u16,
        #[serde(default, borrow)]
        request_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        body: Body<'a>,
    }
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        choices: Vec<Choice<'a>>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(default, borrow)]
        finish_reason: Option<Cow<'a, str>>,
        #[serde(borrow)]
        message: Message<'a>,
    }
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        content: Cow<'a, str>,
    }
    #[derive(Deserialize)]
    struct Usage {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        prompt_tokens_details: Option<Details>,
        completion_tokens_details: Option<Details>,
        input_tokens_details: Option<Details>,
        output_tokens_details: Option<Details>,
    }
    #[derive(Deserialize)]
    struct Details {
        cached_tokens: Option<u64>,
        reasoning_tokens: Option<u64>,
    }

    // An array would fill the struct's fields in order: the lenient path
    // refuses it by name.
    if !crate::provider::bounded::is_json_object(line) {
        return None;
    }
    let l: Line = serde_json::from_str(line).ok()?;
    let r = l.response;
    if l.error.is_some() || l.custom_id.is_empty() || !(200..300).contains(&r.status_code) {
        return None;
    }
    let choice = r.body.choices.into_iter().next()?;
    let id = |s: Option<Cow<str>>| s.filter(|s| !s.is_empty()).map(Cow::into_owned);
    let usage = r.body.usage.map_or(TokenUsage::default(), |u| {
        let detail = |a: Option<Details>, b: Option<Details>, f: fn(Details) -> Option<u64>| {
            a.and_then(f).or_else(|| b.and_then(f)).unwrap_or(0)
        };
        TokenUsage::openai(
            u.prompt_tokens.or(u.input_tokens).unwrap_or(0),
            u.completion_tokens.or(u.output_tokens).unwrap_or(0),
            detail(u.prompt_tokens_details, u.input_tokens_details, |d| {
                d.cached_tokens
            }),
            detail(u.completion_tokens_details, u.output_tokens_details, |d| {
                d.reasoning_tokens
            }),
        )
    });
    Some(LineSuccess {
        custom_id: l.custom_id.into_owned(),
        line_id: id(l.id),
        status: r.status_code,
        content: choice.message.content.into_owned(),
        finish_reason: id(choice.finish_reason),
        usage,
        request_id: id(r.request_id),
        note: None,
    })
}

struct Answer {
    content: String,
    finish_reason: Option<String>,
    note: Option<String>,
}

/// The answer text of a chat completion, or of a Responses API body; or
/// why the body is not the protocol's answer. Chat Completions documents
/// `choices` as an array of choices whose `message` holds `content` (a
/// string, or parts), or a `refusal`, or `tool_calls`; the Responses API an
/// `output` array. A body of another shape (`{}`, `{"choices": "nope"}`, a
/// message with null content and nothing else) is a server fault, never an
/// empty answer that would then be blamed on the model.
fn extract_answer(body: Option<&Value>) -> Result<Answer, String> {
    let Some(body) = body.filter(|b| b.is_object()) else {
        return Err("the response has no body".into());
    };
    if let Some(choices) = body.get("choices") {
        let Some(choice) = choices.as_array().and_then(|c| c.first()) else {
            return Err("`choices` is not a list of choices".into());
        };
        let finish_reason = choice.get("finish_reason").and_then(lenient::value_to_id);
        let Some(message) = choice.get("message").filter(|m| m.is_object()) else {
            return Err("the choice has no `message`".into());
        };
        let (content, note) = match message.get("content") {
            Some(Value::String(s)) => (s.clone(), None),
            // Some servers send content parts instead of a string.
            Some(Value::Array(parts)) => (join_text_parts(parts), None),
            None | Some(Value::Null) => match null_content_note(message) {
                Some(note) => (String::new(), Some(note)),
                None => {
                    return Err(
                        "the message's `content` is null, with no refusal or tool call".into(),
                    );
                }
            },
            Some(_) => return Err("the message's `content` is not text".into()),
        };
        return Ok(Answer {
            content,
            finish_reason,
            note,
        });
    }
    // Responses API: output[].content[] parts of type `output_text`.
    if let Some(output) = body.get("output").and_then(Value::as_array) {
        let text: String = output
            .iter()
            .filter_map(|item| item.get("content").and_then(Value::as_array))
            .map(|parts| join_text_parts(parts))
            .collect();
        let finish_reason = body
            .get("incomplete_details")
            .and_then(|d| d.get("reason"))
            .and_then(lenient::value_to_id);
        let note = text
            .is_empty()
            .then(|| "response output has no text".to_string());
        return Ok(Answer {
            content: text,
            finish_reason,
            note,
        });
    }
    Err("the body has neither `choices` nor `output`".into())
}

/// A 2xx whose body is not the protocol's answer: retryable, like a 5xx.
fn bad_response(
    custom_id: String,
    line_id: Option<String>,
    status: u16,
    why: String,
    request_id: Option<String>,
) -> LineOutcome {
    LineOutcome::Failure(LineFailure {
        custom_id,
        line_id,
        code: "bad_response".into(),
        message: format!("HTTP {status}, but not a chat completion: {why}"),
        status: Some(status),
        retryable: true,
        request_id,
    })
}

fn join_text_parts(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| match p {
            Value::String(s) => Some(s.as_str()),
            _ => p.get("text").and_then(Value::as_str),
        })
        .collect()
}

/// Why a message's content is null, when the protocol allows it: a
/// refusal, or a tool call. None: it does not.
fn null_content_note(message: &Value) -> Option<String> {
    let refusal = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    if let Some(r) = refusal {
        return Some(format!("content is null; the model refused: {r}"));
    }
    let has_tool_calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    has_tool_calls.then(|| "content is null; the answer is a tool call".into())
}

fn extract_usage(body: Option<&Value>) -> TokenUsage {
    let usage = body.and_then(|b| b.get("usage"));
    let count = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| {
                usage
                    .and_then(|u| u.get(*n))
                    .and_then(lenient::value_to_u64)
            })
            .unwrap_or(0)
    };
    // `prompt_tokens_details.cached_tokens` (Chat Completions) or
    // `input_tokens_details.cached_tokens` (Responses), and the same for
    // reasoning under the output's details.
    let detail = |objects: &[&str], name: &str| {
        objects
            .iter()
            .find_map(|o| {
                usage
                    .and_then(|u| u.get(*o))
                    .and_then(|d| d.get(name))
                    .and_then(lenient::value_to_u64)
            })
            .unwrap_or(0)
    };
    TokenUsage::openai(
        count(&["prompt_tokens", "input_tokens"]),
        count(&["completion_tokens", "output_tokens"]),
        detail(
            &["prompt_tokens_details", "input_tokens_details"],
            "cached_tokens",
        ),
        detail(
            &["completion_tokens_details", "output_tokens_details"],
            "reasoning_tokens",
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn success(line: &str) -> LineSuccess {
        match classify_line(line) {
            Ok(LineOutcome::Success(s)) => s,
            other => panic!("expected success, got {other:?} for {line}"),
        }
    }

    fn failure(line: &str) -> LineFailure {
        match classify_line(line) {
            Ok(LineOutcome::Failure(f)) => f,
            other => panic!("expected failure, got {other:?} for {line}"),
        }
    }

    const OPENAI_OK: &str = r#"{"id": "batch_req_123", "custom_id": "r1", "response": {"status_code": 200, "request_id": "req_abc", "body": {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [{"index": 0, "message": {"role": "assistant", "content": "7", "refusal": null}, "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 120, "completion_tokens": 1, "total_tokens": 121}}}, "error": null}"#;

    #[test]
    fn successes() {
        // (name, line, content, finish_reason, prompt, completion, request_id, line_id, note)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            u64,
            u64,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: [Case; 7] = [
            (
                "openai",
                OPENAI_OK,
                "7",
                Some("stop"),
                120,
                1,
                Some("req_abc"),
                Some("batch_req_123"),
                None,
            ),
            (
                "azure: no id, content filter results",
                r#"{"custom_id": "task-0", "response": {"body": {"choices": [{"content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}, "finish_reason": "stop", "index": 0, "logprobs": null, "message": {"content": "Hello", "role": "assistant"}}], "created": 1718740405, "id": "chatcmpl-9bbc", "model": "gpt-4o-2024-05-13", "object": "chat.completion", "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}], "system_fingerprint": "fp_1", "usage": {"completion_tokens": 9, "prompt_tokens": 20, "total_tokens": 29}}, "request_id": "6e3f4a7c", "status_code": 200}, "error": null}"#,
                "Hello",
                Some("stop"),
                20,
                9,
                Some("6e3f4a7c"),
                None,
                None,
            ),
            (
                "vllm success",
                r#"{"id":"vllm-0a1b","custom_id":"r2","response":{"status_code":200,"request_id":"vllm-batch-9","body":{"id":"cmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"B"},"finish_reason":"length"}],"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}}},"error":null}"#,
                "B",
                Some("length"),
                5,
                1,
                Some("vllm-batch-9"),
                Some("vllm-0a1b"),
                None,
            ),
            (
                "null content with refusal",
                r#"{"custom_id":"r3","response":{"status_code":200,"body":{"choices":[{"message":{"content":null,"refusal":"I can't help"},"finish_reason":"stop"}]}}}"#,
                "",
                Some("stop"),
                0,
                0,
                None,
                None,
                Some("content is null; the model refused: I can't help"),
            ),
            (
                "no usage, string status code, content parts",
                r#"{"custom_id":"r4","response":{"status_code":"201","body":{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}}}"#,
                "ab",
                None,
                0,
                0,
                None,
                None,
                None,
            ),
            (
                "responses api",
                r#"{"custom_id":"r5","response":{"status_code":200,"body":{"object":"response","output":[{"type":"reasoning","content":[]},{"type":"message","content":[{"type":"output_text","text":"yes"}]}],"usage":{"input_tokens":11,"output_tokens":2}}}}"#,
                "yes",
                None,
                11,
                2,
                None,
                None,
                None,
            ),
            (
                "null content with a tool call",
                r#"{"custom_id":"r6","response":{"status_code":200,"body":{"choices":[{"message":{"content":null,"tool_calls":[{"id":"c","type":"function"}]},"finish_reason":"tool_calls"}]}}}"#,
                "",
                Some("tool_calls"),
                0,
                0,
                None,
                None,
                Some("content is null; the answer is a tool call"),
            ),
        ];
        for (name, line, content, finish, prompt, completion, req, line_id, note) in cases {
            let s = success(line);
            assert_eq!(s.content, content, "{name}");
            assert_eq!(s.finish_reason.as_deref(), finish, "{name}");
            assert_eq!(s.usage.prompt_tokens, prompt, "{name}");
            assert_eq!(s.usage.completion_tokens, completion, "{name}");
            assert_eq!(s.request_id.as_deref(), req, "{name}");
            assert_eq!(s.line_id.as_deref(), line_id, "{name}");
            assert_eq!(s.note.as_deref(), note, "{name}");
        }
    }

    #[test]
    fn failures() {
        // (name, line, code, message, status, retryable)
        type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Option<u16>, bool);
        let cases: [Case; 12] = [
            (
                "openai http 400 in the error file, error null (openai/openai-openapi#302)",
                r#"{"id": "batch_req_456", "custom_id": "r7", "response": {"status_code": 400, "request_id": "req_x", "body": {"error": {"message": "Invalid 'max_tokens'", "type": "invalid_request_error", "param": "max_tokens", "code": null}}}, "error": null}"#,
                "invalid_request_error",
                "Invalid 'max_tokens'",
                Some(400),
                false,
            ),
            (
                "openai http 500",
                r#"{"custom_id":"r8","response":{"status_code":500,"request_id":"req_y","body":{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}},"error":null}"#,
                "server_error",
                "The server had an error",
                Some(500),
                true,
            ),
            (
                "http 503 without a body",
                r#"{"custom_id":"r9","response":{"status_code":503,"body":null},"error":null}"#,
                "http_503",
                "HTTP 503",
                Some(503),
                true,
            ),
            (
                "batch_expired (warmbly/warmbly#333)",
                r#"{"id":"batch_req_1","custom_id":"r10","response":null,"error":{"code":"batch_expired","message":"This request could not be executed before the completion window expired."}}"#,
                "batch_expired",
                "This request could not be executed before the completion window expired.",
                None,
                true,
            ),
            (
                "batch_cancelled",
                r#"{"custom_id":"r11","response":null,"error":{"code":"batch_cancelled","message":"cancelled"}}"#,
                "batch_cancelled",
                "cancelled",
                None,
                true,
            ),
            (
                "error wins over a 200 status",
                r#"{"custom_id":"r12","response":{"status_code":200,"body":{"choices":[]}},"error":{"code":"server_error","message":"x"}}"#,
                "server_error",
                "x",
                Some(200),
                true,
            ),
            (
                "vllm string error",
                r#"{"id":"vllm-1","custom_id":"r13","response":{"status_code":400,"request_id":"vllm-batch-1","body":null},"error":"Streaming is not supported in batch mode"}"#,
                STRING_ERROR_CODE,
                "Streaming is not supported in batch mode",
                Some(400),
                false,
            ),
            (
                "vllm nested error with int code",
                r#"{"id":"vllm-2","custom_id":"r14","response":{"status_code":404,"request_id":"vllm-batch-2","body":null},"error":{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}}}"#,
                "NotFoundError",
                "The model `x` does not exist.",
                Some(404),
                false,
            ),
            (
                "vllm old flat error, int code, no response",
                r#"{"custom_id":"r15","response":null,"error":{"object":"error","message":"overloaded","type":"ServiceUnavailableError","param":null,"code":503}}"#,
                "ServiceUnavailableError",
                "overloaded",
                Some(503),
                true,
            ),
            (
                "429 rate limit line",
                r#"{"custom_id":"r16","response":{"status_code":429,"body":{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}},"error":null}"#,
                "rate_limit_exceeded",
                "slow down",
                Some(429),
                true,
            ),
            (
                "429 insufficient_quota is final",
                r#"{"custom_id":"r17","response":{"status_code":429,"body":{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}},"error":null}"#,
                "insufficient_quota",
                "You exceeded your current quota",
                Some(429),
                false,
            ),
            (
                "422",
                r#"{"custom_id":"r18","response":{"status_code":422,"body":{"detail":"unprocessable"}},"error":null}"#,
                "http_422",
                "unprocessable",
                Some(422),
                false,
            ),
        ];
        for (name, line, code, message, status, retryable) in cases {
            let f = failure(line);
            assert_eq!(f.code, code, "{name}");
            assert_eq!(f.message, message, "{name}");
            assert_eq!(f.status, status, "{name}");
            assert_eq!(f.retryable, retryable, "{name}");
        }
    }

    /// A 2xx whose body is not the protocol's answer is a retryable
    /// `bad_response`, in a batch line and in a direct reply alike.
    #[test]
    fn a_2xx_of_the_wrong_shape_is_a_bad_response() {
        let bodies = [
            ("no body", "null", "the response has no body"),
            (
                "empty object",
                "{}",
                "the body has neither `choices` nor `output`",
            ),
            (
                "choices not a list",
                r#"{"choices":"nope"}"#,
                "`choices` is not a list of choices",
            ),
            (
                "no choice",
                r#"{"choices":[]}"#,
                "`choices` is not a list of choices",
            ),
            (
                "no message",
                r#"{"choices":[{"finish_reason":"stop"}]}"#,
                "the choice has no `message`",
            ),
            (
                "null content, nothing else",
                r#"{"choices":[{"message":{"content":null,"refusal":null}}]}"#,
                "the message's `content` is null, with no refusal or tool call",
            ),
            (
                "content missing",
                r#"{"choices":[{"message":{"role":"assistant"}}]}"#,
                "the message's `content` is null, with no refusal or tool call",
            ),
            (
                "content a number",
                r#"{"choices":[{"message":{"content":7}}]}"#,
                "the message's `content` is not text",
            ),
        ];
        for (name, body, why) in bodies {
            let line = format!(
                r#"{{"custom_id":"r1","response":{{"status_code":200,"body":{body}}},"error":null}}"#
            );
            let direct = classify_reply("r1", 200, body);
            for (how, got) in [("line", classify_line(&line).unwrap()), ("reply", direct)] {
                let LineOutcome::Failure(f) = got else {
                    panic!("{name} ({how}): taken as an answer");
                };
                assert_eq!(f.code, "bad_response", "{name} ({how})");
                assert!(f.retryable, "{name} ({how})");
                assert_eq!(f.status, Some(200), "{name} ({how})");
                assert_eq!(
                    f.message,
                    format!("HTTP 200, but not a chat completion: {why}"),
                    "{name} ({how})"
                );
            }
        }
    }

    #[test]
    fn empty_error_values_fall_through_to_the_status() {
        for err in [r#""""#, "{}", "null"] {
            let line = format!(
                r#"{{"custom_id":"r","response":{{"status_code":200,"body":{{"choices":[{{"message":{{"content":"ok"}}}}]}}}},"error":{err}}}"#
            );
            assert_eq!(success(&line).content, "ok", "{err}");
        }
    }

    #[test]
    fn line_endings_and_bad_lines() {
        assert_eq!(success(&format!("{OPENAI_OK}\r")).content, "7");
        assert_eq!(success(&format!("\u{feff}{OPENAI_OK}\r\n")).content, "7");
        let cases: [(&str, LineParseError); 6] = [
            ("", LineParseError::Blank),
            ("  \r", LineParseError::Blank),
            ("[1,2]", LineParseError::NotObject),
            (
                r#"{"response":{"status_code":200}}"#,
                LineParseError::MissingCustomId,
            ),
            (
                r#"{"custom_id":"","response":{"status_code":200}}"#,
                LineParseError::MissingCustomId,
            ),
            (
                r#"{"custom_id":"r","response":null,"error":null}"#,
                LineParseError::NoOutcome {
                    custom_id: "r".into(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(classify_line(line), Err(want), "{line:?}");
        }
        assert!(matches!(
            classify_line("{not json"),
            Err(LineParseError::NotJson(_))
        ));
    }

    #[test]
    fn retry_rule_table() {
        let cases: [(&[&str], Option<u16>, bool); 16] = [
            (&["batch_expired"], None, true),
            (&["batch_cancelled"], None, true),
            (&["rate_limit_exceeded"], Some(429), true),
            (&["server_error"], None, true),
            (&["timeout"], None, true),
            (&["http_408"], Some(408), true),
            (&["http_409"], Some(409), true),
            (&["http_429"], Some(429), true),
            (&["http_500"], Some(500), true),
            (&["http_599"], Some(599), true),
            (&["invalid_request_error"], Some(400), false),
            (&["invalid_api_key"], Some(401), false),
            (&["http_403"], Some(403), false),
            (&["http_404"], Some(404), false),
            (&["http_422"], Some(422), false),
            (
                &["insufficient_quota", "insufficient_quota"],
                Some(429),
                false,
            ),
        ];
        for (codes, status, want) in cases {
            assert_eq!(
                failure_is_retryable(codes, status),
                want,
                "{codes:?} {status:?}"
            );
        }
    }

    #[test]
    fn cached_and_reasoning_tokens_are_read_on_both_usage_shapes() {
        let with = |usage: &str| {
            OPENAI_OK.replace(
                r#""usage": {"prompt_tokens": 120, "completion_tokens": 1, "total_tokens": 121}"#,
                &format!(r#""usage": {usage}"#),
            )
        };
        // (usage, plain input, cache reads, output, reasoning): OpenAI
        // counts cached tokens inside the input and reasoning inside the
        // output (OpenAPI spec, `CompletionUsage`, `ResponseUsage`).
        let cases = [
            (
                r#"{"prompt_tokens": 2100, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1920}, "completion_tokens_details": {"reasoning_tokens": 256}}"#,
                180,
                1920,
                300,
                256,
            ),
            (
                r#"{"input_tokens": 1500, "output_tokens": 500, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens_details": {"reasoning_tokens": 300}}"#,
                476,
                1024,
                500,
                300,
            ),
            (
                r#"{"prompt_tokens": 50, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}}"#,
                50,
                0,
                2,
                0,
            ),
            // More cached than sent, more reasoning than output: a server's
            // error, never a negative or an inflated count.
            (
                r#"{"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 99}, "completion_tokens_details": {"reasoning_tokens": 9}}"#,
                0,
                10,
                2,
                2,
            ),
            (
                r#"{"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": "odd"}"#,
                10,
                0,
                2,
                0,
            ),
        ];
        for (usage, input, cached, output, reasoning) in cases {
            let line = with(usage);
            for (path, got) in [
                ("typed", plain_success(&line).map(|s| s.usage)),
                ("lenient", Some(success(&line).usage)),
            ] {
                let Some(u) = got else { continue };
                assert_eq!(
                    (
                        u.prompt_tokens,
                        u.cache_read_tokens,
                        u.completion_tokens,
                        u.reasoning_tokens,
                        u.cache_write_tokens
                    ),
                    (input, cached, output, reasoning, 0),
                    "{path}: {usage}"
                );
            }
        }
    }

    #[test]
    fn the_typed_path_agrees_with_the_lenient_one() {
        let lines = [
            OPENAI_OK.to_string(),
            OPENAI_OK.replace(r#""content": "7""#, r#""content": "a \"quoted\"\n7 \u00e9""#),
            OPENAI_OK.replace(r#""id": "batch_req_123", "#, ""),
            OPENAI_OK.replace(r#""id": "batch_req_123""#, r#""id": """#),
            OPENAI_OK.replace(r#""request_id": "req_abc""#, r#""request_id": null"#),
            OPENAI_OK.replace(r#""finish_reason": "stop""#, r#""finish_reason": """#),
            OPENAI_OK.replace(r#""finish_reason": "stop""#, r#""finish_reason": null"#),
            OPENAI_OK.replace(r#""prompt_tokens": 120"#, r#""input_tokens": 120"#),
            OPENAI_OK.replace(r#""prompt_tokens": 120"#, r#""prompt_tokens": null, "input_tokens": 9"#),
            OPENAI_OK.replace(r#", "usage": {"prompt_tokens": 120, "completion_tokens": 1, "total_tokens": 121}"#, ""),
            OPENAI_OK.replace(r#""usage": {"#, r#""usage": {"output_tokens": 4, "#),
            OPENAI_OK.replace(r#""total_tokens": 121"#, r#""total_tokens": 121, "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 1}"#),
            OPENAI_OK.replace(r#""total_tokens": 121"#, r#""total_tokens": 121, "prompt_tokens_details": null, "input_tokens_details": {"cached_tokens": 7}"#),
            OPENAI_OK.replace(r#""total_tokens": 121"#, r#""total_tokens": 121, "prompt_tokens_details": {"cached_tokens": "64"}"#),
            OPENAI_OK.replace(r#""choices": [{"#, r#""choices": [{"index": 0, "message": {"content": "first"}}, {"#),
            // Shapes the typed path leaves to the lenient one; it must not
            // accept them with a different answer.
            OPENAI_OK.replace(r#""content": "7""#, r#""content": null"#),
            OPENAI_OK.replace(r#""content": "7""#, r#""content": [{"type": "text", "text": "7"}]"#),
            OPENAI_OK.replace(r#""status_code": 200"#, r#""status_code": "200""#),
            OPENAI_OK.replace(r#""status_code": 200"#, r#""status_code": 429"#),
            OPENAI_OK.replace(r#""prompt_tokens": 120"#, r#""prompt_tokens": "120""#),
            OPENAI_OK.replace(r#""prompt_tokens": 120"#, r#""prompt_tokens": 120.0"#),
            OPENAI_OK.replace(r#""custom_id": "r1""#, r#""custom_id": 17"#),
            OPENAI_OK.replace(r#""custom_id": "r1""#, r#""custom_id": """#),
            OPENAI_OK.replace(r#""error": null"#, r#""error": {"code": "x", "message": "y"}"#),
            OPENAI_OK.replace(r#""error": null"#, r#""error": {}"#),
            OPENAI_OK.replace(r#""custom_id": "r1""#, r#""custom_id": "r1", "custom_id": "r2""#),
            OPENAI_OK.replace(r#""choices": [{"index": 0, "message": {"role": "assistant", "content": "7", "refusal": null}, "logprobs": null, "finish_reason": "stop"}]"#, r#""choices": []"#),
        ];
        let mut typed = 0;
        for line in &lines {
            let lenient = classify_lenient(line);
            if let Some(fast) = plain_success(line) {
                typed += 1;
                assert_eq!(lenient, Ok(LineOutcome::Success(fast)), "{line}");
            }
        }
        assert_eq!(typed, 14, "the common shapes take the typed path");
    }
}
