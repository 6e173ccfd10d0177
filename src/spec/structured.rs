//! `output.schema` as each wire's structured-output mode takes it: what the
//! provider refuses, found at `validate` time with the place in the schema
//! and the fix. How the schema then rides in a request is `request.rs`'s;
//! how answers are checked against it is `answer/schema.rs`'s.

use serde_json::{Map, Value};

use super::Seg;
use super::Wire;

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
pub(crate) const ANTHROPIC_DROPPED: &[&str] = &[
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
pub fn strict_problems(wire: Wire, schema: &Value) -> Vec<SchemaProblem> {
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
        wire,
        out: &mut out,
        properties: 0,
        enum_values: 0,
    };
    walk.node(schema, &mut Vec::new(), 0);
    let (properties, enum_values) = (walk.properties, walk.enum_values);
    if strict_openai(wire) {
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

fn strict_openai(wire: Wire) -> bool {
    matches!(wire, Wire::OpenAiChat)
}

struct Walk<'a> {
    wire: Wire,
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
        let openai = strict_openai(self.wire);
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

/// The request parameter names the answer schema is sent in (by
/// `request::request_params`), which the spec's `request` block must then
/// leave alone.
pub const REQUEST_KEYS: &[&str] = &["response_format", "output_config"];

/// The answer schema compiled, as every answer is checked against it: the
/// one compile that `validate` and a run share, so a schema `validate`
/// passes (a `$ref` that resolves, a `pattern` that compiles) is one the
/// run takes.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if let Some(target) = external_ref(schema) {
        return Err(format!(
            "`$ref: {target}` points outside the schema; batchgrader reads no schema from the network or another file: put the definition under `$defs` and refer to it as `#/$defs/NAME`"
        ));
    }
    jsonschema::validator_for(schema).map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// The first `$ref` that is not a pointer into the schema itself.
fn external_ref(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref")
                && !r.starts_with('#')
            {
                return Some(r);
            }
            m.values().find_map(external_ref)
        }
        Value::Array(a) => a.iter().find_map(external_ref),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use serde_json::{Value, json};

    /// A strict rubric every wire takes.
    pub(crate) fn rubric() -> Value {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::rubric;
    use super::*;
    use crate::spec::dotted;
    use serde_json::json;

    fn found(wire: Wire, schema: &Value) -> Vec<(String, String)> {
        strict_problems(wire, schema)
            .into_iter()
            .map(|p| (dotted(&p.path), p.message))
            .collect()
    }

    #[test]
    fn a_strict_rubric_passes() {
        assert_eq!(found(Wire::OpenAiChat, &rubric()), vec![]);
        assert_eq!(found(Wire::AnthropicMessages, &rubric()), vec![]);
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
            let got = found(Wire::OpenAiChat, &schema);
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
        let got = found(Wire::OpenAiChat, &deep);
        assert!(got.iter().any(|(_, m)| m.contains("11 levels")), "{got:#?}");
        let values: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
        let wide = json!({"type": "object", "properties": {"e": {"enum": values}},
            "required": ["e"], "additionalProperties": false});
        let got = found(Wire::OpenAiChat, &wide);
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
        assert_eq!(found(Wire::AnthropicMessages, &optional), vec![]);
        let mut open = rubric();
        open["additionalProperties"] = json!(true);
        let got = found(Wire::AnthropicMessages, &open);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0].0, "additionalProperties");
    }
}
