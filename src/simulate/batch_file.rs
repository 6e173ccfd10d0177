//! Reading a batch input file: the validation pass, and the pass that runs
//! the requests and writes the output and error files.
//!
//! Both passes stream the input line by line; only the result lines are held
//! in memory (they are much smaller than prompts), because they are written in
//! a shuffled order.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead};

use serde_json::{Value, json};

use super::answers::{
    Plain, cache_key, cached_tokens, check_request, complete, completion_json, prefix_tokens,
};
use super::api_error::ErrorBody;
use super::hash::{SplitMix64, hash_json, hash64, unit};
use super::state::{Counts, LineError, Usage, Validation};

/// OpenAI's cap on requests per batch.
const MAX_REQUESTS: u64 = 50_000;
/// A broken file can have an error on every line; the batch object stays small.
const MAX_REPORTED_ERRORS: usize = 100;

/// What the passes need to know about the batch.
pub struct RunContext<'a> {
    pub batch_id: &'a str,
    pub endpoint: &'a str,
    pub seed: u64,
    pub request_failure_rate: f64,
    /// Share of requests answered 400 `invalid_request_error` (final).
    pub reject_rate: f64,
    /// Why the requests past `executed` did not run.
    pub unrun: Unrun,
    pub flakes: &'a Flakes,
    /// How plain requests are answered (the batch's frozen answer shape).
    pub answers: Plain,
    /// Prompt tokens billed on every answered line beyond what the chat rule
    /// counts (`--bill-extra-prompt-tokens`): a provider that counts otherwise.
    pub extra_prompt_tokens: u64,
}

/// Requests that fail once (`request_flake_rate`): those whose draw falls
/// under the rate, unless another batch already flaked them. The batch that
/// did keeps flaking them, so writing its files again gives the same lines.
#[derive(Clone, Debug, Default)]
pub struct Flakes {
    pub rate: f64,
    /// Flaked requests (by [`flake_key`]) and the batch that flaked each.
    pub done: BTreeMap<String, String>,
}

/// One request as the server has seen it: its `custom_id` and its body (key
/// order aside), so an edited request is a new one.
pub fn flake_key(custom_id: &str, body: &Value) -> String {
    let body = hash_json(b"body", body);
    format!(
        "{:016x}",
        hash64(&[b"flake-key", custom_id.as_bytes(), &body.to_le_bytes()])
    )
}

impl Flakes {
    fn flakes(&self, ctx: &RunContext, request: &Request) -> Option<String> {
        if self.rate <= 0.0 {
            return None;
        }
        let key = flake_key(&request.custom_id, &request.body);
        let roll = unit(hash64(&[b"flake", &ctx.seed.to_le_bytes(), key.as_bytes()]));
        let first = match self.done.get(&key) {
            None => true,
            Some(batch) => batch == ctx.batch_id,
        };
        (roll < self.rate && first).then_some(key)
    }
}

/// What stopped a request from running; its line goes to the error file with
/// `response: null` and this `error.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrun {
    Cancelled,
    Expired,
}

struct Request {
    custom_id: String,
    url: String,
    body: Value,
}

fn parse_line(raw: &[u8], line: u64) -> Result<Request, LineError> {
    let invalid = |message: String| LineError {
        code: "invalid_json_line".into(),
        message,
        line: Some(line),
    };
    let value: Value = serde_json::from_slice(raw)
        .map_err(|e| invalid(format!("Line {line} is not valid JSON: {e}.")))?;
    let Value::Object(mut object) = value else {
        return Err(invalid(format!("Line {line} is not a JSON object.")));
    };
    let mut string_field = |name: &str| match object.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!(
            "Line {line}: field '{name}' must be a string."
        ))),
        None => Err(invalid(format!(
            "Line {line} is missing the required field '{name}'."
        ))),
    };
    let custom_id = string_field("custom_id")?;
    let method = string_field("method")?;
    let url = string_field("url")?;
    if method != "POST" {
        return Err(invalid(format!(
            "Line {line}: method must be 'POST', got '{method}'."
        )));
    }
    match object.remove("body") {
        Some(body @ Value::Object(_)) => Ok(Request {
            custom_id,
            url,
            body,
        }),
        Some(_) => Err(invalid(format!("Line {line}: 'body' must be an object."))),
        None => Err(invalid(format!(
            "Line {line} is missing the required field 'body'."
        ))),
    }
}

