//! Table tests of the spec checks, through `check` as users meet them.

use super::check::duplicate_key_place;
use super::resolve::lexical_clean;
use super::*;
use std::time::Duration;

#[test]
fn paths_are_cleaned_lexically() {
    let cases = [
        ("specs/../out/x.csv", "out/x.csv"),
        ("./a/./b.csv", "a/b.csv"),
        ("../up.csv", "../up.csv"),
        ("a/../../b.csv", "../b.csv"),
        ("/abs/../x", "/x"),
    ];
    for (input, want) in cases {
        assert_eq!(
            lexical_clean(Path::new(input)),
            PathBuf::from(want),
            "{input}"
        );
    }
}

const MINIMAL: &str = "version: 1
name: t
model: gpt-4o-mini
input:
  path: in.csv
prompt:
  user: \"{{ text }}\"
output:
  path: out.csv
";

#[test]
fn unknown_keys_are_matched_in_their_own_block_first() {
    let cases = [
        // (text to replace in MINIMAL, replacement, suggestion)
        ("model: gpt-4o-mini", "modle: gpt-4o-mini", Some("model")),
        ("  path: in.csv", "  path: in.csv\n  idd: x", Some("id")),
        (
            "version: 1",
            "version: 1\nhalt:\n  max_cost: 5",
            Some("max_cost_usd"),
        ),
        ("version: 1", "version: 1\ncolour: red", None),
    ];
    for (from, to, want) in cases {
        let got = problems(&MINIMAL.replace(from, to));
        let unknown: Vec<&Problem> = got
            .iter()
            .filter(|p| p.message.starts_with("unknown key"))
            .collect();
        assert_eq!(unknown.len(), 1, "{to}: {got:?}");
        let said = unknown[0]
            .message
            .split("did you mean `")
            .nth(1)
            .map(|s| s.trim_end_matches("`?"));
        assert_eq!(said, want, "{to}: {got:?}");
    }
}

#[test]
fn a_repeated_key_is_placed_at_its_second_line() {
    let cases = [
        (
            "version: 1\nmodel: a\nname: x\nmodel: b\n",
            "model",
            Some((4, 1)),
        ),
        ("input:\n  id: a\n  path: p\n  id: b\n", "id", Some((4, 3))),
        ("a:\n  id: 1\nb:\n  id: 2\nb:\n", "id", None),
        ("a:\n  id: 1\nb:\n  id: 2\nb:\n", "b", Some((5, 1))),
        ("l:\n  - id: 1\n  - id: 2\n", "id", None),
        ("x: \"model: 1\"\nmodel: 2\n", "model", None),
    ];
    for (text, key, want) in cases {
        assert_eq!(duplicate_key_place(text, key), want, "{text:?}");
    }
    let got = problems(&format!("{MINIMAL}model: gpt-4o\n"));
    assert_eq!((got[0].line, got[0].column), (10, 1), "{got:?}");
    assert_eq!(got[0].field, "model", "{got:?}");
    let got = problems(&MINIMAL.replace("  path: in.csv", "  path: in.csv\n  path: b.csv"));
    assert_eq!((got[0].line, got[0].column), (6, 3), "{got:?}");
    assert_eq!(got[0].field, "input.path", "{got:?}");
    assert!(
        got[0].message.contains("duplicate entry with key \"path\""),
        "{got:?}"
    );
}

