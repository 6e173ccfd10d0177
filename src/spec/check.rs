//! Spec text → a checked spec: YAML, then the JSON Schema of the types,
//! then the rules the schema cannot say (`rules.rs`), then deserialize and
//! resolve. Every problem is reported with its place in the file.

use std::path::Path;

use serde_json::Value;

use super::locate::{self, Seg, dotted};
use super::place::problem_at;
use super::rules::{answer_schema_problems, prompt_problems, request_problems, semantic_problems};
use super::types::JobSpec;
use super::{CheckedSpec, Problem, SpecError, resolve};
use crate::suggest::closest;

/// Check spec text; `path` names the file in messages and anchors relative paths.
pub fn check(path: &Path, text: &str) -> Result<CheckedSpec, SpecError> {
    let invalid = |problems: Vec<Problem>| SpecError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
    // A BOM (Windows editors) is no part of the YAML.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some((line, message)) = super::limits::too_deep(text) {
        return Err(invalid(vec![Problem {
            line,
            column: 1,
            field: "(root)".into(),
            message,
        }]));
    }
    let yaml: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let msg = strip_yaml_location(&e.to_string());
            // The YAML parser names a repeated key (after the path of its
            // mapping, `input: duplicate entry with key "id"`) but places it
            // at the start of the document; find the repeat itself.
            const DUPLICATE: &str = "duplicate entry with key \"";
            let repeated = msg.find(DUPLICATE).and_then(|at| {
                let key = msg[at + DUPLICATE.len()..].strip_suffix('"')?;
                let parent = msg[..at].trim_end_matches([':', ' ']);
                let place = duplicate_key_place(text, key)?;
                let field = if parent.is_empty() {
                    key.to_string()
                } else {
                    format!("{parent}.{key}")
                };
                Some((place, field))
            });
            let ((line, column), field) = match repeated {
                Some((place, field)) => (place, field),
                None => (
                    e.location().map_or((1, 1), |l| (l.line(), l.column())),
                    "(root)".to_string(),
                ),
            };
            // A number past 64 bits: the parser says `as u128`; say it in
            // the spec's words, at its key.
            if let Some((field, number)) = too_large_number(&msg) {
                return Err(invalid(vec![Problem {
                    line,
                    column,
                    field,
                    message: format!("{number} is too large a number (at most {})", u64::MAX),
                }]));
            }
            return Err(invalid(vec![Problem {
                line,
                column,
                field,
                message: format!("invalid YAML: {msg}"),
            }]));
        }
    };
    if yaml.is_null() {
        return Err(invalid(vec![Problem {
            line: 1,
            column: 1,
            field: "(root)".into(),
            message: "the spec is empty; start from specs/demo.yaml".into(),
        }]));
    }
    let json: Value = match serde_json::to_value(&yaml) {
        Ok(v) => v,
        Err(e) => {
            return Err(invalid(vec![Problem {
                line: 1,
                column: 1,
                field: "(root)".into(),
                message: format!("unsupported YAML value: {e} (keys must be strings, no tags)"),
            }]));
        }
    };
    let locator = locate::Locator::new(text);
    let mut problems = schema_problems(&json, &locator);
    if problems.is_empty() {
        problems.extend(semantic_problems(&json, &locator));
    }
    let mut warnings = Vec::new();
    if problems.is_empty() {
        problems.extend(request_problems(&json, &locator));
        let (errors, warned) = super::request_keys::problems(&json, &locator);
        problems.extend(errors);
        warnings = warned;
        problems.extend(prompt_problems(path, &json, &locator));
    }
    let mut json = json;
    if problems.is_empty() {
        problems.extend(answer_schema_problems(path, &mut json, &locator));
    }
    if problems.is_empty() {
        problems.extend(super::gold::problems(&json, &locator));
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(invalid(problems));
    }
    let spec: JobSpec = serde_json::from_value(json).map_err(|e| {
        invalid(vec![Problem {
            line: 1,
            column: 1,
            field: "(root)".into(),
            message: e.to_string(),
        }])
    })?;
    let mut checked = resolve(path, spec);
    checked.warnings = warnings;
    Ok(checked)
}

/// Where `key` appears a second time in one block of the YAML `text`:
/// 1-based line and column, by indentation (block style, the way specs are
/// written; a repeat in a flow mapping is not found).
pub(super) fn duplicate_key_place(text: &str, key: &str) -> Option<(usize, usize)> {
    let forms = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    // Indents at which `key` was seen in the blocks still open.
    let mut seen: Vec<usize> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        // A line at a smaller indent closes the deeper blocks; one at the
        // same indent that is a list item starts a new block there.
        seen.retain(|&d| d < indent || (d == indent && !body.starts_with("- ")));
        let is_key = forms.iter().any(|f| {
            body.strip_prefix(f.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        });
        if is_key {
            if seen.contains(&indent) {
                return Some((i + 1, indent + 1));
            }
            seen.push(indent);
        }
    }
    None
}

