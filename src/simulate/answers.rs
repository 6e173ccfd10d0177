//! Deterministic chat completions: the same request body always gets the same
//! answer, in a batch line and on `/v1/chat/completions` alike.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::api_error::ErrorBody;
use super::hash::hash_json;
use crate::answer::{capture, compile_pattern, find_word, label_of};

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
    /// Of `prompt_tokens`, those read from the simulated prompt cache
    /// ([`cached_tokens`]); set by the caller, which knows what came before.
    pub cached_tokens: u64,
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

/// The answer to a request that passed [`check_request`]; a request without
/// a JSON `response_format` is answered in the job's shape.
pub fn complete(body: &Value, plain: &Plain) -> Completion {
    answer(body, false, plain)
}

/// The answer of a model that decodes under the schema in
/// `response_format.json_schema.schema` (how Anthropic's
/// `output_config.format` works): the same schema-fitting object as
/// [`complete`] gives, never broken. A request that draws a misfit there is
/// refused here instead (prose, `finish_reason: "refusal"`): besides the
/// token limit, a refusal is the one way such an answer can miss its schema.
pub fn complete_constrained(body: &Value) -> Completion {
    answer(body, true, &Plain::Grade)
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

/// The grades a plain answer is drawn from: 0 to 10.
const GRADES: u64 = 11;

/// What a job expects its answers to look like, for requests that carry no
/// JSON `response_format` (a schema says the shape itself). Frozen into each
/// batch when it is made, as its timing is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerShape {
    /// A grade from 0 to 10, which `parse: number` and `text` take.
    #[default]
    Free,
    /// One of these labels (`parse: label`), chosen by a keyword classifier.
    Labels(Vec<String>),
    /// Text this regular expression matches (`parse: regex`); the labels, if
    /// any, are among the answers tried.
    Pattern {
        pattern: String,
        labels: Vec<String>,
    },
}

impl AnswerShape {
    /// The shape made ready to answer with.
    pub fn plain(&self) -> Plain {
        match self {
            AnswerShape::Free => Plain::Grade,
            AnswerShape::Labels(labels) if labels.is_empty() => Plain::Grade,
            AnswerShape::Labels(labels) => Plain::Labels(labels.clone()),
            AnswerShape::Pattern { pattern, labels } => {
                pattern_answers(pattern, labels).map_or(Plain::Grade, Plain::ByGrade)
            }
        }
    }

