//! The persisted model and the batch lifecycle.
//!
//! A batch's status is never stored: it is computed from its record and the
//! wall clock ([`view`]), so a restarted server picks up exactly where the old
//! one was. The record only stores facts: when it was created, what the
//! background work found (validation, result files) and when a cancel came.
//! [`next_step`] tells the background driver what work is still owed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::answers::AnswerShape;

/// How long a batch stays in `cancelling` at least.
pub const CANCEL_DELAY_MS: u64 = 300;
/// `expires_at` is creation + the 24 h completion window.
pub const COMPLETION_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Batch input and output files expire after 30 days by default.
pub const FILE_LIFETIME_SECS: u64 = 30 * 24 * 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Completed | Status::Expired | Status::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Phase durations, frozen into each batch at creation so that a restart with
/// another configuration does not rewrite a running batch's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub validating_ms: u64,
    pub in_progress_ms: u64,
    pub finalizing_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the simulated prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, input: u64, output: u64) {
        self.input_tokens += input;
        self.output_tokens += output;
    }
}

/// A fault a batch is chosen for when it is created (`token_limit_every`,
/// `expire_every`); frozen into its record, like its timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchFault {
    /// Validation fails with `token_limit_exceeded`: no file, no usage.
    TokenLimit,
    /// The completion window runs out when half the requests have run.
    Expire,
}

/// The fault for the `ordinal`-th batch created (from 1): every Nth one per
/// setting (0 = never). Both settings count the same creates; a batch due
/// for both fails validation, the earlier of the two faults in a batch's life.
pub fn batch_fault(ordinal: u64, token_limit_every: u64, expire_every: u64) -> Option<BatchFault> {
    let due = |every: u64| every > 0 && ordinal > 0 && ordinal.is_multiple_of(every);
    if due(token_limit_every) {
        Some(BatchFault::TokenLimit)
    } else if due(expire_every) {
        Some(BatchFault::Expire)
    } else {
        None
    }
}

/// One entry of a failed batch's `errors.data`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    pub code: String,
    pub message: String,
    /// 1-based line in the input file; `None` for whole-file problems.
    pub line: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Validation {
    Valid {
        total: u64,
        /// Requests that will end in the error file if they run.
        failures: u64,
        model: Option<String>,
    },
    Invalid {
        errors: Vec<LineError>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validated {
    /// When the validation work finished (it can outlast `validating_ms`).
    pub done_ms: u64,
    pub result: Validation,
}

/// The result files, written once the requests to run are known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ready_ms: u64,
    /// How many requests (in processing order) were run; the rest were cancelled.
    pub executed: u64,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub counts: Counts,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    /// Creation order; the list endpoint sorts on it.
    pub seq: u64,
    pub created_ms: u64,
    pub endpoint: String,
    pub completion_window: String,
    pub input_file_id: String,
    pub metadata: Option<Map<String, Value>>,
    pub timing: Timing,
    /// Frozen with the timing, for the same reason.
    pub request_failure_rate: f64,
    /// Frozen like the failure rate (absent before it existed: none).
    #[serde(default)]
    pub reject_rate: f64,
    #[serde(default)]
    pub request_flake_rate: f64,
    pub seed: u64,
    pub validated: Option<Validated>,
    pub cancel_ms: Option<u64>,
    pub outcome: Option<Outcome>,
    /// Absent in records written before faults existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<BatchFault>,
    /// The shape plain requests are answered in, frozen like the timing;
    /// records written before it existed were answered with grades.
    #[serde(default)]
    pub answers: AnswerShape,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: String,
    pub seq: u64,
    pub bytes: u64,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub filename: String,
    pub purpose: String,
}

/// Lifetime counts, for `/_sim/stats`. Fields added later default to 0, so
/// an older `state.json` still loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub files_uploaded: u64,
    pub files_deleted: u64,
    pub batches_created: u64,
    pub batches_cancelled: u64,
    pub chat_completions: u64,
    /// The tokens of the chat completions answered: what direct mode is
    /// billed, re-sent requests included.
    pub chat_input_tokens: u64,
    pub chat_output_tokens: u64,
    /// Calls answered with an injected 429 or 5xx. They reach the disk with
    /// the next save (an injected error changes nothing else).
    pub injected_429: u64,
    pub injected_5xx: u64,
    /// Creates that saved their batch and then answered 500.
    pub create_commit_errors: u64,
    /// Creates that made a second batch behind their answer (`twin_create_rate`).
    #[serde(default)]
    pub twin_creates: u64,
    /// Batch requests that failed once (`request_flake_rate`).
    pub flaked_requests: u64,
    /// Chat completions answered 400 (`reject_rate`); not in `chat_completions`.
    pub rejected_chats: u64,
}