#[test]
fn an_empty_input_path_is_named() {
    for path in ["[]", "\"\"", "[in.csv, \"\"]"] {
        let got = problems(&MINIMAL.replace("  path: in.csv", &format!("  path: {path}")));
        assert_eq!(got.len(), 1, "{path}: {got:?}");
        assert_eq!(
            (got[0].line, got[0].field.as_str()),
            (5, "input.path"),
            "{path}"
        );
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match check(Path::new("spec.yaml"), text) {
        Ok(_) => vec![],
        Err(SpecError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn minimal_spec_gets_defaults() {
    let c = check(Path::new("dir/spec.yaml"), MINIMAL).unwrap();
    assert_eq!(c.endpoint.kind, ProviderKind::Openai);
    assert_eq!(c.run.max_batches_in_flight, 4);
    assert_eq!(c.run.max_attempts, 3);
    assert_eq!(c.output().field, "answer");
    assert_eq!(c.run.poll_interval, Duration::from_secs(30));
    assert_eq!(c.run.poll_max_interval, Duration::from_secs(300));
    assert_eq!(c.inputs, vec![PathBuf::from("dir/in.csv")]);
    assert_eq!(c.output_path, PathBuf::from("dir/out.csv"));
}

#[test]
fn durations_and_budget_that_make_no_sense_are_refused() {
    let cases = [
        ("poll: { interval: 0s }", "poll.interval", "longer than 0s"),
        (
            "poll: { interval: 30s, max_interval: 10s }",
            "poll.max_interval",
            "shorter than poll.interval",
        ),
        (
            "retry: { give_up_after: 0s }",
            "retry.give_up_after",
            "longer than 0s",
        ),
        (
            "halt: { max_cost_usd: .nan }",
            "halt.max_cost_usd",
            "a number",
        ),
    ];
    for (extra, field, says) in cases {
        let p = problems(&format!("{MINIMAL}{extra}\n"));
        assert!(
            p.iter()
                .any(|p| p.field == field && p.message.contains(says)),
            "{extra}: {p:?}"
        );
    }
    assert!(
        problems(&format!(
            "{MINIMAL}poll: {{ interval: 1s, max_interval: 1s }}\n"
        ))
        .is_empty()
    );
    let c = check(Path::new("s.yaml"), MINIMAL).unwrap();
    assert_eq!(c.run.give_up_after, Duration::from_secs(3600));
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let text = "version: 1
name: Bad Name
model: gpt-4o-mini
input:
  path: in.csv
  colour: red
prompt:
  user: x
output:
  path: out.csv
chunking:
  max_requests: \"many\"
";
    let got = problems(text);
    let summary: Vec<(usize, usize, &str)> = got
        .iter()
        .map(|p| (p.line, p.column, p.field.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, 1, "name"),
            (6, 3, "input.colour"),
            (12, 3, "chunking.max_requests")
        ],
        "{got:#?}"
    );
    assert!(got[1].message.contains("unknown key `colour`"));
}

#[test]
fn missing_required_fields_are_named() {
    let got = problems("version: 1\nname: t\n");
    let fields: Vec<&str> = got.iter().map(|p| p.field.as_str()).collect();
    for f in ["model", "input", "prompt", "output"] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

#[test]
fn semantic_checks() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "chunking:\n  max_bytes: 12 parsecs\n",
            "chunking.max_bytes",
            "unit",
        ),
        ("chunking:\n  max_bytes: 0\n", "chunking.max_bytes", "size"),
        ("poll:\n  interval: soon\n", "poll.interval", "duration"),
        (
            "halt:\n  max_failure_rate: 5\n",
            "halt.max_failure_rate",
            "percentage",
        ),
        (
            "halt:\n  max_failure_rate: \"150%\"\n",
            "halt.max_failure_rate",
            "between",
        ),
        ("request:\n  model: x\n", "request.model", "top-level"),
        ("request:\n  stream: true\n", "request.stream", "stream"),
        ("version: 2\n", "version", ""),
    ];
    for (extra, field, needle) in cases {
        let text = if extra.starts_with("version") {
            MINIMAL.replacen("version: 1\n", extra, 1)
        } else {
            format!("{MINIMAL}{extra}")
        };
        let got = problems(&text);
        assert!(
            got.iter()
                .any(|p| p.field == *field && p.message.contains(needle)),
            "{extra:?}: {got:#?}"
        );
    }
}

#[test]
fn anthropic_requests_table() {
    let anthropic = "provider:\n  kind: anthropic\n";
    let sim = "provider:\n  kind: simulated\n  simulated:\n    api: anthropic\n";
    // (provider block, request block, field with a problem or "" for none, text)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            anthropic,
            "",
            "provider.kind",
            "`request.max_tokens` is required",
        ),
        (sim, "", "provider.kind", "`request.max_tokens` is required"),
        (
            anthropic,
            "request:\n  temperature: 0\n",
            "request",
            "add e.g. `max_tokens: 16` under `request:`",
        ),
        (
            anthropic,
            "request:\n  max_tokens: 0\n",
            "request.max_tokens",
            "at least 1",
        ),
        (
            anthropic,
            "request:\n  max_tokens: 8\n  response_format: {type: json_object}\n",
            "request.response_format",
            "output_config",
        ),
        (
            anthropic,
            "request:\n  max_tokens: 8\n  max_completion_tokens: 8\n",
            "request.max_completion_tokens",
            "use `max_tokens`",
        ),
        (
            anthropic,
            "request:\n  max_tokens: 8\n  stop: [x]\n",
            "request.stop",
            "stop_sequences",
        ),
        (
            anthropic,
            "request:\n  max_tokens: 8\n  logprobs: true\n",
            "request.logprobs",
            "no equivalent",
        ),
        (
            anthropic,
            "request:\n  max_tokens: 8\n  system: hi\n",
            "request.system",
            "prompt.system",
        ),
        (
            anthropic,
            "request:\n  max_tokens: 8\n  temperature: 0\n  top_k: 5\n",
            "",
            "",
        ),
        // OpenAI takes all of these.
        (
            "",
            "request:\n  response_format: {type: json_object}\n  seed: 1\n",
            "",
            "",
        ),
    ];
    for (provider, request, field, needle) in cases {
        let got = problems(&format!("{MINIMAL}{provider}{request}"));
        if field.is_empty() {
            assert!(got.is_empty(), "{provider}{request}: {got:#?}");
        } else {
            assert!(
                got.iter()
                    .any(|p| p.field == *field && p.message.contains(needle)),
                "{provider}{request}: {got:#?}"
            );
        }
    }
}

