//! Deterministic chat completions: the same request body always gets the same
//! answer, in a batch line and on `/v1/chat/completions` alike.

use serde_json::{Map, Value, json};

use super::api_error::ErrorBody;
use super::hash::hash_json;

/// Marks every simulated completion, so nobody mistakes it for a model's output.
pub const SYSTEM_FINGERPRINT: &str = "batchgrader-simulated";

/// Characters per token in our estimates: the usual rule of thumb for English.
const CHARS_PER_TOKEN: usize = 4;

/// What the simulated model "said" and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub content: String,
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The most completion tokens the simulated models give.
pub const SIM_MAX_OUTPUT_TOKENS: i64 = 16_384;

/// The checks a real chat endpoint makes before running a request; a failure
/// is a 400 with this body (an error line in a batch).
pub fn check_request(body: &Value) -> Result<(), ErrorBody> {
    let Some(body) = body.as_object() else {
        return Err(ErrorBody::invalid_request(
            "The request body must be a JSON object.",
        ));
    };
    match body.get("model") {
        None | Some(Value::Null) => {
            return Err(ErrorBody::invalid_request(
                "you must provide a model parameter",
            ));
        }
        Some(Value::String(_)) => {}
        Some(other) => return Err(invalid_type("model", "a string", other)),
    }
    match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(
                ErrorBody::invalid_request("Missing required parameter: 'messages'.")
                    .param("messages")
                    .code("missing_required_parameter"),
            );
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ErrorBody::invalid_request(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, \
                 but got an empty array instead.",
            )
            .param("messages")
            .code("empty_array"));
        }
        Some(Value::Array(_)) => {}
        Some(other) => return Err(invalid_type("messages", "an array", other)),
    }
    for param in ["max_tokens", "max_completion_tokens"] {
        match body.get(param) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_i64() {
                // As OpenAI answers for a model's output limit (16,384
                // completion tokens for gpt-4o-mini): only the server knows it.
                Some(v) if v > SIM_MAX_OUTPUT_TOKENS => {
                    return Err(ErrorBody::invalid_request(format!(
                        "max_tokens is too large: {v}. This model supports at most \
                         {SIM_MAX_OUTPUT_TOKENS} completion tokens, whereas you provided {v}."
                    ))
                    .param(param)
                    .code("invalid_value"));
                }
                Some(v) if v >= 1 => {}
                Some(v) => {
                    return Err(ErrorBody::invalid_request(format!(
                        "Invalid '{param}': integer below minimum value. Expected a value >= 1, \
                         but got {v} instead."
                    ))
                    .param(param)
                    .code("integer_below_min_value"));
                }
                None => return Err(invalid_type(param, "an integer", &Value::Number(n.clone()))),
            },
            Some(other) => return Err(invalid_type(param, "an integer", other)),
        }
    }
    if body.get("stream") == Some(&Value::Bool(true)) {
        return Err(ErrorBody::invalid_request(
            "The simulated provider does not support stream=true.",
        )
        .param("stream")
        .code("unsupported_value"));
    }
    Ok(())
}

fn invalid_type(param: &str, expected: &str, got: &Value) -> ErrorBody {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ErrorBody::invalid_request(format!(
        "Invalid type for '{param}': expected {expected}, but got {got} instead."
    ))
    .param(param)
    .code("invalid_type")
}

/// The answer to a request that passed [`check_request`].
pub fn complete(body: &Value) -> Completion {
    answer(body, false)
}

/// The answer of a model that decodes under the schema in
/// `response_format.json_schema.schema` (how Anthropic's
/// `output_config.format` works): the same schema-fitting object as
/// [`complete`] gives, never broken. A request that draws a misfit there is
/// refused here instead (prose, `finish_reason: "refusal"`): besides the
/// token limit, a refusal is the one way such an answer can miss its schema.
pub fn complete_constrained(body: &Value) -> Completion {
    answer(body, true)
}

/// `schema` with the constraints a client moved into a `description`
/// (a JSON object after its last blank line, as `request::request_params`
/// and Anthropic's SDKs write them) put back as keywords, where the
/// answer generator reads them. Keywords the node still has win.
fn with_described_constraints(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out: serde_json::Map<String, Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), with_described_constraints(v)))
                .collect();
            let said = m
                .get("description")
                .and_then(Value::as_str)
                .and_then(|d| d.rsplit("\n\n").next())
                .and_then(|tail| serde_json::from_str::<serde_json::Map<String, Value>>(tail).ok());
            for (k, v) in said.into_iter().flatten() {
                out.entry(k).or_insert(v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(with_described_constraints).collect()),
        other => other.clone(),
    }
}

