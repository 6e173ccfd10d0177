//! Answers checked against `output.schema`: every answer parsed and checked,
//! with the first violation named, whatever the provider promised. Providers
//! enforce the schema while decoding, yet an answer cut off by `max_tokens`,
//! a refusal, or a server that ignores the request's schema can still break
//! it.

use serde_json::Value;

/// The top-level properties, in the schema's order: one output column each.
pub fn properties(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
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
        let validator = crate::spec::structured::compile(schema)
            .map_err(|e| format!("output.schema is {e}"))?;
        Ok(AnswerSchema { validator })
    }

    /// The parsed answer, or its first violation. `answer` is the text the
    /// model wrote (a Markdown code fence around it is tolerated).
    pub fn check(&self, answer: &str) -> Result<Value, Violation> {
        let body = super::strip_fences(answer.trim());
        let value: Value = serde_json::from_str(body).map_err(|e| Violation {
            class: "not JSON".into(),
            message: format!(
                "the answer is not JSON ({e}): {}",
                super::quote(answer.trim())
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
    use crate::spec::structured::fixtures::rubric;
    use serde_json::json;

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