/// Calls `f` with each line (without its `\n` or `\r\n`) and its 1-based number.
fn for_each_line(
    mut reader: impl BufRead,
    mut f: impl FnMut(&[u8], u64) -> bool,
) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        number += 1;
        let mut line = buf.as_slice();
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if !f(line, number) {
            return Ok(());
        }
    }
}

/// How a request that runs ends, when it does not succeed.
struct Failure {
    status: u16,
    error: ErrorBody,
    /// Set when this is a one-time failure: the request's flake key.
    flake: Option<String>,
}

fn failure(ctx: &RunContext, request: &Request) -> Option<Failure> {
    if let Err(error) = check_request(&request.body) {
        return Some(Failure {
            status: 400,
            error,
            flake: None,
        });
    }
    if super::faults::rejected(ctx.reject_rate, ctx.seed, ctx.batch_id, &request.custom_id) {
        return Some(Failure {
            status: 400,
            error: super::faults::rejected_request(),
            flake: None,
        });
    }
    let roll = unit(hash64(&[
        b"fail",
        &ctx.seed.to_le_bytes(),
        ctx.batch_id.as_bytes(),
        request.custom_id.as_bytes(),
    ]));
    if roll < ctx.request_failure_rate {
        return Some(Failure {
            status: 500,
            error: ErrorBody {
                message: "simulated server error".into(),
                kind: "server_error".into(),
                param: None,
                code: None,
            },
            flake: None,
        });
    }
    let key = ctx.flakes.flakes(ctx, request)?;
    // A passing fault of the kind openai-python retries (any 5xx); in a
    // batch it is an HTTP error line (openai/openai-openapi issue #302).
    let status = if hash64(&[b"flake-status", key.as_bytes()]).is_multiple_of(2) {
        500
    } else {
        503
    };
    Some(Failure {
        status,
        error: ErrorBody {
            message: "The server had an error processing your request. Sorry about that! You \
                      can retry your request. (simulated)"
                .into(),
            kind: "server_error".into(),
            param: None,
            code: None,
        },
        flake: Some(key),
    })
}

/// The asynchronous validation OpenAI does after `POST /batches`. The
/// `custom_id`s it reads (each once, in file order) land in `ids`.
pub fn validate(
    reader: impl BufRead,
    ctx: &RunContext,
    ids: &mut Vec<String>,
) -> io::Result<Validation> {
    validate_with_limit(reader, ctx, MAX_REQUESTS, ids)
}

