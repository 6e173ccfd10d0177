//! `request:` keys checked against the provider's published request body:
//! a key the provider does not know makes it refuse every line of a batch,
//! after the job was paid for in time if not in money.

use serde_json::Value;

use super::Problem;
use super::locate;
use super::place::{key_path, problem_at};
use super::resolve::Wire;

/// Chat Completions request keys, generated from OpenAI's OpenAPI spec by
/// tests/fixtures/gen/request_keys.py.
const OPENAI_KEYS_FILE: &str = include_str!("../../schemas/openai-chat-request-keys.txt");

/// The Messages API's create parameters (Anthropic's API reference,
/// `MessageCreateParams`; ../shared/reference/provider-apis.md §5).
/// `model`, `messages`, `system` and `stream` are set by batchgrader and
/// refused by other rules with their own reasons.
const ANTHROPIC_KEYS: &[&str] = &[
    "container",
    "context_management",
    "max_tokens",
    "mcp_servers",
    "messages",
    "metadata",
    "model",
    "output_config",
    "service_tier",
    "stop_sequences",
    "stream",
    "system",
    "temperature",
    "thinking",
    "tool_choice",
    "tools",
    "top_k",
    "top_p",
];

fn openai_keys() -> Vec<&'static str> {
    OPENAI_KEYS_FILE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// How an unknown key is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The provider refuses it: the spec is invalid.
    Error,
    /// A server of its own (vLLM, llama.cpp, LiteLLM) may take keys OpenAI
    /// does not (`top_k`, `repetition_penalty`, `guided_json`): said, not refused.
    Warning,
}

/// What to say of one `request:` key, decided over plain data: `None` when
/// the wire knows it (or another rule speaks of it: `skip`).
pub fn judge(
    key: &str,
    known: &[&str],
    own_server: bool,
    skip: &[&str],
) -> Option<(Severity, String)> {
    if known.contains(&key) || skip.contains(&key) {
        return None;
    }
    let mut msg = format!("unknown request parameter `{key}`");
    if let Some(near) = crate::suggest::closest(key, known) {
        msg.push_str(&format!("; did you mean `{near}`?"));
    }
    if own_server {
        msg.push_str(
            " (sent as written: OpenAI does not know it, the server at `provider.base_url` may)",
        );
        Some((Severity::Warning, msg))
    } else {
        msg.push_str(" (the provider would refuse every request)");
        Some((Severity::Error, msg))
    }
}

/// `provider.kind: openai` (or no kind) with a `base_url` other than
/// OpenAI's own: a server that may take extra keys.
fn own_server(json: &Value) -> bool {
    let kind = json
        .pointer("/provider/kind")
        .and_then(Value::as_str)
        .unwrap_or("openai");
    let urls: Vec<&str> = match json.pointer("/provider/base_url") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    kind == "openai" && urls.iter().any(|u| !u.contains("api.openai.com"))
}

/// The errors and the warnings of the spec's `request:` keys.
pub(super) fn problems(json: &Value, locator: &locate::Locator) -> (Vec<Problem>, Vec<Problem>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let Some(req) = json.get("request").and_then(Value::as_object) else {
        return (errors, warnings);
    };
    let openai = openai_keys();
    let (known, own, skip): (&[&str], bool, Vec<&str>) = match Wire::of_json(json) {
        Wire::AnthropicMessages => (
            ANTHROPIC_KEYS,
            false,
            super::rules::OPENAI_ONLY_KEYS
                .iter()
                .map(|(k, _)| *k)
                .collect(),
        ),
        Wire::OpenAiChat => (&openai, own_server(json), vec![]),
    };
    for key in req.keys() {
        if let Some((sev, msg)) = judge(key, known, own, &skip) {
            let p = problem_at(locator, &key_path(&["request", key]), msg);
            match sev {
                Severity::Error => errors.push(p),
                Severity::Warning => warnings.push(p),
            }
        }
    }
    (errors, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keys_table() {
        let openai = openai_keys();
        let known: &[&str] = &openai;
        // (key, own server, severity, text)
        let table: &[(&str, bool, Option<Severity>, &str)] = &[
            ("max_tokens", false, None, ""),
            ("max_completion_tokens", false, None, ""),
            ("response_format", false, None, ""),
            (
                "max_token",
                false,
                Some(Severity::Error),
                "did you mean `max_tokens`?",
            ),
            (
                "temprature",
                false,
                Some(Severity::Error),
                "did you mean `temperature`?",
            ),
            (
                "max_token",
                true,
                Some(Severity::Warning),
                "did you mean `max_tokens`?",
            ),
            (
                "repetition_penalty",
                true,
                Some(Severity::Warning),
                "the server at `provider.base_url` may",
            ),
            (
                "zzz",
                false,
                Some(Severity::Error),
                "unknown request parameter `zzz` (the provider",
            ),
        ];
        for (key, own, sev, text) in table {
            let got = judge(key, known, *own, &[]);
            assert_eq!(got.as_ref().map(|g| g.0), *sev, "{key}");
            if let Some((_, m)) = got {
                assert!(m.contains(text), "{key}: {m}");
            }
        }
        // Anthropic: its own parameters, OpenAI's left to their own rule.
        assert_eq!(judge("top_k", ANTHROPIC_KEYS, false, &[]), None);
        assert_eq!(judge("stop", ANTHROPIC_KEYS, false, &["stop"]), None);
        let (_, m) = judge("stop_sequence", ANTHROPIC_KEYS, false, &[]).unwrap();
        assert!(m.contains("did you mean `stop_sequences`?"), "{m}");
    }

    #[test]
    fn the_generated_list_is_the_schemas_keys() {
        let keys = openai_keys();
        for k in [
            "max_tokens",
            "temperature",
            "top_p",
            "n",
            "seed",
            "response_format",
        ] {
            assert!(keys.contains(&k), "{k}");
        }
        let schema: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/openai-create-chat-completion-request.schema.json"
        ))
        .unwrap();
        let props = schema.to_string();
        for k in &keys {
            assert!(props.contains(&format!("\"{k}\"")), "{k} is in the schema");
        }
    }
}
