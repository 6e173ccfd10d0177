//! Every request body the plan writes validates against OpenAI's
//! `CreateChatCompletionRequest` (extracted from the published OpenAPI spec
//! into tests/fixtures/ by tests/fixtures/gen/extract_chat_schema.py).

use crate::common;

use common::{Sandbox, chunk_lines, repo, spec};
use serde_json::{Value, json};

fn validator() -> jsonschema::Validator {
    let path = repo().join("tests/fixtures/openai-create-chat-completion-request.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn assert_valid(v: &jsonschema::Validator, body: &Value) {
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path().as_str()))
        .collect();
    assert!(errors.is_empty(), "{body}\n{errors:#?}");
}

#[test]
fn the_schema_rejects_what_it_should() {
    // Without this the tests below could pass with a schema that accepts anything.
    let v = validator();
    assert!(!v.is_valid(&json!({"model": "m"})));
    assert!(!v.is_valid(&json!({"model": "m", "messages": [{"role": "bogus", "content": "x"}]})));
    assert!(!v.is_valid(&json!({"model": "m", "messages": [], "temperature": "hot"})));
    assert!(v.is_valid(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})));
}

#[test]
fn plan_bodies_validate() {
    let v = validator();
    let sb = Sandbox::new();
    sb.write("in.csv", "t\nhello\n\"multi\nline \"\"quoted\"\"\"\n");
    let extra = "request:
  temperature: 0.2
  top_p: 0.9
  max_completion_tokens: 20
  seed: 7
  stop: [\"\\n\\n\"]
  logprobs: false
  response_format:
    type: json_schema
    json_schema:
      name: grade
      strict: true
      schema:
        type: object
        properties: { grade: { type: integer } }
        required: [grade]
        additionalProperties: false
";
    let text = spec("rich", "in.csv", "Grade {{ t }}", "")
        .replace("request:\n  max_tokens: 4\n", "")
        + extra;
    sb.write("rich.yaml", text);
    let run = sb.run(&["plan", "rich.yaml"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines = chunk_lines(&sb, "rich");
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["method"], "POST");
        assert_eq!(line["url"], "/v1/chat/completions");
        assert_valid(&v, &line["body"]);
    }

    // The demo's bodies too.
    let run = sb.run(&[
        "plan",
        &repo().join("specs/demo.yaml").display().to_string(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let demo = chunk_lines(&sb, "demo-short-answers");
    assert_eq!(demo.len(), 300);
    for line in &demo {
        assert_valid(&v, &line["body"]);
    }
}
