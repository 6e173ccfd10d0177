//! The checks the JSON Schema cannot express: keys that depend on each
//! other, the provider's request rules, prompt templates, answer schemas.
//! Each asks the job's [`Wire`], decided by the one function that decides it.

use std::path::Path;

use serde_json::Value;

use super::locate;
use super::place::{json_at, key_path, problem_at};
use super::resolve::Wire;
use super::types::{Rate, Size};
use super::{Problem, SPEC_VERSION, dotted, units};

/// The `provider.simulated` keys that take a [`Rate`].
const SIMULATED_RATE_KEYS: [&str; 6] = [
    "request_failure_rate",
    "http_error_rate",
    "rate_limit_rate",
    "server_error_rate",
    "create_commit_error_rate",
    "request_flake_rate",
];

/// Checks the schema cannot express: units, exclusive fields, reserved request keys.
/// Request parameters every provider of ours knows, checked for type and
/// range before anything is sent (OpenAI's create chat completion reference:
/// temperature 0..2, top_p 0..1, n >= 1; Anthropic's Messages API takes
/// temperature 0..1 and max_tokens >= 1).
pub(super) fn request_problems(json: &Value, locator: &locate::Locator) -> Vec<Problem> {
    let mut out = Vec::new();
    let Some(req) = json.get("request").and_then(Value::as_object) else {
        return out;
    };
    let anthropic = Wire::of_json(json) == Wire::AnthropicMessages;
    let temp_max = if anthropic { 1.0 } else { 2.0 };
    for (key, v) in req {
        let msg = match key.as_str() {
            "max_tokens" | "max_completion_tokens" | "n" => match v.as_u64() {
                Some(n) if n >= 1 => None,
                _ => Some(format!(
                    "`{key}` must be a whole number of at least 1, not {v}"
                )),
            },
            "temperature" => match v.as_f64() {
                Some(t) if (0.0..=temp_max).contains(&t) => None,
                Some(_) => Some(format!(
                    "`temperature` must be between 0 and {temp_max}{}, not {v}",
                    if anthropic { " for Anthropic" } else { "" }
                )),
                None => Some(format!("`temperature` must be a number, not {v}")),
            },
            "top_p" => match v.as_f64() {
                Some(t) if (0.0..=1.0).contains(&t) => None,
                _ => Some(format!("`top_p` must be a number between 0 and 1, not {v}")),
            },
            _ => None,
        };
        if let Some(m) = msg {
            out.push(problem_at(locator, &key_path(&["request", key]), m));
        }
    }
    let max = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64);
    let expected = json
        .pointer("/output/expected_output_tokens")
        .and_then(Value::as_u64);
    if let (Some(max), Some(expected)) = (max, expected)
        && expected > max
    {
        out.push(problem_at(
            locator,
            &key_path(&["output", "expected_output_tokens"]),
            format!(
                "{expected} is above the request's max_tokens ({max}): no answer can be that long, so the estimate would be wrong; lower it"
            ),
        ));
    }
    out
}

/// The user template must parse, and the prompt files must be readable
/// (paths relative to the spec file, as `plan` reads them).
pub(super) fn prompt_problems(
    spec_path: &Path,
    json: &Value,
    locator: &locate::Locator,
) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(user) = json.pointer("/prompt/user").and_then(Value::as_str)
        && let Err(why) = crate::template::Template::parse(user)
    {
        out.push(problem_at(locator, &key_path(&["prompt", "user"]), why));
    }
    let base = spec_path.parent().unwrap_or(Path::new(""));
    for key in ["system_file", "examples_file"] {
        if let Some(rel) = json
            .get("prompt")
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
        {
            let file = base.join(rel);
            if let Err(e) = std::fs::metadata(&file).and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("it is not a file"))
                }
            }) {
                out.push(problem_at(
                    locator,
                    &key_path(&["prompt", key]),
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
    }
    out
}

/// A base URL must be an http(s) URL, and may not carry credentials: the
/// spec is saved in the state and shown in messages, so a password in it
/// would be stored and printed. The message never repeats the URL.
fn base_url_problem(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("`{url}` is not an http(s) URL: it must start with https:// or http://")
        })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("holds a user name or password (`user:pass@`); remove them: the key goes in the variable named by provider.api_key_env".into());
    }
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    // The spec is saved in the job's state, so a token in the query would
    // be stored there. Azure's `api-version` is the one value known to say
    // nothing secret (messages mask every other one, as
    // `provider::config::shown_url` does).
    let query = rest
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(q))
        .unwrap_or_default();
    if let Some(key) = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
        .find(|k| *k != "api-version")
    {
        return Err(format!(
            "carries the query parameter `{key}`, which may be a secret, and the spec is saved in the job's state; put the key in the variable named by provider.api_key_env, or give this URL in OPENAI_BASE_URL (ANTHROPIC_BASE_URL), which is read at every run and never saved"
        ));
    }
    Ok(())
}

