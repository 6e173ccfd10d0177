//! Request bodies and batch lines, in the job's wire encoding.
//!
//! Bodies are built as text from a pre-rendered prefix and suffix around the
//! one part that changes per row, the user message. That keeps every body
//! byte-for-byte deterministic (the fingerprint depends on it) and cheap.
//! The answer schema rides in each body in the encoding its wire documents
//! ([`request_params`]); the spec's checks (`spec::structured`) say what each
//! wire refuses.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::spec::structured::ANTHROPIC_DROPPED;
use crate::spec::{CacheSetting, CheckedSpec, Wire};

/// Builds Chat Completions bodies: `model`, `messages`, then the spec's
/// `request` parameters in the order written.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    prefix: String,
    suffix: String,
    /// The caching fields (`,"prompt_cache_key":...` or
    /// `,"cache_control":...`), written last in every body, before its
    /// closing brace; empty when caching is not asked for. Left out of the
    /// fingerprint: they do not change what the model answers, so turning
    /// caching on never sends an answered row again.
    cache_tail: String,
    /// SHA-256 fed `prefix`: every body starts with it, and it holds the
    /// system message, which may be a long rubric with examples that would
    /// otherwise be hashed again for every row.
    prefix_hash: Sha256,
}

/// The endpoint every request line targets (a macro, for `concat!`).
macro_rules! chat_url {
    () => {
        "/v1/chat/completions"
    };
}
pub const CHAT_URL: &str = chat_url!();

impl RequestBuilder {
    pub fn new(model: &str, system: Option<&str>, params: &Map<String, Value>) -> Self {
        let mut prefix = String::from("{\"model\":");
        prefix.push_str(&json_str(model));
        prefix.push_str(",\"messages\":[");
        if let Some(s) = system {
            prefix.push_str("{\"role\":\"system\",\"content\":");
            prefix.push_str(&json_str(s));
            prefix.push_str("},");
        }
        prefix.push_str("{\"role\":\"user\",\"content\":");
        let mut suffix = String::from("}]");
        for (k, v) in params {
            suffix.push(',');
            suffix.push_str(&json_str(k));
            suffix.push(':');
            suffix.push_str(&v.to_string());
        }
        suffix.push('}');
        let prefix_hash = Sha256::new_with_prefix(prefix.as_bytes());
        RequestBuilder {
            prefix,
            suffix,
            cache_tail: String::new(),
            prefix_hash,
        }
    }

    /// The same builder with the caching fields of [`cache_tail`] in every
    /// body it writes (its fingerprints are unchanged).
    pub fn with_cache(mut self, tail: String) -> Self {
        self.cache_tail = tail;
        self
    }

    /// `crate::plan::fingerprint(body)` of the body without its caching
    /// fields, without hashing the part every body of this builder starts
    /// with again.
    pub fn fingerprint(&self, body: &str) -> String {
        let (head, close) = match body
            .strip_suffix('}')
            .and_then(|b| b.strip_suffix(self.cache_tail.as_str()))
        {
            Some(head) if !self.cache_tail.is_empty() => (head, "}"),
            _ => (body, ""),
        };
        let digest = match head.strip_prefix(self.prefix.as_str()) {
            Some(rest) => self
                .prefix_hash
                .clone()
                .chain_update(rest)
                .chain_update(close)
                .finalize(),
            None => Sha256::new()
                .chain_update(head)
                .chain_update(close)
                .finalize(),
        };
        crate::hex::lower(&digest[..16])
    }

    /// The JSON body for one user message.
    pub fn body(&self, user: &str) -> String {
        let mut out = Vec::with_capacity(self.prefix.len() + user.len() + self.suffix.len() + 16);
        self.write_body(&mut out, user);
        String::from_utf8(out).expect("JSON made of strings is UTF-8")
    }