fn validate_with_limit(
    reader: impl BufRead,
    ctx: &RunContext,
    max_requests: u64,
    ids: &mut Vec<String>,
) -> io::Result<Validation> {
    let mut errors = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut model: Option<(String, u64)> = None;
    let mut total = 0u64;
    let mut failures = 0u64;
    for_each_line(reader, |raw, line| {
        total += 1;
        if total > max_requests {
            errors.push(LineError {
                code: "too_many_tasks".into(),
                message: format!(
                    "The batch input file has more than the maximum of {max_requests} requests."
                ),
                line: None,
            });
            return false;
        }
        let error = |errors: &mut Vec<LineError>, code: &str, message: String| {
            errors.push(LineError {
                code: code.into(),
                message,
                line: Some(line),
            });
        };
        match parse_line(raw, line) {
            Err(e) => errors.push(e),
            Ok(request) => {
                if request.url != ctx.endpoint {
                    error(
                        &mut errors,
                        "url_mismatch",
                        format!(
                            "Line {line}: url '{}' does not match the batch endpoint '{}'.",
                            request.url, ctx.endpoint
                        ),
                    );
                }
                if let Some(first) = seen.get(&request.custom_id) {
                    error(
                        &mut errors,
                        "duplicate_custom_id",
                        format!(
                            "Line {line}: custom_id '{}' is already used on line {first}.",
                            request.custom_id
                        ),
                    );
                } else {
                    seen.insert(request.custom_id.clone(), line);
                    ids.push(request.custom_id.clone());
                }
                if let Some(name) = request.body.get("model").and_then(Value::as_str) {
                    match &model {
                        None => model = Some((name.to_string(), line)),
                        Some((first, first_line)) if first != name => error(
                            &mut errors,
                            "model_mismatch",
                            format!(
                                "Line {line} uses model '{name}', but line {first_line} uses \
                                 '{first}'. Every request in a batch must use the same model."
                            ),
                        ),
                        Some(_) => {}
                    }
                }
                failures += u64::from(failure(ctx, &request).is_some());
            }
        }
        errors.len() < MAX_REPORTED_ERRORS
    })?;
    if total == 0 {
        errors.push(LineError {
            code: "empty_file".into(),
            message: "The batch input file is empty.".into(),
            line: None,
        });
    }
    Ok(if errors.is_empty() {
        Validation::Valid {
            total,
            failures,
            model: model.map(|(name, _)| name),
        }
    } else {
        Validation::Invalid { errors }
    })
}

/// When the requests ran, to stamp each completion's `created`.
pub struct RunClock {
    pub start_ms: u64,
    pub span_ms: u64,
}

/// The result files' contents (empty when there are no such lines).
pub struct Results {
    pub output: Vec<u8>,
    pub errors: Vec<u8>,
    pub counts: Counts,
    pub usage: Usage,
    /// Flake keys of the requests that failed once here.
    pub flaked: Vec<String>,
}

enum Kind {
    Success,
    Failure,
}

/// Runs the first `executed` requests in processing order (a shuffle of the
/// file) and writes every line in that order: finished requests come out in
/// no particular order, as on OpenAI. Requests not run are `batch_cancelled`.
pub fn run(
    reader: impl BufRead,
    ctx: &RunContext,
    total: u64,
    executed: u64,
    clock: &RunClock,
) -> io::Result<Results> {
    let order_seed = hash64(&[b"order", &ctx.seed.to_le_bytes(), ctx.batch_id.as_bytes()]);
    let mut order: Vec<u32> = (0..total as u32).collect();
    SplitMix64::new(order_seed).shuffle(&mut order);
    let mut position = vec![0u32; order.len()];
    for (pos, &index) in order.iter().enumerate() {
        position[index as usize] = pos as u32;
    }

    let mut slots: Vec<Option<(Kind, String)>> = (0..total).map(|_| None).collect();
    let mut counts = Counts {
        total,
        ..Counts::default()
    };
    let mut usage = Usage::default();
    let mut flaked = Vec::new();
    // Cache keys seen in this batch: a batch's first request of a key
    // writes the cache, the later ones read it.
    let mut warm = std::collections::HashSet::new();
    for_each_line(reader, |raw, line| {
        let index = (line - 1) as usize;
        let Some(&pos) = position.get(index) else {
            return false;
        };
        // Validation passed, so this only fails if the file changed since.
        let Ok(request) = parse_line(raw, line) else {
            return true;
        };
        let pos = u64::from(pos);
        let created_ms = clock.start_ms + clock.span_ms * pos / total.max(1);
        let entry = if pos >= executed {
            (Kind::Failure, unrun_line(ctx, &request))
        } else if let Some(failure) = failure(ctx, &request) {
            counts.failed += 1;
            flaked.extend(failure.flake);
            let line = error_line(ctx, &request, failure.status, &failure.error);
            (Kind::Failure, line)
        } else {
            counts.completed += 1;
            let (line, prompt, completion, cached) =
                success_line(ctx, &request, created_ms / 1000, &mut warm);
            usage.add(prompt, completion);
            usage.cached_tokens += cached;
            (Kind::Success, line)
        };
        slots[pos as usize] = Some(entry);
        true
    })?;

    let mut output = Vec::new();
    let mut errors = Vec::new();
    for (kind, line) in slots.into_iter().flatten() {
        let target = match kind {
            Kind::Success => &mut output,
            Kind::Failure => &mut errors,
        };
        target.extend_from_slice(line.as_bytes());
        target.push(b'\n');
    }
    Ok(Results {
        output,
        errors,
        counts,
        usage,
        flaked,
    })
}

