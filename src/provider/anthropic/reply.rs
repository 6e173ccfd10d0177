//! A direct `POST /v1/messages` answer in the runner's terms, as the batch
//! lane reads a `succeeded` result's message (`classify_result`): the text
//! blocks joined (`answer_text`), the usage with its cache counts, and a 2xx
//! that is not a `Message` (no `content` list, no `usage`, not JSON) a
//! retryable `bad_response`, never an empty answer blamed on the model.
//!
//! `stop_reason` (Messages API reference, "Create a Message"): `refusal`
//! and `max_tokens` are answers, as in the batch lane: whatever text came is
//! the answer, and the output's parser judges it (an empty refusal fails to
//! parse; a cut answer may still hold the grade). The reason is kept as the
//! line's note so a failure to parse can say why.
//!
//! An answer that is not a 2xx carries Anthropic's error envelope
//! (`{"type":"error","error":{"type","message"}}`), read by the one reader
//! of error answers (`openai::lines::error_reply`).

use serde_json::Value;

use super::answer_text;
use super::types::Message;
use crate::provider::openai::lines::{
    LineFailure, LineOutcome, LineSuccess, TokenUsage, error_reply,
};

/// One direct answer of the Messages API: its status and body.
pub fn classify_message_reply(status: u16, body: &str) -> LineOutcome {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if !(200..300).contains(&status) {
        return error_reply("", status, parsed.as_ref(), body);
    }
    let message = match &parsed {
        None => Err("the body is not JSON".to_string()),
        Some(v) => message_of(v),
    };
    match message {
        Ok((m, content, usage)) => {
            let stop = m.stop_reason.clone().filter(|s| !s.is_empty());
            let note = match stop.as_deref() {
                Some("refusal") => Some("the model refused (stop_reason: refusal)".to_string()),
                Some("max_tokens") => Some(
                    "the answer was cut at max_tokens (stop_reason: max_tokens); raise \
                     request.max_tokens"
                        .to_string(),
                ),
                _ => None,
            };
            LineOutcome::Success(LineSuccess {
                custom_id: String::new(),
                line_id: parsed
                    .as_ref()
                    .and_then(|v| v.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                status,
                content: answer_text(&content),
                finish_reason: stop,
                usage,
                request_id: None,
                note,
            })
        }
        Err(why) => LineOutcome::Failure(LineFailure {
            custom_id: String::new(),
            line_id: None,
            code: "bad_response".into(),
            message: format!("HTTP {status}, but not a Messages response: {why}"),
            status: Some(status),
            retryable: true,
            request_id: None,
        }),
    }
}

/// The message, its content blocks and usage, or why the body is not one.
fn message_of(v: &Value) -> Result<(Message, Vec<Value>, TokenUsage), String> {
    if !v.is_object() {
        return Err("the body is not a JSON object".into());
    }
    let m: Message =
        serde_json::from_value(v.clone()).map_err(|e| format!("not a message ({e})"))?;
    let content = m
        .content
        .clone()
        .ok_or("the message has no `content` list")?;
    let u = m.usage.ok_or("the message has no `usage`")?;
    let usage = TokenUsage {
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        cache_write_tokens: u.cache_creation_input_tokens.unwrap_or(0),
        cache_read_tokens: u.cache_read_input_tokens.unwrap_or(0),
        // Extended thinking is billed inside `output_tokens` and not
        // counted apart in `usage` (Messages API reference).
        reasoning_tokens: 0,
    };
    Ok((m, content, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = r#""usage":{"input_tokens":20,"output_tokens":1,"cache_creation_input_tokens":5,"cache_read_input_tokens":30}"#;

    fn ok(body: &str) -> LineSuccess {
        match classify_message_reply(200, body) {
            LineOutcome::Success(s) => s,
            other => panic!("{body}: {other:?}"),
        }
    }

    fn failed(status: u16, body: &str) -> LineFailure {
        match classify_message_reply(status, body) {
            LineOutcome::Failure(f) => f,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_message_is_its_text_blocks_and_its_usage() {
        // (body, answer, stop reason, note mentions)
        let cases = [
            (
                format!(
                    r#"{{"id":"msg_1","type":"message","role":"assistant","content":[{{"type":"text","text":"7"}}],"stop_reason":"end_turn",{USAGE}}}"#
                ),
                "7",
                Some("end_turn"),
                None,
            ),
            // Text blocks are joined; other blocks are not text.
            (
                format!(
                    r#"{{"content":[{{"type":"thinking","thinking":"hm"}},{{"type":"text","text":"Grade: "}},{{"type":"text","text":"8"}}],{USAGE}}}"#
                ),
                "Grade: 8",
                None,
                None,
            ),
            // A refusal may have no text: an (empty) answer the parser judges.
            (
                format!(r#"{{"content":[],"stop_reason":"refusal",{USAGE}}}"#),
                "",
                Some("refusal"),
                Some("refused"),
            ),
            // Cut at max_tokens: what came is the answer.
            (
                format!(
                    r#"{{"content":[{{"type":"text","text":"Grade: 1"}}],"stop_reason":"max_tokens",{USAGE}}}"#
                ),
                "Grade: 1",
                Some("max_tokens"),
                Some("max_tokens"),
            ),
        ];
        for (body, answer, stop, note) in cases {
            let s = ok(&body);
            assert_eq!(s.content, answer, "{body}");
            assert_eq!(s.finish_reason.as_deref(), stop, "{body}");
            match note {
                Some(n) => assert!(s.note.as_deref().unwrap_or("").contains(n), "{body}"),
                None => assert_eq!(s.note, None, "{body}"),
            }
            assert_eq!(
                s.usage,
                TokenUsage {
                    prompt_tokens: 20,
                    completion_tokens: 1,
                    cache_write_tokens: 5,
                    cache_read_tokens: 30,
                    reasoning_tokens: 0,
                }
            );
        }
        // No cache counts: zero.
        let s = ok(
            r#"{"content":[{"type":"text","text":"3"}],"usage":{"input_tokens":4,"output_tokens":2}}"#,
        );
        assert_eq!(
            (s.usage.cache_write_tokens, s.usage.cache_read_tokens),
            (0, 0)
        );
    }

    #[test]
    fn a_2xx_that_is_not_a_message_is_a_retryable_bad_response() {
        // (body, why)
        let cases = [
            ("{}", "no `content` list"),
            ("not json", "not JSON"),
            ("[1,2]", "not a JSON object"),
            (r#"{"content":"nope",USAGE}"#, "not a message"),
            (r#"{"content":[{"type":"text","text":"7"}]}"#, "no `usage`"),
            (
                r#"{"choices":[{"message":{"content":"7"}}],"usage":{"prompt_tokens":3}}"#,
                "no `content` list",
            ),
        ];
        for (body, why) in cases {
            let body = body.replace("USAGE", USAGE);
            let f = failed(200, &body);
            assert_eq!(f.code, "bad_response", "{body}");
            assert!(f.retryable, "{body}");
            assert!(
                f.message
                    .starts_with("HTTP 200, but not a Messages response: "),
                "{body}: {}",
                f.message
            );
            assert!(f.message.contains(why), "{body}: {}", f.message);
        }
    }

    #[test]
    fn error_answers_name_the_error_type() {
        // (status, body, code, retryable)
        let cases = [
            (
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
                "rate_limit_error",
                true,
            ),
            (
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                "overloaded_error",
                true,
            ),
            (
                500,
                r#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
                "api_error",
                true,
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}"#,
                "invalid_request_error",
                false,
            ),
            (502, "<html>bad gateway</html>", "http_502", true),
        ];
        for (status, body, code, retryable) in cases {
            let f = failed(status, body);
            assert_eq!(f.code, code, "{body}");
            assert_eq!(f.retryable, retryable, "{body}");
            assert_eq!(f.status, Some(status));
        }
    }
}