/// Everything that is saved to `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Db {
    pub version: u32,
    pub next_seq: u64,
    pub counters: Counters,
    pub files: std::collections::BTreeMap<String, FileRecord>,
    pub batches: std::collections::BTreeMap<String, BatchRecord>,
    /// Requests that flaked once (by `batch_file::flake_key`), each with the
    /// batch that flaked it.
    #[serde(default)]
    pub flaked: std::collections::BTreeMap<String, String>,
}

pub const DB_VERSION: u32 = 1;

impl Db {
    pub fn new() -> Self {
        Db {
            version: DB_VERSION,
            ..Db::default()
        }
    }

    pub fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// When each phase ends, once validation has run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Schedule {
    validated_at: u64,
    in_progress_end: u64,
    finalizing_end: u64,
}

impl BatchRecord {
    fn schedule(&self) -> Option<(Schedule, &Validation)> {
        let validated = self.validated.as_ref()?;
        let validated_at = (self.created_ms + self.timing.validating_ms).max(validated.done_ms);
        let in_progress_end = validated_at + self.timing.in_progress_ms;
        Some((
            Schedule {
                validated_at,
                in_progress_end,
                finalizing_end: in_progress_end + self.timing.finalizing_ms,
            },
            &validated.result,
        ))
    }

    /// Requests in a validated batch (0 when invalid or not yet validated).
    pub fn total(&self) -> u64 {
        match self.schedule() {
            Some((_, Validation::Valid { total, .. })) => *total,
            _ => 0,
        }
    }

    /// When the requests run: `(start, duration)` in milliseconds.
    pub fn run_window(&self) -> Option<(u64, u64)> {
        self.schedule()
            .map(|(s, _)| (s.validated_at, s.in_progress_end - s.validated_at))
    }

    /// How many of `total` requests can run before the batch ends: all, or
    /// for a batch chosen to expire the first half (in processing order).
    fn run_limit(&self, total: u64) -> u64 {
        match self.fault {
            Some(BatchFault::Expire) => total / 2,
            _ => total,
        }
    }

    fn expires(&self) -> bool {
        self.fault == Some(BatchFault::Expire)
    }

    /// How many requests have run by `t`: they finish at an even pace over
    /// the `in_progress` phase (an expiring batch stalls at its limit).
    fn done_at(&self, t: u64) -> u64 {
        match self.schedule() {
            Some((s, Validation::Valid { total, .. })) => {
                done_count(*total, &s, t).min(self.run_limit(*total))
            }
            _ => 0,
        }
    }

    /// The number of requests a finished batch runs: all of them (up to an
    /// expiry), or those done when the cancel came.
    fn to_execute(&self) -> Option<u64> {
        let (_, result) = self.schedule()?;
        match (self.cancel_ms, result) {
            (Some(c), _) => Some(self.done_at(c)),
            (None, Validation::Valid { total, .. }) => Some(self.run_limit(*total)),
            (None, Validation::Invalid { .. }) => None,
        }
    }
}

fn done_count(total: u64, s: &Schedule, t: u64) -> u64 {
    if t < s.validated_at {
        0
    } else if t >= s.in_progress_end {
        total
    } else {
        let elapsed = u128::from(t - s.validated_at);
        let span = u128::from(s.in_progress_end - s.validated_at);
        (u128::from(total) * elapsed / span) as u64
    }
}