fn strip_yaml_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn schema_problems(json: &Value, locator: &locate::Locator) -> Vec<Problem> {
    use jsonschema::error::ValidationErrorKind;
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(JobSpec)).expect("a schema always serializes")
    });
    let validator = VALIDATOR
        .get_or_init(|| jsonschema::validator_for(schema).expect("the derived schema is valid"));
    let mut out = Vec::new();
    for err in validator.iter_errors(json) {
        let base = locate::from_pointer(err.instance_path().as_str());
        match err.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for key in unexpected {
                    let mut path = base.clone();
                    path.push(Seg::Key(key.clone()));
                    let mut msg = format!("unknown key `{key}`");
                    // A key of the same block first (`modle` is `model`
                    // at the top, not `provider.mode`), then any key.
                    let siblings = keys_at(schema, &base);
                    let siblings: Vec<&str> = siblings.iter().map(String::as_str).collect();
                    if let Some(s) = closest(key, &siblings).or_else(|| closest(key, KNOWN_KEYS)) {
                        msg.push_str(&format!("; did you mean `{s}`?"));
                    }
                    out.push(problem_at(locator, &path, msg));
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?").to_string();
                let (line, column) = locator.locate(&base);
                let mut path = base.clone();
                path.push(Seg::Key(name.clone()));
                out.push(Problem {
                    line,
                    column,
                    field: dotted(&path),
                    message: "required field is missing".into(),
                });
            }
            _ => {
                let msg = err.to_string();
                out.push(problem_at(locator, &base, friendlier(&msg, &base)));
            }
        }
    }
    out.dedup();
    out
}

/// Every key a spec may use, for "did you mean" suggestions. The set is
/// small enough that suggesting from all of it beats walking the schema.
const KNOWN_KEYS: &[&str] = &[
    "version",
    "name",
    "provider",
    "kind",
    "mode",
    "base_url",
    "api_key_env",
    "anthropic_version",
    "simulated",
    "api",
    "validating",
    "in_progress",
    "finalizing",
    "request_failure_rate",
    "http_error_rate",
    "rate_limit_rate",
    "server_error_rate",
    "create_commit_error_rate",
    "token_limit_every",
    "expire_every",
    "request_flake_rate",
    "model",
    "input",
    "path",
    "format",
    "id",
    "delimiter",
    "prompt",
    "system",
    "system_file",
    "examples_file",
    "user",
    "request",
    "output",
    "field",
    "parse",
    "labels",
    "pattern",
    "expected_output_tokens",
    "include_usage",
    "schema",
    "schema_file",
    "chunking",
    "max_requests",
    "max_bytes",
    "max_tokens",
    "chunks",
    "concurrency",
    "max_batches_in_flight",
    "max_requests_in_flight",
    "requests_per_minute",
    "tokens_per_minute",
    "poll",
    "interval",
    "max_interval",
    "retry",
    "max_attempts",
    "give_up_after",
    "halt",
    "on_chunk_failure",
    "max_failure_rate",
    "max_cost_usd",
];

/// `node`, or what its `$ref` into the schema's `$defs` points to.
fn resolve_ref<'a>(schema: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..8 {
        match node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| schema.get("$defs")?.get(name))
        {
            Some(target) => node = target,
            None => break,
        }
    }
    node
}

/// The keys the schema allows in the object at `path`, following `$ref`s
/// into `$defs`; empty when the path leads nowhere known.
fn keys_at(schema: &Value, path: &[Seg]) -> Vec<String> {
    let mut node = resolve_ref(schema, schema);
    for seg in path {
        let next = match seg {
            Seg::Key(k) => node.get("properties").and_then(|p| p.get(k)),
            Seg::Index(_) => node.get("items"),
        };
        match next {
            Some(n) => node = resolve_ref(schema, n),
            None => return Vec::new(),
        }
    }
    node.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn friendlier(msg: &str, path: &[Seg]) -> String {
    let field = dotted(path);
    if msg.contains("is not valid under any of the schemas listed in the 'anyOf'") {
        return match field.as_str() {
            "input.path" => "expected a path or a list of paths".into(),
            f if f.ends_with("max_bytes") => {
                // The validator's message starts with the value.
                let value = msg.split(" is not valid").next().unwrap_or_default();
                match value.trim().parse::<f64>() {
                    Ok(n) if n < 1.0 => {
                        format!("{value} is not a size: a size is at least 1 byte, e.g. 190MB")
                    }
                    Ok(_) => format!(
                        "{value} is not a size: give a whole number of bytes, or text such as 190MB"
                    ),
                    Err(_) => "expected a size: bytes as an integer, or text such as 190MB".into(),
                }
            }
            f if f.ends_with("_rate") => {
                "expected a percentage such as \"5%\" or a fraction such as 0.05".into()
            }
            _ => msg.to_string(),
        };
    }
    msg.to_string()
}

/// `chunking.max_bytes: invalid type: integer `123...` as u128, ...` →
/// (`chunking.max_bytes`, `123...`).
fn too_large_number(msg: &str) -> Option<(String, String)> {
    let (path, rest) = msg.split_once(": invalid type: integer `")?;
    let (number, tail) = rest.split_once('`')?;
    if !(tail.starts_with(" as u128") || tail.starts_with(" as i128")) {
        return None;
    }
    Some((path.trim().to_string(), number.to_string()))
}
