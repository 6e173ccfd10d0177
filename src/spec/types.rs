//! The job spec as written: the serde types of the YAML, from which the
//! JSON Schema (`batchgrader schema`) is derived. Only `spec/` reads them
//! whole; everything else asks the resolved [`super::CheckedSpec`].

use std::fmt;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::units;

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
    /// Finish by this time: an RFC 3339 time (`2026-12-09T06:00:00Z`, or with an
    /// offset) or a duration counted from the job's first `apply` (`6h`). When the
    /// time left falls under `deadline_margin`, the batches still out are cancelled,
    /// what they finished is collected, and the rows left are sent in the direct
    /// lane at standard prices (within `halt.max_cost_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// How long before the deadline the batches give way to the direct lane.
    /// Default: 15% of the time left at the first `apply`, between 1 and 30 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_margin: Option<String>,
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
    /// A CSV file's field separator, one character (`;`, a tab `"\t"`, `|`). Default `,`.
    /// A CSV output keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1))]
    pub delimiter: Option<String>,
}

impl Input {
    /// The CSV field separator as the reader and the writer take it (the
    /// spec's rules allow one ASCII character).
    pub fn delimiter_byte(&self) -> u8 {
        self.delimiter
            .as_deref()
            .and_then(|d| d.bytes().next())
            .unwrap_or(b',')
    }
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
    /// Prompt caching of the shared prefix (system prompt and examples):
    /// `auto` (the default) asks for it when the prefix is long enough for
    /// the provider to cache; `true` always; `false` never.
    #[serde(default, skip_serializing_if = "CacheSetting::is_auto")]
    pub cache: CacheSetting,
}

/// `prompt.cache`: the word `auto`, or `true` / `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CacheSetting {
    /// `true`: ask for caching whatever the prefix; `false`: never.
    Fixed(bool),
    /// `auto`: ask when the shared prefix is long enough to be cached.
    Word(CacheWord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CacheWord {
    Auto,
}

impl Default for CacheSetting {
    fn default() -> Self {
        CacheSetting::Word(CacheWord::Auto)
    }
}

impl CacheSetting {
    pub fn is_auto(&self) -> bool {
        *self == CacheSetting::default()
    }
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
    /// Input column(s) holding the expected value, to measure how well the
    /// judge agrees: one column for the graded field, or with `schema` a map
    /// from top-level property to column. Empty cells mean "no gold for this
    /// row". Gold columns are never sent to the model and are not part of
    /// any request, so adding or editing them sends nothing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold: Option<Gold>,
}

/// `output.gold`: one column, or a map from schema property to column.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Gold {
    Column(#[schemars(length(min = 1))] String),
    Properties(std::collections::BTreeMap<String, String>),
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
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub chunks: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Most batches submitted and not yet ended at any time (default 4).
    #[serde(default = "default_in_flight")]
    #[schemars(range(min = 1, max = 4294967295u32))]
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
    /// Stop when Cohen's κ between the judge and `output.gold` falls under
    /// this (once `min_gold_rows` gold rows are graded); a finished job under
    /// it exits with its own code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1.0, max = 1.0))]
    pub min_kappa: Option<f64>,
    /// The same with accuracy (a share such as 0.8 or `80%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_accuracy: Option<Rate>,
    /// Gold rows that must be graded before the quality gate is judged (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_gold_rows: Option<u64>,
    /// Judge the gate on the estimate (default) or on the lower end of κ's
    /// 95% interval (`lower_bound`: halts only when the judge is surely under).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_on: Option<GateOn>,
}

/// Which value of κ the quality gate compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateOn {
    #[default]
    Estimate,
    LowerBound,
}