/// Failures spread evenly over the run, so the counts grow together; no more
/// than `limit` requests are ever done.
fn counts_at(total: u64, failures: u64, limit: u64, s: &Schedule, t: u64) -> Counts {
    let done = done_count(total, s, t).min(limit);
    let failed = (u128::from(done) * u128::from(failures))
        .checked_div(u128::from(total))
        .unwrap_or(0) as u64;
    Counts {
        total,
        completed: done - failed,
        failed,
    }
}

/// A batch as the API shows it at one instant. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub status: Status,
    pub model: Option<String>,
    pub counts: Counts,
    pub usage: Usage,
    pub errors: Option<Vec<LineError>>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub in_progress_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
}

impl View {
    fn validating() -> Self {
        View {
            status: Status::Validating,
            model: None,
            counts: Counts::default(),
            usage: Usage::default(),
            errors: None,
            output_file_id: None,
            error_file_id: None,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
        }
    }

    fn finish(&mut self, status: Status, outcome: &Outcome) {
        self.status = status;
        self.counts = outcome.counts;
        self.usage = outcome.usage;
        self.output_file_id = outcome.output_file_id.clone();
        self.error_file_id = outcome.error_file_id.clone();
    }

    /// When the batch reached a terminal state, if it has.
    pub fn ended_at(&self) -> Option<u64> {
        self.completed_at
            .or(self.failed_at)
            .or(self.expired_at)
            .or(self.cancelled_at)
    }
}

/// The status of `batch` at `now`.
pub fn view(batch: &BatchRecord, now: u64) -> View {
    let mut view = View::validating();
    let scheduled = batch.schedule();
    if let Some((_, Validation::Valid { model, .. })) = scheduled {
        view.model = model.clone();
    }
    if let Some(cancel) = batch.cancel_ms.filter(|&c| c <= now) {
        return cancelled_view(batch, view, cancel, now);
    }
    let Some((s, result)) = scheduled else {
        return view;
    };
    if now < s.validated_at {
        return view;
    }
    match result {
        Validation::Invalid { errors } => {
            view.status = Status::Failed;
            view.failed_at = Some(s.validated_at);
            view.errors = Some(errors.clone());
        }
        Validation::Valid {
            total, failures, ..
        } => {
            view.in_progress_at = Some(s.validated_at);
            let limit = batch.run_limit(*total);
            view.counts = counts_at(*total, *failures, limit, &s, now);
            if now < s.in_progress_end {
                view.status = Status::InProgress;
                return view;
            }
            if batch.expires() {
                // The window ran out with work left. No `finalizing` on the
                // way: the docs do not promise one for `expired`.
                view.status = Status::InProgress;
                if let Some(outcome) = &batch.outcome {
                    let expired_at = s.in_progress_end.max(outcome.ready_ms);
                    if now >= expired_at {
                        view.finish(Status::Expired, outcome);
                        view.expired_at = Some(expired_at);
                    }
                }
                return view;
            }
            view.status = Status::Finalizing;
            view.finalizing_at = Some(s.in_progress_end);
            // `completed` needs the result files, however late they are.
            if let Some(outcome) = &batch.outcome {
                let completed_at = s.finalizing_end.max(outcome.ready_ms);
                if now >= completed_at {
                    view.finish(Status::Completed, outcome);
                    view.completed_at = Some(completed_at);
                }
            }
        }
    }
    view
}

