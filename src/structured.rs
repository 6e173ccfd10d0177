//! Structured grades: `output.schema`, a JSON Schema for the answer.
//!
//! Three pure parts, each used from one place:
//!
//! - [`strict_problems`]: what a provider's structured-output mode refuses,
//!   found at `validate` time with the place in the schema and the fix;
//! - [`request_params`]: how the schema rides in each request, keyed on the
//!   provider kind (the one place that knows each provider's encoding);
//! - [`AnswerSchema`]: every answer parsed and checked against the schema,
//!   with the first violation named, whatever the provider promised.
//!
//! Providers enforce the schema while decoding, yet an answer cut off by
//! `max_tokens`, a refusal, or a server that ignores `response_format` can
//! still break it, so answers are always validated here too.

use serde_json::{Map, Value, json};

use crate::spec::{ProviderKind, Seg};

/// A schema problem, at a path inside the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaProblem {
    pub path: Vec<Seg>,
    pub message: String,
}

/// Keywords OpenAI's strict mode accepts. Source: "Supported schemas" in
/// <https://platform.openai.com/docs/guides/structured-outputs#supported-schemas>:
/// types string, number, boolean, integer, object, array, enum, anyOf;
/// string `pattern` and `format`; number `multipleOf`, `maximum`,
/// `exclusiveMaximum`, `minimum`, `exclusiveMinimum`; array `minItems` and
/// `maxItems`; definitions through `$defs` and `$ref`. Annotations
/// (`title`, `description`) are allowed; anything else (`allOf`, `not`,
/// `if`/`then`/`else`, `minLength`, `uniqueItems`, `patternProperties`, ...)
/// is refused by the API, so it is refused here first.
const OPENAI_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "$defs",
    "definitions",
    "pattern",
    "format",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "minItems",
    "maxItems",
    "title",
    "description",
    "$schema",
    "$comment",
];

/// OpenAI's documented size limits for a strict schema (same source):
/// at most 5,000 object properties in all, 10 levels of object nesting,
/// 1,000 enum values in all.
const OPENAI_MAX_PROPERTIES: usize = 5000;
const OPENAI_MAX_DEPTH: usize = 10;
const OPENAI_MAX_ENUM_VALUES: usize = 1000;

/// Constraints Anthropic's structured outputs do not compile into their
/// grammar (the API answers 400 "property 'minimum' is not supported"; the
/// official SDKs drop them from the schema they send and check them on the
/// answer). batchgrader does the same: they are left out of the request and
/// enforced by [`AnswerSchema`].
const ANTHROPIC_DROPPED: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
];

/// Everything in `schema` that the provider's structured-output mode (or
/// batchgrader's columns) cannot take. Paths are relative to the schema.
pub fn strict_problems(kind: ProviderKind, schema: &Value) -> Vec<SchemaProblem> {
    let mut out = Vec::new();
    let at = |path: &[Seg], message: String| SchemaProblem {
        path: path.to_vec(),
        message,
    };
    if let Err(e) = jsonschema::meta::validate(schema) {
        out.push(at(
            &crate::spec::from_pointer(e.instance_path().as_str()),
            format!("not a valid JSON Schema: {e}"),
        ));
        return out;
    }
    let Some(root) = schema.as_object() else {
        out.push(at(&[], "must be a JSON Schema object".into()));
        return out;
    };
    // One column per top-level property, and providers need an object at
    // the root (OpenAI: "the root level object must be an object, and not
    // use anyOf").
    if root.get("type").and_then(Value::as_str) != Some("object") {
        out.push(at(
            &[],
            "the root must be `type: object` (one output column per property)".into(),
        ));
    }
    if root
        .get("properties")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty)
    {
        out.push(at(
            &[],
            "the root needs `properties`: each becomes the column `<field>.<property>`".into(),
        ));
    }
    if root.contains_key("anyOf") {
        out.push(at(
            &[Seg::Key("anyOf".into())],
            "`anyOf` is not allowed at the root; put it inside a property".into(),
        ));
    }
    let mut walk = Walk {
        kind,
        out: &mut out,
        properties: 0,
        enum_values: 0,
    };
    walk.node(schema, &mut Vec::new(), 0);
    let (properties, enum_values) = (walk.properties, walk.enum_values);
    if strict_openai(kind) {
        if properties > OPENAI_MAX_PROPERTIES {
            out.push(at(
                &[],
                format!(
                    "{properties} object properties in all; OpenAI's strict mode takes at most {OPENAI_MAX_PROPERTIES}"
                ),
            ));
        }
        if enum_values > OPENAI_MAX_ENUM_VALUES {
            out.push(at(
                &[],
                format!(
                    "{enum_values} enum values in all; OpenAI's strict mode takes at most {OPENAI_MAX_ENUM_VALUES}"
                ),
            ));
        }
    }
    out
}