/// The text of a refusal under a schema.
pub const REFUSAL: &str = "I can't provide a grade for this answer.";

fn answer(body: &Value, constrained: bool) -> Completion {
    let h = hash_json(b"answer", body);
    let grade = h % 11;
    let mut finish_reason = "stop";
    let (content, is_json) = match body
        .pointer("/response_format/type")
        .and_then(Value::as_str)
    {
        Some("json_object") => (json!({ "grade": grade }).to_string(), true),
        Some("json_schema") => {
            let schema = body
                .pointer("/response_format/json_schema/schema")
                .unwrap_or(&Value::Null);
            // Under Anthropic's grammar the bounds it cannot compile ride
            // in the description, where a model reads and follows them.
            let described;
            let schema = if constrained {
                described = with_described_constraints(schema);
                &described
            } else {
                schema
            };
            let answer = fake_object(schema, grade, h);
            match misfit_kind(h) {
                Some(_) if constrained => {
                    finish_reason = "refusal";
                    (REFUSAL.to_string(), false)
                }
                Some(kind) => (misfit(answer, schema, kind), true),
                None => (answer.to_string(), true),
            }
        }
        _ => (grade.to_string(), false),
    };
    // JSON punctuation costs a token or two on top of the characters.
    let completion_tokens = estimate_tokens(&content) + u64::from(is_json);
    let completion = Completion {
        content,
        finish_reason,
        prompt_tokens: prompt_tokens(body),
        completion_tokens,
    };
    truncate_to_limit(completion, output_limit(body))
}

fn estimate_tokens(text: &str) -> u64 {
    text.chars().count().div_ceil(CHARS_PER_TOKEN).max(1) as u64
}

fn output_limit(body: &Value) -> Option<u64> {
    body.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
}

/// A real model stops at the token limit mid-answer; clients must cope with
/// the cut-off text and `finish_reason: "length"`, so the simulator does too.
fn truncate_to_limit(mut completion: Completion, limit: Option<u64>) -> Completion {
    let Some(limit) = limit else {
        return completion;
    };
    if completion.completion_tokens <= limit {
        return completion;
    }
    let keep = usize::try_from(limit).unwrap_or(usize::MAX) * CHARS_PER_TOKEN;
    completion.content = completion.content.chars().take(keep).collect();
    completion.completion_tokens = limit;
    completion.finish_reason = "length";
    completion
}

/// Characters / 4 plus the chat format's per-message and priming overhead.
fn prompt_tokens(body: &Value) -> u64 {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let chars: usize = messages
        .iter()
        .map(|m| content_chars(m.get("content").unwrap_or(&Value::Null)))
        .sum();
    ((chars / CHARS_PER_TOKEN) as u64 + 4 * messages.len() as u64 + 3).max(1)
}

fn content_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|s| s.chars().count())
            .sum(),
        _ => 0,
    }
}

/// A JSON object that fits the response schema well enough for a grader: the
/// first required property (or `grade`) carries the grade, mapped into any
/// declared range or enum. Structured outputs require an object at the root.
fn fake_object(schema: &Value, grade: u64, h: u64) -> Value {
    match fake_value(schema, grade, h, 0) {
        object @ Value::Object(_) => object,
        _ => json!({ "grade": grade }),
    }
}

/// One answer in this many breaks the response schema, as answers cut off
/// by `max_tokens`, refusals and servers that ignore `response_format` do,
/// so that a client's parse-failure path runs in every demo.
pub const MISFIT_EVERY: u64 = 25;

/// Which way the answer to a request of hash `h` breaks its schema, if it
/// does (decided by bits of the hash that the grade does not use).
fn misfit_kind(h: u64) -> Option<u64> {
    let draw = (h >> 20) % (MISFIT_EVERY * 3);
    (draw < 3).then_some(draw)
}