fn cancelled_view(batch: &BatchRecord, mut view: View, cancel: u64, now: u64) -> View {
    view.status = Status::Cancelling;
    view.cancelling_at = Some(cancel);
    if let Some((
        s,
        Validation::Valid {
            total, failures, ..
        },
    )) = batch.schedule()
    {
        if cancel >= s.validated_at {
            view.in_progress_at = Some(s.validated_at);
            view.counts = counts_at(*total, *failures, batch.run_limit(*total), &s, cancel);
        }
        if cancel >= s.in_progress_end && !batch.expires() {
            view.finalizing_at = Some(s.in_progress_end);
        }
    }
    if let Some(outcome) = &batch.outcome
        && Some(outcome.executed) == batch.to_execute()
    {
        let cancelled_at = (cancel + CANCEL_DELAY_MS).max(outcome.ready_ms);
        if now >= cancelled_at {
            view.finish(Status::Cancelled, outcome);
            view.cancelled_at = Some(cancelled_at);
        }
    }
    view
}

/// Background work a batch still needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Validate,
    /// Write the result files for the first `executed` requests in processing order.
    Materialize {
        executed: u64,
    },
    /// Nothing to do before this instant (or before a cancel).
    WaitUntil(u64),
    Done,
}

pub fn next_step(batch: &BatchRecord, now: u64) -> Step {
    let Some((s, result)) = batch.schedule() else {
        return Step::Validate;
    };
    if batch.cancel_ms.is_none()
        && matches!(result, Validation::Valid { .. })
        && now < s.in_progress_end
    {
        return Step::WaitUntil(s.in_progress_end);
    }
    match (batch.to_execute(), &batch.outcome) {
        (None, _) => Step::Done,
        (Some(executed), Some(outcome)) if outcome.executed == executed => Step::Done,
        (Some(executed), _) => Step::Materialize { executed },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn batch() -> BatchRecord {
        BatchRecord {
            id: "batch_sim_1".into(),
            seq: 1,
            created_ms: T0,
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            input_file_id: "file-sim-1".into(),
            metadata: None,
            timing: Timing {
                validating_ms: 100,
                in_progress_ms: 1000,
                finalizing_ms: 100,
            },
            request_failure_rate: 0.0,
            reject_rate: 0.0,
            request_flake_rate: 0.0,
            seed: 0,
            validated: None,
            cancel_ms: None,
            outcome: None,
            fault: None,
            answers: AnswerShape::Free,
        }
    }

    fn valid(done_ms: u64) -> Option<Validated> {
        Some(Validated {
            done_ms,
            result: Validation::Valid {
                total: 10,
                failures: 2,
                model: Some("m".into()),
            },
        })
    }

    fn invalid(done_ms: u64) -> Option<Validated> {
        Some(Validated {
            done_ms,
            result: Validation::Invalid {
                errors: vec![LineError {
                    code: "invalid_json_line".into(),
                    message: "bad".into(),
                    line: Some(2),
                }],
            },
        })
    }

    fn outcome(ready_ms: u64, executed: u64) -> Option<Outcome> {
        Some(Outcome {
            ready_ms,
            executed,
            output_file_id: Some("file-out".into()),
            error_file_id: Some("file-err".into()),
            counts: Counts {
                total: 10,
                completed: executed.saturating_sub(2),
                failed: executed.min(2),
            },
            usage: Usage {
                input_tokens: 100,
                output_tokens: 10,
                cached_tokens: 0,
            },
        })
    }

    fn counts(total: u64, completed: u64, failed: u64) -> Counts {
        Counts {
            total,
            completed,
            failed,
        }
    }

    #[test]
    fn lifecycle_table() {
        type Case = (
            &'static str,
            Option<Validated>,
            Option<u64>,
            Option<Outcome>,
            u64,
            Status,
            Counts,
        );
        let cases: Vec<Case> = vec![
            (
                "fresh",
                None,
                None,
                None,
                0,
                Status::Validating,
                counts(0, 0, 0),
            ),
            (
                "validation late",
                None,
                None,
                None,
                500,
                Status::Validating,
                counts(0, 0, 0),
            ),
            (
                "validated early, window not over",
                valid(T0 + 10),
                None,
                None,
                50,
                Status::Validating,
                counts(0, 0, 0),
            ),
            (
                "in progress start",
                valid(T0 + 10),
                None,
                None,
                100,
                Status::InProgress,
                counts(10, 0, 0),
            ),
            (
                "in progress half",
                valid(T0 + 10),
                None,
                None,
                600,
                Status::InProgress,
                counts(10, 4, 1),
            ),
            (
                "finalizing, no files yet",
                valid(T0 + 10),
                None,
                None,
                1100,
                Status::Finalizing,
                counts(10, 8, 2),
            ),
            (
                "finalizing, files ready",
                valid(T0 + 10),
                None,
                outcome(T0 + 1100, 10),
                1150,
                Status::Finalizing,
                counts(10, 8, 2),
            ),
            (
                "completed",
                valid(T0 + 10),
                None,
                outcome(T0 + 1100, 10),
                1200,
                Status::Completed,
                counts(10, 8, 2),
            ),
            (
                "completed waits for late files",
                valid(T0 + 10),
                None,
                outcome(T0 + 5000, 10),
                1300,
                Status::Finalizing,
                counts(10, 8, 2),
            ),
            (
                "late validation shifts everything",
                valid(T0 + 400),
                None,
                None,
                600,
                Status::InProgress,
                counts(10, 2, 0),
            ),
            (
                "failed after window",
                invalid(T0 + 10),
                None,
                None,
                100,
                Status::Failed,
                counts(0, 0, 0),
            ),
            (
                "failed not before window",
                invalid(T0 + 10),
                None,
                None,
                99,
                Status::Validating,
                counts(0, 0, 0),
            ),
            (
                "cancelling mid-run freezes counts",
                valid(T0 + 10),
                Some(T0 + 600),
                None,
                2000,
                Status::Cancelling,
                counts(10, 4, 1),
            ),
            (
                "cancelled",
                valid(T0 + 10),
                Some(T0 + 600),
                outcome(T0 + 650, 5),
                900,
                Status::Cancelled,
                counts(10, 3, 2),
            ),
            (
                "cancelled not before delay",
                valid(T0 + 10),
                Some(T0 + 600),
                outcome(T0 + 650, 5),
                899,
                Status::Cancelling,
                counts(10, 4, 1),
            ),
            (
                "stale outcome is ignored",
                valid(T0 + 10),
                Some(T0 + 600),
                outcome(T0 + 650, 10),
                5000,
                Status::Cancelling,
                counts(10, 4, 1),
            ),
            (
                "cancel while validating",
                None,
                Some(T0 + 20),
                None,
                30,
                Status::Cancelling,
                counts(0, 0, 0),
            ),
            (
                "cancel in the future is not seen",
                valid(T0 + 10),
                Some(T0 + 600),
                None,
                300,
                Status::InProgress,
                counts(10, 2, 0),
            ),
        ];
        for (name, validated, cancel_ms, outcome, at, status, expected) in cases {
            let b = BatchRecord {
                validated,
                cancel_ms,
                outcome,
                ..batch()
            };
            let v = view(&b, T0 + at);
            assert_eq!((v.status, v.counts), (status, expected), "{name}");
        }
    }

    #[test]
    fn timestamps_follow_the_schedule() {
        let b = BatchRecord {
            validated: valid(T0 + 10),
            outcome: outcome(T0 + 1100, 10),
            ..batch()
        };
        let v = view(&b, T0 + 10_000);
        assert_eq!(v.in_progress_at, Some(T0 + 100));
        assert_eq!(v.finalizing_at, Some(T0 + 1100));
        assert_eq!(v.completed_at, Some(T0 + 1200));
        assert_eq!(v.output_file_id.as_deref(), Some("file-out"));
        assert_eq!(v.usage.input_tokens, 100);
        assert_eq!(v.model.as_deref(), Some("m"));
        assert_eq!(
            (v.failed_at, v.cancelling_at, v.cancelled_at),
            (None, None, None)
        );

        let early = view(&b, T0 + 500);
        assert_eq!(early.output_file_id, None);
        assert_eq!(early.finalizing_at, None);

        let failed = view(
            &BatchRecord {
                validated: invalid(T0 + 10),
                ..batch()
            },
            T0 + 100,
        );
        assert_eq!(failed.failed_at, Some(T0 + 100));
        assert_eq!(failed.errors.unwrap()[0].line, Some(2));

        let cancelled = view(
            &BatchRecord {
                validated: valid(T0 + 10),
                cancel_ms: Some(T0 + 1150),
                outcome: outcome(T0 + 1100, 10),
                ..batch()
            },
            T0 + 2000,
        );
        assert_eq!(cancelled.status, Status::Cancelled);
        assert_eq!(cancelled.finalizing_at, Some(T0 + 1100));
        assert_eq!(cancelled.cancelling_at, Some(T0 + 1150));
        assert_eq!(cancelled.cancelled_at, Some(T0 + 1450));
        assert_eq!(cancelled.completed_at, None);
    }

    #[test]
    fn next_step_table() {
        type Case = (
            &'static str,
            Option<Validated>,
            Option<u64>,
            Option<Outcome>,
            u64,
            Step,
        );
        let cases: Vec<Case> = vec![
            ("validate first", None, None, None, 0, Step::Validate),
            (
                "validate even when cancelled",
                None,
                Some(T0),
                None,
                0,
                Step::Validate,
            ),
            (
                "wait for the run",
                valid(T0 + 10),
                None,
                None,
                50,
                Step::WaitUntil(T0 + 1100),
            ),
            (
                "write all at finalizing",
                valid(T0 + 10),
                None,
                None,
                1100,
                Step::Materialize { executed: 10 },
            ),
            (
                "done",
                valid(T0 + 10),
                None,
                outcome(T0 + 1100, 10),
                1100,
                Step::Done,
            ),
            (
                "invalid needs nothing",
                invalid(T0 + 10),
                None,
                None,
                5000,
                Step::Done,
            ),
            (
                "cancel mid-run",
                valid(T0 + 10),
                Some(T0 + 600),
                None,
                600,
                Step::Materialize { executed: 5 },
            ),
            (
                "cancel before the run",
                valid(T0 + 10),
                Some(T0 + 50),
                None,
                50,
                Step::Materialize { executed: 0 },
            ),
            (
                "cancel an invalid batch",
                invalid(T0 + 10),
                Some(T0 + 50),
                None,
                50,
                Step::Materialize { executed: 0 },
            ),
            (
                "cancel redoes stale files",
                valid(T0 + 10),
                Some(T0 + 600),
                outcome(T0 + 500, 10),
                700,
                Step::Materialize { executed: 5 },
            ),
            (
                "cancel while finalizing keeps files",
                valid(T0 + 10),
                Some(T0 + 1150),
                outcome(T0 + 1100, 10),
                1150,
                Step::Done,
            ),
        ];
        for (name, validated, cancel_ms, outcome, at, step) in cases {
            let b = BatchRecord {
                validated,
                cancel_ms,
                outcome,
                ..batch()
            };
            assert_eq!(next_step(&b, T0 + at), step, "{name}");
        }
    }

    #[test]
    fn batch_fault_every_nth() {
        use BatchFault::{Expire, TokenLimit};
        let cases = [
            (1, 0, 0, None),
            (5, 0, 0, None),
            (1, 1, 0, Some(TokenLimit)),
            (1, 2, 0, None),
            (2, 2, 0, Some(TokenLimit)),
            (3, 2, 0, None),
            (4, 2, 0, Some(TokenLimit)),
            (3, 0, 3, Some(Expire)),
            // Both due: the token limit, which strikes first in a batch's life.
            (3, 3, 4, Some(TokenLimit)),
            (4, 3, 4, Some(Expire)),
            (8, 3, 4, Some(Expire)),
            (12, 3, 4, Some(TokenLimit)),
            (7, 3, 4, None),
            (0, 1, 1, None),
        ];
        for (ordinal, token_limit_every, expire_every, expected) in cases {
            assert_eq!(
                batch_fault(ordinal, token_limit_every, expire_every),
                expected,
                "{ordinal} {token_limit_every} {expire_every}"
            );
        }
    }

    #[test]
    fn an_expiring_batch_stalls_at_half_and_expires_at_the_end_of_its_run() {
        let expiring = |outcome: Option<Outcome>| BatchRecord {
            validated: valid(T0 + 10),
            outcome,
            fault: Some(BatchFault::Expire),
            ..batch()
        };
        let b = expiring(None);
        // Half of 10 requests can run; the counts stop growing there.
        assert_eq!(view(&b, T0 + 400).counts, counts(10, 3, 0));
        for at in [600, 900, 1099] {
            let v = view(&b, T0 + at);
            assert_eq!((v.status, v.counts), (Status::InProgress, counts(10, 4, 1)));
        }
        assert_eq!(next_step(&b, T0 + 50), Step::WaitUntil(T0 + 1100));
        assert_eq!(next_step(&b, T0 + 1100), Step::Materialize { executed: 5 });
        // Until its files are written it is still in progress, never finalizing.
        let v = view(&b, T0 + 1500);
        assert_eq!((v.status, v.finalizing_at), (Status::InProgress, None));

        let b = expiring(outcome(T0 + 1120, 5));
        assert_eq!(next_step(&b, T0 + 1120), Step::Done);
        assert_eq!(view(&b, T0 + 1110).status, Status::InProgress);
        let v = view(&b, T0 + 1120);
        assert_eq!(v.status, Status::Expired);
        assert_eq!(v.expired_at, Some(T0 + 1120));
        assert_eq!(v.ended_at(), Some(T0 + 1120));
        assert_eq!(v.counts, counts(10, 3, 2));
        assert_eq!(v.output_file_id.as_deref(), Some("file-out"));
        assert_eq!((v.completed_at, v.finalizing_at), (None, None));

        // A cancel before the expiry wins, with what had run by then.
        let cancelled = BatchRecord {
            cancel_ms: Some(T0 + 300),
            ..expiring(None)
        };
        assert_eq!(
            next_step(&cancelled, T0 + 300),
            Step::Materialize { executed: 2 }
        );
    }

    #[test]
    fn ended_at_is_the_terminal_timestamp() {
        let done = BatchRecord {
            validated: valid(T0 + 10),
            outcome: outcome(T0 + 1100, 10),
            ..batch()
        };
        assert_eq!(view(&done, T0 + 500).ended_at(), None);
        assert_eq!(view(&done, T0 + 5000).ended_at(), Some(T0 + 1200));
        let failed = BatchRecord {
            validated: invalid(T0 + 10),
            ..batch()
        };
        assert_eq!(view(&failed, T0 + 5000).ended_at(), Some(T0 + 100));
    }

    #[test]
    fn state_from_before_the_faults_still_loads() {
        let mut json = serde_json::to_value(batch()).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("fault");
        object.remove("request_flake_rate");
        let b: BatchRecord = serde_json::from_value(json).unwrap();
        assert_eq!((b.fault, b.request_flake_rate), (None, 0.0));
        let db: Db = serde_json::from_str(
            r#"{"version": 1, "next_seq": 4, "counters": {},
            "files": {}, "batches": {}}"#,
        )
        .unwrap();
        assert!(db.flaked.is_empty());
        let counters: Counters = serde_json::from_str(r#"{"batches_created": 3}"#).unwrap();
        assert_eq!((counters.batches_created, counters.injected_429), (3, 0));
    }

    #[test]
    fn zero_durations_finish_at_once() {
        let b = BatchRecord {
            timing: Timing {
                validating_ms: 0,
                in_progress_ms: 0,
                finalizing_ms: 0,
            },
            validated: valid(T0),
            ..batch()
        };
        assert_eq!(view(&b, T0).status, Status::Finalizing);
        assert_eq!(view(&b, T0).counts, counts(10, 8, 2));
        assert_eq!(next_step(&b, T0), Step::Materialize { executed: 10 });
    }
}
