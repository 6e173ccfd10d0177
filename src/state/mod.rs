//! The persistent state of a job: `<state>/<job>/`.
//!
//! Layout: `db/` (sled: job, plan, units), `outcomes.jsonl` (results and
//! failures by request fingerprint), `chunks/plan-<generation>/` (the plan's
//! request files `chunk-NNNNN.jsonl` and its per-row records
//! `requests.idx`/`.keys`),
//! `results/` (downloaded result files), `status.json`, `events.jsonl`, and
//! `lock` (held while a command works on the job).
//!
//! sled stays behind this module's API. Plans are written by generation: a
//! new plan's files are complete on disk before the single `plan` record
//! switches to it, so a crash at any point leaves either the old plan or the
//! new one, never a mix.

pub mod chunkfile;
pub mod journal;
pub mod layout;
mod outcome_index;
mod outcomes;
pub mod requests;
mod window;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::cost::{Estimate, Price};
pub use crate::provider::batch::{BilledUsage, EndKind, ResultRef};
use crate::tokenize::Encoding;
pub use layout::Layout;

/// Version of the on-disk layout. A binary refuses state newer than it knows.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "job `{job}` is in use by another batchgrader process ({holder}); it may be applying the job right now"
    )]
    Locked { job: String, holder: String },
    #[error(
        "state of job `{job}` has format version {found}; this batchgrader understands up to {FORMAT_VERSION}"
    )]
    TooNew { job: String, found: u32 },
    #[error("state store {} failed: {message}", dir.display())]
    Db { dir: PathBuf, message: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state of job `{job}` is damaged: {message}")]
    Corrupt { job: String, message: String },
    #[error("no job `{job}` in {}", root.display())]
    NoJob { job: String, root: PathBuf },
    /// A file of the state is damaged; `repair` says how to mend it.
    #[error("state of job `{job}` is damaged: {}: {message}", file.display())]
    Damaged {
        job: String,
        file: PathBuf,
        message: String,
        repair: String,
    },
}

impl StateError {
    pub fn hint(&self) -> Option<String> {
        match self {
            StateError::Locked { .. } => Some(
                "wait for it to finish, or use `batchgrader status` to watch it; if no such process exists, the lock is released automatically"
                    .into(),
            ),
            StateError::TooNew { .. } => Some("upgrade batchgrader to work on this job".into()),
            StateError::Damaged { repair, .. } => Some(repair.clone()),
            StateError::Db { dir, .. } => Some(format!(
                "the job's database is {}; if another program holds or changed it, stop that program; if it is damaged, move the job's folder aside and plan the job again (the old folder keeps its results/ and events.jsonl, which name every batch sent)",
                dir.display()
            )),
            StateError::NoJob { .. } => {
                Some("run `batchgrader plan SPEC` first, or pass --state to point at the right folder".into())
            }
            _ => None,
        }
    }
}

fn db_err(dir: &Path) -> impl Fn(sled::Error) -> StateError + '_ {
    move |e| StateError::Db {
        dir: dir.to_path_buf(),
        message: db_message(&e),
    }
}

/// sled's own text for corruption is Rust debug output (`Read corrupted
/// data at file offset None backtrace ()`): say it in words.
fn db_message(e: &sled::Error) -> String {
    match e {
        sled::Error::Corruption { .. } => {
            "its files are damaged (the database found corrupted data)".into()
        }
        sled::Error::Io(io) => io.to_string(),
        sled::Error::Unsupported(s) => s.clone(),
        sled::Error::ReportableBug(s) => format!("internal error of the database: {s}"),
        sled::Error::CollectionNotFound(_) => "a table of the database is missing".into(),
    }
}

/// Restrict `path` to its owner (best effort: a file system without Unix
/// modes keeps its own rules).
pub fn owner_only(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

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

pub use outcomes::Outcome;

/// Writes a new plan's request records into its folder.
pub use requests::Lookup as RequestLookup;
pub use requests::Writer as RequestWriter;

/// The custom id of a row: deterministic and within `^[A-Za-z0-9_-]{1,64}$`.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn custom_id(row: u64) -> String {
    format!("r{row}")
}