pub(super) fn semantic_problems(json: &Value, locator: &locate::Locator) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut check = |keys: &[&str], f: &dyn Fn(&Value) -> Result<(), String>| {
        let path = key_path(keys);
        if let Some(v) = json_at(json, &path)
            && let Err(msg) = f(v)
        {
            out.push(problem_at(locator, &path, msg));
        }
    };
    check(&["input", "delimiter"], &|v| match v.as_str() {
        Some(d) if d.len() == 1 && d.is_ascii() && !matches!(d, "\"" | "\n" | "\r") => Ok(()),
        _ => Err(format!(
            "must be one character other than a quote or a line end (`;`, `|`, a tab written \"\\t\"), not {v}"
        )),
    });
    check(&["input", "path"], &|v| match v {
        Value::Array(paths) if paths.is_empty() => {
            Err("the list of input files is empty; give at least one path".to_string())
        }
        Value::String(p) if p.trim().is_empty() => Err("the input path is empty".to_string()),
        Value::Array(paths)
            if paths
                .iter()
                .any(|p| p.as_str().is_some_and(|p| p.trim().is_empty())) =>
        {
            Err("an input path in the list is empty".to_string())
        }
        _ => Ok(()),
    });
    check(&["chunking", "max_bytes"], &|v| {
        let size: Size = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        size.bytes().map(|_| ())
    });
    check(&["provider", "base_url"], &|v| match v {
        Value::Array(urls) => urls
            .iter()
            .try_for_each(|u| base_url_problem(u.as_str().unwrap_or_default())),
        other => base_url_problem(other.as_str().unwrap_or_default()),
    });
    // A zero interval would poll without pause; a zero give-up would give
    // up at the first failure.
    let positive = |v: &Value| {
        let d = units::parse_duration(v.as_str().unwrap_or_default())?;
        if d.is_zero() {
            Err("must be longer than 0s, e.g. 30s".to_string())
        } else {
            Ok(())
        }
    };
    for key in ["interval", "max_interval"] {
        check(&["poll", key], &positive);
    }
    check(&["halt", "max_cost_usd"], &|v| match v.as_f64() {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(()),
        _ => Err("must be a number of US dollars, 0 or more, e.g. 20".to_string()),
    });
    for key in ["validating", "in_progress", "finalizing"] {
        check(&["provider", "simulated", key], &|v| {
            units::parse_duration(v.as_str().unwrap_or_default()).map(|_| ())
        });
    }
    for key in SIMULATED_RATE_KEYS {
        check(&["provider", "simulated", key], &|v| {
            let rate: Rate = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
            rate.fraction().map(|_| ())
        });
    }
    check(&["retry", "give_up_after"], &positive);
    check(&["deadline"], &|v| match v.as_str() {
        Some(t) => crate::deadline::parse(t).map(|_| ()),
        None => Err(
            "must be a time or a duration in quotes, e.g. \"2026-12-09T06:00:00Z\" or 6h".into(),
        ),
    });
    check(&["deadline_margin"], &|v| match v.as_str() {
        Some(t) => crate::deadline::parse_margin(t).map(|_| ()),
        None => Err("must be a duration, e.g. 10m".into()),
    });
    check(&["halt", "max_failure_rate"], &|v| {
        let rate: Rate = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        rate.fraction().map(|_| ())
    });
    check(&["version"], &|v| {
        if v.as_u64() == Some(u64::from(SPEC_VERSION)) {
            Ok(())
        } else {
            Err(format!(
                "this batchgrader reads spec version {SPEC_VERSION}"
            ))
        }
    });
    let poll_secs = |key: &str| {
        json_at(json, &key_path(&["poll", key]))
            .and_then(Value::as_str)
            .and_then(|v| units::parse_duration(v).ok())
    };
    if let (Some(interval), Some(max)) = (poll_secs("interval"), poll_secs("max_interval"))
        && max < interval
    {
        out.push(problem_at(
            locator,
            &key_path(&["poll", "max_interval"]),
            format!(
                "is shorter than poll.interval ({}); the wait grows from interval to max_interval",
                humantime::format_duration(interval)
            ),
        ));
    }
    if let Some(list) =
        json_at(json, &key_path(&["provider", "base_url"])).and_then(Value::as_array)
    {
        let direct =
            json_at(json, &key_path(&["provider", "mode"])) == Some(&Value::from("direct"));
        if list.is_empty() {
            out.push(problem_at(
                locator,
                &key_path(&["provider", "base_url"]),
                "the list of base URLs is empty".into(),
            ));
        } else if !direct && list.len() > 1 {
            out.push(problem_at(
                locator,
                &key_path(&["provider", "base_url"]),
                "several base URLs need `mode: direct`; a batch runs at one provider".into(),
            ));
        }
    }
    if let Some(prompt) = json.get("prompt")
        && prompt.get("system").is_some()
        && prompt.get("system_file").is_some()
    {
        out.push(problem_at(
            locator,
            &key_path(&["prompt", "system_file"]),
            "set `system` or `system_file`, not both".into(),
        ));
    }
    if let Some(req) = json.get("request").and_then(Value::as_object) {
        for (key, value) in req {
            let reason = match key.as_str() {
                "model" => Some("set the model with the top-level `model` key"),
                "messages" => Some("messages come from `prompt`"),
                "stream" if value != &Value::Bool(false) => Some("batch requests cannot stream"),
                "n" if value.as_u64().is_some_and(|n| n > 1) => {
                    Some("one answer per row: `n` must be 1")
                }
                _ => None,
            };
            if let Some(reason) = reason {
                out.push(problem_at(
                    locator,
                    &key_path(&["request", key]),
                    format!("`{key}` cannot be set here: {reason}"),
                ));
            }
        }
    }
    if Wire::of_json(json) == Wire::AnthropicMessages {
        out.extend(anthropic_request_problems(json, locator));
    }
    let output = json.get("output");
    let parse = output.and_then(|o| o.get("parse")).and_then(Value::as_str);
    if parse == Some("label")
        && output
            .and_then(|o| o.get("labels"))
            .and_then(Value::as_array)
            .is_none_or(|l| l.is_empty())
    {
        out.push(problem_at(
            locator,
            &key_path(&["output", "parse"]),
            "`parse: label` needs a non-empty `output.labels` list".into(),
        ));
    }
    // Keys that only mean something with their parse mode: without it the
    // answer comes back as free text and every row is paid for anyway.
    for (key, mode) in [("labels", "label"), ("pattern", "regex")] {
        if output.and_then(|o| o.get(key)).is_some() && parse != Some(mode) {
            out.push(problem_at(
                locator,
                &key_path(&["output", key]),
                format!(
                    "`output.{key}` is only read with `parse: {mode}` (now `{}`); add `parse: {mode}` under `output:`, or remove `{key}`",
                    parse.unwrap_or("text")
                ),
            ));
        }
    }
    if parse == Some("regex") {
        match output
            .and_then(|o| o.get("pattern"))
            .and_then(Value::as_str)
        {
            None => out.push(problem_at(
                locator,
                &key_path(&["output", "parse"]),
                "`parse: regex` needs `output.pattern`".into(),
            )),
            Some("") => out.push(problem_at(
                locator,
                &key_path(&["output", "pattern"]),
                "`output.pattern` is empty".into(),
            )),
            Some(p) => {
                if let Err(e) = regex::Regex::new(p) {
                    out.push(problem_at(
                        locator,
                        &key_path(&["output", "pattern"]),
                        format!("not a valid regular expression: {e}"),
                    ));
                }
            }
        }
    }
    out
}

