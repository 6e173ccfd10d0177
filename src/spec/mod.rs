//! The job spec: YAML → checked `JobSpec`.
//!
//! Loading goes raw → validated in one place: parse the YAML, check it
//! against the JSON Schema derived from these types (so the schema file and
//! the code cannot disagree), run the semantic checks the schema cannot
//! express, then deserialize. Every problem found is reported, each with
//! `FILE:LINE:COL: field.path: message`.

mod locate;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use locate::{Seg, dotted, from_pointer};

/// The spec format version this binary reads.
pub const SPEC_VERSION: u32 = 1;

/// A batchgrader job: inputs, prompt, model, chunking, concurrency and halt policy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "batchgrader job spec (version 1)")]
pub struct JobSpec {
    /// Spec format version. Only 1 exists.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Job id: lowercase letters, digits, `_` and `-`. State lives in `<state>/<name>/`.
    #[schemars(regex(pattern = r"^[a-z0-9_-]+$"), length(min = 1, max = 64))]
    pub name: String,
    /// Where requests are sent.
    #[serde(default)]
    pub provider: Provider,
    /// Model name sent in every request, e.g. `gpt-4o-mini`.
    #[schemars(length(min = 1))]
    pub model: String,
    /// The rows to grade.
    pub input: Input,
    /// The system prompt and the per-row user template.
    pub prompt: Prompt,
    /// Extra Chat Completions parameters merged into every request body
    /// (`temperature`, `max_tokens`, `response_format`, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub request: Map<String, Value>,
    /// Where graded rows are written and how answers are parsed.
    pub output: Output,
    /// Limits per chunk (one chunk is one provider batch).
    #[serde(default)]
    pub chunking: Chunking,
    /// How many batches may run at once.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// How often batch status is checked.
    #[serde(default)]
    pub poll: Poll,
    /// Resubmission of failed, expired or missing requests.
    #[serde(default)]
    pub retry: Retry,
    /// When to stop early.
    #[serde(default)]
    pub halt: Halt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI and OpenAI-compatible servers (Azure, LiteLLM).
    #[default]
    Openai,
    /// Anthropic Message Batches.
    Anthropic,
    /// The built-in simulated OpenAI-compatible server (offline, for demos and tests).
    Simulated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderMode {
    /// Files + Batches API, at the batch discount.
    #[default]
    Batch,
    /// Concurrent `/chat/completions` calls, for servers without a batch API.
    Direct,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// `openai` (default), `anthropic` or `simulated`.
    #[serde(default)]
    pub kind: ProviderKind,
    /// `batch` (default) or `direct`.
    #[serde(default)]
    pub mode: ProviderMode,
    /// API base URL, e.g. `https://api.openai.com/v1`. The env var `OPENAI_BASE_URL` overrides it.
    /// In `mode: direct`, a list of replicas of one model: each request goes to the one with
    /// the fewest requests outstanding, and one that keeps failing is left out for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<OneOrMany>,
    /// Name of the environment variable that holds the API key (default `OPENAI_API_KEY`,
    /// or `ANTHROPIC_API_KEY` for `kind: anthropic`).
    /// The key itself never appears in a spec, a state file or a log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub api_key_env: Option<String>,
    /// `anthropic-version` header sent to the Message Batches API (`kind: anthropic` only;
    /// default `2023-06-01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))]
    pub anthropic_version: Option<String>,
    /// Behaviour of the simulated provider (`kind: simulated` only).
    // The schema says "an object" rather than "an object or null", so that a
    // mistake inside the block is reported at its key (with a suggestion for
    // a misspelt one) instead of as a mismatch of the whole block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Simulated")]
    pub simulated: Option<Simulated>,
}

/// How the simulated provider behaves: its batches' timing and failure injection.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Simulated {
    /// The wire protocol it speaks: `openai` (Files + Batches, default) or `anthropic`
    /// (Message Batches).
    #[serde(default)]
    pub api: SimulatedApi,
    /// Time a batch spends validating (default `200ms`).
    #[serde(default = "default_sim_validating")]
    pub validating: String,
    /// Time a batch spends in progress; its request counts grow over it (default `2s`).
    #[serde(default = "default_sim_in_progress")]
    pub in_progress: String,
    /// Time a batch spends finalizing (default `200ms`).
    #[serde(default = "default_sim_validating")]
    pub finalizing: String,
    /// Share of requests that fail with a server error, e.g. `2%` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_failure_rate: Option<Rate>,
    /// Share of API calls answered with 500 or 429 first, to exercise retries (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_error_rate: Option<Rate>,
    /// Share of API calls answered HTTP 429 `rate_limit_exceeded`, with `retry-after` and
    /// `retry-after-ms`, before anything is done (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_rate: Option<Rate>,
    /// Share of API calls answered HTTP 500, 502 or 503 before anything is done (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_error_rate: Option<Rate>,
    /// Share of batch creates that make the batch and then answer 500, as a create that
    /// times out does; a blind retry would make a duplicate (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_commit_error_rate: Option<Rate>,
    /// Every Nth batch created fails validation with `token_limit_exceeded` and no files
    /// (0 or absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_limit_every: Option<u64>,
    /// Every Nth batch created (the same count as `token_limit_every`, which wins when both
    /// are due) ends `expired` with the first half of its requests done and the rest as
    /// `batch_expired` lines (0 or absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_every: Option<u64>,
    /// Share of requests in batches that fail once with HTTP 500 or 503 and succeed when the
    /// same `custom_id` and body is sent again (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_flake_rate: Option<Rate>,
}