/// `answer`, broken one of three ways: prose instead of JSON, a required
/// property left out, or a value outside its range or enum.
fn misfit(mut answer: Value, schema: &Value, kind: u64) -> String {
    let props = schema.get("properties").and_then(Value::as_object);
    let obj = answer.as_object_mut();
    match (kind, obj, props) {
        (1, Some(obj), _) if !obj.is_empty() => {
            let last = obj.keys().next_back().cloned().unwrap_or_default();
            obj.remove(&last);
        }
        (2, Some(obj), Some(props)) => {
            let bad = props.iter().find_map(|(name, p)| {
                if let Some(max) = p.get("maximum").and_then(Value::as_i64) {
                    Some((name.clone(), json!(max + 1)))
                } else if p.get("enum").is_some() {
                    Some((name.clone(), json!("unsure")))
                } else {
                    None
                }
            });
            match bad {
                Some((name, v)) => {
                    obj.insert(name, v);
                }
                None => return "I cannot grade this answer.".into(),
            }
        }
        _ => {
            let grade = answer
                .as_object()
                .and_then(|o| o.values().find_map(Value::as_i64))
                .unwrap_or(5);
            return format!("I would give this a {grade}.");
        }
    }
    answer.to_string()
}

const MAX_SCHEMA_DEPTH: usize = 8;

fn fake_value(schema: &Value, grade: u64, h: u64, depth: usize) -> Value {
    if depth > MAX_SCHEMA_DEPTH {
        return Value::Null;
    }
    let Some(schema) = schema.as_object() else {
        return Value::Null;
    };
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array)
        && !choices.is_empty()
    {
        return choices[(h % choices.len() as u64) as usize].clone();
    }
    if let Some(first) = ["anyOf", "oneOf"].iter().find_map(|k| {
        schema
            .get(*k)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
    }) {
        return fake_value(first, grade, h, depth + 1);
    }
    match schema_type(schema) {
        Some("object") => fake_properties(schema, grade, h, depth),
        None if schema.contains_key("properties") || depth == 0 => {
            fake_properties(schema, grade, h, depth)
        }
        Some("integer") => json!(in_range(schema, grade, h)),
        Some("number") => json!(in_range(schema, grade, h) as f64),
        Some("boolean") => json!(grade >= 5),
        Some("string") => json!(format!("simulated reason for grade {grade}")),
        Some("array") => {
            let items = schema.get("items").unwrap_or(&Value::Null);
            json!([fake_value(items, grade, h, depth + 1)])
        }
        Some("null") => Value::Null,
        _ => json!(grade),
    }
}

fn schema_type(schema: &Map<String, Value>) -> Option<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t),
        // `["integer", "null"]`: the nullable form; pick the real type.
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null"),
        _ => None,
    }
}

fn fake_properties(schema: &Map<String, Value>, grade: u64, h: u64, depth: usize) -> Value {
    let empty = Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut names: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        names = properties.keys().map(String::as_str).collect();
    }
    if names.is_empty() {
        return json!({ "grade": grade });
    }
    let mut out = Map::new();
    for (i, name) in names.into_iter().enumerate() {
        let sub = properties.get(name).unwrap_or(&Value::Null);
        // Each property gets its own draw, so two enums don't move in lockstep.
        let h = h.rotate_left(7 * i as u32);
        let value = match fake_value(sub, grade, h, depth + 1) {
            Value::Null if sub.is_null() => json!(grade),
            v => v,
        };
        out.insert(name.to_string(), value);
    }
    Value::Object(out)
}

/// The grade (0–10) unless the schema declares a range; then a value inside it.
fn in_range(schema: &Map<String, Value>, grade: u64, h: u64) -> i64 {
    let min = schema.get("minimum").and_then(Value::as_i64);
    let max = schema.get("maximum").and_then(Value::as_i64);
    match (min, max) {
        (Some(lo), Some(hi)) if lo <= hi => {
            let span = (hi - lo) as u64 + 1;
            lo + (h % span) as i64
        }
        (Some(lo), None) => lo + grade as i64,
        (None, Some(hi)) => (grade as i64).min(hi),
        _ => grade as i64,
    }
}