/// A result kept by request fingerprint (filled by `apply`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub answer: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
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

impl FailureRecord {
    /// The attempts in which the request ran and failed.
    pub fn runs(&self) -> u32 {
        self.runs
            .unwrap_or(if self.ran { self.attempts } else { 0 })
    }
}

/// Appends outcomes to a job's log from any thread; each call is one write
/// and one fsync, so a caller that gathers many answers into one call
/// (a group commit) pays one disk flush for all of them.
pub struct OutcomeAppender {
    log: Arc<Mutex<Option<outcomes::Log>>>,
    path: PathBuf,
}

impl OutcomeAppender {
    /// Append `entries` and make them durable before returning.
    pub fn append(&self, entries: &[(String, Outcome)]) -> Result<(), StateError> {
        let mut guard = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let log = guard.as_mut().expect("loaded by outcome_appender");
        log.append(entries).map_err(|source| StateError::Io {
            action: "append to",
            path: self.path.clone(),
            source,
        })
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
    /// Prompt-cache writes and reads (Anthropic), billed apart from input.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
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
    fn upgrade(mut self) -> Self {
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

/// An open job folder, locked for this process.
pub struct JobStore {
    name: String,
    dir: PathBuf,
    db: sled::Db,
    /// Loaded on first use: `plan` and `status` never need the index.
    outcomes: Arc<Mutex<Option<outcomes::Log>>>,
    units: sled::Tree,
    /// Open request files of one generation, for lookups by row.
    lookup: Mutex<Option<(u64, requests::Lookup)>>,
    layout: Layout,
    _lock: File,
}

const KEY_VERSION: &[u8] = b"format_version";
const KEY_JOB: &[u8] = b"job";
const KEY_PLAN: &[u8] = b"plan";
const KEY_CANCELLED: &[u8] = b"cancelled";
/// The length of `outcomes.jsonl` after the last append this state knows
/// of: a shorter file was cut or emptied.
const KEY_OUTCOMES_LEN: &[u8] = b"outcomes_len";

impl JobStore {
    /// Open (creating if needed) the job's folder and take its lock.
    pub fn open(root: &Path, job: &str) -> Result<JobStore, StateError> {
        let layout = Layout::new(root, job);
        let dir = layout.dir().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            action: "create state folder",
            path: dir.clone(),
            source,
        })?;
        // The job folder holds prompts, answers and the spec: the owner's
        // only (0700), whatever the umask; files inside are then out of
        // anyone else's reach, whatever their own mode.
        owner_only(&dir, 0o700);
        let lock = take_lock(&layout.lock(), job)?;
        let db_dir = layout.db();
        let db = open_db(&db_dir)?;
        let version = db.get(KEY_VERSION).map_err(db_err(&db_dir))?;
        match version {
            None => {
                db.insert(KEY_VERSION, &FORMAT_VERSION.to_be_bytes())
                    .map_err(db_err(&db_dir))?;
            }
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                    StateError::Corrupt {
                        job: job.into(),
                        message: "format version is unreadable".into(),
                    }
                })?;
                if found > FORMAT_VERSION {
                    return Err(StateError::TooNew {
                        job: job.into(),
                        found,
                    });
                }
            }
        }
        let units = db.open_tree("units").map_err(db_err(&db_dir))?;
        Ok(JobStore {
            name: job.to_string(),
            dir,
            db,
            outcomes: Arc::new(Mutex::new(None)),
            units,
            lookup: Mutex::new(None),
            layout,
            _lock: lock,
        })
    }

    /// Open an existing job; an error naming the job when there is none.
    pub fn open_existing(root: &Path, job: &str) -> Result<JobStore, StateError> {
        if !Layout::new(root, job).db().exists() {
            return Err(StateError::NoJob {
                job: job.into(),
                root: root.to_path_buf(),
            });
        }
        JobStore::open(root, job)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every path of the job folder.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn err(&self) -> impl Fn(sled::Error) -> StateError + '_ {
        db_err(&self.dir)
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StateError> {
        match self.db.get(key).map_err(self.err())? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        job: self.name.clone(),
                        message: format!("record `{}`: {e}", String::from_utf8_lossy(key)),
                    })
            }
        }
    }

    pub fn job(&self) -> Result<Option<JobRecord>, StateError> {
        self.get_json(KEY_JOB)
    }

    pub fn plan(&self) -> Result<Option<PlanRecord>, StateError> {
        self.get_json(KEY_PLAN)
    }

    /// Run `f` on the outcome log, loading it on first use.
    fn with_outcomes<T>(
        &self,
        f: impl FnOnce(&mut outcomes::Log) -> std::io::Result<T>,
    ) -> Result<T, StateError> {
        let io = |source| StateError::Io {
            action: "use",
            path: self.dir.join(outcomes::FILE),
            source,
        };
        let mut guard = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(outcomes::Log::open(&self.dir).map_err(io)?);
        }
        f(guard.as_mut().expect("loaded above")).map_err(io)
    }

    /// Is the latest outcome of this fingerprint (as a 128-bit number) a
    /// success? Answered from the outcome index on disk.
    pub fn succeeded(&self, fingerprint: u128) -> Result<bool, StateError> {
        self.with_outcomes(|log| log.succeeded(fingerprint))
    }

    /// Size the outcome index for a job of `requests` requests up front.
    pub fn reserve_outcomes(&self, requests: u64) -> Result<(), StateError> {
        self.with_outcomes(|log| log.reserve(requests))
    }

    /// The latest outcome of a request, by fingerprint.
    pub fn outcome(&self, fingerprint: &str) -> Result<Option<Outcome>, StateError> {
        self.with_outcomes(|log| log.get(fingerprint))
    }

    pub fn result(&self, fingerprint: &str) -> Result<Option<ResultRecord>, StateError> {
        Ok(match self.outcome(fingerprint)? {
            Some(Outcome::Success(r)) => Some(r),
            _ => None,
        })
    }

    pub fn failure(&self, fingerprint: &str) -> Result<Option<FailureRecord>, StateError> {
        Ok(match self.outcome(fingerprint)? {
            Some(Outcome::Failure(f)) => Some(f),
            _ => None,
        })
    }

    /// Keep a result by fingerprint, durably.
    pub fn record_result(
        &self,
        fingerprint: &str,
        result: &ResultRecord,
    ) -> Result<(), StateError> {
        let entry = (fingerprint.to_string(), Outcome::Success(result.clone()));
        self.add_outcomes(&[entry])
    }

    /// A handle that appends to the outcome log from another thread (direct
    /// mode's group commit), loading the log first.
    pub fn outcome_appender(&self) -> Result<OutcomeAppender, StateError> {
        self.with_outcomes(|_| Ok(()))?;
        Ok(OutcomeAppender {
            log: self.outcomes.clone(),
            path: self.dir.join(outcomes::FILE),
        })
    }

    /// Record the outcome of every line of one unit's results (durably, in
    /// one append), then the unit's new record.
    pub fn merge_outcomes(
        &self,
        successes: &[(String, ResultRecord)],
        failures: &[(String, FailureRecord)],
        unit: &UnitRecord,
        generation: u64,
    ) -> Result<(), StateError> {
        let entries: Vec<(String, Outcome)> = successes
            .iter()
            .map(|(fp, r)| (fp.clone(), Outcome::Success(r.clone())))
            .chain(
                failures
                    .iter()
                    .map(|(fp, f)| (fp.clone(), Outcome::Failure(f.clone()))),
            )
            .collect();
        let len = self.with_outcomes(|log| log.append(&entries).map(|()| log.bytes()))?;
        self.db
            .insert(KEY_OUTCOMES_LEN, &len.to_be_bytes())
            .map_err(self.err())?;
        self.put_unit(generation, unit)
    }

    /// What is wrong with `outcomes.jsonl`, if anything: damaged lines, or a
    /// file shorter than the state knows it to be (cut or emptied).
    pub fn outcomes_damage(&self) -> Result<Option<StateError>, StateError> {
        let recorded = self
            .db
            .get(KEY_OUTCOMES_LEN)
            .map_err(self.err())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        // Checked from the file itself: a damaged log must not be indexed
        // (a command that fails leaves every state file as it was).
        let (scan, len) = outcomes::scan(&self.dir).map_err(|source| StateError::Io {
            action: "read",
            path: self.dir.join(outcomes::FILE),
            source,
        })?;
        let mut problems = Vec::new();
        if len < recorded {
            problems.push(format!(
                "it holds {len} bytes, but {recorded} were written to it (cut or emptied)"
            ));
        }
        if let Some(first) = scan.first.first() {
            problems.push(format!(
                "{} damaged line{} (first: line {}, {})",
                scan.count,
                if scan.count == 1 { "" } else { "s" },
                first.line,
                first.why
            ));
        }
        if problems.is_empty() {
            return Ok(None);
        }
        Ok(Some(StateError::Damaged {
            job: self.name.clone(),
            file: self.dir.join(outcomes::FILE),
            message: problems.join("; "),
            repair: format!(
                "run `batchgrader resume {}`: it sets the damaged file aside and rebuilds the outcomes from the downloaded results (results/), downloading again or re-sending only what they cannot give",
                self.name
            ),
        }))
    }

    /// Set a damaged outcome log aside (`outcomes.jsonl.damaged-<time>`) and
    /// start a new one from its good lines. Returns the file set aside.
    pub fn rebuild_outcomes(&self) -> Result<PathBuf, StateError> {
        let aside = self
            .dir
            .join(format!("{}.damaged-{}", outcomes::FILE, now_secs()));
        let len = self.with_outcomes(|log| log.rebuild(&aside).map(|()| log.bytes()))?;
        self.db
            .insert(KEY_OUTCOMES_LEN, &len.to_be_bytes())
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(aside)
    }

    /// Add outcomes (a repair), durably.
    pub fn add_outcomes(&self, entries: &[(String, Outcome)]) -> Result<(), StateError> {
        let len = self.with_outcomes(|log| log.append(entries).map(|()| log.bytes()))?;
        self.db
            .insert(KEY_OUTCOMES_LEN, &len.to_be_bytes())
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    /// The files a plan lives in (its chunk files and request records) are
    /// all there, with the sizes the plan recorded. Missing or cut files are
    /// damage to the state, never "the input changed".
    pub fn check_plan_files(&self, plan: &PlanRecord, spec_file: &str) -> Result<(), StateError> {
        let damaged = |file: PathBuf, message: String| StateError::Damaged {
            job: self.name.clone(),
            file,
            message,
            repair: format!(
                "run `batchgrader apply {spec_file}` to plan the job again: rows already graded keep their answers (outcomes.jsonl)"
            ),
        };
        if let Err((file, message)) =
            requests::check_files(&self.plan_dir(plan.generation), plan.rows)
        {
            return Err(damaged(file, message));
        }
        for c in &plan.chunks {
            let path = self.layout.resolve(&c.file);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == c.bytes => {}
                Ok(m) => {
                    return Err(damaged(
                        path,
                        format!("holds {} bytes, the plan wrote {}", m.len(), c.bytes),
                    ));
                }
                Err(e) => return Err(damaged(path, format!("cannot be read ({e})"))),
            }
        }
        Ok(())
    }

    /// All units of a plan generation, by id.
    pub fn units(&self, generation: u64) -> Result<Vec<UnitRecord>, StateError> {
        let mut out = Vec::new();
        for kv in self.units.scan_prefix(generation.to_be_bytes()) {
            let (_, v) = kv.map_err(self.err())?;
            let u: UnitRecord = serde_json::from_slice(&v).map_err(|e| StateError::Corrupt {
                job: self.name.clone(),
                message: format!("unit record: {e}"),
            })?;
            out.push(u.upgrade());
        }
        Ok(out)
    }

    /// Record a unit's new state durably: the crash protocol relies on this
    /// write reaching the disk before the next side effect.
    pub fn put_unit(&self, generation: u64, unit: &UnitRecord) -> Result<(), StateError> {
        let mut key = [0u8; 12];
        key[..8].copy_from_slice(&generation.to_be_bytes());
        key[8..].copy_from_slice(&unit.id.to_be_bytes());
        self.units
            .insert(key, serde_json::to_vec(unit).expect("records serialize"))
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    /// The folder of a plan generation: its chunk and request files.
    pub fn plan_dir(&self, generation: u64) -> PathBuf {
        self.layout.plan_dir(generation)
    }

    /// One request record of the current plan's generation.
    pub fn request(&self, generation: u64, row: u64) -> Result<Option<RequestRecord>, StateError> {
        let io = |source| StateError::Io {
            action: "read request records in",
            path: self.plan_dir(generation),
            source,
        };
        let mut cached = self.lookup.lock().unwrap_or_else(|p| p.into_inner());
        if cached.as_ref().is_none_or(|(g, _)| *g != generation) {
            *cached = Some((
                generation,
                requests::Lookup::open(&self.plan_dir(generation)).map_err(io)?,
            ));
        }
        let (_, lookup) = cached.as_ref().expect("just set");
        lookup.get(row).map_err(io)
    }

    /// The request records of a generation, in row order.
    pub fn requests(
        &self,
        generation: u64,
    ) -> impl Iterator<Item = Result<RequestRecord, StateError>> + '_ {
        let dir = self.plan_dir(generation);
        let err = move |source| StateError::Io {
            action: "read request records in",
            path: dir.clone(),
            source,
        };
        let records = requests::Records::open(&self.plan_dir(generation));
        let (records, first_err) = match records {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(err.clone()(e))),
        };
        first_err.map(Err).into_iter().chain(
            records
                .into_iter()
                .flatten()
                .map(move |r| r.map_err(err.clone())),
        )
    }

    /// Drop the units of a generation that is no longer the plan.
    fn discard_units(&self, generation: u64) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        for k in self.units.scan_prefix(generation.to_be_bytes()).keys() {
            batch.remove(k.map_err(self.err())?);
        }
        self.units.apply_batch(batch).map_err(self.err())
    }

    /// Make `plan` the job's plan (its files are already in `plan_dir`):
    /// switch the plan record in one write, then drop the previous
    /// generation's units.
    pub fn commit_plan(&self, job: &JobRecord, plan: &PlanRecord) -> Result<(), StateError> {
        let previous = self.plan()?.map(|p| p.generation);
        self.db.flush().map_err(self.err())?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_JOB, serde_json::to_vec(job).expect("records serialize"));
        batch.insert(
            KEY_PLAN,
            serde_json::to_vec(plan).expect("records serialize"),
        );
        self.db.apply_batch(batch).map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        if let Some(old) = previous.filter(|g| *g != plan.generation) {
            self.discard_units(old)?;
            self.db.flush().map_err(self.err())?;
        }
        Ok(())
    }

    /// When `cancel` stopped the job (Unix seconds); `None` while it may run.
    pub fn cancelled_at(&self) -> Result<Option<u64>, StateError> {
        self.get_json(KEY_CANCELLED)
    }

    /// Record (or clear) that the user cancelled the job.
    pub fn set_cancelled(&self, at: Option<u64>) -> Result<(), StateError> {
        match at {
            Some(t) => self
                .db
                .insert(
                    KEY_CANCELLED,
                    serde_json::to_vec(&t).expect("numbers serialize"),
                )
                .map(|_| ()),
            None => self.db.remove(KEY_CANCELLED).map(|_| ()),
        }
        .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }

    /// Update only the job record (e.g. a new spec path with an unchanged plan).
    pub fn put_job(&self, job: &JobRecord) -> Result<(), StateError> {
        self.db
            .insert(KEY_JOB, serde_json::to_vec(job).expect("records serialize"))
            .map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        Ok(())
    }
}