/// The protocol of the simulated provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SimulatedApi {
    /// OpenAI's Files + Batches.
    #[default]
    Openai,
    /// Anthropic's Message Batches.
    Anthropic,
}

impl Default for Simulated {
    fn default() -> Self {
        Simulated {
            api: SimulatedApi::Openai,
            validating: default_sim_validating(),
            in_progress: default_sim_in_progress(),
            finalizing: default_sim_validating(),
            request_failure_rate: None,
            http_error_rate: None,
            rate_limit_rate: None,
            server_error_rate: None,
            create_commit_error_rate: None,
            token_limit_every: None,
            expire_every: None,
            request_flake_rate: None,
        }
    }
}

fn default_sim_validating() -> String {
    "200ms".into()
}
fn default_sim_in_progress() -> String {
    "2s".into()
}

impl Provider {
    /// The base URLs the spec names, in order (none: the default).
    pub fn base_urls(&self) -> Vec<String> {
        self.base_url
            .as_ref()
            .map(OneOrMany::to_vec)
            .unwrap_or_default()
    }
}

/// One path or a list of paths.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
    Jsonl,
}

impl Format {
    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Jsonl => "jsonl",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Input file(s), relative to the spec file. CSV needs a header row; JSON is an array of objects; JSONL one object per line.
    pub path: OneOrMany,
    /// Format of every input file; by default taken from each file's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Column holding a unique row key. Default: the row number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    /// System prompt text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// File holding the system prompt, relative to the spec file (instead of `system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_file: Option<String>,
    /// File of examples appended to the system prompt, relative to the spec file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples_file: Option<String>,
    /// User message template; `{{ column }}` is replaced by the row's cell.
    #[schemars(length(min = 1))]
    pub user: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParseMode {
    /// The answer as it came.
    #[default]
    Text,
    /// The first number in the answer.
    Number,
    /// One of `output.labels`.
    Label,
    /// The answer parsed as JSON.
    Json,
    /// The first capture group of `output.pattern`.
    Regex,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Output file, relative to the spec file; format by extension unless `format` is set.
    pub path: String,
    /// Output format; default from the extension of `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Column that receives the model's answer (default `answer`).
    #[serde(default = "default_field")]
    #[schemars(length(min = 1))]
    pub field: String,
    /// How the answer is parsed: text, number, label, json or regex.
    /// With `schema`, answers are JSON checked against it (leave `parse` out or set `json`).
    #[serde(default)]
    pub parse: ParseMode,
    /// A JSON Schema for the answer (an object with `properties`). It is sent as the
    /// provider's structured output (OpenAI `response_format` with `strict: true`,
    /// Anthropic `output_config.format`); every answer is validated against it, and each
    /// top-level property becomes the output column `<field>.<property>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Map<String, Value>>,
    /// File holding the answer's JSON Schema (JSON or YAML), relative to the spec file
    /// (instead of `schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_file: Option<String>,
    /// Allowed answers when `parse: label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Regular expression for `parse: regex`; the first capture group is the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Expected answer length in tokens, for the middle of the cost estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output_tokens: Option<u64>,
    /// Add prompt/completion token columns to the output.
    #[serde(default)]
    pub include_usage: bool,
}

fn default_field() -> String {
    "answer".into()
}

/// A byte size: an integer number of bytes or a string such as `190MB`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Size {
    Bytes(#[schemars(range(min = 1))] u64),
    Text(#[schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]+)?\s*[A-Za-z]*\s*$"))] String),
}

impl Size {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(0) => Err("size must be at least 1 byte".into()),
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => units::parse_size(t),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Chunking {
    /// Most requests in one chunk (the provider's 50,000 is the ceiling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<u64>,
    /// Most bytes of request JSONL in one chunk, e.g. `190MB` (200 MB is the ceiling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Size>,
    /// Most prompt tokens in one chunk; keep it under your enqueued-token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u64>,
    /// Force this many chunks of near-equal size (limits still apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub chunks: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Most batches submitted and not yet ended at any time (default 4).
    #[serde(default = "default_in_flight")]
    #[schemars(range(min = 1))]
    pub max_batches_in_flight: u32,
    /// `mode: direct`: most requests sent and not yet answered at any time (default 64).
    #[serde(default = "default_requests_in_flight")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_requests_in_flight: u32,
    /// `mode: direct`: most requests started per minute, a client-side limit (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    /// `mode: direct`: most prompt plus `max_tokens` tokens started per minute, a
    /// client-side limit (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            max_batches_in_flight: default_in_flight(),
            max_requests_in_flight: default_requests_in_flight(),
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }
}

fn default_requests_in_flight() -> u32 {
    64
}

fn default_in_flight() -> u32 {
    4
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    /// First wait between status checks (default `30s`).
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Longest wait between status checks as the wait grows (default `5m`).
    #[serde(default = "default_max_interval")]
    pub max_interval: String,
}

impl Default for Poll {
    fn default() -> Self {
        Poll {
            interval: default_interval(),
            max_interval: default_max_interval(),
        }
    }
}

fn default_interval() -> String {
    "30s".into()
}
fn default_max_interval() -> String {
    "5m".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts per request in all, counting the first (default 3).
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// A chunk whose provider calls keep failing transiently (rate limits,
    /// server errors, network) for this long becomes a failed chunk, e.g.
    /// `30m` (default `1h`).
    #[serde(default = "default_give_up_after")]
    pub give_up_after: String,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_attempts(),
            give_up_after: default_give_up_after(),
        }
    }
}

