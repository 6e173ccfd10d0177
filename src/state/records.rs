//! What a job's state records: the job, its plan and chunks, the units of
//! the apply protocol, request records and outcomes.

use serde::{Deserialize, Serialize};

use super::{BilledUsage, EndKind, ResultRef};
use crate::cost::{Estimate, Price};
use crate::tokenize::Encoding;

/// What the job is: written by `plan`, read by commands that take no spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub name: String,
    /// Absolute path of the spec file the job was planned from.
    pub spec_file: String,
    /// The spec as JSON, so `resume` needs no spec file.
    pub spec: serde_json::Value,
    pub created_at: u64,
    pub updated_at: u64,
}

/// One chunk of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// 1-based; chunk N's file is `chunk-0000N.jsonl`.
    pub index: u32,
    /// Path of the request file, relative to the job folder.
    pub file: String,
    pub requests: u64,
    pub bytes: u64,
    pub tokens: u64,
    pub sha256: String,
    /// Position of the chunk's first request among the plan's outstanding requests.
    pub first_seq: u64,
}

/// A saved plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    pub generation: u64,
    /// Hash over spec, prompt files, inputs, price and plan format.
    pub plan_hash: String,
    pub created_at: u64,
    pub model: String,
    pub encoding: Encoding,
    pub rows: u64,
    /// Requests to submit (rows whose fingerprint has no result yet).
    pub outstanding: u64,
    /// Rows whose fingerprint already has a result.
    pub already_done: u64,
    pub prompt_tokens: u64,
    pub bytes: u64,
    pub chunks: Vec<ChunkRecord>,
    pub price: Option<Price>,
    pub estimate: Option<Estimate>,
    pub warnings: Vec<String>,
    /// Rows with at least one gold value (`output.gold`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gold_rows: u64,
}

/// One row's request, as the plan recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// 1-based input row number; the custom id is `r<row>`.
    pub row: u64,
    /// The row key: the `input.id` cell, or the row number.
    pub key: String,
    /// Hash of the request body (32 hex digits).
    pub fingerprint: String,
    pub tokens: u64,
    /// Position among outstanding requests; `None` when already graded.
    pub seq: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The custom id of a row: deterministic and within `^[A-Za-z0-9_-]{1,64}$`.
pub fn custom_id(row: u64) -> String {
    format!("r{row}")
}

/// A result kept by request fingerprint (filled by `apply`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub answer: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Prompt-cache writes and reads of the answer (Anthropic's, and
    /// OpenAI's cached input), billed apart from input; kept so the ledger
    /// a killed direct run missed can be completed from the outcome log.
    /// Absent when zero (and in older logs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Of `output_tokens`, those spent reasoning (OpenAI reasoning models).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
}

/// A request that failed, kept by fingerprint (filled by `apply`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Error code (`batch_expired`, `server_error`, `not_executed`, an HTTP status...).
    pub code: String,
    pub message: String,
    /// Whether sending it again may succeed.
    pub retryable: bool,
    /// How many batch attempts included this request.
    pub attempts: u32,
    /// False when the request never ran in this attempt (its batch expired
    /// or was cancelled first, or it is in no result line).
    #[serde(default = "ran_default", skip_serializing_if = "Clone::clone")]
    pub ran: bool,
    /// The attempts in which the request ran and failed, this one included
    /// (unset in records written before it was kept: see [`Self::runs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u32>,
}

fn ran_default() -> bool {
    true
}

/// The code of the failure that stands for a grant of a fresh set of
/// attempts (`--retry-failed`, `--retry-parse-failures`): recorded before
/// the request is sent again, and the one failure that may replace an
/// answer in the outcome log (an answer that did not parse).
pub const RETRY_REQUESTED: &str = "retry_requested";

impl FailureRecord {
    /// Is this a grant of a fresh set of attempts, not a failure met?
    pub fn is_grant(&self) -> bool {
        self.code == RETRY_REQUESTED
    }

    /// The attempts in which the request ran and failed.
    pub fn runs(&self) -> u32 {
        self.runs
            .unwrap_or(if self.ran { self.attempts } else { 0 })
    }
}

/// Where a unit of work (one batch attempt) is in the apply protocol.
/// Each phase is recorded before the next side effect starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Request file written and hashed; nothing sent.
    Planned,
    /// File uploaded; `file_id` recorded.
    Uploaded,
    /// About to create the batch: after a crash here, look for it before creating.
    Creating,
    /// Batch created; `batch_id` recorded; polling.
    Submitted,
    /// Batch reached a terminal state; result file ids recorded.
    Ended,
    /// Result files downloaded to `results/`.
    Downloaded,
    /// Every line accounted for in the results and failures.
    Merged,
}