/// `output.schema` / `output.schema_file`: read the file, check what the
/// provider's structured-output mode refuses, and put the schema inline in
/// `json`, so the spec saved with the job carries the schema it was planned
/// with (`resume` reads no schema file).
pub(super) fn answer_schema_problems(
    spec_path: &Path,
    json: &mut Value,
    locator: &locate::Locator,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let Some(output) = json.get("output").and_then(Value::as_object) else {
        return out;
    };
    let wire = Wire::of_json(json);
    let (schema, file) = match (output.get("schema"), output.get("schema_file")) {
        (None, None) => return out,
        (Some(_), Some(_)) => {
            out.push(problem_at(
                locator,
                &key_path(&["output", "schema_file"]),
                "set `schema` or `schema_file`, not both".into(),
            ));
            return out;
        }
        (Some(s), None) => (s.clone(), None),
        (None, Some(f)) => {
            let rel = f.as_str().unwrap_or_default();
            let file = spec_path.parent().unwrap_or(Path::new("")).join(rel);
            let loaded = super::limits::read_capped(&file, super::limits::MAX_SPEC_BYTES)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))
                .and_then(|text| match super::limits::too_deep(&text) {
                    Some((line, why)) => Err(format!("{}:{line}: {why}", file.display())),
                    None => Ok(text),
                })
                .and_then(|text| {
                    serde_yaml::from_str::<serde_json::Value>(&text)
                        .map_err(|e| format!("{} is not JSON or YAML: {e}", file.display()))
                });
            match loaded {
                Ok(v) => (v, Some(file)),
                Err(why) => {
                    out.push(problem_at(
                        locator,
                        &key_path(&["output", "schema_file"]),
                        why,
                    ));
                    return out;
                }
            }
        }
    };
    if let Some(parse) = output.get("parse").and_then(Value::as_str)
        && parse != "json"
    {
        out.push(problem_at(
            locator,
            &key_path(&["output", "parse"]),
            format!(
                "with an answer schema the answer is parsed as JSON; remove `parse: {parse}` or set `parse: json`"
            ),
        ));
    }
    if let Some(req) = json.get("request").and_then(Value::as_object) {
        for key in super::structured::REQUEST_KEYS {
            if req.contains_key(*key) {
                out.push(problem_at(
                    locator,
                    &key_path(&["request", key]),
                    format!("`{key}` is set from output.schema; remove it here"),
                ));
            }
        }
    }
    let strict = super::structured::strict_problems(wire, &schema);
    if strict.is_empty()
        && let Err(why) = super::structured::compile(&schema)
    {
        let (at, what) = match &file {
            Some(f) => (
                key_path(&["output", "schema_file"]),
                format!("{}: {why}", f.display()),
            ),
            None => (key_path(&["output", "schema"]), why),
        };
        out.push(problem_at(locator, &at, what));
    }
    for p in strict {
        match &file {
            // Placed at the spec's key, naming the place in the file.
            Some(f) => out.push(problem_at(
                locator,
                &key_path(&["output", "schema_file"]),
                format!("{}: {}: {}", f.display(), dotted(&p.path), p.message),
            )),
            None => {
                let mut path = key_path(&["output", "schema"]);
                path.extend(p.path);
                out.push(problem_at(locator, &path, p.message));
            }
        }
    }
    if out.is_empty()
        && file.is_some()
        && let Some(o) = json.get_mut("output").and_then(Value::as_object_mut)
    {
        o.insert("schema".into(), schema);
    }
    out
}