fn line_hash(kind: &[u8], ctx: &RunContext, request: &Request) -> u64 {
    hash64(&[kind, ctx.batch_id.as_bytes(), request.custom_id.as_bytes()])
}

fn line_id(ctx: &RunContext, request: &Request) -> String {
    format!("batch_req_sim_{:016x}", line_hash(b"line", ctx, request))
}

fn request_id(ctx: &RunContext, request: &Request) -> String {
    format!("req_sim_{:016x}", line_hash(b"request", ctx, request))
}

fn success_line(
    ctx: &RunContext,
    request: &Request,
    created: u64,
    warm: &mut std::collections::HashSet<String>,
) -> (String, u64, u64, u64) {
    let mut completion = complete(&request.body, &ctx.answers);
    completion.prompt_tokens += ctx.extra_prompt_tokens;
    if let Some(key) = cache_key(&request.body) {
        let hot = !warm.insert(key);
        completion.cached_tokens =
            cached_tokens(prefix_tokens(&request.body), hot).min(completion.prompt_tokens);
    }
    let id = format!("chatcmpl-sim-{:016x}", line_hash(b"chatcmpl", ctx, request));
    let body = completion_json(&request.body, &completion, &id, created);
    let line = json!({
        "id": line_id(ctx, request),
        "custom_id": request.custom_id,
        "response": {
            "status_code": 200,
            "request_id": request_id(ctx, request),
            "body": body,
        },
        "error": null,
    });
    (
        line.to_string(),
        completion.prompt_tokens,
        completion.completion_tokens,
        completion.cached_tokens,
    )
}

/// An HTTP failure: `error` stays null and the envelope sits in the body.
fn error_line(ctx: &RunContext, request: &Request, status: u16, error: &ErrorBody) -> String {
    json!({
        "id": line_id(ctx, request),
        "custom_id": request.custom_id,
        "response": {
            "status_code": status,
            "request_id": request_id(ctx, request),
            "body": error.envelope(),
        },
        "error": null,
    })
    .to_string()
}