/// One batch attempt: a chunk of the plan, or a retry chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// 1-based, unique within the plan generation.
    pub id: u32,
    /// 1 for the plan's chunks, then 2, 3... for retry chunks.
    pub attempt: u32,
    /// Request file, relative to the job folder.
    pub file: String,
    pub sha256: String,
    pub requests: u64,
    pub bytes: u64,
    pub tokens: u64,
    pub phase: Phase,
    /// Batches created for this unit so far (more than one only after `token_limit_exceeded`).
    pub creates: u32,
    pub file_id: Option<String>,
    pub batch_id: Option<String>,
    /// Provider status as last seen (`validating`, `in_progress`, ...).
    pub remote_status: Option<String>,
    pub completed: u64,
    pub failed: u64,
    /// Read from units recorded before `results` (which replaces them).
    #[serde(default, skip_serializing)]
    pub output_file_id: Option<String>,
    #[serde(default, skip_serializing)]
    pub error_file_id: Option<String>,
    /// Why the batch failed as a whole (validation errors), if it did.
    pub batch_error: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Prompt-cache writes and reads, billed apart from input.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Of `output_tokens`, those spent reasoning.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
    pub cost_usd: f64,
    pub submitted_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// Not before this time (Unix seconds) is the unit submitted again (after `token_limit_exceeded`).
    pub not_before: Option<u64>,
    /// The batch's usage is in the `usage.jsonl` ledger.
    #[serde(default)]
    pub ledger_written: bool,
    /// How the batch ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndKind>,
    /// Result files to fetch once the batch has ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ResultRef>,
    /// Usage as the provider billed it for the batch, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed: Option<BilledUsage>,
    /// What this unit's tokens cost at standard (non-batch) prices.
    #[serde(default)]
    pub standard_cost_usd: f64,
    /// When the intent to create the current submit was recorded (Unix s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_at: Option<u64>,
    /// Set while a step of this unit waits out a transient provider failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// The provider's copies of a merged unit's files are still to be
    /// deleted (an earlier delete failed transiently).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleanup_pending: bool,
    /// Set when the unit was given up (its steps kept failing for longer
    /// than `retry.give_up_after`): a failed chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_up: Option<String>,
}

/// A unit waiting out a transient provider failure (HTTP 429/5xx, network)
/// before its step is tried again; recorded so that `status` shows it and a
/// restart keeps counting from where it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// The step that failed (`upload`, `create`, `find`, `status`, `download`, `cancel`).
    pub step: String,
    /// Failures in a row of this unit's steps.
    pub failures: u32,
    /// When the first of them happened (Unix seconds).
    pub since: u64,
    /// When the step is tried again (Unix seconds).
    pub retry_at: u64,
    /// The last error, as shown to the user (no secrets).
    pub last_error: String,
}

impl UnitRecord {
    /// A unit that has not been sent anywhere yet.
    pub fn planned(
        id: u32,
        attempt: u32,
        file: String,
        sha256: String,
        requests: u64,
        bytes: u64,
        tokens: u64,
    ) -> Self {
        UnitRecord {
            id,
            attempt,
            file,
            sha256,
            requests,
            bytes,
            tokens,
            phase: Phase::Planned,
            creates: 0,
            file_id: None,
            batch_id: None,
            remote_status: None,
            completed: 0,
            failed: 0,
            output_file_id: None,
            error_file_id: None,
            batch_error: None,
            input_tokens: 0,
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            reasoning_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            submitted_at: None,
            ended_at: None,
            not_before: None,
            ledger_written: false,
            end: None,
            results: Vec::new(),
            billed: None,
            standard_cost_usd: 0.0,
            intent_at: None,
            backoff: None,
            cleanup_pending: false,
            given_up: None,
        }
    }

    /// The same unit in another phase (tests and table cases).
    pub fn with_phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    /// Result files named by a unit recorded before `results` existed.
    pub(super) fn upgrade(mut self) -> Self {
        if self.results.is_empty() {
            for (name, id) in [
                ("output", &self.output_file_id),
                ("errors", &self.error_file_id),
            ] {
                if let Some(id) = id.as_ref().filter(|i| !i.is_empty()) {
                    self.results.push(ResultRef {
                        name: name.into(),
                        id: id.clone(),
                    });
                }
            }
        }
        self
    }
}