    /// `batch_line(custom_id, &self.body(user))` in one buffer, and where
    /// in it the body is. `plan` makes one per row: built in pieces, the
    /// escaped text, the body and the line were each a copy of the row's
    /// text, and larger than the allocator's per-thread cache serves.
    pub fn line(&self, custom_id: &str, user: &str) -> (String, std::ops::Range<usize>) {
        let mut out = Vec::with_capacity(
            LINE_HEAD.len()
                + custom_id.len()
                + LINE_MIDDLE.len()
                + self.prefix.len()
                + user.len()
                + user.len() / 8
                + self.suffix.len()
                + self.cache_tail.len()
                + 8,
        );
        out.extend_from_slice(LINE_HEAD.as_bytes());
        write_json_str(&mut out, custom_id);
        out.extend_from_slice(LINE_MIDDLE.as_bytes());
        let start = out.len();
        self.write_body(&mut out, user);
        let end = out.len();
        out.push(b'}');
        let line = String::from_utf8(out).expect("JSON made of strings is UTF-8");
        (line, start..end)
    }

    fn write_body(&self, out: &mut Vec<u8>, user: &str) {
        out.extend_from_slice(self.prefix.as_bytes());
        write_json_str(out, user);
        // `suffix` ends with the body's closing brace; the caching fields go
        // just before it (nothing at all when there are none).
        let open = &self.suffix[..self.suffix.len() - 1];
        out.extend_from_slice(open.as_bytes());
        out.extend_from_slice(self.cache_tail.as_bytes());
        out.push(b'}');
    }
}

/// The shortest prefix a provider caches, in tokens. OpenAI caches prompts
/// of 1,024 tokens or more (prompt caching guide); Anthropic's minimum
/// cacheable prompt is 1,024 tokens for most models and 2,048 for its
/// Haiku models (prompt caching guide, "Cache limitations"). A shorter
/// prefix marked for caching is simply not cached, at no charge.
pub fn min_cacheable_prefix(wire: Wire, model: &str) -> u64 {
    match wire {
        Wire::AnthropicMessages if model.contains("haiku") => 2048,
        _ => 1024,
    }
}

/// Whether a job's requests ask for prompt caching: `prompt.cache`, and
/// under `auto` whether the shared prefix (system prompt and examples,
/// `prefix_tokens`) is long enough to be cached at all.
pub fn cache_wanted(setting: CacheSetting, prefix_tokens: u64, min_prefix: u64) -> bool {
    match setting {
        CacheSetting::Fixed(on) => on,
        CacheSetting::Word(_) => prefix_tokens >= min_prefix,
    }
}

/// Anthropic's cache breakpoint. The 1-hour TTL is what its batch
/// processing guide recommends for a prefix shared across a batch, since
/// a batch may take longer than the default 5 minutes to reach every
/// request.
pub const ANTHROPIC_CACHE_CONTROL: &str = r#"{"type":"ephemeral","ttl":"1h"}"#;

/// The caching fields of `spec`'s request lines when [`cache_wanted`],
/// else nothing. OpenAI caches a long prefix on its own; a
/// `prompt_cache_key` (at most 64 characters, OpenAPI spec
/// `ModelResponseProperties`) keeps the requests of one job on one cache.
/// It is derived from the job's name, model and system prompt only, so it
/// is the same in every plan and names nothing of the user's. On the
/// Messages wire the line carries Anthropic's `cache_control`, which the
/// encoder (`provider::anthropic::encode::params`) puts on the system
/// block: the rubric and examples are cached, each row's message is not.
pub fn cache_tail(spec: &CheckedSpec, system: Option<&str>, prefix_tokens: u64) -> String {
    let Some(system) = system else {
        return String::new();
    };
    let min = min_cacheable_prefix(spec.wire, spec.model());
    if !cache_wanted(spec.prompt().cache, prefix_tokens, min) {
        return String::new();
    }
    match spec.wire {
        Wire::OpenAiChat => {
            let digest = Sha256::new()
                .chain_update(spec.name().as_bytes())
                .chain_update([0])
                .chain_update(spec.model().as_bytes())
                .chain_update([0])
                .chain_update(system.as_bytes())
                .finalize();
            format!(
                ",\"prompt_cache_key\":\"batchgrader-{}\"",
                crate::hex::lower(&digest[..12])
            )
        }
        Wire::AnthropicMessages => format!(",\"cache_control\":{ANTHROPIC_CACHE_CONTROL}"),
    }
}