/// The `chat.completion` object returned for `request`.
pub fn completion_json(request: &Value, completion: &Completion, id: &str, created: u64) -> Value {
    let model = request.get("model").cloned().unwrap_or(Value::Null);
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": completion.content,
                "refusal": null,
            },
            "finish_reason": completion.finish_reason,
            "logprobs": null,
        }],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": 0 },
            "completion_tokens_details": { "reasoning_tokens": 0 },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: Value) -> Value {
        let mut body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Grade the answer from 0 to 10."},
                {"role": "user", "content": "The sky is blue because of Rayleigh scattering."}
            ]
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    }

    #[test]
    fn plain_answer_is_a_deterministic_grade() {
        let a = complete(&request(json!({})));
        let b = complete(&request(json!({})));
        assert_eq!(a, b);
        let grade: u64 = a.content.parse().unwrap();
        assert!(grade <= 10);
        assert_eq!(a.completion_tokens, 1);
        assert_eq!(a.finish_reason, "stop");
    }

    #[test]
    fn grades_vary_with_the_request() {
        let grades: std::collections::HashSet<String> = (0..50)
            .map(|i| complete(&request(json!({"user": format!("u{i}")}))).content)
            .collect();
        assert!(grades.len() >= 5, "{grades:?}");
    }

    #[test]
    fn prompt_tokens_estimate() {
        // 30 + 47 characters → 77 / 4 = 19, + 2 messages × 4 + 3.
        assert_eq!(complete(&request(json!({}))).prompt_tokens, 19 + 8 + 3);
        let parts = json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}
        ]});
        assert_eq!(complete(&parts).prompt_tokens, 2 + 4 + 3);
    }

    #[test]
    fn json_object_answer() {
        let c = complete(&request(
            json!({"response_format": {"type": "json_object"}}),
        ));
        let v: Value = serde_json::from_str(&c.content).unwrap();
        assert!(v["grade"].as_u64().unwrap() <= 10);
        assert!(c.completion_tokens > 1);
    }

    fn rubric_body(extra: Value) -> Value {
        let mut body = request(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "g", "strict": true, "schema": {"type": "object",
                "properties": {
                    "score": {"type": "integer", "minimum": 1, "maximum": 5},
                    "label": {"enum": ["a", "b"]},
                    "why": {"type": "string"}
                },
                "required": ["score", "label", "why"], "additionalProperties": false}}}}));
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    }

    #[test]
    fn now_and_then_an_answer_breaks_the_schema_each_way() {
        let mut kinds = [0u32; 3];
        let mut broken = 0;
        for i in 0..1000 {
            let body = rubric_body(json!({"user": i}));
            let c = complete(&body);
            assert_eq!(c.content, complete(&body).content, "deterministic");
            let Some(kind) = misfit_kind(hash_json(b"answer", &body)) else {
                let v: Value = serde_json::from_str(&c.content).unwrap();
                assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
                continue;
            };
            broken += 1;
            kinds[kind as usize] += 1;
            let v: Result<Value, _> = serde_json::from_str(&c.content);
            match kind {
                0 => assert!(v.is_err(), "{}", c.content),
                1 => assert_eq!(v.unwrap().as_object().unwrap().len(), 2),
                _ => assert_eq!(v.unwrap()["score"], 6),
            }
        }
        // About one in MISFIT_EVERY, every kind seen.
        assert!((20..=70).contains(&broken), "{broken}");
        assert!(kinds.iter().all(|k| *k > 0), "{kinds:?}");
    }

    #[test]
    fn constrained_answers_fit_the_schema_or_are_refused() {
        let mut refused = 0;
        for i in 0..1000 {
            let body = rubric_body(json!({"user": i}));
            let c = complete_constrained(&body);
            let open = complete(&body);
            assert_eq!(c.prompt_tokens, open.prompt_tokens);
            if misfit_kind(hash_json(b"answer", &body)).is_some() {
                refused += 1;
                assert_eq!(c.finish_reason, "refusal");
                assert_eq!(c.content, REFUSAL);
                continue;
            }
            // The same answer as without the constraint.
            assert_eq!(c, open);
            let v: Value = serde_json::from_str(&c.content).unwrap();
            assert!((1..=5).contains(&v["score"].as_i64().unwrap()), "{v}");
            assert!(["a", "b"].contains(&v["label"].as_str().unwrap()), "{v}");
        }
        assert!((20..=70).contains(&refused), "{refused}");
    }

    #[test]
    fn bounds_moved_into_a_description_are_followed_under_the_grammar() {
        let schema = json!({"type": "object", "properties": {"score": {"type": "integer",
            "description": "The grade.\n\n{\"minimum\":2,\"maximum\":3}"}},
            "required": ["score"], "additionalProperties": false});
        let (mut low, mut high) = (i64::MAX, i64::MIN);
        for i in 0..300 {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": i.to_string()}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "g", "schema": schema}}});
            let c = complete_constrained(&body);
            if c.finish_reason == "refusal" {
                continue;
            }
            let v: Value = serde_json::from_str(&c.content).unwrap();
            let s = v["score"].as_i64().unwrap();
            low = low.min(s);
            high = high.max(s);
        }
        assert_eq!((low, high), (2, 3));
        // A description without such a tail changes nothing.
        let plain = json!({"type": "integer", "description": "a {note}"});
        assert_eq!(with_described_constraints(&plain), plain);
    }

    #[test]
    fn json_schema_answers_follow_the_schema() {
        let cases = [
            (
                json!({"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}),
                "score",
            ),
            (
                json!({"type": "object", "properties": {"label": {"type": "string", "enum": ["pos", "neg"]}}, "required": ["label"]}),
                "label",
            ),
            (json!({"type": "object"}), "grade"),
            (Value::Null, "grade"),
        ];
        for (schema, key) in cases {
            let body = request(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "g", "strict": true, "schema": schema}}}));
            let c = complete(&body);
            let v: Value = serde_json::from_str(&c.content).unwrap();
            assert!(v.get(key).is_some(), "{schema} → {v}");
        }
    }

    #[test]
    fn json_schema_ranges_and_enums_are_respected() {
        for i in 0..40 {
            let body = request(json!({"user": i, "response_format": {"type": "json_schema",
                "json_schema": {"name": "g", "schema": {"type": "object",
                    "properties": {
                        "score": {"type": "integer", "minimum": 1, "maximum": 5},
                        "label": {"enum": ["a", "b", "c"]},
                        "why": {"type": ["string", "null"]}
                    },
                    "required": ["score", "label", "why"]}}}}));
            if misfit_kind(hash_json(b"answer", &body)).is_some() {
                continue;
            }
            let v: Value = serde_json::from_str(&complete(&body).content).unwrap();
            let score = v["score"].as_i64().unwrap();
            assert!((1..=5).contains(&score), "{v}");
            assert!(["a", "b", "c"].contains(&v["label"].as_str().unwrap()));
            assert!(v["why"].is_string());
        }
    }

    #[test]
    fn token_limit_cuts_the_answer() {
        let c = complete(&request(json!({
            "max_completion_tokens": 2,
            "response_format": {"type": "json_object"}
        })));
        assert_eq!(c.finish_reason, "length");
        assert_eq!(c.completion_tokens, 2);
        assert!(serde_json::from_str::<Value>(&c.content).is_err());
        let fine = complete(&request(json!({"max_tokens": 1})));
        assert_eq!(fine.finish_reason, "stop");
    }

    #[test]
    fn request_checks() {
        let rejected = [
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                None,
            ),
            (json!({"model": "m"}), Some("messages")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (json!({"model": 3, "messages": [{}]}), Some("model")),
            (
                json!({"model": "m", "messages": [{}], "max_tokens": 0}),
                Some("max_tokens"),
            ),
            (
                json!({"model": "m", "messages": [{}], "max_completion_tokens": -1}),
                Some("max_completion_tokens"),
            ),
            (
                json!({"model": "m", "messages": [{}], "max_tokens": 1.5}),
                Some("max_tokens"),
            ),
            (
                json!({"model": "m", "messages": [{}], "stream": true}),
                Some("stream"),
            ),
            (json!([1]), None),
        ];
        for (body, param) in rejected {
            let err = check_request(&body).expect_err(&body.to_string());
            assert_eq!(err.param.as_deref(), param, "{body}");
            assert_eq!(err.kind, "invalid_request_error");
        }
        assert!(check_request(&request(json!({"max_tokens": 1, "stream": false}))).is_ok());
    }

    #[test]
    fn completion_object_shape() {
        let body = request(json!({}));
        let c = complete(&body);
        let v = completion_json(&body, &c, "chatcmpl-sim-1", 1_700_000_000);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["system_fingerprint"], SYSTEM_FINGERPRINT);
        assert_eq!(v["choices"][0]["message"]["content"], c.content.as_str());
        assert_eq!(v["choices"][0]["message"]["refusal"], Value::Null);
        assert_eq!(
            v["usage"]["total_tokens"].as_u64().unwrap(),
            c.prompt_tokens + c.completion_tokens
        );
    }
}