/// Open the sled database. Our own lock is already held, and every command
/// opens a job's store once, so sled's own lock is free.
fn open_db(db_dir: &Path) -> Result<sled::Db, StateError> {
    remove_unfinished_snapshots(db_dir);
    sled::Config::new()
        .path(db_dir)
        .cache_capacity(16 << 20)
        .open()
        .map_err(db_err(db_dir))
}

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and
/// renames it to `snap.<lsn>`: the rename is the commit. A process killed
/// before the rename leaves the unfinished file, and sled's next open takes
/// it for the newest snapshot, fails its checksum and refuses the whole
/// database as corrupt, for good (spacejam/sled#1527; found by bench/chaos,
/// which killed a run during an open). The unfinished file never held a
/// committed snapshot, so it goes before sled opens: the last renamed
/// snapshot and the log after it are what sled then reads.
fn remove_unfinished_snapshots(db_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(db_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Take the job's lock file. The OS releases it when the process dies, so a
/// crash never leaves a stale lock; the file's text names the holder.
fn take_lock(path: &Path, job: &str) -> Result<File, StateError> {
    let path = path.to_path_buf();
    let io = |action, source| StateError::Io {
        action,
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("open lock file", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StateError::Locked {
                job: job.into(),
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", e)),
    }
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    file.set_len(0).map_err(|e| io("write lock file", e))?;
    file.rewind().map_err(|e| io("write lock file", e))?;
    write!(file, "pid {} since {since}", std::process::id())
        .map_err(|e| io("write lock file", e))?;
    file.flush().map_err(|e| io("write lock file", e))?;
    Ok(file)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's background threads close its lock file a moment after the
    /// last handle is dropped. Commands open a store once per process; a
    /// test that opens one again waits for that first.
    fn wait_for_sled(root: &Path, job: &str) {
        let file = Layout::new(root, job).db().join("db");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while File::open(&file).unwrap().try_lock().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sled kept {file:?} locked"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn second_open_is_refused_with_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let a = JobStore::open(tmp.path(), "j").unwrap();
        let err = JobStore::open(tmp.path(), "j").err().unwrap();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("in use"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(a);
        // The job's lock goes with the handle.
        drop(take_lock(&Layout::new(tmp.path(), "j").lock(), "j").unwrap());
        wait_for_sled(tmp.path(), "j");
        JobStore::open(tmp.path(), "j").unwrap();
    }

    #[test]
    fn newer_format_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = JobStore::open(tmp.path(), "j").unwrap();
            s.db.insert(KEY_VERSION, &(FORMAT_VERSION + 1).to_be_bytes())
                .unwrap();
            s.db.flush().unwrap();
        }
        wait_for_sled(tmp.path(), "j");
        let err = JobStore::open(tmp.path(), "j").err().unwrap();
        assert!(matches!(err, StateError::TooNew { .. }), "{err}");
    }

    #[test]
    fn database_errors_are_said_in_words() {
        let cases: [(sled::Error, &str); 3] = [
            (
                sled::Error::Corruption { at: None, bt: () },
                "its files are damaged (the database found corrupted data)",
            ),
            (
                sled::Error::Unsupported("a newer format".into()),
                "a newer format",
            ),
            (
                sled::Error::Io(std::io::Error::other("disk gone")),
                "disk gone",
            ),
        ];
        for (e, want) in cases {
            let got = db_message(&e);
            assert_eq!(got, want);
            assert!(!got.contains("backtrace") && !got.contains("None"), "{got}");
        }
    }

    #[test]
    fn custom_ids_match_the_provider_pattern() {
        for row in [1, 42, u64::MAX] {
            let id = custom_id(row);
            assert!(
                id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
        }
    }
}