fn strict_openai(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Openai | ProviderKind::Simulated)
}

struct Walk<'a> {
    kind: ProviderKind,
    out: &'a mut Vec<SchemaProblem>,
    properties: usize,
    enum_values: usize,
}

impl Walk<'_> {
    fn push(&mut self, path: &[Seg], message: String) {
        self.out.push(SchemaProblem {
            path: path.to_vec(),
            message,
        });
    }

    /// `depth` counts enclosing objects.
    fn node(&mut self, schema: &Value, path: &mut Vec<Seg>, depth: usize) {
        let Some(obj) = schema.as_object() else {
            return;
        };
        let openai = strict_openai(self.kind);
        if openai {
            for key in obj.keys() {
                if !OPENAI_KEYWORDS.contains(&key.as_str()) {
                    path.push(Seg::Key(key.clone()));
                    self.push(
                        path,
                        format!(
                            "`{key}` is not supported by OpenAI's strict structured outputs; \
                             remove it (say it in `description` instead)"
                        ),
                    );
                    path.pop();
                }
            }
        }
        if let Some(values) = obj.get("enum").and_then(Value::as_array) {
            self.enum_values += values.len();
        }
        let is_object = match obj.get("type") {
            Some(Value::String(t)) => t == "object",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
            _ => obj.contains_key("properties"),
        };
        let depth = depth + usize::from(is_object);
        if is_object {
            if openai && depth > OPENAI_MAX_DEPTH {
                self.push(
                    path,
                    format!(
                        "objects nest {depth} levels deep here; OpenAI's strict mode takes at most {OPENAI_MAX_DEPTH}"
                    ),
                );
            }
            if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
                let mut p = path.clone();
                let message = if obj.contains_key("additionalProperties") {
                    p.push(Seg::Key("additionalProperties".into()));
                    "must be `false`: structured outputs need every object closed".to_string()
                } else {
                    "this object needs `additionalProperties: false` (structured outputs need every object closed)"
                        .to_string()
                };
                self.push(&p, message);
            }
            let props = obj.get("properties").and_then(Value::as_object);
            if let Some(props) = props {
                self.properties += props.len();
            }
            if openai {
                let required: Vec<&str> = obj
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let missing: Vec<&str> = props
                    .map(|p| {
                        p.keys()
                            .map(String::as_str)
                            .filter(|k| !required.contains(k))
                            .collect()
                    })
                    .unwrap_or_default();
                if !missing.is_empty() {
                    let mut p = path.clone();
                    if obj.contains_key("required") {
                        p.push(Seg::Key("required".into()));
                    }
                    self.push(
                        &p,
                        format!(
                            "OpenAI's strict mode needs every property in `required`; missing: {} \
                             (to let the model leave one empty, keep it required and allow null: \
                             `type: [string, \"null\"]`)",
                            missing.join(", ")
                        ),
                    );
                }
            }
        }
        for key in ["properties", "$defs", "definitions"] {
            if let Some(map) = obj.get(key).and_then(Value::as_object) {
                path.push(Seg::Key(key.into()));
                for (name, sub) in map {
                    path.push(Seg::Key(name.clone()));
                    self.node(sub, path, depth);
                    path.pop();
                }
                path.pop();
            }
        }
        if let Some(items) = obj.get("items") {
            path.push(Seg::Key("items".into()));
            self.node(items, path, depth);
            path.pop();
        }
        if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
            path.push(Seg::Key("anyOf".into()));
            for (i, sub) in any.iter().enumerate() {
                path.push(Seg::Index(i));
                self.node(sub, path, depth);
                path.pop();
            }
            path.pop();
        }
    }
}