    /// What to tell a user whose pattern the simulator cannot answer: its
    /// answers then fail to parse, and that is the simulator's limit, not
    /// a mistake in the spec.
    pub fn note(&self) -> Option<String> {
        match (self, self.plain()) {
            (AnswerShape::Pattern { .. }, Plain::Grade) => Some(
                "the simulated provider cannot write answers your output.pattern matches \
                 (it tries numbers, `Score: 7`, `7/10`, `{\"grade\": 7}`, A to E, yes/no, \
                 pass/fail, true/false and the labels); its answers will fail to parse"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// An [`AnswerShape`] ready to answer with: a pattern's answers worked out
/// once, not per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plain {
    /// The grade as a number (also for a pattern nothing can match).
    Grade,
    Labels(Vec<String>),
    /// The answer for each grade, 0 to 10.
    ByGrade(Vec<String>),
}

impl Plain {
    fn answer(&self, body: &Value, grade: u64, h: u64) -> String {
        match self {
            Plain::Grade => grade.to_string(),
            Plain::Labels(labels) => label_answer(labels, &last_user_text(body), h),
            Plain::ByGrade(answers) => answers[grade as usize].clone(),
        }
    }
}

/// Label answers, per thousand, that are written untidily ("BUG", "bug.",
/// "Label: bug") and that name no label at all: so that a demo shows the
/// parser's leniency and a parse failure, as real models give both.
const UNTIDY_PER_MILLE: u64 = 40;
const NO_LABEL_PER_MILLE: u64 = 20;

/// A keyword classifier: the label the row's text names first (as a whole
/// word, in any case), else one chosen by the request's hash; now and then
/// written untidily, or no label at all.
fn label_answer(labels: &[String], text: &str, h: u64) -> String {
    let label = named_label(labels, text)
        .unwrap_or_else(|| &labels[((h >> 8) % labels.len() as u64) as usize]);
    // Bits of the hash the grade and the schema misfits hardly use.
    let draw = (h >> 32) % 1000;
    if draw < NO_LABEL_PER_MILLE {
        no_label(labels).unwrap_or_else(|| label.clone())
    } else if draw < NO_LABEL_PER_MILLE + UNTIDY_PER_MILLE {
        untidy(labels, label, h >> 48)
    } else {
        label.clone()
    }
}

/// The label `text` names first, as `parse: label` finds a label in an
/// answer (whole words, any case); of two starting at the same place, the
/// longer ("bug report" before "bug").
fn named_label<'a>(labels: &'a [String], text: &str) -> Option<&'a String> {
    let text = text.to_lowercase();
    labels
        .iter()
        .filter_map(|l| find_word(&text, &l.to_lowercase()).map(|at| (at, l)))
        .min_by_key(|(at, l)| (*at, Reverse(l.len())))
        .map(|(_, l)| l)
}

/// `label` written as models sometimes write it, in the first form (from
/// `pick` on) that the label parser still reads as `label`; some label
/// lists make a form ambiguous ("Label: x" when a label is `label`).
fn untidy(labels: &[String], label: &str, pick: u64) -> String {
    let mut capital = label.chars();
    let capital = capital
        .next()
        .map(|c| c.to_uppercase().chain(capital).collect::<String>())
        .unwrap_or_default();
    let forms = [
        label.to_uppercase(),
        capital,
        format!("{label}."),
        format!("Label: {label}"),
    ];
    let n = forms.len();
    (0..n)
        .map(|i| &forms[(pick as usize + i) % n])
        .find(|f| f.as_str() != label && label_of(labels, f).is_ok_and(|l| l == label))
        .cloned()
        .unwrap_or_else(|| label.to_string())
}

/// An answer that is none of the labels, as the parser sees it.
fn no_label(labels: &[String]) -> Option<String> {
    ["unsure", "unclear", "I cannot tell."]
        .into_iter()
        .find(|a| label_of(labels, a).is_err())
        .map(String::from)
}

/// The text of the last user message: the row, in a grading prompt (the
/// system prompt, which lists the labels, is not read).
fn last_user_text(body: &Value) -> String {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let Some(content) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
    else {
        return String::new();
    };
    match content {
        Value::String(s) => s.clone(),
        // Content parts (OpenAI) and content blocks (Anthropic) alike.
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The answer for each grade that `pattern` matches (compiled and applied
/// as `parse: regex` does): the first of the grade's candidates it matches,
/// else that of the nearest grade that has one (`^[0-5]$` answers 5 for a
/// 7). `None` when it matches no candidate of any grade.
fn pattern_answers(pattern: &str, labels: &[String]) -> Option<Vec<String>> {
    let re = compile_pattern(pattern).ok()?;
    let own: Vec<Option<String>> = (0..GRADES)
        .map(|g| {
            candidates(g, labels)
                .into_iter()
                .find(|c| capture(&re, c).is_some())
        })
        .collect();
    (0..GRADES)
        .map(|g| {
            (0..GRADES).find_map(|d| {
                let lower = g.checked_sub(d).and_then(|g| own[g as usize].clone());
                lower.or_else(|| own.get((g + d) as usize).cloned().flatten())
            })
        })
        .collect()
}

/// What a grader may answer for grade `g` (0 to 10), most common forms
/// first: the number alone and in the usual phrasings, JSON, a letter
/// grade, a verdict word in three cases, and the labels (from the `g`-th
/// on, so that grades spread over them).
fn candidates(g: u64, labels: &[String]) -> Vec<String> {
    let good = g >= 5;
    let letter = ["E", "E", "E", "D", "D", "C", "C", "B", "B", "A", "A"][g as usize];
    let mut out = vec![
        g.to_string(),
        format!("Score: {g}"),
        format!("Grade: {g}"),
        format!("Rating: {g}"),
        format!("{g}/10"),
        format!("{g} out of 10"),
        format!("[[{g}]]"),
        format!("{{\"grade\": {g}}}"),
        format!("{{\"score\": {g}}}"),
        letter.to_string(),
    ];
    for (yes, no) in [("yes", "no"), ("pass", "fail"), ("true", "false")] {
        let word = if good { yes } else { no };
        let mut capital = word.to_string();
        capital[..1].make_ascii_uppercase();
        out.extend([word.to_string(), capital, word.to_uppercase()]);
    }
    let n = labels.len();
    out.extend((0..n).map(|i| labels[(g as usize + i) % n].clone()));
    out
}

/// The text of a refusal under a schema.
pub const REFUSAL: &str = "I can't provide a grade for this answer.";

fn answer(body: &Value, constrained: bool, plain: &Plain) -> Completion {
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
        _ => (plain.answer(body, grade, h), false),
    };
    // JSON punctuation costs a token or two on top of the characters.
    let completion_tokens = estimate_tokens(&content) + u64::from(is_json);
    let completion = Completion {
        content,
        finish_reason,
        prompt_tokens: prompt_tokens(body),
        completion_tokens,
        cached_tokens: 0,
    };
    truncate_to_limit(completion, output_limit(body))
}

/// The shortest prefix the simulated providers cache, as OpenAI's (its
/// prompt caching guide: 1,024 tokens), cached in blocks of 128 tokens.
const MIN_CACHED_PREFIX: u64 = 1024;
const CACHE_BLOCK: u64 = 128;

/// The simulated prompt cache: a request that asks for caching, whose
/// shared prefix (`prefix_tokens`) was seen before in the same job (`warm`),
/// reads the prefix from the cache in whole 128-token blocks once it is
/// 1,024 tokens or more (OpenAI's rule); otherwise nothing is cached.
pub fn cached_tokens(prefix_tokens: u64, warm: bool) -> u64 {
    if warm && prefix_tokens >= MIN_CACHED_PREFIX {
        prefix_tokens / CACHE_BLOCK * CACHE_BLOCK
    } else {
        0
    }
}

/// The tokens of a chat body's system message, the shared prefix, as
/// [`prompt_tokens`] counts them.
pub fn prefix_tokens(body: &Value) -> u64 {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.first())
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("system"))
        .map_or(0, |m| {
            let content = content_text(m.get("content").unwrap_or(&Value::Null));
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // The system message's share of `prompt_tokens`: the same rule,
            // without the reply's priming (it comes once, after the last message).
            let one = [("system", content.as_str())];
            let n =
                match crate::tokenize::shared_encoder(crate::tokenize::encoding_for_model(model).0)
                {
                    Some(bpe) => crate::tokenize::chat_rule(|t| bpe.count_ordinary(t), one),
                    None => {
                        crate::tokenize::chat_rule(|t| t.chars().count() / CHARS_PER_TOKEN, one)
                    }
                };
            n.saturating_sub(crate::tokenize::REPLY_PRIMING) as u64
        })
}

/// What a request's caching is keyed by: OpenAI's `prompt_cache_key` and
/// the prefix itself (a cache holds one prefix).
pub fn cache_key(body: &Value) -> Option<String> {
    let key = body.get("prompt_cache_key").and_then(Value::as_str)?;
    let system = body.pointer("/messages/0/content").map(Value::to_string);
    Some(format!("{key}\u{0}{}", system.unwrap_or_default()))
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

/// Prompt tokens billed by the rule the plan counts with
/// (`tokenize::chat_rule`: OpenAI's published chat-format counting), with
/// the model's tiktoken encoding; text parts of a message are counted
/// joined. Should the encoder be unavailable, characters / 4.
fn prompt_tokens(body: &Value) -> u64 {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let texts: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            (
                role.to_string(),
                content_text(m.get("content").unwrap_or(&Value::Null)),
            )
        })
        .collect();
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let pairs = texts.iter().map(|(r, c)| (r.as_str(), c.as_str()));
    let n = match crate::tokenize::shared_encoder(crate::tokenize::encoding_for_model(model).0) {
        Some(bpe) => crate::tokenize::chat_rule(|t| bpe.count_ordinary(t), pairs),
        None => crate::tokenize::chat_rule(|t| t.chars().count() / CHARS_PER_TOKEN, pairs),
    };
    (n as u64).max(1)
}