/// Chat Completions parameters the Messages API does not take, each with
/// its Anthropic equivalent where one exists (Anthropic's OpenAI SDK
/// compatibility page lists what it ignores; the Messages API reference
/// names the equivalents).
pub(super) const OPENAI_ONLY_KEYS: &[(&str, Option<&str>)] = &[
    (
        "response_format",
        Some("`output_config: {format: {type: json_schema, schema: ...}}`"),
    ),
    ("max_completion_tokens", Some("`max_tokens`")),
    ("stop", Some("`stop_sequences`")),
    ("user", Some("`metadata: {user_id: ...}`")),
    (
        "parallel_tool_calls",
        Some("`tool_choice: {disable_parallel_tool_use: true}`"),
    ),
    ("reasoning_effort", Some("`thinking`")),
    ("functions", Some("`tools`")),
    ("function_call", Some("`tool_choice`")),
    ("logprobs", None),
    ("top_logprobs", None),
    ("n", None),
    ("seed", None),
    ("frequency_penalty", None),
    ("presence_penalty", None),
    ("logit_bias", None),
    ("stream_options", None),
    ("modalities", None),
    ("audio", None),
    ("prediction", None),
    ("store", None),
    ("web_search_options", None),
    ("verbosity", None),
];

/// `request:` for the Messages API: `max_tokens` is required (at least 1),
/// `system` comes from `prompt`, and OpenAI-only keys are refused.
fn anthropic_request_problems(json: &Value, locator: &locate::Locator) -> Vec<Problem> {
    let mut out = Vec::new();
    let req = json.get("request").and_then(Value::as_object);
    match req.and_then(|r| r.get("max_tokens")) {
        // Placed at `request:`, or, with no such block, at the provider
        // that needs it (there is no line of a missing block to point at).
        None => out.push(problem_at(
            locator,
            &key_path(if req.is_some() {
                &["request"]
            } else {
                &["provider", "kind"]
            }),
            "`request.max_tokens` is required by the Anthropic Messages API; add e.g. \
             `max_tokens: 16` under `request:`"
                .into(),
        )),
        Some(v) if v.as_u64().is_none_or(|n| n == 0) => out.push(problem_at(
            locator,
            &key_path(&["request", "max_tokens"]),
            "must be a whole number of at least 1 (the Message Batches API refuses 0)".into(),
        )),
        Some(_) => {}
    }
    for key in req.into_iter().flat_map(|r| r.keys()) {
        let message = if key == "system" {
            Some("`system` cannot be set here: the system prompt comes from `prompt.system`".into())
        } else {
            OPENAI_ONLY_KEYS
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, eq)| match eq {
                    Some(eq) => format!(
                        "`{key}` is an OpenAI parameter the Anthropic Messages API does not take; use {eq}"
                    ),
                    None => format!(
                        "`{key}` is an OpenAI parameter the Anthropic Messages API does not take, \
                         and it has no equivalent there; remove it"
                    ),
                })
        };
        if let Some(m) = message {
            out.push(problem_at(locator, &key_path(&["request", key]), m));
        }
    }
    out
}