/// The top-level properties, in the schema's order: one output column each.
pub fn properties(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The request parameters that carry `schema` to `kind`'s structured-output
/// mode, merged into every request body. `name` is the output field.
///
/// - OpenAI and OpenAI-compatible servers (Azure, LiteLLM, and vLLM or
///   SGLang guided decoding in direct mode): Chat Completions
///   `response_format: {type: json_schema, json_schema: {name, strict: true, schema}}`
///   (OpenAPI `ResponseFormatJsonSchema`; `name` matches `^[a-zA-Z0-9_-]{1,64}$`).
/// - Anthropic Messages: `output_config: {format: {type: json_schema, schema}}`,
///   with the constraints its grammar does not take left out (see
///   `ANTHROPIC_DROPPED`); answers are still checked against all of them.
pub fn request_params(kind: ProviderKind, name: &str, schema: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    match kind {
        ProviderKind::Openai | ProviderKind::Simulated => {
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
        ProviderKind::Anthropic => {
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
pub fn body_params(spec: &crate::spec::CheckedSpec) -> Map<String, Value> {
    let mut params = spec.spec.request.clone();
    if let Some(schema) = &spec.schema {
        params.extend(request_params(
            spec.spec.provider.kind,
            &spec.spec.output.field,
            schema,
        ));
    }
    params
}

/// The request parameter names [`request_params`] may set, which the spec's
/// `request` block must then leave alone.
pub const REQUEST_KEYS: &[&str] = &["response_format", "output_config"];

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

/// `schema` with `keys` removed wherever they are keywords (not inside
/// `properties`, where they would be property names).
fn without(schema: &Value, keys: &[&str]) -> Value {
    fn walk(v: &Value, keys: &[&str], in_props: bool) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| in_props || !keys.contains(&k.as_str()))
                    .map(|(k, sub)| {
                        let props = !in_props
                            && matches!(k.as_str(), "properties" | "$defs" | "definitions");
                        (k.clone(), walk(sub, keys, props))
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, keys, false)).collect()),
            other => other.clone(),
        }
    }
    walk(schema, keys, false)
}

/// Why an answer is a parse failure: a short class for counting and the
/// first violation in full.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// `not JSON`, or the keyword broken and where: `maximum at /accuracy`.
    pub class: String,
    pub message: String,
}

/// A compiled answer schema.
#[derive(Debug)]
pub struct AnswerSchema {
    validator: jsonschema::Validator,
}

impl AnswerSchema {
    pub fn new(schema: &Value) -> Result<AnswerSchema, String> {
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| format!("output.schema is not a valid JSON Schema: {e}"))?;
        Ok(AnswerSchema { validator })
    }

    /// The parsed answer, or its first violation. `answer` is the text the
    /// model wrote (a Markdown code fence around it is tolerated).
    pub fn check(&self, answer: &str) -> Result<Value, Violation> {
        let body = crate::apply::answer::strip_fences(answer.trim());
        let value: Value = serde_json::from_str(body).map_err(|e| Violation {
            class: "not JSON".into(),
            message: format!(
                "the answer is not JSON ({e}): {}",
                crate::apply::answer::quote(answer.trim())
            ),
        })?;
        if let Err(e) = self.validator.validate(&value) {
            let at = match e.instance_path().as_str() {
                "" => "(root)".to_string(),
                p => p.to_string(),
            };
            let class = match e.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    format!(
                        "required {} missing at {at}",
                        property.as_str().unwrap_or("?")
                    )
                }
                kind => format!("{} at {at}", kind.keyword()),
            };
            return Err(Violation {
                class,
                message: format!("the answer breaks output.schema at {at}: {e}"),
            });
        }
        Ok(value)
    }
}