/// A batch line is `LINE_HEAD` custom_id `LINE_MIDDLE` body `}`.
const LINE_HEAD: &str = "{\"custom_id\":";
const LINE_MIDDLE: &str = concat!(
    ",\"method\":\"POST\",\"url\":\"",
    chat_url!(),
    "\",\"body\":"
);

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string always serializes");
}

/// One line of a batch input file, without the trailing newline.
pub fn batch_line(custom_id: &str, body: &str) -> String {
    let mut out =
        Vec::with_capacity(LINE_HEAD.len() + custom_id.len() + LINE_MIDDLE.len() + body.len() + 8);
    out.extend_from_slice(LINE_HEAD.as_bytes());
    write_json_str(&mut out, custom_id);
    out.extend_from_slice(LINE_MIDDLE.as_bytes());
    out.extend_from_slice(body.as_bytes());
    out.push(b'}');
    String::from_utf8(out).expect("JSON made of strings is UTF-8")
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// The request parameters that carry `schema` to `wire`'s structured-output
/// mode, merged into every request body. `name` is the output field.
///
/// - OpenAI and OpenAI-compatible servers (Azure, LiteLLM, and vLLM or
///   SGLang guided decoding in direct mode): Chat Completions
///   `response_format: {type: json_schema, json_schema: {name, strict: true, schema}}`
///   (OpenAPI `ResponseFormatJsonSchema`; `name` matches `^[a-zA-Z0-9_-]{1,64}$`).
/// - Anthropic Messages: `output_config: {format: {type: json_schema, schema}}`,
///   with the constraints its grammar does not take (`ANTHROPIC_DROPPED`)
///   moved into each node's description; answers are still checked
///   against all of them.
pub fn request_params(wire: Wire, name: &str, schema: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    match wire {
        Wire::OpenAiChat => {
            out.insert(
                "response_format".into(),
                json!({
                    "type": "json_schema",
                    "json_schema": {
                        "name": format_name(name),
                        "strict": true,
                        "schema": schema,
                    }
                }),
            );
        }
        Wire::AnthropicMessages => {
            out.insert(
                "output_config".into(),
                json!({"format": {"type": "json_schema", "schema": without(schema, ANTHROPIC_DROPPED)}}),
            );
        }
    }
    out
}

/// The parameters merged into every request body: the spec's `request`
/// block, then the answer schema in the provider's encoding.
pub fn body_params(spec: &CheckedSpec) -> Map<String, Value> {
    let mut params = spec.request().clone();
    if let Some(schema) = &spec.schema {
        params.extend(request_params(spec.wire, &spec.output().field, schema));
    }
    params
}

/// `name` as OpenAI accepts a response format's name.
fn format_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() { "answer".into() } else { s }
}