#[test]
fn units_accepted() {
    let text = format!(
        "{MINIMAL}chunking:\n  max_bytes: 190MB\npoll: {{ interval: 10s, max_interval: 2m }}\nhalt:\n  max_failure_rate: 5%\n"
    );
    let c = check(Path::new("s.yaml"), &text).unwrap();
    assert_eq!(c.max_bytes, Some(190_000_000));
    assert_eq!(c.run.poll_interval, Duration::from_secs(10));
    assert_eq!(c.run.halt.max_failure_rate, Some(0.05));
}

#[test]
fn simulated_fault_keys() {
    let text = format!(
        "{MINIMAL}provider:
  kind: simulated
  simulated:
    rate_limit_rate: 5%
    server_error_rate: 0.1
    create_commit_error_rate: \"50%\"
    token_limit_every: 3
    expire_every: 0
    request_flake_rate: 0.02
"
    );
    let c = check(Path::new("s.yaml"), &text).unwrap();
    let s = c.endpoint.simulated.clone().unwrap();
    let rate = |r: &Option<Rate>| r.as_ref().unwrap().fraction().unwrap();
    assert_eq!(rate(&s.rate_limit_rate), 0.05);
    assert_eq!(rate(&s.server_error_rate), 0.1);
    assert_eq!(rate(&s.create_commit_error_rate), 0.5);
    assert_eq!(rate(&s.request_flake_rate), 0.02);
    assert_eq!((s.token_limit_every, s.expire_every), (Some(3), Some(0)));

    let bad = [
        ("rate_limit_rate: 120%", "rate_limit_rate", "between"),
        (
            "request_flake_rate: often",
            "request_flake_rate",
            "percentage",
        ),
        ("server_error_rate: 2", "server_error_rate", "percentage"),
        ("token_limit_every: -1", "token_limit_every", "minimum"),
        ("expire_every: 1.5", "expire_every", "integer"),
        (
            "expire_evry: 2",
            "expire_evry",
            "did you mean `expire_every`",
        ),
    ];
    for (line, key, needle) in bad {
        let text = format!("{MINIMAL}provider:\n  kind: simulated\n  simulated:\n    {line}\n");
        let got = problems(&text);
        let field = format!("provider.simulated.{key}");
        assert!(
            got.iter()
                .any(|p| p.field == field && p.message.contains(needle)),
            "{line}: {got:#?}"
        );
    }
}

#[test]
fn yaml_syntax_error_has_position() {
    let got = problems("version: 1\nname: [unclosed\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].line >= 2, "{got:?}");
    assert!(got[0].message.starts_with("invalid YAML"));
}

#[test]
fn unknown_key_suggests() {
    let got = problems(&format!(
        "{MINIMAL}concurency:\n  max_batches_in_flight: 2\n"
    ));
    assert!(
        got[0].message.contains("did you mean `concurrency`"),
        "{got:?}"
    );
}

#[test]
fn a_schema_file_is_carried_inline_so_resume_needs_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let schema = serde_json::json!({"type": "object",
            "properties": {"score": {"type": "integer"}},
            "required": ["score"], "additionalProperties": false});
    std::fs::write(dir.path().join("rubric.json"), schema.to_string()).unwrap();
    let spec_path = dir.path().join("spec.yaml");
    let text = format!("{MINIMAL}  schema_file: rubric.json\n");
    let c = check(&spec_path, &text).unwrap();
    assert_eq!(c.schema.as_ref(), Some(&schema));
    std::fs::remove_file(dir.path().join("rubric.json")).unwrap();
    let saved = c.saved();
    let again = from_saved(&spec_path, saved).unwrap();
    assert_eq!(again.schema, Some(schema));
    // Inline, the same schema.
    let inline = format!(
        "{MINIMAL}  schema: {{type: object, properties: {{score: {{type: integer}}}}, required: [score], additionalProperties: false}}\n"
    );
    let c = check(Path::new("s.yaml"), &inline).unwrap();
    assert_eq!(c.schema, again.schema);
    // A missing file is named at its key.
    let got = problems(&format!("{MINIMAL}  schema_file: nowhere.json\n"));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].line, got[0].field.as_str()),
        (10, "output.schema_file")
    );
    assert!(got[0].message.contains("cannot read"), "{got:?}");
}