/// A property's value as one CSV cell: strings as they are, numbers and
/// booleans as JSON writes them, null as empty, arrays and objects as
/// compact JSON.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::dotted;

    fn rubric() -> Value {
        json!({
            "type": "object",
            "properties": {
                "accuracy": {"type": "integer", "minimum": 0, "maximum": 5},
                "verdict": {"type": "string", "enum": ["pass", "fail"]},
                "reason": {"type": "string"}
            },
            "required": ["accuracy", "verdict", "reason"],
            "additionalProperties": false
        })
    }

    fn found(kind: ProviderKind, schema: &Value) -> Vec<(String, String)> {
        strict_problems(kind, schema)
            .into_iter()
            .map(|p| (dotted(&p.path), p.message))
            .collect()
    }

    #[test]
    fn a_strict_rubric_passes() {
        assert_eq!(found(ProviderKind::Openai, &rubric()), vec![]);
        assert_eq!(found(ProviderKind::Anthropic, &rubric()), vec![]);
    }

    #[test]
    fn what_strict_mode_refuses_is_named_at_its_place() {
        let mut missing_required = rubric();
        missing_required["required"] = json!(["accuracy"]);
        let mut open = rubric();
        open.as_object_mut().unwrap().remove("additionalProperties");
        let mut open_nested = rubric();
        open_nested["properties"]["detail"] =
            json!({"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]});
        open_nested["required"] = json!(["accuracy", "verdict", "reason", "detail"]);
        let mut min_length = rubric();
        min_length["properties"]["reason"]["minLength"] = json!(3);
        let mut all_of = rubric();
        all_of["properties"]["verdict"] = json!({"allOf": [{"type": "string"}]});
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            (
                "required",
                missing_required,
                "required",
                "missing: verdict, reason",
            ),
            ("closed", open, "(root)", "additionalProperties: false"),
            (
                "nested closed",
                open_nested,
                "properties.detail",
                "additionalProperties: false",
            ),
            (
                "minLength",
                min_length,
                "properties.reason.minLength",
                "not supported",
            ),
            ("allOf", all_of, "properties.verdict.allOf", "not supported"),
            (
                "array root",
                json!({"type": "array", "items": {"type": "string"}}),
                "(root)",
                "type: object",
            ),
            (
                "empty",
                json!({"type": "object", "additionalProperties": false}),
                "(root)",
                "needs `properties`",
            ),
            (
                "not a schema",
                json!({"type": 7}),
                "type",
                "not a valid JSON Schema",
            ),
        ];
        for (name, schema, field, needle) in cases {
            let got = found(ProviderKind::Openai, &schema);
            assert!(
                got.iter().any(|(f, m)| f == field && m.contains(needle)),
                "{name}: {got:#?}"
            );
        }
    }

    #[test]
    fn size_limits_of_strict_mode() {
        let mut deep = json!({"type": "object", "properties": {"v": {"type": "string"}},
            "required": ["v"], "additionalProperties": false});
        for _ in 0..10 {
            deep = json!({"type": "object", "properties": {"n": deep},
                "required": ["n"], "additionalProperties": false});
        }
        let got = found(ProviderKind::Openai, &deep);
        assert!(got.iter().any(|(_, m)| m.contains("11 levels")), "{got:#?}");
        let values: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
        let wide = json!({"type": "object", "properties": {"e": {"enum": values}},
            "required": ["e"], "additionalProperties": false});
        let got = found(ProviderKind::Openai, &wide);
        assert!(
            got.iter().any(|(_, m)| m.contains("1001 enum values")),
            "{got:#?}"
        );
    }

    #[test]
    fn anthropic_takes_optional_properties_and_bounds() {
        let mut optional = rubric();
        optional["required"] = json!(["accuracy"]);
        optional["properties"]["reason"]["minLength"] = json!(3);
        assert_eq!(found(ProviderKind::Anthropic, &optional), vec![]);
        let mut open = rubric();
        open["additionalProperties"] = json!(true);
        let got = found(ProviderKind::Anthropic, &open);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0].0, "additionalProperties");
    }

    #[test]
    fn each_provider_gets_its_own_encoding() {
        let openai = request_params(ProviderKind::Openai, "grade.v1", &rubric());
        assert_eq!(openai["response_format"]["type"], "json_schema");
        assert_eq!(openai["response_format"]["json_schema"]["name"], "grade_v1");
        assert_eq!(openai["response_format"]["json_schema"]["strict"], true);
        assert_eq!(openai["response_format"]["json_schema"]["schema"], rubric());
        let anthropic = request_params(ProviderKind::Anthropic, "grade", &rubric());
        let sent = &anthropic["output_config"]["format"];
        assert_eq!(sent["type"], "json_schema");
        // The bounds stay out of the request and in the local check.
        assert_eq!(
            sent["schema"]["properties"]["accuracy"],
            json!({"type": "integer"})
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
        let schema = json!({"type": "object", "properties": {"maximum": {"type": "integer", "maximum": 3}},
            "required": ["maximum"], "additionalProperties": false});
        let sent = request_params(ProviderKind::Anthropic, "g", &schema);
        assert_eq!(
            sent["output_config"]["format"]["schema"]["properties"],
            json!({"maximum": {"type": "integer"}})
        );
    }

    #[test]
    fn answers_are_checked_and_the_first_violation_named() {
        let s = AnswerSchema::new(&rubric()).unwrap();
        let ok = s
            .check("```json\n{\"accuracy\": 4, \"verdict\": \"pass\", \"reason\": \"right\"}\n```")
            .unwrap();
        assert_eq!(ok["accuracy"], 4);
        let cases = [
            ("grade 4", "not JSON", "not JSON"),
            (
                r#"{"accuracy": 9, "verdict": "pass", "reason": "x"}"#,
                "maximum at /accuracy",
                "9 is greater than the maximum of 5",
            ),
            (
                r#"{"accuracy": 3, "verdict": "pass"}"#,
                "required reason missing at (root)",
                "\"reason\" is a required property",
            ),
            (
                r#"{"accuracy": 3, "verdict": "maybe", "reason": "x"}"#,
                "enum at /verdict",
                "/verdict",
            ),
        ];
        for (answer, class, needle) in cases {
            let v = s.check(answer).unwrap_err();
            assert_eq!(v.class, class, "{answer}");
            assert!(v.message.contains(needle), "{answer}: {}", v.message);
        }
    }

    #[test]
    fn cells() {
        let v = json!({"s": "a,b", "n": 4.5, "b": true, "z": null, "o": {"k": [1, 2]}});
        let got: Vec<String> = ["s", "n", "b", "z", "o", "absent"]
            .iter()
            .map(|k| cell(v.get(*k)))
            .collect();
        assert_eq!(got, ["a,b", "4.5", "true", "", "{\"k\":[1,2]}", ""]);
    }
}