/// `schema` with `keys` taken out wherever they are keywords (not inside
/// `properties`, where they would be property names), and written into
/// the node's `description` instead, as a JSON object after a blank line,
/// so the model still reads them. Anthropic's SDKs do the same with the
/// constraints its grammar does not compile ("How SDK transformation
/// works" in the structured outputs guide); the answer is then checked
/// against the full schema.
fn without(schema: &Value, keys: &[&str]) -> Value {
    fn walk(v: &Value, keys: &[&str], in_props: bool) -> Value {
        match v {
            Value::Object(m) => {
                let mut moved = Map::new();
                let mut out: Map<String, Value> = Map::new();
                for (k, sub) in m {
                    if !in_props && keys.contains(&k.as_str()) {
                        moved.insert(k.clone(), sub.clone());
                        continue;
                    }
                    let props =
                        !in_props && matches!(k.as_str(), "properties" | "$defs" | "definitions");
                    out.insert(k.clone(), walk(sub, keys, props));
                }
                if !moved.is_empty() {
                    let said = Value::Object(moved).to_string();
                    let description = match out.get("description").and_then(Value::as_str) {
                        Some(d) => format!("{d}\n\n{said}"),
                        None => said,
                    };
                    out.insert("description".into(), Value::String(description));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, keys, false)).collect()),
            other => other.clone(),
        }
    }
    walk(schema, keys, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::structured::REQUEST_KEYS;
    use crate::spec::structured::fixtures::rubric;

    #[test]
    fn a_line_built_at_once_is_the_line_built_in_pieces() {
        let mut params = Map::new();
        params.insert("max_tokens".into(), Value::from(4));
        let builders = [
            RequestBuilder::new("gpt-4o-mini", None, &Map::new()),
            RequestBuilder::new("m", Some("Be \"strict\".\n"), &params),
        ];
        let users = [
            "",
            "plain",
            "quotes \" and \\ back\tslash\r\n",
            "\u{0}\u{1f}\u{7f} controls",
            "Größe 東京 😀 \u{2028}",
            &"x\"".repeat(5000),
        ];
        for b in &builders {
            for (i, user) in users.iter().enumerate() {
                let id = format!("r{i}\"");
                let (line, body) = b.line(&id, user);
                assert_eq!(line[body.clone()], b.body(user), "{user:?}");
                assert_eq!(
                    b.fingerprint(&line[body.clone()]),
                    crate::plan::fingerprint(&b.body(user))
                );
                assert_eq!(line, batch_line(&id, &b.body(user)), "{user:?}");
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["custom_id"], id.as_str());
                assert_eq!(v["url"], CHAT_URL);
                assert_eq!(
                    v["body"]["messages"].as_array().unwrap().last().unwrap()["content"],
                    *user
                );
            }
        }
    }

    #[test]
    fn fingerprints_with_the_hashed_prefix_are_plain_fingerprints() {
        let long_rubric = "Score 1 to 5. Examples: ".repeat(200);
        for system in [None, Some("short"), Some(long_rubric.as_str())] {
            let b = RequestBuilder::new("gpt-4o-mini", system, &Map::new());
            let bodies = [
                b.body(""),
                b.body("an essay"),
                // Not one of this builder's bodies: hashed in full.
                "{}".to_string(),
                String::new(),
                b.body("x")[..10].to_string(),
            ];
            for body in &bodies {
                assert_eq!(
                    b.fingerprint(body),
                    crate::plan::fingerprint(body),
                    "{body:?}"
                );
            }
        }
    }

    #[test]
    fn caching_fields_change_the_line_and_never_the_fingerprint() {
        let params: Map<String, Value> =
            serde_json::from_value(json!({"max_tokens": 4, "temperature": 0})).unwrap();
        let plain = RequestBuilder::new("m", Some("a long rubric"), &params);
        let tails = [
            r#","prompt_cache_key":"batchgrader-0123456789abcdef01234567""#.to_string(),
            format!(r#","cache_control":{ANTHROPIC_CACHE_CONTROL}"#),
        ];
        for tail in tails {
            let cached = plain.clone().with_cache(tail.clone());
            for user in ["row 1", "", "a \"quoted\" }"] {
                let (line, range) = cached.line("r1", user);
                let body = &line[range];
                // The fields are the body's last key, the rest byte for byte.
                let v: Value = serde_json::from_str(body).unwrap();
                let key = tail[2..].split('"').next().unwrap();
                assert_eq!(v.as_object().unwrap().keys().next_back().unwrap(), key);
                assert_eq!(body.replace(&tail, ""), plain.body(user));
                assert_eq!(body, cached.body(user));
                // One identity with or without caching, from either builder.
                let want = crate::plan::fingerprint(&plain.body(user));
                assert_eq!(cached.fingerprint(body), want, "{body}");
                assert_eq!(plain.fingerprint(&plain.body(user)), want);
            }
        }
        // No caching: the very bytes of before.
        let none = plain.clone().with_cache(String::new());
        assert_eq!(none.line("r1", "x"), plain.line("r1", "x"));
    }

    #[test]
    fn when_a_job_asks_for_caching() {
        let auto = CacheSetting::default();
        // (setting, prefix tokens, provider minimum, asked)
        let cases = [
            (auto, 2000, 1024, true),
            (auto, 1024, 1024, true),
            (auto, 1023, 1024, false),
            (auto, 1500, 2048, false),
            (auto, 0, 1024, false),
            (CacheSetting::Fixed(true), 10, 1024, true),
            (CacheSetting::Fixed(false), 5000, 1024, false),
        ];
        for (setting, prefix, min, want) in cases {
            assert_eq!(
                cache_wanted(setting, prefix, min),
                want,
                "{setting:?} {prefix} {min}"
            );
        }
        let cases = [
            (Wire::OpenAiChat, "gpt-4o-mini", 1024),
            (Wire::AnthropicMessages, "claude-sonnet-4-5", 1024),
            (Wire::AnthropicMessages, "claude-3-5-haiku", 2048),
        ];
        for (wire, model, want) in cases {
            assert_eq!(min_cacheable_prefix(wire, model), want, "{model}");
        }
    }

    #[test]
    fn body_is_valid_json_in_order() {
        let mut params = Map::new();
        params.insert("temperature".into(), Value::from(0));
        params.insert("max_tokens".into(), Value::from(16));
        let b = RequestBuilder::new("gpt-4o-mini", Some("Be \"strict\"."), &params);
        let body = b.body("line1\nline2 é");
        let v: Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["model", "messages", "temperature", "max_tokens"]);
        assert_eq!(v["messages"][0]["content"], "Be \"strict\".");
        assert_eq!(v["messages"][1]["content"], "line1\nline2 é");
        let line = batch_line("r1", &body);
        let l: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(l["custom_id"], "r1");
        assert_eq!(l["url"], CHAT_URL);
        assert_eq!(l["body"], v);
    }

    #[test]
    fn body_without_system() {
        let b = RequestBuilder::new("m", None, &Map::new());
        let v: Value = serde_json::from_str(&b.body("u")).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
        assert_eq!(v["messages"][0]["role"], "user");
    }

    #[test]
    fn each_provider_gets_its_own_encoding() {
        let openai = request_params(Wire::OpenAiChat, "grade.v1", &rubric());
        assert_eq!(openai["response_format"]["type"], "json_schema");
        assert_eq!(openai["response_format"]["json_schema"]["name"], "grade_v1");
        assert_eq!(openai["response_format"]["json_schema"]["strict"], true);
        assert_eq!(openai["response_format"]["json_schema"]["schema"], rubric());
        let anthropic = request_params(Wire::AnthropicMessages, "grade", &rubric());
        let sent = &anthropic["output_config"]["format"];
        assert_eq!(sent["type"], "json_schema");
        // The bounds leave the grammar for the description (the model
        // still reads them) and stay in the local check.
        assert_eq!(
            sent["schema"]["properties"]["accuracy"],
            json!({"type": "integer", "description": "{\"minimum\":0,\"maximum\":5}"})
        );
        assert_eq!(
            sent["schema"]["properties"]["verdict"],
            rubric()["properties"]["verdict"]
        );
        for k in openai.keys().chain(anthropic.keys()) {
            assert!(REQUEST_KEYS.contains(&k.as_str()));
        }
    }

    #[test]
    fn a_property_named_like_a_keyword_is_kept() {
        let schema = json!({"type": "object", "properties": {"maximum": {"type": "integer", "maximum": 3,
            "description": "How high."}}, "required": ["maximum"], "additionalProperties": false});
        let sent = request_params(Wire::AnthropicMessages, "g", &schema);
        assert_eq!(
            sent["output_config"]["format"]["schema"]["properties"],
            json!({"maximum": {"type": "integer", "description": "How high.\n\n{\"maximum\":3}"}})
        );
    }
}