/// `batch_cancelled` (llm-d/llm-d-batch-gateway #221 copies OpenAI's lines)
/// or `batch_expired` (warmbly/warmbly PR #333 shows an expired OpenAI batch
/// whose unfinished requests came back this way).
fn unrun_line(ctx: &RunContext, request: &Request) -> String {
    let (code, message) = match ctx.unrun {
        Unrun::Cancelled => (
            "batch_cancelled",
            "This request was not executed because the batch was cancelled.",
        ),
        Unrun::Expired => (
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        ),
    };
    json!({
        "id": line_id(ctx, request),
        "custom_id": request.custom_id,
        "response": null,
        "error": { "code": code, "message": message },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const ENDPOINT: &str = "/v1/chat/completions";

    fn validate(reader: impl BufRead, ctx: &RunContext) -> io::Result<Validation> {
        super::validate(reader, ctx, &mut Vec::new())
    }

    fn validate_with_limit(
        reader: impl BufRead,
        ctx: &RunContext,
        max_requests: u64,
    ) -> io::Result<Validation> {
        super::validate_with_limit(reader, ctx, max_requests, &mut Vec::new())
    }

    #[test]
    fn validation_lists_each_custom_id_once() {
        let content = format!(
            "{}\n{}\n{}\n",
            line("b", "m"),
            line("a", "m"),
            line("b", "m")
        );
        let mut ids = Vec::new();
        super::validate(content.as_bytes(), &ctx(0.0), &mut ids).unwrap();
        assert_eq!(ids, ["b", "a"]);
    }

    static NO_FLAKES: Flakes = Flakes {
        rate: 0.0,
        done: BTreeMap::new(),
    };

    fn ctx(rate: f64) -> RunContext<'static> {
        RunContext {
            batch_id: "batch_sim_test",
            endpoint: ENDPOINT,
            seed: 7,
            request_failure_rate: rate,
            reject_rate: 0.0,
            unrun: Unrun::Cancelled,
            flakes: &NO_FLAKES,
            answers: Plain::Grade,
            extra_prompt_tokens: 0,
        }
    }

    fn line(id: &str, model: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": ENDPOINT,
            "body": {"model": model, "messages": [{"role": "user", "content": format!("grade {id}")}]}})
        .to_string()
    }

    fn file(n: usize) -> String {
        (0..n).map(|i| line(&format!("r{i}"), "m") + "\n").collect()
    }

    fn codes(v: Validation) -> Vec<(String, Option<u64>)> {
        match v {
            Validation::Invalid { errors } => {
                errors.into_iter().map(|e| (e.code, e.line)).collect()
            }
            Validation::Valid { .. } => vec![],
        }
    }

    #[test]
    fn valid_files() {
        let v = validate(file(3).as_bytes(), &ctx(0.0)).unwrap();
        assert_eq!(
            v,
            Validation::Valid {
                total: 3,
                failures: 0,
                model: Some("m".into())
            }
        );
        // No trailing newline, CRLF endings.
        let crlf = format!("{}\r\n{}", line("a", "m"), line("b", "m"));
        assert!(matches!(
            validate(crlf.as_bytes(), &ctx(0.0)).unwrap(),
            Validation::Valid { total: 2, .. }
        ));
    }

    #[test]
    fn validation_errors_table() {
        let ok = line("a", "m");
        type Case = (String, Vec<(&'static str, Option<u64>)>);
        let cases: Vec<Case> = vec![
            (String::new(), vec![("empty_file", None)]),
            (
                format!("{ok}\nnot json\n"),
                vec![("invalid_json_line", Some(2))],
            ),
            (format!("{ok}\n\n"), vec![("invalid_json_line", Some(2))]),
            (
                r#"{"method":"POST","url":"/v1/chat/completions","body":{}}"#.into(),
                vec![("invalid_json_line", Some(1))],
            ),
            (
                r#"{"custom_id":"a","url":"/v1/chat/completions","body":{}}"#.into(),
                vec![("invalid_json_line", Some(1))],
            ),
            (
                r#"{"custom_id":"a","method":"POST","body":{}}"#.into(),
                vec![("invalid_json_line", Some(1))],
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions"}"#.into(),
                vec![("invalid_json_line", Some(1))],
            ),
            (
                r#"{"custom_id":"a","method":"GET","url":"/v1/chat/completions","body":{}}"#.into(),
                vec![("invalid_json_line", Some(1))],
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{}}"#.into(),
                vec![("url_mismatch", Some(1))],
            ),
            (
                format!("{ok}\n{}\n{ok}\n", line("b", "m")),
                vec![("duplicate_custom_id", Some(3))],
            ),
            (
                format!("{ok}\n{}\n", line("b", "other")),
                vec![("model_mismatch", Some(2))],
            ),
            (
                format!("[1]\n{ok}\n{ok}\n"),
                vec![
                    ("invalid_json_line", Some(1)),
                    ("duplicate_custom_id", Some(3)),
                ],
            ),
        ];
        for (content, expected) in cases {
            let got = codes(validate(content.as_bytes(), &ctx(0.0)).unwrap());
            let expected: Vec<(String, Option<u64>)> = expected
                .into_iter()
                .map(|(c, l)| (c.to_string(), l))
                .collect();
            assert_eq!(got, expected, "{content:?}");
        }
    }

    #[test]
    fn too_many_requests() {
        let v = validate_with_limit(file(11).as_bytes(), &ctx(0.0), 10).unwrap();
        assert_eq!(codes(v), vec![("too_many_tasks".to_string(), None)]);
        let v = validate_with_limit(file(10).as_bytes(), &ctx(0.0), 10).unwrap();
        assert!(matches!(v, Validation::Valid { total: 10, .. }));
    }

    fn lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn ids(lines: &[Value]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l["custom_id"].as_str().unwrap().to_string())
            .collect()
    }

    const CLOCK: RunClock = RunClock {
        start_ms: 1_700_000_000_000,
        span_ms: 1000,
    };

    #[test]
    fn run_accounts_for_every_request_in_shuffled_order() {
        let n = 200;
        let r = run(file(n).as_bytes(), &ctx(0.0), n as u64, n as u64, &CLOCK).unwrap();
        assert!(r.errors.is_empty());
        assert!(r.output.ends_with(b"\n"));
        let out = lines(&r.output);
        let got = ids(&out);
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), n);
        let in_order: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        assert_ne!(got, in_order, "output must be shuffled");
        assert_eq!(
            r.counts,
            Counts {
                total: 200,
                completed: 200,
                failed: 0
            }
        );
        let first = &out[0];
        assert_eq!(first["response"]["status_code"], 200);
        assert_eq!(first["error"], Value::Null);
        assert!(first["id"].as_str().unwrap().starts_with("batch_req_sim_"));
        let body = &first["response"]["body"];
        assert_eq!(body["model"], "m");
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-sim-"));
        let usage_in: u64 = out
            .iter()
            .map(|l| {
                l["response"]["body"]["usage"]["prompt_tokens"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert_eq!(r.usage.input_tokens, usage_in);

        let again = run(file(n).as_bytes(), &ctx(0.0), n as u64, n as u64, &CLOCK).unwrap();
        assert_eq!(again.output, r.output, "runs are deterministic");
    }

    #[test]
    fn injected_failures_match_validation_count() {
        let n = 300;
        let c = ctx(0.3);
        let Validation::Valid { failures, .. } = validate(file(n).as_bytes(), &c).unwrap() else {
            panic!("invalid");
        };
        assert!((40..=140).contains(&failures), "{failures}");
        let r = run(file(n).as_bytes(), &c, n as u64, n as u64, &CLOCK).unwrap();
        assert_eq!(r.counts.failed, failures);
        let errs = lines(&r.errors);
        assert_eq!(errs.len() as u64, failures);
        assert_eq!(errs[0]["response"]["status_code"], 500);
        assert_eq!(errs[0]["response"]["body"]["error"]["type"], "server_error");
        assert_eq!(errs[0]["error"], Value::Null);
        assert_eq!(lines(&r.output).len() as u64 + failures, n as u64);
    }

    #[test]
    fn flakes_fail_once_per_request() {
        let n = 40;
        let all = Flakes {
            rate: 1.0,
            done: BTreeMap::new(),
        };
        let c = RunContext {
            flakes: &all,
            ..ctx(0.0)
        };
        let Validation::Valid { failures, .. } = validate(file(n).as_bytes(), &c).unwrap() else {
            panic!("invalid");
        };
        assert_eq!(failures, n as u64);
        let r = run(file(n).as_bytes(), &c, n as u64, n as u64, &CLOCK).unwrap();
        assert_eq!(r.flaked.len(), n);
        assert_eq!(r.counts.failed, n as u64);
        assert!(r.output.is_empty());
        let errs = lines(&r.errors);
        let statuses: HashSet<u64> = errs
            .iter()
            .map(|l| l["response"]["status_code"].as_u64().unwrap())
            .collect();
        assert_eq!(statuses, HashSet::from([500, 503]));
        for line in &errs {
            assert_eq!(line["error"], Value::Null);
            assert_eq!(line["response"]["body"]["error"]["type"], "server_error");
        }

        // Flaked by another batch: they succeed. By this one: same lines again.
        let by = |batch: &str| Flakes {
            rate: 1.0,
            done: r.flaked.iter().map(|k| (k.clone(), batch.into())).collect(),
        };
        let elsewhere = by("batch_other");
        let c = RunContext {
            flakes: &elsewhere,
            ..ctx(0.0)
        };
        let again = run(file(n).as_bytes(), &c, n as u64, n as u64, &CLOCK).unwrap();
        assert!(again.errors.is_empty() && again.flaked.is_empty());
        assert_eq!(again.counts.completed, n as u64);
        let here = by("batch_sim_test");
        let c = RunContext {
            flakes: &here,
            ..ctx(0.0)
        };
        let rerun = run(file(n).as_bytes(), &c, n as u64, n as u64, &CLOCK).unwrap();
        assert_eq!(rerun.errors, r.errors);

        // About the configured share flakes.
        let some = Flakes {
            rate: 0.3,
            done: BTreeMap::new(),
        };
        let c = RunContext {
            flakes: &some,
            ..ctx(0.0)
        };
        let r = run(file(300).as_bytes(), &c, 300, 300, &CLOCK).unwrap();
        assert!((50..=130).contains(&r.flaked.len()), "{}", r.flaked.len());
    }

    #[test]
    fn flake_key_follows_custom_id_and_body() {
        let a = json!({"model": "m", "temperature": 0});
        let b = json!({"temperature": 0, "model": "m"});
        let c = json!({"model": "m", "temperature": 1});
        assert_eq!(flake_key("r1", &a), flake_key("r1", &b));
        assert_ne!(flake_key("r1", &a), flake_key("r2", &a));
        assert_ne!(flake_key("r1", &a), flake_key("r1", &c));
    }

    #[test]
    fn bad_requests_become_400_lines() {
        let bad = json!({"custom_id": "z", "method": "POST", "url": ENDPOINT,
            "body": {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}});
        let content = format!("{}\n{bad}\n", line("a", "m"));
        let Validation::Valid { failures, .. } = validate(content.as_bytes(), &ctx(0.0)).unwrap()
        else {
            panic!("invalid");
        };
        assert_eq!(failures, 1);
        let r = run(content.as_bytes(), &ctx(0.0), 2, 2, &CLOCK).unwrap();
        let errs = lines(&r.errors);
        assert_eq!(ids(&errs), vec!["z"]);
        assert_eq!(errs[0]["response"]["status_code"], 400);
        assert_eq!(errs[0]["response"]["body"]["error"]["param"], "max_tokens");
    }

    #[test]
    fn partial_run_cancels_the_rest() {
        let n = 50;
        let r = run(file(n).as_bytes(), &ctx(0.0), n as u64, 20, &CLOCK).unwrap();
        let out = lines(&r.output);
        let errs = lines(&r.errors);
        assert_eq!(out.len(), 20);
        assert_eq!(errs.len(), 30);
        assert!(
            errs.iter()
                .all(|l| l["error"]["code"] == "batch_cancelled" && l["response"] == Value::Null)
        );
        let mut all = ids(&out);
        all.extend(ids(&errs));
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), n);
        assert_eq!(
            r.counts,
            Counts {
                total: 50,
                completed: 20,
                failed: 0
            }
        );

        let expired = RunContext {
            unrun: Unrun::Expired,
            ..ctx(0.0)
        };
        let r = run(file(n).as_bytes(), &expired, n as u64, 25, &CLOCK).unwrap();
        let errs = lines(&r.errors);
        assert_eq!((lines(&r.output).len(), errs.len()), (25, 25));
        for line in &errs {
            assert_eq!(line["error"]["code"], "batch_expired");
            assert_eq!(line["response"], Value::Null);
        }

        // The requests that ran are the same ones a full run does first.
        let full = run(file(n).as_bytes(), &ctx(0.0), n as u64, n as u64, &CLOCK).unwrap();
        assert_eq!(ids(&lines(&full.output))[..20], ids(&out)[..]);
    }
}