/// A message's text: the string, or its text parts one after another.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
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
            "prompt_tokens_details": { "cached_tokens": completion.cached_tokens },
            "completion_tokens_details": { "reasoning_tokens": 0 },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Today's plain answers: a grade.
    fn complete(body: &Value) -> Completion {
        super::complete(body, &Plain::Grade)
    }

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
    fn prompt_tokens_are_billed_as_the_plan_counts_them() {
        let counter = crate::tokenize::Counter::new(crate::tokenize::Encoding::O200kBase).unwrap();
        let planned = counter.chat_tokens([
            ("system", "Grade the answer from 0 to 10."),
            ("user", "The sky is blue because of Rayleigh scattering."),
        ]);
        assert_eq!(complete(&request(json!({}))).prompt_tokens, planned as u64);
        // The cookbook's figures: 3 per message, 3 priming the reply.
        let user = counter.count("user") + counter.count("abcdefgh");
        let parts = json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "text", "text": "efgh"}]}
        ]});
        assert_eq!(complete(&parts).prompt_tokens, (3 + user + 3) as u64);
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

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// A request whose last user message is `text`, told apart by `i`.
    fn row(text: &str, i: usize) -> Value {
        json!({"model": "gpt-4o-mini", "user": i, "messages": [
            {"role": "system", "content": "Classify the ticket: billing, bug or feature."},
            {"role": "user", "content": text}
        ]})
    }

    /// A hash whose draw gives the label as it is (neither untidy nor none).
    const TIDY: u64 = 999 << 32;

    #[test]
    fn the_label_the_text_names_first_wins() {
        let l = labels(&["billing", "bug", "feature", "bug report"]);
        let cases: &[(&str, Option<&str>)] = &[
            ("I was charged twice: a billing mistake", Some("billing")),
            ("There is a BUG in the export", Some("bug")),
            ("Bug: the billing page is blank", Some("bug")),
            ("the billing page has a bug", Some("billing")),
            ("Feature idea: dark mode.", Some("feature")),
            // The longer of two labels starting at the same place.
            ("bug report: it crashes", Some("bug report")),
            // Only whole words: no label inside another word.
            ("debugging the featured billings", None),
            ("nothing to see", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(named_label(&l, text).map(String::as_str), *want, "{text:?}");
            if let Some(want) = want {
                assert_eq!(label_answer(&l, text, TIDY), *want, "{text:?}");
            }
        }
    }

    #[test]
    fn the_row_is_read_from_the_last_user_message() {
        let l = Plain::Labels(labels(&["billing", "bug", "feature"]));
        let body = json!({"model": "m", "messages": [
            {"role": "system", "content": "Answer bug, billing or feature."},
            {"role": "user", "content": "an example about billing"},
            {"role": "assistant", "content": "billing"},
            {"role": "user", "content": [{"type": "text", "text": "a feature request"}]}
        ]});
        assert_eq!(last_user_text(&body), "a feature request");
        assert_eq!(last_user_text(&json!({"model": "m"})), "");
        let Plain::Labels(names) = l else {
            unreachable!()
        };
        assert_eq!(
            label_answer(&names, &last_user_text(&body), TIDY),
            "feature"
        );
    }

    #[test]
    fn without_a_named_label_the_hash_picks_one() {
        let names = labels(&["billing", "bug", "feature"]);
        let plain = Plain::Labels(names.clone());
        let mut seen = std::collections::HashSet::new();
        for i in 0..300 {
            let body = row(&format!("ticket number {i}"), i);
            let answer = super::complete(&body, &plain);
            assert_eq!(answer, super::complete(&body, &plain), "deterministic");
            seen.extend(label_of(&names, &answer.content).ok());
            let h = hash_json(b"answer", &body);
            let clean = label_answer(&names, "ticket", (h & 0xffff_ffff) | TIDY);
            assert!(names.contains(&clean), "{clean}");
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn some_label_answers_are_untidy_and_a_few_no_label() {
        let names = labels(&["billing", "bug", "feature"]);
        let plain = Plain::Labels(names.clone());
        let (mut tidy, mut untidy, mut none) = (0, 0, 0);
        for i in 0..2000 {
            let body = row("the export has a bug", i);
            let answer = super::complete(&body, &plain).content;
            match label_of(&names, &answer) {
                Ok(l) if answer == l => tidy += 1,
                Ok(l) => {
                    // Untidy, but still the label the text names.
                    assert_eq!(l, "bug", "{answer:?}");
                    untidy += 1;
                }
                Err(_) => none += 1,
            }
        }
        assert_eq!(tidy + untidy + none, 2000);
        // 4% and 2% of 2,000: 80 and 40.
        assert!((50..=115).contains(&untidy), "{untidy}");
        assert!((20..=60).contains(&none), "{none}");
    }

    #[test]
    fn untidy_forms_are_ones_the_label_parser_reads() {
        let sets = [
            labels(&["billing", "bug", "feature"]),
            // "Label: x" names two labels here; "x." is not `x.y`.
            labels(&["label", "x", "x.y"]),
            labels(&["bug", "bug report", "c++", "N/A"]),
        ];
        for set in &sets {
            for label in set {
                let mut forms = std::collections::HashSet::new();
                for pick in 0..4 {
                    let form = untidy(set, label, pick);
                    assert_eq!(
                        label_of(set, &form).as_ref(),
                        Ok(label),
                        "{form:?} in {set:?}"
                    );
                    forms.insert(form);
                }
                assert!(forms.len() >= 2, "{label}: {forms:?}");
            }
        }
        assert_eq!(untidy(&labels(&["bug"]), "bug", 0), "BUG");
        assert_eq!(untidy(&labels(&["bug"]), "bug", 1), "Bug");
        assert_eq!(untidy(&labels(&["bug"]), "bug", 2), "bug.");
        assert_eq!(untidy(&labels(&["bug"]), "bug", 3), "Label: bug");
    }

    #[test]
    fn an_answer_that_is_no_label_is_none_the_parser_takes() {
        assert_eq!(no_label(&labels(&["a", "b"])).as_deref(), Some("unsure"));
        let set = labels(&["unsure", "unclear"]);
        let none = no_label(&set).unwrap();
        assert!(label_of(&set, &none).is_err(), "{none}");
    }

    #[test]
    fn json_requests_keep_their_shape_whatever_the_job_parses() {
        let plain = Plain::Labels(labels(&["billing", "bug"]));
        let body = request(json!({"response_format": {"type": "json_object"}}));
        assert_eq!(super::complete(&body, &plain), complete(&body));
        let body = rubric_body(json!({}));
        assert_eq!(super::complete(&body, &plain), complete(&body));
        let pattern = AnswerShape::Pattern {
            pattern: "^(A|B)$".into(),
            labels: vec![],
        };
        assert_eq!(super::complete(&body, &pattern.plain()), complete(&body));
    }

    fn pattern(p: &str, names: &[&str]) -> AnswerShape {
        AnswerShape::Pattern {
            pattern: p.into(),
            labels: labels(names),
        }
    }

    #[test]
    fn a_pattern_is_answered_with_text_it_matches() {
        let cases: &[(&str, &[&str], &str)] = &[
            (r"(\d+)", &[], "7"),
            (r"Score: (\d+)", &[], "Score: 7"),
            (r"^(A|B|C|D)$", &[], "B"),
            (r"(pass|fail)", &[], "pass"),
            (r"^(yes|no)$", &[], "yes"),
            (r"^(PASS|FAIL)$", &[], "PASS"),
            (r"(?i)^verdict: (true|false)$", &[], ""),
            (r"(True|False)", &[], "True"),
            (r"(\d+)/10", &[], "7/10"),
            (r"\[\[(\d+)\]\]", &[], "[[7]]"),
            (r#""grade":\s*(\d+)"#, &[], "{\"grade\": 7}"),
            // From the grade's own place on: grade 7 of 3 labels is the second.
            (
                r"^(billing|bug|feature)$",
                &["billing", "bug", "feature"],
                "bug",
            ),
        ];
        for (p, names, at_seven) in cases {
            let shape = pattern(p, names);
            let re = compile_pattern(p).unwrap();
            let Plain::ByGrade(answers) = shape.plain() else {
                assert!(at_seven.is_empty(), "{p}: no answers");
                assert!(shape.note().is_some(), "{p}");
                continue;
            };
            assert!(shape.note().is_none(), "{p}");
            assert_eq!(answers.len(), GRADES as usize);
            assert_eq!(answers[7], *at_seven, "{p}");
            for a in &answers {
                assert!(capture(&re, a).is_some(), "{p} does not match {a:?}");
            }
        }
    }

    #[test]
    fn a_grade_the_pattern_refuses_takes_the_nearest_it_allows() {
        let Plain::ByGrade(answers) = pattern(r"^[3-5]$", &[]).plain() else {
            panic!("no answers");
        };
        assert_eq!(
            answers,
            ["3", "3", "3", "3", "4", "5", "5", "5", "5", "5", "5"]
        );
        // Letters: grades 0 to 2 are E, which `^(A|B|C|D)$` refuses.
        let Plain::ByGrade(letters) = pattern(r"^(A|B|C|D)$", &[]).plain() else {
            panic!("no answers");
        };
        assert_eq!(letters[..4], ["D", "D", "D", "D"]);
        assert_eq!(letters[10], "A");
    }

    #[test]
    fn a_pattern_nothing_matches_answers_grades_and_says_so() {
        for p in ["^zzz$", r"^\d{5}$", "("] {
            let shape = pattern(p, &[]);
            assert_eq!(shape.plain(), Plain::Grade, "{p}");
            let note = shape.note().unwrap();
            assert!(
                note.contains("cannot write answers your output.pattern matches"),
                "{note}"
            );
            assert!(note.contains("will fail to parse"), "{note}");
        }
        // The labels are tried too.
        assert!(pattern("^zzz$", &["zzz"]).note().is_none());
        assert!(AnswerShape::Free.note().is_none());
        assert!(AnswerShape::Labels(labels(&["a"])).note().is_none());
    }

    #[test]
    fn pattern_answers_follow_the_grade() {
        let plain = pattern(r"^Score: (\d+)$", &[]).plain();
        for i in 0..50 {
            let body = request(json!({"user": i}));
            let grade = complete(&body).content;
            let c = super::complete(&body, &plain);
            assert_eq!(c.content, format!("Score: {grade}"));
            assert_eq!(c.completion_tokens, estimate_tokens(&c.content));
        }
    }

    #[test]
    fn the_shape_is_kept_in_json() {
        for shape in [
            AnswerShape::Free,
            AnswerShape::Labels(labels(&["a", "b"])),
            pattern(r"(\d+)", &["a"]),
        ] {
            let text = serde_json::to_string(&shape).unwrap();
            assert_eq!(serde_json::from_str::<AnswerShape>(&text).unwrap(), shape);
        }
    }
}