fn default_give_up_after() -> String {
    "1h".into()
}

fn default_attempts() -> u32 {
    3
}

/// A rate: `"5%"` or a fraction such as `0.05`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Rate {
    Fraction(#[schemars(range(min = 0.0, max = 1.0))] f64),
    Percent(#[schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$"))] String),
}

impl Rate {
    pub fn fraction(&self) -> Result<f64, String> {
        match self {
            Rate::Fraction(f) => units::parse_fraction(*f),
            Rate::Percent(s) => units::parse_percent_str(s),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Halt {
    /// Stop the job when a chunk's batch fails.
    #[serde(default)]
    pub on_chunk_failure: bool,
    /// Stop when API failures plus parse failures exceed this share of submitted rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_rate: Option<Rate>,
    /// Refuse to start above this estimated upper bound (USD); stop when actual spend passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_cost_usd: Option<f64>,
}

/// A spec that passed every check, with its paths resolved against the
/// spec file's folder and its units parsed.
#[derive(Debug, Clone)]
pub struct CheckedSpec {
    pub spec: JobSpec,
    /// The spec file, as given.
    pub file: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub output_path: PathBuf,
    pub system_file: Option<PathBuf>,
    pub examples_file: Option<PathBuf>,
    pub max_bytes: Option<u64>,
    pub poll_interval: Duration,
    pub poll_max_interval: Duration,
    pub max_failure_rate: Option<f64>,
    /// `retry.give_up_after`.
    pub give_up_after: Duration,
    /// The answer's JSON Schema: `output.schema`, or the content of `output.schema_file`.
    pub schema: Option<Value>,
}

/// One problem in a spec, placed in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Dotted field path, `(root)` for the whole document.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl SpecError {
    pub fn hint(&self) -> Option<String> {
        match self {
            SpecError::Read { .. } => None,
            SpecError::Invalid { problems, .. } => Some(format!(
                "{} problem{} in the spec; `batchgrader schema` prints every allowed key",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            )),
        }
    }
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}: {}: {}",
                path.display(),
                p.line,
                p.column,
                p.field,
                p.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The JSON Schema of the job spec, as `batchgrader schema` prints it.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(JobSpec);
    let mut s = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    s.push('\n');
    s
}

/// Read and check a spec file.
pub fn load(path: &Path) -> Result<CheckedSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check(path, &text)
}

/// Check spec text; `path` names the file in messages and anchors relative paths.
pub fn check(path: &Path, text: &str) -> Result<CheckedSpec, SpecError> {
    let invalid = |problems: Vec<Problem>| SpecError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
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
    if problems.is_empty() {
        problems.extend(request_problems(&json, &locator));
        problems.extend(prompt_problems(path, &json, &locator));
    }
    let mut json = json;
    if problems.is_empty() {
        problems.extend(answer_schema_problems(path, &mut json, &locator));
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
    Ok(resolve(path, spec))
}

/// Where `key` appears a second time in one block of the YAML `text`:
/// 1-based line and column, by indentation (block style, the way specs are
/// written; a repeat in a flow mapping is not found).
fn duplicate_key_place(text: &str, key: &str) -> Option<(usize, usize)> {
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

fn problem_at(locator: &locate::Locator, path: &[Seg], message: String) -> Problem {
    let (line, column) = locator.locate(path);
    Problem {
        line,
        column,
        field: dotted(path),
        message,
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

fn closest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(key, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
        // A key cut short (`max_cost` for `max_cost_usd`) is far from the
        // whole key by edits but plainly the same word.
        .or_else(|| {
            let mut longer = candidates
                .iter()
                .filter(|c| key.len() >= 4 && c.len() > key.len() && c.starts_with(key));
            match (longer.next(), longer.next()) {
                (Some(c), None) => Some(*c),
                _ => None,
            }
        })
}

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

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn friendlier(msg: &str, path: &[Seg]) -> String {
    let field = dotted(path);
    if msg.contains("is not valid under any of the schemas listed in the 'anyOf'") {
        return match field.as_str() {
            "input.path" => "expected a path or a list of paths".into(),
            f if f.ends_with("max_bytes") => {
                "expected a size: bytes as an integer, or text such as 190MB".into()
            }
            f if f.ends_with("_rate") => {
                "expected a percentage such as \"5%\" or a fraction such as 0.05".into()
            }
            _ => msg.to_string(),
        };
    }
    msg.to_string()
}

fn json_at<'a>(json: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = json;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get(k)?,
            Seg::Index(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

fn key_path(keys: &[&str]) -> Vec<Seg> {
    keys.iter().map(|k| Seg::Key((*k).to_string())).collect()
}

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
fn request_problems(json: &Value, locator: &locate::Locator) -> Vec<Problem> {
    let mut out = Vec::new();
    let Some(req) = json.get("request").and_then(Value::as_object) else {
        return out;
    };
    let anthropic = speaks_anthropic(json);
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
fn prompt_problems(spec_path: &Path, json: &Value, locator: &locate::Locator) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(user) = json.pointer("/prompt/user").and_then(Value::as_str)
        && let Err(why) = crate::prompt::Template::parse(user)
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
    Ok(())
}

fn semantic_problems(json: &Value, locator: &locate::Locator) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut check = |keys: &[&str], f: &dyn Fn(&Value) -> Result<(), String>| {
        let path = key_path(keys);
        if let Some(v) = json_at(json, &path)
            && let Err(msg) = f(v)
        {
            out.push(problem_at(locator, &path, msg));
        }
    };
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
    // Direct mode speaks the OpenAI chat completions wire; the Messages
    // API of Anthropic is reached through its batch API here.
    if json_at(json, &key_path(&["provider", "mode"])) == Some(&Value::from("direct"))
        && (json_at(json, &key_path(&["provider", "kind"])) == Some(&Value::from("anthropic"))
            || json
                .pointer("/provider/simulated/api")
                .is_some_and(|a| a == "anthropic"))
    {
        out.push(problem_at(
            locator,
            &key_path(&["provider", "mode"]),
            "direct mode sends OpenAI chat completions; for Anthropic use `mode: batch` (Message Batches), or an OpenAI-compatible gateway (LiteLLM) with `kind: openai`".into(),
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
    if speaks_anthropic(json) {
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
fn answer_schema_problems(
    spec_path: &Path,
    json: &mut Value,
    locator: &locate::Locator,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let Some(output) = json.get("output").and_then(Value::as_object) else {
        return out;
    };
    let kind: ProviderKind = json
        .pointer("/provider/kind")
        .and_then(|k| serde_json::from_value(k.clone()).ok())
        .unwrap_or_default();
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
            let loaded = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))
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
        for key in crate::structured::REQUEST_KEYS {
            if req.contains_key(*key) {
                out.push(problem_at(
                    locator,
                    &key_path(&["request", key]),
                    format!("`{key}` is set from output.schema; remove it here"),
                ));
            }
        }
    }
    for p in crate::structured::strict_problems(kind, &schema) {
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

/// Whether the spec's requests go to a Message Batches API: `kind: anthropic`,
/// or the simulated provider with `api: anthropic`.
fn speaks_anthropic(json: &Value) -> bool {
    let provider = json.get("provider");
    let kind = provider.and_then(|p| p.get("kind")).and_then(Value::as_str);
    let api = provider
        .and_then(|p| p.get("simulated"))
        .and_then(|s| s.get("api"))
        .and_then(Value::as_str);
    kind == Some("anthropic") || (kind == Some("simulated") && api == Some("anthropic"))
}

/// Chat Completions parameters the Messages API does not take, each with
/// its Anthropic equivalent where one exists (Anthropic's OpenAI SDK
/// compatibility page lists what it ignores; the Messages API reference
/// names the equivalents).
const OPENAI_ONLY_KEYS: &[(&str, Option<&str>)] = &[
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
        None => out.push(problem_at(
            locator,
            &key_path(&["request"]),
            "`request.max_tokens` is required by the Anthropic Messages API; add e.g.              `max_tokens: 16` under `request:`"
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

/// Rebuild a checked spec from the copy saved in the job's state (for
/// `resume`, which needs no spec file). Paths resolve against the folder of
/// the spec file the job was planned from, as they did then.
pub fn from_saved(spec_file: &Path, value: Value) -> Result<CheckedSpec, SpecError> {
    let spec: JobSpec = serde_json::from_value(value).map_err(|e| SpecError::Invalid {
        path: spec_file.to_path_buf(),
        problems: vec![Problem {
            line: 1,
            column: 1,
            field: "(saved spec)".into(),
            message: format!("the spec saved in the state cannot be read: {e}"),
        }],
    })?;
    Ok(resolve(spec_file, spec))
}

fn resolve(file: &Path, spec: JobSpec) -> CheckedSpec {
    let base = file.parent().unwrap_or(Path::new(""));
    let rel = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            lexical_clean(&base.join(p))
        }
    };
    // Checked above; the fallbacks cannot be reached.
    let max_bytes = spec
        .chunking
        .max_bytes
        .as_ref()
        .and_then(|s| s.bytes().ok());
    let max_failure_rate = spec
        .halt
        .max_failure_rate
        .as_ref()
        .and_then(|r| r.fraction().ok());
    CheckedSpec {
        inputs: spec.input.path.to_vec().iter().map(|p| rel(p)).collect(),
        output_path: rel(&spec.output.path),
        system_file: spec.prompt.system_file.as_deref().map(rel),
        examples_file: spec.prompt.examples_file.as_deref().map(rel),
        max_bytes,
        poll_interval: units::parse_duration(&spec.poll.interval)
            .unwrap_or(Duration::from_secs(30)),
        poll_max_interval: units::parse_duration(&spec.poll.max_interval)
            .unwrap_or(Duration::from_secs(300)),
        max_failure_rate,
        give_up_after: units::parse_duration(&spec.retry.give_up_after)
            .unwrap_or(Duration::from_secs(3600)),
        schema: spec.output.schema.clone().map(Value::Object),
        file: file.to_path_buf(),
        spec,
    }
}

/// `specs/../out/x.csv` → `out/x.csv`, without touching the file system
/// (the path may not exist yet), so messages show the path people expect.
fn lexical_clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.spec.provider.kind, ProviderKind::Openai);
        assert_eq!(c.spec.concurrency.max_batches_in_flight, 4);
        assert_eq!(c.spec.retry.max_attempts, 3);
        assert_eq!(c.spec.output.field, "answer");
        assert_eq!(c.poll_interval, Duration::from_secs(30));
        assert_eq!(c.poll_max_interval, Duration::from_secs(300));
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
        assert_eq!(c.give_up_after, Duration::from_secs(3600));
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
            (anthropic, "", "request", "`request.max_tokens` is required"),
            (sim, "", "request", "`request.max_tokens` is required"),
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
        assert_eq!(c.poll_interval, Duration::from_secs(10));
        assert_eq!(c.max_failure_rate, Some(0.05));
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
        let s = c.spec.provider.simulated.unwrap();
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
        let saved = serde_json::to_value(&c.spec).unwrap();
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
}
